//! Reading test files: YAML (JSON is read as YAML too) with the line and column of every node,
//! so every error in a test file can say where it is.

use std::fmt;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{Node, Span};
use serde_json::{Map, Number, Value};

/// A place in a test file: 1-based line and column (0 when unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pos {
    /// Line.
    pub line: usize,
    /// Column.
    pub column: usize,
}

impl Pos {
    pub(crate) fn of_span(span: &Span) -> Self {
        span.start().map_or_else(Self::default, |m| Self { line: m.line(), column: m.column() })
    }

    pub(crate) fn of(node: &Node) -> Self {
        Self::of_span(node.span())
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// An error at a place in a test file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct At {
    pub(crate) pos: Pos,
    pub(crate) message: String,
}

pub(crate) fn at(node: &Node, message: impl Into<String>) -> At {
    At { pos: Pos::of(node), message: message.into() }
}

pub(crate) fn at_key(key: &MarkedScalarNode, message: impl Into<String>) -> At {
    At { pos: Pos::of_span(key.span()), message: message.into() }
}

/// Parses YAML (or JSON) text into a node tree; duplicate keys are errors.
pub(crate) fn parse(text: &str) -> Result<Node, At> {
    let options = marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true).prevent_coercion(false);
    marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| {
        use marked_yaml::LoadError as L;
        let mark = match &e {
            L::TopLevelMustBeMapping(m)
            | L::TopLevelMustBeSequence(m)
            | L::UnexpectedAnchor(m)
            | L::MappingKeyMustBeScalar(m)
            | L::UnexpectedTag(m) => Some(*m),
            L::ScanError(m, _) => Some(*m),
            L::DuplicateKey(d) => d.key.span().start().copied(),
        };
        let pos = mark.map_or_else(Pos::default, |m| Pos { line: m.line(), column: m.column() });
        At { pos, message: format!("invalid YAML or JSON: {e}") }
    })
}

/// Whether a scalar is YAML's null (`~`, `null`, or nothing), unquoted.
pub(crate) fn is_null(node: &Node) -> bool {
    node.as_scalar().is_some_and(|s| s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL"))
}

/// The node as JSON: unquoted scalars become null, booleans and numbers where they read as
/// such; everything quoted stays text.
pub(crate) fn to_json(node: &Node) -> Value {
    match node {
        Node::Scalar(s) => scalar_json(s),
        Node::Sequence(seq) => Value::Array(seq.iter().map(to_json).collect()),
        Node::Mapping(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.as_str().to_string(), to_json(v))).collect::<Map<_, _>>())
        }
    }
}

fn scalar_json(s: &MarkedScalarNode) -> Value {
    let text = s.as_str();
    if !s.may_coerce() {
        return Value::String(text.to_string());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Ok(u) = text.parse::<u64>() {
        return Value::Number(u.into());
    }
    if text.contains(['.', 'e', 'E'])
        && let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64)
    {
        return Value::Number(n);
    }
    Value::String(text.to_string())
}

/// Deserializes a node through its JSON form. The error is placed at the offending key when
/// serde names one (`unknown field`, `missing field` at the node itself).
pub(crate) fn typed<T: serde::de::DeserializeOwned>(node: &Node, what: &str) -> Result<T, At> {
    serde_json::from_value(to_json(node)).map_err(|e| {
        let message = e.to_string();
        let pos = unknown_field(&message).and_then(|f| find_key(node, f)).unwrap_or_else(|| Pos::of(node));
        // serde_json adds "at line 0 column 0" to errors from a `Value`: say where instead.
        let message = message.split(" at line ").next().unwrap_or(&message).to_string();
        At { pos, message: format!("{what}: {message}") }
    })
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// Where a key first occurs in a node tree.
fn find_key(node: &Node, key: &str) -> Option<Pos> {
    match node {
        Node::Mapping(map) => map
            .iter()
            .find_map(|(k, v)| if k.as_str() == key { Some(Pos::of_span(k.span())) } else { find_key(v, key) }),
        Node::Sequence(seq) => seq.iter().find_map(|n| find_key(n, key)),
        Node::Scalar(_) => None,
    }
}

/// The node as a mapping whose keys are all in `allowed`.
pub(crate) fn mapping<'n>(node: &'n Node, what: &str, allowed: &[&str]) -> Result<&'n MarkedMappingNode, At> {
    let map = node.as_mapping().ok_or_else(|| at(node, format!("{what}: expected a mapping")))?;
    if !allowed.is_empty() {
        for (k, _) in map.iter() {
            if !allowed.contains(&k.as_str()) {
                return Err(at_key(
                    k,
                    format!("{what}: unknown key `{}` (expected one of: {})", k.as_str(), allowed.join(", ")),
                ));
            }
        }
    }
    Ok(map)
}

/// The node as text (a scalar, quoted or not).
pub(crate) fn text<'n>(node: &'n Node, what: &str) -> Result<&'n str, At> {
    node.as_scalar().map(|s| s.as_str()).ok_or_else(|| at(node, format!("{what}: expected a text value")))
}

/// The node as an unsigned number.
pub(crate) fn number(node: &Node, what: &str) -> Result<u64, At> {
    text(node, what)?.trim().parse().map_err(|_| at(node, format!("{what}: expected a whole number")))
}

/// The node as a signed number.
pub(crate) fn signed(node: &Node, what: &str) -> Result<i64, At> {
    text(node, what)?.trim().parse().map_err(|_| at(node, format!("{what}: expected a whole number")))
}

/// The node as a boolean.
pub(crate) fn boolean(node: &Node, what: &str) -> Result<bool, At> {
    match text(node, what)? {
        "true" | "True" | "TRUE" => Ok(true),
        "false" | "False" | "FALSE" => Ok(false),
        _ => Err(at(node, format!("{what}: expected true or false"))),
    }
}

/// The node as a sequence.
pub(crate) fn sequence<'n>(node: &'n Node, what: &str) -> Result<&'n [Node], At> {
    node.as_sequence().map(|s| s.as_slice()).ok_or_else(|| at(node, format!("{what}: expected a list")))
}
