//! A small blocking NBD server: one thread per connection, driving a
//! [`ServerConn`] over a unix or TCP socket and executing requests
//! synchronously on a [`Backend`].
//!
//! It is a reference host for the sans-I/O core and the server the
//! integration tests run real clients against; the mdraid daemon drives the
//! core from its reactors instead.

use crate::errno::Errno;
use crate::export::{ExportCatalog, ExportInfo};
use crate::server::{Command, Event, Request, ServerConfig, ServerConn};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// Where requests are executed. `export` is the canonical export name the
/// client selected ([`ExportInfo::name`]). Requests arrive validated (see
/// [`Request`]): in range, aligned, non-empty, allowed by the export flags.
pub trait Backend: Send + Sync {
    /// Fill `buf` from `offset`.
    fn read(&self, export: &str, offset: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Write `data` at `offset`; durable before returning if `fua`.
    fn write(&self, export: &str, offset: u64, data: &[u8], fua: bool) -> Result<(), Errno>;
    /// Make every completed write durable.
    fn flush(&self, export: &str) -> Result<(), Errno>;
    /// Discard hint for `len` bytes at `offset`.
    fn trim(&self, export: &str, offset: u64, len: u32, fua: bool) -> Result<(), Errno>;
    /// Zero `len` bytes at `offset`; allocate them if `no_hole`.
    fn write_zeroes(
        &self,
        export: &str,
        offset: u64,
        len: u32,
        no_hole: bool,
        fua: bool,
    ) -> Result<(), Errno>;
}

impl<T: Backend + ?Sized> Backend for Arc<T> {
    fn read(&self, export: &str, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        (**self).read(export, offset, buf)
    }
    fn write(&self, export: &str, offset: u64, data: &[u8], fua: bool) -> Result<(), Errno> {
        (**self).write(export, offset, data, fua)
    }
    fn flush(&self, export: &str) -> Result<(), Errno> {
        (**self).flush(export)
    }
    fn trim(&self, export: &str, offset: u64, len: u32, fua: bool) -> Result<(), Errno> {
        (**self).trim(export, offset, len, fua)
    }
    fn write_zeroes(
        &self,
        export: &str,
        offset: u64,
        len: u32,
        no_hole: bool,
        fua: bool,
    ) -> Result<(), Errno> {
        (**self).write_zeroes(export, offset, len, no_hole, fua)
    }
}

struct MemExport {
    info: ExportInfo,
    data: Mutex<Vec<u8>>,
    /// Fail the next `.2` requests of kind `.0` with `.1`.
    fault: Mutex<Option<(Command, Errno, u32)>>,
}

/// Operations a [`MemStore`] executed (successful or not), all exports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Reads.
    pub reads: u64,
    /// Writes.
    pub writes: u64,
    /// Writes with FUA.
    pub fua_writes: u64,
    /// Flushes.
    pub flushes: u64,
    /// Trims.
    pub trims: u64,
    /// Write-zeroes.
    pub write_zeroes: u64,
}

/// In-memory exports: both an [`ExportCatalog`] and a [`Backend`]. The
/// first export added is the default export (empty name).
#[derive(Default)]
pub struct MemStore {
    exports: RwLock<Vec<Arc<MemExport>>>,
    stats: Mutex<MemStats>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Add (or replace) an export of `info.size` zero bytes.
    pub fn add_export(&self, info: ExportInfo) {
        self.add_export_with_data(info, Vec::new());
    }

    /// Add (or replace) an export whose content starts with `data`
    /// (truncated or zero-extended to `info.size`).
    pub fn add_export_with_data(&self, info: ExportInfo, mut data: Vec<u8>) {
        let size = usize::try_from(info.size).expect("export size fits in memory");
        data.resize(size, 0);
        let e = Arc::new(MemExport {
            data: Mutex::new(data),
            info,
            fault: Mutex::new(None),
        });
        let mut v = self.exports.write().unwrap();
        match v.iter().position(|x| x.info.name == e.info.name) {
            Some(i) => v[i] = e,
            None => v.push(e),
        }
    }

    /// Remove an export; open connections to it get `EIO` from then on.
    pub fn remove_export(&self, name: &str) -> bool {
        let mut v = self.exports.write().unwrap();
        let before = v.len();
        v.retain(|x| x.info.name != name);
        v.len() != before
    }

    fn get(&self, name: &str) -> Option<Arc<MemExport>> {
        let v = self.exports.read().unwrap();
        if name.is_empty() {
            return v.first().cloned();
        }
        v.iter().find(|x| x.info.name == name).cloned()
    }

    /// A copy of `len` bytes at `offset` of an export (for tests).
    pub fn snapshot(&self, name: &str, offset: u64, len: usize) -> Option<Vec<u8>> {
        let e = self.get(name)?;
        let d = e.data.lock().unwrap();
        let start = usize::try_from(offset).ok()?;
        d.get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
    }

    /// Operations executed so far.
    pub fn stats(&self) -> MemStats {
        *self.stats.lock().unwrap()
    }

    fn count(&self, f: impl FnOnce(&mut MemStats)) {
        f(&mut self.stats.lock().unwrap());
    }

    /// Make the next `count` requests of kind `cmd` on `name` fail with `err`.
    pub fn inject_fault(&self, name: &str, cmd: Command, err: Errno, count: u32) -> bool {
        match self.get(name) {
            Some(e) => {
                *e.fault.lock().unwrap() = Some((cmd, err, count));
                true
            }
            None => false,
        }
    }

    fn with_export<R>(
        &self,
        name: &str,
        cmd: Command,
        offset: u64,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, Errno> {
        let e = self.get(name).ok_or(Errno::Io)?;
        {
            let mut fault = e.fault.lock().unwrap();
            if let Some((c, err, n)) = fault.as_mut() {
                if *c == cmd && *n > 0 {
                    *n -= 1;
                    return Err(*err);
                }
            }
        }
        let mut d = e.data.lock().unwrap();
        let start = usize::try_from(offset).map_err(|_| Errno::Inval)?;
        let end = start.checked_add(len).ok_or(Errno::Inval)?;
        let slice = d.get_mut(start..end).ok_or(Errno::Inval)?;
        Ok(f(slice))
    }
}

impl ExportCatalog for MemStore {
    fn list(&self) -> Vec<String> {
        let v = self.exports.read().unwrap();
        v.iter().map(|e| e.info.name.clone()).collect()
    }

    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        self.get(name).map(|e| e.info.clone())
    }
}

impl Backend for MemStore {
    fn read(&self, export: &str, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.count(|s| s.reads += 1);
        self.with_export(export, Command::Read, offset, buf.len(), |d| {
            buf.copy_from_slice(d)
        })
    }
    fn write(&self, export: &str, offset: u64, data: &[u8], fua: bool) -> Result<(), Errno> {
        self.count(|s| {
            s.writes += 1;
            s.fua_writes += u64::from(fua);
        });
        self.with_export(export, Command::Write, offset, data.len(), |d| {
            d.copy_from_slice(data)
        })
    }
    fn flush(&self, export: &str) -> Result<(), Errno> {
        self.count(|s| s.flushes += 1);
        self.with_export(export, Command::Flush, 0, 0, |_| ())
    }
    fn trim(&self, export: &str, offset: u64, len: u32, _fua: bool) -> Result<(), Errno> {
        self.count(|s| s.trims += 1);
        self.with_export(export, Command::Trim, offset, len as usize, |d| d.fill(0))
    }
    fn write_zeroes(
        &self,
        export: &str,
        offset: u64,
        len: u32,
        _no_hole: bool,
        _fua: bool,
    ) -> Result<(), Errno> {
        self.count(|s| s.write_zeroes += 1);
        self.with_export(export, Command::WriteZeroes, offset, len as usize, |d| {
            d.fill(0)
        })
    }
}

/// A connected socket the server can drive.
pub trait Stream: Read + Write + Send + Sized + 'static {
    /// A second handle to the same socket (used to shut it down).
    fn try_clone_stream(&self) -> io::Result<Self>;
    /// Shut down both directions, waking a thread blocked on it.
    fn shutdown_both(&self) -> io::Result<()>;
    /// Blocking mode, write timeout, and for TCP no Nagle delay.
    fn configure(&self) -> io::Result<()>;
}

/// A listening socket the server accepts from.
pub trait Listener: Send + 'static {
    /// The accepted socket type.
    type Stream: Stream;
    /// Accept one connection.
    fn accept_stream(&self) -> io::Result<Self::Stream>;
    /// Switch non-blocking accept on or off.
    fn set_nonblocking_listener(&self, nonblocking: bool) -> io::Result<()>;
}

/// Writes blocked longer than this give up on the client.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

impl Stream for UnixStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_both(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Both)
    }
    fn configure(&self) -> io::Result<()> {
        self.set_nonblocking(false)?;
        self.set_write_timeout(Some(WRITE_TIMEOUT))
    }
}

impl Stream for TcpStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_both(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Both)
    }
    fn configure(&self) -> io::Result<()> {
        self.set_nonblocking(false)?;
        self.set_nodelay(true)?;
        self.set_write_timeout(Some(WRITE_TIMEOUT))
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    fn accept_stream(&self) -> io::Result<UnixStream> {
        self.accept().map(|(s, _)| s)
    }
    fn set_nonblocking_listener(&self, nonblocking: bool) -> io::Result<()> {
        self.set_nonblocking(nonblocking)
    }
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    fn accept_stream(&self) -> io::Result<TcpStream> {
        self.accept().map(|(s, _)| s)
    }
    fn set_nonblocking_listener(&self, nonblocking: bool) -> io::Result<()> {
        self.set_nonblocking(nonblocking)
    }
}

fn execute<'a>(
    backend: &dyn Backend,
    export: &str,
    r: &Request,
    scratch: &'a mut Vec<u8>,
) -> Result<Option<&'a [u8]>, Errno> {
    let fua = r.flags.fua();
    match r.cmd {
        Command::Read => {
            scratch.clear();
            scratch.resize(r.len as usize, 0);
            backend.read(export, r.offset, scratch)?;
            Ok(Some(&scratch[..]))
        }
        Command::Write => backend.write(export, r.offset, &r.data, fua).map(|_| None),
        Command::Flush => backend.flush(export).map(|_| None),
        Command::Trim => backend.trim(export, r.offset, r.len, fua).map(|_| None),
        Command::WriteZeroes => backend
            .write_zeroes(export, r.offset, r.len, r.flags.no_hole(), fua)
            .map(|_| None),
    }
}

/// Drive one connection to its end. Returns when the client disconnects,
/// breaks the protocol, or the socket fails.
pub fn serve_connection<S: Stream>(
    mut stream: S,
    catalog: Arc<dyn ExportCatalog>,
    backend: Arc<dyn Backend>,
    config: ServerConfig,
) -> io::Result<()> {
    let mut conn = ServerConn::new(catalog, config);
    let mut buf = vec![0u8; 256 * 1024];
    let (mut lo, mut hi) = (0usize, 0usize);
    let mut export = String::new();
    let mut scratch = Vec::new();
    loop {
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::Ready(info) => export = info.name,
                Event::Request(r) => {
                    let res = execute(&*backend, &export, &r, &mut scratch);
                    conn.reply(r.handle, res)
                        .expect("reply to a request just received");
                }
                Event::Disconnect(_) => {}
            }
        }
        while !conn.pending_output().is_empty() {
            let n = stream.write(conn.pending_output())?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            conn.advance_output(n);
        }
        if conn.is_done() {
            return Ok(());
        }
        if lo < hi {
            let n = conn.push(&buf[lo..hi]);
            lo += n;
            if n == 0 && !conn.wants_read() {
                // Requests are answered synchronously and output is
                // flushed above, so backpressure cannot persist.
                return Err(io::Error::other("connection stalled"));
            }
            continue;
        }
        if !conn.wants_read() {
            return Err(io::Error::other("connection stalled"));
        }
        match stream.read(&mut buf) {
            Ok(0) => conn.eof(),
            Ok(n) => (lo, hi) = (0, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                conn.eof();
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) {
                    return Ok(());
                }
                return Err(e);
            }
        }
    }
}

struct Shared {
    stop: AtomicBool,
    next_id: AtomicU64,
    accepted: AtomicU64,
    conns: Mutex<HashMap<u64, Box<dyn Fn() + Send>>>,
}

/// A running server; [`shutdown`](ServerHandle::shutdown) (or drop) stops
/// accepting, closes every connection and joins all threads.
pub struct ServerHandle {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }

    /// Stop and wait for every thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Start serving `listener` on a background thread. Each accepted
/// connection gets its own thread running [`serve_connection`].
pub fn spawn<L: Listener>(
    listener: L,
    catalog: Arc<dyn ExportCatalog>,
    backend: Arc<dyn Backend>,
    config: ServerConfig,
) -> io::Result<ServerHandle> {
    listener.set_nonblocking_listener(true)?;
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        next_id: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        conns: Mutex::new(HashMap::new()),
    });
    let sh = shared.clone();
    let acceptor = std::thread::Builder::new()
        .name("nbd-accept".into())
        .spawn(move || accept_loop(listener, catalog, backend, config, sh))?;
    Ok(ServerHandle {
        shared,
        acceptor: Some(acceptor),
    })
}

/// Serve `listener` on the calling thread until accepting fails.
pub fn serve<L: Listener>(
    listener: L,
    catalog: Arc<dyn ExportCatalog>,
    backend: Arc<dyn Backend>,
) -> io::Result<()> {
    listener.set_nonblocking_listener(false)?;
    loop {
        let s = listener.accept_stream()?;
        let (c, b) = (catalog.clone(), backend.clone());
        std::thread::Builder::new()
            .name("nbd-conn".into())
            .spawn(move || {
                if s.configure().is_ok() {
                    let _ = serve_connection(s, c, b, ServerConfig::default());
                }
            })?;
    }
}

fn accept_loop<L: Listener>(
    listener: L,
    catalog: Arc<dyn ExportCatalog>,
    backend: Arc<dyn Backend>,
    config: ServerConfig,
    shared: Arc<Shared>,
) {
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept_stream() {
            Ok(s) => {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let Ok(closer) = s.try_clone_stream() else {
                    continue;
                };
                if s.configure().is_err() {
                    continue;
                }
                let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
                shared.conns.lock().unwrap().insert(
                    id,
                    Box::new(move || {
                        let _ = closer.shutdown_both();
                    }),
                );
                let (c, b, cfg, sh) = (
                    catalog.clone(),
                    backend.clone(),
                    config.clone(),
                    shared.clone(),
                );
                let spawned =
                    std::thread::Builder::new()
                        .name("nbd-conn".into())
                        .spawn(move || {
                            let _ = serve_connection(s, c, b, cfg);
                            sh.conns.lock().unwrap().remove(&id);
                        });
                match spawned {
                    Ok(t) => threads.push(t),
                    Err(_) => {
                        if let Some(close) = shared.conns.lock().unwrap().remove(&id) {
                            close();
                        }
                    }
                }
                threads.retain(|t| !t.is_finished());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    for close in shared.conns.lock().unwrap().values() {
        close();
    }
    for t in threads {
        let _ = t.join();
    }
}
