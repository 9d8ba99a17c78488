//! Typed framing for the control socket: a 4-byte big-endian
//! length prefix, then that many bytes of JSON, at most
//! [`MAX_CONTROL_FRAME`] bytes.
//!
//! [`ControlCodec<In, Out>`] decodes `In` and encodes `Out`;
//! [`ServerCodec`] and [`ClientCodec`] are the two directions.
//!
//! Errors keep the two layers apart, because a server treats them
//! differently: a [`ControlCodecError::Json`] means a well-framed message
//! that is not a valid request (answer `invalid_request`; the framing is
//! still in sync), while [`ControlCodecError::FrameTooLarge`] and
//! [`ControlCodecError::Io`] mean the byte stream itself is unusable (drop
//! the connection). Note that `FramedRead`/`Framed` end the stream after any
//! decode error, so a server answers `invalid_request` and then closes.

use bytes::{Bytes, BytesMut};
use runner_types::frame::MAX_CONTROL_FRAME;
use runner_types::{ControlRequest, ControlResponse};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::marker::PhantomData;
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec, LengthDelimitedCodecError};

/// Server side: decodes requests, encodes responses.
pub type ServerCodec = ControlCodec<ControlRequest, ControlResponse>;
/// Client side: decodes responses, encodes requests.
pub type ClientCodec = ControlCodec<ControlResponse, ControlRequest>;

/// Why a control frame could not be read or written.
#[derive(Debug, Error)]
pub enum ControlCodecError {
    /// The socket failed, or it closed in the middle of a frame.
    #[error("Control socket I/O failed")]
    Io(#[from] std::io::Error),
    /// A length prefix (read) or a message (write) over the cap.
    #[error("Control frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// Payload length.
        len: usize,
        /// The cap ([`MAX_CONTROL_FRAME`]).
        max: usize,
    },
    /// A complete frame whose payload is not a valid message.
    #[error("Control frame is not a valid message")]
    Json(#[source] serde_json::Error),
}

impl ControlCodecError {
    /// Whether the byte stream is still in sync after this error: true only
    /// for [`Self::Json`] (the bad frame was consumed whole).
    pub fn is_message_error(&self) -> bool {
        matches!(self, Self::Json(_))
    }
}

/// Length-prefixed JSON framing that decodes `In` and encodes `Out`.
pub struct ControlCodec<In, Out> {
    frames: LengthDelimitedCodec,
    types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> ControlCodec<In, Out> {
    /// A codec with the control protocol's framing.
    pub fn new() -> Self {
        Self {
            frames: LengthDelimitedCodec::builder()
                .big_endian()
                .length_field_type::<u32>()
                .max_frame_length(MAX_CONTROL_FRAME)
                .new_codec(),
            types: PhantomData,
        }
    }

    fn encode_value<T: Serialize + ?Sized>(
        &mut self,
        item: &T,
        dst: &mut BytesMut,
    ) -> Result<(), ControlCodecError> {
        let json = serde_json::to_vec(item).map_err(ControlCodecError::Json)?;
        if json.len() > MAX_CONTROL_FRAME {
            return Err(ControlCodecError::FrameTooLarge {
                len: json.len(),
                max: MAX_CONTROL_FRAME,
            });
        }
        Ok(self.frames.encode(Bytes::from(json), dst)?)
    }
}

impl<In, Out> Default for ControlCodec<In, Out> {
    fn default() -> Self {
        Self::new()
    }
}

impl<In, Out> fmt::Debug for ControlCodec<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlCodec")
            .field("in", &std::any::type_name::<In>())
            .field("out", &std::any::type_name::<Out>())
            .finish()
    }
}

impl<In: DeserializeOwned, Out> Decoder for ControlCodec<In, Out> {
    type Item = In;
    type Error = ControlCodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, ControlCodecError> {
        let frame = match self.frames.decode(src) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(None),
            Err(e) => return Err(frame_error(e, src)),
        };
        serde_json::from_slice(&frame)
            .map(Some)
            .map_err(ControlCodecError::Json)
    }
}

/// Maps the length codec's error: its "frame too big" error leaves the
/// prefix unconsumed at the front of `src`, so the length can be reported.
fn frame_error(e: std::io::Error, src: &BytesMut) -> ControlCodecError {
    let too_big = e
        .get_ref()
        .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>());
    match src.first_chunk::<4>() {
        Some(head) if too_big => ControlCodecError::FrameTooLarge {
            len: u32::from_be_bytes(*head) as usize,
            max: MAX_CONTROL_FRAME,
        },
        _ => ControlCodecError::Io(e),
    }
}

/// A message already serialised to JSON (for answers that are sent many
/// times unchanged, such as a health snapshot).
#[derive(Debug, Clone)]
pub struct EncodedJson(pub Bytes);

impl<In, Out> Encoder<EncodedJson> for ControlCodec<In, Out> {
    type Error = ControlCodecError;

    fn encode(&mut self, item: EncodedJson, dst: &mut BytesMut) -> Result<(), ControlCodecError> {
        if item.0.len() > MAX_CONTROL_FRAME {
            return Err(ControlCodecError::FrameTooLarge {
                len: item.0.len(),
                max: MAX_CONTROL_FRAME,
            });
        }
        Ok(self.frames.encode(item.0, dst)?)
    }
}

impl<In, Out: Serialize> Encoder<Out> for ControlCodec<In, Out> {
    type Error = ControlCodecError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), ControlCodecError> {
        self.encode_value(&item, dst)
    }
}

impl<In, Out: Serialize> Encoder<&Out> for ControlCodec<In, Out> {
    type Error = ControlCodecError;

    fn encode(&mut self, item: &Out, dst: &mut BytesMut) -> Result<(), ControlCodecError> {
        self.encode_value(item, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_types::ControlRequest;

    fn frame(payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn decodes_across_partial_reads_and_back_to_back_frames() {
        let mut codec = ServerCodec::new();
        let whole = frame(br#"{"op":"health_check"}"#);
        let mut buf = BytesMut::new();
        // Byte by byte: nothing until the last byte arrives.
        for (i, b) in whole.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = codec.decode(&mut buf).unwrap();
            assert_eq!(got.is_some(), i == whole.len() - 1, "at byte {i}");
        }
        // Two frames in one read.
        buf.extend_from_slice(&whole);
        buf.extend_from_slice(&frame(
            br#"{"op":"shutdown_user","payload":{"user_id":"a"}}"#,
        ));
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(ControlRequest::HealthCheck)
        );
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(ControlRequest::ShutdownUser {
                user_id: "a".into()
            })
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn encode_matches_the_wire_format() {
        let mut codec = ClientCodec::new();
        let mut buf = BytesMut::new();
        codec
            .encode(&ControlRequest::HealthCheck, &mut buf)
            .unwrap();
        assert_eq!(&buf[..], &frame(br#"{"op":"health_check"}"#)[..]);
    }

    #[test]
    fn oversize_prefix_is_a_frame_error_and_json_stays_in_sync() {
        let mut codec = ServerCodec::new();
        let mut buf = BytesMut::from(&(MAX_CONTROL_FRAME as u32 + 1).to_be_bytes()[..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            ControlCodecError::FrameTooLarge { len, max: MAX_CONTROL_FRAME } if len == MAX_CONTROL_FRAME + 1
        ));
        assert!(!err.is_message_error());

        // Exactly at the cap is accepted as a frame (then fails as JSON).
        let mut codec = ServerCodec::new();
        let mut buf = frame(&vec![b' '; MAX_CONTROL_FRAME]);
        buf.extend_from_slice(&frame(br#"{"op":"health_check"}"#));
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(err.is_message_error(), "{err:?}");
        // The next frame is still readable.
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(ControlRequest::HealthCheck)
        );
    }

    #[test]
    fn oversize_message_is_not_encoded() {
        let mut codec = ServerCodec::new();
        let mut buf = BytesMut::new();
        let huge = ControlResponse::Error(runner_types::control::ControlError {
            code: runner_types::ControlErrorCode::Internal,
            message: "x".repeat(MAX_CONTROL_FRAME),
        });
        let err = codec.encode(huge, &mut buf).unwrap_err();
        assert!(matches!(err, ControlCodecError::FrameTooLarge { .. }));
        assert!(buf.is_empty());
    }
}
