//! One state-changing runtime command at a time per container.
//!
//! `create`, `run`, `start`, `pause`, `resume`, `update`, `delete`,
//! `checkpoint`, `restore` and `migrate` take a lock on
//! `<root>/.locks/<id>` before they touch the container; a second such
//! command on the same container waits for the first to end (at most the
//! CRIU deadline plus 10 s), then fails naming the holder. `state`, `list`,
//! `ps`, `kill`, `exec` and `events` take none (kill must reach a container
//! whatever else runs; runc's exec runs beside anything).
//!
//! POSIX record locks (fcntl F_SETLK): held by this process only — a
//! forked helper (janitor, lazy-pages supervisor) does not inherit it, and
//! the kernel drops it when the process dies, however it dies. The lock
//! files stay (removing one would let two processes hold the "same" lock on
//! two inodes); they are empty.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

static HELD: Mutex<Option<File>> = Mutex::new(None);

fn lock_arg(kind: libc::c_short) -> libc::flock {
    // SAFETY: flock is plain data; zero is a valid value for every field.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = kind;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    l
}

/// Who holds the lock (pid and its command line), if anyone.
fn holder(f: &File) -> Option<String> {
    let mut l = lock_arg(libc::F_WRLCK as libc::c_short);
    // SAFETY: F_GETLK fills `l`.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut l) } != 0
        || l.l_type == libc::F_UNLCK as libc::c_short
    {
        return None;
    }
    let cmd = std::fs::read(format!("/proc/{}/cmdline", l.l_pid))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Some(format!("pid {} ({cmd})", l.l_pid))
}

/// Take container `id`'s lock in state root `root`, waiting up to `wait`.
pub fn acquire(root: &Path, id: &str, what: &str, wait: Duration) -> Result<()> {
    let dir = root.join(".locks");
    if !dir.is_dir() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let path = dir.join(id);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open the lock {}", path.display()))?;
    let start = Instant::now();
    let mut said = false;
    loop {
        let l = lock_arg(libc::F_WRLCK as libc::c_short);
        // SAFETY: F_SETLK reads `l`.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &l) } == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
        let who = holder(&f).unwrap_or_else(|| "another process".into());
        if start.elapsed() >= wait {
            bail!(
                "container \"{id}\" is busy: {who} has held it for {:.0} s; `{what}` gave up waiting (try again when that command ends)",
                start.elapsed().as_secs_f64()
            );
        }
        if !said {
            tracing::info!("container \"{id}\" is busy ({who}): `{what}` waits");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    *HELD.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    Ok(())
}

/// Let go early: the command now only waits (an attached `run` or
/// `restore` waiting for the container to exit).
pub fn release() {
    HELD.lock().unwrap_or_else(|e| e.into_inner()).take();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_waits_then_fails_naming_the_first_ng() {
        let root = tempfile::tempdir().unwrap();
        acquire(root.path(), "c1", "checkpoint", Duration::ZERO).unwrap();
        // A lock is per process: a child must find it held.
        match unsafe { libc::fork() } {
            0 => {
                let r = acquire(root.path(), "c1", "delete", Duration::from_millis(100));
                let ok = matches!(&r, Err(e) if e.to_string().contains("is busy: pid"));
                let other = acquire(root.path(), "c2", "delete", Duration::ZERO).is_ok();
                unsafe { libc::_exit(if ok && other { 0 } else { 1 }) };
            }
            pid => {
                let mut st = 0;
                unsafe { libc::waitpid(pid, &mut st, 0) };
                assert_eq!(libc::WEXITSTATUS(st), 0, "the child got a held lock");
            }
        }
        release();
    }
}
