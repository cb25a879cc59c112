//! The OCI bundle: checked before libcontainer sees it, so that a bad bundle
//! is refused with a message naming the file and field, and nothing is
//! created under `--root`.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BundleError {
    #[error("bundle {0} does not exist or is not a directory (pass the bundle with --bundle/-b or run from inside it)")]
    NotADirectory(PathBuf),

    #[error("bundle {0} has no config.json (create one with `cntrlive-runtime spec`, or point --bundle at the right directory)")]
    NoConfig(PathBuf),

    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid {path}: field `{field}`: {msg}")]
    InvalidConfig {
        path: PathBuf,
        field: String,
        msg: String,
    },

    #[error("invalid {path}: {what}")]
    Incomplete { path: PathBuf, what: String },

    #[error("rootfs {0} (root.path in config.json) does not exist")]
    NoRootfs(PathBuf),
}

/// A validated bundle: absolute path and its parsed spec.
#[derive(Debug)]
pub struct Bundle {
    pub path: PathBuf,
    pub spec: Spec,
}

impl Bundle {
    /// The bundle given with `--bundle`, else the current directory (runc).
    pub fn open(bundle: Option<&Path>) -> Result<Bundle, BundleError> {
        let given = bundle
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let path = std::fs::canonicalize(&given)
            .ok()
            .filter(|p| p.is_dir())
            .ok_or_else(|| BundleError::NotADirectory(given.clone()))?;
        let config = path.join("config.json");
        if !config.exists() {
            return Err(BundleError::NoConfig(path));
        }
        let spec = parse_config(&config)?;
        let bundle = Bundle { path, spec };
        bundle.check()?;
        Ok(bundle)
    }

    fn check(&self) -> Result<(), BundleError> {
        let config = self.path.join("config.json");
        let incomplete = |what: &str| BundleError::Incomplete {
            path: config.clone(),
            what: what.into(),
        };
        let root = self
            .spec
            .root()
            .as_ref()
            .ok_or_else(|| incomplete("`root` is missing"))?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            self.path.join(root.path())
        };
        if !rootfs.is_dir() {
            return Err(BundleError::NoRootfs(rootfs));
        }
        let process = self
            .spec
            .process()
            .as_ref()
            .ok_or_else(|| incomplete("`process` is missing"))?;
        if process
            .args()
            .as_ref()
            .map(|a| a.is_empty())
            .unwrap_or(true)
        {
            return Err(incomplete(
                "`process.args` is empty: the container needs a program to run",
            ));
        }
        if self.spec.linux().is_none() {
            return Err(incomplete("`linux` is missing"));
        }
        Ok(())
    }
}

/// Parse config.json, naming the JSON path of the first bad field.
pub fn parse_config(path: &Path) -> Result<Spec, BundleError> {
    let file = File::open(path).map_err(|source| BundleError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let de = &mut serde_json::Deserializer::from_reader(BufReader::new(file));
    serde_path_to_error::deserialize(de).map_err(|e| BundleError::InvalidConfig {
        path: path.to_path_buf(),
        field: e.path().to_string(),
        msg: e.inner().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        dir
    }

    #[test]
    fn missing_config_ng() {
        let dir = tempfile::tempdir().unwrap();
        let err = Bundle::open(Some(dir.path())).unwrap_err();
        assert!(matches!(err, BundleError::NoConfig(_)), "{err}");
    }

    #[test]
    fn bad_field_is_named_ng() {
        let dir = bundle_with(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"cwd":"/","args":["sh"],"user":{"uid":"zero","gid":0}},"linux":{}}"#,
        );
        let err = Bundle::open(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("process.user.uid"), "{err}");
    }

    #[test]
    fn default_spec_is_accepted_ok() {
        let spec = serde_json::to_string(&Spec::default()).unwrap();
        let dir = bundle_with(&spec);
        Bundle::open(Some(dir.path())).unwrap();
    }

    #[test]
    fn missing_rootfs_ng() {
        let spec = serde_json::to_string(&Spec::default()).unwrap();
        let dir = bundle_with(&spec);
        std::fs::remove_dir(dir.path().join("rootfs")).unwrap();
        assert!(matches!(
            Bundle::open(Some(dir.path())).unwrap_err(),
            BundleError::NoRootfs(_)
        ));
    }
}
