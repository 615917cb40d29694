//! Member failures under load in stock bdevperf with the cdylib preloaded:
//! write errors injected by SPDK's `bdev_error`, and a member's bdev
//! hot-removed. bdevperf runs `-w verify` with `-z`, driven by
//! `bdevperf.py perform_tests`, so the failure comes in the middle of the
//! run and the array can be queried afterwards.
//!
//! Without `SPDK_DIR` each test prints "SPDK tests skipped: SPDK_DIR not
//! set" and passes.

mod common;

use std::time::Duration;

use bdev_raid::ondisk::DevRole;
use common::*;

/// bdevperf `-z` on the config, RPC socket `bdevperf.sock`.
fn bdevperf(env: &Env, cfg: &str, qd: u32, io: u32, secs: u32) -> Proc {
    let path = write_cfg(env, "bdevperf.json", cfg);
    let sock = env.dir.join("bdevperf.sock");
    let mut c = env.app(120, &env.bdevperf(), &[&env.so]);
    c.args(APP_OPTS)
        .args(["-s", "2048", "-r"])
        .arg(&sock)
        .arg("--json")
        .arg(&path)
        .args(["-q", &qd.to_string(), "-o", &io.to_string()])
        .args(["-w", "verify", "-t", &secs.to_string(), "-z"]);
    Proc::spawn(env, "bdevperf", c, &sock)
}

/// The survivors' superblocks record role `failed` faulty, with events
/// past the failed member's own (stale) superblock; all are clean.
fn check_failure_recorded(files: &[std::path::PathBuf], failed: usize) {
    let sbs: Vec<_> = files.iter().map(|f| read_sb(f)).collect();
    let stale = &sbs[failed];
    let dev = stale.dev_number as usize;
    for (role, sb) in sbs.iter().enumerate() {
        if role == failed {
            continue;
        }
        assert_eq!(sb.set_uuid, stale.set_uuid);
        assert_eq!(
            sb.dev_roles.get(dev),
            Some(&DevRole::Faulty),
            "role {role}'s superblock does not record device {dev} faulty: {sb:?}"
        );
        assert!(
            sb.events > stale.events,
            "role {role}: events {} not past the failed member's {}",
            sb.events,
            stale.events
        );
        assert!(sb.is_clean(), "role {role} not marked clean");
        println!(
            "role {role}: events {} (failed member's superblock: {}), device {dev} faulty",
            sb.events, stale.events
        );
    }
}

/// bdevperf verify (qd 32, 4 KiB I/O, `secs` s) over array `r` of
/// `level` on aio `files`, role 1 behind `bdev_error`: `count` write
/// failures are injected into it mid-run. The run ends with no I/O
/// failed, role 1 faulty and the others in sync, the array degraded with
/// events past those before. Returns bdevperf and the array's info.
fn write_errors_fail_role_1(
    env: &Env,
    files: &[std::path::PathBuf],
    level: &str,
    secs: u32,
    count: u64,
) -> (Proc, serde_json::Value) {
    let mut entries: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, f)| aio(&format!("a{i}"), f))
        .collect();
    entries.push(r#"{"method":"bdev_error_create","params":{"base_name":"a1"}}"#.to_string());
    let names: Vec<String> = (0..files.len())
        .map(|i| {
            if i == 1 {
                "EE_a1".into()
            } else {
                format!("a{i}")
            }
        })
        .collect();
    let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    entries.push(mdraid_create_fresh("r", level, &names));
    let cfg = config(&[("bdev", &entries)]);
    let bp = bdevperf(env, &cfg, 32, 4096, secs);
    let before = array_info(&bp, env, "r");
    assert_eq!(
        member_states(&before),
        vec!["in_sync"; files.len()],
        "{before}"
    );
    let events0 = before["events"].as_u64().unwrap();

    let run = perform_tests(env, &bp.sock, 60);
    std::thread::sleep(Duration::from_millis(1500));
    let n = count.to_string();
    bp.ok(
        env,
        &[
            "bdev_error_inject_error",
            "EE_a1",
            "write",
            "failure",
            "-n",
            &n,
        ],
    );
    run.clean(&format!("{level} with {count} write errors on role 1"));

    let info = array_info(&bp, env, "r");
    println!("after: {info}");
    let mut want = vec!["in_sync"; files.len()];
    want[1] = "faulty";
    assert_eq!(member_states(&info), want, "{info}");
    assert_eq!(info["degraded"], true, "{info}");
    let events = info["events"].as_u64().unwrap();
    assert!(events > events0, "events {events} not past {events0}");
    let log = bp.log_text();
    assert!(
        log.contains("member EE_a1 (role 1) failed; recorded faulty (events"),
        "the failure is not in the log:\n{log}"
    );
    (bp, info)
}

/// raid5 on aio files, one member behind `bdev_error`: write failures are
/// injected into it during a verify run. No I/O fails, the member is
/// failed, and the survivors' superblocks record it. A new bdev then
/// replaces it (`bdev_mdraid_add_base_bdev`, rebuilt), and the failed
/// member's bdev, still open as a replaced member, is deleted: it is
/// closed, so the deletion completes while the array runs.
#[test]
fn bdevperf_raid5_write_errors_fail_member() {
    let Some(env) = spdk_env("fail-error") else {
        return;
    };
    let _g = serial();
    let files = env.files(5, 32);
    let (mut bp, info) = write_errors_fail_role_1(&env, &files[..4], "raid5", 6, 1_000_000);
    assert_eq!(info["num_base_bdevs_operational"], 3);
    assert_eq!(info["state"], "online");

    // Replace EE_a1 with a new bdev; EE_a1 stays open, retired.
    let f4 = files[4].to_str().unwrap();
    bp.ok(&env, &["bdev_aio_create", f4, "a4", "512"]);
    bp.ok(&env, &["bdev_mdraid_add_base_bdev", "r", "a4"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let info = array_info(&bp, &env, "r");
        if info["process"].is_null() && member_states(&info) == ["in_sync"; 4] {
            assert_eq!(info["base_bdevs_list"][1]["name"], "a4", "{info}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a4 not rebuilt: {info}\n{}",
            bp.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Answered once EE_a1 is unregistered: its descriptor must close.
    bp.ok(&env, &["bdev_error_delete", "EE_a1"]);
    let (gone, out) = bp.rpc(&env, &["bdev_get_bdevs", "-b", "EE_a1"]);
    assert!(!gone && out.contains("-19"), "EE_a1 still exists: {out}");
    let info = array_info(&bp, &env, "r");
    assert_eq!(member_states(&info), ["in_sync"; 4], "{info}");

    let log = bp.stop(&env);
    assert!(
        log.contains("member EE_a1 (role 1) removed; its descriptor is closed"),
        "{log}"
    );
    assert!(log.contains("mdraid r: stopped"), "{log}");
    check_failure_recorded(&files[..4], 1);
    env.cleanup();
}

/// raid1 on aio files, one member behind `bdev_error`, one write failure
/// injected during a 4 KiB verify run (the direct path's writes): the
/// member is failed (R1, as md does on a write error) though a retry of
/// the write would land on it, no I/O fails, and the survivor's
/// superblock records it.
#[test]
fn bdevperf_raid1_one_write_error_fails_member() {
    let Some(env) = spdk_env("fail-once") else {
        return;
    };
    let _g = serial();
    let files = env.files(2, 32);
    let (mut bp, _) = write_errors_fail_role_1(&env, &files, "raid1", 4, 1);
    let log = bp.stop(&env);
    assert!(log.contains("mdraid r: stopped"), "{log}");
    check_failure_recorded(&files, 1);
    env.cleanup();
}

/// A verify run on `bp` during which aio bdev `name` is deleted: the
/// deletion is answered once `name` is unregistered (which waits for
/// every descriptor of it to close), and the run ends with no I/O failed.
fn delete_during_run(env: &Env, bp: &Proc, name: &str, what: &str) {
    let run = perform_tests(env, &bp.sock, 60);
    std::thread::sleep(Duration::from_millis(1500));
    bp.ok(env, &["bdev_aio_delete", name]);
    let (gone, out) = bp.rpc(env, &["bdev_get_bdevs", "-b", name]);
    assert!(!gone && out.contains("-19"), "{name} still exists: {out}");
    run.clean(what);
}

/// raid1 on aio files: a member's bdev is deleted (hot-remove) during a
/// verify run. No I/O fails, the member is failed and its descriptor
/// closed, so the deletion completes. A new bdev of the same name on the
/// same file is then brought back with `bdev_mdraid_add_base_bdev` (a new
/// device for the role, tracked afresh) and recovered, and deleted in turn
/// during a second verify run, with the same outcome; the survivor's
/// superblock records it.
#[test]
fn bdevperf_raid1_member_hot_removed() {
    let Some(env) = spdk_env("fail-remove") else {
        return;
    };
    let _g = serial();
    let files = env.files(2, 32);
    let entries = vec![
        aio("a0", &files[0]),
        aio("a1", &files[1]),
        mdraid_create("r", "raid1", &["a0", "a1"]),
    ];
    let cfg = config(&[("bdev", &entries)]);
    let mut bp = bdevperf(&env, &cfg, 32, 4096, 6);
    delete_during_run(&env, &bp, "a1", "raid1 with role 1 hot-removed");

    let info = array_info(&bp, &env, "r");
    println!("after: {info}");
    assert_eq!(member_states(&info), ["in_sync", "faulty"], "{info}");
    assert_eq!(info["state"], "online");

    // The same file under the same name: a new bdev for role 1.
    let f1 = files[1].to_str().unwrap();
    bp.ok(&env, &["bdev_aio_create", f1, "a1", "512"]);
    bp.ok(&env, &["bdev_mdraid_add_base_bdev", "r", "a1"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let info = array_info(&bp, &env, "r");
        if info["process"].is_null() && member_states(&info) == ["in_sync", "in_sync"] {
            println!("a1 back: {info}");
            assert_eq!(info["base_bdevs_list"][1]["name"], "a1", "{info}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a1 not recovered: {info}\n{}",
            bp.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    delete_during_run(&env, &bp, "a1", "raid1 with the new role 1 hot-removed");
    let info = array_info(&bp, &env, "r");
    assert_eq!(member_states(&info), ["in_sync", "faulty"], "{info}");

    let log = bp.stop(&env);
    assert_eq!(
        log.matches("member a1 (role 1) removed; its descriptor is closed")
            .count(),
        2,
        "{log}"
    );
    let back = log
        .lines()
        .find(|l| l.contains("`a1` brought into role 1"))
        .unwrap_or_else(|| panic!("a1 not brought back:\n{log}"));
    println!("{back}");
    assert!(log.contains("mdraid r: stopped"), "{log}");
    check_failure_recorded(&files, 1);
    env.cleanup();
}

/// Every member dead while the array is clean: the first writes wait for
/// the superblocks to say dirty, which no member takes, so they are held
/// (blocked, R3). `bdev_mdraid_delete` gives up on them: they fail, and
/// the delete answers (the users of the bdev could not close it while
/// their writes were held).
#[test]
fn bdevperf_blocked_array_with_every_member_dead_is_deleted() {
    let Some(env) = spdk_env("fail-blocked") else {
        return;
    };
    let _g = serial();
    let mut entries = Vec::new();
    for m in ["k0", "k1"] {
        entries.push(format!(
            r#"{{"method":"bdev_malloc_create","params":{{"name":"{m}","num_blocks":65536,"block_size":512}}}}"#
        ));
        entries.push(format!(
            r#"{{"method":"bdev_error_create","params":{{"base_name":"{m}"}}}}"#
        ));
    }
    entries.push(mdraid_create_fresh("r", "raid1", &["EE_k0", "EE_k1"]));
    let cfg = config(&[("bdev", &entries)]);
    let mut bp = bdevperf(&env, &cfg, 8, 4096, 30);
    for m in ["EE_k0", "EE_k1"] {
        bp.ok(
            &env,
            &[
                "bdev_error_inject_error",
                m,
                "all",
                "failure",
                "-n",
                "1000000",
            ],
        );
    }
    let run = perform_tests(&env, &bp.sock, 60);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info = array_info(&bp, &env, "r");
        if info["array_state"] == "blocked" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never blocked: {info}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = std::time::Instant::now();
    bp.ok(&env, &["bdev_mdraid_delete", "r"]);
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    // The held writes failed: bdevperf stops its job at a failed I/O.
    let (ok, out) = run.finish();
    assert!(
        !ok || !out.contains("\"io_failed\": 0,"),
        "the held writes did not fail:\n{out}"
    );
    // bdevperf ends once its job failed.
    let _ = bp.wait(20);
    let log = bp.log_text();
    assert!(log.contains("deleted while blocked"), "{log}");
    env.cleanup();
}
