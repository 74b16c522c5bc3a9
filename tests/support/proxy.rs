//! Runs the real `pgrelay` binary against a test `Cluster`, the way a user would: a config file
//! on disk, `pgrelay --config <file>`, readiness from `GET /healthz`. It owns the process and
//! its temp dir (config, log) and must never leave the process running after the test.

use super::{free_port, send_signal, spawn_watchdog, tail, wait_until, Cluster};
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const SIGHUP: i32 = 1;
pub const SIGINT: i32 = 2;
pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;

/// How long pgrelay gets to answer `/healthz` after spawn.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long pgrelay gets to exit after SIGTERM before it is SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Kills the proxy (if it still is the pgrelay we started) once the test process is gone.
const CLEANUP_SCRIPT: &str = r#"
if grep -q -- "$2" "/proc/$1/cmdline" 2>/dev/null; then kill -KILL "$1" 2>/dev/null; fi
rm -rf "$3"
"#;

/// The built pgrelay binary: Cargo's path for integration tests of this crate, else the debug
/// build next to the manifest (lets the harness compile in a crate without that binary).
fn pgrelay_bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_pgrelay") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debug/pgrelay"),
    }
}

/// A running pgrelay process with its own listen/admin ports, config file and log file.
pub struct Proxy {
    child: Child,
    exit_status: Option<ExitStatus>,
    port: u16,
    admin_port: u16,
    hosts: Vec<String>,
    config_path: PathBuf,
    log_path: PathBuf,
    watchdog: Child,
    /// Dropped after the process is gone (see `Drop`), which removes the dir.
    dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts pgrelay in front of `cluster` and waits (≤ 20 s) until `/healthz` answers 200.
    ///
    /// The config has `[server] listen`/`admin_listen` on free ports and
    /// `admin_users = ["admin_user"]`, `[cluster] hosts = cluster.hosts()`, and the users
    /// app/app, app2/app2, md5_user/md5pass (auth "md5"), trust_user (auth "trust"),
    /// admin_user/admin. `extra_toml` is merged in: keys under `[server]` or `[cluster]` are
    /// added to (or replace the defaults of) those tables, so
    /// `"[server]\npool_mode = \"session\"\n[cache]\nredis_url = \"…\""` is valid; keys
    /// before any header count as `[server]` keys (`"pool_mode = \"session\""` works too);
    /// any other table (`[cache]`, `[[cache.rules]]`, more `[[users]]`) is appended as written.
    /// Panics with pgrelay's log if it exits or does not become healthy.
    pub fn start(cluster: &Cluster, extra_toml: &str) -> Proxy {
        Proxy::start_with_env(cluster, extra_toml, &[])
    }

    /// `start` with extra environment variables (e.g. `PGRELAY_SERVER__POOL_MODE`). The test
    /// process's own `PGRELAY_*` variables are never passed on.
    pub fn start_with_env(cluster: &Cluster, extra_toml: &str, env: &[(&str, &str)]) -> Proxy {
        Proxy::try_start_with_env(cluster, extra_toml, env)
            .unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// Like `start_with_env`, but a pgrelay that exits or never becomes healthy is an `Err`
    /// holding its exit status and log (for tests that expect a config to be refused).
    pub fn try_start_with_env(
        cluster: &Cluster,
        extra_toml: &str,
        env: &[(&str, &str)],
    ) -> Result<Proxy, String> {
        let dir = tempfile::Builder::new()
            .prefix("pgrelay-proxy.")
            .tempdir()
            .expect("create proxy temp dir");
        let config_path = dir.path().join("pgrelay.toml");
        let log_path = dir.path().join("pgrelay.log");
        let port = free_port();
        let admin_port = free_port();
        let hosts = cluster.hosts();
        fs::write(
            &config_path,
            render_config(port, admin_port, &hosts, extra_toml),
        )
        .expect("write pgrelay config");

        let log = fs::File::create(&log_path).expect("create pgrelay log");
        super::witness_log(&log_path);
        let mut cmd = Command::new(pgrelay_bin());
        cmd.arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PGRELAY_") {
                cmd.env_remove(key);
            }
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string()),
        );
        cmd.envs(env.iter().copied());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", pgrelay_bin().display()));
        let config_text = config_path.to_str().expect("UTF-8 temp path").to_string();
        let dir_text = dir.path().to_str().expect("UTF-8 temp path").to_string();
        let watchdog = spawn_watchdog(
            CLEANUP_SCRIPT,
            &[&child.id().to_string(), &config_text, &dir_text],
        );
        let mut proxy = Proxy {
            child,
            exit_status: None,
            port,
            admin_port,
            hosts,
            config_path,
            log_path,
            watchdog,
            dir,
        };
        proxy.wait_healthy()?;
        Ok(proxy)
    }

    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll pgrelay") {
                self.exit_status = Some(status);
                return Err(format!(
                    "pgrelay exited ({status}) before /healthz answered\n{}",
                    self.log()
                ));
            }
            if matches!(self.try_http_get("/healthz"), Ok((200, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "pgrelay did not answer 200 on http://{}/healthz within {READY_TIMEOUT:?}\n{}",
                    self.admin_addr(),
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port PostgreSQL clients connect to (`[server] listen`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>` of the admin HTTP endpoint (`[server] admin_listen`).
    pub fn admin_addr(&self) -> String {
        format!("127.0.0.1:{}", self.admin_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// libpq `key=value` form for connecting through the proxy.
    pub fn conn_str(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={} connect_timeout=10",
            self.port,
            super::conninfo_value(user),
            super::conninfo_value(password),
            super::conninfo_value(db)
        )
    }

    /// `postgres://user:password@127.0.0.1:<port>/db`.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}",
            super::url_encode(user),
            super::url_encode(password),
            self.port,
            super::url_encode(db)
        )
    }

    /// A tokio-postgres client through the proxy to database `postgres`; the connection is
    /// driven by a spawned task. Panics (with the proxy log) if the connection fails.
    pub async fn connect(&self, user: &str, password: &str) -> tokio_postgres::Client {
        match self.try_connect(user, password).await {
            Ok(client) => client,
            Err(e) => panic!(
                "connect through pgrelay as {user} failed: {e}\n{}",
                tail(&self.log_path, 40)
            ),
        }
    }

    /// Connects through the proxy to database `postgres` and returns the error instead of
    /// panicking (auth tests).
    pub async fn try_connect(
        &self,
        user: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        self.try_connect_db(user, password, "postgres").await
    }

    /// `try_connect` to another database.
    pub async fn try_connect_db(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) =
            tokio_postgres::connect(&self.conn_str(user, password, db), tokio_postgres::NoTls)
                .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// The body of `GET /metrics`; panics unless the status is 200.
    pub fn metrics(&self) -> String {
        let (status, body) = self.http_get("/metrics");
        assert_eq!(status, 200, "GET /metrics answered {status}: {body}");
        body
    }

    /// `GET path` on the admin endpoint: (status, body). Panics if it cannot be reached.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        self.try_http_get(path)
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e}\n{}", self.admin_addr(), self.log()))
    }

    /// `http_get` that returns connection errors instead of panicking.
    pub fn try_http_get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.admin_port)),
            path,
        )
    }

    /// Everything pgrelay has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Polls the log (≤ `timeout`) until it contains `needle`; panics with the log otherwise.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        wait_until(
            &format!("pgrelay log to contain {needle:?}"),
            timeout,
            || self.log().contains(needle),
            || self.log(),
        );
    }

    /// Sends a signal, e.g. `SIGHUP` after `rewrite_config`.
    pub fn signal(&self, signal: i32) {
        send_signal(self.child.id(), signal);
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Replaces the config file with the default one merged with `extra_toml` (same ports and
    /// hosts as at start), atomically, so a reload never reads half a file. Does not signal.
    pub fn rewrite_config(&self, extra_toml: &str) {
        let text = render_config(self.port, self.admin_port, &self.hosts, extra_toml);
        let staging = self.dir.path().join("pgrelay.toml.new");
        fs::write(&staging, text).expect("write new pgrelay config");
        fs::rename(&staging, &self.config_path).expect("replace pgrelay config");
    }

    /// Waits (≤ `timeout`) for pgrelay to exit on its own; `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status {
                return Some(status);
            }
            if let Some(status) = self.child.try_wait().expect("poll pgrelay") {
                self.exit_status = Some(status);
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited after 5 s. Returns how it exited.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.exit_status {
            return status;
        }
        let _ = Command::new("kill")
            .arg(format!("-{SIGTERM}"))
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        if let Some(status) = self.wait_exit(STOP_TIMEOUT) {
            return status;
        }
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait for pgrelay");
        self.exit_status = Some(status);
        status
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// The config file: defaults for `[server]`, `[cluster]` and the test users, with
/// `extra_toml` merged in (see `Proxy::start`).
pub fn render_config(port: u16, admin_port: u16, hosts: &[String], extra_toml: &str) -> String {
    let quoted_hosts: Vec<String> = hosts.iter().map(|host| format!("\"{host}\"")).collect();
    let mut server = Table::new("[server]");
    server.set("listen", &format!("\"127.0.0.1:{port}\""));
    server.set("admin_listen", &format!("\"127.0.0.1:{admin_port}\""));
    server.set("admin_users", "[\"admin_user\"]");
    let mut cluster = Table::new("[cluster]");
    cluster.set("hosts", &format!("[{}]", quoted_hosts.join(", ")));
    let mut appended = Vec::new();

    for extra in parse_tables(extra_toml) {
        let target = match extra.header.as_str() {
            // The config has no top-level keys: lines before any header are [server] keys.
            "" | "[server]" => &mut server,
            "[cluster]" => &mut cluster,
            _ => {
                appended.push(extra);
                continue;
            }
        };
        target.merge(extra);
    }

    let users = "\
[[users]]
name = \"app\"
password = \"app\"

[[users]]
name = \"app2\"
password = \"app2\"

[[users]]
name = \"md5_user\"
password = \"md5pass\"
auth = \"md5\"

[[users]]
name = \"trust_user\"
auth = \"trust\"

[[users]]
name = \"admin_user\"
password = \"admin\"
";
    let mut text =
        String::from("# Written by the pgrelay test harness (tests/support/proxy.rs).\n");
    text.push_str(&server.render());
    text.push_str(&cluster.render());
    text.push('\n');
    text.push_str(users);
    for table in &appended {
        text.push_str(&table.render());
    }
    text
}

/// One TOML table as lines, just enough structure to merge keys: each entry is a `key = …`
/// line plus the lines that follow it (continuations of a multi-line value, comments).
struct Table {
    header: String,
    entries: Vec<(Option<String>, String)>,
}

impl Table {
    fn new(header: &str) -> Table {
        Table {
            header: header.to_string(),
            entries: Vec::new(),
        }
    }

    fn set(&mut self, key: &str, value: &str) {
        self.entries
            .push((Some(key.to_string()), format!("{key} = {value}")));
    }

    /// Adds `other`'s entries; a key we already have is replaced in place (TOML forbids
    /// defining a key twice).
    fn merge(&mut self, other: Table) {
        let mut current: Option<usize> = None;
        for (key, text) in other.entries {
            match key {
                Some(key) => {
                    let existing = self
                        .entries
                        .iter()
                        .position(|(k, _)| k.as_deref() == Some(key.as_str()));
                    match existing {
                        Some(index) => {
                            self.entries[index].1 = text;
                            current = Some(index);
                        }
                        None => {
                            self.entries.push((Some(key), text));
                            current = Some(self.entries.len() - 1);
                        }
                    }
                }
                None => match current {
                    Some(index) => {
                        self.entries[index].1.push('\n');
                        self.entries[index].1.push_str(&text);
                    }
                    None => self.entries.push((None, text)),
                },
            }
        }
    }

    fn render(&self) -> String {
        let mut text = String::new();
        if !self.header.is_empty() {
            text.push('\n');
            text.push_str(&self.header);
            text.push('\n');
        }
        for (_, entry) in &self.entries {
            text.push_str(entry);
            text.push('\n');
        }
        text
    }
}

/// Splits TOML text into tables at header lines (`[x]`, `[[x]]`); text before the first header
/// is the root table (header ""). Headers are normalized (`[ server ]` → `[server]`).
fn parse_tables(toml: &str) -> Vec<Table> {
    let mut tables = vec![Table::new("")];
    for line in toml.lines() {
        let code = line.split('#').next().unwrap_or("").trim();
        if code.starts_with('[') && code.ends_with(']') {
            let header: String = code.chars().filter(|c| !c.is_whitespace()).collect();
            tables.push(Table::new(&header));
            continue;
        }
        let table = tables.last_mut().expect("root table");
        table.entries.push((key_of(line), line.to_string()));
    }
    tables
}

/// The key of a `key = value` line (bare or quoted key), or None for anything else.
fn key_of(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let quoted = key.len() >= 2 && key.starts_with('"') && key.ends_with('"');
    (bare || quoted).then(|| key.trim_matches('"').to_string())
}

/// Minimal HTTP/1.0 GET (the server closes the connection after the response, which delimits
/// the body); a chunked body is decoded in case the server sends one anyway.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("malformed HTTP status line: {head:?}"))?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size_line, rest) = body.split_once("\r\n").ok_or("truncated chunked body")?;
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|e| format!("bad chunk size {size_line:?}: {e}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        out.push_str(chunk);
        body = rest.get(size + 2..).ok_or("truncated chunk")?;
    }
}
