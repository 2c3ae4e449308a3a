//! Vendor rate-limit headers, normalized into the IETF `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset` (delta seconds, never an epoch), plus
//! `Retry-After` on a 429 that lacks one when the reset time is known.
//!
//! Every parser here is a small total function: a value it cannot read yields
//! `None`, never an error, and the vendor's own headers are left untouched.
//! Integration mappings win over the built-in shapes, field by field.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use credgate_config::{RateLimitMapping, TimeHeader, TimeKind, TimeUnit};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

pub const LIMIT: &str = "ratelimit-limit";
pub const REMAINING: &str = "ratelimit-remaining";
pub const RESET: &str = "ratelimit-reset";

/// Built-in `limit` headers, most standard first.
static LIMIT_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static(LIMIT),
    HeaderName::from_static("x-ratelimit-limit"),
    HeaderName::from_static("x-rate-limit-limit"),
    HeaderName::from_static("x-hubspot-ratelimit-max"),
];
static REMAINING_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static(REMAINING),
    HeaderName::from_static("x-ratelimit-remaining"),
    HeaderName::from_static("x-rate-limit-remaining"),
    HeaderName::from_static("x-hubspot-ratelimit-remaining"),
];
/// Reset headers whose unit (epoch or delta) is guessed from the magnitude.
static RESET_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static(RESET),
    HeaderName::from_static("x-ratelimit-reset"),
    HeaderName::from_static("x-rate-limit-reset"),
];
/// `used/limit` pairs: (header, key before `=` if any).
static USAGE_HEADERS: [(HeaderName, Option<&str>); 2] = [
    (HeaderName::from_static("x-shopify-shop-api-call-limit"), None),
    (HeaderName::from_static("sforce-limit-info"), Some("api-usage")),
];
static WINDOW_MS_HEADER: HeaderName = HeaderName::from_static("x-hubspot-ratelimit-interval-milliseconds");

/// What could be read from one response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// Seconds until the window resets.
    pub reset: Option<u64>,
}

/// Reads the rate-limit state from vendor headers.
pub fn read(headers: &HeaderMap, mapping: Option<&RateLimitMapping>, status: StatusCode, now: SystemTime) -> RateLimit {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let builtin = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let declared = |field: Option<&str>| field.map(text);

    let usage = match mapping.and_then(|m| m.usage.as_ref()) {
        Some(usage) => text(&usage.header).and_then(|v| used_limit(v, usage.key.as_deref())),
        None => USAGE_HEADERS
            .iter()
            .find_map(|(header, key)| builtin(header).and_then(|v| used_limit(v, *key))),
    };
    let limit = match declared(mapping.and_then(|m| m.limit.as_ref()).map(|h| h.header.as_str())) {
        Some(value) => value.and_then(number),
        None => LIMIT_HEADERS.iter().find_map(|h| builtin(h).and_then(number)),
    }
    .map(whole)
    .or(usage.map(|(_, limit)| limit));
    let remaining = match declared(mapping.and_then(|m| m.remaining.as_ref()).map(|h| h.header.as_str())) {
        Some(value) => value.and_then(number),
        None => REMAINING_HEADERS.iter().find_map(|h| builtin(h).and_then(number)),
    }
    .map(whole)
    .or(usage.map(|(used, limit)| limit.saturating_sub(used)));
    let reset = match mapping.and_then(|m| m.reset.as_ref()) {
        Some(h) => text(&h.header).and_then(|v| mapped_seconds(v, h, now)),
        None => RESET_HEADERS
            .iter()
            .find_map(|h| builtin(h).and_then(|v| guessed_seconds(v, now))),
    }
    .or_else(|| match mapping.and_then(|m| m.window.as_ref()) {
        Some(h) => text(&h.header).and_then(|v| mapped_seconds(v, h, now)),
        None => builtin(&WINDOW_MS_HEADER).and_then(number).map(|ms| whole(ms / 1000.0)),
    })
    .or_else(|| {
        (status == StatusCode::TOO_MANY_REQUESTS)
            .then(|| builtin(&http::header::RETRY_AFTER).and_then(|v| retry_after(v, now)))
            .flatten()
    });
    RateLimit {
        limit,
        remaining,
        reset,
    }
}

/// Adds the normalized headers (and `Retry-After` on a 429 without one).
pub fn normalize(headers: &mut HeaderMap, mapping: Option<&RateLimitMapping>, status: StatusCode, now: SystemTime) {
    if !headers.keys().any(|name| may_be_read(name.as_str(), mapping)) {
        return; // the common case, decided in one pass instead of a lookup per shape
    }
    let state = read(headers, mapping, status, now);
    for (name, value) in [(LIMIT, state.limit), (REMAINING, state.remaining), (RESET, state.reset)] {
        if let Some(value) = value {
            headers.insert(name, HeaderValue::from(value));
        }
    }
    if status == StatusCode::TOO_MANY_REQUESTS && !headers.contains_key(http::header::RETRY_AFTER) {
        if let Some(reset) = state.reset {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(reset));
        }
    }
}

/// Whether [`read`] might consult a header of this (lowercase) name: a superset,
/// so that skipping `read` when no name matches cannot change the outcome.
fn may_be_read(name: &str, mapping: Option<&RateLimitMapping>) -> bool {
    ["ratelimit-", "x-ratelimit-", "x-rate-limit-", "x-hubspot-ratelimit-"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
        || name == "retry-after"
        || USAGE_HEADERS.iter().any(|(header, _)| header == name)
        || mapping.is_some_and(|m| {
            let declared = [
                m.limit.as_ref().map(|h| &h.header),
                m.remaining.as_ref().map(|h| &h.header),
                m.reset.as_ref().map(|h| &h.header),
                m.window.as_ref().map(|h| &h.header),
                m.usage.as_ref().map(|h| &h.header),
            ];
            declared
                .into_iter()
                .flatten()
                .any(|header| header.eq_ignore_ascii_case(name))
        })
}

/// A non-negative decimal number, reading only the first item of a list
/// (`100, 100;w=60` → 100). Anything else is `None`.
pub fn number(text: &str) -> Option<f64> {
    let first = text.split([',', ';']).next()?.trim();
    if first.is_empty() || first.len() > 24 || !first.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let value: f64 = first.parse().ok()?;
    (value.is_finite() && value < 1e15).then_some(value)
}

fn whole(value: f64) -> u64 {
    value.ceil() as u64
}

/// `used/limit`, optionally behind `key=` in a comma-separated list.
pub fn used_limit(text: &str, key: Option<&str>) -> Option<(u64, u64)> {
    let pair = match key {
        None => text.trim(),
        Some(key) => text.split(',').find_map(|part| {
            let (name, value) = part.split_once('=')?;
            name.trim().eq_ignore_ascii_case(key).then_some(value.trim())
        })?,
    };
    let (used, limit) = pair.split_once('/')?;
    let used = whole(number(used)?);
    let limit = whole(number(limit)?);
    Some((used.min(limit), limit))
}

/// Reset in a declared unit and kind.
fn mapped_seconds(text: &str, header: &TimeHeader, now: SystemTime) -> Option<u64> {
    let value = number(text)?;
    let seconds = match header.unit {
        TimeUnit::Seconds => value,
        TimeUnit::Milliseconds => value / 1000.0,
    };
    match header.kind {
        TimeKind::Delta => Some(whole(seconds)),
        TimeKind::Epoch => Some(until(seconds, now)),
    }
}

/// Reset whose kind is undeclared: values this large are epochs, not deltas (no
/// vendor resets a window 30 years from now).
fn guessed_seconds(text: &str, now: SystemTime) -> Option<u64> {
    let value = number(text)?;
    Some(if value >= 1e12 {
        until(value / 1000.0, now)
    } else if value >= 1e9 {
        until(value, now)
    } else {
        whole(value)
    })
}

fn until(epoch_seconds: f64, now: SystemTime) -> u64 {
    let now = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    whole((epoch_seconds - now).max(0.0))
}

/// `Retry-After`: delta seconds or an HTTP-date.
pub fn retry_after(text: &str, now: SystemTime) -> Option<u64> {
    if let Some(seconds) = number(text) {
        return Some(whole(seconds));
    }
    let date = httpdate::parse_http_date(text.trim()).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO).as_secs())
}

#[cfg(test)]
mod tests;
