use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// credgate: an authenticating outbound forward proxy for third-party SaaS APIs.
#[derive(Debug, Parser)]
#[command(name = "credgate", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Path to credgate.yaml.
    #[arg(long, short, env = "CREDGATE_CONFIG", default_value = "credgate.yaml")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct Output {
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy and the admin API.
    Serve(ConfigArg),
    /// Manage integrated accounts through the admin API of a running credgate.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Print a link that connects an OAuth account (valid for connect.state_ttl).
    Connect {
        #[command(flatten)]
        admin: AdminArgs,
        /// The integration to connect.
        integration: String,
        /// The account id to create or reconnect.
        #[arg(long)]
        account: String,
        /// Where the browser goes afterwards (an allowed return origin).
        #[arg(long)]
        redirect_to: Option<String>,
        /// Metadata as key=value; repeat for more.
        #[arg(long = "metadata", value_name = "KEY=VALUE")]
        metadata: Vec<String>,
    },
    /// Inspect the integration files.
    #[command(subcommand)]
    Integrations(IntegrationsCommand),
    /// Print a new random encryption key (base64, 32 bytes).
    Keygen,
    /// Print a new random app key and the `sha256` line for proxy.app_keys.
    AppKey {
        /// The app's name in the config.
        #[arg(long, default_value = "my-app")]
        name: String,
    },
    /// Re-encrypt every stored value with the first (primary) key. Safe while serving.
    Rekey {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        output: Output,
    },
    /// Validate configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate credgate.yaml and every integration; report all problems at once.
    Check(ConfigArg),
}

#[derive(Debug, Subcommand)]
pub enum IntegrationsCommand {
    /// List the configured integrations.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        output: Output,
    },
    /// Validate integration files: those given, or the configured folder.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Integration files to check instead of the configured folder.
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Admin API base URL; defaults to the admin listener in the config.
    #[arg(long, env = "CREDGATE_ADMIN_URL")]
    pub admin_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Create an account. Credentials are read as a JSON object from a file or
    /// stdin (`-`), never from the command line, where `ps` and shell history
    /// would keep them.
    Add {
        #[command(flatten)]
        admin: AdminArgs,
        /// The account id.
        #[arg(long)]
        id: String,
        /// The integration name.
        #[arg(long)]
        integration: String,
        /// JSON file with the credential fields, or `-` for stdin.
        #[arg(long, default_value = "-")]
        credentials: PathBuf,
        /// Metadata as key=value; repeat for more.
        #[arg(long = "metadata", value_name = "KEY=VALUE")]
        metadata: Vec<String>,
        #[command(flatten)]
        output: Output,
    },
    /// List accounts (masked).
    List {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        integration: Option<String>,
        /// active, needs_reauth or error.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// Show one account (masked).
    Show {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
        #[command(flatten)]
        output: Output,
    },
    /// Refresh an OAuth account's token now.
    Refresh {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
        #[command(flatten)]
        output: Output,
    },
    /// Delete an account (and revoke its tokens where the integration can).
    Rm {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
    },
}
