//! CRIU's page server (the receiving side of a diskless dump), started over
//! RPC and supervised.
//!
//! The PAGE_SERVER request makes CRIU fork a page-server daemon and answer
//! with its pid and port (CRIU's `start_page_server_req`). The daemon leaves
//! CRIU's process group (setsid right after its fork) — `start` waits until
//! it has, since closing the session kills that group — so the engine
//! tracks it by pidfd: `wait` returns
//! when it exits by itself (after the dumping side disconnects), or kills
//! it at the deadline or on SIGINT/SIGTERM/SIGHUP.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use protobuf::MessageField;

use super::cancel::CancelToken;
use super::log::LogExcerpt;
use super::rpc::{Criu_opts, Criu_page_server_info, Criu_req_type};
use super::session::{pidfd_open, request, AcceptAll, CriuError, Session};

pub const LOG_FILE: &str = "page-server.log";

/// A running page server.
pub struct PageServer {
    pub pid: Pid,
    pub port: u16,
    pidfd: OwnedFd,
    log: PathBuf,
    done: bool,
}

/// How a page server ended.
#[derive(Debug)]
pub enum Ended {
    /// It exited by itself; `errors` quotes its log if it logged errors.
    Exited {
        errors: Option<String>,
    },
    TimedOut(Duration),
    Cancelled(i32),
}

/// Ask CRIU (in session `s`) to start a page server writing into the image
/// directory `images_fd`, listening on `address:port` (port 0: CRIU picks),
/// with TLS if `tls` is given.
pub fn start(
    s: &mut Session,
    images_fd: i32,
    work_fd: i32,
    work_dir: &Path,
    address: &str,
    port: u16,
    tls: Option<&crate::checkpoint::options::Tls>,
) -> Result<PageServer, CriuError> {
    let mut opts = Criu_opts::new();
    if let Some(t) = tls {
        crate::checkpoint::request::tls_opts(&mut opts, t);
    }
    opts.images_dir_fd = Some(images_fd);
    opts.work_dir_fd = Some(work_fd);
    opts.log_level = Some(4);
    opts.log_file = Some(LOG_FILE.to_string());
    let mut ps = Criu_page_server_info::new();
    ps.address = Some(address.to_string());
    ps.port = Some(port as i32);
    opts.ps = MessageField::some(ps);
    let mut req = request(Criu_req_type::PAGE_SERVER);
    req.opts = MessageField::some(opts);
    let resp = s.request(&req, &mut AcceptAll)?;
    let info = resp.ps.as_ref().cloned().unwrap_or_default();
    let port = if info.port() > 0 {
        info.port() as u16
    } else {
        port
    };
    // CRIU 4.2.1 answers pid 0 (the daemon it forks is not reported); the
    // port is reliable, so find the daemon by its listening socket.
    let pid = match info.pid() {
        p if p > 0 => Pid::from_raw(p),
        _ => listener_of(port).ok_or_else(|| CriuError::Io {
            op: "PAGE_SERVER",
            source: std::io::Error::other(format!(
                "CRIU reported a page server on port {port}, but no process listens there"
            )),
        })?,
    };
    let pidfd = pidfd_open(pid).map_err(|e| CriuError::Io {
        op: "PAGE_SERVER",
        source: e,
    })?;
    left_group(pid, s.pgid(), Duration::from_secs(5)).map_err(|e| CriuError::Io {
        op: "PAGE_SERVER",
        source: e,
    })?;
    Ok(PageServer {
        pid,
        port,
        pidfd,
        log: work_dir.join(LOG_FILE),
        done: false,
    })
}

/// Wait until `pid` has left process group `pgid`. CRIU answers PAGE_SERVER
/// once the daemon is forked, not once the daemon has run its setsid()
/// (criu/util.c `cr_daemon`); closing the session kills CRIU's group, and
/// under load that killed a daemon not yet out of it, before it accepted
/// (found by CI: "Connection reset by peer" in the dumping side's TLS
/// handshake, no "Accepted connection" in the page server's log).
fn left_group(pid: Pid, pgid: Pid, within: Duration) -> std::io::Result<()> {
    let end = Instant::now() + within;
    loop {
        match nix::unistd::getpgid(Some(pid)) {
            Ok(g) if g == pgid => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= end {
            return Err(std::io::Error::other(format!(
                "CRIU's page server (pid {pid}) did not leave CRIU's process group within {within:?}"
            )));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The process listening on TCP `port` (IPv4 or IPv6).
fn listener_of(port: u16) -> Option<Pid> {
    const LISTEN: procfs::net::TcpState = procfs::net::TcpState::Listen;
    let inodes: Vec<u64> = procfs::net::tcp()
        .into_iter()
        .flatten()
        .chain(procfs::net::tcp6().into_iter().flatten())
        .filter(|e| e.state == LISTEN && e.local_address.port() == port)
        .map(|e| e.inode)
        .collect();
    if inodes.is_empty() {
        return None;
    }
    for proc in procfs::process::all_processes().ok()?.flatten() {
        if let Ok(fds) = proc.fd() {
            for fd in fds.flatten() {
                if let procfs::process::FDTarget::Socket(inode) = fd.target {
                    if inodes.contains(&inode) {
                        return Some(Pid::from_raw(proc.pid));
                    }
                }
            }
        }
    }
    None
}

impl PageServer {
    /// Wait for the page server to finish, at most `timeout`.
    pub fn wait(mut self, timeout: Duration, cancel: Option<&CancelToken>) -> Ended {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                self.kill();
                return Ended::TimedOut(timeout);
            }
            let ms = (deadline - now).as_millis().min(60_000) as i32;
            let mut fds = vec![PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
            if let Some(c) = cancel {
                fds.push(PollFd::new(c.fd(), PollFlags::POLLIN));
            }
            let _ = poll(
                &mut fds,
                PollTimeout::try_from(ms.max(1)).unwrap_or(PollTimeout::MAX),
            );
            let ready = |f: &PollFd| f.revents().map(|r| !r.is_empty()).unwrap_or(false);
            if let Some(sig) = cancel.and_then(|c| c.pending().and_then(|_| c.take())) {
                self.kill();
                return Ended::Cancelled(sig);
            }
            if ready(&fds[0]) {
                self.done = true;
                let errors = LogExcerpt::read(&self.log)
                    .filter(|e| !e.quoted.is_empty())
                    .map(|e| e.render());
                return Ended::Exited { errors };
            }
        }
    }

    fn kill(&mut self) {
        // The pidfd pins the pid: no risk of killing a recycled one.
        let _ = kill(self.pid, Signal::SIGKILL);
        let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(2000u16));
        self.done = true;
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        if !self.done {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child of ours (in our group) that calls setsid only after a while,
    /// as CRIU's page-server daemon may under load.
    fn late_setsid(after: &str) -> std::process::Child {
        std::process::Command::new("sh")
            .args(["-c", &format!("sleep {after}; exec setsid sleep 5")])
            .spawn()
            .unwrap()
    }

    #[test]
    fn waits_until_the_daemon_left_the_group_ok() {
        let mut c = late_setsid("0.3");
        let pid = Pid::from_raw(c.id() as i32);
        let ours = nix::unistd::getpgrp();
        let t0 = Instant::now();
        left_group(pid, ours, Duration::from_secs(5)).unwrap();
        assert!(
            t0.elapsed() >= Duration::from_millis(250),
            "returned before setsid"
        );
        assert_ne!(nix::unistd::getpgid(Some(pid)).unwrap(), ours);
        let _ = c.kill();
        let _ = c.wait();
    }

    #[test]
    fn a_daemon_that_stays_in_the_group_ng() {
        let mut c = late_setsid("3");
        let pid = Pid::from_raw(c.id() as i32);
        let err = left_group(pid, nix::unistd::getpgrp(), Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("did not leave"), "{err}");
        let _ = c.kill();
        let _ = c.wait();
    }
}
