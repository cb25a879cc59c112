//! The CRIU version and features the runtime relies on, as named constants,
//! and the probes behind `cntrlive-runtime check` and `features`.

use std::path::Path;

use protobuf::MessageField;

use super::rpc::{Criu_features, Criu_req_type};
use super::session::{request, AcceptAll, CriuError, Session};

/// CRIU versions as CRIU reports them: major*10000 + minor*100 + sublevel.
pub type CriuVersion = u32;

/// Oldest CRIU we drive: `keep_open` sessions, FEATURE_CHECK, nftables
/// network lock and `pre_dump_mode` are all there from 3.16.
pub const MIN_VERSION: CriuVersion = 3_16_00;
/// CRIU before 4.2 cannot dump any INET socket on kernels >= 6.16.
pub const INET_ON_NEW_KERNELS: CriuVersion = 4_02_00;

pub fn format_version(v: CriuVersion) -> String {
    format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100)
}

/// The inverse of [`format_version`] ("4.2.1" → 4_02_01).
pub fn parse_version(v: &str) -> Option<CriuVersion> {
    let mut it = v.split('.').map(|x| x.trim().parse::<u32>().ok());
    let (major, minor) = (it.next()??, it.next()??);
    Some(major * 10000 + minor * 100 + it.next().flatten().unwrap_or(0))
}

/// VERSION request; the session stays open.
pub fn version(s: &mut Session) -> Result<CriuVersion, CriuError> {
    let mut req = request(Criu_req_type::VERSION);
    req.keep_open = Some(true);
    let resp = s.request(&req, &mut AcceptAll)?;
    let v = resp.version.as_ref().cloned().unwrap_or_default();
    Ok(v.major_number() as u32 * 10000 + v.minor_number() as u32 * 100 + v.sublevel() as u32)
}

/// What FEATURE_CHECK answered: `mem_track` gates `--pre-dump` (dirty-memory
/// tracking, soft-dirty), `lazy_pages` gates `--lazy-pages` (userfaultfd).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    pub mem_track: bool,
    pub lazy_pages: bool,
    pub pidfd_store: bool,
}

/// FEATURE_CHECK for everything we use; the session stays open.
pub fn features(s: &mut Session) -> Result<Features, CriuError> {
    let mut req = request(Criu_req_type::FEATURE_CHECK);
    req.keep_open = Some(true);
    let mut f = Criu_features::new();
    f.mem_track = Some(true);
    f.lazy_pages = Some(true);
    f.pidfd_store = Some(true);
    req.features = MessageField::some(f);
    // FEATURE_CHECK answers success=false when a feature is missing; the
    // features field still says which.
    let resp = match s.request(&req, &mut AcceptAll) {
        Ok(r) => r,
        Err(CriuError::Failed { .. }) => return Ok(Features::default()),
        Err(e) => return Err(e),
    };
    let got = resp.features.as_ref().cloned().unwrap_or_default();
    Ok(Features {
        mem_track: got.mem_track(),
        lazy_pages: got.lazy_pages(),
        pidfd_store: got.pidfd_store(),
    })
}

/// A failed gate, worded for the user.
pub fn mem_track_missing() -> String {
    "pre-dump needs dirty-memory tracking, which this kernel does not offer: it was built without \
     CONFIG_MEM_SOFT_DIRTY (CRIU's FEATURE_CHECK mem_track says no). Nothing was frozen or written. \
     Use a kernel with soft-dirty for pre-copy, or post-copy with --lazy-pages, or a plain checkpoint."
        .to_string()
}

pub fn lazy_pages_missing() -> String {
    "lazy pages need userfaultfd, which CRIU's FEATURE_CHECK lazy_pages says this host lacks \
     (CONFIG_USERFAULTFD, or vm.unprivileged_userfaultfd / permissions). Nothing was frozen or written."
        .to_string()
}

/// Facts about the host that are not CRIU's to answer.
pub struct HostFacts {
    pub cgroup: &'static str,
    pub pipe_max_size: Option<u64>,
    pub iptables_restore: bool,
    pub userfaultfd: bool,
}

pub fn host_facts() -> HostFacts {
    let cgroup = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2 (unified)"
    } else if Path::new("/sys/fs/cgroup/unified").exists() {
        "v1 hybrid (v2 at /sys/fs/cgroup/unified)"
    } else {
        "v1 (legacy)"
    };
    let pipe_max_size = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let iptables_restore = [
        "/usr/sbin/iptables-restore",
        "/sbin/iptables-restore",
        "/usr/bin/iptables-restore",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    // SAFETY: userfaultfd(2) with flags; the fd is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
    let userfaultfd = fd >= 0;
    if fd >= 0 {
        // SAFETY: closing the fd we just got.
        unsafe { libc::close(fd as i32) };
    }
    HostFacts {
        cgroup,
        pipe_max_size,
        iptables_restore,
        userfaultfd,
    }
}

/// Pipe size CRIU's lazy page server asks for (F_SETPIPE_SZ, ~3.3 MB).
pub const LAZY_PIPE_SIZE: u64 = 4 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_format_ok() {
        assert_eq!(format_version(4_02_01), "4.2.1");
        assert_eq!(format_version(MIN_VERSION), "3.16.0");
    }
}
