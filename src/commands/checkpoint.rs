//! `checkpoint` (runc's checkpoint.go) through the CRIU engine.
//!
//! Order of work, so that a failure at any point leaves the container
//! running and thawed and no image directory looking complete:
//! validate options → load the container → gather facts → janitor armed →
//! CRIU session: VERSION gate, FEATURE_CHECK gate (pre-dump, lazy pages),
//! then DUMP/PRE_DUMP → close the session → manifest → destroy the container
//! unless it keeps running.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use chrono::{SecondsFormat, Utc};
use libcontainer::container::{Container, ContainerStatus};

use super::Ctx;
use crate::checkpoint::images::{self, Manifest, SpecFacts, MANIFEST_FORMAT};
use crate::checkpoint::options::{CheckpointOptions, PageServer, Rounds};
use crate::checkpoint::request::{dump_request, ContainerFacts};
use crate::cli::CheckpointArgs;
use crate::criu::gates::{self, format_version};
use crate::criu::janitor::{self, Action, Janitor};
use crate::criu::lazy;
use crate::criu::session::{AcceptAll, Session};
use crate::criu::stats;

pub fn criu_timeout(ctx: &Ctx) -> Result<Duration> {
    let d = humantime::parse_duration(&ctx.global.criu_timeout).with_context(|| {
        format!(
            "invalid --criu-timeout {:?}: use a duration such as 30s or 5m",
            ctx.global.criu_timeout
        )
    })?;
    if d.is_zero() {
        bail!(
            "invalid --criu-timeout {:?}: must be greater than 0",
            ctx.global.criu_timeout
        );
    }
    Ok(d)
}

/// Facts about a running container that the CRIU request needs.
pub(crate) fn container_facts(
    c: &Container,
    spec: &oci_spec::runtime::Spec,
    pid: i32,
    freezer: Option<&janitor::Freezer>,
    runc_images: bool,
) -> Result<(ContainerFacts, SpecFacts)> {
    let root = spec.root().as_ref().context("config.json has no root")?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        c.bundle().join(root.path())
    };
    let rootfs = std::fs::canonicalize(&rootfs)
        .with_context(|| format!("rootfs {} is gone", rootfs.display()))?;
    let mut external_mounts = Vec::new();
    for m in spec.mounts().iter().flatten() {
        if crate::checkpoint::spec::is_bind(m) {
            external_mounts.push(m.destination().display().to_string());
        }
    }
    // The container's mount table, read once.
    let mounts = crate::checkpoint::spec::mounts_of(Some(pid));
    external_mounts.extend(crate::checkpoint::spec::cgroup_mounts_in(&mounts));
    let (masked_files, masked_dirs) = masked_paths(spec, pid, &mounts, !runc_images);
    let config_file = crate::checkpoint::spec::criu_config_file(spec);
    let loopback = loopback_only(pid);
    let mut ext_netns = external_netns(spec)?;
    // A loopback-only namespace of its own is left out (checkpoint::netns).
    let fresh_netns = if !runc_images
        && ext_netns.is_none()
        && crate::checkpoint::netns::skippable(pid, loopback, spec)
    {
        use std::os::unix::fs::MetadataExt;
        ext_netns = Some(std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino());
        Some(crate::checkpoint::netns::FreshNetns {
            lo_up: crate::checkpoint::netns::lo_up(pid)?,
        })
    } else {
        None
    };
    Ok((
        ContainerFacts {
            init_pid: pid,
            rootfs,
            freeze_cgroup: freezer.map(janitor::Freezer::dir),
            external_mounts,
            masked_files,
            masked_dirs,
            config_file,
            cgroup_controllers: crate::checkpoint::spec::v1_controllers(),
            loopback_only: loopback,
            external_netns: ext_netns,
            fresh_netns,
        },
        SpecFacts::of(spec),
    ))
}

/// The inode of the network namespace config.json names by path (an
/// external one, e.g. made by CNI), as runc's
/// `handleCheckpointingExternalNamespaces`.
pub(crate) fn external_netns(spec: &oci_spec::runtime::Spec) -> Result<Option<u64>> {
    use std::os::unix::fs::MetadataExt;
    let Some(path) = netns_path(spec) else {
        return Ok(None);
    };
    let m = std::fs::metadata(&path)
        .with_context(|| format!("the network namespace {} is gone", path.display()))?;
    Ok(Some(m.ino()))
}

/// config.json's network namespace path, if it names one.
pub(crate) fn netns_path(spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)?
        .path()
        .clone()
}

/// config.json's masked paths as they are inside the container (`mounts`:
/// its mount table): (masked files — bind mounts of /dev/null, external
/// as runc names them — and, if `dirs`, masked directories that are an
/// empty read-only tmpfs mounted there, what runtimes make of one: external
/// under request::MASKED_DIR_KEY rather than archived by CRIU's `tar`).
/// Anything else at such a path is dumped as CRIU finds it.
fn masked_paths(
    spec: &oci_spec::runtime::Spec,
    pid: i32,
    mounts: &[procfs::process::MountInfo],
    dirs: bool,
) -> (Vec<String>, Vec<String>) {
    let (mut files, mut empty_dirs) = (Vec::new(), Vec::new());
    let masked = spec
        .linux()
        .as_ref()
        .and_then(|l| l.masked_paths().as_ref());
    for p in masked.into_iter().flatten() {
        let inside = PathBuf::from(format!("/proc/{pid}/root{p}"));
        if !inside.is_dir() {
            if inside.exists() {
                files.push(p.clone());
            }
            continue;
        }
        // The topmost mount at that path decides what the container sees.
        let top = mounts.iter().rev().find(|m| m.mount_point == Path::new(p));
        let empty_ro_tmpfs = top.is_some_and(|m| {
            m.fs_type == "tmpfs" && m.root == "/" && m.mount_options.contains_key("ro")
        });
        if dirs
            && empty_ro_tmpfs
            && std::fs::read_dir(&inside).is_ok_and(|mut d| d.next().is_none())
        {
            empty_dirs.push(p.clone());
        }
    }
    (files, empty_dirs)
}

/// Whether `pid` has a network namespace of its own with no interface but
/// loopback (/proc/PID/net/dev lists the interfaces of its namespace).
fn loopback_only(pid: i32) -> bool {
    let ns = |p: &str| std::fs::read_link(p).ok();
    let theirs = ns(&format!("/proc/{pid}/ns/net"));
    if theirs.is_none() || theirs == ns("/proc/self/ns/net") {
        return false;
    }
    procfs::process::Process::new(pid)
        .and_then(|p| p.dev_status())
        .is_ok_and(|devs| devs.keys().all(|name| name == "lo"))
}

fn read_descriptors(dir: &Path) -> Vec<String> {
    std::fs::read(dir.join("descriptors.json"))
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .unwrap_or_default()
}

/// runc's descriptors.json: where the init's stdio pointed at dump time.
fn write_descriptors(pid: i32, dir: &Path) -> Result<()> {
    let fds: Vec<String> = (0..3)
        .map(|fd| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "/dev/null".to_string())
        })
        .collect();
    std::fs::write(dir.join("descriptors.json"), serde_json::to_vec(&fds)?)
        .with_context(|| format!("failed to write descriptors.json in {}", dir.display()))
}

pub(crate) fn make_dir(p: &Path, what: &str) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .with_context(|| format!("failed to create the {what} {}", p.display()))
}

pub fn checkpoint(args: CheckpointArgs, ctx: &Ctx) -> Result<i32> {
    if args.target.is_batch() {
        return crate::batch::checkpoint(args, ctx);
    }
    let opts = CheckpointOptions::from_args(&args)?;
    let done = dump(opts, args.leave_running, ctx, &mut NoHooks)?;
    if let Some(format) = args.criu.stats {
        let report = done.report.context(
            "the checkpoint is done, but CRIU wrote no statistics (stats-dump) for --stats",
        )?;
        println!("{}", report.render(format));
    }
    Ok(0)
}

/// What `migrate` plugs into a checkpoint.
pub(crate) trait Hooks {
    /// Where the pages of pre-copy round `k` (1-based) or of the final dump
    /// (`k` = 0) go; None: as the options say.
    fn page_server(&mut self, _k: u32) -> Result<Option<PageServer>> {
        Ok(None)
    }
    /// A pre-copy round is done.
    fn round_done(&mut self, _r: &stats::RoundReport) {}
    /// The container was frozen for the final dump (by us; a paused
    /// container was frozen already).
    fn frozen(&mut self) {}
}

pub(crate) struct NoHooks;
impl Hooks for NoHooks {}

/// A finished checkpoint: what CRIU measured, and with `keep_frozen` the
/// container, alive and frozen, for the caller to end.
pub(crate) struct Dumped {
    /// None if CRIU wrote no statistics.
    pub report: Option<stats::Report>,
    pub kept: Option<Kept>,
}

/// A dumped container kept alive and frozen (`keep_frozen`); the janitor
/// thaws it if the runtime dies before [`Kept::thaw`] or [`Kept::kill`].
pub(crate) struct Kept {
    janitor: Option<Janitor>,
    freezer: Option<janitor::Freezer>,
    /// We froze it (it was not paused by the caller before).
    ours: bool,
    container: Container,
}

impl Kept {
    /// The migration failed: the container runs on, as before.
    pub fn thaw(mut self) -> Result<()> {
        if let (Some(f), true) = (&self.freezer, self.ours) {
            f.thaw()
                .with_context(|| format!("failed to thaw {}", f.file.display()))?;
        }
        if let Some(j) = self.janitor.take() {
            j.disarm();
        }
        Ok(())
    }

    /// From now on the copy here must never run again, even if the runtime
    /// dies: the janitor no longer thaws it.
    pub fn no_return(&mut self) {
        if let Some(j) = self.janitor.take() {
            j.disarm();
        }
    }

    /// The copy elsewhere took over: kill this one (killed while frozen, it
    /// never runs another instruction) and remove it from the state.
    pub fn kill(mut self) -> Result<()> {
        if let Some(j) = self.janitor.take() {
            j.disarm();
        }
        super::delete::force_delete(&mut self.container)
            .context("the copy elsewhere runs; removing this one failed")
    }
}

/// A checkpoint of `opts` (`leave_running_flag`: the user's
/// --leave-running, which the config may turn into a pre-dump).
pub(crate) fn dump(
    mut opts: CheckpointOptions,
    leave_running_flag: bool,
    ctx: &Ctx,
    hooks: &mut dyn Hooks,
) -> Result<Dumped> {
    let started = Instant::now();
    let cfg = ctx.config()?.checkpoint.clone();
    if cfg.pre_dump_on_leave_running
        && leave_running_flag
        && !opts.pre_dump
        && opts.rounds.is_none()
        && !opts.common.lazy_pages
    {
        // docker's CLI has no --pre-dump (config.rs).
        opts.pre_dump = true;
        tracing::info!("--leave-running is a pre-dump (checkpoint.pre_dump_on_leave_running)");
    }
    // Validate --criu-timeout before any work starts.
    criu_timeout(ctx)?;
    if opts.common.lazy_pages {
        ensure_pipe_max_size()?;
    }
    let mut c = ctx.store.load(&opts.id)?;
    // checkpoint.auto_parent: the chain of this container's pre-dumps.
    let chain = AutoChain {
        dir: c.root.join("pre-copy"),
        on: cfg.auto_parent && opts.parent_path.is_none() && opts.rounds.is_none(),
    };
    let newest = chain.newest();
    if let (true, Some((_, dir))) = (chain.on && opts.pre_dump, &newest) {
        // A pre-dump tracks memory against the newest one (absolute: a
        // pre-dump is never restored or moved on its own).
        opts.parent_path = Some(dir.clone());
    }
    let id = opts.id.clone();
    match c.status() {
        ContainerStatus::Running | ContainerStatus::Paused => {}
        ContainerStatus::Created => {
            bail!("cannot checkpoint container \"{id}\": it has not been started")
        }
        _ => bail!("container \"{id}\" not running: nothing to checkpoint"),
    }
    let pid = c.pid().context("container has no init pid")?.as_raw();

    make_dir(&opts.image_path, "image directory")?;
    make_dir(&opts.work_path, "work directory")?;
    // CRIU starts first and initialises while the facts are gathered (it is
    // asked nothing until the version gate); dropping the session on an
    // early error kills it. (spawn_criu installs the signal handlers.)
    // Post-copy without --status-fd: CRIU tells us when its page server
    // is ready, and we tell the user (stderr), who can start the restore.
    let ready = match (
        &opts.page_server,
        opts.common.lazy_pages && opts.status_fd.is_none(),
    ) {
        (Some(ps), true) => {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::empty())?;
            nix::fcntl::fcntl(
                r.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )?;
            opts.status_fd = Some(w.as_raw_fd());
            Some((r, w, format!("{}:{}", ps.address, ps.port)))
        }
        _ => None,
    };
    let spec = crate::bundle::parse_config(&c.bundle().join("config.json"))?;
    let tls = opts.common.may_use_tls(
        opts.page_server.is_some(),
        crate::checkpoint::spec::criu_config_file(&spec).is_some(),
    );
    let mut session = super::spawn_criu(ctx, &opts.work_path, false, tls)?;
    let mut janitor = Janitor::spawn().context("failed to start the janitor process")?;
    super::arm_janitor(&mut janitor, &session, &opts.work_path);
    tracing::debug!(phase = "CRIU and the janitor started", "checkpoint");
    // Read while CRIU initialises; nothing is frozen before the gates.
    let freezer = janitor::freezer_of(pid);
    // A container paused by the caller (containerd pauses before it
    // checkpoints) stays paused; otherwise it must never be left frozen.
    let thaw = freezer
        .clone()
        .filter(|f| c.status() != ContainerStatus::Paused && !f.is_frozen());
    if let Some((r, w, at)) = ready {
        drop(w);
        let id = opts.id.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 1];
            if nix::unistd::read(r.as_raw_fd(), &mut b).unwrap_or(0) == 1 {
                eprintln!("lazy checkpoint of {id} ready: its pages are served on {at} until the restoring side has them all (restore --lazy-pages --page-server {at})");
            }
        });
    }
    // Images as runc makes them (the namespace dumped, masked directories
    // archived): asked for (`--dump-netns`), or post-copy — the restore
    // starts before our manifest is written (it follows CRIU's answer), so
    // it could not know what was left out.
    let runc_images = opts.dump_netns || opts.common.lazy_pages;
    let (facts, spec_facts) = container_facts(&c, &spec, pid, freezer.as_ref(), runc_images)?;
    // How the dumped container will be removed (CRIU kills it unless it is
    // left running; kept frozen, it returned above), read while CRIU starts.
    let removal =
        (!opts.leave_running && !opts.keep_frozen).then(|| super::delete::DumpedRemoval::plan(&c));
    tracing::debug!(phase = "facts gathered", "checkpoint");
    if let Some(parent) = &opts.parent_path {
        let p = opts.image_path.join(parent);
        if !p.is_dir() {
            bail!(
                "--parent-path {} does not exist (resolved against the image path: {})",
                parent.display(),
                p.display()
            );
        }
    }
    // Gates first: a refused checkpoint touches nothing (no freeze, the
    // image directory as it was).
    let version = super::criu_version_gate(&mut session)?;
    tracing::debug!(phase = "CRIU started, version checked", "checkpoint");
    let tracks_memory = opts.pre_dump || opts.rounds.is_some() || opts.parent_path.is_some();
    if tracks_memory || opts.common.lazy_pages {
        let f = gates::features(&mut session)?;
        if tracks_memory && !f.mem_track {
            bail!(gates::mem_track_missing());
        }
        if opts.common.lazy_pages && !f.lazy_pages {
            bail!(gates::lazy_pages_missing());
        }
    }
    // Whatever was in the image dir is being replaced: from now until the
    // manifest is written, the directory must not look complete.
    images::invalidate(&opts.image_path);
    if let (true, false, Some((n, _))) = (chain.on, opts.pre_dump, &newest) {
        // The full checkpoint carries the chain inside its image dir, so
        // it is self-contained wherever it is tarred or moved to.
        chain.copy_into(&opts.image_path, *n)?;
        opts.parent_path = Some(Rounds::dir(*n));
    }
    write_descriptors(pid, &opts.image_path)?;

    let images_dir = File::open(&opts.image_path)
        .with_context(|| format!("failed to open {}", opts.image_path.display()))?;
    let work_dir = File::open(&opts.work_path)
        .with_context(|| format!("failed to open {}", opts.work_path.display()))?;

    for m in images::completion_markers(&opts.image_path) {
        janitor.arm(Action::Remove(m));
    }
    if let Some(f) = &thaw {
        janitor.arm(f.thaw_action());
    }

    let manifest = |kind: &str, parent: Option<PathBuf>| Manifest {
        format: MANIFEST_FORMAT,
        kind: kind.to_string(),
        runtime_version: env!("CARGO_PKG_VERSION").to_string(),
        criu_version: format_version(version),
        container_id: id.clone(),
        created: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        parent,
        config_digest: images::file_digest(&c.bundle().join("config.json")),
        cgroup_path: freezer.as_ref().map(|f| f.cgroup_path.clone()),
        namespaces: spec_facts.namespaces.clone(),
        terminal: spec_facts.terminal,
        descriptors: read_descriptors(&opts.image_path),
        loopback_only: facts.loopback_only,
        fresh_netns: facts.fresh_netns,
        masked_dirs: facts.masked_dirs.clone(),
        // Filled in for a dump, from the frozen container (below).
        one_cgroup_set: false,
        image_sizes: Default::default(),
    };

    let mut final_opts = opts.clone();
    // Whether every task shares init's cgroups (the manifest's
    // one_cgroup_set), read while CRIU dumps the frozen container.
    let mut one_cgroup_set: Option<std::thread::JoinHandle<bool>> = None;
    let result = (|| -> Result<(Duration, PreCopy)> {
        use std::os::fd::AsRawFd;
        let mut pre_copy = PreCopy::default();
        if let Some(rounds) = opts.rounds {
            pre_copy = run_rounds(
                &mut session,
                &opts,
                rounds,
                &facts,
                &work_dir,
                &manifest,
                hooks,
            )?;
            final_opts.parent_path = pre_copy.rounds.last().map(|r| Rounds::dir(r.round));
        }
        if let Some(ps) = hooks.page_server(0)? {
            final_opts.page_server = Some(ps);
        }
        let req = dump_request(
            &final_opts,
            &facts,
            images_dir.as_raw_fd(),
            work_dir.as_raw_fd(),
        );
        // A pre-dump thaws the container as soon as its memory is collected
        // (CRIU leaves a cgroup it found frozen frozen): only a dump is
        // frozen by us.
        if let Some(f) = thaw.as_ref().filter(|_| !opts.pre_dump) {
            // Frozen by us (thawed again below and by the janitor).
            f.freeze(Instant::now() + criu_timeout(ctx)?)
                .with_context(|| {
                    format!("failed to freeze the container ({})", f.file.display())
                })?;
        }
        hooks.frozen();
        if !opts.pre_dump {
            one_cgroup_set = Some(std::thread::spawn(move || {
                crate::checkpoint::spec::one_cgroup_set(pid)
            }));
        }
        tracing::debug!(phase = "frozen, dump sent", "checkpoint");
        let sent = Instant::now();
        session.request(&req, &mut AcceptAll)?;
        let criu_time = sent.elapsed();
        // Nothing more to ask: CRIU exits while we finish (reaped last).
        session.hang_up();
        tracing::debug!(phase = "CRIU dump done", "checkpoint");
        if opts.lazy_confirm {
            // CRIU's page server ends with the session.
            session.end();
            // Post-copy: CRIU left the tasks alive and frozen; only the
            // restoring side's word says whether it has every page.
            let ps = opts
                .page_server
                .as_ref()
                .context("--lazy-pages without --page-server")?;
            lazy::await_verdict(&ps.address, ps.port, Instant::now() + criu_timeout(ctx)?)
                .map_err(|why| anyhow::anyhow!("post-copy migration did not complete: {why}"))?;
            if !opts.leave_running {
                if let Some(f) = &freezer {
                    // Killed while frozen: they die at the thaw below
                    // without running another instruction of their own.
                    kill_all_in(&f.dir());
                }
            }
        }
        Ok((criu_time, pre_copy))
    })();

    match result {
        Ok((criu_time, pre_copy)) => {
            let keep_frozen = opts.keep_frozen && !opts.pre_dump;
            // Read from the tasks, before the thaw lets them die.
            let one_set = one_cgroup_set
                .take()
                .is_some_and(|t| t.join().unwrap_or(false));
            // We froze it; CRIU left it as it found it. Thawed at once: left
            // running, it runs on while the manifest is written; killed by
            // CRIU, its tasks die meanwhile, before the removal below.
            if let Some(f) = thaw.as_ref().filter(|_| !keep_frozen) {
                f.thaw().with_context(|| {
                    format!("checkpoint done, but failed to thaw {}", f.file.display())
                })?;
            }
            let diskless = final_opts.page_server.is_some();
            let mut m = manifest(
                if opts.pre_dump { "pre-dump" } else { "dump" },
                final_opts.parent_path.clone(),
            );
            if !diskless {
                m.image_sizes = images::image_sizes(&opts.image_path);
            }
            m.one_cgroup_set = one_set;
            m.write(&opts.image_path)?;
            // What CRIU measured; a CRIU that wrote no statistics does not
            // fail a checkpoint that succeeded (only --stats needs them).
            let report = stats::Report::new(
                if opts.pre_dump {
                    "pre-dump"
                } else {
                    "checkpoint"
                },
                &id,
                started.elapsed(),
                criu_time,
                opts.work_path.join("stats-dump"),
                (!diskless).then_some(opts.image_path.as_path()),
            )
            .map(|mut report| {
                if let stats::CriuStats::Dump(d) = &report.criu {
                    report.criu = stats::CriuStats::Dump(d.since(&pre_copy.cumulative));
                }
                let rounds_ms: f64 = pre_copy.rounds.iter().map(|r| r.criu_request_ms).sum();
                report.runtime_overhead_ms = ((report.runtime_overhead_ms - rounds_ms) * 1e3)
                    .round()
                    .max(0.0)
                    / 1e3;
                report.rounds = pre_copy.rounds;
                report.pre_copy_stopped = pre_copy.stopped;
                report
            })
            .inspect_err(|e| tracing::warn!("no statistics from CRIU: {e:#}"))
            .ok();
            if let Some(r) = report.as_ref().filter(|_| !diskless) {
                // Beside the images, for whoever reads them later (a batch
                // through dockerd, which has no --stats to pass).
                let _ = std::fs::write(
                    opts.image_path.join(stats::STATS_FILE),
                    serde_json::to_vec_pretty(r).unwrap_or_default(),
                );
            }
            if keep_frozen {
                // The caller ends it (migrate); the janitor stays armed.
                session.end();
                return Ok(Dumped {
                    report,
                    kept: Some(Kept {
                        janitor: Some(janitor),
                        ours: thaw.is_some(),
                        freezer,
                        container: c,
                    }),
                });
            }
            let janitor_exit = janitor.disarm_reap_later();
            tracing::debug!(phase = "manifest and stats written, thawed", "checkpoint");
            if chain.on {
                if opts.pre_dump {
                    chain.append(&opts.image_path, newest.as_ref().map_or(0, |(n, _)| *n))?;
                } else {
                    let _ = std::fs::remove_dir_all(&chain.dir);
                }
            }
            if let Some(removal) = removal {
                // As runc: CRIU killed the container; remove it.
                removal
                    .run(&mut c)
                    .context("checkpoint done, but removing the container failed")?;
            }
            tracing::debug!(phase = "container removed", "checkpoint");
            // CRIU and the janitor exit after their last word; reaped last,
            // their exits overlapping the work above (on an error return,
            // dropping the session kills CRIU).
            session.end();
            tracing::debug!(phase = "CRIU reaped", "checkpoint");
            drop(janitor_exit);
            Ok(Dumped { report, kept: None })
        }
        Err(err) => {
            // The session is gone (CRIU killed and reaped). Undo now rather
            // than leave it to the janitor, then disarm it.
            if let Some(f) = thaw.as_ref().filter(|f| f.is_frozen()) {
                let _ = f.thaw();
            }
            images::invalidate(&opts.image_path);
            janitor.disarm();
            Err(err).context(format!(
                "checkpoint of container \"{id}\" failed; the container {}",
                left_as(&c)
            ))
        }
    }
}

/// What CRIU's lazy page server needs of `fs.pipe-max-size`.
const LAZY_PIPE_MAX: u64 = 8 << 20;
const PIPE_MAX_SIZE: &str = "/proc/sys/fs/pipe-max-size";

/// CRIU's lazy page server sizes a pipe with F_SETPIPE_SZ to several MiB;
/// without CAP_SYS_RESOURCE (this sandbox) that fails above
/// `fs.pipe-max-size` (1 MiB by default), CRIU ignores the error and the
/// transfer dies later with "page-pipe: splice: Bad file descriptor" — with
/// runc the restoring side then hung for minutes (docs/environment.md).
/// Raise the limit before anything starts, or refuse.
fn ensure_pipe_max_size() -> Result<()> {
    let read = || -> u64 {
        std::fs::read_to_string(PIPE_MAX_SIZE)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let cur = read();
    if cur >= LAZY_PIPE_MAX {
        return Ok(());
    }
    let _ = std::fs::write(PIPE_MAX_SIZE, LAZY_PIPE_MAX.to_string());
    if read() >= LAZY_PIPE_MAX {
        tracing::info!(
            from = cur,
            to = LAZY_PIPE_MAX,
            "raised fs.pipe-max-size for CRIU's lazy page server"
        );
        return Ok(());
    }
    bail!(
        "--lazy-pages needs fs.pipe-max-size >= {LAZY_PIPE_MAX} (it is {cur}) for CRIU's page server, and raising it failed: \
         run `sysctl -w fs.pipe-max-size={LAZY_PIPE_MAX}` as root. Nothing was frozen."
    )
}

/// `checkpoint.auto_parent` (config.rs): a container's pre-dumps, kept in
/// its state dir as `pre-copy/pre-1` … `pre-N`, each `parent` link
/// relative (`../pre-K`).
struct AutoChain {
    dir: PathBuf,
    on: bool,
}

impl AutoChain {
    /// The newest pre-dump: (N, its dir).
    fn newest(&self) -> Option<(u32, PathBuf)> {
        if !self.on {
            return None;
        }
        (1..)
            .map_while(|k| {
                let d = self.dir.join(Rounds::dir(k));
                d.is_dir().then_some((k, d))
            })
            .last()
    }

    /// Keep the pre-dump just written as pre-(n+1).
    fn append(&self, images: &Path, n: u32) -> Result<()> {
        let dst = self.dir.join(Rounds::dir(n + 1));
        copy_images(images, &dst)?;
        let link = dst.join("parent");
        let _ = std::fs::remove_file(&link);
        if n > 0 {
            std::os::unix::fs::symlink(Path::new("..").join(Rounds::dir(n)), &link)?;
        }
        Ok(())
    }

    /// Copy pre-1 … pre-n into `images`.
    fn copy_into(&self, images: &Path, n: u32) -> Result<()> {
        for k in 1..=n {
            let dst = images.join(Rounds::dir(k));
            let _ = std::fs::remove_dir_all(&dst);
            copy_images(&self.dir.join(Rounds::dir(k)), &dst)?;
        }
        Ok(())
    }
}

/// Copy an image dir's files and symlinks (not CRIU's logs).
fn copy_images(src: &Path, dst: &Path) -> Result<()> {
    make_dir(dst, "pre-dump copy")?;
    for e in std::fs::read_dir(src).with_context(|| format!("cannot read {}", src.display()))? {
        let e = e?;
        let name = e.file_name();
        let to = dst.join(&name);
        let ft = e.file_type()?;
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &to)?;
        } else if ft.is_file() && !name.to_string_lossy().ends_with(".log") {
            std::fs::copy(e.path(), &to).with_context(|| {
                format!("cannot copy {} to {}", e.path().display(), to.display())
            })?;
        }
    }
    Ok(())
}

/// SIGKILL every process of a cgroup (v1 `cgroup.procs` of the freezer,
/// v2 `cgroup.procs`).
fn kill_all_in(cgroup: &Path) {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// What the pre-copy rounds did.
#[derive(Default)]
struct PreCopy {
    rounds: Vec<stats::RoundReport>,
    /// Why the rounds stopped before the bound (--until-converged).
    stopped: Option<String>,
    /// CRIU's session-wide counters after the last round.
    cumulative: stats::DumpStats,
}

/// Pre-copy in the open session: PRE_DUMP rounds into IMAGE_PATH/pre-K,
/// each tracking memory against the one before (the first against
/// --parent-path), until the bound or, with --until-converged, until the
/// dirty set stops shrinking. CRIU takes them one after another in one
/// swrk session and then the final DUMP (criu/cr-service.c `pre_dump_loop`),
/// so its start-up and kernel probing are paid once.
fn run_rounds(
    session: &mut Session,
    opts: &CheckpointOptions,
    rounds: Rounds,
    facts: &ContainerFacts,
    work_dir: &File,
    manifest: &dyn Fn(&str, Option<PathBuf>) -> Manifest,
    hooks: &mut dyn Hooks,
) -> Result<PreCopy> {
    use std::os::fd::AsRawFd;
    let mut out = PreCopy::default();
    let mut prev_pages = None;
    for k in 1..=rounds.max {
        let rel = Rounds::dir(k);
        let dir = opts.image_path.join(&rel);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| {
                format!("failed to replace the old pre-copy round {}", dir.display())
            })?;
        }
        make_dir(&dir, "pre-copy round directory")?;
        let mut o = opts.clone();
        o.image_path = dir.clone();
        o.pre_dump = true;
        o.leave_running = true;
        if let Some(ps) = hooks.page_server(k)? {
            o.page_server = Some(ps);
        }
        o.parent_path = if k == 1 {
            opts.parent_path.as_ref().map(|p| Path::new("..").join(p))
        } else {
            Some(Path::new("..").join(Rounds::dir(k - 1)))
        };
        let images =
            File::open(&dir).with_context(|| format!("failed to open {}", dir.display()))?;
        let mut req = dump_request(&o, facts, images.as_raw_fd(), work_dir.as_raw_fd());
        if let Some(ro) = req.opts.as_mut() {
            ro.log_file = Some(format!("pre-dump-{k}.log"));
        }
        let sent = Instant::now();
        session.request(&req, &mut AcceptAll)?;
        let took = sent.elapsed();
        let total = match stats::read(&opts.work_path.join("stats-dump"))? {
            stats::CriuStats::Dump(d) => d,
            stats::CriuStats::Restore(_) => bail!("CRIU wrote restore statistics for a pre-dump"),
        };
        let st = total.since(&out.cumulative);
        out.cumulative = total;
        manifest("pre-dump", o.parent_path.clone()).write(&dir)?;
        let pages = st.pages_written;
        tracing::info!(
            round = k,
            pages,
            ms = took.as_millis() as u64,
            "pre-dump round done"
        );
        let round = stats::RoundReport::new(k, &dir, took, &st);
        hooks.round_done(&round);
        out.rounds.push(round);
        if rounds.until_converged {
            if let Some(why) = Rounds::converged(prev_pages, pages) {
                out.stopped = Some(why);
                break;
            }
        }
        prev_pages = Some(pages);
    }
    Ok(out)
}

/// How the container was left after a failed checkpoint, for the message.
fn left_as(c: &Container) -> &'static str {
    let mut c = c.clone();
    let _ = c.refresh_status();
    match c.status() {
        ContainerStatus::Running => "is still running",
        ContainerStatus::Paused => "is still paused, as it was before",
        _ => "is no longer running",
    }
}
