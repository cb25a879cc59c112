//! The migration control channel: mutual TLS (rustls) over TCP between
//! `migrate` (client) and `migrate-listen` (server), carrying framed JSON
//! messages and chunked tar streams (the rootfs, CRIU's non-page images).
//! Memory pages do not pass here: they go through CRIU's own page server,
//! TLS too, with the same certificates.
//!
//! Frame: u32 big-endian length, then that many bytes. A message is one
//! frame of JSON; a stream is a run of frames ended by an empty one.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};

use crate::checkpoint::options::Tls;

/// Protocol version; both sides must speak the same.
pub const VERSION: u32 = 2;
/// The name every node certificate carries (`migrate-certs`); peers are
/// authenticated by the CA that signed them, not by host name.
pub const PEER_NAME: &str = "cntrlive-migration";
/// Largest message frame accepted (a config.json, a report).
const MAX_MESSAGE: usize = 16 << 20;
/// Chunk size of streams.
const CHUNK: usize = 256 << 10;

/// How the container moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Choose from what both kernels support and the working set
    Auto,
    /// Freeze, dump everything, restore
    StopAndCopy,
    /// Pre-dump rounds while it runs, then a final dump of what changed
    PreCopy,
    /// Restore at once; memory follows on demand (lazy pages)
    PostCopy,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::StopAndCopy => "stop-and-copy",
            Strategy::PreCopy => "pre-copy",
            Strategy::PostCopy => "post-copy",
        }
    }
}

/// What the kernel and CRIU of one side can do.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Abilities {
    pub criu_version: String,
    pub kernel: String,
    /// Dirty memory tracking (soft-dirty): pre-copy.
    pub mem_track: bool,
    /// userfaultfd: post-copy.
    pub lazy_pages: bool,
}

/// What the destination's dockerd needs to create a docker-managed
/// container's twin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DockerTwin {
    /// A create request's body: the source's `Config` with `HostConfig`.
    pub create: serde_json::Value,
    /// `Config.Image`, and its layers' digests (the same content must be
    /// on the destination).
    pub image: String,
    pub layers: Vec<String>,
    /// The runtime's name at the source's dockerd.
    pub runtime: String,
}

/// The name of the checkpoint the destination puts into its twin's store.
pub const DOCKER_CHECKPOINT: &str = "cntrlive-migrate";

/// CRIU options both sides must agree on.
pub type CriuWire = crate::cli::CriuStateFlags;

/// The destination refused a container for lack of memory (exit status
/// [`NoRoom::EXIT`]: a batch migration stops there).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoRoom(pub String);

impl NoRoom {
    pub const EXIT: u8 = 3;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Msg {
    /// Source → destination: what is coming.
    Hello {
        version: u32,
        /// The container's ID on the destination.
        id: String,
        /// config.json of the container's bundle.
        config: String,
        /// An existing bundle on the destination to use (its rootfs); None:
        /// the rootfs is sent.
        bundle: Option<String>,
        /// A network namespace on the destination to join (external netns).
        netns: Option<String>,
        criu: CriuWire,
        abilities: Abilities,
        /// A docker-managed container: its twin is created through the
        /// destination's dockerd (`id` is its name there).
        #[serde(default)]
        docker: Option<Box<DockerTwin>>,
        /// The container's resident memory (bytes): the destination's
        /// admission control.
        #[serde(default)]
        memory: u64,
    },
    /// Destination → source: ready, and what it can do.
    Welcome { abilities: Abilities },
    /// Either side: no (the reason says why and what to do).
    Refused { reason: String },
    /// Destination → source: no, for lack of memory (admission control);
    /// a batch stops here.
    NoRoom { reason: String },
    /// Source → destination: the strategy chosen.
    Plan { strategy: Strategy, why: String },
    /// A tar stream follows: `rootfs` or `images`; `mode`: of its top
    /// directory (CRIU checks the root's mode on restore).
    Tar { what: String, mode: u32 },
    /// Source → destination: remove from the received `what` tree every
    /// path not in `keep` (files deleted since the first pass).
    Prune { what: String, keep: Vec<String> },
    /// Source → destination: start a page server into `dir` (relative to
    /// the image dir; "" for the final dump), with `parent` as its parent.
    OpenPages { dir: String, parent: Option<String> },
    /// Destination → source: the page server listens here.
    PagesAt { port: u16 },
    /// Source → destination: restore now; `lazy`: ADDR:PORT of the source's
    /// page server (post-copy).
    Restore { lazy: Option<String> },
    /// Destination → source: restored (stopped until `Commit`, unless
    /// post-copy) and registered.
    Restored { pid: i32, restore_ms: f64 },
    /// Destination → source: it failed; nothing is left registered there.
    Failed { reason: String },
    /// Source → destination: the source copy is ended: run.
    Commit,
    /// Destination → source: running.
    Committed,
}

impl Msg {
    fn kind(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "hello",
            Msg::Welcome { .. } => "welcome",
            Msg::Refused { .. } => "refused",
            Msg::NoRoom { .. } => "no-room",
            Msg::Plan { .. } => "plan",
            Msg::Tar { .. } => "tar",
            Msg::Prune { .. } => "prune",
            Msg::OpenPages { .. } => "open-pages",
            Msg::PagesAt { .. } => "pages-at",
            Msg::Restore { .. } => "restore",
            Msg::Restored { .. } => "restored",
            Msg::Failed { .. } => "failed",
            Msg::Commit => "commit",
            Msg::Committed => "committed",
        }
    }
}

/// Load the CA, certificate and key of a TLS directory.
fn load(
    t: &Tls,
) -> Result<(
    rustls::RootCertStore,
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
)> {
    let certs = |p: &Path| -> Result<Vec<CertificateDer<'static>>> {
        let v = CertificateDer::pem_file_iter(p)
            .with_context(|| format!("cannot read certificates from {}", p.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("bad PEM in {}", p.display()))?;
        if v.is_empty() {
            bail!("{} holds no certificate", p.display());
        }
        Ok(v)
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&t.cacert)? {
        roots
            .add(c)
            .with_context(|| format!("bad CA certificate in {}", t.cacert.display()))?;
    }
    let key = PrivateKeyDer::from_pem_file(&t.key)
        .with_context(|| format!("cannot read the private key {}", t.key.display()))?;
    Ok((roots, certs(&t.cert)?, key))
}

/// Either end of the channel.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

pub struct Wire {
    inner: Box<dyn Stream>,
    tcp: TcpStream,
    /// How long a peer may stay silent (--criu-timeout).
    timeout: Duration,
    /// Bytes sent and received (TLS payload), for the report.
    pub sent: u64,
    pub received: u64,
}

impl Wire {
    /// Connect to `dest` (HOST:PORT) and authenticate both ways.
    pub fn connect(dest: &str, tls: &Tls, timeout: Duration) -> Result<Wire> {
        use std::net::ToSocketAddrs;
        let (roots, certs, key) = load(tls)?;
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .context("the TLS certificate and key do not match")?;
        let addr = dest
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {dest}"))?
            .next()
            .with_context(|| format!("{dest} resolves to no address"))?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .with_context(|| format!("cannot connect to the destination {dest}: is `cntrlive-runtime migrate-listen` running there?"))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let conn = rustls::ClientConnection::new(
            Arc::new(cfg),
            ServerName::try_from(PEER_NAME).expect("valid name"),
        )?;
        let mut s = rustls::StreamOwned::new(conn, tcp.try_clone()?);
        s.conn
            .complete_io(&mut s.sock)
            .map_err(|e| tls_error(e, dest))?;
        Ok(Wire::new(Box::new(s), tcp, timeout))
    }

    /// Accept the TLS session of a connection the listener accepted.
    pub fn accept(tcp: TcpStream, tls: &Tls, timeout: Duration) -> Result<Wire> {
        let (roots, certs, key) = load(tls)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .context("cannot build the client certificate verifier")?;
        let cfg = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .context("the TLS certificate and key do not match")?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let conn = rustls::ServerConnection::new(Arc::new(cfg))?;
        let mut s = rustls::StreamOwned::new(conn, tcp.try_clone()?);
        while s.conn.is_handshaking() {
            s.conn
                .complete_io(&mut s.sock)
                .map_err(|e| tls_error(e, &peer))?;
        }
        Ok(Wire::new(Box::new(s), tcp, timeout))
    }

    fn new(inner: Box<dyn Stream>, tcp: TcpStream, timeout: Duration) -> Wire {
        // Reads wake every second (see `fill`) once the session is set up.
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(1)));
        Wire {
            inner,
            tcp,
            timeout,
            sent: 0,
            received: 0,
        }
    }

    pub fn local_ip(&self) -> Result<std::net::IpAddr> {
        Ok(self.tcp.local_addr()?.ip())
    }

    pub fn peer_ip(&self) -> Result<std::net::IpAddr> {
        Ok(self.tcp.peer_addr()?.ip())
    }

    pub fn peer(&self) -> String {
        self.tcp
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into())
    }

    fn frame(&mut self, data: &[u8]) -> io::Result<()> {
        self.inner.write_all(&(data.len() as u32).to_be_bytes())?;
        self.inner.write_all(data)?;
        self.sent += 4 + data.len() as u64;
        Ok(())
    }

    /// read_exact that wakes every second (the socket's read timeout) to
    /// notice SIGINT/SIGTERM/SIGHUP and the deadline.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let deadline = Instant::now() + self.timeout;
        let cancel = crate::criu::cancel::install().ok();
        let mut off = 0;
        while off < buf.len() {
            match self.inner.read(&mut buf[off..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => off += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if let Some(sig) = cancel.and_then(|c| c.pending()) {
                        return Err(io::Error::other(format!("cancelled by signal {sig}")));
                    }
                    if Instant::now() >= deadline {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn read_frame(&mut self, max: usize) -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        self.fill(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > max {
            return Err(io::Error::other(format!(
                "frame of {len} bytes (at most {max})"
            )));
        }
        let mut buf = vec![0u8; len];
        self.fill(&mut buf)?;
        self.received += 4 + len as u64;
        Ok(buf)
    }

    pub fn send(&mut self, m: &Msg) -> Result<()> {
        let data = serde_json::to_vec(m)?;
        self.frame(&data)
            .and_then(|_| self.inner.flush())
            .with_context(|| {
                format!(
                    "lost the connection to {} (sending {})",
                    self.peer(),
                    m.kind()
                )
            })
    }

    pub fn recv(&mut self) -> Result<Msg> {
        let data = self.read_frame(MAX_MESSAGE).map_err(|e| {
            let why = match e.kind() {
                io::ErrorKind::UnexpectedEof => "the peer closed the connection".to_string(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    "no answer within the timeout (--criu-timeout)".to_string()
                }
                _ => e.to_string(),
            };
            anyhow::anyhow!("lost the connection to {}: {why}", self.peer())
        })?;
        serde_json::from_slice(&data).context("the peer sent a malformed message")
    }

    /// Receive, failing on `Refused`/`Failed` with the peer's reason.
    pub fn expect(&mut self, what: &str) -> Result<Msg> {
        match self.recv()? {
            Msg::Refused { reason } | Msg::Failed { reason } => {
                bail!("the destination {} refused: {reason}", self.peer())
            }
            Msg::NoRoom { reason } => Err(anyhow::Error::new(NoRoom(format!(
                "the destination {} has no room for it: {reason}",
                self.peer()
            )))),
            m => {
                if m.kind() != what {
                    bail!("protocol error: expected {what}, got {}", m.kind());
                }
                Ok(m)
            }
        }
    }

    /// Send the tree `dir` as a tar stream (files, dirs, symlinks, devices,
    /// FIFOs, overlayfs's opaque marks; CRIU's logs and stats excluded).
    /// Returns the bytes sent.
    pub fn send_tar(&mut self, what: &str, dir: &Path) -> Result<u64> {
        self.send_tar_since(what, dir, None)
    }

    /// The same, files only if changed (ctime) at or after `since`
    /// (directories and symlinks always).
    pub fn send_tar_since(&mut self, what: &str, dir: &Path, since: Option<i64>) -> Result<u64> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .permissions()
            .mode()
            & 0o7777;
        self.send(&Msg::Tar {
            what: what.into(),
            mode,
        })?;
        let before = self.sent;
        {
            let mut b = tar::Builder::new(Chunked::new(self));
            b.follow_symlinks(false);
            b.mode(tar::HeaderMode::Complete);
            append_tree(&mut b, dir, Path::new(""), since)
                .with_context(|| format!("failed to send {}", dir.display()))?;
            let w = b.into_inner()?;
            w.finish()?;
        }
        Ok(self.sent - before)
    }

    /// Receive a tar stream into `dir` (created), replacing what is there.
    pub fn recv_tar(&mut self, what: &str, dir: &Path) -> Result<u64> {
        match self.recv()? {
            Msg::Tar { what: w, mode } if w == what => self.recv_tar_body(dir, mode),
            Msg::Refused { reason } | Msg::Failed { reason } => bail!("{reason}"),
            m => bail!("protocol error: expected the {what} tar, got {}", m.kind()),
        }
    }

    /// The stream after its `Tar` message.
    pub fn recv_tar_body(&mut self, dir: &Path, mode: u32) -> Result<u64> {
        let before = self.received;
        crate::commands::checkpoint::make_dir(dir, "directory")?;
        let mut reader = Unchunked {
            wire: self,
            buf: Vec::new(),
            pos: 0,
            done: false,
        };
        {
            let mut a = tar::Archive::new(&mut reader);
            a.set_preserve_permissions(true);
            a.set_preserve_ownerships(true);
            a.set_overwrite(true);
            a.set_unpack_xattrs(false);
            for e in a.entries()? {
                let mut e = e?;
                let rel = e.path()?.into_owned();
                if !rel
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
                {
                    bail!(
                        "refusing {} in the stream: not a plain relative path",
                        rel.display()
                    );
                }
                let target = dir.join(&rel);
                let kind = e.header().entry_type();
                if kind.is_symlink() {
                    let _ = std::fs::remove_file(&target);
                }
                if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
                    make_node(e.header(), &target)?;
                    continue;
                }
                let opaque = e
                    .pax_extensions()?
                    .into_iter()
                    .flatten()
                    .flatten()
                    .find(|x| x.key() == Ok(OPAQUE_PAX))
                    .map(|x| x.value_bytes().to_vec());
                e.unpack_in(dir).with_context(|| {
                    format!("failed to unpack {} into {}", rel.display(), dir.display())
                })?;
                if let Some(v) = opaque {
                    xattr::set(&target, OPAQUE, &v)
                        .with_context(|| format!("cannot mark {} opaque", target.display()))?;
                }
            }
        }
        // Drain to the end marker.
        let mut sink = [0u8; 4096];
        while reader.read(&mut sink)? > 0 {}
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
        Ok(self.received - before)
    }
}

fn tls_error(e: io::Error, peer: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "TLS with {peer} failed: {e} (both sides need certificates signed by the same CA: `cntrlive-runtime migrate-certs`)"
    )
}

/// overlayfs's mark of an opaque directory, carried as a PAX record.
const OPAQUE: &str = "trusted.overlay.opaque";
const OPAQUE_PAX: &str = "SCHILY.xattr.trusted.overlay.opaque";

/// A device node or FIFO from the stream (tar would make a regular file).
fn make_node(h: &tar::Header, target: &Path) -> Result<()> {
    use nix::sys::stat::{mknod, Mode, SFlag};
    let kind = match h.entry_type() {
        tar::EntryType::Char => SFlag::S_IFCHR,
        tar::EntryType::Block => SFlag::S_IFBLK,
        _ => SFlag::S_IFIFO,
    };
    let dev = libc::makedev(
        h.device_major()?.unwrap_or(0),
        h.device_minor()?.unwrap_or(0),
    );
    let _ = std::fs::remove_file(target);
    mknod(
        target,
        kind,
        Mode::from_bits_truncate(h.mode()? & 0o7777),
        dev,
    )
    .with_context(|| format!("cannot create {}", target.display()))?;
    nix::unistd::fchownat(
        None,
        target,
        Some(nix::unistd::Uid::from_raw(h.uid()? as u32)),
        Some(nix::unistd::Gid::from_raw(h.gid()? as u32)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

/// Walk `root/rel` into the archive without following symlinks.
fn append_tree<W: Write>(
    b: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    since: Option<i64>,
) -> io::Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        match append_entry(b, root, rel, &e, since) {
            // A running container's file can vanish between the listing
            // and the read (a temp file renamed over another): it is not
            // there to send. Nothing of it was written yet (tar stats and
            // opens before it writes a header). Found by the second kernel's
            // test_auto_migrates_by_pre_copy: "No such file or directory
            // when getting metadata for …/rootfs/tmp/count.tmp".
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            r => r?,
        }
    }
    Ok(())
}

/// One entry of [`append_tree`].
fn append_entry<W: Write>(
    b: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    e: &std::fs::DirEntry,
    since: Option<i64>,
) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let name = e.file_name();
    let n = name.to_string_lossy();
    if n.ends_with(".log") || n.starts_with("stats-") {
        return Ok(());
    }
    let r = rel.join(&name);
    let ft = e.file_type()?;
    if ft.is_dir() {
        // overlayfs: a directory that hides the lower layers' one.
        if let Ok(Some(v)) = xattr::get(e.path(), OPAQUE) {
            b.append_pax_extensions([(OPAQUE_PAX, v.as_slice())])?;
        }
        b.append_dir(&r, e.path())?;
        append_tree(b, root, &r, since)?;
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
        // Devices (overlayfs whiteouts are 0:0 character devices) and
        // FIFOs, built here: tar's append_path_with_name names them by
        // their absolute path (tar 0.4.46).
        let m = e.metadata()?;
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
        h.set_entry_type(if ft.is_char_device() {
            tar::EntryType::Char
        } else if ft.is_block_device() {
            tar::EntryType::Block
        } else {
            tar::EntryType::Fifo
        });
        h.set_size(0);
        h.set_device_major(libc::major(m.rdev()))?;
        h.set_device_minor(libc::minor(m.rdev()))?;
        b.append_data(&mut h, &r, io::empty())?;
    } else if ft.is_symlink()
        || since.is_none_or(|t| e.metadata().map(|m| m.ctime() >= t).unwrap_or(true))
    {
        b.append_path_with_name(e.path(), &r)?;
    }
    Ok(())
}

/// Writes frames of at most CHUNK bytes; `finish` writes the end frame.
struct Chunked<'a> {
    wire: &'a mut Wire,
    buf: Vec<u8>,
}

impl<'a> Chunked<'a> {
    fn new(wire: &'a mut Wire) -> Self {
        Chunked {
            wire,
            buf: Vec::with_capacity(CHUNK),
        }
    }
    fn finish(mut self) -> io::Result<()> {
        self.flush_buf()?;
        self.wire.frame(&[])?;
        self.wire.inner.flush()
    }
    fn flush_buf(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let b = std::mem::take(&mut self.buf);
            self.wire.frame(&b)?;
            self.buf = b;
            self.buf.clear();
        }
        Ok(())
    }
}

impl Write for Chunked<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush_buf()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Unchunked<'a> {
    wire: &'a mut Wire,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for Unchunked<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            self.buf = self.wire.read_frame(CHUNK)?;
            self.pos = 0;
            if self.buf.is_empty() {
                self.done = true;
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Every path under `dir`, relative (what a later `Prune` keeps).
pub fn list_tree(dir: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<String>) -> io::Result<()> {
        for e in std::fs::read_dir(root.join(rel))?.flatten() {
            let r = rel.join(e.file_name());
            out.push(r.display().to_string());
            if e.file_type()?.is_dir() {
                walk(root, &r, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), &mut out).with_context(|| format!("cannot list {}", dir.display()))?;
    Ok(out)
}

/// Remove from `dir` what is not in `keep` (deepest first).
pub fn prune_tree(dir: &Path, keep: &[String]) -> Result<usize> {
    let keep: std::collections::HashSet<&str> = keep.iter().map(String::as_str).collect();
    let mut have = list_tree(dir)?;
    have.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    let mut removed = 0;
    for p in have {
        if !keep.contains(p.as_str()) {
            let full = dir.join(&p);
            let gone = match std::fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&full),
                Ok(_) => std::fs::remove_file(&full),
                Err(_) => Ok(()),
            };
            if gone.is_ok() {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file gone between the listing and its read fails with NotFound
    /// (which append_tree skips) before anything of it is written.
    #[test]
    fn a_file_that_vanished_is_not_found_and_leaves_the_stream_as_it_was() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("count.tmp"), "1").unwrap();
        let entries: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().collect();
        std::fs::rename(d.path().join("count.tmp"), d.path().join("count")).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let err = append_entry(&mut b, d.path(), Path::new(""), &entries[0], None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(b.get_ref().is_empty(), "bytes written for a vanished file");
        // The tree as it is now goes through whole.
        append_tree(&mut b, d.path(), Path::new(""), None).unwrap();
        let data = b.into_inner().unwrap();
        let names: Vec<String> = tar::Archive::new(data.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["count"]);
    }

    #[test]
    fn prune_removes_what_the_source_no_longer_has_ok() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/keep"), "1").unwrap();
        std::fs::write(d.path().join("a/gone"), "1").unwrap();
        std::fs::create_dir_all(d.path().join("old/deep")).unwrap();
        let keep = vec!["a".to_string(), "a/b".to_string(), "a/b/keep".to_string()];
        prune_tree(d.path(), &keep).unwrap();
        let mut left = list_tree(d.path()).unwrap();
        left.sort();
        assert_eq!(left, keep);
    }

    #[test]
    fn messages_round_trip_ok() {
        let m = Msg::Plan {
            strategy: Strategy::PostCopy,
            why: "w".into(),
        };
        let t = serde_json::to_string(&m).unwrap();
        assert!(
            t.contains(r#""type":"plan""#) && t.contains(r#""strategy":"post-copy""#),
            "{t}"
        );
        assert!(matches!(
            serde_json::from_str(&t).unwrap(),
            Msg::Plan { .. }
        ));
    }
}
