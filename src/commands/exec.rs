//! `exec`, as runc's `exec.go`: the process to run is either `--process
//! FILE` or built from the container's own process spec plus the flags
//! (runc's `getProcess`), then handed to libcontainer as a process file.

use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::ContainerStatus;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use oci_spec::runtime::{Capability, LinuxCapabilities, Process};

use super::{foreground, Ctx};
use crate::bundle::parse_config;
use crate::cli::ExecArgs;

/// The process described by the flags, on top of the container's own
/// `process` from its bundle (mirrors runc `exec.go` getProcess).
pub fn process_from_flags(base: &Process, args: &ExecArgs) -> Result<Process> {
    if args.command.is_empty() {
        bail!("exec args cannot be empty: give the command to run after the container ID, or --process FILE");
    }
    let mut p = base.clone();
    p.set_args(Some(args.command.clone()));
    if let Some(cwd) = &args.cwd {
        p.set_cwd(cwd.clone());
    }
    if let Some(profile) = &args.apparmor {
        p.set_apparmor_profile(Some(profile.clone()));
    }
    if let Some(label) = &args.process_label {
        p.set_selinux_label(Some(label.clone()));
    }
    if !args.cap.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_else(|| {
            let mut c = LinuxCapabilities::default();
            c.set_bounding(None)
                .set_effective(None)
                .set_inheritable(None)
                .set_permitted(None)
                .set_ambient(None);
            c
        });
        for name in &args.cap {
            let cap = parse_capability(name)?;
            let add = |set: Option<&oci_spec::runtime::Capabilities>| {
                let mut s = set.cloned().unwrap_or_default();
                s.insert(cap);
                Some(s)
            };
            caps.set_bounding(add(caps.bounding().as_ref()));
            caps.set_effective(add(caps.effective().as_ref()));
            caps.set_inheritable(add(caps.inheritable().as_ref()));
            caps.set_permitted(add(caps.permitted().as_ref()));
            caps.set_ambient(add(caps.ambient().as_ref()));
        }
        p.set_capabilities(Some(caps));
    }
    let mut env = p.env().clone().unwrap_or_default();
    env.extend(args.env.iter().cloned());
    p.set_env(Some(env));
    p.set_terminal(Some(args.tty));
    if args.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    let mut user = p.user().clone();
    if let Some(spec) = &args.user {
        let (uid, gid) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec.as_str(), None),
        };
        user.set_uid(
            uid.parse()
                .with_context(|| format!("invalid --user uid {uid:?}: a number is needed"))?,
        );
        if let Some(g) = gid {
            user.set_gid(
                g.parse()
                    .with_context(|| format!("invalid --user gid {g:?}: a number is needed"))?,
            );
        }
    }
    if !args.additional_gids.is_empty() {
        let mut gids = user.additional_gids().clone().unwrap_or_default();
        gids.extend(args.additional_gids.iter().copied());
        user.set_additional_gids(Some(gids));
    }
    p.set_user(user);
    Ok(p)
}

/// `CAP_NET_ADMIN` (runc's form) or `NET_ADMIN`, any case.
fn parse_capability(name: &str) -> Result<Capability> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    serde_json::from_value(serde_json::Value::String(full)).with_context(|| {
        format!("invalid --cap {name:?}: not a Linux capability name such as CAP_NET_ADMIN")
    })
}

fn write_process_file(p: &Process, dir: &Path) -> Result<tempfile::NamedTempFile> {
    let mut f = tempfile::Builder::new()
        .prefix("exec-process-")
        .suffix(".json")
        .tempfile_in(dir)
        .with_context(|| format!("failed to create a process file in {}", dir.display()))?;
    serde_json::to_writer(&mut f, p)?;
    f.flush()?;
    Ok(f)
}

pub fn exec(args: ExecArgs, ctx: &Ctx) -> Result<i32> {
    let id = &args.container_id;
    let c = ctx.store.load(id)?;
    match c.status() {
        ContainerStatus::Running | ContainerStatus::Created => {}
        ContainerStatus::Paused if args.ignore_paused => {}
        ContainerStatus::Paused => bail!(
            "cannot exec in a paused container \"{id}\" (resume it first, or pass --ignore-paused)"
        ),
        status => bail!("cannot exec in container \"{id}\": it is {status}, not running"),
    }

    // Build the process file unless the caller gave one.
    let generated;
    let process_path = match &args.process {
        Some(p) => p.clone(),
        None => {
            let config = parse_config(&c.bundle().join("config.json"))?;
            let base = config.process().clone().unwrap_or_default();
            let p = process_from_flags(&base, &args)?;
            generated = write_process_file(&p, &ctx.store.container_dir(id)?)?;
            generated.path().to_path_buf()
        }
    };

    if !args.detach {
        foreground::block_signals()?;
    }
    let mut user = None;
    let mut group = None;
    if args.process.is_some() {
        if let Some(spec) = &args.user {
            let (u, g) = spec
                .split_once(':')
                .map(|(u, g)| (u, Some(g)))
                .unwrap_or((spec, None));
            user = Some(
                u.parse::<u32>()
                    .with_context(|| format!("invalid --user {spec:?}"))?,
            );
            group = g
                .map(|g| g.parse::<u32>())
                .transpose()
                .with_context(|| format!("invalid --user {spec:?}"))?;
        }
    }
    let pid = ContainerBuilder::new(id.clone(), SyscallType::default())
        .with_executor(DefaultExecutor {})
        .with_root_path(ctx.store.root())?
        .with_console_socket(args.console_socket.as_ref())
        .with_pid_file(args.pid_file.as_ref())?
        .with_preserved_fds(args.preserve_fds)
        .validate_id()?
        .as_tenant()
        .with_detach(args.detach)
        .with_process(Some(&process_path))
        .with_user(user)
        .with_group(group)
        .with_ignore_paused(args.ignore_paused)
        .with_sub_cgroup(args.cgroup.clone())
        .build()
        .with_context(|| format!("failed to exec in container \"{id}\""))?;

    if args.detach {
        return Ok(0);
    }
    foreground::wait_forwarding_signals(pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn exec_args(argv: &[&str]) -> ExecArgs {
        let mut full = vec!["x", "exec"];
        full.extend_from_slice(argv);
        match Cli::parse_from(full).command {
            Some(Command::Exec(a)) => a.0,
            _ => unreachable!(),
        }
    }

    #[test]
    fn flags_override_base_process_ok() {
        let base = Process::default();
        let a = exec_args(&[
            "-t",
            "-e",
            "A=1",
            "--cwd",
            "/tmp",
            "-u",
            "7:8",
            "--cap",
            "CAP_NET_ADMIN",
            "c1",
            "sh",
            "-c",
            "id",
        ]);
        let p = process_from_flags(&base, &a).unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["sh", "-c", "id"]);
        assert_eq!(p.terminal(), Some(true));
        assert!(p.env().as_ref().unwrap().contains(&"A=1".to_string()));
        assert_eq!(p.cwd().to_str(), Some("/tmp"));
        assert_eq!((p.user().uid(), p.user().gid()), (7, 8));
        assert!(p
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::NetAdmin));
    }

    #[test]
    fn empty_command_ng() {
        let a = exec_args(&["c1"]);
        assert!(process_from_flags(&Process::default(), &a).is_err());
    }

    #[test]
    fn bad_user_ng() {
        let a = exec_args(&["-u", "root", "c1", "id"]);
        assert!(process_from_flags(&Process::default(), &a).is_err());
    }
}
