//! Expectations: what a test says about a run, read from a test file, and checked against the
//! record of the run ([`crate::scenario`]).

use std::fmt::Write as _;
use std::path::Path;

use marked_yaml::Node;
use serde_json::Value;

use super::node::{At, at, at_key, boolean, is_null, mapping, number, sequence, signed, text};

/// One expectation that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Where in the run: `event 3 (request_headers on a)`, `stream a`, `logs`, ...
    pub at: String,
    /// What was checked: `request_headers: header x-id`, ...
    pub what: String,
    /// What the test expected.
    pub expected: String,
    /// What the run did.
    pub actual: String,
    /// The stream whose log lines explain the failure, if one does.
    pub stream: Option<String>,
}

/// Bytes as the test expects them.
#[derive(Debug, Clone)]
pub(crate) enum Matcher {
    /// Exactly these bytes (text, hex or a file's content).
    Exact(Vec<u8>),
    /// A regular expression that must match somewhere (anchor it with `^...$` for the whole).
    Regex(regex::bytes::Regex),
    /// These bytes somewhere.
    Contains(Vec<u8>),
    /// Exactly this many bytes.
    Len(usize),
}

/// Bytes in a record: inline, or by length and SHA-256 past the record's inline limit.
enum Recorded {
    Inline(Vec<u8>),
    Hashed { len: usize, sha256: String },
}

fn recorded(v: &Value) -> Option<Recorded> {
    match v {
        Value::String(s) => Some(Recorded::Inline(s.as_bytes().to_vec())),
        Value::Null => Some(Recorded::Inline(Vec::new())),
        Value::Object(o) => {
            if let Some(hex) = o.get("hex").and_then(Value::as_str) {
                return crate::scenario::Bytes::Hex { hex: hex.to_string() }.to_vec().ok().map(Recorded::Inline);
            }
            let len = usize::try_from(o.get("len")?.as_u64()?).ok()?;
            let sha256 = o.get("sha256")?.as_str()?.to_string();
            Some(Recorded::Hashed { len, sha256 })
        }
        _ => None,
    }
}

/// Bytes for a message: quoted text, escaped where not printable, cut at 300 bytes.
pub(crate) fn show(b: &[u8]) -> String {
    const MAX: usize = 300;
    let cut = b.len() > MAX;
    let s: String = b[..b.len().min(MAX)].escape_ascii().to_string();
    if cut { format!("\"{s}\"... ({} bytes)", b.len()) } else { format!("\"{s}\"") }
}

fn show_recorded(r: &Recorded) -> String {
    match r {
        Recorded::Inline(b) => show(b),
        Recorded::Hashed { len, sha256 } => format!("{len} bytes, sha256 {sha256}"),
    }
}

impl Matcher {
    /// Reads a matcher: text (exact), or one of `exact`, `hex`, `regex`, `contains`, `file`,
    /// `len`. Files are relative to `base`.
    pub(crate) fn parse(node: &Node, what: &str, base: &Path) -> Result<Self, At> {
        if node.as_scalar().is_some() {
            return Ok(Self::Exact(text(node, what)?.as_bytes().to_vec()));
        }
        let map = mapping(node, what, &["exact", "hex", "regex", "contains", "file", "len"])?;
        let mut it = map.iter();
        let (Some((key, value)), None) = (it.next(), it.next()) else {
            return Err(at(node, format!("{what}: give exactly one of exact, hex, regex, contains, file, len")));
        };
        let here = format!("{what}.{}", key.as_str());
        Ok(match key.as_str() {
            "exact" => Self::Exact(text(value, &here)?.as_bytes().to_vec()),
            "contains" => Self::Contains(text(value, &here)?.as_bytes().to_vec()),
            "hex" => Self::Exact(
                crate::scenario::Bytes::Hex { hex: text(value, &here)?.to_string() }
                    .to_vec()
                    .map_err(|e| at(value, format!("{here}: {e}")))?,
            ),
            "regex" => {
                let re = text(value, &here)?;
                Self::Regex(
                    regex::bytes::Regex::new(re)
                        .map_err(|e| at(value, format!("{here}: the regex `{re}` does not compile: {e}")))?,
                )
            }
            "file" => {
                let name = text(value, &here)?;
                let path = base.join(name);
                Self::Exact(std::fs::read(&path).map_err(|e| at(value, format!("{here}: {}: {e}", path.display())))?)
            }
            _ => Self::Len(usize::try_from(number(value, &here)?).unwrap_or(usize::MAX)),
        })
    }

    fn matches(&self, b: &[u8]) -> bool {
        match self {
            Self::Exact(e) => e == b,
            Self::Regex(re) => re.is_match(b),
            Self::Contains(c) => c.is_empty() || b.windows(c.len()).any(|w| w == c.as_slice()),
            Self::Len(n) => b.len() == *n,
        }
    }

    /// Checks recorded bytes; `Err` says why they do not match.
    fn check(&self, r: &Recorded) -> Result<(), String> {
        match (self, r) {
            (_, Recorded::Inline(b)) => {
                if self.matches(b) {
                    Ok(())
                } else {
                    Err(show(b))
                }
            }
            (Self::Exact(e), Recorded::Hashed { len, sha256 }) => {
                if e.len() == *len && crate::scenario::sha256_hex(e) == *sha256 {
                    Ok(())
                } else {
                    Err(show_recorded(r))
                }
            }
            (Self::Len(n), Recorded::Hashed { len, .. }) => {
                if n == len {
                    Ok(())
                } else {
                    Err(show_recorded(r))
                }
            }
            (_, Recorded::Hashed { .. }) => Err(format!(
                "{} (values over 1 MiB are recorded by length and hash: match them with exact, hex, file or len)",
                show_recorded(r)
            )),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Exact(e) => show(e),
            Self::Regex(re) => format!("matching /{}/", re.as_str()),
            Self::Contains(c) => format!("containing {}", show(c)),
            Self::Len(n) => format!("{n} bytes"),
        }
    }
}

/// Headers (or trailers, or gRPC metadata) as the test expects them.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeadersExpect {
    /// Names that must be present; with a matcher, one of their values must match.
    has: Vec<(String, Option<Matcher>)>,
    /// Names that must be absent.
    absent: Vec<String>,
    /// The whole list, in order.
    exact: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl HeadersExpect {
    fn parse(node: &Node, what: &str, base: &Path) -> Result<Self, At> {
        let map = mapping(node, what, &["has", "absent", "exact"])?;
        let mut out = Self::default();
        if let Some(has) = map.get_node("has") {
            let here = format!("{what}.has");
            if let Some(list) = has.as_sequence() {
                for n in list.iter() {
                    out.has.push((text(n, &here)?.to_ascii_lowercase(), None));
                }
            } else {
                for (k, v) in mapping(has, &here, &[])?.iter() {
                    let m = if is_null(v) {
                        None
                    } else {
                        Some(Matcher::parse(v, &format!("{here}.{}", k.as_str()), base)?)
                    };
                    out.has.push((k.as_str().to_ascii_lowercase(), m));
                }
            }
        }
        if let Some(absent) = map.get_node("absent") {
            let here = format!("{what}.absent");
            for n in sequence(absent, &here)? {
                out.absent.push(text(n, &here)?.to_ascii_lowercase());
            }
        }
        if let Some(exact) = map.get_node("exact") {
            let here = format!("{what}.exact");
            let mut pairs = Vec::new();
            for n in sequence(exact, &here)? {
                let pair = sequence(n, &here)?;
                let [k, v] = pair else {
                    return Err(at(n, format!("{here}: each header is a [name, value] pair")));
                };
                pairs.push((text(k, &here)?.as_bytes().to_vec(), text(v, &here)?.as_bytes().to_vec()));
            }
            out.exact = Some(pairs);
        }
        Ok(out)
    }

    fn check(&self, actual: &Value, scope: &Scope, what: &str, out: &mut Vec<Failure>) {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = actual
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| {
                        let p = p.as_array()?;
                        let k = as_inline(p.first()?)?;
                        let v = as_inline(p.get(1)?)?;
                        Some((k, v))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let shown = || show_pairs(&pairs);
        for (name, m) in &self.has {
            let values: Vec<&[u8]> = pairs
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| v.as_slice())
                .collect();
            let ok = match m {
                None => !values.is_empty(),
                Some(m) => values.iter().any(|v| m.matches(v)),
            };
            if !ok {
                let expected = m.as_ref().map_or_else(|| "present".to_string(), Matcher::describe);
                let actual = if values.is_empty() {
                    format!("absent; {what} are {}", shown())
                } else {
                    values.iter().map(|v| show(v)).collect::<Vec<_>>().join(", ")
                };
                out.push(scope.failure(format!("{what}: header `{name}`"), expected, actual));
            }
        }
        for name in &self.absent {
            if let Some((_, v)) = pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes())) {
                out.push(scope.failure(format!("{what}: header `{name}`"), "absent".into(), show(v)));
            }
        }
        if let Some(exact) = &self.exact
            && *exact != pairs
        {
            out.push(scope.failure(format!("{what} (whole list)"), show_pairs(exact), shown()));
        }
    }
}

fn as_inline(v: &Value) -> Option<Vec<u8>> {
    match recorded(v)? {
        Recorded::Inline(b) => Some(b),
        Recorded::Hashed { .. } => None,
    }
}

fn show_pairs(pairs: &[(Vec<u8>, Vec<u8>)]) -> String {
    let items: Vec<String> = pairs.iter().map(|(k, v)| format!("{}: {}", show(k), show(v))).collect();
    format!("[{}]", items.join(", "))
}

/// A log line the test expects.
#[derive(Debug, Clone)]
struct LogExpect {
    level: Option<String>,
    context: Option<String>,
    message: Option<Matcher>,
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "critical"];

fn level_rank(level: &str) -> Option<usize> {
    LEVELS.iter().position(|l| *l == level)
}

fn parse_level(node: &Node, what: &str) -> Result<String, At> {
    let l = text(node, what)?.to_ascii_lowercase();
    let l = if l == "warning" { "warn".to_string() } else { l };
    if level_rank(&l).is_none() {
        return Err(at(node, format!("{what}: unknown log level `{l}` (expected one of: {})", LEVELS.join(", "))));
    }
    Ok(l)
}

impl LogExpect {
    fn parse(node: &Node, what: &str, base: &Path) -> Result<Self, At> {
        if node.as_scalar().is_some() {
            return Ok(Self { level: None, context: None, message: Some(Matcher::parse(node, what, base)?) });
        }
        let map = mapping(node, what, &["level", "context", "message", "regex"])?;
        let level = map.get_node("level").map(|n| parse_level(n, &format!("{what}.level"))).transpose()?;
        let context =
            map.get_node("context").map(|n| text(n, &format!("{what}.context")).map(str::to_string)).transpose()?;
        let message = match (map.get_node("message"), map.get_node("regex")) {
            (Some(_), Some(r)) => return Err(at(r, format!("{what}: give `message` or `regex`, not both"))),
            (Some(m), None) => Some(Matcher::parse(m, &format!("{what}.message"), base)?),
            (None, Some(r)) => {
                let re = text(r, &format!("{what}.regex"))?;
                Some(Matcher::Regex(
                    regex::bytes::Regex::new(re)
                        .map_err(|e| at(r, format!("{what}.regex: the regex `{re}` does not compile: {e}")))?,
                ))
            }
            (None, None) => None,
        };
        Ok(Self { level, context, message })
    }

    fn matches(&self, line: &Value) -> bool {
        let field = |k: &str| line.get(k).and_then(Value::as_str).unwrap_or_default();
        self.level.as_deref().is_none_or(|l| l == field("level"))
            && self.context.as_deref().is_none_or(|c| c == field("context"))
            && self.message.as_ref().is_none_or(|m| m.matches(field("message").as_bytes()))
    }

    fn describe(&self) -> String {
        let mut s = String::from("a log line");
        if let Some(l) = &self.level {
            let _ = write!(s, " at {l}");
        }
        if let Some(c) = &self.context {
            let _ = write!(s, " from {c}");
        }
        if let Some(m) = &self.message {
            let _ = write!(s, " {}", m.describe());
        }
        s
    }
}

/// A dispatched callout the test expects.
#[derive(Debug, Clone, Default)]
struct CalloutExpect {
    kind: Option<String>,
    cluster: Option<Matcher>,
    headers: Option<HeadersExpect>,
    body: Option<Matcher>,
    trailers: Option<HeadersExpect>,
    timeout_ms: Option<u64>,
    service: Option<Matcher>,
    method: Option<Matcher>,
}

const CALLOUT_KINDS: [&str; 6] = ["http", "grpc_call", "grpc_stream", "grpc_send", "grpc_cancel", "grpc_close"];

impl CalloutExpect {
    fn parse(node: &Node, what: &str, base: &Path) -> Result<Self, At> {
        let map = mapping(
            node,
            what,
            &[
                "kind",
                "cluster",
                "upstream",
                "headers",
                "metadata",
                "body",
                "message",
                "trailers",
                "timeout_ms",
                "service",
                "method",
            ],
        )?;
        let m = |k: &str| map.get_node(k).map(|n| Matcher::parse(n, &format!("{what}.{k}"), base)).transpose();
        let h = |k: &str| map.get_node(k).map(|n| HeadersExpect::parse(n, &format!("{what}.{k}"), base)).transpose();
        let kind = match map.get_node("kind") {
            Some(n) => {
                let k = text(n, &format!("{what}.kind"))?;
                if !CALLOUT_KINDS.contains(&k) {
                    return Err(at(
                        n,
                        format!("{what}.kind: unknown kind `{k}` (expected one of: {})", CALLOUT_KINDS.join(", ")),
                    ));
                }
                Some(k.to_string())
            }
            None => None,
        };
        Ok(Self {
            kind,
            cluster: m("cluster")?.or(m("upstream")?),
            headers: h("headers")?.or(h("metadata")?),
            body: m("body")?.or(m("message")?),
            trailers: h("trailers")?,
            timeout_ms: map.get_node("timeout_ms").map(|n| number(n, &format!("{what}.timeout_ms"))).transpose()?,
            service: m("service")?,
            method: m("method")?,
        })
    }

    fn check(&self, c: &Value, scope: &Scope, what: &str, out: &mut Vec<Failure>) {
        let kind = c.get("kind").and_then(Value::as_str).unwrap_or_default();
        if let Some(k) = &self.kind
            && k != kind
        {
            out.push(scope.failure(format!("{what}: kind"), k.clone(), kind.to_string()));
            return;
        }
        let bytes = |field: &str, m: &Option<Matcher>, out: &mut Vec<Failure>| {
            if let Some(m) = m {
                let r = c.get(field).and_then(recorded).unwrap_or(Recorded::Inline(Vec::new()));
                if let Err(actual) = m.check(&r) {
                    out.push(scope.failure(format!("{what}: {field}"), m.describe(), actual));
                }
            }
        };
        bytes("upstream", &self.cluster, out);
        bytes(if kind == "http" { "body" } else { "message" }, &self.body, out);
        bytes("service", &self.service, out);
        bytes("method", &self.method, out);
        if let Some(h) = &self.headers {
            let field = if kind == "http" { "headers" } else { "initial_metadata" };
            h.check(c.get(field).unwrap_or(&Value::Null), scope, &format!("{what}: {field}"), out);
        }
        if let Some(h) = &self.trailers {
            h.check(c.get("trailers").unwrap_or(&Value::Null), scope, &format!("{what}: trailers"), out);
        }
        if let Some(t) = self.timeout_ms {
            let actual = c.get("timeout_ms").and_then(Value::as_u64);
            if actual != Some(t) {
                out.push(scope.failure(format!("{what}: timeout_ms"), t.to_string(), json_short(c.get("timeout_ms"))));
            }
        }
    }
}

/// A local reply the test expects.
#[derive(Debug, Clone, Default)]
struct ReplyExpect {
    status: Option<u64>,
    body: Option<Matcher>,
    details: Option<Matcher>,
    grpc_status: Option<Option<i64>>,
    headers: Option<HeadersExpect>,
}

/// A stream's state as the test expects it (at the end, or right after an event).
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamExpect {
    headers: Vec<(&'static str, HeadersExpect)>,
    bodies: Vec<(&'static str, Matcher)>,
    local_reply: Option<ReplyExpect>,
    no_local_reply: bool,
    finished: Option<String>,
    control: Option<Vec<String>>,
}

const STREAM_HEADERS: [&str; 4] = ["request_headers", "request_trailers", "response_headers", "response_trailers"];
const STREAM_BODIES: [&str; 4] = ["request_body", "response_body", "downstream", "upstream"];
const STREAM_OTHER: [&str; 4] = ["local_reply", "no_local_reply", "finished", "control"];

impl StreamExpect {
    /// Reads the stream keys of a mapping; other keys are left to the caller, which has
    /// checked them against its own list.
    fn parse_from(map: &marked_yaml::types::MarkedMappingNode, what: &str, base: &Path) -> Result<Self, At> {
        let mut out = Self::default();
        for name in STREAM_HEADERS {
            if let Some(n) = map.get_node(name) {
                out.headers.push((name, HeadersExpect::parse(n, &format!("{what}.{name}"), base)?));
            }
        }
        for name in STREAM_BODIES {
            if let Some(n) = map.get_node(name) {
                out.bodies.push((name, Matcher::parse(n, &format!("{what}.{name}"), base)?));
            }
        }
        if let Some(n) = map.get_node("local_reply") {
            let here = format!("{what}.local_reply");
            let r = mapping(n, &here, &["status", "body", "details", "grpc_status", "headers"])?;
            let m = |k: &str| r.get_node(k).map(|n| Matcher::parse(n, &format!("{here}.{k}"), base)).transpose();
            out.local_reply = Some(ReplyExpect {
                status: r.get_node("status").map(|n| number(n, &format!("{here}.status"))).transpose()?,
                body: m("body")?,
                details: m("details")?,
                grpc_status: r
                    .get_node("grpc_status")
                    .map(|n| if is_null(n) { Ok(None) } else { signed(n, &format!("{here}.grpc_status")).map(Some) })
                    .transpose()?,
                headers: r
                    .get_node("headers")
                    .map(|n| HeadersExpect::parse(n, &format!("{here}.headers"), base))
                    .transpose()?,
            });
        }
        if let Some(n) = map.get_node("no_local_reply") {
            out.no_local_reply = boolean(n, &format!("{what}.no_local_reply"))?;
        }
        if let Some(n) = map.get_node("finished") {
            let f = text(n, &format!("{what}.finished"))?;
            if !["done", "deferred", "false"].contains(&f) {
                return Err(at(n, format!("{what}.finished: expected done, deferred or false")));
            }
            out.finished = Some(f.to_string());
        }
        if let Some(n) = map.get_node("control") {
            let here = format!("{what}.control");
            out.control =
                Some(sequence(n, &here)?.iter().map(|c| text(c, &here).map(str::to_string)).collect::<Result<_, _>>()?);
        }
        Ok(out)
    }

    fn is_empty(&self) -> bool {
        self.headers.is_empty()
            && self.bodies.is_empty()
            && self.local_reply.is_none()
            && !self.no_local_reply
            && self.finished.is_none()
            && self.control.is_none()
    }

    fn check(&self, state: &Value, scope: &Scope, out: &mut Vec<Failure>) {
        for (name, h) in &self.headers {
            h.check(state.get(*name).unwrap_or(&Value::Null), scope, name, out);
        }
        for (name, m) in &self.bodies {
            let r = state.get(*name).and_then(recorded).unwrap_or(Recorded::Inline(Vec::new()));
            if let Err(actual) = m.check(&r) {
                out.push(scope.failure((*name).to_string(), m.describe(), actual));
            }
        }
        let reply = state.get("local_reply").filter(|r| !r.is_null());
        if self.no_local_reply
            && let Some(r) = reply
        {
            out.push(scope.failure("local_reply".into(), "none".into(), json_short(Some(r))));
        }
        if let Some(e) = &self.local_reply {
            match reply {
                None => out.push(scope.failure("local_reply".into(), "a local reply".into(), "none".into())),
                Some(r) => e.check(r, scope, out),
            }
        }
        if let Some(f) = &self.finished {
            let actual = match state.get("finished") {
                Some(Value::String(s)) => s.clone(),
                _ => "false".into(),
            };
            if *f != actual {
                out.push(scope.failure("finished".into(), f.clone(), actual));
            }
        }
        if let Some(c) = &self.control {
            let actual: Vec<String> = state
                .get("control")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            if *c != actual {
                out.push(scope.failure("control".into(), format!("{c:?}"), format!("{actual:?}")));
            }
        }
    }
}

impl ReplyExpect {
    fn check(&self, r: &Value, scope: &Scope, out: &mut Vec<Failure>) {
        if let Some(s) = self.status {
            let actual = r.get("status").and_then(Value::as_u64);
            if actual != Some(s) {
                out.push(scope.failure("local_reply.status".into(), s.to_string(), json_short(r.get("status"))));
            }
        }
        for (field, m) in [("body", &self.body), ("details", &self.details)] {
            if let Some(m) = m {
                let rec = r.get(field).and_then(recorded).unwrap_or(Recorded::Inline(Vec::new()));
                if let Err(actual) = m.check(&rec) {
                    out.push(scope.failure(format!("local_reply.{field}"), m.describe(), actual));
                }
            }
        }
        if let Some(g) = self.grpc_status {
            let actual = r.get("grpc_status").and_then(Value::as_i64);
            if actual != g {
                let show = |g: Option<i64>| g.map_or_else(|| "none".to_string(), |g| g.to_string());
                out.push(scope.failure("local_reply.grpc_status".into(), show(g), show(actual)));
            }
        }
        if let Some(h) = &self.headers {
            h.check(r.get("headers").unwrap_or(&Value::Null), scope, "local_reply.headers", out);
        }
    }
}

/// A metric's expected value.
#[derive(Debug, Clone, Copy)]
struct MetricExpect {
    min: Option<i64>,
    max: Option<i64>,
}

/// Expectations on a whole run, or on what one event did.
#[derive(Debug, Clone, Default)]
pub(crate) struct Expect {
    /// Final stream states, by stream name (whole run only).
    streams: Vec<(String, StreamExpect)>,
    /// The event's stream right after it (events only).
    state: StreamExpect,
    action: Option<String>,
    error: Option<Value>,
    logs: Vec<LogExpect>,
    no_logs_at_or_above: Option<String>,
    callouts: Option<Vec<CalloutExpect>>,
    metrics: Vec<(String, MetricExpect)>,
    shared_data: Vec<(String, Option<Matcher>)>,
    tick_period_ms: Option<Option<u64>>,
    start: Option<Value>,
    allow_errors: bool,
    record: Option<Value>,
}

const COMMON_KEYS: [&str; 4] = ["logs", "no_logs_at_or_above", "callouts", "record"];
const RUN_KEYS: [&str; 7] =
    ["streams", "metrics", "shared_data", "tick_period_ms", "start", "allow_errors", "error_free"];
const EVENT_KEYS: [&str; 2] = ["action", "error"];

impl Expect {
    /// Reads a test's `expect` (`event: false`) or an event's (`event: true`). `streams`
    /// names the streams the test creates, to reject expectations on any other.
    pub(crate) fn parse(node: &Node, what: &str, base: &Path, event: bool, streams: &[String]) -> Result<Self, At> {
        let mut allowed: Vec<&str> = COMMON_KEYS.to_vec();
        if event {
            allowed.extend(EVENT_KEYS);
            allowed.extend(STREAM_HEADERS);
            allowed.extend(STREAM_BODIES);
            allowed.extend(STREAM_OTHER);
        } else {
            allowed.extend(RUN_KEYS);
        }
        let map = mapping(node, what, &allowed)?;
        let mut out = Self::default();
        if event {
            out.state = StreamExpect::parse_from(map, what, base)?;
            out.action =
                map.get_node("action").map(|n| text(n, &format!("{what}.action")).map(str::to_string)).transpose()?;
            out.error = map.get_node("error").map(super::node::to_json);
        }
        if let Some(n) = map.get_node("streams") {
            for (k, v) in mapping(n, &format!("{what}.streams"), &[])?.iter() {
                let here = format!("{what}.streams.{}", k.as_str());
                if !streams.iter().any(|s| s == k.as_str()) {
                    return Err(at_key(
                        k,
                        format!(
                            "{here}: the test creates no stream named `{}` (its streams: {})",
                            k.as_str(),
                            list(streams)
                        ),
                    ));
                }
                let mut keys: Vec<&str> = STREAM_HEADERS.to_vec();
                keys.extend(STREAM_BODIES);
                keys.extend(STREAM_OTHER);
                let m = mapping(v, &here, &keys)?;
                out.streams.push((k.as_str().to_string(), StreamExpect::parse_from(m, &here, base)?));
            }
        }
        if let Some(n) = map.get_node("logs") {
            let here = format!("{what}.logs");
            for (i, l) in sequence(n, &here)?.iter().enumerate() {
                let e = LogExpect::parse(l, &format!("{here}[{i}]"), base)?;
                if let Some(c) = &e.context
                    && !c.starts_with("root")
                    && !c.starts_with("vm")
                    && !streams.iter().any(|s| s == c)
                {
                    return Err(at(
                        l,
                        format!(
                            "{here}[{i}].context: no stream named `{c}` (its streams: {}; or root, vm)",
                            list(streams)
                        ),
                    ));
                }
                out.logs.push(e);
            }
        }
        if let Some(n) = map.get_node("no_logs_at_or_above") {
            out.no_logs_at_or_above = Some(parse_level(n, &format!("{what}.no_logs_at_or_above"))?);
        }
        if let Some(n) = map.get_node("error_free") {
            // `error_free: true` is `no_logs_at_or_above: error`.
            if boolean(n, &format!("{what}.error_free"))? && out.no_logs_at_or_above.is_none() {
                out.no_logs_at_or_above = Some("error".into());
            }
        }
        if let Some(n) = map.get_node("callouts") {
            let here = format!("{what}.callouts");
            let mut list = Vec::new();
            for (i, c) in sequence(n, &here)?.iter().enumerate() {
                list.push(CalloutExpect::parse(c, &format!("{here}[{i}]"), base)?);
            }
            out.callouts = Some(list);
        }
        if let Some(n) = map.get_node("metrics") {
            for (k, v) in mapping(n, &format!("{what}.metrics"), &[])?.iter() {
                let here = format!("{what}.metrics.{}", k.as_str());
                let m = if v.as_scalar().is_some() {
                    let x = signed(v, &here)?;
                    MetricExpect { min: Some(x), max: Some(x) }
                } else {
                    let r = mapping(v, &here, &["min", "max"])?;
                    let b = |k: &str| r.get_node(k).map(|n| signed(n, &format!("{here}.{k}"))).transpose();
                    MetricExpect { min: b("min")?, max: b("max")? }
                };
                out.metrics.push((k.as_str().to_string(), m));
            }
        }
        if let Some(n) = map.get_node("shared_data") {
            for (k, v) in mapping(n, &format!("{what}.shared_data"), &[])?.iter() {
                let here = format!("{what}.shared_data.{}", k.as_str());
                let m = if is_null(v) { None } else { Some(Matcher::parse(v, &here, base)?) };
                out.shared_data.push((k.as_str().to_string(), m));
            }
        }
        if let Some(n) = map.get_node("tick_period_ms") {
            out.tick_period_ms =
                Some(if is_null(n) { None } else { Some(number(n, &format!("{what}.tick_period_ms"))?) });
        }
        out.start = map.get_node("start").map(super::node::to_json);
        if let Some(n) = map.get_node("allow_errors") {
            out.allow_errors = boolean(n, &format!("{what}.allow_errors"))?;
        }
        out.record = map.get_node("record").map(super::node::to_json);
        Ok(out)
    }

    /// Whether the event says which error it expects (`error`; `false` for none): its own
    /// check then judges the event's error, not the test's check for unexpected ones.
    pub(crate) fn expects_error(&self) -> bool {
        self.error.is_some()
    }

    /// Whether the expectations are on the event's stream.
    pub(crate) fn needs_stream(&self) -> bool {
        !self.state.is_empty()
    }

    /// Whether unexpected event errors are allowed.
    pub(crate) fn allows_errors(&self) -> bool {
        self.allow_errors
    }

    /// Whether the test says how start-up ends.
    pub(crate) fn expects_start(&self) -> bool {
        self.start.is_some()
    }

    /// Checks an event's entry (with `state`, `log_range` and `callout_range`) of `record`.
    pub(crate) fn check_event(&self, record: &Value, entry: &Value, scope: &Scope, out: &mut Vec<Failure>) {
        if let Some(a) = &self.action {
            let actual = entry.get("action").and_then(Value::as_str).unwrap_or("none");
            if a != actual {
                out.push(scope.failure("action".into(), a.clone(), actual.to_string()));
            }
        }
        if let Some(e) = &self.error {
            // The callback's error, or the trap the failure policy answered, as one shape:
            // `{kind, trap, export}`.
            let actual = entry.get("error").cloned().or_else(|| {
                let t = entry.get("trap")?;
                Some(serde_json::json!({"kind": "trap", "trap": t.get("kind"), "export": t.get("export")}))
            });
            let ok = match (e, &actual) {
                (Value::Bool(false), a) => a.is_none(),
                (_, None) => false,
                (Value::Bool(true), Some(_)) => true,
                // A kind: `trap`, `failed`, `rejected`, `error`; or a trap kind (`unreachable`).
                (Value::String(k), Some(a)) => {
                    [a.get("kind"), a.get("trap")].iter().any(|v| v.and_then(Value::as_str) == Some(k.as_str()))
                }
                (e, Some(a)) => subset(e, a).is_ok(),
            };
            if !ok {
                let actual = actual.map_or_else(|| "no error".to_string(), |a| json_short(Some(&a)));
                out.push(scope.failure("error".into(), json_short(Some(e)), actual));
            }
        }
        if !self.state.is_empty() {
            match entry.get("state") {
                Some(state) => self.state.check(state, scope, out),
                None => out.push(scope.failure("stream state".into(), "the event's stream".into(), "no stream".into())),
            }
        }
        let range = |key: &str| {
            let r = entry.get(key).and_then(Value::as_array);
            let n = |i: usize| r.and_then(|r| r.get(i)).and_then(Value::as_u64).map_or(0, |n| n as usize);
            n(0)..n(1)
        };
        let logs = slice(record, "logs", range("log_range"));
        let callouts = slice(record, "callouts", range("callout_range"));
        self.check_common(&logs, &callouts, entry, scope, out);
    }

    /// Checks a whole record.
    pub(crate) fn check_run(&self, record: &Value, scope: &Scope, out: &mut Vec<Failure>) {
        if let Some(s) = &self.start {
            let actual = record.get("start").cloned().unwrap_or(Value::Null);
            let ok = match s {
                Value::String(k) => actual.as_str() == Some(k) || actual.get("kind").and_then(Value::as_str) == Some(k),
                _ => subset(s, &actual).is_ok(),
            };
            if !ok {
                out.push(scope.failure("start".into(), json_short(Some(s)), json_short(Some(&actual))));
            }
        }
        for (name, e) in &self.streams {
            let stream_scope = Scope { at: format!("stream {name}"), stream: Some(name.clone()) };
            match record.get("streams").and_then(|s| s.get(name)) {
                Some(state) => e.check(state, &stream_scope, out),
                None => out.push(stream_scope.failure("stream".into(), "created".into(), "never created".into())),
            }
        }
        let all = |key: &str| record.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
        self.check_common(&all("logs"), &all("callouts"), record, scope, out);
        let metrics = all("metrics");
        for (name, m) in &self.metrics {
            let value = metrics.iter().find(|v| v.get("name").and_then(Value::as_str) == Some(name.as_str()));
            let value = value.and_then(|v| v.get("value")).and_then(Value::as_i64);
            let expected = match (m.min, m.max) {
                (Some(a), Some(b)) if a == b => a.to_string(),
                (a, b) => format!(
                    "{} .. {}",
                    a.map_or_else(|| "any".into(), |a| a.to_string()),
                    b.map_or_else(|| "any".into(), |b| b.to_string())
                ),
            };
            match value {
                None => {
                    let names: Vec<&str> =
                        metrics.iter().filter_map(|v| v.get("name").and_then(Value::as_str)).collect();
                    out.push(scope.failure(
                        format!("metric `{name}`"),
                        expected,
                        if names.is_empty() {
                            "no such metric (none defined)".to_string()
                        } else {
                            format!("no such metric (defined: {})", names.join(", "))
                        },
                    ));
                }
                Some(v) if m.min.is_some_and(|a| v < a) || m.max.is_some_and(|b| v > b) => {
                    out.push(scope.failure(format!("metric `{name}`"), expected, v.to_string()));
                }
                Some(_) => {}
            }
        }
        let shared = all("shared_data");
        for (key, m) in &self.shared_data {
            let entry = shared.iter().find(|e| e.get("key").and_then(as_inline).as_deref() == Some(key.as_bytes()));
            match (m, entry) {
                (None, None) => {}
                (None, Some(e)) => {
                    out.push(scope.failure(format!("shared_data `{key}`"), "absent".into(), json_short(e.get("value"))))
                }
                (Some(m), None) => {
                    out.push(scope.failure(format!("shared_data `{key}`"), m.describe(), "absent".into()))
                }
                (Some(m), Some(e)) => {
                    let r = e.get("value").and_then(recorded).unwrap_or(Recorded::Inline(Vec::new()));
                    if let Err(actual) = m.check(&r) {
                        out.push(scope.failure(format!("shared_data `{key}`"), m.describe(), actual));
                    }
                }
            }
        }
        if let Some(t) = self.tick_period_ms {
            let actual = record.get("tick_period_ms").and_then(Value::as_u64);
            if actual != t {
                let show = |t: Option<u64>| t.map_or_else(|| "none".to_string(), |t| format!("{t} ms"));
                out.push(scope.failure("tick_period_ms".into(), show(t), show(actual)));
            }
        }
    }

    /// Logs, callouts and the raw record subset, for a run or one event.
    fn check_common(&self, logs: &[Value], callouts: &[Value], raw: &Value, scope: &Scope, out: &mut Vec<Failure>) {
        for l in &self.logs {
            if !logs.iter().any(|line| l.matches(line)) {
                out.push(scope.failure(
                    "logs".into(),
                    l.describe(),
                    format!("{} log lines, none matching", logs.len()),
                ));
            }
        }
        if let Some(level) = &self.no_logs_at_or_above {
            let min = level_rank(level).unwrap_or(0);
            for line in logs {
                let rank = line.get("level").and_then(Value::as_str).and_then(level_rank).unwrap_or(0);
                if rank >= min {
                    out.push(scope.failure(format!("no log at {level} or above"), "none".into(), show_log(line)));
                }
            }
        }
        if let Some(expected) = &self.callouts {
            if expected.len() != callouts.len() {
                let kinds: Vec<String> = callouts
                    .iter()
                    .map(|c| {
                        let kind = c.get("kind").and_then(Value::as_str).unwrap_or("?");
                        match c.get("upstream").and_then(Value::as_str) {
                            Some(u) => format!("{kind} to {u}"),
                            None => kind.to_string(),
                        }
                    })
                    .collect();
                out.push(scope.failure(
                    "callouts".into(),
                    format!("{} callouts", expected.len()),
                    format!("{}: [{}]", callouts.len(), kinds.join(", ")),
                ));
            }
            for (i, (e, c)) in expected.iter().zip(callouts).enumerate() {
                e.check(c, scope, &format!("callouts[{i}]"), out);
            }
        }
        if let Some(r) = &self.record
            && let Err(e) = subset(r, raw)
        {
            out.push(scope.failure("record".into(), "a subset of the record".into(), e));
        }
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() { "none".into() } else { names.join(", ") }
}

fn slice(record: &Value, key: &str, range: std::ops::Range<usize>) -> Vec<Value> {
    record.get(key).and_then(Value::as_array).and_then(|a| a.get(range)).map(<[Value]>::to_vec).unwrap_or_default()
}

/// A log line of a record, as one line of text.
pub(crate) fn show_log(line: &Value) -> String {
    let f = |k: &str| line.get(k).and_then(Value::as_str).unwrap_or_default();
    format!("[{}] {}: {}", f("level"), f("context"), f("message").escape_debug())
}

pub(crate) fn json_short(v: Option<&Value>) -> String {
    let Some(v) = v else { return "nothing".into() };
    let s = v.to_string();
    if s.len() > 400 { format!("{}...", &s[..s.floor_char_boundary(400)]) } else { s }
}

/// Where failures are found: an event or a stream, and the stream whose logs explain them.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub(crate) at: String,
    pub(crate) stream: Option<String>,
}

impl Scope {
    pub(crate) fn failure(&self, what: String, expected: String, actual: String) -> Failure {
        Failure { at: self.at.clone(), what, expected, actual, stream: self.stream.clone() }
    }
}

/// Compares `expect` as a subset of `actual`: every key of an expected object must be in the
/// actual one with an equal value (objects recursively), arrays element by element with the
/// same length, other values equal.
///
/// # Errors
/// The first mismatch, as `path: expected X, found Y`.
pub fn subset(expect: &Value, actual: &Value) -> Result<(), String> {
    subset_at("$", expect, actual)
}

fn subset_at(path: &str, expect: &Value, actual: &Value) -> Result<(), String> {
    match (expect, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let p = format!("{path}.{k}");
                match a.get(k) {
                    None => {
                        return Err(format!("{p}: expected {}, but the record has no such key", json_short(Some(ev))));
                    }
                    Some(av) => subset_at(&p, ev, av)?,
                }
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                subset_at(&format!("{path}[{i}]"), ev, av)?;
            }
            if e.len() != a.len() {
                let extra = a
                    .get(e.len())
                    .map(|x| format!("; first extra element: {}", json_short(Some(x))))
                    .unwrap_or_default();
                return Err(format!(
                    "{path}: expected {} elements, found {}{extra}\n  found: {}",
                    e.len(),
                    a.len(),
                    json_short(Some(actual))
                ));
            }
            Ok(())
        }
        _ if expect == actual => Ok(()),
        _ => Err(format!("{path}: expected {}, found {}", json_short(Some(expect)), json_short(Some(actual)))),
    }
}
