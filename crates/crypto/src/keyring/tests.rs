use super::*;

fn key(id: &str) -> (KeyId, Key) {
    (KeyId::new(id).unwrap(), Key::generate())
}

fn ring(ids: &[&str]) -> Keyring {
    Keyring::new(ids.iter().map(|id| key(id)).collect()).unwrap()
}

#[test]
fn seal_then_open_round_trips() {
    let ring = ring(&["k1"]);
    let sealed = ring.seal("acme", "api_key", b"sk_live_123").unwrap();
    assert_eq!(sealed.key_id(), "k1");
    assert!(!sealed.as_str().contains("sk_live_123"));
    assert_eq!(ring.open("acme", "api_key", &sealed).unwrap().expose(), "sk_live_123");
}

#[test]
fn every_seal_uses_a_fresh_nonce() {
    let ring = ring(&["k1"]);
    let a = ring.seal("acme", "api_key", b"same").unwrap();
    let b = ring.seal("acme", "api_key", b"same").unwrap();
    assert_ne!(a, b);
}

#[test]
fn wrong_key_fails_cleanly() {
    let sealed = ring(&["k1"]).seal("acme", "api_key", b"secret").unwrap();
    let other = ring(&["k1"]);
    assert_eq!(other.open("acme", "api_key", &sealed), Err(CryptoError::Decrypt));
}

#[test]
fn ciphertext_moved_to_another_account_or_field_fails() {
    let ring = ring(&["k1"]);
    let sealed = ring.seal("acme", "api_key", b"secret").unwrap();
    assert_eq!(ring.open("globex", "api_key", &sealed), Err(CryptoError::Decrypt));
    assert_eq!(ring.open("acme", "password", &sealed), Err(CryptoError::Decrypt));
    // Length prefixes keep ("ab","c") and ("a","bc") apart.
    let sealed = ring.seal("ab", "c", b"secret").unwrap();
    assert_eq!(ring.open("a", "bc", &sealed), Err(CryptoError::Decrypt));
}

#[test]
fn tampered_ciphertext_fails() {
    let ring = ring(&["k1"]);
    let sealed = ring.seal("acme", "api_key", b"secret value").unwrap();
    let text = sealed.as_str();
    // Change the payload at every position; none may open.
    let prefix = "cg1:k1:".len();
    for i in prefix..text.len() {
        let mut bytes = text.as_bytes().to_vec();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let Ok(tampered) = Sealed::parse(String::from_utf8(bytes).unwrap()) else {
            continue;
        };
        let result = ring.open("acme", "api_key", &tampered);
        assert!(
            matches!(result, Err(CryptoError::Decrypt | CryptoError::MalformedEnvelope)),
            "position {i}: {result:?}"
        );
    }
}

#[test]
fn malformed_envelopes_are_refused() {
    // The last two: not base64url, and too short to hold a nonce and a tag.
    for text in [
        "",
        "cg1",
        "cg1:k1",
        "cg1::abc",
        "cg2:k1:abc",
        "plaintext",
        "cg1:k1:a+b/",
        "cg1:k1:AAAA",
    ] {
        assert_eq!(Sealed::parse(text), Err(CryptoError::MalformedEnvelope), "{text:?}");
    }
}

#[test]
fn unknown_key_id_is_named() {
    let sealed = ring(&["old"]).seal("acme", "api_key", b"secret").unwrap();
    assert_eq!(
        ring(&["new"]).open("acme", "api_key", &sealed),
        Err(CryptoError::UnknownKeyId("old".into()))
    );
}

#[test]
fn first_key_seals_and_all_keys_open() {
    let (old_id, old_key) = key("old");
    let old_b64 = old_key.to_base64();
    let old_ring = Keyring::new(vec![(old_id.clone(), old_key)]).unwrap();
    let sealed_old = old_ring.seal("acme", "api_key", b"secret").unwrap();

    let rotated = Keyring::new(vec![
        key("new"),
        (old_id.clone(), Key::from_base64(&old_id, old_b64.expose()).unwrap()),
    ])
    .unwrap();
    assert_eq!(rotated.open("acme", "api_key", &sealed_old).unwrap().expose(), "secret");
    assert!(rotated.needs_rekey(&sealed_old));
    let resealed = rotated.seal("acme", "api_key", b"secret").unwrap();
    assert_eq!(resealed.key_id(), "new");
    assert!(!rotated.needs_rekey(&resealed));
}

#[test]
fn key_checks_catch_a_wrong_key_with_the_same_id() {
    let stored = ring(&["k1"]).key_checks();
    let same_id_other_key = ring(&["k1"]);
    assert_eq!(
        same_id_other_key.verify(&stored[0]),
        Err(CryptoError::KeyCheckFailed("k1".into()))
    );
    let right = ring(&["k1"]);
    let checks = right.key_checks();
    assert_eq!(right.verify(&checks[0]), Ok(true));
    assert_eq!(ring(&["k2"]).verify(&checks[0]), Ok(false));
}

#[test]
fn malformed_keys_are_refused_without_echoing_them() {
    let id = KeyId::new("k1").unwrap();
    let err = Key::from_base64(&id, "not base64 !!").unwrap_err();
    assert_eq!(err.to_string(), "malformed encryption key k1: not valid base64");
    let err = Key::from_base64(&id, "c2hvcnQ=").unwrap_err();
    assert!(!err.to_string().contains("c2hvcnQ"));
    assert!(KeyId::new("bad id").is_err());
    assert!(KeyId::new("").is_err());
    assert!(Keyring::new(vec![]).is_err());
    assert!(Keyring::new(vec![key("a"), key("a")]).is_err());
}

#[test]
fn debug_output_has_no_key_material() {
    let (id, k) = key("k1");
    let b64 = k.to_base64();
    let ring = Keyring::new(vec![(id, k)]).unwrap();
    let debug = format!("{ring:?}");
    assert!(!debug.contains(b64.expose()));
    assert_eq!(debug, r#"Keyring { keys: [KeyId("k1")] }"#);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip_any_utf8(value in ".{0,300}", account in "[a-z0-9-]{1,20}", field in "[a-z_]{1,20}") {
            let ring = ring(&["k1"]);
            let sealed = ring.seal(&account, &field, value.as_bytes()).unwrap();
            let opened = ring.open(&account, &field, &sealed).unwrap();
            prop_assert_eq!(opened.expose(), value.as_str());
        }

        #[test]
        fn arbitrary_envelopes_never_panic(text in ".{0,200}") {
            let ring = ring(&["k1"]);
            if let Ok(sealed) = Sealed::parse(text) {
                let _ = ring.open("a", "b", &sealed);
            }
        }
    }
}
