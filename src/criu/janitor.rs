//! A guard process for one CRIU operation.
//!
//! If the runtime is killed (SIGKILL included) while CRIU works, nothing in
//! the runtime can clean up. The janitor can: it is forked before CRIU,
//! lives in its own session, and holds the read end of a pipe. The runtime
//! tells it what to undo ("kill CRIU's group 123", "thaw this cgroup",
//! "invalidate these images"); at the end of the operation it says "done"
//! and the janitor exits doing nothing. If the pipe reaches EOF without
//! "done" — the runtime died or unwound without disarming — the janitor
//! does the undo itself: kills CRIU's process group first (so CRIU stops
//! touching the container), then thaws, kills half-restored trees and
//! removes the marker files. Cost: one fork and a few writes per operation.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, signal, SigHandler, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, pipe2, setsid, ForkResult, Pid};

/// One thing to undo if the operation is abandoned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// SIGKILL a process group (CRIU's).
    KillGroup(Pid),
    /// Write `value` into a cgroup freezer file (v1 `freezer.state` ←
    /// `THAWED`, v2 `cgroup.freeze` ← `0`).
    Thaw(PathBuf, String),
    /// SIGKILL a process (a half-restored container init).
    Kill(Pid),
    /// Remove a file (e.g. `inventory.img`, so half-written images never
    /// look complete).
    Remove(PathBuf),
    /// Detach a temporary mount (restore's CRIU root).
    Umount(PathBuf),
    /// Detach the cgroup yards a killed CRIU left under this work dir.
    UmountYards(PathBuf),
    /// Remove a directory if it is empty (restore's state dir; never
    /// recursive: CRIU's root, a bind mount of the rootfs, lives in it).
    RemoveDir(PathBuf),
    /// Kill what is left in a container's v1 cgroup (its path inside the
    /// hierarchies) and remove its directories. The directories are found
    /// only when the janitor acts, not on the operation's path.
    RemoveCgroups(PathBuf),
    /// Run a command and wait for it (e.g. our own `delete --force ID`).
    Run(Vec<String>),
}

impl Action {
    fn encode(&self) -> String {
        match self {
            Action::KillGroup(p) => format!("killpg {p}\n"),
            Action::Thaw(f, v) => format!("thaw {v} {}\n", f.display()),
            Action::Kill(p) => format!("kill {p}\n"),
            Action::Remove(f) => format!("rm {}\n", f.display()),
            Action::Umount(f) => format!("umount {}\n", f.display()),
            Action::UmountYards(d) => format!("yards {}\n", d.display()),
            Action::RemoveDir(d) => format!("rmdir {}\n", d.display()),
            Action::RemoveCgroups(d) => format!("rmcg {}\n", d.display()),
            Action::Run(argv) => {
                format!("run {}\n", serde_json::to_string(argv).unwrap_or_default())
            }
        }
    }

    fn decode(line: &str) -> Option<Action> {
        let (verb, rest) = line.split_once(' ')?;
        match verb {
            "killpg" => rest
                .parse()
                .ok()
                .map(|p| Action::KillGroup(Pid::from_raw(p))),
            "kill" => rest.parse().ok().map(|p| Action::Kill(Pid::from_raw(p))),
            "thaw" => {
                let (v, f) = rest.split_once(' ')?;
                Some(Action::Thaw(PathBuf::from(f), v.to_string()))
            }
            "rm" => Some(Action::Remove(PathBuf::from(rest))),
            "umount" => Some(Action::Umount(PathBuf::from(rest))),
            "yards" => Some(Action::UmountYards(PathBuf::from(rest))),
            "rmdir" => Some(Action::RemoveDir(PathBuf::from(rest))),
            "rmcg" => Some(Action::RemoveCgroups(PathBuf::from(rest))),
            "run" => serde_json::from_str(rest).ok().map(Action::Run),
            _ => None,
        }
    }

    fn run(&self) {
        match self {
            Action::KillGroup(p) => {
                let _ = killpg(*p, Signal::SIGKILL);
            }
            Action::Kill(p) => {
                let _ = kill(*p, Signal::SIGKILL);
            }
            Action::Thaw(f, v) => {
                let _ = std::fs::write(f, v);
            }
            Action::Remove(f) => {
                let _ = std::fs::remove_file(f);
            }
            Action::Umount(f) => {
                let _ = nix::mount::umount2(f.as_path(), nix::mount::MntFlags::MNT_DETACH);
                let _ = std::fs::remove_dir(f);
            }
            Action::UmountYards(d) => {
                umount_cgroup_yards(d);
            }
            Action::RemoveDir(d) => {
                let _ = std::fs::remove_dir(d);
            }
            Action::RemoveCgroups(path) => {
                for d in crate::checkpoint::spec::v1_cgroup_dirs(path).unwrap_or_default() {
                    let _ = remove_cgroup_dir(&d);
                }
            }
            Action::Run(argv) => {
                if let Some((exe, args)) = argv.split_first() {
                    let _ = std::process::Command::new(exe)
                        .args(args)
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .status();
                }
            }
        }
    }
}

/// Remove an empty (or emptying) cgroup directory: a task that was just
/// killed may still be exiting (EBUSY); any left is killed. Child cgroups
/// the container made go first, deepest first (runc's `RemovePath` does
/// the same). Gives up after ~1 s of EBUSY.
pub fn remove_cgroup_dir(dir: &Path) -> std::io::Result<()> {
    let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(256));
    let mut waited = Duration::ZERO;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && waited.as_millis() < 1024 => {
                for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                    if child.file_type().is_ok_and(|t| t.is_dir()) {
                        remove_cgroup_dir(&child.path())?;
                    }
                }
                for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse::<i32>().ok())
                {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                waited += backoff.sleep();
            }
            Err(e) => return Err(e),
        }
    }
}

pub struct Janitor {
    pid: Pid,
    pipe: Option<File>,
}

/// Close every inherited descriptor but `keep` and stdio (pointed at
/// /dev/null): a guard process must not hold the runtime's pipes open.
pub(crate) fn close_all_but(keep: &[i32]) {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        if !keep.contains(&fd) && fd > 2 {
            // SAFETY: closing descriptors inherited from the runtime.
            unsafe { libc::close(fd) };
        }
    }
    // stdio: never hold the container's (or the shim's) pipes open.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto stdio.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

fn child_main(read: OwnedFd) -> ! {
    let _ = setsid();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGPIPE,
    ] {
        // SAFETY: setting a signal disposition to ignore.
        let _ = unsafe { signal(s, SigHandler::SigIgn) };
    }
    close_all_but(&[read.as_raw_fd()]);
    let reader = BufReader::new(File::from(read));
    let mut actions = Vec::new();
    for line in reader.lines() {
        let Ok(line) = line else { break };
        if line == "done" {
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        if let Some(a) = Action::decode(&line) {
            actions.push(a);
        }
    }
    // EOF without "done": the operation was abandoned. Stop CRIU first.
    let (groups, rest): (Vec<_>, Vec<_>) = actions
        .into_iter()
        .partition(|a| matches!(a, Action::KillGroup(_)));
    for a in &groups {
        a.run();
    }
    if !groups.is_empty() {
        std::thread::sleep(Duration::from_millis(100));
    }
    for a in &rest {
        a.run();
    }
    // SAFETY: as above.
    unsafe { libc::_exit(0) }
}

impl Janitor {
    /// Fork the guard. Call before anything that must be undone starts.
    pub fn spawn() -> std::io::Result<Janitor> {
        let (read, write) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // SAFETY: the runtime is single-threaded here; the child only reads
        // a pipe, signals, writes files and _exits.
        match unsafe { fork() }? {
            ForkResult::Child => {
                drop(write);
                child_main(read)
            }
            ForkResult::Parent { child } => {
                drop(read);
                Ok(Janitor {
                    pid: child,
                    pipe: Some(File::from(write)),
                })
            }
        }
    }

    /// Add something to undo if the operation is abandoned.
    pub fn arm(&mut self, action: Action) {
        if let Some(p) = &mut self.pipe {
            if let Err(err) = p.write_all(action.encode().as_bytes()) {
                tracing::warn!(?err, ?action, "failed to tell the janitor");
            }
        }
    }

    /// The operation ended (well, or its failure was handled): nothing to undo.
    pub fn disarm(self) {
        drop(self.disarm_reap_later());
    }

    /// [`Janitor::disarm`], its exit reaped when the returned guard drops:
    /// the janitor (a forked copy of the runtime) takes a few hundred µs
    /// to exit, which can overlap the caller's last steps.
    pub fn disarm_reap_later(mut self) -> Reap {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(b"done\n");
        }
        Reap(self.pid)
    }

    /// Abandon now: the janitor runs every armed action, and is reaped.
    #[cfg(test)]
    pub fn abandon(mut self) {
        self.pipe.take();
        let _ = waitpid(self.pid, None);
    }
}

/// A disarmed janitor, reaped on drop.
#[must_use = "dropping it waits for the janitor's exit"]
pub struct Reap(Pid);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = waitpid(self.0, None);
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        if self.pipe.take().is_some() {
            let _ = waitpid(self.pid, None);
        }
    }
}

/// CRIU mounts every cgroup controller under `<work dir>/.criu.cgyard.XXX`
/// and unmounts them when it ends normally; a killed CRIU leaves them in the
/// host's mount table (found by the benchmark: a later `rm -r` of the work
/// dir then walks into live cgroup filesystems). Detach them, deepest first.
/// Returns how many were detached.
pub fn umount_cgroup_yards(work_dir: &Path) -> usize {
    // Only a yard CRIU did not remove needs the mount table (generating it
    // takes ~0.5 ms here, on every session's end otherwise).
    let yard_left = std::fs::read_dir(work_dir).is_ok_and(|d| {
        d.flatten().any(|e| {
            e.file_name()
                .as_encoded_bytes()
                .starts_with(b".criu.cgyard.")
        })
    });
    if !yard_left {
        return 0;
    }
    let mut points: Vec<PathBuf> = crate::checkpoint::spec::mounts_of(None)
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|m| {
            m.strip_prefix(work_dir).is_ok_and(|rel| {
                rel.iter()
                    .next()
                    .is_some_and(|first| first.as_encoded_bytes().starts_with(b".criu.cgyard."))
            })
        })
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    let mut n = 0;
    for m in &points {
        if nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH).is_ok() {
            n += 1;
        }
    }
    for m in &points {
        let _ = std::fs::remove_dir(m);
    }
    n
}

/// A process's freezer: the control file, the value that thaws it (v1
/// `freezer.state` ← `THAWED`, v2 `cgroup.freeze` ← `0`), and the cgroup
/// path it names (the container's cgroup path, relative to the hierarchy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freezer {
    pub file: PathBuf,
    pub thawed: String,
    pub cgroup_path: String,
}

impl Freezer {
    /// The cgroup directory CRIU is told to freeze (`freeze_cgroup`).
    pub fn dir(&self) -> PathBuf {
        self.file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// Undo of a freeze, for the janitor.
    pub fn thaw_action(&self) -> Action {
        Action::Thaw(self.file.clone(), self.thawed.clone())
    }
}

/// The freezer of the cgroup `pid` is in (`/proc/PID/cgroup`).
pub fn freezer_of(pid: i32) -> Option<Freezer> {
    let cgroups = procfs::process::Process::new(pid).ok()?.cgroups().ok()?.0;
    if let Some(c) = cgroups
        .iter()
        .find(|c| c.controllers.iter().any(|x| x == "freezer"))
    {
        return Some(Freezer {
            file: Path::new("/sys/fs/cgroup/freezer")
                .join(c.pathname.trim_start_matches('/'))
                .join("freezer.state"),
            thawed: "THAWED".to_string(),
            cgroup_path: c.pathname.clone(),
        });
    }
    let c = cgroups.iter().find(|c| c.hierarchy == 0)?;
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(|base| {
            Path::new(base)
                .join(c.pathname.trim_start_matches('/'))
                .join("cgroup.freeze")
        })
        .find(|f| f.exists())
        .map(|file| Freezer {
            file,
            thawed: "0".to_string(),
            cgroup_path: c.pathname.clone(),
        })
}

impl Freezer {
    fn v2(&self) -> bool {
        self.file.ends_with("cgroup.freeze")
    }

    /// Freeze the cgroup and wait until it is frozen, polling after 0.1,
    /// 0.2, 0.4… ms (at most 10 ms apart) until `deadline`.
    ///
    /// CRIU freezes the cgroup itself when it finds it thawed, but polls
    /// its state every 100 ms: a freeze that is not complete at the first
    /// look costs 100 ms of frozen time. Finding it frozen, CRIU seizes at
    /// once and leaves it frozen afterwards; the caller thaws it.
    pub fn freeze(&self, deadline: std::time::Instant) -> std::io::Result<()> {
        std::fs::write(&self.file, if self.v2() { "1" } else { "FROZEN" })?;
        let done = || -> bool {
            if self.v2() {
                std::fs::read_to_string(self.file.with_file_name("cgroup.events"))
                    .map(|e| e.lines().any(|l| l.trim() == "frozen 1"))
                    .unwrap_or(false)
            } else {
                std::fs::read_to_string(&self.file)
                    .map(|s| s.trim() == "FROZEN")
                    .unwrap_or(false)
            }
        };
        let mut backoff = crate::backoff::Backoff::new(std::time::Duration::from_millis(10));
        loop {
            if done() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the container did not freeze before the deadline (often a task in uninterruptible sleep, D state)",
                ));
            }
            backoff.sleep();
        }
    }

    /// Frozen or on its way there.
    pub fn is_frozen(&self) -> bool {
        std::fs::read_to_string(&self.file)
            .map(|s| {
                let s = s.trim();
                s == "FROZEN" || s == "FREEZING" || s == "1"
            })
            .unwrap_or(false)
    }

    pub fn thaw(&self) -> std::io::Result<()> {
        std::fs::write(&self.file, &self.thawed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_roundtrip_ok() {
        for a in [
            Action::KillGroup(Pid::from_raw(12)),
            Action::Kill(Pid::from_raw(7)),
            Action::Thaw(
                PathBuf::from("/sys/fs/cgroup/freezer/a b/freezer.state"),
                "THAWED".into(),
            ),
            Action::Remove(PathBuf::from("/img/inventory.img")),
            Action::UmountYards(PathBuf::from("/work dir")),
        ] {
            assert_eq!(Action::decode(a.encode().trim_end()), Some(a.clone()));
        }
    }

    #[test]
    fn abandoned_janitor_runs_actions_ok() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("inventory.img");
        std::fs::write(&marker, "x").unwrap();
        let mut j = Janitor::spawn().unwrap();
        j.arm(Action::Remove(marker.clone()));
        j.abandon();
        assert!(!marker.exists());
    }

    #[test]
    fn disarmed_janitor_does_nothing_ok() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("inventory.img");
        std::fs::write(&marker, "x").unwrap();
        let mut j = Janitor::spawn().unwrap();
        j.arm(Action::Remove(marker.clone()));
        j.disarm();
        assert!(marker.exists());
    }
}
