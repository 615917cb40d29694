//! `mdraid`: the embedded daemon and its command-line tools.
//!
//! * `mdraid serve [--json FILE] [-m MASK | --cores LIST] [--interrupt]
//!   [-r SOCK] [--nbd-unix PATH] [--nbd-tcp ADDR]` — run the daemon.
//! * `mdraid rpc [-s SOCK] METHOD [JSON-PARAMS]` — one JSON-RPC call.
//! * `mdraid examine [--json] FILE...` — md superblocks, as mdadm prints them.
//! * `mdraid status [-s SOCK] [--json] [--watch [SECS]]` — arrays at a glance.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use mdraid_rpc::params::MdraidNbdListener;
use mdraid_rpc::{apply_config, parse_config};
use mdraid_runtime::daemon::{
    preflight, rpc_call, ClientError, Daemon, DaemonOptions, RpcServer, DEFAULT_RPC_SOCKET,
};
use mdraid_runtime::{parse_core_list, parse_core_mask, Mode, Runtime, RuntimeConfig};
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "mdraid",
    version,
    about = "md-grade RAID for SPDK: the embedded daemon and its tools"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: reactors, arrays, NBD exports, JSON-RPC socket.
    Serve(ServeArgs),
    /// Call one JSON-RPC method and print its result.
    Rpc {
        /// The daemon's RPC socket.
        #[arg(short = 's', long = "server", default_value = DEFAULT_RPC_SOCKET)]
        sock: PathBuf,
        /// Seconds to wait for the answer.
        #[arg(short = 't', long, default_value_t = 60.0, value_parser = seconds)]
        timeout: f64,
        /// Method name (`rpc_get_methods` lists them).
        method: String,
        /// Params: a JSON object.
        params: Option<String>,
    },
    /// Print the md superblock of member files or devices (like `mdadm --examine`).
    Examine {
        /// JSON: an array with one object per member.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show the arrays of a running daemon.
    Status {
        #[arg(short = 's', long = "server", default_value = DEFAULT_RPC_SOCKET)]
        sock: PathBuf,
        /// Print bdev_mdraid_get_bdevs' JSON.
        #[arg(long)]
        json: bool,
        /// Refresh every SECS seconds (default 2) until interrupted.
        #[arg(long, num_args = 0..=1, default_missing_value = "2", value_parser = seconds)]
        watch: Option<f64>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Config file in SPDK's format (what save_config writes).
    #[arg(long = "json", short = 'c')]
    json: Option<PathBuf>,
    /// Reactor core mask, as SPDK's -m (`0x3`, `[0,2-3]`).
    #[arg(short = 'm', long = "cpumask", conflicts_with = "cores")]
    mask: Option<String>,
    /// Reactor cores as a list (`0,1`, `2-3`).
    #[arg(long)]
    cores: Option<String>,
    /// Sleep when idle instead of polling (saves CPU, adds latency).
    #[arg(long)]
    interrupt: bool,
    /// JSON-RPC socket.
    #[arg(short = 'r', long = "rpc-socket", default_value = DEFAULT_RPC_SOCKET)]
    rpc_socket: PathBuf,
    /// NBD listener on a unix socket (not saved by save_config).
    #[arg(long = "nbd-unix")]
    nbd_unix: Vec<String>,
    /// NBD listener on TCP, loopback only: `127.0.0.1:10809`, `[::1]:10809`
    /// (not saved by save_config).
    #[arg(long = "nbd-tcp")]
    nbd_tcp: Vec<String>,
    /// Seconds to wait for arrays to drain at shutdown.
    #[arg(long, default_value_t = 10)]
    stop_timeout: u64,
}

// ------------------------------------------------------------ logging

/// A minimal `tracing` subscriber: one line per event on stderr.
/// `MDRAID_LOG=debug|info|warn|error` sets the level (default info).
struct StderrLog {
    max: tracing::Level,
}

struct Line(String);

impl tracing::field::Visit for Line {
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        if f.name() == "message" {
            let _ = write!(self.0, "{v:?}");
        } else {
            let _ = write!(self.0, " {}={v:?}", f.name());
        }
    }
}

impl tracing::Subscriber for StderrLog {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        *m.level() <= self.max
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        let mut l = Line(String::new());
        e.record(&mut l);
        eprintln!(
            "mdraid: {}: {}",
            e.metadata().level().as_str().to_lowercase(),
            l.0
        );
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn init_log() {
    let max = match std::env::var("MDRAID_LOG").as_deref() {
        Ok("trace") => tracing::Level::TRACE,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("warn") => tracing::Level::WARN,
        Ok("error") => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    let _ = tracing::subscriber::set_global_default(StderrLog { max });
}

// ------------------------------------------------------------ serve

fn signal_set(sigs: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in sigs {
            libc::sigaddset(&mut set, *s);
        }
        set
    }
}

const STOP_SIGNALS: [i32; 2] = [libc::SIGINT, libc::SIGTERM];

/// Block the stop signals in this thread, so every thread started later
/// inherits the mask and only `wait_for_stop` receives them.
fn block_stop_signals() {
    let set = signal_set(&STOP_SIGNALS);
    // SAFETY: `set` is a valid, initialised signal set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn wait_for_stop() -> i32 {
    let set = signal_set(&STOP_SIGNALS);
    loop {
        let mut sig = 0;
        // SAFETY: `set` is valid; `sig` receives the signal number.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        if rc == 0 {
            return sig;
        }
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("mdraid: error: {msg}");
    ExitCode::FAILURE
}

fn parse_tcp(s: &str) -> Result<MdraidNbdListener, String> {
    let (addr, port) = match s.parse::<std::net::SocketAddr>() {
        Ok(a) => (a.ip().to_string(), Some(a.port())),
        Err(_) => match s.parse::<std::net::IpAddr>() {
            Ok(ip) => (ip.to_string(), None),
            Err(_) => {
                return Err(format!(
                    "--nbd-tcp {s}: expected ADDRESS[:PORT] with an IP literal (127.0.0.1:10809, [::1]:10809)"
                ))
            }
        },
    };
    Ok(MdraidNbdListener {
        unix_path: None,
        address: Some(addr),
        port,
    })
}

fn serve(a: ServeArgs) -> ExitCode {
    // Everything is checked before a thread starts or a byte is written.
    let cores = match (&a.mask, &a.cores) {
        (Some(m), _) => parse_core_mask(m).map_err(|e| format!("-m {m}: {e}")),
        (None, Some(c)) => parse_core_list(c).map_err(|e| format!("--cores {c}: {e}")),
        (None, None) => Ok(vec![0]),
    };
    let cores = match cores {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    // As SPDK refuses a core mask naming cores the machine does not have.
    if let Ok(online) = std::fs::read_to_string("/sys/devices/system/cpu/online") {
        if let Ok(have) = parse_core_list(&online) {
            if let Some(c) = cores.iter().find(|c| !have.contains(c)) {
                return fail(format!(
                    "core {c} is not online here (online: {}); give cores with -m or --cores",
                    online.trim()
                ));
            }
        }
    }
    let mut tcp = Vec::new();
    for t in &a.nbd_tcp {
        match parse_tcp(t) {
            Ok(l) => tcp.push(l),
            Err(e) => return fail(e),
        }
    }
    let loaded = match &a.json {
        Some(path) => {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => return fail(format!("{}: {e}", path.display())),
            };
            let loaded = match parse_config(&text) {
                Ok(l) => l,
                Err(e) => return fail(format!("{}: {e}", path.display())),
            };
            if let Err(e) = preflight(&loaded) {
                return fail(format!("{}: {e}", path.display()));
            }
            for s in &loaded.skipped {
                tracing::info!("{}: skipped {s}", path.display());
            }
            Some(loaded)
        }
        None => None,
    };
    // Bound before a member is touched (clients wait until it serves).
    let rpc_listener = match RpcServer::bind(&a.rpc_socket) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return fail(format!("RPC socket: {e} (pass -r to use another)"))
        }
        Err(e) => return fail(format!("RPC socket: {e}")),
    };
    let rpc_path = a.rpc_socket.clone();
    let unbind = move || {
        let _ = std::fs::remove_file(&rpc_path);
    };

    block_stop_signals();
    let rt = match Runtime::start(RuntimeConfig {
        cores,
        mode: if a.interrupt {
            Mode::Interrupt
        } else {
            Mode::Poll
        },
        ..RuntimeConfig::default()
    }) {
        Ok(rt) => rt,
        Err(e) => {
            unbind();
            return fail(format!("starting reactors: {e}"));
        }
    };
    let opts = DaemonOptions {
        stop_timeout: Duration::from_secs(a.stop_timeout),
        ..DaemonOptions::default()
    };
    let mut daemon = Daemon::new(rt.handle(), opts);
    let stop_all = |mut d: Daemon, rt: Runtime| {
        d.shutdown();
        drop(d);
        rt.shutdown(Duration::from_secs(10));
        unbind();
    };
    // The command line's NBD listeners before the config: they touch no
    // member, so a bad one stops the start before anything is written.
    let mut listeners: Vec<MdraidNbdListener> = a
        .nbd_unix
        .iter()
        .map(|p| MdraidNbdListener {
            unix_path: Some(p.clone()),
            address: None,
            port: None,
        })
        .collect();
    listeners.extend(tcp);
    for l in listeners {
        if let Err(e) = daemon.add_listener(l, false) {
            stop_all(daemon, rt);
            return fail(format!("NBD listener: {}", e.message));
        }
    }
    if let Some(loaded) = &loaded {
        let path = a.json.as_deref().unwrap_or(Path::new("?"));
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            apply_config(&mut daemon, loaded)
        }));
        match applied {
            Ok(Ok(())) => tracing::info!(
                "{}: {} entries applied",
                path.display(),
                loaded.entries.len()
            ),
            Ok(Err(e)) => {
                stop_all(daemon, rt);
                return fail(format!("{}: {e}", path.display()));
            }
            Err(_) => {
                stop_all(daemon, rt);
                return fail(format!(
                    "{}: applying the config failed (internal error)",
                    path.display()
                ));
            }
        }
    }
    let uris = daemon.nbd_uris();
    let daemon = Arc::new(Mutex::new(daemon));
    let on_answer: Arc<dyn Fn(&mut Daemon) + Send + Sync> = Arc::new(|d: &mut Daemon| {
        if let Some(sig) = d.take_kill() {
            // SAFETY: sending a signal to our own process.
            unsafe {
                libc::kill(libc::getpid(), sig);
            }
        }
    });
    let mut server = match RpcServer::serve(&a.rpc_socket, rpc_listener, daemon.clone(), on_answer)
    {
        Ok(s) => s,
        Err(e) => {
            let d = match Arc::try_unwrap(daemon) {
                Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()),
                Err(_) => unreachable!("no server holds the daemon"),
            };
            stop_all(d, rt);
            return fail(format!("RPC socket: {e}"));
        }
    };
    tracing::info!("JSON-RPC on {}", a.rpc_socket.display());
    for u in &uris {
        tracing::info!("NBD on {u}");
    }
    // A line tests and scripts wait for.
    println!("mdraid: ready (rpc {})", a.rpc_socket.display());

    let sig = wait_for_stop();
    // The whole stop keeps to `--stop-timeout` plus the 5 s given to the
    // requests of NBD clients closed hard.
    let stop_by = Instant::now() + Duration::from_secs(a.stop_timeout) + Duration::from_secs(5);
    tracing::info!(
        "{}: stopping (no new RPC connections; draining arrays)",
        if sig == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        }
    );
    server.stop(Duration::from_secs(5));
    let failed = {
        let mut d = daemon.lock().unwrap_or_else(|e| e.into_inner());
        d.shutdown()
    };
    drop(daemon);
    // Reactors that still carry I/O a member never answered get what is
    // left of the stop's time: the arrays that did not stop are reported
    // below.
    let left = stop_by
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(500));
    let report = rt.shutdown(left);
    if !report.drained {
        tracing::warn!("reactors did not drain");
    }
    if !failed.is_empty() {
        return fail(format!("arrays not stopped cleanly: {}", failed.join(", ")));
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

// ------------------------------------------------------------ rpc

fn print_client_error(e: &ClientError) {
    match e {
        ClientError::Rpc(e) => {
            eprintln!("request failed: code {}: {}", e.code, e.message);
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"code": e.code, "message": e.message})
                )
                .unwrap_or_default()
            );
        }
        other => eprintln!("mdraid rpc: {other}"),
    }
}

/// A number of seconds: finite and above 0.
fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(_) => Err(format!("`{s}`: seconds must be a number above 0")),
        Err(e) => Err(format!("`{s}`: {e}")),
    }
}

fn rpc(sock: &Path, timeout: f64, method: &str, params: Option<&str>) -> ExitCode {
    let params = match params {
        None => None,
        Some(t) => match serde_json::from_str::<Value>(t) {
            Ok(v) => Some(v),
            Err(e) => return fail(format!("params are not valid JSON: {e}")),
        },
    };
    let timeout = Duration::from_secs_f64(timeout.clamp(0.001, 86_400.0));
    match rpc_call(sock, method, params, timeout) {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_client_error(&e);
            ExitCode::FAILURE
        }
    }
}

// ------------------------------------------------------------ examine

fn examine_file(path: &Path) -> Result<bdev_raid::examine::Examined, String> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let size = f.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    let off = bdev_raid::ondisk::SB_OFFSET_BYTES;
    let len = bdev_raid::ondisk::SB_BLOCK_BYTES as u64;
    if size < off + len {
        return Err(format!(
            "{size} bytes: too small to hold an md 1.2 superblock (at byte {off})"
        ));
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, off).map_err(|e| e.to_string())?;
    bdev_raid::examine::examine(&buf, size / 512).map_err(|e| format!("md superblock: {e}"))
}

fn examine(json: bool, files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    let mut out = Vec::new();
    for p in files {
        match examine_file(p) {
            Ok(ex) => {
                if json {
                    let mut m = serde_json::Map::new();
                    m.insert("device".into(), Value::String(p.display().to_string()));
                    for (k, v) in &ex.fields {
                        m.insert(
                            bdev_raid::examine::Examined::json_key(k),
                            Value::String(v.clone()),
                        );
                    }
                    out.push(Value::Object(m));
                } else {
                    print!("{}", ex.text(&p.display().to_string()));
                }
            }
            Err(e) => {
                eprintln!("mdraid examine: {}: {e}", p.display());
                ok = false;
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Array(out)).unwrap_or_default()
        );
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// ------------------------------------------------------------ status

fn human(bytes: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn status_text(arrays: &[Value], bdevs: &[Value]) -> String {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let mut out = String::new();
    if arrays.is_empty() {
        out.push_str("no arrays\n");
    }
    for a in arrays {
        let name = s(a, "name");
        let size = bdevs
            .iter()
            .find(|b| b.get("name").and_then(Value::as_str) == Some(&name))
            .map(|b| n(b, "num_blocks") * n(b, "block_size"))
            .unwrap_or(0);
        let layout = a
            .get("layout")
            .and_then(Value::as_str)
            .map(|l| format!(" {l}"))
            .unwrap_or_default();
        let strip = n(a, "strip_size_kb");
        let _ = writeln!(
            out,
            "{name}: {}{layout}{} {} {}{}, {} of {} members, {}, events {}",
            s(a, "raid_level"),
            if strip > 0 {
                format!(" {strip}K strips")
            } else {
                String::new()
            },
            s(a, "state"),
            s(a, "array_state"),
            if a.get("degraded").and_then(Value::as_bool) == Some(true) {
                " degraded"
            } else {
                ""
            },
            n(a, "num_base_bdevs_operational"),
            n(a, "num_base_bdevs"),
            human(size),
            n(a, "events"),
        );
        let _ = writeln!(out, "    uuid {}", s(a, "uuid"));
        let sync = a
            .get("sync_action")
            .and_then(Value::as_str)
            .unwrap_or("idle");
        let mismatch = a
            .get("mismatch_cnt")
            .and_then(Value::as_u64)
            .map_or(String::new(), |m| format!(", mismatch_cnt {m}"));
        let bitmap = a
            .get("bitmap")
            .filter(|b| !b.is_null())
            .map_or(String::new(), |b| {
                format!(
                    ", bitmap {}/{} chunks dirty ({} KiB each)",
                    n(b, "dirty_chunks"),
                    n(b, "total_chunks"),
                    n(b, "chunk_kb")
                )
            });
        let behind = a
            .get("write_behind")
            .and_then(Value::as_u64)
            .map_or(String::new(), |w| format!(", write-behind {w}"));
        let _ = writeln!(out, "    sync_action: {sync}{mismatch}{bitmap}{behind}");
        if let Some(p) = a.get("process").filter(|p| !p.is_null()) {
            let pct = p
                .pointer("/progress/percent")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .min(100) as usize;
            let target = p
                .get("target")
                .and_then(Value::as_str)
                .map_or(String::new(), |t| format!(" {t}"));
            let _ = writeln!(
                out,
                "    {}{target} [{}{}] {pct}%",
                s(p, "type"),
                "=".repeat(pct / 5),
                " ".repeat(20 - pct / 5)
            );
        }
        for m in a
            .get("base_bdevs_list")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let _ = writeln!(
                out,
                "    {:>3}  {:<24} {}{}",
                m.get("role")
                    .and_then(Value::as_u64)
                    .map_or("-".into(), |r| r.to_string()),
                m.get("name").and_then(Value::as_str).unwrap_or("(missing)"),
                s(m, "state"),
                if m.get("write_mostly").and_then(Value::as_bool) == Some(true) {
                    " write-mostly"
                } else {
                    ""
                },
            );
        }
    }
    out
}

fn status(sock: &Path, json: bool, watch: Option<f64>) -> ExitCode {
    let t = Duration::from_secs(10);
    loop {
        let arrays = match rpc_call(sock, "bdev_mdraid_get_bdevs", None, t) {
            Ok(v) => v,
            Err(e) => {
                print_client_error(&e);
                return ExitCode::FAILURE;
            }
        };
        let text = if json {
            serde_json::to_string_pretty(&arrays).unwrap_or_default() + "\n"
        } else {
            let bdevs = rpc_call(sock, "bdev_get_bdevs", None, t).unwrap_or(Value::Null);
            status_text(
                arrays.as_array().map(Vec::as_slice).unwrap_or(&[]),
                bdevs.as_array().map(Vec::as_slice).unwrap_or(&[]),
            )
        };
        match watch {
            None => {
                print!("{text}");
                return ExitCode::SUCCESS;
            }
            Some(secs) => {
                print!("\x1b[H\x1b[2J{text}");
                use std::io::Write;
                let _ = std::io::stdout().flush();
                std::thread::sleep(Duration::from_secs_f64(secs.clamp(0.1, 3600.0)));
            }
        }
    }
}

fn main() -> ExitCode {
    init_log();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(a) => serve(a),
        Cmd::Rpc {
            sock,
            timeout,
            method,
            params,
        } => rpc(&sock, timeout, &method, params.as_deref()),
        Cmd::Examine { json, files } => examine(json, &files),
        Cmd::Status { sock, json, watch } => status(&sock, json, watch),
    }
}
