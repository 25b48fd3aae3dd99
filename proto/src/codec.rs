//! Newline-delimited JSON framing, without I/O.
//!
//! A frame is one JSON object followed by `\n`. A line longer than [`MAX_LINE_BYTES`]
//! (without its newline) is an error: the receiver closes that connection.

use serde::{Serialize, de::DeserializeOwned};

/// The longest line either side accepts, without its terminating newline (64 KiB).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Why a line could not be framed or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// No newline within [`MAX_LINE_BYTES`].
    #[error("line longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    /// The peer closed the connection in the middle of a line.
    #[error("connection closed after {0} bytes of an unterminated line")]
    Truncated(usize),
    /// The line is not valid UTF-8.
    #[error("line is not valid UTF-8")]
    NotUtf8,
    /// The line is not a JSON object with a known shape.
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// Serializes one message as a line (JSON plus `\n`).
pub fn encode_line<T: Serialize>(message: &T) -> Vec<u8> {
    // Serializing these plain derive types cannot fail: no maps with non-string keys.
    let mut line = serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// Decodes one line (with or without its trailing `\n` / `\r\n`).
pub fn decode_line<T: DeserializeOwned>(line: &[u8]) -> Result<T, CodecError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_LINE_BYTES {
        return Err(CodecError::LineTooLong);
    }
    let text = std::str::from_utf8(line).map_err(|_| CodecError::NotUtf8)?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| CodecError::Invalid(e.to_string()))?;
    if !value.get("type").is_some_and(serde_json::Value::is_string) {
        return Err(CodecError::Invalid(
            "not a JSON object with a string \"type\"".into(),
        ));
    }
    serde_json::from_value(value).map_err(|e| CodecError::Invalid(e.to_string()))
}

/// Splits a byte stream into lines, enforcing [`MAX_LINE_BYTES`].
///
/// Feed it whatever a read returned with [`LineDecoder::push`], then take complete lines
/// with [`LineDecoder::next_line`]; call [`LineDecoder::finish`] at end of stream.
#[derive(Debug, Default)]
pub struct LineDecoder {
    buffer: Vec<u8>,
    /// How far `buffer` has been searched for a newline already.
    scanned: usize,
}

impl LineDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Returns the next complete line without its newline, `None` when more bytes are
    /// needed, or [`CodecError::LineTooLong`] once the pending line exceeds the limit.
    pub fn next_line(&mut self) -> Option<Result<Vec<u8>, CodecError>> {
        match self.buffer[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(offset) => {
                let end = self.scanned + offset;
                self.scanned = 0;
                if end > MAX_LINE_BYTES {
                    return Some(Err(CodecError::LineTooLong));
                }
                let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
                line.pop();
                Some(Ok(line))
            }
            None => {
                self.scanned = self.buffer.len();
                (self.buffer.len() > MAX_LINE_BYTES).then_some(Err(CodecError::LineTooLong))
            }
        }
    }

    /// At end of stream: an error if part of a line is still pending.
    pub fn finish(&self) -> Result<(), CodecError> {
        match self.buffer.len() {
            0 => Ok(()),
            n => Err(CodecError::Truncated(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AppMessage, SidecarMessage};
    use proptest::prelude::*;

    #[test]
    fn round_trips_every_message() {
        let messages = [
            AppMessage::Hello {
                v: 1,
                container: "web".into(),
                pid: 7,
            },
            AppMessage::Activity {
                accepted_total: 3,
                inflight: 1,
            },
            AppMessage::Drained {
                inflight_at_start: 2,
            },
            AppMessage::Done {
                ok: false,
                error: Some("flush failed".into()),
            },
            AppMessage::Done {
                ok: true,
                error: None,
            },
        ];
        for message in messages {
            let line = encode_line(&message);
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(decode_line::<AppMessage>(&line), Ok(message));
        }
        let drain = SidecarMessage::Drain {
            deadline_unix_ms: 1_700_000_000_000,
        };
        assert_eq!(
            decode_line::<SidecarMessage>(&encode_line(&drain)),
            Ok(drain)
        );
    }

    #[test]
    fn unknown_types_and_fields_are_ignored() {
        let m: AppMessage = decode_line(br#"{"type":"telemetry","x":1}"#).unwrap();
        assert_eq!(m, AppMessage::Unknown);
        let m: AppMessage =
            decode_line(br#"{"type":"drained","inflight_at_start":4,"new":true}"#).unwrap();
        assert_eq!(
            m,
            AppMessage::Drained {
                inflight_at_start: 4
            }
        );
    }

    #[test]
    fn rejects_what_is_not_a_typed_object() {
        for bad in [
            &b"garbage"[..],
            b"[]",
            b"{}",
            br#"{"type":3}"#,
            b"\xff\xfe",
            b"42",
        ] {
            assert!(decode_line::<AppMessage>(bad).is_err(), "{bad:?} decoded");
        }
        let err = decode_line::<AppMessage>(br#"{"type":"hello","v":1}"#).unwrap_err();
        assert!(
            matches!(err, CodecError::Invalid(ref m) if m.contains("container")),
            "{err}"
        );
    }

    #[test]
    fn splits_lines_across_reads() {
        let mut decoder = LineDecoder::new();
        decoder.push(b"{\"a\":1}\n{\"b\"");
        assert_eq!(decoder.next_line(), Some(Ok(b"{\"a\":1}".to_vec())));
        assert_eq!(decoder.next_line(), None);
        assert_eq!(decoder.finish(), Err(CodecError::Truncated(4)));
        decoder.push(b":2}\n");
        assert_eq!(decoder.next_line(), Some(Ok(b"{\"b\":2}".to_vec())));
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn rejects_oversized_lines_without_waiting_for_newline() {
        let mut decoder = LineDecoder::new();
        decoder.push(&vec![b'x'; MAX_LINE_BYTES]);
        assert_eq!(decoder.next_line(), None, "exactly the limit is allowed");
        decoder.push(b"y");
        assert_eq!(decoder.next_line(), Some(Err(CodecError::LineTooLong)));
        let mut decoder = LineDecoder::new();
        let mut exact = vec![b' '; MAX_LINE_BYTES];
        exact.push(b'\n');
        decoder.push(&exact);
        assert!(matches!(decoder.next_line(), Some(Ok(line)) if line.len() == MAX_LINE_BYTES));
    }

    proptest! {
        #[test]
        fn decoder_never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..20)) {
            let mut decoder = LineDecoder::new();
            for chunk in chunks {
                decoder.push(&chunk);
                while let Some(line) = decoder.next_line() {
                    match line {
                        Ok(line) => { let _ = decode_line::<AppMessage>(&line); }
                        Err(_) => break,
                    }
                }
            }
        }

        #[test]
        fn framing_preserves_any_split(container in "[a-z0-9-]{1,20}", pid in any::<u32>(), split in 0usize..60) {
            let line = encode_line(&AppMessage::Hello { v: 1, container: container.clone(), pid });
            let split = split.min(line.len());
            let mut decoder = LineDecoder::new();
            decoder.push(&line[..split]);
            decoder.push(&line[split..]);
            let got = decoder.next_line().unwrap().unwrap();
            prop_assert_eq!(decode_line::<AppMessage>(&got).unwrap(), AppMessage::Hello { v: 1, container, pid });
        }
    }
}
