//! Slow-body protection: a request body wrapper that fails once the body stalls too long.
//!
//! hyper bounds how long request *headers* may take (`header_read_timeout`), but not the body: a
//! client that sends `Content-Length: 1000` and then one byte a minute would hold its connection
//! and the handler's task for as long as it likes. [`TimedBody`] ends such a body with
//! [`BodyError::TimedOut`], which the body readers turn into 408 (see
//! [`ApiError::RequestTimeout`](super::error::ApiError::RequestTimeout)); hyper then closes the
//! connection because the body was not read to its end.

use std::error::Error as StdError;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use prometheus::IntCounter;
use tokio::time::{Instant, Sleep};

/// The request body every admin handler receives.
pub type RequestBody = TimedBody<Incoming>;

/// How the bound applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// The whole body must have arrived this long after the request head: for bodies with a
    /// small cap (JSON), where any working client is done in well under a second.
    Total(Duration),
    /// No gap between two reads may exceed this: for large streamed bodies (cohort uploads of
    /// up to 256 MiB), whose total duration depends on the link, not on good behaviour.
    Idle(Duration),
}

/// Why a [`TimedBody`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body stalled past its [`Deadline`].
    #[error("request body timed out")]
    TimedOut,
    /// The connection failed (client went away, broken chunked encoding).
    #[error(transparent)]
    Read(#[from] hyper::Error),
}

impl From<std::convert::Infallible> for BodyError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// Whether `e` (or anything it wraps, including an `io::Error` around it) is
/// [`BodyError::TimedOut`].
pub fn is_timeout(e: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if matches!(e.downcast_ref::<BodyError>(), Some(BodyError::TimedOut)) {
            return true;
        }
        // `io::Error::source` skips the error it wraps, so look inside explicitly.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            if is_timeout(inner) {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// A body that fails with [`BodyError::TimedOut`] once its [`Deadline`] passes. The timer is
/// armed only while the reader waits for data, so a handler that never reads its body (GET)
/// costs nothing.
#[derive(Debug)]
pub struct TimedBody<B> {
    inner: B,
    deadline: Deadline,
    /// When the request head arrived (the start of a [`Deadline::Total`]).
    started: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    timed_out: bool,
    /// Incremented once when the deadline passes.
    counter: IntCounter,
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, deadline: Deadline, counter: IntCounter) -> Self {
        Self {
            inner,
            deadline,
            started: Instant::now(),
            timer: None,
            timed_out: false,
            counter,
        }
    }

    fn arm(&mut self) -> Pin<&mut Sleep> {
        let at = match self.deadline {
            Deadline::Total(d) => self.started + d,
            Deadline::Idle(d) => Instant::now() + d,
        };
        self.timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)))
            .as_mut()
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(Some(Err(BodyError::TimedOut)));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if matches!(this.deadline, Deadline::Idle(_)) {
                // Progress: the next wait gets a fresh idle period.
                this.timer = None;
            }
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        if this.arm().poll(cx).is_ready() {
            this.timed_out = true;
            this.counter.inc();
            return Poll::Ready(Some(Err(BodyError::TimedOut)));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use tokio::sync::mpsc;

    use super::*;

    /// A body fed by the test, one chunk per message; ends when the sender is dropped.
    struct Fed(mpsc::Receiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
        }
    }

    /// Sends `chunks` chunks `gap` apart, then ends the body (or stalls forever if `stall`).
    fn trickle(chunks: usize, gap: Duration, stall: bool) -> Fed {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            for _ in 0..chunks {
                tokio::time::sleep(gap).await;
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
            }
            if stall {
                tx.closed().await;
            }
        });
        Fed(rx)
    }

    fn counter() -> IntCounter {
        IntCounter::new("t", "t").unwrap()
    }

    #[tokio::test]
    async fn idle_deadline_allows_a_long_body_that_keeps_moving() {
        // 8 chunks 40 ms apart: 320 ms in all, longer than the 250 ms bound, never idle that long.
        let c = counter();
        let body = TimedBody::new(
            trickle(8, Duration::from_millis(40), false),
            Deadline::Idle(Duration::from_millis(250)),
            c.clone(),
        );
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 8);
        assert_eq!(c.get(), 0);
    }

    #[tokio::test]
    async fn idle_deadline_cuts_off_a_stalled_body() {
        let c = counter();
        let body = TimedBody::new(
            trickle(2, Duration::from_millis(10), true),
            Deadline::Idle(Duration::from_millis(150)),
            c.clone(),
        );
        let err = body.collect().await.unwrap_err();
        assert!(matches!(err, BodyError::TimedOut), "{err}");
        assert_eq!(c.get(), 1);
    }

    #[tokio::test]
    async fn total_deadline_cuts_off_a_body_that_keeps_moving_too_slowly() {
        // Never idle for more than 40 ms, but not done after 250 ms.
        let c = counter();
        let body = TimedBody::new(
            trickle(20, Duration::from_millis(40), false),
            Deadline::Total(Duration::from_millis(250)),
            c.clone(),
        );
        let err = body.collect().await.unwrap_err();
        assert!(matches!(err, BodyError::TimedOut), "{err}");
        assert_eq!(c.get(), 1);
    }

    #[test]
    fn timeouts_are_recognised_through_io_and_multer_wrappers() {
        let io = std::io::Error::other(BodyError::TimedOut);
        assert!(is_timeout(&io));
        let multer = multer::Error::StreamReadFailed(Box::new(io));
        assert!(is_timeout(&multer));
        let other = std::io::Error::other("connection reset");
        assert!(!is_timeout(&other));
    }
}
