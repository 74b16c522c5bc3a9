//! Bad input gets a PostgreSQL error with a SQLSTATE, never a hang or a crash, and never
//! disturbs other clients: wrong passwords, unknown users, garbage bytes, oversized messages.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::{Cluster, Proxy};

/// Reads what pgrelay answers until it closes the connection (bounded by a read timeout).
fn read_until_close(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // Closing with our unread garbage still queued makes the kernel send a reset.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !out.is_empty() => {
                return out
            }
            Err(e) => panic!("pgrelay neither answered nor closed: {e}; got {out:?}"),
        }
    }
}

/// The SQLSTATE of the first ErrorResponse in a byte stream.
fn sqlstate(bytes: &[u8]) -> Option<String> {
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let tag = bytes[at];
        let len = i32::from_be_bytes([bytes[at + 1], bytes[at + 2], bytes[at + 3], bytes[at + 4]])
            as usize;
        let body = bytes.get(at + 5..at + 1 + len)?;
        if tag == b'E' {
            let mut fields = body.split(|&b| b == 0);
            return fields.find_map(|f| {
                f.strip_prefix(b"C")
                    .map(|c| String::from_utf8_lossy(c).into_owned())
            });
        }
        at += 1 + len;
    }
    None
}

fn startup_packet(user: &str) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", "postgres")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// A raw socket logged in as trust_user, read up to its first ReadyForQuery.
fn raw_login(proxy: &Proxy) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
    s.write_all(&startup_packet("trust_user")).expect("startup");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(6).any(|w| w == [b'Z', 0, 0, 0, 5, b'I']) {
        let n = s.read(&mut buf).expect("login answer");
        assert!(n > 0, "closed during login");
        seen.extend_from_slice(&buf[..n]);
    }
    s
}

async fn still_serves(proxy: &Proxy) {
    let client = proxy.connect("app", "app").await;
    let v: i32 = client
        .query_one("SELECT 41 + 1", &[])
        .await
        .expect("healthy client")
        .get(0);
    assert_eq!(v, 42);
}

#[tokio::test]
async fn wrong_password_is_28p01() {
    let proxy = Proxy::start(Cluster::shared(), "");
    let err = proxy
        .try_connect("app", "not-the-password")
        .await
        .expect_err("login must fail");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "28P01");
    assert_eq!(
        db.message(),
        "password authentication failed for user \"app\""
    );
    let md5 = proxy
        .try_connect("md5_user", "wrong")
        .await
        .expect_err("md5 login must fail");
    assert_eq!(md5.code().map(|c| c.code()), Some("28P01"));
    still_serves(&proxy).await;
}

#[tokio::test]
async fn unknown_user_looks_like_a_wrong_password() {
    let proxy = Proxy::start(Cluster::shared(), "");
    let err = proxy
        .try_connect("nobody_here", "whatever")
        .await
        .expect_err("login must fail");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "28P01");
    assert_eq!(
        db.message(),
        "password authentication failed for user \"nobody_here\""
    );
}

#[tokio::test]
async fn every_auth_method_logs_in() {
    let proxy = Proxy::start(Cluster::shared(), "");
    for (user, password) in [("app", "app"), ("md5_user", "md5pass"), ("trust_user", "")] {
        let client = proxy.connect(user, password).await;
        let who: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .expect("query")
            .get(0);
        assert_eq!(who, user);
    }
}

#[tokio::test]
async fn garbage_before_startup_gets_08p01_and_others_keep_working() {
    let proxy = Proxy::start(Cluster::shared(), "");
    let healthy = proxy.connect("app", "app").await;
    for garbage in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0, 0, 0, 8, 0, 2, 0, 0],
        vec![0xff; 64],
        vec![0, 0, 0, 9, 0, 3, 0, 0, b'u'],
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
        s.write_all(&garbage).expect("write");
        let answer = read_until_close(&mut s);
        let code = sqlstate(&answer);
        assert!(
            matches!(code.as_deref(), Some("08P01") | Some("0A000")),
            "garbage {garbage:?} got {code:?}"
        );
        let v: i32 = healthy
            .query_one("SELECT 1", &[])
            .await
            .expect("other client")
            .get(0);
        assert_eq!(v, 1);
    }
    still_serves(&proxy).await;
}

#[tokio::test]
async fn message_over_the_limit_is_refused_with_08p01() {
    let proxy = Proxy::start(Cluster::shared(), "max_message_size = \"64kB\"");
    let healthy = proxy.connect("app", "app").await;
    // A logged-in client claims a 1 GB Query: refused before anything that size is read.
    let client = proxy.connect("app", "app").await;
    let big = "x".repeat(100_000);
    let err = client
        .simple_query(&format!("SELECT '{big}'"))
        .await
        .expect_err("oversized message");
    let text = err.to_string();
    assert!(
        err.code().map(|c| c.code()) == Some("08P01") || text.contains("closed"),
        "got {text}"
    );
    // Raw: a header announcing 1 GB, after a real login.
    let mut s = raw_login(&proxy);
    s.write_all(&[b'Q', 0x3f, 0xff, 0xff, 0xff])
        .expect("header");
    let answer = read_until_close(&mut s);
    assert_eq!(sqlstate(&answer).as_deref(), Some("08P01"));
    let v: i32 = healthy
        .query_one("SELECT 2", &[])
        .await
        .expect("other client")
        .get(0);
    assert_eq!(v, 2);
}

#[tokio::test]
async fn unknown_message_type_after_login_is_08p01() {
    let proxy = Proxy::start(Cluster::shared(), "");
    let mut s = raw_login(&proxy);
    s.write_all(&[b'!', 0, 0, 0, 4]).expect("bogus message");
    let answer = read_until_close(&mut s);
    assert_eq!(sqlstate(&answer).as_deref(), Some("08P01"));
    still_serves(&proxy).await;
}

#[tokio::test]
async fn unknown_database_gets_the_servers_error() {
    let proxy = Proxy::start(Cluster::shared(), "");
    let conn = format!(
        "{} dbname=no_such_db",
        proxy.conn_str("app", "app", "postgres")
    );
    let err = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .err()
        .expect("no such database");
    assert_eq!(err.code().map(|c| c.code()), Some("3D000"));
}

#[tokio::test]
async fn clients_past_the_limits_get_53300() {
    let proxy = Proxy::start(Cluster::shared(), "max_client_connections = 2");
    let first = proxy.connect("app", "app").await;
    let _second = proxy.connect("app2", "app2").await;
    let err = proxy
        .try_connect("app", "app")
        .await
        .expect_err("a third client is over max_client_connections");
    assert_eq!(err.code().map(|c| c.code()), Some("53300"), "got {err}");
    let v: i32 = first
        .query_one("SELECT 3", &[])
        .await
        .expect("first client")
        .get(0);
    assert_eq!(v, 3, "clients under the limit keep working");
}

#[test]
fn bad_config_is_refused_with_key_value_reason_and_exit_code_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"not-an-address\"\n[cluster]\nhosts = [\"127.0.0.1:5432\"]\n",
    )
    .expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgrelay"))
        .args(["--check", "--config"])
        .arg(&bad)
        .output()
        .expect("run pgrelay --check");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.listen") && err.contains("not-an-address"),
        "{err}"
    );
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[cluster]\nhosts = [\"127.0.0.1:5432\"]\n").expect("write config");
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_pgrelay"))
        .args(["--check", "--config"])
        .arg(&good)
        .output()
        .expect("run pgrelay --check");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_dropped_after_the_login_timeout_and_block_nobody() {
    let proxy = Proxy::start(
        Cluster::shared(),
        "client_login_timeout = \"1s\"\nmax_client_connections = 5000",
    );
    // A thousand connections that never send a byte (slowloris).
    let mut silent = Vec::new();
    for _ in 0..1000 {
        silent.push(
            tokio::net::TcpStream::connect(("127.0.0.1", proxy.port()))
                .await
                .expect("connect"),
        );
    }
    // A normal client logs in and works meanwhile.
    let client = proxy.connect("app", "app").await;
    let v: i32 = client
        .query_one("SELECT 11", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(v, 11);
    // After the timeout every silent connection has been closed by pgrelay.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut closed = 0;
    for mut s in silent {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => closed += 1,
            Err(_) => {}
        }
    }
    assert_eq!(closed, 1000, "silent connections left open");
    let v: i32 = client
        .query_one("SELECT 12", &[])
        .await
        .expect("query after")
        .get(0);
    assert_eq!(v, 12);
}
