use std::collections::HashMap;
use std::path::Path;

use super::*;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn shipped_configuration_is_valid() {
    let config = load(&repo_root().join("config/credgate.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = config.integrations.keys().map(String::as_str).collect();
    for expected in [
        "github",
        "hubspot",
        "jira",
        "salesforce",
        "sendgrid",
        "stripe",
        "zendesk-client",
    ] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    assert!(matches!(config.server.store_url(), Some(StoreUrl::Sqlite(_))));
    let hubspot = &config.integrations["hubspot"];
    let oauth = hubspot.credentials.config.as_ref().unwrap();
    let none = serde_json::Map::new();
    assert_eq!(
        hubspot.token_url(&none).unwrap(),
        "https://api.hubapi.com/oauth/v1/token"
    );
    assert_eq!(
        hubspot.authorize_url(&none).unwrap(),
        "https://app.hubspot.com/oauth/authorize"
    );
    assert_eq!(oauth.options.authorization_method, ClientAuthMethod::Body);
    assert_eq!(oauth.pkce.as_ref().unwrap().method, PkceMethod::S256);
    let github = &config.integrations["github"];
    assert_eq!(
        github.credentials.default_ttl,
        Some(std::time::Duration::from_secs(8 * 3600))
    );
}

/// Each file in `testdata/broken` starts with `# expect:` lines; the loader must
/// report exactly those errors, in order, prefixed with the file's path.
#[test]
fn broken_config_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/broken");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 10);
    let mut failures = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expected: Vec<String> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# expect: "))
            .map(|rest| format!("{}:{rest}", file.display()))
            .collect();
        assert!(!expected.is_empty(), "{} has no # expect: line", file.display());
        let actual: Vec<String> = match load_integration(&file) {
            Ok(_) => vec!["loaded without error".into()],
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        };
        if actual != expected {
            failures.push(format!(
                "{}\n  expected: {expected:#?}\n  actual:   {actual:#?}",
                file.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn literal_secrets_never_appear_in_errors() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/broken/literal-secret.yaml");
    let errors = load_integration(&file).unwrap_err().to_string();
    assert!(!errors.contains("s3cr3t-literal-value"), "{errors}");
}

#[test]
fn all_files_are_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let integrations = dir.path().join("integrations");
    std::fs::create_dir(&integrations).unwrap();
    std::fs::write(
        dir.path().join("credgate.yaml"),
        "store: { url: \"mysql://x\" }\nkeys: []\nadmin: { listen: 0.0.0.0:8081 }\n",
    )
    .unwrap();
    std::fs::write(integrations.join("a.yaml"), "name: a\nbogus: 1\n").unwrap();
    std::fs::write(integrations.join("b.yaml"), "name: [\n").unwrap();
    let errors = load(&dir.path().join("credgate.yaml")).unwrap_err();
    let text = errors.to_string();
    assert_eq!(errors.0.len(), 5, "{text}");
    assert!(
        text.contains("credgate.yaml:1:10: store.url: must be sqlite://<path> or postgres://…"),
        "{text}"
    );
    assert!(
        text.contains("credgate.yaml:2:1: keys: configure at least one encryption key"),
        "{text}"
    );
    assert!(
        text.contains("credgate.yaml:3:1: admin.token: an admin listener on a non-loopback address needs a token"),
        "{text}"
    );
    assert!(text.contains("a.yaml:2:1: bogus: unknown field `bogus`"), "{text}");
    assert!(text.contains("b.yaml:"), "{text}");
}

#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("integrations")).unwrap();
    std::fs::write(
        dir.path().join("credgate.yaml"),
        "store: { url: \"sqlite://data/x.db\" }\nkeys: [ { id: k1, from_file: k1.key } ]\n",
    )
    .unwrap();
    let config = load(&dir.path().join("credgate.yaml")).unwrap();
    assert_eq!(
        config.server.store_url(),
        Some(StoreUrl::Sqlite(dir.path().join("data/x.db")))
    );
    assert_eq!(
        config.server.keys[0].from_file.as_deref(),
        Some(dir.path().join("k1.key").as_path())
    );
}

#[test]
fn client_id_may_be_literal_or_reference() {
    let env: HashMap<String, String> = [("CID".to_owned(), "from-env".to_owned())].into();
    let literal: ValueOrRef = serde_yaml::from_str("abc").unwrap();
    assert_eq!(literal.resolve(&env).unwrap(), "abc");
    let reference: ValueOrRef = serde_yaml::from_str("{ from_env: CID }").unwrap();
    assert_eq!(reference.resolve(&env).unwrap(), "from-env");
}
