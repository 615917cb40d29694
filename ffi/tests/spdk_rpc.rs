//! The SPDK host's member RPCs through rpc.py (and a raw JSON-RPC client
//! for params rpc.py cannot send): `bdev_mdraid_remove_base_bdev`,
//! `bdev_mdraid_set_write_mostly`, `bdev_mdraid_examine` in spdk_tgt, and
//! the per-member I/O counters of `bdev_mdraid_get_bdevs` in bdevperf.
//!
//! Without `SPDK_DIR` each test prints "SPDK tests skipped: SPDK_DIR not
//! set" and passes.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use bdev_raid::ondisk::DevRole;
use common::*;
use serde_json::Value;

/// spdk_tgt with the cdylib, RPC socket `tgt.sock`.
fn spdk_tgt(env: &Env) -> Proc {
    let sock = env.dir.join("tgt.sock");
    let mut c = env.app(180, &env.spdk.join("build/bin/spdk_tgt"), &[&env.so]);
    c.args(APP_OPTS).args(["-s", "2048", "-r"]).arg(&sock);
    Proc::spawn(env, "spdk_tgt", c, &sock)
}

/// bdevperf `-z` on the config, RPC socket `bdevperf.sock`.
fn bdevperf(env: &Env, cfg: &str, secs: u32) -> Proc {
    let path = write_cfg(env, "bdevperf.json", cfg);
    let sock = env.dir.join("bdevperf.sock");
    let mut c = env.app(120, &env.bdevperf(), &[&env.so]);
    c.args(APP_OPTS)
        .args(["-s", "2048", "-r"])
        .arg(&sock)
        .arg("--json")
        .arg(&path)
        .args(["-q", "16", "-o", "4096"])
        .args(["-w", "verify", "-t", &secs.to_string(), "-z"]);
    Proc::spawn(env, "bdevperf", c, &sock)
}

/// One JSON-RPC call with `params` as given (raw JSON text); the reply.
fn raw(sock: &Path, method: &str, params: &str) -> Value {
    let mut s = UnixStream::connect(sock).expect("connect to the RPC socket");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}"#);
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).expect("a reply within 30 s");
        assert!(n > 0, "{method}: connection closed without a reply");
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
            return v;
        }
    }
}

/// A raw call fails with -32602 naming `field`.
fn bad_field(p: &Proc, method: &str, params: &str, field: &str) {
    let v = raw(&p.sock, method, params);
    let e = &v["error"];
    let msg = e["message"].as_str().unwrap_or_default();
    assert_eq!(e["code"], -32602, "{method} {params}: {v}");
    assert!(
        msg.contains(&format!("field `{field}`")),
        "{method} {params}: the message does not name `{field}`: {v}"
    );
}

/// rpc.py fails with `code` and a message containing `needle`.
fn fails(p: &Proc, env: &Env, args: &[&str], code: i32, needle: &str) {
    let (ok, out) = p.rpc(env, args);
    assert!(!ok, "rpc.py {args:?} succeeded:\n{out}");
    assert!(
        out.contains(&format!("\"code\": {code}")) && out.contains(needle),
        "rpc.py {args:?}: expected code {code} and `{needle}`:\n{out}"
    );
}

fn claimed(p: &Proc, env: &Env, bdev: &str) -> bool {
    let v = p.json(env, &["bdev_get_bdevs", "-b", bdev]);
    v[0]["claimed"].as_bool().expect("claimed")
}

/// `bdev_mdraid_get_bdevs` once the array is clean (an idle array's
/// answer then stays the same).
fn settled(p: &Proc, env: &Env) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = p.json(env, &["bdev_mdraid_get_bdevs"]);
        if v.as_array()
            .is_some_and(|a| a.iter().all(|x| x["array_state"] == "clean"))
        {
            return v;
        }
        assert!(Instant::now() < deadline, "not clean: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn member<'a>(info: &'a Value, name: &str) -> &'a Value {
    info["base_bdevs_list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no member {name}: {info}"))
}

/// raid1 of three aio files in spdk_tgt: bad params of each new method
/// change nothing; examine reports the superblocks; write-mostly is set
/// and cleared (get_bdevs and the superblock on disk say so); a member is
/// removed (faulty in get_bdevs, recorded faulty in the survivors'
/// superblocks, its claim released), then a second; removing the last is
/// refused. Deleted without clear_sb, the array comes back by an explicit
/// examine of its member.
#[test]
fn spdk_tgt_remove_set_write_mostly_examine() {
    let Some(env) = spdk_env("rpc-members") else {
        return;
    };
    let _g = serial();
    let files = env.files(3, 32);
    let mut tgt = spdk_tgt(&env);
    for (i, f) in files.iter().enumerate() {
        tgt.ok(
            &env,
            &[
                "bdev_aio_create",
                f.to_str().unwrap(),
                &format!("a{i}"),
                "512",
            ],
        );
    }
    tgt.ok(&env, &["bdev_malloc_create", "-b", "m9", "16", "512"]);
    tgt.ok(
        &env,
        &[
            "bdev_mdraid_create",
            "-n",
            "r",
            "-r",
            "raid1",
            "-b",
            "a0 a1 a2",
        ],
    );
    let before = settled(&tgt, &env);
    let uuid = before[0]["uuid"].as_str().unwrap().to_string();

    // Bad params: -32602 naming the field, or no such device; nothing changes.
    const RM: &str = "bdev_mdraid_remove_base_bdev";
    const WM: &str = "bdev_mdraid_set_write_mostly";
    const EX: &str = "bdev_mdraid_examine";
    bad_field(&tgt, RM, r#"{}"#, "name");
    bad_field(&tgt, RM, r#"{"name":5}"#, "name");
    bad_field(&tgt, RM, r#"{"name":""}"#, "name");
    bad_field(&tgt, RM, r#"{"name":"a0","force":true}"#, "force");
    bad_field(&tgt, RM, r#"{"name":"m9"}"#, "name");
    bad_field(&tgt, RM, r#"{"name":"r"}"#, "name");
    fails(&tgt, &env, &[RM, "nosuch"], -19, "nosuch");
    bad_field(&tgt, WM, r#"{"name":"r","base_bdev":"a1"}"#, "write_mostly");
    bad_field(
        &tgt,
        WM,
        r#"{"name":"r","base_bdev":"a1","write_mostly":"yes"}"#,
        "write_mostly",
    );
    bad_field(&tgt, WM, r#"{"name":"r","write_mostly":true}"#, "base_bdev");
    bad_field(
        &tgt,
        WM,
        r#"{"name":"r","base_bdev":"m9","write_mostly":true}"#,
        "base_bdev",
    );
    fails(&tgt, &env, &[WM, "nosuch", "a1"], -19, "nosuch");
    bad_field(&tgt, EX, r#"{"name":3}"#, "name");
    bad_field(&tgt, EX, r#"{"name":""}"#, "name");
    bad_field(&tgt, EX, r#"{"bdev":"a0"}"#, "bdev");
    bad_field(&tgt, EX, r#"{"name":"r"}"#, "name");
    // By its alias too (SPDK registers a bdev's UUID as one).
    bad_field(&tgt, EX, &format!(r#"{{"name":"{uuid}"}}"#), "name");
    fails(&tgt, &env, &[EX, "-n", "nosuch"], -19, "nosuch");
    assert_eq!(
        tgt.json(&env, &["bdev_mdraid_get_bdevs"]),
        before,
        "bad params changed the array"
    );
    assert!(!claimed(&tgt, &env, "m9"));

    // Examine: what mdadm --examine says of each.
    let v = tgt.json(&env, &[EX, "-n", "a0"]);
    let e = &v[0];
    assert_eq!(e["bdev"], "a0", "{v}");
    assert_eq!(e["has_superblock"], true, "{v}");
    assert_eq!(e["array_uuid"], uuid.as_str(), "{v}");
    assert_eq!(e["raid_level"], "raid1", "{v}");
    assert_eq!(e["raid_devices"], 3, "{v}");
    assert_eq!(e["device_role"], "Active device 0", "{v}");
    let v = tgt.json(&env, &[EX, "-n", "m9"]);
    assert_eq!(v[0]["has_superblock"], false, "{v}");
    let v = tgt.json(&env, &[EX]);
    let seen: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["bdev"].as_str().unwrap())
        .collect();
    for b in ["a0", "a1", "a2", "m9"] {
        assert!(seen.contains(&b), "{b} not examined: {v}");
    }
    assert!(!seen.contains(&"r"), "the array itself examined: {v}");
    assert_eq!(tgt.json(&env, &["bdev_mdraid_get_bdevs"]), before);

    // Write-mostly on, then off: in the state and on disk.
    tgt.ok(&env, &[WM, "r", "a1"]);
    let info = array_info(&tgt, &env, "r");
    assert_eq!(member(&info, "a1")["write_mostly"], true, "{info}");
    assert_eq!(member(&info, "a0")["write_mostly"], false, "{info}");
    assert!(read_sb(&files[1]).write_mostly(), "a1's superblock");
    assert!(!read_sb(&files[0]).write_mostly(), "a0's superblock");
    tgt.ok(&env, &[WM, "r", "a0"]);
    // Every member write-mostly would leave nothing to read from.
    let (ok, out) = tgt.rpc(&env, &[WM, "r", "a2"]);
    assert!(
        !ok && out.contains("-32602") && out.contains("field `write_mostly`"),
        "{out}"
    );
    tgt.ok(&env, &[WM, "r", "a0", "--clear"]);
    tgt.ok(&env, &[WM, "r", "a1", "--clear"]);
    let info = array_info(&tgt, &env, "r");
    for m in ["a0", "a1", "a2"] {
        assert_eq!(member(&info, m)["write_mostly"], false, "{info}");
    }
    assert!(!read_sb(&files[1]).write_mostly(), "a1's superblock");

    // Remove a2: recorded faulty on the survivors, its claim released.
    let stale = read_sb(&files[2]);
    let events0 = array_info(&tgt, &env, "r")["events"].as_u64().unwrap();
    // Named by its alias (its UUID), as create and add accept.
    let a2 = tgt.json(&env, &["bdev_get_bdevs", "-b", "a2"]);
    let a2_uuid = a2[0]["uuid"].as_str().expect("a2's uuid").to_string();
    tgt.ok(&env, &[RM, &a2_uuid]);
    let info = array_info(&tgt, &env, "r");
    assert_eq!(
        member_states(&info),
        ["in_sync", "in_sync", "faulty"],
        "{info}"
    );
    assert_eq!(info["degraded"], true, "{info}");
    assert_eq!(info["state"], "online", "{info}");
    assert_eq!(info["num_base_bdevs_operational"], 2, "{info}");
    assert!(info["events"].as_u64().unwrap() > events0, "{info}");
    // Committed before the answer: the survivors' superblocks have it.
    let dev = stale.dev_number as usize;
    for f in &files[..2] {
        let sb = read_sb(f);
        assert_eq!(sb.dev_roles.get(dev), Some(&DevRole::Faulty), "{sb:?}");
        assert!(sb.events > stale.events, "{sb:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while claimed(&tgt, &env, "a2") {
        assert!(
            Instant::now() < deadline,
            "a2 still claimed:\n{}",
            tgt.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    bad_field(&tgt, RM, r#"{"name":"a2"}"#, "name");

    // A second one; the last is refused and stays.
    tgt.ok(&env, &[RM, "a1"]);
    let before = settled(&tgt, &env);
    assert_eq!(
        member_states(&before[0]),
        ["in_sync", "faulty", "faulty"],
        "{before}"
    );
    fails(&tgt, &env, &[RM, "a0"], -16, "offline");
    assert_eq!(tgt.json(&env, &["bdev_mdraid_get_bdevs"]), before);
    assert!(claimed(&tgt, &env, "a0"));

    // Deleted without clear_sb, a0 stays registered and SPDK does not
    // examine it again: an explicit examine assembles the array (a0's
    // superblock records the others faulty, so it is complete).
    tgt.ok(&env, &["bdev_mdraid_delete", "r"]);
    assert_eq!(tgt.ok(&env, &["bdev_mdraid_get_bdevs"]).trim(), "[]");
    let v = tgt.json(&env, &[EX, "-n", "a0"]);
    assert_eq!(v[0]["array_uuid"], uuid.as_str(), "{v}");
    let info = array_info(&tgt, &env, "r");
    assert_eq!(info["uuid"], uuid.as_str(), "{info}");
    assert_eq!(member_states(&info)[0], "in_sync", "{info}");
    assert!(claimed(&tgt, &env, "a0"));

    let log = tgt.stop(&env);
    assert!(
        log.contains("removed by bdev_mdraid_remove_base_bdev"),
        "{log}"
    );
    let sb = read_sb(&files[0]);
    assert!(sb.is_clean(), "{sb:?}");
    env.cleanup();
}

/// Per-member I/O counters in bdevperf (raid1 of two malloc bdevs under
/// `-w verify`): present and growing during the run (live channels) and
/// kept after it (the jobs' channels are gone by then).
#[test]
fn bdevperf_member_io_counters() {
    let Some(env) = spdk_env("rpc-io") else {
        return;
    };
    let _g = serial();
    let entries = vec![
        r#"{"method":"bdev_malloc_create","params":{"name":"m0","num_blocks":65536,"block_size":512}}"#.to_string(),
        r#"{"method":"bdev_malloc_create","params":{"name":"m1","num_blocks":65536,"block_size":512}}"#.to_string(),
        // No initial resync: only bdevperf's I/O is counted.
        r#"{"method":"bdev_mdraid_create","params":{"name":"r","raid_level":"raid1","base_bdevs":"m0 m1","assume_clean":true}}"#.to_string(),
    ];
    let cfg = config(&[("bdev", &entries)]);
    let mut bp = bdevperf(&env, &cfg, 4);
    let io = |info: &Value, m: usize| -> Value { info["base_bdevs_list"][m]["io"].clone() };
    let idle = array_info(&bp, &env, "r");
    for m in 0..2 {
        assert_eq!(io(&idle, m)["writes"], 0, "{idle}");
    }
    let run = perform_tests(&env, &bp.sock, 60);
    std::thread::sleep(Duration::from_millis(2000));
    let during = array_info(&bp, &env, "r");
    let (res, out) = run.results();
    assert_eq!(res.status, "finished", "{out}");
    assert_eq!(res.io_failed, 0, "{out}");
    let after = array_info(&bp, &env, "r");
    println!("during: {during}\nafter: {after}");
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k}: {v}"));
    let mut reads = 0;
    for m in 0..2 {
        let (d, a) = (io(&during, m), io(&after, m));
        assert!(
            n(&d, "writes") > 0,
            "member {m}: no writes counted: {during}"
        );
        assert!(
            n(&a, "writes") > n(&d, "writes"),
            "member {m}: writes did not grow: {during} {after}"
        );
        // raid1: every write goes to both, 8 blocks each.
        assert_eq!(n(&a, "written_blocks"), 8 * n(&a, "writes"), "{after}");
        assert_eq!(n(&a, "errors"), 0, "{after}");
        assert_eq!(n(&a, "outstanding"), 0, "{after}");
        reads += n(&a, "reads");
    }
    assert_eq!(
        n(&io(&after, 0), "writes"),
        n(&io(&after, 1), "writes"),
        "{after}"
    );
    assert!(reads > 0, "verify reads not counted: {after}");
    bp.stop(&env);
    env.cleanup();
}
