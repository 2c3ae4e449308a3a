//! Where a request wants to go, and whether its account's credential may go there.
//!
//! An account's integration lists `base_urls`; templated entries take values from
//! account metadata, which must match the integration's declared pattern (checked
//! again here, not only when the metadata was written). A request is allowed when its
//! host and port equal an origin's and its path lies under the origin's path. An
//! `http://` request to an origin declared `https://` is sent as `https://`: the app
//! talks plain HTTP to the proxy, the proxy originates TLS.

use std::net::IpAddr;

use credgate_config::Integration;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Uri};
use serde_json::{Map, Value};

use crate::ProxyError;

/// The destination a request names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    pub host: String,
    /// The port written in the request, if any.
    pub port: Option<u16>,
    pub path_and_query: PathAndQuery,
}

/// One place an integration's credentials may be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing `/` (empty for the whole host).
    pub path: String,
    /// `host[:port]` as sent upstream, built once per account load.
    pub authority: Authority,
    /// The same, as the `Host` header HTTP/1 requests carry.
    pub host_header: HeaderValue,
}

impl Origin {
    pub fn new(scheme: Scheme, host: String, port: u16, path: String) -> Option<Self> {
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let bracketed = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let authority = if port == default_port {
            bracketed
        } else {
            format!("{bracketed}:{port}")
        };
        Some(Self {
            host_header: HeaderValue::from_str(&authority).ok()?,
            authority: authority.parse().ok()?,
            scheme,
            host,
            port,
            path,
        })
    }
}

impl Target {
    /// Reads the target from an absolute-form URI (what `HTTP_PROXY` clients send)
    /// or from origin-form plus `Host`.
    pub fn from_request<B>(request: &Request<B>) -> Result<Self, ProxyError> {
        let uri = request.uri();
        let path_and_query = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        if !path_and_query.path().starts_with('/') {
            return Err(ProxyError::BadRequest("the request path must start with /".into()));
        }
        if has_dot_segments(path_and_query.path()) {
            return Err(ProxyError::BadRequest(
                "the request path must not contain . or .. segments".into(),
            ));
        }
        let (scheme, authority) = match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority)) => (scheme.clone(), authority.clone()),
            (None, None) => {
                let host = request
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .ok_or_else(|| ProxyError::BadRequest("send an absolute URI or a Host header".into()))?;
                let authority: Authority = host
                    .parse()
                    .map_err(|_| ProxyError::BadRequest("the Host header is not a valid host".into()))?;
                (Scheme::HTTP, authority)
            }
            _ => return Err(ProxyError::BadRequest("the request URI is incomplete".into())),
        };
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(ProxyError::BadRequest("only http and https URIs can be proxied".into()));
        }
        if authority.as_str().contains('@') {
            return Err(ProxyError::BadRequest(
                "user info in the request URI is not allowed".into(),
            ));
        }
        let (host, port) = host_and_port(authority.as_str())
            .ok_or_else(|| ProxyError::BadRequest("the request port is not a valid port".into()))?;
        Ok(Self {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            path_and_query,
        })
    }

    /// The target as an origin of its own: where passthrough requests go.
    pub fn as_origin(&self) -> Option<Origin> {
        let default_port = if self.scheme == Scheme::HTTPS { 443 } else { 80 };
        let port = self.port.unwrap_or(default_port);
        Origin::new(self.scheme.clone(), self.host.clone(), port, String::new())
    }

    /// The host as an IP address, if it is one (those bypass DNS, so the address
    /// policy is applied to them directly).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The first origin this target lies within.
    pub fn find_origin<'a>(&self, origins: &'a [Origin]) -> Option<&'a Origin> {
        origins.iter().find(|origin| {
            origin.host == self.host
                && self.port.is_none_or(|port| port == origin.port)
                // Never downgrade: an https request may only go to an https origin.
                && (self.scheme == origin.scheme || self.scheme == Scheme::HTTP)
                && under(self.path_and_query.path(), &origin.path)
                && (origin.path.is_empty() || !ambiguous(self.path_and_query.path()))
        })
    }

    /// The URI to send upstream: the origin's scheme and port, the request's path.
    pub fn upstream_uri(&self, origin: &Origin, extra_query: Option<&str>) -> Result<Uri, ProxyError> {
        let path_and_query = match extra_query {
            None => self.path_and_query.as_str().to_owned(),
            Some(extra) => match self.path_and_query.query() {
                Some(query) if !query.is_empty() => {
                    format!("{}?{query}&{extra}", self.path_and_query.path())
                }
                _ => format!("{}?{extra}", self.path_and_query.path()),
            },
        };
        Uri::builder()
            .scheme(origin.scheme.clone())
            .authority(origin.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| ProxyError::BadRequest("cannot build the upstream URI".into()))
    }
}

/// Renders an integration's base URLs for one account. A templated entry whose
/// metadata is missing or does not match its declared pattern yields no origin.
pub fn origins(integration: &Integration, metadata: &Map<String, Value>) -> Vec<Origin> {
    integration
        .base_urls
        .iter()
        .filter_map(|template| integration.render_url(template, metadata))
        .filter_map(|url| parse_origin(&url))
        .collect()
}

fn parse_origin(url: &str) -> Option<Origin> {
    let uri: Uri = url.parse().ok()?;
    let scheme = uri.scheme()?.clone();
    let authority = uri.authority()?;
    let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
    Origin::new(
        scheme,
        authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase(),
        authority.port_u16().unwrap_or(default_port),
        uri.path().trim_end_matches('/').to_owned(),
    )
}

/// Splits an authority that `Authority` has validated (and that has no user info)
/// into host, without IPv6 brackets, and port. One pass, where `Authority::host`
/// and `port_u16` each parse it again. `None` for a port that is not a `u16`.
fn host_and_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, rest) = bracketed.split_once(']')?;
            (host, rest.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    match port {
        None | Some("") => Some((host, None)),
        Some(port) => Some((host, Some(port.parse().ok()?))),
    }
}

/// Whether `path` is `prefix` or below it, on a segment boundary.
fn under(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// Characters some origins read as a path separator although `/` is the only
/// one: `\` (IIS, WHATWG parsers) and an encoded slash or backslash (servers
/// that decode before resolving dot segments). Refused when the origin has a path
/// prefix to stay under; elsewhere they are legitimate (GitLab's `group%2Fproject`).
fn ambiguous(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains('\\') || lower.contains("%2f") || lower.contains("%5c")
}

/// `.` and `..` segments, also percent-encoded or with `;` parameters (Tomcat reads
/// `..;` as `..`): an origin would resolve them and could escape a base URL's path
/// prefix.
fn has_dot_segments(path: &str) -> bool {
    path.split('/')
        .map(|segment| segment.split(';').next().unwrap_or_default())
        .any(|segment| {
            // Strip one dot (literal or `%2e`, any case) at a time; a dot segment is one
            // or two dots and nothing else.
            let mut rest = segment.as_bytes();
            let mut dots = 0;
            while !rest.is_empty() {
                rest = match rest {
                    [b'.', tail @ ..] => tail,
                    [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
                    _ => return false,
                };
                dots += 1;
            }
            dots == 1 || dots == 2
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, host: Option<&str>) -> Request<()> {
        let mut builder = Request::get(uri);
        if let Some(host) = host {
            builder = builder.header("host", host);
        }
        builder.body(()).unwrap()
    }

    fn origin(url: &str) -> Origin {
        parse_origin(url).unwrap()
    }

    #[test]
    fn absolute_and_origin_form() {
        let t = Target::from_request(&request("http://API.Stripe.com/v1/charges?limit=3", None)).unwrap();
        assert_eq!(
            (t.scheme.as_str(), t.host.as_str(), t.port),
            ("http", "api.stripe.com", None)
        );
        assert_eq!(t.path_and_query.as_str(), "/v1/charges?limit=3");
        let t = Target::from_request(&request("/v1/charges", Some("api.stripe.com:8080"))).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("api.stripe.com", Some(8080)));
        assert!(Target::from_request(&request("/v1", None)).is_err());
        assert!(Target::from_request(&request("http://a.com/x/../admin", None)).is_err());
        assert!(Target::from_request(&request("http://a.com/x/%2E%2e/admin", None)).is_err());
        assert!(Target::from_request(&request("http://a.com/x/./admin", None)).is_err());
        assert!(Target::from_request(&request("http://a.com/x/.../a.b/..c/%2ex", None)).is_ok());
    }

    #[test]
    fn hosts_and_ports_are_split_like_authority_does() {
        let split = |host: &str| Target::from_request(&request("/", Some(host))).map(|t| (t.host, t.port));
        for (host, expected) in [
            ("example.com", ("example.com", None)),
            ("Example.COM:8443", ("example.com", Some(8443))),
            ("example.com:", ("example.com", None)),
            ("[::1]", ("::1", None)),
            ("[::1]:8080", ("::1", Some(8080))),
            ("127.0.0.1:80", ("127.0.0.1", Some(80))),
        ] {
            let (h, p) = split(host).unwrap_or_else(|e| panic!("{host}: {e}"));
            assert_eq!((h.as_str(), p), expected, "{host}");
            // The same answer as the http crate's own (slower) accessors.
            let authority: Authority = host.parse().unwrap();
            assert_eq!(authority.port_u16(), p, "{host}");
        }
        // A port that does not fit a u16 is refused, not silently defaulted.
        assert!(split("example.com:99999").is_err());
    }

    #[test]
    fn http_is_upgraded_to_the_declared_https_origin() {
        let origins = [origin("https://api.stripe.com")];
        let t = Target::from_request(&request("http://api.stripe.com/v1/charges?x=1", None)).unwrap();
        let found = t.find_origin(&origins).unwrap();
        assert_eq!(
            t.upstream_uri(found, Some("key=v")).unwrap().to_string(),
            "https://api.stripe.com/v1/charges?x=1&key=v"
        );
        let wrong_port = Target::from_request(&request("http://api.stripe.com:8443/v1", None)).unwrap();
        assert!(wrong_port.find_origin(&origins).is_none());
        let other = Target::from_request(&request("http://api.stripe.com.evil.com/v1", None)).unwrap();
        assert!(other.find_origin(&origins).is_none());
    }

    #[test]
    fn paths_stay_under_the_base_path() {
        let origins = [origin("https://example.com/api/")];
        let ok = Target::from_request(&request("http://example.com/api/v1", None)).unwrap();
        assert!(ok.find_origin(&origins).is_some());
        let exact = Target::from_request(&request("http://example.com/api", None)).unwrap();
        assert!(exact.find_origin(&origins).is_some());
        let sibling = Target::from_request(&request("http://example.com/apix", None)).unwrap();
        assert!(sibling.find_origin(&origins).is_none());
        for escape in [
            "http://example.com/api/..;/admin",
            "http://example.com/api/..%2fadmin",
            "http://example.com/api/x%5C..%5Cadmin",
        ] {
            let found = Target::from_request(&request(escape, None))
                .ok()
                .and_then(|t| t.find_origin(&origins).cloned());
            assert!(found.is_none(), "{escape}");
        }
        // Without a path prefix there is nothing to escape: encoded slashes pass.
        let root = [origin("https://gitlab.example.com")];
        let t = Target::from_request(&request(
            "http://gitlab.example.com/api/v4/projects/group%2Fproject",
            None,
        ))
        .unwrap();
        assert!(t.find_origin(&root).is_some());
    }

    #[test]
    fn https_is_never_downgraded() {
        let origins = [origin("http://127.0.0.1:9000")];
        let t = Target::from_request(&request("https://127.0.0.1:9000/", None)).unwrap();
        assert!(t.find_origin(&origins).is_none());
    }
}
