//! `delete [--force] ID`, as runc's `delete.go`.

use anyhow::{bail, Context as _, Result};
use libcontainer::container::ContainerStatus;

use super::Ctx;
use crate::cli::DeleteArgs;
use crate::store::StoreError;

pub fn delete(args: DeleteArgs, ctx: &Ctx) -> Result<()> {
    let id = &args.container_id;
    let mut c = match ctx.store.load(id) {
        Ok(c) => c,
        Err(StoreError::NotExist(_)) => {
            // An aborted create can leave a directory without state.json;
            // runc removes it, and --force makes a missing container a success.
            let dir = ctx.store.container_dir(id)?;
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("failed to remove {}", dir.display()))?;
            }
            if args.force {
                return Ok(());
            }
            return Err(StoreError::NotExist(id.clone()).into());
        }
        Err(e) => return Err(e.into()),
    };
    match c.status() {
        ContainerStatus::Stopped | ContainerStatus::Created => {}
        status if !args.force => bail!(
            "cannot delete container \"{id}\" that is not stopped: {status} (stop it with `kill`, or use `delete --force`)"
        ),
        _ => {}
    }
    c.delete(args.force)
        .with_context(|| format!("failed to delete container \"{id}\""))
}
