//! `events [--stats] [--interval D] ID`: one JSON object per line, shaped
//! as runc's `{"type":"stats","id":…,"data":…}` (`events.go`).

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use libcgroups::common::CgroupManager;
use libcontainer::container::ContainerStatus;
use serde_json::json;

use super::{cgroup_manager, Ctx};
use crate::cli::EventsArgs;

/// Go durations such as `5s`, `500ms`, `1m30s`.
pub fn parse_interval(s: &str) -> Result<Duration> {
    let d = humantime::parse_duration(s)
        .with_context(|| format!("invalid --interval {s:?}: use a duration such as 5s or 500ms"))?;
    if d.is_zero() {
        bail!("invalid --interval {s:?}: duration must be greater than 0");
    }
    Ok(d)
}

pub fn events(args: EventsArgs, ctx: &Ctx) -> Result<()> {
    let interval = parse_interval(&args.interval)?;
    let id = &args.container_id;
    let c = ctx.store.load(id)?;
    if c.status() == ContainerStatus::Stopped {
        bail!("container \"{id}\" is not running");
    }
    let manager = cgroup_manager(&c)?;
    let stdout = std::io::stdout();
    loop {
        let stats = manager
            .stats()
            .with_context(|| format!("failed to read the cgroup stats of container \"{id}\""))?;
        let event = json!({ "type": "stats", "id": id, "data": stats });
        let mut out = stdout.lock();
        writeln!(out, "{event}")?;
        out.flush()?;
        if args.stats {
            return Ok(());
        }
        std::thread::sleep(interval);
        if ctx
            .store
            .load(id)
            .map(|c| c.status() == ContainerStatus::Stopped)
            .unwrap_or(true)
        {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_ok() {
        assert_eq!(parse_interval("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_interval("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_interval("1m30s").unwrap(), Duration::from_secs(90));
    }

    #[test]
    fn bad_durations_ng() {
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("soon").is_err());
    }
}
