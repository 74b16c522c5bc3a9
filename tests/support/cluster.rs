//! A throwaway PostgreSQL cluster (one leader, N streaming replicas) and a `redis-server`, in one
//! temp dir, owned by a test. It only ever drives the servers through their own tools
//! (`initdb`, `pg_ctl`, `pg_basebackup`, `psql`) so what tests see is what operators do; it must
//! never leave a process or a directory behind, whichever way the test ends.

use super::{free_port, run, running_as_root, send_signal, spawn_watchdog, tail, wait_until};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Bound on every wait: server start, promotion, streaming, redis start.
const WAIT: Duration = Duration::from_secs(30);

/// Unix socket paths are limited to 107 bytes; the socket file name adds `/.s.PGSQL.NNNNN`.
const MAX_SOCKET_DIR_LEN: usize = 90;

/// Settings for test servers. `synchronous_commit` stays on: tests reason about commit LSNs.
/// `wal_receiver_status_interval` is short so replay positions and lag figures move quickly;
/// `wal_sender_timeout` is 2 s rather than 1 s so a replica on a busy 2-core machine is not cut
/// off (and reported missing) by a one-second scheduling stall. `wal_log_hints` lets
/// `pg_rewind` turn a failed-over leader into a replica.
const SERVER_SETTINGS: &str = "
listen_addresses = '127.0.0.1'
max_connections = 300
shared_buffers = '32MB'
fsync = off
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = '64MB'
hot_standby = on
hot_standby_feedback = on
wal_log_hints = on
wal_sender_timeout = '2s'
wal_receiver_status_interval = '1s'
wal_receiver_timeout = '5s'
wal_retrieve_retry_interval = '200ms'
shared_preload_libraries = 'pg_stat_statements'
logging_collector = off
log_min_messages = warning
";

const PG_HBA: &str = "\
local   all          all                       trust
local   replication  all                       trust
host    replication  all         127.0.0.1/32  trust
host    all          trust_user  127.0.0.1/32  trust
host    all          md5_user    127.0.0.1/32  md5
host    all          all         127.0.0.1/32  scram-sha-256
";

/// Roles every test can log in as; the passwords are the ones `Proxy` puts in its config.
const ROLES_SQL: &[&str] = &[
    "CREATE ROLE app LOGIN PASSWORD 'app'",
    "CREATE ROLE app2 LOGIN PASSWORD 'app2'",
    // The stored secret must be md5 so the server can run md5 auth for this role.
    "SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN PASSWORD 'md5pass'",
    "CREATE ROLE trust_user LOGIN",
    "CREATE ROLE admin_user LOGIN PASSWORD 'admin'",
    "GRANT CREATE ON DATABASE postgres TO app, app2, md5_user, trust_user, admin_user",
    "GRANT CREATE ON SCHEMA public TO app, app2, md5_user, trust_user, admin_user",
    "CREATE EXTENSION pg_stat_statements",
];

/// Run by the watchdog after the test process dies, and by `Drop`: stops every postmaster
/// found in the dir (SIGQUIT = immediate shutdown), kills redis, waits for the postmasters to
/// go, removes the dir. A pid is only signalled if it still is the process we started (the pid
/// file may be stale and the pid reused).
const CLEANUP_SCRIPT: &str = r#"
dir=$1
for pidfile in "$dir"/*/data/postmaster.pid; do
  [ -f "$pidfile" ] || continue
  pid=$(head -n 1 "$pidfile")
  if [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "${pidfile%/postmaster.pid}" ]; then
    kill -CONT "$pid" 2>/dev/null; kill -QUIT "$pid" 2>/dev/null
  fi
done
if [ -f "$dir/redis/redis.pid" ]; then
  pid=$(cat "$dir/redis/redis.pid")
  if grep -q redis-server "/proc/$pid/cmdline" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null; fi
fi
i=0
while [ $i -lt 100 ] && ls "$dir"/*/data/postmaster.pid >/dev/null 2>&1; do
  sleep 0.1; i=$((i+1))
done
rm -rf "$dir"
"#;

/// A leader, its streaming replicas and a redis-server, each on its own loopback port.
pub struct Cluster {
    pub leader: PgNode,
    pub replicas: Vec<PgNode>,
    pub redis: RedisNode,
    /// Declared last so it is dropped last: it stops everything and removes the dir.
    workspace: Workspace,
}

impl Cluster {
    /// Leader + 2 streaming replicas + redis-server. Returns once both replicas stream.
    pub fn start() -> Cluster {
        Cluster::start_with(2)
    }

    /// Leader + `replicas` streaming replicas + redis-server. Panics with the failing
    /// command's stderr or the node's log tail if anything does not come up within 30 s.
    pub fn start_with(replicas: usize) -> Cluster {
        let started = Instant::now();
        let workspace = Workspace::create();
        let dir = workspace.dir.clone();

        let redis = RedisNode {
            port: free_port(),
            dir: dir.join("redis"),
            child: Mutex::new(None),
        };
        fs::create_dir(&redis.dir).expect("create redis dir");
        redis.start();

        let leader = PgNode::new(&dir, "leader");
        let replica_nodes: Vec<PgNode> = (1..=replicas)
            .map(|i| PgNode::new(&dir, &format!("replica{i}")))
            .collect();
        for node in std::iter::once(&leader).chain(&replica_nodes) {
            fs::create_dir(node.data_dir.parent().unwrap()).expect("create node dir");
        }
        let password_file = dir.join("pwfile");
        fs::write(&password_file, "postgres\n").expect("write pwfile");
        workspace.give_to_postgres();

        leader.init(&password_file);
        leader.start();
        for sql in ROLES_SQL {
            leader.psql(sql);
        }

        // Base backups and replica starts are independent: run them side by side.
        std::thread::scope(|scope| {
            let setups: Vec<_> = replica_nodes
                .iter()
                .map(|replica| {
                    let leader = &leader;
                    scope.spawn(move || {
                        replica.clone_from(leader);
                        replica.start();
                    })
                })
                .collect();
            for setup in setups {
                // Re-raise the replica's own panic so its message (stderr, log tail) survives.
                if let Err(panic) = setup.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        });
        let cluster = Cluster {
            leader,
            replicas: replica_nodes,
            redis,
            workspace,
        };
        for replica in &cluster.replicas {
            replica.wait_streaming_from(&cluster.leader);
        }
        eprintln!(
            "support: cluster with {replicas} replicas up in {:?} at {}",
            started.elapsed(),
            cluster.workspace.dir.display()
        );
        cluster
    }

    /// One cluster shared by every test of the calling test binary, started on first use.
    /// Its servers are stopped and its dir removed by the watchdog once the test process
    /// exits (a static is never dropped). Tests that stop, promote or pause nodes must use
    /// their own `Cluster::start()` instead.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
        let shared = SHARED.get_or_init(|| {
            std::panic::catch_unwind(Cluster::start).map_err(|panic| {
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".to_string())
            })
        });
        match shared {
            Ok(cluster) => cluster,
            // Fail every later test fast instead of retrying a setup that already failed.
            Err(reason) => panic!("the shared cluster failed to start: {reason}"),
        }
    }

    /// `["127.0.0.1:<leader>", "127.0.0.1:<replica1>", …]`, leader first.
    pub fn hosts(&self) -> Vec<String> {
        self.nodes()
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect()
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis.port)
    }

    /// Leader first, then the replicas in order.
    pub fn nodes(&self) -> Vec<&PgNode> {
        std::iter::once(&self.leader)
            .chain(&self.replicas)
            .collect()
    }

    /// The node listening on `port`, e.g. to name the server that answered
    /// `SELECT inet_server_port()`.
    pub fn node_by_port(&self, port: u16) -> Option<&PgNode> {
        self.nodes().into_iter().find(|node| node.port == port)
    }

    /// Waits until every running replica has replayed everything the leader has written so
    /// far (e.g. before stopping the leader, so every replica can follow a promoted peer).
    pub fn wait_for_replay(&self) {
        let leader_lsn = self.leader.psql("SELECT pg_current_wal_lsn()");
        for replica in &self.replicas {
            replica.wait_for_replay_of(&leader_lsn);
        }
    }

    /// The cluster's temp dir (sockets, data dirs, logs).
    pub fn dir(&self) -> &Path {
        &self.workspace.dir
    }
}

/// The cluster's temp dir plus the watchdog that cleans it if the test process dies.
struct Workspace {
    dir: PathBuf,
    watchdog: Child,
}

impl Workspace {
    fn create() -> Workspace {
        // Always /tmp, never a long $TMPDIR: the dir doubles as the socket dir.
        let dir = tempfile::Builder::new()
            .prefix("pgr.")
            .tempdir_in("/tmp")
            .expect("create cluster temp dir")
            .keep();
        // The cleanup script compares it with /proc/<pid>/cwd, which is canonical.
        let dir = dir.canonicalize().expect("canonicalize temp dir");
        let dir_text = dir.to_str().expect("temp dir path is UTF-8").to_string();
        assert!(
            dir_text.len() <= MAX_SOCKET_DIR_LEN,
            "socket dir path too long: {dir_text}"
        );
        let watchdog = spawn_watchdog(CLEANUP_SCRIPT, &[&dir_text]);
        Workspace { dir, watchdog }
    }

    /// PostgreSQL runs as `postgres` when we are root; it must own the dir to write sockets,
    /// logs and data dirs there.
    fn give_to_postgres(&self) {
        if running_as_root() {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(&self.dir));
        }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        let status = Command::new("sh")
            .arg("-c")
            .arg(CLEANUP_SCRIPT)
            .arg("cleanup")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "support: cleanup of {} failed: {status:?}",
                self.dir.display()
            );
        }
    }
}

/// A PostgreSQL server of the cluster: its port, data dir and name (`leader`, `replica1`, …;
/// also its `cluster_name`, hence the `application_name` it streams under).
pub struct PgNode {
    pub port: u16,
    pub data_dir: PathBuf,
    pub name: String,
    socket_dir: PathBuf,
    log_file: PathBuf,
}

impl PgNode {
    fn new(cluster_dir: &Path, name: &str) -> PgNode {
        let node_dir = cluster_dir.join(name);
        let port = free_port();
        super::witness_node(name, cluster_dir, port);
        PgNode {
            port,
            data_dir: node_dir.join("data"),
            name: name.to_string(),
            socket_dir: cluster_dir.to_path_buf(),
            log_file: node_dir.join("postgres.log"),
        }
    }

    /// libpq `key=value` form over TCP to 127.0.0.1.
    pub fn conn_str(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={} connect_timeout=10",
            self.port,
            super::conninfo_value(user),
            super::conninfo_value(password),
            super::conninfo_value(db)
        )
    }

    /// Connects over TCP with tokio-postgres and drives the connection on a spawned task.
    pub async fn connect(&self, user: &str, password: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(
            &self.conn_str(user, password, "postgres"),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap_or_else(|e| panic!("connect to {} as {user}: {e}", self.name));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Runs `sql` as superuser in database `postgres` over the unix socket; returns trimmed
    /// stdout (unaligned, tuples only). With several statements only the last one's result is
    /// printed. Panics with psql's stderr on error.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db("postgres", sql)
    }

    /// `psql` in another database.
    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        self.try_psql_db(db, sql)
            .unwrap_or_else(|stderr| panic!("psql on {} failed for {sql:?}:\n{stderr}", self.name))
    }

    /// `psql` that returns stderr instead of panicking (for polling a node that may be down).
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.try_psql_db("postgres", sql)
    }

    pub fn try_psql_db(&self, db: &str, sql: &str) -> Result<String, String> {
        let output = Command::new(format!("{PG_BIN}/psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
            ])
            .arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    pub fn is_in_recovery(&self) -> bool {
        self.psql("SELECT pg_is_in_recovery()") == "t"
    }

    /// Starts the server and waits (≤ 30 s) until it accepts connections.
    pub fn start(&self) {
        let output = self
            .pg_tool("pg_ctl")
            .args(["start", "-w", "-t", "30", "-D"])
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run pg_ctl: {e}"));
        if !output.status.success() {
            panic!(
                "pg_ctl start of {} failed:\n{}\n{}",
                self.name,
                String::from_utf8_lossy(&output.stderr),
                self.log_tail()
            );
        }
    }

    /// Immediate shutdown (like a crash: no checkpoint, clients cut off). No-op when stopped.
    pub fn stop_immediate(&self) {
        self.stop("immediate");
    }

    /// Fast shutdown (clients disconnected, clean checkpoint). No-op when stopped.
    pub fn stop_fast(&self) {
        self.stop("fast");
    }

    /// Fast stop (if running), then start.
    pub fn restart(&self) {
        self.stop_fast();
        self.start();
    }

    fn stop(&self, mode: &str) {
        if !self.is_running() {
            return;
        }
        let output = self
            .pg_tool("pg_ctl")
            .args(["stop", "-w", "-t", "30", "-m", mode, "-D"])
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run pg_ctl: {e}"));
        if !output.status.success() {
            panic!(
                "pg_ctl stop -m {mode} of {} failed:\n{}\n{}",
                self.name,
                String::from_utf8_lossy(&output.stderr),
                self.log_tail()
            );
        }
    }

    /// Whether a postmaster runs on this data dir (`pg_ctl status` exits 0).
    pub fn is_running(&self) -> bool {
        self.pg_tool("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Promotes this replica and waits (≤ 30 s) until it accepts writes.
    pub fn promote(&self) {
        let output = self
            .pg_tool("pg_ctl")
            .args(["promote", "-w", "-t", "30", "-D"])
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run pg_ctl: {e}"));
        if !output.status.success() {
            panic!(
                "pg_ctl promote of {} failed:\n{}\n{}",
                self.name,
                String::from_utf8_lossy(&output.stderr),
                self.log_tail()
            );
        }
        wait_until(
            &format!("{} to leave recovery", self.name),
            WAIT,
            || self.try_psql("SELECT pg_is_in_recovery()").as_deref() == Ok("f"),
            || self.log_tail(),
        );
    }

    /// Re-points this replica at `new_leader` (a promoted peer), restarts it and waits until it
    /// streams from it. It switches to the new timeline itself (`recovery_target_timeline` is
    /// `latest` by default), which works as long as it has not replayed past the point where
    /// `new_leader` was promoted: call `Cluster::wait_for_replay` before losing the old leader.
    pub fn follow(&self, new_leader: &PgNode) {
        self.ensure_slot_on(new_leader);
        self.stop_fast();
        self.point_at(new_leader);
        self.start();
        self.wait_streaming_from(new_leader);
    }

    /// Turns a former leader (or any node that may have WAL the new leader never saw) into a
    /// replica of `new_leader`: stops it, `pg_rewind`s it onto `new_leader`'s timeline (which
    /// also finishes crash recovery after `stop_immediate`), then follows like `follow`.
    pub fn rewind_and_follow(&self, new_leader: &PgNode) {
        self.ensure_slot_on(new_leader);
        // pg_rewind reads the source's timeline from its control file, which a promotion only
        // updates at the next checkpoint; without this it may see "same timeline" and do nothing.
        new_leader.psql("CHECKPOINT");
        self.stop_fast();
        run(self
            .pg_tool("pg_rewind")
            .arg("--target-pgdata")
            .arg(&self.data_dir)
            .arg(format!(
                "--source-server=host={} port={} user=postgres dbname=postgres",
                self.socket_dir.display(),
                new_leader.port
            ))
            .arg("--no-sync"));
        // pg_rewind copied new_leader's postgresql.conf, port and name included.
        self.append_settings("");
        self.point_at(new_leader);
        self.start();
        self.wait_streaming_from(new_leader);
    }

    /// Slots are not replicated, so a promoted peer has none for us yet.
    fn ensure_slot_on(&self, new_leader: &PgNode) {
        new_leader.psql(&format!(
            "SELECT pg_create_physical_replication_slot('{0}') \
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '{0}')",
            self.name
        ));
    }

    /// Writes the recovery settings that make this (stopped) node a replica of `new_leader`.
    fn point_at(&self, new_leader: &PgNode) {
        let auto_conf = self.data_dir.join("postgresql.auto.conf");
        let old = fs::read_to_string(&auto_conf).unwrap_or_default();
        let mut new: String = old
            .lines()
            .filter(|line| {
                let key = line.split('=').next().unwrap_or("").trim();
                !matches!(
                    key,
                    "primary_conninfo" | "primary_slot_name" | "recovery_target_timeline"
                )
            })
            .map(|line| format!("{line}\n"))
            .collect();
        new.push_str(&format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user=postgres'\n\
             primary_slot_name = '{}'\n\
             recovery_target_timeline = 'latest'\n",
            new_leader.port, self.name
        ));
        fs::write(&auto_conf, new).expect("rewrite postgresql.auto.conf");
        // A stopped former leader needs this to come back as a replica.
        let signal_file = self.data_dir.join("standby.signal");
        if !signal_file.exists() {
            fs::write(&signal_file, "").expect("write standby.signal");
            self.chown_to_postgres(&signal_file);
        }
    }

    /// Waits (≤ 30 s) until `leader`'s `pg_stat_replication` shows this node streaming and
    /// this node receives `leader`'s current timeline. (A replica that cannot switch
    /// timelines reconnects in a loop and shows up as streaming for moments at a time.)
    pub fn wait_streaming_from(&self, leader: &PgNode) {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_replication \
             WHERE application_name = '{}' AND state = 'streaming'",
            self.name
        );
        wait_until(
            &format!("{} to stream from {}", self.name, leader.name),
            WAIT,
            || {
                leader.try_psql(&sql).as_deref() == Ok("1")
                    && self
                        .try_timeline()
                        .is_some_and(|tli| Some(tli) == leader.try_timeline())
            },
            || format!("{}\n{}", self.log_tail(), leader.log_tail()),
        );
    }

    /// The timeline this node writes on (not in recovery) or receives from its upstream (a
    /// replica; 0 when its WAL receiver is not running).
    pub fn timeline(&self) -> u32 {
        self.try_timeline().unwrap_or_else(|| {
            panic!(
                "cannot read the timeline of {}\n{}",
                self.name,
                self.log_tail()
            )
        })
    }

    fn try_timeline(&self) -> Option<u32> {
        // pg_control_checkpoint() lags a promotion until the next checkpoint; the WAL file name
        // of the insert position does not.
        let sql = "SELECT CASE WHEN pg_is_in_recovery() \
                   THEN (SELECT coalesce(max(received_tli), 0) FROM pg_stat_wal_receiver) \
                   ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int \
                   END";
        self.try_psql(sql).ok()?.parse().ok()
    }

    /// Waits (≤ 30 s) until this replica has replayed WAL up to `lsn` (e.g. the leader's
    /// `pg_current_wal_lsn()` after a write).
    pub fn wait_for_replay_of(&self, lsn: &str) {
        let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
        wait_until(
            &format!("{} to replay up to {lsn}", self.name),
            WAIT,
            || self.try_psql(&sql).as_deref() == Ok("t"),
            || self.log_tail(),
        );
    }

    /// Polls (≤ `timeout`) until `sql` returns exactly `expected`; panics with the last result.
    pub fn wait_for(&self, sql: &str, expected: &str, timeout: Duration) {
        let last = std::cell::RefCell::new(Err(String::new()));
        wait_until(
            &format!("{sql:?} to return {expected:?} on {}", self.name),
            timeout,
            || {
                let result = self.try_psql(sql);
                let done = result.as_deref() == Ok(expected);
                *last.borrow_mut() = result;
                done
            },
            || format!("last result: {:?}\n{}", last.borrow(), self.log_tail()),
        );
    }

    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The last 40 lines of the server log, for panic messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log_file, 40)
    }

    fn init(&self, password_file: &Path) {
        run(self
            .pg_tool("initdb")
            .arg("-D")
            .arg(&self.data_dir)
            .args([
                "-U",
                "postgres",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
            ])
            .arg(format!("--pwfile={}", password_file.display()))
            .args(["-E", "UTF8", "--locale=C", "--no-sync"]));
        fs::write(self.data_dir.join("pg_hba.conf"), PG_HBA).expect("write pg_hba.conf");
        self.append_settings(&format!(
            "{SERVER_SETTINGS}unix_socket_directories = '{}'\n",
            self.socket_dir.display()
        ));
    }

    /// Takes a base backup of `leader` into this node's data dir as a streaming replica with
    /// its own replication slot.
    fn clone_from(&self, leader: &PgNode) {
        run(self
            .pg_tool("pg_basebackup")
            .args(["-h", "127.0.0.1", "-p", &leader.port.to_string()])
            .args(["-U", "postgres", "-D"])
            .arg(&self.data_dir)
            .args(["-R", "-c", "fast", "-X", "stream", "--no-sync"])
            .args(["-C", "-S", &self.name]));
        self.append_settings("");
    }

    /// Turns TLS on with this certificate and key (PEM), and refuses `plain_refused` any
    /// login over TCP without TLS, so a session that works for that role proves TLS is in
    /// use. Takes effect at once (configuration reload).
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str, plain_refused: &str) {
        let cert = self.data_dir.join("server.crt");
        let key = self.data_dir.join("server.key");
        fs::write(&cert, cert_pem).expect("write server.crt");
        fs::write(&key, key_pem).expect("write server.key");
        run(Command::new("chmod").arg("600").arg(&key));
        self.chown_to_postgres(&cert);
        self.chown_to_postgres(&key);
        let hba = self.data_dir.join("pg_hba.conf");
        let rules = fs::read_to_string(&hba).expect("read pg_hba.conf");
        fs::write(
            &hba,
            format!("hostnossl all {plain_refused} 127.0.0.1/32 reject\n{rules}"),
        )
        .expect("write pg_hba.conf");
        self.append_settings("ssl = on\n");
        self.psql("SELECT pg_reload_conf()");
        self.wait_for("SHOW ssl", "on", WAIT);
    }

    /// Appends to postgresql.conf (later lines win), always ending with this node's port and
    /// name: a replica's copy of the leader's file must not keep the leader's.
    fn append_settings(&self, settings: &str) {
        let path = self.data_dir.join("postgresql.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        write!(
            file,
            "\n# pgrelay test harness\n{settings}port = {}\ncluster_name = '{}'\n",
            self.port, self.name
        )
        .expect("append to postgresql.conf");
    }

    fn chown_to_postgres(&self, path: &Path) {
        if running_as_root() {
            run(Command::new("chown").arg("postgres:postgres").arg(path));
        }
    }

    /// A PostgreSQL tool, run as `postgres` when we are root (the server tools refuse root),
    /// from the cluster dir (so it never tries to read a cwd it has no access to).
    fn pg_tool(&self, tool: &str) -> Command {
        let path = format!("{PG_BIN}/{tool}");
        let mut cmd = if running_as_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--", &path]);
            cmd
        } else {
            Command::new(path)
        };
        cmd.current_dir(&self.socket_dir);
        cmd
    }
}

/// The cluster's redis-server (no persistence), which can be stopped, restarted and frozen to
/// test how pgrelay's cache behaves when Redis is down or slow.
pub struct RedisNode {
    pub port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl RedisNode {
    /// Starts redis-server on its port (no-op if it runs) and waits (≤ 30 s) for PONG.
    pub fn start(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if child.is_some() {
            return;
        }
        let log = self.dir.join("redis.log");
        let spawned = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (is it installed?): {e}"));
        fs::write(self.dir.join("redis.pid"), spawned.id().to_string()).expect("write redis.pid");
        *child = Some(spawned);
        drop(child);
        wait_until(
            "redis-server to answer PING",
            WAIT,
            || self.ping(),
            || tail(&log, 20),
        );
    }

    /// Kills redis-server (SIGKILL: like a crash, works even while paused). No-op if stopped.
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut running) = child.take() {
            let _ = running.kill();
            let _ = running.wait();
            let _ = fs::remove_file(self.dir.join("redis.pid"));
        }
    }

    /// Freezes redis-server (SIGSTOP): connections stay open but nothing answers.
    pub fn pause(&self) {
        send_signal(self.pid(), 19);
    }

    /// Thaws a paused redis-server (SIGCONT).
    pub fn resume(&self) {
        send_signal(self.pid(), 18);
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// True if redis answers PING with PONG within 1 s.
    pub fn ping(&self) -> bool {
        self.cmd(&["PING"]).as_deref() == Ok("PONG")
    }

    /// Sends one command in RESP and returns the reply as text: simple strings, integers and
    /// bulk strings as they are, nil as `(nil)`, arrays one element per line; an error reply
    /// or I/O failure (refused, 1 s timeout) is `Err`.
    pub fn cmd(&self, args: &[&str]) -> Result<String, String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let timeout = Duration::from_secs(1);
        let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
        stream.write_all(&request).map_err(|e| e.to_string())?;
        read_resp(&mut BufReader::new(stream))
    }

    fn pid(&self) -> u32 {
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        child.as_ref().expect("redis-server is not running").id()
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_resp(reader: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | ":" => Ok(rest.to_string()),
        "-" => Err(rest.to_string()),
        "$" => {
            let Ok(len) = usize::try_from(rest.parse::<i64>().map_err(|e| e.to_string())?) else {
                return Ok("(nil)".to_string());
            };
            let mut bulk = vec![0; len + 2];
            reader.read_exact(&mut bulk).map_err(|e| e.to_string())?;
            bulk.truncate(len);
            Ok(String::from_utf8_lossy(&bulk).into_owned())
        }
        "*" => {
            let Ok(len) = usize::try_from(rest.parse::<i64>().map_err(|e| e.to_string())?) else {
                return Ok("(nil)".to_string());
            };
            let mut items = Vec::with_capacity(len);
            for _ in 0..len {
                items.push(read_resp(reader).unwrap_or_else(|e| format!("(error) {e}")));
            }
            Ok(items.join("\n"))
        }
        _ => Err(format!("unexpected RESP reply {line:?}")),
    }
}
