//! The 4-byte big-endian length prefix shared by the bootstrap envelope and
//! the control protocol.

use thiserror::Error;

/// Largest control-protocol frame payload, in bytes (128 KiB).
pub const MAX_CONTROL_FRAME: usize = 128 * 1024;

/// Largest bootstrap envelope payload a guest accepts, in bytes (1 MiB).
///
/// Real envelopes are a few hundred bytes; the cap only keeps a corrupt
/// length prefix from making a guest allocate gigabytes.
pub const MAX_ENVELOPE_FRAME: usize = 1024 * 1024;

/// Why a frame could not be built or taken apart.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer than four bytes: there is no length prefix.
    #[error("Frame too short: {actual} bytes, a length prefix needs 4")]
    TooShort {
        /// Bytes present.
        actual: usize,
    },
    /// The prefix and the payload disagree.
    #[error("Frame length prefix says {prefixed} bytes but {actual} bytes follow")]
    LengthMismatch {
        /// Length named by the prefix.
        prefixed: usize,
        /// Bytes actually present after the prefix.
        actual: usize,
    },
    /// The payload is over the cap for its kind of frame.
    #[error("Frame payload of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The cap.
        max: usize,
    },
}

/// Prepends the length prefix to `payload`, refusing payloads over `max`.
pub fn encode(payload: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    if payload.len() > max || payload.len() > u32::MAX as usize {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max,
        });
    }
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Reads the length prefix of a frame (the first four bytes).
pub fn prefix_len(frame: &[u8]) -> Result<usize, FrameError> {
    let head: [u8; 4] =
        frame
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(FrameError::TooShort {
                actual: frame.len(),
            })?;
    Ok(u32::from_be_bytes(head) as usize)
}

/// Splits a complete frame into its payload, checking prefix and cap.
pub fn decode(frame: &[u8], max: usize) -> Result<&[u8], FrameError> {
    let len = prefix_len(frame)?;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let payload = &frame[4..];
    if payload.len() != len {
        return Err(FrameError::LengthMismatch {
            prefixed: len,
            actual: payload.len(),
        });
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_failures() {
        let f = encode(b"hello", 16).unwrap();
        assert_eq!(&f[..4], &[0, 0, 0, 5]);
        assert_eq!(decode(&f, 16).unwrap(), b"hello");
        assert_eq!(decode(&f[..3], 16), Err(FrameError::TooShort { actual: 3 }));
        assert_eq!(
            decode(&f[..7], 16),
            Err(FrameError::LengthMismatch {
                prefixed: 5,
                actual: 3
            })
        );
        assert_eq!(decode(&f, 4), Err(FrameError::TooLarge { len: 5, max: 4 }));
        assert_eq!(
            encode(&[0; 17], 16),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
    }
}
