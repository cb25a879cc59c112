//! Live migration: `migrate` (source), `migrate-listen` (destination),
//! `migrate-certs` (their TLS). docs/migration.md explains the protocol.
//!
//! A migration is one TLS session between the two runtimes (wire.rs). The
//! destination refuses before anything happens if it cannot take the
//! container (ID in use, no bundle, no CRIU); memory goes through CRIU's
//! page server (TLS); the source keeps the container alive and frozen until
//! the destination has restored it (stopped) and registered it, and only
//! then ends its copy and lets the destination's run (two-phase: the
//! container never runs in two places, and a failure anywhere before the
//! destination confirms leaves it running on the source).

pub mod certs;
pub mod dest;
pub mod source;
pub mod wire;

use anyhow::Result;

use crate::commands::Ctx;
use crate::criu::gates::{self, format_version};
use crate::criu::janitor::Janitor;

/// What this host's kernel and CRIU can do (a short CRIU session).
pub fn abilities(ctx: &Ctx, work: &std::path::Path) -> Result<wire::Abilities> {
    crate::commands::checkpoint::make_dir(work, "work directory")?;
    let mut janitor = Janitor::spawn()?;
    let (mut session, version) =
        crate::commands::criu_session(ctx, work, false, false, &mut janitor)?;
    let f = gates::features(&mut session)?;
    session.close();
    janitor.disarm();
    Ok(wire::Abilities {
        criu_version: format_version(version),
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        mem_track: f.mem_track,
        lazy_pages: f.lazy_pages,
    })
}
