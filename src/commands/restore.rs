//! `restore` (runc's restore.go + `Restore` in libcontainer/criu_linux.go)
//! through the CRIU engine, registering the restored container in our state
//! so it is afterwards a normal container (state, exec, kill, delete,
//! checkpoint again) — also when the images come from another host or ID.
//!
//! Order: validate (ID free, bundle, images) before anything is created →
//! state dir, CRIU root mount, cgroup → janitor armed → CRIU session
//! (VERSION gate, RESTORE with every notification answered) → register state
//! and pid file. Any failure undoes all of it: restored tree killed, cgroup
//! and mount removed, nothing registered.

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use libcgroups::common::{AnyCgroupManager, CgroupManager, CreateCgroupSetupError};
use libcontainer::config::YoukiConfig;
use libcontainer::container::{Container, ContainerStatus};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use super::checkpoint::{criu_timeout, make_dir};
use super::{foreground, Ctx};
use crate::bundle::Bundle;
use crate::checkpoint::images::{self, Manifest, SpecFacts, INVENTORY};
use crate::checkpoint::options::RestoreOptions;
use crate::checkpoint::request::{restore_request, RestoreFacts};
use crate::checkpoint::spec::V1Cgroup;
use crate::cli::RestoreArgs;
use crate::criu::cancel;
use crate::criu::gates;
use crate::criu::janitor::{Action, Janitor};
use crate::criu::lazy::LazyPages;
use crate::criu::session::{Notify, NotifyOutcome};

/// Answers CRIU's notifications during a restore.
struct RestoreNotify<'a> {
    console_socket: Option<&'a Path>,
    pid: Option<i32>,
    janitor: &'a mut Janitor,
    /// v1 cgroupfs: the resources are applied during the restore.
    cgroup: Option<&'a mut LateCgroup>,
    /// CRIU runs with the short slice (`Session::short_slice`): the
    /// restored tasks, which inherited it, get the default back at
    /// "post-restore".
    short_slice: bool,
}

/// Send the pty master to the console socket: one sendmsg, one fd.
fn send_console(socket: &Path, master: &OwnedFd) -> Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    nix::sys::socket::connect(sock.as_raw_fd(), &UnixAddr::new(socket)?).with_context(|| {
        format!(
            "failed to connect to the console socket {}",
            socket.display()
        )
    })?;
    let fds = [master.as_raw_fd()];
    let name = b"/dev/ptmx";
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(name)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .with_context(|| format!("failed to send the console to {}", socket.display()))?;
    Ok(())
}

impl Notify for RestoreNotify<'_> {
    fn notify(&mut self, script: &str, pid: Option<i32>, fd: Option<OwnedFd>) -> NotifyOutcome {
        tracing::debug!(script, ?pid, "criu restore notification");
        if let Some(late) = self.cgroup.as_deref_mut() {
            if let Err(e) = late.notified(script) {
                return NotifyOutcome::Fail(format!("{e:#}"));
            }
        }
        match script {
            "orphan-pts-master" => match (self.console_socket, fd) {
                (Some(sock), Some(master)) => match send_console(sock, &master) {
                    Ok(()) => NotifyOutcome::Ok,
                    Err(e) => NotifyOutcome::Fail(format!("{e:#}")),
                },
                (None, Some(_)) => NotifyOutcome::Fail(
                    "the container had a terminal: pass --console-socket to receive it".to_string(),
                ),
                _ => NotifyOutcome::Ok,
            },
            "post-restore" => {
                if let Some(p) = pid {
                    self.pid = Some(p);
                    // Until registered, a restored tree is half-restored.
                    self.janitor.arm(Action::Kill(Pid::from_raw(p)));
                    // Every task is restored, none resumed: they get the
                    // default slice back from CRIU's short one.
                    if self.short_slice {
                        crate::sched::default_slice_tree(p);
                    }
                }
                NotifyOutcome::Ok
            }
            _ => NotifyOutcome::Ok,
        }
    }
}

/// Everything a failed restore must undo.
struct Undo {
    criu_root: Option<PathBuf>,
    /// The empty read-only tmpfs for masked directories.
    masked: Option<PathBuf>,
    container_dir: Option<PathBuf>,
    cgroup: Option<AnyCgroupManager>,
    pid: Option<i32>,
    /// The mounts above, being detached on a thread (`detach_in_background`).
    detaching: Option<std::thread::JoinHandle<()>>,
}

impl Undo {
    fn run(&mut self) {
        if let Some(p) = self.pid.take() {
            let _ = nix::sys::signal::kill(Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(p), None);
        }
        if let Some(m) = self.cgroup.take() {
            super::delete::kill_all_in(&m);
            let _ = m.remove();
        }
        self.unmount();
        if let Some(d) = self.container_dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// Detach CRIU's root and the masked directories' tmpfs (the restored
    /// container keeps its own mounts of the latter).
    fn unmount(&mut self) {
        self.wait_detached();
        for r in [self.criu_root.take(), self.masked.take()]
            .into_iter()
            .flatten()
        {
            let _ = umount2(&r, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&r);
        }
    }

    /// Once CRIU has restored, nothing needs CRIU's root or the masked
    /// directories' tmpfs (the container holds its own mounts): detached
    /// on a thread (~0.6 ms here) while the container is registered;
    /// joined before the restore returns, or by `run`.
    fn detach_in_background(&mut self) {
        let mounts: Vec<PathBuf> = [self.criu_root.take(), self.masked.take()]
            .into_iter()
            .flatten()
            .collect();
        // The thread only detaches; the (empty) mount points stay in the
        // state directory until `delete` removes it (a failed restore
        // removes it at once). Removing a directory that was a mount point
        // waits for an RCU grace period holding its parent's lock — the
        // state directory, where the registration creates its files (each
        // creation took ~0.4 ms more behind it), and done after the
        // registration it was 0.3–0.7 ms at the end of every restore.
        self.detaching = Some(std::thread::spawn(move || {
            for r in &mounts {
                let _ = umount2(r, MntFlags::MNT_DETACH);
            }
        }));
    }

    fn wait_detached(&mut self) {
        if let Some(t) = self.detaching.take() {
            let _ = t.join();
        }
    }
}

/// Left in an image directory by `migrate-receive` for a docker-managed
/// container: dockerd's `start --checkpoint` cannot pass --leave-stopped,
/// and the restored copy must not run before the source's copy is gone
/// (the receive resumes it on commit).
pub const HOLD_MARKER: &str = "cntrlive-hold";

/// The marker is there: restore stopped (and consume it).
fn hold_marker(images: &Path) -> bool {
    let m = images.join(HOLD_MARKER);
    let held = std::fs::symlink_metadata(&m).is_ok_and(|t| t.is_file());
    if held {
        let _ = std::fs::remove_file(&m);
        tracing::info!(
            "{} found: restoring stopped (a migration holds it)",
            m.display()
        );
    }
    held
}

/// The images' first checks and our manifest: enough to start making the
/// network namespace; [`check_images`] does the rest meanwhile. Both come
/// before anything is created.
fn open_images(o: &RestoreOptions) -> Result<Option<Manifest>> {
    let meta = std::fs::symlink_metadata(&o.image_path)
        .with_context(|| format!("image directory {} does not exist", o.image_path.display()))?;
    if meta.file_type().is_symlink() {
        bail!(
            "image path {} is a symlink: pass the real directory ({})",
            o.image_path.display(),
            std::fs::canonicalize(&o.image_path)
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    if !o.image_path.join(INVENTORY).exists() {
        bail!(
            "{} holds no complete checkpoint (no {INVENTORY}): the checkpoint failed or the copy is incomplete",
            o.image_path.display()
        );
    }
    Manifest::load(&o.image_path)
}

/// The parent chain, the image files against the manifest, the kind.
fn check_images(o: &RestoreOptions, manifest: Option<&Manifest>) -> Result<()> {
    images::check_chain(&o.image_path)?;
    if let Some(m) = manifest {
        m.check_files(&o.image_path)?;
        if m.kind == "pre-dump" {
            bail!("{} holds a pre-dump, which cannot be restored: restore from the final dump that names it as parent", o.image_path.display());
        }
    }
    Ok(())
}

/// Map the dump's pipe stdio to our stdio (runc: descriptors.json).
fn inherit_fds(image_path: &Path, ours: [i32; 3]) -> Vec<(String, i32)> {
    let Ok(text) = std::fs::read(image_path.join("descriptors.json")) else {
        return Vec::new();
    };
    let Ok(fds): Result<Vec<String>, _> = serde_json::from_slice(&text) else {
        return Vec::new();
    };
    fds.into_iter()
        .enumerate()
        .filter(|(_, d)| d.contains("pipe:"))
        .map(|(i, d)| (d, ours[i.min(2)]))
        .collect()
}

/// config.json's `linux.resources` (none: the defaults).
fn resources_of(spec: &oci_spec::runtime::Spec) -> LinuxResources {
    spec.linux()
        .as_ref()
        .and_then(|l| l.resources().clone())
        .unwrap_or_default()
}

type MakingManager = std::thread::JoinHandle<Result<AnyCgroupManager, CreateCgroupSetupError>>;

/// The container's v1 `cpu.shares` at CRIU's weight while CRIU restores
/// inside the cgroup (src/sched.rs: CRIU runs at nice −10 while the
/// container is down; in the container's cpu cgroup its nice counts only
/// against the cgroup's own tasks, the cgroup's shares against everything
/// else). Given back — config.json's `cpu.shares`, else what the fresh
/// cgroup had — at "post-restore": every task restored, none resumed.
/// Only for a cgroup directory this restore made; a failed restore
/// removes it.
struct SharesBoost {
    file: PathBuf,
    back: u64,
}

impl SharesBoost {
    /// `nice`: the one CRIU got (`Session::nice`); `resources`: config.json's.
    fn start(cgroup: &V1Cgroup, nice: i32, resources: &LinuxResources) -> Option<SharesBoost> {
        let file = cgroup.fresh_cpu_shares()?;
        // 0 is "unset" to libcgroups (the kernel's minimum is 2).
        let spec_shares = resources
            .cpu()
            .as_ref()
            .and_then(|c| c.shares())
            .filter(|s| *s > 0);
        let had: u64 = std::fs::read_to_string(&file).ok()?.trim().parse().ok()?;
        let weight = crate::sched::weight_of_nice(nice);
        if let Err(e) = std::fs::write(&file, weight.to_string()) {
            tracing::debug!("the cgroup keeps its cpu.shares while CRIU restores: {e}");
            return None;
        }
        tracing::debug!(file = %file.display(), weight, "CRIU's weight while it restores");
        Some(SharesBoost {
            file,
            back: spec_shares.unwrap_or(had),
        })
    }

    fn end(self) -> Result<()> {
        std::fs::write(&self.file, self.back.to_string()).with_context(|| {
            format!(
                "cannot give the container its cpu.shares back ({} ← {})",
                self.file.display(),
                self.back
            )
        })
    }
}

/// The cgroup manager of a restore that started CRIU inside the
/// container's v1 cgroups (`spec::ThreadInCgroups`; nothing needs the
/// manager before CRIU restores then): built on a thread while CRIU
/// starts restoring, the resources applied at CRIU's first notification
/// that comes before any restored task mounts, makes a node or opens a
/// file — "setup-namespaces" (the root task forked into its new
/// namespaces, waiting for CRIU), or "pre-restore" for a tree without a
/// mount namespace — and at the latest at "post-restore" (every task
/// restored, none resumed). libcgroups' v1 `Manager::new` opens and
/// parses /proc/self/mountinfo and /proc/self/cgroup once per controller
/// through pathrs' checked procfs (~560 system calls, ~1.2 ms here),
/// which was all on the restore's critical path before. runc
/// (criuApplyCgroups) sets the resources before its RESTORE request: the
/// restored tasks see the same limits and devices policy from their first
/// mount, mknod or open; CRIU's own work before that point (reading images,
/// forking the root task) runs under the parent's.
struct LateCgroup {
    making: Option<MakingManager>,
    manager: Option<AnyCgroupManager>,
    resources: LinuxResources,
    /// The notification to apply at.
    at: &'static str,
    applied: bool,
    /// Ended at "post-restore".
    boost: Option<SharesBoost>,
}

impl LateCgroup {
    fn start(
        cgroup_path: PathBuf,
        id: &str,
        spec: &oci_spec::runtime::Spec,
        boost: Option<SharesBoost>,
    ) -> LateCgroup {
        let id = id.to_string();
        let has_mount_ns = crate::checkpoint::spec::has_namespace(
            spec,
            oci_spec::runtime::LinuxNamespaceType::Mount,
        );
        LateCgroup {
            making: Some(std::thread::spawn(move || {
                // At the normal policy. SCHED_IDLE (session 15) gained
                // nothing measurable, idle or with every CPU busy, and a
                // thread starved under it stalls whoever waits on it: its
                // exit made the caller's wait4 spin 50–250 ms, and a
                // kernel lock it held would stall CRIU (docs/performance.md,
                // "Session 16").
                super::cgroup_manager_at(cgroup_path, false, &id)
            })),
            manager: None,
            resources: resources_of(spec),
            at: if has_mount_ns {
                "setup-namespaces"
            } else {
                "pre-restore"
            },
            applied: false,
            boost,
        }
    }

    /// Wait for the thread: the manager, or why there is none.
    fn join(&mut self) -> Result<()> {
        if let Some(t) = self.making.take() {
            let m = t
                .join()
                .map_err(|_| anyhow::anyhow!("the cgroup manager thread panicked"))?
                .context("failed to set up the container's cgroup")?;
            self.manager = Some(m);
        }
        Ok(())
    }

    fn apply(&mut self) -> Result<()> {
        if !self.applied {
            self.join()?;
            let m = self
                .manager
                .as_ref()
                .context("failed to set up the container's cgroup")?;
            super::apply_resources(m, &self.resources)
                .context("failed to apply the container's resources")?;
            self.applied = true;
        }
        Ok(())
    }

    /// At CRIU's notification `script`: apply if it is time.
    fn notified(&mut self, script: &str) -> Result<()> {
        if script == self.at || script == "post-restore" {
            self.apply()?;
        }
        if script == "post-restore" {
            if let Some(b) = self.boost.take() {
                b.end()?;
            }
        }
        Ok(())
    }
}

pub fn restore(args: RestoreArgs, ctx: &Ctx) -> Result<i32> {
    if args.target.is_batch() {
        return crate::batch::restore(args, ctx);
    }
    let started = std::time::Instant::now();
    tracing::debug!(phase = "restore entered", "restore");
    let mut o = RestoreOptions::from_args(&args)?;
    if hold_marker(&o.image_path) {
        o.leave_stopped = true;
    }
    let id = o.id.clone();
    // Validate --criu-timeout before any work starts.
    criu_timeout(ctx)?;
    let janitor = Janitor::spawn().context("failed to start the janitor process")?;
    tracing::debug!(phase = "janitor forked", "restore");
    ctx.store.ensure_free(&id)?;
    let bundle = Bundle::open(args.launch.bundle.as_deref())?;
    tracing::debug!(phase = "bundle read", "restore");
    let youki = YoukiConfig::from_spec(&bundle.spec, &id)
        .context("invalid linux section in config.json")?;
    let manifest = open_images(&o)?;
    // An external network namespace (config.json names a path): CRIU
    // restores into it through an inherited fd (runc's
    // handleRestoringExternalNamespaces). Opened before CRIU starts, which
    // inherits it.
    let fresh = manifest.as_ref().and_then(|m| m.fresh_netns);
    // Left out of the dump: a fresh one like it (checkpoint::netns), made
    // on a thread while the images are checked and the cgroup is made (the
    // kernel takes ~0.9 ms to make a network namespace here).
    let mut making_netns = None;
    let mut netns = match (super::checkpoint::netns_path(&bundle.spec), fresh) {
        (None, Some(f)) => {
            making_netns = Some(std::thread::spawn(move || {
                crate::checkpoint::netns::fresh_in_this_thread(f)
                    .context("cannot create the container's network namespace")
            }));
            None
        }
        (Some(p), _) => {
            let f = File::open(&p)
                .with_context(|| format!("cannot open the network namespace {}", p.display()))?;
            // Inherited without CLOEXEC, and well above the low fds (when
            // CRIU's socket was moved to fd 3 in the child, a netns fd that
            // happened to be 3 was replaced by it: "Can't setns …: Invalid
            // argument").
            let high = nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD(100))?;
            // SAFETY: a fresh fd we own.
            Some(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(high) })
        }
        (None, None) => None,
    };
    check_images(&o, manifest.as_ref())?;
    if let Some(m) = &manifest {
        m.check_bundle(&SpecFacts::of(&bundle.spec))
            .with_context(|| format!("cannot restore from {}", o.image_path.display()))?;
    }

    make_dir(&o.work_path, "work directory")?;
    tracing::debug!(phase = "images and bundle checked", "restore");

    let spec = &bundle.spec;
    let root = spec.root().as_ref().context("config.json has no root")?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.path.join(root.path())
    };
    let rootfs = std::fs::canonicalize(&rootfs)?;
    let mut bind_mounts = Vec::new();
    for m in spec.mounts().iter().flatten() {
        if let (true, Some(src)) = (crate::checkpoint::spec::is_bind(m), m.source()) {
            let src = if src.is_absolute() {
                src.clone()
            } else {
                bundle.path.join(src)
            };
            bind_mounts.push((
                m.destination().display().to_string(),
                src.display().to_string(),
            ));
            // CRIU mounts onto the destination: it must exist in the rootfs.
            let dest = rootfs.join(m.destination().strip_prefix("/").unwrap_or(m.destination()));
            if src.is_dir() {
                let _ = std::fs::create_dir_all(&dest);
            } else if !dest.exists() {
                if let Some(parent) = dest.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                let _ = File::create(&dest);
            }
        }
    }
    let has_masked_files = spec
        .linux()
        .as_ref()
        .and_then(|l| l.masked_paths().as_ref())
        .map(|m| !m.is_empty())
        .unwrap_or(false);
    let config_file = crate::checkpoint::spec::criu_config_file(spec);

    // From here on, everything is undone on failure.
    let state_root = ctx.ensure_root()?;
    let container_dir = state_root.join(&id);
    let mut undo = Undo {
        criu_root: None,
        masked: None,
        container_dir: None,
        cgroup: None,
        pid: None,
        detaching: None,
    };
    let mut criu_time = std::time::Duration::ZERO;
    let result = (|| -> Result<(i32, u32)> {
        // CRIU starts first and initialises while the rootfs and cgroup
        // are prepared, CRIU is moved into that cgroup and the request is
        // built (it is asked nothing until the version gate; a refusal
        // there undoes all of it).
        cancel::install().context("failed to install signal handlers")?;
        let mut janitor = janitor;
        // The container's v1 cgroups are made first and CRIU is started in
        // them (spec::ThreadInCgroups): no task is moved by pid, which would
        // wait for a kernel grace period. Elsewhere (cgroup v2, systemd)
        // CRIU is moved in below, as runc does.
        let cgroup_dirs = match ctx.global.systemd_cgroup {
            true => None,
            false => crate::checkpoint::spec::create_v1_cgroup_dirs(&youki.cgroup_path),
        };
        if cgroup_dirs.is_some() {
            janitor.arm(Action::RemoveCgroups(youki.cgroup_path.clone()));
        }
        let cgroup_dirs = cgroup_dirs
            .transpose()
            .context("failed to create the container's cgroup")?;
        tracing::debug!(phase = "cgroup dirs", "restore");
        // CRIU inherits the namespace's fd: it must exist before CRIU
        // starts. Joined only now: the kernel makes it (~0.9 ms here) while
        // the cgroup directories are made.
        if let Some(t) = making_netns.take() {
            netns = Some(
                t.join()
                    .map_err(|_| anyhow::anyhow!("the network namespace thread panicked"))??,
            );
        }
        tracing::debug!(phase = "netns joined", "restore");
        let (mut session, criu_in_cgroup) = super::spawn_criu_in(
            ctx,
            &o.work_path,
            true,
            o.common
                .may_use_tls(o.page_server.is_some(), config_file.is_some()),
            cgroup_dirs.as_ref(),
        )?;
        super::arm_janitor(&mut janitor, &session, &o.work_path);
        tracing::debug!(phase = "CRIU and the janitor started", "restore");
        std::fs::create_dir(&container_dir)
            .with_context(|| format!("failed to create {}", container_dir.display()))?;
        undo.container_dir = Some(container_dir.clone());
        // CRIU needs its root to be a mount point (runc does the same).
        let criu_root = container_dir.join("criu-root");
        std::fs::create_dir(&criu_root)?;
        undo.criu_root = Some(criu_root.clone());
        mount(
            Some(&rootfs),
            &criu_root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| {
            format!(
                "failed to bind-mount {} on {}",
                rootfs.display(),
                criu_root.display()
            )
        })?;
        janitor.arm(Action::Umount(criu_root.clone()));
        // The dump left its masked directories out (request::MASKED_DIR_KEY):
        // one empty tmpfs, read-only for every mount of it, serves them all.
        let masked_dirs_source = match manifest.as_ref().filter(|m| !m.masked_dirs.is_empty()) {
            None => None,
            Some(_) => {
                let dir = container_dir.join("masked");
                std::fs::create_dir(&dir)?;
                undo.masked = Some(dir.clone());
                mount(
                    Some("tmpfs"),
                    &dir,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC,
                    Some("size=4k,mode=755"),
                )
                .with_context(|| format!("failed to mount a tmpfs on {}", dir.display()))?;
                janitor.arm(Action::Umount(dir.clone()));
                Some(dir)
            }
        };
        // If we are killed from here on: the cgroup and the (still empty)
        // state dir go too, after CRIU's root is detached (armed after it,
        // right after the mount: the janitor runs actions in order).
        janitor.arm(Action::RemoveDir(container_dir.clone()));
        if cgroup_dirs.is_none() {
            janitor.arm(Action::RemoveCgroups(youki.cgroup_path.clone()));
        }
        if !criu_in_cgroup {
            // CRIU itself goes into the container's cgroup, so the tasks it
            // restores land there (runc's criuApplyCgroups).
            let manager =
                super::cgroup_manager_at(youki.cgroup_path.clone(), ctx.global.systemd_cgroup, &id)
                    .context("failed to set up the container's cgroup")?;
            manager
                .add_task(session.pgid())
                .context("failed to move CRIU into the container's cgroup")?;
            super::apply_resources(&manager, &resources_of(spec))
                .context("failed to apply the container's resources")?;
            undo.cgroup = Some(manager);
        }
        let cgroup_root = format!(
            "/{}",
            youki
                .cgroup_path
                .display()
                .to_string()
                .trim_start_matches('/')
        );
        bind_mounts.extend(crate::checkpoint::spec::cgroup_restore_mounts(
            spec,
            &cgroup_root,
        ));
        let facts = RestoreFacts {
            criu_root: criu_root.clone(),
            bind_mounts,
            has_masked_files,
            masked_dirs_source,
            cgroup_root: Some(cgroup_root),
            cgroup_controllers: crate::checkpoint::spec::v1_controllers(),
            inherit_fds: inherit_fds(&o.image_path, o.stdio_fds)
                .into_iter()
                .chain(netns.as_ref().map(|f| {
                    (
                        crate::checkpoint::request::EXT_NETNS_KEY.to_string(),
                        f.as_raw_fd(),
                    )
                }))
                .collect(),
            config_file,
            loopback_only: manifest.as_ref().is_some_and(|m| m.loopback_only),
            // The restored tree stays in CRIU's cgroups only where that is
            // where the dump found all of it, CRIU is in the container's
            // and no mode was asked for; a cgroup namespace needs CRIU's
            // cgroup handling (it restores it). The manifest's namespaces
            // are the bundle's (Manifest::check_bundle).
            cgroups_inherited: criu_in_cgroup
                && o.common.manage_cgroups_mode.is_none()
                && manifest.as_ref().is_some_and(|m| {
                    m.one_cgroup_set && !m.namespaces.iter().any(|n| n == "cgroup")
                }),
        };
        let images = File::open(&o.image_path)?;
        let work = File::open(&o.work_path)?;
        let req = restore_request(&o, &facts, images.as_raw_fd(), work.as_raw_fd());
        let version = super::criu_version_gate(&mut session)?;
        tracing::debug!(phase = "CRIU started, version checked", "restore");
        if let Some(m) = &manifest {
            m.check_criu(version)?;
        }
        if o.common.lazy_pages && !gates::features(&mut session)?.lazy_pages {
            bail!(gates::lazy_pages_missing());
        }
        // Post-copy: our supervisor starts CRIU's lazy-pages daemon, which
        // fetches the pages from the dumping side (killed if we fail).
        let lazy = match &o.page_server {
            Some(ps) => Some(LazyPages::start(
                ctx.global.criu(),
                &o.image_path,
                &o.work_path,
                ps,
                o.common.tls.as_ref(),
                criu_timeout(ctx)?,
            )?),
            None => None,
        };
        tracing::debug!(phase = "lazy-pages daemon listening", "restore");
        let mut late = cgroup_dirs.as_ref().filter(|_| criu_in_cgroup).map(|cg| {
            let boost = session
                .nice()
                .and_then(|n| SharesBoost::start(cg, n, &resources_of(spec)));
            LateCgroup::start(youki.cgroup_path.clone(), &id, spec, boost)
        });
        let mut notify = RestoreNotify {
            console_socket: args.launch.console_socket.as_deref(),
            pid: None,
            janitor: &mut janitor,
            cgroup: late.as_mut(),
            short_slice: session.short_slice(),
        };
        let sent = std::time::Instant::now();
        let resp = session.request(&req, &mut notify);
        tracing::debug!(phase = "CRIU restore done", "restore");
        criu_time = sent.elapsed();
        let notified = notify.pid;
        undo.pid = notified;
        if let Some(mut l) = late {
            // Succeeded, CRIU notified "post-restore" at the latest; failed,
            // the manager kills and removes what is left (Undo::run).
            let _ = l.join();
            undo.cgroup = l.manager.take();
            if resp.is_ok() && !l.applied {
                bail!("CRIU restored without the notification the container's resources are applied at (\"{}\" or \"post-restore\")", l.at);
            }
        }
        let resp = resp?;
        undo.detach_in_background();
        // Nothing more to ask: CRIU exits while the container is
        // registered (reaped last).
        session.hang_up();
        let pid = resp
            .restore
            .as_ref()
            .and_then(|r| r.pid)
            .or(notified)
            .context("CRIU did not say which pid it restored")?;
        undo.pid = Some(pid);

        // Register: the container is now like a created-and-started one.
        let mut c = Container::new(
            &id,
            ContainerStatus::Created,
            Some(pid),
            &bundle.path,
            &container_dir,
        )?;
        c.set_systemd(ctx.global.systemd_cgroup)
            .set_annotations(spec.annotations().clone())
            .set_creator(nix::unistd::geteuid().as_raw());
        // set_status(Created) stamps the creation time; then it runs.
        c.set_status(ContainerStatus::Created)
            .set_status(ContainerStatus::Running);
        youki
            .save(&container_dir)
            .context("failed to save the container's config")?;
        c.save().context("failed to save the container's state")?;
        tracing::debug!(phase = "registered", "restore");
        if let Some(pid_file) = &args.launch.pid_file {
            std::fs::write(pid_file, pid.to_string())
                .with_context(|| format!("failed to write the pid file {}", pid_file.display()))?;
        }
        let janitor_exit = janitor.disarm_reap_later();
        if let Some(l) = lazy {
            l.restored(pid);
        }
        // CRIU (hung up at its answer) and the janitor exit while the
        // container is registered; reaped last.
        session.close();
        tracing::debug!(phase = "CRIU reaped", "restore");
        drop(janitor_exit);
        tracing::debug!(phase = "janitor reaped", "restore");
        undo.wait_detached();
        tracing::debug!(phase = "CRIU's root detached", "restore");
        Ok((pid, version))
    })();

    let (pid, _version) = match result {
        Ok(v) => v,
        Err(e) => {
            undo.run();
            return Err(e).context(format!(
                "restore of container \"{id}\" failed; nothing was left running or registered"
            ));
        }
    };
    if let Some(m) = manifest {
        tracing::debug!(from = %m.container_id, criu = %m.criu_version, "restored");
    }
    if let Some(format) = args.criu.stats {
        let report = crate::criu::stats::Report::new(
            "restore",
            &id,
            started.elapsed(),
            criu_time,
            o.work_path.join("stats-restore"),
            Some(&o.image_path),
        )?;
        // Attached, stdout is the container's: the report goes to stderr.
        if o.detach {
            println!("{}", report.render(format));
        } else {
            eprintln!("{}", report.render(format));
        }
    }
    if o.detach {
        return Ok(0);
    }
    // Attached: wait for the restored init (our child through rst_sibling);
    // from here other commands may act on the container. The container is
    // up: this thread waits at the caller's nice again.
    crate::sched::nice_back();
    crate::lock::release();
    if !o.no_subreaper {
        foreground::become_subreaper()?;
    }
    let status = foreground::wait_forwarding_signals(Pid::from_raw(pid))?;
    if let Ok(mut c) = ctx.store.load(&id) {
        let _ = c.delete(true);
    }
    if o.page_server.is_some() && status == 128 + libc::SIGKILL {
        // Killed by our lazy-pages supervisor? Say why, not just "137".
        if let Some(why) =
            crate::criu::lazy::failure(&o.work_path, std::time::Duration::from_secs(2))
        {
            tracing::error!(
                "post-copy failed, so the restored container \"{id}\" was killed: {why}"
            );
        }
    }
    Ok(status)
}
