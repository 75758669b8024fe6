//! One HTTP/1.1 connection of an endpoint's pool: writing a request, reading its answer's head
//! with `httparse`, and skipping the answer's body (sized, chunked with trailers, or to the
//! close) so the connection can be kept.
//!
//! Owns the bytes on the wire and whether a connection is fit to keep; which connection to use,
//! and when, is the pool's (`http`), and what a status means is `retry`'s.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Waker};

use bytes::{Buf, BytesMut};
use http::header::{HeaderMap, HeaderValue};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::{closed, BODY_LIMIT, HEAD_LIMIT, MAX_HEADERS, READ_ROOM};

/// The bytes of a connection, plain or inside TLS; tokio-util's `Either` passes reads and
/// writes (vectored too) to whichever it is.
pub(super) type Stream = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// The TCP connection under `stream`.
pub(super) fn tcp_of(stream: &Stream) -> &TcpStream {
    match stream {
        Either::Left(tcp) => tcp,
        Either::Right(tls) => tls.get_ref().0,
    }
}

/// One HTTP/1.1 connection and its buffers, kept with it for the next request.
pub(super) struct Conn {
    pub(super) stream: Stream,
    /// Bytes read and not yet taken: empty between exchanges on a connection fit to keep.
    pub(super) read: BytesMut,
    /// The request head being written; its allocation serves every request on the connection.
    pub(super) head: Vec<u8>,
    /// Some of an answer to the request being sent has come (so it reached the endpoint).
    pub(super) heard: bool,
}

/// An answer's head, as much of it as the client uses.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) status: u16,
    pub(super) retry_after: Option<HeaderValue>,
    pub(super) body: Framing,
    /// The endpoint will close the connection after this answer.
    pub(super) close: bool,
}

/// Where an answer's body ends (RFC 9112, section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// At the connection's close: the connection cannot be kept.
    Close,
}

impl Conn {
    /// Whether the stream has nothing to read, as far as tokio's driver and rustls know: one
    /// poll with a waker that does nothing, which makes no system call unless tokio thinks the
    /// socket is readable. Pending is the only good answer: bytes, an end or an error all mean
    /// the connection cannot carry another exchange.
    pub(super) fn quiet(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(&mut self.stream)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }

    /// Whether the endpoint has sent nothing since the last answer, a close included. Looks
    /// without reading (`MSG_PEEK`), at the socket itself: tokio's readiness knows only what
    /// its driver has polled.
    pub(super) fn untouched(&self) -> bool {
        let mut byte = [MaybeUninit::uninit()];
        match socket2::SockRef::from(tcp_of(&self.stream)).peek(&mut byte) {
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            // A close (0), or bytes nobody asked for.
            Ok(_) => false,
        }
    }

    /// Writes the request and reads its answer's head. An endpoint may answer before it has
    /// read the whole request (a 413 for a body too big) and close: when the write fails, the
    /// answer is looked for all the same.
    pub(super) async fn ask(
        &mut self,
        preamble: &[u8],
        headers: &HeaderMap,
        body: &[u8],
    ) -> io::Result<Head> {
        self.heard = false;
        if let Err(e) = self.send(preamble, headers, body).await {
            if !closed(&e) {
                return Err(context("sending the request", e));
            }
            return match self.read_head().await {
                Ok(head) => Ok(Head {
                    close: true,
                    ..head
                }),
                Err(_) => Err(context("sending the request", e)),
            };
        }
        self.read_head().await
    }

    /// Writes the request: its head, built in `head`, and `body`, in vectored writes.
    pub(super) async fn send(
        &mut self,
        preamble: &[u8],
        headers: &HeaderMap,
        body: &[u8],
    ) -> io::Result<()> {
        self.head.clear();
        self.head.extend_from_slice(preamble);
        self.head.extend_from_slice(b"content-length: ");
        self.head
            .extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        self.head.extend_from_slice(b"\r\n");
        for (name, value) in headers {
            self.head.extend_from_slice(name.as_str().as_bytes());
            self.head.extend_from_slice(b": ");
            self.head.extend_from_slice(value.as_bytes());
            self.head.extend_from_slice(b"\r\n");
        }
        self.head.extend_from_slice(b"\r\n");
        let (mut head, mut body) = (&self.head[..], body);
        while !head.is_empty() || !body.is_empty() {
            let written = self
                .stream
                .write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
                .await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let of_head = written.min(head.len());
            head = &head[of_head..];
            body = &body[written - of_head..];
        }
        self.stream.flush().await
    }

    /// Reads until an answer's head is in, past any 1xx interim answers.
    pub(super) async fn read_head(&mut self) -> io::Result<Head> {
        loop {
            if !self.read.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut parsed = httparse::Response::new(&mut headers);
                match parsed.parse(&self.read) {
                    Ok(httparse::Status::Complete(length)) => {
                        let head = Head::of(&parsed)?;
                        self.read.advance(length);
                        match head {
                            Some(head) => return Ok(head),
                            None => continue,
                        }
                    }
                    Ok(httparse::Status::Partial) if self.read.len() > HEAD_LIMIT => {
                        return Err(not_http(format!(
                            "an answer head longer than {HEAD_LIMIT} bytes"
                        )))
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => return Err(not_http(format!("the answer is not HTTP/1.1: {e}"))),
                }
            }
            self.fill("before it answered").await?;
        }
    }

    /// Reads what the endpoint sent next onto `read`; the end of the stream is an error, said
    /// to have come `when`.
    pub(super) async fn fill(&mut self, when: &str) -> io::Result<()> {
        if self.read.capacity() - self.read.len() < READ_ROOM / 4 {
            self.read.reserve(READ_ROOM);
        }
        match self.stream.read_buf(&mut self.read).await {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the endpoint closed the connection {when}"),
            )),
            Ok(_) => {
                self.heard = true;
                Ok(())
            }
            Err(e) => Err(context(&format!("reading {when}"), e)),
        }
    }

    /// Reads an answer's body to its end and drops it. An error leaves the connection unfit
    /// to keep.
    pub(super) async fn skip_body(&mut self, framing: Framing) -> io::Result<()> {
        match framing {
            Framing::Empty => Ok(()),
            Framing::Length(length) if length > BODY_LIMIT => Err(too_big()),
            Framing::Length(length) => self.skip(length).await,
            Framing::Chunked => self.skip_chunks().await,
            // Nothing reusable is left of the connection once this body ends.
            Framing::Close => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    /// Drops the next `length` bytes of the stream.
    pub(super) async fn skip(&mut self, mut length: u64) -> io::Result<()> {
        loop {
            let here = length.min(self.read.len() as u64);
            self.read.advance(here as usize);
            length -= here;
            if length == 0 {
                return Ok(());
            }
            self.fill("in the middle of an answer's body").await?;
        }
    }

    /// Drops a chunked body and its trailers.
    pub(super) async fn skip_chunks(&mut self) -> io::Result<()> {
        let mut total = 0;
        loop {
            match httparse::parse_chunk_size(&self.read) {
                Ok(httparse::Status::Complete((used, 0))) => {
                    self.read.advance(used);
                    break;
                }
                Ok(httparse::Status::Complete((used, size))) => {
                    if size > BODY_LIMIT - total {
                        return Err(too_big());
                    }
                    total += size;
                    self.read.advance(used);
                    self.skip(size).await?;
                    while self.read.len() < 2 {
                        self.fill("in a chunked body").await?;
                    }
                    if self.read[..2] != *b"\r\n" {
                        return Err(not_http("a chunk not followed by a line end".to_owned()));
                    }
                    self.read.advance(2);
                }
                Ok(httparse::Status::Partial) if self.read.len() > HEAD_LIMIT => {
                    return Err(not_http("a chunk size line too long".to_owned()))
                }
                Ok(httparse::Status::Partial) => self.fill("in a chunked body").await?,
                Err(_) => return Err(not_http("a chunk size that is not hex".to_owned())),
            }
        }
        // Trailers, each a line, to an empty line.
        loop {
            match self.read.windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.read.advance(2);
                    return Ok(());
                }
                Some(end) => self.read.advance(end + 2),
                None if self.read.len() > HEAD_LIMIT => {
                    return Err(not_http("a trailer line too long".to_owned()))
                }
                None => self.fill("in a chunked body's trailers").await?,
            }
        }
    }
}

impl Head {
    /// The head of a final answer, or None for an interim (1xx) one.
    pub(super) fn of(parsed: &httparse::Response<'_, '_>) -> io::Result<Option<Head>> {
        let status = parsed.code.expect("a complete parse has a status");
        match status {
            101 => return Err(not_http("an upgrade (101) to another protocol".to_owned())),
            100..=199 => return Ok(None),
            _ => {}
        }
        let mut head = Head {
            status,
            retry_after: None,
            body: Framing::Close,
            // HTTP/1.0 closes unless asked not to, which this client does not ask.
            close: parsed.version == Some(0),
        };
        let (mut length, mut chunked, mut encoded) = (None, false, false);
        for header in parsed.headers.iter() {
            let value = header.value;
            if header.name.eq_ignore_ascii_case("content-length") {
                // A list of the same length is allowed (RFC 9110, 8.6).
                for item in value.split(|&b| b == b',') {
                    let parsed = decimal(item.trim_ascii()).ok_or_else(|| {
                        not_http("a content-length that is not a number".to_owned())
                    })?;
                    if length.is_some_and(|l| l != parsed) {
                        return Err(not_http("two different content-lengths".to_owned()));
                    }
                    length = Some(parsed);
                }
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                encoded = true;
                // Chunked only when it is the last coding applied.
                chunked = value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if header.name.eq_ignore_ascii_case("connection") {
                head.close |= value
                    .split(|&b| b == b',')
                    .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
            } else if header.name.eq_ignore_ascii_case("retry-after") {
                head.retry_after = HeaderValue::from_bytes(value).ok();
            }
        }
        // Both: framed by the encoding, but a sign of a confused intermediary (RFC 9112, 6.3).
        head.close |= encoded && length.is_some();
        head.body = match (status, encoded, length) {
            (204 | 304, _, _) => Framing::Empty,
            (_, true, _) if chunked => Framing::Chunked,
            (_, true, _) => Framing::Close,
            (_, false, Some(0)) => Framing::Empty,
            (_, false, Some(length)) => Framing::Length(length),
            (_, false, None) => Framing::Close,
        };
        Ok(Some(head))
    }
}

/// Digits only: `u64::from_str` would also take a sign.
pub(super) fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// `e`, saying what was being done, of the same kind (which `closed` reads).
pub(super) fn context(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

pub(super) fn not_http(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

pub(super) fn too_big() -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("an answer body over {BODY_LIMIT} bytes"),
    )
}
