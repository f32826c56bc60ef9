//! The `switchboard` binary: parse arguments (clap), load the config (exit 64 on a bad one),
//! set up logging from `[log]`, map signals onto the drain controls, and run the gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::config::{Config, LogFormat};
use switchboard::Stop;

/// mimalloc instead of glibc malloc: a gateway's life is many small, short-lived allocations
/// from several threads (SIP messages, events, cohort upload batches); under glibc they showed
/// as malloc_consolidate and fragmentation that kept freed upload batches in RSS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// BSD sysexits `EX_USAGE`: the command was used incorrectly (bad arguments or config).
const EXIT_USAGE: u8 = 64;
/// BSD sysexits `EX_SOFTWARE`: the gateway failed after a valid start request.
const EXIT_SOFTWARE: u8 = 70;
/// Exit status when a third signal cuts the shutdown short, by shell convention (128 + 2).
const EXIT_INTERRUPTED: i32 = 130;

/// SIP-to-AI-agent gateway: routes carrier calls to agent runtimes over WebSocket.
///
/// Every configuration key can be overridden by SWITCHBOARD_<SECTION>_<KEY>
/// (e.g. SWITCHBOARD_ADMIN_LISTEN=0.0.0.0:8080).
///
/// Signals: SIGTERM drains (new calls refused with 503, live calls go on for up to
/// [shutdown] grace_period_secs); a second SIGTERM or a SIGINT ends the calls now.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about, long_about)]
struct Cli {
    /// TOML configuration file (default: embedded defaults).
    #[arg(short, long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Load and validate the configuration, then exit (same as `check-config`).
    #[arg(long, hide = true)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Parse and validate the configuration, report every problem, exit 0 (ok) or 64.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print on stdout and succeed; usage errors go to stderr.
            let _ = e.print();
            return match e.use_stderr() {
                true => ExitCode::from(EXIT_USAGE),
                false => ExitCode::SUCCESS,
            };
        }
    };
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(errors) => {
            eprint!("switchboard: {errors}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if cli.check_config || matches!(cli.command, Some(Command::CheckConfig)) {
        eprintln!("switchboard: configuration ok");
        return ExitCode::SUCCESS;
    }
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard: cannot build the runtime: {e}");
            return ExitCode::from(EXIT_SOFTWARE);
        }
    };
    let result = runtime.block_on(async {
        let stop = Stop::default();
        tokio::spawn(stop_on_signals(stop.clone()));
        switchboard::run_until(config, stop).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "switchboard failed");
            ExitCode::from(EXIT_SOFTWARE)
        }
    }
}

/// Logs on stderr, filtered by `RUST_LOG` when set, else `[log] level` (validated at load).
fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match config.log.format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// SIGTERM (orchestrators, systemd) drains; a second SIGTERM or a SIGINT (an operator's
/// Ctrl-C) ends the live calls now; one more signal after that exits at once.
async fn stop_on_signals(stop: Stop) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let end_now = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: draining"); false }
        _ = int.recv() => { tracing::info!("SIGINT: ending calls now"); true }
    };
    if !end_now {
        stop.drain.cancel();
        tokio::select! {
            _ = term.recv() => tracing::warn!("second SIGTERM: ending calls now"),
            _ = int.recv() => tracing::warn!("SIGINT: ending calls now"),
        }
    }
    stop.end_calls.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("another signal: exiting now");
    std::process::exit(EXIT_INTERRUPTED);
}
