//! One vshard replica's store: hot buffer + Parquet parts + manifest.
//!
//! The consensus layer calls [`ShardStore::insert`] for every applied insert entry and, when a
//! flush is due (size or age, which is also when a Raft snapshot is taken), freezes the hot
//! buffer with [`ShardStore::begin_flush`] and writes it with [`FlushJob::commit`]. Inserts
//! keep landing while a flush writes: the freeze captures batches by sequence number, and the
//! commit drops exactly the batches it wrote.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{new_null_array, Array, ArrayRef, RecordBatch, TimestampNanosecondArray};
use arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use parking_lot::{Mutex, RwLock};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use shoal_common::schema::TIME_COLUMN;
use shoal_common::time::day_of;

use crate::arrow_schema::{compact_dictionaries, storage_field, to_storage};
use crate::dedup::{self, SeriesKey};
use crate::manifest::{sync_dir, Manifest, PartMeta};
use crate::{Error, Result};

/// Schema metadata key naming the partition-key column; flushes sort by it, then by `ts`.
pub const PARTITION_KEY_META: &str = "shoal.partition_key";

/// How Parquet pages are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PartCompression {
    #[default]
    /// LZ4 (raw block format): decompresses several times faster than zstd, files a little
    /// larger. The default: scans of flushed data are bound by decompression.
    Lz4,
    /// zstd at `parquet_zstd_level`: the smallest files.
    Zstd,
    None,
}

impl PartCompression {
    pub fn parse(s: &str) -> Option<PartCompression> {
        match s {
            "lz4" => Some(PartCompression::Lz4),
            "zstd" => Some(PartCompression::Zstd),
            "none" => Some(PartCompression::None),
            _ => None,
        }
    }

    fn codec(self, zstd_level: i32) -> Result<Compression> {
        Ok(match self {
            PartCompression::Lz4 => Compression::LZ4_RAW,
            PartCompression::Zstd => Compression::ZSTD(ZstdLevel::try_new(zstd_level)?),
            PartCompression::None => Compression::UNCOMPRESSED,
        })
    }
}

/// Tuning of the Parquet files a flush writes.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Most rows in one Parquet row group (a time bucket starts a new one anyway).
    pub parquet_row_group_rows: usize,
    pub parquet_compression: PartCompression,
    /// zstd level for Parquet pages when compressing with zstd (1 is fast and still compact).
    pub parquet_zstd_level: i32,
    /// Decoded column chunks of flushed parts; one cache serves every store of a node.
    pub column_cache: crate::read::SharedColumnCache,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            parquet_row_group_rows: 256 * 1024,
            parquet_compression: PartCompression::Lz4,
            parquet_zstd_level: 1,
            column_cache: Default::default(),
        }
    }
}

/// One applied batch in the hot buffer, free of repeated points within itself.
#[derive(Clone, Debug)]
pub struct HotBatch {
    pub batch: RecordBatch,
    pub min_ts: i64,
    pub max_ts: i64,
}

#[derive(Default)]
struct TableData {
    /// (sequence number, batch), in apply order.
    hot: Vec<(u64, HotBatch)>,
    /// Hot batches with a lower sequence number are merge results (or were passed over by
    /// a merge) and are never merged again.
    unmerged_from: u64,
    hot_rows: u64,
    hot_bytes: u64,
    parts: Vec<PartMeta>,
}

impl TableData {
    /// Merges the small batches at the tail of the hot buffer (those at or above `floor`)
    /// once there are enough of them: one merged batch per time bucket (as in a part's row
    /// groups), so a time-range scan takes whole chunks inside its range without filtering
    /// them. Concatenated in apply order and resolved with last-write-wins, the merged
    /// batches hold exactly what the batches did; a point has one bucket, so no point is in
    /// two of them. A tail spread over more than [`HOT_MERGE_MAX_BUCKETS`] buckets (a
    /// backfill of scattered times) is merged into one batch instead of many tiny ones.
    fn merge_tail(&mut self, floor: u64) -> Result<()> {
        let mut start = self.hot.len();
        let mut rows = 0usize;
        while start > 0 {
            let (seq, h) = &self.hot[start - 1];
            if *seq < floor.max(self.unmerged_from) || h.batch.num_rows() >= HOT_MERGE_ROWS {
                break;
            }
            rows += h.batch.num_rows();
            start -= 1;
        }
        let count = self.hot.len() - start;
        if count < 2 || (rows < HOT_MERGE_ROWS && count < HOT_MERGE_BATCHES) {
            return Ok(());
        }
        let tail: Vec<(u64, HotBatch)> = self.hot.drain(start..).collect();
        let seq = tail.last().map(|(s, _)| *s).unwrap_or(floor);
        self.unmerged_from = seq + 1;
        let batches: Vec<RecordBatch> = tail.iter().map(|(_, h)| h.batch.clone()).collect();
        let schema = union_schema(&batches);
        let aligned: Vec<RecordBatch> = batches
            .iter()
            .map(|b| align_batch(b, &schema))
            .collect::<Result<_>>()?;
        let groups = by_bucket(&aligned, &tail)?;
        let before: u64 = tail
            .iter()
            .map(|(_, h)| h.batch.get_array_memory_size() as u64)
            .sum();
        let mut after_rows = 0u64;
        let mut after_bytes = 0u64;
        for group in groups {
            let merged = concat_batches(&schema, &group)?;
            let merged = match SeriesKey::of(&schema) {
                Some(key) => dedup::resolve(merged, &key)?,
                None => merged,
            };
            // Concatenated dictionaries repeat each batch's values; one entry per value keeps
            // scans and the flush from going through thousands of duplicates.
            let merged = compact_dictionaries(&to_storage(&merged)?, true)?;
            let Some((min_ts, max_ts)) = dedup::ts_range(&merged) else {
                continue;
            };
            after_rows += merged.num_rows() as u64;
            after_bytes += merged.get_array_memory_size() as u64;
            self.hot.push((
                seq,
                HotBatch {
                    batch: merged,
                    min_ts,
                    max_ts,
                },
            ));
        }
        self.hot_rows = self.hot_rows - rows as u64 + after_rows;
        self.hot_bytes = (self.hot_bytes + after_bytes).saturating_sub(before);
        Ok(())
    }
}

/// At most this many merged batches (time buckets) come out of one merge of the hot tail.
pub const HOT_MERGE_MAX_BUCKETS: usize = 4;

/// `batches` (the hot tail, aligned to one schema, in apply order) grouped by the time
/// bucket of their rows, in bucket order; a batch that spans buckets is cut. One group of
/// everything when the rows cover more than [`HOT_MERGE_MAX_BUCKETS`] buckets.
fn by_bucket(batches: &[RecordBatch], tail: &[(u64, HotBatch)]) -> Result<Vec<Vec<RecordBatch>>> {
    let lo = tail.iter().map(|(_, h)| bucket_of(h.min_ts)).min();
    let hi = tail.iter().map(|(_, h)| bucket_of(h.max_ts)).max();
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return Ok(vec![]);
    };
    let one = || Ok(vec![batches.to_vec()]);
    if hi - lo >= HOT_MERGE_MAX_BUCKETS as i64 {
        return one();
    }
    let mut groups: Vec<Vec<RecordBatch>> = vec![vec![]; (hi - lo + 1) as usize];
    for (b, (_, h)) in batches.iter().zip(tail) {
        let (first, last) = (bucket_of(h.min_ts), bucket_of(h.max_ts));
        if first == last {
            groups[(first - lo) as usize].push(b.clone());
            continue;
        }
        let Ok(ts_idx) = b.schema().index_of(TIME_COLUMN) else {
            return one();
        };
        let Some(ts) = b
            .column(ts_idx)
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
        else {
            return one();
        };
        for bucket in first..=last {
            let mask: arrow::array::BooleanArray = ts
                .values()
                .iter()
                .map(|&t| Some(bucket_of(t) == bucket))
                .collect();
            let cut = filter_record_batch(b, &mask)?;
            if cut.num_rows() > 0 {
                groups[(bucket - lo) as usize].push(cut);
            }
        }
    }
    Ok(groups.into_iter().filter(|g| !g.is_empty()).collect())
}

struct State {
    tables: HashMap<u64, TableData>,
    manifest: Manifest,
    next_seq: u64,
    /// Hot batches with a lower sequence number belong to the last frozen cut and are never
    /// merged: the flush that froze them drops exactly the sequence numbers below it.
    merge_floor: u64,
    oldest_hot: Option<Instant>,
}

/// Applied batches smaller than this many rows are merged into one hot batch once the
/// small ones at the tail of a table's hot buffer add up to it.
pub const HOT_MERGE_ROWS: usize = 64 * 1024;
/// ... or once this many small batches have gathered at the tail, whatever their size: one
/// write of a few rows per request must not leave a scan with a million tiny batches.
pub const HOT_MERGE_BATCHES: usize = 64;

pub struct ShardStore {
    dir: PathBuf,
    cfg: StoreConfig,
    state: RwLock<State>,
    /// Serialises manifest writers (flush commits, snapshot installs).
    flush_lock: Mutex<()>,
    /// Set while a [`FlushJob`] exists: one frozen cut at a time, so no row is written twice.
    flushing: Arc<AtomicBool>,
    /// Parsed footers of this store's parts (see [`crate::read`]).
    part_meta: crate::read::MetaCache,
    /// Rows applied since the store was opened (a write rate, for the rebalancer).
    rows_inserted: std::sync::atomic::AtomicU64,
}

/// What a scan of one table on this replica reads: hot batches plus flushed parts.
pub struct ScanSnapshot {
    /// Hot batches, oldest first.
    pub hot: Vec<HotBatch>,
    /// Absolute path and metadata of each part, oldest first.
    pub parts: Vec<(PathBuf, PartMeta)>,
}

/// Sizes reported by `SHOW SHARDS` and used to decide when to flush.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShardStats {
    pub hot_rows: u64,
    pub hot_bytes: u64,
    pub parts: u64,
    pub part_bytes: u64,
    pub part_rows: u64,
    pub oldest_hot_age_ms: u64,
    /// Rows applied since this replica was opened (monotonic).
    pub rows_inserted: u64,
}

/// A frozen cut of the hot buffer, written by [`FlushJob::commit`].
pub struct FlushJob {
    upto_seq: u64,
    tables: Vec<(u64, Vec<RecordBatch>)>,
    flushing: Arc<AtomicBool>,
}

impl Drop for FlushJob {
    fn drop(&mut self) {
        self.flushing.store(false, Ordering::Release);
    }
}

impl ShardStore {
    /// Opens the store in `dir`, returning it and the Raft state recorded by the last flush.
    pub fn open(
        dir: &Path,
        cfg: StoreConfig,
    ) -> Result<(Arc<ShardStore>, Option<serde_json::Value>)> {
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let loaded = Manifest::load(dir)?;
        let raft_state = loaded.as_ref().map(|m| m.raft_state.clone());
        let manifest = loaded.unwrap_or_else(Manifest::new);
        remove_orphans(dir, &manifest)?;
        let mut tables = HashMap::new();
        for (id, parts) in &manifest.tables {
            tables.insert(
                *id,
                TableData {
                    parts: parts.clone(),
                    ..Default::default()
                },
            );
        }
        let part_meta = crate::read::MetaCache::new(cfg.column_cache.clone());
        let store = ShardStore {
            dir: dir.to_path_buf(),
            cfg,
            state: RwLock::new(State {
                tables,
                manifest,
                next_seq: 0,
                merge_floor: 0,
                oldest_hot: None,
            }),
            flush_lock: Mutex::new(()),
            flushing: Arc::new(AtomicBool::new(false)),
            part_meta,
            rows_inserted: Default::default(),
        };
        Ok((Arc::new(store), raft_state))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads one of this store's parts directly (see [`crate::read`]).
    pub fn read_part(
        &self,
        path: &Path,
        req: &crate::read::PartRead<'_>,
    ) -> Result<crate::read::PartBatches> {
        crate::read::read_part(&self.part_meta, path, req)
    }

    /// Drops cached footers of parts the manifest no longer names.
    fn forget_dead_parts(&self, manifest: &Manifest) {
        let live: HashSet<PathBuf> = manifest
            .tables
            .values()
            .flatten()
            .map(|p| self.dir.join(&p.file))
            .collect();
        self.part_meta.retain(|p| live.contains(p));
    }

    /// Adds an applied batch of table `table_id` to the hot buffer; of points repeated within
    /// the batch the last is kept.
    pub fn insert(&self, table_id: u64, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let batch = match SeriesKey::of(&batch.schema()) {
            Some(key) => dedup::resolve(batch, &key)?,
            None => batch,
        };
        let Some((min_ts, max_ts)) = dedup::ts_range(&batch) else {
            return Ok(());
        };
        self.rows_inserted
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        let mut st = self.state.write();
        let seq = st.next_seq;
        st.next_seq += 1;
        st.oldest_hot.get_or_insert_with(Instant::now);
        let floor = st.merge_floor;
        let t = st.tables.entry(table_id).or_default();
        t.hot_rows += batch.num_rows() as u64;
        t.hot_bytes += batch.get_array_memory_size() as u64;
        t.hot.push((
            seq,
            HotBatch {
                batch,
                min_ts,
                max_ts,
            },
        ));
        t.merge_tail(floor)
    }

    pub fn stats(&self) -> ShardStats {
        let st = self.state.read();
        let mut s = ShardStats {
            oldest_hot_age_ms: st
                .oldest_hot
                .map(|t| t.elapsed().as_millis() as u64)
                .unwrap_or(0),
            rows_inserted: self.rows_inserted.load(Ordering::Relaxed),
            ..Default::default()
        };
        for t in st.tables.values() {
            s.hot_rows += t.hot_rows;
            s.hot_bytes += t.hot_bytes;
            s.parts += t.parts.len() as u64;
            s.part_bytes += t.parts.iter().map(|p| p.bytes).sum::<u64>();
            s.part_rows += t.parts.iter().map(|p| p.rows).sum::<u64>();
        }
        s
    }

    /// What a scan of `table_id` reads now.
    pub fn scan_snapshot(&self, table_id: u64) -> ScanSnapshot {
        let st = self.state.read();
        match st.tables.get(&table_id) {
            None => ScanSnapshot {
                hot: vec![],
                parts: vec![],
            },
            Some(t) => ScanSnapshot {
                hot: t.hot.iter().map(|(_, b)| b.clone()).collect(),
                parts: t
                    .parts
                    .iter()
                    .map(|p| (self.dir.join(&p.file), p.clone()))
                    .collect(),
            },
        }
    }

    /// The manifest as last stored.
    pub fn manifest(&self) -> Manifest {
        self.state.read().manifest.clone()
    }

    /// Freezes the current hot buffer, or `None` while another flush of this shard is open.
    pub fn begin_flush(&self) -> Option<FlushJob> {
        if self.flushing.swap(true, Ordering::AcqRel) {
            return None;
        }
        let mut st = self.state.write();
        st.merge_floor = st.next_seq;
        let tables = st
            .tables
            .iter()
            .filter(|(_, t)| !t.hot.is_empty())
            .map(|(id, t)| (*id, t.hot.iter().map(|(_, h)| h.batch.clone()).collect()))
            .collect();
        Some(FlushJob {
            upto_seq: st.next_seq,
            tables,
            flushing: self.flushing.clone(),
        })
    }

    /// Drops the data of tables for which `live` answers false (dropped tables). Takes effect
    /// in the manifest at the next flush; their files are removed then.
    pub fn retain_tables(&self, live: impl Fn(u64) -> bool) {
        let mut st = self.state.write();
        st.tables.retain(|id, _| live(*id));
    }

    /// Replaces this replica's whole content with a snapshot staged in `src_dir` (the
    /// files a leader shipped, named as in its `manifest`), taking the files out of it.
    ///
    /// Crash-safe: every file gets a name of its own on this replica (the sender's name
    /// plus an install tag), so no part the current manifest names is touched before the
    /// new manifest is stored; a crash before that leaves the old content whole, with the
    /// moved files as orphans that the next open removes. Returns the manifest as
    /// installed (with the local names).
    pub fn install_from(&self, src_dir: &Path, manifest: &Manifest) -> Result<Manifest> {
        let _flush = self.flush_lock.lock();
        let tag = shoal_common::time::now_nanos().max(0) as u64;
        let mut installed = manifest.clone();
        let mut dirs = HashSet::new();
        for parts in installed.tables.values_mut() {
            for p in parts.iter_mut() {
                let src = src_dir.join(&p.file);
                let local = installed_name(&p.file, tag);
                let dst = self.dir.join(&local);
                if let Some(parent) = dst.parent() {
                    fs::create_dir_all(parent)
                        .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
                    dirs.insert(parent.to_path_buf());
                }
                if dst.exists() {
                    return Err(Error::io(
                        format!("installing {}", dst.display()),
                        std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                    ));
                }
                fs::rename(&src, &dst)
                    .map_err(|e| Error::io(format!("moving {} into place", src.display()), e))?;
                p.file = local;
            }
        }
        for d in &dirs {
            sync_dir(d)?;
        }
        installed.store(&self.dir)?;
        remove_orphans(&self.dir, &installed)?;
        let mut st = self.state.write();
        st.tables.clear();
        for (id, parts) in &installed.tables {
            st.tables.insert(
                *id,
                TableData {
                    parts: parts.clone(),
                    ..Default::default()
                },
            );
        }
        st.manifest = installed.clone();
        st.oldest_hot = None;
        drop(st);
        // Cached part metadata is keyed by name; start afresh.
        self.part_meta.reset();
        Ok(installed)
    }
}

/// The name an installed part gets on this replica: the sender's name with `-i<tag>`
/// (replacing an earlier install's tag, so names do not grow install after install).
fn installed_name(file: &str, tag: u64) -> String {
    let stem = file.strip_suffix(".parquet").unwrap_or(file);
    let stem = match stem.rsplit_once("-i") {
        Some((head, t)) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => stem,
    };
    format!("{stem}-i{tag}.parquet")
}

impl FlushJob {
    /// Whether the frozen cut holds any rows.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Writes the frozen batches as Parquet parts, stores a manifest carrying `raft_state`,
    /// and swaps the parts in for the hot batches. Returns the new manifest.
    pub fn commit(self, store: &ShardStore, raft_state: serde_json::Value) -> Result<Manifest> {
        let _one_at_a_time = store.flush_lock.lock();
        let mut manifest = store.state.read().manifest.clone();
        let live: HashSet<u64> = store.state.read().tables.keys().copied().collect();
        let mut new_parts: Vec<(u64, PartMeta)> = vec![];
        for (table_id, batches) in &self.tables {
            if !live.contains(table_id) {
                continue;
            }
            for part in write_table_parts(store, &mut manifest.next_part_id, *table_id, batches)? {
                new_parts.push((*table_id, part));
            }
        }
        for (id, part) in &new_parts {
            manifest.tables.entry(*id).or_default().push(part.clone());
        }
        let dropped: Vec<u64> = manifest
            .tables
            .keys()
            .filter(|id| !live.contains(id))
            .copied()
            .collect();
        let mut dead_files = vec![];
        for id in dropped {
            if let Some(parts) = manifest.tables.remove(&id) {
                dead_files.extend(parts.into_iter().map(|p| store.dir.join(p.file)));
            }
        }
        manifest.raft_state = raft_state;
        manifest.store(&store.dir)?;
        for f in dead_files {
            let _ = fs::remove_file(f);
        }
        let mut st = store.state.write();
        for (id, t) in st.tables.iter_mut() {
            let before = t.hot.len();
            t.hot.retain(|(seq, _)| *seq >= self.upto_seq);
            if t.hot.len() != before {
                t.hot_rows = t.hot.iter().map(|(_, h)| h.batch.num_rows() as u64).sum();
                t.hot_bytes = t
                    .hot
                    .iter()
                    .map(|(_, h)| h.batch.get_array_memory_size() as u64)
                    .sum();
            }
            for (pid, part) in &new_parts {
                if pid == id {
                    t.parts.push(part.clone());
                }
            }
        }
        if st.tables.values().all(|t| t.hot.is_empty()) {
            st.oldest_hot = None;
        }
        st.manifest = manifest.clone();
        drop(st);
        store.forget_dead_parts(&manifest);
        Ok(manifest)
    }
}

/// Unifies the batches' schemas (later schema versions add columns), keeps the last of
/// repeated points, sorts by (partition key, ts), splits by UTC day and writes one fsynced
/// Parquet file per day.
fn write_table_parts(
    store: &ShardStore,
    next_part_id: &mut u64,
    table_id: u64,
    batches: &[RecordBatch],
) -> Result<Vec<PartMeta>> {
    let schema = union_schema(batches);
    let aligned: Vec<RecordBatch> = batches
        .iter()
        .map(|b| align_batch(b, &schema))
        .collect::<Result<_>>()?;
    let all = compact_dictionaries(&concat_batches(&schema, &aligned)?, true)?;
    let all = match SeriesKey::of(&schema) {
        Some(key) => dedup::resolve(all, &key)?,
        None => all,
    };
    let ts_idx = schema.index_of(TIME_COLUMN)?;
    let ts = all
        .column(ts_idx)
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .ok_or_else(|| Error::BadManifest {
            path: "hot buffer".into(),
            reason: "ts is not a nanosecond timestamp".into(),
        })?;
    let days: Vec<i64> = {
        let mut d: Vec<i64> = ts.values().iter().map(|&t| day_of(t)).collect();
        d.sort_unstable();
        d.dedup();
        d
    };
    let table_dir = store.dir.join(format!("t{table_id}"));
    fs::create_dir_all(&table_dir)
        .map_err(|e| Error::io(format!("creating {}", table_dir.display()), e))?;
    let mut parts = vec![];
    for day in days {
        let day_batch = if parts.is_empty() && days_single(ts, day) {
            all.clone()
        } else {
            let mask: arrow::array::BooleanArray = ts
                .values()
                .iter()
                .map(|&t| Some(day_of(t) == day))
                .collect();
            filter_record_batch(&all, &mask)?
        };
        let sorted = sort_for_flush(&day_batch, &schema, ts_idx)?;
        let id = *next_part_id;
        *next_part_id += 1;
        let rel = format!("t{table_id}/d{day}-p{id}.parquet");
        let path = store.dir.join(&rel);
        let bytes = write_parquet(&path, &sorted, &store.cfg)?;
        let sts = sorted
            .column(ts_idx)
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .map(|a| {
                (
                    arrow::compute::min(a).unwrap_or(0),
                    arrow::compute::max(a).unwrap_or(0),
                )
            })
            .unwrap_or((0, 0));
        parts.push(PartMeta {
            file: rel,
            day,
            rows: sorted.num_rows() as u64,
            bytes,
            min_ts: sts.0,
            max_ts: sts.1,
        });
    }
    sync_dir(&table_dir)?;
    Ok(parts)
}

fn days_single(ts: &TimestampNanosecondArray, day: i64) -> bool {
    ts.values().iter().all(|&t| day_of(t) == day)
}

fn union_schema(batches: &[RecordBatch]) -> SchemaRef {
    let mut fields: Vec<Arc<Field>> = vec![];
    let mut metadata = HashMap::new();
    for b in batches {
        for f in b.schema().fields() {
            if !fields.iter().any(|e| e.name() == f.name()) {
                fields.push(Arc::new(storage_field(f)));
            }
        }
        metadata.extend(b.schema().metadata().clone());
    }
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

/// Projects `batch` onto `schema`, filling columns it lacks with nulls and casting those
/// stored in another form (a dictionary-encoded tag read as `Utf8`, or the reverse).
pub fn align_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().fields() == schema.fields() {
        return Ok(RecordBatch::try_new(
            schema.clone(),
            batch.columns().to_vec(),
        )?);
    }
    let cols: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => arrow::compute::cast(c, f.data_type()),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<_, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// Rows of a part are grouped by this much time: a part is sorted by (bucket of `ts`,
/// partition key, `ts`) and every bucket starts a new row group, so a time-range query reads
/// only the row groups of the buckets it covers (row-group statistics), and inside a bucket
/// one key's rows are contiguous (a filter on the key reads a few pages).
pub const PART_TIME_BUCKET_NS: i64 = 3_600_000_000_000;

fn bucket_of(ts: i64) -> i64 {
    ts.div_euclid(PART_TIME_BUCKET_NS)
}

/// Sorts a day's rows by (time bucket, partition key, ts). The partition key is compared by
/// the rank of its dictionary value, so the sort moves integers, not strings.
fn sort_for_flush(batch: &RecordBatch, schema: &SchemaRef, ts_idx: usize) -> Result<RecordBatch> {
    let ts = batch
        .column(ts_idx)
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .ok_or_else(|| Error::BadManifest {
            path: "hot buffer".into(),
            reason: "ts is not a nanosecond timestamp".into(),
        })?;
    let pk = schema
        .metadata()
        .get(PARTITION_KEY_META)
        .and_then(|pk| schema.index_of(pk).ok())
        .map(|i| batch.column(i).clone());
    let ranks: Option<Vec<u32>> = match &pk {
        None => None,
        Some(col) => Some(key_ranks(col)?),
    };
    let mut keys: Vec<(i64, u32, i64, u32)> = (0..batch.num_rows())
        .map(|r| {
            let t = ts.value(r);
            let k = ranks.as_ref().map_or(0, |rk| rk[r]);
            (bucket_of(t), k, t, r as u32)
        })
        .collect();
    keys.sort_unstable();
    let indices = arrow::array::UInt32Array::from_iter_values(keys.into_iter().map(|k| k.3));
    Ok(take_record_batch(batch, &indices)?)
}

/// For every row, the rank of its value of `col` among the column's distinct values in sort
/// order (nulls first, as Arrow sorts them).
fn key_ranks(col: &ArrayRef) -> Result<Vec<u32>> {
    use arrow::array::{AsArray, DictionaryArray};
    use arrow::datatypes::Int32Type;
    if let Some(dict) = col.as_any().downcast_ref::<DictionaryArray<Int32Type>>() {
        // Rank the (few) dictionary values once, as a string column, then map every key
        // through it: equal values share a rank even under different keys (a dictionary may
        // repeat a value), so a key's rows are never split by which key they carry.
        let rank_of_value = key_ranks(dict.values())?;
        return Ok((0..dict.len())
            .map(|r| {
                if dict.is_null(r) {
                    0
                } else {
                    rank_of_value[dict.keys().value(r) as usize]
                }
            })
            .collect());
    }
    if let Some(strings) = col.as_string_opt::<i32>() {
        let order = arrow::compute::sort_to_indices(col, None, None)?;
        let mut ranks = vec![0u32; col.len()];
        let mut rank = 0u32;
        let mut prev: Option<Option<&str>> = None;
        for &r in order.values() {
            let v = (!strings.is_null(r as usize)).then(|| strings.value(r as usize));
            if prev != Some(v) {
                rank += 1;
                prev = Some(v);
            }
            ranks[r as usize] = rank;
        }
        return Ok(ranks);
    }
    Err(Error::BadManifest {
        path: "hot buffer".into(),
        reason: format!("partition key column has type {}", col.data_type()),
    })
}

fn write_parquet(path: &Path, batch: &RecordBatch, cfg: &StoreConfig) -> Result<u64> {
    use parquet::basic::Encoding;
    use parquet::schema::types::ColumnPath;
    let ts_path = ColumnPath::from(TIME_COLUMN);
    let props = WriterProperties::builder()
        .set_compression(cfg.parquet_compression.codec(cfg.parquet_zstd_level)?)
        .set_max_row_group_row_count(Some(cfg.parquet_row_group_rows.max(1)))
        .set_statistics_enabled(EnabledStatistics::Page)
        // Sorted runs of timestamps delta-encode to a few bits per value.
        .set_column_dictionary_enabled(ts_path.clone(), false)
        .set_column_encoding(ts_path, Encoding::DELTA_BINARY_PACKED)
        .build();
    let ctx = |what: &str| format!("{what} {}", path.display());
    let file = File::create(path).map_err(|e| Error::io(ctx("creating"), e))?;
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    // One row group (or more, when a bucket is larger than a row group) per time bucket.
    let ts_idx = batch.schema().index_of(TIME_COLUMN)?;
    let ts = batch
        .column(ts_idx)
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .map(|a| a.values().to_vec())
        .unwrap_or_default();
    let mut start = 0;
    while start < batch.num_rows() {
        let b = ts.get(start).map_or(0, |&t| bucket_of(t));
        let len = ts[start..].partition_point(|&t| bucket_of(t) == b).max(1);
        let mut off = start;
        while off < start + len {
            let n = (start + len - off).min(cfg.parquet_row_group_rows.max(1));
            writer.write(&batch.slice(off, n))?;
            writer.flush()?;
            off += n;
        }
        start += len;
    }
    let file = writer.into_inner()?;
    file.sync_all().map_err(|e| Error::io(ctx("syncing"), e))?;
    let bytes = file
        .metadata()
        .map_err(|e| Error::io(ctx("stat"), e))?
        .len();
    Ok(bytes)
}

/// Removes Parquet files not named by `manifest` (left by a flush that crashed before its
/// manifest was stored) and stale temp files.
fn remove_orphans(dir: &Path, manifest: &Manifest) -> Result<()> {
    let named: HashSet<PathBuf> = manifest
        .tables
        .values()
        .flatten()
        .map(|p| dir.join(&p.file))
        .collect();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Ok(files) = fs::read_dir(&path) {
                for f in files.flatten() {
                    let p = f.path();
                    if p.extension().is_some_and(|x| x == "parquet") && !named.contains(&p) {
                        tracing::info!(file = %p.display(), "removing part not named by the manifest");
                        let _ = fs::remove_file(&p);
                    }
                }
            }
        } else if path.extension().is_some_and(|x| x == "tmp") {
            let _ = fs::remove_file(&path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray};
    use arrow::datatypes::{DataType, TimeUnit};
    use shoal_common::time::NANOS_PER_DAY;

    fn batch(ts: &[i64], sym: &[&str], price: &[f64]) -> RecordBatch {
        let schema = Arc::new(Schema::new_with_metadata(
            vec![
                Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
                Field::new("symbol", DataType::Utf8, true),
                Field::new("price", DataType::Float64, true),
            ],
            [(PARTITION_KEY_META.to_string(), "symbol".to_string())].into(),
        ));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampNanosecondArray::from(ts.to_vec())),
                Arc::new(StringArray::from(sym.to_vec())),
                Arc::new(Float64Array::from(price.to_vec())),
            ],
        )
        .expect("batch")
    }

    fn rows(s: &ScanSnapshot) -> (usize, usize) {
        let hot = s.hot.iter().map(|h| h.batch.num_rows()).sum();
        let parts = s.parts.iter().map(|(_, p)| p.rows as usize).sum();
        (hot, parts)
    }

    #[test]
    fn flush_moves_rows_to_parts_by_day_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let (store, state) = ShardStore::open(dir.path(), StoreConfig::default()).expect("open");
        assert!(state.is_none());
        store
            .insert(
                7,
                batch(
                    &[5, 1, NANOS_PER_DAY + 3],
                    &["B", "A", "A"],
                    &[1.0, 2.0, 3.0],
                ),
            )
            .expect("insert");
        let job = store.begin_flush().expect("flush");
        assert!(store.begin_flush().is_none(), "one flush at a time");
        // Rows inserted during the flush stay hot.
        store
            .insert(7, batch(&[9], &["C"], &[4.0]))
            .expect("insert");
        let m = job
            .commit(&store, serde_json::json!({"applied": 3}))
            .expect("commit");
        assert_eq!(m.tables[&7].len(), 2, "one part per day");
        assert_eq!(rows(&store.scan_snapshot(7)), (1, 3));
        drop(store);
        let (store, state) = ShardStore::open(dir.path(), StoreConfig::default()).expect("reopen");
        assert_eq!(state, Some(serde_json::json!({"applied": 3})));
        assert_eq!(rows(&store.scan_snapshot(7)), (0, 3));
    }

    /// A batch whose columns carry their roles, so repeated points are resolved.
    fn keyed(ts: &[i64], sym: &[&str], price: &[f64]) -> RecordBatch {
        use crate::arrow_schema::ROLE_KEY;
        let b = batch(ts, sym, price);
        let role = |r: &str| [(ROLE_KEY.to_string(), r.to_string())].into();
        let s = b.schema();
        let fields: Vec<Field> = s
            .fields()
            .iter()
            .zip(["time", "tag", "field"])
            .map(|(f, r)| f.as_ref().clone().with_metadata(role(r)))
            .collect();
        let schema = Arc::new(Schema::new_with_metadata(fields, s.metadata().clone()));
        RecordBatch::try_new(schema, b.columns().to_vec()).expect("keyed")
    }

    /// The prices of `batch` (a [`keyed`] batch) at time `ts`.
    fn prices_at(batch: &RecordBatch, ts: i64) -> Vec<f64> {
        let times = batch
            .column(0)
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .expect("ts");
        let prices = batch
            .column(2)
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("f64");
        (0..batch.num_rows())
            .filter(|&r| times.value(r) == ts)
            .map(|r| prices.value(r))
            .collect()
    }

    fn hot_batches(store: &ShardStore, table: u64) -> usize {
        store.scan_snapshot(table).hot.len()
    }

    #[test]
    fn small_applied_batches_are_merged_and_keep_last_write_wins() {
        let dir = tempfile::tempdir().expect("tmp");
        let (store, _) = ShardStore::open(dir.path(), StoreConfig::default()).expect("open");
        // Point (ts 0, A) is written again by every batch: the last price must win.
        for i in 0..HOT_MERGE_BATCHES as i64 {
            store
                .insert(1, keyed(&[0, i + 1], &["A", "B"], &[i as f64, 0.0]))
                .expect("insert");
        }
        assert_eq!(hot_batches(&store, 1), 1, "the small batches were merged");
        let snap = store.scan_snapshot(1);
        let merged = &snap.hot[0].batch;
        assert_eq!(merged.num_rows(), 1 + HOT_MERGE_BATCHES);
        let last = (HOT_MERGE_BATCHES - 1) as f64;
        assert_eq!(prices_at(merged, 0), vec![last]);
        assert_eq!(store.stats().hot_rows, merged.num_rows() as u64);
    }

    /// A merge of the hot tail makes one batch per time bucket (a batch across a boundary is
    /// cut), keeps every row and the last write of a repeated point, and merged batches are
    /// never merged again.
    #[test]
    fn merged_hot_batches_follow_time_buckets() {
        let dir = tempfile::tempdir().expect("tmp");
        let (store, _) = ShardStore::open(dir.path(), StoreConfig::default()).expect("open");
        let h = PART_TIME_BUCKET_NS;
        // HOT_MERGE_BATCHES small batches: the first straddles buckets 0 and 1, point
        // (h - 1, A) is written by every batch (last price wins).
        for i in 0..HOT_MERGE_BATCHES as i64 {
            let ts = [h - 1, h + i, i];
            store
                .insert(1, keyed(&ts, &["A", "B", "C"], &[i as f64, 0.0, 0.0]))
                .expect("insert");
        }
        let snap = store.scan_snapshot(1);
        assert_eq!(snap.hot.len(), 2, "one merged batch per bucket");
        for hb in &snap.hot {
            assert_eq!(
                bucket_of(hb.min_ts),
                bucket_of(hb.max_ts),
                "inside one bucket"
            );
            assert_eq!(dedup::ts_range(&hb.batch), Some((hb.min_ts, hb.max_ts)));
        }
        let n = HOT_MERGE_BATCHES;
        // Bucket 0: (h-1, A) once, (i, C) for every i; bucket 1: (h+i, B) for every i.
        let rows: Vec<usize> = snap.hot.iter().map(|hb| hb.batch.num_rows()).collect();
        assert_eq!(rows, vec![1 + n, n]);
        assert_eq!(prices_at(&snap.hot[0].batch, h - 1), vec![(n - 1) as f64]);
        // More small batches merge among themselves, never with the merged ones.
        for i in 0..HOT_MERGE_BATCHES as i64 {
            store
                .insert(1, keyed(&[h + 100 + i], &["B"], &[1.0]))
                .expect("insert");
        }
        let snap = store.scan_snapshot(1);
        let rows: Vec<usize> = snap.hot.iter().map(|hb| hb.batch.num_rows()).collect();
        assert_eq!(rows, vec![1 + n, n, n]);
    }

    /// Batches frozen by a flush are never merged with later ones: the flush drops exactly
    /// what it froze, so nothing is lost or written twice.
    #[test]
    fn merging_never_crosses_a_frozen_cut() {
        let dir = tempfile::tempdir().expect("tmp");
        let (store, _) = ShardStore::open(dir.path(), StoreConfig::default()).expect("open");
        let mut ts = 0i64;
        let mut next = |n: usize| {
            let t: Vec<i64> = (0..n as i64).map(|i| ts + i).collect();
            ts += n as i64;
            t
        };
        for _ in 0..10 {
            let t = next(3);
            store
                .insert(1, batch(&t, &["A"; 3], &[1.0; 3]))
                .expect("insert");
        }
        let job = store.begin_flush().expect("flush");
        for _ in 0..HOT_MERGE_BATCHES {
            let t = next(3);
            store
                .insert(1, batch(&t, &["A"; 3], &[1.0; 3]))
                .expect("insert");
        }
        // The 10 frozen batches stay as they were; the later ones were merged into one.
        assert_eq!(hot_batches(&store, 1), 11);
        job.commit(&store, serde_json::json!(null)).expect("commit");
        let s = store.stats();
        assert_eq!(s.part_rows, 30);
        assert_eq!(s.hot_rows, 3 * HOT_MERGE_BATCHES as u64);
        assert_eq!(hot_batches(&store, 1), 1);
    }

    /// A flushed part keeps one row group per time bucket, sorted by (key, ts) inside it,
    /// with tags dictionary-encoded; reading a time range skips the other buckets' groups.
    #[test]
    fn parts_are_bucketed_sorted_and_pruned_by_time() {
        use crate::read::PartRead;
        use arrow::array::AsArray;
        let dir = tempfile::tempdir().expect("tmp");
        let (store, _) = ShardStore::open(dir.path(), StoreConfig::default()).expect("open");
        let h = PART_TIME_BUCKET_NS;
        // Three buckets, symbols out of order within each.
        let ts = [2 * h + 5, 7, h + 1, 3, 2 * h, h + 9, 1];
        let sym = ["B", "B", "C", "A", "A", "A", "B"];
        let price = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        store.insert(1, keyed(&ts, &sym, &price)).expect("insert");
        let job = store.begin_flush().expect("flush");
        let m = job.commit(&store, serde_json::json!(null)).expect("commit");
        let part = &m.tables[&1][0];
        let path = dir.path().join(&part.file);
        let file = fs::File::open(&path).expect("part");
        let reader = parquet::file::reader::SerializedFileReader::new(file).expect("reader");
        use parquet::file::reader::FileReader;
        assert_eq!(
            reader.metadata().num_row_groups(),
            3,
            "one row group per bucket"
        );

        let logical = keyed(&[0], &["A"], &[0.0]).schema();
        let stored: SchemaRef = Arc::new(Schema::new(
            logical
                .fields()
                .iter()
                .map(|f| crate::arrow_schema::storage_field(f))
                .collect::<Vec<_>>(),
        ));
        let read = |min_ts, max_ts| {
            let req = PartRead {
                schema: stored.clone(),
                min_ts,
                max_ts,
                key: None,
                split: None,
                ts_unread_within: None,
            };
            let mut out = vec![];
            for b in store.read_part(&path, &req).expect("read") {
                let b = b.expect("batch");
                assert_eq!(
                    b.column(1).data_type(),
                    &crate::arrow_schema::tag_storage_type(),
                    "tags come back dictionary-encoded"
                );
                let syms = arrow::compute::cast(b.column(1), &DataType::Utf8).expect("cast");
                let ts = b
                    .column(0)
                    .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
                for r in 0..b.num_rows() {
                    out.push((ts.value(r), syms.as_string::<i32>().value(r).to_string()));
                }
            }
            out
        };
        let all = read(None, None);
        let want: Vec<(i64, String)> = [
            (3, "A"),
            (1, "B"),
            (7, "B"),
            (h + 9, "A"),
            (h + 1, "C"),
            (2 * h, "A"),
            (2 * h + 5, "B"),
        ]
        .iter()
        .map(|(t, s)| (*t, s.to_string()))
        .collect();
        assert_eq!(all, want, "sorted by (bucket, key, ts)");
        // Only the middle bucket's row group is read.
        assert_eq!(read(Some(h), Some(2 * h - 1)), want[3..5].to_vec());
        assert_eq!(read(Some(10 * h), None), vec![]);

        // Split readers share the row groups round-robin: together they read every row
        // once, and `seen` carries the deal on from an earlier part.
        let split_rows = |seen, index| {
            let req = PartRead {
                schema: stored.clone(),
                min_ts: None,
                max_ts: None,
                key: None,
                split: Some(crate::read::RowGroupSplit {
                    seen,
                    index,
                    count: 2,
                }),
                ts_unread_within: None,
            };
            let mut it = store.read_part(&path, &req).expect("read");
            let rows: usize = it.by_ref().map(|b| b.expect("batch").num_rows()).sum();
            assert_eq!(it.row_groups_matched(), 3);
            rows
        };
        // Row groups hold 3, 2 and 2 rows.
        assert_eq!((split_rows(0, 0), split_rows(0, 1)), (5, 2));
        assert_eq!((split_rows(1, 0), split_rows(1, 1)), (2, 5));

        // A caller that needs `ts` only where a row group is not wholly inside its range:
        // the middle bucket comes back with `ts` null and nothing else changed, the other
        // buckets with their timestamps.
        let nullable_ts: SchemaRef = Arc::new(Schema::new(
            stored
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let within = |lo: i64, hi: i64| lo >= h && hi < 2 * h;
        let req = PartRead {
            schema: nullable_ts,
            min_ts: None,
            max_ts: None,
            key: None,
            split: None,
            ts_unread_within: Some(&within),
        };
        let mut it = store.read_part(&path, &req).expect("read");
        let mut rows = vec![];
        for b in it.by_ref() {
            let b = b.expect("batch");
            let syms = arrow::compute::cast(b.column(1), &DataType::Utf8).expect("cast");
            let ts = b
                .column(0)
                .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
            for r in 0..b.num_rows() {
                rows.push((
                    ts.is_valid(r).then(|| ts.value(r)),
                    syms.as_string::<i32>().value(r).to_string(),
                ));
            }
        }
        let expect: Vec<(Option<i64>, String)> = want
            .iter()
            .map(|(t, s)| ((*t < h || *t >= 2 * h).then_some(*t), s.clone()))
            .collect();
        assert_eq!(rows, expect);
        // Three row groups of three columns, less the middle one's `ts`.
        assert_eq!(it.chunks_decoded() + it.chunks_cached(), 8);
    }

    /// A repeated read is served from the column cache with the same rows; a column not
    /// read before is decoded and the rest still come from the cache; a reset (snapshot
    /// install) and a cache too small for a chunk both mean decoding again.
    #[test]
    fn column_cache_serves_repeat_reads() {
        use crate::read::{ColumnCache, PartRead};
        let dir = tempfile::tempdir().expect("tmp");
        let cache = Arc::new(ColumnCache::new(64 * 1024 * 1024));
        let cfg = StoreConfig {
            column_cache: cache.clone(),
            ..Default::default()
        };
        let (store, _) = ShardStore::open(dir.path(), cfg).expect("open");
        let h = PART_TIME_BUCKET_NS;
        let ts = [2 * h + 5, 7, h + 1, 3, 2 * h, h + 9, 1];
        let sym = ["B", "B", "C", "A", "A", "A", "B"];
        let price = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        store.insert(1, keyed(&ts, &sym, &price)).expect("insert");
        let m = store
            .begin_flush()
            .expect("flush")
            .commit(&store, serde_json::json!(null))
            .expect("commit");
        let path = dir.path().join(&m.tables[&1][0].file);
        let stored = |names: &[&str]| -> SchemaRef {
            let logical = keyed(&[0], &["A"], &[0.0]).schema();
            Arc::new(Schema::new(
                names
                    .iter()
                    .map(|n| {
                        crate::arrow_schema::storage_field(
                            logical.field_with_name(n).expect("field"),
                        )
                    })
                    .collect::<Vec<_>>(),
            ))
        };
        // (rows as debug text, chunks cached, chunks decoded)
        let read = |store: &ShardStore, names: &[&str]| {
            let req = PartRead {
                schema: stored(names),
                min_ts: None,
                max_ts: None,
                key: None,
                split: None,
                ts_unread_within: None,
            };
            let mut it = store.read_part(&path, &req).expect("read");
            let mut rows = 0;
            let mut text = vec![];
            for b in it.by_ref() {
                let b = b.expect("batch");
                rows += b.num_rows();
                text.push(format!("{:?}", b.columns()));
            }
            (rows, text, it.chunks_cached(), it.chunks_decoded())
        };
        let first = read(&store, &["ts", "price"]);
        assert_eq!(
            (first.0, first.2, first.3),
            (7, 0, 6),
            "3 row groups × 2 columns"
        );
        assert_eq!(cache.stats().chunks, 0, "one decode does not admit a chunk");
        let second = read(&store, &["ts", "price"]);
        assert_eq!(
            (second.2, second.3),
            (0, 6),
            "the second decode admits them"
        );
        let again = read(&store, &["ts", "price"]);
        assert_eq!((again.2, again.3), (6, 0), "all from the cache");
        assert_eq!(again.1, first.1, "the same rows");
        assert_eq!(second.1, first.1);
        read(&store, &["price", "symbol", "ts"]);
        let wider = read(&store, &["price", "symbol", "ts"]);
        assert_eq!(
            (wider.0, wider.2, wider.3),
            (7, 6, 3),
            "symbol decoded twice"
        );
        let wider = read(&store, &["symbol"]);
        assert_eq!((wider.2, wider.3), (3, 0));
        let count = read(&store, &[]);
        assert_eq!(
            (count.0, count.2, count.3),
            (7, 0, 0),
            "a count reads no column"
        );
        let stats = cache.stats();
        assert_eq!(stats.chunks, 9);
        assert!(stats.bytes > 0 && stats.bytes <= stats.limit_bytes);

        store.part_meta.reset();
        assert_eq!(
            cache.stats().chunks,
            0,
            "a reset drops the old epoch's chunks"
        );
        read(&store, &["ts", "price"]);
        let after = read(&store, &["ts", "price"]);
        assert_eq!((after.2, after.3), (0, 6), "decoded again after the reset");
        assert_eq!(after.1, first.1);
        let after = read(&store, &["ts", "price"]);
        assert_eq!((after.2, after.3), (6, 0));
        drop(store);
        assert_eq!(
            cache.stats().chunks,
            0,
            "a closed store leaves nothing behind"
        );

        // Too small for any chunk: every read decodes, nothing is kept.
        let tiny = Arc::new(ColumnCache::new(64));
        let cfg = StoreConfig {
            column_cache: tiny.clone(),
            ..Default::default()
        };
        let (store, _) = ShardStore::open(dir.path(), cfg).expect("reopen");
        for _ in 0..3 {
            let again = read(&store, &["ts", "price"]);
            assert_eq!((again.2, again.3), (0, 6));
        }
        assert_eq!(tiny.stats().bytes, 0);
    }

    /// Past its bound the cache evicts the least recently used chunks first.
    #[test]
    fn column_cache_evicts_least_recently_used() {
        use crate::read::ColumnCache;
        let one = || -> Arc<[ArrayRef]> {
            vec![Arc::new(Float64Array::from(vec![0.0; 1000])) as ArrayRef].into()
        };
        let size: u64 = one().iter().map(|a| a.get_array_memory_size() as u64).sum();
        let cache = ColumnCache::new(size * 10);
        let keys: Vec<_> = (0..12).map(cache_key).collect();
        for k in &keys[..9] {
            cache.put_for_test(k.clone(), one());
            assert!(!cache.get_for_test(k), "admitted on the second decode only");
            cache.put_for_test(k.clone(), one());
        }
        assert!(
            cache.get_for_test(&keys[0]),
            "touch the oldest: now it is the newest"
        );
        for k in &keys[9..] {
            cache.put_for_test(k.clone(), one());
            cache.put_for_test(k.clone(), one());
        }
        let st = cache.stats();
        assert!(st.bytes <= size * 10, "{st:?}");
        assert!(st.evictions > 0, "{st:?}");
        assert!(cache.get_for_test(&keys[0]), "the touched chunk stays");
        assert!(cache.get_for_test(&keys[11]), "the newest stays");
        assert!(
            !cache.get_for_test(&keys[1]),
            "the least recently used went first"
        );
    }

    fn cache_key(i: usize) -> crate::read::ChunkKey {
        crate::read::ChunkKey::new(1, "p.parquet", i, 0)
    }

    #[test]
    fn orphan_parts_are_removed_on_open() {
        let dir = tempfile::tempdir().expect("tmp");
        let (store, _) = ShardStore::open(dir.path(), StoreConfig::default()).expect("open");
        store
            .insert(1, batch(&[1], &["A"], &[1.0]))
            .expect("insert");
        store
            .begin_flush()
            .expect("flush")
            .commit(&store, serde_json::json!(null))
            .expect("commit");
        let orphan = dir.path().join("t1/d0-p99.parquet");
        fs::write(&orphan, b"partial").expect("write");
        drop(store);
        let (_store, _) = ShardStore::open(dir.path(), StoreConfig::default()).expect("reopen");
        assert!(!orphan.exists());
    }

    /// A snapshot from another replica names the same files this one has (both count part
    /// ids from zero) with other rows in them: installing moves the shipped files in under
    /// names of their own, so the parts the current manifest names are never overwritten.
    #[test]
    fn an_installed_snapshot_never_overwrites_a_named_part() {
        let flushed = |rows: RecordBatch| {
            let dir = tempfile::tempdir().expect("tmp");
            let (store, _) = ShardStore::open(dir.path(), StoreConfig::default()).expect("open");
            store.insert(1, rows).expect("insert");
            let m = store
                .begin_flush()
                .expect("flush")
                .commit(&store, serde_json::json!({"at": 1}))
                .expect("commit");
            (dir, store, m)
        };
        let (mine, store, m_mine) = flushed(batch(&[1], &["A"], &[1.0]));
        let (theirs, _other, m_theirs) = flushed(batch(&[1, 2], &["B", "C"], &[2.0, 3.0]));
        let name = &m_theirs.tables[&1][0].file;
        assert_eq!(
            name, &m_mine.tables[&1][0].file,
            "the same name on both replicas"
        );
        let before = fs::read(mine.path().join(name)).expect("mine");

        // Staged as the network would stage it: the shipped files under the sender's names.
        let staged = tempfile::tempdir().expect("staging");
        fs::create_dir_all(staged.path().join("t1")).expect("mkdir");
        fs::copy(theirs.path().join(name), staged.path().join(name)).expect("stage");
        // A crash after the files were moved in, before the manifest was stored: the old
        // rows, whole.
        let moved_in = mine.path().join(installed_name(name, 1));
        fs::copy(staged.path().join(name), &moved_in).expect("moved in");
        drop(store);
        let (store, _) = ShardStore::open(mine.path(), StoreConfig::default()).expect("reopen");
        assert_eq!(rows(&store.scan_snapshot(1)), (0, 1));
        assert_eq!(fs::read(mine.path().join(name)).expect("mine"), before);
        assert!(!moved_in.exists(), "the orphan is removed");

        let installed = store
            .install_from(staged.path(), &m_theirs)
            .expect("install");
        let local = &installed.tables[&1][0].file;
        assert_ne!(local, name);
        assert!(!staged.path().join(name).exists(), "moved, not copied");
        assert_eq!(rows(&store.scan_snapshot(1)), (0, 2));
        assert!(
            !mine.path().join(name).exists(),
            "the replaced part is removed"
        );
        drop(store);
        let (store, state) = ShardStore::open(mine.path(), StoreConfig::default()).expect("reopen");
        assert_eq!(state, Some(serde_json::json!({"at": 1})));
        assert_eq!(rows(&store.scan_snapshot(1)), (0, 2));
        assert_ne!(
            fs::read(mine.path().join(local)).expect("installed"),
            before
        );

        assert_eq!(installed_name("t1/d0-p0.parquet", 7), "t1/d0-p0-i7.parquet");
        assert_eq!(
            installed_name("t1/d0-p0-i7.parquet", 9),
            "t1/d0-p0-i9.parquet"
        );
        assert_eq!(
            installed_name("t1/d0-p0-ix.parquet", 9),
            "t1/d0-p0-ix-i9.parquet"
        );
    }

    #[test]
    fn newer_manifest_version_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        fs::write(
            dir.path().join("manifest.json"),
            br#"{"format_version": 99}"#,
        )
        .expect("write");
        let err = ShardStore::open(dir.path(), StoreConfig::default())
            .err()
            .expect("refused");
        assert!(
            matches!(err, Error::UnsupportedVersion { found: 99, .. }),
            "{err}"
        );
    }

    /// A dictionary that holds one value under two keys (as concatenated batches' do) must
    /// still rank that value once, so a flush sorts its rows together by time.
    #[test]
    fn a_value_repeated_in_the_dictionary_has_one_rank() {
        use arrow::array::{DictionaryArray, Int32Array};
        let dict = DictionaryArray::<arrow::datatypes::Int32Type>::try_new(
            Int32Array::from(vec![Some(0), Some(1), Some(2), None, Some(1)]),
            Arc::new(StringArray::from(vec!["b", "a", "b"])),
        )
        .expect("dictionary");
        let ranks = key_ranks(&(Arc::new(dict) as ArrayRef)).expect("ranks");
        assert_eq!(ranks, vec![2, 1, 2, 0, 1]);
    }

    #[test]
    fn flush_aligns_evolved_schemas() {
        let dir = tempfile::tempdir().expect("tmp");
        let (store, _) = ShardStore::open(dir.path(), StoreConfig::default()).expect("open");
        let narrow = batch(&[1], &["A"], &[1.0])
            .project(&[0, 1])
            .expect("project");
        store.insert(1, narrow).expect("insert");
        store
            .insert(1, batch(&[2], &["A"], &[2.0]))
            .expect("insert");
        let m = store
            .begin_flush()
            .expect("flush")
            .commit(&store, serde_json::json!(null))
            .expect("commit");
        assert_eq!(m.tables[&1][0].rows, 2);
    }
}
