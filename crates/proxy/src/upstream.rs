//! The client that talks to vendors: a keep-alive pool per proxy worker on
//! `hyper::client::conn`, TLS origination with rustls, and an address policy
//! applied after DNS.
//!
//! Why our own pool rather than hyper-util's legacy client: each worker thread owns
//! its [`Client`], so a checkout is an uncontended lock and a pop, and an HTTP/1
//! connection goes back to the pool the moment its response body has been read
//! (the legacy client spawns a task per request to wait for that, and a timer per
//! request to bound it). The request deadline is a timer each pooled connection
//! keeps and pushes forward, which tokio does without touching its timer wheel.
//!
//! The address policy sits after DNS, so a public name that resolves to
//! `127.0.0.1` or `169.254.169.254` is refused like the literal would be.
//!
//! What the pool does not do: it does not close idle connections on a timer.
//! Expired ones are dropped when met at checkout and swept whenever a new
//! connection is made; vendors close their side after their own keep-alive.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{header, Request, Response, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::target::Origin;

/// What we send upstream: the caller's body streamed through, or one we hold.
pub type RequestBody = http_body_util::Either<Incoming, http_body_util::Full<Bytes>>;

/// Idle HTTP/1 connections kept per origin and worker.
const MAX_IDLE_PER_ORIGIN: usize = 256;
/// An idle connection older than this is not reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The longest one address gets to accept a connection before the next is tried.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(10);
/// Idle time before the kernel probes a vendor connection.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why a request could not be exchanged with the vendor. Messages name hosts and
/// OS errors, never request content.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{host} resolves only to private, loopback or link-local addresses")]
    PrivateAddress { host: String },
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: std::io::Error },
    #[error("cannot connect to {authority}: {source}")]
    Connect { authority: String, source: std::io::Error },
    #[error("TLS with {host} failed: {source}")]
    Tls { host: String, source: std::io::Error },
    #[error("{host} is not a valid TLS server name")]
    ServerName { host: String },
    #[error("the exchange with {authority} failed: {source}")]
    Http { authority: String, source: hyper::Error },
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

/// Why a vendor's response body ended before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("the vendor sent nothing for {0:?} in the middle of a response body")]
    Stalled(Duration),
}

/// Whether an address is loopback, private, link-local (cloud metadata lives at
/// 169.254.169.254), shared, unspecified, multicast or otherwise not a vendor's.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b)) // shared address space (RFC 6598)
                || a == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_forbidden(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local, incl. fd00:ec2::254
                || (first & 0xffc0) == 0xfe80 // link-local
        }
    }
}

pub use credgate_tls::TlsError as TlsSetupError;

/// One worker's pooled client. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    tls: tokio_rustls::TlsConnector,
    allow_private: bool,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("allow_private", &self.inner.allow_private)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

/// Where a pooled connection goes. Hashed and compared as the authority's text:
/// `Authority`'s own case-insensitive `Hash` feeds the hasher a byte at a time,
/// which cost a thousand instructions per lookup. Origins are built lowercase.
#[derive(Clone)]
struct PoolKey {
    https: bool,
    authority: Authority,
}

impl PartialEq for PoolKey {
    fn eq(&self, other: &Self) -> bool {
        self.https == other.https && self.authority.as_str() == other.authority.as_str()
    }
}

impl Eq for PoolKey {}

impl std::hash::Hash for PoolKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.https.hash(state);
        self.authority.as_str().hash(state);
    }
}

impl PoolKey {
    fn of(origin: &Origin) -> Self {
        Self {
            https: origin.scheme == Scheme::HTTPS,
            authority: origin.authority.clone(),
        }
    }
}

/// A connection in the pool.
enum Idle {
    Http1(Http1),
    /// Multiplexed: stays in the pool while in use; requests clone the sender.
    Http2(http2::SendRequest<RequestBody>),
}

/// An HTTP/1 connection, owned by one exchange at a time.
struct Http1 {
    sender: http1::SendRequest<RequestBody>,
    /// The current exchange's deadline. Kept with the connection and moved forward
    /// for each request: tokio extends a registered timer without re-inserting it.
    deadline: Pin<Box<Sleep>>,
    idle_since: Instant,
}

impl Idle {
    fn is_usable(&self, now: Instant) -> bool {
        match self {
            Idle::Http1(conn) => !conn.sender.is_closed() && now.duration_since(conn.idle_since) < IDLE_TIMEOUT,
            Idle::Http2(sender) => !sender.is_closed(),
        }
    }
}

/// A connection taken for one exchange.
enum Checkout {
    Http1(Http1),
    Http2(http2::SendRequest<RequestBody>),
}

/// Why an exchange on a connection did not produce a response.
enum Failed {
    /// The connection was closed before the request was written: safe to retry.
    NotSent(Box<Request<RequestBody>>),
    Error(UpstreamError),
}

impl Client {
    /// A client trusting the webpki roots plus an optional extra CA file, refusing
    /// private addresses unless `allow_private`, and giving each exchange `timeout`
    /// from the start of the checkout to the response head.
    pub fn new(allow_private: bool, extra_ca: Option<&Path>, timeout: Duration) -> Result<Self, TlsSetupError> {
        let mut tls = credgate_tls::client_config(extra_ca)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            inner: Arc::new(Inner {
                idle: Mutex::new(HashMap::new()),
                tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
                allow_private,
                timeout,
            }),
        })
    }

    /// Sends `request` (its URI absolute, pointing at `origin`) and returns the
    /// response head; the body streams afterwards. A pooled connection that turns
    /// out to be closed before the request was written is replaced transparently.
    pub async fn send(
        &self,
        origin: &Origin,
        mut request: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let key = PoolKey::of(origin);
        let deadline = Instant::now() + self.inner.timeout;
        loop {
            let (checkout, reused) = match self.checkout(&key) {
                Some(checkout) => (checkout, true),
                None => {
                    // Boxed: connecting (DNS, TLS) is rare and its future is large, and
                    // every request's future would otherwise carry its size.
                    let connecting = Box::pin(self.connect(origin, deadline));
                    let checkout = tokio::time::timeout_at(deadline, connecting)
                        .await
                        .map_err(|_| UpstreamError::Timeout(self.inner.timeout))??;
                    (checkout, false)
                }
            };
            match checkout {
                Checkout::Http1(conn) => match self.exchange_http1(conn, origin, &key, request, deadline).await {
                    Ok(response) => return Ok(response),
                    Err(Failed::NotSent(unsent)) if reused => request = *unsent,
                    Err(Failed::NotSent(_)) => return Err(self.closed(origin)),
                    Err(Failed::Error(error)) => return Err(error),
                },
                Checkout::Http2(mut sender) => {
                    // A retry may come from an HTTP/1 attempt, which rewrote the request.
                    request.headers_mut().remove(header::HOST);
                    if request.uri().authority().is_none() {
                        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
                        *request.uri_mut() = Uri::builder()
                            .scheme(origin.scheme.clone())
                            .authority(origin.authority.clone())
                            .path_and_query(path)
                            .build()
                            .map_err(|_| self.closed(origin))?;
                    }
                    let exchange = async {
                        if let Err(error) = sender.ready().await {
                            return Err((Some(request), error));
                        }
                        sender
                            .try_send_request(request)
                            .await
                            .map_err(|mut e| (e.take_message(), e.into_error()))
                    };
                    match tokio::time::timeout_at(deadline, exchange).await {
                        Err(_) => return Err(UpstreamError::Timeout(self.inner.timeout)),
                        Ok(Ok(response)) => {
                            let timeout = self.inner.timeout;
                            return Ok(response.map(|body| ResponseBody::new(body, timeout, None)));
                        }
                        Ok(Err((Some(unsent), _))) if reused => request = unsent,
                        Ok(Err((_, source))) => return Err(self.http_error(origin, source)),
                    }
                }
            }
        }
    }

    async fn exchange_http1(
        &self,
        mut conn: Http1,
        origin: &Origin,
        key: &PoolKey,
        mut request: Request<RequestBody>,
        deadline: Instant,
    ) -> Result<Response<ResponseBody>, Failed> {
        // HTTP/1 wants the origin form and a Host header.
        let path = request.uri().path_and_query().cloned();
        *request.uri_mut() = path.map(Uri::from).unwrap_or_else(|| Uri::from_static("/"));
        request.headers_mut().insert(header::HOST, origin.host_header.clone());
        *request.version_mut() = Version::HTTP_11;
        conn.deadline.as_mut().reset(deadline);
        let sender = &mut conn.sender;
        let exchange = async {
            if sender.ready().await.is_err() {
                return Err(Failed::NotSent(Box::new(request)));
            }
            sender
                .try_send_request(request)
                .await
                .map_err(|mut error| match error.take_message() {
                    Some(unsent) => Failed::NotSent(Box::new(unsent)),
                    None => Failed::Error(self.http_error(origin, error.into_error())),
                })
        };
        let response = tokio::select! {
            biased;
            response = exchange => response?,
            () = conn.deadline.as_mut() => return Err(Failed::Error(UpstreamError::Timeout(self.inner.timeout))),
        };
        let (parts, body) = response.into_parts();
        let returning = if body.is_end_stream() {
            self.release(key.clone(), conn);
            None
        } else {
            Some(Returning {
                client: self.clone(),
                key: key.clone(),
                conn,
            })
        };
        let body = ResponseBody::new(body, self.inner.timeout, returning);
        Ok(Response::from_parts(parts, body))
    }

    /// The most recently used live connection to `key`, if any.
    fn checkout(&self, key: &PoolKey) -> Option<Checkout> {
        let now = Instant::now();
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        // Dead and expired connections are dropped from the top, where checkouts
        // happen (the rest go at the next sweep).
        while list.last().is_some_and(|conn| !conn.is_usable(now)) {
            list.pop();
        }
        // The most recently used connection that is idle. One whose previous exchange
        // is still uploading (the vendor answered before reading the whole body)
        // stays pooled until it is done; meanwhile requests go elsewhere.
        let ready = list.iter().rposition(|conn| match conn {
            Idle::Http1(http1) => http1.sender.is_ready() && conn.is_usable(now),
            Idle::Http2(_) => conn.is_usable(now),
        })?;
        let conn = list.remove(ready);
        Some(match conn {
            Idle::Http1(conn) => Checkout::Http1(conn),
            Idle::Http2(sender) => {
                let shared = sender.clone();
                list.push(Idle::Http2(sender));
                Checkout::Http2(shared)
            }
        })
    }

    fn release(&self, key: PoolKey, mut conn: Http1) {
        if conn.sender.is_closed() {
            return;
        }
        conn.idle_since = Instant::now();
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = match idle.get_mut(&key) {
            Some(list) => list,
            None => idle.entry(key).or_default(),
        };
        if list.len() < MAX_IDLE_PER_ORIGIN {
            list.push(Idle::Http1(conn));
        }
    }

    /// Opens a connection: DNS, the address policy, TCP, TLS with ALPN, and the
    /// HTTP handshake. Also sweeps dead and expired connections from the pool.
    async fn connect(&self, origin: &Origin, deadline: Instant) -> Result<Checkout, UpstreamError> {
        self.sweep();
        let addrs = self.resolve(origin).await?;
        let tcp = self.connect_tcp(origin, &addrs).await?;
        let _ = tcp.set_nodelay(true);
        // Notices a vendor that vanished from an idle pooled connection or in the
        // middle of a long response body.
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        if origin.scheme != Scheme::HTTPS {
            return self.handshake_http1(tcp, origin, deadline).await;
        }
        let name =
            rustls_pki_types::ServerName::try_from(origin.host.clone()).map_err(|_| UpstreamError::ServerName {
                host: origin.host.clone(),
            })?;
        let tls = self
            .inner
            .tls
            .connect(name, tcp)
            .await
            .map_err(|source| UpstreamError::Tls {
                host: origin.host.clone(),
                source,
            })?;
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|source| self.http_error(origin, source))?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream HTTP/2 connection ended with an error");
                }
            });
            let key = PoolKey::of(origin);
            let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.entry(key).or_default().push(Idle::Http2(sender.clone()));
            return Ok(Checkout::Http2(sender));
        }
        self.handshake_http1(tls, origin, deadline).await
    }

    /// Tries the addresses in turn, giving each at most [`CONNECT_ATTEMPT`], so that
    /// one unreachable address (a broken IPv6 route, say) does not use up the whole
    /// request deadline.
    async fn connect_tcp(&self, origin: &Origin, addrs: &[SocketAddr]) -> Result<TcpStream, UpstreamError> {
        let mut last = std::io::Error::from(std::io::ErrorKind::AddrNotAvailable);
        for addr in addrs {
            match tokio::time::timeout(CONNECT_ATTEMPT, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => return Ok(tcp),
                Ok(Err(error)) => last = error,
                Err(_) => last = std::io::ErrorKind::TimedOut.into(),
            }
        }
        Err(UpstreamError::Connect {
            authority: origin.authority.to_string(),
            source: last,
        })
    }

    async fn handshake_http1<T>(&self, io: T, origin: &Origin, deadline: Instant) -> Result<Checkout, UpstreamError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|source| self.http_error(origin, source))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(Checkout::Http1(Http1 {
            sender,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            idle_since: Instant::now(),
        }))
    }

    /// The origin's addresses that the policy allows.
    async fn resolve(&self, origin: &Origin) -> Result<Vec<SocketAddr>, UpstreamError> {
        let host = origin.host.as_str();
        let resolved: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, origin.port)],
            Err(_) => tokio::net::lookup_host((host, origin.port))
                .await
                .map_err(|source| UpstreamError::Resolve {
                    host: host.to_owned(),
                    source,
                })?
                .collect(),
        };
        let allowed: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|addr| self.inner.allow_private || !is_forbidden(addr.ip()))
            .collect();
        if allowed.is_empty() {
            return Err(UpstreamError::PrivateAddress { host: host.to_owned() });
        }
        Ok(allowed)
    }

    /// Drops pooled connections that are closed or idle too long, and origins
    /// left with none.
    fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, list| {
            list.retain(|conn| conn.is_usable(now));
            !list.is_empty()
        });
    }

    fn http_error(&self, origin: &Origin, source: hyper::Error) -> UpstreamError {
        UpstreamError::Http {
            authority: origin.authority.to_string(),
            source,
        }
    }

    fn closed(&self, origin: &Origin) -> UpstreamError {
        UpstreamError::Connect {
            authority: origin.authority.to_string(),
            source: std::io::ErrorKind::ConnectionReset.into(),
        }
    }

    /// Idle connections to `origin` in this worker's pool.
    #[cfg(test)]
    fn idle_connections(&self, origin: &Origin) -> usize {
        let idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get(&PoolKey::of(origin)).map_or(0, Vec::len)
    }
}

/// A vendor's response body. For HTTP/1 it holds the connection and returns it to
/// the pool when the body ends; dropped early, the connection is closed with it.
///
/// A vendor that stops sending in the middle of a body gets the request timeout
/// again for each frame, then the body fails ([`BodyError::Stalled`]): the same
/// bound as for the response head, so a stuck vendor cannot hold a connection
/// (and the client's behind it) forever. The timer is the pooled connection's own
/// when there is one, and is only touched while a frame is awaited.
pub struct ResponseBody {
    inner: Incoming,
    returning: Option<Returning>,
    /// How long the vendor may take to send the next frame.
    idle_timeout: Duration,
    /// Whether the timer runs for the frame now awaited.
    timer_armed: bool,
    /// The timer of a body without a pooled connection to borrow one from.
    own_timer: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("pooled", &self.returning.is_some())
            .finish_non_exhaustive()
    }
}

struct Returning {
    client: Client,
    key: PoolKey,
    conn: Http1,
}

impl ResponseBody {
    fn new(inner: Incoming, idle_timeout: Duration, returning: Option<Returning>) -> Self {
        Self {
            inner,
            returning,
            idle_timeout,
            timer_armed: false,
            own_timer: None,
        }
    }

    fn release(&mut self) {
        if let Some(Returning { client, key, conn }) = self.returning.take() {
            client.release(key, conn);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) else {
            let timeout = this.idle_timeout;
            let timer = match &mut this.returning {
                Some(returning) => &mut returning.conn.deadline,
                None => this
                    .own_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout))),
            };
            if !std::mem::replace(&mut this.timer_armed, true) {
                timer.as_mut().reset(Instant::now() + timeout);
            }
            ready!(std::future::Future::poll(timer.as_mut(), cx));
            // The connection is mid-body: it cannot serve another request.
            this.returning = None;
            return Poll::Ready(Some(Err(BodyError::Stalled(timeout))));
        };
        this.timer_armed = false;
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.release(),
            Some(Ok(_)) => {}
            Some(Err(_)) => this.returning = None,
        }
        Poll::Ready(frame.map(|frame| frame.map_err(BodyError::from)))
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
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// How the test vendor treats a connection after answering.
    #[derive(Clone, Copy)]
    enum After {
        KeepAlive,
        Close,
        /// Accepts and never answers.
        Hang,
        /// Answers the first request head at once, then stops reading (a request
        /// body still being sent stays unsent).
        StopReading,
        /// Sends a head and 2 of the 10 body bytes it announced, then nothing.
        StallBody,
    }

    /// A raw HTTP/1.1 vendor answering `ok` to every request head; counts accepts.
    async fn vendor(after: After) -> (Origin, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let Ok(n @ 1..) = socket.read(&mut buf).await else {
                            return;
                        };
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let answer: &[u8] = match after {
                                After::Hang => b"",
                                After::KeepAlive | After::Close | After::StopReading => {
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                                }
                                After::StallBody => b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok",
                            };
                            socket.write_all(answer).await.unwrap();
                            match after {
                                After::Close => return,
                                After::StopReading | After::StallBody => std::future::pending::<()>().await,
                                After::KeepAlive | After::Hang => {}
                            }
                        }
                    }
                });
            }
        });
        let origin = Origin::new(Scheme::HTTP, "127.0.0.1".into(), port, String::new()).unwrap();
        (origin, accepted)
    }

    fn get(origin: &Origin) -> Request<RequestBody> {
        let uri = format!("http://{}/v1/things", origin.authority);
        Request::get(uri)
            .body(RequestBody::Right(http_body_util::Full::new(Bytes::new())))
            .unwrap()
    }

    fn client(timeout: Duration) -> Client {
        Client::new(true, None, timeout).unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_body_is_read() {
        let (origin, accepted) = vendor(After::KeepAlive).await;
        let client = client(Duration::from_secs(5));
        for _ in 0..5 {
            let response = client.send(&origin, get(&origin)).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
            assert_eq!(client.idle_connections(&origin), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_takes_its_connection_with_it() {
        let (origin, accepted) = vendor(After::KeepAlive).await;
        let client = client(Duration::from_secs(5));
        let response = client.send(&origin, get(&origin)).await.unwrap();
        assert_eq!(client.idle_connections(&origin), 0, "in use, not idle");
        drop(response);
        assert_eq!(client.idle_connections(&origin), 0);
        let response = client.send(&origin, get(&origin)).await.unwrap();
        response.into_body().collect().await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_the_vendor_closed_are_replaced_without_an_error() {
        let (origin, accepted) = vendor(After::Close).await;
        let client = client(Duration::from_secs(5));
        for _ in 0..5 {
            let response = client.send(&origin, get(&origin)).await.unwrap();
            response.into_body().collect().await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_connection_still_uploading_is_passed_over() {
        let (origin, accepted) = vendor(After::StopReading).await;
        let client = client(Duration::from_secs(30));
        let uri = format!("http://{}/v1/upload", origin.authority);
        let body = RequestBody::Right(http_body_util::Full::new(Bytes::from(vec![0; 64 << 20])));
        let upload = Request::post(uri).body(body).unwrap();
        let response = client.send(&origin, upload).await.unwrap();
        response.into_body().collect().await.unwrap();
        // The upload cannot finish: the vendor stopped reading. The next request
        // must not queue behind it.
        let next = tokio::time::timeout(Duration::from_secs(10), client.send(&origin, get(&origin)))
            .await
            .expect("the request waited behind a stalled upload")
            .unwrap();
        next.into_body().collect().await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_vendor_that_never_answers_times_out() {
        let (origin, _) = vendor(After::Hang).await;
        let client = client(Duration::from_secs(30));
        let error = client.send(&origin, get(&origin)).await.unwrap_err();
        assert!(matches!(error, UpstreamError::Timeout(_)), "{error}");
        // The same on a pooled connection, whose deadline timer is reused.
        let (origin, _) = vendor(After::KeepAlive).await;
        let response = client.send(&origin, get(&origin)).await.unwrap();
        response.into_body().collect().await.unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        let response = client.send(&origin, get(&origin)).await.unwrap();
        response.into_body().collect().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_vendor_that_stops_mid_body_fails_the_body_after_the_timeout() {
        let (origin, _) = vendor(After::StallBody).await;
        let client = client(Duration::from_secs(30));
        let response = client.send(&origin, get(&origin)).await.unwrap();
        let started = Instant::now();
        let collected = tokio::time::timeout(Duration::from_secs(120), response.into_body().collect()).await;
        let error = collected.expect("the stalled body never failed").unwrap_err();
        assert!(matches!(error, BodyError::Stalled(_)), "{error}");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(client.idle_connections(&origin), 0, "a connection mid-body was pooled");
    }

    #[tokio::test]
    async fn an_address_that_refuses_is_skipped_for_the_next() {
        let (origin, _) = vendor(After::KeepAlive).await;
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let open = SocketAddr::new([127, 0, 0, 1].into(), origin.port);
        let tcp = client(Duration::from_secs(5))
            .connect_tcp(&origin, &[closed, open])
            .await
            .unwrap();
        assert_eq!(tcp.peer_addr().unwrap(), open);
        let error = client(Duration::from_secs(5))
            .connect_tcp(&origin, &[closed])
            .await
            .unwrap_err();
        assert!(matches!(error, UpstreamError::Connect { .. }), "{error}");
    }

    #[tokio::test]
    async fn private_addresses_are_refused_before_connecting() {
        let (origin, accepted) = vendor(After::KeepAlive).await;
        let client = Client::new(false, None, Duration::from_secs(5)).unwrap();
        let error = client.send(&origin, get(&origin)).await.unwrap_err();
        assert!(matches!(error, UpstreamError::PrivateAddress { .. }), "{error}");
        let localhost = Origin::new(Scheme::HTTP, "localhost".into(), origin.port, String::new()).unwrap();
        let error = client.send(&localhost, get(&localhost)).await.unwrap_err();
        assert!(matches!(error, UpstreamError::PrivateAddress { .. }), "{error}");
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn private_and_metadata_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.100.100.200",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "255.255.255.255",
        ] {
            assert!(is_forbidden(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "52.1.2.3", "2606:4700::1111", "172.32.0.1"] {
            assert!(!is_forbidden(ip.parse().unwrap()), "{ip}");
        }
    }
}
