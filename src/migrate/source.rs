//! The source: `migrate ID HOST:PORT`. See mod.rs for the protocol and
//! docs/migration.md for what a user sees.

use std::io::{IsTerminal as _, Read as _};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::wire::{Abilities, CriuWire, Msg, Strategy, Wire, VERSION};
use crate::checkpoint::options::{
    CheckpointOptions, CriuCommon, PageServer, Rounds, Tls, DEFAULT_MAX_ROUNDS,
};
use crate::cli::MigrateArgs;
use crate::commands::checkpoint::{self, criu_timeout, make_dir, Hooks};
use crate::commands::Ctx;
use crate::criu::stats::{self, RoundReport};
use libcontainer::container::ContainerStatus;

/// Below this working set, a full dump is as quick as any other strategy
/// (docs/performance.md: post-copy pays ~50 ms of its own at 64 MiB).
pub const SMALL_WORKING_SET: u64 = 64 << 20;

/// What a migration cost, printed at the end (`--json`: as JSON).
#[derive(Debug, Serialize)]
pub struct MigrationReport {
    pub container_id: String,
    pub destination: String,
    pub destination_id: String,
    pub strategy: &'static str,
    pub why: String,
    pub working_set_bytes: u64,
    pub source: Abilities,
    pub target: Abilities,
    /// Pre-copy rounds (the container running).
    pub rounds: Vec<RoundReport>,
    pub pre_copy_stopped: Option<String>,
    /// The final dump: pages written (post-copy: left for the destination
    /// to fetch: `pages_lazy`), CRIU's frozen time.
    pub final_pages_written: u64,
    pub final_pages_lazy: u64,
    /// None for post-copy (CRIU does not measure it then).
    pub frozen_time_ms: Option<f64>,
    /// From the freeze until the destination runs it (as the source sees).
    pub downtime_ms: f64,
    /// The final dump, pages streamed to the destination included.
    pub final_dump_ms: f64,
    /// CRIU's other images sent after the dump.
    pub images_transfer_ms: f64,
    /// The destination's restore (its own measure).
    pub restore_ms: f64,
    pub rootfs_bytes: u64,
    pub images_bytes: u64,
    /// Memory pages through CRIU's page server (4 KiB each), all rounds.
    pub page_bytes: u64,
    pub total_ms: f64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Resident memory of every process of the container's cgroup.
fn working_set(pid: i32) -> u64 {
    let pids: Vec<i32> = crate::criu::janitor::freezer_of(pid)
        .and_then(|f| std::fs::read_to_string(f.dir().join("cgroup.procs")).ok())
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![pid]);
    pids.into_iter()
        .filter_map(|p| procfs::process::Process::new(p).ok())
        .filter_map(|p| p.status().ok())
        .filter_map(|s| s.vmrss)
        .sum::<u64>()
        * 1024
}

/// `auto`, or a check that the strategy asked for can run.
pub fn choose(
    asked: Strategy,
    mine: &Abilities,
    theirs: &Abilities,
    ws: u64,
) -> Result<(Strategy, String)> {
    let mib = ws >> 20;
    let pre = || {
        format!(
            "pre-copy needs dirty memory tracking on the source, which its kernel ({}) lacks (CONFIG_MEM_SOFT_DIRTY)",
            mine.kernel
        )
    };
    let post = || {
        let who = match (mine.lazy_pages, theirs.lazy_pages) {
            (false, false) => "either host",
            (false, true) => "the source",
            _ => "the destination",
        };
        format!("post-copy needs userfaultfd (lazy pages), which {who} lacks")
    };
    Ok(match asked {
        Strategy::StopAndCopy => (asked, "asked for".into()),
        Strategy::PreCopy if !mine.mem_track => bail!("{}: use --strategy post-copy or stop-and-copy", pre()),
        Strategy::PostCopy if !(mine.lazy_pages && theirs.lazy_pages) => {
            bail!("{}: use --strategy stop-and-copy", post())
        }
        Strategy::PreCopy | Strategy::PostCopy => (asked, "asked for".into()),
        Strategy::Auto if ws < SMALL_WORKING_SET => (
            Strategy::StopAndCopy,
            format!("working set {mib} MiB < {} MiB: one full dump is as quick as any other way", SMALL_WORKING_SET >> 20),
        ),
        Strategy::Auto if mine.mem_track => (
            Strategy::PreCopy,
            format!("working set {mib} MiB; the source tracks dirty memory: pre-copy rounds while it runs, then only what changed, the source keeping a full copy until the destination confirms"),
        ),
        Strategy::Auto if mine.lazy_pages && theirs.lazy_pages => (
            Strategy::PostCopy,
            format!("working set {mib} MiB; {}; both have userfaultfd: post-copy runs it on the destination at once and moves memory after", pre()),
        ),
        Strategy::Auto => (
            Strategy::StopAndCopy,
            format!("working set {mib} MiB; {}; {}", pre(), post()),
        ),
    })
}

/// The terminal display (stderr; nothing when it is not a terminal or
/// with --json).
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(on: bool) -> Progress {
        Progress(on.then(|| {
            let p = indicatif::ProgressBar::new_spinner();
            p.enable_steady_tick(Duration::from_millis(100));
            p
        }))
    }
    fn say(&self, msg: String) {
        if let Some(p) = &self.0 {
            p.set_message(msg.clone());
        }
        tracing::info!(target: "migrate", "{msg}");
    }
    fn line(&self, msg: String) {
        if let Some(p) = &self.0 {
            p.println(msg);
        }
    }
    fn done(&self) {
        if let Some(p) = &self.0 {
            p.finish_and_clear();
        }
    }
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}

/// With --tcp-established: from the freeze until the source's copy is gone,
/// nothing enters or leaves the container's network namespace (but `lo`).
/// CRIU's own lock ends with a dump that leaves the processes alive, and a
/// frozen socket's kernel would go on acknowledging the client's data —
/// data the destination's copy, restored from the dump, never sees; and a
/// killed copy's sockets would send FIN/RST to the client. The rules stay
/// after the copy is killed (its sockets' retransmitted FINs must never
/// leave); they are lifted only if the migration fails and it thaws.
struct NetBlock {
    ns: String,
    on: bool,
}

const NETBLOCK_TAG: &str = "cntrlive-migrate";

impl NetBlock {
    fn new(pid: i32) -> NetBlock {
        NetBlock {
            ns: format!("--net=/proc/{pid}/ns/net"),
            on: false,
        }
    }

    fn rules(&self, op: &str) -> Result<()> {
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            let mut cmd = std::process::Command::new("nsenter");
            cmd.arg(&self.ns).args(["iptables", "-w", op, chain]);
            if op == "-I" {
                cmd.arg("1");
            }
            cmd.args([
                "!",
                dir,
                "lo",
                "-m",
                "comment",
                "--comment",
                NETBLOCK_TAG,
                "-j",
                "DROP",
            ]);
            let out = cmd
                .stdin(std::process::Stdio::null())
                .output()
                .context("cannot run nsenter/iptables")?;
            if !out.status.success() {
                bail!(
                    "iptables {op} {chain} in the container's network namespace failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }

    fn apply(&mut self) -> Result<()> {
        self.rules("-I")?;
        self.on = true;
        Ok(())
    }

    fn lift(&mut self) {
        if std::mem::take(&mut self.on) {
            if let Err(e) = self.rules("-D") {
                tracing::error!("{e:#}");
            }
        }
    }
}

/// Pages to the destination's page servers, one per round.
struct ToDest<'a> {
    /// None: post-copy (the pages stay here until fetched).
    wire: Option<&'a mut Wire>,
    addr: String,
    progress: &'a Progress,
    last_round: Option<u32>,
    freeze: Option<Instant>,
    netblock: Option<NetBlock>,
}

impl Hooks for ToDest<'_> {
    fn frozen(&mut self) {
        self.freeze = Some(Instant::now());
        if let Some(b) = &mut self.netblock {
            if let Err(e) = b.apply() {
                // CRIU's own lock still covers the dump itself.
                tracing::error!("{e:#}");
            }
        }
    }

    fn page_server(&mut self, k: u32) -> Result<Option<PageServer>> {
        if k == 0 {
            self.progress.say("final dump (container frozen)".into());
        } else {
            self.progress
                .say(format!("pre-copy round {k} (container running)"));
        }
        let Some(wire) = self.wire.as_deref_mut() else {
            return Ok(None);
        };
        let (dir, parent) = match k {
            0 => (
                String::new(),
                self.last_round
                    .map(|r| Rounds::dir(r).display().to_string()),
            ),
            1 => ("pre-1".to_string(), None),
            k => (
                Rounds::dir(k).display().to_string(),
                Some(format!("../{}", Rounds::dir(k - 1).display())),
            ),
        };
        wire.send(&Msg::OpenPages { dir, parent })?;
        let Msg::PagesAt { port } = wire.expect("pages-at")? else {
            unreachable!()
        };
        Ok(Some(PageServer {
            address: self.addr.clone(),
            port,
        }))
    }

    fn round_done(&mut self, r: &RoundReport) {
        self.last_round = Some(r.round);
        let bytes = r.pages_written * 4096;
        let rate = bytes as f64 / (r.criu_request_ms / 1e3).max(1e-3);
        self.progress.line(format!(
            "round {}: {} pages ({}) in {:.0} ms, {}/s",
            r.round,
            r.pages_written,
            human(bytes),
            r.criu_request_ms,
            human(rate as u64)
        ));
    }
}

/// A free TCP port on `addr` for the source's lazy page server.
fn free_port(addr: &str) -> Result<u16> {
    Ok(std::net::TcpListener::bind((addr, 0))?.local_addr()?.port())
}

/// A docker-managed container at the source: its daemon, and what the
/// destination's daemon needs for the twin.
struct DockerSource {
    client: crate::docker::Docker,
    id: String,
    upper: std::path::PathBuf,
    twin: super::wire::DockerTwin,
}

impl DockerSource {
    /// Look the container up at this dockerd; the Ctx of dockerd's runtime
    /// state root, where our runtime keeps it.
    fn resolve(args: &MigrateArgs, host: &str, ctx: &Ctx) -> Result<(DockerSource, String, Ctx)> {
        let client = crate::docker::Docker::connect(host)?;
        let name = args.container_id();
        let c = client
            .inspect(name)?
            .with_context(|| format!("no container \"{name}\" at dockerd {host}"))?;
        if !c.running {
            bail!("docker container \"{name}\" is not running: only a running container can be migrated");
        }
        if c.driver != "overlay2" {
            bail!(
                "docker container \"{name}\" uses the storage driver {:?}: migration moves overlay2's writable layer only",
                c.driver
            );
        }
        let upper = c
            .upper
            .clone()
            .context("dockerd reports no writable layer (GraphDriver.Data.UpperDir)")?;
        let layers = client.image_layers(&c.image)?.with_context(|| {
            format!(
                "the image {} of \"{name}\" is gone from dockerd {host}",
                c.image
            )
        })?;
        let dctx = crate::docker::runtime_ctx(ctx, args.docker_exec_root.as_deref(), &c.id)?;
        if let Err(e) = dctx.store.load(&c.id) {
            bail!(
                "docker container \"{name}\" (runtime {:?}) is not a cntrlive-runtime container ({e:#}): \
                 docker-managed migration needs `docker run --runtime <cntrlive-runtime's name>`",
                c.runtime
            );
        }
        let dest_name = args.dest_id.clone().unwrap_or_else(|| {
            format!(
                "{}{}",
                args.dest_id_prefix.as_deref().unwrap_or_default(),
                c.name
            )
        });
        Ok((
            DockerSource {
                client,
                id: c.id,
                upper,
                twin: super::wire::DockerTwin {
                    create: c.create,
                    image: c.image,
                    layers,
                    runtime: c.runtime,
                },
            },
            dest_name,
            dctx,
        ))
    }
}

/// Docker-managed containers: dockerd restores through `docker start
/// --checkpoint`, which takes one complete image directory.
fn docker_strategy(asked: Strategy) -> Result<(Strategy, String)> {
    const WHY: &str = "a docker-managed container is restored by the destination's dockerd (`start --checkpoint`), which takes one complete image directory: no pre-copy parent chain, no lazy pages";
    match asked {
        Strategy::Auto | Strategy::StopAndCopy => Ok((Strategy::StopAndCopy, WHY.into())),
        s => bail!(
            "--strategy {} is not available: {WHY}; use stop-and-copy",
            s.name()
        ),
    }
}

pub fn migrate(args: MigrateArgs, ctx: &Ctx) -> Result<i32> {
    if args.all && !args.ids().is_empty() {
        bail!("migrate --all takes no container IDs, only the DESTINATION (HOST:PORT)");
    }
    if args.is_batch() {
        return crate::batch::migrate(args, ctx);
    }
    if args.ids().is_empty() {
        bail!("migrate needs a CONTAINER_ID and the DESTINATION (HOST:PORT of its migrate-listen)");
    }
    one(args, ctx).map(|_| 0)
}

/// One container (`migrate ID DEST`).
fn one(args: MigrateArgs, ctx: &Ctx) -> Result<()> {
    let started = Instant::now();
    let tls = Tls::from_dir(&args.tls_dir)?;
    let timeout = criu_timeout(ctx)?;
    let (docker, dest_id, dctx) = match &args.docker_host {
        Some(h) => {
            let (d, n, c) = DockerSource::resolve(&args, h, ctx)?;
            (Some(d), n, Some(c))
        }
        None => (
            None,
            args.dest_id.clone().unwrap_or_else(|| {
                format!(
                    "{}{}",
                    args.dest_id_prefix.as_deref().unwrap_or_default(),
                    args.container_id()
                )
            }),
            None,
        ),
    };
    let ctx = dctx.as_ref().unwrap_or(ctx);
    // Refused before anything is sent or frozen.
    let fixed = docker
        .as_ref()
        .map(|_| docker_strategy(args.strategy))
        .transpose()?;
    let id = docker
        .as_ref()
        .map(|d| d.id.clone())
        .unwrap_or_else(|| args.container_id().to_string());
    crate::store::validate_id(&dest_id)?;
    let c = ctx.store.load(&id)?;
    match c.status() {
        ContainerStatus::Running | ContainerStatus::Paused => {}
        s => bail!("container \"{id}\" is {s:?}: only a running container can be migrated"),
    }
    let pid = c.pid().context("container has no init pid")?.as_raw();
    let config_path = c.bundle().join("config.json");
    let config = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let spec = crate::bundle::parse_config(&config_path)?;
    // The tree sent: a docker container's writable layer (the image is on
    // the destination already), else the rootfs unless --dest-bundle.
    let tree = match &docker {
        Some(d) => Some(("upper", d.upper.clone())),
        None if args.dest_bundle.is_none() => {
            let r = spec
                .root()
                .as_ref()
                .context("config.json has no root")?
                .path();
            Some((
                "rootfs",
                if r.is_absolute() {
                    r.clone()
                } else {
                    c.bundle().join(r)
                },
            ))
        }
        None => None,
    };
    let ws = working_set(pid);
    let progress = Progress::new(!args.json && std::io::stderr().is_terminal());
    let work = ctx
        .store
        .root()
        .join(".migrate")
        .join(format!("{id}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    make_dir(&work, "migration work directory")?;
    let ids = Ids {
        id: &id,
        dest_id: &dest_id,
        strategy: fixed,
        docker: docker.as_ref().map(|d| d.twin.clone()),
    };
    let result = run(
        &args, ctx, &tls, timeout, &work, &config, tree, ws, pid, &progress, ids,
    );
    progress.done();
    match result {
        Ok(mut report) => {
            let _ = std::fs::remove_dir_all(&work);
            if let Some(d) = &docker {
                // Its processes are gone; dockerd's record of it goes too.
                if let Err(e) = d.client.remove(&d.id) {
                    eprintln!(
                        "warning: the container runs on the destination, but removing it from this dockerd failed: {e:#}"
                    );
                }
            }
            report.total_ms = ms(started.elapsed());
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report);
            }
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(work.join("images"));
            Err(e.context(format!(
                "migration of \"{}\" to {} failed (CRIU's logs: {})",
                args.container_id(),
                args.destination(),
                work.display()
            )))
        }
    }
}

/// The container here and its name and kind at the destination.
struct Ids<'a> {
    id: &'a str,
    dest_id: &'a str,
    /// Decided before connecting (docker-managed: stop-and-copy).
    strategy: Option<(Strategy, String)>,
    docker: Option<super::wire::DockerTwin>,
}

fn print_report(r: &MigrationReport) {
    println!(
        "migrated {} to {} as {}: {} ({})",
        r.container_id, r.destination, r.destination_id, r.strategy, r.why
    );
    for x in &r.rounds {
        println!(
            "  round {}: {} pages, {}, {:.0} ms",
            x.round,
            x.pages_written,
            human(x.pages_written * 4096),
            x.criu_request_ms
        );
    }
    let frozen = r
        .frozen_time_ms
        .map(|f| format!("CRIU frozen {f:.0} ms; "))
        .unwrap_or_default();
    println!(
        "  downtime {:.0} ms ({frozen}final dump {:.0} ms, images {:.0} ms, restore {:.0} ms)",
        r.downtime_ms, r.final_dump_ms, r.images_transfer_ms, r.restore_ms
    );
    if r.final_pages_lazy > 0 {
        println!(
            "  post-copy: {} pages ({}) fetched by the destination after it started",
            r.final_pages_lazy,
            human(r.final_pages_lazy * 4096)
        );
    }
    println!(
        "  sent: pages {}, images {}, rootfs {}; total {:.0} ms",
        human(r.page_bytes),
        human(r.images_bytes),
        human(r.rootfs_bytes),
        r.total_ms
    );
}

#[allow(clippy::too_many_arguments)]
fn run(
    args: &MigrateArgs,
    ctx: &Ctx,
    tls: &Tls,
    timeout: Duration,
    work: &Path,
    config: &str,
    tree: Option<(&'static str, std::path::PathBuf)>,
    ws: u64,
    pid: i32,
    progress: &Progress,
    ids: Ids,
) -> Result<MigrationReport> {
    let id = &ids.id.to_string();
    let dest_id = ids.dest_id;
    progress.say(format!("connecting to {}", args.destination()));
    let mut w = Wire::connect(args.destination(), tls, timeout)?;
    let mine = super::abilities(ctx, &work.join("probe"))?;
    let criu: CriuWire = args.criu.clone();
    w.send(&Msg::Hello {
        version: VERSION,
        id: dest_id.to_string(),
        config: config.to_string(),
        bundle: args.dest_bundle.as_ref().map(|p| p.display().to_string()),
        netns: args.dest_netns.as_ref().map(|p| p.display().to_string()),
        criu: criu.clone(),
        abilities: mine.clone(),
        docker: ids.docker.map(Box::new),
        memory: ws,
    })?;
    let Msg::Welcome { abilities: theirs } = w.expect("welcome")? else {
        unreachable!()
    };
    let (strategy, why) = match ids.strategy {
        Some(fixed) => fixed,
        None => choose(args.strategy, &mine, &theirs, ws)?,
    };
    progress.line(format!("strategy: {} ({why})", strategy.name()));
    w.send(&Msg::Plan {
        strategy,
        why: why.clone(),
    })?;
    let mut report = MigrationReport {
        container_id: id.clone(),
        destination: args.destination().to_string(),
        destination_id: dest_id.to_string(),
        strategy: strategy.name(),
        why,
        working_set_bytes: ws,
        source: mine,
        target: theirs,
        rounds: Vec::new(),
        pre_copy_stopped: None,
        final_pages_written: 0,
        final_pages_lazy: 0,
        frozen_time_ms: None,
        downtime_ms: 0.0,
        final_dump_ms: 0.0,
        images_transfer_ms: 0.0,
        restore_ms: 0.0,
        rootfs_bytes: 0,
        images_bytes: 0,
        page_bytes: 0,
        total_ms: 0.0,
    };
    // The rootfs (or writable layer) in two passes: all of it while the
    // container runs, then, frozen, what changed since (ctime) and what
    // was deleted.
    let second_pass = match tree {
        Some((what, dir)) => {
            progress.say(format!("sending the {what} {}", dir.display()));
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64 - 1)
                .unwrap_or(0);
            report.rootfs_bytes = w.send_tar(what, &dir)?;
            Some(RootfsDelta { what, dir, since })
        }
        None => None,
    };
    let images = work.join("images");
    let opts = CheckpointOptions {
        id: id.clone(),
        image_path: images.clone(),
        work_path: work.join("work"),
        parent_path: None,
        leave_running: false,
        pre_dump: false,
        tcp_skip_in_flight: false,
        link_remap: false,
        page_server: None,
        status_fd: None,
        rounds: (strategy == Strategy::PreCopy).then_some(Rounds {
            max: args.max_rounds.unwrap_or(DEFAULT_MAX_ROUNDS),
            until_converged: true,
        }),
        lazy_confirm: false,
        keep_frozen: true,
        dump_netns: false,
        common: CriuCommon {
            tls: Some(tls.clone()),
            ..CriuCommon::from_state(&args.criu)?
        },
    };
    let addr = w.peer_ip()?.to_string();
    let tcp = args.criu.tcp_established.then_some(pid);
    if strategy == Strategy::PostCopy {
        post_copy(opts, ctx, w, progress, second_pass, tcp, &mut report)?;
    } else {
        stop_and_copy(
            opts,
            ctx,
            &mut w,
            addr,
            progress,
            second_pass,
            tcp,
            &mut report,
        )?;
    }
    Ok(report)
}

/// The rootfs's second pass, sent while the container is frozen.
struct RootfsDelta {
    what: &'static str,
    dir: std::path::PathBuf,
    since: i64,
}

impl RootfsDelta {
    fn send(&self, w: &mut Wire) -> Result<u64> {
        let keep = super::wire::list_tree(&self.dir)?;
        let n = w.send_tar_since(self.what, &self.dir, Some(self.since))?;
        w.send(&Msg::Prune {
            what: self.what.into(),
            keep,
        })?;
        Ok(n)
    }
}

fn fill_dump(report: &mut MigrationReport, d: Option<&stats::Report>) {
    let Some(d) = d else {
        return;
    };
    if let stats::CriuStats::Dump(s) = &d.criu {
        report.final_pages_written = s.pages_written;
        report.final_pages_lazy = s.pages_lazy;
        report.frozen_time_ms = Some(s.frozen_time_us as f64 / 1e3);
    }
    report.final_dump_ms = d.criu_request_ms;
    report.rounds = d.rounds.clone();
    report.pre_copy_stopped = d.pre_copy_stopped.clone();
    report.page_bytes = (report.final_pages_written
        + report.rounds.iter().map(|r| r.pages_written).sum::<u64>())
        * 4096;
}

/// Stop-and-copy and pre-copy: pages to the destination's page servers;
/// the container kept frozen here until the destination has restored it.
fn stop_and_copy(
    opts: CheckpointOptions,
    ctx: &Ctx,
    w: &mut Wire,
    addr: String,
    progress: &Progress,
    delta: Option<RootfsDelta>,
    tcp: Option<i32>,
    report: &mut MigrationReport,
) -> Result<()> {
    let images = opts.image_path.clone();
    let mut hooks = ToDest {
        wire: Some(w),
        addr,
        progress,
        last_round: None,
        freeze: None,
        netblock: tcp.map(NetBlock::new),
    };
    let dumped = checkpoint::dump(opts, false, ctx, &mut hooks);
    let mut netblock = hooks.netblock.take();
    let dumped = dumped.inspect_err(|_| {
        if let Some(b) = &mut netblock {
            b.lift();
        }
    });
    let dumped = dumped.context("the container keeps running on the source")?;
    let freeze = hooks.freeze.unwrap_or_else(Instant::now);
    fill_dump(report, dumped.report.as_ref());
    let mut kept = dumped.kept.context("the dump did not keep the container")?;
    let res = (|| -> Result<f64> {
        progress.say("sending CRIU's images".into());
        let t = Instant::now();
        if let Some(d) = &delta {
            report.rootfs_bytes += d.send(w)?;
        }
        report.images_bytes = w.send_tar("images", &images)?;
        report.images_transfer_ms = ms(t.elapsed());
        progress.say("restoring on the destination".into());
        w.send(&Msg::Restore { lazy: None })?;
        let Msg::Restored { restore_ms, .. } = w.expect("restored")? else {
            unreachable!()
        };
        Ok(restore_ms)
    })();
    let restore_ms = match res {
        Ok(r) => r,
        Err(e) => {
            if let Some(b) = &mut netblock {
                b.lift();
            }
            let thawed = kept.thaw();
            return Err(e.context(match thawed {
                Ok(()) => "the container was thawed and keeps running on the source".to_string(),
                Err(t) => format!("and thawing the container on the source failed too: {t:#}"),
            }));
        }
    };
    report.restore_ms = restore_ms;
    // The point of no return: from here the source copy is never thawed
    // by us or the janitor (the destination may already run it).
    kept.no_return();
    w.send(&Msg::Commit).and_then(|_| w.expect("committed")).map_err(|e| {
        e.context(format!(
            "the destination did not confirm that it runs the container: the copy on the source is left frozen (not running, not lost). \
             If `cntrlive-runtime state {}` on the destination shows it running, `delete --force` it here; otherwise `resume` it here",
            report.destination_id
        ))
    })?;
    report.downtime_ms = ms(freeze.elapsed());
    kept.kill()?;
    Ok(())
}

/// Post-copy: the source serves the pages (CRIU's page server, TLS); the
/// destination restores at once and fetches them; the source's copy,
/// frozen, ends when the destination's supervisor confirms every page
/// arrived (criu::lazy), or thaws if it says it failed.
fn post_copy(
    mut opts: CheckpointOptions,
    ctx: &Ctx,
    mut w: Wire,
    progress: &Progress,
    delta: Option<RootfsDelta>,
    tcp: Option<i32>,
    report: &mut MigrationReport,
) -> Result<()> {
    let addr = w.local_ip()?.to_string();
    let port = free_port(&addr)?;
    let at = format!("{addr}:{port}");
    let (ready_r, ready_w) = nix::unistd::pipe()?;
    opts.common.lazy_pages = true;
    opts.lazy_confirm = true;
    opts.keep_frozen = false;
    opts.page_server = Some(PageServer {
        address: addr.clone(),
        port,
    });
    opts.status_fd = Some(ready_w.as_raw_fd());
    let images = opts.image_path.clone();
    let images_dir = images.clone();
    #[allow(clippy::type_complexity)]
    let helper = std::thread::spawn(move || -> (Wire, Result<(f64, f64, u64, u64, Instant)>) {
        let r = (|| {
            let mut b = [0u8; 1];
            let mut f = std::fs::File::from(ready_r);
            if f.read(&mut b)? != 1 {
                bail!("the lazy dump ended before its page server was ready");
            }
            let t = Instant::now();
            let bytes = w.send_tar("images", &images)?;
            let delta_bytes = match &delta {
                Some(d) => d.send(&mut w)?,
                None => 0,
            };
            let images_ms = ms(t.elapsed());
            w.send(&Msg::Restore {
                lazy: Some(at.clone()),
            })?;
            let Msg::Restored { restore_ms, .. } = w.expect("restored")? else {
                unreachable!()
            };
            Ok((images_ms, restore_ms, bytes, delta_bytes, Instant::now()))
        })();
        if r.is_err() {
            // The dump waits for a destination that will not come: cancel
            // it (the container is thawed on the way out).
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM);
        }
        (w, r)
    });
    let mut hooks = ToDest {
        wire: None,
        addr: addr.clone(),
        progress,
        last_round: None,
        freeze: None,
        netblock: tcp.map(NetBlock::new),
    };
    let dumped = checkpoint::dump(opts, false, ctx, &mut hooks);
    let freeze = hooks.freeze;
    if dumped.is_err() {
        // Thawed by the dump: its network too.
        if let Some(b) = &mut hooks.netblock {
            b.lift();
        }
    }
    // The helper waits for readiness: a dump that failed before never
    // gives it; closing our end ends its wait.
    drop(ready_w);
    let (mut w, helped) = helper
        .join()
        .map_err(|_| anyhow::anyhow!("migration helper thread panicked"))?;
    let (images_ms, restore_ms, bytes, delta_bytes, restored_at) = match helped {
        Err(e) => {
            let why = match dumped {
                Err(d) => format!("{e:#}; {d:#}"),
                Ok(_) => format!("{e:#}"),
            };
            bail!("{why}");
        }
        Ok(h) => h,
    };
    let dumped = dumped.context("post-copy did not complete; the source copy was thawed and keeps running (the destination's copy was killed)")?;
    fill_dump(report, dumped.report.as_ref());
    report.images_transfer_ms = images_ms;
    report.images_bytes = bytes;
    report.rootfs_bytes += delta_bytes;
    report.restore_ms = restore_ms;
    report.frozen_time_ms = None;
    report.final_pages_lazy = stats::lazy_pages_in(&images_dir);
    report.page_bytes = report.final_pages_lazy * 4096;
    // Post-copy's downtime ends when the destination runs it, long before
    // the last page has arrived.
    report.downtime_ms = freeze
        .map(|f| ms(restored_at.saturating_duration_since(f)))
        .unwrap_or(0.0);
    let _ = w.send(&Msg::Commit);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ab(mem_track: bool, lazy_pages: bool) -> Abilities {
        Abilities {
            criu_version: "4.2.1".into(),
            kernel: "6.18".into(),
            mem_track,
            lazy_pages,
        }
    }

    #[test]
    fn auto_small_working_set_is_stop_and_copy_ok() {
        let (s, why) = choose(Strategy::Auto, &ab(true, true), &ab(true, true), 10 << 20).unwrap();
        assert_eq!(s, Strategy::StopAndCopy);
        assert!(why.contains("working set 10 MiB"), "{why}");
    }

    #[test]
    fn auto_prefers_pre_copy_then_post_copy_ok() {
        let big = 512 << 20;
        let (s, _) = choose(Strategy::Auto, &ab(true, true), &ab(false, true), big).unwrap();
        assert_eq!(s, Strategy::PreCopy);
        let (s, why) = choose(Strategy::Auto, &ab(false, true), &ab(false, true), big).unwrap();
        assert_eq!(s, Strategy::PostCopy);
        assert!(why.contains("CONFIG_MEM_SOFT_DIRTY"), "{why}");
        let (s, why) = choose(Strategy::Auto, &ab(false, true), &ab(false, false), big).unwrap();
        assert_eq!(s, Strategy::StopAndCopy);
        assert!(why.contains("the destination lacks"), "{why}");
    }

    #[test]
    fn impossible_strategy_ng() {
        let e = choose(
            Strategy::PreCopy,
            &ab(false, true),
            &ab(true, true),
            1 << 30,
        )
        .unwrap_err();
        assert!(e.to_string().contains("CONFIG_MEM_SOFT_DIRTY"));
        let e = choose(
            Strategy::PostCopy,
            &ab(true, false),
            &ab(true, true),
            1 << 30,
        )
        .unwrap_err();
        assert!(e.to_string().contains("the source lacks"));
    }
}
