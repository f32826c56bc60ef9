//! The `switchboard` binary: parse arguments, load the config (exit 64 on a bad one), install
//! signal handlers on one cancellation token, and run the gateway.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use switchboard::config::Config;
use tokio_util::sync::CancellationToken;

/// BSD sysexits `EX_USAGE`: the command was used incorrectly (bad arguments or config).
const EXIT_USAGE: u8 = 64;
/// BSD sysexits `EX_SOFTWARE`: the gateway failed after a valid start request.
const EXIT_SOFTWARE: u8 = 70;

const USAGE: &str = "usage: switchboard [--config FILE] [--check-config]\n\
    \n  --config FILE    TOML configuration (default: embedded defaults)\
    \n  --check-config   load and validate the configuration, then exit\
    \n\nEvery key can be overridden by SWITCHBOARD_<SECTION>_<KEY> (e.g. SWITCHBOARD_ADMIN_LISTEN).";

struct Args {
    config: Option<PathBuf>,
    check_only: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        config: None,
        check_only: false,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                let path = args.next().ok_or("--config needs a FILE")?;
                parsed.config = Some(PathBuf::from(path));
            }
            "--check-config" => parsed.check_only = true,
            "--help" | "-h" => return Err(String::new()),
            other => match other.strip_prefix("--config=") {
                Some(path) => parsed.config = Some(PathBuf::from(path)),
                None => return Err(format!("unknown argument {other:?}")),
            },
        }
    }
    Ok(parsed)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("switchboard: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let config = match Config::load(args.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(errors) => {
            eprint!("switchboard: {errors}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if args.check_only {
        eprintln!("switchboard: configuration ok");
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
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
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        switchboard::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "switchboard failed");
            ExitCode::from(EXIT_SOFTWARE)
        }
    }
}

/// How long SIGINT (an operator's Ctrl-C) waits for the drain before exiting anyway; SIGTERM
/// (orchestrators) waits for the full drain, bounded by `switchboard::DRAIN_TIMEOUT`.
const SIGINT_GRACE: Duration = Duration::from_secs(1);
/// Exit status after SIGINT, by shell convention (128 + 2).
const EXIT_INTERRUPTED: i32 = 130;

/// SIGTERM and SIGINT both cancel the one shutdown token, so every service stops accepting and
/// drains. SIGTERM lets the drain finish; SIGINT gives it [`SIGINT_GRACE`]; a second signal of
/// either kind exits at once.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let fast = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: draining"); false }
        _ = int.recv() => { tracing::info!("SIGINT: stopping"); true }
    };
    shutdown.cancel();
    let grace = async {
        match fast {
            true => tokio::time::sleep(SIGINT_GRACE).await,
            false => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::warn!("second signal: exiting now"),
        _ = int.recv() => tracing::warn!("second signal: exiting now"),
        () = grace => tracing::warn!("SIGINT grace elapsed: exiting"),
    }
    std::process::exit(EXIT_INTERRUPTED);
}
