//! Opening a stored token is on every proxied request; target < 1 µs for 200 bytes.
#![allow(clippy::unwrap_used)]
use credgate_crypto::{Key, KeyId, Keyring};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn open_200_byte_token(c: &mut Criterion) {
    let ring = Keyring::new(vec![(KeyId::new("k1").unwrap(), Key::generate())]).unwrap();
    let token = "x".repeat(200);
    let sealed = ring.seal("acme-hubspot", "access_token", token.as_bytes()).unwrap();
    c.bench_function("open 200-byte token", |b| {
        b.iter(|| ring.open(black_box("acme-hubspot"), "access_token", black_box(&sealed)))
    });
    c.bench_function("seal 200-byte token", |b| {
        b.iter(|| ring.seal("acme-hubspot", "access_token", black_box(token.as_bytes())))
    });
}

criterion_group!(benches, open_200_byte_token);
criterion_main!(benches);
