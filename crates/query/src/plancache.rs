//! Optimized logical plans of repeated queries, so a dashboard's or a benchmark's same
//! statement skips parsing, SQL-to-plan and the logical optimizer (most of a small query's
//! fixed cost: about 40 % of Q4's server time before this cache).
//!
//! ```text
//! SQL text ─▶ cache hit at the catalog's schema version? ─yes─▶ physical planning ─▶ run
//!                 │ no
//!                 └─▶ parse ─▶ plan ─▶ optimize ─▶ (cacheable? keep) ─▶ physical planning ─▶ run
//! ```
//!
//! Only what a plan cannot go stale on is kept. The key is the exact SQL text and dialect;
//! an entry answers only at the catalog schema version it was planned at (every DDL change
//! moves it). A plan is kept only if every table it scans is a Shoal table (their rows are
//! read at physical planning, per run; `system.*`, `information_schema` and `pg_catalog`
//! tables snapshot their rows when planned) and it calls no function that is not immutable
//! (the optimizer folds `now()` and `current_date` into constants). Statements with
//! parameters, DML, EXPLAIN and DDL are never cached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use parking_lot::Mutex;

use crate::provider::ShoalTable;

/// Plans kept; the least recently used one makes room.
pub const PLAN_CACHE_ENTRIES: usize = 256;
/// Longer statements are planned every time (they are rarely repeated verbatim, and the key
/// is the whole text).
pub const PLAN_CACHE_MAX_SQL_BYTES: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanCacheStats {
    /// Statements that found a kept plan (one found stale after DDL is planned again).
    pub hits: u64,
    pub entries: usize,
}

#[derive(Default)]
pub(crate) struct PlanCache {
    inner: Mutex<Inner>,
    hits: AtomicU64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(String, bool), Entry>,
    /// Bumped on every use; the entry with the smallest `used` is evicted first.
    clock: u64,
}

struct Entry {
    schema_version: u64,
    plan: Arc<LogicalPlan>,
    used: u64,
}

impl PlanCache {
    /// The plan kept for `sql` in `pg` dialect and the catalog schema version it was
    /// planned at; the caller runs it only if the catalog is still at that version, read
    /// after its catalog barrier.
    pub(crate) fn get(&self, sql: &str, pg: bool) -> Option<(u64, Arc<LogicalPlan>)> {
        if sql.len() > PLAN_CACHE_MAX_SQL_BYTES {
            return None;
        }
        let mut inner = self.inner.lock();
        inner.clock += 1;
        let now = inner.clock;
        // The key is owned; a lookup by (&str, bool) would need a borrowed key type, and a
        // statement short enough to cache is cheap to copy next to planning it.
        let e = inner.entries.get_mut(&(sql.to_string(), pg))?;
        e.used = now;
        let found = (e.schema_version, e.plan.clone());
        drop(inner);
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(found)
    }

    /// Keeps `plan` (optimized) for `sql` if nothing in it can go stale: see the module docs.
    /// `unoptimized` is what SQL-to-plan made (the optimizer folds volatile calls away).
    pub(crate) fn put(
        &self,
        sql: &str,
        pg: bool,
        schema_version: u64,
        unoptimized: &LogicalPlan,
        plan: Arc<LogicalPlan>,
    ) {
        if sql.len() > PLAN_CACHE_MAX_SQL_BYTES || !cacheable(unoptimized) {
            return;
        }
        let mut inner = self.inner.lock();
        inner.clock += 1;
        let used = inner.clock;
        let key = (sql.to_string(), pg);
        if inner.entries.len() >= PLAN_CACHE_ENTRIES && !inner.entries.contains_key(&key) {
            let oldest = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                inner.entries.remove(&k);
            }
        }
        inner.entries.insert(
            key,
            Entry {
                schema_version,
                plan,
                used,
            },
        );
    }

    pub(crate) fn stats(&self) -> PlanCacheStats {
        PlanCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            entries: self.inner.lock().entries.len(),
        }
    }
}

/// Whether a plan, run again later, gives what planning it afresh would: it is a query, it
/// scans only Shoal tables and it calls only immutable functions.
pub(crate) fn cacheable(plan: &LogicalPlan) -> bool {
    if matches!(
        plan,
        LogicalPlan::Dml(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::DescribeTable(_)
    ) {
        return false;
    }
    let mut ok = true;
    let walked = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let shoal = source_as_provider(&scan.source)
                .map(|p| p.is::<ShoalTable>())
                .unwrap_or(false);
            if !shoal {
                ok = false;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        if matches!(
            node,
            LogicalPlan::Extension(_) | LogicalPlan::Dml(_) | LogicalPlan::Copy(_)
        ) {
            ok = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        node.apply_expressions(|e| {
            e.apply(|e| {
                let stale = match e {
                    Expr::ScalarFunction(f) => {
                        f.func.signature().volatility != Volatility::Immutable
                    }
                    Expr::ScalarVariable(..) | Expr::Placeholder(_) => true,
                    _ => false,
                };
                if stale {
                    ok = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        Ok(if ok {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    walked.is_ok() && ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    async fn plan(ctx: &SessionContext, sql: &str) -> LogicalPlan {
        ctx.state().create_logical_plan(sql).await.expect("plan")
    }

    #[tokio::test]
    async fn volatile_calls_and_foreign_tables_are_not_cacheable() {
        let ctx = SessionContext::new();
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1]))])
            .expect("batch");
        let mem = MemTable::try_new(schema, vec![vec![batch]]).expect("mem");
        ctx.register_table("m", Arc::new(mem)).expect("register");

        assert!(cacheable(&plan(&ctx, "SELECT 1 + 2").await));
        assert!(cacheable(
            &plan(
                &ctx,
                "SELECT abs(-3), date_bin(INTERVAL '1 minute', TIMESTAMP '2024-01-01T00:00:30Z')"
            )
            .await
        ));
        assert!(!cacheable(&plan(&ctx, "SELECT now()").await));
        assert!(!cacheable(
            &plan(&ctx, "SELECT 1 WHERE current_date() > DATE '2000-01-01'").await
        ));
        assert!(!cacheable(&plan(&ctx, "SELECT random()").await));
        // A scan of anything but a Shoal table, also inside a subquery.
        assert!(!cacheable(&plan(&ctx, "SELECT x FROM m").await));
        assert!(!cacheable(
            &plan(&ctx, "SELECT 1 WHERE EXISTS (SELECT x FROM m)").await
        ));
        assert!(!cacheable(&plan(&ctx, "EXPLAIN SELECT 1").await));
    }

    #[tokio::test]
    async fn entries_carry_their_schema_version_and_the_least_used_goes_first() {
        let ctx = SessionContext::new();
        let one = Arc::new(plan(&ctx, "SELECT 1").await);
        let cache = PlanCache::default();
        cache.put("SELECT 1", false, 7, &one, one.clone());
        assert_eq!(cache.get("SELECT 1", false).map(|(v, _)| v), Some(7));
        assert!(cache.get("SELECT 1", true).is_none(), "other dialect");
        cache.put("SELECT 1", false, 8, &one, one.clone());
        assert_eq!(
            cache.get("SELECT 1", false).map(|(v, _)| v),
            Some(8),
            "replanned"
        );
        assert_eq!(
            cache.stats(),
            PlanCacheStats {
                hits: 2,
                entries: 1
            }
        );

        let volatile = plan(&ctx, "SELECT now()").await;
        cache.put(
            "SELECT now()",
            false,
            7,
            &volatile,
            Arc::new(volatile.clone()),
        );
        assert!(cache.get("SELECT now()", false).is_none());

        for i in 2..=PLAN_CACHE_ENTRIES {
            cache.put(&format!("SELECT {i}"), false, 7, &one, one.clone());
        }
        assert_eq!(cache.stats().entries, PLAN_CACHE_ENTRIES);
        // Touching "SELECT 1" leaves "SELECT 2" the least recently used.
        assert!(cache.get("SELECT 1", false).is_some());
        cache.put("SELECT new", false, 7, &one, one.clone());
        assert_eq!(cache.stats().entries, PLAN_CACHE_ENTRIES);
        assert!(cache.get("SELECT 1", false).is_some());
        assert!(cache.get("SELECT 2", false).is_none(), "evicted");
        assert!(cache.get("SELECT new", false).is_some());

        let long = format!("SELECT 1 -- {}", "x".repeat(PLAN_CACHE_MAX_SQL_BYTES));
        cache.put(&long, false, 7, &one, one.clone());
        assert!(cache.get(&long, false).is_none());
    }
}
