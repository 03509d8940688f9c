//! Postgres-protocol authentication, chosen by `pg_auth`:
//! - `trust` (default): any user name is accepted, no password;
//! - `scram-sha-256`: the users of `pg_users` (`name:password`), SCRAM-SHA-256 (4096
//!   iterations, a per-user random salt made at start-up);
//! - `md5`: the same users with Postgres' MD5 challenge (a fresh salt per connection).
//!
//! A wrong password or unknown user gets FATAL 28P01 and the connection is closed; the
//! failure is logged with the user name and peer, never the password.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::md5pass::{hash_md5_password, Md5PasswordAuth};
use pgwire::api::auth::mechanism::{AuthMechanism, AuthMechanismFactory, AuthState};
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth};
use pgwire::api::auth::sasl::SaslMechanisms;
use pgwire::api::auth::{
    AuthDriver, AuthOutcome, AuthSource, DefaultServerParameterProvider, LoginInfo, Password,
    StartupHandler,
};
use pgwire::api::ClientInfo;
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::PasswordMessageFamily;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

/// SCRAM iterations (Postgres' default).
const SCRAM_ITERATIONS: usize = 4096;

/// How Postgres clients prove who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    Trust,
    ScramSha256,
    Md5,
}

impl AuthMethod {
    pub fn parse(s: &str) -> Result<AuthMethod, String> {
        match s.to_ascii_lowercase().as_str() {
            "trust" => Ok(AuthMethod::Trust),
            "scram-sha-256" => Ok(AuthMethod::ScramSha256),
            "md5" => Ok(AuthMethod::Md5),
            other => Err(format!(
                "pg_auth {other:?}: use \"trust\", \"scram-sha-256\" or \"md5\""
            )),
        }
    }
}

/// Parses `pg_users` entries (`name:password`).
pub fn parse_users(entries: &[String]) -> Result<HashMap<String, String>, String> {
    let mut users = HashMap::new();
    for e in entries {
        let Some((name, password)) = e.split_once(':') else {
            return Err(format!(
                "pg_users entry {name:?} must be name:password",
                name = e.split(':').next().unwrap_or("")
            ));
        };
        if name.is_empty() || password.is_empty() {
            return Err("pg_users entries need a non-empty name and password".into());
        }
        users.insert(name.to_string(), password.to_string());
    }
    Ok(users)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        let v = h.finish().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    out
}

/// The configured users: SCRAM salted passwords are computed once, at start-up.
#[derive(Debug)]
struct Users {
    method: AuthMethod,
    plain: HashMap<String, String>,
    scram: HashMap<String, (Vec<u8>, Vec<u8>)>,
}

#[async_trait]
impl AuthSource for Users {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        let reject = || {
            tracing::warn!(user, host = %login.host(), "pg authentication failed: unknown user");
            PgWireError::InvalidPassword(user.to_string())
        };
        match self.method {
            AuthMethod::ScramSha256 => {
                let (salt, salted) = self.scram.get(user).ok_or_else(reject)?;
                Ok(Password::new(Some(salt.clone()), salted.clone()))
            }
            _ => {
                let pw = self.plain.get(user).ok_or_else(reject)?;
                let salt = random_bytes::<4>().to_vec();
                let hashed = hash_md5_password(user, pw, &salt);
                Ok(Password::new(Some(salt), hashed.into_bytes()))
            }
        }
    }
}

/// No password: authenticated at once.
struct Trust;

#[async_trait]
impl AuthMechanism for Trust {
    async fn begin(&mut self, _c: &(dyn ClientInfo + Send + Sync)) -> PgWireResult<AuthState> {
        Ok(AuthState::Ok {
            final_message: None,
            identity: None,
        })
    }

    async fn next(
        &mut self,
        _c: &(dyn ClientInfo + Send + Sync),
        _m: PasswordMessageFamily,
    ) -> PgWireResult<AuthState> {
        Err(PgWireError::NoAuthenticationInProgress)
    }
}

struct TrustFactory;

impl AuthMechanismFactory for TrustFactory {
    fn create(&self) -> Box<dyn AuthMechanism> {
        Box::new(Trust)
    }
}

/// The startup handler every connection shares.
pub struct ShoalStartup {
    driver: AuthDriver<DefaultServerParameterProvider>,
    mechanism: Box<dyn AuthMechanismFactory>,
    method: AuthMethod,
    /// Session slots (`pg_max_connections`): one is taken when authentication succeeds,
    /// before the client is told so, and held by the connection until it closes.
    sessions: Arc<tokio::sync::Semaphore>,
}

/// The session slot an authenticated connection holds (in its session extensions).
pub struct SessionSlot(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl ShoalStartup {
    pub fn new(
        method: AuthMethod,
        users: HashMap<String, String>,
        sessions: Arc<tokio::sync::Semaphore>,
    ) -> ShoalStartup {
        let mut params = DefaultServerParameterProvider::default();
        params.server_version = "16.6 (Shoal)".into();
        let driver = AuthDriver::new(params);
        let source = |scram| {
            Arc::new(Users {
                method,
                scram,
                plain: users.clone(),
            })
        };
        let mechanism: Box<dyn AuthMechanismFactory> = match method {
            AuthMethod::Trust => Box::new(TrustFactory),
            AuthMethod::Md5 => Box::new(Md5PasswordAuth::new(source(HashMap::new()))),
            AuthMethod::ScramSha256 => {
                let scram = users
                    .iter()
                    .map(|(u, p)| {
                        let salt = random_bytes::<16>().to_vec();
                        let salted = gen_salted_password(p, &salt, SCRAM_ITERATIONS);
                        (u.clone(), (salt, salted))
                    })
                    .collect();
                let mut auth = ScramAuth::new(source(scram));
                auth.set_iterations(SCRAM_ITERATIONS);
                Box::new(SaslMechanisms::new(vec![Arc::new(auth)]))
            }
        };
        ShoalStartup {
            driver,
            mechanism,
            method,
            sessions,
        }
    }

    /// Whether clients authenticate with SCRAM (their first password message is a
    /// SASLInitialResponse; see `pgframe`).
    pub fn is_scram(&self) -> bool {
        self.method == AuthMethod::ScramSha256
    }
}

#[async_trait]
impl StartupHandler for ShoalStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let outcome = match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                pgwire::api::auth::protocol_negotiation(client, startup).await?;
                pgwire::api::auth::save_startup_parameters_to_metadata(client, startup);
                self.driver
                    .begin_authentication(client, self.mechanism.create())
                    .await?
            }
            PgWireFrontendMessage::PasswordMessageFamily(m) => {
                match self.driver.advance_authentication(client, m).await {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::warn!(peer = %client.socket_addr(), user = client.metadata().get("user").map(String::as_str).unwrap_or(""), "pg authentication failed");
                        return Err(e);
                    }
                }
            }
            _ => return Ok(()),
        };
        if let AuthOutcome::Authenticated { final_message, .. } = outcome {
            // The slot is taken before AuthenticationOk/ReadyForQuery go out, so a client
            // past the limit gets 53300 instead of a session that dies at once.
            let Ok(permit) = self.sessions.clone().try_acquire_owned() else {
                tracing::warn!(peer = %client.socket_addr(), "pg connection refused: pg_max_connections reached");
                return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                    "FATAL".into(),
                    "53300".into(),
                    "sorry, too many clients already (pg_max_connections)".into(),
                ))));
            };
            client
                .session_extensions()
                .get_or_insert_with(|| SessionSlot(permit));
            self.driver
                .complete_authentication(client, final_message)
                .await?;
        }
        Ok(())
    }
}
