//! Our manifest beside CRIU's images, and keeping half-written images from
//! ever looking complete.
//!
//! CRIU's `inventory.img` is what makes an image directory restorable; our
//! `cntrlive-manifest.json` is written (atomically) only after CRIU reported
//! success. On any failure both are removed, so neither CRIU nor we will
//! restore from a partial dump; CRIU's logs are kept.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

pub const MANIFEST: &str = "cntrlive-manifest.json";
pub const INVENTORY: &str = "inventory.img";
/// Bumped when the manifest's meaning changes; checked on load.
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    /// "dump" or "pre-dump".
    pub kind: String,
    pub runtime_version: String,
    pub criu_version: String,
    pub container_id: String,
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<PathBuf>,
}

impl Manifest {
    pub fn write(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join(format!(".{MANIFEST}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("failed to write {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join(MANIFEST))
            .with_context(|| format!("failed to write {}", dir.join(MANIFEST).display()))?;
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(MANIFEST);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
        };
        let m: Manifest =
            serde_json::from_slice(&text).with_context(|| format!("invalid {}", path.display()))?;
        if m.format > MANIFEST_FORMAT {
            bail!(
                "{} has format {} but this cntrlive-runtime reads format {MANIFEST_FORMAT} at most: upgrade cntrlive-runtime",
                path.display(),
                m.format
            );
        }
        Ok(Some(m))
    }
}

/// The files whose presence makes `dir` look restorable.
pub fn completion_markers(dir: &Path) -> [PathBuf; 2] {
    [dir.join(INVENTORY), dir.join(MANIFEST)]
}

/// Remove the completion markers (after a failed or cancelled dump).
pub fn invalidate(dir: &Path) {
    for f in completion_markers(dir) {
        let _ = std::fs::remove_file(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            kind: "dump".into(),
            runtime_version: "0.1.0".into(),
            criu_version: "4.2.1".into(),
            container_id: "c1".into(),
            created: "2026-01-01T00:00:00Z".into(),
            parent: None,
        }
    }

    #[test]
    fn roundtrip_ok() {
        let d = tempfile::tempdir().unwrap();
        manifest().write(d.path()).unwrap();
        assert_eq!(Manifest::load(d.path()).unwrap(), Some(manifest()));
    }

    #[test]
    fn newer_format_ng() {
        let d = tempfile::tempdir().unwrap();
        let mut m = manifest();
        m.format = MANIFEST_FORMAT + 1;
        m.write(d.path()).unwrap();
        assert!(Manifest::load(d.path())
            .unwrap_err()
            .to_string()
            .contains("upgrade"));
    }

    #[test]
    fn invalidate_removes_markers_ok() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(INVENTORY), "x").unwrap();
        manifest().write(d.path()).unwrap();
        std::fs::write(d.path().join("dump.log"), "log").unwrap();
        invalidate(d.path());
        assert!(completion_markers(d.path()).iter().all(|f| !f.exists()));
        assert!(d.path().join("dump.log").exists(), "the log is kept");
    }
}
