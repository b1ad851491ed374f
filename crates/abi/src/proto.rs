//! The protobuf wire format, as far as the host needs it: Envoy's built-in foreign functions
//! and the `GrpcService` a gRPC callout may name its cluster with.

use crate::Status;

/// A field's value.
pub(crate) enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// A fixed 32- or 64-bit value (skipped).
    Fixed,
}

fn varint(buf: &mut &[u8]) -> Result<u64, Status> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or(Status::BadArgument)?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Status::BadArgument)
}

/// The `(field number, value)` pairs of a message; an error ends it.
pub(crate) fn fields(mut buf: &[u8]) -> impl Iterator<Item = Result<(u64, Value<'_>), Status>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let field = (|| {
            let key = varint(&mut buf)?;
            let value = match key & 7 {
                0 => Value::Varint(varint(&mut buf)?),
                1 | 5 => {
                    let n = if key & 7 == 1 { 8 } else { 4 };
                    buf = buf.get(n..).ok_or(Status::BadArgument)?;
                    Value::Fixed
                }
                2 => {
                    let len = usize::try_from(varint(&mut buf)?).map_err(|_| Status::BadArgument)?;
                    let (bytes, rest) = buf.split_at_checked(len).ok_or(Status::BadArgument)?;
                    buf = rest;
                    Value::Bytes(bytes)
                }
                _ => return Err(Status::BadArgument),
            };
            Ok((key >> 3, value))
        })();
        if field.is_err() {
            buf = &[];
        }
        Some(field)
    })
}
