//! Command-line definitions: clap structs only, no behaviour.
//!
//! Flag names, short forms and defaults follow runc 1.1 (`main.go` and one
//! file per command) so that containerd, dockerd and people's scripts can use
//! `cntrlive-runtime` wherever they use runc. Handlers live in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default state directory, the analogue of runc's `/run/runc`.
pub const DEFAULT_ROOT: &str = "/run/cntrlive";

#[derive(Parser, Debug)]
#[command(
    name = "cntrlive-runtime",
    about = "A runc-compatible OCI runtime built for checkpoint/restore and live migration",
    disable_version_flag = true,
    subcommand_required = false,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalOpts {
    /// Enable debug logging
    #[arg(long, global = true)]
    pub debug: bool,

    /// Set the log file to write runtime logs to (default is stderr)
    #[arg(long, global = true, value_name = "PATH")]
    pub log: Option<PathBuf>,

    /// Set the log format
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Root directory for storage of container state (should be on tmpfs)
    #[arg(long, global = true, default_value = DEFAULT_ROOT, value_name = "DIR")]
    pub root: PathBuf,

    /// Path to the criu binary used for checkpoint and restore [default:
    /// criu; without this flag, sessions that cannot use TLS run the
    /// configuration's criu.lean when it exists]
    #[arg(long, global = true, value_name = "PATH")]
    pub criu: Option<PathBuf>,

    /// Deadline of each CRIU request (dump, restore, …); CRIU is killed and
    /// the container thawed when it passes. A Go duration: 30s, 5m
    #[arg(long, global = true, default_value = crate::criu::session::DEFAULT_TIMEOUT, value_name = "DURATION")]
    pub criu_timeout: String,

    /// The runtime's configuration file (default /etc/cntrlive/config.json
    /// when present): iterative checkpoints for daemons, see docs/pre-copy.md
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Enable systemd cgroup support (cgroupsPath is "slice:prefix:name")
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,

    /// Ignore cgroup permission errors ("true", "false", or "auto")
    // Before the subcommand only, as runc takes its global flags: `spec`
    // has a `--rootless` of its own (a flag).
    #[arg(long, default_value = "auto", value_name = "VALUE")]
    pub rootless: String,

    /// Print the version
    #[arg(short = 'v', long)]
    pub version: bool,
}

impl GlobalOpts {
    /// `--criu`, or `criu` (found in PATH) as runc's default.
    pub fn criu(&self) -> &std::path::Path {
        self.criu.as_deref().unwrap_or(std::path::Path::new("criu"))
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A subcommand's arguments, added to clap's command tree only when the
/// command line names that subcommand (clap's `Command::defer`). clap's
/// derive builds every subcommand's arguments, and the global flags'
/// copies in each, before it parses: ~80 heap pages and a tenth of a
/// millisecond on every call of the runtime, for the 25 subcommands the
/// call does not use (docs/performance.md). `Deref`s to the arguments.
#[derive(Debug, Clone)]
pub struct Lazy<A>(pub A);

impl<A> std::ops::Deref for Lazy<A> {
    type Target = A;
    fn deref(&self) -> &A {
        &self.0
    }
}

impl<A: Args> Args for Lazy<A> {
    // The subcommand's description is the variant's doc comment, set when
    // the subcommand is declared; the arguments' struct sets its own, which
    // must not win now that it comes later.
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.defer(|cmd| {
            let described = Described::of(&cmd);
            described.onto(A::augment_args(cmd))
        })
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        cmd.defer(|cmd| {
            let described = Described::of(&cmd);
            described.onto(A::augment_args_for_update(cmd))
        })
    }
    fn group_id() -> Option<clap::Id> {
        A::group_id()
    }
}

/// A subcommand's descriptions, kept across its deferred arguments.
struct Described(
    Option<clap::builder::StyledStr>,
    Option<clap::builder::StyledStr>,
);

impl Described {
    fn of(cmd: &clap::Command) -> Self {
        Described(cmd.get_about().cloned(), cmd.get_long_about().cloned())
    }
    fn onto(self, cmd: clap::Command) -> clap::Command {
        let cmd = match self.0 {
            Some(a) => cmd.about(a),
            None => cmd.about(None::<&'static str>),
        };
        match self.1 {
            Some(l) => cmd.long_about(l),
            None => cmd.long_about(None::<&'static str>),
        }
    }
}

impl<A: clap::FromArgMatches> clap::FromArgMatches for Lazy<A> {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        A::from_arg_matches(m).map(Lazy)
    }
    fn from_arg_matches_mut(m: &mut clap::ArgMatches) -> Result<Self, clap::Error> {
        A::from_arg_matches_mut(m).map(Lazy)
    }
    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(m)
    }
    fn update_from_arg_matches_mut(&mut self, m: &mut clap::ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches_mut(m)
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a container
    Create(Lazy<CreateArgs>),
    /// Execute the user-defined process in a created container
    Start(Lazy<IdArg>),
    /// Create and run a container
    Run(Lazy<RunArgs>),
    /// Output the state of a container
    State(Lazy<IdArg>),
    /// List containers started by cntrlive-runtime with the given root
    #[command(alias = "ls")]
    List(Lazy<ListArgs>),
    /// Kill sends the specified signal (default: SIGTERM) to the container's init process
    Kill(Lazy<KillArgs>),
    /// Delete any resources held by the container, often used with detached containers
    Delete(Lazy<DeleteArgs>),
    /// Execute new process inside the container
    Exec(Lazy<ExecArgs>),
    /// Display the processes running inside a container
    Ps(Lazy<PsArgs>),
    /// Pause suspends all processes inside the container
    Pause(Lazy<IdArg>),
    /// Resume all processes that have been previously paused
    Resume(Lazy<IdArg>),
    /// Display container events such as OOM notifications, cpu, memory, and IO usage statistics
    Events(Lazy<EventsArgs>),
    /// Update container resource constraints
    Update(Lazy<UpdateArgs>),
    /// Create a new specification file
    Spec(Lazy<SpecArgs>),
    /// Show the enabled features
    Features,
    /// Say what this host can and cannot do for checkpoint/restore, and why
    Check,
    /// Receive a checkpoint's memory pages over the network into an image
    /// directory (CRIU's page server), until the dumping side is done
    PageServer(Lazy<PageServerArgs>),
    /// Checkpoint a running container
    Checkpoint(Lazy<CheckpointArgs>),
    /// Restore a container from a previous checkpoint
    Restore(Lazy<RestoreArgs>),
    /// Move a running container to another host (`migrate-listen` there)
    Migrate(Lazy<MigrateArgs>),
    /// Receive migrated containers (the destination of `migrate`)
    MigrateListen(Lazy<MigrateListenArgs>),
    /// Make a migration CA and one TLS directory per host
    MigrateCerts(Lazy<MigrateCertsArgs>),
    /// One migration on the socket that is stdin (started by migrate-listen)
    #[command(hide = true)]
    MigrateReceive(Lazy<MigrateReceiveArgs>),
    /// Append stdin to FILE until EOF (a migrated container's output)
    #[command(hide = true)]
    LogRelay { file: PathBuf },
    /// One call to dockerd's API: `remove ID` (`docker rm -f`: a
    /// destination's guard), `checkpoint ID NAME [--leave-running]`,
    /// `start ID NAME` (from that checkpoint): a batch's child command
    #[command(hide = true)]
    Docker {
        #[arg(long)]
        docker_host: String,
        #[arg(long)]
        leave_running: bool,
        #[arg(value_enum)]
        op: DockerOp,
        id: String,
        checkpoint: Option<String>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DockerOp {
    Remove,
    Checkpoint,
    Start,
}

/// `migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// auto (chooses from what both kernels support and the working set,
    /// and says why), stop-and-copy, pre-copy or post-copy
    #[arg(long, value_enum, default_value_t = crate::migrate::wire::Strategy::Auto)]
    pub strategy: crate::migrate::wire::Strategy,
    /// Pre-copy: at most N rounds (it stops earlier once the dirty set
    /// stops shrinking)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_rounds: Option<u32>,
    /// TLS directory of this host (ca.pem, cert.pem, key.pem: migrate-certs)
    #[arg(long, value_name = "DIR")]
    pub tls_dir: PathBuf,
    /// The container's ID on the destination (default: the same)
    #[arg(long, value_name = "ID", conflicts_with = "dest_id_prefix")]
    pub dest_id: Option<String>,
    /// The container's ID on the destination is PREFIX + its ID (a batch
    /// to a host whose IDs would clash, e.g. two state roots on one machine)
    #[arg(long, value_name = "PREFIX")]
    pub dest_id_prefix: Option<String>,
    /// A bundle on the destination whose rootfs to use (default: the
    /// rootfs is sent)
    #[arg(long, value_name = "DIR", conflicts_with = "docker_host")]
    pub dest_bundle: Option<PathBuf>,
    /// A network namespace on the destination for the container to join
    /// (its network identity moves with it: with --tcp-established its
    /// connections too)
    #[arg(long, value_name = "PATH")]
    pub dest_netns: Option<PathBuf>,
    /// CRIU's options (--tcp-established: the connections move with it)
    #[command(flatten)]
    pub criu: CriuStateFlags,
    /// Print the report as JSON (no progress display)
    #[arg(long)]
    pub json: bool,
    /// Batch: every running (or paused) container of the state root
    /// (then only DESTINATION follows)
    #[arg(long, conflicts_with = "docker_host")]
    pub all: bool,
    /// Batch: containers migrated at once
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
    /// Docker-managed: the container is a container (name or ID) of this
    /// dockerd; its twin is created through the destination's dockerd
    /// (migrate-listen --docker-host) and the one here removed
    #[arg(long, value_name = "URL")]
    pub docker_host: Option<String>,
    /// This dockerd's --exec-root (default: found under /run)
    #[arg(long, value_name = "DIR", requires = "docker_host")]
    pub docker_exec_root: Option<PathBuf>,
    /// The container ID (with --docker-host: docker's name or ID), more
    /// IDs for a batch (or none with --all), then HOST:PORT of the
    /// destination's migrate-listen
    #[arg(value_name = "CONTAINER_ID… DESTINATION", required = true)]
    pub targets: Vec<String>,
}

impl MigrateArgs {
    /// HOST:PORT of the destination.
    pub fn destination(&self) -> &str {
        self.targets.last().map(String::as_str).unwrap_or_default()
    }
    /// The containers named (all but the last word).
    pub fn ids(&self) -> &[String] {
        &self.targets[..self.targets.len().saturating_sub(1)]
    }
    /// The one container (not a batch).
    pub fn container_id(&self) -> &str {
        self.ids().first().map(String::as_str).unwrap_or_default()
    }
    pub fn is_batch(&self) -> bool {
        self.all || self.ids().len() > 1
    }
}

/// `migrate-listen`.
#[derive(Args, Debug)]
pub struct MigrateListenArgs {
    /// ADDRESS:PORT to listen on
    #[arg(long, default_value = "0.0.0.0:7741", value_name = "ADDR:PORT")]
    pub listen: String,
    /// TLS directory of this host (ca.pem, cert.pem, key.pem: migrate-certs)
    #[arg(long, value_name = "DIR")]
    pub tls_dir: PathBuf,
    /// Where migrations keep their bundles, images and container logs
    #[arg(long, default_value = "/var/lib/cntrlive/migrate", value_name = "DIR")]
    pub work_root: PathBuf,
    /// Take one migration, then exit with its result
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    pub docker: DockerDest,
    #[command(flatten)]
    pub admission: ReceiveAdmission,
}

/// The destination's admission control (docs/batch.md): a container that
/// does not fit is refused before anything is sent (`migrate` exits 3).
#[derive(Args, Debug, Clone, Default)]
pub struct ReceiveAdmission {
    /// At most this much memory (each container's resident memory as its
    /// source measures it, plus 4 MiB) for the containers received here
    /// that are in flight or still registered, e.g. 2G
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_budget: Option<u64>,
    /// Memory left to the host: a container that needs more than
    /// MemAvailable minus this (minus migrations in flight) is refused
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    pub memory_reserve: u64,
}

/// The destination's dockerd, for docker-managed migrations.
#[derive(Args, Debug, Clone, Default)]
pub struct DockerDest {
    /// dockerd (unix socket) that receives docker-managed containers
    #[arg(long, value_name = "URL")]
    pub docker_host: Option<String>,
    /// The name under which that dockerd knows cntrlive-runtime (default:
    /// the source container's runtime name)
    #[arg(long, value_name = "NAME", requires = "docker_host")]
    pub docker_runtime: Option<String>,
    /// That dockerd's --exec-root (default: found under /run)
    #[arg(long, value_name = "DIR", requires = "docker_host")]
    pub docker_exec_root: Option<PathBuf>,
}

/// `migrate-receive` (hidden).
#[derive(Args, Debug)]
pub struct MigrateReceiveArgs {
    #[arg(long, value_name = "DIR")]
    pub tls_dir: PathBuf,
    #[arg(long, value_name = "DIR")]
    pub work_root: PathBuf,
    #[command(flatten)]
    pub docker: DockerDest,
    #[command(flatten)]
    pub admission: ReceiveAdmission,
}

/// `migrate-certs`.
#[derive(Args, Debug)]
pub struct MigrateCertsArgs {
    /// Directory for the CA (ca.pem, ca-key.pem) and one subdirectory per host
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// A host to make a certificate for (repeat)
    #[arg(long, value_name = "NAME")]
    pub host: Vec<String>,
}

/// A command whose only argument is the container ID.
#[derive(Args, Debug)]
pub struct IdArg {
    /// The container ID
    pub container_id: String,
}

/// How a container is launched: shared by `create`, `run` and `restore`
/// (runc's restore goes through the same path as run).
#[derive(Args, Debug, Clone)]
pub struct LaunchFlags {
    /// Path to the root of the bundle directory, defaults to the current directory
    #[arg(short = 'b', long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,

    /// Path to an AF_UNIX socket which will receive a file descriptor referencing the master end of the console's pseudoterminal
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,

    /// Specify the file to write the process id to
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,

    /// Do not use pivot root to jail process inside rootfs
    #[arg(long)]
    pub no_pivot: bool,
}

/// Flags shared by `create` and `run` (runc's `create.go`/`run.go`).
#[derive(Args, Debug, Clone)]
pub struct CreateFlags {
    #[command(flatten)]
    pub launch: LaunchFlags,

    /// Do not create a new session keyring for the container
    #[arg(long)]
    pub no_new_keyring: bool,

    /// Pass N additional file descriptors to the container (stdio + $LISTEN_FDS + N in total)
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub preserve_fds: i32,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub flags: CreateFlags,
    /// The container ID
    pub container_id: String,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub flags: CreateFlags,

    /// Detach from the container's process
    #[arg(short = 'd', long)]
    pub detach: bool,

    /// Do not delete the container after it exits
    #[arg(long)]
    pub keep: bool,

    /// The container ID
    pub container_id: String,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Select one of: table or json
    #[arg(short = 'f', long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,

    /// Display only container IDs
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// Send the specified signal to all processes inside the container
    #[arg(short = 'a', long)]
    pub all: bool,

    /// The container ID
    pub container_id: String,

    /// Signal name (KILL, SIGKILL) or number; default SIGTERM
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Forcibly delete the container if it is still running (uses SIGKILL)
    #[arg(short = 'f', long)]
    pub force: bool,

    /// The container ID
    pub container_id: String,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Path to an AF_UNIX socket which will receive a file descriptor referencing the master end of the console's pseudoterminal
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,

    /// Current working directory in the container
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,

    /// Set environment variables (KEY=VALUE), may be repeated
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Allocate a pseudo-TTY
    #[arg(short = 't', long)]
    pub tty: bool,

    /// UID (format: <uid>[:<gid>])
    #[arg(short = 'u', long, value_name = "UID[:GID]")]
    pub user: Option<String>,

    /// Additional gids, may be repeated
    #[arg(short = 'g', long = "additional-gids", value_name = "GID")]
    pub additional_gids: Vec<u32>,

    /// Path to the process.json
    #[arg(short = 'p', long, value_name = "PATH")]
    pub process: Option<PathBuf>,

    /// Detach from the container's process
    #[arg(short = 'd', long)]
    pub detach: bool,

    /// Specify the file to write the process id to
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,

    /// Set the asm process label for the process commonly used with selinux
    #[arg(long, value_name = "LABEL")]
    pub process_label: Option<String>,

    /// Set the apparmor profile for the process
    #[arg(long, value_name = "PROFILE")]
    pub apparmor: Option<String>,

    /// Set the no new privileges value for the process
    #[arg(long)]
    pub no_new_privs: bool,

    /// Add a capability to the bounding set for the process, may be repeated
    #[arg(short = 'c', long = "cap", value_name = "CAP")]
    pub cap: Vec<String>,

    /// Pass N additional file descriptors to the process
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub preserve_fds: i32,

    /// Run the process in a (sub-)cgroup
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,

    /// Allow exec in a paused container
    #[arg(long)]
    pub ignore_paused: bool,

    /// The container ID
    pub container_id: String,

    /// The command to run and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Select one of: table or json
    #[arg(short = 'f', long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,

    /// The container ID
    pub container_id: String,

    /// Options passed to ps(1) for the table format (default: -ef)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_options: Vec<String>,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Set the stats collection interval (Go duration such as 5s, 500ms)
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    pub interval: String,

    /// Display the container's stats then exit
    #[arg(long)]
    pub stats: bool,

    /// The container ID
    pub container_id: String,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// Path to a file containing the resources to update, or "-" to read from stdin
    #[arg(short = 'r', long, value_name = "PATH")]
    pub resources: Option<PathBuf>,

    /// Specifies per cgroup weight, range is from 10 to 1000
    #[arg(long, value_name = "N")]
    pub blkio_weight: Option<u16>,
    /// CPU CFS period to be used for hardcapping (in usecs)
    #[arg(long, value_name = "N")]
    pub cpu_period: Option<u64>,
    /// CPU CFS hardcap limit (in usecs). Allowed cpu time in a given period
    #[arg(long, value_name = "N")]
    pub cpu_quota: Option<i64>,
    /// CPU shares (relative weight vs. other containers)
    #[arg(long, value_name = "N")]
    pub cpu_share: Option<u64>,
    /// CPU realtime period to be used for hardcapping (in usecs)
    #[arg(long, value_name = "N")]
    pub cpu_rt_period: Option<u64>,
    /// CPU realtime hardcap limit (in usecs)
    #[arg(long, value_name = "N")]
    pub cpu_rt_runtime: Option<i64>,
    /// CPU(s) to use
    #[arg(long, value_name = "LIST")]
    pub cpuset_cpus: Option<String>,
    /// Memory node(s) to use
    #[arg(long, value_name = "LIST")]
    pub cpuset_mems: Option<String>,
    /// Memory limit (in bytes, or with a k/m/g suffix)
    #[arg(long, value_name = "BYTES")]
    pub memory: Option<String>,
    /// Memory reservation or soft_limit (in bytes)
    #[arg(long, value_name = "BYTES")]
    pub memory_reservation: Option<String>,
    /// Total memory usage (memory + swap); set '-1' to enable unlimited swap
    #[arg(long, value_name = "BYTES")]
    pub memory_swap: Option<String>,
    /// Maximum number of pids allowed in the container
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<i64>,
    /// The string of Intel RDT/CAT L3 cache schema
    #[arg(long, value_name = "SCHEMA")]
    pub l3_cache_schema: Option<String>,
    /// The string of Intel RDT/MBA memory bandwidth schema
    #[arg(long, value_name = "SCHEMA")]
    pub mem_bw_schema: Option<String>,

    /// The container ID
    pub container_id: String,
}

#[derive(Args, Debug)]
pub struct SpecArgs {
    /// Path to the root of the bundle directory
    #[arg(short = 'b', long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,

    /// Generate a configuration for a rootless container
    #[arg(long = "rootless", id = "spec_rootless")]
    pub rootless: bool,
}

/// `page-server` (ours; runc expects a page server started by hand).
#[derive(Args, Debug)]
pub struct PageServerArgs {
    /// Directory the received pages are written to
    #[arg(long, value_name = "DIR")]
    pub image_path: PathBuf,
    /// Path for CRIU's log (default: the image path)
    #[arg(long, value_name = "DIR")]
    pub work_path: Option<PathBuf>,
    /// Address to listen on
    #[arg(long, default_value = "0.0.0.0", value_name = "ADDR")]
    pub address: String,
    /// Port to listen on (0: any free port, printed on stdout)
    #[arg(long, default_value_t = 0, value_name = "PORT")]
    pub port: u16,
    /// Mutual TLS: directory with ca.pem, cert.pem, key.pem (see checkpoint)
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
}

/// What CRIU may find in the container and how it treats it: the same on
/// the dumping and the restoring side (`checkpoint`, `restore`, `migrate`,
/// which sends them to the destination).
#[derive(Args, Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CriuStateFlags {
    /// Allow open tcp connections
    #[arg(long)]
    pub tcp_established: bool,
    /// Allow external unix sockets
    #[arg(long)]
    pub ext_unix_sk: bool,
    /// Allow shell jobs
    #[arg(long)]
    pub shell_job: bool,
    /// Handle file locks, for safety
    #[arg(long)]
    pub file_locks: bool,
    /// Cgroups mode: soft|full|strict|ignore (default: soft)
    #[arg(long, value_name = "MODE")]
    pub manage_cgroups_mode: Option<String>,
}

/// CRIU options shared by `checkpoint` and `restore` (runc defines each in
/// both commands with the same name and meaning).
#[derive(Args, Debug, Clone)]
pub struct CriuFlags {
    #[command(flatten)]
    pub state: CriuStateFlags,
    /// Use userfaultfd to lazily restore memory pages
    #[arg(long)]
    pub lazy_pages: bool,
    /// Create a namespace, but don't restore its properties
    #[arg(long, value_name = "NS")]
    pub empty_ns: Vec<String>,
    /// Enable auto deduplication of memory images
    #[arg(long)]
    pub auto_dedup: bool,
    /// Encrypt and authenticate the page server connection with TLS (mutual,
    /// CRIU's --tls): a directory holding ca.pem, cert.pem and key.pem
    /// (`cntrlive-runtime migrate-certs` writes them). Peers must present a
    /// certificate signed by that CA; names are not checked
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Print what CRIU measured (frozen time, pages, image size) and the
    /// runtime's own overhead: --stats (text) or --stats=json
    #[arg(long, value_name = "FORMAT", num_args = 0..=1, default_missing_value = "text", require_equals = true)]
    pub stats: Option<crate::criu::stats::StatsFormat>,
}

/// `checkpoint` flags, named as runc's `checkpoint.go`.
#[derive(Args, Debug)]
pub struct CheckpointArgs {
    /// Path for saving criu image files
    #[arg(long, value_name = "DIR")]
    pub image_path: Option<PathBuf>,
    /// Path for saving work files and logs
    #[arg(long, value_name = "DIR")]
    pub work_path: Option<PathBuf>,
    /// Path for previous criu image files in pre-dump (relative to the image path)
    #[arg(long, value_name = "DIR")]
    pub parent_path: Option<PathBuf>,
    /// Leave the process running after checkpointing
    #[arg(long)]
    pub leave_running: bool,
    #[command(flatten)]
    pub criu: CriuFlags,
    /// Skip in-flight tcp connections
    #[arg(long)]
    pub tcp_skip_in_flight: bool,
    /// Allow one to link unlinked files back when possible
    #[arg(long)]
    pub link_remap: bool,
    /// CRIU writes \0 to this FD once lazy-pages is ready
    #[arg(long, value_name = "FD")]
    pub status_fd: Option<i32>,
    /// ADDRESS:PORT of the page server
    #[arg(long, value_name = "ADDR:PORT")]
    pub page_server: Option<String>,
    /// Dump the container's memory information only, leave the container running after this
    #[arg(long)]
    pub pre_dump: bool,
    /// Make images runc and crun can restore: dump the network namespace
    /// even when it holds nothing but loopback, and archive masked
    /// directories (by default such a namespace is left out and the restore
    /// gives the container a fresh one, and masked directories are named
    /// external and come back as an empty read-only tmpfs — faster)
    #[arg(long)]
    pub dump_netns: bool,
    /// Pre-copy in one CRIU session: N pre-dump rounds (images in
    /// IMAGE_PATH/pre-1 … pre-N, each the parent of the next) then the final
    /// dump, which writes only the pages dirtied since the last round
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub pre_dump_rounds: Option<u32>,
    /// With pre-dump rounds: stop early once the dirty set stops shrinking
    /// (a round writes >= 90% of the previous one's pages) or is small
    /// (<= 256 pages); at most --pre-dump-rounds rounds (default 8)
    #[arg(long)]
    pub until_converged: bool,
    /// With --lazy-pages, when the restoring side is not cntrlive-runtime
    /// (runc, a hand-started `criu lazy-pages`): let CRIU kill the
    /// container as soon as the page server's connection ends, as runc
    /// does. CRIU cannot tell a finished transfer from a dead destination;
    /// by default the container stays (frozen) until our restore confirms
    #[arg(long, requires = "lazy_pages")]
    pub no_lazy_confirm: bool,
    #[command(flatten)]
    pub target: Targets,
}

/// The container(s) of `checkpoint` and `restore`: one ID (runc's form),
/// or a batch: `--all` or several IDs, each in IMAGE_PATH/ID
/// (docs/batch.md).
#[derive(Args, Debug, Clone)]
pub struct Targets {
    #[command(flatten)]
    pub batch: BatchFlags,
    /// The container ID
    #[arg(required_unless_present = "all")]
    pub container_id: Option<String>,
    /// More containers: a batch
    pub more_ids: Vec<String>,
}

impl Targets {
    /// The one container (runc's form).
    pub fn id(&self) -> &str {
        self.container_id.as_deref().unwrap_or_default()
    }
    pub fn is_batch(&self) -> bool {
        self.batch.all || !self.more_ids.is_empty() || self.batch.docker_host.is_some()
    }
    /// The IDs named on the command line.
    pub fn listed(&self) -> Vec<String> {
        self.container_id
            .iter()
            .chain(&self.more_ids)
            .cloned()
            .collect()
    }
}

/// Batch checkpoint and restore (docs/batch.md).
#[derive(Args, Debug, Clone)]
pub struct BatchFlags {
    /// A batch of every running (or paused) container in the state root
    /// (restore: every checkpoint of the batch directory IMAGE_PATH)
    #[arg(long)]
    pub all: bool,
    /// Batch: containers handled at once
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
    /// Batch: print the report as JSON (no progress display)
    #[arg(long)]
    pub json: bool,
    /// A batch through dockerd: the containers (docker names or IDs, or
    /// --all) are this dockerd's, checkpointed into their own checkpoint
    /// store as "cntrlive-batch" and started from it (docs/batch.md)
    #[arg(long, value_name = "URL")]
    pub docker_host: Option<String>,
    /// That dockerd's --exec-root (default: found under /run)
    #[arg(long, value_name = "DIR", requires = "docker_host")]
    pub docker_exec_root: Option<PathBuf>,
}

/// Batch restore: admission control (docs/batch.md).
#[derive(Args, Debug, Clone)]
pub struct AdmissionFlags {
    /// Batch restore: at most this much memory (estimated from the images)
    /// for the containers it restores, e.g. 512M, 2G
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_budget: Option<u64>,
    /// Batch restore: memory left to the host (MemAvailable minus this is
    /// what restores may use)
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    pub memory_reserve: u64,
    /// Batch restore: when a container does not fit, wait up to this long
    /// for memory (a Go duration: 30s, 5m) instead of stopping
    #[arg(long, value_name = "DURATION")]
    pub wait_for_memory: Option<String>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{s:?}: {e} (e.g. 512M, 2G)"))
}

/// `restore` flags, named as runc's `restore.go`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub launch: LaunchFlags,
    /// Path to criu image files for restoring
    #[arg(long, value_name = "DIR")]
    pub image_path: Option<PathBuf>,
    /// Path for saving work files and logs
    #[arg(long, value_name = "DIR")]
    pub work_path: Option<PathBuf>,
    /// Path for previous criu image files (accepted as containerd may send it)
    #[arg(long, value_name = "DIR")]
    pub parent_path: Option<PathBuf>,
    #[command(flatten)]
    pub criu: CriuFlags,
    /// Detach from the container's process
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Disable the use of the subreaper used to reap reparented processes
    #[arg(long)]
    pub no_subreaper: bool,
    /// Specify an LSM profile to be used during restore
    #[arg(long, value_name = "PROFILE")]
    pub lsm_profile: Option<String>,
    /// Specify an LSM mount context to be used during restore
    #[arg(long, value_name = "CONTEXT")]
    pub lsm_mount_context: Option<String>,
    /// With --lazy-pages: ADDRESS:PORT of the dumping side's page server;
    /// the runtime starts and supervises CRIU's lazy-pages daemon itself
    /// (without it, a daemon started by hand is expected, as with runc)
    #[arg(long, value_name = "ADDR:PORT", requires = "lazy_pages")]
    pub page_server: Option<String>,
    /// Leave the restored processes stopped (SIGSTOP; CRIU's
    /// --leave-stopped); `kill --all ID SIGCONT` lets them run
    #[arg(long)]
    pub leave_stopped: bool,
    /// The fds that replace the dump's stdio pipes, as IN,OUT,ERR (default
    /// 0,1,2: the runtime's own stdio)
    #[arg(long, value_name = "IN,OUT,ERR", hide = true)]
    pub stdio_fds: Option<String>,
    #[command(flatten)]
    pub admission: AdmissionFlags,
    #[command(flatten)]
    pub target: Targets,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent_ok() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exec_trailing_args_keep_their_dashes_ok() {
        let cli = Cli::try_parse_from(["x", "exec", "-t", "c1", "ls", "-la", "--all"]).unwrap();
        match cli.command {
            Some(Command::Exec(a)) => {
                assert!(a.tty);
                assert_eq!(a.container_id, "c1");
                assert_eq!(a.command, ["ls", "-la", "--all"]);
            }
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn kill_default_signal_is_sigterm_ok() {
        let cli = Cli::try_parse_from(["x", "kill", "c1"]).unwrap();
        match cli.command {
            Some(Command::Kill(k)) => assert_eq!(k.signal, "SIGTERM"),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn every_subcommand_parses_ok() {
        // from_arg_matches panics on definition clashes (e.g. a subcommand
        // flag shadowing a global one), which debug_assert does not catch.
        for argv in [
            &["x", "spec", "--rootless"][..],
            &["x", "--rootless", "true", "spec"],
            &["x", "create", "-b", "/b", "--pid-file", "/p", "c"],
            &["x", "run", "-d", "--keep", "c"],
            &["x", "list", "-q"],
            &["x", "ps", "-f", "json", "c"],
            &["x", "events", "--stats", "--interval", "1s", "c"],
            &["x", "update", "--memory", "10m", "c"],
            &[
                "x",
                "checkpoint",
                "--image-path",
                "/i",
                "--leave-running",
                "c",
            ],
            &[
                "x",
                "restore",
                "--image-path",
                "/i",
                "-d",
                "--bundle",
                "/b",
                "c",
            ],
            &["x", "features"],
        ] {
            Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
    }

    #[test]
    fn criu_flag_given_or_defaulted_ok() {
        // Not given: `criu`, and the configuration's lean CRIU may be used.
        let cli = Cli::try_parse_from(["x", "list"]).unwrap();
        assert!(cli.global.criu.is_none());
        assert_eq!(cli.global.criu(), std::path::Path::new("criu"));
        let cli = Cli::try_parse_from(["x", "--criu", "/opt/criu", "list"]).unwrap();
        assert_eq!(cli.global.criu(), std::path::Path::new("/opt/criu"));
    }

    #[test]
    fn unknown_log_format_ng() {
        assert!(Cli::try_parse_from(["x", "--log-format", "xml", "list"]).is_err());
    }
}
