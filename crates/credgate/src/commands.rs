//! One function per subcommand.

use std::io::Read;
use std::path::Path;

use credgate_config::{Config, OsEnv};
use credgate_crypto::Key;
use http::Method;
use serde_json::{json, Map, Value};

use crate::cli::{AccountsCommand, AdminArgs, Cli, Command, ConfigCommand, IntegrationsCommand};
use crate::client::AdminClient;
use crate::exit::{Code, Failure, Result};
use crate::{secrets, serve};

pub async fn run(cli: Cli) -> Result {
    match cli.command {
        Command::Serve(args) => {
            init_tracing();
            serve::run(load_config(&args.config)?).await
        }
        Command::Config(ConfigCommand::Check(args)) => {
            let config = load_config(&args.config)?;
            println!(
                "{}: ok ({} integrations)",
                config.path.display(),
                config.integrations.len()
            );
            Ok(())
        }
        Command::Integrations(IntegrationsCommand::List { config, output }) => {
            let config = load_config(&config.config)?;
            integrations_list(&config, output.json);
            Ok(())
        }
        Command::Integrations(IntegrationsCommand::Check { config, files }) => {
            integrations_check(&config.config, &files)
        }
        Command::AppKey { name } => {
            let key = Key::generate().to_base64();
            let key = key.expose().trim_end_matches('=').replace(['+', '/'], "x");
            println!("app key (give it to the app, e.g. HTTP_PROXY=http://<account>:<key>@host:port):\n  {key}");
            println!(
                "config (credgate.yaml, proxy.app_keys):\n  - {{ name: {name}, sha256: \"{}\" }}",
                credgate_proxy::appkeys::digest_hex(&key)
            );
            Ok(())
        }
        Command::Keygen => {
            println!("{}", Key::generate().to_base64().expose());
            Ok(())
        }
        Command::Rekey { config, output } => {
            let config = load_config(&config.config)?;
            let accounts = serve::unlock(&config).await?;
            let report = accounts
                .rekey()
                .await
                .map_err(|e| Failure::new(Code::Failure, format!("rekey: {e}")))?;
            if output.json {
                println!("{}", json!(report));
            } else {
                println!(
                    "re-encrypted {} values in {} accounts with key {}",
                    report.values_resealed,
                    report.accounts_rekeyed,
                    accounts.keyring().primary()
                );
                for key in &report.keys_retired {
                    println!("key {key} is no longer used and may be removed from the config");
                }
            }
            Ok(())
        }
        Command::Accounts(command) => accounts(command).await,
        Command::Connect {
            admin,
            integration,
            account,
            redirect_to,
            metadata,
        } => {
            let client = admin_client(&admin)?;
            let body = json!({
                "integration": integration,
                "account_id": account,
                "redirect_to": redirect_to,
                "metadata": key_values(&metadata)?,
            });
            let answer = client.call(Method::POST, "/v1/connect-links", Some(&body)).await?;
            println!("{}", text(&answer["url"]));
            Ok(())
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CREDGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("CREDGATE_LOG_FORMAT").is_ok_and(|f| f == "json");
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn load_config(path: &Path) -> Result<Config> {
    credgate_config::load(path).map_err(|errors| Failure {
        code: Code::Config,
        message: format!("{errors}\nerror: {} configuration problem(s) found", errors.0.len()),
    })
}

fn integrations_list(config: &Config, as_json: bool) {
    if as_json {
        let list: Vec<Value> = config
            .integrations
            .values()
            .map(|i| {
                json!({
                    "name": i.name,
                    "display_name": i.display_name,
                    "credentials_format": i.credentials.format.as_str(),
                    "authorization_format": i.authorization.format.as_str(),
                    "base_urls": i.base_urls.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", json!(list));
        return;
    }
    let rows: Vec<Vec<String>> = config
        .integrations
        .values()
        .map(|i| {
            vec![
                i.name.clone(),
                i.credentials.format.as_str().to_owned(),
                i.authorization.format.as_str().to_owned(),
                i.base_urls.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(" "),
            ]
        })
        .collect();
    print_table(&["NAME", "CREDENTIALS", "AUTHORIZATION", "BASE URLS"], &rows);
}

fn integrations_check(config_path: &Path, files: &[std::path::PathBuf]) -> Result {
    let outcome = if files.is_empty() {
        load_config(config_path).map(|config| config.integrations.len())
    } else {
        let mut errors = Vec::new();
        for file in files {
            if let Err(mut more) = credgate_config::load_integration(file) {
                errors.append(&mut more.0);
            }
        }
        if errors.is_empty() {
            Ok(files.len())
        } else {
            let count = errors.len();
            Err(Failure {
                code: Code::Config,
                message: format!(
                    "{}\nerror: {count} configuration problem(s) found",
                    credgate_config::ConfigErrors(errors)
                ),
            })
        }
    };
    let count = outcome?;
    println!("{count} integration(s) ok");
    Ok(())
}

async fn accounts(command: AccountsCommand) -> Result {
    match command {
        AccountsCommand::Add {
            admin,
            id,
            integration,
            credentials,
            metadata,
            output,
        } => {
            let client = admin_client(&admin)?;
            let credentials = read_credentials(&credentials)?;
            let mut meta = Map::new();
            for pair in metadata {
                let Some((key, value)) = pair.split_once('=') else {
                    return Err(Failure::new(
                        Code::Invalid,
                        format!("--metadata {pair:?}: use KEY=VALUE"),
                    ));
                };
                meta.insert(key.to_owned(), Value::String(value.to_owned()));
            }
            let body = json!({ "id": id, "integration": integration, "credentials": credentials, "metadata": meta });
            let view = client.call(Method::POST, "/v1/accounts", Some(&body)).await?;
            print_account(&view, output.json);
            Ok(())
        }
        AccountsCommand::List {
            admin,
            integration,
            status,
            output,
        } => {
            let client = admin_client(&admin)?;
            let mut accounts = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut query = form_urlencoded::Serializer::new(String::new());
                if let Some(integration) = &integration {
                    query.append_pair("integration", integration);
                }
                if let Some(status) = &status {
                    query.append_pair("status", status);
                }
                if let Some(after) = &after {
                    query.append_pair("after", after);
                }
                let page = client
                    .call(Method::GET, &format!("/v1/accounts?{}", query.finish()), None)
                    .await?;
                if let Some(list) = page["accounts"].as_array() {
                    accounts.extend(list.iter().cloned());
                }
                match page["next"].as_str() {
                    Some(next) => after = Some(next.to_owned()),
                    None => break,
                }
            }
            if output.json {
                println!("{}", Value::Array(accounts));
            } else {
                let rows: Vec<Vec<String>> = accounts
                    .iter()
                    .map(|a| {
                        vec![
                            text(&a["id"]),
                            text(&a["integration"]),
                            text(&a["status"]),
                            text(&a["expires_at"]),
                            text(&a["updated_at"]),
                        ]
                    })
                    .collect();
                print_table(&["ID", "INTEGRATION", "STATUS", "EXPIRES", "UPDATED"], &rows);
            }
            Ok(())
        }
        AccountsCommand::Show { admin, id, output } => {
            let client = admin_client(&admin)?;
            let view = client
                .call(Method::GET, &format!("/v1/accounts/{}", path_segment(&id)?), None)
                .await?;
            print_account(&view, output.json);
            Ok(())
        }
        AccountsCommand::Refresh { admin, id, output } => {
            let client = admin_client(&admin)?;
            let path = format!("/v1/accounts/{}/refresh", path_segment(&id)?);
            let view = client.call(Method::POST, &path, None).await?;
            print_account(&view, output.json);
            Ok(())
        }
        AccountsCommand::Rm { admin, id } => {
            let client = admin_client(&admin)?;
            client
                .call(Method::DELETE, &format!("/v1/accounts/{}", path_segment(&id)?), None)
                .await?;
            println!("deleted {id}");
            Ok(())
        }
    }
}

/// `--metadata KEY=VALUE` pairs as a JSON object.
fn key_values(pairs: &[String]) -> Result<Map<String, Value>> {
    let mut map = Map::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Failure::new(
                Code::Invalid,
                format!("--metadata {pair:?}: use KEY=VALUE"),
            ));
        };
        map.insert(key.to_owned(), Value::String(value.to_owned()));
    }
    Ok(map)
}

/// Account ids are `[A-Za-z0-9._-]`; anything else would not be a valid id anyway.
fn path_segment(id: &str) -> Result<&str> {
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Ok(id)
    } else {
        Err(Failure::new(Code::Invalid, "id: use characters from [A-Za-z0-9._-]"))
    }
}

fn admin_client(args: &AdminArgs) -> Result<AdminClient> {
    let config = load_config(&args.config.config)?;
    let base = args
        .admin_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.server.admin.listen));
    let token = match std::env::var("CREDGATE_ADMIN_TOKEN") {
        Ok(token) if !token.is_empty() => Some(credgate_crypto::SecretString::new(token)),
        _ => secrets::admin_token(&config.server, &OsEnv)?,
    };
    Ok(AdminClient::new(base, token))
}

fn read_credentials(source: &Path) -> Result<Value> {
    let mut text = String::new();
    let read = if source == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(source).map(|t| text = t)
    };
    read.map_err(|e| Failure::new(Code::Invalid, format!("--credentials {}: {e}", source.display())))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(value @ Value::Object(_)) => Ok(value),
        // Never echo the text: it holds secrets.
        _ => Err(Failure::new(
            Code::Invalid,
            format!(
                "--credentials {}: expected a JSON object of credential fields",
                source.display()
            ),
        )),
    }
}

fn print_account(view: &Value, as_json: bool) {
    if as_json {
        println!("{view}");
        return;
    }
    let mut rows = vec![
        vec!["id".to_owned(), text(&view["id"])],
        vec!["integration".to_owned(), text(&view["integration"])],
        vec!["status".to_owned(), text(&view["status"])],
    ];
    if let Some(error) = view["last_error"].as_str() {
        rows.push(vec!["last_error".to_owned(), error.to_owned()]);
    }
    for key in [
        "expires_at",
        "next_refresh_at",
        "last_refreshed_at",
        "created_at",
        "updated_at",
        "version",
    ] {
        rows.push(vec![key.to_owned(), text(&view[key])]);
    }
    if let Some(fields) = view["credentials"].as_object() {
        for (field, masked) in fields {
            rows.push(vec![format!("credentials.{field}"), text(masked)]);
        }
    }
    if let Some(fields) = view["metadata"].as_object() {
        for (field, value) in fields {
            rows.push(vec![format!("metadata.{field}"), text(value)]);
        }
    }
    print_table(&["FIELD", "VALUE"], &rows);
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
