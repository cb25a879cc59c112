//! Batch checkpoint, restore and migrate (docs/batch.md): many containers, a bounded
//! number at once, one progress display, one report.
//!
//! Each container is handled by a child command of ours (`checkpoint` or
//! `restore -d`), so one container's failure — even a crash — never touches
//! another's, and each child takes that container's lock (src/lock.rs).
//! The batch directory `IMAGE_PATH` holds one image directory per container
//! and `batch.json` (each container's bundle), which the batch restore
//! reads. A re-run resumes: a checkpoint already complete for a container
//! that is gone is skipped; a container already restored is skipped.
//!
//! Admission (restore): before a container is started, the memory it needs
//! is estimated from its images (the bytes of its `pages-*.img`, plus a
//! fixed allowance for its kernel state) and compared with what the host
//! can give — MemAvailable less `--memory-reserve`, less what restores in
//! flight will take — with `--memory-budget` if given, and with the
//! container's own memory limit. When it does not fit, the batch stops
//! starting containers (or waits, `--wait-for-memory`) and says why.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::checkpoint::options::CriuCommon;
use crate::cli::{CheckpointArgs, MigrateArgs, RestoreArgs};
use crate::commands::checkpoint::make_dir;
use crate::commands::Ctx;
use libcontainer::container::ContainerStatus;

/// Kernel state, page tables, CRIU's own needs: added to the pages.
pub const PER_CONTAINER_ALLOWANCE: u64 = 4 << 20;
const INDEX: &str = "batch.json";

/// `IMAGE_PATH/batch.json`: what a batch restore needs besides the images.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    /// ID → its bundle at checkpoint time.
    containers: BTreeMap<String, PathBuf>,
}

impl Index {
    fn load(dir: &Path) -> Result<Index> {
        match std::fs::read(dir.join(INDEX)) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is damaged", dir.join(INDEX).display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.join(INDEX).display())),
        }
    }
    fn save(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join(format!(".{INDEX}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, dir.join(INDEX))?;
        Ok(())
    }
}

/// One container's outcome.
#[derive(Debug, Serialize, Clone)]
pub struct Item {
    pub id: String,
    /// ok, failed, skipped (done by an earlier run), not-started (the batch
    /// stopped before it: admission).
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub wall_ms: f64,
    /// CRIU's frozen time (checkpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frozen_ms: Option<f64>,
    /// Image bytes (checkpoint: written; restore: read; migrate: sent —
    /// pages, images and rootfs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_bytes: Option<u64>,
    /// Restore: the admission estimate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_estimate: Option<u64>,
}

impl Item {
    fn new(id: &str, result: &'static str, reason: Option<String>) -> Item {
        Item {
            id: id.to_string(),
            result,
            reason,
            wall_ms: 0.0,
            frozen_ms: None,
            image_bytes: None,
            memory_estimate: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct BatchReport {
    pub operation: &'static str,
    pub image_path: PathBuf,
    pub parallel: u32,
    pub total: usize,
    pub ok: usize,
    pub failed: usize,
    pub skipped: usize,
    pub not_started: usize,
    pub wall_ms: f64,
    /// Containers done (ok) per second of wall time.
    pub containers_per_s: f64,
    /// Peak resident memory of this batch process (KiB).
    pub runtime_peak_rss_kib: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    pub containers: Vec<Item>,
}

/// A child command for one container.
struct Job {
    id: String,
    cmd: Command,
    /// Restore: the memory estimate (admission).
    need: u64,
    /// Restore: the child's stdio is the container's, through a log relay.
    relay: Option<Relay>,
}

/// A restore's container log and the file for its own messages.
struct Relay {
    log: PathBuf,
    errors: PathBuf,
}

struct Done {
    id: String,
    ok: bool,
    /// The child's exit status (None: killed by a signal).
    code: Option<i32>,
    out: String,
    err: String,
    wall_ms: f64,
    need: u64,
}

fn read_all(mut f: std::fs::File) -> String {
    let mut s = String::new();
    let _ = f.seek(std::io::SeekFrom::Start(0));
    let _ = f.read_to_string(&mut s);
    s
}

/// The last error line a child printed (its log line's msg if logrus-like).
fn reason(err: &str) -> String {
    let line = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    match line.find("msg=\"") {
        Some(i) => line[i + 5..]
            .trim_end_matches('"')
            .replace("\\\"", "\"")
            .to_string(),
        None => line.trim().to_string(),
    }
}

fn spawn(job: Job, tx: mpsc::Sender<Done>) -> Result<()> {
    let Job {
        id,
        mut cmd,
        need,
        relay,
    } = job;
    // Output to files: a restored container inherits what it is given.
    let out = tempfile::tempfile()?;
    let err = tempfile::tempfile()?;
    let started = Instant::now();
    let mut child = match &relay {
        Some(r) => crate::commands::relay::spawn_restore(cmd, &r.log, &r.errors)?,
        None => cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(err.try_clone()?)
            .spawn()
            .context("cannot start a child command")?,
    };
    std::thread::spawn(move || {
        let status = child.wait().ok();
        let ok = status.is_some_and(|s| s.success());
        let code = status.and_then(|s| s.code());
        let err = match &relay {
            Some(r) => std::fs::read_to_string(&r.errors).unwrap_or_default(),
            None => read_all(err),
        };
        let _ = tx.send(Done {
            id,
            ok,
            code,
            out: read_all(out),
            err,
            wall_ms: started.elapsed().as_secs_f64() * 1e3,
            need,
        });
    });
    Ok(())
}

/// Admission: may a container needing `need` bytes start now?
pub struct Admission {
    pub budget: Option<u64>,
    pub reserve: u64,
    pub wait: Option<Duration>,
    /// Restored by this run (their estimates count against the budget).
    pub used: u64,
}

impl Admission {
    fn from_flags(f: &crate::cli::AdmissionFlags) -> Result<Admission> {
        let wait = f
            .wait_for_memory
            .as_deref()
            .map(|w| {
                humantime::parse_duration(w).with_context(|| {
                    format!("invalid --wait-for-memory {w:?}: use a duration such as 30s or 5m")
                })
            })
            .transpose()?;
        Ok(Admission {
            budget: f.memory_budget,
            reserve: f.memory_reserve,
            wait,
            used: 0,
        })
    }

    fn available() -> u64 {
        <procfs::Meminfo as procfs::Current>::current()
            .ok()
            .and_then(|m| m.mem_available)
            .unwrap_or(0)
    }

    /// None: fits; Some(why) otherwise.
    pub fn check(&self, need: u64, in_flight: u64) -> Option<String> {
        let mib = |b: u64| b >> 20;
        if let Some(b) = self.budget {
            if self.used + in_flight + need > b {
                return Some(format!(
                    "needs ~{} MiB, and the --memory-budget of {} MiB has {} MiB left",
                    mib(need),
                    mib(b),
                    mib(b.saturating_sub(self.used + in_flight))
                ));
            }
        }
        let free = Self::available()
            .saturating_sub(self.reserve)
            .saturating_sub(in_flight);
        if need > free {
            return Some(format!(
                "needs ~{} MiB; the host has {} MiB available beyond the {} MiB reserve (MemAvailable)",
                mib(need),
                mib(free),
                mib(self.reserve)
            ));
        }
        None
    }
}

/// Run the jobs, `parallel` at once, admission before each start.
fn run_jobs(
    jobs: Vec<Job>,
    parallel: u32,
    mut admission: Option<Admission>,
    progress: &Option<indicatif::ProgressBar>,
) -> Result<(Vec<Done>, Vec<String>, Option<String>)> {
    let (tx, rx) = mpsc::channel();
    let mut pending = jobs.into_iter().peekable();
    let mut running = 0u32;
    let mut in_flight = 0u64;
    let mut done = Vec::new();
    let mut stopped = None;
    let mut waiting_since: Option<Instant> = None;
    loop {
        while stopped.is_none() && running < parallel {
            let Some(job) = pending.peek() else { break };
            if let Some(a) = &admission {
                if let Some(why) = a.check(job.need, in_flight) {
                    let waited = waiting_since.get_or_insert_with(Instant::now).elapsed();
                    match a.wait {
                        Some(w) if waited < w || running > 0 => {
                            if let Some(p) = progress {
                                p.set_message(format!("waiting for memory: {} {why}", job.id));
                            }
                            break;
                        }
                        _ => {
                            if running > 0 {
                                // Restores in flight may change the picture.
                                break;
                            }
                            stopped = Some(format!(
                                "stopped before \"{}\": it {why}; the containers before it are restored and running — free memory (or raise the budget) and run the same command again to resume",
                                job.id
                            ));
                            break;
                        }
                    }
                }
            }
            waiting_since = None;
            let job = pending.next().unwrap();
            in_flight += job.need;
            running += 1;
            if let Some(p) = progress {
                p.set_message(job.id.clone());
            }
            spawn(job, tx.clone())?;
        }
        if running == 0 {
            if stopped.is_some() || pending.peek().is_none() {
                break;
            }
            // Waiting for memory with nothing in flight: poll.
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        let d = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(d) => d,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(e) => bail!("batch: {e}"),
        };
        running -= 1;
        in_flight -= d.need;
        if let Some(a) = &mut admission {
            if d.ok {
                a.used += d.need;
            }
        }
        if d.code == Some(crate::migrate::wire::NoRoom::EXIT.into()) && stopped.is_none() {
            // The destination's admission control: nothing more is sent.
            stopped = Some(format!(
                "stopped at \"{}\": {}; the containers before it are migrated — free memory on the destination (or raise its --memory-budget) and run the same command again to resume",
                d.id,
                reason(&d.err)
            ));
        }
        if let Some(p) = progress {
            p.inc(1);
            if !d.ok {
                p.println(format!("{}: failed: {}", d.id, reason(&d.err)));
            }
        }
        done.push(d);
    }
    let not_started = pending.map(|j| j.id).collect();
    Ok((done, not_started, stopped))
}

fn progress_bar(n: usize, json: bool) -> Option<indicatif::ProgressBar> {
    (!json && std::io::stderr().is_terminal()).then(|| {
        let p = indicatif::ProgressBar::new(n as u64);
        p.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        p
    })
}

fn peak_rss_kib() -> u64 {
    procfs::process::Process::myself()
        .ok()
        .and_then(|p| p.status().ok())
        .and_then(|s| s.vmhwm)
        .unwrap_or(0)
}

/// Run the jobs (progress bar on a terminal), then report on them and on
/// the `items` settled before (skipped, failed early). Exit status 1 if
/// any failed or was not started.
#[allow(clippy::too_many_arguments)]
fn run_batch(
    operation: &'static str,
    dir: &Path,
    flags: &crate::cli::BatchFlags,
    started: Instant,
    mut items: Vec<Item>,
    jobs: Vec<Job>,
    admission: Option<Admission>,
    extra: impl Fn(&Done, &mut Item),
) -> Result<i32> {
    let (parallel, json) = (flags.parallel, flags.json);
    let progress = progress_bar(jobs.len(), json);
    let (done, not_started, stopped) = run_jobs(jobs, parallel, admission, &progress)?;
    if let Some(p) = &progress {
        p.finish_and_clear();
    }
    for d in &done {
        let mut it = Item::new(
            &d.id,
            if d.ok { "ok" } else { "failed" },
            (!d.ok).then(|| reason(&d.err)),
        );
        it.wall_ms = d.wall_ms;
        extra(d, &mut it);
        items.push(it);
    }
    items.extend(
        not_started
            .iter()
            .map(|id| Item::new(id, "not-started", stopped.clone())),
    );
    let wall = started.elapsed().as_secs_f64();
    let count = |r: &str| items.iter().filter(|i| i.result == r).count();
    let ok = count("ok");
    let report = BatchReport {
        operation,
        image_path: dir.to_path_buf(),
        parallel,
        total: items.len(),
        ok,
        failed: count("failed"),
        skipped: count("skipped"),
        not_started: count("not-started"),
        wall_ms: wall * 1e3,
        containers_per_s: ok as f64 / wall.max(1e-6),
        runtime_peak_rss_kib: peak_rss_kib(),
        stopped,
        containers: items,
    };
    let text = serde_json::to_string_pretty(&report)?;
    let _ = std::fs::write(dir.join(format!("{operation}-report.json")), &text);
    if json {
        println!("{text}");
    } else {
        for i in report.containers.iter().filter(|i| i.result != "ok") {
            println!(
                "{}: {}{}",
                i.id,
                i.result,
                i.reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
        }
        println!(
            "{operation}: {} ok, {} failed, {} skipped, {} not started of {} in {:.1} s ({:.1} containers/s, {} at once)",
            report.ok,
            report.failed,
            report.skipped,
            report.not_started,
            report.total,
            wall,
            report.containers_per_s,
            parallel
        );
        if let Some(s) = &report.stopped {
            println!("{s}");
        }
    }
    Ok(if report.failed > 0 || report.not_started > 0 {
        1
    } else {
        0
    })
}

fn batch_dir(p: Option<&Path>) -> Result<PathBuf> {
    let d = p
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("checkpoint"));
    Ok(if d.is_absolute() {
        d
    } else {
        std::env::current_dir()?.join(d)
    })
}

/// A checkpoint that completed (not a pre-dump, not half-written).
fn complete(images: &Path) -> bool {
    images.join(crate::checkpoint::images::INVENTORY).is_file()
}

/// `checkpoint --all | ID ID…`: each into IMAGE_PATH/ID.
pub fn checkpoint(args: CheckpointArgs, ctx: &Ctx) -> Result<i32> {
    if let Some(h) = &args.target.batch.docker_host {
        return docker_checkpoint(&args, ctx, h);
    }
    let started = Instant::now();
    let dir = batch_dir(args.image_path.as_deref())?;
    if args.work_path.is_some() || args.parent_path.is_some() || args.pre_dump {
        bail!("a batch checkpoint takes no --work-path, --parent-path or --pre-dump (each container's work is in IMAGE_PATH/ID)");
    }
    make_dir(&dir, "batch directory")?;
    let ids: Vec<String> = if args.target.batch.all {
        ctx.store.ids()?
    } else {
        args.target.listed()
    };
    let mut index = Index::load(&dir)?;
    let mut items = Vec::new();
    let mut jobs = Vec::new();
    for id in ids {
        let c = match ctx.store.load(&id) {
            Ok(c) => c,
            Err(_) if complete(&dir.join(&id)) && index.containers.contains_key(&id) => {
                items.push(Item::new(
                    &id,
                    "skipped",
                    Some("checkpointed by an earlier run".into()),
                ));
                continue;
            }
            Err(e) => {
                items.push(Item::new(&id, "failed", Some(format!("{e}"))));
                continue;
            }
        };
        if args.target.batch.all
            && !matches!(
                c.status(),
                ContainerStatus::Running | ContainerStatus::Paused
            )
        {
            continue;
        }
        index
            .containers
            .insert(id.clone(), c.bundle().to_path_buf());
        let mut cmd = ctx.command()?;
        cmd.arg("checkpoint")
            .arg("--image-path")
            .arg(dir.join(&id))
            .args(CriuCommon::state_args(&args.criu.state));
        if args.leave_running {
            cmd.arg("--leave-running");
        }
        if args.criu.auto_dedup {
            cmd.arg("--auto-dedup");
        }
        for ns in &args.criu.empty_ns {
            cmd.arg("--empty-ns").arg(ns);
        }
        cmd.arg(&id);
        jobs.push(Job {
            id,
            cmd,
            need: 0,
            relay: None,
        });
    }
    index.save(&dir)?;
    let images: BTreeMap<String, PathBuf> = jobs
        .iter()
        .map(|j| (j.id.clone(), dir.join(&j.id)))
        .collect();
    run_checkpoints(&dir, &args.target.batch, started, items, jobs, images)
}

/// Run a batch of checkpoints (ours or dockerd's); `images`: where each
/// container's images go (their stats are read there).
fn run_checkpoints(
    dir: &Path,
    flags: &crate::cli::BatchFlags,
    started: Instant,
    items: Vec<Item>,
    jobs: Vec<Job>,
    images: BTreeMap<String, PathBuf>,
) -> Result<i32> {
    run_batch(
        "checkpoint",
        dir,
        flags,
        started,
        items,
        jobs,
        None,
        |d, it| {
            if let Some(cp) = images.get(&d.id) {
                checkpoint_stats(cp, it)
            }
        },
    )
}

/// What our checkpoint left beside the images (criu::stats::Report,
/// `cntrlive-stats.json`): CRIU's frozen time and the image bytes.
fn checkpoint_stats(images: &Path, it: &mut Item) {
    let Some(v) = std::fs::read(images.join(crate::criu::stats::STATS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return;
    };
    it.frozen_ms = v
        .pointer("/criu/dump/frozen_time_us")
        .and_then(|x| x.as_u64())
        .map(|u| u as f64 / 1e3);
    it.image_bytes = v.pointer("/image_bytes").and_then(|x| x.as_u64());
}

/// Memory a restore from `images` will need (admission's estimate).
pub fn memory_estimate(images: &Path) -> u64 {
    let pages: u64 = std::fs::read_dir(images)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("pages-") && n.ends_with(".img")
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    pages + PER_CONTAINER_ALLOWANCE
}

/// The container's own memory limit (config.json), if any.
fn memory_limit(bundle: &Path) -> Option<u64> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).ok()?).ok()?;
    v.pointer("/linux/resources/memory/limit")
        .and_then(|x| x.as_i64())
        .filter(|l| *l > 0)
        .map(|l| l as u64)
}

/// `restore --all | ID ID… --image-path BATCH_DIR`.
pub fn restore(args: RestoreArgs, ctx: &Ctx) -> Result<i32> {
    if let Some(h) = &args.target.batch.docker_host {
        return docker_restore(&args, ctx, h);
    }
    let started = Instant::now();
    let dir = batch_dir(args.image_path.as_deref())?;
    let index = Index::load(&dir)?;
    if index.containers.is_empty() {
        bail!(
            "{} has no {INDEX}: a batch restore reads the directory a batch checkpoint wrote",
            dir.display()
        );
    }
    let ids: Vec<String> = if args.target.batch.all {
        index.containers.keys().cloned().collect()
    } else {
        args.target.listed()
    };
    let admission = Admission::from_flags(&args.admission)?;
    ctx.ensure_root()?;
    let mut items = Vec::new();
    let mut jobs = Vec::new();
    let item = |id: &str, result: &'static str, reason: String| Item::new(id, result, Some(reason));
    for id in ids {
        let images = dir.join(&id);
        let Some(bundle) = index.containers.get(&id) else {
            items.push(item(
                &id,
                "failed",
                format!("not in {}", dir.join(INDEX).display()),
            ));
            continue;
        };
        if let Ok(c) = ctx.store.load(&id) {
            // Restored by an earlier run (same bundle), or a clash.
            if c.bundle() == bundle.as_path() {
                items.push(item(&id, "skipped", "restored by an earlier run".into()));
            } else {
                items.push(item(&id, "failed", format!(
                    "the ID is in use by another container (bundle {}): delete it or restore this one by hand with another ID",
                    c.bundle().display()
                )));
            }
            continue;
        }
        if !complete(&images) {
            items.push(item(
                &id,
                "failed",
                format!("{} holds no complete checkpoint", images.display()),
            ));
            continue;
        }
        let need = memory_estimate(&images);
        if let Some(why) = over_limit(need, memory_limit(bundle), "linux.resources.memory.limit") {
            items.push(item(&id, "failed", why));
            continue;
        }
        let mut cmd = ctx.command()?;
        cmd.arg("restore")
            .arg("--detach")
            .arg("--image-path")
            .arg(&images)
            .arg("--work-path")
            .arg(images.join("restore-work"))
            .arg("--bundle")
            .arg(bundle)
            .arg("--stdio-fds")
            .arg("10,11,12")
            .args(CriuCommon::state_args(&args.criu.state))
            .arg(&id);
        jobs.push(Job {
            id,
            cmd,
            need,
            relay: Some(Relay {
                log: images.join("container.log"),
                errors: images.join("restore.err"),
            }),
        });
    }
    run_restores(&dir, &args.target.batch, started, items, jobs, admission)
}

/// Run a batch of restores (ours or dockerd's), admission before each.
fn run_restores(
    dir: &Path,
    flags: &crate::cli::BatchFlags,
    started: Instant,
    items: Vec<Item>,
    jobs: Vec<Job>,
    admission: Admission,
) -> Result<i32> {
    run_batch(
        "restore",
        dir,
        flags,
        started,
        items,
        jobs,
        Some(admission),
        |d, it| {
            it.memory_estimate = Some(d.need);
            it.image_bytes = Some(d.need - PER_CONTAINER_ALLOWANCE);
        },
    )
}

/// A container that cannot fit its own memory limit (`what` names it).
fn over_limit(need: u64, limit: Option<u64>, what: &str) -> Option<String> {
    limit.filter(|l| need > *l).map(|l| {
        format!(
            "needs ~{} MiB, more than its own memory limit of {} MiB ({what})",
            need >> 20,
            l >> 20
        )
    })
}

/// `migrate --all | ID ID… DEST`: each container by a child `migrate
/// --json ID DEST`, `--parallel` at once. The destination's admission
/// control may refuse one for lack of memory (exit 3): nothing more is
/// started. The report is kept in `<root>/.migrate/migrate-report.json`;
/// a re-run skips the containers it names as migrated that are gone here.
pub fn migrate(args: MigrateArgs, ctx: &Ctx) -> Result<i32> {
    let started = Instant::now();
    if args.dest_id.is_some() || args.dest_bundle.is_some() || args.dest_netns.is_some() {
        bail!("a batch migration takes no --dest-id, --dest-bundle or --dest-netns (they name one container's place): migrate that container on its own, or rename them all with --dest-id-prefix");
    }
    let dir = ctx.store.root().join(".migrate");
    make_dir(&dir, "migration work directory")?;
    let before: Vec<String> = std::fs::read(dir.join("migrate-report.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("containers").cloned())
        .and_then(|c| c.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|c| c["result"] == "ok" || c["result"] == "skipped")
        .filter_map(|c| c["id"].as_str().map(String::from))
        .collect();
    let ids: Vec<String> = if args.all {
        ctx.store
            .ids()?
            .into_iter()
            .filter(|id| {
                ctx.store.load(id).is_ok_and(|c| {
                    matches!(
                        c.status(),
                        ContainerStatus::Running | ContainerStatus::Paused
                    )
                })
            })
            .collect()
    } else {
        args.ids().to_vec()
    };
    let docker = args.docker_host.is_some();
    let mut items = Vec::new();
    let mut jobs = Vec::new();
    for id in ids {
        if !docker && ctx.store.load(&id).is_err() && before.contains(&id) {
            items.push(Item::new(
                &id,
                "skipped",
                Some("migrated by an earlier run".into()),
            ));
            continue;
        }
        let mut cmd = ctx.command()?;
        cmd.arg("migrate")
            .arg("--json")
            .arg("--tls-dir")
            .arg(&args.tls_dir)
            .arg("--strategy")
            .arg(args.strategy.name())
            .args(CriuCommon::state_args(&args.criu));
        if let Some(n) = args.max_rounds {
            cmd.arg("--max-rounds").arg(n.to_string());
        }
        if let Some(p) = &args.dest_id_prefix {
            cmd.arg("--dest-id-prefix").arg(p);
        }
        if let Some(h) = &args.docker_host {
            cmd.arg("--docker-host").arg(h);
        }
        if let Some(d) = &args.docker_exec_root {
            cmd.arg("--docker-exec-root").arg(d);
        }
        cmd.arg(&id).arg(args.destination());
        jobs.push(Job {
            id,
            cmd,
            need: 0,
            relay: None,
        });
    }
    let flags = crate::cli::BatchFlags {
        all: args.all,
        parallel: args.parallel,
        json: args.json,
        docker_host: None,
        docker_exec_root: None,
    };
    run_batch(
        "migrate",
        &dir,
        &flags,
        started,
        items,
        jobs,
        None,
        |d, it| {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&d.out) {
                // `migrate --json` (migrate::source::MigrationReport).
                it.frozen_ms = v.pointer("/downtime_ms").and_then(|x| x.as_f64());
                it.image_bytes = ["/images_bytes", "/page_bytes", "/rootfs_bytes"]
                    .iter()
                    .map(|p| v.pointer(p).and_then(|x| x.as_u64()))
                    .sum();
            }
        },
    )
}

/// The checkpoint a batch through dockerd writes into each container's
/// own checkpoint store (`docker checkpoint ls`), and starts it from.
const DOCKER_CHECKPOINT: &str = "cntrlive-batch";

/// A batch through dockerd: its containers (`--all`: every one it has)
/// as (ID, name, running); a name it does not know is a failed item.
fn docker_targets(
    client: &crate::docker::Docker,
    target: &crate::cli::Targets,
    host: &str,
    items: &mut Vec<Item>,
) -> Result<Vec<(String, String, bool)>> {
    let all = client.containers()?;
    if target.batch.all {
        return Ok(all);
    }
    let mut out = Vec::new();
    for n in target.listed() {
        match all.iter().find(|c| c.1 == n || c.0.starts_with(&n)) {
            Some(c) => out.push(c.clone()),
            None => items.push(Item::new(
                &n,
                "failed",
                Some(format!("no container \"{n}\" at dockerd {host}")),
            )),
        }
    }
    Ok(out)
}

/// `checkpoint --docker-host URL --all | NAME…`: each running
/// cntrlive-runtime container of that dockerd checkpointed by dockerd
/// itself (`docker checkpoint create`, which calls us through containerd)
/// into its store as "cntrlive-batch". The report goes to IMAGE_PATH.
fn docker_checkpoint(args: &CheckpointArgs, ctx: &Ctx, host: &str) -> Result<i32> {
    let started = Instant::now();
    let dir = batch_dir(args.image_path.as_deref())?;
    if args.work_path.is_some() || args.parent_path.is_some() || args.pre_dump {
        bail!("a batch checkpoint takes no --work-path, --parent-path or --pre-dump");
    }
    make_dir(&dir, "batch directory")?;
    let client = crate::docker::Docker::connect(host)?;
    let exec_root = args.target.batch.docker_exec_root.as_deref();
    let listed = !args.target.batch.all;
    let mut items = Vec::new();
    let mut jobs = Vec::new();
    let mut dirs = BTreeMap::new();
    let containers = client.containers_dir()?;
    for (id, name, running) in docker_targets(&client, &args.target, host, &mut items)? {
        let cp = crate::docker::checkpoint_dir(&containers, &id, DOCKER_CHECKPOINT);
        if !running {
            if complete(&cp) {
                items.push(Item::new(
                    &name,
                    "skipped",
                    Some(format!(
                        "checkpointed by an earlier run ({DOCKER_CHECKPOINT})"
                    )),
                ));
            } else if listed {
                items.push(Item::new(&name, "failed", Some("not running".into())));
            }
            continue;
        }
        let ours = crate::docker::runtime_ctx(ctx, exec_root, &id)
            .and_then(|c| c.store.load(&id).map_err(anyhow::Error::from));
        if let Err(e) = ours {
            if listed {
                items.push(Item::new(
                    &name,
                    "failed",
                    Some(format!("not a cntrlive-runtime container ({e:#})")),
                ));
            }
            continue;
        }
        let mut cmd = ctx.command()?;
        cmd.args([
            "docker",
            "--docker-host",
            host,
            "checkpoint",
            &id,
            DOCKER_CHECKPOINT,
        ]);
        if args.leave_running {
            cmd.arg("--leave-running");
        }
        dirs.insert(name.clone(), cp);
        jobs.push(Job {
            id: name,
            cmd,
            need: 0,
            relay: None,
        });
    }
    run_checkpoints(&dir, &args.target.batch, started, items, jobs, dirs)
}

/// `restore --docker-host URL --all | NAME…`: each stopped container with
/// a complete "cntrlive-batch" checkpoint started from it by dockerd
/// (`docker start --checkpoint`), admission before each.
fn docker_restore(args: &RestoreArgs, ctx: &Ctx, host: &str) -> Result<i32> {
    let started = Instant::now();
    let dir = batch_dir(args.image_path.as_deref())?;
    make_dir(&dir, "batch directory")?;
    let admission = Admission::from_flags(&args.admission)?;
    let client = crate::docker::Docker::connect(host)?;
    let listed = !args.target.batch.all;
    let mut items = Vec::new();
    let mut jobs = Vec::new();
    let containers = client.containers_dir()?;
    for (id, name, running) in docker_targets(&client, &args.target, host, &mut items)? {
        let cp = crate::docker::checkpoint_dir(&containers, &id, DOCKER_CHECKPOINT);
        let has = complete(&cp);
        if running && (has || listed) {
            items.push(Item::new(
                &name,
                "skipped",
                Some("running (restored by an earlier run)".into()),
            ));
            continue;
        }
        if !has {
            if listed {
                items.push(Item::new(
                    &name,
                    "failed",
                    Some(format!(
                        "no complete checkpoint {DOCKER_CHECKPOINT} in {}",
                        cp.display()
                    )),
                ));
            }
            continue;
        }
        let need = memory_estimate(&cp);
        let limit = client
            .inspect(&id)?
            .and_then(|c| {
                c.create
                    .pointer("/HostConfig/Memory")
                    .and_then(|m| m.as_u64())
            })
            .filter(|l| *l > 0);
        if let Some(why) = over_limit(need, limit, "docker run --memory") {
            items.push(Item::new(&name, "failed", Some(why)));
            continue;
        }
        let mut cmd = ctx.command()?;
        cmd.args([
            "docker",
            "--docker-host",
            host,
            "start",
            &id,
            DOCKER_CHECKPOINT,
        ]);
        jobs.push(Job {
            id: name,
            cmd,
            need,
            relay: None,
        });
    }
    run_restores(&dir, &args.target.batch, started, items, jobs, admission)
}
