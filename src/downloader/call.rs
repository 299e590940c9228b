//! A `set_status_and_info` call that the actor polls once in place and, when it does not
//! finish at once, hands to the job's worker task, without boxing it a second time.
//!
//! The controller's future borrows the controller, which the actor holds in an `Arc`. To
//! move a pending call to another task it must not borrow the actor; the safe way is to
//! wrap it in an `async move` block that owns an `Arc` clone, which costs a second heap
//! allocation (and an `Arc` clone) for *every* call, although almost every call finishes
//! at once. Instead, [`StatusCall::detach`] clones the `Arc` only for a call that is
//! still pending and pairs it with the future (see the SAFETY comment there).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::error::BoxError;
use crate::model::{JobId, JobStatus};
use crate::traits::JobsController;

/// The future of a status call that may borrow the controller for `'a`.
type StatusFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;

/// A status call borrowing the actor's controller handle.
pub(super) struct StatusCall<'a> {
    controller: &'a Arc<dyn JobsController>,
    /// Only ever the future of `controller.set_status_and_info(..)` (made in `new`).
    future: StatusFuture<'a>,
}

impl<'a> StatusCall<'a> {
    /// Starts `set_status_and_info(job, DOWNLOADING, info)` (nothing runs until polled).
    #[inline]
    pub(super) fn new(controller: &'a Arc<dyn JobsController>, job: JobId, info: String) -> Self {
        let future = controller.set_status_and_info(job, JobStatus::Downloading, info);
        StatusCall { controller, future }
    }

    /// Polls the call once, with a waker that does nothing: a pending call must be
    /// detached and awaited elsewhere, which polls it again.
    #[inline]
    pub(super) fn poll_once(&mut self) -> Poll<Result<(), BoxError>> {
        self.future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
    }

    /// The call as a `'static` future that keeps the controller alive.
    pub(super) fn detach(self) -> DetachedCall {
        let controller = Arc::clone(self.controller);
        // SAFETY: only the lifetime changes (`'a` to `'static`); the fat pointer's layout
        // does not depend on it. The extension is sound because of what the future can
        // borrow: it was returned by `set_status_and_info` called on `**self.controller`
        // (see `new`; the fields are private to this module), and that method's other
        // arguments are owned values while `dyn JobsController: 'static`, so the only
        // non-'static data it can reference is the controller value inside the `Arc`'s
        // heap allocation (and what that value owns). `DetachedCall` holds a clone of the
        // same `Arc`, so that allocation outlives the future: the future is dropped before
        // the clone (fields drop in declaration order), and the controller is never moved
        // (an `Arc`'s pointee stays where it is).
        let future =
            unsafe { std::mem::transmute::<StatusFuture<'a>, StatusFuture<'static>>(self.future) };
        DetachedCall {
            future,
            _controller: controller,
        }
    }
}

/// A pending status call that owns what it borrows; awaited by the job's worker.
pub(super) struct DetachedCall {
    /// Declared first: dropped before `_controller`, which it may borrow from.
    future: StatusFuture<'static>,
    _controller: Arc<dyn JobsController>,
}

impl Future for DetachedCall {
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.future.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::sync::Notify;

    /// A controller whose status calls wait for `go`, then record their info through
    /// `&self` (so the future really reads the controller after the wait).
    struct Gated {
        go: Arc<Notify>,
        seen: Arc<Mutex<Vec<String>>>,
        dropped: Arc<AtomicBool>,
    }

    impl Drop for Gated {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    #[async_trait::async_trait]
    impl JobsController for Gated {
        async fn set_status_and_info(
            &self,
            _: JobId,
            _: JobStatus,
            info: String,
        ) -> Result<(), BoxError> {
            self.go.notified().await;
            self.seen.lock().unwrap().push(info);
            Ok(())
        }
        async fn get_config(&self, _: JobId) -> Result<crate::model::Config, BoxError> {
            Err("unused".into())
        }
        async fn set_config(&self, _: JobId, _: crate::model::Config) -> Result<(), BoxError> {
            Err("unused".into())
        }
    }

    /// A detached call finishes on another task after every other handle to the
    /// controller is gone: the call keeps the controller alive until it is done.
    #[tokio::test]
    async fn detached_call_keeps_the_controller_alive() {
        let go = Arc::new(Notify::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let dropped = Arc::new(AtomicBool::new(false));
        let controller: Arc<dyn JobsController> = Arc::new(Gated {
            go: go.clone(),
            seen: seen.clone(),
            dropped: dropped.clone(),
        });
        let mut call = StatusCall::new(&controller, JobId(1), "1 / 2 artifacts ready".into());
        assert!(call.poll_once().is_pending());
        let detached = call.detach();
        drop(controller);
        assert!(
            !dropped.load(Ordering::SeqCst),
            "the detached call keeps it alive"
        );
        let task = tokio::spawn(detached);
        go.notify_one();
        task.await.unwrap().unwrap();
        assert_eq!(*seen.lock().unwrap(), ["1 / 2 artifacts ready"]);
        assert!(
            dropped.load(Ordering::SeqCst),
            "released once the call is done"
        );
    }

    /// A call that finishes at once needs no detaching.
    #[test]
    fn ready_call_completes_in_place() {
        let go = Arc::new(Notify::new());
        go.notify_one();
        let controller: Arc<dyn JobsController> = Arc::new(Gated {
            go,
            seen: Arc::default(),
            dropped: Arc::default(),
        });
        let mut call = StatusCall::new(&controller, JobId(1), "x".into());
        assert!(matches!(call.poll_once(), Poll::Ready(Ok(()))));
    }
}
