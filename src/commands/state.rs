//! `state ID`: runc's container state JSON (`state.go`, `containerState`).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Result;
use chrono::SecondsFormat;
use libcontainer::container::{Container, ContainerStatus};
use serde::Serialize;

use super::Ctx;
use crate::cli::IdArg;

/// The fields runc prints for `state` and `list --format json`.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    pub oci_version: String,
    pub id: String,
    /// 0 once the container has stopped, as runc.
    pub pid: i32,
    pub status: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
    pub owner: String,
}

/// The owner's user name ("" when unknown), as runc resolves the state uid.
fn owner_name(uid: Option<u32>) -> String {
    uid.and_then(|u| {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(u))
            .ok()
            .flatten()
    })
    .map(|u| u.name)
    .unwrap_or_default()
}

/// runc's lowercase status names.
pub fn status_name(s: ContainerStatus) -> &'static str {
    match s {
        ContainerStatus::Creating => "creating",
        ContainerStatus::Created => "created",
        ContainerStatus::Running => "running",
        ContainerStatus::Stopped => "stopped",
        ContainerStatus::Paused => "paused",
    }
}

impl ContainerState {
    pub fn of(c: &Container) -> Self {
        let rootfs = crate::bundle::parse_config(&c.bundle().join("config.json"))
            .ok()
            .and_then(|s| s.root().as_ref().map(|r| r.path().clone()))
            .map(|p| {
                if p.is_absolute() {
                    p
                } else {
                    c.bundle().join(p)
                }
            })
            .unwrap_or_default();
        let pid = match c.status() {
            ContainerStatus::Stopped => 0,
            _ => c.pid().map(|p| p.as_raw()).unwrap_or(0),
        };
        ContainerState {
            oci_version: c.state.oci_version.clone(),
            id: c.id().to_string(),
            pid,
            status: status_name(c.status()).to_string(),
            bundle: c.bundle().clone(),
            rootfs,
            created: c
                .created()
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Nanos, true))
                .unwrap_or_default(),
            annotations: c.state.annotations.clone().filter(|a| !a.is_empty()),
            owner: owner_name(c.state.creator),
        }
    }
}

pub fn state(args: IdArg, ctx: &Ctx) -> Result<()> {
    let c = ctx.store.load(&args.container_id)?;
    println!("{}", serde_json::to_string_pretty(&ContainerState::of(&c))?);
    Ok(())
}
