//! The one rule for every URL a credential or a token request may go to.

use std::net::IpAddr;

pub(crate) const HTTPS_ONLY: &str = "must be an https URL (http is allowed for loopback hosts only)";

/// Accepts `https://host[:port][/path]`, and `http://` only for loopback hosts (local
/// development and tests). No user info, query or fragment: those belong elsewhere.
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a valid URL"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(format!("{url:?} must be an absolute URL with a scheme and host"));
    };
    if authority.as_str().contains('@') {
        return Err("must not contain user info".to_owned());
    }
    if uri.query().is_some() || url.contains('#') {
        return Err("must not contain a query or fragment".to_owned());
    }
    match scheme {
        "https" => Ok(()),
        "http" if is_loopback_host(authority.host()) => Ok(()),
        _ => Err(HTTPS_ONLY.to_owned()),
    }
}

/// `localhost`, `127.0.0.0/8` and `::1`.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `value` is an origin that `pattern` allows. In the pattern `*` stands
/// for exactly one DNS label (`https://*.my.salesforce.com` allows
/// `https://acme.my.salesforce.com`, not `https://a.b.my.salesforce.com` nor
/// `https://evil.com/.my.salesforce.com`). A trailing `/` on the value is ignored;
/// any other path, a query or user info is refused.
pub fn matches_pattern(value: &str, pattern: &str) -> bool {
    let value = value.strip_suffix('/').unwrap_or(value).to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    let Some((prefix, suffix)) = pattern.split_once('*') else {
        return value == pattern;
    };
    if suffix.contains('*') || value.len() < prefix.len() + suffix.len() {
        return false;
    }
    let Some(label) = value.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(suffix)) else {
        return false;
    };
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exactly_one_label() {
        let p = "https://*.my.salesforce.com";
        assert!(matches_pattern("https://acme.my.salesforce.com", p));
        assert!(matches_pattern("https://ACME-2.my.salesforce.com/", p));
        for bad in [
            "https://a.b.my.salesforce.com",
            "https://evil.com/.my.salesforce.com",
            "https://evil.com?.my.salesforce.com",
            "https://evil.com#.my.salesforce.com",
            "https://u@x.my.salesforce.com",
            "http://acme.my.salesforce.com",
            "https://.my.salesforce.com",
            "https://-a.my.salesforce.com",
            "https://acme.my.salesforce.com.evil.com",
            "https://acme.my.salesforce.com/path",
            "https://acme.my.salesforce.com:8443",
        ] {
            assert!(!matches_pattern(bad, p), "{bad}");
        }
        assert!(matches_pattern("https://api.example.com", "https://api.example.com"));
    }

    #[test]
    fn https_everywhere_http_on_loopback() {
        assert!(check_url("https://api.hubapi.com").is_ok());
        assert!(check_url("https://login.example.com/tenant").is_ok());
        assert!(check_url("http://127.0.0.1:9000").is_ok());
        assert!(check_url("http://[::1]:9000").is_ok());
        assert!(check_url("http://localhost").is_ok());
        assert_eq!(check_url("http://api.hubapi.com").unwrap_err(), HTTPS_ONLY);
        assert_eq!(check_url("ftp://api.hubapi.com").unwrap_err(), HTTPS_ONLY);
        assert!(check_url("https://user:pw@api.hubapi.com").is_err());
        assert!(check_url("https://api.hubapi.com/?a=b").is_err());
        assert!(check_url("api.hubapi.com").is_err());
        assert!(check_url("http://127.0.0.1.evil.com").is_err());
    }
}
