//! Reading newline-delimited JSON from a socket with the protocol's line limit.

use lameduck_proto::{CodecError, LineDecoder};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid frame.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Splits what a socket delivers into lines, enforcing the 64 KiB limit.
pub struct LineReader<R> {
    reader: R,
    decoder: LineDecoder,
    buffer: Box<[u8]>,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Wraps the read half of a connection.
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            decoder: LineDecoder::new(),
            buffer: vec![0; 4096].into_boxed_slice(),
        }
    }

    /// The next complete line, `Ok(None)` at a clean end of stream.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        loop {
            if let Some(line) = self.decoder.next_line() {
                return Ok(Some(line?));
            }
            let n = self.reader.read(&mut self.buffer).await?;
            if n == 0 {
                self.decoder.finish()?;
                return Ok(None);
            }
            self.decoder.push(&self.buffer[..n]);
        }
    }
}
