//! Values between wasmux's raw words and WAMR's calling conventions.
//!
//! - Host functions use WAMR's *raw* convention: one 64-bit slot per argument (an `i32` in the
//!   low half), the result written back to slot 0. WAMR checks an import's type against the
//!   symbol's signature string, e.g. `(iiI)i`, when it loads a module.
//! - Exports are called through `wasm_runtime_call_wasm`: 32-bit cells, one per `i32`/`f32`,
//!   two (low half first) per `i64`/`f64`, results written back from cell 0.

use wasmux_abi::ValType;

/// The most parameters or results an export may have to be callable through a `FuncRef`.
pub(crate) const MAX_VALUES: usize = 16;

/// Cells enough for [`MAX_VALUES`] 64-bit values.
pub(crate) const MAX_CELLS: usize = 2 * MAX_VALUES;

/// WAMR's signature string for a host function, e.g. `(iiI)i`; `None` for a type WAMR's
/// native signatures cannot express.
pub(crate) fn signature(params: &[ValType], results: &[ValType]) -> Option<String> {
    let code = |t: &ValType| match t {
        ValType::I32 => Some('i'),
        ValType::I64 => Some('I'),
        ValType::F32 => Some('f'),
        ValType::F64 => Some('F'),
        ValType::Other => None,
    };
    let mut s = String::with_capacity(params.len() + 4);
    s.push('(');
    for p in params {
        s.push(code(p)?);
    }
    s.push(')');
    match results {
        [] => {}
        [r] => s.push(code(r)?),
        _ => return None,
    }
    Some(s)
}

/// Cells a value of type `ty` takes.
pub(crate) fn cells(ty: ValType) -> usize {
    match ty {
        ValType::I64 | ValType::F64 => 2,
        _ => 1,
    }
}

/// Cells a list of values takes.
pub(crate) fn cell_count(types: &[ValType]) -> usize {
    types.iter().map(|&t| cells(t)).sum()
}

/// Writes `args` (raw words) as cells of `types` into `out`; returns the cells written.
/// `out` holds at least [`cell_count`]`(types)` cells.
pub(crate) fn to_cells(args: &[u64], types: &[ValType], out: &mut [u32]) -> usize {
    let mut at = 0;
    for (&raw, &ty) in args.iter().zip(types) {
        if cells(ty) == 2 {
            if let Some([lo, hi]) = out.get_mut(at..at + 2) {
                *lo = raw as u32;
                *hi = (raw >> 32) as u32;
            }
            at += 2;
        } else {
            if let Some(cell) = out.get_mut(at) {
                *cell = raw as u32;
            }
            at += 1;
        }
    }
    at
}

/// Reads the first result of type `ty` from the cells (a raw word: `i32` zero-extended).
pub(crate) fn from_cells(cells_in: &[u32], ty: ValType) -> u64 {
    let lo = u64::from(cells_in.first().copied().unwrap_or(0));
    if cells(ty) == 2 { lo | (u64::from(cells_in.get(1).copied().unwrap_or(0)) << 32) } else { lo }
}

/// A raw host-call slot as a raw word of type `ty`: the low half for 32-bit types.
pub(crate) fn from_slot(slot: u64, ty: ValType) -> u64 {
    if cells(ty) == 2 { slot } else { slot & 0xffff_ffff }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ValType::{F64, I32, I64};

    #[test]
    fn signatures() {
        assert_eq!(signature(&[I32, I32, I64], &[I32]).as_deref(), Some("(iiI)i"));
        assert_eq!(signature(&[], &[]).as_deref(), Some("()"));
        assert_eq!(signature(&[F64], &[I32, I32]), None);
        assert_eq!(signature(&[ValType::Other], &[]), None);
    }

    #[test]
    fn cells_round_trip() {
        let mut out = [0u32; MAX_CELLS];
        let n = to_cells(&[0xffff_ffff, 0x1122_3344_5566_7788, 7], &[I32, I64, I32], &mut out);
        assert_eq!(n, 4);
        assert_eq!(&out[..4], &[0xffff_ffff, 0x5566_7788, 0x1122_3344, 7]);
        assert_eq!(from_cells(&out[1..], I64), 0x1122_3344_5566_7788);
        assert_eq!(from_cells(&out, I32), 0xffff_ffff);
        assert_eq!(from_slot(u64::MAX, I32), 0xffff_ffff);
        assert_eq!(from_slot(u64::MAX, I64), u64::MAX);
    }
}
