//! What checkpoint and restore read from a bundle's spec the same way.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, Spec};

/// The annotation runc reads for a CRIU configuration file.
pub const CRIU_CONFIG_ANNOTATION: &str = "org.criu.config";
/// runc's default CRIU configuration file, used when the annotation is absent.
pub const DEFAULT_CRIU_CONFIG: &str = "/etc/criu/runc.conf";

/// The CRIU configuration file for this container, as runc picks it: the
/// `org.criu.config` annotation ("" disables it), else /etc/criu/runc.conf
/// if it exists.
pub fn criu_config_file(spec: &Spec) -> Option<PathBuf> {
    match spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(CRIU_CONFIG_ANNOTATION))
    {
        Some(v) if v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => Some(PathBuf::from(DEFAULT_CRIU_CONFIG)).filter(|p| p.exists()),
    }
}

/// The cgroup v1 controllers of this host that libcontainer manages (`cpu`,
/// `memory`, …), empty on a pure cgroup v2 host.
///
/// On a v1 or hybrid host libcontainer manages only the v1 hierarchies: a
/// container sits at the root of the unified (v2) hierarchy, so letting CRIU
/// dump "all controllers" records the whole v2 tree, and every restore
/// recreates it under its cgroup root — nesting that compounds with each
/// restore (seen here: 842,136 empty directories and a 40 s dump). Dumps and
/// restores therefore name the v1 controllers explicitly on such hosts.
/// Named hierarchies (`name=systemd`) are left out for the same reason:
/// libcontainer never places a container in them, so the container sits at
/// their root too and dumping them nests the whole tree again.
pub fn v1_controllers() -> Vec<String> {
    cgroups_of(None)
        .into_iter()
        .filter(|c| c.hierarchy != 0)
        .flat_map(|c| c.controllers)
        .filter(|c| !c.starts_with("name="))
        .collect()
}

/// A process's cgroups (`/proc/PID/cgroup`; `None`: this process).
pub fn cgroups_of(pid: Option<i32>) -> Vec<procfs::ProcessCGroup> {
    let p = match pid {
        Some(pid) => procfs::process::Process::new(pid),
        None => procfs::process::Process::myself(),
    };
    p.and_then(|p| p.cgroups()).map(|c| c.0).unwrap_or_default()
}

/// A process's mounts (`/proc/PID/mountinfo`; `None`: this process).
pub(crate) fn mounts_of(pid: Option<i32>) -> Vec<procfs::process::MountInfo> {
    let p = match pid {
        Some(pid) => procfs::process::Process::new(pid),
        None => procfs::process::Process::myself(),
    };
    p.and_then(|p| p.mountinfo())
        .map(|m| m.0)
        .unwrap_or_default()
}

/// The v1 controllers libcgroups' manager places a container in.
const MANAGED_V1: [&str; 12] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "memory",
    "pids",
    "perf_event",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];

/// A container's cgroup directories on a v1 (or hybrid) host: one per v1
/// hierarchy holding a controller libcgroups manages, found with one read
/// of the mount table (libcgroups' manager reads it once per controller).
/// None on a pure cgroup v2 host.
pub fn v1_cgroup_dirs(cgroup_path: &Path) -> Option<Vec<PathBuf>> {
    let rel = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
    let mut dirs = Vec::new();
    for m in mounts_of(None) {
        if m.fs_type == "cgroup2" && m.mount_point == Path::new("/sys/fs/cgroup") {
            return None;
        }
        if m.fs_type == "cgroup" && MANAGED_V1.iter().any(|c| m.super_options.contains_key(*c)) {
            let d = m.mount_point.join(rel);
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    (!dirs.is_empty()).then_some(dirs)
}

/// cgroup filesystems mounted inside a running container (`mounts`: its
/// mount table, `mounts_of(Some(pid))`; mount points as the container sees
/// them). CRIU cannot dump them — their root is a
/// subdirectory of the host's hierarchy ("doesn't have a proper root
/// mount") — so a dump names each as an external mount, as runc does for
/// its cgroup binds (`addCriuDumpMount` in libcontainer/criu_linux.go).
pub fn cgroup_mounts_in(mounts: &[procfs::process::MountInfo]) -> Vec<String> {
    mounts
        .iter()
        .filter(|m| matches!(m.fs_type.as_str(), "cgroup" | "cgroup2"))
        .map(|m| m.mount_point.display().to_string())
        .collect()
}

/// Where the restored container's cgroup mounts come from on this host:
/// (mount point in the container, host directory). For each `cgroup` mount
/// of the spec, every v1 hierarchy mounted under /sys/fs/cgroup is mapped to
/// the new container's cgroup in it (`cgroup_path`), or, for hierarchies
/// libcontainer does not manage (`name=systemd`), to this process's own
/// cgroup there, which is where the restored tree will sit. On a unified
/// host the one cgroup2 mount maps to the new cgroup. runc does the same for
/// cgroup mounts in `Restore` (libcontainer/criu_linux.go).
pub fn cgroup_restore_mounts(spec: &Spec, cgroup_path: &str) -> Vec<(String, String)> {
    let dests: Vec<String> = spec
        .mounts()
        .iter()
        .flatten()
        .filter(|m| m.typ().as_deref() == Some("cgroup"))
        .map(|m| m.destination().display().to_string())
        .collect();
    if dests.is_empty() {
        return Vec::new();
    }
    let rel = cgroup_path.trim_start_matches('/');
    let own = cgroups_of(None);
    let mut out = Vec::new();
    for m in mounts_of(None) {
        let mount_point = m.mount_point.display().to_string();
        if m.fs_type == "cgroup2" && mount_point == "/sys/fs/cgroup" {
            // Unified host: one cgroup2 mount.
            for d in &dests {
                out.push((d.clone(), format!("/sys/fs/cgroup/{rel}")));
            }
            continue;
        }
        let Some(name) = mount_point.strip_prefix("/sys/fs/cgroup/") else {
            continue;
        };
        if m.fs_type != "cgroup" {
            continue; // the hybrid host's unified tree
        }
        // A named hierarchy carries "name=…" among its super options.
        let sub = match m.super_options.get("name").cloned().flatten() {
            None => rel.to_string(),
            Some(named) => {
                let key = format!("name={named}");
                own.iter()
                    .find(|c| c.controllers.contains(&key))
                    .map(|c| c.pathname.trim_start_matches('/').to_string())
                    .unwrap_or_default()
            }
        };
        let host = if sub.is_empty() {
            mount_point.clone()
        } else {
            format!("{mount_point}/{sub}")
        };
        for d in &dests {
            out.push((format!("{}/{name}", d.trim_end_matches('/')), host.clone()));
        }
    }
    out
}

/// A bind mount: CRIU treats it as an external mount on both sides.
pub fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn annotation_picks_config_ok() {
        let mut spec = Spec::default();
        spec.set_annotations(Some(HashMap::from([(
            CRIU_CONFIG_ANNOTATION.to_string(),
            "/etc/x.conf".to_string(),
        )])));
        assert_eq!(criu_config_file(&spec), Some(PathBuf::from("/etc/x.conf")));
        spec.set_annotations(Some(HashMap::from([(
            CRIU_CONFIG_ANNOTATION.to_string(),
            String::new(),
        )])));
        assert_eq!(criu_config_file(&spec), None);
    }
}
