//! The `pgrelay` command: parse arguments, load the config, start the runtime.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pgrelay::config::{Config, LogFormat};

/// Layer-7 PostgreSQL proxy: writes to the leader, reads to replicas, cache-aside in Redis.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Path of the config file (TOML). Environment variables PGRELAY_<SECTION>__<KEY> override it.
    #[arg(long, short, default_value = "proxy.toml")]
    config: PathBuf,
    /// Validate the config and exit (0 when valid, 2 when not).
    #[arg(long)]
    check: bool,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgrelay: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("pgrelay: config {} is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    init_logging(config.server.log_format);
    // One worker needs no work-stealing scheduler: a single-threaded one polls the same
    // tasks without cross-thread wakeups.
    let mut builder = if config.server.worker_threads() == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.server.worker_threads());
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgrelay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(pgrelay::run(config, Some(args.config.clone()))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "pgrelay failed to start");
            eprintln!("pgrelay: {e}");
            ExitCode::FAILURE
        }
    }
}
