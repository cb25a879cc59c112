//! `spec [--bundle DIR] [--rootless]`: write a default config.json, as runc.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use oci_spec::runtime::Spec;

use crate::cli::SpecArgs;

pub fn spec(args: SpecArgs) -> Result<()> {
    let dir = args.bundle.clone().unwrap_or_else(|| PathBuf::from("."));
    let path = dir.join("config.json");
    if path.exists() {
        bail!("File {} exists. Remove it first", path.display());
    }
    let spec = if args.rootless {
        Spec::rootless(
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    } else {
        Spec::default()
    };
    let json = serde_json::to_string_pretty(&spec)?;
    std::fs::write(&path, json + "\n")
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}
