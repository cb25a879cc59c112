//! The restored container's output through a log relay: a `restore` of
//! ours started detached with the container's stdout and stderr on a pipe
//! to a `log-relay` process appending to a file (migrations' destinations,
//! batch restores).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};

/// Start a detached `restore` of ours (`cmd`, which passes `--stdio-fds
/// 10,11,12`): the container's stdin is /dev/null, its stdout and stderr a
/// pipe to a `log-relay` appending to `log` (pipes, so that it can be
/// checkpointed and moved again); restore's own messages go to `errors`
/// (a file, not a pipe: what restore leaves running — janitor, lazy-pages
/// supervisor — would hold a pipe open).
pub(crate) fn spawn_restore(
    mut cmd: Command,
    log: &Path,
    errors: &Path,
) -> Result<std::process::Child> {
    // Close-on-exec: only this restore (fds 11, 12) and its relay (stdin)
    // get the pipe, not children started beside it (a batch, concurrent
    // migrations), which would keep the relay from ever seeing EOF.
    let (pr, pw) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Command::new(std::env::current_exe()?)
        .arg("log-relay")
        .arg(log)
        .stdin(Stdio::from(pr))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start the log relay")?;
    // Sources above 12, so that no dup2 below is onto itself (which would
    // keep its close-on-exec flag and lose the fd at exec).
    let high = |fd: i32| -> Result<OwnedFd> {
        let h = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100))?;
        // SAFETY: a new fd of ours.
        Ok(unsafe { OwnedFd::from_raw_fd(h) })
    };
    let null = high(std::fs::File::open("/dev/null")?.as_raw_fd())?;
    let pw = high(pw.as_raw_fd())?;
    let (n, p) = (null.as_raw_fd(), pw.as_raw_fd());
    // SAFETY: dup2 only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Three distinct fds: CRIU closes each inherited fd once it has
            // stored it.
            if libc::dup2(n, 10) < 0 || libc::dup2(p, 11) < 0 || libc::dup2(p, 12) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(errors)?)
        .spawn()
        .context("cannot run restore")?;
    drop(pw);
    Ok(child)
}

/// `log-relay FILE`: append stdin to FILE until EOF (the restored
/// container's stdout and stderr on the destination).
pub fn log_relay(file: &Path) -> Result<()> {
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("cannot open {}", file.display()))?;
    let mut stdin = std::io::stdin().lock();
    std::io::copy(&mut stdin, &mut out)?;
    Ok(())
}
