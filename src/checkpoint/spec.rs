//! What checkpoint and restore read from a bundle's spec the same way.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, Spec};

/// The annotation runc reads for a CRIU configuration file.
pub const CRIU_CONFIG_ANNOTATION: &str = "org.criu.config";
/// runc's default CRIU configuration file, used when the annotation is absent.
pub const DEFAULT_CRIU_CONFIG: &str = "/etc/criu/runc.conf";

/// Whether config.json asks for a namespace of type `typ` (new or joined).
pub fn has_namespace(spec: &Spec, typ: oci_spec::runtime::LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == typ))
}

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

/// The v1 hierarchies libcgroups' manager places a container in, as
/// (mount point, controllers), found with one read of the mount table
/// (libcgroups' manager reads it once per controller). None on a pure
/// cgroup v2 host.
fn managed_v1_mounts() -> Option<Vec<(PathBuf, Vec<String>)>> {
    let mut found: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for m in mounts_of(None) {
        if m.fs_type == "cgroup2" && m.mount_point == Path::new("/sys/fs/cgroup") {
            return None;
        }
        let ctrls: Vec<String> = MANAGED_V1
            .iter()
            .filter(|c| m.super_options.contains_key(**c))
            .map(|c| c.to_string())
            .collect();
        if m.fs_type == "cgroup"
            && !ctrls.is_empty()
            && !found.iter().any(|(p, _)| *p == m.mount_point)
        {
            found.push((m.mount_point.clone(), ctrls));
        }
    }
    (!found.is_empty()).then_some(found)
}

/// A container's cgroup directories on a v1 (or hybrid) host: one per v1
/// hierarchy holding a controller libcgroups manages. None on a pure
/// cgroup v2 host.
pub fn v1_cgroup_dirs(cgroup_path: &Path) -> Option<Vec<PathBuf>> {
    let rel = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
    Some(
        managed_v1_mounts()?
            .into_iter()
            .map(|(mount_point, _)| mount_point.join(rel))
            .collect(),
    )
}

/// Create a container's v1 cgroup directories (`v1_cgroup_dirs`) without
/// moving any task into them: what libcgroups' `add_task` does before its
/// write to `cgroup.procs`, including a new cpuset's `cpuset.cpus` and
/// `cpuset.mems`, copied down from the parent (a task cannot join a cpuset
/// with none). None on a cgroup v2 host.
pub fn create_v1_cgroup_dirs(cgroup_path: &Path) -> Option<std::io::Result<V1Cgroup>> {
    let mounts = managed_v1_mounts()?;
    let rel = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
    let dirs: Vec<PathBuf> = mounts.iter().map(|(m, _)| m.join(rel)).collect();
    let fresh: Vec<bool> = dirs.iter().map(|d| !d.exists()).collect();
    Some(
        dirs.iter()
            .try_for_each(|d| create_cgroup_dir(d))
            .map(|()| V1Cgroup {
                mounts,
                dirs,
                fresh,
            }),
    )
}

/// A container's cgroup on a v1 (or hybrid) host, its directories made.
pub struct V1Cgroup {
    /// (mount point, controllers) of each hierarchy, as `dirs`.
    mounts: Vec<(PathBuf, Vec<String>)>,
    pub dirs: Vec<PathBuf>,
    /// Which of `dirs` this call made (the others existed).
    fresh: Vec<bool>,
}

impl V1Cgroup {
    /// The `cpu.shares` file of the cpu controller's directory, if this
    /// call made that directory (nobody else has set it).
    pub fn fresh_cpu_shares(&self) -> Option<PathBuf> {
        self.mounts
            .iter()
            .zip(&self.dirs)
            .zip(&self.fresh)
            .find(|(((_, ctrls), _), _)| ctrls.iter().any(|c| c == "cpu"))
            .filter(|(_, fresh)| **fresh)
            .map(|((_, d), _)| d.join("cpu.shares"))
    }
}

fn create_cgroup_dir(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_cgroup_dir(parent)?;
    }
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let own = dir.join(f);
        let Ok(v) = std::fs::read_to_string(&own) else {
            return Ok(()); // not the cpuset hierarchy
        };
        if v.trim().is_empty() {
            let from = dir.parent().map(|p| p.join(f)).unwrap_or_default();
            std::fs::write(&own, std::fs::read_to_string(&from)?.trim())?;
        }
    }
    Ok(())
}

/// This thread, moved into cgroup directories (`v1_cgroup_dirs`) and back
/// when dropped: a process it forks meanwhile starts in them.
///
/// A thread moving itself — "0" written to `tasks` — is the one cgroup
/// migration the kernel does without its global threadgroup lock, whose
/// first taking after a quiet spell waits an RCU grace period (~7–9 ms on
/// a host without `favordynmods`, docs/performance.md). runc moves CRIU
/// into the container's cgroup by pid (`criuApplyCgroups`), which pays it.
pub struct ThreadInCgroups {
    back: Vec<PathBuf>,
}

/// Where a process (`cgroups`: its `/proc/PID/cgroup`) sits in each of
/// `mounts` (`managed_v1_mounts`), in their order; None if it is in one of
/// them not at all.
fn dirs_in(
    mounts: &[(PathBuf, Vec<String>)],
    cgroups: &[procfs::ProcessCGroup],
) -> Option<Vec<PathBuf>> {
    mounts
        .iter()
        .map(|(mount_point, ctrls)| {
            let line = cgroups
                .iter()
                .find(|c| c.controllers.iter().any(|x| ctrls.contains(x)))?;
            Some(mount_point.join(line.pathname.trim_start_matches('/')))
        })
        .collect()
}

impl ThreadInCgroups {
    pub fn enter(cgroup: &V1Cgroup) -> std::io::Result<ThreadInCgroups> {
        let dirs = &cgroup.dirs;
        // Where this thread is now, in the same hierarchies (same order).
        let back = dirs_in(&cgroup.mounts, &cgroups_of(None))
            .ok_or_else(|| std::io::Error::other("not in every cgroup hierarchy"))?;
        let mut moved = ThreadInCgroups { back: Vec::new() };
        for (d, b) in dirs.iter().zip(back) {
            std::fs::write(d.join("tasks"), "0")?;
            moved.back.push(b);
        }
        Ok(moved)
    }
}

impl Drop for ThreadInCgroups {
    fn drop(&mut self) {
        for b in &self.back {
            if let Err(e) = std::fs::write(b.join("tasks"), "0") {
                tracing::warn!("cannot move back into {}: {e}", b.display());
            }
        }
    }
}

/// Whether every task of a container shares its init's cgroups: no child
/// cgroup under any of its v1 directories and every task in them has the
/// same `/proc/PID/cgroup` as init. Then a restore may let the restored
/// tree inherit CRIU's cgroups (CRIU's `--manage-cgroups-mode ignore`).
pub fn one_cgroup_set(pid: i32) -> bool {
    let Some(dirs) = managed_v1_mounts().and_then(|m| dirs_in(&m, &cgroups_of(Some(pid)))) else {
        return false;
    };
    let mut tasks = String::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return false;
        };
        if entries
            .flatten()
            .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        {
            return false;
        }
        if tasks.is_empty() {
            tasks = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        }
    }
    let cgroup_file = |p: i32| std::fs::read_to_string(format!("/proc/{p}/cgroup")).ok();
    let Some(init) = cgroup_file(pid) else {
        return false;
    };
    let mut n = 0;
    for p in tasks.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        n += 1;
        if p != pid && cgroup_file(p).as_ref() != Some(&init) {
            return false;
        }
    }
    n > 0
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
