//! `check`: what this host can and cannot do for checkpoint/restore, and why.

use anyhow::Result;

use super::checkpoint::criu_timeout;
use super::Ctx;
use crate::criu::gates::{self, format_version, Features, LAZY_PIPE_SIZE, MIN_VERSION};
use crate::criu::session::{Session, SessionConfig};

/// CRIU's version and features, probed in one session.
pub fn probe(ctx: &Ctx) -> Result<(u32, Features)> {
    probe_and_kdat(ctx).1
}

/// [`probe`], and what became of CRIU's kernel facts cache on the way
/// (None: switched off in the configuration).
fn probe_and_kdat(ctx: &Ctx) -> (Option<crate::criu::kdat::State>, Result<(u32, Features)>) {
    let timeout = match criu_timeout(ctx) {
        Ok(t) => t,
        Err(e) => return (None, Err(e)),
    };
    let cfg = probe_config(ctx.global.criu(), timeout);
    let kdat = super::kdat_cache(ctx, &cfg);
    (kdat, session_probe(cfg))
}

/// A session of `check`'s own on exactly `criu`.
fn probe_config(criu: &std::path::Path, timeout: std::time::Duration) -> SessionConfig {
    SessionConfig {
        criu: criu.to_path_buf(),
        criu_lean: None,
        short_slice: false,
        nice: 0,
        timeout,
        work_dir: None,
        inherit_stdio: false,
        tls: false,
    }
}

fn session_probe(cfg: SessionConfig) -> Result<(u32, Features)> {
    let mut s = Session::start(cfg, None)?;
    let v = gates::version(&mut s)?;
    let f = gates::features(&mut s)?;
    s.close();
    Ok((v, f))
}

/// One line of the report. A reader that stops early (`check | head`)
/// ends the report, not the process with a panic.
fn out(text: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{text}");
}

fn line(ok: bool, what: &str, why: &str) -> bool {
    out(format_args!(
        "{} {what}{}",
        if ok { "[ok]  " } else { "[no]  " },
        if why.is_empty() {
            String::new()
        } else {
            format!(": {why}")
        }
    ));
    ok
}

/// A line for one of CRIU's speed-ups on a busy host: off in the
/// configuration, in force, or not granted here. Optional: without it only
/// the speed-up is lost, so it never fails `check`.
fn speedup_line(what: &str, on: bool, granted: impl FnOnce() -> bool, ok: &str, no: &str) {
    if !on {
        line(true, what, "off in the configuration");
    } else if granted() {
        line(true, what, ok);
    } else {
        line(
            false,
            what,
            &format!("{no}: CRIU is slower on a busy host, nothing else"),
        );
    }
}

pub fn check(ctx: &Ctx) -> Result<i32> {
    let host = gates::host_facts();
    out(format_args!(
        "cntrlive-runtime {} on kernel {}, cgroup {}",
        env!("CARGO_PKG_VERSION"),
        nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        host.cgroup
    ));
    let mut all = true;
    // Every checkpoint and restore reads it: refused, they all fail.
    if let Err(e) = ctx.config() {
        all &= line(false, "configuration", &format!("{e:#}"));
    }
    let (kdat, probed) = probe_and_kdat(ctx);
    match probed {
        Ok((v, f)) => {
            all &= line(
                v >= MIN_VERSION,
                &format!(
                    "CRIU {} ({})",
                    format_version(v),
                    ctx.global.criu().display()
                ),
                &if v >= MIN_VERSION {
                    String::new()
                } else {
                    format!("needs >= {}", format_version(MIN_VERSION))
                },
            );
            let lean_what =
                "lean CRIU (without GnuTLS) for sessions that cannot use TLS (criu.lean)";
            match ctx.criu_lean() {
                Some(lean) => {
                    match criu_timeout(ctx).and_then(|t| session_probe(probe_config(&lean, t))) {
                        Ok((lv, _)) => {
                            all &= line(
                                lv == v,
                                lean_what,
                                &if lv == v {
                                    format!("{} ({})", lean.display(), format_version(lv))
                                } else {
                                    format!(
                                    "{} is CRIU {}, criu is {}: rebuild both with hack/install.sh, or set criu.lean to \"\"",
                                    lean.display(),
                                    format_version(lv),
                                    format_version(v)
                                )
                                },
                            );
                        }
                        Err(e) => {
                            all &= line(false, lean_what, &format!("{}: {e:#}", lean.display()));
                        }
                    }
                }
                None if ctx.global.criu.is_some() => {
                    line(true, lean_what, "not used: --criu names the binary");
                }
                None => {
                    // Optional: every session then runs `criu`.
                    line(
                        false,
                        lean_what,
                        "not installed (hack/install.sh builds it; each CRIU start ~1.4 ms shorter); every session runs criu",
                    );
                }
            }
            speedup_line(
                "a 0.1 ms scheduler slice for CRIU (criu.short_slice)",
                ctx.short_slice(),
                crate::sched::short_slice_supported,
                "its wake-ups preempt busy tasks sooner; restored tasks get the default slice back",
                "this kernel keeps the default slice (custom slices need Linux >= 6.12)",
            );
            let nice = ctx.criu_nice();
            speedup_line(
                &format!("CRIU at nice {nice} while the container is down (criu.nice)"),
                nice != 0,
                || crate::sched::nice_granted(nice),
                "a larger CPU share on a busy host; restored tasks get their own nice back",
                "not granted (raising priority needs CAP_SYS_NICE; a caller's own nice is kept)",
            );
            if v < gates::INET_ON_NEW_KERNELS {
                line(
                    false,
                    "dumping INET sockets",
                    "CRIU < 4.2 cannot on kernels >= 6.16; install CRIU 4.2.1",
                );
            }
            line(true, "checkpoint and restore", "");
            all &= line(
                f.mem_track,
                "pre-dump (iterative pre-copy, --pre-dump)",
                if f.mem_track {
                    "dirty-memory tracking works"
                } else {
                    "kernel lacks CONFIG_MEM_SOFT_DIRTY (no dirty-memory tracking); use --lazy-pages or a kernel with soft-dirty"
                },
            );
            all &= line(
                f.lazy_pages,
                "lazy pages (post-copy, --lazy-pages)",
                if f.lazy_pages {
                    "userfaultfd works"
                } else {
                    "userfaultfd unavailable (CONFIG_USERFAULTFD or permissions)"
                },
            );
            line(
                f.pidfd_store,
                "pidfd store",
                if f.pidfd_store {
                    ""
                } else {
                    "CRIU cannot keep pidfds across pre-dumps; pid reuse is not detected"
                },
            );
        }
        Err(e) => {
            all = false;
            line(false, "CRIU", &format!("{e:#}"));
        }
    }
    all &= line(
        host.iptables_restore,
        "iptables-restore (CRIU's network lock)",
        if host.iptables_restore {
            ""
        } else {
            "missing: install iptables"
        },
    );
    let pipe_ok = host
        .pipe_max_size
        .map(|s| s >= LAZY_PIPE_SIZE)
        .unwrap_or(false);
    line(
        pipe_ok,
        "fs.pipe-max-size for lazy pages",
        &if pipe_ok {
            String::new()
        } else {
            format!("{} bytes; CRIU's page server needs >= {LAZY_PIPE_SIZE}: echo 8388608 > /proc/sys/fs/pipe-max-size", host.pipe_max_size.unwrap_or(0))
        },
    );
    line(host.userfaultfd, "userfaultfd(2) for this process", "");
    kdat_line(kdat);
    cgroup_migration_line();
    Ok(if all { 0 } else { 1 })
}

/// Cgroup hierarchies mounted with `favordynmods` (mount points), and the
/// cgroup2 mount point.
fn favordynmods(mounts: &[procfs::process::MountInfo]) -> (Vec<String>, Option<String>) {
    let cgroups = mounts
        .iter()
        .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2");
    let on = cgroups
        .clone()
        .filter(|m| m.super_options.contains_key("favordynmods"))
        .map(|m| m.mount_point.display().to_string())
        .collect();
    let v2 = cgroups
        .clone()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point.display().to_string());
    (on, v2)
}

/// How long moving this process into its own cgroup takes (a no-op move,
/// which takes the same lock as a real one), or None if it cannot write
/// there.
fn cgroup_move_time() -> Option<std::time::Duration> {
    let own = procfs::process::Process::myself().ok()?.cgroups().ok()?.0;
    let procs = own.iter().find_map(|c| {
        let base = match c.controllers.first() {
            None => ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
                .into_iter()
                .find(|b| std::path::Path::new(b).join("cgroup.procs").exists())?
                .to_string(),
            Some(_) if c.controllers.iter().any(|x| x.starts_with("name=")) => return None,
            Some(_) => {
                let b = format!("/sys/fs/cgroup/{}", c.controllers.join(","));
                std::path::Path::new(&b).is_dir().then_some(b)?
            }
        };
        Some(
            std::path::Path::new(&base)
                .join(c.pathname.trim_start_matches('/'))
                .join("cgroup.procs"),
        )
    })?;
    let t = std::time::Instant::now();
    std::fs::write(procs, std::process::id().to_string()).ok()?;
    Some(t.elapsed())
}

/// Whether moving a task between cgroups waits for an RCU grace period.
/// runc's restores move CRIU into the container's cgroup by pid (ours do
/// on cgroup v2 and with systemd cgroups; on v1 cgroupfs they start CRIU
/// inside it: spec::ThreadInCgroups); the kernel's cgroup_threadgroup_rwsem
/// makes the first such move after a
/// quiet spell wait one grace period (~8 ms here) unless a hierarchy is, or
/// was, mounted with `favordynmods` (docs/performance.md). Measured, since
/// on 6.18 the mount option can vanish from the mount table while its
/// effect stays. Informational: a host setting with a cost of its own, not
/// ours to change.
fn cgroup_migration_line() {
    let (on, v2) = favordynmods(&crate::checkpoint::spec::mounts_of(None));
    let what = "cgroup moves without an RCU grace period";
    let option = match on.first() {
        Some(p) => format!("favordynmods on {p}"),
        None => "no hierarchy mounted with favordynmods".to_string(),
    };
    match cgroup_move_time() {
        None => {
            line(
                false,
                what,
                &format!("cannot tell (no cgroup.procs of this process to write); {option}"),
            );
        }
        Some(t) if t < std::time::Duration::from_millis(2) => {
            line(
                true,
                what,
                &format!("a move took {:.2} ms; {option}", t.as_secs_f64() * 1e3),
            );
        }
        Some(t) => {
            line(
                false,
                what,
                &format!(
                    "a move took {:.1} ms: paid by every restore that moves a task by pid (runc's; \
                     ours on cgroup v2 or with systemd cgroups, or when CRIU moves the restored \
                     tasks itself — on v1 cgroupfs ours starts CRIU inside the container's cgroup \
                     instead); `mount -o remount,favordynmods {}` removes it (kernel >= 6.0), at the \
                     cost of slightly slower fork and exit host-wide; since 6.18 it stays on until reboot",
                    t.as_secs_f64() * 1e3,
                    v2.as_deref().unwrap_or("<a cgroup mount>")
                ),
            );
        }
    }
}

/// Whether CRIU finds its kernel facts cached (criu::kdat): without, every
/// CRIU run probes the kernel again. `state`: what the probe's session
/// found or did (None: switched off in the configuration).
fn kdat_line(state: Option<crate::criu::kdat::State>) {
    use crate::criu::kdat::{State, CACHE_DIR, CRIU_KDAT};
    let (ok, why) = match state {
        Some(State::CriuKeepsIt) => (true, "/run is a tmpfs: CRIU keeps it".to_string()),
        Some(State::Kept | State::Written) => (
            true,
            format!("/run is not a tmpfs; {CRIU_KDAT} points at {CACHE_DIR}"),
        ),
        None | Some(State::NotOurs(_) | State::Failed(_)) => (
            std::path::Path::new(CRIU_KDAT).exists(),
            format!(
                "{}; without it CRIU probes the kernel on every run (+25-70 ms)",
                match state {
                    Some(State::NotOurs(why) | State::Failed(why)) => why,
                    _ => "criu.kdat_cache is false in the configuration".to_string(),
                }
            ),
        ),
    };
    line(ok, "CRIU's kernel facts cache", &why);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn favordynmods_is_read_from_the_super_options() {
        let lines = |text: &str| -> Vec<procfs::process::MountInfo> {
            text.lines()
                .map(|l| procfs::process::MountInfo::from_line(l.trim()).unwrap())
                .collect()
        };
        let off = "35 25 0:30 / /sys/fs/cgroup/pids rw,relatime shared:15 - cgroup cgroup rw,pids
                   44 25 0:39 / /sys/fs/cgroup/unified rw,relatime shared:24 - cgroup2 cgroup2 rw
                   50 25 0:40 / /run/x rw - tmpfs favordynmods rw,favordynmods";
        assert_eq!(
            favordynmods(&lines(off)),
            (vec![], Some("/sys/fs/cgroup/unified".to_string()))
        );
        let on = off.replace("cgroup2 cgroup2 rw", "cgroup2 cgroup2 rw,favordynmods");
        assert_eq!(
            favordynmods(&lines(&on)).0,
            vec!["/sys/fs/cgroup/unified".to_string()]
        );
    }
}
