//! Helpers shared by the integration tests: temp dirs, servers on a unix
//! socket and on TCP loopback, external tools with a timeout and a clear
//! SKIP when missing.
#![allow(dead_code)]

use mdraid_nbd::blocking::{self, MemStore, ServerHandle};
use mdraid_nbd::{ExportInfo, ServerConfig};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "mdraid-nbd-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Which Debian package provides each tool (for the SKIP message).
fn package_of(tool: &str) -> &'static str {
    match tool {
        "nbdinfo" | "nbdcopy" | "nbdsh" => "libnbd-bin",
        "qemu-io" | "qemu-img" | "qemu-nbd" => "qemu-utils",
        "fio" => "fio",
        _ => "?",
    }
}

/// The tool's path, or `None` after printing a SKIP line.
pub fn require_tool(test: &str, tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        let p = dir.join(tool);
        if p.is_file() {
            return Some(p);
        }
    }
    if std::env::var("MDRAID_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!(
            "{test}: `{tool}` not found in PATH and MDRAID_REQUIRE_TOOLS=1 (Debian package {}; run scripts/install-deps.sh)",
            package_of(tool)
        );
    }
    eprintln!(
        "SKIP: {test}: `{tool}` not found in PATH (Debian package {}; scripts/install-deps.sh installs it)",
        package_of(tool)
    );
    None
}

/// Result of an external command.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Run `tool args...` in `dir`, killing it after `timeout`.
pub fn run(dir: &Path, tool: &Path, args: &[&str], timeout: Duration) -> Output {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let out_path = dir.join(format!("cmd{n}.out"));
    let err_path = dir.join(format!("cmd{n}.err"));
    let mut child = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", tool.display()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let o = Output {
        code: status.and_then(|s| s.code()),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    };
    assert!(
        status.is_some(),
        "{} {args:?} timed out after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
        tool.display(),
        o.stdout,
        o.stderr
    );
    o
}

/// Run and require success.
pub fn run_ok(dir: &Path, tool: &Path, args: &[&str]) -> Output {
    let o = run(dir, tool, args, Duration::from_secs(120));
    assert!(
        o.ok(),
        "{} {args:?} failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        tool.display(),
        o.code,
        o.stdout,
        o.stderr
    );
    o
}

pub const DISK_SIZE: u64 = 32 << 20;
pub const RO_SIZE: u64 = 1 << 20;

/// Exports `disk` (32 MiB, multi-conn, the default) and `ro` (1 MiB,
/// read-only, first 4 KiB filled with 0x5a).
pub fn store() -> Arc<MemStore> {
    let s = Arc::new(MemStore::new());
    let mut d = ExportInfo::new("disk", DISK_SIZE);
    d.can_multi_conn = true;
    d.description = Some("test disk".into());
    s.add_export(d);
    let mut ro = ExportInfo::new("ro", RO_SIZE);
    ro.read_only = true;
    s.add_export_with_data(ro, vec![0x5a; 4096]);
    s
}

/// A running server and how to reach it.
pub struct Served {
    pub handle: Option<ServerHandle>,
    pub dir: TempDir,
    /// `nbd+unix:///?socket=...` or `nbd://127.0.0.1:PORT` prefix; append
    /// the export name with [`Served::uri`].
    pub transport: Transport,
}

#[derive(Clone, Debug)]
pub enum Transport {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

impl Served {
    pub fn uri(&self, export: &str) -> String {
        match &self.transport {
            Transport::Unix(p) => format!("nbd+unix:///{export}?socket={}", p.display()),
            Transport::Tcp(a) => format!("nbd://{a}/{export}"),
        }
    }

    pub fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            stop_within(h, Duration::from_secs(30));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            stop_within(h, Duration::from_secs(30));
        }
    }
}

/// Shut a server down, failing the test if that takes too long.
pub fn stop_within(h: ServerHandle, limit: Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        h.shutdown();
        let _ = tx.send(());
    });
    if rx.recv_timeout(limit).is_err() && !std::thread::panicking() {
        panic!("server did not stop within {limit:?}");
    }
}

pub fn serve_unix(tag: &str, store: Arc<MemStore>, config: ServerConfig) -> Served {
    let dir = TempDir::new(tag);
    let sock = dir.path().join("nbd.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let h = blocking::spawn(l, store.clone(), store, config).unwrap();
    Served {
        handle: Some(h),
        dir,
        transport: Transport::Unix(sock),
    }
}

pub fn serve_tcp(tag: &str, store: Arc<MemStore>, config: ServerConfig) -> Served {
    let dir = TempDir::new(tag);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = blocking::spawn(l, store.clone(), store, config).unwrap();
    Served {
        handle: Some(h),
        dir,
        transport: Transport::Tcp(addr),
    }
}

/// Run `f` once per transport, each with a fresh store and server.
pub fn each_transport(tag: &str, mut f: impl FnMut(&Served, &Arc<MemStore>)) {
    for tcp in [false, true] {
        let st = store();
        let s = if tcp {
            serve_tcp(tag, st.clone(), ServerConfig::default())
        } else {
            serve_unix(tag, st.clone(), ServerConfig::default())
        };
        eprintln!("{tag}: {}", s.uri(""));
        f(&s, &st);
        s.stop();
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A client socket of either transport.
pub enum Sock {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl Sock {
    pub fn connect(t: &Transport) -> Sock {
        let s = match t {
            Transport::Unix(p) => Sock::Unix(std::os::unix::net::UnixStream::connect(p).unwrap()),
            Transport::Tcp(a) => {
                let s = std::net::TcpStream::connect(a).unwrap();
                s.set_nodelay(true).unwrap();
                Sock::Tcp(s)
            }
        };
        s.set_timeouts(Some(Duration::from_secs(20)));
        s
    }

    pub fn set_timeouts(&self, t: Option<Duration>) {
        match self {
            Sock::Unix(s) => {
                s.set_read_timeout(t).unwrap();
                s.set_write_timeout(t).unwrap();
            }
            Sock::Tcp(s) => {
                s.set_read_timeout(t).unwrap();
                s.set_write_timeout(t).unwrap();
            }
        }
    }

    pub fn shutdown_write(&self) {
        let _ = match self {
            Sock::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            Sock::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }
}

impl std::io::Read for Sock {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Sock::Unix(s) => s.read(b),
            Sock::Tcp(s) => s.read(b),
        }
    }
}

impl std::io::Write for Sock {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Sock::Unix(s) => s.write(b),
            Sock::Tcp(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Read until the server closes the connection; fail if it does not
/// within `limit`. Returns the bytes received before the close.
pub fn expect_closed(s: &mut Sock, limit: Duration) -> Vec<u8> {
    s.set_timeouts(Some(Duration::from_millis(200)));
    mdraid_nbd::client::read_until_closed(s, limit, 1 << 20).unwrap_or_else(|e| panic!("{e}"))
}

/// Wait until `cond` holds, failing after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
