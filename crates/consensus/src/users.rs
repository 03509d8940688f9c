//! Users, roles and API tokens, kept in group 0 so that every node authenticates the same
//! way and a change takes effect everywhere once applied.
//!
//! Passwords are never stored: a user has a SCRAM-SHA-256 verifier (salt, iterations,
//! `StoredKey`, `ServerKey`; RFC 5802), which answers Postgres' SCRAM exchange and checks
//! an HTTP Basic password, but cannot be used to log in. A token is `shoal_<id>_<secret>`;
//! group 0 keeps its id and the SHA-256 of its secret (the secret is 32 random bytes, so a
//! plain hash is enough), so a token is shown once, when it is created.
//!
//! The rules every replica applies the same way (see [`Users::apply`]):
//! - the first user must be an admin (creating it turns authentication on, and a cluster
//!   whose only users cannot administer it is locked for good);
//! - the last admin cannot be dropped or lose the role;
//! - at most [`USERS_MAX`] users and [`TOKENS_PER_USER_MAX`] tokens per user.

use std::collections::{BTreeMap, BTreeSet};

use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// Users a cluster may have.
pub const USERS_MAX: usize = 1_000;
/// Tokens one user may hold at once.
pub const TOKENS_PER_USER_MAX: usize = 100;
/// Longest user name, in bytes (Postgres' identifier limit).
pub const USER_NAME_MAX_BYTES: usize = 63;
/// Longest password, in bytes.
pub const PASSWORD_MAX_BYTES: usize = 1_024;
/// PBKDF2 iterations of a new verifier (Postgres' default).
pub const SCRAM_ITERATIONS: u32 = 4_096;

/// What a user may do. Each role includes the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Queries and `SHOW`.
    Reader,
    /// Also writes rows (`INSERT`, line protocol; ingest may create tables and columns).
    Writer,
    /// Also DDL, users and tokens, cluster settings, moves and the admin API.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, String> {
        match s.trim().trim_matches('"').to_ascii_lowercase().as_str() {
            "reader" => Ok(Role::Reader),
            "writer" => Ok(Role::Writer),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?} (the roles are admin, writer and reader)"
            )),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

/// A SCRAM-SHA-256 verifier (byte fields hex-encoded, so `catalog.json` stays readable).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramVerifier {
    pub salt: String,
    pub iterations: u32,
    pub stored_key: String,
    pub server_key: String,
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    /// SHA-256 of the token's secret, hex.
    pub hash: String,
    pub created_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEntry {
    pub verifier: ScramVerifier,
    pub roles: BTreeSet<Role>,
    /// By token id.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenEntry>,
}

impl UserEntry {
    /// The most the user may do; `None` with no role (the user can log in, nothing more).
    pub fn role(&self) -> Option<Role> {
        self.roles.iter().next_back().copied()
    }
}

/// One change to the users (group 0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum UserOp {
    Create {
        name: String,
        verifier: ScramVerifier,
        roles: BTreeSet<Role>,
        if_not_exists: bool,
    },
    /// Creates `name` as an admin if the cluster has no users yet (else does nothing): the
    /// first admin from the configuration, which every node may send at every start.
    Bootstrap {
        name: String,
        verifier: ScramVerifier,
    },
    SetPassword {
        name: String,
        verifier: ScramVerifier,
    },
    Drop {
        name: String,
        if_exists: bool,
    },
    Grant {
        name: String,
        role: Role,
    },
    Revoke {
        name: String,
        role: Role,
    },
    CreateToken {
        user: String,
        id: String,
        hash: String,
        now_ms: u64,
    },
    DropToken {
        id: String,
    },
}

/// The users of a cluster, by name.
pub type Users = BTreeMap<String, UserEntry>;

fn admins(users: &Users) -> usize {
    users
        .values()
        .filter(|u| u.roles.contains(&Role::Admin))
        .count()
}

/// Checks a user name: 1..=63 bytes of letters, digits, `_`, `-` and `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= USER_NAME_MAX_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "user name {name:?} must be 1 to {USER_NAME_MAX_BYTES} letters, digits, '_', '-' or '.'"
        ))
    }
}

/// Applies `op` to `users` in place, or refuses it and changes nothing. Pure.
pub fn apply(users: &mut Users, op: &UserOp) -> Result<(), String> {
    let missing = |name: &str| format!("user {name:?} does not exist");
    match op {
        UserOp::Create {
            name,
            verifier,
            roles,
            if_not_exists,
        } => {
            check_name(name)?;
            if users.contains_key(name) {
                return if *if_not_exists {
                    Ok(())
                } else {
                    Err(format!("user {name:?} already exists"))
                };
            }
            if users.len() >= USERS_MAX {
                return Err(format!("the cluster has {USERS_MAX} users (USERS_MAX)"));
            }
            if users.is_empty() && !roles.contains(&Role::Admin) {
                return Err(format!(
                    "the first user turns authentication on, so it must be an admin: CREATE USER {name} WITH PASSWORD '…' IN ROLE admin"
                ));
            }
            users.insert(
                name.clone(),
                UserEntry {
                    verifier: verifier.clone(),
                    roles: roles.clone(),
                    tokens: BTreeMap::new(),
                },
            );
        }
        UserOp::Bootstrap { name, verifier } => {
            check_name(name)?;
            if users.is_empty() {
                users.insert(
                    name.clone(),
                    UserEntry {
                        verifier: verifier.clone(),
                        roles: std::iter::once(Role::Admin).collect(),
                        tokens: BTreeMap::new(),
                    },
                );
            }
        }
        UserOp::SetPassword { name, verifier } => {
            users.get_mut(name).ok_or_else(|| missing(name))?.verifier = verifier.clone();
        }
        UserOp::Drop { name, if_exists } => {
            let Some(u) = users.get(name) else {
                return if *if_exists {
                    Ok(())
                } else {
                    Err(missing(name))
                };
            };
            if u.roles.contains(&Role::Admin) && admins(users) == 1 {
                return Err(format!(
                    "user {name:?} is the last admin; grant admin to another user first"
                ));
            }
            users.remove(name);
        }
        UserOp::Grant { name, role } => {
            users
                .get_mut(name)
                .ok_or_else(|| missing(name))?
                .roles
                .insert(*role);
        }
        UserOp::Revoke { name, role } => {
            let u = users.get(name).ok_or_else(|| missing(name))?;
            if *role == Role::Admin && u.roles.contains(&Role::Admin) && admins(users) == 1 {
                return Err(format!(
                    "user {name:?} is the last admin; grant admin to another user first"
                ));
            }
            users
                .get_mut(name)
                .ok_or_else(|| missing(name))?
                .roles
                .remove(role);
        }
        UserOp::CreateToken {
            user,
            id,
            hash,
            now_ms,
        } => {
            if users.values().any(|u| u.tokens.contains_key(id)) {
                return Err(format!("token {id} already exists"));
            }
            let u = users.get_mut(user).ok_or_else(|| missing(user))?;
            if u.tokens.len() >= TOKENS_PER_USER_MAX {
                return Err(format!(
                    "user {user:?} has {TOKENS_PER_USER_MAX} tokens (TOKENS_PER_USER_MAX); drop one first"
                ));
            }
            u.tokens.insert(
                id.clone(),
                TokenEntry {
                    hash: hash.clone(),
                    created_ms: *now_ms,
                },
            );
        }
        UserOp::DropToken { id } => {
            let u = users
                .values_mut()
                .find(|u| u.tokens.contains_key(id))
                .ok_or_else(|| format!("token {id} does not exist"))?;
            u.tokens.remove(id);
        }
    }
    Ok(())
}

// ---- the cryptography (ring) ----

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .expect("the system random source works");
    out
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&k, msg).as_ref().to_vec()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    let iterations = std::num::NonZeroU32::new(iterations.max(1)).expect("at least one");
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password.as_bytes(),
        &mut out,
    );
    out
}

/// Checks a password's length (the verifier makes no other demand).
pub fn check_password(password: &str) -> Result<(), String> {
    if password.is_empty() || password.len() > PASSWORD_MAX_BYTES {
        return Err(format!(
            "a password must be 1 to {PASSWORD_MAX_BYTES} bytes"
        ));
    }
    Ok(())
}

/// A new verifier for `password`, with a fresh random salt.
pub fn make_verifier(password: &str) -> ScramVerifier {
    let salt = random::<16>();
    let salted = salted_password(password, &salt, SCRAM_ITERATIONS);
    let client_key = hmac(&salted, b"Client Key");
    ScramVerifier {
        salt: hex(&salt),
        iterations: SCRAM_ITERATIONS,
        stored_key: hex(&sha256(&client_key)),
        server_key: hex(&hmac(&salted, b"Server Key")),
    }
}

/// A verifier's fields as bytes.
pub struct ScramKeys {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl ScramVerifier {
    /// The verifier as bytes; `None` for a damaged record.
    pub fn keys(&self) -> Option<ScramKeys> {
        Some(ScramKeys {
            salt: unhex(&self.salt)?,
            iterations: self.iterations,
            stored_key: unhex(&self.stored_key)?,
            server_key: unhex(&self.server_key)?,
        })
    }

    /// Whether `password` is the one this verifier was made from (constant time in the
    /// comparison; the cost is the PBKDF2 derivation).
    pub fn matches(&self, password: &str) -> bool {
        let Some(k) = self.keys() else {
            return false;
        };
        let salted = salted_password(password, &k.salt, k.iterations);
        let got = sha256(&hmac(&salted, b"Client Key"));
        bool::from(got.ct_eq(&k.stored_key))
    }
}

/// The prefix every token starts with (so a leaked one is easy to find in a scan).
pub const TOKEN_PREFIX: &str = "shoal_";

/// A new token: (id, the whole token to hand to the user once, the hash group 0 keeps).
pub fn make_token() -> (String, String, String) {
    let id = hex(&random::<6>());
    let secret = hex(&random::<32>());
    let hash = hex(&sha256(secret.as_bytes()));
    (id.clone(), format!("{TOKEN_PREFIX}{id}_{secret}"), hash)
}

/// The user a presented token belongs to, if it is one of theirs.
pub fn token_user<'a>(users: &'a Users, token: &str) -> Option<(&'a str, &'a UserEntry)> {
    let rest = token.trim().strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hash = hex(&sha256(secret.as_bytes()));
    users.iter().find_map(|(name, u)| {
        let t = u.tokens.get(id)?;
        bool::from(t.hash.as_bytes().ct_eq(hash.as_bytes())).then_some((name.as_str(), u))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, roles: &[Role]) -> UserOp {
        UserOp::Create {
            name: name.into(),
            verifier: make_verifier("pw"),
            roles: roles.iter().copied().collect(),
            if_not_exists: false,
        }
    }

    #[test]
    fn a_verifier_accepts_its_password_only() {
        let v = make_verifier("correct horse");
        assert!(v.matches("correct horse"));
        assert!(!v.matches("correct horse "));
        assert!(!v.matches(""));
        let again = make_verifier("correct horse");
        assert_ne!(v.salt, again.salt, "every verifier has its own salt");
        assert!(
            !format!("{v:?}").contains(&v.stored_key),
            "Debug hides the keys"
        );
    }

    #[test]
    fn tokens_resolve_to_their_user_until_dropped() {
        let mut users = Users::new();
        apply(&mut users, &create("ada", &[Role::Admin])).unwrap();
        let (id, token, hash) = make_token();
        assert!(token.starts_with("shoal_"));
        apply(
            &mut users,
            &UserOp::CreateToken {
                user: "ada".into(),
                id: id.clone(),
                hash,
                now_ms: 1,
            },
        )
        .unwrap();
        assert_eq!(token_user(&users, &token).map(|(n, _)| n), Some("ada"));
        let mut forged = token.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == '0' { '1' } else { '0' });
        assert!(token_user(&users, &forged).is_none());
        assert!(token_user(&users, "shoal_nope_x").is_none());
        apply(&mut users, &UserOp::DropToken { id }).unwrap();
        assert!(token_user(&users, &token).is_none());
    }

    #[test]
    fn the_first_user_is_an_admin_and_the_last_admin_stays() {
        let mut users = Users::new();
        let err = apply(&mut users, &create("bob", &[Role::Reader])).unwrap_err();
        assert!(err.contains("must be an admin"), "{err}");
        assert!(users.is_empty());
        apply(&mut users, &create("ada", &[Role::Admin])).unwrap();
        apply(&mut users, &create("bob", &[])).unwrap();
        assert_eq!(users["bob"].role(), None);
        let last = UserOp::Drop {
            name: "ada".into(),
            if_exists: false,
        };
        assert!(apply(&mut users, &last).unwrap_err().contains("last admin"));
        let revoke = UserOp::Revoke {
            name: "ada".into(),
            role: Role::Admin,
        };
        assert!(apply(&mut users, &revoke)
            .unwrap_err()
            .contains("last admin"));
        apply(
            &mut users,
            &UserOp::Grant {
                name: "bob".into(),
                role: Role::Admin,
            },
        )
        .unwrap();
        apply(&mut users, &revoke).unwrap();
        assert_eq!(users["ada"].role(), None);
        apply(&mut users, &last).unwrap();
        assert!(!users.contains_key("ada"));
        assert!(apply(&mut users, &create("bob", &[]))
            .unwrap_err()
            .contains("already exists"));
        assert!(apply(&mut users, &create("bad name", &[])).is_err());
    }

    #[test]
    fn roles_include_the_ones_below() {
        let mut roles = BTreeSet::new();
        roles.insert(Role::Reader);
        roles.insert(Role::Writer);
        let u = UserEntry {
            verifier: make_verifier("x"),
            roles,
            tokens: BTreeMap::new(),
        };
        assert_eq!(u.role(), Some(Role::Writer));
        assert!(Role::Admin > Role::Writer && Role::Writer > Role::Reader);
        assert_eq!(Role::parse("ADMIN"), Ok(Role::Admin));
        assert!(Role::parse("root").is_err());
    }
}
