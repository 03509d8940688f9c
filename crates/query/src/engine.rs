//! The SQL entry point: parses a request (one or more statements), runs DDL through group 0
//! and everything else through DataFusion, and returns the last statement's result.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider};
use datafusion::execution::context::SessionState;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use shoal_consensus::Registry;

use crate::distributed::{DistributeScans, FragmentRunner, ShoalCodec};
use crate::error::{ErrorKind, QueryError, Result};
use crate::fastagg::FastAggregate;
use crate::plancache::{PlanCache, PlanCacheStats};
use crate::provider::ShoalSchema;
use crate::session::{split_statements, Session};
use crate::system::{NodeInfo, SystemSchema};
use crate::write::Writer;

/// How a read picks the replica of each vshard. On one node every level reads locally; the
/// setting already reaches the per-vshard scan so replication only has to choose.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ReadConsistency {
    #[default]
    Strong,
    BoundedStaleness(Duration),
    Eventual,
}

impl ReadConsistency {
    pub fn parse(s: &str) -> Result<ReadConsistency> {
        let v = s.trim().trim_matches('\'').to_ascii_lowercase();
        if v == "strong" {
            return Ok(ReadConsistency::Strong);
        }
        if v == "eventual" {
            return Ok(ReadConsistency::Eventual);
        }
        if let Some(d) = v.strip_prefix("bounded_staleness:") {
            if let Some(d) = shoal_common::time::parse_duration(d) {
                return Ok(ReadConsistency::BoundedStaleness(d));
            }
        }
        Err(QueryError::invalid_value(format!(
            "invalid read_consistency {s:?}: use 'strong', 'eventual' or 'bounded_staleness:<duration>' (e.g. bounded_staleness:5s, bounded_staleness:500ms)"
        )))
    }
}

impl fmt::Display for ReadConsistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadConsistency::Strong => f.write_str("strong"),
            ReadConsistency::Eventual => f.write_str("eventual"),
            ReadConsistency::BoundedStaleness(d) => {
                write!(f, "bounded_staleness:{}ms", d.as_millis())
            }
        }
    }
}

/// Per-request options.
#[derive(Clone, Debug, Default)]
pub struct QueryOptions {
    pub read_consistency: ReadConsistency,
    /// Statements running longer fail with SQLSTATE 57014; `None` means no limit.
    pub statement_timeout: Option<Duration>,
}

/// A statement's result.
#[derive(Debug)]
pub enum QueryOutput {
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
    /// DDL or DML: a tag (`CREATE TABLE`, `INSERT`) and the rows it touched.
    Command { tag: String, rows: u64 },
}

/// Statements one request may carry.
pub const MAX_STATEMENTS_PER_REQUEST: usize = 1000;

pub struct QueryEngine {
    registry: Arc<Registry>,
    writer: Writer,
    state: SessionState,
    /// Rewrites what Postgres clients send (`::regclass`, `OPERATOR(pg_catalog.~)`, …).
    pg_parser: Arc<PostgresCompatibilityParser>,
    pub(crate) system: Arc<SystemSchema>,
    pub(crate) plans: PlanCache,
    /// What SQL may do beyond Shoal's tables, and how far DDL may grow the catalog.
    pub(crate) policy: EnginePolicy,
}

/// The engine's operator-set bounds (see [`crate::guard`]).
#[derive(Clone, Debug, Default)]
pub struct EnginePolicy {
    /// Where SQL may touch server files (`COPY … TO`); nowhere by default.
    pub files: crate::guard::FileAccess,
    pub catalog: crate::guard::CatalogLimits,
}

impl QueryEngine {
    /// `remote` runs plan fragments on other nodes; without it (a node alone) every vshard
    /// must be hosted here.
    pub fn new(
        registry: Arc<Registry>,
        target_partitions: usize,
        node: NodeInfo,
        remote: Option<Arc<dyn FragmentRunner>>,
        policy: EnginePolicy,
    ) -> QueryEngine {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("shoal", "public")
            .with_target_partitions(target_partitions.max(1));
        let mut builder = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            // Partial aggregates over a vshard read its storage directly (see `fastagg`).
            .with_physical_optimizer_rule(Arc::new(FastAggregate));
        if let Some(runner) = remote {
            // Last, so it sees the plan every other rule has finished with.
            builder = builder.with_physical_optimizer_rule(Arc::new(DistributeScans::new(
                registry.clone(),
                runner,
            )));
        }
        let state = builder.build();
        let ctx = SessionContext::new_with_state(state);
        let writer = Writer::new(registry.clone());
        // One catalog for every request: per-request options travel in the session config.
        let catalog = MemoryCatalogProvider::new();
        let _ = catalog.register_schema(
            "public",
            Arc::new(ShoalSchema::new(registry.clone(), writer.clone())),
        );
        let system = Arc::new(SystemSchema::new(registry.clone(), node));
        let _ = catalog.register_schema("system", system.clone());
        ctx.register_catalog("shoal", Arc::new(catalog));
        // pg_catalog tables and functions for Postgres clients (psql \d, drivers, Grafana).
        if let Err(e) = datafusion_pg_catalog::pg_catalog::setup_pg_catalog(
            &ctx,
            "shoal",
            datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider,
        ) {
            tracing::warn!(error = %e, "pg_catalog unavailable");
        }
        crate::pgcompat::register(&ctx);
        // `time_bucket(interval, ts)` is `date_bin(interval, ts)` (buckets aligned to the epoch).
        let bucket = datafusion::functions::datetime::date_bin()
            .as_ref()
            .clone()
            .with_aliases(["time_bucket"]);
        ctx.register_udf(bucket);
        QueryEngine {
            writer,
            registry,
            state: ctx.state(),
            pg_parser: Arc::new(PostgresCompatibilityParser::new()),
            system,
            plans: PlanCache::default(),
            policy,
        }
    }

    /// How often repeated queries skipped planning (see [`crate::plancache`]).
    pub fn plan_cache_stats(&self) -> PlanCacheStats {
        self.plans.stats()
    }

    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Proposes a DDL batch to group 0 once it is within the catalog limits (a batch past
    /// one is refused whole, before anything is proposed).
    pub async fn propose_ddl(
        &self,
        ops: Vec<shoal_consensus::DdlOp>,
    ) -> Result<shoal_consensus::Response> {
        {
            let catalog = self.registry.catalog().read().clone();
            crate::guard::check_ddl_limits(&catalog, &ops, &self.policy.catalog)?;
        }
        Ok(self.registry.propose_ddl(ops).await?)
    }

    /// Runs partition `partition` of a plan fragment a peer sent (see
    /// [`crate::distributed`]) against this node's replicas.
    pub fn run_fragment(
        &self,
        plan: &[u8],
        partition: u32,
    ) -> Result<datafusion::execution::SendableRecordBatchStream> {
        let ctx = Arc::new(datafusion::execution::TaskContext::from(&self.state));
        let codec = ShoalCodec::new(self.registry.clone());
        let plan = codec
            .decode(plan, &ctx)
            .map_err(|e| QueryError::new(ErrorKind::Internal, format!("bad plan fragment: {e}")))?;
        let n = plan.properties().partitioning.partition_count();
        if partition as usize >= n {
            return Err(QueryError::new(
                ErrorKind::Internal,
                format!("plan fragment has {n} partitions, asked for {partition}"),
            ));
        }
        Ok(plan.execute(partition as usize, ctx)?)
    }

    pub(crate) fn context(&self, opts: &QueryOptions) -> SessionContext {
        SessionContext::new_with_state(self.session_state(opts))
    }

    /// The engine's session state with this request's options.
    pub(crate) fn session_state(&self, opts: &QueryOptions) -> SessionState {
        let mut state = self.state.clone();
        state
            .config_mut()
            .set_extension(Arc::new(opts.read_consistency.clone()));
        state
    }

    /// Parses one statement; Postgres sessions first try the Postgres-compatibility parser.
    pub(crate) fn parse_one(&self, sql: &str, pg: bool) -> Result<DfStatement> {
        if pg {
            let rewritten = crate::pgcompat::rewrite_search_path_subquery(sql);
            let sql = rewritten.as_deref().unwrap_or(sql);
            if let Ok(mut v) = self.pg_parser.parse(sql) {
                if v.len() == 1 {
                    return Ok(DfStatement::Statement(Box::new(v.remove(0))));
                }
            }
        }
        let mut statements = DFParser::parse_sql(sql)
            .map_err(|e| QueryError::bad_input(e.to_string()).with_code("42601"))?;
        if statements.len() != 1 {
            return Err(QueryError::bad_input(format!(
                "expected one statement, found {}",
                statements.len()
            )));
        }
        Ok(statements.pop_front().expect("one statement"))
    }

    /// Runs every statement of `sql` in order in a fresh session and returns the last one's
    /// result; the first error stops the request. A transaction block left open at the end
    /// is rolled back.
    /// Runs `sql` as the node itself (its own queries; callers that let a client in
    /// already, such as the admin API).
    pub async fn execute(&self, sql: &str, opts: &QueryOptions) -> Result<QueryOutput> {
        self.execute_as(sql, opts, crate::access::Principal::Node)
            .await
    }

    /// Runs `sql` (one or more statements, one session) as `who`.
    pub async fn execute_as(
        &self,
        sql: &str,
        opts: &QueryOptions,
        who: crate::access::Principal,
    ) -> Result<QueryOutput> {
        self.execute_observed(sql, opts, who, |_, _, _| {}).await
    }

    /// [`QueryEngine::execute_as`], calling `observe` after each statement with its text,
    /// how long it ran and its result (the server's metrics count statements this way, so a
    /// request of several statements counts each of them).
    pub async fn execute_observed<F>(
        &self,
        sql: &str,
        opts: &QueryOptions,
        who: crate::access::Principal,
        mut observe: F,
    ) -> Result<QueryOutput>
    where
        F: FnMut(&str, Duration, std::result::Result<&QueryOutput, &QueryError>) + Send,
    {
        let statements = split_statements(sql);
        if statements.is_empty() {
            return Err(QueryError::bad_input("empty query"));
        }
        if statements.len() > MAX_STATEMENTS_PER_REQUEST {
            return Err(QueryError::new(
                ErrorKind::TooLarge,
                format!("more than {MAX_STATEMENTS_PER_REQUEST} statements in one request"),
            ));
        }
        let mut session = Session::new(opts);
        session.principal = who;
        let mut last = None;
        for stmt in statements {
            let started = std::time::Instant::now();
            let result = self.run_statement(&mut session, stmt, &[]).await;
            observe(stmt, started.elapsed(), result.as_ref());
            last = Some(result?);
        }
        last.ok_or_else(|| QueryError::bad_input("empty query"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_consistency_parses_and_rejects() {
        assert_eq!(
            ReadConsistency::parse("strong").expect("ok"),
            ReadConsistency::Strong
        );
        assert_eq!(
            ReadConsistency::parse("'bounded_staleness:500ms'").expect("ok"),
            ReadConsistency::BoundedStaleness(Duration::from_millis(500))
        );
        let err = ReadConsistency::parse("sometimes").expect_err("bad");
        assert_eq!(err.kind, ErrorKind::BadInput);
        assert!(err.message.contains("bounded_staleness:<duration>"));
    }
}
