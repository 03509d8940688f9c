//! The bounded queue between callers and the writer thread.
//!
//! Bounded twice: by request count and by payload bytes. A producer blocks while the
//! queue is full (back-pressure), except that an empty queue admits anything, so one
//! request larger than the byte bound still gets through. The consumer takes every
//! request waiting at that moment in one go: that is what lets one fsync cover many
//! appends.

use std::collections::VecDeque;

use parking_lot::{Condvar, Mutex};

use crate::error::Error;

pub(crate) struct Queue<T> {
    inner: Mutex<Inner<T>>,
    not_empty: Condvar,
    not_full: Condvar,
    max_items: usize,
    max_bytes: u64,
}

struct Inner<T> {
    items: VecDeque<(T, u64)>,
    bytes: u64,
    closed: bool,
}

impl<T> Queue<T> {
    pub fn new(max_items: usize, max_bytes: u64) -> Queue<T> {
        Queue {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            max_items,
            max_bytes,
        }
    }

    /// Waits for room for `bytes`, then calls `admit` with the queue locked and enqueues
    /// what it returns. Because `admit` runs under the queue lock, requests enter the
    /// queue in the order their `admit` ran, and `admit` can publish side effects
    /// (cache the records) knowing the request will be queued right after.
    pub fn push_with(
        &self,
        bytes: u64,
        admit: impl FnOnce() -> Result<T, Error>,
    ) -> Result<(), Error> {
        let mut inner = self.inner.lock();
        loop {
            if inner.closed {
                return Err(Error::Closed);
            }
            let fits = inner.items.len() < self.max_items
                && inner.bytes.saturating_add(bytes) <= self.max_bytes;
            if inner.items.is_empty() || fits {
                break;
            }
            self.not_full.wait(&mut inner);
        }
        let item = admit()?;
        inner.items.push_back((item, bytes));
        inner.bytes += bytes;
        drop(inner);
        self.not_empty.notify_one();
        Ok(())
    }

    /// Blocks until something is queued, then takes all of it. Returns `None` once the
    /// queue is closed and drained.
    pub fn pop_all(&self) -> Option<Vec<T>> {
        let mut inner = self.inner.lock();
        while inner.items.is_empty() {
            if inner.closed {
                return None;
            }
            self.not_empty.wait(&mut inner);
        }
        inner.bytes = 0;
        let items = inner.items.drain(..).map(|(item, _)| item).collect();
        drop(inner);
        self.not_full.notify_all();
        Some(items)
    }

    /// Refuses new requests; queued ones are still handed to the consumer.
    pub fn close(&self) {
        self.inner.lock().closed = true;
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }

    /// Closes the queue and returns what is still in it.
    pub fn close_and_drain(&self) -> Vec<T> {
        let mut inner = self.inner.lock();
        inner.closed = true;
        inner.bytes = 0;
        let items = inner.items.drain(..).map(|(item, _)| item).collect();
        drop(inner);
        self.not_empty.notify_all();
        self.not_full.notify_all();
        items
    }

    /// Requests and bytes currently queued.
    pub fn depth(&self) -> (usize, u64) {
        let inner = self.inner.lock();
        (inner.items.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn producer_blocks_when_full_until_consumer_drains() {
        let queue = Arc::new(Queue::new(2, 1000));
        queue.push_with(1, || Ok(1)).unwrap();
        queue.push_with(1, || Ok(2)).unwrap();
        let producer = {
            let queue = queue.clone();
            thread::spawn(move || queue.push_with(1, || Ok(3)))
        };
        // The producer cannot have enqueued while the queue held two items.
        assert_eq!(queue.pop_all().unwrap(), vec![1, 2]);
        producer.join().unwrap().unwrap();
        assert_eq!(queue.pop_all().unwrap(), vec![3]);
        assert_eq!(queue.depth(), (0, 0));
    }

    #[test]
    fn oversized_item_is_admitted_into_an_empty_queue_only() {
        let queue = Queue::new(10, 100);
        queue.push_with(500, || Ok("big")).unwrap();
        assert_eq!(queue.depth(), (1, 500));
        queue.close();
        assert!(matches!(
            queue.push_with(1, || Ok("late")),
            Err(Error::Closed)
        ));
        assert_eq!(queue.pop_all(), Some(vec!["big"]));
        assert_eq!(queue.pop_all(), None);
    }

    #[test]
    fn admit_error_enqueues_nothing() {
        let queue: Queue<u32> = Queue::new(10, 100);
        let result = queue.push_with(1, || Err(Error::Closed));
        assert!(result.is_err());
        assert_eq!(queue.depth(), (0, 0));
    }
}
