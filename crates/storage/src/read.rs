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

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use parking_lot::Mutex;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;
use parquet::file::statistics::Statistics;
use shoal_common::schema::TIME_COLUMN;

use crate::{Error, Result};

/// Parts whose footers one store keeps parsed; past it the cache is cleared and refilled.
pub const META_CACHE_MAX_PARTS: usize = 4096;
/// Rows per batch a part read yields.
pub const READ_BATCH_ROWS: usize = 64 * 1024;

/// Parsed footers of the parts of one store, by path.
#[derive(Default)]
pub struct MetaCache {
    parts: Mutex<HashMap<PathBuf, ArrowReaderMetadata>>,
}

impl MetaCache {
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
}

/// Batches of one part, in the asked schema, row group by row group: a batch never spans
/// two row groups, so a dictionary-encoded column keeps its row group's dictionary instead
/// of being expanded and encoded again.
pub struct PartBatches {
    file: File,
    meta: ArrowReaderMetadata,
    mask: ProjectionMask,
    row_groups: std::vec::IntoIter<usize>,
    reader: Option<ParquetRecordBatchReader>,
    schema: SchemaRef,
}

impl PartBatches {
    fn next_reader(&mut self) -> Result<Option<ParquetRecordBatchReader>> {
        let Some(rg) = self.row_groups.next() else {
            return Ok(None);
        };
        let file = self
            .file
            .try_clone()
            .map_err(|e| Error::io("reopening a part".to_string(), e))?;
        Ok(Some(
            ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.meta.clone())
                .with_projection(self.mask.clone())
                .with_row_groups(vec![rg])
                .with_batch_size(READ_BATCH_ROWS)
                .build()?,
        ))
    }
}

impl Iterator for PartBatches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(reader) = &mut self.reader {
                match reader.next() {
                    Some(Ok(b)) => return Some(conform(&b, &self.schema)),
                    Some(Err(e)) => return Some(Err(e.into())),
                    None => self.reader = None,
                }
            }
            match self.next_reader() {
                Ok(Some(r)) => self.reader = Some(r),
                Ok(None) => return None,
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
    let roots: Vec<usize> = req
        .schema
        .fields()
        .iter()
        .filter_map(|f| file_schema.index_of(f.name()).ok())
        .collect();
    let column_of = |name: &str| {
        (0..parquet_schema.num_columns()).find(|&i| parquet_schema.column(i).name() == name)
    };
    let ts_col = column_of(TIME_COLUMN);
    let key_col = req.key.and_then(|(name, _)| column_of(name));
    let row_groups: Vec<usize> = meta
        .metadata()
        .row_groups()
        .iter()
        .enumerate()
        .filter(|(_, rg)| {
            let ts_ok = ts_col
                .and_then(|c| rg.column(c).statistics())
                .and_then(int64_range)
                .is_none_or(|(lo, hi)| {
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
            ts_ok && key_ok
        })
        .map(|(i, _)| i)
        .collect();
    Ok(PartBatches {
        file,
        mask: ProjectionMask::roots(&parquet_schema, roots),
        meta,
        row_groups: row_groups.into_iter(),
        reader: None,
        schema: req.schema.clone(),
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
