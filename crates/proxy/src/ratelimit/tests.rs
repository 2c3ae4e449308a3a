use super::*;
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn mapping(yaml: &str) -> RateLimitMapping {
    serde_yaml::from_str(yaml).unwrap()
}

/// Each vendor shape, with what credgate must add. `None` means the header is absent.
#[test]
fn vendor_shapes() {
    let epoch_in_60 = (NOW + 60).to_string();
    let epoch_ms_in_90 = ((NOW + 90) * 1000).to_string();
    let date_in_120 = httpdate::fmt_http_date(now() + Duration::from_secs(120));
    /// (name, vendor headers, status, declared mapping, expected)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, StatusCode, Option<&'a str>, RateLimit);
    let cases: Vec<Case> = vec![
        (
            "GitHub: x-ratelimit-* with epoch reset",
            vec![("x-ratelimit-limit", "5000"), ("x-ratelimit-remaining", "4999"), ("x-ratelimit-reset", &epoch_in_60)],
            StatusCode::OK,
            None,
            RateLimit { limit: Some(5000), remaining: Some(4999), reset: Some(60) },
        ),
        (
            "IETF / GitLab ratelimit-* (GitLab's reset is an epoch)",
            vec![("ratelimit-limit", "600"), ("ratelimit-remaining", "0"), ("ratelimit-reset", &epoch_in_60)],
            StatusCode::TOO_MANY_REQUESTS,
            None,
            RateLimit { limit: Some(600), remaining: Some(0), reset: Some(60) },
        ),
        (
            "IETF delta reset and list syntax",
            vec![("ratelimit-limit", "100, 100;w=60"), ("ratelimit-reset", "30")],
            StatusCode::OK,
            None,
            RateLimit { limit: Some(100), remaining: None, reset: Some(30) },
        ),
        (
            "epoch in milliseconds",
            vec![("x-ratelimit-reset", &epoch_ms_in_90)],
            StatusCode::OK,
            None,
            RateLimit { limit: None, remaining: None, reset: Some(90) },
        ),
        (
            "Retry-After seconds on 429",
            vec![("retry-after", "17")],
            StatusCode::TOO_MANY_REQUESTS,
            None,
            RateLimit { limit: None, remaining: None, reset: Some(17) },
        ),
        (
            "Retry-After HTTP-date on 429",
            vec![("retry-after", &date_in_120)],
            StatusCode::TOO_MANY_REQUESTS,
            None,
            RateLimit { limit: None, remaining: None, reset: Some(120) },
        ),
        (
            "Salesforce Sforce-Limit-Info used/limit",
            vec![("sforce-limit-info", "api-usage=25/15000")],
            StatusCode::OK,
            None,
            RateLimit { limit: Some(15000), remaining: Some(14975), reset: None },
        ),
        (
            "HubSpot, interval in ms",
            vec![
                ("x-hubspot-ratelimit-max", "100"),
                ("x-hubspot-ratelimit-remaining", "97"),
                ("x-hubspot-ratelimit-interval-milliseconds", "10000"),
            ],
            StatusCode::OK,
            None,
            RateLimit { limit: Some(100), remaining: Some(97), reset: Some(10) },
        ),
        (
            "Shopify call limit used/limit",
            vec![("x-shopify-shop-api-call-limit", "32/40")],
            StatusCode::OK,
            None,
            RateLimit { limit: Some(40), remaining: Some(8), reset: None },
        ),
        (
            "declared mapping: custom names, reset in ms delta",
            vec![("x-quota", "50"), ("x-quota-left", "5"), ("x-quota-reset-ms", "2500")],
            StatusCode::OK,
            Some("{ limit: { header: x-quota }, remaining: { header: x-quota-left }, reset: { header: x-quota-reset-ms, unit: ms } }"),
            RateLimit { limit: Some(50), remaining: Some(5), reset: Some(3) },
        ),
        (
            "declared mapping: epoch seconds",
            vec![("x-window-ends", &epoch_in_60)],
            StatusCode::OK,
            Some("{ reset: { header: x-window-ends, kind: epoch } }"),
            RateLimit { limit: None, remaining: None, reset: Some(60) },
        ),
        (
            "declared usage with a key",
            vec![("x-usage", "calls=7/10, data=1/2")],
            StatusCode::OK,
            Some("{ usage: { header: x-usage, key: calls } }"),
            RateLimit { limit: Some(10), remaining: Some(3), reset: None },
        ),
        (
            "garbage everywhere",
            vec![
                ("x-ratelimit-limit", "lots"),
                ("x-ratelimit-remaining", "-5"),
                ("x-ratelimit-reset", "NaN"),
                ("sforce-limit-info", "api-usage=abc/def"),
                ("x-shopify-shop-api-call-limit", "40"),
                ("retry-after", "tomorrow-ish"),
            ],
            StatusCode::TOO_MANY_REQUESTS,
            None,
            RateLimit::default(),
        ),
        ("nothing at all", vec![], StatusCode::OK, None, RateLimit::default()),
        (
            "an epoch in the past resets now",
            vec![("x-ratelimit-reset", "1700000000")],
            StatusCode::OK,
            None,
            RateLimit { limit: None, remaining: None, reset: Some(0) },
        ),
    ];
    for (name, pairs, status, yaml, expected) in cases {
        let mapping = yaml.map(mapping);
        let actual = read(&headers(&pairs), mapping.as_ref(), status, now());
        assert_eq!(actual, expected, "{name}");
    }
}

#[test]
fn normalize_adds_ietf_headers_and_retry_after_only_when_missing() {
    let mut h = headers(&[
        ("x-ratelimit-limit", "10"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "1800000042"),
    ]);
    normalize(&mut h, None, StatusCode::TOO_MANY_REQUESTS, now());
    assert_eq!(h["ratelimit-limit"], "10");
    assert_eq!(h["ratelimit-remaining"], "0");
    assert_eq!(h["ratelimit-reset"], "42");
    assert_eq!(h["retry-after"], "42");
    assert_eq!(h["x-ratelimit-reset"], "1800000042", "vendor headers are untouched");

    let mut h = headers(&[
        ("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ("x-ratelimit-reset", "5"),
    ]);
    normalize(&mut h, None, StatusCode::TOO_MANY_REQUESTS, now());
    assert_eq!(h["retry-after"], "Wed, 21 Oct 2015 07:28:00 GMT");

    let mut h = headers(&[("x-ratelimit-reset", "5")]);
    normalize(&mut h, None, StatusCode::OK, now());
    assert!(!h.contains_key("retry-after"));
}

proptest! {
    #[test]
    fn parsers_are_total(text in "\\PC{0,40}") {
        let _ = number(&text);
        let _ = used_limit(&text, None);
        let _ = used_limit(&text, Some("api-usage"));
        let _ = retry_after(&text, now());
        let _ = guessed_seconds(&text, now());
    }

    #[test]
    fn reset_is_never_an_epoch(value in 0u64..4_000_000_000_000u64) {
        let h = headers(&[("x-ratelimit-reset", &value.to_string())]);
        let state = read(&h, None, StatusCode::OK, now());
        // At or above 1e9 the value is an epoch (seconds, or ms from 1e12) and comes
        // out as the time left until it; below, it is already a delta.
        let reset = state.reset.unwrap();
        if value >= 1_000_000_000 {
            prop_assert!(reset < value);
            let epoch = if value >= 1_000_000_000_000 { value.div_ceil(1000) } else { value };
            prop_assert_eq!(reset, epoch.saturating_sub(NOW));
        } else {
            prop_assert_eq!(reset, value);
        }
    }

    #[test]
    fn remaining_never_exceeds_limit_for_pairs(used in 0u64..100_000, limit in 0u64..100_000) {
        let (u, l) = used_limit(&format!("{used}/{limit}"), None).unwrap();
        prop_assert!(u <= l);
    }
}

/// `normalize` skips `read` when no header name passes `may_be_read`: every name
/// `read` consults, built-in or declared, must pass.
#[test]
fn every_header_read_consults_is_recognized_by_the_fast_path() {
    let builtin = LIMIT_HEADERS
        .iter()
        .chain(&REMAINING_HEADERS)
        .chain(&RESET_HEADERS)
        .chain(USAGE_HEADERS.iter().map(|(header, _)| header))
        .chain([&WINDOW_MS_HEADER, &http::header::RETRY_AFTER]);
    for name in builtin {
        assert!(may_be_read(name.as_str(), None), "{name}");
    }
    let declared = mapping(
        "{ limit: { header: X-Quota-Max }, remaining: { header: X-Quota-Left }, \
         reset: { header: X-Quota-Next, unit: s, kind: delta }, window: { header: X-Quota-Span, unit: s, kind: delta }, \
         usage: { header: X-Quota-Use } }",
    );
    for name in [
        "x-quota-max",
        "x-quota-left",
        "x-quota-next",
        "x-quota-span",
        "x-quota-use",
    ] {
        assert!(may_be_read(name, Some(&declared)), "{name}");
        assert!(!may_be_read(name, None), "{name}");
    }
    for unrelated in ["content-type", "date", "server", "connection", "content-length"] {
        assert!(!may_be_read(unrelated, Some(&declared)), "{unrelated}");
    }
    // A declared header on a response without any other: still normalized.
    let mut only_declared = headers(&[("x-quota-left", "7")]);
    normalize(&mut only_declared, Some(&declared), StatusCode::OK, now());
    assert_eq!(only_declared.get(REMAINING).unwrap(), "7");
}
