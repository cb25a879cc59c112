//! What checkpoint and restore read from a bundle's spec the same way.

use std::path::PathBuf;

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
    std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (id, ctrls) = (parts.next()?, parts.next()?);
            (id != "0" && !ctrls.is_empty())
                .then(|| ctrls.split(',').map(str::to_string).collect::<Vec<_>>())
        })
        .flatten()
        .filter(|c| !c.starts_with("name="))
        .collect()
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
