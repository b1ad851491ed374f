//! The reverse proxy: routes, clusters, and the filter chain of each route, as a Pingora
//! `ProxyHttp`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::ErrorType;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use wasmux::HeaderMap;
use wasmux::abi::LocalReply;

use crate::chain::{Chain, FilterChains, StreamFilters, Verdict};

/// How a route matches a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Every host.
    Any,
    /// This host exactly (case-insensitive).
    Exact(String),
    /// Hosts ending with this suffix (from `*.example.com`: `.example.com`).
    Suffix(String),
}

impl HostMatch {
    /// From a configuration value: `*`, `*.suffix` or a host.
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            None | Some("*") => Self::Any,
            Some(s) => match s.strip_prefix('*') {
                Some(suffix) => Self::Suffix(suffix.to_ascii_lowercase()),
                None => Self::Exact(s.to_ascii_lowercase()),
            },
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(h) => host.eq_ignore_ascii_case(h),
            Self::Suffix(s) => {
                host.len() > s.len()
                    && host
                        .as_bytes()
                        .get(host.len() - s.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(s.as_bytes()))
            }
        }
    }
}

/// A route, ready to serve.
#[derive(Debug, Clone)]
pub struct Route {
    /// Host match.
    pub host: HostMatch,
    /// Path prefix.
    pub prefix: String,
    /// Cluster index.
    pub cluster: usize,
    /// The filter chain.
    pub chain: Chain,
    /// Route timeout.
    pub timeout: Option<Duration>,
}

/// A cluster, ready to serve.
#[derive(Debug)]
pub struct Cluster {
    /// Name.
    pub name: String,
    /// Endpoints, used round robin.
    pub endpoints: Vec<SocketAddr>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    next: AtomicUsize,
}

impl Cluster {
    /// A cluster.
    pub fn new(name: String, endpoints: Vec<SocketAddr>, connect_timeout: Duration) -> Self {
        Self { name, endpoints, connect_timeout, next: AtomicUsize::new(0) }
    }

    /// The next endpoint, round robin.
    pub fn pick(&self) -> Option<SocketAddr> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.endpoints.get(n % self.endpoints.len().max(1)).copied()
    }
}

/// A listener's proxy: its routes, over the proxy's clusters and filter chains.
#[derive(Debug, Clone)]
pub struct WasmProxy {
    chains: Arc<FilterChains>,
    clusters: Arc<Vec<Cluster>>,
    routes: Arc<Vec<Route>>,
}

impl WasmProxy {
    /// A proxy for one listener.
    pub fn new(chains: Arc<FilterChains>, clusters: Arc<Vec<Cluster>>, routes: Vec<Route>) -> Self {
        Self { chains, clusters, routes: Arc::new(routes) }
    }

    fn route(&self, host: &str, path: &[u8]) -> Option<usize> {
        let host =
            host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
        self.routes.iter().position(|r| r.host.matches(host) && path.starts_with(r.prefix.as_bytes()))
    }
}

/// What the proxy keeps per request.
#[derive(Debug, Default)]
pub struct RequestCtx {
    route: Option<usize>,
    filters: StreamFilters,
    /// A reply already sent to the client (status), so the error path must not send another.
    replied: Option<u16>,
    /// The body that replaces the upstream's after a local reply in the response phase.
    replacement: Option<Vec<u8>>,
    /// A filter closed the stream: the connection is dropped with no (further) response.
    reset: bool,
    /// The client's request has a body, and filters run on it.
    request_body: bool,
    /// The request body the filters let through while a filter held the headers: it replaces
    /// the body Pingora read so far (its retry buffer) on the way upstream.
    prefiltered: Option<Vec<u8>>,
}

/// The most request body a filter may hold the headers for (Envoy's
/// `allow_on_headers_stop_iteration`): what Pingora keeps of a body it has read before the
/// upstream request starts. Past it the request is answered 413, as Envoy answers a body past
/// its buffer limit.
pub const MAX_HELD_BODY: usize = 64 * 1024;

/// The error that resets a stream a filter closed.
fn reset_error(ctx: &mut RequestCtx) -> Box<pingora::Error> {
    ctx.reset = true;
    pingora::Error::explain(ErrorType::ConnectionClosed, "the filter closed the stream (proxy_close_stream)")
}

/// The request's authority: its `host` header, else the URI's.
fn authority(req: &RequestHeader) -> &[u8] {
    match req.headers.get(http::header::HOST) {
        Some(h) => h.as_bytes(),
        None => req.uri.authority().map_or(&[], |a| a.as_str().as_bytes()),
    }
}

/// The request as proxy-wasm filters see it: pseudo-headers first, then the headers (`host`
/// becomes `:authority`, as Envoy does).
pub fn request_map(req: &RequestHeader) -> HeaderMap {
    let pseudo: [(&[u8], &[u8]); 4] = [
        (b":authority", authority(req)),
        (b":path", req.raw_path()),
        (b":method", req.method.as_str().as_bytes()),
        (b":scheme", req.uri.scheme_str().unwrap_or("http").as_bytes()),
    ];
    let headers = req
        .headers
        .iter()
        .filter(|(k, _)| *k != http::header::HOST)
        .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()));
    HeaderMap::from_pairs(pseudo.into_iter().chain(headers))
}

/// The response as filters see it: `:status`, then the headers.
pub fn response_map(resp: &ResponseHeader) -> HeaderMap {
    let status: (&[u8], &[u8]) = (b":status", resp.status.as_str().as_bytes());
    let headers = resp.headers.iter().map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()));
    HeaderMap::from_pairs(std::iter::once(status).chain(headers))
}

/// The regular headers of a filter's map, for Pingora: pseudo-headers left out, and a name
/// HTTP does not allow dropped with a warning.
pub fn regular_headers(m: &HeaderMap) -> impl Iterator<Item = (http::HeaderName, &[u8])> {
    m.iter().filter(|(k, _)| !k.starts_with(b":")).filter_map(|(k, v)| match http::HeaderName::from_bytes(k) {
        Ok(name) => Some((name, v)),
        Err(_) => {
            tracing::warn!(target: "wasmux::proxy", "dropped a header with an invalid name from a filter");
            None
        }
    })
}

/// Pingora's request and response headers, edited through their own methods (which keep the
/// case of the names they were received with).
trait EditHeaders {
    fn map(&self) -> &http::HeaderMap;
    fn remove(&mut self, name: &http::HeaderName);
    fn append(&mut self, name: http::HeaderName, value: &[u8]) -> pingora::Result<()>;
}

impl EditHeaders for RequestHeader {
    fn map(&self) -> &http::HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &http::HeaderName) {
        self.remove_header(name);
    }
    fn append(&mut self, name: http::HeaderName, value: &[u8]) -> pingora::Result<()> {
        self.append_header(name, value).map(|_| ())
    }
}

impl EditHeaders for ResponseHeader {
    fn map(&self) -> &http::HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &http::HeaderName) {
        self.remove_header(name);
    }
    fn append(&mut self, name: http::HeaderName, value: &[u8]) -> pingora::Result<()> {
        self.append_header(name, value).map(|_| ())
    }
}

/// Past this many headers the edit is a rewrite of every header: the per-name comparison is
/// quadratic in the count. Also the width of the mask of headers kept in place.
const EDIT_IN_PLACE_MAX: usize = 64;

/// Makes Pingora's headers hold `want` (name, value pairs in order): names whose values the
/// filters left as they were are not touched (they keep their case, position and storage); a
/// name whose values changed is written again with the new values, in the filters' order.
///
/// Runs on every request a filter saw, so it allocates nothing of its own: `want` is walked
/// again rather than collected, and which pairs stay and which names go are bit masks.
fn sync_headers<'a>(
    h: &mut impl EditHeaders,
    want: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
) -> pingora::Result<()> {
    let have = h.map();
    let mut now = have.iter().map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()));
    let mut wanted = want.clone();
    let unchanged = loop {
        match (now.next(), wanted.next()) {
            (None, None) => break true,
            (Some(a), Some(b)) if a == b => {}
            _ => break false,
        }
    };
    if unchanged {
        return Ok(());
    }
    let names = have.keys_len();
    let rewrite_all = names > EDIT_IN_PLACE_MAX || want.clone().nth(EDIT_IN_PLACE_MAX).is_some();
    // Bit i of `kept`: the i-th pair of `want` belongs to a name whose values the filters left
    // as they were (it stays as it is). Bit j of `dropped`: the j-th name present now is not
    // kept; it is removed, then written again if the filters still have it.
    let mut kept: u64 = 0;
    let mut dropped: u64 = 0;
    if !rewrite_all {
        for (j, name) in have.keys().enumerate() {
            let key = name.as_str().as_bytes();
            let ours = want.clone().filter(|(k, _)| *k == key).map(|(_, v)| v);
            if have.get_all(name).iter().map(http::HeaderValue::as_bytes).eq(ours) {
                kept |= want.clone().enumerate().filter(|(_, (k, _))| *k == key).fold(0, |bits, (i, _)| bits | 1 << i);
            } else {
                dropped |= 1 << j;
            }
        }
    }
    if rewrite_all {
        for _ in 0..names {
            let Some(name) = h.map().keys().next().cloned() else { break };
            h.remove(&name);
        }
    } else {
        // From the last to the first: removing a name moves only names that come after it.
        for j in (0..names).rev() {
            if dropped & (1 << j) != 0
                && let Some(name) = h.map().keys().nth(j).cloned()
            {
                h.remove(&name);
            }
        }
    }
    for (i, (k, v)) in want.enumerate() {
        if i < EDIT_IN_PLACE_MAX && kept & (1 << i) != 0 {
            continue;
        }
        match http::HeaderName::from_bytes(k) {
            Ok(name) => h.append(name, v)?,
            Err(_) => tracing::warn!(target: "wasmux::proxy", "dropped a header with an invalid name from a filter"),
        }
    }
    Ok(())
}

/// The regular headers of a filter's map as name, value pairs.
fn regular_pairs(m: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
    m.iter().filter(|(k, _)| !k.starts_with(b":"))
}

/// Writes what the filters made of the request back into Pingora's request header: `:method`,
/// `:path`, `:authority` (as `host`) and the headers. Headers the filters did not change are
/// left as they were.
pub fn apply_request(req: &mut RequestHeader, m: &HeaderMap) -> pingora::Result<()> {
    if let Some(method) = m.get(b":method")
        && method != req.method.as_str().as_bytes()
    {
        let method = http::Method::from_bytes(method)
            .map_err(|_| pingora::Error::explain(ErrorType::InvalidHTTPHeader, "a filter set an invalid :method"))?;
        req.set_method(method);
    }
    if let Some(path) = m.get(b":path")
        && path != req.raw_path()
    {
        req.set_raw_path(path)?;
    }
    let authority = m.get(b":authority").filter(|a| !a.is_empty());
    sync_headers(req, authority.map(|a| (&b"host"[..], a)).into_iter().chain(regular_pairs(m)))
}

/// Writes what the filters made of the response back into Pingora's response header:
/// `:status` and the headers. Headers the filters did not change are left as they were.
pub fn apply_response(resp: &mut ResponseHeader, m: &HeaderMap) -> pingora::Result<()> {
    if let Some(status) = m.get(b":status")
        && status != resp.status.as_str().as_bytes()
    {
        let code = std::str::from_utf8(status).ok().and_then(|s| s.parse::<u16>().ok());
        match code {
            Some(c) => resp.set_status(c)?,
            None => tracing::warn!(target: "wasmux::proxy", "a filter set an invalid :status; kept the upstream's"),
        }
    }
    sync_headers(resp, regular_pairs(m))
}

/// The response header of a local reply, and its body.
pub fn reply_header(r: &LocalReply) -> pingora::Result<(ResponseHeader, Vec<u8>)> {
    let grpc = r.grpc_status.is_some();
    let status =
        if grpc { 200 } else { u16::try_from(r.status_code).ok().filter(|s| (100..1000).contains(s)).unwrap_or(500) };
    let mut resp = ResponseHeader::build(status, None)?;
    for (name, v) in regular_headers(&r.headers) {
        resp.append_header(name, v)?;
    }
    let mut body = r.body.clone();
    if let Some(code) = r.grpc_status {
        // A gRPC local reply is trailers-only: the status and message travel in headers.
        resp.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
        resp.insert_header("grpc-status", code.to_string())?;
        if !body.is_empty() {
            let message: String = String::from_utf8_lossy(&body).chars().filter(|c| !c.is_control()).collect();
            resp.insert_header("grpc-message", message)?;
        }
        body.clear();
    }
    resp.remove_header(&http::header::TRANSFER_ENCODING);
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    Ok((resp, body))
}

/// Sends a local reply to the client; returns its status.
///
/// # Errors
/// Writing to the client failed.
pub async fn send_reply(session: &mut Session, r: &LocalReply) -> pingora::Result<u16> {
    let (resp, body) = reply_header(r)?;
    let status = resp.status.as_u16();
    session.write_response_header(Box::new(resp), body.is_empty()).await?;
    if !body.is_empty() {
        session.write_response_body(Some(Bytes::from(body)), true).await?;
    }
    Ok(status)
}

fn plain_reply(status: u32, body: &str, details: &str) -> LocalReply {
    LocalReply {
        status_code: status,
        details: details.into(),
        body: body.as_bytes().to_vec(),
        headers: HeaderMap::from_pairs([("content-type", "text/plain")]),
        grpc_status: None,
    }
}

/// Envoy's answer when a route's time runs out.
fn timeout_reply() -> LocalReply {
    plain_reply(504, "upstream request timeout", "upstream_response_timeout")
}

impl WasmProxy {
    /// Answers the client and remembers it, so the error path stays quiet.
    async fn reply(&self, session: &mut Session, ctx: &mut RequestCtx, r: &LocalReply) -> pingora::Result<()> {
        let status = send_reply(session, r).await?;
        ctx.replied = Some(status);
        Ok(())
    }

    /// A filter holds the request headers until it has seen the body: reads the body here (kept
    /// by Pingora, to be sent after the headers), hands it to the filters, and returns once the
    /// headers go on, with the verdict.
    async fn hold_for_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        headers: &mut HeaderMap,
    ) -> pingora::Result<Verdict> {
        session.as_downstream_mut().enable_retry_buffering();
        let mut read = 0usize;
        loop {
            let next = tokio::select! {
                chunk = session.read_request_body() => Some(chunk?),
                resumed = self.chains.held_signal(&ctx.filters) => {
                    if !resumed {
                        return Ok(Verdict::Timeout);
                    }
                    None
                }
            };
            let (chunk, eos) = match next {
                Some(Some(chunk)) => {
                    read += chunk.len();
                    (Some(chunk), session.is_body_done())
                }
                Some(None) => (Some(Bytes::new()), true),
                None => (None, false),
            };
            if read > MAX_HELD_BODY || session.as_downstream().retry_buffer_truncated() {
                return Ok(Verdict::Reply(plain_reply(413, "Payload Too Large", "request_payload_too_large")));
            }
            let (data, verdict) = self.chains.held_request_body(&mut ctx.filters, headers, chunk.as_deref(), eos).await;
            match verdict {
                Verdict::HeldForBody => {}
                Verdict::Continue => {
                    ctx.prefiltered = Some(data);
                    return Ok(Verdict::Continue);
                }
                other => return Ok(other),
            }
        }
    }

    fn has_filters(&self, ctx: &RequestCtx) -> bool {
        ctx.route.is_some_and(|r| !self.routes[r].chain.0.is_empty())
    }
}

/// Whether a message's body is delimited by its headers (`content-length` or
/// `transfer-encoding`).
fn framed(h: &http::HeaderMap) -> bool {
    h.contains_key(http::header::CONTENT_LENGTH) || h.contains_key(http::header::TRANSFER_ENCODING)
}

/// Whether a response has no body, from its status, headers and the request method.
fn response_is_empty(resp: &ResponseHeader, method: &http::Method) -> bool {
    let status = resp.status.as_u16();
    method == http::Method::HEAD
        || status == 204
        || status == 304
        || (100..200).contains(&status)
        || resp.headers.get(http::header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() == b"0")
}

#[async_trait]
impl ProxyHttp for WasmProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<bool> {
        let req = session.req_header();
        let host = std::str::from_utf8(authority(req)).unwrap_or_default();
        let Some(route) = self.route(host, req.raw_path()) else {
            self.reply(session, ctx, &plain_reply(404, "", "route_not_found")).await?;
            return Ok(true);
        };
        ctx.route = Some(route);
        let r = &self.routes[route];
        if r.chain.0.is_empty() {
            return Ok(false);
        }
        let mut headers = request_map(session.req_header());
        ctx.filters = self.chains.start(&r.chain, r.timeout);
        let end_of_stream = session.as_downstream_mut().is_body_empty();
        ctx.request_body = !end_of_stream;
        let mut verdict = self.chains.request_headers(&mut ctx.filters, &mut headers, end_of_stream).await;
        if matches!(verdict, Verdict::HeldForBody) {
            verdict = self.hold_for_body(session, ctx, &mut headers).await?;
        }
        match verdict {
            Verdict::Continue | Verdict::HeldForBody => {
                apply_request(session.req_header_mut(), &headers)?;
                Ok(false)
            }
            Verdict::Reply(reply) => {
                self.reply(session, ctx, &reply).await?;
                Ok(true)
            }
            Verdict::Timeout => {
                self.reply(session, ctx, &timeout_reply()).await?;
                Ok(true)
            }
            Verdict::Reset => Err(reset_error(ctx)),
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<Box<HttpPeer>> {
        let route = ctx.route.map(|r| &self.routes[r]);
        let cluster = route.and_then(|r| self.clusters.get(r.cluster));
        let Some((cluster, addr)) = cluster.and_then(|c| c.pick().map(|a| (c, a))) else {
            return Err(pingora::Error::explain(ErrorType::HTTPStatus(503), "no healthy upstream"));
        };
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(cluster.connect_timeout);
        if let Some(t) = route.and_then(|r| r.timeout) {
            peer.options.read_timeout = Some(t);
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // As Envoy: a filter that changes the body's length removes `content-length` (the SDKs'
        // convention); a body left with no framing at all goes chunked, not dropped.
        if ctx.request_body && !framed(&upstream_request.headers) {
            upstream_request.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if !self.has_filters(ctx) {
            return Ok(());
        }
        if let Some(data) = ctx.prefiltered.take() {
            // What Pingora read while a filter held the headers (its retry buffer) has been
            // through the filters already: send what they let through instead.
            *body = (!(data.is_empty() && end_of_stream)).then(|| Bytes::from(data));
            return Ok(());
        }
        let chunk = body.take().unwrap_or_default();
        let (data, verdict) = self.chains.request_body(&mut ctx.filters, &chunk, end_of_stream).await;
        let reply = match verdict {
            Verdict::Continue | Verdict::HeldForBody => {
                // Nothing at the end stays nothing (Pingora has already ended the upstream
                // body then); an empty chunk before the end is skipped.
                *body = (!(data.is_empty() && end_of_stream)).then(|| Bytes::from(data));
                return Ok(());
            }
            Verdict::Reply(r) => r,
            Verdict::Timeout => timeout_reply(),
            Verdict::Reset => return Err(reset_error(ctx)),
        };
        self.reply(session, ctx, &reply).await?;
        Err(pingora::Error::explain(ErrorType::HTTPStatus(ctx.replied.unwrap_or(500)), "answered by a filter"))
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if ctx.replied.is_some() || !self.has_filters(ctx) {
            return Ok(());
        }
        let end_of_stream = response_is_empty(upstream_response, &session.req_header().method);
        let mut headers = response_map(upstream_response);
        let reply = match self.chains.response_headers(&mut ctx.filters, &mut headers, end_of_stream).await {
            Verdict::Continue | Verdict::HeldForBody => {
                apply_response(upstream_response, &headers)?;
                // As Envoy, `content-length` stays as the filters left it. A body they left
                // unframed (they removed `content-length` to change its length) goes chunked to
                // an HTTP/1.1 client (the response is then HTTP/1.1 whatever the upstream
                // spoke), delimited by the connection's close to an HTTP/1.0 one.
                if !end_of_stream
                    && !framed(&upstream_response.headers)
                    && session.req_header().version == http::Version::HTTP_11
                {
                    upstream_response.set_version(http::Version::HTTP_11);
                    upstream_response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
                }
                return Ok(());
            }
            Verdict::Reply(r) => r,
            Verdict::Timeout => timeout_reply(),
            Verdict::Reset => return Err(reset_error(ctx)),
        };
        // The reply replaces the upstream's response: its headers now, its body instead of the
        // upstream's body.
        let (resp, body) = reply_header(&reply)?;
        *upstream_response = resp;
        ctx.replacement = Some(body);
        ctx.replied = Some(upstream_response.status.as_u16());
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<Duration>> {
        if let Some(replacement) = &mut ctx.replacement {
            *body = end_of_stream.then(|| Bytes::from(std::mem::take(replacement)));
            return Ok(None);
        }
        if !self.has_filters(ctx) {
            return Ok(None);
        }
        let chunk = body.take().unwrap_or_default();
        let (data, verdict) = self.chains.response_body(&mut ctx.filters, &chunk, end_of_stream);
        match verdict {
            Verdict::Continue | Verdict::HeldForBody => {
                *body = (!data.is_empty()).then(|| Bytes::from(data));
                Ok(None)
            }
            // The response headers are gone: the stream can only be reset.
            Verdict::Reply(_) | Verdict::Timeout | Verdict::Reset => {
                ctx.reset = true;
                Err(pingora::Error::explain(ErrorType::InternalError, "a filter answered after the response headers"))
            }
        }
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &pingora::Error, ctx: &mut RequestCtx) -> FailToProxy {
        if let Some(status) = ctx.replied {
            return FailToProxy { error_code: status, can_reuse_downstream: false };
        }
        if ctx.reset {
            return FailToProxy { error_code: 0, can_reuse_downstream: false };
        }
        use ErrorType as E;
        let reply = match e.etype() {
            E::ConnectTimedout | E::ConnectRefused | E::ConnectNoRoute | E::ConnectError => plain_reply(
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                "upstream_reset_before_response_started{connection_failure}",
            ),
            E::ReadTimedout | E::WriteTimedout if e.esource() == &pingora::ErrorSource::Upstream => timeout_reply(),
            E::HTTPStatus(code) => plain_reply(u32::from(*code), "", "proxy"),
            _ if e.esource() == &pingora::ErrorSource::Upstream => plain_reply(
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                "upstream_reset_before_response_started{connection_termination}",
            ),
            E::ReadError | E::WriteError | E::ConnectionClosed => {
                // The client is gone.
                return FailToProxy { error_code: 0, can_reuse_downstream: false };
            }
            _ => plain_reply(500, "", "internal"),
        };
        let code: u16 = send_reply(session, &reply).await.unwrap_or_default();
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    /// A client that goes away, and a stream a filter reset, are not the proxy's errors: logging
    /// each at ERROR would let clients flood the log.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, error: &pingora::Error) -> bool {
        ctx.reset
            || (error.esource() == &pingora::ErrorSource::Downstream
                && matches!(error.etype(), ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed))
    }

    async fn logging(&self, _session: &mut Session, _e: Option<&pingora::Error>, ctx: &mut RequestCtx) {
        if ctx.route.is_some() {
            self.chains.finish(&mut ctx.filters);
        }
    }
}
