//! Reading flushed parts directly with the Parquet reader, for scans that want the stored
//! form of the data (dictionary-encoded tags) and no per-file planning: the fast aggregate
//! path in `shoal-query` reads parts this way.
//!
//! A part is immutable, so its footer (the Parquet metadata and Arrow schema) is parsed once
//! and cached in the store ([`MetaCache`], bounded by [`META_CACHE_MAX_PARTS`]); later reads
//! of the part start at its row groups. Row groups are skipped by their statistics: the
//! `ts` range and, when the caller pins the partition key to some values, the key's
//! min/max. Columns the part lacks (added to the table after it was written) come back as
//! nulls; columns stored in another form are cast to the asked type.
//!
//! Decoded column chunks (one column of one row group, as Arrow arrays) are kept in a
//! [`ColumnCache`] that every store of a node shares, bounded in bytes
//! (`column_cache_bytes`) and evicted least recently used first. A repeated scan of the
//! same hours then skips decompression and decoding. A chunk is admitted on its second
//! decode, so a one-off scan neither evicts the working set nor pays to keep what it
//! read. Entries are keyed by the store's cache epoch, which is new for every opened store
//! and every installed snapshot, so a part file replaced under the same name is never
//! served from an older decode.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch};
use arrow::datatypes::{Schema, SchemaRef};
use parking_lot::Mutex;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;
use parquet::file::statistics::Statistics;
use shoal_common::schema::TIME_COLUMN;

use crate::{Error, Result};

/// Parts whose footers one store keeps parsed; past it the cache is cleared and refilled.
pub const META_CACHE_MAX_PARTS: usize = 4096;
/// Rows per batch a part read yields.
pub const READ_BATCH_ROWS: usize = 64 * 1024;

/// Default bound of a node's [`ColumnCache`]: the decoded columns of a day of ticks of
/// the benchmark's size (10 M rows) fit with room to spare.
pub const DEFAULT_COLUMN_CACHE_BYTES: u64 = 1024 * 1024 * 1024;
/// A chunk larger than this share of the cache's bound is never cached: one huge row group
/// must not evict everything else.
const COLUMN_CACHE_MAX_SHARE: usize = 8;
/// Chunks decoded once and not (yet) cached that the cache remembers, to admit them on
/// their second decode; past it the memory is cleared.
const COLUMN_CACHE_MAX_SEEN: usize = 64 * 1024;
/// On overflow, entries are evicted until the cache is at this fraction (percent) of its
/// bound, so eviction runs once per many inserts instead of on every one.
const COLUMN_CACHE_LOW_WATER_PCT: usize = 90;

/// A fresh cache epoch: stores take one when opened and when a snapshot is installed.
pub fn next_cache_epoch() -> u64 {
    static EPOCH: AtomicU64 = AtomicU64::new(1);
    EPOCH.fetch_add(1, Ordering::Relaxed)
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct ChunkKey {
    epoch: u64,
    path: PathBuf,
    row_group: usize,
    /// Root column index in the part's Arrow schema.
    column: usize,
}

struct Chunk {
    /// The column's arrays, one per batch of the row group ([`READ_BATCH_ROWS`] each).
    arrays: Arc<[ArrayRef]>,
    bytes: usize,
    used: u64,
}

#[derive(Default)]
struct CacheState {
    chunks: HashMap<ChunkKey, Chunk>,
    /// Chunks decoded once since they were last cached (admission on the second decode).
    seen: std::collections::HashSet<ChunkKey>,
    bytes: usize,
    tick: u64,
    hits: u64,
    misses: u64,
    evictions: u64,
}

/// Counters of a [`ColumnCache`], for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ColumnCacheStats {
    pub chunks: u64,
    pub bytes: u64,
    pub limit_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

/// Decoded column chunks of flushed parts, shared by the stores of a node, bounded in bytes.
pub struct ColumnCache {
    limit: usize,
    state: Mutex<CacheState>,
}

impl std::fmt::Debug for ColumnCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColumnCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Default for ColumnCache {
    fn default() -> Self {
        ColumnCache::new(DEFAULT_COLUMN_CACHE_BYTES)
    }
}

impl ColumnCache {
    /// A cache holding at most `limit_bytes` of decoded arrays; 0 turns it off.
    pub fn new(limit_bytes: u64) -> ColumnCache {
        ColumnCache {
            limit: usize::try_from(limit_bytes).unwrap_or(usize::MAX),
            state: Mutex::new(CacheState::default()),
        }
    }

    pub fn stats(&self) -> ColumnCacheStats {
        let st = self.state.lock();
        ColumnCacheStats {
            chunks: st.chunks.len() as u64,
            bytes: st.bytes as u64,
            limit_bytes: self.limit as u64,
            hits: st.hits,
            misses: st.misses,
            evictions: st.evictions,
        }
    }

    fn get(&self, key: &ChunkKey) -> Option<Arc<[ArrayRef]>> {
        if self.limit == 0 {
            return None;
        }
        let mut st = self.state.lock();
        st.tick += 1;
        let tick = st.tick;
        match st.chunks.get_mut(key) {
            Some(c) => {
                c.used = tick;
                let arrays = c.arrays.clone();
                st.hits += 1;
                Some(arrays)
            }
            None => {
                st.misses += 1;
                None
            }
        }
    }

    fn put(&self, key: ChunkKey, arrays: Arc<[ArrayRef]>) {
        let bytes: usize = arrays.iter().map(|a| a.get_array_memory_size()).sum();
        if self.limit == 0 || bytes > self.limit / COLUMN_CACHE_MAX_SHARE {
            return;
        }
        let mut st = self.state.lock();
        // A chunk is cached on its second decode: one scan of data nobody reads again
        // (a backfill, an ad-hoc query over old days) neither evicts the working set nor
        // pays for keeping what it read.
        if !st.seen.remove(&key) {
            if st.seen.len() >= COLUMN_CACHE_MAX_SEEN {
                st.seen.clear();
            }
            st.seen.insert(key);
            return;
        }
        st.tick += 1;
        let used = st.tick;
        if let Some(old) = st.chunks.insert(
            key,
            Chunk {
                arrays,
                bytes,
                used,
            },
        ) {
            st.bytes -= old.bytes;
        }
        st.bytes += bytes;
        if st.bytes > self.limit {
            let low = self.limit / 100 * COLUMN_CACHE_LOW_WATER_PCT;
            let mut by_age: Vec<(u64, ChunkKey)> =
                st.chunks.iter().map(|(k, c)| (c.used, k.clone())).collect();
            by_age.sort_unstable_by_key(|(used, _)| *used);
            for (_, k) in by_age {
                if st.bytes <= low {
                    break;
                }
                if let Some(c) = st.chunks.remove(&k) {
                    st.bytes -= c.bytes;
                    st.evictions += 1;
                }
            }
        }
    }

    /// Drops every chunk of cache epoch `epoch` (a store closed or replaced its parts).
    pub fn forget_epoch(&self, epoch: u64) {
        self.retain(|k| k.epoch != epoch);
    }

    /// Drops chunks of `epoch` whose part no longer exists.
    fn retain_parts(&self, epoch: u64, live: &impl Fn(&Path) -> bool) {
        self.retain(|k| k.epoch != epoch || live(&k.path));
    }

    /// Keeps the chunks (and the once-decoded keys) for which `keep` holds.
    fn retain(&self, keep: impl Fn(&ChunkKey) -> bool) {
        let mut st = self.state.lock();
        st.seen.retain(|k| keep(k));
        let mut freed = 0;
        st.chunks.retain(|k, c| {
            let kept = keep(k);
            if !kept {
                freed += c.bytes;
            }
            kept
        });
        st.bytes -= freed;
    }
}

#[cfg(test)]
impl ChunkKey {
    pub(crate) fn new(epoch: u64, path: &str, row_group: usize, column: usize) -> ChunkKey {
        ChunkKey {
            epoch,
            path: PathBuf::from(path),
            row_group,
            column,
        }
    }
}

#[cfg(test)]
impl ColumnCache {
    pub(crate) fn put_for_test(&self, key: ChunkKey, arrays: Arc<[ArrayRef]>) {
        self.put(key, arrays)
    }

    pub(crate) fn get_for_test(&self, key: &ChunkKey) -> bool {
        self.get(key).is_some()
    }
}

/// The node-wide cache as the stores hold it.
pub type SharedColumnCache = Arc<ColumnCache>;

/// Parsed footers of the parts of one store, by path, and the store's handle on the node's
/// [`ColumnCache`].
pub struct MetaCache {
    parts: Mutex<HashMap<PathBuf, ArrowReaderMetadata>>,
    columns: SharedColumnCache,
    epoch: AtomicU64,
}

impl MetaCache {
    pub fn new(columns: SharedColumnCache) -> MetaCache {
        MetaCache {
            parts: Mutex::default(),
            columns,
            epoch: AtomicU64::new(next_cache_epoch()),
        }
    }

    fn get(&self, path: &Path, file: &File) -> Result<ArrowReaderMetadata> {
        if let Some(m) = self.parts.lock().get(path) {
            return Ok(m.clone());
        }
        let meta = ArrowReaderMetadata::load(file, ArrowReaderOptions::new())?;
        let mut parts = self.parts.lock();
        if parts.len() >= META_CACHE_MAX_PARTS {
            parts.clear();
        }
        parts.insert(path.to_path_buf(), meta.clone());
        Ok(meta)
    }

    /// Forgets parts that no longer exist.
    pub fn retain(&self, live: impl Fn(&Path) -> bool) {
        self.parts.lock().retain(|p, _| live(p));
        self.columns
            .retain_parts(self.epoch.load(Ordering::Acquire), &live);
    }

    /// Forgets everything cached about this store's parts: its files were replaced (a
    /// snapshot was installed), so a path may now hold other data.
    pub fn reset(&self) {
        self.parts.lock().clear();
        let old = self.epoch.swap(next_cache_epoch(), Ordering::AcqRel);
        self.columns.forget_epoch(old);
    }
}

impl Drop for MetaCache {
    fn drop(&mut self) {
        self.columns.forget_epoch(*self.epoch.get_mut());
    }
}

/// What to read of one part.
pub struct PartRead<'a> {
    /// The output schema: names and types of the columns wanted, in order.
    pub schema: SchemaRef,
    /// Only rows with `ts` in `[min_ts, max_ts]` are needed (row groups outside are skipped;
    /// rows inside a kept row group are not filtered).
    pub min_ts: Option<i64>,
    pub max_ts: Option<i64>,
    /// Only rows whose `column` has one of `values` are needed (row-group pruning only).
    pub key: Option<(&'a str, &'a [String])>,
    /// Read only this reader's share of the row groups left after pruning.
    pub split: Option<RowGroupSplit>,
    /// A row group whose `ts` statistics `[lo, hi]` make this true is read without decoding
    /// `ts`: the column comes back as nulls, so its field in `schema` must be nullable. For
    /// a caller that reads `ts` only to filter rows and knows that every row of such a row
    /// group passes (an aggregate over whole hours never touches their timestamps).
    pub ts_unread_within: Option<&'a dyn Fn(i64, i64) -> bool>,
}

/// Row groups dealt round-robin to `count` readers of the same parts: the `k`-th row group
/// left after pruning (counting on from `seen`, the row groups of earlier parts) goes to
/// reader `(seen + k) % count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowGroupSplit {
    pub seen: usize,
    pub index: usize,
    pub count: usize,
}

/// Batches of one part, in the asked schema, row group by row group: a batch never spans
/// two row groups, so a dictionary-encoded column keeps its row group's dictionary instead
/// of being expanded and encoded again. Each row group's columns come from the
/// [`ColumnCache`] where they are there, and are decoded (then cached) where not.
pub struct PartBatches {
    file: File,
    path: PathBuf,
    epoch: u64,
    meta: ArrowReaderMetadata,
    /// Root columns of the part to read, ascending (the order the Parquet reader yields).
    roots: Vec<usize>,
    columns: SharedColumnCache,
    row_groups: std::vec::IntoIter<RowGroupRead>,
    /// The root of `ts` among `roots`.
    ts_root: Option<usize>,
    current_ts: Option<(i64, i64)>,
    pending: std::vec::IntoIter<RecordBatch>,
    schema: SchemaRef,
    cached: usize,
    decoded: usize,
    matched: usize,
}

/// One row group a part read yields.
struct RowGroupRead {
    index: usize,
    /// Its `ts` range, from the statistics where known.
    ts: Option<(i64, i64)>,
    /// `ts` is left unread in it ([`PartRead::ts_unread_within`]).
    ts_unread: bool,
}

impl PartBatches {
    /// Column chunks (one column of one row group) served from the cache so far.
    pub fn chunks_cached(&self) -> usize {
        self.cached
    }

    /// Column chunks decoded from the file so far.
    pub fn chunks_decoded(&self) -> usize {
        self.decoded
    }

    /// Row groups of the part left after pruning, before a [`RowGroupSplit`] took its share.
    pub fn row_groups_matched(&self) -> usize {
        self.matched
    }

    /// Bounds of `ts` in the row group the last batch came from (a batch's own range is
    /// inside them), when the part's statistics give them.
    pub fn ts_bounds(&self) -> Option<(i64, i64)> {
        self.current_ts
    }

    /// Rows per batch when reading row group `rg`: [`READ_BATCH_ROWS`], or the row group's
    /// size when smaller, so the decoded buffers (kept by the cache) are no larger than
    /// their rows. The same for every read of the row group, so cached columns line up.
    fn batch_rows(&self, rg: usize) -> usize {
        let rows = self.meta.metadata().row_group(rg).num_rows();
        usize::try_from(rows).unwrap_or(0).clamp(1, READ_BATCH_ROWS)
    }

    /// Decodes columns `roots` (ascending) of row group `rg`.
    fn decode(&self, rg: usize, roots: &[usize]) -> Result<Vec<RecordBatch>> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| Error::io("reopening a part".to_string(), e))?;
        let mask = ProjectionMask::roots(
            self.meta.metadata().file_metadata().schema_descr(),
            roots.iter().copied(),
        );
        ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.meta.clone())
            .with_projection(mask)
            .with_row_groups(vec![rg])
            .with_batch_size(self.batch_rows(rg))
            .build()?
            .map(|b| b.map_err(Error::from))
            .collect()
    }

    fn key(&self, rg: usize, column: usize) -> ChunkKey {
        ChunkKey {
            epoch: self.epoch,
            path: self.path.clone(),
            row_group: rg,
            column,
        }
    }

    /// Row group `rg` as batches of the part's `roots` columns (less `ts` where the caller
    /// does without it).
    fn read_row_group(&mut self, rg: usize, ts_unread: bool) -> Result<Vec<RecordBatch>> {
        let rows = usize::try_from(self.meta.metadata().row_group(rg).num_rows()).unwrap_or(0);
        let roots: Cow<'_, [usize]> = match self.ts_root {
            Some(ts) if ts_unread => self.roots.iter().copied().filter(|&c| c != ts).collect(),
            _ => Cow::Borrowed(&self.roots),
        };
        let mut cols: Vec<Option<Arc<[ArrayRef]>>> = roots
            .iter()
            .map(|&c| self.columns.get(&self.key(rg, c)))
            .collect();
        let missing: Vec<usize> = (0..roots.len()).filter(|&i| cols[i].is_none()).collect();
        self.cached += roots.len() - missing.len();
        self.decoded += missing.len();
        if !missing.is_empty() {
            let wanted: Vec<usize> = missing.iter().map(|&i| roots[i]).collect();
            let decoded = self.decode(rg, &wanted)?;
            for (j, &i) in missing.iter().enumerate() {
                let arrays: Arc<[ArrayRef]> = decoded.iter().map(|b| b.column(j).clone()).collect();
                self.columns.put(self.key(rg, roots[i]), arrays.clone());
                cols[i] = Some(arrays);
            }
        }
        let cols: Vec<Arc<[ArrayRef]>> = cols.into_iter().flatten().collect();
        let lens: Vec<usize> = match cols.first() {
            Some(first) => first.iter().map(|a| a.len()).collect(),
            None => {
                let per = self.batch_rows(rg);
                (0..rows.div_ceil(per))
                    .map(|i| (rows - i * per).min(per))
                    .collect()
            }
        };
        let aligned = cols
            .iter()
            .all(|c| c.len() == lens.len() && c.iter().zip(&lens).all(|(a, &n)| a.len() == n));
        if !aligned {
            // Chunks cached by an earlier read split the row group differently: read it
            // whole now rather than stitch.
            return self.decode(rg, &roots);
        }
        let file_schema = self.meta.schema();
        let schema = Arc::new(Schema::new(
            roots
                .iter()
                .map(|&c| file_schema.field(c).clone())
                .collect::<Vec<_>>(),
        ));
        lens.iter()
            .enumerate()
            .map(|(b, &n)| {
                let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(n));
                let columns = cols.iter().map(|c| c[b].clone()).collect();
                Ok(RecordBatch::try_new_with_options(
                    schema.clone(),
                    columns,
                    &options,
                )?)
            })
            .collect()
    }
}

impl Iterator for PartBatches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(b) = self.pending.next() {
                return Some(conform(&b, &self.schema));
            }
            let rg = self.row_groups.next()?;
            self.current_ts = rg.ts;
            match self.read_row_group(rg.index, rg.ts_unread) {
                Ok(batches) => self.pending = batches.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Projects `batch` onto `schema` by name: missing columns are nulls, others are cast.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => arrow::compute::cast(c, f.data_type()),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    // (A count(*) asks for no columns: the batch still carries its row count.)
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &options,
    )?)
}

/// Opens `path` for reading `req`.
pub fn read_part(cache: &MetaCache, path: &Path, req: &PartRead<'_>) -> Result<PartBatches> {
    let file = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let meta = cache.get(path, &file)?;
    let file_schema = meta.schema().clone();
    let parquet_schema = meta.metadata().file_metadata().schema_descr_ptr();
    let mut roots: Vec<usize> = req
        .schema
        .fields()
        .iter()
        .filter_map(|f| file_schema.index_of(f.name()).ok())
        .collect();
    roots.sort_unstable();
    roots.dedup();
    let column_of = |name: &str| {
        (0..parquet_schema.num_columns()).find(|&i| parquet_schema.column(i).name() == name)
    };
    let ts_col = column_of(TIME_COLUMN);
    let key_col = req.key.and_then(|(name, _)| column_of(name));
    let row_groups: Vec<RowGroupRead> = meta
        .metadata()
        .row_groups()
        .iter()
        .enumerate()
        .filter_map(|(i, rg)| {
            let ts = ts_col
                .and_then(|c| rg.column(c).statistics())
                .and_then(int64_range);
            let ts_ok = ts.is_none_or(|(lo, hi)| {
                req.min_ts.is_none_or(|l| hi >= l) && req.max_ts.is_none_or(|h| lo <= h)
            });
            let key_ok = match (req.key, key_col) {
                (Some((_, values)), Some(c)) => {
                    match rg.column(c).statistics().and_then(bytes_range) {
                        Some((lo, hi)) => values.iter().any(|v| {
                            v.as_bytes() >= lo.as_slice() && v.as_bytes() <= hi.as_slice()
                        }),
                        None => true,
                    }
                }
                _ => true,
            };
            (ts_ok && key_ok).then_some(RowGroupRead {
                index: i,
                ts,
                ts_unread: false,
            })
        })
        .collect();
    let matched = row_groups.len();
    let mut row_groups: Vec<RowGroupRead> = match req.split {
        Some(s) if s.count > 1 => row_groups
            .into_iter()
            .enumerate()
            .filter(|(k, _)| (s.seen + k) % s.count == s.index)
            .map(|(_, rg)| rg)
            .collect(),
        _ => row_groups,
    };
    let ts_root = file_schema
        .index_of(TIME_COLUMN)
        .ok()
        .filter(|r| roots.contains(r));
    let ts_unread = |ts: Option<(i64, i64)>| match (req.ts_unread_within, ts_root, ts) {
        (Some(within), Some(_), Some((lo, hi))) => within(lo, hi),
        _ => false,
    };
    for rg in &mut row_groups {
        rg.ts_unread = ts_unread(rg.ts);
    }
    Ok(PartBatches {
        file,
        path: path.to_path_buf(),
        epoch: cache.epoch.load(Ordering::Acquire),
        meta,
        roots,
        columns: cache.columns.clone(),
        row_groups: row_groups.into_iter(),
        ts_root,
        current_ts: None,
        pending: Vec::new().into_iter(),
        schema: req.schema.clone(),
        cached: 0,
        decoded: 0,
        matched,
    })
}

fn int64_range(s: &Statistics) -> Option<(i64, i64)> {
    match s {
        Statistics::Int64(v) => Some((*v.min_opt()?, *v.max_opt()?)),
        _ => None,
    }
}

fn bytes_range(s: &Statistics) -> Option<(Vec<u8>, Vec<u8>)> {
    match s {
        Statistics::ByteArray(v) => {
            Some((v.min_opt()?.data().to_vec(), v.max_opt()?.data().to_vec()))
        }
        _ => None,
    }
}

/// The cache a store shares with its readers.
pub type SharedMetaCache = Arc<MetaCache>;
