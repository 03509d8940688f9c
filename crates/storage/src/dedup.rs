//! Last-write-wins for repeated points.
//!
//! A point is identified by its series key — the value of every tag column, where a missing
//! tag (null) is a value of its own — plus `ts`. Writing a point that already exists replaces
//! it, as InfluxDB clients and Telegraf expect. "Later" is Raft apply order: within one batch
//! a later row, across batches a later batch, across flushed parts a later part.
//!
//! Repeats are resolved in three places, all with [`last_wins`]:
//! - apply: each batch entering the hot buffer is made free of repeats within itself;
//! - flush: the frozen hot batches of a table, concatenated in apply order, become one part
//!   free of repeats;
//! - scan: where sources (parts, hot batches) of one vshard overlap in time, the rows inside
//!   the overlap are resolved newest-source-first ([`overlap_regions`]). In-order ingest
//!   overlaps only at batch boundaries, so this costs little; a back-fill over existing data
//!   costs a hash of the overlapping rows per scan.

use std::collections::HashSet;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch, TimestampNanosecondArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Schema, TimestampNanosecondType};
use arrow::row::{RowConverter, SortField};
use shoal_common::schema::TIME_COLUMN;

use crate::arrow_schema::ROLE_KEY;
use crate::Result;

/// The columns that identify a point: `ts` and the tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeriesKey {
    pub ts: usize,
    pub tags: Vec<usize>,
}

impl SeriesKey {
    /// Reads the key from the role metadata of `schema`'s fields; `None` when the schema
    /// carries no roles (then rows cannot be told apart and nothing is deduplicated).
    pub fn of(schema: &Schema) -> Option<SeriesKey> {
        let ts = schema.index_of(TIME_COLUMN).ok()?;
        let mut any_role = false;
        let mut tags = vec![];
        for (i, f) in schema.fields().iter().enumerate() {
            match f.metadata().get(ROLE_KEY).map(String::as_str) {
                Some("tag") => {
                    any_role = true;
                    tags.push(i);
                }
                Some(_) => any_role = true,
                None => {}
            }
        }
        any_role.then_some(SeriesKey { ts, tags })
    }

    /// Every column index of the key.
    pub fn columns(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.ts).chain(self.tags.iter().copied())
    }
}

/// Runs longer than this use a hash set instead of pairwise comparison.
const PAIRWISE_MAX: usize = 8;

/// Keeps, of every set of rows of `batch` that share a series key and `ts`, the last one.
/// Returns `None` when the rows are already distinct (the common case costs one pass over
/// `ts`).
pub fn last_wins(batch: &RecordBatch, key: &SeriesKey) -> Result<Option<RecordBatch>> {
    let n = batch.num_rows();
    if n < 2 {
        return Ok(None);
    }
    let Some(ts) = batch
        .column(key.ts)
        .as_primitive_opt::<TimestampNanosecondType>()
    else {
        return Ok(None);
    };
    let v = ts.values();
    let order: Option<Vec<u32>> = if v.windows(2).all(|w| w[0] <= w[1]) {
        None
    } else {
        let mut o: Vec<u32> = (0..n as u32).collect();
        // Stable: rows with equal ts stay in apply order.
        o.sort_by_key(|&i| v[i as usize]);
        Some(o)
    };
    let at = |k: usize| order.as_ref().map_or(k, |o| o[k] as usize);
    let mut dropped: Option<Vec<bool>> = None;
    let mut rows = None;
    let mut k = 0;
    while k < n {
        let start = k;
        let t = v[at(k)];
        while k < n && v[at(k)] == t {
            k += 1;
        }
        if k - start < 2 {
            continue;
        }
        let drop = dropped.get_or_insert_with(|| vec![false; n]);
        if key.tags.is_empty() {
            for j in start..k - 1 {
                drop[at(j)] = true;
            }
            continue;
        }
        if rows.is_none() {
            let cols: Vec<_> = key.tags.iter().map(|&i| batch.column(i).clone()).collect();
            let fields = cols
                .iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect();
            rows = Some(RowConverter::new(fields)?.convert_columns(&cols)?);
        }
        let rows = rows.as_ref().expect("converted above");
        // Newest first: the first occurrence seen of each key survives.
        if k - start <= PAIRWISE_MAX {
            let mut kept: Vec<usize> = Vec::with_capacity(k - start);
            for j in (start..k).rev() {
                let r = at(j);
                if kept.iter().any(|&s| rows.row(s) == rows.row(r)) {
                    drop[r] = true;
                } else {
                    kept.push(r);
                }
            }
        } else {
            let mut seen = HashSet::with_capacity(k - start);
            for j in (start..k).rev() {
                let r = at(j);
                if !seen.insert(rows.row(r)) {
                    drop[r] = true;
                }
            }
        }
    }
    let Some(drop) = dropped else {
        return Ok(None);
    };
    if !drop.iter().any(|d| *d) {
        return Ok(None);
    }
    let keep: BooleanArray = drop.iter().map(|d| Some(!d)).collect();
    Ok(Some(filter_record_batch(batch, &keep)?))
}

/// [`last_wins`], returning the batch itself when nothing repeats.
pub fn resolve(batch: RecordBatch, key: &SeriesKey) -> Result<RecordBatch> {
    Ok(last_wins(&batch, key)?.unwrap_or(batch))
}

/// The `ts` ranges (inclusive, sorted, disjoint) covered by two or more of `ranges`: only rows
/// inside them can repeat a row of another source.
pub fn overlap_regions(ranges: &[(i64, i64)]) -> Vec<(i64, i64)> {
    if ranges.len() < 2 {
        return vec![];
    }
    let mut events: Vec<(i128, i32)> = Vec::with_capacity(ranges.len() * 2);
    for &(lo, hi) in ranges {
        events.push((lo as i128, 1));
        events.push((hi as i128 + 1, -1));
    }
    events.sort_unstable();
    let mut out = vec![];
    let mut depth = 0;
    let mut start = 0i128;
    let mut i = 0;
    while i < events.len() {
        let pos = events[i].0;
        let before = depth;
        while i < events.len() && events[i].0 == pos {
            depth += events[i].1;
            i += 1;
        }
        if before < 2 && depth >= 2 {
            start = pos;
        } else if before >= 2 && depth < 2 {
            out.push((start as i64, (pos - 1) as i64));
        }
    }
    out
}

/// Whether `[lo, hi]` meets any of `regions` (as returned by [`overlap_regions`]).
pub fn touches(regions: &[(i64, i64)], lo: i64, hi: i64) -> bool {
    let i = regions.partition_point(|r| r.1 < lo);
    i < regions.len() && regions[i].0 <= hi
}

/// Splits `batch` into the rows whose `ts` lies in `regions` and the rest.
pub fn split_by_regions(
    batch: &RecordBatch,
    ts_col: usize,
    regions: &[(i64, i64)],
) -> Result<(RecordBatch, RecordBatch)> {
    let ts = batch
        .column(ts_col)
        .as_primitive::<TimestampNanosecondType>();
    let inside: BooleanArray = ts
        .values()
        .iter()
        .map(|&t| Some(touches(regions, t, t)))
        .collect();
    let outside = arrow::compute::not(&inside)?;
    Ok((
        filter_record_batch(batch, &inside)?,
        filter_record_batch(batch, &outside)?,
    ))
}

/// The min and max `ts` of a batch, or `None` when it is empty.
pub fn ts_range(batch: &RecordBatch) -> Option<(i64, i64)> {
    let i = batch.schema().index_of(TIME_COLUMN).ok()?;
    let ts = batch
        .column(i)
        .as_primitive_opt::<TimestampNanosecondType>()?;
    column_ts_range(ts)
}

/// The smallest and largest value of a `ts` column. Without nulls in one pass of scalar
/// compares: arrow's min and max are two passes of 64-bit compares emulated with SSE2 on
/// the baseline target.
pub fn column_ts_range(ts: &TimestampNanosecondArray) -> Option<(i64, i64)> {
    if ts.null_count() > 0 {
        return Some((arrow::compute::min(ts)?, arrow::compute::max(ts)?));
    }
    let v = ts.values();
    let first = *v.first()?;
    Some(
        v.iter()
            .fold((first, first), |(lo, hi), &t| (lo.min(t), hi.max(t))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray, TimestampNanosecondArray};
    use arrow::datatypes::{DataType, Field, TimeUnit};
    use std::sync::Arc;

    fn batch(ts: &[i64], sym: &[Option<&str>], price: &[f64]) -> RecordBatch {
        let role = |r: &str| [(ROLE_KEY.to_string(), r.to_string())].into();
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false)
                .with_metadata(role("time")),
            Field::new("symbol", DataType::Utf8, true).with_metadata(role("tag")),
            Field::new("price", DataType::Float64, true).with_metadata(role("field")),
        ]));
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

    fn prices(b: &RecordBatch) -> Vec<f64> {
        b.column(2)
            .as_primitive::<arrow::datatypes::Float64Type>()
            .values()
            .to_vec()
    }

    #[test]
    fn distinct_rows_are_left_alone() {
        let b = batch(
            &[1, 1, 2],
            &[Some("A"), Some("B"), Some("A")],
            &[1., 2., 3.],
        );
        let key = SeriesKey::of(&b.schema()).expect("key");
        assert_eq!(key.tags, vec![1]);
        assert!(last_wins(&b, &key).expect("dedup").is_none());
    }

    #[test]
    fn the_last_of_repeated_points_wins_sorted_or_not() {
        let b = batch(
            &[5, 1, 5, 1, 5],
            &[Some("A"), Some("A"), Some("B"), Some("A"), Some("A")],
            &[1., 2., 3., 4., 5.],
        );
        let key = SeriesKey::of(&b.schema()).expect("key");
        let out = last_wins(&b, &key).expect("dedup").expect("changed");
        let mut p = prices(&out);
        p.sort_by(f64::total_cmp);
        assert_eq!(p, vec![3., 4., 5.]);
    }

    #[test]
    fn a_missing_tag_is_its_own_series() {
        let b = batch(&[1, 1, 1], &[None, Some("A"), None], &[1., 2., 3.]);
        let key = SeriesKey::of(&b.schema()).expect("key");
        let out = last_wins(&b, &key).expect("dedup").expect("changed");
        assert_eq!(prices(&out), vec![2., 3.]);
    }

    #[test]
    fn long_runs_use_the_hash_path() {
        let syms: Vec<String> = (0..40).map(|i| format!("S{}", i % 20)).collect();
        let sym: Vec<Option<&str>> = syms.iter().map(|s| Some(s.as_str())).collect();
        let price: Vec<f64> = (0..40).map(f64::from).collect();
        let b = batch(&[7; 40], &sym, &price);
        let key = SeriesKey::of(&b.schema()).expect("key");
        let out = last_wins(&b, &key).expect("dedup").expect("changed");
        assert_eq!(prices(&out), (20..40).map(f64::from).collect::<Vec<_>>());
    }

    #[test]
    fn schemas_without_roles_are_not_deduplicated() {
        let s = Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        )]);
        assert!(SeriesKey::of(&s).is_none());
    }

    #[test]
    fn overlap_regions_cover_points_seen_twice() {
        assert!(overlap_regions(&[(0, 10)]).is_empty());
        assert!(overlap_regions(&[(0, 10), (11, 20)]).is_empty());
        assert_eq!(overlap_regions(&[(0, 10), (10, 20)]), vec![(10, 10)]);
        assert_eq!(
            overlap_regions(&[(0, 10), (5, 20), (30, 40), (35, 36), (18, 31)]),
            vec![(5, 10), (18, 20), (30, 31), (35, 36)]
        );
        let r = overlap_regions(&[(0, 10), (5, 20)]);
        assert!(touches(&r, 10, 12));
        assert!(!touches(&r, 11, 12));
        assert!(!touches(&r, -3, 4));
    }
}
