//! The `mdraid` daemon as a child process, for the tests that drive it
//! over its RPC socket (and NBD): start, RPCs, SIGTERM, kill -9.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mdraid_rpc::RpcError;
use mdraid_runtime::daemon::{rpc_call, ClientError};
use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_mdraid");
pub const WAIT: Duration = Duration::from_secs(30);

pub static SERIAL: Mutex<()> = Mutex::new(());

/// One daemon at a time (the machine has two cores shared with others).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "mdraid-d-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// A sparse member file of `len` bytes.
    pub fn member(&self, name: &str, len: u64) -> PathBuf {
        let p = self.path(name);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(len).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `mdraid serve`.
#[derive(Debug)]
pub struct Daemon {
    pub child: Option<Child>,
    pub sock: PathBuf,
    pub out: PathBuf,
    pub err: PathBuf,
}

/// How a daemon that did not start ended.
#[derive(Debug)]
pub struct Failed {
    pub code: Option<i32>,
    pub stderr: String,
}

pub fn serve_args(dir: &TempDir, tag: &str, cfg: Option<&Path>) -> (Vec<String>, PathBuf) {
    let sock = dir.path(&format!("{tag}.sock"));
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--interrupt".into(),
        "--cores".into(),
        "0".into(),
        "-r".into(),
        sock.display().to_string(),
    ];
    if let Some(c) = cfg {
        args.push("--json".into());
        args.push(c.display().to_string());
    }
    (args, sock)
}

impl Daemon {
    pub fn try_start(dir: &TempDir, tag: &str, cfg: Option<&Path>) -> Result<Daemon, Failed> {
        Self::try_start_with(dir, tag, cfg, &[])
    }

    /// [`Daemon::try_start`] with more `mdraid serve` arguments.
    pub fn try_start_with(
        dir: &TempDir,
        tag: &str,
        cfg: Option<&Path>,
        extra: &[&str],
    ) -> Result<Daemon, Failed> {
        let (mut args, sock) = serve_args(dir, tag, cfg);
        args.extend(extra.iter().map(|a| a.to_string()));
        let out = dir.path(&format!("{tag}.out"));
        let err = dir.path(&format!("{tag}.err"));
        let child = Command::new(BIN)
            .args(&args)
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn mdraid serve");
        let mut d = Daemon {
            child: Some(child),
            sock,
            out,
            err,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if std::fs::read_to_string(&d.out)
                .unwrap_or_default()
                .contains("mdraid: ready")
            {
                return Ok(d);
            }
            if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
                d.child = None;
                return Err(Failed {
                    code: st.code(),
                    stderr: std::fs::read_to_string(&d.err).unwrap_or_default(),
                });
            }
            if Instant::now() > deadline {
                panic!("daemon not ready within {WAIT:?}: {}", d.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn start(dir: &TempDir, tag: &str, cfg: Option<&Path>) -> Daemon {
        Daemon::try_start(dir, tag, cfg).unwrap_or_else(|f| panic!("daemon did not start: {f:?}"))
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    pub fn rpc(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let p = if params.is_null() { None } else { Some(params) };
        match rpc_call(&self.sock, method, p, WAIT) {
            Ok(v) => Ok(v),
            Err(ClientError::Rpc(e)) => Err(e),
            Err(e) => panic!("{method}: {e}\ndaemon stderr:\n{}", self.stderr()),
        }
    }

    /// `bdev_aio_create` of `name` on file `path`.
    pub fn aio(&self, name: &str, path: &Path) {
        self.ok(
            "bdev_aio_create",
            json!({"name": name, "filename": path.display().to_string()}),
        );
    }

    /// `n` member files of `len` bytes in `dir`, `{prefix}{i}.img`, each
    /// an aio bdev `{prefix}{i}`.
    pub fn aio_members(&self, dir: &TempDir, prefix: &str, n: usize, len: u64) -> Vec<PathBuf> {
        (0..n)
            .map(|i| {
                let f = dir.member(&format!("{prefix}{i}.img"), len);
                self.aio(&format!("{prefix}{i}"), &f);
                f
            })
            .collect()
    }

    pub fn ok(&self, method: &str, params: Value) -> Value {
        self.rpc(method, params.clone()).unwrap_or_else(|e| {
            panic!(
                "{method} {params} failed: {e}\ndaemon stderr:\n{}",
                self.stderr()
            )
        })
    }

    pub fn err(&self, method: &str, params: Value) -> RpcError {
        match self.rpc(method, params.clone()) {
            Ok(v) => panic!("{method} {params} should have failed, got {v}"),
            Err(e) => e,
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("daemon did not exit within {WAIT:?}: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait for the exit.
    pub fn term(&mut self) -> ExitStatus {
        let pid = self.child.as_ref().expect("running").id();
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        self.wait_exit()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A tool's path, or `None` after printing SKIP (a failure with
/// MDRAID_REQUIRE_TOOLS=1).
pub fn require_tool(test: &str, tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/sbin".into(), "/usr/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("MDRAID_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "{test}: `{tool}` not found and MDRAID_REQUIRE_TOOLS=1 (scripts/install-deps.sh installs it)"
        );
        eprintln!("SKIP: {test}: `{tool}` not found (scripts/install-deps.sh installs it)");
    }
    found
}

/// Run a tool with a 120 s deadline; (success, stdout, stderr).
pub fn run_tool(tool: &Path, args: &[&str]) -> (bool, String, String) {
    let mut c = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", tool.display()));
    let deadline = Instant::now() + Duration::from_secs(120);
    while c.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            panic!("{} {args:?} hung", tool.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = c.wait_with_output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// xorshift64: test data and fuzz inputs from a seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
