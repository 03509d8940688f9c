//! Arrow IPC stream encoding of one RecordBatch: the payload of a Raft insert entry.

use arrow::buffer::Buffer;
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamDecoder;
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

/// Decodes every batch in an IPC stream. The arrays share `bytes` wherever a buffer is
/// aligned for its type (a payload encoded by [`encode_batch`] into its own allocation is);
/// only misaligned buffers are copied.
pub fn decode_batches(bytes: &Bytes) -> Result<Vec<RecordBatch>> {
    let mut decoder = StreamDecoder::new();
    let mut buf = Buffer::from(bytes.clone());
    let mut out = Vec::with_capacity(1);
    // `decode` returns `None` only once it has consumed the whole buffer.
    while let Some(batch) = decoder.decode(&mut buf)? {
        out.push(batch);
    }
    decoder.finish()?;
    if decoder.schema().is_none() {
        return Err(ArrowError::IpcError("the payload holds no Arrow IPC schema".into()).into());
    }
    Ok(out)
}
