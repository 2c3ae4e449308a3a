use credgate_crypto::SecretString;
use http::header::AUTHORIZATION;
use http::HeaderMap;
use subtle::ConstantTimeEq;

/// Whether the request carries the admin bearer token. The comparison takes the
/// same time whatever the first differing byte, so the token cannot be guessed
/// byte by byte from response timing.
pub(crate) fn authorized(expected: Option<&SecretString>, headers: &HeaderMap) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    let Some(given) = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    given.ct_eq(expected.expose().as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_must_match_exactly() {
        let token = SecretString::new("admin-token-123");
        let mut headers = HeaderMap::new();
        assert!(!authorized(Some(&token), &headers));
        headers.insert(AUTHORIZATION, "Bearer admin-token-123".parse().unwrap());
        assert!(authorized(Some(&token), &headers));
        for wrong in [
            "Bearer admin-token-12",
            "Bearer admin-token-1234",
            "Basic admin-token-123",
            "admin-token-123",
        ] {
            headers.insert(AUTHORIZATION, wrong.parse().unwrap());
            assert!(!authorized(Some(&token), &headers), "{wrong}");
        }
        assert!(authorized(None, &HeaderMap::new()));
    }
}
