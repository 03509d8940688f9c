//! Postgres-protocol authentication against the users group 0 holds (see [`crate::gate`]):
//! SCRAM-SHA-256 with the stored verifier once the cluster has a user (or always, with
//! `pg_auth = "scram-sha-256"`); until then `trust`: any user name, no password. The choice
//! is made per connection, when it is accepted.
//!
//! A wrong password or unknown user gets FATAL 28P01 and the connection is closed; the
//! failure is logged with the user name and peer, never the password, and counted against
//! the peer's address (after too many, its logins are refused with 28000 for a while).

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::mechanism::{AuthMechanism, AuthMechanismFactory, AuthState};
use pgwire::api::auth::sasl::scram::{ScramAuth, ScramSecret};
use pgwire::api::auth::sasl::SaslMechanisms;
use pgwire::api::auth::{
    AuthDriver, AuthOutcome, AuthSource, DefaultServerParameterProvider, LoginInfo, Password,
    StartupHandler,
};
use pgwire::api::ClientInfo;
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::PasswordMessageFamily;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use shoal_query::Principal;

use crate::gate::Gate;

/// How Postgres clients prove who they are (`pg_auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// SCRAM once the cluster has users, trust before.
    Trust,
    /// SCRAM always.
    ScramSha256,
}

impl AuthMethod {
    pub fn parse(s: &str) -> Result<AuthMethod, String> {
        match s.to_ascii_lowercase().as_str() {
            "trust" => Ok(AuthMethod::Trust),
            "scram-sha-256" => Ok(AuthMethod::ScramSha256),
            "md5" => Err("pg_auth \"md5\" is no longer supported: passwords are kept only as SCRAM-SHA-256 verifiers; use \"scram-sha-256\" (every Postgres client since 10 speaks it)".into()),
            other => Err(format!(
                "pg_auth {other:?}: use \"trust\" (authentication once users exist) or \"scram-sha-256\" (always)"
            )),
        }
    }
}

/// Parses `pg_users` entries (`name:password`), the users a config file may still name:
/// they are created in group 0 as admins at start-up (see `lib.rs`).
pub fn parse_users(entries: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut users = vec![];
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
        shoal_consensus::users::check_name(name)?;
        users.push((name.to_string(), password.to_string()));
    }
    Ok(users)
}

/// The verifiers of group 0's users, for pgwire's SCRAM.
#[derive(Debug)]
struct Verifiers(Arc<Gate>);

#[async_trait]
impl AuthSource for Verifiers {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        Err(PgWireError::InvalidPassword(
            login.user().unwrap_or_default().to_string(),
        ))
    }

    async fn get_scram_secret(&self, login: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        let user = login.user().unwrap_or_default();
        let catalog = self.0.catalog().map_err(|e| {
            PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "57P03".into(),
                e.message,
            )))
        })?;
        // An unknown user goes through the exchange with a verifier nobody can match, so
        // the answer does not say whether the user exists.
        let verifier = match catalog.users.get(user) {
            Some(u) => u.verifier.clone(),
            None => shoal_consensus::users::make_verifier(&shoal_consensus::users::make_token().1),
        };
        let k = verifier
            .keys()
            .ok_or_else(|| PgWireError::InvalidPassword(user.to_string()))?;
        Ok((
            ScramSecret::Verifier {
                salt: k.salt,
                iterations: k.iterations as usize,
                stored_key: k.stored_key,
                server_key: k.server_key,
            },
            None,
        ))
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

/// What every connection's startup shares.
pub struct ShoalStartup {
    method: AuthMethod,
    gate: Arc<Gate>,
    /// Session slots (`pg_max_connections`): one is taken when authentication succeeds,
    /// before the client is told so, and held by the connection until it closes.
    sessions: Arc<tokio::sync::Semaphore>,
    /// Logins refused for want of a session slot (`pg_max_connections`).
    refused: Arc<std::sync::atomic::AtomicU64>,
    /// TLS (`certs_dir`): every connection is TLS, and SCRAM offers channel binding
    /// (SCRAM-SHA-256-PLUS, `tls-server-end-point`) with the current node certificate.
    tls: Option<Arc<shoal_transport::tls::Tls>>,
}

/// The session slot an authenticated connection holds (in its session extensions).
pub struct SessionSlot(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl ShoalStartup {
    pub fn new(
        method: AuthMethod,
        gate: Arc<Gate>,
        sessions: Arc<tokio::sync::Semaphore>,
        refused: Arc<std::sync::atomic::AtomicU64>,
        tls: Option<Arc<shoal_transport::tls::Tls>>,
    ) -> ShoalStartup {
        ShoalStartup {
            method,
            gate,
            sessions,
            refused,
            tls,
        }
    }

    /// The startup handler of a connection accepted now: SCRAM if the cluster has users
    /// (or may have: group 0 is not open yet) or `pg_auth` asks for it, else trust.
    pub fn connection(self: &Arc<Self>) -> Arc<ConnStartup> {
        let scram = self.method == AuthMethod::ScramSha256 || self.gate.required().unwrap_or(true);
        let mut params = DefaultServerParameterProvider::default();
        params.server_version = "16.6 (Shoal)".into();
        let mechanism: Box<dyn AuthMechanismFactory> = if scram {
            let mut auth = ScramAuth::new(Arc::new(Verifiers(self.gate.clone())));
            if let Some(tls) = &self.tls {
                if let Err(e) = auth.configure_certificate(&tls.cert_pem()) {
                    tracing::warn!(error = %e, "pg: no SCRAM channel binding with this certificate");
                }
            }
            Box::new(SaslMechanisms::new(vec![Arc::new(auth)]))
        } else {
            Box::new(TrustFactory)
        };
        Arc::new(ConnStartup {
            shared: self.clone(),
            driver: AuthDriver::new(params),
            mechanism,
            scram,
        })
    }
}

/// One connection's startup handler.
pub struct ConnStartup {
    shared: Arc<ShoalStartup>,
    driver: AuthDriver<DefaultServerParameterProvider>,
    mechanism: Box<dyn AuthMechanismFactory>,
    scram: bool,
}

impl ConnStartup {
    /// Whether the client authenticates with SCRAM (its first password message is a
    /// SASLInitialResponse; see `pgframe`).
    pub fn is_scram(&self) -> bool {
        self.scram
    }
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        code.into(),
        message,
    )))
}

#[async_trait]
impl StartupHandler for ConnStartup {
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
                self.shared
                    .gate
                    .admit(client.socket_addr().ip())
                    .map_err(|e| fatal("28000", e.message))?;
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
                        let user = client.metadata().get("user").cloned().unwrap_or_default();
                        self.shared.gate.failed(
                            client.socket_addr().ip(),
                            &user,
                            "postgres",
                            "wrong password or unknown user",
                        );
                        return Err(e);
                    }
                }
            }
            _ => return Ok(()),
        };
        if let AuthOutcome::Authenticated { final_message, .. } = outcome {
            // The slot is taken before AuthenticationOk/ReadyForQuery go out, so a client
            // past the limit gets 53300 instead of a session that dies at once.
            let Ok(permit) = self.shared.sessions.clone().try_acquire_owned() else {
                self.shared
                    .refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
            if self.scram {
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                client.session_extensions().insert(Principal::User(user));
            }
            self.driver
                .complete_authentication(client, final_message)
                .await?;
        }
        Ok(())
    }
}
