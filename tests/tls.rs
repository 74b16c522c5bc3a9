//! TLS on both sides of pgrelay, with certificates the tests make themselves (rcgen):
//! clients connecting with `sslmode=require` and `verify-full` (psql), plain clients refused
//! under `tls_mode = "require"`, and pgrelay's own connections to servers that accept
//! nothing but TLS, under `[cluster] tls = "require"` and `"verify-full"`.

mod support;

use std::process::Command;

use support::certs::{self, Certs};
use support::{Cluster, Proxy};

/// `[server]` keys that turn client TLS on in `mode`.
fn client_tls(mode: &str, certs: &Certs) -> String {
    format!(
        "tls_mode = \"{mode}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
        certs.cert.display(),
        certs.key.display()
    )
}

/// Runs `sql` through psql with the proxy's connection string plus `extra` (sslmode and
/// friends): stdout on success, stderr on failure.
fn psql(conninfo: &str, extra: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .arg(format!("{conninfo} {extra}"))
        .args(["-XAtqc", sql])
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Checks that psql gets answers with `sslmode=require` and with `verify-full` against the
/// test CA; returns the `verify-full` connection options.
fn tls_clients_are_served(conninfo: &str, certs: &Certs) -> String {
    assert_eq!(
        psql(conninfo, "sslmode=require", "SELECT 1").as_deref(),
        Ok("1")
    );
    let verify_full = format!("sslmode=verify-full sslrootcert={}", certs.ca.display());
    assert_eq!(psql(conninfo, &verify_full, "SELECT 2").as_deref(), Ok("2"));
    verify_full
}

#[tokio::test]
async fn tls_mode_require_serves_tls_clients_and_refuses_plain_ones() {
    let certs = certs::generate("pgrelay test CA");
    let proxy = Proxy::start(Cluster::shared(), &client_tls("require", &certs));
    let conninfo = proxy.conn_str("app", "app", "postgres");

    let verify_full = tls_clients_are_served(&conninfo, &certs);
    // The certificate names localhost too.
    let by_name = conninfo.replace("host=127.0.0.1", "host=localhost");
    assert_eq!(psql(&by_name, &verify_full, "SELECT 3").as_deref(), Ok("3"));
    // A client that trusts another CA refuses pgrelay's certificate.
    let stranger = certs::generate("some other CA");
    let err = psql(
        &conninfo,
        &format!("sslmode=verify-full sslrootcert={}", stranger.ca.display()),
        "SELECT 1",
    )
    .expect_err("a certificate from an unknown CA was accepted");
    assert!(err.contains("certificate verify failed"), "{err}");
    // The admin console is reached the same way, and lists itself as a TLS client.
    let console = proxy.conn_str("admin_user", "admin", "pgrelay");
    let servers = psql(&console, "sslmode=require", "SHOW SERVERS").expect("console over TLS");
    assert_eq!(servers.lines().count(), 3, "{servers}");
    let clients = psql(&console, "sslmode=require", "SHOW CLIENTS").expect("SHOW CLIENTS");
    assert!(
        clients
            .lines()
            .any(|row| row.contains("|admin_user|pgrelay|") && row.contains("|yes|")),
        "{clients}"
    );

    // Plain clients: psql with sslmode=disable, and tokio-postgres without TLS.
    let err = psql(&conninfo, "sslmode=disable", "SELECT 1").expect_err("plain client served");
    assert!(err.contains("TLS is required"), "{err}");
    let err = proxy
        .try_connect("app", "app")
        .await
        .expect_err("plain client served");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "28000", "{db:?}");
    assert!(db.message().contains("sslmode=require"), "{db:?}");
}

#[test]
fn tls_mode_allow_serves_plain_and_tls_clients() {
    let certs = certs::generate("pgrelay test CA");
    let proxy = Proxy::start(Cluster::shared(), &client_tls("allow", &certs));
    let conninfo = proxy.conn_str("app", "app", "postgres");
    assert_eq!(
        psql(&conninfo, "sslmode=disable", "SELECT 1").as_deref(),
        Ok("1")
    );
    tls_clients_are_served(&conninfo, &certs);
    let console = proxy.conn_str("admin_user", "admin", "pgrelay");
    let clients = psql(&console, "sslmode=disable", "SHOW CLIENTS").expect("SHOW CLIENTS");
    assert!(
        clients
            .lines()
            .any(|row| row.contains("|admin_user|pgrelay|") && row.contains("|no|")),
        "{clients}"
    );
}

#[test]
fn tls_settings_that_cannot_work_are_refused_at_start() {
    let certs = certs::generate("pgrelay test CA");
    let cluster = Cluster::shared();
    let cases = [
        ("tls_mode = \"require\"".to_owned(), "server.tls_cert"),
        (
            format!(
                "tls_mode = \"allow\"\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"{}\"",
                certs.key.display()
            ),
            "cannot read",
        ),
        (
            format!(
                "tls_mode = \"allow\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
                certs.key.display(),
                certs.key.display()
            ),
            "server.tls_cert",
        ),
        (
            "[cluster]\ntls = \"verify-full\"".to_owned(),
            "cluster.tls_ca_file",
        ),
    ];
    for (toml, expected) in cases {
        let failure = Proxy::try_start_with_env(cluster, &toml, &[])
            .err()
            .unwrap_or_else(|| panic!("pgrelay started with {toml:?}"));
        assert!(failure.contains(expected), "{toml:?}: {failure}");
    }
}

/// A leader and a replica that refuse `app` (the role pgrelay's pools and monitor log in as)
/// any connection without TLS.
fn tls_only_cluster(certs: &Certs) -> Cluster {
    let cluster = Cluster::start_with(1);
    for node in cluster.nodes() {
        node.enable_tls(&certs.cert_pem, &certs.key_pem, "app");
    }
    cluster
}

/// Which server answered, whether over TLS, and whether it is a replica.
const WHO: &str = "SELECT inet_server_port(), ssl, pg_is_in_recovery() \
                   FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[test]
fn server_side_tls_require_and_verify_full() {
    let certs = certs::generate("pgrelay test CA");
    let cluster = tls_only_cluster(&certs);
    let leader = cluster.leader.port;
    let replica = cluster.replicas[0].port;

    // The setup really refuses plain connections: with TLS off pgrelay cannot log in.
    let plain = Proxy::start(
        &cluster,
        "[cluster]\ntls = \"disable\"\nfailover_timeout = \"1s\"",
    );
    let err = psql(&plain.conn_str("app", "app", "postgres"), "", "SELECT 1")
        .expect_err("a plain server connection was accepted");
    assert!(
        err.contains("no leader available") || err.contains("pg_hba"),
        "{err}"
    );

    let ca = cluster_tls_ca(&certs);
    for mode in ["prefer", "require", "verify-full"] {
        let proxy = Proxy::start(&cluster, &format!("[cluster]\ntls = \"{mode}\"\n{ca}"));
        let conninfo = proxy.conn_str("app", "app", "postgres");
        psql(
            &conninfo,
            "",
            "CREATE TABLE IF NOT EXISTS tls_t (v int); INSERT INTO tls_t VALUES (1)",
        )
        .unwrap_or_else(|e| panic!("{mode}: write: {e}"));
        let write = psql(
            &conninfo,
            "",
            &format!("BEGIN; INSERT INTO tls_t VALUES (2); {WHO}; COMMIT"),
        )
        .unwrap_or_else(|e| panic!("{mode}: write transaction: {e}"));
        assert_eq!(write, format!("{leader}|t|f"), "{mode}");
        let read = psql(&conninfo, "", WHO).unwrap_or_else(|e| panic!("{mode}: read: {e}"));
        assert_eq!(read, format!("{replica}|t|t"), "{mode}");
    }
}

#[test]
fn verify_full_refuses_a_server_certificate_from_another_ca() {
    let certs = certs::generate("pgrelay test CA");
    let cluster = tls_only_cluster(&certs);
    let stranger = certs::generate("some other CA");
    let proxy = Proxy::start(
        &cluster,
        &format!(
            "[cluster]\ntls = \"verify-full\"\nfailover_timeout = \"1s\"\n{}",
            cluster_tls_ca(&stranger)
        ),
    );
    let err = psql(&proxy.conn_str("app", "app", "postgres"), "", "SELECT 1")
        .expect_err("pgrelay trusted a server certificate from an unknown CA");
    assert!(err.contains("no leader available"), "{err}");
    let (status, body) = proxy.http_get("/readyz");
    assert_eq!(status, 503, "{body}");
    proxy.wait_for_log("certificate", std::time::Duration::from_secs(10));
}

fn cluster_tls_ca(certs: &Certs) -> String {
    format!("tls_ca_file = \"{}\"", certs.ca.display())
}
