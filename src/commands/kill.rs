//! `kill [--all] ID [SIGNAL]`, as runc's `kill.go`.

use std::str::FromStr;

use anyhow::{bail, Context as _, Result};
use libcontainer::container::ContainerStatus;
use nix::sys::signal::Signal;

use super::Ctx;
use crate::cli::KillArgs;

/// A signal by number (`9`) or name (`KILL`, `SIGKILL`, `kill`).
pub fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).with_context(|| format!("unknown signal number {n}"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).with_context(|| format!("unknown signal {s:?}"))
}

pub fn kill(args: KillArgs, ctx: &Ctx) -> Result<()> {
    let signal = parse_signal(&args.signal)?;
    let id = &args.container_id;
    let mut c = ctx.store.load(id)?;
    let before = c.status();
    if before == ContainerStatus::Stopped {
        if !args.all {
            // The shim maps "container not running" to "process not found".
            bail!("container \"{id}\" not running");
        }
        // runc: `kill --all` after init exited signals what is left in the
        // cgroup, and succeeds when the cgroup is already gone.
        if let Err(err) = c.kill(signal, true) {
            tracing::debug!(?err, id, "kill --all on a stopped container");
        }
        return Ok(());
    }
    c.kill(signal, args.all)
        .with_context(|| format!("failed to send {signal} to container \"{id}\""))?;
    // libcontainer records every killed container as stopped; keep the real
    // status instead (a SIGUSR1 does not stop anything). The next load
    // refreshes it from /proc if the process did die.
    c.set_status(before)
        .save()
        .with_context(|| format!("failed to save the state of container \"{id}\""))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_forms_ok() {
        for s in ["9", "KILL", "SIGKILL", "kill", "sigkill"] {
            assert_eq!(parse_signal(s).unwrap(), Signal::SIGKILL, "{s}");
        }
        assert_eq!(parse_signal("15").unwrap(), Signal::SIGTERM);
    }

    #[test]
    fn bad_signal_ng() {
        for s in ["999", "NOPE", "", "SIG"] {
            assert!(parse_signal(s).is_err(), "{s}");
        }
    }
}
