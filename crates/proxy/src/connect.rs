//! `CONNECT`, what `HTTPS_PROXY` clients send. credgate cannot inject into a TLS
//! stream it does not terminate, so CONNECT is refused with a clear code unless
//! `passthrough` is on, in which case a tunnel to a host that some integration
//! lists is opened untouched (the address policy still applies).

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{upstream, Caller, Proxy, ProxyBody, ProxyError};

pub(crate) async fn tunnel(
    proxy: &Proxy,
    request: Request<Incoming>,
    _caller: &Caller,
) -> Result<Response<ProxyBody>, ProxyError> {
    if !proxy.passthrough {
        return Err(ProxyError::ConnectNotSupported);
    }
    let authority = request
        .uri()
        .authority()
        .cloned()
        .ok_or_else(|| ProxyError::BadRequest("CONNECT needs host:port".into()))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = authority.port_u16().unwrap_or(443);
    let listed = proxy.integrations.values().any(|integration| {
        crate::target::origins(integration, &Default::default())
            .iter()
            .any(|origin| origin.host == host && origin.port == port)
    });
    if !listed {
        return Err(ProxyError::HostNotAllowed(format!(
            "{host}:{port} is not a base URL of any integration"
        )));
    }
    let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| ProxyError::UpstreamUnreachable(format!("{host}: {e}")))?
        .filter(|addr| proxy.allow_private_upstreams || !upstream::is_forbidden(addr.ip()))
        .collect();
    if addrs.is_empty() {
        return Err(ProxyError::HostNotAllowed(format!(
            "{host} resolves to a private address"
        )));
    }
    let upstream = tokio::time::timeout(proxy.upstream_timeout, TcpStream::connect(&addrs[..]))
        .await
        .map_err(|_| ProxyError::UpstreamTimeout(proxy.upstream_timeout.as_secs()))?
        .map_err(|e| ProxyError::UpstreamUnreachable(format!("{host}:{port}: {e}")))?;
    // On HTTP/2 the tunnel outlives its response: keep the connection counted as busy.
    let busy = request
        .extensions()
        .get::<credgate_listener::ConnectionActivity>()
        .map(|activity| activity.busy());
    tokio::spawn(async move {
        let _busy = busy;
        match hyper::upgrade::on(request).await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                let mut upstream = upstream;
                if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(%error, "tunnel closed with an error");
                }
            }
            Err(error) => tracing::debug!(%error, "CONNECT upgrade failed"),
        }
    });
    let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
    *response.status_mut() = StatusCode::OK;
    Ok(response)
}
