//! Request ids, and one log line for every request that fails.
//!
//! Every HTTP response carries `X-Request-Id` (the client's own when it sent a usable one,
//! else one made here), and every Postgres error carries `request id: …` in its DETAIL.
//! The same id is on the log line the failure writes, so a user's error message leads an
//! operator straight to the node's log:
//!
//! ```text
//! client ◀── 400 {"error": …}  X-Request-Id: 2-mqx3k0-1f
//! node log:  INFO request failed request_id=2-mqx3k0-1f protocol=http status=400 …
//! ```
//!
//! Ids are `<node id>-<process start, ms, base 36>-<sequence, hex>`: unique in the cluster
//! (node ids are never reused, and a restart starts a new middle part), short, and sortable
//! by time within a node.
//!
//! The log lines are bounded: at most [`FAILED_REQUEST_LOG_MAX_PER_SEC`] per node per
//! second; beyond it they are counted and the count is logged once the second is over, so a
//! client that floods the node with bad requests cannot flood its log too.

use std::sync::atomic::{AtomicU64, Ordering};

/// Failed-request log lines a node writes per second at most.
pub const FAILED_REQUEST_LOG_MAX_PER_SEC: u64 = 100;

/// The longest request id taken from a client (`X-Request-Id`).
pub const CLIENT_REQUEST_ID_MAX_CHARS: usize = 64;

/// What a request failed with, for its log line.
pub struct Failure<'a> {
    /// `http` or `postgres`.
    pub protocol: &'static str,
    pub request_id: &'a str,
    /// The HTTP status or the SQLSTATE.
    pub code: &'a str,
    /// `POST /write`, or the client's address for Postgres.
    pub what: &'a str,
    pub error: &'a str,
    /// A server-side failure (5xx, SQLSTATE class 5x/XX): logged as WARN, else INFO.
    pub server_side: bool,
}

/// A node's request ids and its failed-request log budget.
pub struct RequestIds {
    prefix: String,
    next: AtomicU64,
    /// The second (unix) the budget counts, and the lines logged / suppressed in it.
    window: parking_lot::Mutex<(u64, u64, u64)>,
}

impl RequestIds {
    pub fn new(node_id: u64) -> RequestIds {
        let started_ms = shoal_common::time::now_nanos().max(0) as u64 / 1_000_000;
        RequestIds {
            prefix: format!("{node_id}-{}", base36(started_ms)),
            next: AtomicU64::new(1),
            window: parking_lot::Mutex::new((0, 0, 0)),
        }
    }

    /// A new id.
    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}", self.prefix)
    }

    /// The client's id if it is usable (1 to [`CLIENT_REQUEST_ID_MAX_CHARS`] of
    /// `A-Za-z0-9._-`, so it cannot forge log fields), else a new one.
    pub fn from_client(&self, sent: Option<&str>) -> String {
        match sent {
            Some(id) if usable_client_id(id) => id.to_string(),
            _ => self.next(),
        }
    }

    /// Logs one failed request, within the node's budget.
    pub fn failed(&self, f: &Failure<'_>) {
        let second = shoal_common::time::now_nanos().max(0) as u64 / 1_000_000_000;
        let suppressed = {
            let mut w = self.window.lock();
            let mut ended = 0;
            if w.0 != second {
                ended = w.2;
                *w = (second, 0, 0);
            }
            if w.1 >= FAILED_REQUEST_LOG_MAX_PER_SEC {
                w.2 += 1;
                return;
            }
            w.1 += 1;
            ended
        };
        if suppressed > 0 {
            tracing::warn!(
                suppressed,
                limit = FAILED_REQUEST_LOG_MAX_PER_SEC,
                "failed-request log lines suppressed in the last second"
            );
        }
        if f.server_side {
            tracing::warn!(
                request_id = f.request_id,
                protocol = f.protocol,
                code = f.code,
                what = f.what,
                error = f.error,
                "request failed"
            );
        } else {
            tracing::info!(
                request_id = f.request_id,
                protocol = f.protocol,
                code = f.code,
                what = f.what,
                error = f.error,
                "request failed"
            );
        }
    }
}

fn usable_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= CLIENT_REQUEST_ID_MAX_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![];
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_name_the_node() {
        let ids = RequestIds::new(7);
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert!(a.starts_with("7-"), "{a}");
        assert_eq!(a.split('-').count(), 3, "{a}");
        assert!(usable_client_id(&a));
    }

    #[test]
    fn client_ids_are_taken_only_when_harmless() {
        let ids = RequestIds::new(1);
        assert_eq!(ids.from_client(Some("abc-123_x.y")), "abc-123_x.y");
        for bad in ["", "a b", "x\ny", "id=\"evil\"", &"a".repeat(65)] {
            let got = ids.from_client(Some(bad));
            assert!(got.starts_with("1-"), "{bad:?} → {got}");
        }
        assert!(ids.from_client(None).starts_with("1-"));
    }

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }

    #[test]
    fn the_log_budget_holds_per_second() {
        let ids = RequestIds::new(1);
        let f = Failure {
            protocol: "http",
            request_id: "x",
            code: "400",
            what: "POST /write",
            error: "bad",
            server_side: false,
        };
        for _ in 0..FAILED_REQUEST_LOG_MAX_PER_SEC * 3 {
            ids.failed(&f);
        }
        let (second, logged, suppressed) = *ids.window.lock();
        // All within one second, or the second rolled over during the loop.
        assert!(second > 0);
        assert!(logged <= FAILED_REQUEST_LOG_MAX_PER_SEC);
        assert!(suppressed > 0 || logged < FAILED_REQUEST_LOG_MAX_PER_SEC);
    }
}
