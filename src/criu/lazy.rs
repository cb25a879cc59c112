//! Post-copy on the restoring side: CRIU's lazy-pages daemon, started,
//! supervised and reaped by a small supervisor process of ours.
//!
//! `criu lazy-pages --page-server --address A --port P` connects to the
//! dumping side's page server (CRIU's `cr_lazy_mem_dump`), listens on
//! `<work dir>/lazy-pages.socket` for the restoring CRIU, and serves the
//! restored tasks' userfaultfd faults, fetching pages on demand and the
//! rest in the background. It exits by itself once every page is in.
//!
//! The restore returns (`-d`) long before that, so the daemon cannot be
//! the runtime's child to wait for. The supervisor is forked first, in its
//! own session; it spawns the daemon (its child, reaped by it), tells the
//! runtime when the socket is there, and then:
//! - the runtime dies or the restore fails (its pipe closes without a
//!   container pid): the daemon is killed;
//! - after a successful restore (the runtime sends the container's pid):
//!   it waits for the daemon until the deadline. If the daemon fails (its
//!   exit status or `Error` lines in its log) or the deadline passes, the
//!   restored container is killed: it has pages that will never arrive,
//!   and a process running on zero-filled memory would be silently wrong.
//!
//! What happened is written to `<work dir>/lazy-pages.result` (JSON).
//! runc leaves all of this to the user (`criu lazy-pages` by hand).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe2, setsid, ForkResult, Pid};
use serde::Serialize;

use super::log::LogExcerpt;
use crate::checkpoint::options::PageServer;

pub const SOCKET: &str = "lazy-pages.socket";
pub const LOG_FILE: &str = "lazy-pages.log";
pub const RESULT_FILE: &str = "lazy-pages.result";
/// How long the daemon gets to connect to the page server and listen.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The supervisor, seen from the runtime.
pub struct LazyPages {
    pub supervisor: Pid,
    control: Option<File>,
}

/// What the supervisor records when it is done.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub ok: bool,
    pub daemon_pid: i32,
    pub container_pid: Option<i32>,
    pub elapsed_ms: u128,
    pub detail: String,
    pub container_killed: bool,
}

impl LazyPages {
    /// Fork the supervisor, which starts `criu lazy-pages` and returns once
    /// the daemon listens (or failed to).
    pub fn start(
        criu: &Path,
        images: &Path,
        work: &Path,
        source: &PageServer,
        tls: Option<&crate::checkpoint::options::Tls>,
        deadline: Duration,
    ) -> anyhow::Result<LazyPages> {
        let (status_r, status_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (control_r, control_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let _ = std::fs::remove_file(work.join(SOCKET));
        let _ = std::fs::remove_file(work.join(RESULT_FILE));
        let mut cmd = Command::new(criu);
        cmd.arg("lazy-pages")
            .arg("--page-server")
            .arg("--address")
            .arg(&source.address)
            .arg("--port")
            .arg(source.port.to_string())
            .arg("--images-dir")
            .arg(images)
            .arg("--work-dir")
            .arg(work)
            .arg("--log-file")
            .arg(LOG_FILE)
            .arg("-v4")
            .args(tls.map(|t| t.criu_args()).unwrap_or_default())
            .current_dir(work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: the runtime is single-threaded here; the child only
        // spawns, polls, waits, signals, writes files and _exits.
        match unsafe { fork() }? {
            ForkResult::Child => {
                drop(status_r);
                drop(control_w);
                super::janitor::close_all_but(&[status_w.as_raw_fd(), control_r.as_raw_fd()]);
                let code = supervise(
                    cmd,
                    work,
                    source,
                    deadline,
                    File::from(status_w),
                    File::from(control_r),
                );
                // SAFETY: leave without running the runtime's destructors.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                drop(status_w);
                drop(control_r);
                let mut line = String::new();
                let _ = BufReader::new(File::from(status_r)).read_line(&mut line);
                let line = line.trim_end().to_string();
                let lp = LazyPages {
                    supervisor: child,
                    control: Some(File::from(control_w)),
                };
                if line != "ready" {
                    let why = line
                        .strip_prefix("failed ")
                        .unwrap_or("the supervisor died");
                    drop(lp);
                    anyhow::bail!(
                        "CRIU's lazy-pages daemon did not start: {why}{}",
                        render(work)
                    );
                }
                Ok(lp)
            }
        }
    }

    /// The restore succeeded: hand the supervisor the container's pid and
    /// leave it to see the transfer through.
    pub fn restored(mut self, container: i32) {
        if let Some(mut c) = self.control.take() {
            let _ = c.write_all(format!("container {container}\n").as_bytes());
        }
        // Not waited for: it outlives a detached restore (setsid, reparented).
    }
}

impl Drop for LazyPages {
    /// Restore failed or the runtime unwinds: closing the pipe makes the
    /// supervisor kill the daemon; it is reaped here.
    fn drop(&mut self) {
        if self.control.take().is_some() {
            let _ = waitpid(self.supervisor, None);
        }
    }
}

fn render(work: &Path) -> String {
    LogExcerpt::read(&work.join(LOG_FILE)).map_or(String::new(), |e| e.render())
}

/// How often the supervisor takes fresh copies of the daemon's
/// userfaultfds ([`HeldUffds`]).
const UFFD_REFRESH: Duration = Duration::from_millis(20);

/// Wait for our child `pid` until `until`, calling `tick` every
/// [`UFFD_REFRESH`]; None at the deadline.
fn wait_exit(pid: Pid, until: Instant, mut tick: impl FnMut()) -> Option<WaitStatus> {
    let pidfd = super::session::pidfd_open(pid).ok()?;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(
            &mut fds,
            PollTimeout::from(left.min(UFFD_REFRESH).as_millis() as u16),
        );
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            return waitpid(pid, None).ok();
        }
        tick();
    }
}

/// Copies of the lazy-pages daemon's userfaultfds, held by the supervisor
/// (pidfd_getfd(2)) while it watches the transfer.
///
/// A userfaultfd stays registered on the restored tasks' memory as long as
/// any copy of it is open. When the daemon dies with pages still missing,
/// its copies close; without ours the kernel would release the
/// registration and fill every missing page with zeros on the next fault:
/// the restored process would run on with wrong memory until the
/// supervisor's SIGKILL lands (found by
/// test_attached_lazy_restore_says_why_it_was_killed: the restored process
/// died of SIGSEGV, "free(): invalid pointer", before our kill). With ours
/// open, such a fault waits until the container is killed; only then are
/// they closed.
///
/// The set is taken again every [`UFFD_REFRESH`]: a task's fd appears when
/// it is restored or forked, and the daemon closes it once every page of
/// that task is in or the task exited — our copy of a closed one goes at
/// the next refresh (until then, a fault of that task on memory it gave
/// back, MADV_DONTNEED, waits: at most [`UFFD_REFRESH`]). All of them
/// go as soon as the daemon exits having transferred everything.
struct HeldUffds {
    daemon: Pid,
    pidfd: Option<std::os::fd::OwnedFd>,
    fds: Vec<std::os::fd::OwnedFd>,
}

impl HeldUffds {
    fn new(daemon: Pid) -> HeldUffds {
        HeldUffds {
            daemon,
            pidfd: super::session::pidfd_open(daemon).ok(),
            fds: Vec::new(),
        }
    }

    /// Copy every userfaultfd the daemon has now. Taken only from a
    /// running daemon: a dead one has none, and ours must stay.
    fn refresh(&mut self) {
        let Some(pidfd) = &self.pidfd else { return };
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", self.daemon)) else {
            return;
        };
        let mut fresh = Vec::new();
        for entry in dir.flatten() {
            let is_uffd = std::fs::read_link(entry.path())
                .is_ok_and(|l| l.as_os_str() == "anon_inode:[userfaultfd]");
            let num = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok());
            if let (true, Some(num)) = (is_uffd, num) {
                if let Ok(fd) = super::session::pidfd_getfd(pidfd, num) {
                    fresh.push(fd);
                }
            }
        }
        let mut alive = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        let exited = poll(&mut alive, PollTimeout::ZERO).is_ok_and(|n| n > 0);
        if !exited {
            // The old copies close after the new ones are open.
            self.fds = fresh;
        }
    }

    /// The container is dead or every page arrived: let the kernel
    /// release the registrations.
    fn release(&mut self) {
        self.fds.clear();
    }
}

/// Kill the restored container and wait (up to 2 s) until it is gone, so
/// that the held userfaultfds close only after it can no longer run.
fn kill_container(pid: i32) -> bool {
    let pid = Pid::from_raw(pid);
    let pidfd = super::session::pidfd_open(pid).ok();
    let killed = kill(pid, Signal::SIGKILL).is_ok();
    if let (true, Some(pidfd)) = (killed, pidfd) {
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(2000u16));
    }
    killed
}

fn supervise(
    mut cmd: Command,
    work: &Path,
    source: &PageServer,
    deadline: Duration,
    mut status: File,
    control: File,
) -> i32 {
    let _ = setsid();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGPIPE,
    ] {
        // SAFETY: ignoring signals in the supervisor.
        let _ = unsafe { nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigIgn) };
    }
    let started = Instant::now();
    let daemon = match cmd.spawn() {
        Ok(c) => Pid::from_raw(c.id() as i32),
        Err(e) => {
            let _ = writeln!(status, "failed cannot run CRIU: {e}");
            return 1;
        }
    };
    // Ready: the socket the restoring CRIU connects to exists.
    let socket = work.join(SOCKET);
    let ready_by = Instant::now() + READY_TIMEOUT;
    loop {
        if socket.exists() {
            break;
        }
        if let Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) =
            waitpid(daemon, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
        {
            let _ = writeln!(status, "failed it exited before listening (is the page server at the given address running?)");
            return 1;
        }
        if Instant::now() > ready_by {
            let _ = kill(daemon, Signal::SIGKILL);
            let _ = waitpid(daemon, None);
            let _ = writeln!(status, "failed it did not listen within {READY_TIMEOUT:?}");
            return 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = writeln!(status, "ready");
    drop(status);

    // Wait for the runtime's verdict on the restore, holding the daemon's
    // userfaultfds from the moment it has them.
    let mut held = HeldUffds::new(daemon);
    loop {
        let mut fds = [PollFd::new(control.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::from(UFFD_REFRESH.as_millis() as u16));
        held.refresh();
        if !matches!(ready, Ok(0)) {
            break;
        }
    }
    let mut control = BufReader::new(control);
    let mut line = String::new();
    let container = match control.read_line(&mut line) {
        Ok(n) if n > 0 => line
            .trim()
            .strip_prefix("container ")
            .and_then(|p| p.parse::<i32>().ok()),
        _ => None,
    };
    let mut outcome = Outcome {
        ok: false,
        daemon_pid: daemon.as_raw(),
        container_pid: container,
        elapsed_ms: 0,
        detail: String::new(),
        container_killed: false,
    };
    match container {
        None => {
            let _ = kill(daemon, Signal::SIGKILL);
            let _ = waitpid(daemon, None);
            outcome.detail =
                "the restore did not complete; the lazy-pages daemon was killed".into();
        }
        Some(pid) => {
            held.refresh();
            let exit = wait_exit(daemon, started + deadline, || held.refresh());
            let clean = LogExcerpt::read(&work.join(LOG_FILE)).is_none_or(|e| e.quoted.is_empty());
            let failed = match exit {
                None => {
                    let _ = kill(daemon, Signal::SIGKILL);
                    let _ = waitpid(daemon, None);
                    Some(format!("not every page arrived within {deadline:?} (--criu-timeout); the daemon was killed"))
                }
                Some(WaitStatus::Exited(_, 0)) if clean => None,
                Some(WaitStatus::Exited(_, code)) => Some(format!(
                    "the daemon exited with status {code}{}",
                    render(work)
                )),
                Some(other) => Some(format!("the daemon ended: {other:?}{}", render(work))),
            };
            if failed.is_none() {
                // Every page is in: faults are the kernel's again.
                held.release();
            }
            let failed = match failed {
                None if deliver_verdict(source, VERDICT_OK) => None,
                None => Some(format!(
                    "every page arrived, but the dumping side at {}:{} did not acknowledge it within {VERDICT_DELIVERY:?}, so it runs on there",
                    source.address, source.port
                )),
                failed => failed,
            };
            match failed {
                None => {
                    outcome.ok = true;
                    outcome.detail =
                        "every page was transferred; the dumping side confirmed".into();
                }
                Some(why) => {
                    // Its missing pages will never arrive (or the source
                    // runs on): do not let it run here; then tell the source.
                    outcome.container_killed = kill_container(pid);
                    held.release();
                    let first = why.lines().next().unwrap_or("").to_string();
                    outcome.detail = why;
                    write_outcome(work, &mut outcome, started);
                    deliver_verdict(source, &format!("{VERDICT_FAILED} {first}"));
                    return 1;
                }
            }
        }
    }
    write_outcome(work, &mut outcome, started);
    i32::from(!outcome.ok)
}

fn write_outcome(work: &Path, outcome: &mut Outcome, started: Instant) {
    outcome.elapsed_ms = started.elapsed().as_millis();
    if let Ok(text) = serde_json::to_vec_pretty(&outcome) {
        let tmp = work.join(format!(".{RESULT_FILE}.tmp"));
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, work.join(RESULT_FILE));
        }
    }
}

/// The confirmation that closes a post-copy migration.
///
/// CRIU's page server cannot tell a finished transfer from a restoring
/// side that died: in `page_server_serve` (criu/page-xfer.c) an EOF on the
/// connection ends the session exactly like the daemon's PS_IOV_CLOSE,
/// and the dump then reports "Lazy pages transfer finished successfully"
/// and kills the source tasks — the container is lost on both sides
/// (found by test_lazy_pages.py). So the dumping side asks CRIU to leave
/// the tasks alive (they stay frozen by us) and waits, on the page
/// server's own address, for the restoring side's verdict:
/// `cntrlive-lazy ok` or `cntrlive-lazy failed REASON`, answered `ack`.
/// Only after `ok` is the source killed; on `failed`, or no word by the
/// deadline, it is thawed and runs on.
pub const VERDICT_OK: &str = "cntrlive-lazy ok";
pub const VERDICT_FAILED: &str = "cntrlive-lazy failed";
/// How long the restoring side tries to deliver its verdict.
pub const VERDICT_DELIVERY: Duration = Duration::from_secs(15);

/// Dumping side: wait for the verdict on `address:port` until `deadline`.
pub fn await_verdict(address: &str, port: u16, deadline: Instant) -> Result<(), String> {
    use std::net::TcpListener;
    let l = TcpListener::bind((address, port)).map_err(|e| {
        format!("cannot listen on {address}:{port} for the restoring side's confirmation: {e}")
    })?;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    while Instant::now() < deadline {
        match l.accept() {
            Ok((mut conn, _)) => {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut line = String::new();
                let _ = BufReader::new(&mut conn).read_line(&mut line);
                let line = line.trim();
                if line == VERDICT_OK {
                    let _ = conn.write_all(b"ack\n");
                    return Ok(());
                }
                if let Some(why) = line.strip_prefix(VERDICT_FAILED) {
                    let _ = conn.write_all(b"ack\n");
                    return Err(format!("the restoring side failed:{why}"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(format!(
                    "waiting for the restoring side's confirmation: {e}"
                ))
            }
        }
    }
    Err("the restoring side did not confirm the transfer in time (--criu-timeout)".into())
}

/// Restoring side: deliver the verdict; true once the dumping side acked.
fn deliver_verdict(source: &PageServer, line: &str) -> bool {
    deliver_within(source, line, VERDICT_DELIVERY)
}

fn deliver_within(source: &PageServer, line: &str, window: Duration) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    let until = Instant::now() + window;
    // Each connect bounded: where the network is cut (no RST), a plain
    // connect waits out the kernel's SYN retries (~2 min), and the
    // supervisor outlived its 15 s by that much (found by
    // test_lazy_migration_when_the_network_is_cut: a supervisor still in
    // connect() two minutes later).
    let connect = |until: Instant| -> Option<TcpStream> {
        let addrs = (source.address.as_str(), source.port)
            .to_socket_addrs()
            .ok()?;
        addrs.into_iter().find_map(|a| {
            let left = until.saturating_duration_since(Instant::now());
            TcpStream::connect_timeout(
                &a,
                left.clamp(Duration::from_millis(10), Duration::from_secs(2)),
            )
            .ok()
        })
    };
    while Instant::now() < until {
        if let Some(mut c) = connect(until) {
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            if c.write_all(format!("{line}\n").as_bytes()).is_ok() {
                let mut ack = String::new();
                let _ = BufReader::new(&mut c).read_line(&mut ack);
                if ack.trim() == "ack" {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The supervisor's reason when it killed the restored container (waiting
/// up to `wait` for it to write its verdict); None when the transfer went
/// well or no verdict came.
pub fn failure(work: &Path, wait: Duration) -> Option<String> {
    let path = work.join(RESULT_FILE);
    let until = Instant::now() + wait;
    while !path.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    if v.get("container_killed")?.as_bool()? {
        Some(v.get("detail")?.as_str()?.to_string())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connect that gets no answer at all (SYNs dropped, as on a cut
    /// link) does not hold the delivery past its window.
    #[test]
    fn verdict_delivery_ends_in_its_window_when_syns_go_unanswered() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // Backlog 0: one queued connection fills the accept queue; the
        // kernel then drops every further SYN (no RST, no answer).
        // SAFETY: listen on a socket we own.
        assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 0) }, 0);
        let port = l.local_addr().unwrap().port();
        let _queued = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _queued2 = std::net::TcpStream::connect_timeout(
            &l.local_addr().unwrap(),
            Duration::from_millis(200),
        );
        let source = PageServer {
            address: "127.0.0.1".into(),
            port,
        };
        let t = Instant::now();
        assert!(!deliver_within(&source, VERDICT_OK, Duration::from_secs(1)));
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t.elapsed()
        );
    }
}
