//! Who a client is: the one place HTTP and Postgres turn credentials into a
//! [`Principal`], against the users group 0 holds (see `shoal_consensus::users`).
//!
//! Authentication is on once the cluster has a user (or `pg_auth = "scram-sha-256"` asks
//! for it before then); until then every client is anonymous and may do anything, which is
//! how the loopback-only quick start stays free of setup.
//!
//! HTTP takes, in this order: `Authorization: Bearer <token>`, `Authorization: Token
//! <token>` (InfluxDB v2 clients, Telegraf), `Authorization: Basic` (user and password, or
//! any user name with a token as the password, as InfluxDB v1 clients send), and InfluxDB
//! v1's `u`/`p` query parameters. Postgres uses SCRAM-SHA-256 against the stored verifier.
//!
//! Failed logins are counted per source address: after
//! [`AUTH_FAILURES_PER_ADDRESS_MAX`] within [`AUTH_FAILURE_WINDOW_MS`] that address is
//! refused (HTTP 429, Postgres 28000) until the window ends, without checking anything.
//! Refusals are logged with the user name and address, never the secret.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shoal_consensus::users::token_user;
use shoal_consensus::{Catalog, CatalogHandle};
use shoal_query::access::unauthenticated;
use shoal_query::{ErrorKind, Principal, QueryError};

/// Failed logins one address may make within [`AUTH_FAILURE_WINDOW_MS`].
pub const AUTH_FAILURES_PER_ADDRESS_MAX: u32 = 10;
/// The window failed logins are counted in, in milliseconds.
pub const AUTH_FAILURE_WINDOW_MS: u64 = 60_000;
/// Addresses whose failures are tracked at once (the oldest window makes room).
pub const AUTH_FAILURE_ADDRESSES_MAX: usize = 10_000;
/// Password checks remembered, so a client sending Basic auth on every request does not
/// pay PBKDF2 each time (an entry is keyed by the verifier too: a new password drops it).
pub const AUTH_CACHE_ENTRIES_MAX: usize = 1_024;
/// How long a remembered password check holds, in milliseconds.
pub const AUTH_CACHE_TTL_MS: u64 = 60_000;

/// Failed logins per address in a fixed window. Pure: the caller passes the time.
#[derive(Debug, Default)]
pub struct FailedLogins {
    by_addr: HashMap<IpAddr, (Instant, u32)>,
}

impl FailedLogins {
    /// How long `addr` must wait before it may try again (`None`: it may now).
    pub fn blocked_for(&self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let (since, n) = self.by_addr.get(&addr)?;
        let window = Duration::from_millis(AUTH_FAILURE_WINDOW_MS);
        let left = window.checked_sub(now.saturating_duration_since(*since))?;
        (*n >= AUTH_FAILURES_PER_ADDRESS_MAX && !left.is_zero()).then_some(left)
    }

    pub fn record(&mut self, addr: IpAddr, now: Instant) {
        let window = Duration::from_millis(AUTH_FAILURE_WINDOW_MS);
        if !self.by_addr.contains_key(&addr) && self.by_addr.len() >= AUTH_FAILURE_ADDRESSES_MAX {
            self.by_addr
                .retain(|_, (since, _)| now.saturating_duration_since(*since) < window);
            if self.by_addr.len() >= AUTH_FAILURE_ADDRESSES_MAX {
                if let Some(oldest) = self
                    .by_addr
                    .iter()
                    .min_by_key(|(_, v)| v.0)
                    .map(|(a, _)| *a)
                {
                    self.by_addr.remove(&oldest);
                }
            }
        }
        let e = self.by_addr.entry(addr).or_insert((now, 0));
        if now.saturating_duration_since(e.0) >= window {
            *e = (now, 0);
        }
        e.1 += 1;
    }
}

/// The shared authenticator of a node.
#[derive(Debug)]
pub struct Gate {
    catalog: OnceLock<CatalogHandle>,
    /// Clients must authenticate even while the cluster has no users.
    required: bool,
    failures: Mutex<FailedLogins>,
    /// (user, SHA-256 of password and stored key) → when it was checked.
    checked: Mutex<HashMap<(String, Vec<u8>), Instant>>,
    /// Failed logins since the node started, over HTTP and over Postgres (`/metrics`).
    failed_http: AtomicU64,
    failed_postgres: AtomicU64,
}

impl Gate {
    pub fn new(required: bool) -> Arc<Gate> {
        Arc::new(Gate {
            catalog: OnceLock::new(),
            required,
            failures: Mutex::default(),
            checked: Mutex::default(),
            failed_http: AtomicU64::new(0),
            failed_postgres: AtomicU64::new(0),
        })
    }

    /// Called once group 0's state machine is open.
    pub fn set_catalog(&self, catalog: CatalogHandle) {
        let _ = self.catalog.set(catalog);
    }

    /// The latest catalog; `Err` while the node is still opening group 0.
    pub fn catalog(&self) -> Result<Arc<Catalog>, QueryError> {
        let handle = self.catalog.get().ok_or_else(|| {
            QueryError::new(
                ErrorKind::Unavailable,
                "the node is still recovering; retry shortly",
            )
        })?;
        let c = handle.read().clone();
        Ok(c)
    }

    /// Whether clients must say who they are.
    pub fn required(&self) -> Result<bool, QueryError> {
        Ok(self.required || !self.catalog()?.users.is_empty())
    }

    /// Refuses an address over its failed-login budget.
    pub fn admit(&self, addr: IpAddr) -> Result<(), QueryError> {
        match self.failures.lock().blocked_for(addr, Instant::now()) {
            None => Ok(()),
            Some(left) => Err(QueryError::new(
                ErrorKind::Unauthenticated,
                format!(
                    "too many failed logins from {addr}; retry in {} s",
                    left.as_secs().max(1)
                ),
            )
            .with_code("28000")),
        }
    }

    /// Whether `addr` is refused for failed logins now.
    pub fn is_blocked(&self, addr: IpAddr) -> bool {
        self.failures
            .lock()
            .blocked_for(addr, Instant::now())
            .is_some()
    }

    /// Counts a failed login and logs it (never with the secret).
    pub fn failed(&self, addr: IpAddr, user: &str, protocol: &str, why: &str) {
        self.failures.lock().record(addr, Instant::now());
        let total = match protocol {
            "postgres" => &self.failed_postgres,
            _ => &self.failed_http,
        };
        total.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%addr, user, protocol, why, "authentication failed");
    }

    /// Failed logins since the node started: (protocol, count) for `http` and `postgres`.
    pub fn failed_logins(&self) -> [(&'static str, u64); 2] {
        [
            ("http", self.failed_http.load(Ordering::Relaxed)),
            ("postgres", self.failed_postgres.load(Ordering::Relaxed)),
        ]
    }

    /// Checks a user's password.
    pub fn password(
        &self,
        user: &str,
        password: &str,
        addr: IpAddr,
    ) -> Result<Principal, QueryError> {
        self.admit(addr)?;
        let catalog = self.catalog()?;
        let Some(entry) = catalog.users.get(user) else {
            self.failed(addr, user, "http", "unknown user");
            return Err(unauthenticated("wrong user name or password"));
        };
        let key = {
            let mut material = password.as_bytes().to_vec();
            material.extend_from_slice(entry.verifier.stored_key.as_bytes());
            (
                user.to_string(),
                ring::digest::digest(&ring::digest::SHA256, &material)
                    .as_ref()
                    .to_vec(),
            )
        };
        let ttl = Duration::from_millis(AUTH_CACHE_TTL_MS);
        let fresh = self
            .checked
            .lock()
            .get(&key)
            .is_some_and(|t| t.elapsed() < ttl);
        if !fresh {
            if !entry.verifier.matches(password) {
                self.failed(addr, user, "http", "wrong password");
                return Err(unauthenticated("wrong user name or password"));
            }
            let mut checked = self.checked.lock();
            if checked.len() >= AUTH_CACHE_ENTRIES_MAX {
                checked.retain(|_, t| t.elapsed() < ttl);
                if checked.len() >= AUTH_CACHE_ENTRIES_MAX {
                    checked.clear();
                }
            }
            checked.insert(key, Instant::now());
        }
        Ok(Principal::User(user.to_string()))
    }

    /// Checks an API token.
    pub fn token(&self, token: &str, addr: IpAddr) -> Result<Principal, QueryError> {
        self.admit(addr)?;
        let catalog = self.catalog()?;
        match token_user(&catalog.users, token) {
            Some((user, _)) => Ok(Principal::User(user.to_string())),
            None => {
                self.failed(addr, "", "http", "unknown or revoked token");
                Err(unauthenticated("unknown or revoked token"))
            }
        }
    }

    /// The principal of an HTTP request (`Anonymous` when no credentials are needed and
    /// none were sent).
    pub fn http(
        &self,
        authorization: Option<&str>,
        query: Option<&str>,
        addr: IpAddr,
    ) -> Result<Principal, QueryError> {
        // Before the cluster has users nobody logs in; whatever a client sends anyway
        // (InfluxDB clients always send a token, often a made-up one) is ignored.
        if !self.required()? {
            return Ok(Principal::Anonymous);
        }
        match credentials(authorization, query)? {
            Credentials::None => Err(unauthenticated(
                "authentication is required: send Authorization: Bearer <token>, Token <token> or Basic",
            )),
            Credentials::Token(t) => self.token(&t, addr),
            Credentials::Password(u, p) if p.starts_with(shoal_consensus::users::TOKEN_PREFIX) => {
                // InfluxDB v1 clients send a token as the password of any user name.
                self.token(&p, addr).or_else(|_| self.password(&u, &p, addr))
            }
            Credentials::Password(u, p) => self.password(&u, &p, addr),
        }
    }
}

/// What an HTTP request presented.
#[derive(Debug, PartialEq, Eq)]
pub enum Credentials {
    None,
    Token(String),
    Password(String, String),
}

/// Reads the credentials of an HTTP request. Pure.
pub fn credentials(
    authorization: Option<&str>,
    query: Option<&str>,
) -> Result<Credentials, QueryError> {
    if let Some(h) = authorization {
        let (scheme, value) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
        let value = value.trim();
        return match scheme.to_ascii_lowercase().as_str() {
            "bearer" | "token" if !value.is_empty() => Ok(Credentials::Token(value.to_string())),
            "basic" => {
                use base64::Engine;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        unauthenticated("Authorization: Basic is not base64 of user:password")
                    })?;
                let (u, p) = raw.split_once(':').ok_or_else(|| {
                    unauthenticated("Authorization: Basic is not base64 of user:password")
                })?;
                Ok(Credentials::Password(u.to_string(), p.to_string()))
            }
            _ => Err(unauthenticated(
                "unsupported Authorization scheme: use Bearer, Token or Basic",
            )),
        };
    }
    let mut user = None;
    let mut password = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "u" => user = Some(v.into_owned()),
            "p" => password = Some(v.into_owned()),
            _ => {}
        }
    }
    Ok(match (user, password) {
        (Some(u), Some(p)) => Credentials::Password(u, p),
        (None, Some(p)) => Credentials::Token(p),
        _ => Credentials::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_logins_block_an_address_for_the_window() {
        let mut f = FailedLogins::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..AUTH_FAILURES_PER_ADDRESS_MAX - 1 {
            f.record(a, t0);
        }
        assert!(f.blocked_for(a, t0).is_none());
        f.record(a, t0);
        let left = f
            .blocked_for(a, t0 + Duration::from_secs(1))
            .expect("blocked");
        assert_eq!(left, Duration::from_millis(AUTH_FAILURE_WINDOW_MS - 1_000));
        assert!(f.blocked_for(b, t0).is_none(), "other addresses are not");
        let later = t0 + Duration::from_millis(AUTH_FAILURE_WINDOW_MS);
        assert!(f.blocked_for(a, later).is_none(), "the window ends");
        f.record(a, later);
        assert!(
            f.blocked_for(a, later).is_none(),
            "and counting starts over"
        );
    }

    #[test]
    fn failed_logins_track_a_bounded_number_of_addresses() {
        let mut f = FailedLogins::default();
        let t0 = Instant::now();
        for i in 0..AUTH_FAILURE_ADDRESSES_MAX as u32 + 10 {
            f.record(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(f.by_addr.len() <= AUTH_FAILURE_ADDRESSES_MAX);
    }

    #[test]
    fn credentials_are_read_from_every_place_clients_put_them() {
        let c = |a: Option<&str>, q: Option<&str>| credentials(a, q).unwrap();
        assert_eq!(c(None, None), Credentials::None);
        assert_eq!(
            c(Some("Bearer abc"), None),
            Credentials::Token("abc".into())
        );
        assert_eq!(c(Some("Token abc"), None), Credentials::Token("abc".into()));
        // "ada:s3cr:et"
        assert_eq!(
            c(Some("Basic YWRhOnMzY3I6ZXQ="), None),
            Credentials::Password("ada".into(), "s3cr:et".into())
        );
        assert_eq!(
            c(None, Some("db=x&u=ada&p=a%20b%2B")),
            Credentials::Password("ada".into(), "a b+".into())
        );
        assert_eq!(
            c(None, Some("db=x&p=tok")),
            Credentials::Token("tok".into())
        );
        assert!(credentials(Some("Basic !!!"), None).is_err());
        assert!(credentials(Some("Digest x"), None).is_err());
        assert!(credentials(Some("Bearer "), None).is_err());
        assert_eq!(c(None, Some("p=%zz%4")), Credentials::Token("%zz%4".into()));
    }
}
