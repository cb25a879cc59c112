//! One handler per subcommand: `fn NAME(args, &Ctx) -> Result<…>`.
//! Handlers turn validated CLI arguments into library calls; they never parse
//! flags themselves (that is `cli.rs`) and never print logs directly.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use libcgroups::common::{AnyCgroupManager, CgroupConfig};
use libcontainer::container::Container;

use crate::cli::GlobalOpts;
use crate::store::Store;

pub mod check;
pub mod checkpoint;
pub mod create;
pub mod delete;
pub mod events;
pub mod exec;
pub mod features;
pub mod foreground;
pub mod kill;
pub mod lifecycle;
pub mod list;
pub mod page_server;
pub mod ps;
pub mod relay;
pub mod restore;
pub mod spec;
pub mod state;
pub mod update;

/// What every handler gets: the state store and the global flags.
pub struct Ctx {
    pub store: Store,
    pub global: GlobalOpts,
    /// The configuration file, read once ([`Ctx::config`]).
    config: std::sync::OnceLock<crate::config::Config>,
}

impl Ctx {
    pub fn new(global: GlobalOpts) -> Self {
        Ctx {
            store: Store::new(global.root.clone()),
            global,
            config: std::sync::OnceLock::new(),
        }
    }

    /// The runtime's configuration (`--config`, or the default path if
    /// present), read on first use only.
    pub fn config(&self) -> Result<&crate::config::Config> {
        if let Some(c) = self.config.get() {
            return Ok(c);
        }
        let c = crate::config::Config::load(self.global.config.as_deref())?;
        Ok(self.config.get_or_init(|| c))
    }

    /// The CRIU built without GnuTLS (config `criu.lean`), where
    /// `--criu` was not given and it exists.
    pub fn criu_lean(&self) -> Option<std::path::PathBuf> {
        if self.global.criu.is_some() {
            return None;
        }
        let p = self.config().ok()?.criu.lean.clone();
        (!p.as_os_str().is_empty() && p.is_file()).then_some(p)
    }

    /// Whether CRIU starts with a short scheduler slice (config
    /// `criu.short_slice`, src/sched.rs).
    pub fn short_slice(&self) -> bool {
        self.config().map(|c| c.criu.short_slice).unwrap_or(true)
    }

    /// The nice CRIU runs at (config `criu.nice`, src/sched.rs).
    pub fn criu_nice(&self) -> i32 {
        self.config()
            .map(|c| c.criu.nice)
            .unwrap_or(crate::sched::CRIU_NICE)
    }

    /// The global flags a child of ours must get to act on the same host.
    pub fn child_args(&self) -> Vec<std::ffi::OsString> {
        let g = &self.global;
        let mut v: Vec<std::ffi::OsString> = vec![
            "--root".into(),
            g.root.clone().into(),
            "--criu-timeout".into(),
            g.criu_timeout.clone().into(),
        ];
        if let Some(c) = &g.criu {
            v.push("--criu".into());
            v.push(c.clone().into());
        }
        if let Some(l) = &g.log {
            v.push("--log".into());
            v.push(l.clone().into());
            v.push("--log-format".into());
            v.push(
                match g.log_format {
                    crate::cli::LogFormat::Json => "json",
                    crate::cli::LogFormat::Text => "text",
                }
                .into(),
            );
        }
        if let Some(c) = &g.config {
            v.push("--config".into());
            v.push(c.clone().into());
        }
        if g.systemd_cgroup {
            v.push("--systemd-cgroup".into());
        }
        if g.debug {
            v.push("--debug".into());
        }
        v
    }

    /// Our own binary with `child_args`: a runtime command of ours.
    pub fn command(&self) -> Result<std::process::Command> {
        let mut c = std::process::Command::new(std::env::current_exe()?);
        c.args(self.child_args());
        Ok(c)
    }

    /// Create the state root if it is missing: owner-only (0700; runc:
    /// 0711) — it holds every container's config and init pid.
    pub fn ensure_root(&self) -> Result<PathBuf> {
        let root = self.store.root();
        if !root.exists() {
            std::fs::create_dir_all(root)
                .with_context(|| format!("failed to create the state root {}", root.display()))?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700));
        }
        Ok(root.to_path_buf())
    }
}

/// Start a supervised CRIU session (CRIU's group armed in the janitor)
/// without waiting for it: CRIU initialises while the caller prepares the
/// request; [`criu_version_gate`] then waits for its first answer.
pub fn start_criu_session(
    ctx: &Ctx,
    work_dir: &std::path::Path,
    inherit_stdio: bool,
    tls: bool,
    janitor: &mut crate::criu::janitor::Janitor,
) -> Result<crate::criu::session::Session> {
    let session = spawn_criu(ctx, work_dir, inherit_stdio, tls)?;
    arm_janitor(janitor, &session, work_dir);
    Ok(session)
}

/// [`start_criu_session`] before the janitor exists (CRIU's start is on
/// the critical path; the janitor's fork is not): until
/// [`arm_janitor`], a runtime that dies closes CRIU's socket, and CRIU's
/// swrk ends on that EOF by itself.
pub fn spawn_criu(
    ctx: &Ctx,
    work_dir: &std::path::Path,
    inherit_stdio: bool,
    tls: bool,
) -> Result<crate::criu::session::Session> {
    spawn_criu_in(ctx, work_dir, inherit_stdio, tls, None).map(|(s, _)| s)
}

/// [`spawn_criu`], CRIU started in the cgroup directories `cgroups` (the
/// spawning thread moves itself there and back, spec::ThreadInCgroups).
/// Also says whether it did: if this thread cannot move, CRIU starts where
/// we are.
pub fn spawn_criu_in(
    ctx: &Ctx,
    work_dir: &std::path::Path,
    inherit_stdio: bool,
    tls: bool,
    cgroups: Option<&crate::checkpoint::spec::V1Cgroup>,
) -> Result<(crate::criu::session::Session, bool)> {
    let cfg = crate::criu::session::SessionConfig {
        criu: ctx.global.criu().to_path_buf(),
        criu_lean: ctx.criu_lean(),
        short_slice: ctx.short_slice(),
        nice: ctx.criu_nice(),
        timeout: checkpoint::criu_timeout(ctx)?,
        work_dir: Some(work_dir.to_path_buf()),
        inherit_stdio,
        tls,
    };
    let cancel = crate::criu::cancel::install().context("failed to install signal handlers")?;
    kdat_cache(ctx, &cfg);
    let moved = cgroups.and_then(|cg| {
        crate::checkpoint::spec::ThreadInCgroups::enter(cg)
            .inspect_err(|e| tracing::debug!("CRIU starts outside the container's cgroup: {e}"))
            .ok()
    });
    let placed = moved.is_some();
    let session = crate::criu::session::Session::start(cfg, Some(cancel));
    drop(moved);
    Ok((session?, placed))
}

/// The janitor kills CRIU's group and detaches its cgroup mounts if the
/// runtime dies.
pub fn arm_janitor(
    janitor: &mut crate::criu::janitor::Janitor,
    session: &crate::criu::session::Session,
    work_dir: &std::path::Path,
) {
    janitor.arm(crate::criu::janitor::Action::KillGroup(session.pgid()));
    janitor.arm(crate::criu::janitor::Action::UmountYards(
        work_dir.to_path_buf(),
    ));
}

/// CRIU's kernel-facts cache (criu::kdat), unless the configuration says
/// no (None); a failure only costs CRIU its probes, as before.
pub fn kdat_cache(
    ctx: &Ctx,
    cfg: &crate::criu::session::SessionConfig,
) -> Option<crate::criu::kdat::State> {
    let on = ctx.config().map(|c| c.criu.kdat_cache).unwrap_or(true);
    if !on {
        return None;
    }
    let state = crate::criu::kdat::ensure(
        &cfg.criu,
        cfg.timeout.min(std::time::Duration::from_secs(10)),
    );
    tracing::debug!(?state, "CRIU's kernel facts cache");
    Some(state)
}

/// VERSION, refused below [`MIN_VERSION`](crate::criu::gates::MIN_VERSION).
pub fn criu_version_gate(session: &mut crate::criu::session::Session) -> Result<u32> {
    use crate::criu::gates::{self, format_version, MIN_VERSION};
    let version = gates::version(session)?;
    if version < MIN_VERSION {
        anyhow::bail!(
            "CRIU {} at {} is too old: cntrlive-runtime needs CRIU >= {}",
            format_version(version),
            session.binary().display(),
            format_version(MIN_VERSION)
        );
    }
    Ok(version)
}

/// Both of the above in a row.
pub fn criu_session(
    ctx: &Ctx,
    work_dir: &std::path::Path,
    inherit_stdio: bool,
    tls: bool,
    janitor: &mut crate::criu::janitor::Janitor,
) -> Result<(crate::criu::session::Session, u32)> {
    let mut session = start_criu_session(ctx, work_dir, inherit_stdio, tls, janitor)?;
    let version = criu_version_gate(&mut session)?;
    Ok((session, version))
}

/// The cgroup manager of a loaded container.
pub fn cgroup_manager(container: &Container) -> Result<AnyCgroupManager> {
    let config = container.spec().with_context(|| {
        format!(
            "failed to read the saved config of container \"{}\"",
            container.id()
        )
    })?;
    cgroup_manager_at(config.cgroup_path, container.systemd(), container.id()).with_context(|| {
        format!(
            "failed to open the cgroup of container \"{}\"",
            container.id()
        )
    })
}

/// libcgroups' manager of the cgroup at `cgroup_path` (a container's,
/// named `id`), loaded or about to be made (a restore).
pub fn cgroup_manager_at(
    cgroup_path: std::path::PathBuf,
    systemd_cgroup: bool,
    id: &str,
) -> Result<AnyCgroupManager, libcgroups::common::CreateCgroupSetupError> {
    libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path,
        systemd_cgroup,
        container_name: id.to_string(),
    })
}

/// Write `resources` (config.json's `linux.resources`, or `update`'s) to
/// a container's cgroup.
pub fn apply_resources(
    manager: &AnyCgroupManager,
    resources: &oci_spec::runtime::LinuxResources,
) -> Result<()> {
    use libcgroups::common::CgroupManager as _;
    manager
        .apply(&libcgroups::common::ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(anyhow::Error::from)
}
