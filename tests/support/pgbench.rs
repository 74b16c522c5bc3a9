//! pgbench as a client: initialise its tables on a server, run it against pgrelay, and check
//! that a run finished without a single failed transaction or server error.

use std::process::Command;

/// `pgbench -i -s 1` on a server directly, as the owner of the tables would.
pub fn pgbench_init(port: u16) {
    let out = Command::new("pgbench")
        .args([
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "app",
        ])
        .arg("postgres")
        .env("PGPASSWORD", "app")
        .output()
        .expect("pgbench -i runs");
    assert!(
        out.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs pgbench as user app against `port` with `args`, and asserts it ran cleanly: exit 0,
/// no failed transaction, no ERROR, and at least `min_transactions` done.
pub fn pgbench_runs_cleanly(port: u16, args: &[&str], min_transactions: u64) {
    let out = Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "app"])
        .args(args)
        .arg("postgres")
        .env("PGPASSWORD", "app")
        .output()
        .expect("pgbench runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pgbench {args:?} failed: {err}\n{text}"
    );
    assert!(
        text.contains("number of failed transactions: 0"),
        "pgbench {args:?}: {text}\n{err}"
    );
    assert!(!err.contains("ERROR"), "pgbench {args:?}: {err}");
    let processed = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        processed >= min_transactions,
        "pgbench {args:?} processed only {processed}: {text}"
    );
}
