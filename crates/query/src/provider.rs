//! DataFusion's view of Shoal's catalog: a schema provider over group 0's catalog, and a
//! table whose scan has one partition per vshard.
//!
//! Partition `v` reads vshard `v` of one table on this node's replica, with projection,
//! predicate, time range and limit pushed down: the replica's hot buffer and its Parquet
//! parts (pruned by part time range, then by row-group and page statistics). Vshards this
//! node does not host are read elsewhere (see [`crate::distributed`]).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{SchemaProvider, Session};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DataFusionError, Result as DfResult, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use shoal_common::schema::ColumnType;
use shoal_consensus::{CatalogHandle, Registry, TableEntry};
use shoal_storage::arrow_schema::table_arrow_schema;
use shoal_storage::dedup::{self, SeriesKey};
use shoal_storage::shard::align_batch;
use shoal_storage::{HotBatch, PartMeta, ShardStore};

use crate::engine::ReadConsistency;
use crate::error::QueryError;
use crate::write::Writer;

/// The `public` schema: every table of group 0's catalog.
pub struct ShoalSchema {
    registry: Arc<Registry>,
    catalog: CatalogHandle,
    writer: Writer,
}

impl fmt::Debug for ShoalSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShoalSchema")
    }
}

impl ShoalSchema {
    pub fn new(registry: Arc<Registry>, writer: Writer) -> ShoalSchema {
        ShoalSchema {
            catalog: registry.catalog(),
            registry,
            writer,
        }
    }
}

#[async_trait]
impl SchemaProvider for ShoalSchema {
    fn table_names(&self) -> Vec<String> {
        self.catalog.read().tables.keys().cloned().collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let entry = self.catalog.read().tables.get(name).cloned();
        Ok(entry.map(|e| {
            Arc::new(ShoalTable::new(
                e,
                self.registry.clone(),
                self.writer.clone(),
            )) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.catalog.read().tables.contains_key(name)
    }
}

/// One Shoal table as DataFusion sees it.
pub struct ShoalTable {
    entry: TableEntry,
    schema: SchemaRef,
    registry: Arc<Registry>,
    writer: Writer,
}

impl fmt::Debug for ShoalTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShoalTable({})", self.entry.schema.name)
    }
}

impl ShoalTable {
    pub fn new(entry: TableEntry, registry: Arc<Registry>, writer: Writer) -> ShoalTable {
        let schema = table_arrow_schema(&entry.schema);
        ShoalTable {
            entry,
            schema,
            registry,
            writer,
        }
    }
}

/// How long a strong read waits for its replicas to reach their leaders' read index.
const READ_BARRIER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[async_trait]
impl TableProvider for ShoalTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Pruning is by statistics, so every filter is still applied above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let df_schema = DFSchema::try_from(self.schema.as_ref().clone())?;
        let predicate = match conjunction(filters.to_vec()) {
            Some(e) => Some(state.create_physical_expr(e, &df_schema)?),
            None => None,
        };
        let is_key = |name: &str| {
            self.entry
                .schema
                .column(name)
                .is_some_and(|c| matches!(c.column_type, ColumnType::Timestamp | ColumnType::Tag))
        };
        let key_filters: Vec<Expr> = filters
            .iter()
            .filter(|f| f.column_refs().iter().all(|c| is_key(&c.name)))
            .cloned()
            .collect();
        let key_predicate = match conjunction(key_filters) {
            Some(e) => Some(state.create_physical_expr(e, &df_schema)?),
            None => None,
        };
        let (min_ts, max_ts) = time_bounds(filters);
        let only_vshards = self.entry.schema.partition_key.as_deref().and_then(|key| {
            partition_values(filters, key).map(|values| {
                let n = self.registry.vshards();
                let mut v: Vec<u32> = values
                    .iter()
                    .map(|k| shoal_common::vshard_for_key(k.as_bytes(), n))
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            })
        });
        let consistency = state
            .config()
            .get_extension::<ReadConsistency>()
            .map(|c| c.as_ref().clone())
            .unwrap_or_default();
        let request = ShardScanRequest {
            table_id: self.entry.id,
            table_schema: self.schema.clone(),
            projection: projection.cloned(),
            predicate,
            key_predicate,
            limit,
            min_ts,
            max_ts,
            only_vshards,
            // Per request, through the session config (the catalog itself is shared).
            consistency,
        };
        Ok(Arc::new(ShardScanExec::new(request, self.registry.clone())))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return Err(datafusion::error::DataFusionError::NotImplemented(format!(
                "{insert_op} is not supported"
            )));
        }
        let sink = ShoalSink {
            entry: self.entry.clone(),
            schema: self.schema.clone(),
            writer: self.writer.clone(),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// The partition-key values a row must have to pass `filters` (from `key = 'v'`,
/// `key IN ('a', 'b')` and ORs of those), or `None` when the filters allow any value.
/// Rows of one key value all live on one vshard, so only those vshards need reading.
fn partition_values(filters: &[Expr], key: &str) -> Option<Vec<String>> {
    fn is_key(e: &Expr, key: &str) -> bool {
        matches!(e, Expr::Column(c) if c.name == key)
    }
    fn text(e: &Expr) -> Option<String> {
        match e {
            Expr::Literal(ScalarValue::Utf8(Some(s)), _)
            | Expr::Literal(ScalarValue::LargeUtf8(Some(s)), _)
            | Expr::Literal(ScalarValue::Utf8View(Some(s)), _) => Some(s.clone()),
            Expr::Literal(ScalarValue::Dictionary(_, v), m) => {
                text(&Expr::Literal(v.as_ref().clone(), m.clone()))
            }
            Expr::Cast(c) => text(&c.expr),
            _ => None,
        }
    }
    /// The values `e` restricts the key to, if it does.
    fn values(e: &Expr, key: &str) -> Option<Vec<String>> {
        match e {
            Expr::BinaryExpr(b) if b.op == Operator::Eq => {
                if is_key(&b.left, key) {
                    text(&b.right).map(|v| vec![v])
                } else if is_key(&b.right, key) {
                    text(&b.left).map(|v| vec![v])
                } else {
                    None
                }
            }
            Expr::BinaryExpr(b) if b.op == Operator::Or => {
                let mut l = values(&b.left, key)?;
                l.extend(values(&b.right, key)?);
                Some(l)
            }
            Expr::BinaryExpr(b) if b.op == Operator::And => {
                // Either side restricting the key is enough (the other only narrows).
                values(&b.left, key).or_else(|| values(&b.right, key))
            }
            Expr::InList(l) if !l.negated && is_key(&l.expr, key) => {
                l.list.iter().map(text).collect()
            }
            _ => None,
        }
    }
    filters.iter().find_map(|f| values(f, key))
}

/// Extracts `ts` bounds (inclusive) from simple comparisons with literals.
fn time_bounds(filters: &[Expr]) -> (Option<i64>, Option<i64>) {
    let mut lo: Option<i64> = None;
    let mut hi: Option<i64> = None;
    for f in filters {
        collect_bounds(f, &mut lo, &mut hi);
    }
    (lo, hi)
}

fn literal_nanos(e: &Expr) -> Option<i64> {
    match e {
        Expr::Literal(ScalarValue::TimestampNanosecond(Some(v), _), _) => Some(*v),
        Expr::Literal(ScalarValue::TimestampMicrosecond(Some(v), _), _) => v.checked_mul(1_000),
        Expr::Literal(ScalarValue::TimestampMillisecond(Some(v), _), _) => v.checked_mul(1_000_000),
        Expr::Literal(ScalarValue::TimestampSecond(Some(v), _), _) => v.checked_mul(1_000_000_000),
        Expr::Cast(c) => literal_nanos(&c.expr),
        Expr::TryCast(c) => literal_nanos(&c.expr),
        _ => None,
    }
}

fn is_ts_column(e: &Expr) -> bool {
    matches!(e, Expr::Column(c) if c.name == shoal_common::schema::TIME_COLUMN)
}

fn collect_bounds(f: &Expr, lo: &mut Option<i64>, hi: &mut Option<i64>) {
    let Expr::BinaryExpr(b) = f else { return };
    if b.op == Operator::And {
        collect_bounds(&b.left, lo, hi);
        collect_bounds(&b.right, lo, hi);
        return;
    }
    let (op, v) = if is_ts_column(&b.left) {
        match literal_nanos(&b.right) {
            Some(v) => (b.op, v),
            None => return,
        }
    } else if is_ts_column(&b.right) {
        match (literal_nanos(&b.left), b.op.swap()) {
            (Some(v), Some(op)) => (op, v),
            _ => return,
        }
    } else {
        return;
    };
    let raise = |cur: &mut Option<i64>, v: i64| *cur = Some(cur.map_or(v, |c| c.max(v)));
    let lower = |cur: &mut Option<i64>, v: i64| *cur = Some(cur.map_or(v, |c| c.min(v)));
    match op {
        Operator::Gt => raise(lo, v.saturating_add(1)),
        Operator::GtEq => raise(lo, v),
        Operator::Lt => lower(hi, v.saturating_sub(1)),
        Operator::LtEq => lower(hi, v),
        Operator::Eq => {
            raise(lo, v);
            lower(hi, v);
        }
        _ => {}
    }
}

/// What one partition of a distributed scan asks of one vshard replica.
#[derive(Clone)]
pub struct ShardScanRequest {
    pub table_id: u64,
    /// The table's full schema (current catalog version).
    pub table_schema: SchemaRef,
    pub projection: Option<Vec<usize>>,
    pub predicate: Option<Arc<dyn PhysicalExpr>>,
    /// The conjuncts of `predicate` that read only key columns (`ts`, tags): the only safe
    /// pruning where repeated points are being resolved.
    pub key_predicate: Option<Arc<dyn PhysicalExpr>>,
    pub limit: Option<usize>,
    pub min_ts: Option<i64>,
    pub max_ts: Option<i64>,
    /// The only vshards that can hold matching rows (the filters pin the partition key);
    /// `None` = all. The others' partitions are empty without reading anything.
    pub only_vshards: Option<Vec<u32>>,
    pub consistency: ReadConsistency,
}

impl ShardScanRequest {
    /// Whether partition (vshard) `v` can hold matching rows.
    pub fn reads(&self, v: u32) -> bool {
        self.only_vshards
            .as_ref()
            .is_none_or(|only| only.binary_search(&v).is_ok())
    }
}

impl ShardScanRequest {
    fn output_schema(&self) -> DfResult<SchemaRef> {
        Ok(match &self.projection {
            Some(p) => Arc::new(self.table_schema.project(p)?),
            None => self.table_schema.clone(),
        })
    }
}

/// What one vshard's scan reads on this replica, split by whether repeated points may hide
/// in it: `clean` sources overlap no other source in time and are read as they are; the
/// `dirty` ones overlap another source and go through last-write-wins resolution.
pub(crate) struct Sources {
    pub parts: Vec<(PathBuf, PartMeta)>,
    pub hot: Vec<HotBatch>,
    pub dirty_parts: Vec<(PathBuf, PartMeta)>,
    pub dirty_hot: Vec<HotBatch>,
    /// The `ts` ranges where dirty sources overlap (see `shoal_storage::dedup`).
    pub regions: Vec<(i64, i64)>,
    pub key: Option<SeriesKey>,
}

impl Sources {
    pub fn has_dirty(&self) -> bool {
        self.key.is_some() && !(self.dirty_parts.is_empty() && self.dirty_hot.is_empty())
    }
}

/// The hot batches and Parquet parts of one vshard whose time range the request can touch.
pub(crate) fn sources(store: &ShardStore, req: &ShardScanRequest) -> Sources {
    let snap = store.scan_snapshot(req.table_id);
    let in_range =
        |lo: i64, hi: i64| req.min_ts.is_none_or(|l| hi >= l) && req.max_ts.is_none_or(|h| lo <= h);
    let parts: Vec<(PathBuf, PartMeta)> = snap
        .parts
        .into_iter()
        .filter(|(_, p)| in_range(p.min_ts, p.max_ts))
        .collect();
    let hot: Vec<HotBatch> = snap
        .hot
        .into_iter()
        .filter(|h| in_range(h.min_ts, h.max_ts))
        .collect();
    // Sources that overlap in time may hold the same point twice; only rows inside the
    // overlap go through last-write-wins resolution (see shoal_storage::dedup).
    let key = SeriesKey::of(&req.table_schema);
    let regions = match key {
        Some(_) => {
            let ranges: Vec<(i64, i64)> = parts
                .iter()
                .map(|(_, p)| (p.min_ts, p.max_ts))
                .chain(hot.iter().map(|h| (h.min_ts, h.max_ts)))
                .collect();
            dedup::overlap_regions(&ranges)
        }
        None => vec![],
    };
    let (dirty_parts, parts): (Vec<_>, Vec<_>) = parts
        .into_iter()
        .partition(|(_, p)| dedup::touches(&regions, p.min_ts, p.max_ts));
    let (dirty_hot, hot): (Vec<_>, Vec<_>) = hot
        .into_iter()
        .partition(|h| dedup::touches(&regions, h.min_ts, h.max_ts));
    Sources {
        parts,
        hot,
        dirty_parts,
        dirty_hot,
        regions,
        key,
    }
}

/// Reads one vshard's rows for a scan from this node's replica: the hot buffer and the
/// Parquet parts whose time range the request can touch.
fn scan_local(
    store: &ShardStore,
    req: &ShardScanRequest,
    ctx: Arc<TaskContext>,
) -> DfResult<SendableRecordBatchStream> {
    let src = sources(store, req);
    let mut plans = vec![];
    if !src.parts.is_empty() {
        plans.push(parquet_plan(
            req,
            &src.parts,
            req.predicate.clone(),
            req.projection.clone(),
            req.limit,
        )?);
    }
    if !src.hot.is_empty() {
        plans.push(hot_plan(req, &src.hot, req.projection.clone())?);
    }
    let mut streams = vec![];
    for plan in plans {
        for p in 0..plan.properties().partitioning.partition_count() {
            streams.push(plan.execute(p, ctx.clone())?);
        }
    }
    if src.has_dirty() {
        streams.push(resolved_stream(req, &src, ctx)?);
    }
    Ok(Box::pin(RecordBatchStreamAdapter::new(
        req.output_schema()?,
        futures::stream::iter(streams).flatten(),
    )))
}

/// Waits until this node's replica of `vshard` may serve `req` at its read consistency
/// (strong, or bounded staleness beyond what the replica's closed timestamp covers: the
/// replica first catches up to its leader's read index) and returns its store.
pub(crate) async fn open_replica(
    registry: Arc<Registry>,
    consistency: ReadConsistency,
    vshard: u32,
) -> DfResult<Arc<ShardStore>> {
    let store = registry.store(vshard).ok_or_else(|| {
        DataFusionError::External(Box::new(QueryError::from(registry.not_hosted(vshard))))
    })?;
    let local_ok = match &consistency {
        ReadConsistency::Eventual => true,
        // Served here when this replica's closed timestamp is within the bound.
        ReadConsistency::BoundedStaleness(d) => registry.can_read_stale(vshard, *d),
        ReadConsistency::Strong => false,
    };
    if !local_ok {
        registry
            .read_barrier(vshard, READ_BARRIER_TIMEOUT)
            .await
            .map_err(|e| DataFusionError::External(Box::new(QueryError::from(e))))?;
    }
    Ok(store)
}

fn df_external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Reads Parquet parts, pruned by `predicate` (statistics only; filters run above the scan).
fn parquet_plan(
    req: &ShardScanRequest,
    parts: &[(PathBuf, PartMeta)],
    predicate: Option<Arc<dyn PhysicalExpr>>,
    projection: Option<Vec<usize>>,
    limit: Option<usize>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let files: Vec<PartitionedFile> = parts
        .iter()
        .map(|(path, p)| PartitionedFile::new(path.to_string_lossy().to_string(), p.bytes))
        .collect();
    let mut source = ParquetSource::new(req.table_schema.clone());
    if let Some(pred) = predicate {
        source = source.with_predicate(pred);
    }
    let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
        .with_file_group(FileGroup::new(files))
        .with_projection_indices(projection)?
        .with_limit(limit)
        .build();
    Ok(DataSourceExec::from_data_source(config))
}

/// Reads hot batches, in apply order, as one partition.
fn hot_plan(
    req: &ShardScanRequest,
    hot: &[HotBatch],
    projection: Option<Vec<usize>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let aligned = hot
        .iter()
        .map(|h| align_batch(&h.batch, &req.table_schema))
        .collect::<Result<Vec<_>, _>>()
        .map_err(df_external)?;
    MemorySourceConfig::try_new_exec(&[aligned], req.table_schema.clone(), projection)
        .map(|p| p as Arc<dyn ExecutionPlan>)
}

/// Reads sources that overlap in time, oldest first, and resolves the rows inside the
/// overlap `regions` so that the newest of a repeated point wins. Only key predicates prune
/// here: pruning by a value could hide the newer version of a point and expose the older.
pub(crate) fn resolved_stream(
    req: &ShardScanRequest,
    src: &Sources,
    ctx: Arc<TaskContext>,
) -> DfResult<SendableRecordBatchStream> {
    let Some(key) = &src.key else {
        return Err(DataFusionError::Internal(
            "resolving repeats of a table without series keys".into(),
        ));
    };
    let (parts, hot, regions) = (&src.dirty_parts, &src.dirty_hot, src.regions.clone());
    let out_schema = req.output_schema()?;
    let wanted: Vec<usize> = match &req.projection {
        Some(p) => p.clone(),
        None => (0..req.table_schema.fields().len()).collect(),
    };
    let mut read = wanted.clone();
    for c in key.columns() {
        if !read.contains(&c) {
            read.push(c);
        }
    }
    let read_schema = Arc::new(req.table_schema.project(&read)?);
    let read_key = SeriesKey::of(&read_schema).ok_or_else(|| {
        DataFusionError::Internal("projected schema lost its column roles".into())
    })?;
    let mut plans = vec![];
    for part in parts {
        plans.push(parquet_plan(
            req,
            std::slice::from_ref(part),
            req.key_predicate.clone(),
            Some(read.clone()),
            None,
        )?);
    }
    if !hot.is_empty() {
        plans.push(hot_plan(req, hot, Some(read.clone()))?);
    }
    let keep: Vec<usize> = (0..wanted.len()).collect();
    let work = async move {
        let mut out = vec![];
        let mut contested = vec![];
        for plan in plans {
            for p in 0..plan.properties().partitioning.partition_count() {
                let mut stream = plan.execute(p, ctx.clone())?;
                while let Some(batch) = stream.next().await {
                    let (inside, outside) = dedup::split_by_regions(&batch?, read_key.ts, &regions)
                        .map_err(df_external)?;
                    contested.push(inside);
                    out.push(outside);
                }
            }
        }
        let contested = concat_batches(&read_schema, &contested)?;
        out.push(dedup::resolve(contested, &read_key).map_err(df_external)?);
        out.into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| b.project(&keep).map_err(DataFusionError::from))
            .collect::<DfResult<Vec<_>>>()
    };
    let stream = futures::stream::once(work).flat_map(|r| {
        let items: Vec<DfResult<RecordBatch>> = match r {
            Ok(batches) => batches.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(items)
    });
    Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, stream)))
}

/// A leaf plan with one partition per vshard, each read from this node's replica (a
/// [`crate::distributed::ShardFragmentExec`] above it sends the partitions of vshards this
/// node does not host to nodes that do).
pub struct ShardScanExec {
    request: ShardScanRequest,
    registry: Arc<Registry>,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for ShardScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShardScanExec(table {})", self.request.table_id)
    }
}

impl ShardScanExec {
    pub fn new(request: ShardScanRequest, registry: Arc<Registry>) -> ShardScanExec {
        let schema = request
            .output_schema()
            .unwrap_or_else(|_| request.table_schema.clone());
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(registry.vshards().max(1) as usize),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        ShardScanExec {
            request,
            registry,
            properties: Arc::new(properties),
        }
    }

    pub fn request(&self) -> &ShardScanRequest {
        &self.request
    }

    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

impl DisplayAs for ShardScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ShardScanExec: table_id={}, vshards={}, ts=[{:?}, {:?}], limit={:?}, consistency={}",
            self.request.table_id,
            match &self.request.only_vshards {
                Some(only) => format!("{only:?}"),
                None => self.registry.vshards().to_string(),
            },
            self.request.min_ts,
            self.request.max_ts,
            self.request.limit,
            self.request.consistency
        )
    }
}

impl ExecutionPlan for ShardScanExec {
    fn name(&self) -> &'static str {
        "ShardScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let vshard = partition as u32;
        if !self.request.reads(vshard) {
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                self.request.output_schema()?,
                futures::stream::empty(),
            )));
        }
        let req = self.request.clone();
        let schema = req.output_schema()?;
        let open = open_replica(self.registry.clone(), req.consistency.clone(), vshard);
        let stream = async move {
            let store = open.await?;
            scan_local(&store, &req, context)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(stream).try_flatten(),
        )))
    }
}

/// `INSERT INTO` target: collects the input and writes it through the Raft write path.
struct ShoalSink {
    entry: TableEntry,
    schema: SchemaRef,
    writer: Writer,
}

impl fmt::Debug for ShoalSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShoalSink({})", self.entry.schema.name)
    }
}

impl DisplayAs for ShoalSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ShoalSink: table={}", self.entry.schema.name)
    }
}

/// Rows an `INSERT` may carry in one statement.
pub const MAX_INSERT_ROWS: usize = 1_000_000;

#[async_trait]
impl DataSink for ShoalSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        let mut batches = vec![];
        let mut rows = 0usize;
        while let Some(b) = data.next().await {
            let b = b?;
            rows += b.num_rows();
            if rows > MAX_INSERT_ROWS {
                return Err(datafusion::error::DataFusionError::External(Box::new(
                    QueryError::new(
                        crate::error::ErrorKind::TooLarge,
                        format!("INSERT carries more than {MAX_INSERT_ROWS} rows; split it"),
                    ),
                )));
            }
            batches.push(b);
        }
        if batches.is_empty() {
            return Ok(0);
        }
        let all = datafusion::arrow::compute::concat_batches(&self.schema, &batches)?;
        if all.column(0).null_count() > 0 {
            return Err(datafusion::error::DataFusionError::External(Box::new(
                QueryError::bad_input("ts must not be NULL"),
            )));
        }
        let outcome = self
            .writer
            .write(&self.entry, all, None)
            .await
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        Ok(outcome.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn partition_key_filters_name_the_values_and_nothing_else_does() {
        let k = || col("symbol");
        let got = |f: Expr| partition_values(&[f], "symbol");
        assert_eq!(got(k().eq(lit("a"))), Some(vec!["a".to_string()]));
        assert_eq!(got(lit("a").eq(k())), Some(vec!["a".to_string()]));
        assert_eq!(
            got(k().eq(lit("a")).or(k().eq(lit("b")))),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(
            got(k().in_list(vec![lit("x"), lit("y")], false)),
            Some(vec!["x".to_string(), "y".to_string()])
        );
        assert_eq!(
            got(col("ts").gt(lit(5)).and(k().eq(lit("a")))),
            Some(vec!["a".to_string()])
        );
        // Anything that lets other values through restricts nothing.
        assert_eq!(got(k().not_eq(lit("a"))), None);
        assert_eq!(got(k().in_list(vec![lit("x")], true)), None);
        assert_eq!(got(k().eq(lit("a")).or(col("side").eq(lit("B")))), None);
        assert_eq!(got(col("side").eq(lit("B"))), None);
        assert_eq!(got(k().eq(col("side"))), None);
    }
}
