//! The write path shared by every client protocol: split rows by vshard, encode each part as
//! Arrow IPC and propose it to that vshard's group; acknowledge when every part committed.
//!
//! Idempotency: a request key (a hash of the request, or a client-given idempotency key)
//! derives one request id per (table, vshard) part. A retried request whose parts already
//! committed is recognised by each vshard and adds nothing, so a client may retry a whole
//! request after any failure without duplicating rows.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::Int32Type;
use datafusion::arrow;
use shoal_common::hash::{partition_hash, vshard_for_key};
use shoal_consensus::{Command, Registry, Response, TableEntry};
use shoal_storage::arrow_schema::{annotate_batch, compact_dictionaries};

use crate::error::{ErrorKind, QueryError, Result};

/// What a committed write did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    pub rows: u64,
    /// Parts (one per touched vshard) proposed.
    pub parts: u32,
    /// Parts skipped because their request id was already applied (a retry).
    pub duplicate_parts: u32,
}

#[derive(Clone)]
pub struct Writer {
    registry: Arc<Registry>,
}

impl Writer {
    pub fn new(registry: Arc<Registry>) -> Writer {
        Writer { registry }
    }

    /// Writes `batch`, whose columns are a subset of `table`'s, named and typed as in the
    /// catalog. Returns once every vshard part has committed.
    pub async fn write(
        &self,
        table: &TableEntry,
        batch: RecordBatch,
        request_key: Option<u64>,
    ) -> Result<WriteOutcome> {
        self.write_many(&[(table, batch)], request_key).await
    }

    /// Writes batches of several tables as one request: all parts are proposed concurrently.
    pub async fn write_many(
        &self,
        batches: &[(&TableEntry, RecordBatch)],
        request_key: Option<u64>,
    ) -> Result<WriteOutcome> {
        self.registry.check_disk()?;
        let vshards = self.registry.vshards();
        let mut proposals = vec![];
        let mut outcome = WriteOutcome::default();
        for (table, batch) in batches {
            if batch.num_rows() == 0 {
                continue;
            }
            outcome.rows += batch.num_rows() as u64;
            let batch = with_partition_meta(table, batch)?;
            for (vshard, part) in split_by_vshard(table, &batch, vshards)? {
                let ipc = shoal_storage::ipc::encode_batch(&part)
                    .map_err(|e| QueryError::new(ErrorKind::Internal, e.to_string()))?;
                let request_id = request_key.map(|k| part_request_id(k, table.id, vshard));
                proposals.push((
                    vshard,
                    Command::Insert {
                        table_id: table.id,
                        request_id,
                        ipc,
                    },
                ));
            }
        }
        outcome.parts = proposals.len() as u32;
        let results = self.registry.insert_many(proposals).await;
        let mut failed = vec![];
        let mut first_err = None;
        for r in results {
            match r {
                Ok(Response::Duplicate) => outcome.duplicate_parts += 1,
                Ok(Response::Rejected(msg)) => {
                    first_err.get_or_insert(QueryError::new(ErrorKind::Internal, msg));
                    failed.push(());
                }
                Ok(_) => {}
                Err(e) => {
                    first_err.get_or_insert(QueryError::from(e));
                    failed.push(());
                }
            }
        }
        if let Some(mut e) = first_err {
            e.message = format!(
                "{} of {} parts of this write failed; the write is not acknowledged. Retrying the same request (same body or idempotency key) is safe: parts already applied are not applied twice. First error: {}",
                failed.len(),
                outcome.parts,
                e.message
            );
            return Err(e);
        }
        Ok(outcome)
    }
}

/// A stable request id for one part of a request.
fn part_request_id(request_key: u64, table_id: u64, vshard: u32) -> u64 {
    let mut bytes = [0u8; 20];
    bytes[..8].copy_from_slice(&request_key.to_le_bytes());
    bytes[8..16].copy_from_slice(&table_id.to_le_bytes());
    bytes[16..].copy_from_slice(&vshard.to_le_bytes());
    partition_hash(&bytes)
}

fn with_partition_meta(table: &TableEntry, batch: &RecordBatch) -> Result<RecordBatch> {
    annotate_batch(&table.schema, batch)
        .map_err(|e| QueryError::new(ErrorKind::Internal, e.to_string()))
}

/// Splits a batch into per-vshard batches by the partition key's hash. A dictionary-encoded
/// key (line protocol's tags) is hashed once per distinct value, and each part's
/// dictionaries are cut down to the values its rows use.
pub fn split_by_vshard(
    table: &TableEntry,
    batch: &RecordBatch,
    vshards: u32,
) -> Result<Vec<(u32, RecordBatch)>> {
    let key_col = table
        .schema
        .partition_key
        .as_ref()
        .and_then(|k| batch.column_by_name(k));
    let Some(col) = key_col else {
        // No partition key (or none of these rows carries it): every row hashes the empty key.
        return Ok(vec![(vshard_for_key(b"", vshards), batch.clone())]);
    };
    let of_key = |key: Option<&str>| vshard_for_key(key.unwrap_or("").as_bytes(), vshards);
    let row_vshards: Vec<u32> = if let Some(dict) = col.as_dictionary_opt::<Int32Type>() {
        let values = dict
            .values()
            .as_string_opt::<i32>()
            .ok_or_else(|| QueryError::bad_input("the partition key column must be a string"))?;
        let of_value: Vec<u32> = values.iter().map(of_key).collect();
        dict.keys()
            .iter()
            .map(|k| match k {
                Some(k) => of_value
                    .get(k as usize)
                    .copied()
                    .unwrap_or_else(|| of_key(None)),
                None => of_key(None),
            })
            .collect()
    } else {
        let keys = col
            .as_string_opt::<i32>()
            .ok_or_else(|| QueryError::bad_input("the partition key column must be a string"))?;
        keys.iter().map(of_key).collect()
    };
    let mut rows: Vec<Vec<u32>> = vec![vec![]; vshards as usize];
    for (i, v) in row_vshards.into_iter().enumerate() {
        rows[v as usize].push(i as u32);
    }
    let touched: Vec<usize> = (0..rows.len()).filter(|v| !rows[*v].is_empty()).collect();
    if touched.len() == 1 {
        return Ok(vec![(touched[0] as u32, batch.clone())]);
    }
    let internal =
        |e: arrow::error::ArrowError| QueryError::new(ErrorKind::Internal, e.to_string());
    touched
        .into_iter()
        .map(|v| {
            let idx = UInt32Array::from(std::mem::take(&mut rows[v]));
            let part = take_record_batch(batch, &idx).map_err(internal)?;
            // The parser's dictionaries hold each value once; a part keeps those it uses.
            let part = compact_dictionaries(&part, false).map_err(internal)?;
            Ok((v as u32, part))
        })
        .collect()
}
