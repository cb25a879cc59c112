//! `ps [--format table|json] ID [ps options]`, as runc's `ps.go`.

use std::process::Command;

use anyhow::{bail, Context as _, Result};
use libcgroups::common::CgroupManager;
use libcontainer::container::ContainerStatus;

use super::{cgroup_manager, Ctx};
use crate::cli::{OutputFormat, PsArgs};

pub fn ps(args: PsArgs, ctx: &Ctx) -> Result<()> {
    let c = ctx.store.load(&args.container_id)?;
    let pids: Vec<i32> = if c.status() == ContainerStatus::Stopped {
        Vec::new()
    } else {
        cgroup_manager(&c)?
            .get_all_pids()
            .with_context(|| {
                format!(
                    "failed to list the processes of container \"{}\"",
                    args.container_id
                )
            })?
            .iter()
            .map(|p| p.as_raw())
            .collect()
    };
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string(&pids)?),
        OutputFormat::Table => {
            let opts = if args.ps_options.is_empty() {
                vec!["-ef".to_string()]
            } else {
                args.ps_options.clone()
            };
            let out = Command::new("ps")
                .args(&opts)
                .output()
                .context("failed to run ps(1)")?;
            if !out.status.success() {
                bail!(
                    "ps {} failed: {}",
                    opts.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or_default();
            let pid_col = header
                .split_whitespace()
                .position(|h| h == "PID")
                .context("couldn't find PID field in ps output")?;
            println!("{header}");
            for line in lines {
                let pid = line
                    .split_whitespace()
                    .nth(pid_col)
                    .and_then(|p| p.parse::<i32>().ok());
                if pid.map(|p| pids.contains(&p)).unwrap_or(false) {
                    println!("{line}");
                }
            }
        }
    }
    Ok(())
}
