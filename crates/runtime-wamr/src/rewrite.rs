//! The section-level rewrite that keeps guest code out of WAMR's instantiation, done once per
//! module before WAMR loads it, on bytes [`wasmux_abi::validate()`] has accepted.
//!
//! WAMR runs three things while it instantiates: the module's start function, and the function
//! exports named `__wasm_call_ctors` and `__post_instantiate` (its support for C toolchains).
//! No deadline can reach code running there (the instance does not exist yet for
//! `wasm_runtime_terminate`), and the `WasmModule` contract says instantiation runs no guest
//! code anyway. So:
//!
//! 1. the start section is removed and its function exported as [`START`]; the instance calls
//!    it right after instantiation, as a top-level call under the deadline;
//! 2. function exports with those two names are renamed with the [`PREFIX`] (a prefix guest
//!    names cannot use: `validate` refuses it), and looked up under the new name.
//!
//! Only the export and start sections change; every index stays the same, and the rest of the
//! module is copied byte for byte. A module with neither is loaded as it is.

/// The reserved prefix of names this crate adds.
pub(crate) const PREFIX: &str = "wasmux:wamr:";

/// The export name of the deferred start function.
pub(crate) const START: &str = "wasmux:wamr:start";

/// Function exports WAMR would call during instantiation.
const RUN_AT_INSTANTIATION: [&str; 2] = ["__wasm_call_ctors", "__post_instantiate"];

const EXPORT: u8 = 7;
const START_SECTION: u8 = 8;
const KIND_FUNC: u8 = 0;

/// The name WAMR knows a function export by.
pub(crate) fn wamr_name(name: &str) -> std::borrow::Cow<'_, str> {
    if RUN_AT_INSTANTIATION.contains(&name) { format!("{PREFIX}{name}").into() } else { name.into() }
}

/// A module prepared for WAMR.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The rewritten bytes, or `None` when the module needs no change.
    pub(crate) bytes: Option<Vec<u8>>,
    /// Whether the module has a start function, exported as [`START`].
    pub(crate) start: bool,
}

/// Reads an unsigned LEB128 number of at most 32 bits.
fn leb(bytes: &[u8], pos: &mut usize) -> Option<u32> {
    let mut result = 0u32;
    for shift in (0..35).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        result |= u32::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(result);
        }
    }
    None
}

/// Appends `v` as unsigned LEB128.
fn put_leb(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// One section: id, the whole section (header included), and its payload.
struct Section {
    id: u8,
    whole: std::ops::Range<usize>,
    payload: std::ops::Range<usize>,
}

fn sections(bytes: &[u8]) -> Option<Vec<Section>> {
    let mut out = Vec::new();
    let mut pos = 8;
    while pos < bytes.len() {
        let start = pos;
        let id = *bytes.get(pos)?;
        pos += 1;
        let size = usize::try_from(leb(bytes, &mut pos)?).ok()?;
        let end = pos.checked_add(size)?;
        if end > bytes.len() {
            return None;
        }
        out.push(Section { id, whole: start..end, payload: pos..end });
        pos = end;
    }
    Some(out)
}

/// One export entry.
struct Export<'a> {
    name: &'a [u8],
    kind: u8,
    index: u32,
}

fn exports(payload: &[u8]) -> Option<Vec<Export<'_>>> {
    let mut pos = 0;
    let count = leb(payload, &mut pos)?;
    let mut out = Vec::new();
    for _ in 0..count {
        let len = usize::try_from(leb(payload, &mut pos)?).ok()?;
        let name = payload.get(pos..pos.checked_add(len)?)?;
        pos += len;
        let kind = *payload.get(pos)?;
        pos += 1;
        let index = leb(payload, &mut pos)?;
        out.push(Export { name, kind, index });
    }
    Some(out)
}

/// Encodes an export section (header included).
fn export_section(entries: &[(Vec<u8>, u8, u32)]) -> Option<Vec<u8>> {
    let mut payload = Vec::new();
    put_leb(&mut payload, u32::try_from(entries.len()).ok()?);
    for (name, kind, index) in entries {
        put_leb(&mut payload, u32::try_from(name.len()).ok()?);
        payload.extend_from_slice(name);
        payload.push(*kind);
        put_leb(&mut payload, *index);
    }
    let mut out = vec![EXPORT];
    put_leb(&mut out, u32::try_from(payload.len()).ok()?);
    out.extend_from_slice(&payload);
    Some(out)
}

/// Prepares validated module bytes for WAMR (see the module docs).
///
/// # Errors
/// A description of the problem when the bytes cannot be read as expected (they were
/// validated, so this points at a bug, and the module is refused rather than loaded as is).
pub(crate) fn prepare(bytes: &[u8]) -> Result<Prepared, String> {
    let malformed = || "malformed module sections".to_string();
    let sections = sections(bytes).ok_or_else(malformed)?;
    let start = match sections.iter().find(|s| s.id == START_SECTION) {
        Some(s) => {
            let mut pos = s.payload.start;
            Some(leb(bytes, &mut pos).ok_or_else(malformed)?)
        }
        None => None,
    };
    let export = sections.iter().find(|s| s.id == EXPORT);
    let old = match export {
        Some(s) => exports(&bytes[s.payload.clone()]).ok_or_else(malformed)?,
        None => Vec::new(),
    };
    let runs_at_instantiation =
        |e: &Export<'_>| e.kind == KIND_FUNC && RUN_AT_INSTANTIATION.iter().any(|n| n.as_bytes() == e.name);
    if start.is_none() && !old.iter().any(runs_at_instantiation) {
        return Ok(Prepared { bytes: None, start: false });
    }
    let mut entries: Vec<(Vec<u8>, u8, u32)> = old
        .iter()
        .map(|e| {
            let name = if runs_at_instantiation(e) { [PREFIX.as_bytes(), e.name].concat() } else { e.name.to_vec() };
            (name, e.kind, e.index)
        })
        .collect();
    if let Some(func) = start {
        entries.push((START.as_bytes().to_vec(), KIND_FUNC, func));
    }
    let new_exports = export_section(&entries).ok_or_else(|| "too many exports".to_string())?;
    let mut out = Vec::with_capacity(bytes.len() + new_exports.len());
    out.extend_from_slice(&bytes[..8]);
    for s in &sections {
        match s.id {
            EXPORT => out.extend_from_slice(&new_exports),
            // The start section follows where the export section goes: a module without one
            // gets it there.
            START_SECTION if export.is_none() => out.extend_from_slice(&new_exports),
            START_SECTION => {}
            _ => out.extend_from_slice(&bytes[s.whole.clone()]),
        }
    }
    Ok(Prepared { bytes: Some(out), start: start.is_some() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wat(text: &str) -> Vec<u8> {
        wat::parse_str(text).expect("wat")
    }

    /// Export names and kinds of a module, in order.
    fn export_names(bytes: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(bytes) {
            if let wasmparser::Payload::ExportSection(r) = payload.expect("parses") {
                for e in r {
                    names.push(e.expect("export").name.to_string());
                }
            }
        }
        names
    }

    fn has_start(bytes: &[u8]) -> bool {
        wasmparser::Parser::new(0).parse_all(bytes).any(|p| matches!(p, Ok(wasmparser::Payload::StartSection { .. })))
    }

    #[test]
    fn plain_modules_are_left_alone() {
        let bytes = wat(r#"(module (func (export "f")) (global (export "__wasm_call_ctors") i32 (i32.const 0)))"#);
        let p = prepare(&bytes).unwrap();
        assert!(p.bytes.is_none() && !p.start);
    }

    #[test]
    fn start_becomes_an_export() {
        for text in [
            r#"(module (func $s) (func (export "f")) (start $s))"#,
            r#"(module (func $s) (start $s))"#,
            r#"(module (memory 1) (func $s) (start $s) (data (i32.const 0) "x"))"#,
        ] {
            let bytes = wat(text);
            let p = prepare(&bytes).unwrap();
            let out = p.bytes.expect("rewritten");
            assert!(p.start);
            wasmparser::Validator::new().validate_all(&out).expect("valid");
            assert!(!has_start(&out));
            assert_eq!(export_names(&out).last().map(String::as_str), Some(START), "{text}");
        }
    }

    #[test]
    fn instantiation_exports_are_renamed() {
        let bytes = wat(
            r#"(module (func (export "__wasm_call_ctors")) (func (export "g")) (func (export "__post_instantiate")))"#,
        );
        let out = prepare(&bytes).unwrap().bytes.expect("rewritten");
        wasmparser::Validator::new().validate_all(&out).expect("valid");
        assert_eq!(export_names(&out), ["wasmux:wamr:__wasm_call_ctors", "g", "wasmux:wamr:__post_instantiate"]);
        assert_eq!(wamr_name("__post_instantiate"), "wasmux:wamr:__post_instantiate");
        assert_eq!(wamr_name("g"), "g");
    }

    #[test]
    fn leb_round_trip() {
        for v in [0, 1, 127, 128, 300, 1 << 20, u32::MAX] {
            let mut out = Vec::new();
            put_leb(&mut out, v);
            let mut pos = 0;
            assert_eq!(leb(&out, &mut pos), Some(v));
            assert_eq!(pos, out.len());
        }
    }
}
