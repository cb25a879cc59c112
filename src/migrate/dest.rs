//! The destination: `migrate-listen` accepts connections and runs each
//! migration in a `migrate-receive` process of its own (the socket as its
//! stdin), so that one migration's CRIU sessions, janitor and signals never
//! touch another's.
//!
//! A receive: TLS (mutual) → Hello checked (protocol, ID free, bundle) →
//! Welcome with this host's abilities → Plan → rootfs (unless an existing
//! bundle is used) → page servers as the source asks → CRIU's other images
//! → restore (a `restore -d` of our own, stopped unless post-copy) →
//! Restored → Commit → the processes continue. Any failure before Commit
//! deletes what was restored: nothing stays registered.

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use super::wire::{DockerTwin, Msg, Strategy, Wire, DOCKER_CHECKPOINT, VERSION};
use crate::checkpoint::options::Tls;
use crate::cli::{MigrateListenArgs, MigrateReceiveArgs};
use crate::commands::checkpoint::{criu_timeout, make_dir};
use crate::commands::Ctx;
use crate::criu::janitor::Action;

pub fn migrate_listen(args: MigrateListenArgs, ctx: &Ctx) -> Result<()> {
    let tls = Tls::from_dir(&args.tls_dir)?;
    criu_timeout(ctx)?;
    make_dir(&args.work_root, "migration work root")?;
    ctx.ensure_root()?;
    let l = TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("listening on {}", l.local_addr()?);
    let _ = std::io::stdout().flush();
    loop {
        let (conn, peer) = l.accept().context("accept failed")?;
        tracing::info!(%peer, "migration connection");
        let fd: OwnedFd = conn.into();
        let mut cmd = ctx.command()?;
        cmd.arg("migrate-receive")
            .arg("--tls-dir")
            .arg(&tls.dir)
            .arg("--work-root")
            .arg(&args.work_root)
            .stdin(Stdio::from(fd));
        let d = &args.docker;
        for (flag, v) in [
            (
                "--docker-host",
                d.docker_host.as_ref().map(std::ffi::OsString::from),
            ),
            (
                "--docker-runtime",
                d.docker_runtime.as_ref().map(std::ffi::OsString::from),
            ),
            (
                "--docker-exec-root",
                d.docker_exec_root
                    .as_ref()
                    .map(|p| p.clone().into_os_string()),
            ),
        ] {
            if let Some(v) = v {
                cmd.arg(flag).arg(v);
            }
        }
        cmd.arg("--memory-reserve")
            .arg(args.admission.memory_reserve.to_string());
        if let Some(b) = args.admission.memory_budget {
            cmd.arg("--memory-budget").arg(b.to_string());
        }
        let mut child = cmd.spawn().context("cannot start migrate-receive")?;
        if args.once {
            let st = child.wait()?;
            if !st.success() {
                bail!("the migration from {peer} failed (see the messages above)");
            }
            return Ok(());
        }
        std::thread::spawn(move || {
            let st = child.wait();
            tracing::info!(%peer, ?st, "migration ended");
        });
    }
}

/// Admission control (docs/batch.md), the destination's side of a batch:
/// may a container needing `memory` (+ the per-container allowance) come?
/// None: yes, and a claim `WORK_ROOT/.admitted/ID` ("PID BYTES") is left;
/// it counts as in flight while this receive runs, and against
/// `--memory-budget` while the container stays registered here. Checked
/// and claimed under one lock, so concurrent receives see each other.
fn admit(
    ctx: &Ctx,
    work_root: &Path,
    id: &str,
    memory: u64,
    adm: &crate::cli::ReceiveAdmission,
) -> Result<Option<String>> {
    use nix::fcntl::{Flock, FlockArg};
    crate::store::validate_id(id)?;
    let dir = work_root.join(".admitted");
    make_dir(&dir, "admission directory")?;
    let lock = std::fs::File::create(dir.join(".lock"))?;
    let _held = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("cannot lock {}: {e}", dir.display()))?;
    let (mut in_flight, mut used) = (0u64, 0u64);
    for e in std::fs::read_dir(&dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let mut f = text.split_whitespace().map(|x| x.parse::<u64>().ok());
        let (Some(Some(pid)), Some(Some(bytes))) = (f.next(), f.next()) else {
            let _ = std::fs::remove_file(e.path());
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            in_flight += bytes;
        } else if ctx.store.load(&name).is_ok() {
            used += bytes;
        } else {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let need = memory + crate::batch::PER_CONTAINER_ALLOWANCE;
    let check = crate::batch::Admission {
        budget: adm.memory_budget,
        reserve: adm.memory_reserve,
        wait: None,
        used,
    };
    if let Some(why) = check.check(need, in_flight) {
        return Ok(Some(why));
    }
    std::fs::write(dir.join(id), format!("{} {need}\n", std::process::id()))?;
    Ok(None)
}

/// The container's cgroup on this host, if it exists with processes in it
/// (v1 freezer or v2/unified).
fn busy_cgroup(config: &str, id: &str) -> Option<PathBuf> {
    let spec: oci_spec::runtime::Spec = serde_json::from_str(config).ok()?;
    let youki = libcontainer::config::YoukiConfig::from_spec(&spec, id).ok()?;
    let rel = youki
        .cgroup_path
        .strip_prefix("/")
        .unwrap_or(&youki.cgroup_path)
        .to_path_buf();
    [
        "/sys/fs/cgroup/freezer",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .iter()
    .map(|base| Path::new(base).join(&rel))
    .find(|d| {
        std::fs::read_to_string(d.join("cgroup.procs"))
            .map(|t| !t.trim().is_empty())
            .unwrap_or(false)
    })
}

/// Replace a config's root and network namespace for this host.
fn local_config(config: &str, rootfs: &Path, netns: Option<&str>) -> Result<String> {
    let mut v: serde_json::Value =
        serde_json::from_str(config).context("the source sent a malformed config.json")?;
    v["root"]["path"] = serde_json::Value::String(rootfs.display().to_string());
    if let Some(ns) = netns {
        let list = v["linux"]["namespaces"]
            .as_array_mut()
            .context("config.json has no linux.namespaces")?;
        let net = list
            .iter_mut()
            .find(|n| n["type"] == "network")
            .context("--dest-netns given, but the container has no network namespace of its own")?;
        net["path"] = serde_json::Value::String(ns.to_string());
    }
    Ok(serde_json::to_string_pretty(&v)?)
}

/// The answer once container `id` is restored (its pid as registered).
fn restored(ctx: &Ctx, id: &str, started: Instant) -> Msg {
    Msg::Restored {
        pid: ctx
            .store
            .load(id)
            .ok()
            .and_then(|c| c.pid())
            .map_or(0, |p| p.as_raw()),
        restore_ms: started.elapsed().as_secs_f64() * 1e3,
    }
}

/// One migration, on the accepted socket (stdin).
pub fn migrate_receive(args: MigrateReceiveArgs, ctx: &Ctx) -> Result<()> {
    // SAFETY: fd 0 is the accepted socket the listener gave us; it is
    // moved out and fd 0 becomes /dev/null, so no child inherits it.
    // CLOEXEC: the restore, its CRIU and the container must not inherit
    // it (a copy held open elsewhere hides this process's death from the
    // source).
    let sock = unsafe {
        OwnedFd::from_raw_fd(nix::fcntl::fcntl(
            0,
            nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3),
        )?)
    };
    let null = std::fs::File::open("/dev/null")?;
    nix::unistd::dup2(null.as_raw_fd(), 0)?;
    let tcp = TcpStream::from(sock);
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let tls = Tls::from_dir(&args.tls_dir)?;
    let timeout = criu_timeout(ctx)?;
    let mut w = Wire::accept(tcp, &tls, timeout)
        .with_context(|| format!("refused the connection from {peer}"))?;
    let mut r = Receive {
        ctx,
        docker: args.docker.clone(),
        admission: args.admission.clone(),
        twin: None,
        rt_ctx: None,
        guard: None,
        tls,
        id: String::new(),
        dir: PathBuf::new(),
        registered: false,
        started: Instant::now(),
    };
    let res = r.run(&mut w, &args.work_root);
    if let Err(e) = &res {
        let reason = format!("{e:#}");
        r.undo();
        let _ = w.send(&Msg::Failed { reason });
    }
    res
}

/// A docker-managed container's twin, created at this host's dockerd.
struct Twin {
    client: crate::docker::Docker,
    id: String,
}

struct Receive<'a> {
    ctx: &'a Ctx,
    docker: crate::cli::DockerDest,
    admission: crate::cli::ReceiveAdmission,
    /// Docker-managed: the twin (removed again if the migration fails).
    twin: Option<Twin>,
    /// Docker-managed: our runtime's state as dockerd keeps it.
    rt_ctx: Option<Ctx>,
    /// If this process dies between the restore and the commit, the guard
    /// kills the restore and removes what it registered.
    guard: Option<crate::criu::janitor::Janitor>,
    tls: Tls,
    id: String,
    /// This migration's directory: images/, work/, bundle/.
    dir: PathBuf,
    /// A container was restored and registered under `id`.
    registered: bool,
    started: Instant,
}

/// Tell the source why this destination will not take its container, and
/// fail with the same words.
fn refuse(w: &mut Wire, reason: String) -> Result<()> {
    w.send(&Msg::Refused {
        reason: reason.clone(),
    })?;
    bail!("{reason}")
}

impl Receive<'_> {
    fn run(&mut self, w: &mut Wire, work_root: &Path) -> Result<()> {
        let Msg::Hello {
            version,
            id,
            config,
            bundle,
            netns,
            criu,
            abilities: _,
            docker,
            memory,
        } = w.recv()?
        else {
            bail!("protocol error: the source did not start with hello");
        };
        if version != VERSION {
            return refuse(
                w,
                format!("protocol version {version} (this destination speaks {VERSION}): run the same cntrlive-runtime version on both hosts"),
            );
        }
        self.id = id.clone();
        let mut docker_dirs = None;
        if let Some(d) = &docker {
            self.admit(w, work_root, &id, memory)?;
            match self.prepare_twin(&id, d) {
                Ok(dirs) => docker_dirs = Some(dirs),
                Err(e) => return refuse(w, format!("{e:#}")),
            }
        } else {
            if let Err(e) = crate::store::validate_id(&id)
                .map_err(anyhow::Error::from)
                .and_then(|_| self.ctx.store.ensure_free(&id).map_err(anyhow::Error::from))
            {
                return refuse(
                    w,
                    format!(
                        "{e:#} on the destination: pass --dest-id NEW_ID, or delete it there first"
                    ),
                );
            }
            if let Some(busy) = busy_cgroup(&config, &id) {
                return refuse(w, format!("the container's cgroup {} already holds processes on the destination (another container with the same cgroup path): pass --dest-id NEW_ID or give it another cgroupsPath", busy.display()));
            }
            if let Some(b) = &bundle {
                if !Path::new(b).join("config.json").is_file() {
                    return refuse(w, format!("--dest-bundle {b}: no bundle there (config.json missing) on the destination"));
                }
            }
            if let Some(ns) = &netns {
                if !Path::new(ns).exists() {
                    return refuse(
                        w,
                        format!("--dest-netns {ns} does not exist on the destination"),
                    );
                }
            }
            // After the ID checks: a claim is named by a free, valid ID.
            self.admit(w, work_root, &id, memory)?;
        }
        self.dir = work_root.join(format!(
            "{id}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f")
        ));
        let abilities = match super::abilities(self.ctx, &self.dir.join("work")) {
            Ok(a) => a,
            Err(e) => return refuse(w, format!("CRIU does not work on the destination: {e:#}")),
        };
        w.send(&Msg::Welcome { abilities })?;
        let Msg::Plan { strategy, why } = w.recv()? else {
            bail!("protocol error: expected the plan");
        };
        tracing::info!(id, strategy = strategy.name(), why, "migration planned");

        let bundle_dir = self.dir.join("bundle");
        // The tree the source sends in two passes, and where the images go.
        let (tree, images) = match docker_dirs {
            Some((images, upper)) => {
                // The writable layer: the image is here already.
                w.recv_tar("upper", &upper)?;
                (Some(("upper", upper)), images)
            }
            None => self.bundle(w, &bundle_dir, bundle.as_deref(), &config, netns.as_deref())?,
        };
        make_dir(&images, "image directory")?;
        let work = self.dir.join("work");
        loop {
            match w.recv()? {
                Msg::OpenPages { dir, parent } => {
                    let into = images.join(&dir);
                    make_dir(&into, "image directory")?;
                    if let Some(p) = parent {
                        let link = into.join("parent");
                        let _ = std::fs::remove_file(&link);
                        std::os::unix::fs::symlink(p, &link)?;
                    }
                    let addr = w.local_ip()?.to_string();
                    let work = work.join(if dir.is_empty() { "final" } else { &dir });
                    crate::commands::page_server::serve(
                        self.ctx,
                        &into,
                        Some(&work),
                        &addr,
                        0,
                        Some(&self.tls),
                        |port, _| {
                            let _ = w.send(&Msg::PagesAt { port });
                        },
                    )
                    .with_context(|| {
                        format!(
                            "receiving the pages of {}",
                            if dir.is_empty() {
                                "the final dump"
                            } else {
                                &dir
                            }
                        )
                    })?;
                }
                Msg::Tar { what, mode } if what == "images" => {
                    w.recv_tar_body(&images, mode)?;
                }
                Msg::Tar { what, mode } if tree.as_ref().is_some_and(|t| t.0 == what) => {
                    // The second pass: what changed while it ran.
                    w.recv_tar_body(&tree.as_ref().unwrap().1, mode)?;
                }
                Msg::Prune { what, keep } if tree.as_ref().is_some_and(|t| t.0 == what) => {
                    super::wire::prune_tree(&tree.as_ref().unwrap().1, &keep)?;
                }
                Msg::Restore { lazy } => {
                    let restored = if docker.is_some() {
                        self.restore_docker(&images)?
                    } else {
                        self.restore(
                            &images,
                            &work,
                            &bundle_dir,
                            &criu,
                            lazy.as_deref(),
                            strategy,
                        )?
                    };
                    w.send(&restored)?;
                    if lazy.is_some() {
                        // Post-copy: running already; the source ends when
                        // its pages are all here (criu::lazy). From here the
                        // lazy-pages supervisor watches it.
                        if let Some(g) = self.guard.take() {
                            g.disarm();
                        }
                        let _ = w.recv();
                        return Ok(());
                    }
                    break;
                }
                m => bail!("protocol error: unexpected {m:?}"),
            }
        }
        // Two-phase: run only once the source has ended its copy.
        match w.recv() {
            Ok(Msg::Commit) => {}
            Ok(m) => bail!("protocol error: expected commit, got {m:?}"),
            Err(e) => bail!("the source never committed ({e:#}): the restored copy is removed; the source keeps (or thaws) its container"),
        }
        let rid = self
            .twin
            .as_ref()
            .map(|t| t.id.clone())
            .unwrap_or_else(|| self.id.clone());
        self.run_cmd(&["kill", "--all", &rid, "SIGCONT"])
            .context("failed to let the restored container run")?;
        if let Some(g) = self.guard.take() {
            g.disarm();
        }
        w.send(&Msg::Committed)?;
        tracing::info!(
            id = self.id,
            ms = self.started.elapsed().as_millis() as u64,
            "migration done"
        );
        match self.twin.take() {
            // The checkpoint served its purpose (and holds the marker).
            Some(t) => {
                if let Err(e) = t.client.remove_checkpoint(&t.id, DOCKER_CHECKPOINT) {
                    tracing::warn!("{e:#}");
                }
            }
            None => {
                let _ = std::fs::remove_dir_all(&images);
            }
        }
        Ok(())
    }

    /// The bundle: a copy of the source's config, its rootfs received or
    /// taken from the bundle named. The tree sent in two passes, if any,
    /// and the image directory.
    #[allow(clippy::type_complexity)]
    fn bundle(
        &mut self,
        w: &mut Wire,
        bundle_dir: &Path,
        bundle: Option<&str>,
        config: &str,
        netns: Option<&str>,
    ) -> Result<(Option<(&'static str, PathBuf)>, PathBuf)> {
        make_dir(bundle_dir, "bundle directory")?;
        let rootfs = match &bundle {
            Some(b) => {
                let theirs: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(Path::new(b).join("config.json"))?)?;
                let p = PathBuf::from(theirs["root"]["path"].as_str().unwrap_or("rootfs"));
                if p.is_absolute() {
                    p
                } else {
                    Path::new(b).join(p)
                }
            }
            None => {
                let r = bundle_dir.join("rootfs");
                w.recv_tar("rootfs", &r)?;
                r
            }
        };
        std::fs::write(
            bundle_dir.join("config.json"),
            local_config(config, &rootfs, netns)?,
        )?;
        let tree = bundle.is_none().then_some(("rootfs", rootfs));
        Ok((tree, self.dir.join("images")))
    }

    /// Admission control ([`admit`]): no room → `NoRoom` to the source;
    /// a failing mechanism → a plain refusal.
    fn admit(&self, w: &mut Wire, work_root: &Path, id: &str, memory: u64) -> Result<()> {
        match admit(self.ctx, work_root, id, memory, &self.admission) {
            Ok(None) => Ok(()),
            Ok(Some(why)) => {
                w.send(&Msg::NoRoom {
                    reason: why.clone(),
                })?;
                bail!("no room for \"{id}\": {why}")
            }
            Err(e) => refuse(w, format!("admission control failed: {e:#}")),
        }
    }

    /// Docker-managed: create the twin at this host's dockerd (refused if
    /// the name is taken, the image is missing or differs, the runtime is
    /// unknown). Its checkpoint directory and writable layer.
    fn prepare_twin(&mut self, name: &str, d: &DockerTwin) -> Result<(PathBuf, PathBuf)> {
        let host = self.docker.docker_host.clone().context(
            "this destination takes no docker-managed containers: start migrate-listen with --docker-host unix:///var/run/docker.sock",
        )?;
        let client = crate::docker::Docker::connect(&host)?;
        if client.inspect(name)?.is_some() {
            bail!("a container named \"{name}\" exists at the destination's dockerd: pass --dest-id NEW_NAME, or remove it there first");
        }
        match client.image_layers(&d.image)? {
            None => bail!(
                "the image {0} is not at the destination's dockerd: load it there first (docker save {0} | docker -H <destination> load)",
                d.image
            ),
            Some(l) if l != d.layers => bail!(
                "the image {} at the destination's dockerd has other content than at the source (its layers differ): give both the same image",
                d.image
            ),
            Some(_) => {}
        }
        let info = client.info()?;
        let runtime = self
            .docker
            .docker_runtime
            .clone()
            .unwrap_or_else(|| d.runtime.clone());
        let known: Vec<String> = info["Runtimes"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        if !known.contains(&runtime) {
            bail!(
                "the destination's dockerd has no runtime \"{runtime}\" (it has: {}): pass migrate-listen --docker-runtime NAME (cntrlive-runtime's name there)",
                known.join(", ")
            );
        }
        let mut body = d.create.clone();
        body["HostConfig"]["Runtime"] = runtime.into();
        // From the twin's creation on, a guard removes it if this process
        // dies before the commit.
        let mut guard = crate::criu::janitor::Janitor::spawn()
            .context("failed to start the janitor process")?;
        let id = client
            .create(name, &body)
            .context("the destination's dockerd could not create the twin")?;
        guard.arm(Action::Run(self.our_argv(&[
            "docker",
            "--docker-host",
            &host,
            "remove",
            &id,
        ])?));
        self.guard = Some(guard);
        let t = client
            .inspect(&id)?
            .context("the twin vanished from the destination's dockerd")?;
        self.twin = Some(Twin {
            client,
            id: id.clone(),
        });
        if t.driver != "overlay2" {
            bail!(
                "the destination's dockerd uses the storage driver {:?}: migration moves into overlay2's writable layer only",
                t.driver
            );
        }
        let upper = t
            .upper
            .context("the destination's dockerd reports no writable layer for the twin")?;
        let root = info["DockerRootDir"]
            .as_str()
            .context("the destination's dockerd does not say its DockerRootDir")?;
        let images = Path::new(root)
            .join("containers")
            .join(&id)
            .join("checkpoints")
            .join(DOCKER_CHECKPOINT);
        Ok((images, upper))
    }

    /// Docker-managed: the images are in the twin's checkpoint store;
    /// dockerd starts it from there (our runtime's restore, through the
    /// shim), stopped until the commit.
    fn restore_docker(&mut self, images: &Path) -> Result<Msg> {
        let started = Instant::now();
        let t = self.twin.as_ref().context("no twin")?;
        std::fs::write(
            images.join(crate::commands::restore::HOLD_MARKER),
            "held stopped until the source's copy is gone\n",
        )?;
        let mut r = t.client.start_from_checkpoint(&t.id, DOCKER_CHECKPOINT);
        if r.as_ref()
            .is_err_and(|e| format!("{e}").contains("already exists"))
        {
            // moby/moby#42900: dockerd's content upload, before any runtime
            // is called; a second try passes.
            r = t.client.start_from_checkpoint(&t.id, DOCKER_CHECKPOINT);
        }
        r.context("the destination's dockerd could not start the twin from the checkpoint")?;
        let rt =
            crate::docker::runtime_ctx(self.ctx, self.docker.docker_exec_root.as_deref(), &t.id)?;
        tracing::info!(id = self.id, twin = t.id, "restored by dockerd");
        let msg = restored(&rt, &t.id, started);
        self.rt_ctx = Some(rt);
        Ok(msg)
    }

    /// argv of a runtime command of ours against this host's state.
    fn our_argv(&self, args: &[&str]) -> Result<Vec<String>> {
        let mut v = vec![std::env::current_exe()?.display().to_string()];
        v.extend(
            self.rt_ctx
                .as_ref()
                .unwrap_or(self.ctx)
                .child_args()
                .iter()
                .map(|a| a.to_string_lossy().into_owned()),
        );
        v.extend(args.iter().map(|a| a.to_string()));
        Ok(v)
    }

    /// Run a runtime command of ours against this host's state.
    fn run_cmd(&self, args: &[&str]) -> Result<()> {
        let errors = tempfile::tempfile()?;
        let argv = self.our_argv(args)?;
        let status = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(errors.try_clone()?)
            .status()?;
        if !status.success() {
            use std::io::{Read, Seek};
            let mut f = errors;
            let mut text = String::new();
            f.seek(std::io::SeekFrom::Start(0))?;
            f.read_to_string(&mut text)?;
            bail!("{}", text.trim());
        }
        Ok(())
    }

    /// Restore under our ID, detached; its stdout and stderr go through a
    /// log relay to `<dir>/container.log` (pipes, so that the container can
    /// be checkpointed and moved again).
    fn restore(
        &mut self,
        images: &Path,
        work: &Path,
        bundle: &Path,
        criu: &super::wire::CriuWire,
        lazy: Option<&str>,
        strategy: Strategy,
    ) -> Result<Msg> {
        let started = Instant::now();
        let mut cmd = self.ctx.command()?;
        cmd.arg("restore")
            .arg("--detach")
            .arg("--image-path")
            .arg(images)
            .arg("--work-path")
            .arg(work.join("restore"))
            .arg("--bundle")
            .arg(bundle)
            .arg("--stdio-fds")
            .arg("10,11,12")
            .arg("--tls-dir")
            .arg(&self.tls.dir);
        cmd.args(crate::checkpoint::options::CriuCommon::state_args(criu));
        match lazy {
            Some(at) => {
                cmd.arg("--lazy-pages").arg("--page-server").arg(at);
            }
            None => {
                cmd.arg("--leave-stopped");
            }
        }
        cmd.arg(&self.id);
        let errors = self.dir.join("restore.err");
        let mut guard = crate::criu::janitor::Janitor::spawn()
            .context("failed to start the janitor process")?;
        let mut child =
            crate::commands::relay::spawn_restore(cmd, &self.dir.join("container.log"), &errors)?;
        guard.arm(Action::Kill(nix::unistd::Pid::from_raw(child.id() as i32)));
        guard.arm(Action::Run(
            self.our_argv(&["delete", "--force", &self.id])?,
        ));
        self.guard = Some(guard);
        let status = child.wait().context("cannot run restore")?;
        if !status.success() {
            bail!(
                "restore failed on the destination: {}",
                std::fs::read_to_string(&errors).unwrap_or_default().trim()
            );
        }
        self.registered = true;
        tracing::info!(id = self.id, strategy = strategy.name(), "restored");
        Ok(restored(self.ctx, &self.id, started))
    }

    /// Remove what this migration left: the restored container, its files.
    fn undo(&mut self) {
        if let Some(t) = self.twin.take() {
            if let Err(e) = t.client.remove(&t.id) {
                tracing::error!(twin = t.id, "failed to remove the twin: {e:#}");
            }
        }
        if self.registered {
            if let Err(e) = self.run_cmd(&["delete", "--force", &self.id]) {
                tracing::error!(id = self.id, "failed to remove the restored copy: {e:#}");
            }
            self.registered = false;
        }
        if let Some(g) = self.guard.take() {
            g.disarm();
        }
        if !self.dir.as_os_str().is_empty() {
            // CRIU's logs (work/) and restore.err stay for the post-mortem.
            let _ = std::fs::remove_dir_all(self.dir.join("images"));
            let _ = std::fs::remove_dir_all(self.dir.join("bundle"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_config_rewrites_root_and_netns_ok() {
        let cfg = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs","readonly":false},
            "linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/run/netns/a"}]},
            "annotations":{"x":"y"}}"#;
        let out = local_config(cfg, Path::new("/w/b/rootfs"), Some("/run/netns/b")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["root"]["path"], "/w/b/rootfs");
        assert_eq!(v["linux"]["namespaces"][1]["path"], "/run/netns/b");
        assert_eq!(v["annotations"]["x"], "y", "unknown fields kept");
    }

    #[test]
    fn local_config_netns_without_network_namespace_ng() {
        let cfg = r#"{"root":{"path":"r"},"linux":{"namespaces":[{"type":"pid"}]}}"#;
        assert!(local_config(cfg, Path::new("/r"), Some("/n")).is_err());
    }
}
