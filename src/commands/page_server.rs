//! `page-server`: the receiving side of a diskless checkpoint
//! (`checkpoint --page-server ADDR:PORT` on the other side). Prints
//! `listening on ADDR:PORT (pid N)` once ready, then waits until the dump
//! is done; exits 1 if CRIU's page server logged errors, timed out
//! (`--criu-timeout`) or was cancelled.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context as _, Result};

use super::checkpoint::{criu_timeout, make_dir};
use super::Ctx;
use crate::cli::PageServerArgs;
use crate::criu::cancel;
use crate::criu::janitor::{Action, Janitor};
use crate::criu::page_server::{self, Ended};

pub fn page_server(args: PageServerArgs, ctx: &Ctx) -> Result<()> {
    let tls = args
        .tls_dir
        .as_deref()
        .map(crate::checkpoint::options::Tls::from_dir)
        .transpose()?;
    let address = args.address.clone();
    serve(
        ctx,
        &args.image_path,
        args.work_path.as_deref(),
        &args.address,
        args.port,
        tls.as_ref(),
        |port, pid| {
            println!("listening on {address}:{port} (pid {pid})");
            let _ = std::io::stdout().flush();
        },
    )
}

/// Run one supervised CRIU page server into `image_path` until the dumping
/// side is done; `listening(port, pid)` is called once it accepts.
pub fn serve(
    ctx: &Ctx,
    image_path: &Path,
    work_path: Option<&Path>,
    address: &str,
    port: u16,
    tls: Option<&crate::checkpoint::options::Tls>,
    listening: impl FnOnce(u16, nix::unistd::Pid),
) -> Result<()> {
    let timeout = criu_timeout(ctx)?;
    let work_path = work_path.unwrap_or(image_path).to_path_buf();
    make_dir(image_path, "image directory")?;
    make_dir(&work_path, "work directory")?;
    let images = File::open(image_path)?;
    let work = File::open(&work_path)?;
    let cancel = cancel::install().context("failed to install signal handlers")?;
    let mut janitor = Janitor::spawn().context("failed to start the janitor process")?;
    let (mut session, _) =
        super::criu_session(ctx, &work_path, false, tls.is_some(), &mut janitor)?;
    let ps = page_server::start(
        &mut session,
        images.as_raw_fd(),
        work.as_raw_fd(),
        &work_path,
        address,
        port,
        tls,
    )?;
    session.close();
    janitor.arm(Action::Kill(ps.pid));
    listening(ps.port, ps.pid);
    let ended = ps.wait(timeout, Some(cancel));
    janitor.disarm();
    match ended {
        Ended::Exited { errors: None } => Ok(()),
        Ended::Exited { errors: Some(e) } => bail!("CRIU's page server failed{e}"),
        Ended::TimedOut(t) => bail!(
            "no complete dump arrived within {t:?} (--criu-timeout); the page server was killed"
        ),
        Ended::Cancelled(sig) => bail!("page server cancelled by signal {sig}; it was killed"),
    }
}
