//! Per-connection request accounting for the header-read (idle) timeout.
//!
//! A connection is *idle* while no request is in flight: from the accept, and from
//! the moment a response body is dropped (hyper drops it when it has taken its last
//! chunk, or the exchange failed) until the next request head is complete and the
//! service is called. An idle connection gets `timeout` to produce that head, after
//! which it is asked to close gracefully (hyper finishes writing what it holds, then
//! closes; an HTTP/2 client gets a GOAWAY) and dropped if it is still open another
//! `timeout` later. Busy connections are not closed as idle. A `CONNECT`
//! request carries a [`ConnectionActivity`] in its extensions, so that a tunnel,
//! which outlives its response on HTTP/2, keeps its connection busy while open.
//!
//! A busy connection can still be *stalled*: its client has stopped reading, so a
//! response body has handed over a frame and hyper, its buffer full, has not come
//! back for the next one. A connection on which a response has waited like that for
//! `timeout` is dropped at once: asking a client that does not read to close is
//! pointless, and without this a client could hold a connection (and the vendor's
//! behind it) forever by opening a large download and never reading it. A body
//! waiting on the vendor instead is the upstream client's business, not this timer's.
//!
//! The service wrapper only updates a few atomics per request and per body frame.
//! The connection's one timer is consulted when it fires: then it closes or drops the
//! connection, or moves the deadline to where the current idle period or the
//! current wait for the client ends.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use hyper::service::Service;
use hyper::{Method, Request, Response};
use tokio::sync::watch;
use tokio::time::Instant;

/// Requests in flight on one connection, when it last became idle, and whether its
/// client keeps taking the responses.
#[derive(Debug)]
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since `opened` at which the current idle period began.
    idle_since_ms: AtomicU64,
    /// Response bodies that handed over a frame and have not been asked for the next.
    waiting_on_client: AtomicUsize,
    /// Milliseconds since `opened` at which a response body was last asked for a frame.
    last_taken_ms: AtomicU64,
    opened: Instant,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            waiting_on_client: AtomicUsize::new(0),
            last_taken_ms: AtomicU64::new(0),
            opened: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn at_ms(&self, ms: &AtomicU64) -> Instant {
        self.opened + Duration::from_millis(ms.load(Ordering::Acquire))
    }

    /// Wraps a connection's service so that its requests are counted.
    pub(crate) fn track<S>(self: &Arc<Self>, inner: S) -> Tracked<S> {
        Tracked {
            inner,
            activity: Arc::clone(self),
        }
    }

    /// Drives `connection` to its end. It is asked to `close` gracefully once it
    /// has been idle for `timeout` (and dropped if still open another `timeout`
    /// later), or when `shutdown` changes (then the listener's drain timeout
    /// bounds it). It is dropped at once when a response has waited `timeout` for
    /// its client to take the next frame.
    pub(crate) async fn drive<F: Future>(
        &self,
        connection: F,
        close: impl Fn(Pin<&mut F>),
        timeout: Duration,
        mut shutdown: watch::Receiver<()>,
    ) -> Ending<F::Output> {
        let mut connection = pin!(connection);
        let mut timer = pin!(tokio::time::sleep(timeout));
        let mut closing = None;
        loop {
            tokio::select! {
                output = connection.as_mut() => return Ending::Finished(output),
                _ = shutdown.changed(), if closing.is_none() => {
                    close(connection.as_mut());
                    closing = Some(Closing::Shutdown);
                }
                () = timer.as_mut() => {
                    let now = Instant::now();
                    let stalled = self.stall_deadline(timeout);
                    if stalled.is_some_and(|deadline| deadline <= now) {
                        return Ending::Stalled;
                    }
                    let next = match (closing, self.idle_deadline(timeout)) {
                        (Some(Closing::Idle), _) => return Ending::Abandoned,
                        // Busy, or draining: look again when a waiting response would
                        // stall, or in a timeout.
                        (Some(Closing::Shutdown), _) | (None, None) => stalled.unwrap_or(now + timeout),
                        (None, Some(deadline)) if deadline > now => deadline,
                        (None, Some(_)) => {
                            close(connection.as_mut());
                            closing = Some(Closing::Idle);
                            now + timeout
                        }
                    };
                    timer.as_mut().reset(next);
                }
            }
        }
    }

    /// When the current idle period times out; `None` while a request is in flight.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.at_ms(&self.idle_since_ms) + timeout)
    }

    /// When a response waiting for the client stalls; `None` while none waits.
    fn stall_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.waiting_on_client.load(Ordering::Acquire) == 0 {
            return None;
        }
        Some(self.at_ms(&self.last_taken_ms) + timeout)
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }
}

/// Why a connection was asked to close.
#[derive(Clone, Copy, Debug)]
enum Closing {
    Idle,
    Shutdown,
}

/// How [`Activity::drive`] ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ending<T> {
    /// The connection ended by itself (possibly after being asked to close).
    Finished(T),
    /// Asked to close for being idle, it had not after another timeout: dropped.
    Abandoned,
    /// A response waited a timeout for the client to read on: dropped.
    Stalled,
}

/// The activity of the connection a request arrived on, in the extensions of
/// `CONNECT` requests.
#[derive(Clone, Debug)]
pub struct ConnectionActivity(Arc<Activity>);

impl ConnectionActivity {
    /// Counts the connection as busy until the returned guard is dropped.
    pub fn busy(&self) -> Busy {
        self.0.begin()
    }
}

/// One request (or tunnel) in flight; dropping it ends it.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        // Written before the count drops so the timer never sees a stale start.
        activity.idle_since_ms.fetch_max(activity.now_ms(), Ordering::AcqRel);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A service whose requests are counted from the call until the response body is
/// dropped.
#[derive(Debug)]
pub(crate) struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, R, B> Service<Request<R>> for Tracked<S>
where
    S: Service<Request<R>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, mut request: Request<R>) -> Self::Future {
        let busy = self.activity.begin();
        if request.method() == Method::CONNECT {
            let activity = ConnectionActivity(Arc::clone(&self.activity));
            request.extensions_mut().insert(activity);
        }
        TrackedFuture {
            inner: self.inner.call(request),
            busy: Some(busy),
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's future, holding the request's [`Busy`] until the response.
    pub(crate) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        busy: Option<Busy>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        let state = this.busy.take().map(|busy| BodyState { busy, waiting: false });
        Poll::Ready(output.map(|response| response.map(|inner| TrackedBody { inner, state })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its request when dropped, and tells the connection
    /// whether it is waiting for the client.
    pub(crate) struct TrackedBody<B> {
        #[pin]
        inner: B,
        state: Option<BodyState>,
    }
}

/// A response body's part in its connection's [`Activity`].
#[derive(Debug)]
struct BodyState {
    busy: Busy,
    /// It handed over a frame and has not been asked for the next one yet.
    waiting: bool,
}

impl Drop for BodyState {
    fn drop(&mut self) {
        // Before `busy` drops, so the request is never idle while counted as waiting.
        if self.waiting {
            self.busy.0.waiting_on_client.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let Some(state) = this.state else {
            return this.inner.poll_frame(cx);
        };
        // Asked for a frame: the client took the last one.
        let activity = &state.busy.0;
        activity.last_taken_ms.store(activity.now_ms(), Ordering::Release);
        if std::mem::take(&mut state.waiting) {
            activity.waiting_on_client.fetch_sub(1, Ordering::AcqRel);
        }
        let mut inner = this.inner;
        let frame = inner.as_mut().poll_frame(cx);
        // A frame handed over, with more to come: until hyper asks again, this body
        // waits for the client.
        if matches!(frame, Poll::Ready(Some(Ok(_)))) && !inner.is_end_stream() {
            state.waiting = true;
            activity.waiting_on_client.fetch_add(1, Ordering::AcqRel);
        }
        frame
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
    use super::*;

    /// Answers every call with a small body.
    struct Answer;

    impl Service<Request<()>> for Answer {
        type Response = Response<String>;
        type Error = ();
        type Future = std::future::Ready<Result<Response<String>, ()>>;

        fn call(&self, request: Request<()>) -> Self::Future {
            // A tunnel: keeps the connection busy for as long as the test holds it.
            if let Some(activity) = request.extensions().get::<ConnectionActivity>() {
                std::mem::forget(activity.busy());
            }
            std::future::ready(Ok(Response::new(String::from("ok"))))
        }
    }

    fn service(activity: &Arc<Activity>) -> Tracked<Answer> {
        activity.track(Answer)
    }

    /// A connection that ends once asked to close, if it `obeys`.
    struct TestConnection {
        obeys: bool,
        asked: bool,
    }

    impl Future for TestConnection {
        type Output = ();

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if self.obeys && self.asked {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    async fn drive(activity: &Activity, obeys: bool, shutdown: watch::Receiver<()>) -> Ending<()> {
        let connection = TestConnection { obeys, asked: false };
        let close = |connection: Pin<&mut TestConnection>| connection.get_mut().asked = true;
        activity.drive(connection, close, TIMEOUT, shutdown).await
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_asked_to_close_after_the_timeout_and_dropped_a_timeout_later() {
        let (_keep, shutdown) = watch::channel(());
        let started = Instant::now();
        assert_eq!(
            drive(&Activity::new(), true, shutdown.clone()).await,
            Ending::Finished(())
        );
        assert_eq!(started.elapsed(), TIMEOUT);
        let started = Instant::now();
        assert_eq!(drive(&Activity::new(), false, shutdown).await, Ending::Abandoned);
        assert_eq!(started.elapsed(), 2 * TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_is_not_closed_and_idleness_counts_from_the_last_response() {
        let (_keep, shutdown) = watch::channel(());
        let activity = Activity::new();
        let service = service(&activity);
        let started = Instant::now();
        let watcher = {
            let activity = Arc::clone(&activity);
            tokio::spawn(async move { drive(&activity, true, shutdown).await })
        };
        // A request whose response body lives for 25 s, then is dropped.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let response = service.call(Request::new(())).await.unwrap();
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert!(!watcher.is_finished(), "closed while a response was in flight");
        drop(response);
        assert_eq!(watcher.await.unwrap(), Ending::Finished(()));
        assert_eq!(started.elapsed(), Duration::from_secs(40), "30 s busy, then 10 s idle");
    }

    /// A response body that always has a frame ready, or never has one.
    #[derive(Clone, Copy)]
    enum Stream {
        Endless,
        Silent,
    }

    impl Body for Stream {
        type Data = &'static [u8];
        type Error = ();

        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, ()>>> {
            match *self {
                Stream::Endless => Poll::Ready(Some(Ok(Frame::data(&b"chunk"[..])))),
                Stream::Silent => Poll::Pending,
            }
        }
    }

    impl Service<Request<()>> for Stream {
        type Response = Response<Stream>;
        type Error = ();
        type Future = std::future::Ready<Result<Response<Stream>, ()>>;

        fn call(&self, _: Request<()>) -> Self::Future {
            std::future::ready(Ok(Response::new(*self)))
        }
    }

    /// The body of a response the connection is serving.
    async fn respond(activity: &Arc<Activity>, body: Stream) -> TrackedBody<Stream> {
        activity.track(body).call(Request::new(())).await.unwrap().into_body()
    }

    /// What hyper does when its client has room for more: asks the body for a frame.
    async fn take_frame<B: Body + Unpin>(body: &mut B) {
        let mut body = Pin::new(body);
        let _ = std::future::poll_fn(|cx| match body.as_mut().poll_frame(cx) {
            Poll::Pending => Poll::Ready(None),
            ready => ready,
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_its_client_stops_taking_is_dropped_a_timeout_after_the_last_frame() {
        let (_keep, shutdown) = watch::channel(());
        let activity = Activity::new();
        let started = Instant::now();
        let watcher = {
            let activity = Arc::clone(&activity);
            tokio::spawn(async move { drive(&activity, true, shutdown).await })
        };
        let mut body = respond(&activity, Stream::Endless).await;
        // A slow but steady reader: a frame every 5 s, for 30 s.
        for _ in 0..=6 {
            take_frame(&mut body).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert!(!watcher.is_finished(), "a client that reads was cut off");
        }
        // Then it stops reading.
        let ending = tokio::time::timeout(6 * TIMEOUT, watcher).await;
        assert_eq!(ending.expect("never cut off").unwrap(), Ending::Stalled);
        assert_eq!(started.elapsed(), Duration::from_secs(30) + TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_waiting_for_the_vendor_is_not_a_stall() {
        let (_keep, shutdown) = watch::channel(());
        let activity = Activity::new();
        let mut body = respond(&activity, Stream::Silent).await;
        take_frame(&mut body).await;
        let driven = tokio::time::timeout(6 * TIMEOUT, drive(&activity, true, shutdown)).await;
        assert!(driven.is_err(), "a response waiting for its vendor was cut off");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_dropped_while_waiting_for_its_client_stops_counting() {
        let activity = Activity::new();
        let waiting = || activity.waiting_on_client.load(Ordering::Acquire);
        let mut body = respond(&activity, Stream::Endless).await;
        take_frame(&mut body).await;
        assert_eq!(waiting(), 1);
        take_frame(&mut body).await;
        assert_eq!(waiting(), 1, "asking again ends the previous wait");
        drop(body);
        assert_eq!(waiting(), 0);
        assert_eq!(activity.in_flight.load(Ordering::Acquire), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connect_tunnel_keeps_its_connection_busy_after_the_response() {
        let (_keep, shutdown) = watch::channel(());
        let activity = Activity::new();
        let connect = Request::builder().method(Method::CONNECT).body(()).unwrap();
        drop(service(&activity).call(connect).await.unwrap());
        let driven = tokio::time::timeout(6 * TIMEOUT, drive(&activity, true, shutdown.clone())).await;
        assert!(driven.is_err(), "the tunnel's connection was closed as idle");
        // A plain request's connection is idle again once its response is dropped.
        let activity = Activity::new();
        drop(service(&activity).call(Request::new(())).await.unwrap());
        assert_eq!(drive(&activity, true, shutdown).await, Ending::Finished(()));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_asks_at_once_and_leaves_the_bound_to_the_drain() {
        let (stop, shutdown) = watch::channel(());
        let activity = Activity::new();
        let started = Instant::now();
        let obeying = tokio::spawn({
            let (activity, shutdown) = (Arc::clone(&activity), shutdown.clone());
            async move { drive(&activity, true, shutdown).await }
        });
        let ignoring = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { drive(&activity, false, shutdown).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.send(()).unwrap();
        assert_eq!(obeying.await.unwrap(), Ending::Finished(()));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        tokio::time::sleep(6 * TIMEOUT).await;
        assert!(
            !ignoring.is_finished(),
            "the idle timer abandoned a draining connection"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_ends_by_itself_is_returned() {
        let (_keep, shutdown) = watch::channel(());
        let output = Activity::new().drive(async { 7 }, |_| {}, TIMEOUT, shutdown).await;
        assert_eq!(output, Ending::Finished(7));
    }
}
