//! `checkpoint` and `restore`: the CLI accepts every runc flag (and
//! containerd's argv) so that callers get a clear answer, not a usage error.
//! The CRIU engine behind them is the next milestone (docs/roadmap.md).

use anyhow::{bail, Result};

use super::Ctx;
use crate::cli::{CheckpointArgs, RestoreArgs};

pub fn checkpoint(args: CheckpointArgs, ctx: &Ctx) -> Result<()> {
    // Unknown containers still get the usual "does not exist".
    ctx.store.load(&args.container_id)?;
    bail!(
        "checkpoint is not implemented yet in cntrlive-runtime {}: container \"{}\" was left untouched (see docs/roadmap.md; use runc for now)",
        env!("CARGO_PKG_VERSION"),
        args.container_id
    )
}

pub fn restore(args: RestoreArgs, ctx: &Ctx) -> Result<()> {
    crate::store::validate_id(&args.container_id)?;
    let _ = ctx;
    bail!(
        "restore is not implemented yet in cntrlive-runtime {}: nothing was created for \"{}\" (see docs/roadmap.md; use runc for now)",
        env!("CARGO_PKG_VERSION"),
        args.container_id
    )
}
