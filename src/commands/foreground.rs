//! Waiting for a foreground process (attached `run` and `exec`), forwarding
//! the signals we receive to it, as runc's `signals.go` does.

use anyhow::{Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SigSet;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

pub fn become_subreaper() -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_CHILD_SUBREAPER)");
    }
    Ok(())
}

/// Block all signals in this thread so they queue for `sigwait`; must run
/// before any child is spawned so none is lost.
pub fn block_signals() -> Result<()> {
    SigSet::all().thread_block().context("pthread_sigmask")
}

/// Wait for `pid` to exit; return its status (128+signal if killed, like a
/// shell). Every other signal is forwarded to it.
pub fn wait_forwarding_signals(pid: Pid) -> Result<i32> {
    let set = SigSet::all();
    set.thread_block().context("pthread_sigmask")?;
    // It may already be gone before we wait.
    if let Some(status) = reap(pid)? {
        return Ok(status);
    }
    loop {
        match set.wait().context("sigwait")? {
            Signal::SIGCHLD => {
                if let Some(status) = reap(pid)? {
                    return Ok(status);
                }
            }
            Signal::SIGURG | Signal::SIGWINCH => {}
            sig => {
                if let Err(err) = kill(pid, sig) {
                    tracing::warn!(?err, ?sig, %pid, "failed to forward signal");
                }
            }
        }
    }
}

/// Reap every exited child; `Some(status)` once `pid` is among them.
fn reap(pid: Pid) -> Result<Option<i32>> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => return Ok(Some(code)),
            Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => return Ok(Some(128 + sig as i32)),
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(_) => continue,
            Err(nix::errno::Errno::ECHILD) => return Ok(Some(0)),
            Err(e) => return Err(e).context("waitpid"),
        }
    }
}
