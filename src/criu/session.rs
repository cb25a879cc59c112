//! One supervised `criu swrk` process.
//!
//! The conversation (CRIU's `criu/cr-service.c`): we send a `criu_req`, CRIU
//! answers with `criu_resp`; during DUMP/RESTORE it sends NOTIFY messages
//! that each need a reply before it goes on. A request with `keep_open`
//! (VERSION, FEATURE_CHECK) leaves CRIU waiting for the next one; after a
//! PRE_DUMP CRIU always waits for another PRE_DUMP or the final DUMP. The
//! session ends when we shut our end of the socket down: CRIU's next `recv`
//! fails and it exits. That is the step runc never took (runc#1318), which
//! is why a pre-dump hung docker-runc forever.
//!
//! Guarantees, on every path (success, CRIU error, timeout, signal, panic):
//! - each request has a deadline; a signal in [`super::cancel`] cancels it;
//! - CRIU runs in its own process group, tracked by a pidfd; when the
//!   session ends badly the whole group is SIGKILLed, and CRIU is always
//!   reaped ([`Drop`]);
//! - the child's end of the socketpair is closed in the runtime right after
//!   the spawn, so a CRIU crash is an EOF here, never a hang (as runc does).

use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::sys::socket::{
    recvmsg, send, shutdown, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, Shutdown,
    SockFlag, SockType,
};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use protobuf::{EnumOrUnknown, Message};
use thiserror::Error;

use super::cancel::CancelToken;
use super::log::LogExcerpt;
use super::rpc::{Criu_notify, Criu_req, Criu_req_type, Criu_resp};

/// The largest reply we accept. CRIU's replies are a few hundred bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// How long CRIU gets to exit by itself once the session is closed, before
/// its process group is killed.
pub const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Default deadline of one CRIU request (`--criu-timeout`): generous for a
/// large container's dump, finite so that nothing waits forever.
pub const DEFAULT_TIMEOUT: &str = "5m";

#[derive(Debug, Error)]
pub enum CriuError {
    #[error("failed to start {path} (install CRIU >= 3.16, e.g. with hack/install.sh, or pass --criu PATH)")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("CRIU did not answer the {op} request within {after:?} (--criu-timeout); CRIU{state} was killed")]
    Timeout {
        op: &'static str,
        after: Duration,
        state: String,
    },

    #[error("{op} cancelled by signal {signal}; CRIU was killed")]
    Cancelled { op: &'static str, signal: String },

    #[error("CRIU {how} during the {op} request{log}")]
    Died {
        op: &'static str,
        how: String,
        log: String,
    },

    #[error("CRIU closed the RPC socket during the {op} request without answering{log}")]
    SocketClosed { op: &'static str, log: String },

    #[error(
        "CRIU sent a reply larger than {MAX_MESSAGE} bytes to the {op} request; CRIU was killed"
    )]
    Oversized { op: &'static str },

    #[error("CRIU sent an unreadable reply to the {op} request ({detail}); CRIU was killed")]
    Garbage { op: &'static str, detail: String },

    #[error("CRIU answered the {op} request with a {got} reply; CRIU was killed")]
    UnexpectedReply { op: &'static str, got: String },

    #[error("CRIU's {op} failed{errno}{msg}{log}")]
    Failed {
        op: &'static str,
        errno: String,
        msg: String,
        log: String,
    },

    #[error("{what} refused the {script} notification: {why}")]
    NotifyRefused {
        what: &'static str,
        script: String,
        why: String,
    },

    #[error("RPC with CRIU failed during the {op} request: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What a notification handler decides.
pub enum NotifyOutcome {
    Ok,
    /// Tell CRIU the step failed; CRIU aborts (and unfreezes).
    Fail(String),
}

/// Answers CRIU's notifications (`criu_notify.script`): "pre-dump",
/// "post-dump", "network-lock", "network-unlock", "setup-namespaces",
/// "post-setup-namespaces", "pre-resume", "post-resume", "post-restore",
/// "orphan-pts-master" (with an fd), "status-ready".
pub trait Notify {
    fn notify(&mut self, script: &str, pid: Option<i32>, fd: Option<OwnedFd>) -> NotifyOutcome;
}

/// A handler that accepts every notification.
pub struct AcceptAll;

impl Notify for AcceptAll {
    fn notify(&mut self, script: &str, pid: Option<i32>, _fd: Option<OwnedFd>) -> NotifyOutcome {
        tracing::debug!(script, ?pid, "criu notification");
        NotifyOutcome::Ok
    }
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub criu: PathBuf,
    /// Start CRIU with a short scheduler slice (src/sched.rs; config
    /// `criu.short_slice`): the spawning thread takes it, CRIU inherits it.
    pub short_slice: bool,
    /// The nice CRIU runs at (src/sched.rs; config `criu.nice`, 0: the
    /// caller's): the spawning thread takes it, CRIU inherits it.
    pub nice: i32,
    /// Deadline of each request.
    pub timeout: Duration,
    /// Directory of CRIU's log files (its work dir); quoted in errors.
    pub work_dir: Option<PathBuf>,
    /// Give CRIU our stdin/stdout/stderr (restore: `inherit_fd` maps the
    /// container's old stdio to these, as runc does).
    pub inherit_stdio: bool,
    /// CRIU may talk TLS in this session (a page server, `--tls`, or a
    /// CRIU configuration file that could ask for either). Otherwise GnuTLS,
    /// which CRIU links, is told to skip its initialisation at load time
    /// (GNUTLS_NO_IMPLICIT_INIT; CRIU only calls GnuTLS under `tls`): ~0.8 ms
    /// of every CRIU start here (docs/performance.md).
    pub tls: bool,
    /// The same CRIU built without GnuTLS (config: `criu.lean`), run
    /// instead of `criu` when the session cannot use TLS (no TLS, no CRIU
    /// configuration file that could ask for it): 8 fewer libraries, a
    /// start ~1.4 ms shorter here (docs/criu-engine.md). Not without
    /// libnftables too: such a CRIU leaves a network namespace's nftables
    /// rules out of a dump and cannot restore images that have them.
    pub criu_lean: Option<PathBuf>,
}

/// CRIU configuration files CRIU reads by itself (criu/config.c): any of
/// them could turn TLS on.
fn criu_default_config_present() -> bool {
    std::env::var_os("CRIU_CONFIG_FILE").is_some()
        || Path::new("/etc/criu/default.conf").exists()
        || std::env::var_os("HOME")
            .is_some_and(|h| Path::new(&h).join(".criu/default.conf").exists())
}

pub struct Session {
    /// The CRIU binary this session runs (`criu`, or `criu_lean`).
    binary: PathBuf,
    pid: Pid,
    pidfd: OwnedFd,
    sock: OwnedFd,
    cfg: SessionConfig,
    /// CRIU was started with the short slice (asked for, and the kernel
    /// gave it): the tasks it restores inherit it.
    short_slice: bool,
    /// The nice CRIU was started at, if we changed it (src/sched.rs).
    nice: Option<i32>,
    cancel: Option<&'static CancelToken>,
    reaped: bool,
    /// [`end`](Session::end) ran.
    ended: bool,
    /// Requests answered so far (for messages).
    pub answered: usize,
}

fn op_name(t: Criu_req_type) -> &'static str {
    match t {
        Criu_req_type::DUMP => "DUMP",
        Criu_req_type::PRE_DUMP => "PRE_DUMP",
        Criu_req_type::RESTORE => "RESTORE",
        Criu_req_type::VERSION => "VERSION",
        Criu_req_type::FEATURE_CHECK => "FEATURE_CHECK",
        Criu_req_type::PAGE_SERVER => "PAGE_SERVER",
        Criu_req_type::PAGE_SERVER_CHLD => "PAGE_SERVER_CHLD",
        Criu_req_type::CHECK => "CHECK",
        Criu_req_type::NOTIFY => "NOTIFY",
        Criu_req_type::WAIT_PID => "WAIT_PID",
        _ => "CRIU",
    }
}

pub(crate) fn pidfd_open(pid: Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is owned by us.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// pidfd_getfd(2): a copy of file descriptor `num` of the process `pidfd`.
pub(crate) fn pidfd_getfd(pidfd: &OwnedFd, num: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is new and owned by us.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), num, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Held while an fd is made inheritable for one spawn, so that two
/// sessions started on two threads do not hand each other their sockets.
static INHERIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    fcntl(fd, FcntlArg::F_SETFD(flags))
        .map(drop)
        .map_err(std::io::Error::from)
}

impl Session {
    /// Spawn `criu swrk N` in its own process group, N being CRIU's end of
    /// a SOCK_SEQPACKET socketpair (the same fd number as ours).
    pub fn start(
        cfg: SessionConfig,
        cancel: Option<&'static CancelToken>,
    ) -> Result<Session, CriuError> {
        // CRIU only calls GnuTLS under `tls` (which a CRIU configuration
        // file could set).
        let no_tls = !cfg.tls && !criu_default_config_present();
        let binary = match (&cfg.criu_lean, no_tls) {
            (Some(lean), true) => lean.clone(),
            _ => cfg.criu.clone(),
        };
        let spawn_err = |source| CriuError::Spawn {
            path: binary.clone(),
            source,
        };
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| spawn_err(e.into()))?;
        let child_fd = theirs.as_raw_fd();
        let stderr = match &cfg.work_dir {
            Some(dir) => File::create(dir.join("criu-stderr.log"))
                .map(Stdio::from)
                .unwrap_or(Stdio::null()),
            None => Stdio::null(),
        };
        let mut cmd = Command::new(&binary);
        // CRIU is told which fd its socket is (runc passes 3 through
        // ExtraFiles; any number does).
        cmd.arg("swrk").arg(child_fd.to_string());
        if no_tls {
            cmd.env("GNUTLS_NO_IMPLICIT_INIT", "1");
        }
        // No working directory of its own: CRIU moves into the work dir
        // it is sent with each request (work_dir_fd), and files it writes
        // relative to its cwd (stats-dump, stats-restore) land there
        // (integration/test_stats.py). A `current_dir` here made std fork
        // instead of posix_spawn in the static build (its chdir file
        // action is looked up through dlsym, which static glibc lacks).
        if !cfg.inherit_stdio {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr);
        }
        // Own process group: the whole of CRIU (it forks helpers) can be
        // killed at once. No pre_exec hook (nor a working directory, above):
        // std then spawns through posix_spawn (clone with
        // CLONE_VM|CLONE_VFORK), which copies no page tables — a fork of
        // the runtime cost ~0.3 ms here, and made every page the runtime
        // wrote afterwards fault once more. The child's signal mask is
        // emptied by std either way.
        cmd.process_group(0);
        // The spawning thread's slice is CRIU's (src/sched.rs).
        let short_slice = cfg.short_slice && crate::sched::short_slice_for_criu();
        let nice = crate::sched::nice_for_criu(cfg.nice);
        // CRIU's end is inherited only across this spawn: close-on-exec
        // again at once, so no later child (the janitor) holds it and a
        // crashed CRIU reads as EOF.
        let _inherit = INHERIT.lock().unwrap_or_else(|e| e.into_inner());
        set_cloexec(child_fd, false).map_err(spawn_err)?;
        let spawned = cmd.spawn();
        let _ = set_cloexec(child_fd, true);
        drop(_inherit);
        let child = spawned.map_err(spawn_err)?;
        // Close CRIU's end here at once: if CRIU crashes we read EOF instead
        // of waiting forever (runc's criuSwrk does the same).
        drop(theirs);
        let pid = Pid::from_raw(child.id() as i32);
        // std's Child would reap on wait(); we reap through waitpid ourselves.
        std::mem::forget(child);
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                return Err(spawn_err(e));
            }
        };
        tracing::debug!(%pid, criu = %binary.display(), short_slice, ?nice, "criu swrk started");
        Ok(Session {
            short_slice,
            nice,
            binary,
            pid,
            pidfd,
            sock: ours,
            cfg,
            cancel,
            reaped: false,
            ended: false,
            answered: 0,
        })
    }

    /// CRIU runs with the short slice (src/sched.rs), which the tasks it
    /// restores inherit.
    pub fn short_slice(&self) -> bool {
        self.short_slice
    }

    /// The nice CRIU runs at, where it is ours (`criu.nice`, granted).
    pub fn nice(&self) -> Option<i32> {
        self.nice
    }

    /// The CRIU binary this session runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// CRIU's process group (= its pid).
    pub fn pgid(&self) -> Pid {
        self.pid
    }

    /// Send one request and wait for its answer, replying to every NOTIFY
    /// on the way. A reply with `success == false` is [`CriuError::Failed`]
    /// quoting CRIU's log. Any other failure kills CRIU: the session cannot
    /// be used after an `Err`.
    pub fn request(
        &mut self,
        req: &Criu_req,
        notify: &mut dyn Notify,
    ) -> Result<Criu_resp, CriuError> {
        let op = op_name(req.type_());
        let result = self.exchange(req, notify, op);
        if let Err(e) = &result {
            if !matches!(
                e,
                CriuError::Failed { .. } | CriuError::NotifyRefused { .. }
            ) {
                self.kill();
            }
        }
        result
    }

    fn exchange(
        &mut self,
        req: &Criu_req,
        notify: &mut dyn Notify,
        op: &'static str,
    ) -> Result<Criu_resp, CriuError> {
        let deadline = Instant::now() + self.cfg.timeout;
        self.send_msg(req, op)?;
        loop {
            let (resp, fd) = self.recv_msg(op, deadline)?;
            if resp.type_() == Criu_req_type::NOTIFY {
                let n = resp
                    .notify
                    .as_ref()
                    .cloned()
                    .unwrap_or_else(Criu_notify::new);
                let script = n.script.clone().unwrap_or_default();
                let outcome = notify.notify(&script, n.pid, fd);
                let mut reply = Criu_req::new();
                reply.type_ = Some(EnumOrUnknown::new(Criu_req_type::NOTIFY));
                let refused = match &outcome {
                    NotifyOutcome::Ok => None,
                    NotifyOutcome::Fail(why) => Some(why.clone()),
                };
                reply.notify_success = Some(refused.is_none());
                self.send_msg(&reply, op)?;
                if let Some(why) = refused {
                    // CRIU aborts; wait for its failure reply, then report
                    // our reason rather than its generic one.
                    let _ = self.recv_msg(op, Instant::now() + EXIT_GRACE);
                    return Err(CriuError::NotifyRefused {
                        what: "cntrlive-runtime",
                        script,
                        why,
                    });
                }
                continue;
            }
            if resp.type_() != req.type_() {
                return Err(CriuError::UnexpectedReply {
                    op,
                    got: match resp.type_ {
                        Some(t) => match t.enum_value() {
                            Ok(v) => op_name(v).to_string(),
                            Err(n) => format!("type {n}"),
                        },
                        None => "typeless".to_string(),
                    },
                });
            }
            self.answered += 1;
            if !resp.success() {
                let log_file = req.opts.as_ref().and_then(|o| o.log_file.clone());
                let excerpt = self.log_excerpt(log_file.as_deref());
                return Err(CriuError::Failed {
                    op,
                    errno: match resp.cr_errno {
                        Some(e) if e != 0 => format!(" (errno {e}: {})", Errno::from_raw(e).desc()),
                        _ => String::new(),
                    },
                    msg: resp
                        .cr_errmsg
                        .clone()
                        .filter(|m| !super::log::is_harmless(m))
                        .or_else(|| excerpt.as_ref().and_then(|e| e.headline()))
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default(),
                    log: excerpt.map(|e| e.render()).unwrap_or_default(),
                });
            }
            return Ok(resp);
        }
    }

    fn log_excerpt(&self, log_file: Option<&str>) -> Option<LogExcerpt> {
        LogExcerpt::read(&self.cfg.work_dir.as_ref()?.join(log_file?))
    }

    fn send_msg(&mut self, msg: &Criu_req, op: &'static str) -> Result<(), CriuError> {
        let bytes = msg.write_to_bytes().map_err(|e| CriuError::Io {
            op,
            source: std::io::Error::other(e),
        })?;
        match send(self.sock.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL) {
            Ok(_) => Ok(()),
            Err(Errno::EPIPE) | Err(Errno::ECONNRESET) => Err(self.gone(op)),
            Err(e) => Err(CriuError::Io {
                op,
                source: e.into(),
            }),
        }
    }

    /// Wait for a message until `deadline`, watching CRIU's pidfd and the
    /// cancel signals.
    fn recv_msg(
        &mut self,
        op: &'static str,
        deadline: Instant,
    ) -> Result<(Criu_resp, Option<OwnedFd>), CriuError> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(CriuError::Timeout {
                    op,
                    after: self.cfg.timeout,
                    state: self.proc_state(),
                });
            }
            let remaining = deadline - now;
            let ms = remaining.as_millis().min(i32::MAX as u128) as i32;
            let (sock_ready, pid_ready, cancel_ready) = {
                let mut fds = vec![
                    PollFd::new(self.sock.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN),
                ];
                if let Some(c) = self.cancel {
                    fds.push(PollFd::new(c.fd(), PollFlags::POLLIN));
                }
                match poll(
                    &mut fds,
                    PollTimeout::try_from(ms.max(1)).unwrap_or(PollTimeout::MAX),
                ) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => {}
                    Err(e) => {
                        return Err(CriuError::Io {
                            op,
                            source: e.into(),
                        })
                    }
                }
                let ready = |f: &PollFd| f.revents().map(|r| !r.is_empty()).unwrap_or(false);
                (
                    ready(&fds[0]),
                    ready(&fds[1]),
                    fds.get(2).map(ready).unwrap_or(false),
                )
            };
            if let Some(c) = self.cancel {
                if cancel_ready || c.pending().is_some() {
                    if let Some(sig) = c.take() {
                        let signal = Signal::try_from(sig)
                            .map(|s| s.to_string())
                            .unwrap_or(sig.to_string());
                        return Err(CriuError::Cancelled { op, signal });
                    }
                }
            }
            if sock_ready {
                return self.read_one(op);
            }
            if pid_ready {
                return Err(self.gone(op));
            }
        }
    }

    fn read_one(&mut self, op: &'static str) -> Result<(Criu_resp, Option<OwnedFd>), CriuError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(
            self.sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(Errno::ECONNRESET) => return Err(self.gone(op)),
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => {
                return Err(CriuError::Io {
                    op,
                    source: std::io::Error::from(std::io::ErrorKind::Interrupted),
                })
            }
            Err(e) => {
                return Err(CriuError::Io {
                    op,
                    source: e.into(),
                })
            }
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: the kernel installed these fds for us.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
        }
        let len = msg.bytes;
        let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
        if truncated {
            return Err(CriuError::Oversized { op });
        }
        if len == 0 {
            return Err(self.gone(op));
        }
        let resp = Criu_resp::parse_from_bytes(&buf[..len]).map_err(|e| CriuError::Garbage {
            op,
            detail: format!("{len} bytes, {e}"),
        })?;
        if resp.type_.is_none() || resp.type_.map(|t| t.enum_value().is_err()).unwrap_or(false) {
            return Err(CriuError::Garbage {
                op,
                detail: format!("{len} bytes with no known message type"),
            });
        }
        Ok((resp, fds.into_iter().next()))
    }

    /// CRIU went away: say how (exit status or signal) and quote its log.
    fn gone(&mut self, op: &'static str) -> CriuError {
        // Give the kernel a moment to make the exit visible.
        let status = self.wait_exit(Duration::from_millis(200));
        let log = self
            .log_excerpt(self.default_log_name())
            .map(|e| e.render())
            .unwrap_or_default();
        match status {
            Some(WaitStatus::Exited(_, code)) => CriuError::Died {
                op,
                how: format!("exited with status {code}"),
                log,
            },
            Some(WaitStatus::Signaled(_, sig, _)) => CriuError::Died {
                op,
                how: format!("was killed by {sig}"),
                log,
            },
            _ => CriuError::SocketClosed { op, log },
        }
    }

    fn default_log_name(&self) -> Option<&'static str> {
        let dir = self.cfg.work_dir.as_ref()?;
        ["dump.log", "restore.log", "pre-dump.log"]
            .into_iter()
            .filter(|n| dir.join(n).exists())
            .max_by_key(|n| dir.join(n).metadata().and_then(|m| m.modified()).ok())
    }

    /// " (state: stopped)" from /proc, for timeout messages.
    fn proc_state(&self) -> String {
        procfs::process::Process::new(self.pid.as_raw())
            .and_then(|p| p.stat())
            .map(|s| match s.state {
                'T' | 't' => " (it was stopped, state T)".to_string(),
                'D' => " (it was in uninterruptible sleep, state D)".to_string(),
                'Z' => " (it had exited)".to_string(),
                _ => String::new(),
            })
            .unwrap_or_default()
    }

    /// Reap CRIU if it exits within `grace`.
    fn wait_exit(&mut self, grace: Duration) -> Option<WaitStatus> {
        if self.reaped {
            return None;
        }
        let deadline = Instant::now() + grace;
        loop {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(st) => {
                    self.reaped = true;
                    return Some(st);
                }
                Err(_) => {
                    self.reaped = true;
                    return None;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let ms = (deadline - now).as_millis().min(1000) as i32;
            let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
            let _ = poll(
                &mut fds,
                PollTimeout::try_from(ms.max(1)).unwrap_or(PollTimeout::MAX),
            );
        }
    }

    /// SIGKILL CRIU's whole process group and reap CRIU; then detach the
    /// cgroup yard a killed CRIU leaves mounted in its work dir.
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        let _ = killpg(self.pid, Signal::SIGKILL);
        // SIGKILL also ends a SIGSTOPped process.
        let _ = waitpid(self.pid, None);
        self.reaped = true;
        self.clean_mounts();
    }

    fn clean_mounts(&self) {
        if let Some(dir) = &self.cfg.work_dir {
            let n = super::janitor::umount_cgroup_yards(dir);
            if n > 0 {
                tracing::warn!(n, dir = %dir.display(), "detached cgroup mounts CRIU left behind");
            }
        }
    }

    /// End the session deliberately: shut our end down so CRIU's next recv
    /// fails and it exits; reap it, killing its group after [`EXIT_GRACE`].
    pub fn close(mut self) -> Option<WaitStatus> {
        self.end()
    }

    /// Tell CRIU the session is over (it exits on the EOF) without waiting
    /// for it: its exit then overlaps the caller's work until
    /// [`end`](Self::end) reaps it.
    pub fn hang_up(&self) {
        let _ = shutdown(self.sock.as_raw_fd(), Shutdown::Both);
    }

    /// [`close`](Self::close) without giving the session up, for a caller
    /// that ends it on one path and later on another; a second call does
    /// nothing (None).
    pub fn end(&mut self) -> Option<WaitStatus> {
        if std::mem::replace(&mut self.ended, true) {
            return None;
        }
        let _ = shutdown(self.sock.as_raw_fd(), Shutdown::Both);
        let st = self.wait_exit(EXIT_GRACE);
        if st.is_none() {
            self.kill();
        }
        // Helpers CRIU forked into its group (none should outlive it).
        let _ = killpg(self.pid, Signal::SIGKILL);
        self.clean_mounts();
        st
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = shutdown(self.sock.as_raw_fd(), Shutdown::Both);
            self.kill();
        }
    }
}

/// A request of type `t` (with `keep_open` for probes).
pub fn request(t: Criu_req_type) -> Criu_req {
    let mut r = Criu_req::new();
    r.type_ = Some(EnumOrUnknown::new(t));
    r
}
