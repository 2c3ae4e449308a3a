//! The outbound HTTPS client for token endpoints and webhook receivers (both named
//! by the operator's config, so no address policy): webpki roots plus an optional
//! extra CA file, connect timeout, keep-alive pool.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub use credgate_tls::TlsError as ClientError;

pub fn client(connect_timeout: Duration, extra_ca: Option<&Path>) -> Result<HttpClient, ClientError> {
    let tls = credgate_tls::client_config(extra_ca)?;
    let mut connector = HttpConnector::new();
    connector.enforce_http(false);
    connector.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(https))
}
