//! CRIU's kernel-facts cache, kept for CRIU where it cannot keep it itself.
//!
//! Every CRIU run starts by probing the kernel (criu/kerndat.c: pagemap,
//! vDSO parsed in a child, `iptables -L` to load netfilter modules, socket
//! and mount probes, …). CRIU caches the result in `/run/criu.kdat` — but
//! it only *writes* the cache when `/run` is a tmpfs (so that it is gone
//! after a reboot, and a new kernel is probed again). Where `/run` is not a
//! tmpfs (this machine: `/run` is on the root ext4), every CRIU run probes
//! again: 25–70 ms of every checkpoint and restore (docs/performance.md).
//!
//! CRIU *reads* the cache from any file system, following symlinks. So,
//! when `/run` is not a tmpfs and nothing else sits at `/run/criu.kdat`, we
//! mount a small tmpfs of our own on `/run/cntrlive-criu` (a root-only
//! directory), let CRIU write its cache once into it — `criu check` in a
//! private mount namespace where it is bind-mounted over `/run` — and point
//! `/run/criu.kdat` at it with a symlink. After a reboot the tmpfs is gone:
//! the link dangles into an empty root-only directory (nobody else can put
//! a file there — a world-writable place such as `/dev/shm` would let any
//! user plant kernel "facts" for root's CRIU), CRIU probes as it always
//! did, and the next CRIU session of ours mounts and writes it again. A
//! CRIU of another build finds the file "stale" (its build time is part of
//! the magic), removes the link and probes; we write it again for that
//! build. Any other `/run/criu.kdat` (a file, someone else's link) is left
//! alone. Every CRIU on the host (runc's too) reads the cache, as it would
//! on a host whose `/run` is a tmpfs.
//!
//! Off with `{"criu": {"kdat_cache": false}}` in the configuration.

use std::ffi::CString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where CRIU reads its cache (KDAT_RUNDIR "/" KERNDAT_CACHE_NAME).
pub const CRIU_KDAT: &str = "/run/criu.kdat";
/// Our root-only directory with a tmpfs of ours on it: bind-mounted over
/// /run for CRIU to write its cache into, which /run/criu.kdat points at.
pub const CACHE_DIR: &str = "/run/cntrlive-criu";

/// What [`ensure`] found or did (for `check` and the debug log).
#[derive(Debug, PartialEq, Eq)]
pub enum State {
    /// /run is a tmpfs: CRIU keeps its cache itself.
    CriuKeepsIt,
    /// /run/criu.kdat points at our cache, which exists.
    Kept,
    /// Just written by `criu check`.
    Written,
    /// Left alone, and why.
    NotOurs(String),
    /// Could not be written, and why (CRIU probes as before).
    Failed(String),
}

fn is_tmpfs(p: &str) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

fn cache_file() -> PathBuf {
    Path::new(CACHE_DIR).join("criu.kdat")
}

/// Whether /run/criu.kdat is our link, and whether its target exists.
fn link_state() -> Result<Option<bool>, String> {
    match std::fs::symlink_metadata(CRIU_KDAT) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot stat {CRIU_KDAT}: {e}")),
        Ok(m) if m.file_type().is_symlink() => {
            if std::fs::read_link(CRIU_KDAT).ok().as_deref() != Some(cache_file().as_path()) {
                return Err(format!("{CRIU_KDAT} is someone else's link"));
            }
            Ok(Some(std::fs::metadata(CRIU_KDAT).is_ok()))
        }
        Ok(_) => Err(format!("{CRIU_KDAT} is a file of CRIU's or someone else's")),
    }
}

/// Our directory is owner-only, ours (not a link, not someone else's) and
/// has our tmpfs on it (`/run` itself is not one).
fn cache_dir_ok() -> bool {
    std::fs::symlink_metadata(CACHE_DIR).is_ok_and(|m| {
        m.is_dir() && m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o077 == 0
    }) && is_tmpfs(CACHE_DIR)
}

/// Make our directory and mount our tmpfs on it.
fn cache_dir() -> Result<(), String> {
    let _ = std::fs::DirBuilder::new().mode(0o700).create(CACHE_DIR);
    let m = std::fs::symlink_metadata(CACHE_DIR).map_err(|e| format!("{CACHE_DIR}: {e}"))?;
    if !m.is_dir() || m.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!("{CACHE_DIR} is not a directory of ours"));
    }
    if !is_tmpfs(CACHE_DIR) {
        let _ = std::fs::set_permissions(CACHE_DIR, std::fs::Permissions::from_mode(0o700));
        use nix::mount::{mount, MsFlags};
        mount(
            Some("tmpfs"),
            CACHE_DIR,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=1m,mode=0700"),
        )
        .map_err(|e| format!("cannot mount a tmpfs on {CACHE_DIR}: {e}"))?;
    }
    if !cache_dir_ok() {
        return Err(format!("{CACHE_DIR} is not an owner-only tmpfs of ours"));
    }
    Ok(())
}

/// Make sure CRIU finds its kernel facts cached (see the module comment).
/// Cheap when the cache is there (three stat calls); otherwise runs
/// `criu check` once (~0.1 s), bounded by `deadline`.
pub fn ensure(criu: &Path, deadline: Duration) -> State {
    if !nix::unistd::geteuid().is_root() {
        return State::NotOurs("not root: CRIU keeps no cache in /run".into());
    }
    if is_tmpfs("/run") {
        return State::CriuKeepsIt;
    }
    match link_state() {
        Ok(Some(true)) if cache_dir_ok() => return State::Kept,
        Ok(_) => {}
        Err(why) => return State::NotOurs(why),
    }
    if let Err(why) = cache_dir() {
        return State::Failed(why);
    }
    if let Err(why) = write(criu, deadline) {
        return State::Failed(why);
    }
    // Replace a dangling link of ours (or nothing) atomically.
    let tmp = format!("{CRIU_KDAT}.cntrlive-{}", std::process::id());
    let _ = std::fs::remove_file(&tmp);
    let linked = std::os::unix::fs::symlink(cache_file(), &tmp)
        .and_then(|_| std::fs::rename(&tmp, CRIU_KDAT));
    if let Err(e) = linked {
        let _ = std::fs::remove_file(&tmp);
        return State::Failed(format!("cannot link {CRIU_KDAT}: {e}"));
    }
    State::Written
}

/// `criu check` with our directory over /run in a mount namespace of its
/// own: CRIU probes the kernel and saves its cache there (a tmpfs).
fn write(criu: &Path, deadline: Duration) -> Result<(), String> {
    let _ = std::fs::remove_file(cache_file());
    let _ = std::fs::remove_file(Path::new(CACHE_DIR).join("criu.kdat.tmp"));
    let root = CString::new("/").unwrap();
    let run = CString::new("/run").unwrap();
    let dir = CString::new(CACHE_DIR).unwrap();
    let mut cmd = Command::new(criu);
    // Any check will do: kerndat_init runs before every command; this one
    // only reads what kerndat found.
    cmd.args(["check", "--feature", "mem_dirty_track", "-v0"])
        .current_dir(CACHE_DIR)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec; the
    // CStrings were made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let err = std::io::Error::last_os_error;
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(err());
            }
            if libc::unshare(libc::CLONE_NEWNS) < 0 {
                return Err(err());
            }
            let none = std::ptr::null();
            if libc::mount(
                none,
                root.as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                none as _,
            ) < 0
                || libc::mount(dir.as_ptr(), run.as_ptr(), none, libc::MS_BIND, none as _) < 0
            {
                return Err(err());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {} check: {e}", criu.display()))?;
    let end = Instant::now() + deadline;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} check did not end in {deadline:?}",
                    criu.display()
                ));
            }
        }
    }
    // Its exit status says whether the feature is there, not whether the
    // cache was written: the file says that.
    match std::fs::metadata(cache_file()) {
        Ok(m) if m.len() > 0 => Ok(()),
        _ => Err(format!(
            "{} check wrote no kernel facts cache",
            criu.display()
        )),
    }
}
