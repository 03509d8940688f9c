//! Checks every Postgres frontend message before pgwire decodes it.
//!
//! pgwire 0.42's decoders read fields with `bytes::Buf` getters that panic on a short buffer,
//! and they read from the connection's whole buffer rather than from the message's own
//! bytes: a `Bind` that declares more parameters than it carries panicked a connection
//! task, and a message with trailing bytes would make the next message be read from the
//! wrong offset. [`Checked`] sits between the socket and pgwire's codec and hands pgwire
//! only whole messages whose structure [`check_typed`] verified against the protocol
//! (every count backed by bytes, every string terminated, nothing left over). Anything
//! else ends the connection with FATAL 08P01 naming what was wrong; nothing of it reaches
//! a decoder.
//!
//! ```text
//!  socket ──bytes──▶ Checked: frame (type, length ≤ limit) ─▶ check_typed ─▶ pgwire codec
//!                                   └── malformed: io error "malformed …" ─▶ FATAL 08P01
//! ```

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Marks the io errors `Checked` raises for malformed input (the connection loop turns
/// them into FATAL 08P01).
pub const MALFORMED: &str = "malformed Postgres message";

/// The longest startup-phase message (Postgres' own limit).
const MAX_STARTUP_MESSAGE_BYTES: usize = 10_000;

/// A cursor over one message body that fails instead of panicking.
struct Cur<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Cur<'a> {
    fn err(&self, why: impl std::fmt::Display) -> String {
        format!("{}: {why}", self.what)
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], String> {
        if self.b.len() < n {
            return Err(self.err(format!(
                "{field} needs {n} bytes, only {} left",
                self.b.len()
            )));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u8(&mut self, field: &str) -> Result<u8, String> {
        Ok(self.take(1, field)?[0])
    }

    fn i16(&mut self, field: &str) -> Result<i16, String> {
        let b = self.take(2, field)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn u16(&mut self, field: &str) -> Result<u16, String> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, field: &str) -> Result<i32, String> {
        let b = self.take(4, field)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn cstring(&mut self, field: &str) -> Result<(), String> {
        match self.b.iter().position(|&c| c == 0) {
            Some(i) => {
                self.b = &self.b[i + 1..];
                Ok(())
            }
            None => Err(self.err(format!("{field} is not NUL-terminated"))),
        }
    }

    /// `n` values, each an int32 length (-1: NULL) and that many bytes.
    fn values(&mut self, n: usize, field: &str) -> Result<(), String> {
        for i in 0..n {
            let len = self.i32(field)?;
            if len < -1 {
                return Err(self.err(format!("{field} {} has length {len}", i + 1)));
            }
            if len > 0 {
                self.take(len as usize, field).map_err(|_| {
                    self.err(format!(
                        "{field} {} declares {len} bytes, only {} left (declared {n} values)",
                        i + 1,
                        self.b.len()
                    ))
                })?;
            }
        }
        Ok(())
    }

    fn end(&self) -> Result<(), String> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(self.err(format!("{} unexpected bytes at the end", self.b.len())))
        }
    }
}

/// Where a connection is in its authentication, for the one message whose shape depends on
/// it (a SCRAM client's first password message is a SASLInitialResponse).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordShape {
    /// SCRAM: the next `p` is a SASLInitialResponse, later ones raw SASL data.
    SaslInitialNext,
    /// A cleartext/MD5 password, or raw SASL data: any bytes.
    Any,
}

/// Checks the body of one typed frontend message (after the startup message).
pub fn check_typed(kind: u8, body: &[u8], password: PasswordShape) -> Result<(), String> {
    let what = match kind {
        b'B' => "Bind",
        b'P' => "Parse",
        b'D' => "Describe",
        b'C' => "Close",
        b'E' => "Execute",
        b'Q' => "Query",
        b'S' => "Sync",
        b'H' => "Flush",
        b'X' => "Terminate",
        b'c' => "CopyDone",
        b'd' => "CopyData",
        b'f' => "CopyFail",
        b'p' => "PasswordMessage",
        other => {
            return Err(format!(
                "unsupported message type {:?} (0x{other:02x})",
                other as char
            ))
        }
    };
    let mut c = Cur { b: body, what };
    match kind {
        b'B' => {
            c.cstring("portal name")?;
            c.cstring("statement name")?;
            let formats = c.u16("parameter format count")?;
            c.take(2 * formats as usize, "parameter format codes")?;
            let params = c.u16("parameter count")?;
            c.values(params as usize, "parameter")?;
            let results = c.i16("result format count")?;
            if results < 0 {
                return Err(c.err(format!("result format count {results}")));
            }
            c.take(2 * results as usize, "result format codes")?;
        }
        b'P' => {
            c.cstring("statement name")?;
            c.cstring("query")?;
            let types = c.u16("parameter type count")?;
            c.take(4 * types as usize, "parameter types")?;
        }
        b'D' | b'C' => {
            c.u8("target")?;
            c.cstring("name")?;
        }
        b'E' => {
            c.cstring("portal name")?;
            c.i32("row limit")?;
        }
        b'Q' => c.cstring("query")?,
        b'f' => c.cstring("message")?,
        b'S' | b'H' | b'X' | b'c' => {}
        b'd' => return Ok(()),
        b'p' => {
            if password == PasswordShape::SaslInitialNext {
                c.cstring("mechanism")?;
                let len = c.i32("data length")?;
                if len < -1 {
                    return Err(c.err(format!("data length {len}")));
                }
                if len > 0 {
                    c.take(len as usize, "data")?;
                }
            } else {
                return Ok(());
            }
        }
        _ => unreachable!("every kind named above"),
    }
    c.end()
}

/// Checks an untyped startup-phase message (StartupMessage or CancelRequest); its length
/// includes itself.
pub fn check_startup(len: usize) -> Result<(), String> {
    if !(8..=MAX_STARTUP_MESSAGE_BYTES).contains(&len) {
        return Err(format!(
            "startup packet: length {len} (allowed 8 to {MAX_STARTUP_MESSAGE_BYTES})"
        ));
    }
    Ok(())
}

/// A byte stream that releases only checked, whole messages to its reader; writes pass
/// through. See the module documentation.
pub struct Checked<S> {
    inner: S,
    /// Bytes read from the socket, not yet a whole message.
    pending: BytesMut,
    /// Whole, checked messages not yet read.
    ready: BytesMut,
    /// The next message is the untyped startup message.
    startup: bool,
    password: PasswordShape,
    max_message_bytes: usize,
    /// A malformed message was seen: every later read fails.
    failed: Option<String>,
}

impl<S> Checked<S> {
    /// `prefix`: bytes already read from the socket (the start of the startup message).
    /// `scram`: the server authenticates with SCRAM (see [`PasswordShape`]).
    pub fn new(inner: S, prefix: &[u8], scram: bool, max_message_bytes: usize) -> Checked<S> {
        let mut c = Checked {
            inner,
            pending: BytesMut::from(prefix),
            ready: BytesMut::new(),
            startup: true,
            password: if scram {
                PasswordShape::SaslInitialNext
            } else {
                PasswordShape::Any
            },
            max_message_bytes,
            failed: None,
        };
        // The prefix may already hold a whole (or a bad) message.
        if let Err(why) = c.frame() {
            c.failed = Some(why);
        }
        c
    }

    /// Moves every whole message at the front of `pending` to `ready`, checking each.
    fn frame(&mut self) -> Result<(), String> {
        loop {
            let p = &self.pending;
            if self.startup {
                if p.len() < 4 {
                    return Ok(());
                }
                let len = i32::from_be_bytes([p[0], p[1], p[2], p[3]]);
                let len = usize::try_from(len).map_err(|_| format!("startup length {len}"))?;
                check_startup(len)?;
                if p.len() < len {
                    return Ok(());
                }
                self.startup = false;
                let msg = self.pending.split_to(len);
                self.ready.extend_from_slice(&msg);
                continue;
            }
            if p.len() < 5 {
                return Ok(());
            }
            let kind = p[0];
            let len = i32::from_be_bytes([p[1], p[2], p[3], p[4]]);
            if len < 4 {
                return Err(format!("message {:?}: length {len}", kind as char));
            }
            let len = len as usize;
            if len > self.max_message_bytes {
                return Err(format!(
                    "message {:?} of {len} bytes is larger than the limit of {} bytes",
                    kind as char, self.max_message_bytes
                ));
            }
            if p.len() < 1 + len {
                return Ok(());
            }
            check_typed(kind, &p[5..1 + len], self.password)?;
            if kind == b'p' {
                self.password = PasswordShape::Any;
            }
            let msg = self.pending.split_to(1 + len);
            self.ready.extend_from_slice(&msg);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Checked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if let Some(why) = &this.failed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{MALFORMED}: {why}"),
                )));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let got = rb.filled();
                    if got.is_empty() {
                        // End of stream: a partial message left over is simply dropped.
                        return Poll::Ready(Ok(()));
                    }
                    this.pending.extend_from_slice(got);
                    if let Err(why) = this.frame() {
                        this.failed = Some(why);
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Checked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwire::messages::{DecodeContext, PgWireFrontendMessage, ProtocolVersion};

    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn bind(params: &[Option<&[u8]>], declared: u16) -> Vec<u8> {
        let mut b = b"\0s1\0".to_vec();
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&declared.to_be_bytes());
        for p in params {
            match p {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b.extend_from_slice(&0i16.to_be_bytes());
        b
    }

    #[test]
    fn a_bind_declaring_more_parameters_than_it_carries_is_refused() {
        let ok = bind(&[Some(b"1"), None], 2);
        assert_eq!(check_typed(b'B', &ok, PasswordShape::Any), Ok(()));
        let short = bind(&[Some(b"1")], 3);
        let err = check_typed(b'B', &short, PasswordShape::Any).expect_err("short");
        assert!(err.starts_with("Bind: parameter"), "{err}");
        let trailing = [ok.as_slice(), b"xx"].concat();
        assert!(check_typed(b'B', &trailing, PasswordShape::Any).is_err());
    }

    #[test]
    fn strings_counts_and_types_are_checked() {
        assert!(check_typed(b'Q', b"SELECT 1\0", PasswordShape::Any).is_ok());
        assert!(check_typed(b'Q', b"SELECT 1", PasswordShape::Any).is_err());
        assert!(check_typed(b'Q', b"SELECT 1\0x\0", PasswordShape::Any).is_err());
        assert!(check_typed(b'P', b"\0SELECT $1\0\0\x01", PasswordShape::Any).is_err());
        assert!(check_typed(b'E', b"\0\0\0\0\0", PasswordShape::Any).is_ok());
        assert!(check_typed(b'E', b"\0\0\0", PasswordShape::Any).is_err());
        assert!(check_typed(b'S', b"", PasswordShape::Any).is_ok());
        assert!(check_typed(b'S', b"x", PasswordShape::Any).is_err());
        assert!(check_typed(b'F', b"", PasswordShape::Any).is_err());
        let sasl = b"SCRAM-SHA-256\0\0\0\0\x09n,,n=,r=";
        assert!(check_typed(b'p', sasl, PasswordShape::SaslInitialNext).is_err());
        let sasl = b"SCRAM-SHA-256\0\0\0\0\x07n,,n=,r";
        assert!(check_typed(b'p', sasl, PasswordShape::SaslInitialNext).is_ok());
        assert!(check_typed(b'p', b"\x01\x02", PasswordShape::Any).is_ok());
    }

    /// A tiny deterministic generator (no dependency): xorshift.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Valid messages of every type, then mutated (truncated, bytes flipped, counts
    /// changed): whatever the check lets through, pgwire decodes without panicking and
    /// consumes exactly (so the next message is read from the right place).
    #[test]
    fn whatever_passes_the_check_decodes_without_panicking() {
        let seeds: Vec<(u8, Vec<u8>, PasswordShape)> = vec![
            (
                b'B',
                bind(&[Some(b"42"), None, Some(b"")], 3),
                PasswordShape::Any,
            ),
            (
                b'P',
                b"s1\0SELECT $1\0\0\x01\0\0\0\x17".to_vec(),
                PasswordShape::Any,
            ),
            (b'D', b"Ss1\0".to_vec(), PasswordShape::Any),
            (b'C', b"Pp\0".to_vec(), PasswordShape::Any),
            (b'E', b"\0\0\0\0\0".to_vec(), PasswordShape::Any),
            (b'Q', b"SELECT 1\0".to_vec(), PasswordShape::Any),
            (b'S', vec![], PasswordShape::Any),
            (b'H', vec![], PasswordShape::Any),
            (b'd', b"1,2\n".to_vec(), PasswordShape::Any),
            (b'f', b"no\0".to_vec(), PasswordShape::Any),
            (
                b'p',
                b"SCRAM-SHA-256\0\0\0\0\x03n,,".to_vec(),
                PasswordShape::SaslInitialNext,
            ),
        ];
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut accepted = 0;
        for round in 0..20_000 {
            let (kind, body, shape) = &seeds[round % seeds.len()];
            let mut body = body.clone();
            match rng.below(4) {
                0 => body.truncate(rng.below(body.len() + 1)),
                1 if !body.is_empty() => {
                    let i = rng.below(body.len());
                    body[i] = rng.next() as u8;
                }
                2 => body.push(rng.next() as u8),
                _ => {}
            }
            if check_typed(*kind, &body, *shape).is_err() {
                continue;
            }
            accepted += 1;
            let mut wire = BytesMut::from(msg(*kind, &body).as_slice());
            // A sentinel after the message: it must still be there, whole, afterwards.
            wire.extend_from_slice(&msg(b'S', b""));
            let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
            ctx.awaiting_frontend_ssl = false;
            ctx.awaiting_frontend_startup = false;
            let sasl = *shape == PasswordShape::SaslInitialNext;
            let decoded = std::panic::catch_unwind(move || {
                let ok = match PgWireFrontendMessage::decode(&mut wire, &ctx) {
                    Ok(Some(PgWireFrontendMessage::PasswordMessageFamily(p))) if sasl => {
                        p.into_sasl_initial_response().is_ok()
                    }
                    Ok(Some(_)) => true,
                    _ => false,
                };
                (ok, wire.len())
            });
            let (ok, left) = decoded
                .unwrap_or_else(|_| panic!("pgwire panicked on {:?} {body:?}", *kind as char));
            assert!(
                ok,
                "{:?} {body:?} passed the check but did not decode",
                *kind as char
            );
            assert_eq!(
                left, 5,
                "{:?} {body:?} was not consumed exactly",
                *kind as char
            );
        }
        assert!(
            accepted > 1000,
            "the mutations must also produce valid messages"
        );
    }
}
