//! The NBD export server on real reactors, against real clients: nbdinfo,
//! qemu-io, qemu-img and fio (`ioengine=nbd`, with verify) over every level,
//! a member failing while fio runs, malformed clients next to a good one,
//! export removal with connections open, listeners, and a bounded stop.
//!
//! Each test starts its own runtime (2 reactors), malloc-backed arrays and
//! an export server listening on a unix socket in a temp dir and on TCP
//! 127.0.0.1 (port 0). A missing tool prints `SKIP: ...` and passes, unless
//! `MDRAID_REQUIRE_TOOLS=1`.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bdev_raid::channel::IoStatus;
use bdev_raid::layout::Level;
use bdev_raid::state::MemberState;
use common::*;
use mdraid_nbd::client::{
    encode_info_request, encode_option, encode_request, greet, read_opt_reply, Client,
};
use mdraid_nbd::proto::*;
use mdraid_nbd::Errno;
use mdraid_runtime::dev::error::{ErrorDevice, ErrorIoType, ErrorType, InjectOpts};
use mdraid_runtime::dev::malloc::MallocDevice;
use mdraid_runtime::export::{ExportError, ExportOptions, ExportServer, ListenerView};
use mdraid_runtime::{Array, ArrayParams, Device, Mode, Runtime};
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// Size of every array.
const ARRAY_BYTES: u64 = 32 * MIB;
const BS: u32 = 512;
const CLOSE_LIMIT: Duration = Duration::from_secs(10);
const TOOL_TIMEOUT: Duration = Duration::from_secs(90);

// ----- tools ----------------------------------------------------------------

fn package_of(tool: &str) -> &'static str {
    match tool {
        "nbdinfo" => "libnbd-bin",
        "qemu-io" | "qemu-img" => "qemu-utils",
        "fio" => "fio",
        _ => "?",
    }
}

/// The tool's path, or `None` after printing a SKIP line (a panic with
/// `MDRAID_REQUIRE_TOOLS=1`).
fn require_tool(test: &str, tool: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(tool);
            if p.is_file() {
                return Some(p);
            }
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

fn require_tools(test: &str, tools: &[&str]) -> Option<Vec<PathBuf>> {
    tools.iter().map(|t| require_tool(test, t)).collect()
}

#[derive(Debug)]
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// A child process writing to files in `dir`.
struct Running {
    child: Child,
    out: PathBuf,
    err: PathBuf,
    what: String,
}

fn spawn(dir: &Path, tool: &Path, args: &[&str]) -> Running {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let out = dir.join(format!("cmd{n}.out"));
    let err = dir.join(format!("cmd{n}.err"));
    let child = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", tool.display()));
    Running {
        child,
        out,
        err,
        what: format!("{} {args:?}", tool.display()),
    }
}

impl Running {
    /// Wait for the exit, killing the process after `timeout` (and failing).
    fn wait(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let o = Output {
            code: status.and_then(|s| s.code()),
            stdout: std::fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.err).unwrap_or_default(),
        };
        assert!(
            status.is_some(),
            "{} timed out after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
            self.what,
            o.stdout,
            o.stderr
        );
        o
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn run_ok(dir: &Path, tool: &Path, args: &[&str]) -> Output {
    let o = spawn(dir, tool, args).wait(TOOL_TIMEOUT);
    assert!(
        o.code == Some(0),
        "{} {args:?} failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        tool.display(),
        o.code,
        o.stdout,
        o.stderr
    );
    o
}

/// The JSON document in a tool's output (fio prints lines before it).
fn json_of(out: &str) -> Value {
    let start = out
        .find("\n{")
        .map(|i| i + 1)
        .or_else(|| out.starts_with('{').then_some(0))
        .unwrap_or_else(|| panic!("no JSON in:\n{out}"));
    serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{out}"))
}

// ----- arrays and the server --------------------------------------------------

fn data_members(level: Level, n: usize) -> u64 {
    match level {
        Level::Raid0 | Level::Linear => n as u64,
        Level::Raid1 => 1,
        Level::Raid4 | Level::Raid5 => n as u64 - 1,
        Level::Raid6 => n as u64 - 2,
        Level::Raid10 => n as u64 / 2,
    }
}

fn member_blocks(level: Level, n: usize) -> u64 {
    ARRAY_BYTES / data_members(level, n) / u64::from(BS)
}

fn mallocs(prefix: &str, level: Level, n: usize) -> Vec<Arc<dyn Device>> {
    (0..n)
        .map(|i| {
            MallocDevice::new(format!("{prefix}{i}"), member_blocks(level, n), BS, None).unwrap()
                as Arc<dyn Device>
        })
        .collect()
}

fn array(rt: &Runtime, name: &str, level: Level, n: usize, strip: u32) -> Arc<Array> {
    let members = mallocs(&format!("{name}m"), level, n);
    Array::create(rt, ArrayParams::new(name, level, strip, members)).unwrap()
}

/// An array whose members are `ErrorDevice`s over malloc.
fn error_array(
    rt: &Runtime,
    name: &str,
    level: Level,
    n: usize,
    strip: u32,
) -> (Arc<Array>, Vec<Arc<ErrorDevice>>) {
    let ees: Vec<Arc<ErrorDevice>> = mallocs(&format!("{name}m"), level, n)
        .into_iter()
        .map(|m| ErrorDevice::new(m, None))
        .collect();
    let members = ees.iter().map(|e| e.clone() as Arc<dyn Device>).collect();
    let a = Array::create(rt, ArrayParams::new(name, level, strip, members)).unwrap();
    (a, ees)
}

struct Setup {
    rt: Runtime,
    srv: Arc<ExportServer>,
    dir: TempDir,
    sock: PathBuf,
    tcp: SocketAddr,
}

fn setup(tag: &str, mode: Mode) -> Setup {
    let rt = start(&[0, 1], mode);
    let srv = ExportServer::start(&rt);
    let dir = TempDir::new(tag);
    let sock = dir.0.join("nbd.sock");
    srv.add_unix_listener(&sock).unwrap();
    let tcp = srv
        .add_tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();
    assert_ne!(tcp.port(), 0);
    Setup {
        rt,
        srv,
        dir,
        sock,
        tcp,
    }
}

impl Setup {
    fn unix_uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.sock.display())
    }
    fn tcp_uri(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.tcp)
    }

    /// Stop the server (bounded), then the arrays, then the runtime.
    fn finish(self, arrays: &[Arc<Array>]) {
        let t = Instant::now();
        assert!(self.srv.stop_within(Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(11));
        assert_eq!(self.srv.connections(), 0);
        assert!(!self.sock.exists(), "the unix socket file is removed");
        for a in arrays {
            a.stop(DEADLINE).unwrap();
        }
        assert!(self.rt.shutdown(DEADLINE).drained);
    }
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn export_connections(srv: &ExportServer, name: &str) -> usize {
    srv.exports()
        .iter()
        .find(|e| e.export_name == name)
        .map_or(usize::MAX, |e| e.connections)
}

// ----- raw sockets --------------------------------------------------------------

enum Sock {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

#[derive(Clone, Debug)]
enum Transport {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Sock {
    fn connect(t: &Transport) -> Sock {
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

    fn set_timeouts(&self, t: Option<Duration>) {
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

    fn shutdown_write(&self) {
        let _ = match self {
            Sock::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            Sock::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }
}

impl Read for Sock {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Sock::Unix(s) => s.read(b),
            Sock::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Sock {
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

/// Read until the server closes; fail if it does not within `limit`.
/// Returns what was received before the close.
fn expect_closed(s: &mut Sock, limit: Duration) -> Vec<u8> {
    s.set_timeouts(Some(Duration::from_millis(200)));
    mdraid_nbd::client::read_until_closed(s, limit, 64 << 20).unwrap_or_else(|e| panic!("{e}"))
}

/// Greet and enter transmission on `export` with NBD_OPT_GO.
fn go(t: &Transport, export: &str) -> Sock {
    let mut s = Sock::connect(t);
    greet(&mut s).unwrap();
    s.write_all(&encode_option(OPT_GO, &encode_info_request(export, &[])))
        .unwrap();
    loop {
        let r = read_opt_reply(&mut s).unwrap();
        match r.rtype {
            REP_INFO => {}
            REP_ACK => return s,
            t => panic!("GO refused: {t:#x}"),
        }
    }
}

/// Read one simple reply header: (error, handle).
fn reply(s: &mut Sock) -> (u32, u64) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    assert_eq!(
        u32::from_be_bytes(h[0..4].try_into().unwrap()),
        SIMPLE_REPLY_MAGIC
    );
    (
        u32::from_be_bytes(h[4..8].try_into().unwrap()),
        u64::from_be_bytes(h[8..16].try_into().unwrap()),
    )
}

fn fill(len: usize, seed: u64) -> Vec<u8> {
    pattern(seed, len)
}

// ----- nbdinfo, qemu-io, qemu-img ------------------------------------------------

#[test]
fn nbdinfo_qemu_io_qemu_img() {
    let _g = serial();
    let test = "nbdinfo_qemu_io_qemu_img";
    let Some(tools) = require_tools(test, &["nbdinfo", "qemu-io", "qemu-img"]) else {
        return;
    };
    let (nbdinfo, qemu_io, qemu_img) = (&tools[0], &tools[1], &tools[2]);
    let s = setup("tools", Mode::Interrupt);
    let r1 = array(&s.rt, "r1", Level::Raid1, 2, 0);
    let r5 = array(&s.rt, "r5", Level::Raid5, 3, 64);
    s.srv
        .add_export(
            "disk",
            r1.clone(),
            ExportOptions {
                read_only: false,
                description: Some("raid1 of two malloc members".into()),
            },
        )
        .unwrap();
    s.srv
        .add_export(
            "ro",
            r5.clone(),
            ExportOptions {
                read_only: true,
                description: None,
            },
        )
        .unwrap();
    let dir = s.dir.0.clone();

    // nbdinfo: sizes, flags, block sizes.
    let o = run_ok(&dir, nbdinfo, &["--json", &s.unix_uri("disk")]);
    let j = json_of(&o.stdout);
    let e = &j["exports"][0];
    eprintln!("nbdinfo disk: {e}");
    assert_eq!(e["export-name"], "disk");
    assert_eq!(e["export-size"], ARRAY_BYTES);
    assert_eq!(e["description"], "raid1 of two malloc members");
    assert_eq!(e["is_read_only"], false);
    for f in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_multi_conn",
    ] {
        assert_eq!(e[f], true, "{f}");
    }
    assert_eq!(e["block_size_minimum"], BS);
    assert_eq!(e["block_size_preferred"], 4096);
    assert_eq!(e["block_size_maximum"], 32 * MIB);
    let o = run_ok(&dir, nbdinfo, &["--json", &s.tcp_uri("ro")]);
    let e = &json_of(&o.stdout)["exports"][0];
    assert_eq!(e["export-size"], ARRAY_BYTES);
    assert_eq!(e["is_read_only"], true);
    assert_eq!(e["block_size_preferred"], 64 * 1024, "raid5: the strip");
    // With two exports there is no default export: an empty name finds
    // none (it would be one array or the other depending on the order).
    let o = spawn(&dir, nbdinfo, &["--json", &s.tcp_uri("")]).wait(TOOL_TIMEOUT);
    assert_ne!(o.code, Some(0), "the empty name found an export: {o:?}");
    // --list over both transports.
    for uri in [s.unix_uri(""), s.tcp_uri("")] {
        let o = run_ok(&dir, nbdinfo, &["--list", "--json", &uri]);
        let j = json_of(&o.stdout);
        let names: Vec<&str> = j["exports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["export-name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["disk", "ro"]);
    }

    // qemu-io: a pattern written and read back, over each transport.
    for (uri, pat, off) in [
        (s.unix_uri("disk"), "0xab", 0u64),
        (s.tcp_uri("disk"), "0xcd", 4 * MIB),
    ] {
        let w = format!("write -P {pat} {off} 1M");
        let r = format!("read -P {pat} {off} 1M");
        let o = run_ok(
            &dir,
            qemu_io,
            &["-f", "raw", &uri, "-c", &w, "-c", "flush", "-c", &r],
        );
        assert!(
            o.stdout.contains("wrote 1048576/1048576") && o.stdout.contains("read 1048576/1048576"),
            "{}",
            o.stdout
        );
        assert!(!o.stdout.contains("verification failed"), "{}", o.stdout);
    }
    // ... and the array holds it (read straight from the array, reactor 1).
    let bs = BS as usize;
    for (off, byte) in [(0u64, 0xabu8), (4 * MIB, 0xcd)] {
        let d = run_batch(&s.rt, 1, &r1, vec![Req::read(1, off / 512, 2048, bs)]);
        assert_eq!(d[0].status, IoStatus::Success);
        assert!(d[0].data.as_ref().unwrap().iter().all(|b| *b == byte));
    }
    // Write-zeroes, discard (trim), FUA writes.
    let o = run_ok(
        &dir,
        qemu_io,
        &[
            "-f",
            "raw",
            &s.unix_uri("disk"),
            "-c",
            "write -P 0x11 8M 256k",
            "-c",
            "write -z 8M 64k",
            "-c",
            "discard 8256k 64k",
            "-c",
            "write -f -P 0x22 8320k 64k",
            "-c",
            "read -P 0 8M 64k",
            "-c",
            "read -P 0x22 8320k 64k",
            "-c",
            "read -P 0x11 8384k 64k",
        ],
    );
    assert!(!o.stdout.contains("failed"), "{}", o.stdout);
    assert_eq!(
        o.stdout.matches("read 65536/65536").count(),
        3,
        "{}",
        o.stdout
    );
    // The read-only export refuses writes.
    let o = spawn(
        &dir,
        qemu_io,
        &["-f", "raw", &s.unix_uri("ro"), "-c", "write 0 4k"],
    )
    .wait(TOOL_TIMEOUT);
    eprintln!("qemu-io write on the read-only export: {o:?}");
    assert!(
        o.code != Some(0) || o.stdout.contains("failed") || o.stderr.contains("read-only"),
        "write to a read-only export: {o:?}"
    );

    // qemu-img info.
    let o = run_ok(
        &dir,
        qemu_img,
        &["info", "--output=json", &s.tcp_uri("disk")],
    );
    let j = json_of(&o.stdout);
    eprintln!("qemu-img info: {j}");
    assert_eq!(j["virtual-size"], ARRAY_BYTES);
    assert_eq!(j["format"], "raw");

    // Every client is gone.
    wait_until("connections to close", DEADLINE, || {
        s.srv.connections() == 0
    });
    assert_eq!(export_connections(&s.srv, "disk"), 0);
    assert!(s.srv.accepted() >= 9, "accepted {}", s.srv.accepted());
    // The one export left is the default export.
    s.srv.remove_export("disk").unwrap();
    let o2 = run_ok(&dir, nbdinfo, &["--json", &s.unix_uri("")]);
    assert_eq!(json_of(&o2.stdout)["exports"][0]["export-name"], "ro");
    s.finish(&[r1, r5]);
}

/// qemu-io with the reactors in poll mode (the default of the daemon).
#[test]
fn qemu_io_poll_mode() {
    let _g = serial();
    let test = "qemu_io_poll_mode";
    let Some(qemu_io) = require_tool(test, "qemu-io") else {
        return;
    };
    let s = setup("pollmode", Mode::Poll);
    let a = array(&s.rt, "r0", Level::Raid0, 2, 64);
    s.srv
        .add_export("r0", a.clone(), ExportOptions::default())
        .unwrap();
    for uri in [s.unix_uri("r0"), s.tcp_uri("r0")] {
        let o = run_ok(
            &s.dir.0,
            &qemu_io,
            &[
                "-f",
                "raw",
                &uri,
                "-c",
                "write -P 0x5c 1M 3M",
                "-c",
                "read -P 0x5c 1M 3M",
                "-c",
                "read -P 0 0 1M",
            ],
        );
        assert!(!o.stdout.contains("failed"), "{}", o.stdout);
    }
    wait_until("connections to close", DEADLINE, || {
        s.srv.connections() == 0
    });
    s.finish(&[a]);
}

// ----- fio --------------------------------------------------------------------

/// fio results of one run.
#[derive(Debug, Default)]
struct FioResult {
    jobs: usize,
    write_bytes: u64,
    read_bytes: u64,
    write_iops: f64,
    read_iops: f64,
}

fn fio_args(uri: &str, jobs: u32, size: u64) -> Vec<String> {
    [
        "--name=verify".to_string(),
        "--ioengine=nbd".into(),
        format!("--uri={uri}"),
        "--rw=randwrite".into(),
        "--bs=4k".into(),
        "--iodepth=16".into(),
        format!("--numjobs={jobs}"),
        format!("--size={size}"),
        format!("--offset_increment={size}"),
        "--verify=crc32c".into(),
        "--do_verify=1".into(),
        "--verify_fatal=1".into(),
        "--output-format=json".into(),
    ]
    .to_vec()
}

/// Zero errors, every byte written and verified.
fn check_fio(o: &Output, jobs: u32, size: u64) -> FioResult {
    assert_eq!(
        o.code,
        Some(0),
        "fio failed\nstdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
    let j = json_of(&o.stdout);
    let mut r = FioResult::default();
    for job in j["jobs"].as_array().expect("jobs") {
        assert_eq!(job["error"], 0, "fio job error: {job}");
        let w = job["write"]["io_bytes"].as_u64().unwrap();
        let rd = job["read"]["io_bytes"].as_u64().unwrap();
        assert_eq!(w, size, "bytes written");
        assert_eq!(rd, size, "bytes verified");
        for dir in ["write", "read"] {
            if let Some(e) = job[dir]["total_err"].as_u64() {
                assert_eq!(e, 0);
            }
        }
        r.jobs += 1;
        r.write_bytes += w;
        r.read_bytes += rd;
        r.write_iops += job["write"]["iops"].as_f64().unwrap_or(0.0);
        r.read_iops += job["read"]["iops"].as_f64().unwrap_or(0.0);
    }
    assert_eq!(r.jobs, jobs as usize);
    assert!(
        !o.stderr.contains("verify:") && !o.stderr.contains("bad magic"),
        "fio reported verify problems:\n{}",
        o.stderr
    );
    r
}

const LEVELS: [(Level, usize, u32); 5] = [
    (Level::Raid0, 2, 64),
    (Level::Raid1, 2, 0),
    (Level::Raid5, 3, 64),
    (Level::Raid6, 4, 32),
    (Level::Raid10, 4, 64),
];

/// fio randwrite + crc32c verify through every level, two jobs (two
/// connections, one per reactor), alternating unix socket and TCP.
#[test]
fn fio_verify_every_level() {
    let _g = serial();
    let Some(fio) = require_tool("fio_verify_every_level", "fio") else {
        return;
    };
    let s = setup("fio", Mode::Interrupt);
    let mut arrays = Vec::new();
    let size = ARRAY_BYTES / 2;
    for (i, (level, n, strip)) in LEVELS.into_iter().enumerate() {
        let name = level.name();
        let a = array(&s.rt, name, level, n, strip);
        assert_eq!(a.num_blocks() * u64::from(BS), ARRAY_BYTES);
        s.srv
            .add_export(name, a.clone(), ExportOptions::default())
            .unwrap();
        let uri = if i % 2 == 0 {
            s.unix_uri(name)
        } else {
            s.tcp_uri(name)
        };
        let args = fio_args(&uri, 2, size);
        let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
        let t = Instant::now();
        let o = spawn(&s.dir.0, &fio, &args).wait(TOOL_TIMEOUT);
        let r = check_fio(&o, 2, size);
        eprintln!(
            "fio {name} over {}: {} MiB written and verified in {:.1?}, write {:.0} IOPS, verify-read {:.0} IOPS",
            if i % 2 == 0 { "unix" } else { "tcp" },
            r.write_bytes / MIB,
            t.elapsed(),
            r.write_iops,
            r.read_iops
        );
        let errors: u64 = a
            .stats()
            .unwrap()
            .iter()
            .flat_map(|(_, m)| m.iter().map(|m| m.errors))
            .sum();
        assert_eq!(errors, 0);
        wait_until("fio's connections to close", DEADLINE, || {
            export_connections(&s.srv, name) == 0
        });
        s.srv.remove_export(name).unwrap();
        assert!(!s.srv.exports_array(name));
        arrays.push(a);
    }
    s.finish(&arrays);
}

/// While fio writes (and before it verifies), every write to one member
/// fails from then on: fio finishes with zero errors and zero verify
/// failures, and the array shows the member faulty.
#[test]
fn fio_member_failure_redundant_levels() {
    let _g = serial();
    let Some(fio) = require_tool("fio_member_failure_redundant_levels", "fio") else {
        return;
    };
    let s = setup("fiofail", Mode::Interrupt);
    let mut arrays = Vec::new();
    let size = ARRAY_BYTES / 2;
    for (i, (level, n, strip)) in LEVELS.into_iter().skip(1).enumerate() {
        let name = format!("{}ee", level.name());
        let (a, ees) = error_array(&s.rt, &name, level, n, strip);
        s.srv
            .add_export(&name, a.clone(), ExportOptions::default())
            .unwrap();
        let uri = if i % 2 == 0 {
            s.unix_uri(&name)
        } else {
            s.tcp_uri(&name)
        };
        let args = fio_args(&uri, 2, size);
        let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
        let t = Instant::now();
        let running = spawn(&s.dir.0, &fio, &args);
        // Mid-run: a quarter of the writes done.
        let quarter = 2 * size / 4096 / 4;
        let done = || -> u64 { a.stats().unwrap().iter().map(|(c, _)| c.parents_done).sum() };
        wait_until("fio to be a quarter through", TOOL_TIMEOUT, || {
            done() >= quarter
        });
        let at = done();
        let victim = 1;
        // From another thread, like the daemon's RPC thread: directly, or
        // as a message run on a reactor through the RuntimeHandle.
        let (ee, h) = (ees[victim].clone(), s.rt.handle().clone());
        let via_reactor = i % 2 == 1;
        std::thread::spawn(move || {
            let opts = InjectOpts::new(ErrorIoType::Write, ErrorType::Failure, u32::MAX);
            if via_reactor {
                h.call(0, move |_| ee.inject_error(&opts)).unwrap()
            } else {
                ee.inject_error(&opts)
            }
        })
        .join()
        .unwrap()
        .unwrap();
        let o = running.wait(TOOL_TIMEOUT);
        let r = check_fio(&o, 2, size);
        let st = a.state();
        eprintln!(
            "fio {name}: member {victim} failed after {at} of {} writes; {} MiB written and verified in {:.1?} (write {:.0} IOPS, verify {:.0} IOPS); members {:?}, events {}",
            2 * size / 4096,
            r.write_bytes / MIB,
            t.elapsed(),
            r.write_iops,
            r.read_iops,
            st.members,
            st.events
        );
        assert!(at < 2 * size / 4096, "the failure came after fio's writes");
        assert!(
            ees[victim].remaining()[1] < u32::MAX,
            "no write ever hit the injected failure"
        );
        assert_eq!(st.members[victim], MemberState::Faulty);
        assert!(!st.offline);
        for (m, ms) in st.members.iter().enumerate() {
            if m != victim {
                assert_eq!(*ms, MemberState::InSync, "member {m}");
            }
        }
        wait_until("fio's connections to close", DEADLINE, || {
            export_connections(&s.srv, &name) == 0
        });
        arrays.push(a);
    }
    s.finish(&arrays);
}

// ----- malformed clients ---------------------------------------------------------

/// A well-behaved client: write, read back, compare, flush, zero, in a
/// loop, with a reconnect every 25 rounds. Counts completed rounds.
fn good_client(t: Transport, stop: Arc<AtomicBool>, rounds: Arc<AtomicU64>) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if Instant::now() > deadline {
            return Err("good client ran past its deadline".into());
        }
        let mut c = Client::connect(Sock::connect(&t), "disk").map_err(|e| e.to_string())?;
        for _ in 0..25 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let off = (i % 64) * 65536;
            let data = fill(65536, i);
            c.write(off, &data, i.is_multiple_of(3))
                .map_err(|e| e.to_string())?;
            let back = c.read(off, 65536).map_err(|e| e.to_string())?;
            if back != data {
                return Err(format!("round {i}: data mismatch"));
            }
            if i.is_multiple_of(5) {
                c.flush().map_err(|e| e.to_string())?;
            }
            if i.is_multiple_of(7) {
                c.write_zeroes(off, 4096, false)
                    .map_err(|e| e.to_string())?;
                let z = c.read(off, 8192).map_err(|e| e.to_string())?;
                if z[..4096].iter().any(|b| *b != 0) || z[4096..] != data[4096..8192] {
                    return Err(format!("round {i}: write-zeroes wrong"));
                }
            }
            rounds.fetch_add(1, Ordering::SeqCst);
            i += 1;
        }
        let mut s = c.disconnect().map_err(|e| e.to_string())?;
        expect_closed(&mut s, CLOSE_LIMIT);
    }
    Ok(())
}

fn still_served(rounds: &AtomicU64, after: &str) {
    let start = rounds.load(Ordering::SeqCst);
    wait_until(
        &format!("the good client to progress after {after}"),
        Duration::from_secs(20),
        || rounds.load(Ordering::SeqCst) >= start + 3,
    );
}

fn scenarios(t: &Transport, rounds: &AtomicU64, keep: &mut Vec<Sock>) {
    let size = ARRAY_BYTES;
    // Garbage right after connecting (the first 4 bytes are taken as client
    // flags with unknown bits): only the greeting, then the close.
    let mut s = Sock::connect(t);
    s.write_all(&fill(4096, 1)).unwrap();
    let got = expect_closed(&mut s, CLOSE_LIMIT);
    assert_eq!(got.len(), GREETING_LEN);
    still_served(rounds, "garbage");

    // Bad client flags.
    let mut s = Sock::connect(t);
    s.write_all(&0xffff_fffcu32.to_be_bytes()).unwrap();
    assert_eq!(expect_closed(&mut s, CLOSE_LIMIT).len(), GREETING_LEN);

    // Bad option magic.
    let mut s = Sock::connect(t);
    greet(&mut s).unwrap();
    let mut o = encode_option(OPT_LIST, &[]);
    o[..8].copy_from_slice(b"BADMAGIC");
    s.write_all(&o).unwrap();
    expect_closed(&mut s, CLOSE_LIMIT);
    still_served(rounds, "bad option magic");

    // NBD_OPT_EXPORT_NAME of an unknown export: closed. GO: refused.
    let mut s = Sock::connect(t);
    greet(&mut s).unwrap();
    s.write_all(&encode_option(OPT_EXPORT_NAME, b"no-such-export"))
        .unwrap();
    expect_closed(&mut s, CLOSE_LIMIT);
    let mut s = Sock::connect(t);
    greet(&mut s).unwrap();
    s.write_all(&encode_option(OPT_GO, &encode_info_request("nope", &[])))
        .unwrap();
    assert_eq!(read_opt_reply(&mut s).unwrap().rtype, REP_ERR_UNKNOWN);
    s.write_all(&encode_option(OPT_ABORT, &[])).unwrap();
    assert_eq!(read_opt_reply(&mut s).unwrap().rtype, REP_ACK);
    expect_closed(&mut s, CLOSE_LIMIT);

    // An option announcing 1 GiB: TOO_BIG, data skipped as it streams in.
    let mut s = Sock::connect(t);
    greet(&mut s).unwrap();
    let mut h = Vec::new();
    h.extend_from_slice(&IHAVEOPT.to_be_bytes());
    h.extend_from_slice(&OPT_GO.to_be_bytes());
    h.extend_from_slice(&(1u32 << 30).to_be_bytes());
    s.write_all(&h).unwrap();
    let r = read_opt_reply(&mut s).unwrap();
    assert_eq!((r.opt, r.rtype), (OPT_GO, REP_ERR_TOO_BIG));
    for _ in 0..8 {
        s.write_all(&[0x42; 1 << 20]).unwrap();
    }
    drop(s);
    still_served(rounds, "an oversize option");

    // Bad request magic after the handshake.
    let mut s = go(t, "disk");
    let mut r = encode_request(0, CMD_READ, 1, 0, 512);
    r[0] = 0;
    s.write_all(&r).unwrap();
    expect_closed(&mut s, CLOSE_LIMIT);
    still_served(rounds, "bad request magic");

    // A write announcing 64 MiB (over the 32 MiB limit): closed.
    let mut s = go(t, "disk");
    s.write_all(&encode_request(0, CMD_WRITE, 1, 0, 64 << 20))
        .unwrap();
    let _ = s.write_all(&[0; 65536]);
    expect_closed(&mut s, CLOSE_LIMIT);
    still_served(rounds, "an oversize write");

    // Errors that keep the connection usable.
    let mut s = go(t, "disk");
    let cases: [(u16, u16, u64, u32, Errno); 8] = [
        (0, CMD_READ, size - 512, 1024, Errno::Inval), // past the end
        (0, CMD_READ, u64::MAX - 100, 512, Errno::Inval), // overflow
        (0, CMD_READ, 100, 512, Errno::Inval),         // misaligned
        (0, 42, 0, 0, Errno::Inval),                   // unknown command
        (CMD_FLAG_DF, CMD_READ, 0, 512, Errno::Inval), // flag not offered
        (0, CMD_READ, 0, 64 << 20, Errno::Inval),      // over the max payload
        (0, CMD_FLUSH, 4096, 0, Errno::Inval),         // flush with a range
        (0, CMD_TRIM, size, 512, Errno::Inval),        // trim past the end
    ];
    for (h, (flags, cmd, off, len, err)) in cases.iter().enumerate() {
        s.write_all(&encode_request(*flags, *cmd, h as u64, *off, *len))
            .unwrap();
        assert_eq!(reply(&mut s), (err.code(), h as u64), "case {h}");
    }
    s.write_all(&encode_request(0, CMD_WRITE, 100, size, 4096))
        .unwrap();
    s.write_all(&[0xee; 4096]).unwrap();
    assert_eq!(reply(&mut s), (Errno::NoSpc.code(), 100));
    // ... and then valid requests work.
    s.write_all(&encode_request(0, CMD_READ, 101, size - 512, 512))
        .unwrap();
    assert_eq!(reply(&mut s), (0, 101));
    let mut data = [0u8; 512];
    s.read_exact(&mut data).unwrap();
    s.write_all(&encode_request(0, CMD_DISC, 102, 0, 0))
        .unwrap();
    assert!(expect_closed(&mut s, CLOSE_LIMIT).is_empty());
    still_served(rounds, "invalid requests");

    // A handle reused while in flight (a client bug): two replies all the
    // same, the connection stays usable and ends cleanly.
    let mut s = go(t, "disk");
    let mut msg = encode_request(0, CMD_WRITE, 9, 0, 4096).to_vec();
    msg.extend_from_slice(&[7; 4096]);
    msg.extend_from_slice(&encode_request(0, CMD_READ, 9, 0, 4096));
    s.write_all(&msg).unwrap();
    let (e1, h1) = reply(&mut s);
    assert_eq!(h1, 9);
    let (e2, h2) = reply(&mut s);
    assert_eq!(h2, 9);
    if e1 == 0 {
        // The write, then the read with its data.
        assert_eq!(e2, 0);
        let mut d = vec![0u8; 4096];
        s.read_exact(&mut d).unwrap();
    } else {
        assert_eq!((e1, e2), (Errno::Io.code(), Errno::Io.code()));
    }
    s.write_all(&encode_request(0, CMD_READ, 10, 0, 512))
        .unwrap();
    assert_eq!(reply(&mut s), (0, 10));
    let mut d = [0u8; 512];
    s.read_exact(&mut d).unwrap();
    s.write_all(&encode_request(0, CMD_DISC, 11, 0, 0)).unwrap();
    assert!(expect_closed(&mut s, CLOSE_LIMIT).is_empty());

    // Writes on the read-only export.
    let mut s = go(t, "ro");
    s.write_all(&encode_request(0, CMD_WRITE, 1, 0, 512))
        .unwrap();
    s.write_all(&[1; 512]).unwrap();
    assert_eq!(reply(&mut s), (Errno::Perm.code(), 1));
    s.write_all(&encode_request(0, CMD_TRIM, 2, 0, 512))
        .unwrap();
    assert_eq!(reply(&mut s), (Errno::Perm.code(), 2));
    drop(s);

    // Half-close at a message boundary: the pending read is answered,
    // then the server closes.
    let mut s = go(t, "disk");
    s.write_all(&encode_request(0, CMD_READ, 77, 0, 4096))
        .unwrap();
    s.shutdown_write();
    let got = expect_closed(&mut s, CLOSE_LIMIT);
    assert_eq!(got.len(), 16 + 4096);
    assert_eq!(&got[8..16], &77u64.to_be_bytes());

    // Half-close in the middle of a request header: closed, no reply.
    let mut s = go(t, "disk");
    s.write_all(&encode_request(0, CMD_READ, 78, 0, 4096)[..10])
        .unwrap();
    s.shutdown_write();
    assert!(expect_closed(&mut s, CLOSE_LIMIT).is_empty());

    // Half-close in the middle of a write payload.
    let mut s = go(t, "disk");
    s.write_all(&encode_request(0, CMD_WRITE, 79, 0, 4096))
        .unwrap();
    s.write_all(&[9; 100]).unwrap();
    s.shutdown_write();
    assert!(expect_closed(&mut s, CLOSE_LIMIT).is_empty());

    // Half-close during the handshake.
    let mut s = Sock::connect(t);
    greet(&mut s).unwrap();
    s.write_all(&IHAVEOPT.to_be_bytes()[..5]).unwrap();
    s.shutdown_write();
    expect_closed(&mut s, CLOSE_LIMIT);
    still_served(rounds, "half-closed sockets");

    // An idle client, kept open.
    keep.push(Sock::connect(t));
    // A client that floods reads and never reads the replies.
    let mut s = go(t, "disk");
    let mut msg = Vec::new();
    for h in 0..200u64 {
        msg.extend_from_slice(&encode_request(0, CMD_READ, h, 0, 1 << 20));
    }
    s.write_all(&msg).unwrap();
    keep.push(s);
    // A client stuck in the middle of a write payload.
    let mut s = go(t, "disk");
    s.write_all(&encode_request(0, CMD_WRITE, 1, 0, 1 << 20))
        .unwrap();
    s.write_all(&[3; 1000]).unwrap();
    keep.push(s);
    still_served(rounds, "idle, flooding and stuck clients");
}

fn malformed(tcp: bool) {
    let _g = serial();
    let s = setup(if tcp { "badtcp" } else { "badunix" }, Mode::Interrupt);
    let a = array(&s.rt, "r1", Level::Raid1, 2, 0);
    s.srv
        .add_export("disk", a.clone(), ExportOptions::default())
        .unwrap();
    let ro = ExportOptions {
        read_only: true,
        description: None,
    };
    s.srv.add_export("ro", a.clone(), ro).unwrap();
    let t = if tcp {
        Transport::Tcp(s.tcp)
    } else {
        Transport::Unix(s.sock.clone())
    };
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let good = {
        let (t, stop, rounds) = (t.clone(), stop.clone(), rounds.clone());
        std::thread::spawn(move || good_client(t, stop, rounds))
    };
    let mut keep = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("the good client to start", Duration::from_secs(20), || {
            rounds.load(Ordering::SeqCst) > 0
        });
        scenarios(&t, &rounds, &mut keep);
    }));
    stop.store(true, Ordering::SeqCst);
    let good_result = good.join().expect("good client thread panicked");
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    good_result.unwrap();
    eprintln!(
        "good client completed {} rounds next to the malformed ones",
        rounds.load(Ordering::SeqCst)
    );
    // Once the last clients go away every connection ends by itself.
    drop(keep);
    wait_until("all connections to end", Duration::from_secs(20), || {
        s.srv.connections() == 0
    });
    // 18 malformed or scripted clients, and the good one's reconnects.
    assert!(s.srv.accepted() >= 18, "accepted {}", s.srv.accepted());
    assert_eq!(export_connections(&s.srv, "disk"), 0);
    s.finish(&[a]);
}

#[test]
fn malformed_clients_unix() {
    malformed(false);
}

#[test]
fn malformed_clients_tcp() {
    malformed(true);
}

// ----- control: exports, listeners, stop ---------------------------------------------

#[test]
fn remove_export_listeners_and_stop() {
    let _g = serial();
    let s = setup("control", Mode::Interrupt);
    let a = array(&s.rt, "r1", Level::Raid1, 2, 0);
    let b = array(&s.rt, "r10", Level::Raid10, 4, 64);
    let srv = &s.srv;
    srv.add_export("a", a.clone(), ExportOptions::default())
        .unwrap();
    assert!(matches!(
        srv.add_export("a", b.clone(), ExportOptions::default()),
        Err(ExportError::Exists(_))
    ));
    assert!(matches!(
        srv.add_export("", b.clone(), ExportOptions::default()),
        Err(ExportError::Invalid(_))
    ));
    assert!(matches!(
        srv.add_export("x\0y", b.clone(), ExportOptions::default()),
        Err(ExportError::Invalid(_))
    ));
    assert!(matches!(
        srv.remove_export("nope"),
        Err(ExportError::NoSuchExport(_))
    ));
    assert!(srv.exports_array("r1"));
    assert!(!srv.exports_array("r10"));
    let v = srv.exports();
    assert_eq!(v.len(), 1);
    assert_eq!(
        (
            v[0].export_name.as_str(),
            v[0].bdev_name.as_str(),
            v[0].size_bytes,
            v[0].block_size
        ),
        ("a", "r1", ARRAY_BYTES, BS)
    );

    // Connections: one with 32 reads in flight whose client reads its
    // replies slowly, one idle after GO, one in the handshake.
    let unix = Transport::Unix(s.sock.clone());
    let mut busy = go(&unix, "a");
    let mut msg = Vec::new();
    for h in 0..32u64 {
        msg.extend_from_slice(&encode_request(0, CMD_READ, h, h * MIB, 1 << 20));
    }
    busy.write_all(&msg).unwrap();
    let mut idle = go(&Transport::Tcp(s.tcp), "a");
    let mut handshaking = Sock::connect(&unix);
    greet(&mut handshaking).unwrap();
    wait_until("two connections on the export", DEADLINE, || {
        export_connections(srv, "a") == 2
    });
    assert_eq!(srv.connections(), 3);
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let mut handles = Vec::new();
        let mut data = vec![0u8; 1 << 20];
        for _ in 0..32 {
            let (err, h) = reply(&mut busy);
            assert_eq!(err, 0);
            busy.read_exact(&mut data).unwrap();
            handles.push(h);
        }
        let rest = expect_closed(&mut busy, CLOSE_LIMIT);
        (handles, rest.len())
    });
    let t = Instant::now();
    srv.remove_export("a").unwrap();
    let took = t.elapsed();
    let (mut handles, extra) = reader.join().unwrap();
    handles.sort();
    assert_eq!(handles, (0..32).collect::<Vec<_>>(), "every read answered");
    assert_eq!(extra, 0);
    assert!(took < Duration::from_secs(4), "remove_export took {took:?}");
    assert!(expect_closed(&mut idle, CLOSE_LIMIT).is_empty());
    assert!(srv.exports().is_empty());
    assert!(!srv.exports_array("r1"));
    // The handshaking client can no longer select it; new ones neither.
    handshaking
        .write_all(&encode_option(OPT_GO, &encode_info_request("a", &[])))
        .unwrap();
    assert_eq!(
        read_opt_reply(&mut handshaking).unwrap().rtype,
        REP_ERR_UNKNOWN
    );
    drop(handshaking);
    wait_until("connections to close", DEADLINE, || srv.connections() == 0);
    // Nothing uses the array any more: it can be stopped.
    a.stop(DEADLINE).unwrap();

    // Listeners.
    let mut ls = srv.listeners();
    ls.sort_by_key(|l| matches!(l, ListenerView::Tcp(_)));
    assert_eq!(
        ls,
        vec![ListenerView::Unix(s.sock.clone()), ListenerView::Tcp(s.tcp)]
    );
    srv.remove_listener(&ListenerView::Unix(s.sock.clone()))
        .unwrap();
    assert!(!s.sock.exists(), "socket file removed");
    assert!(std::os::unix::net::UnixStream::connect(&s.sock).is_err());
    assert!(matches!(
        srv.remove_listener(&ListenerView::Unix(s.sock.clone())),
        Err(ExportError::NoSuchListener(_))
    ));
    srv.remove_listener(&ListenerView::Tcp(s.tcp)).unwrap();
    assert!(
        std::net::TcpStream::connect(s.tcp).is_err(),
        "TCP listener closed"
    );
    assert!(srv.listeners().is_empty());
    // A regular file is not replaced; a stale socket file is.
    let file = s.dir.0.join("file");
    std::fs::write(&file, b"keep me").unwrap();
    assert!(matches!(
        srv.add_unix_listener(&file),
        Err(ExportError::Listen(_, _))
    ));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    let stale = s.dir.0.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    srv.add_unix_listener(&stale).unwrap();
    assert!(matches!(
        srv.add_unix_listener(&stale),
        Err(ExportError::Listen(_, _))
    ));
    let tcp2 = srv
        .add_tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();

    // Stop with a client that floods reads and never reads replies, an idle
    // one and one in the handshake: bounded, everything closed.
    srv.add_export("b", b.clone(), ExportOptions::default())
        .unwrap();
    let stale_t = Transport::Unix(stale.clone());
    let mut flooder = go(&stale_t, "b");
    let mut msg = Vec::new();
    for h in 0..100u64 {
        msg.extend_from_slice(&encode_request(0, CMD_READ, h, 0, 1 << 20));
    }
    flooder.write_all(&msg).unwrap();
    let mut idle = go(&Transport::Tcp(tcp2), "b");
    let mut handshaking = Sock::connect(&stale_t);
    greet(&mut handshaking).unwrap();
    wait_until("three connections", DEADLINE, || srv.connections() == 3);
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    assert!(srv.stop_within(Duration::from_millis(500)));
    let took = t.elapsed();
    eprintln!("stop with a stuck client took {took:?}");
    assert!(took < Duration::from_secs(3), "stop took {took:?}");
    assert_eq!(srv.connections(), 0);
    expect_closed(&mut idle, CLOSE_LIMIT);
    expect_closed(&mut handshaking, CLOSE_LIMIT);
    expect_closed(&mut flooder, CLOSE_LIMIT);
    assert!(!stale.exists());
    assert!(srv.exports().is_empty() && srv.listeners().is_empty());
    assert!(matches!(
        srv.add_export("c", b.clone(), ExportOptions::default()),
        Err(ExportError::Stopped)
    ));
    assert!(matches!(
        srv.add_tcp_listener("127.0.0.1:0".parse().unwrap()),
        Err(ExportError::Stopped)
    ));
    s.finish(&[b]);
}

/// Array errors reach the client: EIO for a failed read on a non-redundant
/// level.
#[test]
fn array_errors_are_eio() {
    let _g = serial();
    let s = setup("eio", Mode::Interrupt);
    let (a, ees) = error_array(&s.rt, "r0ee", Level::Raid0, 2, 64);
    s.srv
        .add_export("r0", a.clone(), ExportOptions::default())
        .unwrap();
    let mut c = Client::connect(Sock::connect(&Transport::Unix(s.sock.clone())), "r0").unwrap();
    c.write(0, &fill(256 * 1024, 9), false).unwrap();
    assert_eq!(c.read(0, 256 * 1024).unwrap(), fill(256 * 1024, 9));
    ees[1]
        .inject_error(&InjectOpts::new(ErrorIoType::Read, ErrorType::Failure, 1))
        .unwrap();
    // 256 KiB over 64 KiB strips touches both members.
    let e = c.read(0, 256 * 1024).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::Io), "{e}");
    // The connection goes on.
    assert_eq!(c.read(0, 256 * 1024).unwrap(), fill(256 * 1024, 9));
    c.disconnect().unwrap();
    wait_until("connections to close", DEADLINE, || {
        s.srv.connections() == 0
    });
    s.finish(&[a]);
}
