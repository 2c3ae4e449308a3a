//! `FakeVendor`: an HTTP or HTTPS upstream that records every request it receives
//! (headers and body length, never buffering bodies) and answers as told.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request as the vendor saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// Path and query.
    pub uri: String,
    pub headers: HeaderMap,
    pub body_len: u64,
    /// The first 64 KiB of the body.
    pub body: Vec<u8>,
    pub at: std::time::Instant,
}

/// What the vendor answers.
#[derive(Clone, Debug)]
pub enum Answer {
    /// A status, headers and a small body.
    Fixed {
        status: StatusCode,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// 200 with `bytes` of generated body, streamed in 64 KiB chunks.
    Stream { bytes: u64 },
    /// Waits until `release` is notified, then answers 200 `{"slow":true}`; tells
    /// `arrived` when the request is in.
    Held {
        arrived: Arc<tokio::sync::Notify>,
        release: Arc<tokio::sync::Notify>,
    },
}

impl Answer {
    pub fn ok(body: &str) -> Self {
        Self::Fixed {
            status: StatusCode::OK,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
        }
    }
}

#[derive(Debug)]
pub struct FakeVendor {
    addr: SocketAddr,
    tls: bool,
    /// Requests seen so far. A std mutex: only ever locked briefly, never across
    /// an await.
    requests: Arc<Mutex<Vec<Recorded>>>,
    /// The standing answer, and answers queued to be given once each, first.
    answer: Arc<Mutex<(Answer, std::collections::VecDeque<Answer>)>>,
    /// PEM of the CA that signed the HTTPS certificate (for `extra_ca_file`).
    pub ca_pem: Option<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeVendor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeVendor {
    /// A plain HTTP vendor on 127.0.0.1.
    pub async fn http() -> Self {
        Self::start(None).await
    }

    /// An HTTPS vendor for `localhost`, with a certificate from a fresh test CA.
    pub async fn https() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "credgate test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut vendor = Self::start(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await;
        vendor.ca_pem = Some(ca.pem());
        vendor
    }

    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new((Answer::ok("{\"ok\":true}"), Default::default())));
        let (seen, told) = (Arc::clone(&requests), Arc::clone(&answer));
        let is_tls = tls.is_some();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, told, tls) = (Arc::clone(&seen), Arc::clone(&told), tls.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (seen, told) = (Arc::clone(&seen), Arc::clone(&told));
                        async move { Ok::<_, Infallible>(respond(request, seen, told).await) }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            tls: is_tls,
            requests,
            answer,
            ca_pem: None,
            task,
        }
    }

    /// The vendor's base URL: `http://127.0.0.1:<port>` or `https://localhost:<port>`.
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://127.0.0.1:{}", self.addr.port())
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn answer(&self, answer: Answer) {
        self.answer.lock().unwrap().0 = answer;
    }

    /// Answers the next request with `answer`, then goes back to the standing one.
    pub fn answer_once(&self, answer: Answer) {
        self.answer.lock().unwrap().1.push_back(answer);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn respond(
    request: Request<Incoming>,
    seen: Arc<Mutex<Vec<Recorded>>>,
    told: Arc<Mutex<(Answer, std::collections::VecDeque<Answer>)>>,
) -> Response<BoxBody<Bytes, Infallible>> {
    let (parts, mut body) = request.into_parts();
    let mut body_len = 0u64;
    let mut kept = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            body_len += data.len() as u64;
            let room = (64 * 1024usize).saturating_sub(kept.len());
            kept.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    seen.lock().unwrap().push(Recorded {
        method: parts.method,
        uri: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: parts.headers,
        body_len,
        body: kept,
        at: std::time::Instant::now(),
    });
    let answer = {
        let mut told = told.lock().unwrap();
        told.1.pop_front().unwrap_or_else(|| told.0.clone())
    };
    match answer {
        Answer::Held { arrived, release } => {
            arrived.notify_one();
            release.notified().await;
            Response::new(Full::new(Bytes::from_static(b"{\"slow\":true}")).boxed())
        }
        Answer::Fixed { status, headers, body } => {
            let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
            *response.status_mut() = status;
            for (name, value) in headers {
                response.headers_mut().append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            response
        }
        Answer::Stream { bytes } => {
            const CHUNK: u64 = 64 * 1024;
            let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
            let chunks = bytes / CHUNK;
            let rest = Bytes::from(vec![b'x'; (bytes % CHUNK) as usize]);
            let frames = stream::iter(
                (0..chunks)
                    .map(move |_| chunk.clone())
                    .chain(std::iter::once(rest).filter(|b| !b.is_empty()))
                    .map(|data| Ok::<_, Infallible>(Frame::data(data))),
            );
            let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
            response
                .headers_mut()
                .insert("content-length", http::HeaderValue::from(bytes));
            response
        }
    }
}
