use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;

/// Builds the `credgate` binary once per test process and returns its path.
///
/// Integration tests live in their own crate, so Cargo does not build the binary
/// for them; running `cargo build` here keeps it fresh (a no-op when it is).
pub fn credgate_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--quiet", "-p", "credgate", "--bin", "credgate"])
                .current_dir(workspace_root())
                .status()
                .expect("cannot run cargo build for the credgate binary");
            assert!(status.success(), "cargo build -p credgate failed");
            target_dir().join("debug").join("credgate")
        })
        .clone()
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// A deployment on disk: a temp folder with `credgate.yaml`, the SQLite file, and
/// the secrets passed to processes through their environment.
#[derive(Debug)]
pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub key: String,
    pub admin_token: String,
}

impl Deployment {
    /// A deployment using the repository's example integrations.
    pub fn new() -> Self {
        Self::write(workspace_root().join("config/integrations"), "", |_| {})
    }

    /// A deployment with its own integrations (`(name, yaml)`) and extra settings
    /// merged into the `proxy:` block (e.g. `allow_private_upstreams: true`).
    pub fn with_integrations(integrations: &[(&str, String)], proxy_settings: &str) -> Self {
        Self::with_config(integrations, proxy_settings, "")
    }

    /// Like [`Deployment::with_integrations`], plus top-level YAML appended to
    /// credgate.yaml (`redis:`, `refresh:`, `webhooks:` …).
    pub fn with_config(integrations: &[(&str, String)], proxy_settings: &str, extra: &str) -> Self {
        let files: Vec<(String, String)> = integrations.iter().map(|(n, y)| (n.to_string(), y.clone())).collect();
        let extra = extra.to_owned();
        Self::write(PathBuf::from("integrations"), proxy_settings, move |dir| {
            std::fs::write(dir.join("extra.yaml"), extra).unwrap();
            let folder = dir.join("integrations");
            std::fs::create_dir_all(&folder).unwrap();
            for (name, yaml) in &files {
                std::fs::write(folder.join(format!("{name}.yaml")), yaml).unwrap();
            }
        })
    }

    fn write(integrations: PathBuf, proxy_settings: &str, prepare: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let separator = if proxy_settings.is_empty() { "" } else { ", " };
        let config = format!(
            "proxy: {{ listen: 127.0.0.1:0{separator}{proxy_settings} }}\n\
             admin: {{ listen: 127.0.0.1:0, token: {{ from_env: CREDGATE_ADMIN_TOKEN }} }}\n\
             store: {{ url: \"sqlite://credgate.db\" }}\n\
             keys: [ {{ id: k1, from_env: CREDGATE_KEY }} ]\n\
             integrations_dir: {}\n",
            integrations.display()
        );
        let extra = std::fs::read_to_string(dir.path().join("extra.yaml")).unwrap_or_default();
        std::fs::write(dir.path().join("credgate.yaml"), config + &extra).unwrap();
        Self {
            dir,
            key: random_key(),
            admin_token: "test-admin-token-0123456789".to_owned(),
        }
    }

    /// Binds the admin listener to `port` instead of a free one (the OAuth tests
    /// must register the callback URL with the vendor before credgate starts).
    pub fn set_admin_port(&self, port: u16) {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace(
                "admin: { listen: 127.0.0.1:0,",
                &format!("admin: {{ listen: 127.0.0.1:{port},"),
            ),
        )
        .unwrap();
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("credgate.yaml")
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("credgate.db")
    }

    /// A `credgate` command with this deployment's config and secrets.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(credgate_binary());
        command
            .args(args)
            .env("CREDGATE_CONFIG", self.config_path())
            .env("CREDGATE_KEY", &self.key)
            .env("CREDGATE_ADMIN_TOKEN", &self.admin_token)
            .env("CREDGATE_LOG", "debug")
            .env_remove("CREDGATE_LOG_FORMAT");
        command
    }

    /// Starts `credgate serve` and waits until its admin listener is up.
    pub fn start(&self) -> Credgate {
        Credgate::start(self.command(&["serve"]))
    }
}

impl Default for Deployment {
    fn default() -> Self {
        Self::new()
    }
}

/// A fresh random 32-byte key in base64.
pub fn random_key() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A running `credgate serve`. Killed on drop.
#[derive(Debug)]
pub struct Credgate {
    child: Child,
    /// Every line the process wrote to stderr, for assertions on logs. A std
    /// mutex: the reader thread appends, tests read; never held across an await.
    logs: Arc<Mutex<Vec<String>>>,
    pub admin_addr: String,
    pub proxy_addr: String,
}

impl Credgate {
    pub fn start(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start credgate");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening") {
                    let listener = if line.contains("listener=\"admin\"") {
                        "admin"
                    } else {
                        "proxy"
                    };
                    if let Some(addr) = line.split("addr=").nth(1) {
                        let _ = tx.send((listener, addr.trim().to_owned()));
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut admin, mut proxy) = (None, None);
        loop {
            if let Ok((listener, addr)) = rx.recv_timeout(Duration::from_millis(50)) {
                match listener {
                    "admin" => admin = Some(addr),
                    _ => proxy = Some(addr),
                }
            }
            if let (Some(admin), Some(proxy)) = (&admin, &proxy) {
                return Self {
                    child,
                    logs,
                    admin_addr: admin.clone(),
                    proxy_addr: proxy.clone(),
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(50)); // let the reader drain
                panic!(
                    "credgate exited before listening ({status}):\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "credgate did not start within 60 s:\n{}",
                logs.lock().unwrap().join("\n")
            );
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// `http://host:port` of the proxy listener.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy_addr)
    }

    /// Peak resident memory of the process in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> (ExitStatus, String) {
        signal(self.child.id(), "TERM");
        let status = wait_with_deadline(&mut self.child, Duration::from_secs(30));
        (status, self.logs())
    }

    /// SIGKILL: no cleanup, no flush, as a crash or an OOM kill would be.
    pub fn kill9(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.logs()
    }
}

impl Drop for Credgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_with_deadline(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit in {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("cannot run kill");
    assert!(status.success());
}
