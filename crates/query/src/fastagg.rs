//! Partial aggregation straight off a vshard's storage.
//!
//! DataFusion plans `GROUP BY symbol` as a partial aggregate over each vshard's scan, and
//! its scan hands the aggregate plain strings: a flushed part's dictionary-encoded tags are
//! expanded to one string per row, then hashed again per row to find the group. This rule
//! puts [`ShardAggregateExec`] over such a partial aggregate. It runs the same aggregate
//! functions (DataFusion's own `GroupsAccumulator`s, so the partial state it emits is the
//! state the final aggregate above expects) but reads the vshard itself:
//!
//! - Parquet parts through [`shoal_storage::read`], with their footers cached, row groups
//!   pruned by `ts`, and tags kept as dictionaries; where only the time filter reads `ts`, a
//!   row group wholly inside the range is read without it (the filter drops nothing there);
//! - group ids come from the dictionary: each distinct tag value of a batch is looked up
//!   once, every row takes its group by an array index; `date_bin(interval, ts)` groups by
//!   integer arithmetic on `ts`;
//! - the hot buffer as it is (merged chunks are already dictionary-encoded), and the sources
//!   where repeated points may hide through the scan's last-write-wins resolution, exactly as
//!   the plain scan reads them.
//!
//! What it takes: a `Partial` aggregate with one grouping set, no `FILTER`/`DISTINCT`, no
//! limit, every function with a groups accumulator, and group keys that are string columns
//! or `date_bin` of `ts` with a fixed stride (no months); under it an optional filter (with
//! projection) and a `ShardScanExec` without a limit. Anything else keeps DataFusion's plan.
//! The wrapped aggregate stays in the tree as the node's child: it is what EXPLAIN shows,
//! what other rules see, and what a rewrite that replaces the child falls back to.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StringArray, TimestampNanosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit, TimestampNanosecondType,
};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, HashMap, Result as DfResult, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Operator;
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{conjunction_opt, split_conjunction};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{aggregate_expressions, AggregateExec, AggregateMode};
use datafusion::physical_plan::filter::{batch_filter, FilterExec};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputOrderMode, PlanProperties,
};
use futures::StreamExt;
use shoal_common::schema::TIME_COLUMN;
use shoal_consensus::Registry;
use shoal_storage::arrow_schema::{storage_field, tag_storage_type};
use shoal_storage::dedup::{column_ts_range, split_by_regions};
use shoal_storage::read::{PartRead, RowGroupSplit};
use shoal_storage::HotBatch;

use crate::provider::{
    open_replica, resolved_stream, sources, ShardScanExec, ShardScanRequest, Sources,
};

/// Groups one vshard's partial aggregate holds before it emits them and starts afresh (the
/// final aggregate above merges repeated groups): bounds its memory on high-cardinality keys.
pub const FAST_AGG_MAX_GROUPS: usize = 256 * 1024;

/// The physical optimizer rule that puts [`ShardAggregateExec`] over partial aggregates it
/// can run (see the module docs). Registered before the distribution rule.
#[derive(Debug, Default)]
pub struct FastAggregate;

impl PhysicalOptimizerRule for FastAggregate {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| match ShardAggregateExec::try_new(node.clone()) {
            Some(exec) => Ok(Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>)),
            None => Ok(Transformed::no(node)),
        })
        .data()
    }

    fn name(&self) -> &str {
        "shoal_fast_aggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// One group key, over the aggregate's input columns.
#[derive(Clone, Debug)]
enum KeyPart {
    /// A string column (a tag arrives dictionary-encoded, a string field plain).
    Str { col: usize },
    /// `date_bin(stride, ts, origin)` of the non-null time column.
    Bin {
        col: usize,
        stride: i64,
        origin: i64,
        out: DataType,
    },
}

/// A matched partial aggregate, taken apart.
struct Shape {
    request: ShardScanRequest,
    registry: Arc<Registry>,
    /// The filter between scan and aggregate, over the scan's output, and its projection.
    filter: Option<Arc<dyn PhysicalExpr>>,
    filter_projection: Option<Vec<usize>>,
    /// The filter's conjuncts that compare `ts` (column `ts_col` of the scan) with a
    /// constant: a batch whose first and last `ts` pass one passes it everywhere, so it is
    /// dropped for that batch (a time-range query over row groups wholly inside the range
    /// filters nothing).
    filter_ts: Vec<Arc<dyn PhysicalExpr>>,
    filter_rest: Vec<Arc<dyn PhysicalExpr>>,
    ts_col: Option<usize>,
    /// Nothing but `filter_ts` reads `ts`: a row group wholly inside the range need not
    /// decode it at all.
    ts_for_filter_only: bool,
    /// The aggregate's input schema (filter output).
    input_schema: SchemaRef,
    keys: Vec<KeyPart>,
    aggs: Vec<Arc<AggregateFunctionExpr>>,
    /// Per aggregate, the expressions its accumulator reads (arguments, then ordering).
    args: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    /// Input columns the arguments read: these are handed over in their logical type.
    arg_columns: Vec<usize>,
    /// The partial aggregate's output schema (group columns, then states).
    schema: SchemaRef,
}

impl Shape {
    /// The conjuncts of `filter_ts` that do not hold for every `ts` in `[lo, hi]`, over
    /// rows of `schema` (the scan's output, `ts` at `ts_col`). Each compares `ts` with a
    /// constant, so it holds throughout when it holds at both ends.
    fn ts_conjuncts_failing(
        &self,
        schema: &Schema,
        lo: i64,
        hi: i64,
    ) -> DfResult<Vec<Arc<dyn PhysicalExpr>>> {
        let Some(t) = self.ts_col else {
            return Ok(self.filter_ts.clone());
        };
        // A two-row batch: the first and last ts, everything else null.
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        let columns: Vec<ArrayRef> = fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if i == t {
                    Arc::new(
                        TimestampNanosecondArray::from(vec![lo, hi])
                            .with_data_type(f.data_type().clone()),
                    ) as ArrayRef
                } else {
                    datafusion::arrow::array::new_null_array(f.data_type(), 2)
                }
            })
            .collect();
        let ends = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        let mut failing = vec![];
        for c in &self.filter_ts {
            let v = c.evaluate(&ends)?.into_array(2)?;
            let holds = v
                .as_boolean_opt()
                .is_some_and(|b| b.null_count() == 0 && b.value(0) && b.value(1));
            if !holds {
                failing.push(c.clone());
            }
        }
        Ok(failing)
    }
}

/// Partial aggregation of one vshard per partition, read straight off storage.
pub struct ShardAggregateExec {
    /// The `AggregateExec` this node runs in its own way.
    agg: Arc<dyn ExecutionPlan>,
    shape: Arc<Shape>,
    metrics: ExecutionPlanMetricsSet,
}

/// What one partition (vshard) of a [`ShardAggregateExec`] did, for EXPLAIN ANALYZE.
struct VshardMetrics {
    /// Output rows and the time spent folding rows in (reading included).
    baseline: BaselineMetrics,
    /// Waiting for this replica to be readable at the query's consistency.
    open_time: Time,
    parts_read: Count,
    /// Column chunks of those parts served decoded from the column cache, and decoded.
    chunks_cached: Count,
    chunks_decoded: Count,
    /// Rows folded in from flushed parts, from hot batches, and through resolution.
    part_rows: Count,
    hot_rows: Count,
    resolved_rows: Count,
}

impl VshardMetrics {
    fn new(set: &ExecutionPlanMetricsSet, partition: usize) -> VshardMetrics {
        let m = || MetricBuilder::new(set);
        VshardMetrics {
            baseline: BaselineMetrics::new(set, partition),
            open_time: m().subset_time("open_time", partition),
            parts_read: m().counter("parts_read", partition),
            chunks_cached: m().counter("chunks_cached", partition),
            chunks_decoded: m().counter("chunks_decoded", partition),
            part_rows: m().counter("part_rows", partition),
            hot_rows: m().counter("hot_rows", partition),
            resolved_rows: m().counter("resolved_rows", partition),
        }
    }
}

impl fmt::Debug for ShardAggregateExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ShardAggregateExec(table {})",
            self.shape.request.table_id
        )
    }
}

#[allow(deprecated)]
fn skip_coalesce(plan: &Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    use datafusion::physical_plan::coalesce_batches::CoalesceBatchesExec;
    match plan.downcast_ref::<CoalesceBatchesExec>() {
        Some(c) => c.input().clone(),
        None => plan.clone(),
    }
}

impl ShardAggregateExec {
    /// The vshard partition `partition` aggregates, and its share of that vshard's row
    /// groups as (index, count). Partition `v` is vshard `v`; when the query reads fewer
    /// vshards than it has cores (a filter on one symbol pins one vshard), the idle
    /// partitions take a share of the row groups of the vshards read, so one vshard's
    /// parts are aggregated on every core. The partial states merge in the final
    /// aggregate like those of different vshards.
    fn assignment(
        &self,
        partition: usize,
        ctx: &TaskContext,
    ) -> Option<(u32, Option<(usize, usize)>)> {
        let req = &self.shape.request;
        let partitions = self.properties().output_partitioning().partition_count();
        let unknown = matches!(
            self.properties().output_partitioning(),
            datafusion::physical_plan::Partitioning::UnknownPartitioning(_)
        );
        let read: Vec<u32> = (0..partitions as u32).filter(|&v| req.reads(v)).collect();
        let per = (partitions / read.len().max(1))
            .min(ctx.session_config().target_partitions())
            .max(1);
        if !unknown || per < 2 {
            let vshard = partition as u32;
            return req.reads(vshard).then_some((vshard, None));
        }
        let vshard = *read.get(partition / per)?;
        Some((vshard, Some((partition % per, per))))
    }

    /// Wraps `plan` when it is a partial aggregate this node can run.
    pub fn try_new(plan: Arc<dyn ExecutionPlan>) -> Option<ShardAggregateExec> {
        let shape = shape(plan.downcast_ref::<AggregateExec>()?)?;
        Some(ShardAggregateExec {
            agg: plan,
            shape: Arc::new(shape),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

fn shape(agg: &AggregateExec) -> Option<Shape> {
    if *agg.mode() != AggregateMode::Partial
        || !agg.group_expr().is_single()
        || agg.limit_options().is_some()
        || *agg.input_order_mode() != InputOrderMode::Linear
        || agg.filter_expr().iter().any(Option::is_some)
        || agg
            .aggr_expr()
            .iter()
            .any(|a| a.is_distinct() || !a.groups_accumulator_supported())
    {
        return None;
    }
    let mut below = skip_coalesce(agg.input());
    let (mut filter, mut filter_projection) = (None, None);
    if let Some(f) = below.downcast_ref::<FilterExec>() {
        filter = Some(f.predicate().clone());
        filter_projection = f.projection().as_ref().map(|p| p.to_vec());
        below = skip_coalesce(f.input());
    }
    let scan = below.downcast_ref::<ShardScanExec>()?;
    if scan.request().limit.is_some() {
        return None;
    }
    let ts_col = scan.request().projection.as_ref().map_or_else(
        || scan.request().table_schema.index_of(TIME_COLUMN).ok(),
        |p| {
            p.iter()
                .position(|&c| scan.request().table_schema.field(c).name() == TIME_COLUMN)
        },
    );
    let (mut filter_ts, mut filter_rest) = (vec![], vec![]);
    if let Some(f) = &filter {
        for c in split_conjunction(f) {
            if ts_col.is_some_and(|t| compares_with_constant(c, t)) {
                filter_ts.push(c.clone());
            } else {
                filter_rest.push(c.clone());
            }
        }
    }
    let input_schema = agg.input_schema();
    let schema = agg.schema();
    let keys = agg
        .group_expr()
        .expr()
        .iter()
        .enumerate()
        .map(|(i, (e, _))| key_part(e, &input_schema, schema.field(i).data_type()))
        .collect::<Option<Vec<_>>>()?;
    let args = aggregate_expressions(agg.aggr_expr(), agg.mode(), 0).ok()?;
    let mut arg_columns = vec![];
    for e in args.iter().flatten() {
        e.apply(|n| {
            if let Some(c) = n.downcast_ref::<Column>() {
                arg_columns.push(c.index());
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .ok()?;
    }
    arg_columns.sort_unstable();
    arg_columns.dedup();
    // Where `ts` lands in the aggregate's input, if the filter's projection keeps it.
    let ts_input = ts_col.and_then(|t| match &filter_projection {
        Some(p) => p.iter().position(|&c| c == t),
        None => Some(t),
    });
    let ts_for_filter_only = ts_col.is_some_and(|t| {
        !filter_ts.is_empty()
            && filter_rest
                .iter()
                .all(|e| !collect_columns(e).iter().any(|c| c.index() == t))
            && ts_input.is_none_or(|i| {
                !arg_columns.contains(&i)
                    && keys.iter().all(|k| match k {
                        KeyPart::Str { col } | KeyPart::Bin { col, .. } => *col != i,
                    })
            })
    });
    Some(Shape {
        request: scan.request().clone(),
        registry: scan.registry().clone(),
        filter,
        filter_projection,
        filter_ts,
        filter_rest,
        ts_col,
        ts_for_filter_only,
        input_schema,
        keys,
        aggs: agg.aggr_expr().to_vec(),
        args,
        arg_columns,
        schema,
    })
}

fn key_part(e: &Arc<dyn PhysicalExpr>, input: &Schema, out: &DataType) -> Option<KeyPart> {
    if let Some(c) = e.downcast_ref::<Column>() {
        let field = input.fields().get(c.index())?;
        return (field.data_type() == &DataType::Utf8 && out == &DataType::Utf8)
            .then_some(KeyPart::Str { col: c.index() });
    }
    let f = e.downcast_ref::<ScalarFunctionExpr>()?;
    if f.fun().name() != "date_bin" || !(2..=3).contains(&f.args().len()) {
        return None;
    }
    let stride =
        match f.args()[0].downcast_ref::<Literal>()?.value() {
            ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => (v.days as i64)
                .checked_mul(86_400_000_000_000)?
                .checked_add(v.nanoseconds)?,
            ScalarValue::IntervalDayTime(Some(v)) => (v.days as i64)
                .checked_mul(86_400_000_000_000)?
                .checked_add((v.milliseconds as i64).checked_mul(1_000_000)?)?,
            _ => return None,
        };
    let c = f.args()[1].downcast_ref::<Column>()?;
    let field = input.fields().get(c.index())?;
    if field.name() != TIME_COLUMN
        || field.is_nullable()
        || !matches!(
            field.data_type(),
            DataType::Timestamp(TimeUnit::Nanosecond, _)
        )
        || !matches!(out, DataType::Timestamp(TimeUnit::Nanosecond, _))
    {
        return None;
    }
    let origin = match f.args().get(2) {
        None => 0,
        Some(o) => match o.downcast_ref::<Literal>()?.value() {
            ScalarValue::TimestampNanosecond(Some(v), _) => *v,
            _ => return None,
        },
    };
    (stride > 0).then(|| KeyPart::Bin {
        col: c.index(),
        stride,
        origin,
        out: out.clone(),
    })
}

/// Whether `e` is `column <op> constant` (or the mirror) with an ordering comparison: true
/// at both ends of a range of the column's values means true all along it.
fn compares_with_constant(e: &Arc<dyn PhysicalExpr>, column: usize) -> bool {
    let Some(b) = e.downcast_ref::<BinaryExpr>() else {
        return false;
    };
    let is_col = |x: &Arc<dyn PhysicalExpr>| {
        x.downcast_ref::<Column>()
            .is_some_and(|c| c.index() == column)
    };
    let is_lit = |x: &Arc<dyn PhysicalExpr>| x.downcast_ref::<Literal>().is_some();
    matches!(
        b.op(),
        Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq
    ) && ((is_col(b.left()) && is_lit(b.right())) || (is_lit(b.left()) && is_col(b.right())))
}

/// The start of `ts`'s bin, as DataFusion's `date_bin` computes it (bins reach back before
/// the origin too).
fn bin_start(ts: i64, stride: i64, origin: i64) -> i64 {
    let diff = ts.wrapping_sub(origin);
    origin.wrapping_add(diff.div_euclid(stride) * stride)
}

/// Bins timestamps one row at a time. Neighbouring rows mostly share a bin (a part's rows
/// run in time order per series, hot batches in arrival order), so the current bin's range
/// is kept and a row inside it skips the 64-bit division, which was 46 % of Q5's CPU.
struct Binner {
    stride: i64,
    origin: i64,
    /// The current bin's `[start, end)`; empty when there is none.
    bin: (i64, i64),
}

impl Binner {
    fn new(stride: i64, origin: i64) -> Binner {
        Binner {
            stride,
            origin,
            bin: (i64::MAX, i64::MIN),
        }
    }

    /// `ts`'s bin start, or `None` when it is the previous row's.
    #[inline]
    fn next_start(&mut self, ts: i64) -> Option<i64> {
        if ts >= self.bin.0 && ts < self.bin.1 {
            return None;
        }
        Some(match bin_range(ts, self.stride, self.origin) {
            Some(r) => {
                self.bin = r;
                r.0
            }
            None => {
                self.bin = (i64::MAX, i64::MIN);
                bin_start(ts, self.stride, self.origin)
            }
        })
    }
}

/// Each timestamp's bin start.
fn bin_codes(ts: &[i64], stride: i64, origin: i64) -> Vec<u64> {
    let mut binner = Binner::new(stride, origin);
    let mut code = 0;
    ts.iter()
        .map(|&t| {
            if let Some(start) = binner.next_start(t) {
                code = start as u64;
            }
            code
        })
        .collect()
}

/// `[start, end)` of the bin holding `ts` when nothing overflows, so that every `t` in it
/// has `bin_start(t) == start`; `None` near the ends of the `i64` range.
fn bin_range(ts: i64, stride: i64, origin: i64) -> Option<(i64, i64)> {
    let diff = ts.checked_sub(origin)?;
    let start = origin.checked_add(diff.div_euclid(stride).checked_mul(stride)?)?;
    Some((start, start.checked_add(stride)?))
}

impl DisplayAs for ShardAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<String> = self
            .shape
            .keys
            .iter()
            .map(|k| match k {
                KeyPart::Str { col } => format!("#{col}"),
                KeyPart::Bin { col, stride, .. } => format!("bin(#{col}, {stride}ns)"),
            })
            .collect();
        let aggs: Vec<&str> = self.shape.aggs.iter().map(|a| a.name()).collect();
        write!(
            f,
            "ShardAggregateExec: table_id={}, keys=[{}], aggs=[{}]",
            self.shape.request.table_id,
            keys.join(", "),
            aggs.join(", ")
        )
    }
}

impl ExecutionPlan for ShardAggregateExec {
    fn name(&self) -> &'static str {
        "ShardAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.agg.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.agg]
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    /// A rewrite of the wrapped aggregate (or of anything under it) is taken as it comes:
    /// still runnable here, it is wrapped again; otherwise it replaces this node.
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [child] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("ShardAggregateExec takes one child".into()))?;
        Ok(match ShardAggregateExec::try_new(child.clone()) {
            Some(exec) => Arc::new(exec),
            None => child,
        })
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let schema = self.shape.schema.clone();
        let Some((vshard, split)) = self.assignment(partition, &context) else {
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::empty(),
            )));
        };
        let shape = self.shape.clone();
        let metrics = VshardMetrics::new(&self.metrics, partition);
        let batches = async move {
            match aggregate_vshard(shape, vshard, split, context, &metrics).await {
                Ok(out) => futures::stream::iter(out.into_iter().map(Ok)).left_stream(),
                Err(e) => futures::stream::once(async move { Err(e) }).right_stream(),
            }
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(batches).flatten(),
        )))
    }
}

/// Literal arguments expanded into arrays, kept for every later query: filling a
/// row group's worth of `1`s for `count(*)` in each of 16 partitions was 8 % of a
/// one-hour aggregate's CPU. At most [`LITERAL_CACHE_ENTRIES`] values of at most
/// [`LITERAL_CACHE_MAX_ROWS`] rows each; a longer request builds its array and keeps none.
static LITERALS: std::sync::LazyLock<parking_lot::Mutex<HashMap<ScalarValue, ArrayRef>>> =
    std::sync::LazyLock::new(Default::default);
const LITERAL_CACHE_ENTRIES: usize = 8;
const LITERAL_CACHE_MAX_ROWS: usize = 1 << 18;

/// `rows` copies of `value`, sliced from the shared array when it is long enough.
fn literal_array(value: &ScalarValue, rows: usize) -> DfResult<ArrayRef> {
    if rows > LITERAL_CACHE_MAX_ROWS {
        return value.to_array_of_size(rows);
    }
    let mut cache = LITERALS.lock();
    if let Some(a) = cache.get(value).filter(|a| a.len() >= rows) {
        return Ok(a.slice(0, rows));
    }
    let array =
        value.to_array_of_size(rows.next_power_of_two().clamp(8192, LITERAL_CACHE_MAX_ROWS))?;
    if cache.len() >= LITERAL_CACHE_ENTRIES && !cache.contains_key(value) {
        cache.clear();
    }
    cache.insert(value.clone(), array.clone());
    Ok(array.slice(0, rows))
}

/// Reads vshard `vshard` on this replica and returns the partial aggregate's batches.
async fn aggregate_vshard(
    shape: Arc<Shape>,
    vshard: u32,
    split: Option<(usize, usize)>,
    ctx: Arc<TaskContext>,
    metrics: &VshardMetrics,
) -> DfResult<Vec<RecordBatch>> {
    let req = &shape.request;
    let store = {
        let _open = metrics.open_time.timer();
        open_replica(shape.registry.clone(), req.consistency.clone(), vshard).await?
    };
    let compute = metrics.baseline.elapsed_compute().clone();
    let mut timer = compute.timer();
    let src = sources(&store, req);
    let scan_schema = match &req.projection {
        Some(p) => Arc::new(req.table_schema.project(p)?),
        None => req.table_schema.clone(),
    };
    // `ts` may come back null from row groups that do not need it (see `ts_unread_within`).
    let stored: SchemaRef = Arc::new(Schema::new(
        scan_schema
            .fields()
            .iter()
            .map(|f| {
                let f = storage_field(f);
                match shape.ts_for_filter_only && f.name() == TIME_COLUMN {
                    true => f.with_nullable(true),
                    false => f,
                }
            })
            .collect::<Vec<Field>>(),
    ));
    let whole = |lo: i64, hi: i64| {
        shape
            .ts_conjuncts_failing(&stored, lo, hi)
            .is_ok_and(|failing| failing.is_empty())
    };
    let mut groups = Groups::new(&shape, ctx.session_config().batch_size())?;
    let mut seen = 0;
    for (path, _) in &src.parts {
        let read = PartRead {
            schema: stored.clone(),
            min_ts: req.min_ts,
            max_ts: req.max_ts,
            key: None,
            split: split.map(|(index, count)| RowGroupSplit { seen, index, count }),
            ts_unread_within: shape
                .ts_for_filter_only
                .then_some(&whole as &dyn Fn(i64, i64) -> bool),
        };
        let mut batches = store
            .read_part(path, &read)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        seen += batches.row_groups_matched();
        metrics.parts_read.add(1);
        while let Some(batch) = batches.next() {
            let batch = batch.map_err(|e| DataFusionError::External(Box::new(e)))?;
            metrics.part_rows.add(batch.num_rows());
            groups.push_within(batch, batches.ts_bounds())?;
        }
        metrics.chunks_cached.add(batches.chunks_cached());
        metrics.chunks_decoded.add(batches.chunks_decoded());
    }
    // Clean hot batches are dealt round-robin over the shares, as row groups are (their
    // partial states merge like those of different vshards); the rows needing resolution
    // are the first share's.
    let src = match split {
        Some((index, _)) if index > 0 => Sources {
            dirty_hot: vec![],
            dirty_parts: vec![],
            ..src
        },
        _ => src,
    };
    let mine = |i: usize| split.is_none_or(|(index, count)| i % count == index);
    for (_, h) in src.hot.iter().enumerate().filter(|(i, _)| mine(*i)) {
        metrics.hot_rows.add(h.batch.num_rows());
        groups.push_within(conform(&h.batch, &scan_schema)?, Some((h.min_ts, h.max_ts)))?;
    }
    if src.has_dirty() {
        // Rows of a dirty hot batch outside every contested region have no rival version:
        // they are folded in as they are (dictionaries intact); only the rest is resolved.
        let mut src = src;
        let mut contested = vec![];
        for h in std::mem::take(&mut src.dirty_hot) {
            let Ok(ts) = h.batch.schema().index_of(TIME_COLUMN) else {
                contested.push(h);
                continue;
            };
            let (inside, outside) = split_by_regions(&h.batch, ts, &src.regions)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            metrics.hot_rows.add(outside.num_rows());
            groups.push(conform(&outside, &scan_schema)?)?;
            if inside.num_rows() > 0 {
                contested.push(HotBatch { batch: inside, ..h });
            }
        }
        src.dirty_hot = contested;
        if src.has_dirty() {
            let mut resolved = resolved_stream(req, &src, ctx)?;
            loop {
                timer.stop();
                let Some(batch) = resolved.next().await else {
                    break;
                };
                timer = compute.timer();
                let batch = batch?;
                metrics.resolved_rows.add(batch.num_rows());
                groups.push(batch)?;
            }
            timer = compute.timer();
        }
    }
    groups.emit()?;
    timer.done();
    let rows: usize = groups.out.iter().map(|b| b.num_rows()).sum();
    metrics.baseline.record_output(rows);
    Ok(groups.out)
}

/// Projects `batch` onto `schema` by name: a string column may stay dictionary-encoded,
/// other columns of another type are cast, missing ones are nulls.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> DfResult<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) if f.data_type() == &DataType::Utf8 && c.data_type() == &tag_storage_type() => {
                Ok(c.clone())
            }
            Some(c) => Ok(cast(c, f.data_type())?),
            None => Ok(datafusion::arrow::array::new_null_array(
                f.data_type(),
                batch.num_rows(),
            )),
        })
        .collect::<DfResult<Vec<ArrayRef>>>()?;
    with_columns(columns, schema, batch.num_rows())
}

/// A batch of `columns` named and ordered as `schema` says, typed as the columns are (and
/// nullable where they hold nulls: a `ts` column no aggregate reads may be left unread).
fn with_columns(columns: Vec<ArrayRef>, schema: &Schema, rows: usize) -> DfResult<RecordBatch> {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| {
            f.as_ref()
                .clone()
                .with_data_type(c.data_type().clone())
                .with_nullable(f.is_nullable() || c.null_count() > 0)
        })
        .collect();
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

/// `batch` with every column in the type `schema` gives it.
fn logical(batch: &RecordBatch, schema: &Schema) -> DfResult<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                Ok(cast(c, f.data_type())?)
            }
        })
        .collect::<DfResult<Vec<_>>>()?;
    with_columns(columns, schema, batch.num_rows())
}

/// Code of a null string key (string codes are interner indexes, below it: two string
/// codes pack into one `u64`).
const NULL_CODE: u64 = u32::MAX as u64;
/// Distinct values one string key may take in one vshard's aggregate.
pub const FAST_AGG_MAX_STRINGS: usize = u32::MAX as usize - 1;
/// Marks a string code without a group yet.
const NO_GROUP: u32 = u32::MAX;

/// Distinct strings of one key column, by code.
#[derive(Default)]
struct Interner {
    codes: HashMap<Box<str>, u32>,
    values: Vec<Box<str>>,
}

impl Interner {
    fn code(&mut self, s: &str) -> DfResult<u64> {
        if let Some(c) = self.codes.get(s) {
            return Ok(*c as u64);
        }
        if self.values.len() >= FAST_AGG_MAX_STRINGS {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "more than {FAST_AGG_MAX_STRINGS} distinct values of one group key"
            )));
        }
        let c = self.values.len() as u32;
        self.values.push(s.into());
        self.codes.insert(s.into(), c);
        Ok(c as u64)
    }
}

/// Aggregate state: per group, or (without a group key) one plain accumulator per
/// function, which sums a batch with vector kernels instead of scattering by group.
enum Accumulators {
    Grouped(Vec<Box<dyn GroupsAccumulator>>),
    Single(Vec<Box<dyn Accumulator>>),
}

impl Accumulators {
    fn new(shape: &Shape) -> DfResult<Accumulators> {
        Ok(if shape.keys.is_empty() {
            Accumulators::Single(
                shape
                    .aggs
                    .iter()
                    .map(|a| a.create_accumulator())
                    .collect::<DfResult<_>>()?,
            )
        } else {
            Accumulators::Grouped(
                shape
                    .aggs
                    .iter()
                    .map(|a| a.create_groups_accumulator())
                    .collect::<DfResult<_>>()?,
            )
        })
    }
}

/// The running partial aggregate of one vshard.
struct Groups<'a> {
    shape: &'a Shape,
    batch_size: usize,
    interners: Vec<Interner>,
    accumulators: Accumulators,
    /// The key codes of every group, per key part, in group order.
    group_codes: Vec<Vec<u64>>,
    /// One string key: group by code (dense); `null_group` for the null key.
    by_code: Vec<u32>,
    null_group: u32,
    /// Keys that pack into one integer (see `group_ids`).
    by_packed: HashMap<u64, u32>,
    /// Any other keys.
    by_key: HashMap<Vec<u64>, u32>,
    num_groups: usize,
    out: Vec<RecordBatch>,
}

impl<'a> Groups<'a> {
    fn new(shape: &'a Shape, batch_size: usize) -> DfResult<Groups<'a>> {
        Ok(Groups {
            shape,
            batch_size: batch_size.max(1),
            interners: shape.keys.iter().map(|_| Interner::default()).collect(),
            accumulators: Accumulators::new(shape)?,
            group_codes: vec![vec![]; shape.keys.len()],
            by_code: vec![],
            null_group: NO_GROUP,
            by_packed: HashMap::default(),
            by_key: HashMap::default(),
            num_groups: 0,
            out: vec![],
        })
    }

    /// Folds in one batch of the scan's output (tags possibly dictionary-encoded).
    fn push(&mut self, batch: RecordBatch) -> DfResult<()> {
        self.push_within(batch, None)
    }

    /// [`Groups::push`] for a batch whose `ts` is known to lie within `ts_bounds`, which
    /// spares finding its range.
    fn push_within(&mut self, batch: RecordBatch, ts_bounds: Option<(i64, i64)>) -> DfResult<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let shape = self.shape;
        let mut batch = match self.residual_filter(&batch, ts_bounds)? {
            None => batch,
            // A predicate that cannot read a dictionary column reads the strings.
            Some(p) => match batch_filter(&batch, &p) {
                Ok(b) => b,
                Err(_) => {
                    let scan_schema = match &shape.request.projection {
                        Some(pr) => shape.request.table_schema.project(pr)?,
                        None => shape.request.table_schema.as_ref().clone(),
                    };
                    batch_filter(&logical(&batch, &scan_schema)?, &p)?
                }
            },
        };
        if let Some(p) = &shape.filter_projection {
            batch = batch.project(p)?;
        }
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        // Arguments read their columns in the type the plan gave them.
        let mut columns = batch.columns().to_vec();
        for &c in &shape.arg_columns {
            let want = shape.input_schema.field(c).data_type();
            if columns[c].data_type() != want {
                columns[c] = cast(&columns[c], want)?;
            }
        }
        let batch = with_columns(columns, &shape.input_schema, rows)?;
        let mut inputs = Vec::with_capacity(shape.args.len());
        for args in &shape.args {
            let arrays = args
                .iter()
                .map(|e| self.argument(e, &batch))
                .collect::<DfResult<Vec<_>>>()?;
            inputs.push(arrays);
        }
        match &mut self.accumulators {
            Accumulators::Single(accs) => {
                self.num_groups = 1;
                for (acc, args) in accs.iter_mut().zip(&inputs) {
                    acc.update_batch(args)?;
                }
            }
            Accumulators::Grouped(_) => {
                let groups = self.group_ids(&batch)?;
                let Accumulators::Grouped(accs) = &mut self.accumulators else {
                    unreachable!("matched above")
                };
                for (acc, args) in accs.iter_mut().zip(&inputs) {
                    acc.update_batch(args, &groups, None, self.num_groups)?;
                }
            }
        }
        if self.num_groups >= FAST_AGG_MAX_GROUPS {
            self.emit()?;
        }
        Ok(())
    }

    /// An argument of an aggregate over `batch`. A literal (the `1` of `count(*)`) is a
    /// slice of one array shared by every query (see [`literal_array`]).
    fn argument(&self, e: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> DfResult<ArrayRef> {
        match e.downcast_ref::<Literal>() {
            Some(lit) => literal_array(lit.value(), batch.num_rows()),
            None => e.evaluate(batch)?.into_array(batch.num_rows()),
        }
    }

    /// The part of the filter `batch` still needs (`None`: every row passes).
    fn residual_filter(
        &self,
        batch: &RecordBatch,
        ts_bounds: Option<(i64, i64)>,
    ) -> DfResult<Option<Arc<dyn PhysicalExpr>>> {
        let shape = self.shape;
        let Some(filter) = &shape.filter else {
            return Ok(None);
        };
        let ts = shape.ts_col.and_then(|t| {
            batch
                .column(t)
                .as_primitive_opt::<TimestampNanosecondType>()
        });
        let Some(ts) = ts.filter(|_| !shape.filter_ts.is_empty()) else {
            return Ok(Some(filter.clone()));
        };
        let Some((lo, hi)) = ts_bounds.or_else(|| column_ts_range(ts)) else {
            return Ok(Some(filter.clone()));
        };
        let mut kept = shape.filter_rest.clone();
        kept.extend(shape.ts_conjuncts_failing(&batch.schema(), lo, hi)?);
        Ok(conjunction_opt(kept))
    }

    /// The key codes of every row, for key part `k`.
    fn codes(&mut self, k: usize, batch: &RecordBatch) -> DfResult<Vec<u64>> {
        match &self.shape.keys[k] {
            KeyPart::Bin {
                col,
                stride,
                origin,
                ..
            } => {
                let ts = batch.column(*col).as_primitive::<TimestampNanosecondType>();
                Ok(bin_codes(ts.values(), *stride, *origin))
            }
            KeyPart::Str { col } => {
                let column = batch.column(*col);
                let interner = &mut self.interners[k];
                if let Some(dict) = column.as_dictionary_opt::<Int32Type>() {
                    let values = dict.values().as_string_opt::<i32>().ok_or_else(|| {
                        DataFusionError::Internal("a dictionary key column of non-strings".into())
                    })?;
                    let lut: Vec<u64> = (0..values.len())
                        .map(|i| {
                            if values.is_null(i) {
                                Ok(NULL_CODE)
                            } else {
                                interner.code(values.value(i))
                            }
                        })
                        .collect::<DfResult<_>>()?;
                    let keys = dict.keys();
                    return Ok((0..keys.len())
                        .map(|i| {
                            if keys.is_null(i) {
                                NULL_CODE
                            } else {
                                lut.get(keys.value(i) as usize)
                                    .copied()
                                    .unwrap_or(NULL_CODE)
                            }
                        })
                        .collect());
                }
                let owned;
                let strings = match column.as_string_opt::<i32>() {
                    Some(s) => s,
                    None => {
                        owned = cast(column, &DataType::Utf8)?;
                        owned.as_string::<i32>()
                    }
                };
                let mut last: Option<(&str, u64)> = None;
                strings
                    .iter()
                    .map(|v| match v {
                        None => Ok(NULL_CODE),
                        Some(s) => match last {
                            Some((l, c)) if l == s => Ok(c),
                            _ => {
                                let c = interner.code(s)?;
                                last = Some((s, c));
                                Ok(c)
                            }
                        },
                    })
                    .collect()
            }
        }
    }

    /// The group index of every row of `batch` (the aggregate's input), new groups made.
    /// The group of packed key `p`; a new one records its key codes with `add_codes`.
    fn packed_group(&mut self, p: u64, add_codes: impl FnOnce(&mut [Vec<u64>])) -> usize {
        if let Some(g) = self.by_packed.get(&p) {
            return *g as usize;
        }
        let g = self.num_groups;
        self.by_packed.insert(p, g as u32);
        add_codes(&mut self.group_codes);
        self.num_groups += 1;
        g
    }

    fn group_ids(&mut self, batch: &RecordBatch) -> DfResult<Vec<usize>> {
        let rows = batch.num_rows();
        let keys = self.shape.keys.len();
        if keys == 0 {
            self.num_groups = 1;
            return Ok(vec![0; rows]);
        }
        if let [KeyPart::Bin {
            col,
            stride,
            origin,
            ..
        }] = self.shape.keys.as_slice()
        {
            // One time bin: straight from `ts` to group ids.
            let ts = batch.column(*col).as_primitive::<TimestampNanosecondType>();
            let mut binner = Binner::new(*stride, *origin);
            let mut group = 0;
            let mut ids = Vec::with_capacity(rows);
            for &t in ts.values() {
                if let Some(start) = binner.next_start(t) {
                    let p = start as u64;
                    group = self.packed_group(p, |codes| codes[0].push(p));
                }
                ids.push(group);
            }
            return Ok(ids);
        }
        let codes = (0..keys)
            .map(|k| self.codes(k, batch))
            .collect::<DfResult<Vec<_>>>()?;
        let mut ids = Vec::with_capacity(rows);
        if keys == 1 && matches!(self.shape.keys[0], KeyPart::Str { .. }) {
            for &c in &codes[0] {
                let slot = if c == NULL_CODE {
                    &mut self.null_group
                } else {
                    let c = c as usize;
                    if c >= self.by_code.len() {
                        self.by_code.resize(c + 1, NO_GROUP);
                    }
                    &mut self.by_code[c]
                };
                if *slot == NO_GROUP {
                    *slot = self.num_groups as u32;
                    self.group_codes[0].push(c);
                    self.num_groups += 1;
                }
                ids.push(*slot as usize);
            }
            return Ok(ids);
        }
        // Two string keys pack into one integer.
        let packed: Option<Vec<u64>> = match self.shape.keys.as_slice() {
            [KeyPart::Str { .. }, KeyPart::Str { .. }] => Some(
                codes[0]
                    .iter()
                    .zip(&codes[1])
                    .map(|(a, b)| a << 32 | b)
                    .collect(),
            ),
            _ => None,
        };
        if let Some(packed) = packed {
            let mut last: Option<(u64, usize)> = None;
            for (row, &p) in packed.iter().enumerate() {
                if let Some((l, g)) = last {
                    if l == p {
                        ids.push(g);
                        continue;
                    }
                }
                let g = self.packed_group(p, |group_codes| {
                    for (k, c) in codes.iter().enumerate() {
                        group_codes[k].push(c[row]);
                    }
                });
                last = Some((p, g));
                ids.push(g);
            }
            return Ok(ids);
        }
        let mut key = vec![0u64; keys];
        let mut last: Option<(Vec<u64>, usize)> = None;
        for row in 0..rows {
            for (k, c) in codes.iter().enumerate() {
                key[k] = c[row];
            }
            if let Some((l, g)) = &last {
                if *l == key {
                    ids.push(*g);
                    continue;
                }
            }
            let g = match self.by_key.get(key.as_slice()) {
                Some(g) => *g as usize,
                None => {
                    let g = self.num_groups;
                    self.by_key.insert(key.clone(), g as u32);
                    for (k, c) in key.iter().enumerate() {
                        self.group_codes[k].push(*c);
                    }
                    self.num_groups += 1;
                    g
                }
            };
            last = Some((key.clone(), g));
            ids.push(g);
        }
        Ok(ids)
    }

    /// Emits every group's key and partial state, and starts afresh.
    fn emit(&mut self) -> DfResult<()> {
        if self.num_groups == 0 {
            return Ok(());
        }
        let schema = self.shape.schema.clone();
        let mut columns: Vec<ArrayRef> = vec![];
        for (k, part) in self.shape.keys.iter().enumerate() {
            let codes = std::mem::take(&mut self.group_codes[k]);
            let array: ArrayRef = match part {
                KeyPart::Str { .. } => {
                    let values = &self.interners[k].values;
                    Arc::new(StringArray::from_iter(codes.iter().map(|c| {
                        (*c != NULL_CODE).then(|| values[*c as usize].as_ref())
                    })))
                }
                KeyPart::Bin { out, .. } => {
                    let tz = match out {
                        DataType::Timestamp(_, tz) => tz.clone(),
                        _ => None,
                    };
                    Arc::new(
                        TimestampNanosecondArray::from_iter_values(codes.iter().map(|c| *c as i64))
                            .with_timezone_opt(tz),
                    )
                }
            };
            columns.push(array);
        }
        match &mut self.accumulators {
            Accumulators::Grouped(accs) => {
                for acc in accs {
                    columns.extend(acc.state(EmitTo::All)?);
                }
            }
            Accumulators::Single(accs) => {
                for acc in accs {
                    for v in acc.state()? {
                        columns.push(v.to_array()?);
                    }
                }
                self.accumulators = Accumulators::new(self.shape)?;
            }
        }
        let columns = columns
            .into_iter()
            .zip(schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c)
                } else {
                    Ok(cast(&c, f.data_type())?)
                }
            })
            .collect::<DfResult<Vec<_>>>()?;
        let batch = RecordBatch::try_new(schema, columns)?;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = self.batch_size.min(batch.num_rows() - offset);
            self.out.push(batch.slice(offset, len));
            offset += len;
        }
        self.by_code.clear();
        self.null_group = NO_GROUP;
        self.by_packed.clear();
        self.by_key.clear();
        self.num_groups = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;

    /// Shared literal arrays grow on demand, hold the value on every row, and a request past
    /// the cache's row limit is still answered in full.
    #[test]
    fn literal_arrays_are_shared_and_grow() {
        let seven = ScalarValue::Int64(Some(7));
        for rows in [1, 100, 8192, 8193, 100_000, LITERAL_CACHE_MAX_ROWS + 5, 3] {
            let a = literal_array(&seven, rows).expect("array");
            assert_eq!(a.len(), rows);
            assert_eq!(a.null_count(), 0);
            assert!(a
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .all(|&v| v == 7));
        }
        let null = ScalarValue::Int64(None);
        let a = literal_array(&null, 10).expect("nulls");
        assert_eq!(a.null_count(), 10, "a null literal stays null");
        let a = literal_array(&seven, 10).expect("again");
        let b = literal_array(&seven, 20).expect("again");
        assert_eq!(
            a.to_data().buffers()[0].as_ptr(),
            b.to_data().buffers()[0].as_ptr(),
            "one shared array"
        );
    }

    #[test]
    fn bins_match_date_bin() {
        let minute = 60_000_000_000;
        assert_eq!(bin_start(0, minute, 0), 0);
        assert_eq!(bin_start(minute - 1, minute, 0), 0);
        assert_eq!(bin_start(minute, minute, 0), minute);
        // before the origin, a bin starts earlier, not at the origin
        assert_eq!(bin_start(-1, minute, 0), -minute);
        assert_eq!(bin_start(5, 10, 3), 3);
        assert_eq!(bin_start(2, 10, 3), -7);
    }

    /// The range a run of rows reuses holds exactly the timestamps `bin_start` maps to its
    /// start, and is refused where the arithmetic would overflow.
    #[test]
    fn bin_ranges_hold_exactly_their_bin() {
        for (stride, origin) in [(10, 3), (60_000_000_000, 0), (7, -5), (1, 0)] {
            for ts in [
                -25i64,
                -11,
                -7,
                -1,
                0,
                2,
                3,
                12,
                13,
                1_704_067_200_000_000_007,
            ] {
                let (start, end) = bin_range(ts, stride, origin).expect("no overflow");
                assert_eq!(
                    start,
                    bin_start(ts, stride, origin),
                    "{ts} {stride} {origin}"
                );
                assert_eq!(end - start, stride);
                for t in [start, start + stride / 2, end - 1] {
                    assert_eq!(
                        bin_start(t, stride, origin),
                        start,
                        "{t} in [{start}, {end})"
                    );
                }
                assert_ne!(bin_start(end, stride, origin), start);
            }
        }
        assert_eq!(
            bin_range(i64::MAX - 1, 10, 0),
            None,
            "the bin's end overflows"
        );
        assert_eq!(
            bin_range(i64::MIN + 1, 10, 0),
            None,
            "the bin's start overflows"
        );
        assert_eq!(bin_range(i64::MIN, 10, 5), None, "ts - origin overflows");
    }

    /// Bin codes for rows in any order (runs within one bin, jumps back to an earlier bin,
    /// the ends of the range) equal binning each row alone.
    #[test]
    fn bin_codes_match_per_row_binning() {
        for (stride, origin) in [(10, 0), (10, 3), (60_000_000_000, 0)] {
            let ts: Vec<i64> = vec![0, 1, 9, 10, 3, 25, 29, -1, -10, -11, 9, i64::MAX, 10, 11];
            let fast = bin_codes(&ts, stride, origin);
            let slow: Vec<u64> = ts
                .iter()
                .map(|&t| bin_start(t, stride, origin) as u64)
                .collect();
            assert_eq!(fast, slow, "stride {stride} origin {origin}");
        }
    }
}
