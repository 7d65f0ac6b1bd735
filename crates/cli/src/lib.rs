//! What the command-line programs of the reactor workspace share: the logger
//! set-up, durations given in seconds, `--metrics ADDR`, and how a failure
//! becomes an exit code.
//!
//! Programs only: the libraries never depend on this crate (a library must not
//! set up a logger or decide how its caller exits).

#![deny(missing_docs)]
#![warn(unreachable_pub)]

use std::fmt::Display;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// Logs through `env_logger` at `info` unless `RUST_LOG` says otherwise.
pub fn init_logger() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
}

/// `v` seconds as a `Duration`, or an error naming the option `--name`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(reactor_cli::secs("idle-timeout", 1.5), Ok(Duration::from_millis(1500)));
/// assert!(reactor_cli::secs("idle-timeout", -1.0).unwrap_err().contains("--idle-timeout"));
/// ```
pub fn secs(name: &str, v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|_| format!("--{name} must be a non-negative number"))
}

/// A clap `value_parser` for options given in seconds (`--idle-timeout 0.5`).
///
/// ```
/// assert_eq!(reactor_cli::parse_secs("2").unwrap().as_secs(), 2);
/// assert!(reactor_cli::parse_secs("soon").is_err());
/// ```
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| "not a number of seconds".to_string())?;
    Duration::try_from_secs_f64(v).map_err(|_| "not a non-negative number of seconds".to_string())
}

/// `--metrics ADDR`: serves the Prometheus metrics of `reactor` (label
/// `loop="0"`) on `addr`, if one was given. For several loops, use
/// [`reactor_metrics::Metrics`] directly.
pub fn serve_metrics(
    reactor: &mut reactor::Reactor,
    addr: Option<SocketAddr>,
) -> Result<(), String> {
    match addr {
        Some(a) => reactor_metrics::serve(reactor, a)
            .map(|_| ())
            .map_err(|e| format!("cannot serve metrics on {a}: {e}")),
        None => Ok(()),
    }
}

/// The exit code for a program's result: success, or the error on stderr as
/// `NAME: ERROR` and failure.
pub fn exit<E: Display>(name: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
