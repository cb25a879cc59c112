//! The CRIU requests for checkpoint and restore, built by a pure function from the
//! validated options and facts about the container. Mirrors what runc's
//! `Checkpoint` (libcontainer/criu_linux.go) puts into `CriuOpts`.

use std::path::PathBuf;

use protobuf::{EnumOrUnknown, MessageField};

use super::options::{CgMode, CheckpointOptions, CriuCommon, RestoreOptions};
use crate::criu::rpc::{
    Cgroup_root, Criu_cg_mode, Criu_network_lock_method, Criu_opts, Criu_page_server_info,
    Criu_req, Criu_req_type, Ext_mount_map, Inherit_fd,
};
use crate::criu::session::request;

/// CRIU's log level in our requests (runc uses 4, everything).
pub const LOG_LEVEL: i32 = 4;

/// What the request needs to know about the running container.
#[derive(Debug, Clone, Default)]
pub struct ContainerFacts {
    pub init_pid: i32,
    /// The container's root filesystem as the host sees it.
    pub rootfs: PathBuf,
    /// The cgroup CRIU freezes (v1 freezer dir, v2 cgroup dir).
    pub freeze_cgroup: Option<PathBuf>,
    /// Destinations of bind mounts: CRIU dumps them as external mounts.
    pub external_mounts: Vec<String>,
    /// Masked files (bind mounts of /dev/null).
    pub masked_files: Vec<String>,
    /// Masked directories (empty read-only tmpfs mounts): external under
    /// [`MASKED_DIR_KEY`] instead of their (empty) content being archived.
    pub masked_dirs: Vec<String>,
    /// A CRIU configuration file (`org.criu.config`, /etc/criu/runc.conf).
    pub config_file: Option<PathBuf>,
    /// cgroup v1 controllers to dump (empty: all, right on pure v2).
    pub cgroup_controllers: Vec<String>,
    /// The container has its own network namespace with nothing but `lo`.
    pub loopback_only: bool,
    /// Inode of an external network namespace (config.json names a path,
    /// or a loopback-only one left out: `fresh_netns`): not dumped, CRIU
    /// records it as `extRootNetNS`.
    pub external_netns: Option<u64>,
    /// The namespace is left out; the restore makes a fresh one like it.
    pub fresh_netns: Option<crate::checkpoint::netns::FreshNetns>,
}

/// CRIU's key for an external network namespace (runc uses the same).
pub const EXT_NETNS_KEY: &str = "extRootNetNS";

/// CRIU's external-mount key for masked directories. CRIU saves a tmpfs by
/// running `tar --gzip` on it and restores it by running `tar` again (5–8
/// ms each here); a masked directory is an empty read-only tmpfs the
/// runtime made, so its content is not worth archiving: it is named
/// external and the restore maps this key to an empty read-only tmpfs.
/// runc has no mapping for the key: its CRIU refuses such images instead
/// of restoring them wrongly (`checkpoint --dump-netns` archives them as
/// runc does).
pub const MASKED_DIR_KEY: &str = "cntrlive-masked-dir";

pub fn log_name(o: &CheckpointOptions) -> &'static str {
    if o.pre_dump {
        "pre-dump.log"
    } else {
        "dump.log"
    }
}

fn cg_mode(m: CgMode) -> Criu_cg_mode {
    match m {
        CgMode::Soft => Criu_cg_mode::SOFT,
        CgMode::Full => Criu_cg_mode::FULL,
        CgMode::Strict => Criu_cg_mode::STRICT,
        CgMode::Ignore => Criu_cg_mode::IGNORE,
    }
}

fn ext_mount(key: &str, val: &str) -> Ext_mount_map {
    let mut m = Ext_mount_map::new();
    m.key = Some(key.to_string());
    m.val = Some(val.to_string());
    m
}

/// CRIU locks the container's network (iptables rules in its netns, two
/// iptables-restore runs on each side, ~60 ms here) so no packet from
/// outside reaches a socket that is being dumped or not yet restored. A
/// network namespace with nothing but loopback receives nothing from
/// outside: every peer is inside the frozen tree, so the lock is skipped.
fn skip_network_lock(opts: &mut Criu_opts) {
    opts.network_lock = Some(EnumOrUnknown::new(Criu_network_lock_method::SKIP));
}

/// What every DUMP/PRE_DUMP/RESTORE request carries: the directories, the
/// log, cgroup management, notifications, and the options both commands
/// share (runc sets the same in `Checkpoint` and `Restore`).
fn base_opts(c: &CriuCommon, images_fd: i32, work_fd: i32, log_file: &str) -> Criu_opts {
    let mut opts = Criu_opts::new();
    opts.images_dir_fd = Some(images_fd);
    opts.work_dir_fd = Some(work_fd);
    opts.log_level = Some(LOG_LEVEL);
    opts.log_file = Some(log_file.to_string());
    opts.manage_cgroups = Some(true);
    opts.notify_scripts = Some(true);
    opts.orphan_pts_master = Some(true);
    opts.shell_job = Some(c.shell_job);
    opts.tcp_established = Some(c.tcp_established);
    opts.ext_unix_sk = Some(c.ext_unix_sk);
    opts.file_locks = Some(c.file_locks);
    opts.auto_dedup = Some(c.auto_dedup);
    opts.lazy_pages = Some(c.lazy_pages);
    if c.empty_ns != 0 {
        opts.empty_ns = Some(c.empty_ns);
    }
    if let Some(m) = c.manage_cgroups_mode {
        opts.manage_cgroups_mode = Some(EnumOrUnknown::new(cg_mode(m)));
    }
    if let Some(t) = &c.tls {
        tls_opts(&mut opts, t);
    }
    opts
}

/// CRIU's TLS options: mutual X.509 against one CA; peers are who the CA
/// signed, so the certificate's name is not checked.
pub fn tls_opts(opts: &mut Criu_opts, t: &super::options::Tls) {
    opts.tls = Some(true);
    opts.tls_cacert = Some(t.cacert.display().to_string());
    opts.tls_cert = Some(t.cert.display().to_string());
    opts.tls_key = Some(t.key.display().to_string());
    opts.tls_no_cn_verify = Some(true);
}

/// DUMP (or PRE_DUMP) for the container described by `f`.
pub fn dump_request(
    o: &CheckpointOptions,
    f: &ContainerFacts,
    images_fd: i32,
    work_fd: i32,
) -> Criu_req {
    let mut opts = base_opts(&o.common, images_fd, work_fd, log_name(o));
    opts.root = Some(f.rootfs.display().to_string());
    opts.pid = Some(f.init_pid);
    // Post-copy with confirmation: the runtime, not CRIU, ends the source.
    opts.leave_running = Some(o.leave_running || o.lazy_confirm || o.keep_frozen);
    opts.tcp_skip_in_flight = Some(o.tcp_skip_in_flight);
    opts.link_remap = Some(o.link_remap);
    if let Some(cg) = &f.freeze_cgroup {
        opts.freeze_cgroup = Some(cg.display().to_string());
    }
    if let Some(ps) = &o.page_server {
        let mut info = Criu_page_server_info::new();
        info.address = Some(ps.address.clone());
        info.port = Some(ps.port as i32);
        opts.ps = MessageField::some(info);
    }
    if let Some(fd) = o.status_fd {
        opts.status_fd = Some(fd);
    }
    if let Some(parent) = &o.parent_path {
        opts.parent_img = Some(parent.display().to_string());
        opts.track_mem = Some(true);
    }
    if o.pre_dump {
        opts.track_mem = Some(true);
    }
    opts.cgroup_dump_controller = f.cgroup_controllers.clone();
    if f.loopback_only {
        skip_network_lock(&mut opts);
    }
    for dest in &f.external_mounts {
        opts.ext_mnt.push(ext_mount(dest, dest));
    }
    if let Some(ino) = f.external_netns {
        // runc: handleCheckpointingExternalNamespaces.
        opts.external.push(format!("net[{ino}]:{EXT_NETNS_KEY}"));
    }
    for masked in &f.masked_files {
        opts.ext_mnt.push(ext_mount(masked, "/dev/null"));
    }
    for masked in &f.masked_dirs {
        opts.ext_mnt.push(ext_mount(masked, MASKED_DIR_KEY));
    }
    if let Some(cfg) = &f.config_file {
        opts.config_file = Some(cfg.display().to_string());
    }
    let mut req = request(if o.pre_dump {
        Criu_req_type::PRE_DUMP
    } else {
        Criu_req_type::DUMP
    });
    req.opts = MessageField::some(opts);
    req
}

/// What the restore request needs to know about the target.
#[derive(Debug, Clone, Default)]
pub struct RestoreFacts {
    /// Where the new rootfs is mounted for CRIU (a mount point).
    pub criu_root: PathBuf,
    /// Bind mounts of the new bundle: (destination, source on this host).
    pub bind_mounts: Vec<(String, String)>,
    /// The dump named masked files' mounts "/dev/null" (see `dump_request`).
    pub has_masked_files: bool,
    /// An empty read-only tmpfs for the dump's masked directories
    /// ([`MASKED_DIR_KEY`]), if it had any (our manifest says).
    pub masked_dirs_source: Option<PathBuf>,
    /// The container's cgroup path, relative to the controllers' roots.
    pub cgroup_root: Option<String>,
    /// Apply `cgroup_root` to these controllers only (empty: to all).
    pub cgroup_controllers: Vec<String>,
    /// (descriptor from descriptors.json, our fd that replaces it).
    pub inherit_fds: Vec<(String, i32)>,
    pub config_file: Option<PathBuf>,
    /// The dump's network namespace had nothing but `lo` (our manifest).
    pub loopback_only: bool,
    /// CRIU already sits in the container's cgroups and every restored task
    /// belongs there: CRIU leaves them where they are born
    /// (`--manage-cgroups-mode ignore`) instead of moving the root task,
    /// which would wait for a kernel grace period (commands::restore).
    pub cgroups_inherited: bool,
}

/// RESTORE, as runc's `Restore` (libcontainer/criu_linux.go) builds it.
pub fn restore_request(
    o: &RestoreOptions,
    f: &RestoreFacts,
    images_fd: i32,
    work_fd: i32,
) -> Criu_req {
    let mut opts = base_opts(&o.common, images_fd, work_fd, "restore.log");
    opts.root = Some(f.criu_root.display().to_string());
    if o.leave_stopped {
        opts.leave_stopped = Some(true);
    }
    // The restored init becomes our child (then the shim's, as subreaper).
    opts.rst_sibling = Some(true);
    opts.evasive_devices = Some(true);
    if f.loopback_only {
        skip_network_lock(&mut opts);
    }
    if f.cgroups_inherited {
        opts.manage_cgroups_mode = Some(EnumOrUnknown::new(Criu_cg_mode::IGNORE));
    }
    if let Some(p) = &o.lsm_profile {
        opts.lsm_profile = Some(p.clone());
    }
    if let Some(c) = &o.lsm_mount_context {
        opts.lsm_mount_context = Some(c.clone());
    }
    for (dest, src) in &f.bind_mounts {
        opts.ext_mnt.push(ext_mount(dest, src));
    }
    if f.has_masked_files {
        // The dump recorded every masked file under the external name
        // "/dev/null"; map that name to this host's /dev/null (runc does).
        opts.ext_mnt.push(ext_mount("/dev/null", "/dev/null"));
    }
    if let Some(src) = &f.masked_dirs_source {
        opts.ext_mnt
            .push(ext_mount(MASKED_DIR_KEY, &src.display().to_string()));
    }
    if let Some(root) = &f.cgroup_root {
        let roots: Vec<Option<String>> = if f.cgroup_controllers.is_empty() {
            vec![None]
        } else {
            f.cgroup_controllers.iter().cloned().map(Some).collect()
        };
        for ctrl in roots {
            let mut cg = Cgroup_root::new();
            cg.ctrl = ctrl;
            cg.path = Some(root.clone());
            opts.cg_root.push(cg);
        }
    }
    for (key, fd) in &f.inherit_fds {
        let mut i = Inherit_fd::new();
        i.key = Some(key.clone());
        i.fd = Some(*fd);
        opts.inherit_fd.push(i);
    }
    if let Some(cfg) = &f.config_file {
        opts.config_file = Some(cfg.display().to_string());
    }
    let mut req = request(Criu_req_type::RESTORE);
    req.opts = MessageField::some(opts);
    req
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::options::CriuCommon;

    fn opts(pre_dump: bool) -> CheckpointOptions {
        CheckpointOptions {
            id: "c".into(),
            image_path: "/img".into(),
            work_path: "/img".into(),
            parent_path: Some("../pre1".into()),
            leave_running: pre_dump,
            pre_dump,
            tcp_skip_in_flight: false,
            link_remap: false,
            page_server: None,
            status_fd: None,
            rounds: None,
            lazy_confirm: false,
            keep_frozen: false,
            dump_netns: false,
            common: CriuCommon {
                tcp_established: true,
                ..Default::default()
            },
        }
    }

    #[test]
    fn dump_request_carries_options_ok() {
        let f = ContainerFacts {
            init_pid: 42,
            rootfs: "/b/rootfs".into(),
            freeze_cgroup: Some("/sys/fs/cgroup/freezer/c".into()),
            external_mounts: vec!["/data".into()],
            masked_files: vec!["/proc/kcore".into()],
            masked_dirs: vec!["/sys/firmware".into()],
            config_file: None,
            cgroup_controllers: vec!["freezer".into()],
            loopback_only: true,
            external_netns: Some(4026532001),
            fresh_netns: None,
        };
        let r = dump_request(&opts(false), &f, 5, 6);
        assert_eq!(r.type_(), Criu_req_type::DUMP);
        let o = r.opts.as_ref().unwrap();
        assert_eq!((o.pid(), o.images_dir_fd(), o.work_dir_fd()), (42, 5, 6));
        assert!(o.tcp_established() && o.track_mem() && !o.leave_running());
        assert_eq!(o.parent_img(), "../pre1");
        assert_eq!(o.external, ["net[4026532001]:extRootNetNS"]);
        assert_eq!(o.freeze_cgroup(), "/sys/fs/cgroup/freezer/c");
        assert_eq!(o.ext_mnt.len(), 3);
        assert_eq!(o.ext_mnt[1].val(), "/dev/null");
        assert_eq!(
            (o.ext_mnt[2].key(), o.ext_mnt[2].val()),
            ("/sys/firmware", MASKED_DIR_KEY)
        );
        assert_eq!(o.log_file(), "dump.log");
        assert_eq!(o.cgroup_dump_controller, ["freezer"]);
        assert_eq!(o.network_lock(), Criu_network_lock_method::SKIP);
        let r = dump_request(
            &opts(false),
            &ContainerFacts {
                loopback_only: false,
                ..f
            },
            5,
            6,
        );
        assert!(
            r.opts.as_ref().unwrap().network_lock.is_none(),
            "CRIU's default lock"
        );
    }

    #[test]
    fn restore_request_maps_new_host_ok() {
        let ropts = RestoreOptions {
            id: "c2".into(),
            image_path: "/img".into(),
            work_path: "/w".into(),
            detach: true,
            no_subreaper: true,
            lsm_profile: None,
            lsm_mount_context: None,
            page_server: None,
            leave_stopped: false,
            stdio_fds: [0, 1, 2],
            common: CriuCommon::default(),
        };
        let f = RestoreFacts {
            criu_root: "/run/cntrlive/c2/criu-root".into(),
            bind_mounts: vec![("/data".into(), "/srv/data".into())],
            has_masked_files: true,
            masked_dirs_source: Some("/run/cntrlive/c2/masked".into()),
            cgroup_root: Some("/default/c2".into()),
            inherit_fds: vec![("pipe:[123]".into(), 1)],
            config_file: None,
            cgroup_controllers: vec!["memory".into(), "name=systemd".into()],
            loopback_only: false,
            cgroups_inherited: false,
        };
        let r = restore_request(&ropts, &f, 5, 6);
        assert_eq!(r.type_(), Criu_req_type::RESTORE);
        let o = r.opts.as_ref().unwrap();
        assert!(o.rst_sibling() && o.manage_cgroups() && o.orphan_pts_master());
        assert_eq!(o.root(), "/run/cntrlive/c2/criu-root");
        assert_eq!(
            (o.ext_mnt[0].key(), o.ext_mnt[0].val()),
            ("/data", "/srv/data")
        );
        assert_eq!(
            (o.ext_mnt[1].key(), o.ext_mnt[1].val()),
            ("/dev/null", "/dev/null")
        );
        assert_eq!(
            (o.ext_mnt[2].key(), o.ext_mnt[2].val()),
            (MASKED_DIR_KEY, "/run/cntrlive/c2/masked")
        );
        assert_eq!(o.cg_root.len(), 2);
        assert_eq!(
            (o.cg_root[1].ctrl(), o.cg_root[1].path()),
            ("name=systemd", "/default/c2")
        );
        assert_eq!(
            (o.inherit_fd[0].key(), o.inherit_fd[0].fd()),
            ("pipe:[123]", 1)
        );
        assert_eq!(o.log_file(), "restore.log");
        // CRIU moves the restored root task into the dumped cgroups (soft)
        // unless the tree inherits CRIU's.
        assert!(o.manage_cgroups_mode.is_none());
        let f = RestoreFacts {
            cgroups_inherited: true,
            ..f
        };
        let r = restore_request(&ropts, &f, 5, 6);
        let o = r.opts.as_ref().unwrap();
        assert_eq!(o.manage_cgroups_mode(), Criu_cg_mode::IGNORE);
    }

    #[test]
    fn pre_dump_request_ok() {
        let r = dump_request(&opts(true), &ContainerFacts::default(), 5, 6);
        assert_eq!(r.type_(), Criu_req_type::PRE_DUMP);
        let o = r.opts.as_ref().unwrap();
        assert!(o.track_mem() && o.leave_running());
        assert_eq!(o.log_file(), "pre-dump.log");
    }
}
