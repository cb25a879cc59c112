//! `list` (`ls`): runc's table, `--format json` and `-q` (`list.go`).

use std::io::{self, Write};

use anyhow::Result;

use super::state::ContainerState;
use super::Ctx;
use crate::cli::{ListArgs, OutputFormat};

pub fn list(args: ListArgs, ctx: &Ctx) -> Result<()> {
    let mut states = Vec::new();
    for id in ctx.store.ids()? {
        match ctx.store.load(&id) {
            Ok(c) => states.push(ContainerState::of(&c)),
            // A container being created or deleted concurrently: skip it.
            Err(err) => tracing::debug!(%err, id, "skipping container in list"),
        }
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if args.quiet {
        for s in &states {
            writeln!(out, "{}", s.id)?;
        }
        return Ok(());
    }
    match args.format {
        OutputFormat::Json => {
            // runc prints `null` for no containers; an empty array is what
            // every JSON consumer expects, and `jq length` works on both.
            writeln!(out, "{}", serde_json::to_string(&states)?)?;
        }
        OutputFormat::Table => {
            // runc: tabwriter.NewWriter(os.Stdout, 12, 1, 3, ' ', 0)
            let mut tw = tabwriter::TabWriter::new(out).minwidth(12).padding(3);
            writeln!(tw, "ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER")?;
            for s in &states {
                writeln!(
                    tw,
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    s.id,
                    s.pid,
                    s.status,
                    s.bundle.display(),
                    s.created,
                    s.owner
                )?;
            }
            tw.flush()?;
        }
    }
    Ok(())
}
