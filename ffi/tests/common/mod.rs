//! Helpers of the SPDK test files that run several SPDK processes
//! (`spdk_fail`, `spdk_nvmf`, `spdk_fio`): the environment, processes
//! under `timeout` with an RPC socket and a log, rpc.py, bdevperf's
//! `perform_tests`, superblocks read back from member files.
//!
//! Every process runs under `timeout` and is stopped (SIGTERM, then
//! SIGKILL) when its handle drops; sockets are unix sockets and TCP on
//! 127.0.0.1 only.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bdev_raid::ondisk::{Superblock, SB_BLOCK_BYTES, SB_OFFSET_BYTES};

/// SPDK app options of every process: no hugepages, no PCI, and no core
/// lock files (several processes of a test, and tests elsewhere on the
/// machine, may share a core).
pub const APP_OPTS: &[&str] = &["--no-huge", "--no-pci", "--disable-cpumask-locks"];

/// One test at a time: SPDK processes poll a core each.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Env {
    pub spdk: PathBuf,
    /// The cdylib, for `LD_PRELOAD`.
    pub so: PathBuf,
    /// This test's scratch directory.
    pub dir: PathBuf,
}

/// The test's environment, or None (after saying so) without `SPDK_DIR`.
pub fn spdk_env(test: &str) -> Option<Env> {
    let Some(dir) = std::env::var_os("SPDK_DIR").filter(|d| !d.is_empty()) else {
        println!("SPDK tests skipped: SPDK_DIR not set");
        return None;
    };
    if !cfg!(mdraid_spdk) {
        panic!("SPDK_DIR is set but mdraid-spdk was built without SPDK");
    }
    let spdk = PathBuf::from(dir);
    let exe = std::env::current_exe().expect("test executable");
    let deps = exe.parent().expect("target directory");
    let so = [deps, deps.parent().unwrap_or(deps)]
        .iter()
        .map(|d| d.join("libmdraid_spdk.so"))
        .find(|p| p.exists())
        .expect("libmdraid_spdk.so not built");
    let dir = std::env::temp_dir().join(format!("mdraid-spdk-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test directory");
    Some(Env { spdk, so, dir })
}

impl Env {
    /// SPDK's fio bdev plugin, if it and fio are there; else None after
    /// printing SKIP (a failure with MDRAID_REQUIRE_TOOLS=1, as CI runs).
    pub fn fio_plugin(&self, test: &str) -> Option<PathBuf> {
        let plugin = self.spdk.join("build/fio/spdk_bdev");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let missing = if !std::env::split_paths(&path).any(|d| d.join("fio").is_file()) {
            "`fio` not found (scripts/install-deps.sh installs it)".to_string()
        } else if !plugin.is_file() {
            format!(
                "{} not found (configure SPDK --with-fio=<fio source>)",
                plugin.display()
            )
        } else {
            return Some(plugin);
        };
        assert!(
            std::env::var("MDRAID_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "{test}: {missing}, and MDRAID_REQUIRE_TOOLS=1"
        );
        println!("SKIP: {test}: {missing}");
        None
    }

    pub fn libdir(&self) -> PathBuf {
        self.spdk.join("build/lib")
    }

    pub fn bdevperf(&self) -> PathBuf {
        self.spdk.join("build/examples/bdevperf")
    }

    pub fn nvmf_tgt(&self) -> PathBuf {
        self.spdk.join("build/bin/nvmf_tgt")
    }

    pub fn nvme_perf(&self) -> PathBuf {
        self.spdk.join("build/bin/spdk_nvme_perf")
    }

    pub fn mdraid_tgt(&self) -> PathBuf {
        PathBuf::from(env!("CARGO_BIN_EXE_mdraid_tgt"))
    }

    /// `timeout -k 5 SECS env [LD_PRELOAD=...] PROG` (the preload goes to
    /// the program only), run in the test's directory: a core dump of an
    /// app that aborts lands there, not in the source tree.
    pub fn app(&self, secs: u32, prog: &Path, preload: &[&Path]) -> Command {
        let mut c = Command::new("timeout");
        c.args(["-k", "5"]).arg(secs.to_string()).arg("env");
        if !preload.is_empty() {
            let list: Vec<String> = preload.iter().map(|p| p.display().to_string()).collect();
            c.arg(format!("LD_PRELOAD={}", list.join(" ")));
        }
        c.arg(prog)
            .current_dir(&self.dir)
            .env("LD_LIBRARY_PATH", self.libdir())
            .stdin(Stdio::null());
        c
    }

    /// `n` sparse files of `mib` MiB in the test directory.
    pub fn files(&self, n: usize, mib: u64) -> Vec<PathBuf> {
        (0..n)
            .map(|i| {
                let p = self.dir.join(format!("f{i}"));
                let f = std::fs::File::create(&p).unwrap();
                f.set_len(mib << 20).unwrap();
                p
            })
            .collect()
    }

    /// rpc.py (with the mdraid plugin) on `sock`; (success, output).
    pub fn rpc(&self, sock: &Path, args: &[&str]) -> (bool, String) {
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts");
        let out = Command::new("timeout")
            .args(["60", "python3"])
            .arg(self.spdk.join("scripts/rpc.py"))
            .arg("-s")
            .arg(sock)
            .args(["-t", "50", "--plugin", "rpc_mdraid_plugin"])
            .args(args)
            .env("PYTHONPATH", scripts)
            .stdin(Stdio::null())
            .output()
            .expect("run rpc.py");
        (out.status.success(), text(&out))
    }

    pub fn cleanup(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A free TCP port on 127.0.0.1 (free when asked).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `{"subsystems":[{"subsystem":NAME,"config":[ENTRIES]}, ...]}`.
pub fn config(subsystems: &[(&str, &[String])]) -> String {
    let s: Vec<String> = subsystems
        .iter()
        .map(|(name, entries)| {
            format!(
                r#"{{"subsystem":"{name}","config":[{}]}}"#,
                entries.join(",")
            )
        })
        .collect();
    format!(r#"{{"subsystems":[{}]}}"#, s.join(","))
}

pub fn aio(name: &str, file: &Path) -> String {
    format!(
        r#"{{"method":"bdev_aio_create","params":{{"name":"{name}","filename":"{}","block_size":512}}}}"#,
        file.display()
    )
}

pub fn mdraid_create(name: &str, level: &str, members: &[&str]) -> String {
    format!(
        r#"{{"method":"bdev_mdraid_create","params":{{"name":"{name}","raid_level":"{level}","base_bdevs":"{}","strip_size_kb":64}}}}"#,
        members.join(" ")
    )
}

/// [`mdraid_create`] on fresh (zeroed) members, with no initial resync:
/// for tests that check the superblocks are clean after a short run.
pub fn mdraid_create_fresh(name: &str, level: &str, members: &[&str]) -> String {
    mdraid_create(name, level, members).replace(
        r#""strip_size_kb":64"#,
        r#""strip_size_kb":64,"assume_clean":true"#,
    )
}

/// NVMe-oF entries exporting `bdev` as the one namespace of `nqn` on
/// 127.0.0.1:`port` over TCP.
pub fn nvmf_export(nqn: &str, bdev: &str, port: u16) -> Vec<String> {
    vec![
        r#"{"method":"nvmf_create_transport","params":{"trtype":"TCP"}}"#.to_string(),
        format!(
            r#"{{"method":"nvmf_create_subsystem","params":{{"nqn":"{nqn}","allow_any_host":true,"serial_number":"MDRAID{port}"}}}}"#
        ),
        format!(
            r#"{{"method":"nvmf_subsystem_add_ns","params":{{"nqn":"{nqn}","namespace":{{"bdev_name":"{bdev}"}}}}}}"#
        ),
        format!(
            r#"{{"method":"nvmf_subsystem_add_listener","params":{{"nqn":"{nqn}","listen_address":{{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.1","trsvcid":"{port}"}}}}}}"#
        ),
    ]
}

/// `bdev_nvme_attach_controller` over TCP to 127.0.0.1:`port`; `extra`
/// are more params (e.g. the reconnect options), JSON members.
pub fn nvme_attach(name: &str, nqn: &str, port: u16, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(",{extra}")
    };
    format!(
        r#"{{"method":"bdev_nvme_attach_controller","params":{{"name":"{name}","trtype":"tcp","adrfam":"ipv4","traddr":"127.0.0.1","trsvcid":"{port}","subnqn":"{nqn}"{extra}}}}}"#
    )
}

/// Write `cfg` to `name` in the test directory.
pub fn write_cfg(env: &Env, name: &str, cfg: &str) -> PathBuf {
    let p = env.dir.join(name);
    std::fs::write(&p, cfg).unwrap();
    p
}

// ------------------------------------------------------------ processes

/// An SPDK process (under `timeout`) with an RPC socket and a log file.
pub struct Proc {
    pub child: Child,
    pub sock: PathBuf,
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    /// Spawn `cmd` (already given `-r sock`), logging to `NAME.log`, and
    /// wait (at most 60 s) for its RPC socket.
    pub fn spawn(env: &Env, name: &str, mut cmd: Command, sock: &Path) -> Proc {
        let log = env.dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let mut p = Proc {
            child,
            sock: sock.to_path_buf(),
            log,
            name: name.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !p.sock.exists() {
            if let Ok(Some(s)) = p.child.try_wait() {
                panic!(
                    "{name} exited ({s}) before opening its RPC socket:\n{}",
                    p.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not open its RPC socket:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn rpc(&self, env: &Env, args: &[&str]) -> (bool, String) {
        env.rpc(&self.sock, args)
    }

    /// The call succeeds; its output.
    pub fn ok(&self, env: &Env, args: &[&str]) -> String {
        let (ok, out) = self.rpc(env, args);
        assert!(
            ok,
            "rpc.py {args:?} on {} failed:\n{out}\nlog:\n{}",
            self.name,
            self.log_text()
        );
        out
    }

    pub fn json(&self, env: &Env, args: &[&str]) -> serde_json::Value {
        let out = self.ok(env, args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("rpc.py {args:?}: {e}: {out}"))
    }

    /// The SPDK app's pid (the child of `timeout`).
    pub fn app_pid(&self) -> Option<u32> {
        let pid = self.child.id();
        let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        kids.split_whitespace().next()?.parse().ok()
    }

    /// SIGKILL the SPDK app (not `timeout`, which then exits too).
    pub fn kill9(&mut self) {
        let pid = self.app_pid().expect("the SPDK app's pid");
        let ok = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -9 {pid} ({})", self.name);
        self.wait(30).expect("the killed app to exit");
    }

    /// Wait at most `secs` for the process to exit.
    pub fn wait(&mut self, secs: u64) -> Option<ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop the app with `spdk_kill_instance SIGTERM` and wait for it: it
    /// exits with success. Returns its log.
    pub fn stop(&mut self, env: &Env) -> String {
        self.ok(env, &["spdk_kill_instance", "SIGTERM"]);
        let status = self.wait(60);
        let log = self.log_text();
        let status = status.unwrap_or_else(|| panic!("{} did not stop:\n{log}", self.name));
        assert!(
            status.success(),
            "{} exited with {status}:\n{log}",
            self.name
        );
        assert!(!log.contains("mdraid: panic"), "{log}");
        log
    }

    fn signal(&self, sig: &str, pid: u32) {
        let _ = Command::new("kill")
            .args([sig, &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // `timeout` passes SIGTERM on to the app; SIGKILL both if that
        // is not enough.
        let app = self.app_pid();
        self.signal("-TERM", self.child.id());
        if self.wait(10).is_none() {
            if let Some(pid) = app {
                self.signal("-KILL", pid);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `bdevperf.py perform_tests` on a bdevperf started with `-z`, in the
/// background; [`PerfRun::results`] waits for it.
pub struct PerfRun(Child);

pub fn perform_tests(env: &Env, sock: &Path, secs: u32) -> PerfRun {
    let child = Command::new("timeout")
        .arg(secs.to_string())
        .arg("python3")
        .arg(env.spdk.join("examples/bdev/bdevperf/bdevperf.py"))
        .arg("-s")
        .arg(sock)
        .args(["-t", &secs.to_string(), "perform_tests"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bdevperf.py");
    PerfRun(child)
}

/// One job's result from `perform_tests`.
#[derive(Debug)]
pub struct JobResult {
    pub iops: f64,
    pub io_failed: u64,
    pub io_timeout: u64,
    pub status: String,
}

impl PerfRun {
    /// Whether `perform_tests` succeeded, and what it printed.
    pub fn finish(self) -> (bool, String) {
        let out = self.0.wait_with_output().expect("bdevperf.py");
        (out.status.success(), text(&out))
    }

    pub fn results(self) -> (JobResult, String) {
        let out = self.0.wait_with_output().expect("bdevperf.py");
        let t = text(&out);
        assert!(
            out.status.success(),
            "perform_tests failed ({}):\n{t}",
            out.status
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("perform_tests output: {e}:\n{t}"));
        let j = &v["results"][0];
        let r = JobResult {
            iops: j["iops"].as_f64().unwrap_or(0.0),
            io_failed: j["io_failed"].as_u64().expect("io_failed"),
            io_timeout: j["io_timeout"].as_u64().unwrap_or(0),
            status: j["status"].as_str().unwrap_or_default().to_string(),
        };
        (r, t)
    }

    /// The results of a run that must have finished with I/O done and
    /// none failed or timed out (printed under `what`).
    pub fn clean(self, what: &str) -> JobResult {
        let (res, out) = self.results();
        println!("{what}: {res:?}");
        assert_eq!(res.status, "finished", "{out}");
        assert!(res.iops > 0.0, "{out}");
        assert_eq!(res.io_failed, 0, "I/O errors reached bdevperf:\n{out}");
        assert_eq!(res.io_timeout, 0, "{out}");
        res
    }
}

/// bdevperf's `Total` line: (IOPS, Fail/s, TO/s).
pub fn totals(out: &str) -> Option<(f64, f64, f64)> {
    let line = out.lines().find(|l| l.trim_start().starts_with("Total"))?;
    let nums: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums.len() >= 4).then(|| (nums[0], nums[2], nums[3]))
}

// ------------------------------------------------------------ arrays

/// `bdev_mdraid_get_bdevs -n NAME`: the one array.
pub fn array_info(p: &Proc, env: &Env, name: &str) -> serde_json::Value {
    let v = p.json(env, &["bdev_mdraid_get_bdevs", "-n", name]);
    v.as_array()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or_else(|| panic!("no array {name}: {v}"))
}

/// The members' states, in role order.
pub fn member_states(info: &serde_json::Value) -> Vec<String> {
    info["base_bdevs_list"]
        .as_array()
        .expect("base_bdevs_list")
        .iter()
        .map(|m| m["state"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The md superblock of a member file.
pub fn read_sb(f: &Path) -> Superblock {
    let data = std::fs::read(f).unwrap();
    let off = SB_OFFSET_BYTES as usize;
    Superblock::decode(&data[off..off + SB_BLOCK_BYTES], data.len() as u64 / 512)
        .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
}
