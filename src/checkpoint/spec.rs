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
