//! Checkpoint options, validated at the edge (runc's `criuOptions()` in
//! checkpoint.go): the library never sees raw strings.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use crate::cli::{CheckpointArgs, CriuFlags, CriuStateFlags};

/// `--manage-cgroups-mode`, as CRIU's `criu_cg_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgMode {
    Soft,
    Full,
    Strict,
    Ignore,
}

impl CgMode {
    pub fn parse(s: &str) -> Result<CgMode> {
        Ok(match s {
            "soft" => CgMode::Soft,
            "full" => CgMode::Full,
            "strict" => CgMode::Strict,
            "ignore" => CgMode::Ignore,
            _ => bail!("invalid --manage-cgroups-mode {s:?}: use soft, full, strict or ignore"),
        })
    }
}

/// `--empty-ns` values (runc supports only the network namespace).
pub fn parse_empty_ns(values: &[String]) -> Result<u32> {
    let mut mask = 0u32;
    for v in values {
        match v.as_str() {
            "network" | "net" => mask |= libc::CLONE_NEWNET as u32,
            other => bail!("invalid --empty-ns {other:?}: only \"network\" is supported"),
        }
    }
    Ok(mask)
}

/// `ADDRESS:PORT` of a page server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageServer {
    pub address: String,
    pub port: u16,
}

impl PageServer {
    pub fn parse(s: &str) -> Result<PageServer> {
        let (addr, port) = s
            .rsplit_once(':')
            .with_context(|| format!("invalid --page-server {s:?}: use ADDRESS:PORT"))?;
        let port: u16 = port
            .parse()
            .with_context(|| format!("invalid --page-server port in {s:?}"))?;
        if addr.is_empty() || port == 0 {
            bail!("invalid --page-server {s:?}: use ADDRESS:PORT");
        }
        Ok(PageServer {
            address: addr.trim_matches(['[', ']']).to_string(),
            port,
        })
    }
}

/// Options shared with restore.
#[derive(Debug, Clone, Default)]
pub struct CriuCommon {
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub lazy_pages: bool,
    pub manage_cgroups_mode: Option<CgMode>,
    pub empty_ns: u32,
    pub auto_dedup: bool,
    pub tls: Option<Tls>,
}

/// Mutual TLS for the page server connection (`--tls-dir`): CRIU's
/// `--tls --tls-cacert --tls-cert --tls-key --tls-no-cn-verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The directory (what a child of ours gets as --tls-dir).
    pub dir: PathBuf,
    pub cacert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Tls {
    pub const CA: &'static str = "ca.pem";
    pub const CERT: &'static str = "cert.pem";
    pub const KEY: &'static str = "key.pem";

    /// The three files of a TLS directory, each checked to exist.
    pub fn from_dir(dir: &Path) -> Result<Tls> {
        let dir = absolute(dir)?;
        let file = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if !p.is_file() {
                bail!(
                    "TLS directory {} has no {name}: it needs ca.pem, cert.pem and key.pem (`cntrlive-runtime migrate-certs` writes them)",
                    dir.display()
                );
            }
            Ok(p)
        };
        Ok(Tls {
            dir: dir.clone(),
            cacert: file(Self::CA)?,
            cert: file(Self::CERT)?,
            key: file(Self::KEY)?,
        })
    }

    /// The same, as `criu` command-line flags.
    pub fn criu_args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "--tls".into(),
            "--tls-cacert".into(),
            self.cacert.clone().into(),
            "--tls-cert".into(),
            self.cert.clone().into(),
            "--tls-key".into(),
            self.key.clone().into(),
            "--tls-no-cn-verify".into(),
        ]
    }
}

impl CriuCommon {
    /// Whether CRIU may talk TLS in this operation (SessionConfig::tls):
    /// `--tls`, post-copy, a page server, or a CRIU configuration file
    /// that could ask for either.
    pub fn may_use_tls(&self, page_server: bool, criu_config: bool) -> bool {
        self.tls.is_some() || self.lazy_pages || page_server || criu_config
    }

    pub fn from_flags(f: &CriuFlags) -> Result<CriuCommon> {
        Ok(CriuCommon {
            lazy_pages: f.lazy_pages,
            empty_ns: parse_empty_ns(&f.empty_ns)?,
            auto_dedup: f.auto_dedup,
            tls: f.tls_dir.as_deref().map(Tls::from_dir).transpose()?,
            ..CriuCommon::from_state(&f.state)?
        })
    }

    /// The options of `--tcp-established` … `--manage-cgroups-mode` alone.
    pub fn from_state(f: &CriuStateFlags) -> Result<CriuCommon> {
        Ok(CriuCommon {
            tcp_established: f.tcp_established,
            ext_unix_sk: f.ext_unix_sk,
            shell_job: f.shell_job,
            file_locks: f.file_locks,
            manage_cgroups_mode: f
                .manage_cgroups_mode
                .as_deref()
                .map(CgMode::parse)
                .transpose()?,
            ..CriuCommon::default()
        })
    }

    /// Back to flags, for a `restore` of ours run as a child.
    pub fn state_args(f: &CriuStateFlags) -> Vec<String> {
        let mut v = Vec::new();
        for (on, flag) in [
            (f.tcp_established, "--tcp-established"),
            (f.ext_unix_sk, "--ext-unix-sk"),
            (f.shell_job, "--shell-job"),
            (f.file_locks, "--file-locks"),
        ] {
            if on {
                v.push(flag.to_string());
            }
        }
        if let Some(m) = &f.manage_cgroups_mode {
            v.extend(["--manage-cgroups-mode".to_string(), m.clone()]);
        }
        v
    }
}

#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    pub id: String,
    pub image_path: PathBuf,
    pub work_path: PathBuf,
    /// Relative to `image_path`, as CRIU wants it.
    pub parent_path: Option<PathBuf>,
    pub leave_running: bool,
    pub pre_dump: bool,
    pub tcp_skip_in_flight: bool,
    pub link_remap: bool,
    pub page_server: Option<PageServer>,
    pub status_fd: Option<i32>,
    /// Pre-copy rounds before the final dump, in the same CRIU session.
    pub rounds: Option<Rounds>,
    /// Post-copy: keep the source alive (frozen) until the restoring side
    /// confirms every page arrived (see `criu::lazy::await_verdict`).
    pub lazy_confirm: bool,
    /// `migrate`: after the final dump the container stays alive and frozen
    /// until the caller ends it (commands::checkpoint::Kept).
    pub keep_frozen: bool,
    /// Dump a loopback-only network namespace too (checkpoint::netns).
    pub dump_netns: bool,
    pub common: CriuCommon,
}

/// `--pre-dump-rounds N [--until-converged]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rounds {
    pub max: u32,
    pub until_converged: bool,
}

/// Rounds when only `--until-converged` bounds them.
pub const DEFAULT_MAX_ROUNDS: u32 = 8;
/// A dirty set this small (pages) is not worth another round.
pub const CONVERGED_PAGES: u64 = 256;

impl Rounds {
    /// Directory of round `k` (1-based), relative to the image path.
    pub fn dir(k: u32) -> PathBuf {
        PathBuf::from(format!("pre-{k}"))
    }

    /// Why pre-copy should stop after a round that wrote `now` pages when
    /// the one before wrote `prev`; None: go on.
    pub fn converged(prev: Option<u64>, now: u64) -> Option<String> {
        if now <= CONVERGED_PAGES {
            return Some(format!(
                "dirty set is small ({now} pages <= {CONVERGED_PAGES})"
            ));
        }
        match prev {
            Some(p) if now * 10 >= p * 9 => {
                Some(format!("dirty set stopped shrinking ({p} -> {now} pages)"))
            }
            _ => None,
        }
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// runc's defaults: the image path is ./checkpoint, the work path the
/// image path; both made absolute.
fn image_and_work(image: Option<&Path>, work: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    let image = absolute(image.unwrap_or(Path::new("checkpoint")))?;
    let work = match work {
        Some(w) => absolute(w)?,
        None => image.clone(),
    };
    Ok((image, work))
}

impl CheckpointOptions {
    pub fn from_args(a: &CheckpointArgs) -> Result<CheckpointOptions> {
        crate::store::validate_id(a.target.id())?;
        let (image_path, work_path) =
            image_and_work(a.image_path.as_deref(), a.work_path.as_deref())?;
        if let Some(parent) = &a.parent_path {
            if parent.is_absolute() {
                bail!(
                    "--parent-path {} must be relative to the image path (e.g. ../pre1), so the chain survives being moved",
                    parent.display()
                );
            }
        }
        let common = CriuCommon::from_flags(&a.criu)?;
        if a.pre_dump && a.criu.lazy_pages {
            bail!("--pre-dump and --lazy-pages cannot be combined");
        }
        if a.criu.lazy_pages && a.page_server.is_none() {
            bail!("--lazy-pages needs --page-server ADDR:PORT: the address the dumping side serves the pages on until the restoring side has them all");
        }
        if a.status_fd.is_some() && !a.criu.lazy_pages {
            bail!("--status-fd is only meaningful with --lazy-pages");
        }
        let rounds = match (a.pre_dump_rounds, a.until_converged) {
            (None, false) => None,
            (max, until_converged) => {
                if a.pre_dump {
                    bail!("--pre-dump-rounds/--until-converged end with a final dump; drop --pre-dump (or run --pre-dump repeatedly with --parent-path)");
                }
                if a.criu.lazy_pages || a.page_server.is_some() {
                    bail!("--pre-dump-rounds/--until-converged write pre-dumps to the image path; they cannot be combined with --lazy-pages or --page-server");
                }
                Some(Rounds {
                    max: max.unwrap_or(DEFAULT_MAX_ROUNDS),
                    until_converged,
                })
            }
        };
        Ok(CheckpointOptions {
            id: a.target.id().to_string(),
            image_path,
            work_path,
            parent_path: a.parent_path.clone(),
            leave_running: a.leave_running || a.pre_dump,
            pre_dump: a.pre_dump,
            tcp_skip_in_flight: a.tcp_skip_in_flight,
            link_remap: a.link_remap,
            page_server: a
                .page_server
                .as_deref()
                .map(PageServer::parse)
                .transpose()?,
            status_fd: a.status_fd,
            rounds,
            lazy_confirm: a.criu.lazy_pages && !a.no_lazy_confirm,
            keep_frozen: false,
            dump_netns: a.dump_netns,
            common,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cg_modes_ok() {
        assert_eq!(CgMode::parse("strict").unwrap(), CgMode::Strict);
        assert!(CgMode::parse("hard").is_err());
    }

    #[test]
    fn page_server_ok() {
        assert_eq!(
            PageServer::parse("10.0.0.1:2000").unwrap(),
            PageServer {
                address: "10.0.0.1".into(),
                port: 2000
            }
        );
        assert_eq!(PageServer::parse("[::1]:27").unwrap().address, "::1");
    }

    #[test]
    fn page_server_ng() {
        for s in ["host", ":1", "h:0", "h:x"] {
            assert!(PageServer::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn converged_ok() {
        assert_eq!(Rounds::converged(None, 10_000), None);
        assert_eq!(Rounds::converged(Some(10_000), 5_000), None);
        assert!(Rounds::converged(Some(10_000), 9_500)
            .unwrap()
            .contains("stopped shrinking"));
        assert!(Rounds::converged(None, 200).unwrap().contains("small"));
        assert_eq!(Rounds::dir(3), PathBuf::from("pre-3"));
    }

    #[test]
    fn empty_ns_ng() {
        assert!(parse_empty_ns(&["pid".into()]).is_err());
        assert_eq!(
            parse_empty_ns(&["network".into()]).unwrap(),
            libc::CLONE_NEWNET as u32
        );
    }
}

/// Restore options, validated at the edge (runc's restore.go).
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub id: String,
    pub image_path: PathBuf,
    pub work_path: PathBuf,
    pub detach: bool,
    pub no_subreaper: bool,
    pub lsm_profile: Option<String>,
    pub lsm_mount_context: Option<String>,
    /// Where lazily restored pages come from (we run the lazy-pages daemon).
    pub page_server: Option<PageServer>,
    pub leave_stopped: bool,
    /// Our fds that replace the dump's stdin, stdout, stderr pipes.
    pub stdio_fds: [i32; 3],
    pub common: CriuCommon,
}

impl RestoreOptions {
    pub fn from_args(a: &crate::cli::RestoreArgs) -> Result<RestoreOptions> {
        crate::store::validate_id(a.target.id())?;
        let (image_path, work_path) =
            image_and_work(a.image_path.as_deref(), a.work_path.as_deref())?;
        Ok(RestoreOptions {
            id: a.target.id().to_string(),
            image_path,
            work_path,
            detach: a.detach,
            no_subreaper: a.no_subreaper,
            lsm_profile: a.lsm_profile.clone(),
            lsm_mount_context: a.lsm_mount_context.clone(),
            page_server: a
                .page_server
                .as_deref()
                .map(PageServer::parse)
                .transpose()?,
            leave_stopped: a.leave_stopped,
            stdio_fds: match &a.stdio_fds {
                None => [0, 1, 2],
                Some(s) => {
                    let v: Vec<i32> = s
                        .split(',')
                        .map(|x| x.trim().parse())
                        .collect::<Result<_, _>>()
                        .with_context(|| format!("invalid --stdio-fds {s:?}: use IN,OUT,ERR"))?;
                    <[i32; 3]>::try_from(v)
                        .map_err(|_| anyhow::anyhow!("invalid --stdio-fds {s:?}: use IN,OUT,ERR"))?
                }
            },
            common: CriuCommon::from_flags(&a.criu)?,
        })
    }
}
