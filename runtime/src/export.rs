//! NBD export server on the reactors: listeners (unix socket, TCP on
//! loopback), connections spread over the reactors and driven in poll mode
//! by the sans-I/O `mdraid_nbd::ServerConn`, requests submitted to arrays
//! on the same reactor.
//!
//! # Threads and pollers
//!
//! * **Accept thread** (`nbd-accept`, one per server, started with the
//!   first listener): blocks in `poll(2)` on every listening socket and an
//!   eventfd that the control path kicks when the listener set changes or
//!   the server stops. It accepts, makes the socket non-blocking (TCP:
//!   `TCP_NODELAY`) and hands it to a reactor, round-robin, with one
//!   message. A thread rather than a reactor poller, so that reactors in
//!   poll mode never spend an `accept(2)` per turn on listeners that are
//!   almost always idle, and so that adding or removing a listener never
//!   needs a reactor.
//! * **One poller per connection**, on the reactor it was handed to. Each
//!   turn it `recv`s into a per-connection buffer (only while
//!   [`ServerConn::wants_read`], which is the per-connection backpressure),
//!   feeds [`ServerConn::push`], turns every [`Event::Request`] into a
//!   [`ParentIo`] submitted to that reactor's channel of the array, and
//!   `send`s what the connection produced. Completions come back through
//!   [`IoDone`] on the same reactor and are answered with
//!   [`ServerConn::reply`]; the poller writes them out. A poller reports
//!   work when bytes or events moved and, in interrupt mode, for 250 µs
//!   after its client last sent something (nothing wakes a sleeping reactor
//!   for a socket, and a client's next request usually follows within
//!   microseconds); after that the reactor sleeps, at most 1 ms, which
//!   bounds the added latency of an idle connection's next request. In
//!   poll mode a connection idle for over 1 ms is `recv`ed every 50 µs
//!   rather than on every turn.
//!
//! # Data path
//!
//! Per request: a slot from a per-connection table sized at
//! [`ServerConfig::max_inflight`] (the connection never admits more), a
//! buffer from the reactor's [`crate::BufPool`], a clone of an `Rc`. No lock,
//! no allocation beyond what the protocol layer does (the write payload
//! `Vec` and the output buffer of `ServerConn`). A request the array refuses
//! (`Busy`) waits in a per-connection queue (preallocated) and is resubmitted
//! on the next turn, in order. Mapping: read/write(+FUA)/flush/trim/
//! write-zeroes to `IoType::Read`/`Write`/`Flush`/`Unmap`/`WriteZeroes`;
//! `IoStatus::Error` is answered `EIO`, `IoStatus::Invalid` `EINVAL`.
//!
//! # Exports
//!
//! The export table is behind a mutex on the control path. A connection
//! reads it only during its handshake (list and lookup) and resolves the
//! export it selected once, on `Ready`; from then on it holds that export's
//! array channel and never looks at the table again. Exports advertise
//! flush, FUA, trim and write-zeroes (the last two when every member
//! supports them) and `NBD_FLAG_CAN_MULTI_CONN`: a write is acknowledged
//! only once every member write it caused has completed, and a flush goes
//! to every member, whose channels on any reactor reach the same device
//! (same memory, same file), so a flush on one connection covers the writes
//! completed on every other. Block sizes: minimum = the array's block size,
//! preferred = 4096 (parity levels: the strip size), maximum = 32 MiB.
//! The default export (empty name) is the one named "", or else the only
//! export; with several, none.
//!
//! # Lifetimes and stop order (for the daemon)
//!
//! * Control methods are for non-reactor threads (the RPC thread): they
//!   wait for reactors. Called on a reactor they do not wait.
//! * [`ExportServer::remove_export`] returns once no connection uses the
//!   array any more: its connections answer what is in flight, flush their
//!   output and close (after [`DRAIN_GRACE`] a connection whose client
//!   does not read is closed hard; requests already in the array are still
//!   waited for). Only then may the array be stopped. Never stop an array
//!   that is exported ([`ExportServer::exports_array`]).
//! * [`ExportServer::stop`] stops accepting (listeners closed, unix socket
//!   files removed), drains every connection like `remove_export`, clears
//!   the export table, and returns within `DRAIN_GRACE` + [`FORCE_WAIT`]
//!   at most. Order at shutdown: export server, then arrays
//!   ([`Array::stop`]), then the runtime.
//! * Dropping the last `Arc<ExportServer>` stops it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bdev_raid::channel::{Busy, IoStatus, IoType, ParentIo};
use mdraid_nbd::{
    BlockSizes, Command, DisconnectReason, Errno, Event, ExportCatalog, ExportInfo, ReplyError,
    Request, ServerConfig, ServerConn,
};

use crate::array::{Array, ArrayChannelRef, IoDone};
use crate::buf::AlignedBuf;
use crate::dev::DevOp;
use crate::reactor::{
    current_reactor, next_object_id, Mode, Poller, PollerId, Reactor, RuntimeHandle,
};

/// Largest read or write payload advertised and accepted (the NBD spec's
/// "never a denial of service" size).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// How long [`ExportServer::stop`] and [`ExportServer::remove_export`] let
/// connections answer their requests and flush their replies before closing
/// them hard.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long, after closing connections hard, to wait for the requests they
/// still have in the arrays.
pub const FORCE_WAIT: Duration = Duration::from_secs(5);
/// Receive buffer of a connection: starts small (idle connections are
/// cheap) and doubles, up to the maximum, whenever a `recv` fills it.
const IN_BUF_MIN: usize = 16 * 1024;
const IN_BUF_MAX: usize = 256 * 1024;
/// A connection that received nothing for this long is polled with `recv`
/// at most every [`IDLE_POLL`] instead of on every turn, so that idle
/// connections cost a reactor in poll mode (almost) no syscalls.
const IDLE_AFTER: Duration = Duration::from_millis(1);
const IDLE_POLL: Duration = Duration::from_micros(50);
/// Interrupt mode: how long after the last bytes received a connection
/// keeps its reactor from sleeping.
const LINGER: Duration = Duration::from_micros(250);
/// Read/dispatch/write rounds per poller turn (fairness between
/// connections of one reactor).
const ROUNDS: usize = 8;
/// Longest name or description the protocol can carry.
const MAX_NAME: usize = 4096;

/// How an array is exported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportOptions {
    pub read_only: bool,
    pub description: Option<String>,
}

/// An export as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportView {
    pub export_name: String,
    pub bdev_name: String,
    pub size_bytes: u64,
    pub block_size: u32,
    pub read_only: bool,
    pub connections: usize,
}

/// A listener as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenerView {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for ListenerView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenerView::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenerView::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export {0:?} already exists")]
    Exists(String),
    #[error("no export {0:?}")]
    NoSuchExport(String),
    #[error("no listener {0}")]
    NoSuchListener(String),
    #[error("listener {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("the export server is stopped")]
    Stopped,
    /// A bad export name or description (empty, over 4096 bytes, NUL).
    #[error("invalid {0}")]
    Invalid(String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ----- exports ------------------------------------------------------------

struct ExportEntry {
    name: String,
    array: Arc<Array>,
    info: ExportInfo,
    /// Set (before any reactor is told) when the export goes away; a
    /// connection finishing its handshake on it closes instead.
    removed: AtomicBool,
    /// Connections attached to it (transmission phase, not yet closed).
    connections: AtomicUsize,
}

/// What an array offers over NBD.
fn export_info(name: &str, array: &Array, opts: &ExportOptions) -> ExportInfo {
    let bs = array.block_size();
    let geom = array.geometry();
    let members = array.members();
    let present: Vec<_> = members.iter().flatten().collect();
    let zeroes = present.iter().all(|d| d.supports(DevOp::WriteZeroes));
    let trim = zeroes && present.iter().all(|d| d.supports(DevOp::Unmap));
    let floor = bs.max(512);
    let preferred = if geom.level().is_parity() {
        let strip = geom.strip_blocks().saturating_mul(u64::from(bs));
        u32::try_from(strip).unwrap_or(MAX_PAYLOAD)
    } else {
        4096
    }
    .max(floor)
    .next_power_of_two()
    .min(MAX_PAYLOAD);
    ExportInfo {
        name: name.to_string(),
        description: opts.description.clone(),
        size: array.num_blocks() * u64::from(bs),
        read_only: opts.read_only,
        can_flush: true,
        can_fua: true,
        can_trim: trim,
        can_write_zeroes: zeroes,
        can_multi_conn: true,
        rotational: false,
        block_sizes: BlockSizes {
            min: bs,
            preferred,
            max: MAX_PAYLOAD,
        },
    }
}

fn check_string(what: &str, s: &str) -> Result<(), ExportError> {
    if s.is_empty() {
        return Err(ExportError::Invalid(format!("{what}: must not be empty")));
    }
    if s.len() > MAX_NAME {
        return Err(ExportError::Invalid(format!(
            "{what}: {} bytes, at most {MAX_NAME}",
            s.len()
        )));
    }
    if s.contains('\0') {
        return Err(ExportError::Invalid(format!("{what}: contains NUL")));
    }
    Ok(())
}

/// The catalog one connection sees: the live table, plus the entry its
/// last lookup returned (the one its `NBD_OPT_GO` / `EXPORT_NAME` chose).
struct ConnCatalog {
    inner: Arc<Inner>,
    chosen: Mutex<Option<Arc<ExportEntry>>>,
}

impl ExportCatalog for ConnCatalog {
    fn list(&self) -> Vec<String> {
        lock(&self.inner.exports)
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }

    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        let e = {
            let t = lock(&self.inner.exports);
            match (t.iter().find(|e| e.name == name), t.as_slice()) {
                (Some(e), _) => Some(e.clone()),
                // Without one named so, the default export is the only one:
                // with several, an empty name is ambiguous, and falling back
                // to whichever is first would move a client to another
                // array when an export is removed.
                (None, [only]) if name.is_empty() => Some(only.clone()),
                _ => None,
            }
        }?;
        let info = e.info.clone();
        *lock(&self.chosen) = Some(e);
        Some(info)
    }
}

/// Bind a unix socket at `path`: a stale socket file there is replaced;
/// one a process serves (another listener, an RPC socket, another
/// process's) is `AddrInUse`, anything else there `AlreadyExists`.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() && UnixStream::connect(path).is_ok() => {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "a process is serving this socket",
            ))
        }
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

// ----- listeners ----------------------------------------------------------

enum ListenSock {
    Unix(UnixListener),
    Tcp(TcpListener),
}

struct Listener {
    view: ListenerView,
    sock: ListenSock,
    /// (device, inode) of the socket file we created, so that we only ever
    /// remove our own.
    unix_id: Option<(u64, u64)>,
}

impl Listener {
    fn fd(&self) -> RawFd {
        match &self.sock {
            ListenSock::Unix(l) => l.as_raw_fd(),
            ListenSock::Tcp(l) => l.as_raw_fd(),
        }
    }

    fn accept(&self) -> io::Result<OwnedFd> {
        match &self.sock {
            ListenSock::Unix(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(true)?;
                Ok(OwnedFd::from(s))
            }
            ListenSock::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(true)?;
                s.set_nodelay(true)?;
                Ok(OwnedFd::from(s))
            }
        }
    }

    /// Remove the socket file if it is still the one we bound.
    fn unlink(&self) {
        if let ListenerView::Unix(p) = &self.view {
            if let Ok(m) = std::fs::symlink_metadata(p) {
                if m.file_type().is_socket() && Some((m.dev(), m.ino())) == self.unix_id {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }
}

// ----- the server -----------------------------------------------------------

struct Inner {
    /// Key of the per-reactor connection list.
    key: u64,
    rt: RuntimeHandle,
    config: ServerConfig,
    exports: Mutex<Vec<Arc<ExportEntry>>>,
    listeners: Mutex<Vec<Arc<Listener>>>,
    /// The accept thread; its lock also serializes listener changes and
    /// stop.
    acceptor: Mutex<Option<JoinHandle<()>>>,
    /// Kicks the accept thread (`None`: eventfd failed; listeners refused).
    wake: Option<OwnedFd>,
    /// Listener-set version, and the version the accept thread works with.
    epoch: AtomicU64,
    seen_epoch: AtomicU64,
    stopped: AtomicBool,
    stop_lock: Mutex<()>,
    next_reactor: AtomicUsize,
    /// Connections accepted and not yet closed (closed = socket closed and
    /// nothing of theirs in an array).
    open: AtomicUsize,
    accepted: AtomicU64,
}

impl Inner {
    fn kick(&self) {
        if let Some(w) = &self.wake {
            let v = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live stack array to our eventfd.
            unsafe {
                libc::write(w.as_raw_fd(), v.as_ptr().cast(), v.len());
            }
        }
    }

    /// Run `f` on every reactor; from a non-reactor thread, wait for each.
    fn on_every_reactor(&self, f: impl Fn(&mut Reactor) + Clone + Send + 'static) {
        for n in 0..self.rt.reactors() {
            let f = f.clone();
            if current_reactor().is_some() {
                self.rt.send(n, move |r| f(r));
            } else {
                // An error means the reactor is gone, and its connections
                // with it.
                let _ = self.rt.call(n, move |r| f(r));
            }
        }
    }
}

/// Wait (from a non-reactor thread) until `done`, at most `limit`.
fn wait_for(limit: Duration, done: impl Fn() -> bool) -> bool {
    if current_reactor().is_some() {
        return done();
    }
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The NBD export server of one daemon.
pub struct ExportServer {
    inner: Arc<Inner>,
}

impl ExportServer {
    pub fn start(rt: &RuntimeHandle) -> Arc<ExportServer> {
        ExportServer::start_with_config(
            rt,
            ServerConfig {
                max_payload: MAX_PAYLOAD,
                ..ServerConfig::default()
            },
        )
    }

    /// [`ExportServer::start`] with explicit per-connection limits.
    pub fn start_with_config(rt: &RuntimeHandle, config: ServerConfig) -> Arc<ExportServer> {
        let wake = match make_eventfd() {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::error!("export server: eventfd: {e}; listeners will be refused");
                None
            }
        };
        Arc::new(ExportServer {
            inner: Arc::new(Inner {
                key: next_object_id(),
                rt: rt.clone(),
                config,
                exports: Mutex::new(Vec::new()),
                listeners: Mutex::new(Vec::new()),
                acceptor: Mutex::new(None),
                wake,
                epoch: AtomicU64::new(0),
                seen_epoch: AtomicU64::new(0),
                stopped: AtomicBool::new(false),
                stop_lock: Mutex::new(()),
                next_reactor: AtomicUsize::new(0),
                open: AtomicUsize::new(0),
                accepted: AtomicU64::new(0),
            }),
        })
    }

    /// Listen on a unix socket (created; a stale socket file is replaced,
    /// one a process serves is refused).
    pub fn add_unix_listener(&self, path: &Path) -> Result<(), ExportError> {
        let view = ListenerView::Unix(path.to_path_buf());
        let what = path.display().to_string();
        let mut acc = lock(&self.inner.acceptor);
        if self.inner.stopped.load(Ordering::SeqCst) {
            return Err(ExportError::Stopped);
        }
        if lock(&self.inner.listeners).iter().any(|l| l.view == view) {
            return Err(ExportError::Listen(
                what,
                io::Error::new(io::ErrorKind::AddrInUse, "already listening there"),
            ));
        }
        let l = bind_unix(path).map_err(|e| ExportError::Listen(what.clone(), e))?;
        let id = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let listener = Listener {
            view,
            sock: ListenSock::Unix(l),
            unix_id: id,
        };
        self.install_listener(&mut acc, listener, &what)?;
        tracing::info!("nbd: listening on unix socket {what}");
        Ok(())
    }

    /// Listen on TCP; returns the bound address (port 0 picks one).
    pub fn add_tcp_listener(&self, addr: SocketAddr) -> Result<SocketAddr, ExportError> {
        let what = addr.to_string();
        let mut acc = lock(&self.inner.acceptor);
        if self.inner.stopped.load(Ordering::SeqCst) {
            return Err(ExportError::Stopped);
        }
        let l = TcpListener::bind(addr).map_err(|e| ExportError::Listen(what.clone(), e))?;
        let bound = l
            .local_addr()
            .map_err(|e| ExportError::Listen(what.clone(), e))?;
        if !bound.ip().is_loopback() {
            tracing::warn!(
                "nbd: TCP listener on {bound} is not on loopback; NBD has no authentication"
            );
        }
        let listener = Listener {
            view: ListenerView::Tcp(bound),
            sock: ListenSock::Tcp(l),
            unix_id: None,
        };
        self.install_listener(&mut acc, listener, &what)?;
        tracing::info!("nbd: listening on tcp {bound}");
        Ok(bound)
    }

    fn install_listener(
        &self,
        acc: &mut Option<JoinHandle<()>>,
        l: Listener,
        what: &str,
    ) -> Result<(), ExportError> {
        let fail = |l: &Listener, e: io::Error| {
            l.unlink();
            ExportError::Listen(what.to_string(), e)
        };
        let inner = &self.inner;
        if inner.wake.is_none() {
            return Err(fail(
                &l,
                io::Error::other("no eventfd for the accept thread"),
            ));
        }
        let nb = match &l.sock {
            ListenSock::Unix(s) => s.set_nonblocking(true),
            ListenSock::Tcp(s) => s.set_nonblocking(true),
        };
        if let Err(e) = nb {
            return Err(fail(&l, e));
        }
        if acc.is_none() {
            let i = inner.clone();
            let t = std::thread::Builder::new()
                .name("nbd-accept".into())
                .spawn(move || accept_main(i));
            match t {
                Ok(t) => *acc = Some(t),
                Err(e) => return Err(fail(&l, e)),
            }
        }
        lock(&inner.listeners).push(Arc::new(l));
        inner.epoch.fetch_add(1, Ordering::SeqCst);
        inner.kick();
        Ok(())
    }

    /// Stop listening there (connections already accepted stay). A unix
    /// socket file is removed; the socket is closed when this returns.
    pub fn remove_listener(&self, which: &ListenerView) -> Result<(), ExportError> {
        let inner = &self.inner;
        let acc = lock(&inner.acceptor);
        let l = {
            let mut ls = lock(&inner.listeners);
            match ls.iter().position(|l| &l.view == which) {
                Some(i) => ls.remove(i),
                None => return Err(ExportError::NoSuchListener(which.to_string())),
            }
        };
        let epoch = inner.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        inner.kick();
        if acc.is_some() {
            // The accept thread lets go of the socket when it picks up the
            // new set.
            wait_for(Duration::from_secs(2), || {
                inner.seen_epoch.load(Ordering::SeqCst) >= epoch
            });
        }
        drop(acc);
        l.unlink();
        tracing::info!("nbd: stopped listening on {which}");
        Ok(())
    }

    pub fn listeners(&self) -> Vec<ListenerView> {
        lock(&self.inner.listeners)
            .iter()
            .map(|l| l.view.clone())
            .collect()
    }

    /// Export `array` as `name`.
    pub fn add_export(
        &self,
        name: &str,
        array: Arc<Array>,
        opts: ExportOptions,
    ) -> Result<(), ExportError> {
        check_string("export name", name)?;
        if let Some(d) = &opts.description {
            if !d.is_empty() {
                check_string("description", d)?;
            }
        }
        let info = export_info(name, &array, &opts);
        let mut t = lock(&self.inner.exports);
        if self.inner.stopped.load(Ordering::SeqCst) {
            return Err(ExportError::Stopped);
        }
        if t.iter().any(|e| e.name == name) {
            return Err(ExportError::Exists(name.to_string()));
        }
        tracing::info!(
            "nbd: export {name} -> array {} ({} bytes{})",
            array.name(),
            info.size,
            if info.read_only { ", read-only" } else { "" }
        );
        t.push(Arc::new(ExportEntry {
            name: name.to_string(),
            array,
            info,
            removed: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
        }));
        Ok(())
    }

    /// Remove an export, closing its connections after in-flight requests end.
    ///
    /// Returns once no connection uses the array any more (see the module
    /// docs for the bound); new connections can no longer select it.
    pub fn remove_export(&self, name: &str) -> Result<(), ExportError> {
        let entry = {
            let mut t = lock(&self.inner.exports);
            let Some(i) = t.iter().position(|e| e.name == name) else {
                return Err(ExportError::NoSuchExport(name.to_string()));
            };
            let e = t.remove(i);
            e.removed.store(true, Ordering::SeqCst);
            e
        };
        let e = entry.clone();
        let closed = self.close_conns(Some(entry), DRAIN_GRACE, move || {
            e.connections.load(Ordering::SeqCst) == 0
        });
        if !closed {
            tracing::warn!("nbd: export {name}: connections still open after removal");
        }
        tracing::info!("nbd: export {name} removed");
        Ok(())
    }

    pub fn exports(&self) -> Vec<ExportView> {
        lock(&self.inner.exports)
            .iter()
            .map(|e| ExportView {
                export_name: e.name.clone(),
                bdev_name: e.array.name().to_string(),
                size_bytes: e.info.size,
                block_size: e.array.block_size(),
                read_only: e.info.read_only,
                connections: e.connections.load(Ordering::SeqCst),
            })
            .collect()
    }

    /// Whether `array` (by name) is exported (an exported array cannot be deleted).
    pub fn exports_array(&self, array_name: &str) -> bool {
        lock(&self.inner.exports)
            .iter()
            .any(|e| e.array.name() == array_name)
    }

    /// Stop accepting, let in-flight requests finish, close everything.
    pub fn stop(&self) {
        self.stop_within(DRAIN_GRACE);
    }

    /// [`ExportServer::stop`] with an explicit drain grace; returns whether
    /// every connection closed (at most `grace` + [`FORCE_WAIT`]).
    pub fn stop_within(&self, grace: Duration) -> bool {
        let inner = &self.inner;
        let _serial = lock(&inner.stop_lock);
        let first = !inner.stopped.swap(true, Ordering::SeqCst);
        {
            let mut acc = lock(&inner.acceptor);
            if let Some(t) = acc.take() {
                inner.kick();
                if t.join().is_err() {
                    tracing::error!("nbd: the accept thread panicked");
                }
            }
            let ls = std::mem::take(&mut *lock(&inner.listeners));
            for l in ls {
                l.unlink();
            }
        }
        let exports = std::mem::take(&mut *lock(&inner.exports));
        for e in &exports {
            e.removed.store(true, Ordering::SeqCst);
        }
        let i = inner.clone();
        let closed = self.close_conns(None, grace, move || i.open.load(Ordering::SeqCst) == 0);
        if !closed {
            tracing::warn!(
                "nbd: {} connections still open after stop",
                inner.open.load(Ordering::SeqCst)
            );
        }
        let key = inner.key;
        inner.on_every_reactor(move |r| {
            if r.local::<ConnList>(key)
                .is_some_and(|l| l.conns.borrow().is_empty())
            {
                r.remove_local(key);
            }
        });
        if first {
            tracing::info!("nbd: export server stopped");
        }
        closed
    }

    /// Connections accepted and not yet closed.
    pub fn connections(&self) -> usize {
        self.inner.open.load(Ordering::SeqCst)
    }

    /// Connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// Drain the connections of `entry` (all with `None`): tell them to
    /// finish, wait up to `grace` for `done`, then close the stragglers
    /// hard and wait up to [`FORCE_WAIT`] for their requests.
    fn close_conns(
        &self,
        entry: Option<Arc<ExportEntry>>,
        grace: Duration,
        done: impl Fn() -> bool,
    ) -> bool {
        let key = self.inner.key;
        let e = entry.clone();
        self.inner.on_every_reactor(move |r| {
            for_conns(r, key, e.as_ref(), |c| c.begin_shutdown());
        });
        if wait_for(grace, &done) {
            return true;
        }
        self.inner.on_every_reactor(move |r| {
            for_conns(r, key, entry.as_ref(), |c| c.force_close());
        });
        wait_for(FORCE_WAIT, &done)
    }
}

impl Drop for ExportServer {
    fn drop(&mut self) {
        if !self.inner.stopped.load(Ordering::SeqCst) {
            self.stop();
        }
    }
}

// ----- accept thread ----------------------------------------------------------

fn make_eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd(2) takes no pointers; a negative return is an error.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn accept_main(inner: Arc<Inner>) {
    let Some(wake) = inner.wake.as_ref().map(|w| w.as_raw_fd()) else {
        return;
    };
    let mut pfds: Vec<libc::pollfd> = Vec::new();
    loop {
        if inner.stopped.load(Ordering::SeqCst) {
            break;
        }
        // Clones of the previous round are gone: publishing the epoch tells
        // `remove_listener` that removed sockets are no longer held here.
        let epoch = inner.epoch.load(Ordering::SeqCst);
        let ls: Vec<Arc<Listener>> = lock(&inner.listeners).clone();
        inner.seen_epoch.store(epoch, Ordering::SeqCst);
        pfds.clear();
        pfds.push(libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        });
        pfds.extend(ls.iter().map(|l| libc::pollfd {
            fd: l.fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        // SAFETY: `pfds` is a live array of `pfds.len()` pollfds; the
        // listener descriptors stay open (we hold `ls`).
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 1000) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::warn!("nbd accept: poll: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        if pfds[0].revents != 0 {
            let mut v = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live stack array.
            unsafe {
                libc::read(wake, v.as_mut_ptr().cast(), v.len());
            }
        }
        if inner.stopped.load(Ordering::SeqCst) {
            break;
        }
        for (l, p) in ls.iter().zip(&pfds[1..]) {
            if p.revents != 0 {
                accept_all(&inner, l);
            }
        }
    }
}

fn accept_all(inner: &Arc<Inner>, l: &Listener) {
    for _ in 0..64 {
        match l.accept() {
            Ok(fd) => hand_over(inner, fd),
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock => return,
                io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
                _ => {
                    tracing::warn!("nbd: accept on {}: {e}", l.view);
                    // EMFILE and friends: do not spin on a listener that
                    // stays readable.
                    std::thread::sleep(Duration::from_millis(10));
                    return;
                }
            },
        }
    }
}

/// Counts a connection as open from accept until it is dropped (whether it
/// was ever installed on a reactor or not).
struct OpenGuard(Arc<Inner>);

impl OpenGuard {
    fn new(inner: &Arc<Inner>) -> OpenGuard {
        inner.open.fetch_add(1, Ordering::SeqCst);
        OpenGuard(inner.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

fn hand_over(inner: &Arc<Inner>, fd: OwnedFd) {
    inner.accepted.fetch_add(1, Ordering::SeqCst);
    let n = inner.next_reactor.fetch_add(1, Ordering::Relaxed) % inner.rt.reactors();
    let guard = OpenGuard::new(inner);
    inner.rt.send(n, move |r| install_conn(r, fd, guard));
}

// ----- connections on a reactor ---------------------------------------------

/// The connections of one server on one reactor (reactor-local).
struct ConnList {
    conns: RefCell<Vec<Rc<Conn>>>,
}

fn for_conns(r: &mut Reactor, key: u64, entry: Option<&Arc<ExportEntry>>, f: impl Fn(&Conn)) {
    let Some(list) = r.local::<ConnList>(key) else {
        return;
    };
    let conns: Vec<Rc<Conn>> = list.conns.borrow().clone();
    for c in &conns {
        let matches = match entry {
            None => true,
            Some(e) => {
                c.st.borrow()
                    .att
                    .as_ref()
                    .is_some_and(|a| Arc::ptr_eq(&a.entry, e))
            }
        };
        if matches {
            f(c);
        }
    }
}

fn install_conn(r: &mut Reactor, fd: OwnedFd, guard: OpenGuard) {
    let inner = guard.0.clone();
    if inner.stopped.load(Ordering::SeqCst) {
        return; // dropping `fd` closes it, dropping `guard` counts it closed
    }
    let catalog = Arc::new(ConnCatalog {
        inner: inner.clone(),
        chosen: Mutex::new(None),
    });
    let sc = ServerConn::new(catalog.clone(), inner.config.clone());
    let slots = inner.config.max_inflight.max(1);
    let conn = Rc::new(Conn {
        key: inner.key,
        st: RefCell::new(ConnState {
            sock: Some(fd),
            sc,
            catalog,
            inbuf: vec![0u8; IN_BUF_MIN].into_boxed_slice(),
            in_start: 0,
            in_end: 0,
            last_rx: r.now(),
            next_idle_rx: r.now(),
            att: None,
            slots: vec![Slot::default(); slots].into_boxed_slice(),
            free: (0..slots as u32).rev().collect(),
            retry: VecDeque::with_capacity(slots),
            outstanding: 0,
            broken: false,
            closed: false,
            poller: None,
            _open: Some(guard),
        }),
    });
    let list = match r.local::<ConnList>(inner.key) {
        Some(l) => l,
        None => {
            let l = Rc::new(ConnList {
                conns: RefCell::new(Vec::new()),
            });
            r.set_local(inner.key, l.clone());
            l
        }
    };
    list.conns.borrow_mut().push(conn.clone());
    let done: Rc<dyn IoDone> = conn.clone();
    let pid = r.register_poller(ConnPoller {
        conn: conn.clone(),
        done,
    });
    conn.st.borrow_mut().poller = Some(pid);
    tracing::debug!("nbd: connection on reactor {}", r.id());
}

/// The export a connection serves, once its handshake is over.
struct Attached {
    entry: Arc<ExportEntry>,
    ch: ArrayChannelRef,
    bs: u64,
}

impl Attached {
    fn new(entry: Arc<ExportEntry>, ch: ArrayChannelRef) -> Attached {
        entry.connections.fetch_add(1, Ordering::SeqCst);
        let bs = u64::from(entry.array.block_size());
        Attached { entry, ch, bs }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.entry.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request in the array.
#[derive(Clone, Copy, Debug)]
struct Slot {
    handle: u64,
    cmd: Command,
    len: u32,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            handle: 0,
            cmd: Command::Flush,
            len: 0,
        }
    }
}

struct Conn {
    key: u64,
    st: RefCell<ConnState>,
}

struct ConnState {
    sock: Option<OwnedFd>,
    sc: ServerConn,
    catalog: Arc<ConnCatalog>,
    inbuf: Box<[u8]>,
    /// Received bytes `push` has not taken yet: `inbuf[in_start..in_end]`.
    in_start: usize,
    in_end: usize,
    /// When something was last received, and when an idle connection is
    /// next polled.
    last_rx: Instant,
    next_idle_rx: Instant,
    att: Option<Attached>,
    slots: Box<[Slot]>,
    free: Vec<u32>,
    /// Refused by the array (`Busy`), resubmitted in order.
    retry: VecDeque<ParentIo<AlignedBuf>>,
    /// Slots in use: requests in the array or in `retry`.
    outstanding: usize,
    /// The socket is unusable (error, hard close): nothing more is read or
    /// written; the connection closes once its requests are back.
    broken: bool,
    closed: bool,
    poller: Option<PollerId>,
    _open: Option<OpenGuard>,
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live slice of `buf.len()` bytes; MSG_NOSIGNAL
    // turns a closed peer into EPIPE instead of SIGPIPE.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn shutdown_socket(fd: &OwnedFd) {
    // SAFETY: shutdown(2) on a descriptor we own; no pointers.
    unsafe {
        libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR);
    }
}

impl ConnState {
    fn mark_broken(&mut self) {
        if !self.broken {
            self.broken = true;
            if let Some(fd) = &self.sock {
                shutdown_socket(fd);
            }
        }
    }
}

impl Conn {
    /// Stop reading; answer what is in flight, flush, close.
    fn begin_shutdown(&self) {
        self.st.borrow_mut().sc.begin_shutdown();
    }

    /// Close the socket now; the connection ends once its requests are back.
    fn force_close(&self) {
        let mut st = self.st.borrow_mut();
        st.sc.begin_shutdown();
        st.mark_broken();
    }

    /// Receive and feed the protocol. True if anything moved.
    fn read_in(&self, now: Instant) -> bool {
        let mut g = self.st.borrow_mut();
        let st = &mut *g;
        if st.broken || !st.sc.wants_read() {
            return false;
        }
        let mut got = false;
        if st.in_start == st.in_end {
            let Some(fd) = st.sock.as_ref().map(|s| s.as_raw_fd()) else {
                return false;
            };
            let idle = now.saturating_duration_since(st.last_rx) > IDLE_AFTER;
            if idle && now < st.next_idle_rx {
                return false;
            }
            match recv(fd, &mut st.inbuf) {
                Ok(0) => {
                    st.sc.eof();
                    return true;
                }
                Ok(n) => {
                    st.in_start = 0;
                    st.in_end = n;
                    st.last_rx = now;
                    got = true;
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {
                        if idle {
                            st.next_idle_rx = now + IDLE_POLL;
                        }
                        return false;
                    }
                    _ => {
                        tracing::debug!("nbd: recv: {e}");
                        st.sc.eof();
                        st.mark_broken();
                        return true;
                    }
                },
            }
        }
        let used = st.sc.push(&st.inbuf[st.in_start..st.in_end]);
        st.in_start += used;
        if st.in_start == st.in_end {
            if st.in_end == st.inbuf.len() && st.inbuf.len() < IN_BUF_MAX {
                // Bulk transfer: take bigger bites.
                st.inbuf = vec![0u8; st.inbuf.len() * 2].into_boxed_slice();
            }
            st.in_start = 0;
            st.in_end = 0;
        }
        got || used > 0
    }

    /// Send what the protocol produced. True if anything was sent.
    fn write_out(&self) -> bool {
        let mut g = self.st.borrow_mut();
        let st = &mut *g;
        if st.broken {
            return false;
        }
        let Some(fd) = st.sock.as_ref().map(|s| s.as_raw_fd()) else {
            return false;
        };
        let mut sent = false;
        loop {
            let out = st.sc.pending_output();
            if out.is_empty() {
                break;
            }
            match send(fd, out) {
                Ok(n) => {
                    st.sc.advance_output(n);
                    sent = true;
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => {}
                    _ => {
                        tracing::debug!("nbd: send: {e}");
                        st.sc.begin_shutdown();
                        st.mark_broken();
                        break;
                    }
                },
            }
        }
        sent
    }

    /// Act on the protocol's events. True if there were any.
    fn dispatch(&self, r: &mut Reactor, done: &Rc<dyn IoDone>) -> bool {
        let mut any = false;
        loop {
            let ev = self.st.borrow_mut().sc.poll_event();
            let Some(ev) = ev else { break };
            any = true;
            match ev {
                Event::Ready(info) => self.attach(r, &info),
                Event::Request(req) => self.submit(r, req, done),
                Event::Disconnect(reason) => {
                    tracing::debug!("nbd: connection ending: {reason:?}");
                    if matches!(reason, DisconnectReason::Protocol(_)) {
                        // Closed at once: let the client see it even while
                        // requests are still in the array.
                        self.st.borrow_mut().mark_broken();
                    }
                }
            }
        }
        any
    }

    fn attach(&self, r: &mut Reactor, info: &ExportInfo) {
        let mut st = self.st.borrow_mut();
        let chosen = lock(&st.catalog.chosen).take();
        let stopped = st.catalog.inner.stopped.load(Ordering::SeqCst);
        let found = chosen
            .filter(|e| e.name == info.name && !e.removed.load(Ordering::SeqCst) && !stopped)
            .and_then(|e| e.array.channel(r).map(|ch| (e, ch)));
        match found {
            Some((e, ch)) => {
                tracing::debug!("nbd: connection on reactor {} serves {}", r.id(), e.name);
                st.att = Some(Attached::new(e, ch));
            }
            None => {
                tracing::debug!("nbd: export {} went away during the handshake", info.name);
                st.sc.begin_shutdown();
            }
        }
    }

    fn submit(&self, r: &mut Reactor, req: Request, done: &Rc<dyn IoDone>) {
        let (io, ch) = {
            let mut g = self.st.borrow_mut();
            let st = &mut *g;
            let refuse = if st.broken {
                Some(Errno::Io)
            } else if st.att.is_none() {
                Some(Errno::Shutdown)
            } else {
                None
            };
            if let Some(err) = refuse {
                if let Err(e) = st.sc.reply(req.handle, Err(err)) {
                    tracing::error!("nbd: reply: {e}");
                }
                return;
            }
            let Some(slot) = st.free.pop() else {
                // Cannot happen: the connection admits at most as many
                // requests as there are slots.
                tracing::error!("nbd: no request slot left");
                if let Err(e) = st.sc.reply(req.handle, Err(Errno::Io)) {
                    tracing::error!("nbd: reply: {e}");
                }
                return;
            };
            let att = st.att.as_ref().expect("attached");
            let bs = att.bs;
            st.slots[slot as usize] = Slot {
                handle: req.handle,
                cmd: req.cmd,
                len: req.len,
            };
            st.outstanding += 1;
            let len = req.len as usize;
            let (op, buf) = match req.cmd {
                Command::Read => (IoType::Read, Some(r.buf_pool().get(len))),
                Command::Write => {
                    let mut b = r.buf_pool().get(len);
                    b.as_mut().copy_from_slice(&req.data);
                    st.sc.recycle(req.data);
                    (IoType::Write, Some(b))
                }
                Command::Flush => (IoType::Flush, None),
                Command::Trim => (IoType::Unmap, None),
                Command::WriteZeroes => (IoType::WriteZeroes, None),
            };
            let (lba, blocks) = if op == IoType::Flush {
                (0, 0)
            } else {
                (req.offset / bs, u64::from(req.len) / bs)
            };
            let io = ParentIo {
                tag: u64::from(slot),
                op,
                lba,
                blocks,
                fua: req.flags.fua() && !matches!(op, IoType::Read | IoType::Flush),
                buf,
            };
            if !st.retry.is_empty() {
                st.retry.push_back(io);
                return;
            }
            (io, att.ch.clone())
        };
        // No borrow held: the array may complete it (and call `io_done`)
        // before returning.
        if let Err(Busy(io)) = ch.submit(r, io, done) {
            self.st.borrow_mut().retry.push_back(io);
        }
    }

    /// Resubmit what the array refused. True if anything went in.
    fn resubmit(&self, r: &mut Reactor, done: &Rc<dyn IoDone>) -> bool {
        let mut any = false;
        loop {
            let (io, ch) = {
                let mut st = self.st.borrow_mut();
                let Some(ch) = st.att.as_ref().map(|a| a.ch.clone()) else {
                    return any;
                };
                let Some(io) = st.retry.pop_front() else {
                    return any;
                };
                (io, ch)
            };
            match ch.submit(r, io, done) {
                Ok(()) => any = true,
                Err(Busy(io)) => {
                    self.st.borrow_mut().retry.push_front(io);
                    return any;
                }
            }
        }
    }

    fn finished(&self) -> bool {
        let st = self.st.borrow();
        !st.closed && st.outstanding == 0 && (st.broken || st.sc.is_done())
    }

    fn close(self: &Rc<Self>, r: &mut Reactor) {
        let pid = {
            let mut g = self.st.borrow_mut();
            let st = &mut *g;
            if st.closed {
                return;
            }
            st.closed = true;
            if let Some(fd) = st.sock.take() {
                if !st.broken {
                    // Unread input would make close(2) reset the
                    // connection, possibly before the client read our last
                    // replies: discard it first (bounded).
                    for _ in 0..16 {
                        match recv(fd.as_raw_fd(), &mut st.inbuf) {
                            Ok(n) if n > 0 => {}
                            _ => break,
                        }
                    }
                }
                drop(fd);
            }
            st.att = None;
            st.inbuf = Box::new([]);
            st._open = None;
            st.poller.take()
        };
        if let Some(p) = pid {
            r.unregister_poller(p);
        }
        if let Some(list) = r.local::<ConnList>(self.key) {
            list.conns.borrow_mut().retain(|c| !Rc::ptr_eq(c, self));
        }
        tracing::debug!("nbd: connection on reactor {} closed", r.id());
    }
}

impl IoDone for Conn {
    fn io_done(&self, r: &mut Reactor, tag: u64, status: IoStatus, buf: Option<AlignedBuf>) {
        {
            let mut g = self.st.borrow_mut();
            let st = &mut *g;
            let slot = st.slots[tag as usize];
            st.free.push(tag as u32);
            st.outstanding -= 1;
            let res = match status {
                IoStatus::Success => match (&buf, slot.cmd) {
                    (Some(b), Command::Read) => Ok(Some(&b.as_ref()[..slot.len as usize])),
                    (None, Command::Read) => Err(Errno::Io),
                    _ => Ok(None),
                },
                IoStatus::Error => Err(Errno::Io),
                IoStatus::Invalid => Err(Errno::Inval),
            };
            match st.sc.reply(slot.handle, res) {
                Ok(()) => {}
                Err(ReplyError::DataMismatch(h)) => {
                    // A client that reuses a handle while it is in flight
                    // gets its oldest request with that handle answered
                    // first, which may be another command or length: answer
                    // it EIO, so that every request still gets one reply.
                    tracing::debug!("nbd: handle {h:#x} in flight twice");
                    let _ = st.sc.reply(h, Err(Errno::Io));
                }
                Err(e) => tracing::error!("nbd: reply: {e}"),
            }
        }
        if let Some(b) = buf {
            r.buf_pool().put(b);
        }
    }
}

struct ConnPoller {
    conn: Rc<Conn>,
    /// The same connection, as the arrays' completion callback.
    done: Rc<dyn IoDone>,
}

impl Poller for ConnPoller {
    fn poll(&mut self, r: &mut Reactor) -> bool {
        let c = &self.conn;
        if c.st.borrow().closed {
            return false;
        }
        let mut work = c.resubmit(r, &self.done);
        // Output first: the greeting must leave before a bad first message
        // from the client ends the connection.
        for _ in 0..ROUNDS {
            let mut progress = c.write_out();
            progress |= c.read_in(r.now());
            progress |= c.dispatch(r, &self.done);
            if !progress {
                break;
            }
            work = true;
        }
        work |= c.write_out();
        if c.finished() {
            c.close(r);
            return true;
        }
        if !work && r.mode() == Mode::Interrupt {
            // Keep the reactor awake briefly after the client last sent
            // something: its next request usually follows within
            // microseconds, and a sleeping reactor would only see it at the
            // end of its (up to 1 ms) sleep, as nothing wakes it for a
            // socket.
            let st = c.st.borrow();
            work = !st.broken && r.now().saturating_duration_since(st.last_rx) < LINGER;
        }
        work
    }

    fn busy(&self) -> bool {
        self.conn
            .st
            .try_borrow()
            .map_or(true, |s| s.outstanding > 0)
    }
}
