//! Fuzz target: Postgres frontend messages after the startup message, as a connection
//! sees them. Each framed message passes `pgframe::check_typed` (in both password shapes)
//! and, when it is accepted, pgwire decodes it; neither may panic on any bytes (an
//! outside test once crashed a connection with a Bind that declared more parameters than
//! it carried). Corpus in `fuzz/corpus/pg_messages`.

use bytes::BytesMut;
use pgwire::messages::{DecodeContext, PgWireFrontendMessage};
use shoal_server::pgframe::{check_typed, PasswordShape};

fn one_stream(input: &[u8]) {
    let mut ctx = DecodeContext::default();
    ctx.awaiting_frontend_ssl = false;
    ctx.awaiting_frontend_startup = false;
    let mut rest = input;
    while rest.len() >= 5 {
        let kind = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if len < 4 || 1 + len > rest.len() {
            // Too short, or not all here: a connection waits for the rest.
            return;
        }
        let end = 1 + len;
        let body = &rest[5..end];
        for shape in [PasswordShape::SaslInitialNext, PasswordShape::Any] {
            if check_typed(kind, body, shape).is_ok() {
                let mut buf = BytesMut::from(&rest[..end]);
                let _ = PgWireFrontendMessage::decode(&mut buf, &ctx);
            }
        }
        rest = &rest[end..];
    }
}

#[test]
fn fuzz_postgres_messages() {
    shoal_common::fuzz::run("pg_messages", vec![], one_stream);
}
