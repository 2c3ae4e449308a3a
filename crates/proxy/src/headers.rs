//! What never crosses the proxy: hop-by-hop headers (RFC 9110 section 7.6.1,
//! including every header named in `Connection`), proxy credentials, and our own
//! `credgate-*` control headers.

use http::header::{self, HeaderMap, HeaderName};

/// Hop-by-hop headers that are removed whether or not `Connection` names them.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Non-standard but widespread hop-by-hop headers.
static LEGACY_HOP_BY_HOP: [HeaderName; 2] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

pub const CREDGATE_PREFIX: &str = "credgate-";

/// Removes hop-by-hop and proxy headers, in place.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names present rather than a hashed removal per name: on
    // the hot path most of these headers are absent.
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name) || LEGACY_HOP_BY_HOP.contains(name))
        .cloned()
        .collect();
    if present.is_empty() {
        return;
    }
    if present.contains(&header::CONNECTION) {
        strip_connection_listed(headers);
    }
    for name in present {
        headers.remove(name);
    }
}

fn strip_connection_listed(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        // The usual values: `close` names no header, and `keep-alive` is removed
        // anyway (LEGACY_HOP_BY_HOP); skipping them spares a parse and a Vec.
        .filter(|name| !name.eq_ignore_ascii_case("keep-alive") && !name.eq_ignore_ascii_case("close"))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
}

/// Removes every `credgate-*` header (account selection, app key, …).
pub fn strip_credgate(headers: &mut HeaderMap) {
    if !headers.keys().any(|name| name.as_str().starts_with(CREDGATE_PREFIX)) {
        return;
    }
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(CREDGATE_PREFIX))
        .cloned()
        .collect();
    for name in ours {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_hop_by_hop_and_connection_listed_headers() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic abc"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret-hop", "1"),
            ("credgate-account", "acme"),
            ("credgate-app-key", "k"),
            ("accept", "application/json"),
            ("authorization", "Bearer app"),
        ] {
            headers.append(name, value.parse().unwrap());
        }
        strip_hop_by_hop(&mut headers);
        strip_credgate(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept", "authorization"]);
    }
}
