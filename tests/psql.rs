//! What a psql user sees through pgrelay: queries, multi-statement strings, errors that do not
//! break the session, DO blocks, \copy in both directions, large objects (fast-path calls).

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{Cluster, Proxy};

fn psql_args(proxy: &Proxy, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("psql");
    cmd.arg(proxy.conn_str("app", "app", "postgres"))
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=0"])
        .args(args)
        .env("PGCONNECT_TIMEOUT", "10");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("psql runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write script");
        return child.wait_with_output().expect("psql finishes");
    }
    cmd.output().expect("psql runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_owned()
}

#[test]
fn select_one_through_psql() {
    let proxy = Proxy::start(Cluster::shared(), "");
    let out = psql_args(&proxy, &["-c", "SELECT 1"], None);
    assert!(out.status.success(), "psql failed: {}", stderr(&out));
    assert_eq!(stdout(&out), "1");
}

#[test]
fn multi_statement_string_returns_every_result() {
    let proxy = Proxy::start(Cluster::shared(), "");
    let out = psql_args(&proxy, &["-c", "SELECT 1; SELECT 'two'; SELECT 3"], None);
    assert!(out.status.success(), "psql failed: {}", stderr(&out));
    assert_eq!(stdout(&out), "1\ntwo\n3");
}

#[test]
fn error_mid_string_then_the_session_still_works() {
    let proxy = Proxy::start(Cluster::shared(), "");
    // One Query message holding three statements (psql -c sends the string as it is), then a
    // second command on the same connection.
    let out = psql_args(
        &proxy,
        &[
            "-c",
            "SELECT 1; SELECT 1/0; SELECT 'not reached'",
            "-c",
            "SELECT 42",
        ],
        None,
    );
    let err = stderr(&out);
    assert!(err.contains("division by zero"), "stderr: {err}");
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        vec!["1", "42"],
        "the statement after the error in the same string must not run"
    );
}

#[test]
fn do_block_runs_on_the_leader() {
    let cluster = Cluster::shared();
    let proxy = Proxy::start(cluster, "");
    cluster
        .leader
        .psql("CREATE TABLE IF NOT EXISTS psql_do (v int); GRANT ALL ON psql_do TO app");
    let out = psql_args(
        &proxy,
        &[
            "-c",
            "DO $$ BEGIN INSERT INTO psql_do VALUES (7); INSERT INTO psql_do VALUES (8); END $$",
        ],
        None,
    );
    assert!(out.status.success(), "psql failed: {}", stderr(&out));
    assert_eq!(cluster.leader.psql("SELECT sum(v) FROM psql_do"), "15");
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn copy_in_and_out_100k_rows_round_trips_identically() {
    let cluster = Cluster::shared();
    let proxy = Proxy::start(cluster, "");
    cluster.leader.psql("DROP TABLE IF EXISTS psql_copy; CREATE TABLE psql_copy (id int, name text, note text); GRANT ALL ON psql_copy TO app");
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.tsv");
    let output = dir.path().join("out.tsv");
    let mut data = String::with_capacity(4 << 20);
    for i in 0..100_000 {
        let note = if i % 7 == 0 {
            "\\N".to_owned()
        } else {
            format!("note\\t{i} é")
        };
        data.push_str(&format!("{i}\tname-{i}\t{note}\n"));
    }
    std::fs::write(&input, &data).expect("write input");
    let out = psql_args(
        &proxy,
        &[
            "-c",
            &format!("\\copy psql_copy FROM '{}'", input.display()),
        ],
        None,
    );
    assert!(out.status.success(), "copy in failed: {}", stderr(&out));
    assert_eq!(
        cluster.leader.psql("SELECT count(*) FROM psql_copy"),
        "100000"
    );
    let out = psql_args(
        &proxy,
        &[
            "-c",
            &format!(
                "\\copy (SELECT * FROM psql_copy ORDER BY id) TO '{}'",
                output.display()
            ),
        ],
        None,
    );
    assert!(out.status.success(), "copy out failed: {}", stderr(&out));
    assert_eq!(sha256_of(&input), sha256_of(&output));
}

#[test]
fn large_object_import_uses_fast_path_calls() {
    let cluster = Cluster::shared();
    let proxy = Proxy::start(cluster, "");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("blob.bin");
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &blob).expect("write blob");
    // \lo_import runs lo_creat/lo_open/lowrite through libpq's fast-path FunctionCall messages.
    let script = format!("\\lo_import '{}'\nSELECT :LASTOID;\n", file.display());
    let out = psql_args(&proxy, &["-f", "-"], Some(&script));
    assert!(out.status.success(), "lo_import failed: {}", stderr(&out));
    let oid = stdout(&out);
    assert!(
        oid.parse::<u32>().is_ok(),
        "no oid in {oid:?}: {}",
        stderr(&out)
    );
    let size = cluster
        .leader
        .psql(&format!("SELECT length(lo_get({oid}))"));
    assert_eq!(size, "200000");
}

#[test]
fn notice_and_notify_reach_the_client() {
    let proxy = Proxy::start(Cluster::shared(), "pool_mode = \"session\"");
    let script = "LISTEN psql_chan;\nDO $$ BEGIN RAISE NOTICE 'hello from server'; END $$;\nNOTIFY psql_chan, 'payload-1';\nSELECT 1;\n";
    let out = psql_args(&proxy, &["-f", "-"], Some(script));
    let err = stderr(&out);
    let out_text = stdout(&out);
    assert!(err.contains("hello from server"), "notice missing: {err}");
    assert!(
        out_text.contains("payload-1") || err.contains("payload-1"),
        "notification missing: {out_text} / {err}"
    );
}
