//! A SQL session: settings (`read_consistency`, `statement_timeout`, client GUCs) and the
//! transaction block, shared by every protocol (HTTP runs one session per request, pgwire one
//! per connection).
//!
//! Transactions: `BEGIN … COMMIT` makes the DDL inside it one group-0 entry, so the schema
//! version moves by exactly one per committed block; `ROLLBACK` discards it. Each DDL
//! statement is checked against the catalog as the block would leave it, so errors show at
//! the statement (as in Postgres); after an error every statement but `ROLLBACK`/`COMMIT`
//! fails with 25P02. Rows written inside a block are committed per statement, not by
//! `COMMIT`: Shoal's writes are atomic per statement.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::sql::parser::Statement as DfStatement;
use shoal_consensus::users::Role;
use shoal_consensus::{Catalog, DdlOp, Response};

use crate::access::{authorize, Principal, UserStatement};
use crate::ddl::{ddl_op, ddl_tag};
use crate::engine::{QueryEngine, QueryOptions, QueryOutput, ReadConsistency};
use crate::error::{ErrorKind, QueryError, Result};

/// Where a session stands with respect to a transaction block (Postgres' `I`/`T`/`E`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InBlock,
    Failed,
}

enum Tx {
    Idle,
    Open { ops: Vec<DdlOp>, shadow: Catalog },
    Failed,
}

pub struct Session {
    pub read_consistency: ReadConsistency,
    /// `None`: statements run until done.
    pub statement_timeout: Option<Duration>,
    /// Other settings clients send (`application_name`, `extra_float_digits`, …), kept so
    /// `SHOW` answers them.
    settings: BTreeMap<String, String>,
    tx: Tx,
    /// Statements come from a Postgres client: parse them Postgres-style first.
    pub pg_dialect: bool,
    /// Who the statements run as (see [`crate::access`]).
    pub principal: Principal,
}

/// Settings a session can `SHOW` before anyone set them (what clients probe on connect).
pub(crate) const SERVER_SETTINGS: &[(&str, &str)] = &[
    ("server_version", "16.6"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("datestyle", "ISO, YMD"),
    ("timezone", "Etc/UTC"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
    ("transaction_isolation", "read committed"),
    ("search_path", "public"),
];

impl Default for Session {
    fn default() -> Self {
        Session::new(&QueryOptions::default())
    }
}

impl Session {
    pub fn new(opts: &QueryOptions) -> Session {
        Session {
            read_consistency: opts.read_consistency.clone(),
            statement_timeout: opts.statement_timeout,
            settings: BTreeMap::new(),
            tx: Tx::Idle,
            pg_dialect: false,
            principal: Principal::Anonymous,
        }
    }

    /// A session of a Postgres-protocol connection.
    pub fn postgres() -> Session {
        Session {
            pg_dialect: true,
            ..Session::default()
        }
    }

    pub fn status(&self) -> TxStatus {
        match self.tx {
            Tx::Idle => TxStatus::Idle,
            Tx::Open { .. } => TxStatus::InBlock,
            Tx::Failed => TxStatus::Failed,
        }
    }

    pub fn options(&self) -> QueryOptions {
        QueryOptions {
            read_consistency: self.read_consistency.clone(),
            statement_timeout: self.statement_timeout,
        }
    }

    fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let value = unquote(value);
        match name {
            "read_consistency" => self.read_consistency = ReadConsistency::parse(&value)?,
            "statement_timeout" => self.statement_timeout = parse_timeout(&value)?,
            _ => {
                self.settings.insert(name.to_string(), value);
            }
        }
        Ok(())
    }

    fn show(&self, name: &str) -> Result<String> {
        match name {
            "read_consistency" => Ok(self.read_consistency.to_string()),
            "statement_timeout" => Ok(match self.statement_timeout {
                None => "0".into(),
                Some(d) => format!("{}ms", d.as_millis()),
            }),
            _ => self
                .settings
                .get(name)
                .cloned()
                .or_else(|| {
                    SERVER_SETTINGS
                        .iter()
                        .find(|(k, _)| *k == name)
                        .map(|(_, v)| v.to_string())
                })
                .ok_or_else(|| {
                    QueryError::bad_input(format!(
                        "unrecognized configuration parameter \"{name}\""
                    ))
                    .with_code("42704")
                }),
        }
    }
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    if v.len() >= 2
        && (v.starts_with('\'') && v.ends_with('\'') || v.starts_with('"') && v.ends_with('"'))
    {
        v[1..v.len() - 1].to_string()
    } else {
        v.to_string()
    }
}

/// `statement_timeout`: milliseconds as a bare number (Postgres), or a duration (`5s`,
/// `500ms`); 0 turns it off.
pub fn parse_timeout(v: &str) -> Result<Option<Duration>> {
    let v = v.trim();
    let d = match v.parse::<u64>() {
        Ok(ms) => Some(Duration::from_millis(ms)),
        Err(_) => shoal_common::time::parse_duration(v),
    };
    match d {
        Some(d) if d.is_zero() => Ok(None),
        Some(d) => Ok(Some(d)),
        None => Err(QueryError::invalid_value(format!(
            "invalid statement_timeout {v:?}: use milliseconds (5000) or a duration (5s, 500ms); 0 turns it off"
        ))),
    }
}

/// Splits a request into statements at top-level `;`, respecting quotes, dollar-free
/// Postgres comments (`--`, `/* */`). Empty statements are dropped.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = vec![];
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < b.len() {
                    if b[i] == q {
                        if i + 1 < b.len() && b[i + 1] == q {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b';' => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&sql[start.min(sql.len())..]);
    out.into_iter()
        .filter(|s| !is_blank(s))
        .map(str::trim)
        .collect()
}

/// Whether a statement holds nothing but whitespace and comments.
fn is_blank(s: &str) -> bool {
    let mut rest = s.trim_start();
    loop {
        if rest.is_empty() {
            return true;
        }
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else {
            return false;
        }
    }
}

/// The leading words of a statement, upper-cased, for recognising session commands.
fn words(sql: &str, n: usize) -> Vec<String> {
    sql.split_whitespace()
        .take(n)
        .map(|w| w.trim_end_matches(';').to_ascii_uppercase())
        .collect()
}

/// A session command recognised before SQL parsing.
enum SessionCommand {
    Begin,
    Commit,
    Rollback,
    Set {
        name: String,
        value: String,
    },
    Show(String),
    /// `SET CLUSTER SETTING name = value` (group 0).
    SetCluster {
        name: String,
        value: String,
    },
    /// `ALTER VSHARD v MOVE REPLICA FROM a TO b`.
    MoveReplica {
        vshard: u32,
        from: u64,
        to: u64,
    },
    /// An `ALTER VSHARD` that did not parse: the message says the form.
    BadAlterVshard(String),
}

fn session_command(sql: &str) -> Option<SessionCommand> {
    let w = words(sql, 4);
    let first = w.first()?.as_str();
    if w.len() >= 3 && first == "SET" && w[1] == "CLUSTER" && w[2] == "SETTING" {
        let body = sql.trim().trim_end_matches(';');
        let rest = strip_word(strip_word(strip_word(body, "SET")?, "CLUSTER")?, "SETTING")?;
        let (name, value) = match rest.split_once('=') {
            Some((n, v)) => (n.trim(), v.trim()),
            None => {
                let mut it = rest.splitn(2, char::is_whitespace);
                let n = it.next().unwrap_or("");
                let v = it.next().unwrap_or("").trim();
                (n, strip_word(v, "TO").unwrap_or(v).trim())
            }
        };
        return Some(SessionCommand::SetCluster {
            name: name.trim_matches('"').to_ascii_lowercase(),
            value: unquote(value),
        });
    }
    if first == "ALTER" && w.get(1).map(String::as_str) == Some("VSHARD") {
        return Some(parse_move_replica(sql));
    }
    match first {
        "BEGIN" | "START" => Some(SessionCommand::Begin),
        "COMMIT" | "END" => Some(SessionCommand::Commit),
        "ROLLBACK" | "ABORT" => Some(SessionCommand::Rollback),
        "SET" => {
            let body = sql.trim().trim_end_matches(';')[3..].trim();
            let body = strip_word(body, "SESSION").unwrap_or(body);
            let body = strip_word(body, "LOCAL").unwrap_or(body);
            if let Some(rest) = strip_word(body, "TIME") {
                let v = strip_word(rest, "ZONE").unwrap_or(rest);
                return Some(SessionCommand::Set {
                    name: "timezone".into(),
                    value: v.trim().to_string(),
                });
            }
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n.trim(), v.trim()),
                None => {
                    let mut it = body.splitn(2, char::is_whitespace);
                    let n = it.next().unwrap_or("");
                    let v = it.next().unwrap_or("").trim();
                    (n, strip_word(v, "TO").unwrap_or(v).trim())
                }
            };
            Some(SessionCommand::Set {
                name: name.trim_matches('"').to_ascii_lowercase(),
                value: value.to_string(),
            })
        }
        "SHOW" => {
            let rest = sql.trim().trim_end_matches(';')[4..].trim();
            Some(SessionCommand::Show(rest.to_string()))
        }
        _ => None,
    }
}

/// `ALTER VSHARD <v> MOVE REPLICA FROM <node> TO <node>`.
fn parse_move_replica(sql: &str) -> SessionCommand {
    let w: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|x| x.to_ascii_uppercase())
        .collect();
    let shape = [
        "ALTER", "VSHARD", "", "MOVE", "REPLICA", "FROM", "", "TO", "",
    ];
    let fits = w.len() == shape.len()
        && shape
            .iter()
            .zip(&w)
            .all(|(want, got)| want.is_empty() || want == got);
    let parsed = fits
        .then(|| Some((w[2].parse().ok()?, w[6].parse().ok()?, w[8].parse().ok()?)))
        .flatten();
    match parsed {
        Some((vshard, from, to)) => SessionCommand::MoveReplica { vshard, from, to },
        None => SessionCommand::BadAlterVshard(
            "expected ALTER VSHARD <vshard> MOVE REPLICA FROM <node id> TO <node id>".into(),
        ),
    }
}

/// `text` without its leading keyword `word` (case-insensitive, whole word).
fn strip_word<'a>(text: &'a str, word: &str) -> Option<&'a str> {
    let t = text.trim_start();
    if t.len() >= word.len()
        && t[..word.len()].eq_ignore_ascii_case(word)
        && t[word.len()..].starts_with(|c: char| c.is_whitespace())
    {
        Some(t[word.len()..].trim_start())
    } else {
        None
    }
}

fn one_column(name: &str, values: Vec<String>) -> QueryOutput {
    let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]));
    let col: ArrayRef = Arc::new(StringArray::from(values));
    let batch = RecordBatch::try_new(schema.clone(), vec![col]).expect("one utf8 column");
    QueryOutput::Rows {
        schema,
        batches: vec![batch],
    }
}

fn two_columns(names: (&str, &str), rows: Vec<(String, String)>) -> QueryOutput {
    let schema = Arc::new(Schema::new(vec![
        Field::new(names.0, DataType::Utf8, false),
        Field::new(names.1, DataType::Utf8, false),
    ]));
    let (a, b): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(a)),
        Arc::new(StringArray::from(b)),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols).expect("two utf8 columns");
    QueryOutput::Rows {
        schema,
        batches: vec![batch],
    }
}

/// The role a parsed statement needs and what to call it in a refusal: DDL and `COPY`
/// need admin, `INSERT` (and other DML) writer, queries reader. `EXPLAIN` needs what its
/// statement needs (`EXPLAIN ANALYZE` runs it).
fn statement_needs(stmt: &DfStatement) -> (Role, &'static str) {
    match stmt {
        DfStatement::Statement(s) => sql_needs(s),
        DfStatement::Explain(e) => statement_needs(&e.statement),
        DfStatement::CopyTo(_) => (Role::Admin, "COPY"),
        _ => (Role::Admin, "DDL"),
    }
}

fn sql_needs(s: &datafusion::sql::sqlparser::ast::Statement) -> (Role, &'static str) {
    use datafusion::sql::sqlparser::ast::Statement as S;
    match s {
        S::Explain { statement, .. } => sql_needs(statement),
        S::Query(_)
        | S::ExplainTable { .. }
        | S::ShowTables { .. }
        | S::ShowColumns { .. }
        | S::ShowVariable { .. } => (Role::Reader, "a query"),
        S::Insert(_) | S::Update { .. } | S::Delete(_) => (Role::Writer, "writing rows"),
        _ => (Role::Admin, "DDL"),
    }
}

fn command(tag: &str) -> QueryOutput {
    QueryOutput::Command {
        tag: tag.into(),
        rows: 0,
    }
}

/// Maps a rejected DDL entry's message to the error Postgres would give.
pub fn ddl_rejection(msg: String) -> QueryError {
    if msg.contains("already exists") {
        let code = if msg.starts_with("column") {
            "42701"
        } else {
            "42P07"
        };
        QueryError::new(ErrorKind::AlreadyExists, msg).with_code(code)
    } else if msg.contains("does not exist") {
        QueryError::new(ErrorKind::NotFound, msg)
    } else {
        QueryError::bad_input(msg)
    }
}

/// How long a strong statement waits to bring the catalog up to date before it fails.
const CATALOG_BARRIER_TIMEOUT: Duration = Duration::from_secs(10);

impl QueryEngine {
    /// Runs one statement (as split by [`split_statements`]) in `session`, with `$n`
    /// parameters bound from `params` (text values, typed by the plan).
    pub async fn run_statement(
        &self,
        session: &mut Session,
        sql: &str,
        params: &[Option<String>],
    ) -> Result<QueryOutput> {
        let failed = session.status() == TxStatus::Failed;
        if let Some(stmt) = crate::access::parse(sql) {
            if failed {
                return Err(QueryError::new(
                    ErrorKind::TxAborted,
                    "current transaction is aborted, commands ignored until end of transaction block",
                ));
            }
            return self.run_user_statement(session, stmt?).await;
        }
        let cmd = session_command(sql);
        if failed && !matches!(cmd, Some(SessionCommand::Commit | SessionCommand::Rollback)) {
            return Err(QueryError::new(
                ErrorKind::TxAborted,
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        let result = self.run_inner(session, sql, cmd, params).await;
        if result.is_err() {
            if let Tx::Open { .. } = session.tx {
                session.tx = Tx::Failed;
            }
        }
        result
    }

    async fn run_inner(
        &self,
        session: &mut Session,
        sql: &str,
        cmd: Option<SessionCommand>,
        params: &[Option<String>],
    ) -> Result<QueryOutput> {
        let need = match &cmd {
            Some(SessionCommand::Show(_)) => Some((Role::Reader, "SHOW")),
            Some(SessionCommand::SetCluster { .. }) => Some((Role::Admin, "SET CLUSTER SETTING")),
            Some(SessionCommand::MoveReplica { .. } | SessionCommand::BadAlterVshard(_)) => {
                Some((Role::Admin, "ALTER VSHARD"))
            }
            _ => None,
        };
        if cmd.is_some() {
            self.authorize(session, need)?;
        }
        match cmd {
            Some(SessionCommand::Begin) => {
                if let Tx::Idle = session.tx {
                    let shadow = self.registry().catalog().read().as_ref().clone();
                    session.tx = Tx::Open {
                        ops: vec![],
                        shadow,
                    };
                }
                return Ok(command("BEGIN"));
            }
            Some(SessionCommand::Rollback) => {
                session.tx = Tx::Idle;
                return Ok(command("ROLLBACK"));
            }
            Some(SessionCommand::Commit) => {
                return match std::mem::replace(&mut session.tx, Tx::Idle) {
                    Tx::Failed => Ok(command("ROLLBACK")),
                    Tx::Idle => Ok(command("COMMIT")),
                    Tx::Open { ops, .. } if ops.is_empty() => Ok(command("COMMIT")),
                    Tx::Open { ops, .. } => match self.propose_ddl(ops).await? {
                        Response::Rejected(msg) => Err(ddl_rejection(msg)),
                        _ => Ok(command("COMMIT")),
                    },
                };
            }
            Some(SessionCommand::Set { name, value }) => {
                session.set(&name, &value)?;
                return Ok(command("SET"));
            }
            Some(SessionCommand::Show(what)) => return self.show(session, &what).await,
            Some(SessionCommand::SetCluster { name, value }) => {
                return self.set_cluster_setting(&name, &value).await;
            }
            Some(SessionCommand::MoveReplica { vshard, from, to }) => {
                return self.move_replica(vshard, from, to).await;
            }
            Some(SessionCommand::BadAlterVshard(msg)) => {
                return Err(QueryError::bad_input(msg).with_code("42601"));
            }
            None => {}
        }
        if params.is_empty() {
            if let Some((version, plan)) = self.plans.get(sql, session.pg_dialect) {
                // Only queries are cached.
                self.authorize(session, Some((Role::Reader, "a query")))?;
                self.catalog_barrier(session).await?;
                // A plan made before the latest DDL is planned again (and replaced) below.
                if self.registry().catalog().read().schema_version == version {
                    let opts = session.options();
                    let state = self.session_state(&opts);
                    return with_timeout(&opts, self.run_plan(plan, state)).await;
                }
            }
        }
        let stmt = self.parse_one(sql, session.pg_dialect)?;
        self.authorize(session, Some(statement_needs(&stmt)))?;
        if let DfStatement::Statement(s) = &stmt {
            if let Some(op) = ddl_op(s)? {
                let tag = ddl_tag(&op);
                if let Tx::Open { ops, shadow } = &mut session.tx {
                    let (next, _) = shadow
                        .apply_ddl(std::slice::from_ref(&op))
                        .map_err(ddl_rejection)?;
                    *shadow = next;
                    ops.push(op);
                    return Ok(command(tag));
                }
                return match self.propose_ddl(vec![op]).await? {
                    Response::Rejected(msg) => Err(ddl_rejection(msg)),
                    _ => Ok(command(tag)),
                };
            }
        }
        // An INSERT into a table this node's catalog already has needs nothing from group 0:
        // writes keep working while group 0 has no leader (only schema changes need it).
        if !self.inserts_into_known_table(&stmt) {
            self.catalog_barrier(session).await?;
        }
        let opts = session.options();
        let work = self.execute_statement(stmt, (sql, session.pg_dialect), params, &opts);
        with_timeout(&opts, work).await
    }

    /// Refuses the statement unless the session's principal has the role `need` names
    /// (`None`: any logged-in user).
    fn authorize(&self, session: &Session, need: Option<(Role, &str)>) -> Result<()> {
        let catalog = self.registry().catalog().read().clone();
        let (role, what) = need.map_or((None, ""), |(r, w)| (Some(r), w));
        authorize(&catalog, &session.principal, role, what)
    }

    /// `CREATE USER`, `GRANT`, `CREATE TOKEN FOR`, `SHOW USERS`, …: admin only (but for
    /// changing one's own password); changes go through group 0.
    async fn run_user_statement(
        &self,
        session: &Session,
        stmt: UserStatement,
    ) -> Result<QueryOutput> {
        self.authorize(
            session,
            stmt.needs(&session.principal).map(|r| (r, stmt.tag())),
        )?;
        match stmt {
            UserStatement::ShowUsers => {
                self.catalog_barrier(session).await?;
                return Ok(self.show_users());
            }
            UserStatement::ShowTokens => {
                self.catalog_barrier(session).await?;
                return Ok(self.show_tokens());
            }
            _ => {}
        }
        let now_ms = (shoal_common::time::now_nanos() / 1_000_000) as u64;
        let Some((op, token)) = stmt.op(now_ms) else {
            return Ok(command(stmt.tag()));
        };
        let token_id = match &op {
            shoal_consensus::users::UserOp::CreateToken { id, .. } => id.clone(),
            _ => String::new(),
        };
        let who = session.principal.name().to_string();
        match self
            .registry()
            .propose_meta(shoal_consensus::Command::Cluster(
                shoal_consensus::ClusterOp::User(op),
            ))
            .await?
        {
            Response::Rejected(msg) => {
                let code = if msg.contains("does not exist") {
                    "42704"
                } else if msg.contains("already exists") {
                    "42710"
                } else {
                    "55000"
                };
                Err(QueryError::bad_input(msg).with_code(code))
            }
            _ => {
                tracing::info!(by = %who, statement = stmt.tag(), "users changed");
                match token {
                    Some(token) => Ok(two_columns(("token_id", "token"), vec![(token_id, token)])),
                    None => Ok(command(stmt.tag())),
                }
            }
        }
    }

    fn show_users(&self) -> QueryOutput {
        let catalog = self.registry().catalog().read().clone();
        let rows = catalog
            .users
            .iter()
            .map(|(name, u)| {
                let roles: Vec<&str> = u.roles.iter().rev().map(Role::as_str).collect();
                (name.clone(), roles.join(","))
            })
            .collect();
        two_columns(("user_name", "roles"), rows)
    }

    fn show_tokens(&self) -> QueryOutput {
        let catalog = self.registry().catalog().read().clone();
        let rows = catalog
            .users
            .iter()
            .flat_map(|(name, u)| u.tokens.keys().map(move |id| (id.clone(), name.clone())))
            .collect();
        two_columns(("token_id", "user_name"), rows)
    }

    /// Whether `stmt` is an `INSERT` into a table this node's catalog has.
    fn inserts_into_known_table(&self, stmt: &DfStatement) -> bool {
        use datafusion::sql::sqlparser::ast::{Statement, TableObject};
        let DfStatement::Statement(s) = stmt else {
            return false;
        };
        let Statement::Insert(insert) = &**s else {
            return false;
        };
        let TableObject::TableName(name) = &insert.table else {
            return false;
        };
        let Some(last) = name.0.last() else {
            return false;
        };
        let table = last.to_string();
        let table = table.trim_matches('"');
        let catalog = self.registry().catalog();
        let c = catalog.read();
        c.tables.contains_key(table) || c.tables.contains_key(&table.to_ascii_lowercase())
    }

    /// `SET CLUSTER SETTING name = value`: checked here, stored in group 0.
    async fn set_cluster_setting(&self, name: &str, value: &str) -> Result<QueryOutput> {
        let mut probe = self.registry().catalog().read().settings.clone();
        probe
            .set(name, value)
            .map_err(|e| QueryError::bad_input(e).with_code("42704"))?;
        let op = shoal_consensus::ClusterOp::SetSetting {
            name: name.to_string(),
            value: value.to_string(),
        };
        match self
            .registry()
            .propose_meta(shoal_consensus::Command::Cluster(op))
            .await?
        {
            Response::Rejected(msg) => Err(QueryError::bad_input(msg)),
            _ => Ok(command("SET CLUSTER SETTING")),
        }
    }

    /// `ALTER VSHARD v MOVE REPLICA FROM a TO b`: refused with the reason when the target
    /// is not an alive, ACTIVE node, or group 0 refuses the move.
    async fn move_replica(&self, vshard: u32, from: u64, to: u64) -> Result<QueryOutput> {
        let refuse = |msg: String| QueryError::bad_input(msg).with_code("55000");
        if vshard >= self.registry().vshards() {
            return Err(refuse(format!(
                "vshard {vshard} does not exist (this cluster has {})",
                self.registry().vshards()
            )));
        }
        if to != self.registry().node_id() {
            let state = self.system.liveness(to);
            if state.as_deref() != Some("ALIVE") {
                return Err(refuse(format!(
                    "node {to} is not alive (SWIM: {}); a replica moved there could not catch up",
                    state.unwrap_or_else(|| "unknown".into())
                )));
            }
        }
        let op = shoal_consensus::ClusterOp::StartMove {
            vshard,
            from,
            to,
            reason: "manual (ALTER VSHARD)".into(),
            now_ms: (shoal_common::time::now_nanos() / 1_000_000) as u64,
        };
        match self
            .registry()
            .propose_meta(shoal_consensus::Command::Cluster(op))
            .await?
        {
            Response::Rejected(msg) => Err(refuse(format!("move refused: {msg}"))),
            Response::Move { id } => Ok(QueryOutput::Command {
                tag: format!("ALTER VSHARD (move {id})"),
                rows: 1,
            }),
            _ => Ok(command("ALTER VSHARD")),
        }
    }

    /// Unless the session reads `eventual` (or works in a transaction's own catalog), the
    /// catalog is brought up to group 0's read index first: a table created through any
    /// node a moment ago is there, one dropped is gone.
    async fn catalog_barrier(&self, session: &Session) -> Result<()> {
        if session.read_consistency == ReadConsistency::Eventual
            || matches!(session.tx, Tx::Open { .. })
        {
            return Ok(());
        }
        self.registry()
            .meta_barrier(CATALOG_BARRIER_TIMEOUT)
            .await
            .map_err(QueryError::from)
    }

    async fn show(&self, session: &Session, what: &str) -> Result<QueryOutput> {
        self.catalog_barrier(session).await?;
        let upper = what.to_ascii_uppercase();
        let catalog = self.registry().catalog().read().clone();
        match upper.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["TABLES"] => Ok(one_column(
                "table_name",
                catalog.tables.keys().cloned().collect(),
            )),
            ["SCHEMA", "VERSION"] => Ok(one_column(
                "schema_version",
                vec![catalog.schema_version.to_string()],
            )),
            ["NODES"] => {
                self.run_internal(session, "SELECT * FROM system.nodes ORDER BY node_id")
                    .await
            }
            ["SHARDS"] => {
                self.run_internal(session, "SELECT * FROM system.shards ORDER BY vshard")
                    .await
            }
            ["REPLICAS"] => {
                self.run_internal(session, "SELECT * FROM system.replicas ORDER BY vshard")
                    .await
            }
            ["MOVES"] => {
                self.run_internal(session, "SELECT * FROM system.moves ORDER BY move_id")
                    .await
            }
            ["CLUSTER", "SETTINGS"] => {
                let settings = catalog.settings.list();
                let schema = Arc::new(Schema::new(vec![
                    Field::new("setting", DataType::Utf8, false),
                    Field::new("value", DataType::Utf8, false),
                ]));
                let names: ArrayRef = Arc::new(StringArray::from(
                    settings.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
                ));
                let values: ArrayRef = Arc::new(StringArray::from(
                    settings.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
                ));
                let batch = RecordBatch::try_new(schema.clone(), vec![names, values])
                    .map_err(|e| QueryError::new(ErrorKind::Internal, e.to_string()))?;
                Ok(QueryOutput::Rows {
                    schema,
                    batches: vec![batch],
                })
            }
            ["ROUTING", "FOR", ..] => {
                let key = unquote(what.trim()[7..].trim_start()[3..].trim());
                let batch = self.system.routing(&key);
                Ok(QueryOutput::Rows {
                    schema: batch.schema(),
                    batches: vec![batch],
                })
            }
            ["TRANSACTION", "ISOLATION", "LEVEL"] => Ok(one_column(
                "transaction_isolation",
                vec!["read committed".into()],
            )),
            [_] => {
                let name = what.trim().trim_matches('"').to_ascii_lowercase();
                Ok(one_column(&name, vec![session.show(&name)?]))
            }
            _ => Err(QueryError::new(
                ErrorKind::NotSupported,
                format!("SHOW {what} is not supported"),
            )),
        }
    }

    /// Runs a query Shoal wrote itself (the `SHOW` forms over `system` tables).
    async fn run_internal(&self, session: &Session, sql: &str) -> Result<QueryOutput> {
        let stmt = self.parse_one(sql, false)?;
        self.execute_statement(stmt, (sql, false), &[], &session.options())
            .await
    }

    /// Plans and runs a parsed statement that is not DDL; `key` (its text and dialect) keeps a query's plan for
    /// the next time it is sent verbatim (see [`crate::plancache`]).
    async fn execute_statement(
        &self,
        stmt: DfStatement,
        key: (&str, bool),
        params: &[Option<String>],
        opts: &QueryOptions,
    ) -> Result<QueryOutput> {
        let ctx = self.context(opts);
        let state = ctx.state();
        let is_insert = matches!(&stmt, DfStatement::Statement(s) if matches!(**s, datafusion::sql::sqlparser::ast::Statement::Insert(_)));
        let is_query = matches!(&stmt, DfStatement::Statement(s) if matches!(**s, datafusion::sql::sqlparser::ast::Statement::Query(_)));
        let version = self.registry().catalog().read().schema_version;
        let plan = state.statement_to_plan(stmt).await?;
        let mut plan = crate::guard::check_plan(plan, &self.policy.files)?;
        if !params.is_empty() || !plan.get_parameter_types()?.is_empty() {
            let values = bind_params(&plan, params)?;
            plan = plan.with_param_values(values)?;
        } else if is_query {
            let optimized = Arc::new(state.optimize(&plan)?);
            // Kept only if no DDL landed while it was planned (it may have seen either side).
            if self.registry().catalog().read().schema_version == version {
                self.plans
                    .put(key.0, key.1, version, &plan, optimized.clone());
            }
            return self.run_plan(optimized, state).await;
        }
        let df = ctx.execute_logical_plan(plan).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        if is_insert {
            let rows = batches
                .first()
                .and_then(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                })
                .map(|a| a.value(0))
                .unwrap_or(0);
            return Ok(QueryOutput::Command {
                tag: "INSERT".into(),
                rows,
            });
        }
        Ok(QueryOutput::Rows { schema, batches })
    }

    /// Runs an optimized query plan: physical planning (which reads each vshard's current
    /// data) and execution.
    async fn run_plan(
        &self,
        plan: Arc<datafusion::logical_expr::LogicalPlan>,
        state: datafusion::execution::context::SessionState,
    ) -> Result<QueryOutput> {
        let physical = state
            .query_planner()
            .create_physical_plan(&plan, &state)
            .await?;
        let task = Arc::new(datafusion::execution::TaskContext::from(&state));
        let batches = datafusion::physical_plan::collect(physical, task).await?;
        let schema = Arc::new(plan.schema().as_arrow().clone());
        Ok(QueryOutput::Rows { schema, batches })
    }

    /// The parameter types (`$1`…, `None` where the plan leaves one open) and result schema
    /// of a statement, without running it. Session commands and DDL have no result schema.
    pub async fn describe(
        &self,
        session: &Session,
        sql: &str,
    ) -> Result<(Vec<Option<DataType>>, Option<Arc<Schema>>)> {
        if let Some(stmt) = crate::access::parse(sql) {
            let names = match stmt? {
                UserStatement::ShowUsers => ("user_name", "roles"),
                UserStatement::ShowTokens => ("token_id", "user_name"),
                UserStatement::CreateToken { .. } => ("token_id", "token"),
                _ => return Ok((vec![], None)),
            };
            let schema = Schema::new(vec![
                Field::new(names.0, DataType::Utf8, false),
                Field::new(names.1, DataType::Utf8, false),
            ]);
            return Ok((vec![], Some(Arc::new(schema))));
        }
        if let Some(cmd) = session_command(sql) {
            return Ok(match cmd {
                SessionCommand::Show(what) => {
                    let name = what.trim().to_ascii_lowercase().replace(' ', "_");
                    let schema = Schema::new(vec![Field::new(name, DataType::Utf8, false)]);
                    (vec![], Some(Arc::new(schema)))
                }
                _ => (vec![], None),
            });
        }
        let stmt = self.parse_one(sql, session.pg_dialect)?;
        if let DfStatement::Statement(s) = &stmt {
            if ddl_op(s)?.is_some() {
                return Ok((vec![], None));
            }
            if matches!(**s, datafusion::sql::sqlparser::ast::Statement::Insert(_)) {
                let ctx = self.context(&session.options());
                let plan = ctx.state().statement_to_plan(stmt).await?;
                return Ok((param_types(&plan)?, None));
            }
        }
        let ctx = self.context(&session.options());
        let plan = ctx.state().statement_to_plan(stmt).await?;
        let schema = Arc::new(plan.schema().as_arrow().clone());
        Ok((param_types(&plan)?, Some(schema)))
    }
}

/// Runs `work` under the session's statement timeout (SQLSTATE 57014 when it runs out).
async fn with_timeout(
    opts: &QueryOptions,
    work: impl std::future::Future<Output = Result<QueryOutput>>,
) -> Result<QueryOutput> {
    match opts.statement_timeout {
        Some(limit) => tokio::time::timeout(limit, work).await.map_err(|_| {
            QueryError::new(
                ErrorKind::Timeout,
                format!(
                    "canceling statement due to statement timeout ({} ms)",
                    limit.as_millis()
                ),
            )
        })?,
        None => work.await,
    }
}

/// `$1…$n` types in order.
fn param_types(plan: &datafusion::logical_expr::LogicalPlan) -> Result<Vec<Option<DataType>>> {
    let types = plan.get_parameter_types()?;
    let mut out: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .filter_map(|(k, v)| {
            k.trim_start_matches('$')
                .parse::<usize>()
                .ok()
                .map(|i| (i, v))
        })
        .collect();
    out.sort_by_key(|(i, _)| *i);
    let n = out.last().map_or(0, |(i, _)| *i);
    let mut dense = vec![None; n];
    for (i, t) in out {
        if i >= 1 {
            dense[i - 1] = t;
        }
    }
    Ok(dense)
}

/// Types the text of each parameter by what the plan expects there.
fn bind_params(
    plan: &datafusion::logical_expr::LogicalPlan,
    params: &[Option<String>],
) -> Result<ParamValues> {
    let types = param_types(plan)?;
    if params.len() < types.len() {
        return Err(QueryError::invalid_value(format!(
            "the statement takes {} parameters, {} were given",
            types.len(),
            params.len()
        )));
    }
    let mut values = Vec::with_capacity(params.len());
    for (i, p) in params.iter().enumerate() {
        let ty = types.get(i).cloned().flatten().unwrap_or(DataType::Utf8);
        let v = match p {
            None => ScalarValue::try_from(&ty)?,
            Some(text) => ScalarValue::try_from_string(text.clone(), &ty).map_err(|e| {
                QueryError::invalid_value(format!(
                    "parameter ${}: {text:?} is not a valid {ty}: {e}",
                    i + 1
                ))
            })?,
        };
        values.push(v);
    }
    Ok(ParamValues::List(
        values.into_iter().map(Into::into).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_top_level_semicolons_only() {
        assert_eq!(
            split_statements("BEGIN; SELECT 'a;b', \"c;\" FROM t -- x;y\n; /* ; */ ;COMMIT;"),
            vec!["BEGIN", "SELECT 'a;b', \"c;\" FROM t -- x;y", "COMMIT"]
        );
        assert!(split_statements(" ; -- only a comment\n").is_empty());
    }

    #[test]
    fn session_commands_parse() {
        let Some(SessionCommand::Set { name, value }) =
            session_command("SET read_consistency = 'eventual'")
        else {
            panic!("set");
        };
        assert_eq!(
            (name.as_str(), value.as_str()),
            ("read_consistency", "'eventual'")
        );
        let Some(SessionCommand::Set { name, value }) =
            session_command("set SESSION statement_timeout TO 500")
        else {
            panic!("set to");
        };
        assert_eq!(
            (name.as_str(), value.as_str()),
            ("statement_timeout", "500")
        );
        assert!(matches!(
            session_command("SET TIME ZONE 'UTC'"),
            Some(SessionCommand::Set { .. })
        ));
        assert!(session_command("SELECT 1").is_none());
    }

    #[test]
    fn timeouts_parse_and_zero_disables() {
        assert_eq!(parse_timeout("0").expect("0"), None);
        assert_eq!(
            parse_timeout("1500").expect("ms"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_timeout("2s").expect("s"),
            Some(Duration::from_secs(2))
        );
        assert_eq!(parse_timeout("soon").expect_err("bad").sqlstate(), "22023");
    }
}
