//! `delete [--force] ID`, as runc's `delete.go`.

use anyhow::{bail, Context as _, Result};
use libcontainer::container::ContainerStatus;

use super::Ctx;
use crate::cli::DeleteArgs;
use crate::store::StoreError;

pub fn delete(args: DeleteArgs, ctx: &Ctx) -> Result<()> {
    let id = &args.container_id;
    let mut c = match ctx.store.load(id) {
        Ok(c) => c,
        Err(StoreError::NotExist(_)) => {
            // An aborted create can leave a directory without state.json;
            // runc removes it, and --force makes a missing container a success.
            let dir = ctx.store.container_dir(id)?;
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("failed to remove {}", dir.display()))?;
            }
            if args.force {
                return Ok(());
            }
            return Err(StoreError::NotExist(id.clone()).into());
        }
        Err(e) => return Err(e.into()),
    };
    match c.status() {
        ContainerStatus::Stopped | ContainerStatus::Created => {}
        status if !args.force => bail!(
            "cannot delete container \"{id}\" that is not stopped: {status} (stop it with `kill`, or use `delete --force`)"
        ),
        _ => {}
    }
    if args.force {
        return force_delete(&mut c);
    }
    remove_child_cgroups(&c);
    c.delete(false)
        .with_context(|| format!("failed to delete container \"{id}\""))
}

/// Child cgroups a container made under its own (v1) removed, deepest
/// first, before libcontainer removes the container's, which it cannot
/// while they exist (runc's `RemovePath` removes them). Its processes are
/// dead by now; one left in a child is killed (janitor::remove_cgroup_dir).
fn remove_child_cgroups(c: &libcontainer::container::Container) {
    if c.systemd() {
        return;
    }
    let Ok(cfg) = libcontainer::config::YoukiConfig::load(&c.root) else {
        return;
    };
    for dir in crate::checkpoint::spec::v1_cgroup_dirs(&cfg.cgroup_path).unwrap_or_default() {
        for child in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                if let Err(e) = crate::criu::janitor::remove_cgroup_dir(&child.path()) {
                    tracing::warn!(
                        "cannot remove the child cgroup {}: {e}",
                        child.path().display()
                    );
                }
            }
        }
    }
}

/// `delete --force`: every process killed and gone, then the container
/// removed (also how `migrate` ends the source's frozen copy).
pub(crate) fn force_delete(c: &mut libcontainer::container::Container) -> Result<()> {
    if c.status() != ContainerStatus::Stopped {
        reap_all(c);
    }
    remove_child_cgroups(c);
    let id = c.id().to_string();
    c.delete(true)
        .with_context(|| format!("failed to delete container \"{id}\""))
}

/// How a container CRIU is about to dump will be removed once it is dumped
/// (its tasks dead or dying), as `c.delete(true)` would, for less:
/// libcontainer's v1 cgroup manager reads the mount table once per
/// controller (~2 ms), and waits 100 ms before retrying a cgroup whose last
/// task is still exiting. Here the v1 directories come from one read of the
/// mount table, made while CRIU starts ([`DumpedRemoval::plan`]: ~0.5 ms of
/// the kernel generating it here, off the checkpoint's path), and each is
/// removed with retries after 0.1, 0.2, 0.4… ms. Containers with poststop
/// hooks, systemd cgroups, Intel RDT or a cgroup v2 host go through
/// libcontainer as before.
pub(crate) struct DumpedRemoval {
    /// None: libcontainer's delete.
    dirs: Option<Vec<std::path::PathBuf>>,
}

impl DumpedRemoval {
    pub(crate) fn plan(c: &libcontainer::container::Container) -> DumpedRemoval {
        let plain = !c.systemd() && c.intel_rdt_dir().is_none();
        let config = libcontainer::config::YoukiConfig::load(&c.root).ok();
        let dirs = config
            .as_ref()
            .filter(|cfg| plain && cfg.hooks.as_ref().is_none_or(|h| h.poststop().is_none()))
            .and_then(|cfg| crate::checkpoint::spec::v1_cgroup_dirs(&cfg.cgroup_path));
        DumpedRemoval { dirs }
    }

    pub(crate) fn run(self, c: &mut libcontainer::container::Container) -> Result<()> {
        let id = c.id().to_string();
        let Some(dirs) = self.dirs else {
            return c
                .delete(true)
                .with_context(|| format!("failed to delete container \"{id}\""));
        };
        for d in dirs.iter().filter(|d| d.exists()) {
            crate::criu::janitor::remove_cgroup_dir(d).with_context(|| {
                format!(
                    "failed to delete container \"{id}\": its cgroup {} stays",
                    d.display()
                )
            })?;
        }
        std::fs::remove_dir_all(&c.root).with_context(|| {
            format!(
                "failed to delete container \"{id}\": cannot remove {}",
                c.root.display()
            )
        })
    }
}

/// Before libcontainer removes the cgroups: SIGKILL every process of the
/// container and wait (10 s at most) until they are gone. A frozen
/// container is thawed only once the SIGKILLs are pending, so it runs no
/// instruction of its own. A process with a
/// large memory (1 GiB here) takes longer to exit than libcontainer's own
/// wait for an empty cgroup, and its delete then failed with "could not
/// delete" on the cgroup (found by the migration benchmark and the
/// network-cut test).
fn reap_all(c: &libcontainer::container::Container) {
    if let Ok(m) = super::cgroup_manager(c) {
        kill_all_in(&m);
    }
}

/// SIGKILL every process in a container's cgroup and wait (10 s at most)
/// until none is left — also what a failed restore undoes with: a
/// half-restored process with a large memory (150 MB in the test) can take
/// longer to exit than libcgroups' own retries of the cgroup's removal
/// (found by CI: a process still exiting 2 s after the failed restore had
/// returned).
pub(crate) fn kill_all_in(m: &libcgroups::common::AnyCgroupManager) {
    use libcgroups::common::CgroupManager;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut thawed = false;
    loop {
        let pids = m.get_all_pids().unwrap_or_default();
        if pids.is_empty() || std::time::Instant::now() >= deadline {
            return;
        }
        for p in pids {
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
        }
        if !std::mem::replace(&mut thawed, true) {
            // A frozen (paused) process dies once thawed, its SIGKILL
            // already pending: it runs no instruction of its own.
            let _ = m.freeze(libcgroups::common::FreezerState::Thawed);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
