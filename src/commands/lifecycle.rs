//! `start`, `pause`, `resume`: state transitions with runc's messages.

use anyhow::{bail, Context as _, Result};
use libcontainer::container::ContainerStatus;

use super::Ctx;
use crate::cli::IdArg;

/// `start ID`: run the user process of a created container.
pub fn start(args: IdArg, ctx: &Ctx) -> Result<()> {
    let mut c = ctx.store.load(&args.container_id)?;
    match c.status() {
        ContainerStatus::Created => {}
        ContainerStatus::Stopped => bail!("cannot start a container that has stopped"),
        ContainerStatus::Running => bail!("cannot start an already running container"),
        other => bail!("cannot start a container in the {other} state"),
    }
    c.start()
        .with_context(|| format!("failed to start container \"{}\"", args.container_id))
}

/// `pause ID`: freeze every process of the container.
pub fn pause(args: IdArg, ctx: &Ctx) -> Result<()> {
    let mut c = ctx.store.load(&args.container_id)?;
    match c.status() {
        ContainerStatus::Running | ContainerStatus::Created => {}
        other => bail!(
            "container \"{}\" not running: it is {other}",
            args.container_id
        ),
    }
    c.pause()
        .with_context(|| format!("failed to pause container \"{}\"", args.container_id))
}

/// `resume ID`: thaw a paused container.
pub fn resume(args: IdArg, ctx: &Ctx) -> Result<()> {
    let mut c = ctx.store.load(&args.container_id)?;
    if c.status() != ContainerStatus::Paused {
        bail!(
            "container \"{}\" not paused: it is {}",
            args.container_id,
            c.status()
        );
    }
    c.resume()
        .with_context(|| format!("failed to resume container \"{}\"", args.container_id))
}
