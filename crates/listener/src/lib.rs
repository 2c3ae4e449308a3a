//! The accept loop shared by the proxy and admin listeners: a connection cap, header
//! limits and timeouts, HTTP/1.1 and h2c, and a graceful drain on shutdown.
//!
//! One loop for both listeners so that the limits that keep slow or malformed
//! clients from pinning the process are written (and reviewed) once.
//!
//! The header-read timeout is ours rather than hyper's: hyper arms a fresh timer
//! for every request head, and on the proxy's hot path each of those registrations
//! woke the runtime's driver through its eventfd (a syscall per request). Here each
//! connection keeps one timer and counts its requests in flight ([`activity`]); the
//! timer is only looked at when it fires, and a request costs two atomic updates.
//! The same timer drops a connection whose client has stopped reading a response
//! for as long (see [`activity`]).
#![forbid(unsafe_code)]

mod activity;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use activity::{Activity, Ending};
pub use activity::{Busy, ConnectionActivity};

/// Limits for one listener.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections served at once; further clients wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a client has to send a complete request head after connecting or after
    /// its previous response ended; so it also closes idle keep-alive connections.
    pub header_read_timeout: Duration,
    /// Largest request head (request line plus headers) in bytes.
    pub max_header_bytes: usize,
    /// Time in-flight requests get to finish after shutdown is signalled.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// A connection and its peer, as handed from an acceptor to a worker.
pub type Accepted = (std::net::TcpStream, SocketAddr);

/// Where a serve loop gets its connections.
#[derive(Debug)]
pub enum Connections {
    /// Accepted on this loop's own listener.
    Listener(TcpListener),
    /// Handed over by [`distribute`], which accepts for several workers.
    Handoff(mpsc::Receiver<Accepted>),
}

impl From<TcpListener> for Connections {
    fn from(listener: TcpListener) -> Self {
        Self::Listener(listener)
    }
}

impl Connections {
    /// The next connection; `None` once the acceptor has stopped.
    async fn next(&mut self) -> Option<std::io::Result<(TcpStream, SocketAddr)>> {
        match self {
            Self::Listener(listener) => Some(listener.accept().await),
            Self::Handoff(handed) => {
                let (stream, peer) = handed.recv().await?;
                Some(TcpStream::from_std(stream).map(|stream| (stream, peer)))
            }
        }
    }
}

/// Accepts on `listener` and hands the connections to `workers` in turn, until
/// `shutdown` changes. A full worker is skipped while another has room.
///
/// Why not let every worker accept on the shared socket: all of them are woken for
/// each connection and whichever runs first takes it, so a burst of connections
/// often lands on one worker while the other cores idle (measured: 32 wrk
/// connections split 32/0 in one run of four). Round-robin gives each worker its
/// share, for the price of one hand-over per connection, not per request.
pub async fn distribute(
    listener: TcpListener,
    workers: Vec<mpsc::Sender<Accepted>>,
    mut shutdown: watch::Receiver<()>,
) {
    if workers.is_empty() {
        return;
    }
    let mut next = 0;
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(stream) = stream.into_std() else { continue };
        if let Some(handed) = offer(&workers, &mut next, (stream, peer)) {
            // Every worker is full: wait for the next, leaving clients in the backlog.
            // (A worker that has stopped refuses it; the connection is then closed.)
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = workers[next].send(handed) => {}
            }
        }
    }
}

/// Offers a connection to each worker in turn from `next`; gives it back if all are
/// full.
fn offer(workers: &[mpsc::Sender<Accepted>], next: &mut usize, mut handed: Accepted) -> Option<Accepted> {
    use mpsc::error::TrySendError::{Closed, Full};
    for _ in 0..workers.len() {
        let worker = &workers[*next];
        *next = (*next + 1) % workers.len();
        match worker.try_send(handed) {
            Ok(()) => return None,
            Err(Full(back) | Closed(back)) => handed = back,
        }
    }
    Some(handed)
}

/// Serves `make_service(peer)` on every accepted connection until `shutdown`
/// changes; then stops accepting and waits (up to the drain timeout) for the
/// connections in flight.
pub async fn serve<S, B, F>(
    connections: impl Into<Connections>,
    limits: Limits,
    make_service: F,
    mut shutdown: watch::Receiver<()>,
) where
    F: Fn(std::net::SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connections = connections.into();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    loop {
        let permit = tokio::select! {
            _ = shutdown.changed() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = connections.next() => match accepted {
                None => break,
                Some(Ok(accepted)) => accepted,
                Some(Err(error)) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let service = activity.track(make_service(peer));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let header_read_timeout = limits.header_read_timeout;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let close = |connection: Pin<&mut _>| auto::UpgradeableConnection::graceful_shutdown(connection);
            match activity.drive(connection, close, header_read_timeout, shutdown).await {
                Ending::Finished(Err(error)) => tracing::debug!(%error, %peer, "connection ended with an error"),
                Ending::Finished(Ok(())) => {}
                Ending::Abandoned => tracing::debug!(%peer, "dropped: idle, and did not close in time"),
                Ending::Stalled => tracing::info!(%peer, "dropped: the client stopped reading its response"),
            }
            drop(permit);
        });
    }
    drop(connections);
    // Every connection holds a permit until it ends: all permits back means drained.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.drain_timeout, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections did not drain in time");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_are_handed_to_workers_in_turn_and_full_ones_are_skipped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, mut to_a) = mpsc::channel(8);
        let (b, mut to_b) = mpsc::channel(2);
        let (_stop, shutdown) = watch::channel(());
        tokio::spawn(distribute(listener, vec![a, b], shutdown));
        let mut clients = Vec::new();
        for _ in 0..8 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut peers_a = Vec::new();
        for _ in 0..6 {
            peers_a.push(to_a.recv().await.unwrap().1);
        }
        let peers_b = [to_b.recv().await.unwrap().1, to_b.recv().await.unwrap().1];
        // Alternating until b's queue of 2 was full, then everything to a.
        let local = |i: usize| clients[i].local_addr().unwrap();
        assert_eq!(peers_b, [local(1), local(3)]);
        assert_eq!(peers_a, [local(0), local(2), local(4), local(5), local(6), local(7)]);
    }
}
