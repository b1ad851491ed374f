//! The serialized map ("pairs") format used for header maps, local-reply headers, callout
//! headers and metadata:
//!
//! ```text
//! u32 N
//! N x { u32 key_len, u32 value_len }
//! N x { key bytes, 0x00, value bytes, 0x00 }
//! ```
//!
//! All integers are little-endian; lengths exclude the NUL terminators.

/// Largest serialized map the host accepts from a guest (1 MiB).
pub const MAX_PAIRS_BYTES: usize = 1 << 20;
/// Largest number of pairs the host accepts from a guest.
pub const MAX_PAIRS_COUNT: usize = 1024;

/// Why a serialized map was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PairsError {
    /// Larger than [`MAX_PAIRS_BYTES`].
    #[error("serialized map larger than {MAX_PAIRS_BYTES} bytes")]
    TooLarge,
    /// More than [`MAX_PAIRS_COUNT`] pairs.
    #[error("more than {MAX_PAIRS_COUNT} pairs")]
    TooMany,
    /// A length runs past the end of the buffer.
    #[error("a length runs past the end of the map")]
    Truncated,
    /// A key or value is not followed by a NUL byte.
    #[error("missing NUL terminator")]
    MissingNul,
    /// Bytes remain after the last pair.
    #[error("trailing bytes after the last pair")]
    TrailingBytes,
}

/// One decoded key/value pair.
pub type Pair = (Vec<u8>, Vec<u8>);

/// Serializes pairs. An empty map is `N = 0` (4 bytes).
pub fn encode<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = vec![0; encoded_len(pairs)];
    encode_into(pairs, &mut out);
    out
}

/// The size of [`encode`]'s output.
pub fn encoded_len<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> usize {
    4 + pairs.iter().map(|(k, v)| 10 + k.as_ref().len() + v.as_ref().len()).sum::<usize>()
}

/// Serializes pairs into `out`, which is exactly [`encoded_len`] bytes long (into guest memory,
/// say, with no buffer on the way).
///
/// # Panics
/// When `out` has another length: a bug in the caller.
pub fn encode_into<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)], out: &mut [u8]) {
    assert_eq!(out.len(), encoded_len(pairs), "pairs::encode_into: wrong output length");
    let (count, rest) = out.split_at_mut(4);
    count.copy_from_slice(&(pairs.len() as u32).to_le_bytes());
    let (mut lens, mut data) = rest.split_at_mut(8 * pairs.len());
    for (k, v) in pairs {
        let (k, v) = (k.as_ref(), v.as_ref());
        let (this, next) = lens.split_at_mut(8);
        this[..4].copy_from_slice(&(k.len() as u32).to_le_bytes());
        this[4..].copy_from_slice(&(v.len() as u32).to_le_bytes());
        lens = next;
        for bytes in [k, v] {
            let (this, next) = data.split_at_mut(bytes.len() + 1);
            this[..bytes.len()].copy_from_slice(bytes);
            this[bytes.len()] = 0;
            data = next;
        }
    }
}

/// Parses a serialized map. Inputs shorter than 4 bytes (including empty) are the empty map.
///
/// # Errors
/// Any structural problem or a limit; the input is never partially accepted.
pub fn decode(buf: &[u8]) -> Result<Vec<Pair>, PairsError> {
    if buf.len() > MAX_PAIRS_BYTES {
        return Err(PairsError::TooLarge);
    }
    if buf.len() < 4 {
        return Ok(Vec::new());
    }
    let word = |at: usize| -> Result<usize, PairsError> {
        let b = buf.get(at..at + 4).ok_or(PairsError::Truncated)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = word(0)?;
    if n > MAX_PAIRS_COUNT {
        return Err(PairsError::TooMany);
    }
    let mut data = 4 + n * 8;
    if data > buf.len() {
        return Err(PairsError::Truncated);
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let klen = word(4 + i * 8)?;
        let vlen = word(8 + i * 8)?;
        let mut take = |len: usize| -> Result<Vec<u8>, PairsError> {
            let end = data.checked_add(len).ok_or(PairsError::Truncated)?;
            let bytes = buf.get(data..end).ok_or(PairsError::Truncated)?.to_vec();
            match buf.get(end) {
                Some(0) => {}
                Some(_) => return Err(PairsError::MissingNul),
                None => return Err(PairsError::Truncated),
            }
            data = end + 1;
            Ok(bytes)
        };
        let k = take(klen)?;
        let v = take(vlen)?;
        out.push((k, v));
    }
    if data != buf.len() {
        return Err(PairsError::TrailingBytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encoding() {
        let b = encode(&[(":method", "GET")]);
        let mut want = vec![1, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0];
        want.extend_from_slice(b":method\0GET\0");
        assert_eq!(b, want);
        assert_eq!(encode::<&str, &str>(&[]), vec![0, 0, 0, 0]);
    }

    #[test]
    fn short_inputs_are_empty() {
        assert_eq!(decode(&[]), Ok(vec![]));
        assert_eq!(decode(&[0]), Ok(vec![]));
        assert_eq!(decode(&[0, 0, 0, 0]), Ok(vec![]));
    }

    #[test]
    fn malformed_inputs_are_rejected() {
        let good = encode(&[("a", "b")]);
        let mut bad_nul = good.clone();
        let last = bad_nul.len() - 1;
        bad_nul[last] = b'x';
        assert_eq!(decode(&bad_nul), Err(PairsError::MissingNul));
        assert_eq!(decode(&good[..good.len() - 1]), Err(PairsError::Truncated));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing), Err(PairsError::TrailingBytes));
        let mut huge_len = good;
        huge_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge_len), Err(PairsError::Truncated));
        assert_eq!(decode(&1025u32.to_le_bytes()), Err(PairsError::TooMany));
        assert_eq!(decode(&vec![0; MAX_PAIRS_BYTES + 1]), Err(PairsError::TooLarge));
    }

    #[test]
    fn limits_are_inclusive() {
        let many: Vec<(String, String)> = (0..MAX_PAIRS_COUNT).map(|i| (i.to_string(), String::new())).collect();
        assert_eq!(decode(&encode(&many)).map(|v| v.len()), Ok(MAX_PAIRS_COUNT));
        let mut too_many = many;
        too_many.push(("x".into(), "y".into()));
        assert_eq!(decode(&encode(&too_many)), Err(PairsError::TooMany));
        // A single value that makes the map exactly 1 MiB is accepted; one byte more is not.
        let v = vec![b'v'; MAX_PAIRS_BYTES - 4 - 8 - 1 - 2];
        assert_eq!(encode(&[("k", &v)]).len(), MAX_PAIRS_BYTES);
        assert!(decode(&encode(&[("k", &v)])).is_ok());
        let v2 = vec![b'v'; v.len() + 1];
        assert_eq!(decode(&encode(&[("k", &v2)])), Err(PairsError::TooLarge));
    }

    proptest! {
        #[test]
        fn round_trip(pairs in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..40), proptest::collection::vec(any::<u8>(), 0..80)),
            0..64,
        )) {
            let enc = encode(&pairs);
            prop_assert_eq!(decode(&enc).unwrap(), pairs);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn truncation_is_always_an_error(pairs in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..10), proptest::collection::vec(any::<u8>(), 0..10)),
            1..8,
        ), cut in 1usize..16) {
            let enc = encode(&pairs);
            let cut = cut.min(enc.len() - 4);
            prop_assert!(decode(&enc[..enc.len() - cut]).is_err());
        }
    }
}
