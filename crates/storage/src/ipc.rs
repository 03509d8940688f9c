//! Arrow IPC stream encoding of one RecordBatch: the payload of a Raft insert entry.

use std::io::Cursor;

use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;

use crate::Result;

/// Encodes `batch` (schema + one batch + end marker).
pub fn encode_batch(batch: &RecordBatch) -> Result<Bytes> {
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() + 1024);
    {
        let mut writer = StreamWriter::try_new(&mut buf, batch.schema_ref())?;
        writer.write(batch)?;
        writer.finish()?;
    }
    Ok(Bytes::from(buf))
}

/// Decodes every batch in an IPC stream.
pub fn decode_batches(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    let reader = StreamReader::try_new(Cursor::new(bytes), None)?;
    let mut out = Vec::with_capacity(1);
    for batch in reader {
        out.push(batch?);
    }
    Ok(out)
}
