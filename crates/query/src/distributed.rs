//! Distributed scans: the vshards a node does not host are read on a node that does.
//!
//! After DataFusion has planned a query, [`DistributeScans`] looks for the largest piece of
//! the plan above each [`ShardScanExec`] that keeps one partition per vshard (projection,
//! filter, partial aggregation, per-partition sort and limit) and wraps it in a
//! [`ShardFragmentExec`]. Partition `v` of that node runs the piece here when this node
//! holds a replica of vshard `v`; otherwise the piece is serialized (datafusion-proto, with
//! [`ShoalCodec`] for Shoal's own scan) and sent to a node that does, which runs partition
//! `v` against its replica and streams the output back as Arrow IPC. So filters, projection
//! and limits run where the data is, and an aggregate crosses the network as partial
//! states (one row per group per vshard) instead of as rows.
//!
//! The replica that serves a remote partition applies the read consistency itself: a
//! `strong` read first catches that replica up to its leader's read index, exactly as a
//! local read does.
//!
//! Errors cross the wire as `[shoal:<kind>:<sqlstate>] message`, so a remote failure keeps
//! its kind and SQLSTATE. A remote partition that fails before it produced anything
//! (replica unreachable, no leader, not hosted there) is retried on the next replica; once
//! rows have arrived, a failure fails the query (rows cannot be taken back).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::reader::StreamDecoder;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::limit::LocalLimitExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use datafusion_proto::physical_plan::from_proto::parse_physical_expr;
use datafusion_proto::physical_plan::to_proto::serialize_physical_expr;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf::PhysicalExprNode;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use shoal_consensus::Registry;

use crate::engine::ReadConsistency;
use crate::error::{ErrorKind, QueryError};
use crate::provider::{ShardScanExec, ShardScanRequest};

/// Why a remote partition failed.
#[derive(Debug)]
pub struct RemoteError {
    /// The node could not serve it now (unreachable, no leader, not hosted): another
    /// replica may.
    pub retry_elsewhere: bool,
    pub error: QueryError,
}

impl RemoteError {
    pub fn unreachable(node: u64, why: impl fmt::Display) -> RemoteError {
        RemoteError {
            retry_elsewhere: true,
            error: QueryError::new(ErrorKind::Unavailable, format!("node {node}: {why}")),
        }
    }

    /// Rebuilds the error a peer sent (see [`to_wire`]); text without the marker is an
    /// internal error.
    pub fn from_wire(node: u64, retry_elsewhere: bool, text: &str) -> RemoteError {
        let error = match parse_wire(text) {
            Some((kind, code, message)) => QueryError {
                kind,
                message: format!("node {node}: {message}"),
                code,
            },
            None => QueryError::new(ErrorKind::Internal, format!("node {node}: {text}")),
        };
        RemoteError {
            retry_elsewhere: retry_elsewhere || error.kind == ErrorKind::Unavailable,
            error,
        }
    }
}

const KINDS: &[(ErrorKind, &str)] = &[
    (ErrorKind::BadInput, "bad_input"),
    (ErrorKind::NotFound, "not_found"),
    (ErrorKind::AlreadyExists, "already_exists"),
    (ErrorKind::Unavailable, "unavailable"),
    (ErrorKind::DiskFull, "disk_full"),
    (ErrorKind::TooLarge, "too_large"),
    (ErrorKind::Timeout, "timeout"),
    (ErrorKind::TxAborted, "tx_aborted"),
    (ErrorKind::NotSupported, "not_supported"),
    (ErrorKind::Forbidden, "forbidden"),
    (ErrorKind::Unauthenticated, "unauthenticated"),
    (ErrorKind::Internal, "internal"),
];

/// SQLSTATEs a remote error may carry through (anything else falls back to its kind's).
const SQLSTATES: &[&str] = &[
    "42601", "42703", "22023", "22012", "22003", "22P02", "42883", "42804", "57014", "53100",
    "54000", "57P03", "0A000", "XX000", "42000", "42P01", "42501", "28000",
];

/// `[shoal:<kind>:<sqlstate>] message`, and whether the caller may retry elsewhere.
pub fn to_wire(e: &QueryError) -> (bool, String) {
    let kind = KINDS
        .iter()
        .find(|(k, _)| *k == e.kind)
        .map_or("internal", |(_, n)| n);
    (
        e.kind == ErrorKind::Unavailable,
        format!("[shoal:{kind}:{}] {}", e.sqlstate(), e.message),
    )
}

fn parse_wire(text: &str) -> Option<(ErrorKind, Option<&'static str>, String)> {
    let start = text.find("[shoal:")?;
    let rest = &text[start + 7..];
    let end = rest.find("] ")?;
    let (kind, code) = rest[..end].split_once(':')?;
    let kind = KINDS.iter().find(|(_, n)| *n == kind)?.0;
    let code = SQLSTATES.iter().find(|c| **c == code).copied();
    Some((kind, code, rest[end + 2..].to_string()))
}

/// Runs plan fragments on other nodes (the server implements it over the peer RPC).
#[async_trait::async_trait]
pub trait FragmentRunner: Send + Sync + 'static {
    /// Runs partition `partition` of the serialized `plan` on `node` and answers its
    /// output as a stream of Arrow IPC chunks (see [`ipc_chunks`]).
    async fn run(
        &self,
        node: u64,
        plan: Bytes,
        partition: u32,
    ) -> Result<BoxStream<'static, Result<Bytes, RemoteError>>, RemoteError>;
}

fn external(e: QueryError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Encodes a batch stream as Arrow IPC stream chunks of at most about `max_bytes` each.
/// Nothing is sent until the first batch (or the end) is there, so a failure to start —
/// no leader for the read index, say — arrives before any data and the caller can try
/// another replica.
pub fn ipc_chunks(
    stream: SendableRecordBatchStream,
    max_bytes: usize,
) -> BoxStream<'static, Result<Bytes, QueryError>> {
    let schema = stream.schema();
    let max_rows_bytes = (max_bytes / 2).max(64 * 1024);
    let state = (stream, None::<StreamWriter<Vec<u8>>>, false);
    futures::stream::try_unfold(state, move |(mut stream, mut writer, done)| {
        let schema = schema.clone();
        async move {
            if done {
                return Ok(None);
            }
            if writer.is_none() {
                writer = Some(StreamWriter::try_new(Vec::new(), &schema).map_err(arrow_err)?);
            }
            let w = writer.as_mut().expect("writer");
            match stream.next().await {
                Some(batch) => {
                    let batch = batch.map_err(QueryError::from)?;
                    for piece in split_batch(&batch, max_rows_bytes) {
                        w.write(&piece).map_err(arrow_err)?;
                    }
                    let chunk = Bytes::from(std::mem::take(w.get_mut()));
                    Ok(Some((chunk, (stream, writer, false))))
                }
                None => {
                    w.finish().map_err(arrow_err)?;
                    let chunk = Bytes::from(std::mem::take(w.get_mut()));
                    Ok(Some((chunk, (stream, writer, true))))
                }
            }
        }
    })
    .boxed()
}

fn arrow_err(e: datafusion::arrow::error::ArrowError) -> QueryError {
    QueryError::new(ErrorKind::Internal, format!("arrow ipc: {e}"))
}

/// Slices a batch into pieces of at most about `max_bytes` of array memory.
fn split_batch(batch: &RecordBatch, max_bytes: usize) -> Vec<RecordBatch> {
    let bytes = batch.get_array_memory_size();
    let rows = batch.num_rows();
    if bytes <= max_bytes || rows <= 1 {
        return vec![batch.clone()];
    }
    let pieces = bytes.div_ceil(max_bytes).min(rows);
    let per = rows.div_ceil(pieces);
    (0..rows)
        .step_by(per)
        .map(|off| batch.slice(off, per.min(rows - off)))
        .collect()
}

/// Decodes the chunks [`ipc_chunks`] produced back into batches.
fn decode_chunks(
    node: u64,
    first: Bytes,
    rest: BoxStream<'static, Result<Bytes, RemoteError>>,
) -> BoxStream<'static, DfResult<RecordBatch>> {
    let chunks = futures::stream::once(async move { Ok(first) })
        .chain(rest)
        .boxed();
    let state = (chunks, StreamDecoder::new());
    futures::stream::try_unfold(state, move |(mut chunks, mut decoder)| async move {
        match chunks.next().await {
            None => {
                decoder.finish().map_err(|e| external(ipc_error(node, e)))?;
                Ok(None)
            }
            Some(Err(e)) => Err(external(e.error)),
            Some(Ok(chunk)) => {
                let mut buf = Buffer::from(chunk);
                let mut out = vec![];
                while !buf.is_empty() {
                    match decoder.decode(&mut buf) {
                        Ok(Some(b)) => out.push(Ok(b)),
                        Ok(None) => {}
                        Err(e) => return Err(external(ipc_error(node, e))),
                    }
                }
                Ok(Some((futures::stream::iter(out), (chunks, decoder))))
            }
        }
    })
    .try_flatten()
    .boxed()
}

fn ipc_error(node: u64, e: datafusion::arrow::error::ArrowError) -> QueryError {
    QueryError::new(
        ErrorKind::Internal,
        format!("bad Arrow IPC from node {node}: {e}"),
    )
}

/// Opens partition `vshard` of `plan` on a replica of it: one pass over the hosts, starting
/// at a different one per vshard so reads spread over them.
async fn open_remote(
    registry: Arc<Registry>,
    runner: Arc<dyn FragmentRunner>,
    plan: Bytes,
    vshard: u32,
) -> DfResult<BoxStream<'static, DfResult<RecordBatch>>> {
    let hosts = registry.read_hosts(vshard);
    if hosts.is_empty() {
        return Err(external(registry.not_hosted(vshard).into()));
    }
    let mut last: Option<QueryError> = None;
    for node in hosts {
        let mut chunks = match runner.run(node, plan.clone(), vshard).await {
            Ok(c) => c,
            Err(e) if e.retry_elsewhere => {
                last = Some(e.error);
                continue;
            }
            Err(e) => return Err(external(e.error)),
        };
        match chunks.next().await {
            Some(Ok(first)) => return Ok(decode_chunks(node, first, chunks)),
            Some(Err(e)) if e.retry_elsewhere => last = Some(e.error),
            Some(Err(e)) => return Err(external(e.error)),
            None => {
                last = Some(QueryError::new(
                    ErrorKind::Unavailable,
                    format!("node {node} ended the stream of vshard {vshard} without data"),
                ))
            }
        }
    }
    let why = last.map_or_else(String::new, |e| e.message);
    Err(external(QueryError::new(
        ErrorKind::Unavailable,
        format!("no replica of vshard {vshard} could serve the scan (last: {why}); retry"),
    )))
}

/// Part of a plan with one partition per vshard, each run on a replica of that vshard.
pub struct ShardFragmentExec {
    fragment: Arc<dyn ExecutionPlan>,
    encoded: Bytes,
    registry: Arc<Registry>,
    runner: Arc<dyn FragmentRunner>,
    /// How many of the partitions run here and elsewhere, as planned (for EXPLAIN).
    local: usize,
}

impl fmt::Debug for ShardFragmentExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShardFragmentExec({} bytes)", self.encoded.len())
    }
}

impl DisplayAs for ShardFragmentExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let n = self.fragment.output_partitioning().partition_count();
        write!(
            f,
            "ShardFragmentExec: vshards={n}, local={}, remote={}, fragment_bytes={}",
            self.local,
            n - self.local,
            self.encoded.len()
        )
    }
}

impl ShardFragmentExec {
    /// Whether the vshard scan at the bottom of the fragment reads vshard `v`.
    fn scan_reads(&self, v: u32) -> bool {
        let mut plan = self.fragment.clone();
        loop {
            if let Some(scan) = plan.downcast_ref::<ShardScanExec>() {
                return scan.request().reads(v);
            }
            let next = match plan.children().first() {
                Some(c) => (*c).clone(),
                None => return true,
            };
            plan = next;
        }
    }
}

impl ExecutionPlan for ShardFragmentExec {
    fn name(&self) -> &'static str {
        "ShardFragmentExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.fragment.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.fragment]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let fragment = children.pop().ok_or_else(|| {
            DataFusionError::Internal("ShardFragmentExec needs its fragment".into())
        })?;
        let codec = ShoalCodec::new(self.registry.clone());
        let encoded = codec.encode(fragment.clone())?;
        Ok(Arc::new(ShardFragmentExec {
            fragment,
            encoded,
            registry: self.registry.clone(),
            runner: self.runner.clone(),
            local: self.local,
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let vshard = partition as u32;
        // Hosted here, or a vshard the scan below skips anyway (its partition is empty
        // wherever it runs): no round trip.
        if self.registry.store(vshard).is_some() || !self.scan_reads(vshard) {
            return self.fragment.execute(partition, context);
        }
        let open = open_remote(
            self.registry.clone(),
            self.runner.clone(),
            self.encoded.clone(),
            vshard,
        );
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.fragment.schema(),
            futures::stream::once(open).try_flatten(),
        )))
    }
}

/// Whether `plan` runs partition by partition on its input's partitions, so partition `v`
/// of it only needs partition `v` (vshard `v`) of the scan below.
fn per_partition(plan: &dyn ExecutionPlan) -> bool {
    if plan.is::<ProjectionExec>() || plan.is::<FilterExec>() || plan.is::<LocalLimitExec>() {
        return true;
    }
    #[allow(deprecated)]
    if plan.is::<datafusion::physical_plan::coalesce_batches::CoalesceBatchesExec>() {
        return true;
    }
    if let Some(a) = plan.downcast_ref::<AggregateExec>() {
        return *a.mode() == AggregateMode::Partial;
    }
    if let Some(s) = plan.downcast_ref::<SortExec>() {
        return s.preserve_partitioning();
    }
    false
}

/// The chain of per-partition operators from `plan` down to a `ShardScanExec`, if `plan`
/// heads one: the nodes from the top down.
fn fragment_chain(plan: &Arc<dyn ExecutionPlan>) -> Option<Vec<Arc<dyn ExecutionPlan>>> {
    if plan.is::<ShardScanExec>() {
        return Some(vec![plan.clone()]);
    }
    if !per_partition(plan.as_ref()) {
        return None;
    }
    let children = plan.children();
    let [child] = children.as_slice() else {
        return None;
    };
    if child.output_partitioning().partition_count() != plan.output_partitioning().partition_count()
    {
        return None;
    }
    let mut rest = fragment_chain(child)?;
    rest.insert(0, plan.clone());
    Some(rest)
}

/// The physical optimizer rule that sends work on vshards this node does not host to nodes
/// that do (see the module docs). A node hosting every vshard plans as a single node does.
pub struct DistributeScans {
    registry: Arc<Registry>,
    runner: Arc<dyn FragmentRunner>,
}

impl fmt::Debug for DistributeScans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DistributeScans")
    }
}

impl DistributeScans {
    pub fn new(registry: Arc<Registry>, runner: Arc<dyn FragmentRunner>) -> DistributeScans {
        DistributeScans { registry, runner }
    }

    fn local_vshards(&self) -> usize {
        (0..self.registry.vshards())
            .filter(|v| self.registry.store(*v).is_some())
            .count()
    }

    fn rewrite(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        local: usize,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if let Some(chain) = fragment_chain(&plan) {
            // The longest chain that serializes; the bare scan always does.
            let codec = ShoalCodec::new(self.registry.clone());
            for top in chain {
                match codec.encode(top.clone()) {
                    Ok(encoded) => {
                        return Ok(Arc::new(ShardFragmentExec {
                            fragment: top,
                            encoded,
                            registry: self.registry.clone(),
                            runner: self.runner.clone(),
                            local,
                        }))
                    }
                    Err(e) => {
                        tracing::debug!(node = top.name(), error = %e, "cannot ship this operator; trying below it")
                    }
                }
            }
            return Err(DataFusionError::Internal(
                "a vshard scan did not serialize".into(),
            ));
        }
        let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
        if children.is_empty() {
            return Ok(plan);
        }
        let new = children
            .iter()
            .map(|c| self.rewrite(c.clone(), local))
            .collect::<DfResult<Vec<_>>>()?;
        replace_children_if_necessary(plan, new)
    }
}

impl PhysicalOptimizerRule for DistributeScans {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let local = self.local_vshards();
        if local == self.registry.vshards() as usize {
            return Ok(plan);
        }
        self.rewrite(plan, local)
    }

    fn name(&self) -> &str {
        "shoal_distribute_scans"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `ShardScanExec` on the wire.
#[derive(Clone, PartialEq, prost::Message)]
struct ShardScanNode {
    #[prost(uint64, tag = "1")]
    table_id: u64,
    #[prost(message, optional, tag = "2")]
    table_schema: Option<datafusion_proto::protobuf::Schema>,
    #[prost(bool, tag = "3")]
    projected: bool,
    #[prost(uint32, repeated, tag = "4")]
    projection: Vec<u32>,
    #[prost(message, optional, tag = "5")]
    predicate: Option<PhysicalExprNode>,
    #[prost(message, optional, tag = "6")]
    key_predicate: Option<PhysicalExprNode>,
    #[prost(uint64, optional, tag = "7")]
    limit: Option<u64>,
    #[prost(int64, optional, tag = "8")]
    min_ts: Option<i64>,
    #[prost(int64, optional, tag = "9")]
    max_ts: Option<i64>,
    #[prost(string, tag = "10")]
    consistency: String,
    #[prost(bool, tag = "11")]
    some_vshards: bool,
    #[prost(uint32, repeated, tag = "12")]
    only_vshards: Vec<u32>,
}

/// datafusion-proto's extension codec for Shoal's plan nodes. A decoded scan reads this
/// node's replicas.
pub struct ShoalCodec {
    registry: Arc<Registry>,
}

impl fmt::Debug for ShoalCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShoalCodec")
    }
}

impl ShoalCodec {
    pub fn new(registry: Arc<Registry>) -> ShoalCodec {
        ShoalCodec { registry }
    }

    pub fn encode(&self, plan: Arc<dyn ExecutionPlan>) -> DfResult<Bytes> {
        datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(plan, self)
    }

    pub fn decode(&self, bytes: &[u8], ctx: &TaskContext) -> DfResult<Arc<dyn ExecutionPlan>> {
        datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(bytes, ctx, self)
    }
}

impl PhysicalExtensionCodec for ShoalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        _inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let node = ShardScanNode::decode(buf)
            .map_err(|e| DataFusionError::Internal(format!("bad ShardScanNode: {e}")))?;
        let schema: Schema = node
            .table_schema
            .as_ref()
            .ok_or_else(|| DataFusionError::Internal("ShardScanNode without a schema".into()))?
            .try_into()
            .map_err(|e| DataFusionError::Internal(format!("ShardScanNode schema: {e}")))?;
        let expr = |e: &Option<PhysicalExprNode>| -> DfResult<Option<Arc<dyn PhysicalExpr>>> {
            e.as_ref()
                .map(|e| parse_physical_expr(e, ctx, &schema, self))
                .transpose()
        };
        let consistency = ReadConsistency::parse(&node.consistency)
            .map_err(|e| DataFusionError::Internal(e.message))?;
        let request = ShardScanRequest {
            table_id: node.table_id,
            table_schema: SchemaRef::new(schema.clone()),
            projection: node
                .projected
                .then(|| node.projection.iter().map(|i| *i as usize).collect()),
            predicate: expr(&node.predicate)?,
            key_predicate: expr(&node.key_predicate)?,
            limit: node.limit.map(|l| l as usize),
            min_ts: node.min_ts,
            max_ts: node.max_ts,
            only_vshards: node.some_vshards.then_some(node.only_vshards),
            consistency,
        };
        Ok(Arc::new(ShardScanExec::new(request, self.registry.clone())))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        let scan = node.downcast_ref::<ShardScanExec>().ok_or_else(|| {
            DataFusionError::NotImplemented(format!("{} cannot be sent to a peer", node.name()))
        })?;
        let r = scan.request();
        let expr = |e: &Option<Arc<dyn PhysicalExpr>>| -> DfResult<Option<PhysicalExprNode>> {
            e.as_ref()
                .map(|e| serialize_physical_expr(e, self))
                .transpose()
        };
        let msg = ShardScanNode {
            table_id: r.table_id,
            table_schema: Some(
                r.table_schema
                    .as_ref()
                    .try_into()
                    .map_err(|e| DataFusionError::Internal(format!("schema to proto: {e}")))?,
            ),
            projected: r.projection.is_some(),
            projection: r.projection.iter().flatten().map(|i| *i as u32).collect(),
            predicate: expr(&r.predicate)?,
            key_predicate: expr(&r.key_predicate)?,
            limit: r.limit.map(|l| l as u64),
            min_ts: r.min_ts,
            max_ts: r.max_ts,
            consistency: r.consistency.to_string(),
            some_vshards: r.only_vshards.is_some(),
            only_vshards: r.only_vshards.clone().unwrap_or_default(),
        };
        msg.encode(buf)
            .map_err(|e| DataFusionError::Internal(format!("encoding ShardScanNode: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_kind_and_sqlstate_across_the_wire() {
        let e = QueryError::bad_input("division by zero").with_code("22012");
        let (retry, text) = to_wire(&e);
        assert!(!retry);
        let back = RemoteError::from_wire(3, false, &format!("InvalidArgument: {text}"));
        assert!(!back.retry_elsewhere);
        assert_eq!(back.error.kind, ErrorKind::BadInput);
        assert_eq!(back.error.sqlstate(), "22012");
        assert_eq!(back.error.message, "node 3: division by zero");

        let (retry, text) = to_wire(&QueryError::new(ErrorKind::Unavailable, "no leader"));
        assert!(retry);
        let back = RemoteError::from_wire(2, false, &text);
        assert!(
            back.retry_elsewhere,
            "unavailable is retried on another replica"
        );

        let back = RemoteError::from_wire(2, false, "something else entirely");
        assert_eq!(back.error.kind, ErrorKind::Internal);
    }

    #[test]
    fn large_batches_are_split_and_small_ones_kept() {
        use datafusion::arrow::array::Int64Array;
        let a = Int64Array::from_iter_values(0..100_000);
        let batch = RecordBatch::try_from_iter([("v", Arc::new(a) as _)]).expect("batch");
        let pieces = split_batch(&batch, 64 * 1024);
        assert!(pieces.len() > 1);
        assert_eq!(pieces.iter().map(|b| b.num_rows()).sum::<usize>(), 100_000);
        // A slice shares its parent's buffers, so the bound is on rows: at most the share
        // of the rows that fits 64 KiB at the batch's bytes per row.
        let bytes = batch.get_array_memory_size();
        let per_piece = (100_000usize * 64 * 1024).div_ceil(bytes) + 1;
        assert!(
            pieces.iter().all(|b| b.num_rows() <= per_piece),
            "{per_piece}"
        );
        assert_eq!(split_batch(&batch, usize::MAX).len(), 1);
    }

    #[tokio::test]
    async fn ipc_chunks_round_trip() {
        use datafusion::arrow::array::{Int64Array, StringArray};
        let schema = Arc::new(Schema::new(vec![
            datafusion::arrow::datatypes::Field::new(
                "n",
                datafusion::arrow::datatypes::DataType::Int64,
                false,
            ),
            datafusion::arrow::datatypes::Field::new(
                "s",
                datafusion::arrow::datatypes::DataType::Utf8,
                true,
            ),
        ]));
        let batches: Vec<RecordBatch> = (0..3)
            .map(|i| {
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(Int64Array::from_iter_values(i * 10..i * 10 + 10)),
                        Arc::new(StringArray::from_iter_values(
                            (0..10).map(|j| format!("r{i}-{j}")),
                        )),
                    ],
                )
                .expect("batch")
            })
            .collect();
        let input = futures::stream::iter(batches.clone().into_iter().map(Ok));
        let stream: SendableRecordBatchStream =
            Box::pin(RecordBatchStreamAdapter::new(schema.clone(), input));
        let chunks: Vec<Bytes> = ipc_chunks(stream, 1024 * 1024)
            .try_collect()
            .await
            .expect("chunks");
        assert_eq!(chunks.len(), 4, "one per batch and the end marker");
        let mut it = chunks.into_iter();
        let first = it.next().expect("first");
        let rest = futures::stream::iter(it.map(Ok)).boxed();
        let back: Vec<RecordBatch> = decode_chunks(1, first, rest)
            .try_collect()
            .await
            .expect("decoded");
        assert_eq!(back, batches);
    }
}
