//! The worker pool: a fixed number of slots handed out strictly in the order transfers
//! were queued (FIFO), whatever order the runtime polls their tasks in.
//!
//! A transfer takes its place in the queue synchronously when it is pushed
//! ([`Pool::enqueue`]) and later awaits the [`Slot`] on the returned receiver. A slot
//! goes back to the pool when dropped and is handed to the oldest waiter that is still
//! waiting; a waiter that gave up (cancelled while queued) is skipped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

/// The pool.
#[derive(Debug)]
pub(crate) struct Pool {
    /// Free slots and waiters; a std mutex held only for queue operations.
    state: Mutex<State>,
}

/// Free slots and the queue.
#[derive(Debug)]
struct State {
    /// Slots not handed out.
    free: usize,
    /// Waiters, oldest first.
    waiters: VecDeque<oneshot::Sender<Slot>>,
}

/// The right to run one transfer; returns to the pool when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    /// `None` once disarmed (a slot that could not be delivered and goes back by hand).
    pool: Option<Arc<Pool>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.release();
        }
    }
}

impl Pool {
    /// A pool of `size` slots (at least 1).
    pub(crate) fn new(size: usize) -> Arc<Pool> {
        Arc::new(Pool {
            state: Mutex::new(State {
                free: size.max(1),
                waiters: VecDeque::new(),
            }),
        })
    }

    /// Takes a place at the end of the queue; the slot arrives on the receiver. Dropping
    /// the receiver gives the place up.
    pub(crate) fn enqueue(self: &Arc<Self>) -> oneshot::Receiver<Slot> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.free > 0 && state.waiters.is_empty() {
            state.free -= 1;
            drop(state);
            if let Err(mut slot) = tx.send(Slot {
                pool: Some(Arc::clone(self)),
            }) {
                // Cannot happen (we hold the receiver), but do not lose the slot.
                slot.pool = None;
                self.release();
            }
        } else {
            state.waiters.push_back(tx);
        }
        rx
    }

    /// Hands a returned slot to the oldest live waiter, or frees it.
    fn release(self: &Arc<Self>) {
        loop {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(waiter) = state.waiters.pop_front() else {
                state.free += 1;
                return;
            };
            drop(state);
            if waiter.is_closed() {
                continue;
            }
            match waiter.send(Slot {
                pool: Some(Arc::clone(self)),
            }) {
                Ok(()) => return,
                Err(mut slot) => slot.pool = None,
            }
        }
    }

    /// Slots not handed out (for tests and `Debug`).
    #[cfg(test)]
    pub(crate) fn free(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots go to waiters in queue order; given-up places are skipped; all slots return.
    #[tokio::test]
    async fn fifo_and_skips_given_up() {
        let pool = Pool::new(1);
        let first = pool.enqueue().await.expect("free slot at once");
        let a = pool.enqueue();
        let b = pool.enqueue();
        let mut c = pool.enqueue();
        drop(b);
        drop(first);
        let slot_a = a.await.expect("a is next");
        assert!(c.try_recv().is_err(), "c must wait for a");
        drop(slot_a);
        let slot_c = c.await.expect("c after a, b skipped");
        assert_eq!(pool.free(), 0);
        drop(slot_c);
        assert_eq!(pool.free(), 1);
    }

    /// A slot sent to a waiter that then gives up returns to the pool.
    #[tokio::test]
    async fn undelivered_slot_returns() {
        let pool = Pool::new(1);
        let first = pool.enqueue().await.expect("slot");
        let waiter = pool.enqueue();
        drop(first); // sent to `waiter`, which never reads it
        drop(waiter);
        assert_eq!(pool.free(), 1);
    }
}
