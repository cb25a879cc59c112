//! `update [--resources FILE|-] [flags] ID`, as runc's `update.go`: the
//! resources are applied to the container's cgroup.

use std::fs::File;
use std::io::{self, BufReader};

use anyhow::{bail, Context as _, Result};
use libcontainer::container::ContainerStatus;
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxPids, LinuxResources};

use super::{cgroup_manager, Ctx};
use crate::cli::UpdateArgs;

/// Sizes as docker's `units.RAMInBytes` (runc): 1024-based k/m/g/t/p, an
/// optional b/ib, or -1 for unlimited.
pub fn parse_bytes(s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        Some('p') => (&t[..t.len() - 1], 1 << 50),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("invalid size {s:?}: use bytes or a k/m/g suffix"))?;
    if n < 0.0 {
        bail!("invalid size {s:?}: must not be negative");
    }
    Ok((n * mult as f64) as i64)
}

fn resources_from_flags(a: &UpdateArgs) -> Result<LinuxResources> {
    let mut r = LinuxResources::default();
    if let Some(w) = a.blkio_weight {
        let mut b = LinuxBlockIo::default();
        b.set_weight(Some(w));
        r.set_block_io(Some(b));
    }
    let mut cpu = LinuxCpu::default();
    let mut any_cpu = false;
    macro_rules! set_cpu {
        ($field:expr, $setter:ident) => {
            if let Some(v) = $field.clone() {
                cpu.$setter(Some(v));
                any_cpu = true;
            }
        };
    }
    set_cpu!(a.cpu_period, set_period);
    set_cpu!(a.cpu_quota, set_quota);
    set_cpu!(a.cpu_share, set_shares);
    set_cpu!(a.cpu_rt_period, set_realtime_period);
    set_cpu!(a.cpu_rt_runtime, set_realtime_runtime);
    set_cpu!(a.cpuset_cpus, set_cpus);
    set_cpu!(a.cpuset_mems, set_mems);
    if any_cpu {
        r.set_cpu(Some(cpu));
    }
    let mut mem = LinuxMemory::default();
    let mut any_mem = false;
    if let Some(m) = &a.memory {
        mem.set_limit(Some(parse_bytes(m)?));
        any_mem = true;
    }
    if let Some(m) = &a.memory_reservation {
        mem.set_reservation(Some(parse_bytes(m)?));
        any_mem = true;
    }
    if let Some(m) = &a.memory_swap {
        mem.set_swap(Some(parse_bytes(m)?));
        any_mem = true;
    }
    if any_mem {
        r.set_memory(Some(mem));
    }
    if let Some(n) = a.pids_limit {
        let mut p = LinuxPids::default();
        p.set_limit(n);
        r.set_pids(Some(p));
    }
    if a.l3_cache_schema.is_some() || a.mem_bw_schema.is_some() {
        bail!("--l3-cache-schema and --mem-bw-schema (Intel RDT) are not supported by cntrlive-runtime");
    }
    Ok(r)
}

pub fn update(args: UpdateArgs, ctx: &Ctx) -> Result<()> {
    let id = &args.container_id;
    let c = ctx.store.load(id)?;
    if c.status() == ContainerStatus::Stopped {
        bail!("container \"{id}\" is not running: cannot update a stopped container");
    }
    let resources: LinuxResources = match &args.resources {
        Some(p) if p.as_os_str() == "-" => serde_json::from_reader(io::stdin().lock())
            .context("invalid resources JSON on stdin")?,
        Some(p) => {
            let f = File::open(p).with_context(|| format!("failed to open {}", p.display()))?;
            serde_json::from_reader(BufReader::new(f))
                .with_context(|| format!("invalid resources JSON in {}", p.display()))?
        }
        None => resources_from_flags(&args)?,
    };
    super::apply_resources(&cgroup_manager(&c)?, &resources)
        .with_context(|| format!("failed to update the resources of container \"{id}\""))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_ok() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("10m").unwrap(), 10 << 20);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("-1").unwrap(), -1);
    }

    #[test]
    fn sizes_ng() {
        for s in ["", "ten", "-5", "1x"] {
            assert!(parse_bytes(s).is_err(), "{s}");
        }
    }
}
