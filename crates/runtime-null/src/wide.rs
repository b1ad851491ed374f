//! Serialized maps from 0.1.x SDK filters built for a 64-bit host.
//!
//! The map format's integers are `u32` (see [`wasmux_abi::pairs`]), and that is what the 0.2.x
//! SDK writes on every target. The 0.1.x SDK writes `usize`s (`map.len().to_le_bytes()`), which
//! is `u32` on wasm32 but 8 bytes natively, while it still *reads* `u32`s. So for an ABI 0.1.0
//! library, a map argument that is not a valid `u32` map but is a valid map of 8-byte integers is
//! re-encoded into a host buffer, and the host function reads that instead (native "guest"
//! memory is the address space, so a host buffer is as good an argument as a guest one).

use wasmux_abi::pairs::{self, MAX_PAIRS_BYTES, MAX_PAIRS_COUNT, Pair};

use crate::hostcalls::Sym;

/// `(pointer, length)` argument positions of the serialized maps each host function takes.
pub(crate) const fn map_args(sym: Sym) -> &'static [(usize, usize)] {
    match sym {
        Sym::proxy_set_header_map_pairs => &[(1, 2)],
        Sym::proxy_send_local_response => &[(5, 6)],
        Sym::proxy_http_call => &[(2, 3), (6, 7)],
        Sym::proxy_grpc_call | Sym::proxy_grpc_stream => &[(6, 7)],
        _ => &[],
    }
}

/// Re-encodes a map of 8-byte integers as a standard map; `None` when `buf` is a valid
/// standard map already, or not a valid wide one either (the host then reports it as usual).
pub(crate) fn narrow(buf: &[u8]) -> Option<Vec<u8>> {
    if pairs::decode(buf).is_ok() {
        return None;
    }
    decode_wide(buf).map(|p| pairs::encode(&p))
}

/// Parses `u64 N, N x {u64 key_len, u64 value_len}, N x {key, 0, value, 0}`, exactly.
fn decode_wide(buf: &[u8]) -> Option<Vec<Pair>> {
    if buf.len() > 2 * MAX_PAIRS_BYTES {
        return None;
    }
    let word = |at: usize| -> Option<usize> {
        let b: [u8; 8] = buf.get(at..at.checked_add(8)?)?.try_into().ok()?;
        usize::try_from(u64::from_le_bytes(b)).ok()
    };
    let n = word(0)?;
    if n > MAX_PAIRS_COUNT {
        return None;
    }
    let mut data = 8 + n * 16;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (k, v) = (word(8 + i * 16)?, word(16 + i * 16)?);
        let key = buf.get(data..data.checked_add(k)?)?;
        data += k;
        (buf.get(data) == Some(&0)).then_some(())?;
        data += 1;
        let value = buf.get(data..data.checked_add(v)?)?;
        data += v;
        (buf.get(data) == Some(&0)).then_some(())?;
        data += 1;
        out.push((key.to_vec(), value.to_vec()));
    }
    (data == buf.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wide(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = (pairs.len() as u64).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend((k.len() as u64).to_le_bytes());
            out.extend((v.len() as u64).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend(k.as_bytes());
            out.push(0);
            out.extend(v.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn wide_maps_are_narrowed() {
        let p = [(":path", "/"), ("x-user", "")];
        assert_eq!(narrow(&wide(&p)), Some(pairs::encode(&p)));
        // The 0.1.x SDK's empty map is 8 zero bytes.
        assert_eq!(narrow(&[0; 8]), Some(vec![0; 4]));
        // Standard maps, and garbage, are left alone.
        assert_eq!(narrow(&pairs::encode(&p)), None);
        assert_eq!(narrow(&[1, 2, 3, 4, 5, 6, 7, 8, 9]), None);
        let mut bad = wide(&p);
        bad.push(0);
        assert_eq!(narrow(&bad), None);
    }
}
