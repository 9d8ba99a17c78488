//! The `cursor` of `logs` answers: one [`LogCursor`] per selected stream,
//! as one opaque string (`oxydra-vm.stdout:<epoch>:<pos>,...`).

use crate::logs::LogCursor;
use runner_types::{GuestRole, LogStream};
use thiserror::Error;

/// A `logs` request's `after` that is not a cursor this runner wrote.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("after {value:?} is not a logs cursor (pass a previous answer's `cursor` unchanged)")]
pub struct CursorError {
    /// The value as sent.
    pub value: String,
}

/// A position per (role, stream).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamCursors(pub Vec<(GuestRole, LogStream, LogCursor)>);

impl StreamCursors {
    /// The position of (`role`, `stream`), if the cursor has one.
    pub fn get(&self, role: GuestRole, stream: LogStream) -> Option<LogCursor> {
        self.0
            .iter()
            .find(|(r, s, _)| (*r, *s) == (role, stream))
            .map(|(_, _, c)| *c)
    }

    /// Sets the position of (`role`, `stream`).
    pub fn set(&mut self, role: GuestRole, stream: LogStream, cursor: LogCursor) {
        match self
            .0
            .iter_mut()
            .find(|(r, s, _)| (*r, *s) == (role, stream))
        {
            Some(entry) => entry.2 = cursor,
            None => self.0.push((role, stream, cursor)),
        }
    }

    /// The wire form.
    pub fn encode(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(r, s, c)| format!("{}.{}:{}:{}", r.label(), s.as_str(), c.epoch, c.pos))
            .collect();
        parts.join(",")
    }

    /// Parses the wire form.
    pub fn parse(value: &str) -> Result<Self, CursorError> {
        let err = || CursorError {
            value: value.to_owned(),
        };
        let mut out = Self::default();
        for part in value.split(',') {
            let mut fields = part.split(':');
            let (Some(name), Some(epoch), Some(pos), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(err());
            };
            let (label, stream) = name.rsplit_once('.').ok_or_else(err)?;
            let role = GuestRole::from_label(label).ok_or_else(err)?;
            let stream = match stream {
                "stdout" => LogStream::Stdout,
                "stderr" => LogStream::Stderr,
                _ => return Err(err()),
            };
            let cursor = LogCursor {
                epoch: epoch.parse().map_err(|_| err())?,
                pos: pos.parse().map_err(|_| err())?,
            };
            out.set(role, stream, cursor);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_junk() {
        let mut c = StreamCursors::default();
        c.set(
            GuestRole::Runtime,
            LogStream::Stdout,
            LogCursor { epoch: 7, pos: 42 },
        );
        c.set(
            GuestRole::Sidecar,
            LogStream::Stderr,
            LogCursor { epoch: 7, pos: 0 },
        );
        let text = c.encode();
        assert_eq!(text, "oxydra-vm.stdout:7:42,shell-vm.stderr:7:0");
        assert_eq!(StreamCursors::parse(&text).unwrap(), c);
        for junk in [
            "",
            "x",
            "oxydra-vm.stdout:1",
            "oxydra-vm.stdin:1:2",
            "vm.stdout:1:2",
            "oxydra-vm.stdout:a:2",
        ] {
            assert!(StreamCursors::parse(junk).is_err(), "{junk}");
        }
    }
}
