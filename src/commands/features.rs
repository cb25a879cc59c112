//! `features`: the OCI runtime features document (runtime-spec
//! features.md). containerd 2.x and moby >= 25 read `mountOptions`,
//! `linux.namespaces` and `linux.mountExtensions.idmap.enabled`.

use anyhow::Result;
use oci_spec::runtime::{
    ApparmorBuilder, CgroupBuilder, FeaturesBuilder, IDMapBuilder, IntelRdtBuilder,
    LinuxFeatureBuilder, LinuxNamespaceType, MountExtensionsBuilder, SelinuxBuilder, VERSION,
};

/// Hooks libcontainer runs.
const HOOKS: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// Mount options libcontainer understands (its `MountOption` table).
fn mount_options() -> Vec<String> {
    libcontainer::syscall::linux::MountOption::known_options()
}

/// Also reports CRIU's version and the CRIU/kernel features checkpointing
/// relies on, as `org.cntrlive.criu.*` annotations.
pub fn features(ctx: &super::Ctx) -> Result<()> {
    use LinuxNamespaceType::*;
    let linux = LinuxFeatureBuilder::default()
        .namespaces(vec![Mount, Cgroup, Uts, Ipc, User, Pid, Network, Time])
        .capabilities(
            caps::all()
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>(),
        )
        .cgroup(
            CgroupBuilder::default()
                .v1(true)
                .v2(true)
                .systemd(true)
                .systemd_user(true)
                .rdma(false)
                .build()?,
        )
        .apparmor(ApparmorBuilder::default().enabled(true).build()?)
        .selinux(SelinuxBuilder::default().enabled(false).build()?)
        .intel_rdt(IntelRdtBuilder::default().enabled(false).build()?)
        .mount_extensions(
            MountExtensionsBuilder::default()
                .idmap(IDMapBuilder::default().enabled(false).build()?)
                .build()?,
        )
        .build()?;
    let mut annotations = std::collections::HashMap::new();
    annotations.insert(
        "org.cntrlive.runtime.version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    annotations.insert(
        "org.cntrlive.libcontainer.version".to_string(),
        "0.7.0".to_string(),
    );
    match super::check::probe(ctx) {
        Ok((v, f)) => {
            annotations.insert(
                "org.cntrlive.criu.version".into(),
                crate::criu::gates::format_version(v),
            );
            annotations.insert(
                "org.cntrlive.criu.feature.mem_track".into(),
                f.mem_track.to_string(),
            );
            annotations.insert(
                "org.cntrlive.criu.feature.lazy_pages".into(),
                f.lazy_pages.to_string(),
            );
            annotations.insert(
                "org.cntrlive.criu.feature.pidfd_store".into(),
                f.pidfd_store.to_string(),
            );
        }
        Err(e) => {
            annotations.insert(
                "org.cntrlive.criu.version".into(),
                format!("unavailable: {e}"),
            );
        }
    }
    let features = FeaturesBuilder::default()
        .oci_version_min("1.0.0")
        .oci_version_max(VERSION)
        .hooks(HOOKS.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .mount_options(mount_options())
        .linux(linux)
        .annotations(annotations)
        .build()?;
    println!("{}", serde_json::to_string_pretty(&features)?);
    Ok(())
}
