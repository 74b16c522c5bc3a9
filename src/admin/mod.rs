//! Operator surfaces: the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`) and the SQL
//! console on the virtual database `pgrelay` (`SHOW …`, `EXPLAIN ROUTE`, `RELOAD`, `PAUSE`).
//!
//! Admin code reads shared state (metrics, pools, topology, clients). The only ways it changes
//! how clients are served are the console's explicit commands: `RELOAD` (swaps the config as
//! SIGHUP does), `PAUSE`/`RESUME` (a switch sessions check before a new transaction) and
//! `SHUTDOWN` (the same signal SIGTERM sends).

pub mod console;
pub mod http;
