//! What both programs share around the library: logging, signals, default paths, status.
//!
//! Kept here so the two binaries stay a page of flag parsing each, and so
//! there is one way to do each of these things.

use std::io::IsTerminal;
use std::path::PathBuf;

/// Runs a program's async body on a fresh runtime and exits with its result.
///
/// Exits right away afterwards: a blocking read on stdin (the `-` input) cannot be
/// cancelled and would otherwise keep the runtime, and the process, alive.
pub fn run_main<F>(program: &str, body: impl FnOnce() -> F) -> !
where
    F: std::future::Future<Output = bool>,
{
    let ok = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(body()),
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            false
        }
    };
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::process::exit(if ok { 0 } else { 1 })
}

/// Sends tracing output to stderr, filtered by `RUST_LOG` (default: info for Starling).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,starling=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// A future that resolves when the process is asked to stop (Ctrl-C or SIGTERM).
///
/// The handlers are installed by this call, not on first poll, so a signal that
/// arrives before the program starts waiting is still a clean stop. Call it
/// inside the runtime, before anything is printed.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt()).ok();
        let terminate = signal(SignalKind::terminate()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(interrupt) => {}
                _ = wait(terminate) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The broadcaster's default key file: `$XDG_CONFIG_HOME/starling/broadcaster.key`,
/// else `~/.config/starling/broadcaster.key`, else `./starling-broadcaster.key`.
pub fn default_key_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        });
    match base {
        Some(b) => b.join("starling").join("broadcaster.key"),
        None => PathBuf::from("starling-broadcaster.key"),
    }
}

/// Whether stderr is a terminal (then a status line is redrawn in place).
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Bytes as a human-readable size.
pub fn human_bytes(n: u64) -> String {
    let v = n as f64;
    if v >= 1e9 {
        format!("{:.2} GB", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1} MB", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0} kB", v / 1e3)
    } else {
        format!("{n} B")
    }
}
