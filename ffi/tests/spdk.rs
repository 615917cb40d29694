//! The SPDK host against real SPDK apps: the cdylib `LD_PRELOAD`ed into
//! stock bdevperf and spdk_tgt, one SPDK process per test, every process
//! under `timeout`.
//!
//! They run when `SPDK_DIR` points at an SPDK tree built with shared
//! libraries (the crate is then built with SPDK); without it each test
//! prints "SPDK tests skipped: SPDK_DIR not set" and passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{member_states, serial, spdk_env, text, Env};

/// bdevperf's `Total` line: (IOPS, Fail/s, TO/s).
fn totals(out: &str) -> Option<(f64, f64, f64)> {
    let line = out.lines().find(|l| l.trim_start().starts_with("Total"))?;
    let nums: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    // IOPS, MiB/s, Fail/s, TO/s, avg, min, max
    (nums.len() >= 4).then(|| (nums[0], nums[2], nums[3]))
}

fn malloc_members(n: usize, blocks: u64) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"method":"bdev_malloc_create","params":{{"name":"m{i}","num_blocks":{blocks},"block_size":512}}}}"#
            )
        })
        .collect()
}

fn config(entries: &[String]) -> String {
    format!(
        r#"{{"subsystems":[{{"subsystem":"bdev","config":[{}]}}]}}"#,
        entries.join(",")
    )
}

/// bdevperf `-w verify` for 3 s over array `r` (queue depth `qd`, I/O
/// size `io`); checks the run and returns bdevperf's output.
fn bdevperf_verify(env: &Env, cfg: &str, what: &str, qd: u32, io: u32) -> String {
    let (qd, io) = (qd.to_string(), io.to_string());
    bdevperf(env, cfg, what, &["-q", &qd, "-o", &io, "-w", "verify"])
}

/// bdevperf with `args` for 3 s over array `r`; checks the run (no I/O
/// failed, the array stopped cleanly) and returns bdevperf's output.
fn bdevperf(env: &Env, cfg: &str, what: &str, args: &[&str]) -> String {
    let path = env.dir.join("bdevperf.json");
    std::fs::write(&path, cfg).unwrap();
    let out = env
        .app(60, &env.spdk.join("build/examples/bdevperf"), &[&env.so])
        .args(["--no-huge", "-s", "2048", "--no-pci", "--json"])
        .arg(&path)
        .args(args)
        .args(["-t", "3", "-T", "r"])
        .stdin(Stdio::null())
        .output()
        .expect("run bdevperf");
    let t = text(&out);
    assert!(
        out.status.success(),
        "{what}: bdevperf failed ({}):\n{t}",
        out.status
    );
    let (iops, fails, timeouts) =
        totals(&t).unwrap_or_else(|| panic!("{what}: no Total line:\n{t}"));
    for l in t
        .lines()
        .filter(|l| l.contains("Total") || l.contains("mdraid"))
    {
        println!("{what}: {}", l.trim());
    }
    assert!(iops > 0.0, "{what}: no I/O done:\n{t}");
    assert_eq!(fails, 0.0, "{what}: I/O errors:\n{t}");
    assert_eq!(timeouts, 0.0, "{what}: I/O timeouts:\n{t}");
    assert!(!t.contains("*ERROR*"), "{what}: SPDK logged errors:\n{t}");
    assert!(
        t.contains("mdraid r: stopped"),
        "{what}: the array did not stop cleanly:\n{t}"
    );
    t
}

/// A verify run over `level` on `members` malloc bdevs; `first` config
/// entries go before them.
fn verify_on_malloc(level: &str, members: usize, test: &str, first: &[String], qd: u32, io: u32) {
    let Some(env) = spdk_env(test) else { return };
    let _g = serial();
    let mut entries = first.to_vec();
    entries.extend(malloc_members(members, 65536));
    let names: Vec<String> = (0..members).map(|i| format!("\"m{i}\"")).collect();
    entries.push(format!(
        r#"{{"method":"bdev_mdraid_create","params":{{"name":"r","raid_level":"{level}","base_bdevs":[{}],"strip_size_kb":64}}}}"#,
        names.join(",")
    ));
    let out = bdevperf_verify(&env, &config(&entries), test, qd, io);
    assert!(out.contains(&format!("created {level} array")), "{out}");
    let _ = std::fs::remove_dir_all(&env.dir);
}

#[test]
fn bdevperf_verify_raid1() {
    verify_on_malloc("raid1", 2, "raid1", &[], 32, 4096);
}

#[test]
fn bdevperf_verify_raid10() {
    verify_on_malloc("raid10", 4, "raid10", &[], 32, 4096);
}

#[test]
fn bdevperf_verify_raid6() {
    verify_on_malloc("raid6", 4, "raid6", &[], 32, 4096);
}

/// Random writes over a raid1 of 1 MiB from two threads at depth 64:
/// most writes overlap one in flight, on the same thread or the other.
/// Each waits outside the engine for the direct writes holding its range
/// lock (`ChanCtx::park`), retried when one of them ends or by the
/// poller; none may be lost (bdevperf would time out) or fail.
#[test]
fn bdevperf_randwrite_overlapping_raid1() {
    let test = "raid1-overlap";
    let Some(env) = spdk_env(test) else { return };
    let _g = serial();
    // 2 MiB members with 512-byte blocks: 1 MiB of data after md's
    // superblock area.
    let mut entries = malloc_members(2, 4096);
    entries.push(
        r#"{"method":"bdev_mdraid_create","params":{"name":"r","raid_level":"raid1","base_bdevs":["m0","m1"]}}"#
            .to_string(),
    );
    let args: Vec<&str> = "-m 0x3 -C -q 64 -o 4096 -w randwrite".split(' ').collect();
    let t = bdevperf(&env, &config(&entries), test, &args);
    let held: u64 = t
        .lines()
        .filter_map(|l| l.split("a channel held writes back ").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(held > 0, "no write waited for an overlapping one:\n{t}");
    let _ = std::fs::remove_dir_all(&env.dir);
}

/// R2: a bdev_io pool smaller than the parents in flight plus their
/// children, so member submissions keep failing with -ENOMEM and wait
/// with spdk_bdev_queue_io_wait; not one I/O may fail.
#[test]
fn bdevperf_verify_raid5_bdev_io_pool_exhausted() {
    let opts = r#"{"method":"bdev_set_options","params":{"bdev_io_pool_size":256,"bdev_io_cache_size":16}}"#;
    verify_on_malloc("raid5", 4, "raid5-enomem", &[opts.to_string()], 128, 65536);
}

/// raid5 on aio file members: verify, then the files carry md superblocks
/// marked clean; a second run assembles the same array from them.
#[test]
fn bdevperf_verify_raid5_files_superblocks() {
    use bdev_raid::ondisk::{Superblock, SB_BLOCK_BYTES, SB_OFFSET_BYTES};
    let Some(env) = spdk_env("raid5") else { return };
    let _g = serial();
    let files: Vec<PathBuf> = (0..4).map(|i| env.dir.join(format!("f{i}"))).collect();
    for f in &files {
        let fd = std::fs::File::create(f).unwrap();
        fd.set_len(32 << 20).unwrap();
    }
    let mut entries: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            format!(
                r#"{{"method":"bdev_aio_create","params":{{"name":"a{i}","filename":"{}","block_size":512}}}}"#,
                f.display()
            )
        })
        .collect();
    entries.push(
        // Fresh (zeroed) files: no initial resync, so the stop after the
        // run marks the array clean however short the run.
        r#"{"method":"bdev_mdraid_create","params":{"name":"r","raid_level":"raid5","base_bdevs":"a0 a1 a2 a3","strip_size_kb":64,"assume_clean":true}}"#
            .to_string(),
    );
    let cfg = config(&entries);
    let out = bdevperf_verify(&env, &cfg, "raid5", 32, 4096);
    assert!(out.contains("created raid5 array"), "{out}");
    let read_sbs = || -> Vec<Superblock> {
        files
            .iter()
            .map(|f| {
                let data = std::fs::read(f).unwrap();
                let off = SB_OFFSET_BYTES as usize;
                Superblock::decode(&data[off..off + SB_BLOCK_BYTES], data.len() as u64 / 512)
                    .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            })
            .collect()
    };
    let sbs = read_sbs();
    for (role, sb) in sbs.iter().enumerate() {
        assert!(sb.is_clean(), "role {role} not marked clean: {sb:?}");
        assert_eq!(sb.set_uuid, sbs[0].set_uuid);
        assert_eq!(sb.events, sbs[0].events);
        assert!(sb.events > 0, "the array never went dirty");
    }
    let events = sbs[0].events;
    let out = bdevperf_verify(&env, &cfg, "raid5 again", 32, 4096);
    assert!(out.contains("assembled raid5 array"), "{out}");
    let sbs = read_sbs();
    assert!(sbs.iter().all(|sb| sb.is_clean() && sb.events > events));
    let _ = std::fs::remove_dir_all(&env.dir);
}

// ------------------------------------------------------------ spdk_tgt

/// An spdk_tgt process, killed if a test fails before it stops it.
struct Tgt {
    child: std::process::Child,
    sock: PathBuf,
    log: PathBuf,
}

impl Drop for Tgt {
    fn drop(&mut self) {
        // `timeout` passes SIGTERM on to spdk_tgt (a SIGKILL of `timeout`
        // would leave spdk_tgt running, holding core 0); SIGKILL both if
        // that is not enough.
        let pid = self.child.id();
        let app = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|k| k.split_whitespace().next().map(str::to_string));
        let kill = |sig: &str, pid: &str| {
            let _ = Command::new("kill")
                .args([sig, pid])
                .stderr(Stdio::null())
                .status();
        };
        kill("-TERM", &pid.to_string());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(app) = app {
            kill("-KILL", &app);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tgt {
    /// An aio bdev `name` over file `f`, 512-byte blocks.
    fn aio(&self, env: &Env, name: &str, f: &Path) {
        self.ok(env, &["bdev_aio_create", f.to_str().unwrap(), name, "512"]);
    }

    fn start(env: &Env) -> Tgt {
        Tgt::start_with(env, None)
    }

    /// spdk_tgt loading `config` (`--json`) when given.
    fn start_with(env: &Env, config: Option<&Path>) -> Tgt {
        let sock = env.dir.join("tgt.sock");
        let log = env.dir.join("tgt.log");
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = env.app(120, &env.spdk.join("build/bin/spdk_tgt"), &[&env.so]);
        cmd.args(["--no-huge", "-s", "2048", "--no-pci", "-r"])
            .arg(&sock);
        if let Some(c) = config {
            cmd.arg("--json").arg(c);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("start spdk_tgt");
        let t = Tgt { child, sock, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !t.sock.exists() {
            assert!(
                Instant::now() < deadline,
                "spdk_tgt did not open its RPC socket:\n{}",
                t.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        t
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stop it through `spdk_kill_instance SIGTERM`; its exit status.
    fn terminate(&mut self, env: &Env) -> std::process::ExitStatus {
        self.ok(env, &["spdk_kill_instance", "SIGTERM"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "spdk_tgt did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// rpc.py with the mdraid plugin; (success, stdout+stderr).
    fn rpc(&self, env: &Env, args: &[&str]) -> (bool, String) {
        env.rpc(&self.sock, args)
    }

    fn ok(&self, env: &Env, args: &[&str]) -> String {
        let (ok, out) = self.rpc(env, args);
        assert!(
            ok,
            "rpc.py {args:?} failed:\n{out}\nspdk_tgt log:\n{}",
            self.log_text()
        );
        out
    }

    /// The call fails with `code` and a message containing `needle`.
    fn fails(&self, env: &Env, args: &[&str], code: i32, needle: &str) {
        let (ok, out) = self.rpc(env, args);
        assert!(!ok, "rpc.py {args:?} succeeded:\n{out}");
        assert!(
            out.contains(&format!("\"code\": {code}")) && out.contains(needle),
            "rpc.py {args:?}: expected code {code} and `{needle}`:\n{out}"
        );
    }

    fn claimed(&self, env: &Env, bdev: &str) -> bool {
        let out = self.ok(env, &["bdev_get_bdevs", "-b", bdev]);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        v[0]["claimed"].as_bool().expect("claimed")
    }
}

/// A member replaced and rebuilt is made after its array, so SPDK's
/// save_config puts its create after the array's: spdk_tgt starts from
/// that config all the same, and the array comes back whole (examine
/// assembles it once the member appears).
#[test]
fn spdk_tgt_saved_config_with_a_member_made_after_its_array() {
    member_made_after_its_array("order", &[1]);
}

/// Every member replaced (one at a time) since the array was made: all of
/// them come after the array's create in the saved config, none exists
/// when it is replayed (the target did not start).
#[test]
fn spdk_tgt_saved_config_with_every_member_made_after_its_array() {
    member_made_after_its_array("order-all", &[0, 1]);
}

/// A raid1 of a0, a1 whose members `replaced` were deleted, made again
/// and added back (rebuilt): saved, the target restarted from the saved
/// config brings the array back.
fn member_made_after_its_array(tag: &str, replaced: &[usize]) {
    let Some(env) = spdk_env(tag) else {
        return;
    };
    let _g = serial();
    let files = new_files(&env, "g", 2, 32 << 20);
    let mut tgt = Tgt::start(&env);
    tgt.aio(&env, "a0", &files[0]);
    tgt.aio(&env, "a1", &files[1]);
    tgt.ok(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "md",
            "-r",
            "raid1",
            "-b",
            "a0 a1",
            "--assume-clean",
        ],
    );
    for &i in replaced {
        let name = format!("a{i}");
        tgt.ok(&env, &["bdev_aio_delete", &name]);
        tgt.aio(&env, &name, &files[i]);
        tgt.ok(&env, &["bdev_mdraid_add_base_bdev", "md", &name]);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = tgt.ok(&env, &["bdev_mdraid_get_bdevs", "-n", "md"]);
            let v: serde_json::Value =
                serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
            let info = v[0].clone();
            if info["process"].is_null() && member_states(&info) == ["in_sync", "in_sync"] {
                break;
            }
            assert!(Instant::now() < deadline, "rebuild did not end: {info}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    tgt.ok(&env, &["bdev_mdraid_set_options", "-w", "256", "-b", "50"]);
    let saved = tgt.ok(&env, &["save_config"]);
    let at = |m: &str| {
        saved
            .find(m)
            .unwrap_or_else(|| panic!("no `{m}` in\n{saved}"))
    };
    for &i in replaced {
        assert!(
            at("\"bdev_mdraid_create\"") < at(files[i].to_str().unwrap()),
            "the array's create is not before its member's:\n{saved}"
        );
    }
    // The process options are saved, before the arrays (SPDK writes
    // module options first).
    assert!(
        at("\"bdev_mdraid_set_options\"") < at("\"bdev_mdraid_create\""),
        "{saved}"
    );
    assert!(saved.contains("\"process_window_size_kb\": 256"), "{saved}");
    let cfg = env.dir.join("saved.json");
    std::fs::write(&cfg, &saved).unwrap();
    let status = tgt.terminate(&env);
    assert!(status.success(), "{}", tgt.log_text());
    drop(tgt);

    let tgt = Tgt::start_with(&env, Some(&cfg));
    let info = wait_for_array(&env, &tgt, "md");
    assert_eq!(member_states(&info), ["in_sync", "in_sync"], "{info}");
    let again = tgt.ok(&env, &["save_config"]);
    assert!(
        again.contains("\"process_max_bandwidth_mb_sec\": 50"),
        "{again}"
    );
    assert!(
        tgt.log_text().contains("examine assembles md array"),
        "{}",
        tgt.log_text()
    );
    env.cleanup();
}

/// A saved config replayed with a member missing: the array waits for it.
/// It is listed as `configuring` (as SPDK's raid lists one), its create
/// is saved again (a config saved while it waits keeps it), its name is
/// not taken by another array, and it comes back under that name once the
/// member appears. A waiting array can also be deleted.
#[test]
fn spdk_tgt_an_array_waiting_for_members_is_listed_saved_and_deleted() {
    let Some(env) = spdk_env("waiting") else {
        return;
    };
    let _g = serial();
    let (mut tgt, files) = tgt_with_aio(&env, "w", 2);
    tgt.ok(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "md",
            "-r",
            "raid1",
            "-b",
            "w0 w1",
            "--assume-clean",
        ],
    );
    let saved = tgt.ok(&env, &["save_config"]);
    assert!(tgt.terminate(&env).success(), "{}", tgt.log_text());
    drop(tgt);
    // The config without w1's aio bdev.
    let mut cfg: serde_json::Value = serde_json::from_str(&saved).unwrap();
    for sub in cfg["subsystems"].as_array_mut().unwrap() {
        if let Some(c) = sub["config"].as_array_mut() {
            c.retain(|m| m["params"]["name"] != "w1");
        }
    }
    let missing = env.dir.join("missing.json");
    std::fs::write(&missing, cfg.to_string()).unwrap();

    let mut tgt = Tgt::start_with(&env, Some(&missing));
    let get = |t: &Tgt, cat: &str| -> serde_json::Value {
        let out = t.ok(&env, &["bdev_mdraid_get_bdevs", cat]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    assert_eq!(get(&tgt, "online"), serde_json::json!([]));
    let w = get(&tgt, "configuring");
    let a = &w[0];
    assert_eq!(w.as_array().unwrap().len(), 1, "{w}");
    assert_eq!(a["name"], "md", "{a}");
    assert_eq!(a["state"], "configuring", "{a}");
    assert_eq!(a["raid_level"], "raid1", "{a}");
    assert_eq!(a["num_base_bdevs"], 2, "{a}");
    assert_eq!(a["num_base_bdevs_discovered"], 1, "{a}");
    let slots: Vec<(String, String)> = a["base_bdevs_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap_or("").to_string(),
                b["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        slots,
        [
            ("w0".into(), "discovered".into()),
            ("w1".into(), "missing".into())
        ],
        "{a}"
    );
    assert_eq!(get(&tgt, "all"), w);
    // By name too.
    let by_name = tgt.ok(&env, &["bdev_mdraid_get_bdevs", "-n", "md"]);
    assert!(by_name.contains("\"configuring\""), "{by_name}");
    // Another array cannot take its name.
    tgt.ok(&env, &["bdev_malloc_create", "-b", "x0", "8", "512"]);
    tgt.ok(&env, &["bdev_malloc_create", "-b", "x1", "8", "512"]);
    let (ok, out) = tgt.rpc(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "md",
            "-r",
            "raid1",
            "-b",
            "x0 x1",
        ],
    );
    assert!(!ok && out.contains("waits for its members"), "{out}");
    assert!(!tgt.claimed(&env, "x0"), "a refused create claimed x0");
    // A create left to examine still needs a free name.
    let (ok, out) = tgt.rpc(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "x0",
            "-r",
            "raid1",
            "-b",
            "nowhere",
            "--uuid",
            "11111111-2222-3333-4444-555555555555",
        ],
    );
    assert!(!ok && out.contains("already exists"), "{out}");
    // A bdev of another kind is named as such.
    for m in ["bdev_mdraid_delete", "bdev_mdraid_get_bdevs"] {
        let args: &[&str] = if m == "bdev_mdraid_delete" {
            &[m, "x0"]
        } else {
            &[m, "-n", "x0"]
        };
        let (ok, out) = tgt.rpc(&env, args);
        assert!(
            !ok && out.contains("bdev x0 is not an mdraid array"),
            "{m}: {out}"
        );
    }
    // Saved while waiting: the create is kept, before every bdev (SPDK
    // writes module configs first).
    let again = tgt.ok(&env, &["save_config"]);
    let at = |m: &str| {
        again
            .find(m)
            .unwrap_or_else(|| panic!("no `{m}` in\n{again}"))
    };
    assert!(
        at("\"bdev_mdraid_create\"") < at(files[0].to_str().unwrap()),
        "{again}"
    );
    assert!(
        again.contains(&format!("\"uuid\": \"{}\"", a["uuid"].as_str().unwrap())),
        "{again}"
    );
    let resaved = env.dir.join("resaved.json");
    std::fs::write(&resaved, &again).unwrap();
    assert!(tgt.terminate(&env).success(), "{}", tgt.log_text());
    drop(tgt);

    // Replayed again, it still waits; once w1 appears, the array comes
    // back under its name, whole.
    let mut tgt = Tgt::start_with(&env, Some(&resaved));
    assert_eq!(get(&tgt, "configuring")[0]["name"], "md");
    tgt.aio(&env, "w1", &files[1]);
    let info = wait_for_array(&env, &tgt, "md");
    assert_eq!(info["state"], "online", "{info}");
    assert_eq!(member_states(&info), ["in_sync", "in_sync"], "{info}");
    assert_eq!(get(&tgt, "configuring"), serde_json::json!([]));
    assert!(tgt.terminate(&env).success(), "{}", tgt.log_text());
    drop(tgt);

    // Deleted while it waits: gone from the list and from the saved config.
    let mut tgt = Tgt::start_with(&env, Some(&missing));
    assert_eq!(get(&tgt, "configuring")[0]["name"], "md");
    tgt.ok(&env, &["bdev_mdraid_delete", "md"]);
    assert_eq!(get(&tgt, "all"), serde_json::json!([]));
    let after = tgt.ok(&env, &["save_config"]);
    assert!(!after.contains("bdev_mdraid_create"), "{after}");
    let (ok, out) = tgt.rpc(&env, &["bdev_mdraid_delete", "md"]);
    assert!(!ok && out.contains("not found"), "{out}");
    assert!(tgt.terminate(&env).success(), "{}", tgt.log_text());
    env.cleanup();
}

/// A member of an array whose other members are gone: examine holds it
/// (listed as configuring) and no new array takes it, until
/// `bdev_mdraid_zero_superblock` wipes it (mdadm's `--zero-superblock`).
/// A member an array holds, an array, a blank bdev and an unknown one are
/// refused.
#[test]
fn spdk_tgt_zero_superblock_frees_a_member_of_a_gone_array() {
    let Some(env) = spdk_env("zerosb") else {
        return;
    };
    let _g = serial();
    let files = new_files(&env, "z", 4, 32 << 20);
    let mut tgt = Tgt::start(&env);
    for (i, f) in files[..3].iter().enumerate() {
        tgt.aio(&env, &format!("z{i}"), f);
    }
    tgt.ok(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "old",
            "-r",
            "raid5",
            "-z",
            "64",
            "-b",
            "z0 z1 z2",
        ],
    );
    let (ok, out) = tgt.rpc(&env, &["bdev_mdraid_zero_superblock", "z0"]);
    assert!(!ok && out.contains("claimed by `old`"), "{out}");
    let (ok, out) = tgt.rpc(&env, &["bdev_mdraid_zero_superblock", "old"]);
    assert!(!ok && out.contains("field `name`"), "{out}");
    assert!(tgt.terminate(&env).success(), "{}", tgt.log_text());
    drop(tgt);
    // Not wiped by the refused calls.
    assert_eq!(read_sb(&files[0]).array_name(), "old");

    // z1 and z2 are gone: examine holds z0 for `old`.
    let tgt = Tgt::start(&env);
    tgt.aio(&env, "z0", &files[0]);
    tgt.aio(&env, "z3", &files[3]);
    let waiting = tgt.ok(&env, &["bdev_mdraid_get_bdevs", "configuring"]);
    assert!(waiting.contains("\"old\""), "{waiting}");
    let (ok, out) = tgt.rpc(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "new",
            "-r",
            "raid1",
            "-b",
            "z0 z3",
        ],
    );
    assert!(!ok && out.contains("base_bdevs[1]"), "{out}");
    let (ok, out) = tgt.rpc(&env, &["bdev_mdraid_zero_superblock", "z3"]);
    assert!(!ok && out.contains("carries no md superblock"), "{out}");
    let (ok, out) = tgt.rpc(&env, &["bdev_mdraid_zero_superblock", "nope"]);
    assert!(!ok && out.contains("not found"), "{out}");
    tgt.ok(&env, &["bdev_mdraid_zero_superblock", "z0"]);
    assert!(
        read_sb_bytes(&files[0]).iter().all(|b| *b == 0),
        "z0's superblock block is not zeros"
    );
    assert!(!tgt.claimed(&env, "z0"), "the wipe kept its claim");
    assert_eq!(
        tgt.ok(&env, &["bdev_mdraid_get_bdevs", "configuring"])
            .trim(),
        "[]"
    );
    tgt.ok(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "new",
            "-r",
            "raid1",
            "-b",
            "z0 z3",
        ],
    );
    let info = wait_for_array(&env, &tgt, "new");
    assert_eq!(info["num_base_bdevs_discovered"], 2, "{info}");
    env.cleanup();
}

/// The 4 KiB where md v1.2 keeps its superblock.
fn read_sb_bytes(f: &Path) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; 4096];
    std::fs::File::open(f)
        .unwrap()
        .read_exact_at(&mut b, 4096)
        .unwrap();
    b
}

/// An add refused (a bdev too small) leaves the role as it was: the bdev
/// is not claimed (it is deleted at once), the role is
/// still listed without a member, and a right-sized bdev added after it
/// rebuilds the role.
#[test]
fn spdk_tgt_a_refused_add_leaves_the_role_as_it_was() {
    let Some(env) = spdk_env("refused-add") else {
        return;
    };
    let _g = serial();
    let tgt = Tgt::start(&env);
    for m in ["v0", "v1", "v2"] {
        tgt.ok(&env, &["bdev_malloc_create", "-b", m, "32", "512"]);
    }
    tgt.ok(&env, &["bdev_malloc_create", "-b", "small", "16", "512"]);
    tgt.ok(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "V",
            "-r",
            "raid1",
            "-b",
            "v0 v1",
            "--assume-clean",
        ],
    );
    tgt.ok(&env, &["bdev_mdraid_remove_base_bdev", "v1"]);
    let get = || -> serde_json::Value {
        let out = tgt.ok(&env, &["bdev_mdraid_get_bdevs", "-n", "V"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone()
    };
    let slot = |a: &serde_json::Value| a["base_bdevs_list"][1].clone();
    let before = slot(&get());
    let (ok, out) = tgt.rpc(&env, &["bdev_mdraid_add_base_bdev", "V", "small"]);
    assert!(!ok && out.contains("a member of `V` needs"), "{out}");
    let after = get();
    assert_eq!(slot(&after)["name"], before["name"], "{after}");
    assert_eq!(slot(&after)["state"], before["state"], "{after}");
    assert!(!tgt.claimed(&env, "small"), "a refused add kept its claim");
    tgt.ok(&env, &["bdev_malloc_delete", "small"]);
    tgt.ok(&env, &["bdev_mdraid_add_base_bdev", "V", "v2"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = get();
        if a["process"].is_null() && member_states(&a) == ["in_sync", "in_sync"] {
            assert_eq!(slot(&a)["name"], "v2", "{a}");
            break;
        }
        assert!(Instant::now() < deadline, "rebuild did not end: {a}");
        std::thread::sleep(Duration::from_millis(100));
    }
    env.cleanup();
}

/// A raid0 member hot-removed (an NVMe-oF path lost) takes the array
/// offline without being recorded faulty: once the bdev is back, the same
/// members assemble the array again.
#[test]
fn spdk_tgt_a_raid0_member_lost_and_back_assembles_again() {
    let Some(env) = spdk_env("raid0-back") else {
        return;
    };
    let _g = serial();
    let (tgt, files) = tgt_with_aio(&env, "x", 2);
    tgt.ok(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "rx",
            "-r",
            "raid0",
            "-z",
            "64",
            "-b",
            "x0 x1",
        ],
    );
    tgt.ok(&env, &["bdev_aio_delete", "x1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = tgt.ok(&env, &["bdev_mdraid_get_bdevs", "-n", "rx"]);
        if out.contains("\"offline\"") {
            break;
        }
        assert!(Instant::now() < deadline, "not offline: {out}");
        std::thread::sleep(Duration::from_millis(50));
    }
    tgt.ok(&env, &["bdev_mdraid_delete", "rx"]);
    for f in &files {
        let sb = read_sb(f);
        assert!(
            !sb.dev_roles.contains(&bdev_raid::ondisk::DevRole::Faulty),
            "{}: {:?}",
            f.display(),
            &sb.dev_roles[..2]
        );
    }
    tgt.aio(&env, "x1", &files[1]);
    tgt.ok(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "rx",
            "-r",
            "raid0",
            "-z",
            "64",
            "-b",
            "x0 x1",
        ],
    );
    let info = wait_for_array(&env, &tgt, "rx");
    assert_eq!(info["state"], "online", "{info}");
    assert!(
        tgt.log_text().contains("not recorded in the superblocks"),
        "{}",
        tgt.log_text()
    );
    env.cleanup();
}

/// The create save_config writes names the members in service only: not
/// one removed (`bdev_mdraid_remove_base_bdev`), nor one hot-removed, whose
/// bdevs may serve something else when the config is replayed; a member
/// added since is named.
#[test]
fn spdk_tgt_saved_create_names_the_members_in_service() {
    let Some(env) = spdk_env("saved-members") else {
        return;
    };
    let _g = serial();
    let tgt = Tgt::start(&env);
    for m in ["s0", "s1", "s2", "s3"] {
        tgt.ok(&env, &["bdev_malloc_create", "-b", m, "32", "512"]);
    }
    tgt.ok(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "S",
            "-r",
            "raid1",
            "-b",
            "s0 s1 s2",
            "--assume-clean",
        ],
    );
    tgt.ok(&env, &["bdev_mdraid_remove_base_bdev", "s1"]);
    tgt.ok(&env, &["bdev_malloc_delete", "s2"]);
    tgt.ok(&env, &["bdev_mdraid_add_base_bdev", "S", "s3"]);
    let saved = tgt.ok(&env, &["save_config"]);
    let v: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let create = v["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["config"].as_array().cloned().unwrap_or_default())
        .find(|m| m["method"] == "bdev_mdraid_create")
        .unwrap_or_else(|| panic!("no create in {saved}"));
    let mut names: Vec<String> = create["params"]["base_bdevs"]
        .as_array()
        .map(|a| a.iter().map(|n| n.as_str().unwrap().to_string()).collect())
        .unwrap_or_else(|| {
            create["params"]["base_bdevs"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .map(String::from)
                .collect()
        });
    names.sort();
    assert_eq!(names, ["s0", "s3"], "{create}");
    env.cleanup();
}

/// A replayed create whose array cannot start (here a raid5 with one
/// member recorded faulty and another blank) waits, listed as
/// configuring, instead of failing the config and with it the target.
#[test]
fn spdk_tgt_a_replayed_array_that_cannot_start_waits() {
    let Some(env) = spdk_env("cannot-start") else {
        return;
    };
    let _g = serial();
    let (mut tgt, files) = tgt_with_aio(&env, "c", 4);
    tgt.ok(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "C",
            "-r",
            "raid5",
            "-z",
            "64",
            "-b",
            "c0 c1 c2 c3",
            "--assume-clean",
        ],
    );
    tgt.ok(&env, &["bdev_mdraid_remove_base_bdev", "c0"]);
    let saved = tgt.ok(&env, &["save_config"]);
    assert!(tgt.terminate(&env).success(), "{}", tgt.log_text());
    drop(tgt);
    // c3 is blank now: two of four members unusable.
    std::fs::File::create(&files[3])
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let cfg = env.dir.join("saved.json");
    std::fs::write(&cfg, &saved).unwrap();
    let tgt = Tgt::start_with(&env, Some(&cfg));
    let out = tgt.ok(&env, &["bdev_mdraid_get_bdevs", "configuring"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["name"], "C", "{out}");
    assert!(
        tgt.log_text().contains("it waits for its members"),
        "{}",
        tgt.log_text()
    );
    // The target serves the rest: another bdev can be made.
    tgt.ok(&env, &["bdev_malloc_create", "-b", "other", "8", "512"]);
    env.cleanup();
}

/// Bounded wait until array `name` is there (examine assembles it from a
/// config replayed at start); its `bdev_mdraid_get_bdevs` entry.
fn wait_for_array(env: &Env, tgt: &Tgt, name: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = tgt.rpc(env, &["bdev_mdraid_get_bdevs", "-n", name]);
        if ok {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            if v[0]["name"] == name {
                return v[0].clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "array {name} did not come: {out}\n{}",
            tgt.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A target with `n` new 32 MiB files as aio bdevs `{prefix}0`...
fn tgt_with_aio(env: &Env, prefix: &str, n: usize) -> (Tgt, Vec<PathBuf>) {
    let files = new_files(env, prefix, n, 32 << 20);
    let tgt = Tgt::start(env);
    for (i, f) in files.iter().enumerate() {
        tgt.aio(env, &format!("{prefix}{i}"), f);
    }
    (tgt, files)
}

/// A create whose superblock write fails on one member puts the others
/// back as they were: no superblock, and no bitmap area either (it left
/// the bitmap's header and bits on the blank members).
#[test]
fn spdk_tgt_failed_create_leaves_no_metadata() {
    let Some(env) = spdk_env("failed-create") else {
        return;
    };
    let _g = serial();
    let (mut tgt, files) = tgt_with_aio(&env, "g", 3);
    tgt.ok(&env, &["bdev_error_create", "g2"]);
    tgt.ok(
        &env,
        &[
            "bdev_error_inject_error",
            "EE_g2",
            "write",
            "failure",
            "-n",
            "100",
        ],
    );
    let (ok, out) = tgt.rpc(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "C",
            "-r",
            "raid5",
            "-z",
            "64",
            "-b",
            "g0 g1 EE_g2",
        ],
    );
    assert!(!ok && out.contains("writing the superblock"), "{out}");
    assert!(!tgt.claimed(&env, "g0") && !tgt.claimed(&env, "g1"));
    let status = tgt.terminate(&env);
    assert!(status.success(), "{}", tgt.log_text());
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let area = &bytes[4096..4096 + (1 << 20) - 4096];
        assert!(
            area.iter().all(|b| *b == 0),
            "{}: metadata left at byte {}",
            f.display(),
            4096 + area.iter().position(|b| *b != 0).unwrap()
        );
    }
}

/// A member's bdev deleted while the create that opened it runs: SPDK
/// sends its REMOVE event once, before the array exists. The delete
/// answered never (it waits for the descriptor), and the array kept the
/// member in sync. Now the create ends either way and the member fails
/// once the array exists.
#[test]
fn spdk_tgt_member_deleted_during_its_create() {
    let Some(env) = spdk_env("delete-during-create") else {
        return;
    };
    let _g = serial();
    let mut tgt = Tgt::start(&env);
    for m in ["t0", "t1", "t2"] {
        tgt.ok(&env, &["bdev_malloc_create", "-b", m, "32", "512"]);
    }
    // Slow: the create's superblock read and write take a second or two.
    tgt.ok(
        &env,
        &[
            "bdev_delay_create",
            "-b",
            "t2",
            "-d",
            "d2",
            "-r",
            "500000",
            "-t",
            "500000",
            "-w",
            "1500000",
            "-n",
            "1500000",
        ],
    );
    let (create, delete) = std::thread::scope(|sc| {
        let c = sc.spawn(|| {
            tgt.rpc(
                &env,
                &[
                    "bdev_mdraid_create",
                    "-n",
                    "R",
                    "-r",
                    "raid1",
                    "-b",
                    "t0 t1 d2",
                    "--assume-clean",
                ],
            )
        });
        let d = sc.spawn(|| {
            std::thread::sleep(Duration::from_millis(700));
            let t = Instant::now();
            let r = tgt.rpc(&env, &["bdev_delay_delete", "d2"]);
            (r, t.elapsed())
        });
        (c.join().unwrap(), d.join().unwrap())
    });
    let ((deleted, out), took) = delete;
    assert!(deleted, "bdev_delay_delete: {out}\n{}", tgt.log_text());
    assert!(took < Duration::from_secs(30), "the delete took {took:?}");
    if create.0 {
        // Created: d2 does not serve its role.
        let out = tgt.ok(&env, &["bdev_mdraid_get_bdevs", "-n", "R"]);
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut r = r[0].clone();
        while r["base_bdevs_list"][2]["state"] == "in_sync" {
            assert!(Instant::now() < deadline, "d2 still in sync: {r}");
            std::thread::sleep(Duration::from_millis(200));
            let out = tgt.ok(&env, &["bdev_mdraid_get_bdevs", "-n", "R"]);
            r = serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone();
        }
    }
    let status = tgt.terminate(&env);
    assert!(status.success(), "{}", tgt.log_text());
}

/// A delay bdev stacked on a member's bdev: both carry the member's
/// superblock. Examine saw the base, then the delay bdev that claims it,
/// and when the array was complete gave up ("a2 is already claimed");
/// it assembles the array on the delay bdev, the member it was made with.
#[test]
fn spdk_tgt_examine_with_a_bdev_stacked_on_a_member() {
    let Some(env) = spdk_env("stacked") else {
        return;
    };
    let _g = serial();
    let (mut tgt, files) = tgt_with_aio(&env, "a", 3);
    let delay = r#"{"base_bdev_name":"a2","name":"d2","avg_read_latency":0,"p99_read_latency":0,"avg_write_latency":0,"p99_write_latency":0}"#;
    tgt.ok(
        &env,
        &[
            "bdev_delay_create",
            "-b",
            "a2",
            "-d",
            "d2",
            "-r",
            "0",
            "-t",
            "0",
            "-w",
            "0",
            "-n",
            "0",
        ],
    );
    raid1_assume_clean(&env, &tgt, "st", "a0 a1 d2");
    let status = tgt.terminate(&env);
    assert!(status.success(), "{}", tgt.log_text());
    drop(tgt);
    // a1 last: the array is complete only then.
    let aio = aio_entries(&files, "a");
    let entries = vec![
        aio[0].clone(),
        aio[2].clone(),
        format!(r#"{{"method":"bdev_delay_create","params":{delay}}}"#),
        aio[1].clone(),
    ];
    let cfg = env.dir.join("stacked.json");
    std::fs::write(&cfg, config(&entries)).unwrap();
    let mut tgt = Tgt::start_with(&env, Some(&cfg));
    let info = wait_for_array(&env, &tgt, "st");
    let names: Vec<&str> = info["base_bdevs_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["a0", "a1", "d2"], "{info}");
    assert_eq!(member_states(&info), ["in_sync"; 3], "{info}");
    let status = tgt.terminate(&env);
    assert!(status.success(), "{}", tgt.log_text());
}

/// `bdev_mdraid_create` of raid1 `name` on `members` (fresh files).
fn raid1_assume_clean(env: &Env, tgt: &Tgt, name: &str, members: &str) {
    tgt.ok(
        env,
        &[
            "bdev_mdraid_create",
            "-n",
            name,
            "-r",
            "raid1",
            "-b",
            members,
            "--assume-clean",
        ],
    );
}

/// Until array `name` runs with its `n` members in sync and no process
/// (bounded wait).
fn wait_in_sync(env: &Env, tgt: &Tgt, name: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out) = tgt.rpc(env, &["bdev_mdraid_get_bdevs", "-n", name]);
        if ok {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            if v[0]["process"].is_null() && member_states(&v[0]) == vec!["in_sync"; n] {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name} not in sync: {out}\n{}",
            tgt.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An array stopped and started again by `bdev_mdraid_create` under a
/// new name records that name in its superblocks (md's `--update=name`):
/// the target restarted from its saved config finds it by examine under
/// the new name, and the replayed create has nothing left to do.
#[test]
fn spdk_tgt_array_started_under_a_new_name_comes_back_under_it() {
    let Some(env) = spdk_env("rename") else {
        return;
    };
    let _g = serial();
    let (mut tgt, files) = tgt_with_aio(&env, "a", 2);
    let create = |t: &Tgt, name: &str| raid1_assume_clean(&env, t, name, "a0 a1");
    create(&tgt, "old");
    tgt.ok(&env, &["bdev_mdraid_delete", "old"]);
    create(&tgt, "new");
    let saved = tgt.ok(&env, &["save_config"]);
    let cfg = env.dir.join("saved.json");
    std::fs::write(&cfg, &saved).unwrap();
    let status = tgt.terminate(&env);
    assert!(status.success(), "{}", tgt.log_text());
    drop(tgt);
    for f in &files {
        assert_eq!(read_sb(f).name(), "new");
    }

    let tgt = Tgt::start_with(&env, Some(&cfg));
    wait_in_sync(&env, &tgt, "new", 2);
    let log = tgt.log_text();
    assert!(log.contains("assembling it as new"), "{log}");
    assert!(log.contains("already assembled from its members"), "{log}");
    env.cleanup();
}

/// A config saved while a member was out lists fewer members than the
/// array has once that member was added back and rebuilt: the target
/// restarted from it (a crash before the next save) gets the whole array
/// back from examine, and the replayed create, whose uuid names it, has
/// nothing left to do.
#[test]
fn spdk_tgt_config_saved_while_a_member_was_out() {
    let Some(env) = spdk_env("stale-cfg") else {
        return;
    };
    let _g = serial();
    let (mut tgt, _files) = tgt_with_aio(&env, "x", 2);
    raid1_assume_clean(&env, &tgt, "rx", "x0 x1");
    tgt.ok(&env, &["bdev_mdraid_remove_base_bdev", "x1"]);
    let saved = tgt.ok(&env, &["save_config"]);
    let cfg = env.dir.join("saved.json");
    std::fs::write(&cfg, &saved).unwrap();
    tgt.ok(&env, &["bdev_mdraid_add_base_bdev", "rx", "x1"]);
    wait_in_sync(&env, &tgt, "rx", 2);
    let status = tgt.terminate(&env);
    assert!(status.success(), "{}", tgt.log_text());
    drop(tgt);

    let tgt = Tgt::start_with(&env, Some(&cfg));
    wait_in_sync(&env, &tgt, "rx", 2);
    assert!(
        tgt.log_text()
            .contains("already assembled from its members"),
        "{}",
        tgt.log_text()
    );
    env.cleanup();
}

#[test]
fn spdk_tgt_rpc_create_get_delete() {
    let Some(env) = spdk_env("tgt") else { return };
    let _g = serial();
    let mut tgt = Tgt::start(&env);
    for m in ["m0", "m1", "m2", "m3"] {
        tgt.ok(&env, &["bdev_malloc_create", "-b", m, "32", "512"]);
    }

    // Create, as the issue's example has it.
    tgt.ok(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "r1",
            "-r",
            "raid1",
            "-b",
            "m0 m1",
        ],
    );
    let out = tgt.ok(&env, &["bdev_mdraid_get_bdevs"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let arrays = v.as_array().expect("a list");
    assert_eq!(arrays.len(), 1, "{out}");
    let r1 = &arrays[0];
    assert_eq!(r1["name"], "r1");
    assert_eq!(r1["raid_level"], "raid1");
    assert_eq!(r1["state"], "online");
    assert_eq!(r1["superblock"], true);
    let members = r1["base_bdevs_list"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert!(members.iter().all(|m| m["state"] == "in_sync"), "{out}");
    assert!(tgt.claimed(&env, "m0") && tgt.claimed(&env, "m1"));
    // The array is a bdev with its mdraid details.
    let out = tgt.ok(&env, &["bdev_get_bdevs", "-b", "r1"]);
    assert!(
        out.contains("\"product_name\": \"mdraid\"") && out.contains("\"mdraid\""),
        "{out}"
    );

    // Write-mostly with write-behind: recorded and shown.
    let r2 = [
        "bdev_mdraid_create",
        "-n",
        "r2",
        "-r",
        "raid1",
        "-b",
        "m2 m3",
    ];
    let wm = ["--write-mostly", "m3", "--write-behind", "64"];
    tgt.ok(&env, &[&r2[..], &wm[..]].concat());
    let out = tgt.ok(&env, &["bdev_mdraid_get_bdevs", "-n", "r2"]);
    assert!(out.contains("\"write_behind\": 64"), "{out}");
    tgt.ok(&env, &["bdev_mdraid_delete", "r2", "--clear-sb"]);
    // The plugin's bitmap options: off, and its own chunk and daemon
    // sleep (a chunk of 0 reaches the server, which names the field).
    tgt.ok(&env, &[&r2[..], &["--no-bitmap"]].concat());
    let out = tgt.ok(&env, &["bdev_mdraid_get_bdevs", "-n", "r2"]);
    assert!(
        !out.contains("\"bitmap\""),
        "--no-bitmap made a bitmap: {out}"
    );
    tgt.ok(&env, &["bdev_mdraid_delete", "r2", "--clear-sb"]);
    let opts = [
        "--bitmap-chunk-kb",
        "128",
        "--bitmap-daemon-sleep-ms",
        "700",
    ];
    tgt.ok(&env, &[&r2[..], &opts[..]].concat());
    let out = tgt.ok(&env, &["bdev_mdraid_get_bdevs", "-n", "r2"]);
    assert!(
        out.contains("\"chunk_kb\": 128") && out.contains("\"daemon_sleep_ms\": 700"),
        "{out}"
    );
    tgt.ok(&env, &["bdev_mdraid_delete", "r2", "--clear-sb"]);
    tgt.fails(
        &env,
        &[&r2[..], &["--bitmap-chunk-kb", "0"]].concat(),
        -32602,
        "field `bitmap.chunk_kb`",
    );
    // Bad params: -32602 naming the field; nothing is left behind.
    tgt.fails(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "r2",
            "-r",
            "raid0",
            "-b",
            "m2 m3",
            "-z",
            "3",
        ],
        -32602,
        "field `strip_size_kb`",
    );
    tgt.fails(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "r2",
            "-r",
            "raid7",
            "-b",
            "m2 m3",
        ],
        -32602,
        "field `raid_level`",
    );
    tgt.fails(
        &env,
        &[&r2[..6], &["m2 nosuch"]].concat(),
        -32602,
        "field `base_bdevs[1]`",
    );
    tgt.fails(
        &env,
        &[&r2[..6], &["m2 m0"]].concat(),
        -32602,
        "field `base_bdevs[1]`",
    );
    // An array is no member, named by its alias (its UUID) too.
    let r1_uuid = r1["uuid"].as_str().unwrap();
    tgt.fails(
        &env,
        &[&r2[..6], &[format!("m2 {r1_uuid}").as_str()]].concat(),
        -32602,
        "is an mdraid array",
    );
    assert!(
        !tgt.claimed(&env, "m2") && !tgt.claimed(&env, "m3"),
        "a failed create left a claim"
    );
    let (_, out) = tgt.rpc(&env, &["bdev_get_bdevs", "-b", "r2"]);
    assert!(
        out.contains("\"code\": -19"),
        "a failed create left a bdev: {out}"
    );
    // No superblock either: an array without one may be made on them
    // (it is refused on members that carry one).
    tgt.ok(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "r2",
            "-r",
            "raid0",
            "-b",
            "m2 m3",
            "-z",
            "64",
            "--no-superblock",
        ],
    );
    tgt.ok(&env, &["bdev_mdraid_delete", "r2"]);

    // Delete without clear_sb: the members keep the array, and a create
    // on them assembles it (same uuid).
    let uuid = r1["uuid"].as_str().unwrap().to_string();
    tgt.ok(&env, &["bdev_mdraid_delete", "r1"]);
    assert!(!tgt.claimed(&env, "m0"));
    tgt.ok(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "r1",
            "-r",
            "raid1",
            "-b",
            "m0 m1",
        ],
    );
    let out = tgt.ok(&env, &["bdev_mdraid_get_bdevs", "-n", "r1"]);
    assert!(
        out.contains(&uuid),
        "not assembled from the superblocks: {out}"
    );
    tgt.fails(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "r1",
            "-r",
            "raid1",
            "-b",
            "m2 m3",
        ],
        -17,
        "bdev r1 already exists",
    );
    // Delete with clear_sb: the superblocks are gone.
    tgt.ok(&env, &["bdev_mdraid_delete", "r1", "-c"]);
    assert_eq!(tgt.ok(&env, &["bdev_mdraid_get_bdevs"]).trim(), "[]");
    tgt.ok(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "r1",
            "-r",
            "raid1",
            "-b",
            "m0 m1",
            "--no-superblock",
        ],
    );
    // Without superblocks the create's members are the roles: a member
    // removed stays in the saved create (a replay of fewer would lay
    // another array over the data).
    tgt.ok(&env, &["bdev_mdraid_remove_base_bdev", "m1"]);
    let saved: serde_json::Value =
        serde_json::from_str(&tgt.ok(&env, &["save_config"])).expect("save_config's JSON");
    let create = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["config"].as_array().cloned().unwrap_or_default())
        .find(|c| c["method"] == "bdev_mdraid_create" && c["params"]["name"] == "r1")
        .unwrap_or_else(|| panic!("no r1 in {saved}"));
    assert_eq!(
        create["params"]["base_bdevs"],
        serde_json::json!(["m0", "m1"]),
        "{create}"
    );
    tgt.fails(&env, &["bdev_mdraid_delete", "nosuch"], -19, "nosuch");

    tgt.ok(&env, &["spdk_kill_instance", "SIGTERM"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = tgt.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "spdk_tgt did not stop:\n{}",
            tgt.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = tgt.log_text();
    println!("spdk_tgt log:\n{log}");
    assert!(status.success(), "spdk_tgt exited with {status}:\n{log}");
    assert!(!log.contains("mdraid: panic"), "{log}");
    let _ = std::fs::remove_dir_all(&env.dir);
}

// ------------------------------------------------------------ examine, bitmap, resync, rebuild

fn aio_entries(files: &[PathBuf], prefix: &str) -> Vec<String> {
    files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            format!(
                r#"{{"method":"bdev_aio_create","params":{{"name":"{prefix}{i}","filename":"{}","block_size":512}}}}"#,
                f.display()
            )
        })
        .collect()
}

fn new_files(env: &Env, prefix: &str, n: usize, bytes: u64) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let f = env.dir.join(format!("{prefix}{i}"));
            std::fs::File::create(&f).unwrap().set_len(bytes).unwrap();
            f
        })
        .collect()
}

fn read_sb(f: &Path) -> bdev_raid::ondisk::Superblock {
    use bdev_raid::ondisk::{Superblock, SB_BLOCK_BYTES, SB_OFFSET_BYTES};
    let data = std::fs::read(f).unwrap();
    let off = SB_OFFSET_BYTES as usize;
    Superblock::decode(&data[off..off + SB_BLOCK_BYTES], data.len() as u64 / 512)
        .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
}

/// The data area of a member file (md's data_offset, data_size).
fn data_area(f: &Path) -> Vec<u8> {
    let sb = read_sb(f);
    let data = std::fs::read(f).unwrap();
    let at = (sb.data_offset * 512) as usize;
    data[at..at + (sb.size * 512) as usize].to_vec()
}

/// spdk_dd with `cfg`; `args` are its copy arguments. Returns its output.
fn spdk_dd(env: &Env, cfg: &str, what: &str, args: &[&str]) -> String {
    let path = env.dir.join("dd.json");
    std::fs::write(&path, cfg).unwrap();
    let out = env
        .app(60, &env.spdk.join("build/bin/spdk_dd"), &[&env.so])
        .args(["--no-huge", "-s", "2048", "--no-pci", "--json"])
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run spdk_dd");
    let t = text(&out);
    assert!(
        out.status.success(),
        "{what}: spdk_dd failed ({}):\n{t}",
        out.status
    );
    assert!(!t.contains("*ERROR*"), "{what}: SPDK logged errors:\n{t}");
    t
}

/// spdk_dd: the first 4 MiB of array `r` into `to` (64 KiB blocks).
fn dd_read(env: &Env, cfg: &str, what: &str, to: &Path) -> String {
    let to = to.to_str().unwrap();
    spdk_dd(
        env,
        cfg,
        what,
        &["--ib", "r", "--of", to, "--bs", "65536", "--count", "64"],
    )
}

/// spdk_dd: file `from` onto array `r` (64 KiB blocks).
fn dd_write(env: &Env, cfg: &str, what: &str, from: &Path) -> String {
    let from = from.to_str().unwrap();
    spdk_dd(
        env,
        cfg,
        what,
        &["--if", from, "--ob", "r", "--bs", "65536"],
    )
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Task: an array made in one run comes back by itself (examine) in the
/// next, whose config has only the members: same uuid, same data (read
/// back with spdk_dd), and bdevperf verify runs on it.
#[test]
fn examine_reassembles_raid5_and_raid1() {
    let Some(env) = spdk_env("examine") else {
        return;
    };
    let _g = serial();
    for (level, n) in [("raid5", 4), ("raid1", 2)] {
        let files = new_files(&env, &format!("{level}-f"), n, 32 << 20);
        let members: Vec<String> = (0..n).map(|i| format!("a{i}")).collect();
        let mut entries = aio_entries(&files, "a");
        let create = format!(
            r#"{{"method":"bdev_mdraid_create","params":{{"name":"r","raid_level":"{level}","base_bdevs":"{}","strip_size_kb":64,"assume_clean":true}}}}"#,
            members.join(" ")
        );
        entries.push(create);
        let data = random_bytes(4 << 20, 7 + n as u64);
        let input = env.dir.join("in");
        std::fs::write(&input, &data).unwrap();
        let out = dd_write(&env, &config(&entries), &format!("{level} write"), &input);
        assert!(out.contains(&format!("created {level} array")), "{out}");
        let uuid = read_sb(&files[0]).set_uuid;
        assert!(
            files.iter().all(|f| read_sb(f).is_clean()),
            "not stopped clean"
        );

        // Only the members in the config: examine assembles the array.
        let only = config(&aio_entries(&files, "a"));
        let back = env.dir.join("back");
        let out = dd_read(&env, &only, &format!("{level} read back"), &back);
        assert!(
            out.contains("examine: md array") && out.contains(&format!("assembled {level} array")),
            "{level}: not assembled by examine:\n{out}"
        );
        let got = std::fs::read(&back).unwrap();
        assert!(got == data, "{level}: the data read back differs");
        let out = bdevperf_verify(&env, &only, &format!("{level} examined"), 32, 4096);
        assert!(out.contains(&format!("assembled {level} array")), "{out}");
        for f in &files {
            let sb = read_sb(f);
            assert_eq!(sb.set_uuid, uuid, "{level}: another array");
            assert!(sb.is_clean(), "{level}: not clean after the verify run");
            assert!(sb.has_bitmap(), "{level}: created without a bitmap");
        }
        // A missing member: examine waits (no degraded start by itself).
        let out = spdk_dd(
            &env,
            &config(&aio_entries(&files[..n - 1], "a")),
            &format!("{level} incomplete"),
            &[
                "--ib",
                &members[0],
                "--of",
                back.to_str().unwrap(),
                "--count",
                "1",
            ],
        );
        assert!(out.contains("waiting for the others"), "{out}");
        assert!(!out.contains(&format!("assembled {level} array")), "{out}");

        // Started degraded by hand, the array records the role as no
        // longer served (md writes the slot spare: mdadm shows it '.'),
        // so the next start's examine assembles it degraded by itself.
        // What the verify run left, read whole first:
        let whole = env.dir.join("whole");
        dd_read(&env, &only, &format!("{level} whole"), &whole);
        let data = std::fs::read(&whole).unwrap();
        let mut degraded = aio_entries(&files[..n - 1], "a");
        degraded.push(format!(
            r#"{{"method":"bdev_mdraid_create","params":{{"name":"r","raid_level":"{level}","base_bdevs":"{}"}}}}"#,
            members[..n - 1].join(" ")
        ));
        // (The first write commits the superblocks.)
        let out = dd_write(
            &env,
            &config(&degraded),
            &format!("{level} started degraded"),
            &whole,
        );
        assert!(out.contains(&format!("assembled {level} array")), "{out}");
        let state: String = (0..n).map(|i| if i < n - 1 { 'A' } else { '.' }).collect();
        assert_eq!(read_sb(&files[0]).array_state(), state, "{level} degraded");
        let _ = std::fs::remove_file(&back);
        let out = spdk_dd(
            &env,
            &config(&aio_entries(&files[..n - 1], "a")),
            &format!("{level} examined degraded"),
            &[
                "--ib",
                "r",
                "--of",
                back.to_str().unwrap(),
                "--bs",
                "65536",
                "--count",
                "64",
            ],
        );
        assert!(
            out.contains(&format!("assembled {level} array")),
            "{level}: examine did not assemble it degraded:\n{out}"
        );
        assert!(
            std::fs::read(&back).unwrap() == data,
            "{level}: the data read back degraded differs"
        );
    }
    let _ = std::fs::remove_dir_all(&env.dir);
}

/// An unclean stop (kill -9 in a verify run) of a bitmap array on files:
/// the next run assembles it dirty (examine), resyncs the chunks the
/// bitmap marks, verifies, and stops clean; raid1's mirrors then match.
fn unclean_stop_then_resync(level: &str, n: usize, test: &str) {
    let Some(env) = spdk_env(test) else { return };
    let _g = serial();
    let files = new_files(&env, "f", n, 32 << 20);
    let names: Vec<String> = (0..n).map(|i| format!("a{i}")).collect();
    let mut entries = aio_entries(&files, "a");
    entries.push(format!(
        r#"{{"method":"bdev_mdraid_create","params":{{"name":"r","raid_level":"{level}","base_bdevs":"{}","strip_size_kb":64,"bitmap":{{"chunk_kb":1024}}}}}}"#,
        names.join(" ")
    ));
    let path = env.dir.join("crash.json");
    std::fs::write(&path, config(&entries)).unwrap();
    // kill -9 four seconds in, writes in flight.
    let out = Command::new("timeout")
        .args(["-s", "KILL", "4", "env"])
        .arg(format!("LD_PRELOAD={}", env.so.display()))
        .arg(env.spdk.join("build/examples/bdevperf"))
        .env("LD_LIBRARY_PATH", env.libdir())
        .args(["--no-huge", "-s", "2048", "--no-pci", "--json"])
        .arg(&path)
        .args([
            "-q", "32", "-o", "4096", "-w", "verify", "-t", "30", "-T", "r",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run bdevperf");
    let t = text(&out);
    assert!(!out.status.success(), "bdevperf was not killed:\n{t}");
    assert!(t.contains(&format!("created {level} array")), "{t}");
    let sbs: Vec<_> = files.iter().map(|f| read_sb(f)).collect();
    assert!(
        sbs.iter().any(|sb| !sb.is_clean()),
        "the killed array is marked clean"
    );
    let out = bdevperf_verify(&env, &config(&aio_entries(&files, "a")), test, 32, 4096);
    assert!(
        out.contains("not shut down cleanly: resyncing the"),
        "no bitmap resync:\n{out}"
    );
    assert!(
        out.contains("mdraid r: resync done"),
        "resync did not end:\n{out}"
    );
    for f in &files {
        let sb = read_sb(f);
        assert!(sb.is_clean(), "not clean after the resync: {sb:?}");
    }
    if level == "raid1" {
        let a = data_area(&files[0]);
        assert!(
            files[1..].iter().all(|f| data_area(f) == a),
            "raid1 mirrors differ after the resync"
        );
    }
    let _ = std::fs::remove_dir_all(&env.dir);
}

#[test]
fn unclean_stop_resync_raid1() {
    unclean_stop_then_resync("raid1", 2, "crash-raid1");
}

#[test]
fn unclean_stop_resync_raid5() {
    unclean_stop_then_resync("raid5", 3, "crash-raid5");
}

/// bdevperf verify on a raid5 with an explicit bitmap over malloc.
#[test]
fn bdevperf_verify_raid5_bitmap() {
    let Some(env) = spdk_env("raid5-bitmap") else {
        return;
    };
    let _g = serial();
    let mut entries = malloc_members(4, 65536);
    entries.push(
        r#"{"method":"bdev_mdraid_create","params":{"name":"r","raid_level":"raid5","base_bdevs":"m0 m1 m2 m3","strip_size_kb":64,"bitmap":{"chunk_kb":256,"daemon_sleep_ms":100}}}"#
            .to_string(),
    );
    bdevperf_verify(&env, &config(&entries), "raid5 bitmap", 32, 4096);
    let _ = std::fs::remove_dir_all(&env.dir);
}

/// raid1 with a slow write-mostly member (a delay bdev over malloc, named
/// at create): md's WriteMostly1 devflag on it, reads on the others;
/// verify sees no error and the array stops cleanly.
#[test]
fn bdevperf_verify_raid1_write_mostly() {
    let Some(env) = spdk_env("raid1-write-mostly") else {
        return;
    };
    let _g = serial();
    let mut entries = malloc_members(3, 65536);
    entries.push(
        r#"{"method":"bdev_delay_create","params":{"base_bdev_name":"m2","name":"d2","avg_read_latency":0,"p99_read_latency":0,"avg_write_latency":2000,"p99_write_latency":4000}}"#
            .to_string(),
    );
    entries.push(
        r#"{"method":"bdev_mdraid_create","params":{"name":"r","raid_level":"raid1","base_bdevs":"m0 m1 d2","write_mostly":["d2"],"bitmap":{"chunk_kb":256,"daemon_sleep_ms":100}}}"#
            .to_string(),
    );
    bdevperf_verify(&env, &config(&entries), "raid1 write-mostly", 32, 4096);
    let _ = std::fs::remove_dir_all(&env.dir);
}

/// Write-behind: a raid1 with a write-mostly member behind a delay bdev
/// (2 ms writes) and `write_behind: 256`: verify sees no error, write
/// pieces' write-mostly copies were written behind (the channel says how
/// many), the channel stays until they are done and the array stops
/// cleanly; get_bdevs-style info records the setting in the bitmap.
#[test]
fn bdevperf_verify_raid1_write_behind() {
    let Some(env) = spdk_env("raid1-write-behind") else {
        return;
    };
    let _g = serial();
    let mut entries = malloc_members(2, 65536);
    entries.push(
        r#"{"method":"bdev_delay_create","params":{"base_bdev_name":"m1","name":"d1","avg_read_latency":0,"p99_read_latency":0,"avg_write_latency":2000,"p99_write_latency":4000}}"#
            .to_string(),
    );
    entries.push(
        r#"{"method":"bdev_mdraid_create","params":{"name":"r","raid_level":"raid1","base_bdevs":"m0 d1","write_mostly":["d1"],"write_behind":256,"bitmap":{"chunk_kb":256,"daemon_sleep_ms":100}}}"#
            .to_string(),
    );
    let t = bdevperf_verify(&env, &config(&entries), "raid1 write-behind", 32, 4096);
    let behind: u64 = t
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("mdraid r: a channel wrote ")?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    assert!(behind > 0, "no write went behind:\n{t}");
    println!("raid1 write-behind: {behind} write pieces written behind");
    let _ = std::fs::remove_dir_all(&env.dir);
}

/// Two adds back to back into a raid1 with two faulty roles, commits slow
/// (a member's writes take 1 s): the first answers before its commit is
/// published, so the state still says its role is faulty. The second must
/// take the other role; it took the first's, swapping its device in under
/// it, and the array's data was lost.
#[test]
fn spdk_tgt_a_second_add_does_not_take_the_role_of_one_not_yet_committed() {
    let Some(env) = spdk_env("two-adds") else {
        return;
    };
    let _g = serial();
    let mut tgt = Tgt::start(&env);
    for m in ["w0", "w1", "w2", "w3"] {
        tgt.ok(&env, &["bdev_malloc_create", "-b", m, "32", "512"]);
    }
    tgt.ok(
        &env,
        &[
            "bdev_delay_create",
            "-b",
            "w3",
            "-d",
            "dw3",
            "-r",
            "0",
            "-t",
            "0",
            "-w",
            "1000000",
            "-n",
            "1000000",
        ],
    );
    tgt.ok(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "W",
            "-r",
            "raid1",
            "-b",
            "w0 w1 dw3",
            "--assume-clean",
        ],
    );
    tgt.ok(&env, &["bdev_mdraid_remove_base_bdev", "w0"]);
    tgt.ok(&env, &["bdev_mdraid_remove_base_bdev", "w1"]);
    tgt.ok(&env, &["bdev_mdraid_add_base_bdev", "W", "w0"]);
    tgt.ok(&env, &["bdev_mdraid_add_base_bdev", "W", "w2"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = tgt.ok(&env, &["bdev_mdraid_get_bdevs", "-n", "W"]);
        let r: serde_json::Value = serde_json::from_str::<serde_json::Value>(&out)
            .unwrap_or_else(|e| panic!("{e}: {out}"))[0]
            .clone();
        let members = r["base_bdevs_list"].as_array().unwrap().clone();
        if r["process"].is_null() && members.iter().all(|m| m["state"] == "in_sync") {
            let names: Vec<&str> = members
                .iter()
                .map(|m| m["name"].as_str().unwrap_or(""))
                .collect();
            assert_eq!(names, ["w0", "w2", "dw3"], "{r}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the adds did not end: {r}\n{}",
            tgt.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let status = tgt.terminate(&env);
    assert!(
        status.success(),
        "spdk_tgt exited with {status}:\n{}",
        tgt.log_text()
    );
}

/// A degraded raid1 (one member present) through spdk_tgt: a blank bdev
/// added with bdev_mdraid_add_base_bdev (write-mostly) is rebuilt fully
/// (progress shown in get_bdevs) and ends in sync, its data the same as
/// the other's and its superblock write-mostly; examine then assembles
/// the array from those superblocks and the data reads back.
#[test]
fn spdk_tgt_add_base_bdev_rebuild() {
    let Some(env) = spdk_env("rebuild") else {
        return;
    };
    let _g = serial();
    let files = new_files(&env, "f", 3, 32 << 20);
    // Data on a raid1 of f0 and f1 (spdk_dd), then stopped clean.
    let mut entries = aio_entries(&files[..2], "a");
    entries.push(
        r#"{"method":"bdev_mdraid_create","params":{"name":"r","raid_level":"raid1","base_bdevs":"a0 a1"}}"#
            .to_string(),
    );
    let data = random_bytes(8 << 20, 99);
    let input = env.dir.join("in");
    std::fs::write(&input, &data).unwrap();
    dd_write(&env, &config(&entries), "raid1 write", &input);
    let mut tgt = Tgt::start(&env);
    tgt.aio(&env, "a0", &files[0]);
    tgt.aio(&env, "a2", &files[2]);
    // a1 is gone: examine waits (the array is listed as configuring); it
    // is started degraded explicitly.
    let waiting = tgt.ok(&env, &["bdev_mdraid_get_bdevs"]);
    let w: serde_json::Value = serde_json::from_str(&waiting).unwrap();
    assert_eq!(w.as_array().map(Vec::len), Some(1), "{waiting}");
    assert_eq!(w[0]["state"], "configuring", "{waiting}");
    assert_eq!(w[0]["base_bdevs_list"][0]["name"], "a0", "{waiting}");
    assert_eq!(w[0]["base_bdevs_list"][1]["state"], "missing", "{waiting}");
    tgt.ok(
        &env,
        &["bdev_mdraid_create", "-n", "r", "-r", "raid1", "-b", "a0"],
    );
    let get = |t: &Tgt| -> serde_json::Value {
        let out = t.ok(&env, &["bdev_mdraid_get_bdevs", "-n", "r"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))[0]
            .clone()
    };
    let r = get(&tgt);
    assert_eq!(r["degraded"], true, "{r}");
    assert_eq!(r["base_bdevs_list"][1]["state"], "missing", "{r}");
    // An empty slot has no data area (SPDK's raid lists 0).
    assert_eq!(r["base_bdevs_list"][1]["data_offset"], 0, "{r}");
    assert_eq!(r["base_bdevs_list"][0]["data_offset"], 2048, "{r}");
    assert!(r["bitmap"]["chunk_kb"].as_u64().is_some(), "no bitmap: {r}");
    // Bad input changes nothing.
    tgt.fails(
        &env,
        &["bdev_mdraid_add_base_bdev", "r", "nosuch"],
        -32602,
        "field `base_bdev`",
    );
    tgt.fails(
        &env,
        &["bdev_mdraid_add_base_bdev", "nosuch", "a2"],
        -19,
        "nosuch",
    );
    tgt.fails(
        &env,
        &["bdev_mdraid_add_base_bdev", "r", "a0"],
        -32602,
        "already serves role 0",
    );
    // Not the array into itself, by its alias (its UUID).
    tgt.fails(
        &env,
        &[
            "bdev_mdraid_add_base_bdev",
            "r",
            r["uuid"].as_str().unwrap(),
        ],
        -32602,
        "is an mdraid array",
    );
    assert!(!tgt.claimed(&env, "a2"));
    // Slow enough to be seen rebuilding.
    tgt.ok(&env, &["bdev_mdraid_set_options", "-b", "8"]);
    // Named by its alias (its UUID): the array knows it by its name.
    let out = tgt.ok(&env, &["bdev_get_bdevs", "-b", "a2"]);
    let a2: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let a2_uuid = a2[0]["uuid"].as_str().expect("a2's uuid").to_string();
    tgt.ok(
        &env,
        &["bdev_mdraid_add_base_bdev", "r", &a2_uuid, "--write-mostly"],
    );
    assert!(tgt.claimed(&env, "a2"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen_progress = false;
    loop {
        let r = get(&tgt);
        if r["process"]["type"] == "rebuild" {
            assert_eq!(r["process"]["target"], "a2", "{r}");
            if r["base_bdevs_list"][1]["state"] == "rebuilding" {
                assert_eq!(r["degraded"], true, "degraded until the rebuild ends: {r}");
            }
            assert_eq!(r["sync_action"], "recover", "{r}");
            seen_progress = true;
        }
        let members = r["base_bdevs_list"].as_array().unwrap().clone();
        if r["process"].is_null() && members.iter().all(|m| m["state"] == "in_sync") {
            assert_eq!(r["degraded"], false, "{r}");
            assert_eq!(members[1]["name"], "a2", "{r}");
            assert_eq!(members[1]["write_mostly"], true, "{r}");
            assert_eq!(members[0]["write_mostly"], false, "{r}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rebuild did not end: {r}\n{}",
            tgt.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(seen_progress, "no rebuild progress seen");
    // Already in sync: nothing to replace.
    tgt.fails(
        &env,
        &["bdev_mdraid_add_base_bdev", "r", "a2"],
        -32602,
        "already serves",
    );
    tgt.ok(&env, &["bdev_mdraid_sync_action", "r", "check"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = get(&tgt);
        if r["process"].is_null() && r["mismatch_cnt"].as_u64().is_some() {
            assert_eq!(r["mismatch_cnt"], 0, "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "check did not end: {r}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = tgt.terminate(&env);
    let log = tgt.log_text();
    assert!(status.success(), "spdk_tgt exited with {status}:\n{log}");
    assert!(log.contains("role 1 rebuilt"), "{log}");
    assert!(!log.contains("mdraid: panic"), "{log}");
    let (s0, s2) = (read_sb(&files[0]), read_sb(&files[2]));
    assert!(s0.is_clean() && s2.is_clean(), "not clean: {s0:?} {s2:?}");
    assert_eq!(s0.events, s2.events);
    assert_eq!(s0.set_uuid, s2.set_uuid);
    assert!(
        data_area(&files[2]) == data_area(&files[0]),
        "rebuilt member differs"
    );
    assert!(s2.write_mostly() && !s0.write_mostly(), "{s0:?} {s2:?}");
    // Assembled from superblocks with a write-mostly member.
    let pair = [files[0].clone(), files[2].clone()];
    let back = env.dir.join("back");
    let out = spdk_dd(
        &env,
        &config(&aio_entries(&pair, "a")),
        "raid1 with a write-mostly member read back",
        &[
            "--ib",
            "r",
            "--of",
            back.to_str().unwrap(),
            "--bs",
            "65536",
            "--count",
            "128",
        ],
    );
    assert!(out.contains("assembled raid1 array"), "{out}");
    assert!(
        std::fs::read(&back).unwrap() == data,
        "data read back differs"
    );
    let _ = std::fs::remove_dir_all(&env.dir);
}
