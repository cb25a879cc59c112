//! The runtime's own configuration file (`--config`, default
//! `/etc/cntrlive/config.json`): what a daemon that only knows runc's flags
//! cannot ask for on the command line. dockerd users point at a file with
//! `runtimeArgs` (`"runtimeArgs": ["--config", "/etc/cntrlive/pre-copy.json"]`)
//! or use the default path.
//!
//! ```json
//! { "checkpoint": { "pre_dump_on_leave_running": true, "auto_parent": true } }
//! ```
//! - `pre_dump_on_leave_running`: `checkpoint --leave-running` is a pre-dump
//!   (memory only, tracked; the container runs on). docker's CLI has no
//!   `--pre-dump`: `docker checkpoint create --leave-running c pre1` becomes one.
//! - `auto_parent`: pre-dumps are kept in the container's state dir as a
//!   chain; each pre-dump tracks memory against the newest, and the next
//!   full checkpoint copies the chain into its image dir (`pre-1` … `pre-N`,
//!   relative links) and writes only the pages dirtied since — a
//!   self-contained checkpoint that docker and containerd can tar, move and
//!   restore like any other.
//! - `criu.kdat_cache` (default true): where `/run` is not a tmpfs, keep
//!   CRIU's kernel-facts cache for it (criu/kdat.rs); false leaves
//!   `/run/criu.kdat` alone and CRIU probes the kernel on every run.
//! - `criu.lean` (default `/usr/local/libexec/cntrlive/criu-lean`,
//!   which `hack/install.sh` builds): the same CRIU built without GnuTLS,
//!   run instead of `criu` by sessions that cannot use TLS (no `--tls`,
//!   no page server, no lazy pages, no CRIU configuration file) when
//!   `--criu` is not given and the file exists. Loading GnuTLS and the
//!   seven libraries it pulls in cost every CRIU start ~1.4 ms here
//!   (docs/criu-engine.md). It must be the same CRIU version built from
//!   the same source with the same `SOURCE_DATE_EPOCH`, so that both read
//!   one kernel-facts cache (the epoch is part of its magic). `""`
//!   switches it off.
//! - `criu.short_slice` (default true): CRIU runs with a 0.1 ms scheduler
//!   slice (Linux ≥ 6.12), so its wake-ups preempt busy tasks sooner; its
//!   CPU share is unchanged, and restored tasks get the default slice back
//!   before they run (src/sched.rs). false leaves CRIU the caller's slice.
//! - `criu.nice` (default -10): CRIU, and the runtime's thread that starts
//!   it, run at this nice while the container is down (frozen or not yet
//!   resumed), if the caller runs at the default nice 0; restored tasks
//!   get their own nice back from the images (src/sched.rs). 0 leaves CRIU
//!   the caller's nice; -20 … 19.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/cntrlive/config.json";

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub criu: CriuConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CriuConfig {
    #[serde(default = "yes")]
    pub kdat_cache: bool,
    #[serde(default = "default_lean")]
    pub lean: PathBuf,
    #[serde(default = "yes")]
    pub short_slice: bool,
    #[serde(default = "default_nice")]
    pub nice: i32,
}

fn default_nice() -> i32 {
    crate::sched::CRIU_NICE
}

fn yes() -> bool {
    true
}

/// Where hack/install.sh puts the CRIU built without GnuTLS.
pub const DEFAULT_CRIU_LEAN: &str = "/usr/local/libexec/cntrlive/criu-lean";

fn default_lean() -> PathBuf {
    PathBuf::from(DEFAULT_CRIU_LEAN)
}

impl Default for CriuConfig {
    fn default() -> Self {
        CriuConfig {
            kdat_cache: true,
            lean: default_lean(),
            short_slice: true,
            nice: default_nice(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    #[serde(default)]
    pub pre_dump_on_leave_running: bool,
    #[serde(default)]
    pub auto_parent: bool,
}

impl Config {
    /// `explicit`: the `--config` flag (must exist); otherwise the default
    /// path, if present.
    pub fn load(explicit: Option<&Path>) -> Result<Config> {
        let (path, required) = match explicit {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default())
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read the configuration {}", path.display()))
            }
        };
        let c: Config = serde_json::from_slice(&text).with_context(|| {
            format!(
                "invalid configuration {} (keys: checkpoint.pre_dump_on_leave_running, checkpoint.auto_parent, criu.kdat_cache, criu.lean, criu.short_slice, criu.nice)",
                path.display()
            )
        })?;
        if !(-20..=19).contains(&c.criu.nice) {
            anyhow::bail!(
                "invalid configuration {}: criu.nice is {}, a nice is between -20 and 19 (0 leaves CRIU the caller's)",
                path.display(),
                c.criu.nice
            );
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `json` written to a file and loaded as `--config`.
    fn load(json: &[u8]) -> Result<Config> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.json");
        std::fs::write(&p, json).unwrap();
        Config::load(Some(&p))
    }

    #[test]
    fn config_ok_and_typo_ng() {
        let c = load(br#"{"checkpoint":{"auto_parent":true}}"#).unwrap();
        assert!(c.checkpoint.auto_parent && !c.checkpoint.pre_dump_on_leave_running);
        assert!(load(br#"{"checkpoint":{"auto_parents":true}}"#).is_err());
        assert!(Config::load(Some(Path::new("/nonexistent/cntrlive/c.json"))).is_err());
    }

    #[test]
    fn criu_lean_defaults_to_the_installed_path_and_empty_switches_it_off_ok() {
        let c = load(br#"{"criu":{"kdat_cache":false}}"#).unwrap();
        assert_eq!(c.criu.lean, Path::new(DEFAULT_CRIU_LEAN));
        let c = load(br#"{"criu":{"lean":""}}"#).unwrap();
        assert!(c.criu.lean.as_os_str().is_empty() && c.criu.kdat_cache);
    }

    #[test]
    fn criu_nice_defaults_to_minus_ten_and_is_checked_ng() {
        assert_eq!(load(b"{}").unwrap().criu.nice, -10);
        assert_eq!(load(br#"{"criu":{"nice":0}}"#).unwrap().criu.nice, 0);
        let e = load(br#"{"criu":{"nice":-21}}"#).unwrap_err();
        assert!(format!("{e:#}").contains("between -20 and 19"), "{e:#}");
        assert!(load(br#"{"criu":{"nice":"high"}}"#).is_err());
    }

    #[test]
    fn criu_short_slice_defaults_on_and_can_be_switched_off() {
        assert!(load(b"{}").unwrap().criu.short_slice);
        assert!(
            !load(br#"{"criu":{"short_slice":false}}"#)
                .unwrap()
                .criu
                .short_slice
        );
    }
}
