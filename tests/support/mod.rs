//! Integration-test harness: a real PostgreSQL cluster (leader + streaming replicas), a
//! `redis-server`, and the `pgrelay` binary, all on free loopback ports in temp dirs.
//!
//! Every process it starts is also watched by a small shell watchdog that cleans up after the
//! test process exits, so a panicking, aborted or SIGKILLed test never leaves servers or ports
//! behind. The harness must never depend on the crate's own code: it talks to pgrelay only as a
//! user would (a config file, the wire protocol, the admin HTTP endpoint, signals).
#![allow(dead_code)] // Each test binary uses a different subset of the harness.

pub mod certs;
mod cluster;
pub mod pgbench;
mod proxy;

// Globs, not item lists: a test binary that never names, say, `SIGHUP` must not get an
// unused-import warning (every binary uses something from each module).
pub use cluster::*;
pub use proxy::*;

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Ports are drawn below the kernel's ephemeral range (32768–60999 on Linux), so an outgoing
/// connection made by some test cannot grab a port between our check and the server's bind.
const PORT_RANGE: std::ops::Range<u16> = 15000..32000;

/// Every port handed out by this process: two tests running in parallel threads must never be
/// given the same port, even if the first one has not bound it yet.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port that nothing listens on and that this process has not handed out before.
pub fn free_port() -> u16 {
    let seed = RandomState::new();
    let counter = AtomicU64::new(0);
    for _ in 0..1000 {
        let mut hasher = seed.build_hasher();
        hasher.write_u64(counter.fetch_add(1, Ordering::Relaxed));
        let span = u64::from(PORT_RANGE.end - PORT_RANGE.start);
        let port = PORT_RANGE.start + (hasher.finish() % span) as u16;
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        let handed_out = handed_out.get_or_insert_with(HashSet::new);
        if handed_out.contains(&port) || !port_is_free(port) {
            continue;
        }
        handed_out.insert(port);
        return port;
    }
    panic!("no free loopback port found in {PORT_RANGE:?} after 1000 tries");
}

/// Free means: we can bind it on 127.0.0.1 and nobody answers a connect there.
fn port_is_free(port: u16) -> bool {
    if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
        return false;
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err()
}

/// Polls `done` every 50 ms until it returns true; after `timeout`, panics with `what` and the
/// text `context()` returns (usually a log tail), so a hung setup explains itself.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
    context: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command to completion; on failure panics with the command line, its status, stdout
/// and stderr.
pub fn run(cmd: &mut Command) -> Output {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !output.status.success() {
        panic!(
            "{cmd:?} failed ({})\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

/// True when the test process runs as root (then PostgreSQL tools, which refuse to run as
/// root, are run as the `postgres` user).
pub fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        == Some("0")
}

/// The last `lines` lines of a log file, or a note that it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            format!(
                "--- last lines of {} ---\n{}",
                path.display(),
                all[start..].join("\n")
            )
        }
        Err(e) => format!("--- {} unreadable: {e} ---", path.display()),
    }
}

/// Sends signal number `signal` to `pid` with kill(1) (keeps the harness free of a libc dep).
pub fn send_signal(pid: u32, signal: i32) {
    run(Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string()));
}

/// Starts a detached `sh` that waits for this test process to exit (normally, by panic, or by
/// SIGKILL) and then runs `cleanup` with `args` as `$1…`. It ignores INT/HUP/TERM so a Ctrl-C
/// aimed at the test run does not kill it before it has cleaned up. Kill the returned child
/// (SIGKILL) when the resources are released normally.
pub fn spawn_watchdog(cleanup: &str, args: &[&str]) -> Child {
    let script = format!(
        "trap '' INT HUP TERM\n\
         test_pid=$1; shift\n\
         while [ -d /proc/$test_pid ] && ! grep -q '^State:.*Z' /proc/$test_pid/status 2>/dev/null; do\n\
           sleep 0.5\n\
         done\n\
         {cleanup}\n"
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("watchdog")
        .arg(std::process::id().to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn watchdog: {e}"))
}

/// Quotes a value for a libpq `key=value` connection string.
pub fn conninfo_value(value: &str) -> String {
    if !value.is_empty() && !value.contains([' ', '\'', '\\', '=']) {
        return value.to_string();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Percent-encodes a userinfo or path component of a `postgres://` URL.
pub fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How long one test binary may run before the overrun guard reports and exits it; override
/// with `PGRELAY_TEST_DEADLINE_SECS`. A hung test then costs minutes, not the whole CI budget.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);

/// What the overrun guard prints when it fires: the servers' sessions and pgrelay logs.
enum Witness {
    /// A PostgreSQL node: its `pg_stat_activity` shows who waits on what.
    Node {
        name: String,
        socket_dir: std::path::PathBuf,
        port: u16,
    },
    /// A pgrelay log file.
    Log(std::path::PathBuf),
}

static WITNESSES: Mutex<Vec<Witness>> = Mutex::new(Vec::new());

/// Registers a PostgreSQL node with the overrun guard (and starts the guard).
pub(crate) fn witness_node(name: &str, socket_dir: &Path, port: u16) {
    start_overrun_guard();
    WITNESSES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Witness::Node {
            name: name.to_owned(),
            socket_dir: socket_dir.to_path_buf(),
            port,
        });
}

/// Registers a pgrelay log with the overrun guard (and starts the guard).
pub(crate) fn witness_log(path: &Path) {
    start_overrun_guard();
    WITNESSES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Witness::Log(path.to_path_buf()));
}

/// Starts (once per test process) a thread that, past the deadline, prints every registered
/// node's sessions and every pgrelay log tail still on disk, then exits the process with a
/// failure. The cleanup watchdogs then tear the clusters down as for any other exit.
fn start_overrun_guard() {
    static GUARD: std::sync::Once = std::sync::Once::new();
    GUARD.call_once(|| {
        let deadline = std::env::var("PGRELAY_TEST_DEADLINE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(DEFAULT_DEADLINE, Duration::from_secs);
        std::thread::spawn(move || {
            std::thread::sleep(deadline);
            eprintln!("\n=== test process overran its {deadline:?} deadline; state follows ===");
            let witnesses = WITNESSES.lock().unwrap_or_else(|e| e.into_inner());
            for witness in witnesses.iter() {
                eprintln!("{}", describe(witness));
            }
            eprintln!("=== exiting: a test is hung ===");
            std::process::exit(3);
        });
    });
}

fn describe(witness: &Witness) -> String {
    match witness {
        Witness::Log(path) if path.exists() => tail(path, 60),
        Witness::Log(_) => String::new(),
        Witness::Node {
            name,
            socket_dir,
            port,
        } => {
            let sql = "SELECT pid, application_name, backend_type, state, wait_event_type, \
                       wait_event, now() - xact_start AS xact_age, left(query, 200) \
                       FROM pg_stat_activity WHERE pid <> pg_backend_pid()";
            let mut cmd = Command::new("/usr/lib/postgresql/15/bin/psql");
            cmd.args(["-X", "-U", "postgres", "-d", "postgres", "-c", sql])
                .arg("-h")
                .arg(socket_dir)
                .arg("-p")
                .arg(port.to_string())
                .env("PGCONNECT_TIMEOUT", "5")
                .env("PGOPTIONS", "-c statement_timeout=5000")
                .stdin(Stdio::null());
            match cmd.output() {
                Ok(out) => format!(
                    "--- sessions on {name} (port {port}) ---\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => format!("--- sessions on {name}: psql failed: {e} ---"),
            }
        }
    }
}
