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
    /// sha256 of the source bundle's config.json (informational: another
    /// host's bundle legitimately differs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<String>,
    /// The source container's cgroup path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_path: Option<String>,
    /// Namespace types the source container had (checked on restore: CRIU
    /// restores the dumped namespaces, the bundle must ask for the same).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Whether the source container had a terminal (checked on restore).
    #[serde(default)]
    pub terminal: bool,
    /// Where the source init's stdin/stdout/stderr pointed (descriptors.json).
    #[serde(default)]
    pub descriptors: Vec<String>,
    /// The source had its own network namespace with only `lo`: restore
    /// skips CRIU's network lock too.
    #[serde(default)]
    pub loopback_only: bool,
    /// The loopback-only network namespace was not dumped: the restore
    /// creates a fresh one (checkpoint::netns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fresh_netns: Option<crate::checkpoint::netns::FreshNetns>,
    /// Masked directories (empty read-only tmpfs mounts) dumped as external
    /// mounts under [`MASKED_DIR_KEY`](crate::checkpoint::request::MASKED_DIR_KEY):
    /// the restore maps that key to an empty read-only tmpfs of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked_dirs: Vec<String>,
    /// Every task of the source shared init's cgroups (no child cgroups):
    /// a restore may let the restored tree inherit CRIU's cgroups instead
    /// of CRIU moving it (commands::restore).
    #[serde(default)]
    pub one_cgroup_set: bool,
    /// Size of every `*.img` CRIU left in the image directory (not for a
    /// dump whose pages went to a page server): restore refuses a missing
    /// or resized one before anything starts. CRIU itself does not check:
    /// an emptied pages image made its restorer loop on zero-byte reads
    /// until our --criu-timeout killed it (found by
    /// test_failures_do_not_stop_the_batch: five minutes).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub image_sizes: std::collections::BTreeMap<String, u64>,
}

/// The size of every `*.img` file in `dir`.
pub fn image_sizes(dir: &Path) -> std::collections::BTreeMap<String, u64> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                let meta = e.metadata().ok()?;
                (name.ends_with(".img") && meta.is_file()).then_some((name, meta.len()))
            })
            .collect()
        })
        .unwrap_or_default()
}

/// Facts about a bundle's spec that a manifest records and restore checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecFacts {
    pub namespaces: Vec<String>,
    pub terminal: bool,
}

impl SpecFacts {
    pub fn of(spec: &oci_spec::runtime::Spec) -> SpecFacts {
        let mut namespaces: Vec<String> = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
            .iter()
            .filter_map(|n| {
                serde_json::to_value(n.typ())
                    .ok()?
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        namespaces.sort();
        namespaces.dedup();
        SpecFacts {
            namespaces,
            terminal: spec
                .process()
                .as_ref()
                .and_then(|p| p.terminal())
                .unwrap_or(false),
        }
    }
}

/// sha256 of a file, as "sha256:<hex>".
pub fn file_digest(path: &Path) -> Option<String> {
    use sha2::{Digest, Sha256};
    let data = std::fs::read(path).ok()?;
    Some(format!("sha256:{:x}", Sha256::digest(&data)))
}

impl Manifest {
    /// Refuse a bundle that cannot take these images, naming the difference.
    pub fn check_bundle(&self, bundle: &SpecFacts) -> Result<()> {
        if !self.namespaces.is_empty() && self.namespaces != bundle.namespaces {
            let only = |a: &[String], b: &[String]| {
                a.iter()
                    .filter(|x| !b.contains(x))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            bail!(
                "the checkpoint of \"{}\" was made with namespaces [{}] but this bundle's config.json asks for [{}] \
                 (missing: [{}]; extra: [{}]): restore with a config.json that has the same linux.namespaces",
                self.container_id,
                self.namespaces.join(", "),
                bundle.namespaces.join(", "),
                only(&self.namespaces, &bundle.namespaces),
                only(&bundle.namespaces, &self.namespaces),
            );
        }
        if self.terminal != bundle.terminal {
            bail!(
                "the checkpoint of \"{}\" was made {} a terminal but this bundle's process.terminal is {}: \
                 restore with process.terminal = {}",
                self.container_id,
                if self.terminal { "with" } else { "without" },
                bundle.terminal,
                self.terminal
            );
        }
        Ok(())
    }

    /// Refuse an image directory whose `*.img` files are not those the
    /// checkpoint wrote: one missing, or of another size (a truncated or
    /// interrupted copy).
    pub fn check_files(&self, dir: &Path) -> Result<()> {
        for (name, size) in &self.image_sizes {
            let path = dir.join(name);
            match std::fs::metadata(&path) {
                Err(_) => bail!(
                    "{} is missing: the checkpoint wrote it ({size} bytes); the copy of {} is incomplete",
                    path.display(),
                    dir.display()
                ),
                Ok(m) if m.len() != *size => bail!(
                    "{} has {} bytes but the checkpoint wrote {size}: truncated or changed since; copy the checkpoint again",
                    path.display(),
                    m.len()
                ),
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// Refuse images written by a newer CRIU than the one restoring them.
    pub fn check_criu(&self, host: crate::criu::gates::CriuVersion) -> Result<()> {
        use crate::criu::gates::{format_version, parse_version};
        if parse_version(&self.criu_version).is_some_and(|made| made > host) {
            bail!(
                "the checkpoint was written by CRIU {} but this host has CRIU {}, which may not read its images: \
                 install CRIU >= {} (or pass --criu PATH)",
                self.criu_version,
                format_version(host),
                self.criu_version
            );
        }
        Ok(())
    }
}

/// Refuse symlinks in an image directory: CRIU reads images and writes its
/// log and stats there, so a symlink from an untarred checkpoint could make
/// it read or overwrite files anywhere. The one exception is `parent`,
/// CRIU's link to the previous dump of a chain, which must stay beside the
/// image directory.
pub fn check_no_escaping_links(dir: &Path) -> Result<()> {
    let base = std::fs::canonicalize(dir)?;
    let siblings = base.parent().unwrap_or(&base).to_path_buf();
    for e in std::fs::read_dir(&base)? {
        let e = e?;
        if !e.file_type()?.is_symlink() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        let resolved = std::fs::canonicalize(e.path()).ok();
        let ok = name == "parent" && resolved.as_ref().is_some_and(|r| r.starts_with(&siblings));
        if !ok {
            bail!(
                "{} is a symlink to {} in the image directory: refusing to restore ({})",
                e.path().display(),
                target.display(),
                if name == "parent" {
                    "a parent link must point to a dump beside this one"
                } else {
                    "image files must be regular files; copy the checkpoint with its files dereferenced"
                }
            );
        }
    }
    Ok(())
}

/// Follow a dump's `parent` links (a pre-copy chain) and refuse a chain
/// that is broken (a parent missing or holding no memory images), loops,
/// or links out of where it should (each link checked as above). CRIU
/// would otherwise fail half-way through restoring memory, or silently
/// read pages from wherever the link points.
pub fn check_chain(dir: &Path) -> Result<usize> {
    let mut seen = std::collections::HashSet::new();
    let mut cur = std::fs::canonicalize(dir)?;
    let mut depth = 0;
    loop {
        let link = cur.join("parent");
        let Ok(target) = std::fs::read_link(&link) else {
            check_no_escaping_links(&cur)?;
            return Ok(depth);
        };
        let parent = std::fs::canonicalize(&link).map_err(|_| {
            anyhow::anyhow!(
                "the checkpoint's parent chain is broken: {} points to {}, which does not exist; \
                 copy the whole chain (every pre-dump directory) keeping its relative layout",
                link.display(),
                target.display()
            )
        })?;
        check_no_escaping_links(&cur)?;
        if !seen.insert(parent.clone()) || depth >= 1024 {
            bail!("the checkpoint's parent chain loops at {}", link.display());
        }
        let has_pages = std::fs::read_dir(&parent)?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("pagemap-"));
        if !has_pages {
            bail!(
                "the checkpoint's parent chain is broken: {} (parent of {}) holds no memory images; \
                 the pre-dump failed or was copied incompletely",
                parent.display(),
                cur.display()
            );
        }
        cur = parent;
        depth += 1;
    }
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
            config_digest: None,
            cgroup_path: None,
            namespaces: vec!["mount".into(), "pid".into()],
            terminal: false,
            descriptors: vec![],
            loopback_only: false,
            fresh_netns: None,
            masked_dirs: vec![],
            one_cgroup_set: false,
            image_sizes: Default::default(),
        }
    }

    #[test]
    fn image_files_missing_or_resized_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pages-1.img"), [0u8; 4096]).unwrap();
        std::fs::write(dir.path().join("inventory.img"), b"inv").unwrap();
        std::fs::write(dir.path().join("dump.log"), b"log").unwrap();
        let mut m = manifest();
        m.image_sizes = image_sizes(dir.path());
        assert_eq!(m.image_sizes.len(), 2, "only *.img: {:?}", m.image_sizes);
        m.check_files(dir.path()).unwrap();
        std::fs::write(dir.path().join("pages-1.img"), b"").unwrap();
        let e = m.check_files(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("pages-1.img has 0 bytes but the checkpoint wrote 4096"),
            "{e}"
        );
        std::fs::remove_file(dir.path().join("pages-1.img")).unwrap();
        let e = m.check_files(dir.path()).unwrap_err().to_string();
        assert!(e.contains("pages-1.img is missing"), "{e}");
    }

    #[test]
    fn bundle_check_names_the_difference_ng() {
        let m = manifest();
        let same = SpecFacts {
            namespaces: vec!["mount".into(), "pid".into()],
            terminal: false,
        };
        m.check_bundle(&same).unwrap();
        let e = m
            .check_bundle(&SpecFacts {
                namespaces: vec!["mount".into(), "network".into()],
                terminal: false,
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing: [pid]") && e.contains("extra: [network]"),
            "{e}"
        );
        let e = m
            .check_bundle(&SpecFacts {
                terminal: true,
                ..same
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("process.terminal = false"), "{e}");
    }

    #[test]
    fn newer_criu_ng() {
        let mut m = manifest();
        m.check_criu(4_02_01).unwrap();
        m.check_criu(5_00_00).unwrap();
        m.criu_version = "4.3.0".into();
        assert!(m
            .check_criu(4_02_01)
            .unwrap_err()
            .to_string()
            .contains(">= 4.3.0"));
    }

    #[test]
    fn chain_ok_and_broken_ng() {
        let d = tempfile::tempdir().unwrap();
        let mk = |name: &str, parent: Option<&str>| {
            let p = d.path().join(name);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("pagemap-1.img"), b"x").unwrap();
            if let Some(t) = parent {
                std::os::unix::fs::symlink(t, p.join("parent")).unwrap();
            }
            p
        };
        mk("pre1", None);
        mk("pre2", Some("../pre1"));
        let fin = mk("final", Some("../pre2"));
        assert_eq!(check_chain(&fin).unwrap(), 2);
        // Rounds inside the image dir (--pre-dump-rounds).
        let top = mk("top", Some("pre-2"));
        mk("top/pre-1", None);
        mk("top/pre-2", Some("../pre-1"));
        assert_eq!(check_chain(&top).unwrap(), 2);
        std::fs::remove_dir_all(d.path().join("pre1")).unwrap();
        let e = check_chain(&fin).unwrap_err().to_string();
        assert!(
            e.contains("chain is broken") && e.contains("../pre1"),
            "{e}"
        );
        std::fs::create_dir_all(d.path().join("pre1")).unwrap();
        let e = check_chain(&fin).unwrap_err().to_string();
        assert!(e.contains("holds no memory images"), "{e}");
    }

    #[test]
    fn escaping_links_ng() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("img");
        std::fs::create_dir_all(d.path().join("pre1")).unwrap();
        std::fs::create_dir(&img).unwrap();
        std::os::unix::fs::symlink("../pre1", img.join("parent")).unwrap();
        check_no_escaping_links(&img).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", img.join("restore.log")).unwrap();
        assert!(check_no_escaping_links(&img).is_err());
        std::fs::remove_file(img.join("restore.log")).unwrap();
        std::fs::remove_file(img.join("parent")).unwrap();
        std::os::unix::fs::symlink("/", img.join("parent")).unwrap();
        assert!(check_no_escaping_links(&img).is_err());
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
