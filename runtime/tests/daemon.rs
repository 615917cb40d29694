//! The real `mdraid` binary: `serve` driven over its JSON-RPC socket (our
//! client, the CLI, SPDK's Python client), config files and restarts,
//! `examine`, and an RPC fuzz. Each test has its own directory, socket and
//! members; every wait is bounded; the daemon is killed at the end.
//!
//! Tools that are missing (SPDK's Python client) make their test print
//! SKIP, unless MDRAID_REQUIRE_TOOLS=1.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mdraid_rpc::RpcError;
use serde_json::{json, Value};

mod process;
use process::*;

/// Member size: 32 MiB (md's 1 MiB data offset leaves 31 MiB of data).
const MEMBER_BYTES: u64 = 32 << 20;
const MEMBER_BLOCKS: u64 = MEMBER_BYTES / 512;

fn expect_field(e: &RpcError, field: &str) {
    assert_eq!(e.code, -32602, "{e}");
    assert!(
        e.message.contains(&format!("field `{field}`")),
        "error should name `{field}`: {e}"
    );
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

fn malloc(d: &Daemon, name: &str) {
    assert_eq!(
        d.ok(
            "bdev_malloc_create",
            json!({"name": name, "num_blocks": MEMBER_BLOCKS, "block_size": 512})
        ),
        json!(name)
    );
}

fn sb_area(path: &Path) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, 4096)
        .unwrap();
    b
}

/// The array's entry in bdev_mdraid_get_bdevs.
fn array(d: &Daemon, name: &str) -> Value {
    let v = d.ok("bdev_mdraid_get_bdevs", json!({"name": name}));
    v[0].clone()
}

// ---------------------------------------------------------------- RPC

#[test]
fn members_and_arrays_of_every_level() {
    let _g = serial();
    let dir = TempDir::new("levels");
    let d = Daemon::start(&dir, "d", None);
    assert_eq!(d.ok("framework_wait_init", Value::Null), json!(true));
    let methods = d.ok("rpc_get_methods", Value::Null);
    for m in [
        "bdev_mdraid_create",
        "bdev_aio_create",
        "save_config",
        "mdraid_nbd_export_add",
    ] {
        assert!(
            methods.as_array().unwrap().contains(&json!(m)),
            "{m} missing"
        );
    }
    for i in 0..8 {
        malloc(&d, &format!("m{i}"));
    }
    for i in 0..7 {
        d.aio(
            &format!("f{i}"),
            &dir.member(&format!("f{i}.img"), MEMBER_BYTES),
        );
    }
    // An auto-named malloc bdev, SPDK style.
    let auto = d.ok(
        "bdev_malloc_create",
        json!({"num_blocks": 2048, "block_size": 4096}),
    );
    assert!(auto.as_str().unwrap().starts_with("Malloc"), "{auto}");

    let arrays = [
        ("r0", "raid0", vec!["m0", "m1"], 64),
        ("r1", "raid1", vec!["m2", "f0"], 0),
        ("r5", "raid5", vec!["f1", "f2", "f3"], 64),
        ("r6", "raid6", vec!["m3", "m4", "m5", "m6"], 32),
        ("r10", "raid10", vec!["f4", "f5", "f6", "m7"], 128),
    ];
    for (name, level, members, strip) in &arrays {
        // Fresh members (zeros): no initial resync, clean at once.
        let mut p = json!({"name": name, "raid_level": level, "base_bdevs": members,
            "assume_clean": true});
        if *strip > 0 {
            p["strip_size_kb"] = json!(strip);
        }
        assert_eq!(d.ok("bdev_mdraid_create", p), json!(true), "{name}");
    }
    let all = d.ok("bdev_mdraid_get_bdevs", json!({"category": "all"}));
    assert_eq!(names(&all), ["r0", "r1", "r5", "r6", "r10"]);
    // md refuses sync_action on a level with nothing to sync.
    for action in ["check", "frozen", "idle"] {
        let e = d.err(
            "bdev_mdraid_sync_action",
            json!({"name": "r0", "action": action}),
        );
        expect_field(&e, "action");
        assert!(e.message.contains("no redundancy"), "{e}");
    }
    for (a, (name, level, members, strip)) in all.as_array().unwrap().iter().zip(&arrays) {
        assert_eq!(a["raid_level"], json!(level), "{a}");
        assert_eq!(a["state"], "online", "{a}");
        assert_eq!(a["superblock"], true);
        assert_eq!(a["strip_size_kb"], json!(strip), "{name}");
        assert_eq!(a["num_base_bdevs"], json!(members.len()));
        assert_eq!(a["num_base_bdevs_operational"], json!(members.len()));
        assert_eq!(a["degraded"], false);
        assert_eq!(a["array_state"], "clean");
        assert_eq!(a["sync_action"], "idle");
        let ms: Vec<&str> = a["base_bdevs_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                assert_eq!(m["state"], "in_sync");
                m["name"].as_str().unwrap()
            })
            .collect();
        assert_eq!(&ms, members);
    }
    assert_eq!(
        d.ok("bdev_mdraid_get_bdevs", json!({"category": "offline"})),
        json!([])
    );
    // Arrays are bdevs too; members are claimed.
    let bdevs = d.ok("bdev_get_bdevs", Value::Null);
    let r5 = bdevs
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "r5")
        .unwrap();
    assert_eq!(r5["product_name"], "mdraid");
    assert_eq!(r5["block_size"], 512);
    // 3 members of 31 MiB, 64 KiB strips: two data strips per row.
    assert_eq!(r5["num_blocks"], json!(2 * (31 << 20) / 512));
    assert_eq!(r5["driver_specific"]["mdraid"]["raid_level"], "raid5");
    let f1 = d.ok("bdev_get_bdevs", json!({"name": "f1"}));
    assert_eq!(f1[0]["claimed"], true);
    assert_eq!(f1[0]["product_name"], "AIO disk");
    // A claimed member cannot be deleted or used twice.
    assert_eq!(d.err("bdev_aio_delete", json!({"name": "f1"})).code, -16);
    expect_field(
        &d.err(
            "bdev_mdraid_create",
            json!({"name": "x", "raid_level": "raid1", "base_bdevs": ["m0", "Malloc0"]}),
        ),
        "base_bdevs[0]",
    );
    // The wrong delete method for a kind is "no such device", like SPDK.
    assert_eq!(d.err("bdev_malloc_delete", json!({"name": "f0"})).code, -19);
    // md's superblock is on the file members.
    let sb = sb_area(&dir.path("f1.img"));
    assert_eq!(&sb[..4], &0xa92b4efcu32.to_le_bytes());
    // examine over RPC.
    let ex = d.ok("bdev_mdraid_examine", json!({"name": "f2"}));
    assert_eq!(ex[0]["has_superblock"], true);
    assert_eq!(ex[0]["raid_level"], "raid5");
    assert_eq!(ex[0]["device_role"], "Active device 1");
    assert_eq!(ex[0]["array_uuid"], r5["uuid"]);
    let ex = d.ok("bdev_mdraid_examine", json!({"name": auto}));
    assert_eq!(ex[0]["has_superblock"], false);
    // An array is not a member: the field is named, as the SPDK host does.
    expect_field(
        &d.err("bdev_mdraid_examine", json!({"name": arrays[0].0})),
        "name",
    );

    // Delete: arrays, then members.
    for (name, _, members, _) in &arrays {
        assert_eq!(
            d.ok("bdev_mdraid_delete", json!({"name": name})),
            json!(true)
        );
        for m in members {
            let b = d.ok("bdev_get_bdevs", json!({"name": m}));
            assert_eq!(
                b[0]["claimed"], false,
                "{m} still claimed after deleting {name}"
            );
        }
    }
    assert_eq!(d.ok("bdev_mdraid_get_bdevs", Value::Null), json!([]));
    assert_eq!(d.err("bdev_mdraid_delete", json!({"name": "r0"})).code, -19);
    for i in 0..8 {
        d.ok("bdev_malloc_delete", json!({"name": format!("m{i}")}));
    }
    for i in 0..7 {
        d.ok("bdev_aio_delete", json!({"name": format!("f{i}")}));
    }
    d.ok("bdev_malloc_delete", json!({"name": auto}));
    assert_eq!(d.ok("bdev_get_bdevs", Value::Null), json!([]));
    // Superblocks stay without clear_sb: creating again assembles.
    d.aio("f1", &dir.path("f1.img"));
    d.aio("f2", &dir.path("f2.img"));
    d.aio("f3", &dir.path("f3.img"));
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "again", "raid_level": "raid5", "base_bdevs": ["f3", "f1", "f2"], "strip_size_kb": 64}),
    );
    let again = array(&d, "again");
    assert_eq!(again["uuid"], r5["uuid"], "not assembled: {again}");
    // Roles come from the superblocks, not the order given.
    let order: Vec<&str> = again["base_bdevs_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["f1", "f2", "f3"]);
    // clear_sb wipes them.
    d.ok(
        "bdev_mdraid_delete",
        json!({"name": "again", "clear_sb": true}),
    );
    assert!(sb_area(&dir.path("f1.img")).iter().all(|b| *b == 0));
}

#[test]
fn bad_params_name_the_field_and_create_nothing() {
    let _g = serial();
    let dir = TempDir::new("badparams");
    let d = Daemon::start(&dir, "d", None);
    malloc(&d, "m0");
    malloc(&d, "m1");
    malloc(&d, "m2");
    let f = dir.member("f0.img", MEMBER_BYTES);
    d.aio("f0", &f);
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "keep", "raid_level": "raid1", "base_bdevs": ["m2", "f0"], "assume_clean": true}),
    );
    let before = d.ok("bdev_get_bdevs", Value::Null);
    let before_arrays = d.ok("bdev_mdraid_get_bdevs", Value::Null);
    let r = |extra: Value| {
        let mut p = json!({"name": "r", "raid_level": "raid5", "base_bdevs": ["m0", "m1", "Malloc9"], "strip_size_kb": 64});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                p.as_object_mut().unwrap().remove(k);
            } else {
                p[k] = v.clone();
            }
        }
        p
    };
    malloc(&d, "Malloc9");
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "bdev_mdraid_create",
            r(json!({"strip_size_kb": 63})),
            "strip_size_kb",
        ),
        (
            "bdev_mdraid_create",
            r(json!({"strip_size_kb": "64"})),
            "strip_size_kb",
        ),
        (
            "bdev_mdraid_create",
            r(json!({"raid_level": null})),
            "raid_level",
        ),
        (
            "bdev_mdraid_create",
            r(json!({"raid_level": "raid7"})),
            "raid_level",
        ),
        (
            "bdev_mdraid_create",
            r(json!({"base_bdevs": ["m0", "m1"]})),
            "base_bdevs",
        ),
        (
            "bdev_mdraid_create",
            r(json!({"raid_level": "raid6"})),
            "base_bdevs",
        ),
        (
            "bdev_mdraid_create",
            r(json!({"base_bdevs": ["m0", "nope", "m1"]})),
            "base_bdevs[1]",
        ),
        (
            "bdev_mdraid_create",
            r(json!({"base_bdevs": ["m0", "m0", "m1"]})),
            "base_bdevs[1]",
        ),
        (
            "bdev_mdraid_create",
            r(json!({"base_bdevs": ["m0", "m1", "f0"]})),
            "base_bdevs[2]",
        ),
        (
            "bdev_mdraid_create",
            r(json!({"base_bdevs": ["m0", "m1", "keep"]})),
            "base_bdevs[2]",
        ),
        (
            "bdev_mdraid_create",
            r(json!({"raid_level": "raid0", "bitmap": true})),
            "bitmap",
        ),
        (
            "bdev_mdraid_create",
            r(json!({"bitmap": {"chunk_kb": 48}})),
            "bitmap.chunk_kb",
        ),
        (
            "bdev_mdraid_create",
            r(json!({"bitmap": {"chunk_kb": 2}})),
            "bitmap.chunk_kb",
        ),
        (
            "bdev_mdraid_create",
            r(json!({"bitmap": {"chunk_kb": 0}})),
            "bitmap.chunk_kb",
        ),
        (
            "bdev_mdraid_create",
            r(json!({"write_mostly": ["m0"]})),
            "write_mostly",
        ),
        ("bdev_mdraid_create", r(json!({"layout": "n2"})), "layout"),
        (
            "bdev_mdraid_create",
            r(json!({"uuid": "not-a-uuid"})),
            "uuid",
        ),
        ("bdev_mdraid_create", r(json!({"colour": "blue"})), "colour"),
        ("bdev_mdraid_create", r(json!({"name": null})), "name"),
        ("bdev_mdraid_create", r(json!({"name": ""})), "name"),
        (
            "bdev_malloc_create",
            json!({"num_blocks": "8", "block_size": 512}),
            "num_blocks",
        ),
        (
            "bdev_malloc_create",
            json!({"num_blocks": 8, "block_size": 1000}),
            "block_size",
        ),
        (
            "bdev_malloc_create",
            json!({"num_blocks": 8, "block_size": 1536}),
            "block_size",
        ),
        (
            "bdev_malloc_create",
            json!({"name": "big", "num_blocks": 1u64 << 40, "block_size": 4096}),
            "num_blocks",
        ),
        (
            "bdev_malloc_create",
            json!({"num_blocks": u64::MAX, "block_size": 4096}),
            "num_blocks",
        ),
        (
            "bdev_aio_create",
            json!({"name": "a", "filename": ""}),
            "filename",
        ),
        (
            "bdev_aio_create",
            json!({"name": "a", "filename": "/", "block_size": 512}),
            "filename",
        ),
        (
            "bdev_delay_create",
            json!({"name": "dl", "base_bdev_name": "m0", "avg_read_latency": 10, "p99_read_latency": 5, "avg_write_latency": 1, "p99_write_latency": 1}),
            "p99_read_latency",
        ),
        (
            "bdev_error_inject_error",
            json!({"name": "m0", "io_type": "sideways", "error_type": "failure"}),
            "io_type",
        ),
        ("bdev_get_bdevs", json!({"name": 7}), "name"),
    ];
    for (m, p, field) in &cases {
        let e = d.err(m, p.clone());
        expect_field(&e, field);
    }
    d.ok("bdev_malloc_delete", json!({"name": "Malloc9"}));
    assert_eq!(
        d.ok("bdev_get_bdevs", Value::Null),
        before,
        "a failed call left something behind"
    );
    assert_eq!(d.ok("bdev_mdraid_get_bdevs", Value::Null), before_arrays);
    // Errors that are not about params, SPDK's codes.
    assert_eq!(d.err("bdev_raid_create", json!({})).code, -32601);
    assert_eq!(d.err("no_such_method", Value::Null).code, -32601);
    assert_eq!(
        d.err(
            "bdev_malloc_create",
            json!({"name": "m0", "num_blocks": 8, "block_size": 512})
        )
        .code,
        -17
    );
    assert_eq!(
        d.err(
            "bdev_aio_create",
            json!({"name": "a", "filename": dir.path("missing.img").display().to_string()})
        )
        .code,
        -2
    );
    assert_eq!(d.err("bdev_get_bdevs", json!({"name": "nope"})).code, -19);
    // md's check over a raid1 whose copies agree: no mismatch.
    d.ok(
        "bdev_mdraid_sync_action",
        json!({"name": "keep", "action": "check"}),
    );
    let t0 = std::time::Instant::now();
    let info = loop {
        let v = d.ok("bdev_mdraid_get_bdevs", json!({"name": "keep"}));
        if v[0]["sync_action"] == "idle" && v[0]["mismatch_cnt"].is_u64() {
            break v;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "check never ended: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(info[0]["mismatch_cnt"], 0, "{info}");
    let e = d.err(
        "bdev_mdraid_sync_action",
        json!({"name": "nope", "action": "check"}),
    );
    assert_eq!(e.code, -19, "{e}");
    // Removing a bdev that is no member: -32602 naming `name`
    // (tests/daemon_remove.rs removes members).
    let e = d.err("bdev_mdraid_remove_base_bdev", json!({"name": "m0"}));
    expect_field(&e, "name");
    assert_eq!(
        d.err("bdev_mdraid_remove_base_bdev", json!({"name": "nope"}))
            .code,
        -19
    );
    // A bdev that is no array, named where an array is wanted.
    for (m, params) in [
        ("bdev_mdraid_delete", json!({"name": "m0"})),
        ("bdev_mdraid_get_bdevs", json!({"name": "m0"})),
        (
            "bdev_mdraid_sync_action",
            json!({"name": "m0", "action": "check"}),
        ),
        (
            "bdev_mdraid_add_base_bdev",
            json!({"raid_bdev": "m0", "base_bdev": "m1"}),
        ),
    ] {
        let e = d.err(m, params);
        assert_eq!(e.code, -19, "{m}: {e}");
        assert!(e.message.contains("m0 is not an mdraid array"), "{m}: {e}");
    }
    // Adding a member to an array with every role served is refused.
    let e = d.err(
        "bdev_mdraid_add_base_bdev",
        json!({"raid_bdev": "keep", "base_bdev": "m0"}),
    );
    assert_eq!(e.code, -16, "{e}");
    assert!(e.message.contains("no faulty or missing member"), "{e}");
    // Nor is one of its members, named as such.
    let member = array(&d, "keep")["base_bdevs_list"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let e = d.err(
        "bdev_mdraid_add_base_bdev",
        json!({"raid_bdev": "keep", "base_bdev": member}),
    );
    expect_field(&e, "base_bdev");
    assert!(e.message.contains("already serves role 0"), "{e}");
    let e = d.err(
        "bdev_mdraid_add_base_bdev",
        json!({"raid_bdev": "keep", "base_bdev": "nope"}),
    );
    assert!(e.message.contains("base_bdev"), "{e}");
    // The CLI client: result on stdout and exit 0; errors exit 1.
    let out = Command::new(BIN)
        .args(["rpc", "-s"])
        .arg(&d.sock)
        .args(["bdev_get_bdevs", r#"{"name": "m0"}"#])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "m0");
    let out = Command::new(BIN)
        .args(["rpc", "-s"])
        .arg(&d.sock)
        .args(["bdev_mdraid_create", r#"{"name": "x", "raid_level": "raid0", "base_bdevs": ["m0", "m1"], "strip_size_kb": 3}"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("strip_size_kb"));
    // Seconds that are no number of seconds are refused, not a panic.
    for (cmd, opt) in [("rpc", "-t"), ("status", "--watch")] {
        for bad in ["nan", "inf", "0"] {
            let mut c = Command::new(BIN);
            c.args([cmd, "-s"]).arg(&d.sock).arg(format!("{opt}={bad}"));
            if cmd == "rpc" {
                c.arg("spdk_get_version");
            }
            let out = c.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} {opt} {bad}: {err}");
            assert!(err.contains("seconds must be a number above 0"), "{err}");
        }
    }
    // status shows the array.
    let out = Command::new(BIN)
        .args(["status", "-s"])
        .arg(&d.sock)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("keep: raid1") && text.contains("in_sync") && text.contains("idle"),
        "{text}"
    );
    let out = Command::new(BIN)
        .args(["status", "--json", "-s"])
        .arg(&d.sock)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "keep");
}

// ---------------------------------------------------------------- config

/// Members in files, a raid5 and a raid1 array; returns the daemon.
fn build_config_state(dir: &TempDir, d: &Daemon) {
    for i in 0..5 {
        d.aio(
            &format!("a{i}"),
            &dir.member(&format!("a{i}.img"), MEMBER_BYTES),
        );
    }
    malloc(d, "scratch");
    d.ok("bdev_error_create", json!({"base_name": "a4"}));
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "md5", "raid_level": "raid5", "base_bdevs": ["a0", "a1", "a2"], "strip_size_kb": 128, "assume_clean": true}),
    );
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "md1", "raid_level": "raid1", "base_bdevs": ["a3", "EE_a4"], "assume_clean": true}),
    );
}

/// Bdevs (name, uuid) and arrays (name, uuid, events, members).
type Summary = (
    Vec<(String, String)>,
    Vec<(String, String, u64, Vec<String>)>,
);

fn summary(d: &Daemon) -> Summary {
    let bdevs = d.ok("bdev_get_bdevs", Value::Null);
    let b = bdevs
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().into(),
                b["uuid"].as_str().unwrap().into(),
            )
        })
        .collect();
    let arrays = d.ok("bdev_mdraid_get_bdevs", Value::Null);
    let a = arrays
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().into(),
                a["uuid"].as_str().unwrap().into(),
                a["events"].as_u64().unwrap(),
                a["base_bdevs_list"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["name"].as_str().unwrap_or("-").to_string())
                    .collect(),
            )
        })
        .collect();
    (b, a)
}

#[test]
fn save_config_and_restart_assembles() {
    let _g = serial();
    let dir = TempDir::new("restart");
    let mut d = Daemon::start(&dir, "d1", None);
    build_config_state(&dir, &d);
    // Process options are saved too (first, so a rebuild at load has them).
    d.ok(
        "bdev_mdraid_set_options",
        json!({"process_window_size_kb": 256, "process_max_bandwidth_mb_sec": 50}),
    );
    let first = summary(&d);
    let saved = d.ok("save_config", Value::Null);
    assert_eq!(
        saved["subsystems"][0]["config"][0],
        json!({"method": "bdev_mdraid_set_options",
               "params": {"process_window_size_kb": 256, "process_max_bandwidth_mb_sec": 50}}),
        "{saved}"
    );
    let cfg = dir.path("saved.json");
    std::fs::write(&cfg, serde_json::to_string_pretty(&saved).unwrap()).unwrap();
    // Arrays carry their uuid in the saved config.
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains(&first.1[0].1), "{text}");
    let st = d.term();
    assert!(st.success(), "SIGTERM exit: {st:?}\n{}", d.stderr());
    assert!(d.stderr().contains("stopped clean"), "{}", d.stderr());

    // Restart from the file: same bdevs, same arrays (uuid, events,
    // members), assembled from their superblocks.
    let mut d = Daemon::start(&dir, "d2", Some(&cfg));
    assert_eq!(summary(&d), first);
    assert!(
        d.stderr().contains("assembled raid5 array md5"),
        "{}",
        d.stderr()
    );
    assert_eq!(
        d.ok("save_config", Value::Null),
        saved,
        "save_config does not round-trip"
    );

    // kill -9, restart again: still assembled, nothing lost.
    d.kill9();
    let d = Daemon::start(&dir, "d3", Some(&cfg));
    assert_eq!(summary(&d), first);
    // framework_get_config (what rpc.py's save_config uses).
    let bdev = d.ok("framework_get_config", json!({"name": "bdev"}));
    assert_eq!(bdev, saved["subsystems"][0]["config"]);
}

#[test]
fn config_errors_name_the_entry_and_touch_nothing() {
    let _g = serial();
    let dir = TempDir::new("cfgerr");
    let files: Vec<PathBuf> = (0..3)
        .map(|i| dir.member(&format!("c{i}.img"), MEMBER_BYTES))
        .collect();
    let entry = |i: usize| json!({"method": "bdev_aio_create", "params": {"name": format!("c{i}"), "filename": files[i].display().to_string()}});
    let raid = json!({"method": "bdev_mdraid_create", "params": {"name": "r", "raid_level": "raid1", "base_bdevs": ["c0", "c1"]}});
    let write = |name: &str, cfg: Vec<Value>| {
        let p = dir.path(name);
        std::fs::write(
            &p,
            serde_json::to_string_pretty(
                &json!({"subsystems": [{"subsystem": "bdev", "config": cfg}]}),
            )
            .unwrap(),
        )
        .unwrap();
        p
    };
    let zero = |p: &Path| sb_area(p).iter().all(|b| *b == 0);
    // The daemon does not start with `cfg`; its error says every `want`.
    let refused = |tag: &str, cfg: &Path, want: &[&str]| {
        let f = Daemon::try_start(&dir, tag, Some(cfg)).expect_err("must not start");
        assert_ne!(f.code, Some(0));
        for w in want {
            assert!(f.stderr.contains(w), "{tag}: no `{w}` in {}", f.stderr);
        }
    };

    // A params error in the 4th entry: nothing created, exit non-zero.
    let cfg = write(
        "bad1.json",
        vec![
            entry(0),
            entry(1),
            raid.clone(),
            json!({"method": "bdev_malloc_create", "params": {"num_blocks": 8, "block_size": 1000}}),
        ],
    );
    refused("e1", &cfg, &["config[3]", "field `block_size`"]);
    assert!(
        zero(&files[0]) && zero(&files[1]),
        "a superblock was written"
    );

    // A host-level error found before anything is applied: a missing member.
    let cfg = write(
        "bad2.json",
        vec![
            entry(0),
            entry(1),
            entry(2),
            raid.clone(),
            json!({"method": "bdev_mdraid_create", "params": {"name": "q", "raid_level": "raid1", "base_bdevs": ["c2", "nope"]}}),
        ],
    );
    refused("e2", &cfg, &["config[4]", "base_bdevs[1]"]);
    assert!(
        zero(&files[0]) && zero(&files[1]),
        "a superblock was written"
    );

    // A missing file.
    let cfg = write(
        "bad3.json",
        vec![
            json!({"method": "bdev_aio_create", "params": {"name": "z", "filename": dir.path("nope.img").display().to_string()}}),
        ],
    );
    refused("e3", &cfg, &["config[0]", "filename"]);

    // Entries that fail after the arrays (found by the preflight), and a
    // command-line listener that cannot be: refused before a member is
    // touched.
    let mdraid_cfg = |name: &str, bdev: Vec<Value>, mdraid: Vec<Value>| {
        let p = dir.path(name);
        std::fs::write(
            &p,
            serde_json::to_string(&json!({"subsystems": [
                {"subsystem": "bdev", "config": bdev},
                {"subsystem": "mdraid", "config": mdraid}
            ]}))
            .unwrap(),
        )
        .unwrap();
        p
    };
    let raid0 = json!({"method": "bdev_mdraid_create", "params": {"name": "r", "raid_level": "raid0", "base_bdevs": ["c0", "c1"], "strip_size_kb": 64}});
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    for (tag, cfg, want) in [
        (
            "sync0",
            write(
                "sync0.json",
                vec![
                    entry(0),
                    entry(1),
                    raid0.clone(),
                    json!({"method": "bdev_mdraid_sync_action", "params": {"name": "r", "action": "check"}}),
                ],
            ),
            "field `action`",
        ),
        (
            "rm0",
            write(
                "rm0.json",
                vec![
                    entry(0),
                    entry(1),
                    raid0.clone(),
                    json!({"method": "bdev_mdraid_remove_base_bdev", "params": {"name": "c1"}}),
                ],
            ),
            "take the array offline",
        ),
        (
            "addnone",
            write(
                "addnone.json",
                vec![
                    entry(0),
                    entry(1),
                    raid.clone(),
                    json!({"method": "bdev_mdraid_add_base_bdev", "params": {"raid_bdev": "r", "base_bdev": "nosuch"}}),
                ],
            ),
            "field `base_bdev`",
        ),
        (
            "delexp",
            mdraid_cfg(
                "delexp.json",
                vec![entry(0), entry(1), raid.clone()],
                vec![
                    json!({"method": "mdraid_nbd_export_add", "params": {"bdev_name": "r"}}),
                    json!({"method": "bdev_mdraid_delete", "params": {"name": "r"}}),
                ],
            ),
            "exported over NBD",
        ),
        (
            "port",
            mdraid_cfg(
                "port.json",
                vec![entry(0), entry(1), raid.clone()],
                vec![
                    json!({"method": "mdraid_nbd_listener_add", "params": {"address": "127.0.0.1", "port": busy_port}}),
                ],
            ),
            "field `port`",
        ),
    ] {
        refused(tag, &cfg, &[want]);
        assert!(
            zero(&files[0]) && zero(&files[1]),
            "{tag}: a superblock was written"
        );
    }
    drop(busy);
    let good = write("clean.json", vec![entry(0), entry(1), raid.clone()]);
    for (tag, flag, val) in [
        ("tcp", "--nbd-tcp", "192.0.2.1:10809".to_string()),
        (
            "unix",
            "--nbd-unix",
            dir.path("nodir/nbd.sock").display().to_string(),
        ),
    ] {
        let (mut args, _) = serve_args(&dir, tag, Some(&good));
        args.extend([flag.to_string(), val]);
        let out = Command::new(BIN).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{tag}: {err}");
        assert!(err.contains("NBD listener"), "{tag}: {err}");
        assert!(
            zero(&files[0]) && zero(&files[1]),
            "{tag}: a superblock was written"
        );
        assert!(
            !dir.path(&format!("{tag}.sock")).exists(),
            "{tag}: RPC socket left"
        );
    }
    // A core the machine does not have (SPDK refuses it too).
    let out = Command::new(BIN)
        .args(["serve", "--interrupt", "--cores", "1000", "-r"])
        .arg(dir.path("cores.sock"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("core 1000 is not online"), "{err}");
    // An RPC socket path that is a regular file is not replaced.
    let plain = dir.path("plain.txt");
    std::fs::write(&plain, b"keep").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--interrupt", "--cores", "0", "-r"])
        .arg(&plain)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("exists and is not a socket"), "{err}");
    assert_eq!(std::fs::read(&plain).unwrap(), b"keep");

    // A config that would stop the daemon once it answers an RPC.
    let cfg = write(
        "kill.json",
        vec![
            entry(0),
            json!({"method": "spdk_kill_instance", "params": {"sig_name": "SIGTERM"}}),
        ],
    );
    refused("e6", &cfg, &["config[1]", "spdk_kill_instance"]);

    // A config that would wipe a member at every start.
    let cfg = write(
        "zero.json",
        vec![
            entry(0),
            json!({"method": "bdev_mdraid_zero_superblock", "params": {"name": "c0"}}),
        ],
    );
    refused("e7", &cfg, &["config[1]", "bdev_mdraid_zero_superblock"]);

    // One file as two bdevs (a mirror on one file): refused before
    // anything is written.
    let cfg = write(
        "twice.json",
        vec![
            entry(0),
            json!({"method": "bdev_aio_create", "params": {"name": "c1", "filename": files[0].display().to_string()}}),
            raid.clone(),
        ],
    );
    refused(
        "e5",
        &cfg,
        &["config[1]", "field `filename`", "already bdev `c0`"],
    );
    assert!(zero(&files[0]), "a superblock was written");

    // Members carrying another array: refused, naming the member, and
    // their superblocks are left as they were.
    let good = write("good.json", vec![entry(0), entry(1), raid.clone()]);
    let mut d = Daemon::start(&dir, "g", Some(&good));
    assert!(d.term().success());
    let sb0 = sb_area(&files[0]);
    assert!(!zero(&files[0]));
    let other = write(
        "other.json",
        vec![
            entry(0),
            entry(1),
            json!({"method": "bdev_mdraid_create", "params": {"name": "r", "raid_level": "raid1", "base_bdevs": ["c0", "c1"], "uuid": "11111111-2222-3333-4444-555555555555"}}),
        ],
    );
    refused(
        "e4",
        &other,
        &["config[2]", "base_bdevs[0]", "another array"],
    );
    assert_eq!(sb_area(&files[0]), sb0);
    // The same over RPC.
    let d = Daemon::start(&dir, "g2", None);
    d.aio("c0", &files[0]);
    // A file already open as a bdev, here or by another daemon: refused.
    let e = d.err(
        "bdev_aio_create",
        json!({"name": "again", "filename": files[0].display().to_string()}),
    );
    expect_field(&e, "filename");
    assert!(e.message.contains("already bdev `c0`"), "{e}");
    let other = Daemon::start(&dir, "g3", None);
    let e = other.err(
        "bdev_uring_create",
        json!({"name": "c0", "filename": files[0].display().to_string()}),
    );
    assert_eq!(e.code, -16, "{e}");
    drop(other);
    d.aio("c2", &files[2]);
    let e = d.err(
        "bdev_mdraid_create",
        json!({"name": "n", "raid_level": "raid1", "base_bdevs": ["c2", "c0"], "uuid": "11111111-2222-3333-4444-555555555555"}),
    );
    expect_field(&e, "base_bdevs[1]");
    assert!(e.message.contains("another array"), "{e}");
    assert!(zero(&files[2]), "nothing may be written on failure");
    // Level mismatch with what the members carry.
    d.aio("c1", &files[1]);
    let e = d.err(
        "bdev_mdraid_create",
        json!({"name": "n", "raid_level": "raid0", "base_bdevs": ["c0", "c1"], "strip_size_kb": 64}),
    );
    expect_field(&e, "raid_level");
    assert_eq!(d.ok("bdev_mdraid_get_bdevs", Value::Null), json!([]));
}

/// A create that fails after writing some members' superblocks puts back
/// what the members held there: a failed create changes nothing.
#[test]
fn a_create_failing_midway_puts_the_members_back() {
    let _g = serial();
    let dir = TempDir::new("midway");
    let d = Daemon::start(&dir, "d", None);
    let files: Vec<PathBuf> = (0..3)
        .map(|i| dir.member(&format!("h{i}.img"), MEMBER_BYTES))
        .collect();
    // Old bytes (no md superblock) where the metadata goes.
    for (i, f) in files.iter().enumerate() {
        let old: Vec<u8> = (0..64 << 10).map(|b| (b * 7 + i) as u8 | 1).collect();
        std::fs::OpenOptions::new()
            .write(true)
            .open(f)
            .unwrap()
            .write_all_at(&old, 4096)
            .unwrap();
        d.aio(&format!("h{i}"), f);
    }
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    d.ok("bdev_error_create", json!({"base_name": "h2"}));
    d.ok(
        "bdev_error_inject_error",
        json!({"name": "EE_h2", "io_type": "write", "error_type": "failure", "num": 100}),
    );
    let e = d.err(
        "bdev_mdraid_create",
        json!({"name": "he", "raid_level": "raid5", "base_bdevs": ["h0", "h1", "EE_h2"], "strip_size_kb": 64}),
    );
    assert!(e.message.contains("base_bdevs[2]"), "{e}");
    for (f, b) in files.iter().zip(&before) {
        assert!(
            std::fs::read(f).unwrap() == *b,
            "{} changed by a failed create",
            f.display()
        );
    }
    assert_eq!(d.ok("bdev_mdraid_get_bdevs", Value::Null), json!([]));
    for n in ["h0", "h1", "EE_h2"] {
        assert_eq!(
            d.ok("bdev_get_bdevs", json!({ "name": n }))[0]["claimed"],
            json!(false),
            "{n}"
        );
    }
}

/// A member of an array that is gone (its other members lost) carries
/// that array's superblock, so no new array takes it, until
/// `bdev_mdraid_zero_superblock` wipes it, as `mdadm --zero-superblock`
/// does. A member an array holds, an array, a blank bdev and an unknown
/// one are refused, and change nothing.
#[test]
fn zero_superblock_frees_a_member_of_a_gone_array() {
    let _g = serial();
    let dir = TempDir::new("zerosb");
    let d = Daemon::start(&dir, "d", None);
    let files = d.aio_members(&dir, "z", 4, MEMBER_BYTES);
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "old", "raid_level": "raid5", "base_bdevs": ["z0", "z1", "z2"], "strip_size_kb": 64}),
    );
    // Busy: a member the array holds, and the array itself.
    let before = sb_area(&files[0]);
    let e = d.err("bdev_mdraid_zero_superblock", json!({"name": "z0"}));
    assert_eq!(e.code, -16, "{e}");
    assert!(e.message.contains("claimed by `old`"), "{e}");
    expect_field(
        &d.err("bdev_mdraid_zero_superblock", json!({"name": "old"})),
        "name",
    );
    assert!(sb_area(&files[0]) == before, "a refused call changed z0");
    // The array goes, and two of its members with it.
    d.ok("bdev_mdraid_delete", json!({"name": "old"}));
    d.ok("bdev_aio_delete", json!({"name": "z1"}));
    d.ok("bdev_aio_delete", json!({"name": "z2"}));
    let e = d.err(
        "bdev_mdraid_create",
        json!({"name": "new", "raid_level": "raid1", "base_bdevs": ["z0", "z3"]}),
    );
    assert!(e.message.contains("base_bdevs[1]"), "{e}");
    let before = sb_area(&files[0]);
    // A blank bdev and an unknown one.
    let e = d.err("bdev_mdraid_zero_superblock", json!({"name": "z3"}));
    assert!(e.message.contains("carries no md superblock"), "{e}");
    let e = d.err("bdev_mdraid_zero_superblock", json!({"name": "nope"}));
    assert_eq!(e.code, -19, "{e}");
    assert!(sb_area(&files[0]) == before, "a refused call changed z0");
    // Wiped: the superblock block is zeros and z0 serves a new array.
    assert_eq!(
        d.ok("bdev_mdraid_zero_superblock", json!({"name": "z0"})),
        json!(true)
    );
    assert!(sb_area(&files[0]).iter().all(|b| *b == 0));
    assert!(
        d.ok("bdev_mdraid_examine", json!({"name": "z0"}))[0]["has_superblock"] == json!(false),
        "z0 still reports a superblock"
    );
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "new", "raid_level": "raid1", "base_bdevs": ["z0", "z3"]}),
    );
    assert_eq!(array(&d, "new")["num_base_bdevs_discovered"], json!(2));
}

/// A write a member never answers: SIGTERM stops the daemon within its
/// `--stop-timeout` (plus the hard close of NBD clients and the reactors'
/// last wait), exit status 1 naming the array that did not stop cleanly.
#[test]
fn a_stop_with_a_write_stuck_on_a_member_is_bounded() {
    use mdraid_nbd::client::Client;
    use mdraid_nbd::proto::CMD_WRITE;
    let _g = serial();
    let dir = TempDir::new("stuck");
    let nbd = dir.path("nbd.sock");
    let mut d = Daemon::try_start_with(
        &dir,
        "d",
        None,
        &[
            "--stop-timeout",
            "4",
            "--nbd-unix",
            &nbd.display().to_string(),
        ],
    )
    .unwrap_or_else(|f| panic!("{f:?}"));
    d.aio_members(&dir, "k", 2, MEMBER_BYTES);
    d.ok("bdev_error_create", json!({"base_name": "k1"}));
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "st", "raid_level": "raid1", "base_bdevs": ["k0", "EE_k1"], "assume_clean": true}),
    );
    d.ok("mdraid_nbd_export_add", json!({"bdev_name": "st"}));
    d.ok(
        "bdev_error_inject_error",
        json!({"name": "EE_k1", "io_type": "write", "error_type": "pending", "num": 100}),
    );
    let mut c = Client::connect(UnixStream::connect(&nbd).unwrap(), "st").unwrap();
    c.send(CMD_WRITE, 0, 0, 4096, &[7u8; 4096]).unwrap();
    // The write is held: the superblock that marks the array dirty before
    // it (or the write itself) never completes on EE_k1.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let st = d.term();
    let took = t.elapsed();
    assert_eq!(st.code(), Some(1), "{}", d.stderr());
    assert!(
        d.stderr().contains("arrays not stopped cleanly: st"),
        "{}",
        d.stderr()
    );
    // 4 s for NBD and the arrays and 5 s for clients closed hard, the
    // reactors' wait included; a slow machine gets slack (it took 22 s or
    // more when each part had its own fixed wait, 13 s when the reactors
    // waited the stop timeout again).
    println!("the stop took {took:?}");
    assert!(took < Duration::from_secs(12), "the stop took {took:?}");
    drop(c);
}

// ---------------------------------------------------------------- examine

#[test]
fn examine_cli_prints_superblocks_and_names_bad_fields() {
    let _g = serial();
    let dir = TempDir::new("examine");
    let mut d = Daemon::start(&dir, "d", None);
    let files = d.aio_members(&dir, "x", 4, MEMBER_BYTES);
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "ex6", "raid_level": "raid6", "base_bdevs": ["x0", "x1", "x2", "x3"], "strip_size_kb": 64, "uuid": "0123abcd-0000-4000-8000-00000000beef", "assume_clean": true}),
    );
    assert!(d.term().success());

    let out = Command::new(BIN)
        .arg("examine")
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Magic : a92b4efc",
        "Version : 1.2",
        "Array UUID : 0123abcd:00004000:80000000:0000beef",
        "Name : ex6",
        "Raid Level : raid6",
        "Raid Devices : 4",
        "Chunk Size : 64K",
        "Layout : left-symmetric",
        "Device Role : Active device 3",
        "Array State : AAAA",
        "State : clean",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in\n{text}");
    }
    let out = Command::new(BIN)
        .args(["examine", "--json"])
        .arg(&files[1])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["raid_level"], "raid6");
    assert_eq!(v[0]["device_role"], "Active device 1");
    assert_eq!(v[0]["array_uuid"], "0123abcd:00004000:80000000:0000beef");
    assert!(v[0]["events"].as_str().is_some());

    // Corrupt: a flipped byte breaks the checksum; zeros have no magic.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[2])
        .unwrap();
    f.write_all_at(&[0x5a], 4096 + 0x48).unwrap();
    let out = Command::new(BIN)
        .arg("examine")
        .arg(&files[2])
        .output()
        .unwrap();
    // Printed as mdadm prints it: the stored checksum, and the one expected.
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.trim().starts_with("Checksum :") && l.contains(" - expected ")),
        "{text}"
    );
    assert!(!text.contains(" - correct"), "{text}");
    f.write_all_at(&[0u8; 4], 4096).unwrap();
    let out = Command::new(BIN)
        .arg("examine")
        .arg(&files[2])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("magic"));
    let tiny = dir.member("tiny.img", 4096);
    let out = Command::new(BIN)
        .arg("examine")
        .arg(&tiny)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // mdadm agrees with what we wrote, when it is installed.
    if let Some(mdadm) = ["/usr/sbin/mdadm", "/sbin/mdadm", "/usr/bin/mdadm"]
        .iter()
        .find(|p| Path::new(p).exists())
    {
        let out = Command::new(mdadm)
            .arg("--examine")
            .arg(&files[0])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "mdadm --examine: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("Raid Level : raid6") && text.contains("Active device 0"),
            "{text}"
        );
    } else {
        eprintln!("SKIP (part): mdadm not installed; mdadm --examine cross-check not run");
    }
}

// ---------------------------------------------------------------- fuzz

fn random_value(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth > 3 { 8 } else { 11 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.below(100_000)),
        3 => json!(u64::MAX - rng.below(3)),
        4 => json!(-(rng.below(1 << 40) as i64)),
        5 => json!(1e300),
        6 => json!("m0"),
        7 => {
            let n = rng.below(40) as usize;
            json!((0..n)
                .map(|_| (b'a' + rng.below(26) as u8) as char)
                .collect::<String>())
        }
        8 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        9 => {
            let keys = [
                "name",
                "num_blocks",
                "block_size",
                "base_bdevs",
                "raid_level",
                "strip_size_kb",
                "uuid",
                "category",
                "filename",
                "bitmap",
                "x",
            ];
            let mut m = serde_json::Map::new();
            for _ in 0..rng.below(5) {
                m.insert(
                    keys[rng.below(keys.len() as u64) as usize].into(),
                    random_value(rng, depth + 1),
                );
            }
            Value::Object(m)
        }
        _ => json!("\u{0}\u{7f}\u{fffd}"),
    }
}

/// Send `bytes` on a fresh connection and read what comes back (bounded).
fn poke(sock: &Path, bytes: &[u8]) {
    let Ok(mut s) = UnixStream::connect(sock) else {
        panic!("daemon not accepting connections");
    };
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

#[test]
fn rpc_fuzz_leaves_the_daemon_serving() {
    let _g = serial();
    let dir = TempDir::new("fuzz");
    let mut d = Daemon::start(&dir, "d", None);
    malloc(&d, "m0");
    malloc(&d, "m1");
    let mut fixed: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"}".to_vec(),
        b"{oops}".to_vec(),
        b"\xff\xfe\x00garbage".to_vec(),
        b"[]".to_vec(),
        b"[1,2,3]".to_vec(),
        b"null".to_vec(),
        b"\"just a string\"".to_vec(),
        br#"{"jsonrpc":"2.0","id":1}"#.to_vec(),
        br#"{"jsonrpc":"1.0","method":"bdev_get_bdevs","id":1}"#.to_vec(),
        br#"{"jsonrpc":"2.0","method":7,"id":1}"#.to_vec(),
        br#"{"jsonrpc":"2.0","method":"bdev_get_bdevs","id":{"x":1}}"#.to_vec(),
        br#"{"jsonrpc":"2.0","method":"bdev_get_bdevs","params":[1,2],"id":1}"#.to_vec(),
        br#"{"jsonrpc":"2.0","method":"bdev_malloc_create","params":{"num_blocks":1e400,"block_size":512},"id":1}"#.to_vec(),
        br#"{"jsonrpc":"2.0","method":"bdev_malloc_create","params":{"num_blocks":18446744073709551616,"block_size":512},"id":1}"#.to_vec(),
        br#"{"jsonrpc":"2.0","method":"bdev_malloc_create","params":{"num_blocks":1099511627776,"block_size":65536},"id":1}"#.to_vec(),
        br#"{"jsonrpc":"2.0","method":"bdev_mdraid_create","params":{"name":"r","raid_level":"raid1","base_bdevs":["m0","m1"],"strip_size_kb":4294967295},"id":1}"#.to_vec(),
        br#"{"jsonrpc":"2.0","method":"bdev_get_bdevs","params":{"name":"m0","name":"m1"},"id":1}"#.to_vec(),
        br#"{"jsonrpc":"2.0","method":"bdev_get_bdevs","id":1}{"jsonrpc":"2.0","method":"bdev_get_bdevs","id":2}"#.to_vec(),
        br#"[{"jsonrpc":"2.0","method":"bdev_get_bdevs","id":1},{"bad":1},7]"#.to_vec(),
    ];
    // Deep nesting, in params and as the whole request.
    let deep = "[".repeat(100_000);
    fixed.push(deep.clone().into_bytes());
    fixed.push(
        format!(r#"{{"jsonrpc":"2.0","method":"bdev_get_bdevs","params":{{"name":{deep}"#)
            .into_bytes(),
    );
    fixed.push(
        format!(
            r#"{{"jsonrpc":"2.0","method":"bdev_get_bdevs","params":{}1{},"id":1}}"#,
            "[".repeat(500),
            "]".repeat(500)
        )
        .into_bytes(),
    );
    // Larger than the request limit.
    fixed.push(
        format!(
            r#"{{"jsonrpc":"2.0","method":"bdev_get_bdevs","params":{{"name":"{}"}},"id":1}}"#,
            "x".repeat(3 << 20)
        )
        .into_bytes(),
    );
    for (i, f) in fixed.iter().enumerate() {
        poke(&d.sock, f);
        assert!(d.alive(), "daemon died on fixed case {i}: {}", d.stderr());
    }
    let methods: Vec<String> = d
        .ok("rpc_get_methods", Value::Null)
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        // Stopping the daemon is what this one does; listeners open sockets.
        .filter(|m| m != "spdk_kill_instance" && !m.starts_with("mdraid_nbd_listener"))
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..400 {
        let method = &methods[rng.below(methods.len() as u64) as usize];
        let req = json!({"jsonrpc": "2.0", "method": method, "params": random_value(&mut rng, 0), "id": i});
        let mut bytes = serde_json::to_vec(&req).unwrap();
        match rng.below(6) {
            0 => bytes.truncate(rng.below(bytes.len() as u64) as usize),
            1 => {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] = rng.below(256) as u8;
            }
            _ => {}
        }
        poke(&d.sock, &bytes);
        if i % 50 == 0 {
            assert!(d.alive(), "daemon died at random case {i}: {}", d.stderr());
            d.ok("bdev_get_bdevs", json!({"name": "m0"}));
        }
    }
    assert!(d.alive(), "daemon died: {}", d.stderr());
    // A valid call still works, on a connection that saw garbage before... no:
    // garbage closes; on a fresh one.
    let got = d.ok("bdev_get_bdevs", json!({"name": "m1"}));
    assert_eq!(got[0]["name"], "m1");
    assert!(d.term().success(), "{}", d.stderr());
}

// ---------------------------------------------------------------- SPDK's client

const SPDK_SCRIPT: &str = r#"
import json, subprocess, sys, tempfile, os
from spdk.rpc.client import JSONRPCClient, JSONRPCException
SOCK, DIR = sys.argv[1], sys.argv[2]
def rpc_py(*args, stdin=None):
    p = subprocess.run([sys.executable, "-m", "spdk.spdk_rpc", "-s", SOCK, *args],
                       input=stdin, capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr
def expect_error(c, method, params, code, *needles):
    try:
        c.call(method, params)
    except JSONRPCException as e:
        assert f'"code": {code}' in e.message, e.message
        for n in needles:
            assert n in e.message, (n, e.message)
        return
    raise AssertionError(f"{method} {params} should have failed")
c = JSONRPCClient(SOCK, timeout=30)
assert "bdev_mdraid_create" in c.call("rpc_get_methods")
# Members through rpc.py's own commands.
rc, out, err = rpc_py("bdev_malloc_create", "-b", "p0", "32", "512")
assert rc == 0 and out.strip() == "p0", (rc, out, err)
for n in ("pa", "pb", "pc", "pd"):
    img = os.path.join(DIR, n + ".img")
    with open(img, "wb") as f:
        f.truncate(32 << 20)
    rc, out, err = rpc_py("bdev_aio_create", img, n, "512")
    assert rc == 0 and out.strip() == n, (rc, out, err)
assert c.call("bdev_mdraid_create", {"name": "pr5", "raid_level": "raid5", "base_bdevs": ["pa", "pb", "pc", "pd"], "strip_size_kb": 64}) is True
arrays = c.call("bdev_mdraid_get_bdevs", {"category": "online"})
assert [a["name"] for a in arrays] == ["pr5"], arrays
assert arrays[0]["num_base_bdevs"] == 4 and arrays[0]["state"] == "online", arrays
rc, out, err = rpc_py("bdev_get_bdevs", "-b", "pr5")
assert rc == 0 and json.loads(out)[0]["product_name"] == "mdraid", (rc, out, err)
expect_error(c, "bdev_mdraid_create", {"name": "x", "raid_level": "raid5", "base_bdevs": ["p0", "pa"], "strip_size_kb": 64}, -32602, "field `base_bdevs[1]`", "claimed")
expect_error(c, "bdev_mdraid_create", {"name": "x", "raid_level": "raid5", "base_bdevs": ["p0"], "strip_size_kb": 64}, -32602, "field `base_bdevs`")
expect_error(c, "bdev_mdraid_create", {"name": "x", "raid_level": "raid1", "base_bdevs": ["q0", "q1"]}, -32602, "field `base_bdevs[0]`", "does not exist")
expect_error(c, "bdev_mdraid_create", {"name": "x", "raid_level": "raid1", "base_bdevs": ["p0"], "strip_size_kb": "x"}, -32602, "field `strip_size_kb`")
expect_error(c, "bdev_malloc_create", {"num_blocks": 2**64 - 1, "block_size": 4096}, -32602, "field `num_blocks`")
expect_error(c, "bdev_mdraid_delete", {"name": "nope"}, -19, "not found")
expect_error(c, "bdev_raid_create", {"name": "x"}, -32601, "Method not found")
rc, out, err = rpc_py("bdev_aio_delete", "pa")
assert rc != 0 and '"code": -16' in out, (rc, out, err)
# save_config the rpc.py way, tear down, load_config: the array comes back
# (assembled from pa's superblock plus the recreated memory members).
rc, saved, err = rpc_py("save_config")
assert rc == 0, (rc, saved, err)
assert c.call("bdev_mdraid_delete", {"name": "pr5"}) is True
assert c.call("bdev_malloc_delete", {"name": "p0"}) is True
for n in ("pa", "pb", "pc", "pd"):
    assert c.call("bdev_aio_delete", {"name": n}) is True
assert c.call("bdev_get_bdevs") == []
with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, dir=DIR) as f:
    f.write(saved)
rc, out, err = rpc_py("load_config", "-j", f.name)
assert rc == 0, (rc, out, err)
again = c.call("bdev_mdraid_get_bdevs")
assert [a["name"] for a in again] == ["pr5"] and again[0]["uuid"] == arrays[0]["uuid"], again
c.close()
print("spdk client: all checks passed")
"#;

#[test]
fn spdk_python_client() {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let have = Command::new(&py)
        .args(["-c", "import spdk.rpc.client, spdk.spdk_rpc"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have {
        assert!(
            std::env::var("MDRAID_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "SPDK's Python client is not installed and MDRAID_REQUIRE_TOOLS=1 (run scripts/install-deps.sh)"
        );
        eprintln!("SKIP: spdk_python_client: SPDK's Python client is not installed (pip install spdk==26.5)");
        return;
    }
    let _g = serial();
    let dir = TempDir::new("spdk");
    let d = Daemon::start(&dir, "d", None);
    let script = dir.path("client.py");
    std::fs::write(&script, SPDK_SCRIPT).unwrap();
    let mut child = Command::new(&py)
        .arg(&script)
        .arg(&d.sock)
        .arg(&dir.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("SPDK client script hung");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "SPDK client checks failed:\nstdout:\n{}\nstderr:\n{}\ndaemon:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.stderr()
    );
}

// ---------------------------------------------------------------- NBD

fn tcp_port(d: &Daemon) -> u16 {
    let ls = d.ok("mdraid_nbd_get_listeners", Value::Null);
    ls.as_array()
        .unwrap()
        .iter()
        .find_map(|l| l["port"].as_u64())
        .expect("a TCP listener") as u16
}

#[test]
fn nbd_export_with_real_clients() {
    let _g = serial();
    let dir = TempDir::new("nbdtools");
    let (mut args, sock) = serve_args(&dir, "d", None);
    args.extend(["--nbd-tcp".into(), "127.0.0.1:0".into()]);
    let out = dir.path("d.out");
    let err = dir.path("d.err");
    let child = Command::new(BIN)
        .args(&args)
        .current_dir(&dir.0)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let mut d = Daemon {
        child: Some(child),
        sock,
        out,
        err,
    };
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&d.out)
        .unwrap_or_default()
        .contains("mdraid: ready")
    {
        assert!(
            d.alive() && Instant::now() < deadline,
            "no start: {}",
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..3 {
        d.aio(
            &format!("n{i}"),
            &dir.member(&format!("n{i}.img"), MEMBER_BYTES),
        );
    }
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "nb5", "raid_level": "raid5", "base_bdevs": ["n0", "n1", "n2"], "strip_size_kb": 64}),
    );
    assert_eq!(
        d.ok("mdraid_nbd_export_add", json!({"bdev_name": "nb5"})),
        json!("nb5")
    );
    // Only arrays are exported; names are unique; loopback only.
    malloc(&d, "plain");
    expect_field(
        &d.err("mdraid_nbd_export_add", json!({"bdev_name": "plain"})),
        "bdev_name",
    );
    assert_eq!(
        d.err("mdraid_nbd_export_add", json!({"bdev_name": "nb5"}))
            .code,
        -17
    );
    expect_field(
        &d.err(
            "mdraid_nbd_listener_add",
            json!({"address": "192.0.2.1", "port": 10809}),
        ),
        "address",
    );
    // A unix socket a process serves is not taken over: not the daemon's
    // own RPC socket (which goes on answering), not another daemon's.
    let other = Daemon::start(&dir, "other", None);
    for sock in [&d.sock, &other.sock] {
        let e = d.err(
            "mdraid_nbd_listener_add",
            json!({"unix_path": sock.display().to_string()}),
        );
        assert_eq!(e.code, -libc::EADDRINUSE, "{e}");
        assert!(e.message.contains("a process is serving"), "{e}");
    }
    assert!(other.ok("spdk_get_version", Value::Null).is_object());
    drop(other);
    // A regular file there is not replaced.
    let file = dir.path("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let e = d.err(
        "mdraid_nbd_listener_add",
        json!({"unix_path": file.display().to_string()}),
    );
    assert_eq!(e.code, -libc::EEXIST, "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    // A listener given on the command line is not saved.
    let saved = d.ok("save_config", Value::Null);
    assert_eq!(saved["subsystems"][1]["subsystem"], "mdraid");
    assert_eq!(
        saved["subsystems"][1]["config"],
        json!([{"method": "mdraid_nbd_export_add", "params": {"bdev_name": "nb5"}}])
    );
    let port = tcp_port(&d);
    let uri = format!("nbd://127.0.0.1:{port}/nb5");
    let exports = d.ok("mdraid_nbd_get_exports", Value::Null);
    assert_eq!(exports[0]["size_bytes"], json!(2 * (31u64 << 20)));
    // Exported: not deletable.
    assert_eq!(
        d.err("bdev_mdraid_delete", json!({"name": "nb5"})).code,
        -16
    );

    if let Some(nbdinfo) = require_tool("nbd_export_with_real_clients", "nbdinfo") {
        let (ok, out, err) = run_tool(&nbdinfo, &["--list", &format!("nbd://127.0.0.1:{port}")]);
        assert!(ok && out.contains("nb5"), "{out}{err}");
        let (ok, out, err) = run_tool(&nbdinfo, &["--size", &uri]);
        assert!(
            ok && out.trim() == (2 * (31u64 << 20)).to_string(),
            "{out}{err}"
        );
    }
    if let Some(qemu_io) = require_tool("nbd_export_with_real_clients", "qemu-io") {
        let (ok, out, err) = run_tool(
            &qemu_io,
            &[
                "-f",
                "raw",
                "-c",
                "write -P 0x5c 1M 3M",
                "-c",
                "read -P 0x5c 1M 3M",
                "-c",
                "read -P 0 0 1M",
                &uri,
            ],
        );
        assert!(
            ok && !out.contains("Pattern verification failed"),
            "{out}{err}"
        );
        assert!(out.contains("read 3145728/3145728"), "{out}{err}");
    }
    if let Some(qemu_img) = require_tool("nbd_export_with_real_clients", "qemu-img") {
        let (ok, out, err) = run_tool(&qemu_img, &["info", "--output=json", &uri]);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["virtual-size"], json!(2 * (31u64 << 20)));
    }
    // Our own client over TCP: a write, read back.
    {
        use mdraid_nbd::client::Client;
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut c = Client::connect(s, "nb5").unwrap();
        let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
        c.write(8 << 20, &data, false).unwrap();
        assert_eq!(c.read(8 << 20, 65536).unwrap(), data);
        c.disconnect().unwrap();
    }
    // SIGTERM with the array exported: NBD closes, the array drains and is
    // marked clean on every member, exit 0.
    assert!(d.term().success(), "{}", d.stderr());
    let out = Command::new(BIN)
        .arg("examine")
        .args(["n0.img", "n1.img", "n2.img"].map(|f| dir.path(f)))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("State : clean").count(), 3, "{text}");
}

/// Writes one export sees, for the checker.
struct Region {
    /// What the region holds after every acknowledged write.
    image: Vec<u8>,
    /// A write was sent and not acknowledged when the daemon died.
    unsure: bool,
}

const REGION: usize = 256 << 10;

/// Write to `export` with up to 8 requests in flight, recording what was
/// acknowledged, until the connection dies. Regions are used round-robin,
/// so one region never has two writes in flight.
fn writer(sock: PathBuf, export: String, seed: u64, acked: Arc<AtomicU64>) -> Vec<Region> {
    use mdraid_nbd::client::Client;
    use mdraid_nbd::proto::CMD_WRITE;
    let s = UnixStream::connect(&sock).unwrap();
    let mut c = Client::connect(s, &export).expect("NBD handshake");
    let n = ((c.size as usize) / REGION).min(160);
    let mut regions: Vec<Region> = (0..n)
        .map(|_| Region {
            image: vec![0; REGION],
            unsure: false,
        })
        .collect();
    let mut rng = Rng(seed | 1);
    let mut inflight: std::collections::HashMap<u64, (usize, usize, Vec<u8>)> = Default::default();
    let mut i = 0usize;
    loop {
        while inflight.len() < 8 {
            let r = i % n;
            i += 1;
            let off = (rng.below((REGION / 4096) as u64) as usize) * 4096;
            let max = (REGION - off) / 4096;
            let len = (1 + rng.below(max.min(48) as u64) as usize) * 4096;
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let fua = rng.below(8) == 0;
            let h = match c.send(
                CMD_WRITE,
                if fua {
                    mdraid_nbd::proto::CMD_FLAG_FUA
                } else {
                    0
                },
                (r * REGION + off) as u64,
                len as u32,
                &data,
            ) {
                Ok(h) => h,
                Err(_) => {
                    regions[r].unsure = true;
                    break;
                }
            };
            regions[r].unsure = true;
            inflight.insert(h, (r, off, data));
        }
        match c.recv(|_| 0) {
            Ok((h, Ok(_))) => {
                let (r, off, data) = inflight.remove(&h).expect("reply to a request sent");
                regions[r].image[off..off + data.len()].copy_from_slice(&data);
                regions[r].unsure = false;
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok((h, Err(e))) => panic!("write {h} failed with NBD error {e}"),
            Err(_) => return regions, // the daemon died
        }
    }
}

#[test]
fn kill9_during_writes_then_restart_keeps_acknowledged_writes() {
    let _g = serial();
    let dir = TempDir::new("kill9");
    let nbd = dir.path("nbd.sock");
    let mut cfg = Vec::new();
    for i in 0..6 {
        let f = dir.member(&format!("k{i}.img"), MEMBER_BYTES);
        cfg.push(json!({"method": "bdev_aio_create", "params": {"name": format!("k{i}"), "filename": f.display().to_string()}}));
    }
    cfg.push(json!({"method": "bdev_mdraid_create", "params": {"name": "md5", "raid_level": "raid5", "base_bdevs": ["k0", "k1", "k2", "k3"], "strip_size_kb": 64, "assume_clean": true}}));
    cfg.push(json!({"method": "bdev_mdraid_create", "params": {"name": "md1", "raid_level": "raid1", "base_bdevs": ["k4", "k5"], "assume_clean": true}}));
    let first = dir.path("first.json");
    std::fs::write(
        &first,
        serde_json::to_string(&json!({"subsystems": [
            {"subsystem": "bdev", "config": cfg},
            {"subsystem": "mdraid", "config": [
                {"method": "mdraid_nbd_listener_add", "params": {"unix_path": nbd.display().to_string()}},
                {"method": "mdraid_nbd_export_add", "params": {"bdev_name": "md5"}},
                {"method": "mdraid_nbd_export_add", "params": {"bdev_name": "md1"}}
            ]}
        ]}))
        .unwrap(),
    )
    .unwrap();
    let mut d = Daemon::start(&dir, "d1", Some(&first));
    let saved = dir.path("saved.json");
    std::fs::write(&saved, d.ok("save_config", Value::Null).to_string()).unwrap();
    let before = summary(&d);

    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = ["md5", "md1"]
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (s, e, a) = (nbd.clone(), e.to_string(), acked.clone());
            std::thread::spawn(move || writer(s, e, 77 + i as u64, a))
        })
        .collect();
    // Kill in the middle of the writes: after the regions wrapped around
    // once (overwrites), at a point that depends on timing.
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.load(Ordering::SeqCst) < 500 {
        assert!(
            Instant::now() < deadline,
            "writes too slow: {}",
            acked.load(Ordering::SeqCst)
        );
        assert!(d.alive(), "daemon died: {}", d.stderr());
        std::thread::sleep(Duration::from_millis(2));
    }
    d.kill9();
    let results: Vec<Vec<Region>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let total = acked.load(Ordering::SeqCst);

    // Restart from the saved config: both arrays come back by assembly,
    // with nothing for the user to do.
    let mut d = Daemon::start(&dir, "d2", Some(&saved));
    let after = summary(&d);
    assert_eq!(after.0, before.0, "bdevs differ after the restart");
    for (a, b) in after.1.iter().zip(&before.1) {
        assert_eq!(
            (&a.0, &a.1, &a.3),
            (&b.0, &b.1, &b.3),
            "array differs after the restart"
        );
        assert!(a.2 > b.2, "events did not move: {a:?} {b:?}");
    }
    let log = d.stderr();
    assert!(
        log.contains("assembled raid5 array md5") && log.contains("not shut down cleanly"),
        "{log}"
    );
    let mut checked = 0;
    for (export, regions) in ["md5", "md1"].iter().zip(&results) {
        use mdraid_nbd::client::Client;
        let s = UnixStream::connect(&nbd).unwrap();
        let mut c = Client::connect(s, export).unwrap();
        for (r, reg) in regions.iter().enumerate() {
            if reg.unsure {
                continue;
            }
            let got = c.read((r * REGION) as u64, REGION as u32).unwrap();
            assert!(
                got == reg.image,
                "{export}: region {r} lost acknowledged writes (first difference at byte {})",
                got.iter()
                    .zip(&reg.image)
                    .position(|(a, b)| a != b)
                    .unwrap()
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} regions checked");
    eprintln!("kill -9 after {total} acknowledged writes: {checked} regions read back intact");
    // Assembled dirty, the arrays resync by themselves and end clean.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = d.ok("bdev_mdraid_get_bdevs", json!({"category": "all"}));
        let busy = v
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["sync_action"] != "idle" || !a["process"].is_null());
        if !busy {
            break;
        }
        assert!(Instant::now() < deadline, "resync never finished: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        d.stderr().contains("array md5: resync done")
            && d.stderr().contains("array md1: resync done"),
        "{}",
        d.stderr()
    );
    // An exported array is not deleted; after the export goes, it is.
    assert_eq!(
        d.err("bdev_mdraid_delete", json!({"name": "md5"})).code,
        -16
    );
    d.ok("mdraid_nbd_export_remove", json!({"export_name": "md5"}));
    d.ok("bdev_mdraid_delete", json!({"name": "md5"}));
    assert!(d.term().success(), "{}", d.stderr());
    // md1 was stopped by SIGTERM after its resync: clean on its members.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mdraid"))
        .arg("examine")
        .arg("--json")
        .arg(dir.path("k4.img"))
        .arg(dir.path("k5.img"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.matches("\"state\": \"clean\"").count() + text.matches("\"state\":\"clean\"").count()
            >= 2,
        "md1 members not clean after resync and stop: {text}"
    );
}

/// fio with crc32c verify through the daemon's NBD export over file
/// members, every level; on the redundant ones a member is failed through
/// `bdev_error_inject_error` while fio writes: zero I/O errors, zero verify
/// failures, the member recorded faulty.
#[test]
fn fio_verify_over_files_with_a_member_failing() {
    let _g = serial();
    let Some(fio) = require_tool("fio_verify_over_files_with_a_member_failing", "fio") else {
        return;
    };
    let dir = TempDir::new("fiofail");
    let mut d = Daemon::start(&dir, "d", None);
    let nbd = dir.path("nbd.sock");
    d.ok(
        "mdraid_nbd_listener_add",
        json!({"unix_path": nbd.display().to_string()}),
    );
    let levels: [(&str, usize, bool); 5] = [
        ("raid0", 2, false),
        ("raid1", 2, true),
        ("raid5", 3, true),
        ("raid6", 4, true),
        ("raid10", 4, true),
    ];
    for (level, n, fail) in levels {
        let mut members = Vec::new();
        for i in 0..n {
            let name = format!("{level}f{i}");
            d.aio(&name, &dir.member(&format!("{name}.img"), MEMBER_BYTES));
            d.ok("bdev_error_create", json!({"base_name": name}));
            members.push(format!("EE_{name}"));
        }
        let array = format!("fio_{level}");
        d.ok(
            "bdev_mdraid_create",
            json!({"name": array, "raid_level": level, "base_bdevs": members, "strip_size_kb": 64}),
        );
        d.ok("mdraid_nbd_export_add", json!({"bdev_name": array}));
        let uri = format!("nbd+unix:///{array}?socket={}", nbd.display());
        let out = dir.path(&format!("{array}.json"));
        let mut job = Command::new(&fio)
            .args([
                "--name=v",
                "--ioengine=nbd",
                &format!("--uri={uri}"),
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=16",
                "--size=16M",
                "--verify=crc32c",
                "--do_verify=1",
                // No verify-state file in the working directory.
                "--verify_state_save=0",
                "--output-format=json",
                &format!("--output={}", out.display()),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if fail {
            // Fail member 1's writes while fio runs.
            std::thread::sleep(Duration::from_millis(150));
            d.ok(
                "bdev_error_inject_error",
                json!({"name": format!("EE_{level}f1"), "io_type": "write", "error_type": "failure", "num": 1000000}),
            );
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = job.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "{level}: fio did not finish");
            std::thread::sleep(Duration::from_millis(20));
        };
        let j: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        let job0 = &j["jobs"][0];
        assert!(status.success(), "{level}: fio failed: {job0}");
        assert_eq!(job0["error"], 0, "{level}: fio error");
        assert_eq!(
            job0["write"]["io_bytes"].as_u64(),
            Some(16 << 20),
            "{level}: not all written"
        );
        assert!(
            job0["read"]["io_bytes"].as_u64().unwrap_or(0) >= 16 << 20,
            "{level}: not all verified: {}",
            job0["read"]
        );
        let a = self::array(&d, &array);
        if fail {
            let states: Vec<String> = a["base_bdevs_list"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["state"].as_str().unwrap_or("").to_string())
                .collect();
            assert!(
                states.iter().filter(|s| s.contains("faulty")).count() == 1,
                "{level}: member states {states:?}"
            );
            assert_eq!(a["degraded"], true, "{level}: {a}");
        }
        eprintln!("{level}: fio wrote and verified 16 MiB, member failed: {fail}");
    }
    assert!(d.term().success(), "{}", d.stderr());
}

/// Protocol abuse on the daemon's NBD socket: each bad client gets an error
/// or a closed connection, and the daemon keeps serving a good one.
#[test]
fn malformed_nbd_clients_leave_the_daemon_serving() {
    use mdraid_nbd::client::Client;
    use std::io::{Read, Write};
    let _g = serial();
    let dir = TempDir::new("nbdabuse");
    let mut d = Daemon::start(&dir, "d", None);
    let nbd = dir.path("nbd.sock");
    d.ok(
        "mdraid_nbd_listener_add",
        json!({"unix_path": nbd.display().to_string()}),
    );
    for i in 0..2 {
        d.aio(
            &format!("b{i}"),
            &dir.member(&format!("b{i}.img"), MEMBER_BYTES),
        );
    }
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "mb", "raid_level": "raid1", "base_bdevs": ["b0", "b1"]}),
    );
    d.ok("mdraid_nbd_export_add", json!({"bdev_name": "mb"}));
    let mut good = Client::connect(UnixStream::connect(&nbd).unwrap(), "mb").unwrap();
    good.write(0, &[0x5a; 4096], false).unwrap();
    let abuse: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0xff; 300],
        // Client flags, then an option with a bad magic.
        [
            &[0, 0, 0, 1][..],
            &[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1][..],
            &[0; 8][..],
        ]
        .concat(),
        // Client flags, then an option announcing 1 GiB of data.
        [
            &[0, 0, 0, 1][..],
            b"IHAVEOPT",
            &[0, 0, 0, 7][..],
            &[0x40, 0, 0, 0][..],
        ]
        .concat(),
        Vec::new(), // connect and half-close at once
    ];
    for bytes in &abuse {
        let mut s = UnixStream::connect(&nbd).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        // The daemon answers or closes; it never hangs the client forever.
        let mut sink = Vec::new();
        let r = s.read_to_end(&mut sink);
        assert!(r.is_ok(), "no close after {bytes:?}: {r:?}");
        // ... and keeps serving the good client.
        assert_eq!(good.read(0, 4096).unwrap(), vec![0x5a; 4096]);
        assert!(d.alive(), "daemon died: {}", d.stderr());
    }
    // A request past the end gets an error, the connection stays usable.
    let end = 64 << 20;
    assert!(good.read(end, 4096).is_err());
    assert_eq!(good.read(0, 4096).unwrap(), vec![0x5a; 4096]);
    let mut again = Client::connect(UnixStream::connect(&nbd).unwrap(), "mb").unwrap();
    assert_eq!(again.read(0, 4096).unwrap(), vec![0x5a; 4096]);
    assert!(d.term().success(), "{}", d.stderr());
}

// ---------------------------------------------------------------- write-mostly

/// Per-member I/O counters of array `name` (reads, writes) by member name.
fn member_io(d: &Daemon, name: &str) -> Vec<(String, u64, u64)> {
    array(d, name)["base_bdevs_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("").to_string(),
                m["io"]["reads"].as_u64().unwrap(),
                m["io"]["writes"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn write_mostly_member_with_write_behind() {
    use mdraid_nbd::client::Client;
    use mdraid_nbd::proto::{CMD_READ, CMD_WRITE};
    let _g = serial();
    let dir = TempDir::new("wmostly");
    let nbd = dir.path("nbd.sock");
    let d = Daemon::start(&dir, "d", None);
    for n in ["fast", "base", "m5a", "m5b", "m5c"] {
        malloc(&d, n);
    }
    // A slow member: 2 ms per read and write.
    d.ok(
        "bdev_delay_create",
        json!({"base_bdev_name": "base", "name": "slow", "avg_read_latency": 2000,
               "p99_read_latency": 2000, "avg_write_latency": 2000, "p99_write_latency": 2000}),
    );
    let before = d.ok("bdev_mdraid_get_bdevs", Value::Null);
    // Refused, naming the field, leaving nothing behind.
    let create = |extra: Value| {
        let mut p = json!({"name": "r", "raid_level": "raid1", "base_bdevs": ["fast", "slow"]});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        d.err("bdev_mdraid_create", p)
    };
    expect_field(
        &create(json!({"write_behind": 16, "bitmap": false})),
        "write_behind",
    );
    expect_field(
        &create(json!({"write_mostly": ["fast", "slow"]})),
        "write_mostly",
    );
    let e = d.err(
        "bdev_mdraid_create",
        json!({"name": "r5", "raid_level": "raid5", "base_bdevs": ["m5a", "m5b", "m5c"], "write_behind": 16}),
    );
    expect_field(&e, "write_behind");
    let e = d.err(
        "bdev_mdraid_create",
        json!({"name": "r5", "raid_level": "raid5", "base_bdevs": ["m5a", "m5b", "m5c"], "write_mostly": ["m5a"]}),
    );
    expect_field(&e, "write_mostly");
    assert_eq!(d.ok("bdev_mdraid_get_bdevs", Value::Null), before);

    d.ok(
        "bdev_mdraid_create",
        json!({"name": "r1", "raid_level": "raid1", "base_bdevs": ["fast", "slow"],
               "write_mostly": ["slow"], "write_behind": 64, "assume_clean": true}),
    );
    let a = array(&d, "r1");
    assert_eq!(a["write_behind"], 64, "{a}");
    let flags: Vec<bool> = a["base_bdevs_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["write_mostly"].as_bool().unwrap())
        .collect();
    assert_eq!(flags, [false, true], "{a}");
    // Write-mostly on the only other in-sync member: refused.
    let e = d.err(
        "bdev_mdraid_set_write_mostly",
        json!({"name": "r1", "base_bdev": "fast", "write_mostly": true}),
    );
    expect_field(&e, "write_mostly");
    let e = d.err(
        "bdev_mdraid_set_write_mostly",
        json!({"name": "r1", "base_bdev": "m5a", "write_mostly": true}),
    );
    expect_field(&e, "base_bdev");

    d.ok(
        "mdraid_nbd_listener_add",
        json!({"unix_path": nbd.display().to_string()}),
    );
    d.ok("mdraid_nbd_export_add", json!({"bdev_name": "r1"}));
    let mut c = Client::connect(UnixStream::connect(&nbd).unwrap(), "r1").expect("NBD handshake");
    // Writes (32 in flight): with write-behind each completes once the
    // fast copy is written; all must read back.
    let mut rng = Rng(7);
    let blocks = 512u64; // 256 KiB regions of 4 KiB writes
    let mut image = vec![0u8; (blocks * 4096) as usize];
    let mut inflight = std::collections::HashMap::new();
    for i in 0..2000u64 {
        let off = rng.below(blocks) * 4096;
        let data: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
        let h = c.send(CMD_WRITE, 0, off, 4096, &data).unwrap();
        inflight.insert(h, (off, data));
        if inflight.len() >= 32 || i == 1999 {
            while inflight.len() > if i == 1999 { 0 } else { 16 } {
                let (h, r) = c.recv(|_| 0).unwrap();
                r.expect("write failed");
                let (off, data) = inflight.remove(&h).unwrap();
                image[off as usize..off as usize + 4096].copy_from_slice(&data);
            }
        }
    }
    let before_reads = member_io(&d, "r1");
    for k in 0..blocks {
        let h = c.send(CMD_READ, 0, k * 4096, 4096, &[]).unwrap();
        let (rh, r) = c.recv(|_| 4096).unwrap();
        assert_eq!(rh, h);
        let got = r.expect("read failed");
        let at = (k * 4096) as usize;
        assert!(
            got == image[at..at + 4096],
            "block {k} reads back other data"
        );
    }
    let after = member_io(&d, "r1");
    assert_eq!(after[0].0, "fast");
    assert_eq!(after[1].0, "slow");
    assert!(after[0].1 >= before_reads[0].1 + blocks, "{after:?}");
    assert_eq!(
        after[1].1, before_reads[1].1,
        "the write-mostly member was read while the fast one is in sync: {after:?}"
    );
    // Every write reached both copies (the last behind ones finish soon).
    let t0 = Instant::now();
    loop {
        let io = member_io(&d, "r1");
        if io[1].2 == io[0].2 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{io:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
