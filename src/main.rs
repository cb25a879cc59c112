//! cntrlive-runtime: a runc-compatible OCI runtime built for checkpoint,
//! restore and live migration through CRIU.
//!
//! Flow of one call: argv → [`argv::normalize`] (Go-style `-flag`) → clap
//! ([`cli`]) → logging set up as asked ([`logging`]) → one handler in
//! [`commands`] → libcontainer / the state [`store`]. Every error comes back
//! here and becomes one log line plus exit status 1, as runc's `fatal`.

mod argv;
mod backoff;
mod batch;
mod bundle;
mod checkpoint;
mod cli;
mod commands;
mod config;
mod criu;
mod docker;
mod lock;
mod logging;
mod migrate;
mod sched;
mod store;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use cli::{Cli, Command};

fn version_text() -> String {
    format!(
        "cntrlive-runtime version {}\ncommit: {}\nspec: {}\nlibcontainer: 0.7.0\n",
        env!("CARGO_PKG_VERSION"),
        env!("CNTRLIVE_COMMIT"),
        oci_spec::runtime::VERSION
    )
}

/// Parse argv; usage errors exit 1 like runc (help and version exit 0).
fn parse() -> Result<Cli, clap::Error> {
    let command = Cli::command();
    let args = argv::normalize(std::env::args_os().collect(), &command);
    let matches = command.try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

/// A failed handler: the error and the exit status to report.
struct Failure {
    err: anyhow::Error,
    code: u8,
}

/// Run the handler; `Ok(code)` is the exit status of an attached process.
fn run(cli: Cli) -> Result<i32, Failure> {
    // runc exits 255 when `exec` itself fails ("exec failed: …"), so that a
    // caller can tell it from the exit status of the executed process.
    let (code, prefix) = match &cli.command {
        Some(Command::Exec(_)) => (255, Some("exec failed")),
        _ => (1, None),
    };
    run_command(cli).map_err(|err| Failure {
        // A destination without room for a migrated container: 3, so a
        // batch (or a script) can tell it from a failure.
        code: if err.downcast_ref::<migrate::wire::NoRoom>().is_some() {
            migrate::wire::NoRoom::EXIT
        } else {
            code
        },
        err: match prefix {
            Some(p) => err.context(p),
            None => err,
        },
    })
}

fn run_command(cli: Cli) -> anyhow::Result<i32> {
    let Some(command) = cli.command else {
        // `--version` / `-v` without a subcommand.
        print!("{}", version_text());
        return Ok(0);
    };
    let ctx = commands::Ctx::new(cli.global);
    // One state-changing command at a time per container (src/lock.rs).
    let locked: Option<(&str, &str)> = match &command {
        Command::Create(a) => Some((&a.container_id, "create")),
        Command::Run(a) => Some((&a.container_id, "run")),
        Command::Start(a) => Some((&a.container_id, "start")),
        Command::Pause(a) => Some((&a.container_id, "pause")),
        Command::Resume(a) => Some((&a.container_id, "resume")),
        Command::Update(a) => Some((&a.container_id, "update")),
        Command::Delete(a) => Some((&a.container_id, "delete")),
        // A batch locks each container in its own child command.
        Command::Checkpoint(a) if !a.target.is_batch() => Some((a.target.id(), "checkpoint")),
        Command::Restore(a) if !a.target.is_batch() => Some((a.target.id(), "restore")),
        // Docker-managed: the state is dockerd's runtime root, found later.
        Command::Migrate(a) if a.docker_host.is_none() && !a.is_batch() => {
            Some((a.container_id(), "migrate"))
        }
        _ => None,
    };
    if let Some((id, what)) = locked {
        if store::validate_id(id).is_ok() {
            let wait =
                commands::checkpoint::criu_timeout(&ctx)? + std::time::Duration::from_secs(10);
            ctx.ensure_root()?;
            lock::acquire(ctx.store.root(), id, what, wait)?;
        }
    }
    use commands::*;
    match command {
        Command::Create(a) => create::create(a.0, &ctx).map(|_| 0),
        Command::Run(a) => create::run(a.0, &ctx),
        Command::Start(a) => lifecycle::start(a.0, &ctx).map(|_| 0),
        Command::State(a) => state::state(a.0, &ctx).map(|_| 0),
        Command::List(a) => list::list(a.0, &ctx).map(|_| 0),
        Command::Kill(a) => kill::kill(a.0, &ctx).map(|_| 0),
        Command::Delete(a) => delete::delete(a.0, &ctx).map(|_| 0),
        Command::Exec(a) => exec::exec(a.0, &ctx),
        Command::Ps(a) => ps::ps(a.0, &ctx).map(|_| 0),
        Command::Pause(a) => lifecycle::pause(a.0, &ctx).map(|_| 0),
        Command::Resume(a) => lifecycle::resume(a.0, &ctx).map(|_| 0),
        Command::Events(a) => events::events(a.0, &ctx).map(|_| 0),
        Command::Update(a) => update::update(a.0, &ctx).map(|_| 0),
        Command::Spec(a) => spec::spec(a.0).map(|_| 0),
        Command::Features => features::features(&ctx).map(|_| 0),
        Command::Check => check::check(&ctx),
        Command::PageServer(a) => page_server::page_server(a.0, &ctx).map(|_| 0),
        Command::Checkpoint(a) => checkpoint::checkpoint(a.0, &ctx),
        Command::Restore(a) => restore::restore(a.0, &ctx),
        Command::Migrate(a) => migrate::source::migrate(a.0, &ctx),
        Command::MigrateListen(a) => migrate::dest::migrate_listen(a.0, &ctx).map(|_| 0),
        Command::MigrateReceive(a) => migrate::dest::migrate_receive(a.0, &ctx).map(|_| 0),
        Command::MigrateCerts(a) => migrate::certs::migrate_certs(a.0).map(|_| 0),
        Command::LogRelay { file } => relay::log_relay(&file).map(|_| 0),
        Command::Docker {
            docker_host,
            leave_running,
            op,
            id,
            checkpoint,
        } => docker::Docker::connect(&docker_host)?
            .op(op, &id, checkpoint.as_deref(), leave_running)
            .map(|_| 0),
    }
}

/// Whether `RUST_LIB_BACKTRACE=0` should be set: anyhow (through std's
/// `Backtrace::capture`) records a backtrace with every error it makes when
/// `RUST_BACKTRACE` is set and `RUST_LIB_BACKTRACE` is not. The runtime
/// never shows them (an error is one line, runc's format), and they are
/// dear: in the static binary the first capture sorts the unwind entries of
/// the whole binary (`state` of a missing container with `RUST_BACKTRACE=1`
/// took 7.6 ms instead of 1.3; docs/performance.md, "Session 13 and 14").
/// Panics still follow `RUST_BACKTRACE`; an explicit
/// `RUST_LIB_BACKTRACE` is left as it is.
fn error_backtraces_off(rust_lib_backtrace_set: bool, rust_backtrace_set: bool) -> bool {
    rust_backtrace_set && !rust_lib_backtrace_set
}

fn main() -> ExitCode {
    if error_backtraces_off(
        std::env::var_os("RUST_LIB_BACKTRACE").is_some(),
        std::env::var_os("RUST_BACKTRACE").is_some(),
    ) {
        // Single-threaded here: nothing else reads the environment yet.
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(1),
            };
        }
    };
    if cli.global.version {
        print!("{}", version_text());
        return ExitCode::SUCCESS;
    }
    let dest = match logging::init(
        cli.global.log.as_deref(),
        cli.global.log_format,
        cli.global.debug,
    ) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(1);
        }
    };
    tracing::debug!(phase = "logging up", "main");
    let r = run(cli);
    tracing::debug!(phase = "main returns", "main");
    match r {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(Failure { err, code }) => {
            // runc's fatal(): log the error; if logs go elsewhere, also tell
            // the caller on stderr.
            let msg = format!("{err:#}");
            tracing::error!("{msg}");
            if dest != logging::Destination::Stderr {
                eprintln!("{msg}");
            }
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::error_backtraces_off;

    #[test]
    fn error_backtraces_are_turned_off_only_when_rust_backtrace_alone_asks() {
        // RUST_BACKTRACE=1 alone: anyhow would capture; turned off.
        assert!(error_backtraces_off(false, true));
        // Nothing set: nothing is captured anyway; the environment is left.
        assert!(!error_backtraces_off(false, false));
        // An explicit RUST_LIB_BACKTRACE, whatever its value, is the user's.
        assert!(!error_backtraces_off(true, true));
        assert!(!error_backtraces_off(true, false));
    }
}
