//! A private network namespace with nothing in it but loopback is not
//! dumped (docs/performance.md, "Where the time went"): CRIU would spend
//! tens of milliseconds on it at each end — links, addresses, routes and
//! rules through `ip`, iptables through `iptables-save`/`-restore` — to
//! carry a namespace that a fresh one reproduces. The checkpoint names it
//! external (as runc does for a namespace config.json names by path) and
//! records whether `lo` was up; the restore creates a fresh namespace,
//! brings `lo` up if it was, and gives it to CRIU through an inherited fd.
//!
//! Not skipped (the namespace is dumped as usual) when it holds anything a
//! fresh one would lack: an interface other than `lo`, iptables tables in
//! use, `net.*` sysctls in config.json, a user namespace (a fresh network
//! namespace would be ours, not the container's user namespace's) — or
//! with `checkpoint --dump-netns`, or for post-copy (`--lazy-pages`: the
//! restore starts before the manifest that would tell it is written)
//! (images that runc and crun can restore too).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use anyhow::{bail, Context as _, Result};
use nix::sched::{setns, unshare, CloneFlags};

/// What the restore needs to rebuild the namespace (the manifest's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FreshNetns {
    /// `lo` was up in the source namespace.
    pub lo_up: bool,
}

/// Whether `pid`'s network namespace can be left out of the dump.
/// `loopback_only`: it is the container's own and has only `lo`.
pub fn skippable(pid: i32, loopback_only: bool, spec: &oci_spec::runtime::Spec) -> bool {
    if !loopback_only {
        return false;
    }
    // A fresh namespace would belong to our user namespace, not the
    // container's.
    let userns = super::spec::has_namespace(spec, oci_spec::runtime::LinuxNamespaceType::User);
    let sysctl = spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().as_ref())
        .is_some_and(|s| s.keys().any(|k| k.starts_with("net.")));
    // Tables in use in that namespace (legacy iptables and ip6tables).
    let tables = ["ip_tables_names", "ip6_tables_names"].iter().any(|f| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{f}"))
            .map(|t| !t.trim().is_empty())
            .unwrap_or(false)
    });
    !userns && !sysctl && !tables
}

/// Whether `lo` is up in `pid`'s network namespace.
pub fn lo_up(pid: i32) -> Result<bool> {
    let ns = File::open(format!("/proc/{pid}/ns/net"))
        .with_context(|| format!("cannot open the network namespace of {pid}"))?;
    in_thread(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).context("setns into the container's netns")?;
        lo_flags(false)
    })
}

/// A new network namespace, `lo` up if `lo_up`; its file (on an fd ≥ 100,
/// not close-on-exec: CRIU inherits it). Made in the calling thread, which
/// stays in it: call it on a thread of its own (the restore does).
pub fn fresh_in_this_thread(f: FreshNetns) -> Result<File> {
    let ns = {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        if f.lo_up {
            lo_flags(true)?;
        }
        File::open("/proc/thread-self/ns/net").context("cannot open the new network namespace")?
    };
    let high = nix::fcntl::fcntl(ns.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD(100))?;
    // SAFETY: a fresh fd we own.
    Ok(unsafe { File::from_raw_fd(high) })
}

/// Run `f` on a thread of its own (namespace changes stay there).
fn in_thread<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    std::thread::spawn(f)
        .join()
        .map_err(|_| anyhow::anyhow!("network namespace thread panicked"))?
}

/// `lo`'s IFF_UP in this thread's namespace; with `set_up`, set it first.
fn lo_flags(set_up: bool) -> Result<bool> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: a valid socket and ifreq; SIOCGIFFLAGS fills ifru_flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        bail!("SIOCGIFFLAGS lo: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the union's flags member, just filled by the kernel.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if set_up && flags & libc::IFF_UP as libc::c_short == 0 {
        req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        // SAFETY: as above; SIOCSIFFLAGS reads ifru_flags.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
            bail!("bringing lo up: {}", std::io::Error::last_os_error());
        }
        return Ok(true);
    }
    Ok(flags & libc::IFF_UP as libc::c_short != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_netns_has_lo_up_ok() {
        let ns = in_thread(|| fresh_in_this_thread(FreshNetns { lo_up: true })).unwrap();
        let up = in_thread(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET)?;
            lo_flags(false)
        })
        .unwrap();
        assert!(up);
    }
}
