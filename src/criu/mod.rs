//! The CRIU engine: the only place that starts CRIU and talks to it.
//!
//! - [`session`]: one supervised `criu swrk` process per operation, several
//!   requests in a row (VERSION, FEATURE_CHECK, PRE_DUMP…, DUMP), every
//!   NOTIFY answered, a deadline per request, cancellation by signal, and
//!   CRIU's process group killed and reaped on every path.
//! - [`janitor`]: a small guard process that undoes what an interrupted
//!   operation left behind (CRIU still running, a frozen cgroup, a
//!   half-restored tree) if the runtime itself dies, even by SIGKILL.
//! - [`page_server`]: CRIU's page server (receiving side of a diskless
//!   dump), tracked by pidfd, killed at the deadline or on a signal.
//! - [`cancel`]: SIGINT/SIGTERM/SIGHUP turned into a pollable fd.
//! - [`log`]: the `Error` lines of CRIU's log, with hints for known failures.
//! - [`stats`]: what CRIU measured (stats-dump/stats-restore) for `--stats`.
//! - [`kdat`]: CRIU's kernel-facts cache, kept for it where `/run` is not
//!   a tmpfs (CRIU then probes the kernel on every run).
//! - [`gates`]: the CRIU version and features we rely on, as named constants,
//!   and the host check behind `cntrlive-runtime check`.
//!
//! Mirrors runc's `criuSwrk` (libcontainer/criu_linux.go) in what it sends;
//! differs in that runc has no deadline, no cancellation, cannot carry more
//! than one request, and waits forever for CRIU after a pre-dump.

pub mod cancel;
pub mod gates;
pub mod janitor;
pub mod kdat;
pub mod lazy;
pub mod log;
pub mod page_server;
pub mod session;
pub mod stats;

pub use rust_criu::rust_criu_protobuf::rpc;
