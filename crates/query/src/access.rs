//! Who runs a statement and whether they may: the principal a session belongs to, the role
//! each kind of statement needs, and the users/tokens SQL (`CREATE USER`, `GRANT`,
//! `CREATE TOKEN FOR`, `SHOW USERS`, …), parsed here by hand because DataFusion's parser
//! does not know it.
//!
//! The role is looked up in the catalog for every statement, so `REVOKE` and `DROP USER`
//! take effect on open sessions at once. A session without a user (trust: the cluster has
//! no users) may do anything until the first user is created; from then on it gets 28000
//! and must reconnect as a user.

use std::collections::BTreeSet;

use shoal_consensus::users::{Role, UserOp};
use shoal_consensus::Catalog;

use crate::error::{ErrorKind, QueryError, Result};

/// Who a session's statements run as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Principal {
    /// Nobody authenticated: allowed everything while the cluster has no users.
    #[default]
    Anonymous,
    /// An authenticated user; their role is read from the catalog at each statement.
    User(String),
    /// The node itself (its own queries, the admin API once it let the caller in).
    Node,
}

impl Principal {
    pub fn name(&self) -> &str {
        match self {
            Principal::Anonymous => "anonymous",
            Principal::User(u) => u,
            Principal::Node => "node",
        }
    }
}

/// The error for a client that must log in (HTTP 401, SQLSTATE 28000).
pub fn unauthenticated(message: impl Into<String>) -> QueryError {
    QueryError::new(ErrorKind::Unauthenticated, message)
}

/// Whether `who` may run something that needs `need` (`None`: anything logged in may).
/// Pure: the catalog holds the users.
pub fn authorize(catalog: &Catalog, who: &Principal, need: Option<Role>, what: &str) -> Result<()> {
    let user = match who {
        Principal::Node => return Ok(()),
        Principal::Anonymous if catalog.users.is_empty() => return Ok(()),
        Principal::Anonymous => {
            return Err(unauthenticated(
                "authentication is required (this cluster has users): log in as a user",
            ))
        }
        Principal::User(u) => u,
    };
    let Some(entry) = catalog.users.get(user) else {
        return Err(unauthenticated(format!("user {user:?} no longer exists")));
    };
    match need {
        None => Ok(()),
        Some(need) if entry.role() >= Some(need) => Ok(()),
        Some(need) => Err(QueryError::new(
            ErrorKind::Forbidden,
            format!(
                "permission denied: {what} needs the {} role; user {user:?} has {}",
                need.as_str(),
                entry.role().map_or("no role", |r| r.as_str())
            ),
        )),
    }
}

/// A users/tokens statement.
#[derive(Clone, Debug, PartialEq)]
pub enum UserStatement {
    Create {
        name: String,
        password: Option<String>,
        roles: BTreeSet<Role>,
        if_not_exists: bool,
    },
    AlterPassword {
        name: String,
        password: String,
    },
    Drop {
        name: String,
        if_exists: bool,
    },
    Grant {
        role: Role,
        name: String,
    },
    Revoke {
        role: Role,
        name: String,
    },
    CreateToken {
        user: String,
    },
    DropToken {
        id: String,
    },
    ShowUsers,
    ShowTokens,
}

impl UserStatement {
    /// The statement's command tag.
    pub fn tag(&self) -> &'static str {
        match self {
            UserStatement::Create { .. } => "CREATE ROLE",
            UserStatement::AlterPassword { .. } => "ALTER ROLE",
            UserStatement::Drop { .. } => "DROP ROLE",
            UserStatement::Grant { .. } => "GRANT ROLE",
            UserStatement::Revoke { .. } => "REVOKE ROLE",
            UserStatement::CreateToken { .. } => "CREATE TOKEN",
            UserStatement::DropToken { .. } => "DROP TOKEN",
            UserStatement::ShowUsers => "SHOW USERS",
            UserStatement::ShowTokens => "SHOW TOKENS",
        }
    }

    /// The role the statement needs: admin, except changing one's own password.
    pub fn needs(&self, who: &Principal) -> Option<Role> {
        match self {
            UserStatement::AlterPassword { name, .. } if *who == Principal::User(name.clone()) => {
                None
            }
            _ => Some(Role::Admin),
        }
    }

    /// The group-0 operation (a verifier is made from a password here, so the password
    /// never leaves this node).
    pub fn op(&self, now_ms: u64) -> Option<(UserOp, Option<String>)> {
        use shoal_consensus::users::{make_token, make_verifier};
        Some(match self {
            UserStatement::Create {
                name,
                password,
                roles,
                if_not_exists,
            } => {
                // Without a password the user logs in with tokens only: the verifier is
                // made from a random secret nobody knows.
                let secret = match password {
                    Some(p) => p.clone(),
                    None => make_token().1,
                };
                (
                    UserOp::Create {
                        name: name.clone(),
                        verifier: make_verifier(&secret),
                        roles: roles.clone(),
                        if_not_exists: *if_not_exists,
                    },
                    None,
                )
            }
            UserStatement::AlterPassword { name, password } => (
                UserOp::SetPassword {
                    name: name.clone(),
                    verifier: make_verifier(password),
                },
                None,
            ),
            UserStatement::Drop { name, if_exists } => (
                UserOp::Drop {
                    name: name.clone(),
                    if_exists: *if_exists,
                },
                None,
            ),
            UserStatement::Grant { role, name } => (
                UserOp::Grant {
                    name: name.clone(),
                    role: *role,
                },
                None,
            ),
            UserStatement::Revoke { role, name } => (
                UserOp::Revoke {
                    name: name.clone(),
                    role: *role,
                },
                None,
            ),
            UserStatement::CreateToken { user } => {
                let (id, token, hash) = make_token();
                (
                    UserOp::CreateToken {
                        user: user.clone(),
                        id,
                        hash,
                        now_ms,
                    },
                    Some(token),
                )
            }
            UserStatement::DropToken { id } => (UserOp::DropToken { id: id.clone() }, None),
            UserStatement::ShowUsers | UserStatement::ShowTokens => return None,
        })
    }
}

/// Words and single-quoted strings (`''` inside is a quote); `None` for an unclosed string.
fn tokens(sql: &str) -> Option<Vec<Tok>> {
    let mut out = vec![];
    let mut chars = sql.trim().trim_end_matches(';').chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() || c == ',' {
            chars.next();
        } else if c == '\'' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next()? {
                    '\'' if chars.peek() == Some(&'\'') => {
                        chars.next();
                        s.push('\'');
                    }
                    '\'' => break,
                    ch => s.push(ch),
                }
            }
            out.push(Tok::Str(s));
        } else {
            let mut w = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() || ch == ',' || ch == '\'' {
                    break;
                }
                w.push(ch);
                chars.next();
            }
            out.push(Tok::Word(w));
        }
    }
    Some(out)
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
}

impl Tok {
    fn is(&self, kw: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    /// A name: a bare word (folded to lower case, as Postgres does) or a quoted identifier.
    fn name(&self) -> Option<String> {
        match self {
            Tok::Word(w) if w.starts_with('"') && w.ends_with('"') && w.len() >= 2 => {
                Some(w[1..w.len() - 1].to_string())
            }
            Tok::Word(w) => Some(w.to_ascii_lowercase()),
            Tok::Str(_) => None,
        }
    }
}

fn syntax(form: &str) -> QueryError {
    QueryError::bad_input(format!("syntax error: expected {form}")).with_code("42601")
}

const CREATE_FORM: &str =
    "CREATE USER [IF NOT EXISTS] <name> [WITH] [PASSWORD '<password>'] [IN ROLE admin|writer|reader, …]";

/// Parses a users/tokens statement; `None` when `sql` is not one.
pub fn parse(sql: &str) -> Option<Result<UserStatement>> {
    let t = tokens(sql)?;
    let at = |i: usize, kw: &str| t.get(i).is_some_and(|x| x.is(kw));
    let user_word = |i: usize| at(i, "USER") || at(i, "ROLE");
    if at(0, "SHOW") && at(1, "USERS") && t.len() == 2 {
        return Some(Ok(UserStatement::ShowUsers));
    }
    if at(0, "SHOW") && at(1, "TOKENS") && t.len() == 2 {
        return Some(Ok(UserStatement::ShowTokens));
    }
    if at(0, "CREATE") && at(1, "TOKEN") {
        return Some(
            match (at(2, "FOR"), t.get(3).and_then(Tok::name), t.len()) {
                (true, Some(user), 4) => Ok(UserStatement::CreateToken { user }),
                _ => Err(syntax("CREATE TOKEN FOR <user>")),
            },
        );
    }
    if at(0, "DROP") && at(1, "TOKEN") {
        return Some(match (t.get(2), t.len()) {
            (Some(Tok::Word(id)), 3) => Ok(UserStatement::DropToken {
                id: id
                    .trim_start_matches(shoal_consensus::users::TOKEN_PREFIX)
                    .split('_')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
            }),
            _ => Err(syntax("DROP TOKEN <token id>")),
        });
    }
    if at(0, "CREATE") && user_word(1) {
        return Some(parse_create(&t[2..]));
    }
    if at(0, "ALTER") && user_word(1) {
        let form = "ALTER USER <name> [WITH] PASSWORD '<password>'";
        let name = t.get(2).and_then(Tok::name);
        let rest = if at(3, "WITH") {
            &t[4..]
        } else {
            t.get(3..).unwrap_or(&[])
        };
        return Some(match (name, rest) {
            (Some(name), [p, Tok::Str(pw)]) if p.is("PASSWORD") => {
                shoal_consensus::users::check_password(pw)
                    .map_err(QueryError::invalid_value)
                    .map(|()| UserStatement::AlterPassword {
                        name,
                        password: pw.clone(),
                    })
            }
            _ => Err(syntax(form)),
        });
    }
    if at(0, "DROP") && user_word(1) {
        let if_exists = at(2, "IF") && at(3, "EXISTS");
        let i = if if_exists { 4 } else { 2 };
        return Some(match (t.get(i).and_then(Tok::name), t.len() == i + 1) {
            (Some(name), true) => Ok(UserStatement::Drop { name, if_exists }),
            _ => Err(syntax("DROP USER [IF EXISTS] <name>")),
        });
    }
    let grant = at(0, "GRANT");
    if grant || at(0, "REVOKE") {
        let (form, link) = if grant {
            ("GRANT admin|writer|reader TO <user>", "TO")
        } else {
            ("REVOKE admin|writer|reader FROM <user>", "FROM")
        };
        if t.len() != 4 {
            return Some(Err(syntax(form)));
        }
        let role = t[1].name().map(|r| Role::parse(&r));
        return Some(match (role, at(2, link), t[3].name()) {
            (Some(Err(e)), _, _) => Err(QueryError::invalid_value(e)),
            (Some(Ok(role)), true, Some(name)) if grant => Ok(UserStatement::Grant { role, name }),
            (Some(Ok(role)), true, Some(name)) => Ok(UserStatement::Revoke { role, name }),
            _ => Err(syntax(form)),
        });
    }
    None
}

fn parse_create(t: &[Tok]) -> Result<UserStatement> {
    let if_not_exists = t.len() >= 3 && t[0].is("IF") && t[1].is("NOT") && t[2].is("EXISTS");
    let t = if if_not_exists { &t[3..] } else { t };
    let name = t
        .first()
        .and_then(Tok::name)
        .ok_or_else(|| syntax(CREATE_FORM))?;
    shoal_consensus::users::check_name(&name).map_err(QueryError::invalid_value)?;
    let mut rest = &t[1..];
    if rest.first().is_some_and(|x| x.is("WITH")) {
        rest = &rest[1..];
    }
    let mut password = None;
    let mut roles = BTreeSet::new();
    while let Some(first) = rest.first() {
        if first.is("PASSWORD") {
            let Some(Tok::Str(pw)) = rest.get(1) else {
                return Err(syntax(CREATE_FORM));
            };
            shoal_consensus::users::check_password(pw).map_err(QueryError::invalid_value)?;
            password = Some(pw.clone());
            rest = &rest[2..];
        } else if first.is("IN") && rest.get(1).is_some_and(|x| x.is("ROLE")) {
            rest = &rest[2..];
            while let Some(r) = rest.first().and_then(Tok::name) {
                if r.eq_ignore_ascii_case("password") {
                    break;
                }
                roles.insert(Role::parse(&r).map_err(QueryError::invalid_value)?);
                rest = &rest[1..];
            }
        } else if first.is("LOGIN") {
            rest = &rest[1..];
        } else {
            return Err(syntax(CREATE_FORM));
        }
    }
    Ok(UserStatement::Create {
        name,
        password,
        roles,
        if_not_exists,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(sql: &str) -> UserStatement {
        parse(sql).expect("a users statement").expect("parses")
    }

    #[test]
    fn users_statements_parse() {
        assert_eq!(
            ok("CREATE USER Ada WITH PASSWORD 'it''s secret' IN ROLE admin, writer;"),
            UserStatement::Create {
                name: "ada".into(),
                password: Some("it's secret".into()),
                roles: [Role::Admin, Role::Writer].into_iter().collect(),
                if_not_exists: false,
            }
        );
        assert!(matches!(
            ok("create user if not exists telegraf"),
            UserStatement::Create {
                password: None,
                if_not_exists: true,
                ..
            }
        ));
        assert_eq!(
            ok("ALTER USER ada PASSWORD 'x'"),
            UserStatement::AlterPassword {
                name: "ada".into(),
                password: "x".into()
            }
        );
        assert_eq!(
            ok("GRANT reader TO bob"),
            UserStatement::Grant {
                role: Role::Reader,
                name: "bob".into()
            }
        );
        assert_eq!(
            ok("revoke WRITER from bob"),
            UserStatement::Revoke {
                role: Role::Writer,
                name: "bob".into()
            }
        );
        assert_eq!(
            ok("CREATE TOKEN FOR bob"),
            UserStatement::CreateToken { user: "bob".into() }
        );
        assert_eq!(
            ok("DROP TOKEN shoal_0a1b2c_ffff"),
            UserStatement::DropToken {
                id: "0a1b2c".into()
            }
        );
        assert_eq!(ok("show users"), UserStatement::ShowUsers);
        assert!(matches!(
            ok("DROP USER IF EXISTS x"),
            UserStatement::Drop {
                if_exists: true,
                ..
            }
        ));
        for bad in [
            "CREATE USER ada PASSWORD",
            "CREATE USER ada IN ROLE root",
            "GRANT superuser TO ada",
            "CREATE TOKEN bob",
            "ALTER USER ada SET x",
            "CREATE USER 'ada'",
        ] {
            assert!(parse(bad).expect("recognised").is_err(), "{bad}");
        }
        assert!(parse("CREATE TABLE t (x int)").is_none());
        assert!(parse("SHOW TABLES").is_none());
        assert!(parse("GRANT SELECT ON t TO bob").is_some_and(|r| r.is_err()));
    }

    #[test]
    fn authorization_follows_the_catalog() {
        use shoal_consensus::users::{apply, make_verifier};
        let mut c = Catalog::default();
        let anon = Principal::Anonymous;
        assert!(authorize(&c, &anon, Some(Role::Admin), "x").is_ok());
        let mk = |name: &str, roles: &[Role]| UserOp::Create {
            name: name.into(),
            verifier: make_verifier("pw"),
            roles: roles.iter().copied().collect(),
            if_not_exists: false,
        };
        apply(&mut c.users, &mk("ada", &[Role::Admin])).unwrap();
        apply(&mut c.users, &mk("rita", &[Role::Reader])).unwrap();
        let e = authorize(&c, &anon, None, "x").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unauthenticated);
        let rita = Principal::User("rita".into());
        assert!(authorize(&c, &rita, Some(Role::Reader), "SELECT").is_ok());
        let e = authorize(&c, &rita, Some(Role::Writer), "INSERT").unwrap_err();
        assert_eq!((e.kind, e.sqlstate()), (ErrorKind::Forbidden, "42501"));
        assert!(
            e.message.contains("writer") && e.message.contains("reader"),
            "{}",
            e.message
        );
        let gone = Principal::User("zed".into());
        assert_eq!(
            authorize(&c, &gone, None, "x").unwrap_err().kind,
            ErrorKind::Unauthenticated
        );
        assert!(authorize(&c, &Principal::Node, Some(Role::Admin), "x").is_ok());
    }
}
