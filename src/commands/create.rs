//! `create` and `run`, as runc's `create.go` and `run.go`.

use anyhow::{Context as _, Result};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;

use super::{foreground, Ctx};
use crate::bundle::Bundle;
use crate::cli::{CreateArgs, CreateFlags, RunArgs};

/// Validate everything, then build the container through libcontainer.
/// With `detach == false` the init process stays our child (for `run`).
/// On failure nothing is left registered under `--root`.
fn build_init(id: &str, flags: &CreateFlags, detach: bool, ctx: &Ctx) -> Result<Container> {
    ctx.store.ensure_free(id)?;
    let bundle = Bundle::open(flags.launch.bundle.as_deref())?;
    let root = ctx.ensure_root()?;
    let result = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_executor(DefaultExecutor {})
        .with_pid_file(flags.launch.pid_file.as_ref())?
        .with_console_socket(flags.launch.console_socket.as_ref())
        .with_root_path(root)?
        .with_preserved_fds(flags.preserve_fds)
        .validate_id()?
        .as_init(&bundle.path)
        .with_systemd(ctx.global.systemd_cgroup)
        .with_detach(detach)
        .with_no_pivot(flags.launch.no_pivot)
        .build();
    match result {
        Ok(c) => Ok(c),
        Err(err) => {
            discard_partial(id, ctx);
            Err(err).with_context(|| format!("failed to create container \"{id}\""))
        }
    }
}

/// libcontainer can fail after it made the container directory (e.g. a bad
/// console socket); remove what it left so the ID is free again.
fn discard_partial(id: &str, ctx: &Ctx) {
    if let Ok(mut c) = ctx.store.load(id) {
        if let Err(err) = c.delete(true) {
            tracing::warn!(?err, id, "failed to clean up after a failed create");
        }
    }
    if let Ok(dir) = ctx.store.container_dir(id) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

pub fn create(args: CreateArgs, ctx: &Ctx) -> Result<()> {
    build_init(&args.container_id, &args.flags, true, ctx)?;
    Ok(())
}

/// `run`: create + start; attached, wait for init and return its exit status
/// (forwarding signals to it), then delete unless `--keep`.
pub fn run(args: RunArgs, ctx: &Ctx) -> Result<i32> {
    let id = &args.container_id;
    if !args.detach {
        // As runc: become a subreaper so orphans of the container come to us.
        foreground::become_subreaper()?;
        foreground::block_signals()?;
    }
    let mut c = build_init(id, &args.flags, args.detach, ctx)?;
    if let Err(err) = c.start() {
        let _ = c.delete(true);
        return Err(err).with_context(|| format!("failed to start container \"{id}\""));
    }
    if args.detach {
        return Ok(0);
    }
    // From here it only waits: other commands may act on the container.
    crate::lock::release();
    let pid = c.pid().context("container has no init pid after start")?;
    let status = foreground::wait_forwarding_signals(pid)?;
    if !args.keep {
        let mut c = ctx.store.load(id)?;
        c.delete(true)
            .with_context(|| format!("failed to delete container \"{id}\""))?;
    }
    Ok(status)
}
