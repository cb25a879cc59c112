//! SIGINT, SIGTERM and SIGHUP during a CRIU operation: instead of dying with
//! CRIU still running and the container frozen, the runtime notices the
//! signal in its poll loop and unwinds through the normal error path.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// The signals that cancel an operation.
pub const CANCEL_SIGNALS: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

pub struct CancelToken {
    reader: UnixStream,
    last: Arc<AtomicUsize>,
}

static TOKEN: OnceLock<CancelToken> = OnceLock::new();

/// Install the handlers (once per process) and return the token to poll.
pub fn install() -> std::io::Result<&'static CancelToken> {
    if let Some(t) = TOKEN.get() {
        return Ok(t);
    }
    let (reader, writer) = UnixStream::pair()?;
    reader.set_nonblocking(true)?;
    writer.set_nonblocking(true)?;
    let last = Arc::new(AtomicUsize::new(0));
    for sig in CANCEL_SIGNALS {
        signal_hook::flag::register_usize(sig, Arc::clone(&last), sig as usize)?;
        signal_hook::low_level::pipe::register(sig, writer.try_clone()?)?;
    }
    Ok(TOKEN.get_or_init(|| CancelToken { reader, last }))
}

impl CancelToken {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.reader.as_fd()
    }

    /// The signal that arrived, if any (drains the pipe).
    pub fn take(&self) -> Option<i32> {
        let mut buf = [0u8; 64];
        let _ = (&self.reader).read(&mut buf);
        match self.last.swap(0, Ordering::SeqCst) {
            0 => None,
            s => Some(s as i32),
        }
    }

    /// A signal arrived and was not consumed yet.
    pub fn pending(&self) -> Option<i32> {
        match self.last.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s as i32),
        }
    }
}
