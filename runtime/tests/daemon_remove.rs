//! `bdev_mdraid_remove_base_bdev` in the embedded daemon (`mdraid serve`
//! as a child process, driven over its RPC socket and NBD): a member of a
//! raid1 of three file members is removed while an NBD client writes; the
//! answer comes after the failure is durable on the survivors' superblocks
//! (read from the files, and by `mdadm --examine` when it is there); the
//! claim is released; removing down to the last copy is refused, changing
//! nothing; bad params change nothing; the removed member and another bdev
//! are added back and rebuilt, and the data reads back from them alone.
//! Every wait is bounded; only unix sockets are used.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bdev_raid::ondisk::{DevRole, Superblock, SB_BLOCK_BYTES, SB_OFFSET_BYTES};
use mdraid_nbd::client::Client;
use mdraid_nbd::proto::CMD_WRITE;
use mdraid_rpc::RpcError;
use serde_json::{json, Value};

mod process;
use process::*;

/// Member size: 32 MiB (md's 1 MiB data offset leaves 31 MiB of data).
const MEMBER_BYTES: u64 = 32 << 20;
const RM: &str = "bdev_mdraid_remove_base_bdev";
/// The part of the array the writer uses: 8 MiB of 4 KiB blocks.
const BLOCKS: u64 = 2048;

fn expect_field(e: &RpcError, field: &str) {
    assert_eq!(e.code, -32602, "{e}");
    assert!(
        e.message.contains(&format!("field `{field}`")),
        "error should name `{field}`: {e}"
    );
}

fn read_sb(f: &Path) -> Superblock {
    let data = std::fs::read(f).unwrap();
    let off = SB_OFFSET_BYTES as usize;
    Superblock::decode(&data[off..off + SB_BLOCK_BYTES], data.len() as u64 / 512)
        .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
}

fn array(d: &Daemon) -> Value {
    d.ok("bdev_mdraid_get_bdevs", json!({"name": "rm"}))[0].clone()
}

fn states(a: &Value) -> Vec<String> {
    a["base_bdevs_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap_or("").to_string())
        .collect()
}

fn member_names(a: &Value) -> Vec<String> {
    a["base_bdevs_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap_or("").to_string())
        .collect()
}

fn claimed(d: &Daemon, bdev: &str) -> bool {
    d.ok("bdev_get_bdevs", json!({"name": bdev}))[0]["claimed"]
        .as_bool()
        .unwrap()
}

/// The array with no background process running and no I/O in flight
/// (bounded wait).
fn settled(d: &Daemon) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = array(d);
        let idle = a["sync_action"] == "idle"
            && a["process"].is_null()
            && a["base_bdevs_list"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["io"]["outstanding"].as_u64().unwrap_or(0) == 0);
        if idle {
            return a;
        }
        // md's `degraded` stays set until the recovery ends.
        if states(&a).iter().any(|s| s == "rebuilding") {
            assert_eq!(a["degraded"], true, "{a}");
        }
        assert!(Instant::now() < deadline, "never settled: {a}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 4 KiB writes to random blocks of the first `BLOCKS`, up to 16 in
/// flight, until `stop`; every one must succeed. Returns what the blocks
/// hold after all of them.
fn writer(nbd: PathBuf, stop: Arc<AtomicBool>, acked: Arc<AtomicU64>) -> Vec<u8> {
    let mut c = Client::connect(UnixStream::connect(&nbd).unwrap(), "rm").expect("NBD handshake");
    let mut image = vec![0u8; (BLOCKS * 4096) as usize];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut inflight = std::collections::HashMap::new();
    // Blocks with a write in flight (one at a time per block, so the
    // image is exact).
    let mut busy = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        while !stopping && inflight.len() < 16 {
            let blk = rng.next() % BLOCKS;
            if !busy.insert(blk) {
                continue;
            }
            let data: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
            let h = c.send(CMD_WRITE, 0, blk * 4096, 4096, &data).unwrap();
            inflight.insert(h, (blk, data));
        }
        if inflight.is_empty() {
            return image;
        }
        assert!(Instant::now() < deadline, "writes too slow");
        let (h, r) = c.recv(|_| 0).unwrap();
        let (blk, data) = inflight.remove(&h).expect("reply to a request sent");
        r.unwrap_or_else(|e| panic!("write of block {blk} failed: NBD error {e}"));
        busy.remove(&blk);
        image[(blk * 4096) as usize..(blk * 4096 + 4096) as usize].copy_from_slice(&data);
        acked.fetch_add(1, Ordering::SeqCst);
    }
}

fn check_image(nbd: &Path, image: &[u8], what: &str) {
    let mut c = Client::connect(UnixStream::connect(nbd).unwrap(), "rm").unwrap();
    for (i, chunk) in image.chunks(256 << 10).enumerate() {
        let got = c
            .read((i * (256 << 10)) as u64, chunk.len() as u32)
            .unwrap();
        assert!(
            got == chunk,
            "{what}: bytes at {} differ from what was acknowledged",
            i * (256 << 10) + got.iter().zip(chunk).position(|(a, b)| a != b).unwrap()
        );
    }
}

/// The members `save_config`'s answer `cfg` lists for its (one) array.
fn saved_members(cfg: &Value) -> Value {
    let create = cfg["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["config"].as_array().cloned().unwrap_or_default())
        .find(|c| c["method"] == "bdev_mdraid_create")
        .unwrap_or_else(|| panic!("no array in save_config: {cfg}"));
    create["params"]["base_bdevs"].clone()
}

/// `n` malloc bdevs of `MEMBER_BYTES`, `{prefix}0`...
fn mallocs(d: &Daemon, prefix: &str, n: usize) {
    for i in 0..n {
        d.ok(
            "bdev_malloc_create",
            json!({"name": format!("{prefix}{i}"), "num_blocks": MEMBER_BYTES / 512, "block_size": 512}),
        );
    }
}

/// Serve array `rm` over NBD on a unix socket in `dir`; the socket.
fn export_rm(d: &Daemon, dir: &TempDir) -> PathBuf {
    let nbd = dir.path("nbd.sock");
    d.ok(
        "mdraid_nbd_listener_add",
        json!({"unix_path": nbd.display().to_string()}),
    );
    d.ok("mdraid_nbd_export_add", json!({"bdev_name": "rm"}));
    nbd
}

/// Bounded wait until every member of `rm` is in sync.
fn wait_all_in_sync(d: &Daemon, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let a = settled(d);
        if states(&a) == vec!["in_sync"; n] {
            return a;
        }

        assert!(
            Instant::now() < deadline,
            "rebuild never finished: {a}\n{}",
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_acked(d: &mut Daemon, acked: &AtomicU64, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::SeqCst) < n {
        assert!(Instant::now() < deadline, "writes too slow");
        assert!(d.alive(), "daemon died: {}", d.stderr());
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn remove_base_bdev_while_writing_then_add_back() {
    let _g = serial();
    let dir = TempDir::new("remove");
    let mut d = Daemon::start(&dir, "d", None);
    let files = d.aio_members(&dir, "r", 3, MEMBER_BYTES);
    // Another bdev for a role later: as big, with the same block size.
    let bs = d.ok("bdev_get_bdevs", json!({"name": "r0"}))[0]["block_size"]
        .as_u64()
        .unwrap();
    d.ok(
        "bdev_malloc_create",
        json!({"name": "spare", "num_blocks": MEMBER_BYTES / bs, "block_size": bs}),
    );
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "rm", "raid_level": "raid1", "base_bdevs": ["r0", "r1", "r2"]}),
    );

    // Bad params: -32602 naming the field, or no such device; nothing changes.
    let before = settled(&d);
    let bdevs = d.ok("bdev_get_bdevs", Value::Null);
    for (p, field) in [
        (json!({}), "name"),
        (json!({"name": 5}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": "r0", "force": true}), "force"),
        // Exists, but is no member: a free bdev, the array itself.
        (json!({"name": "spare"}), "name"),
        (json!({"name": "rm"}), "name"),
    ] {
        let e = d.err(RM, p.clone());
        expect_field(&e, field);
    }
    let e = d.err(RM, json!({"name": "spare"}));
    assert!(
        e.message
            .contains("`spare` is not a member of an mdraid array"),
        "{e}"
    );
    let e = d.err(RM, Value::Null);
    expect_field(&e, "name");
    let e = d.err(RM, json!({"name": "nosuch"}));
    assert_eq!(e.code, -19, "{e}");
    assert!(e.message.contains("nosuch"), "{e}");
    assert_eq!(array(&d), before, "bad params changed the array");
    assert_eq!(d.ok("bdev_get_bdevs", Value::Null), bdevs);

    // Remove r2 while an NBD client writes.
    let nbd = export_rm(&d, &dir);
    let stale = read_sb(&files[2]);
    let events0 = before["events"].as_u64().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let w = {
        let (n, s, a) = (nbd.clone(), stop.clone(), acked.clone());
        std::thread::spawn(move || writer(n, s, a))
    };
    wait_acked(&mut d, &acked, 300);
    assert_eq!(d.ok(RM, json!({"name": "r2"})), json!(true));
    // Committed before the answer: the survivors' superblocks record r2
    // faulty at higher events (read while the writes go on).
    let dev = stale.dev_number as usize;
    for f in &files[..2] {
        let sb = read_sb(f);
        assert_eq!(
            sb.dev_roles.get(dev),
            Some(&DevRole::Faulty),
            "{}: {sb:?}",
            f.display()
        );
        assert!(sb.events > stale.events, "{}: {sb:?}", f.display());
    }
    let a = array(&d);
    assert_eq!(states(&a), ["in_sync", "in_sync", "faulty"], "{a}");
    assert_eq!(member_names(&a), ["r0", "r1", "r2"], "{a}");
    assert_eq!(a["degraded"], true, "{a}");
    assert_eq!(a["state"], "online", "{a}");
    assert_eq!(a["num_base_bdevs_operational"], 2, "{a}");
    assert!(a["events"].as_u64().unwrap() > events0, "{a}");
    // Released: not claimed, and no longer a member.
    assert!(!claimed(&d, "r2"));
    assert!(claimed(&d, "r0") && claimed(&d, "r1"));
    expect_field(&d.err(RM, json!({"name": "r2"})), "name");
    // The writes go on, degraded.
    let n = acked.load(Ordering::SeqCst);
    wait_acked(&mut d, &acked, n + 300);
    stop.store(true, Ordering::SeqCst);
    let image = w.join().unwrap();
    eprintln!(
        "{} writes acknowledged, r2 removed among them",
        acked.load(Ordering::SeqCst)
    );
    check_image(&nbd, &image, "after removing r2");

    // The status CLI shows it as it shows a failed member.
    let out = std::process::Command::new(BIN)
        .args(["status", "-s"])
        .arg(&d.sock)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("degraded")
            && text
                .lines()
                .any(|l| l.contains("r2") && l.contains("faulty")),
        "{text}"
    );
    // save_config no longer names it.
    assert_eq!(
        saved_members(&d.ok("save_config", Value::Null)),
        json!(["r0", "r1"])
    );

    if let Some(mdadm) = require_tool("remove_base_bdev_while_writing_then_add_back", "mdadm") {
        let (ok, out, err) = run_tool(&mdadm, &["--examine", &files[0].display().to_string()]);
        assert!(ok, "mdadm --examine: {out}{err}");
        let state = out
            .lines()
            .find(|l| l.trim_start().starts_with("Array State"))
            .unwrap_or_else(|| panic!("no Array State:\n{out}"));
        // Role 2 is not active on the survivor's superblock.
        assert!(state.contains(": AA."), "{out}");
    }

    // A second removal: r1. Removing r0 too would leave no copy: refused,
    // nothing changes, r0 stays claimed.
    assert_eq!(d.ok(RM, json!({"name": "r1"})), json!(true));
    let before = settled(&d);
    assert_eq!(states(&before), ["in_sync", "faulty", "faulty"], "{before}");
    let sb0 = read_sb(&files[0]);
    let e = d.err(RM, json!({"name": "r0"}));
    assert_eq!(e.code, -16, "{e}");
    assert!(
        e.message.contains("offline") && e.message.contains("r0"),
        "{e}"
    );
    assert_eq!(array(&d), before, "the refused removal changed the array");
    assert!(claimed(&d, "r0"));
    assert_eq!(read_sb(&files[0]).events, sb0.events);
    check_image(&nbd, &image, "after the refused removal");

    // The removed bdev can be deleted and made again.
    d.ok("bdev_aio_delete", json!({"name": "r1"}));
    assert_eq!(d.err(RM, json!({"name": "r1"})).code, -19);
    d.aio("r1", &files[1]);

    // A bdev whose block size is not the array's is refused, naming the
    // field, and nothing changes (it stays unclaimed).
    let odd_bs = if bs == 512 { 4096 } else { 512 };
    d.ok(
        "bdev_malloc_create",
        json!({"name": "odd", "num_blocks": 2 * MEMBER_BYTES / odd_bs, "block_size": odd_bs}),
    );
    let before = settled(&d);
    let e = d.err(
        "bdev_mdraid_add_base_bdev",
        json!({"raid_bdev": "rm", "base_bdev": "odd"}),
    );
    expect_field(&e, "base_bdev");
    assert!(
        e.message
            .contains(&format!("`odd` has {odd_bs}-byte blocks, the array {bs}")),
        "{e}"
    );
    // (The array may go clean meanwhile: compare its members.)
    let after = array(&d);
    assert_eq!(
        (states(&after), member_names(&after)),
        (states(&before), member_names(&before)),
        "the refused add changed the array: {after}"
    );
    assert!(!claimed(&d, "odd"));
    d.ok("bdev_malloc_delete", json!({"name": "odd"}));

    // r2 back into its role, and another bdev (spare) into r1's: both
    // rebuilt (bounded wait).
    d.ok(
        "bdev_mdraid_add_base_bdev",
        json!({"raid_bdev": "rm", "base_bdev": "r2"}),
    );
    d.ok(
        "bdev_mdraid_add_base_bdev",
        json!({"raid_bdev": "rm", "base_bdev": "spare"}),
    );
    assert!(claimed(&d, "r2") && claimed(&d, "spare"));
    assert!(!claimed(&d, "r1"));
    let a = wait_all_in_sync(&d, 3);
    assert_eq!(member_names(&a), ["r0", "spare", "r2"], "{a}");
    assert_eq!(a["degraded"], false, "{a}");
    // Each rebuilt once: none ran again over its last window.
    let log = d.stderr();
    for role in [1, 2] {
        let starts = log.matches(&format!("rebuilding role {role} from")).count();
        assert_eq!(starts, 1, "role {role} rebuilt {starts} times:\n{log}");
    }
    // The rebuilt members alone hold the data: r0 goes.
    assert_eq!(d.ok(RM, json!({"name": "r0"})), json!(true));
    assert_eq!(
        states(&array(&d)),
        ["faulty", "in_sync", "in_sync"],
        "{}",
        array(&d)
    );
    check_image(&nbd, &image, "from the rebuilt members");
    let sb2 = read_sb(&files[2]);
    assert_eq!(
        sb2.dev_roles.get(read_sb(&files[0]).dev_number as usize),
        Some(&DevRole::Faulty),
        "{sb2:?}"
    );
    assert!(d
        .stderr()
        .contains("removed by bdev_mdraid_remove_base_bdev"));
    d.ok("mdraid_nbd_export_remove", json!({"export_name": "rm"}));
    d.ok("bdev_mdraid_delete", json!({"name": "rm"}));
    // Deleting the array released what it held, and only that.
    for b in ["r0", "r1", "r2", "spare"] {
        assert!(!claimed(&d, b), "{b} still claimed");
    }
    assert!(d.term().success(), "{}", d.stderr());
}

/// A member that failed by itself (write errors through `bdev_error`) is
/// only released by a removal: events do not move, its claim goes, and
/// the log says it had failed already. A superblock-less array removes a
/// member too (recorded faulty in memory).
#[test]
fn remove_base_bdev_of_a_failed_member_only_releases_it() {
    let _g = serial();
    let dir = TempDir::new("removefailed");
    let d = Daemon::start(&dir, "d", None);
    mallocs(&d, "m", 6);
    for i in 0..3 {
        d.ok("bdev_error_create", json!({"base_name": format!("m{i}")}));
    }
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "rm", "raid_level": "raid1", "base_bdevs": ["EE_m0", "EE_m1", "EE_m2"]}),
    );
    let nbd = export_rm(&d, &dir);
    d.ok(
        "bdev_error_inject_error",
        json!({"name": "EE_m1", "io_type": "write", "error_type": "failure", "num": 1000000}),
    );
    let mut c = Client::connect(UnixStream::connect(&nbd).unwrap(), "rm").unwrap();
    c.write(0, &[0xa5; 4096], true)
        .expect("the write succeeds on the others");
    let a = settled(&d);
    assert_eq!(states(&a), ["in_sync", "faulty", "in_sync"], "{a}");
    assert!(claimed(&d, "EE_m1"), "a failed member stays claimed");
    assert!(
        d.stderr()
            .contains("array rm: member EE_m1 (role 1) failed; recorded faulty (events"),
        "{}",
        d.stderr()
    );
    let events = a["events"].as_u64().unwrap();
    assert_eq!(d.ok(RM, json!({"name": "EE_m1"})), json!(true));
    let b = settled(&d);
    assert_eq!(states(&b), ["in_sync", "faulty", "in_sync"], "{b}");
    // Discovered: the members in service (as SPDK, which lets a failed
    // member go at once), whether or not the array still holds it.
    assert_eq!(a["num_base_bdevs_discovered"], json!(2), "{a}");
    assert_eq!(b["num_base_bdevs_discovered"], json!(2), "{b}");
    assert_eq!(b["num_base_bdevs_operational"], json!(2), "{b}");
    assert_eq!(b["events"].as_u64().unwrap(), events, "{b}");
    assert!(!claimed(&d, "EE_m1"));
    assert!(
        d.stderr().contains(
            "member EE_m1 (role 1) removed by bdev_mdraid_remove_base_bdev (failed already)"
        ),
        "{}",
        d.stderr()
    );
    expect_field(&d.err(RM, json!({"name": "EE_m1"})), "name");
    // Another bdev takes the role; the data comes back on it.
    d.ok(
        "bdev_mdraid_add_base_bdev",
        json!({"raid_bdev": "rm", "base_bdev": "m3"}),
    );
    let a = wait_all_in_sync(&d, 3);
    assert_eq!(member_names(&a), ["EE_m0", "m3", "EE_m2"], "{a}");
    assert_eq!(d.ok(RM, json!({"name": "EE_m0"})), json!(true));
    assert_eq!(d.ok(RM, json!({"name": "EE_m2"})), json!(true));
    assert_eq!(c.read(0, 4096).unwrap(), vec![0xa5; 4096]);
    let e = d.err(RM, json!({"name": "m3"}));
    assert_eq!(e.code, -16, "{e}");
    drop(c);

    // Without superblocks.
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "bare", "raid_level": "raid1", "base_bdevs": ["m4", "m5"], "superblock": false}),
    );
    assert_eq!(d.ok(RM, json!({"name": "m4"})), json!(true));
    let a = d.ok("bdev_mdraid_get_bdevs", json!({"name": "bare"}))[0].clone();
    assert_eq!(states(&a), ["faulty", "in_sync"], "{a}");
    assert!(!claimed(&d, "m4"));
    assert_eq!(d.err(RM, json!({"name": "m5"})).code, -16);
}

/// A config saved while a member was out; the member added back and
/// rebuilt since; then a crash. The restart from that config finds the
/// member though the config does not list it (it carries the array's
/// superblock, as SPDK's examine and md's `--assemble --scan` find it),
/// and the array comes back whole, not degraded (a raid5 that crashed
/// degraded would not start at all without `force`).
#[test]
fn a_member_added_back_after_the_config_was_saved_is_assembled() {
    let _g = serial();
    let dir = TempDir::new("savedout");
    let mut d = Daemon::start(&dir, "d1", None);
    d.aio_members(&dir, "r", 3, MEMBER_BYTES);
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "rm", "raid_level": "raid5", "strip_size_kb": 64,
            "base_bdevs": ["r0", "r1", "r2"], "assume_clean": true}),
    );
    let nbd = export_rm(&d, &dir);
    assert_eq!(d.ok(RM, json!({"name": "r2"})), json!(true));
    let cfg = d.ok("save_config", Value::Null);
    assert_eq!(saved_members(&cfg), json!(["r0", "r1"]));
    let saved = dir.path("saved.json");
    std::fs::write(&saved, cfg.to_string()).unwrap();
    d.ok(
        "bdev_mdraid_add_base_bdev",
        json!({"raid_bdev": "rm", "base_bdev": "r2"}),
    );
    wait_all_in_sync(&d, 3);
    // Writes with every member in service, then a crash.
    let (stop, acked) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let w = {
        let (nbd, stop, acked) = (nbd.clone(), stop.clone(), acked.clone());
        std::thread::spawn(move || writer(nbd, stop, acked))
    };
    wait_acked(&mut d, &acked, 500);
    stop.store(true, Ordering::SeqCst);
    let image = w.join().unwrap();
    d.kill9();

    let d = Daemon::start(&dir, "d2", Some(&saved));
    let a = wait_all_in_sync(&d, 3);
    assert_eq!(member_names(&a), ["r0", "r1", "r2"], "{a}");
    assert!(
        d.stderr()
            .contains("`r2` is not listed but carries the array's superblock"),
        "{}",
        d.stderr()
    );
    check_image(&nbd, &image, "after the restart");
    assert_eq!(
        saved_members(&d.ok("save_config", Value::Null)),
        json!(["r0", "r1", "r2"])
    );
    // r2 holds its part: the data reads back without r0.
    assert_eq!(d.ok(RM, json!({"name": "r0"})), json!(true));
    check_image(&nbd, &image, "after the restart, without r0");
}

/// Two adds back to back into an array with two faulty roles: the first
/// answers before its commit is published, so the state still says its
/// role is faulty; the second must take the other role, not swap its
/// device in under the first (which lost the array's data).
#[test]
fn a_second_add_does_not_take_the_role_of_one_not_yet_committed() {
    let _g = serial();
    let dir = TempDir::new("twoadds");
    let d = Daemon::start(&dir, "d", None);
    mallocs(&d, "w", 4);
    // A slow third member: commits (superblock writes) take a while.
    d.ok(
        "bdev_delay_create",
        json!({"name": "dw3", "base_bdev_name": "w3", "avg_read_latency": 1000,
            "p99_read_latency": 2000, "avg_write_latency": 20000, "p99_write_latency": 30000}),
    );
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "rm", "raid_level": "raid1", "base_bdevs": ["w0", "w1", "dw3"], "assume_clean": true}),
    );
    let nbd = export_rm(&d, &dir);
    let mut c = Client::connect(UnixStream::connect(&nbd).unwrap(), "rm").unwrap();
    c.write(0, &[0x3c; 4096], true).unwrap();
    assert_eq!(d.ok(RM, json!({"name": "w0"})), json!(true));
    assert_eq!(d.ok(RM, json!({"name": "w1"})), json!(true));
    d.ok(
        "bdev_mdraid_add_base_bdev",
        json!({"raid_bdev": "rm", "base_bdev": "w0"}),
    );
    d.ok(
        "bdev_mdraid_add_base_bdev",
        json!({"raid_bdev": "rm", "base_bdev": "w2"}),
    );
    let a = wait_all_in_sync(&d, 3);
    assert_eq!(member_names(&a), ["w0", "w2", "dw3"], "{a}");
    // Every copy holds the data: read with only one member left at a time.
    assert_eq!(d.ok(RM, json!({"name": "dw3"})), json!(true));
    assert_eq!(d.ok(RM, json!({"name": "w2"})), json!(true));
    assert_eq!(c.read(0, 4096).unwrap(), vec![0x3c; 4096], "w0");
}

/// An array that went offline with writes in flight is deleted at once:
/// it cannot be marked clean, and the stop waited its whole timeout (10 s)
/// for that.
#[test]
fn an_offline_array_is_deleted_at_once() {
    let _g = serial();
    let dir = TempDir::new("offdel");
    let d = Daemon::start(&dir, "d", None);
    mallocs(&d, "o", 2);
    d.ok("bdev_error_create", json!({"base_name": "o1"}));
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "rm", "raid_level": "raid0", "base_bdevs": ["o0", "EE_o1"], "strip_size_kb": 64}),
    );
    let nbd = export_rm(&d, &dir);
    d.ok(
        "bdev_error_inject_error",
        json!({"name": "EE_o1", "io_type": "write", "error_type": "failure", "num": 1000}),
    );
    let mut c = Client::connect(UnixStream::connect(&nbd).unwrap(), "rm").unwrap();
    // Both strips: one lands on the failing member.
    assert!(
        c.write(0, &[1u8; 128 << 10], false).is_err(),
        "a write on a lost raid0 member"
    );
    drop(c);
    let a = array(&d);
    assert_eq!(a["state"], "offline", "{a}");
    d.ok("mdraid_nbd_export_remove", json!({"export_name": "rm"}));
    let t = Instant::now();
    assert_eq!(
        d.ok("bdev_mdraid_delete", json!({"name": "rm"})),
        json!(true)
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the delete took {:?}",
        t.elapsed()
    );
}

/// An add the metadata path refuses (a device too small) leaves the role
/// as it was: its old member still listed, the refused device neither
/// claimed nor held (it is deleted and its file opened again), and a
/// right-sized device added after it rebuilds the role.
#[test]
fn a_refused_add_leaves_the_role_as_it_was() {
    let _g = serial();
    let dir = TempDir::new("refadd");
    let d = Daemon::start(&dir, "d", None);
    mallocs(&d, "r", 3);
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "rm", "raid_level": "raid1", "base_bdevs": ["r0", "r1"], "assume_clean": true}),
    );
    assert_eq!(d.ok(RM, json!({"name": "r1"})), json!(true));
    let before = settled(&d);
    let small = dir.member("small.img", MEMBER_BYTES / 2);
    d.ok(
        "bdev_aio_create",
        json!({"name": "s", "filename": small.display().to_string()}),
    );
    let e = d.err(
        "bdev_mdraid_add_base_bdev",
        json!({"raid_bdev": "rm", "base_bdev": "s"}),
    );
    assert!(e.message.contains("smaller"), "{e}");
    let after = settled(&d);
    assert_eq!(member_names(&after), member_names(&before), "{after}");
    assert_eq!(states(&after), states(&before), "{after}");
    assert!(!claimed(&d, "s"));
    // Nothing holds the file: deleted, it opens again.
    d.ok("bdev_aio_delete", json!({"name": "s"}));
    d.ok(
        "bdev_aio_create",
        json!({"name": "s", "filename": small.display().to_string()}),
    );
    d.ok(
        "bdev_mdraid_add_base_bdev",
        json!({"raid_bdev": "rm", "base_bdev": "r2"}),
    );
    let a = wait_all_in_sync(&d, 2);
    assert_eq!(member_names(&a), ["r0", "r2"], "{a}");
}

/// A member whose loss takes the array offline is not recorded faulty (as
/// md's raid0, linear, raid1 and raid10 do not fail such a device): every
/// I/O fails meanwhile, and once the member is back the array assembles
/// from the same members with the data written before.
#[test]
fn a_failure_that_takes_the_array_offline_is_not_recorded() {
    let _g = serial();
    let dir = TempDir::new("offrec");
    let d = Daemon::start(&dir, "d", None);
    let files = d.aio_members(&dir, "o", 2, MEMBER_BYTES);
    d.ok("bdev_error_create", json!({"base_name": "o1"}));
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "rm", "raid_level": "raid0", "base_bdevs": ["o0", "EE_o1"], "strip_size_kb": 64}),
    );
    let nbd = export_rm(&d, &dir);
    let mut c = Client::connect(UnixStream::connect(&nbd).unwrap(), "rm").unwrap();
    let data: Vec<u8> = (0..128 << 10).map(|i| (i * 31 % 251) as u8).collect();
    c.write(0, &data, true).unwrap();
    let events = read_sb(&files[0]).events;
    d.ok(
        "bdev_error_inject_error",
        json!({"name": "EE_o1", "io_type": "write", "error_type": "failure", "num": 1000}),
    );
    // The second strip: on the failing member only (a failed write may
    // land in part).
    assert!(
        c.write(64 << 10, &[1u8; 64 << 10], false).is_err(),
        "a write on a lost raid0 member"
    );
    drop(c);
    assert_eq!(array(&d)["state"], "offline");
    assert!(
        d.stderr()
            .contains("member EE_o1 (role 1) failed; the array is offline"),
        "{}",
        d.stderr()
    );
    d.ok("mdraid_nbd_export_remove", json!({"export_name": "rm"}));
    d.ok("bdev_mdraid_delete", json!({"name": "rm"}));
    d.ok("bdev_error_delete", json!({"name": "EE_o1"}));
    for f in &files {
        let sb = read_sb(f);
        assert!(
            sb.dev_roles.iter().all(|r| *r != DevRole::Faulty),
            "{}: {:?}",
            f.display(),
            sb.dev_roles
        );
        assert_eq!(sb.events, events, "{}", f.display());
    }
    // Back: the same members assemble it, whole.
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "rm", "raid_level": "raid0", "base_bdevs": ["o0", "o1"], "strip_size_kb": 64}),
    );
    assert_eq!(array(&d)["state"], "online");
    d.ok("mdraid_nbd_export_add", json!({"bdev_name": "rm"}));
    let mut c = Client::connect(UnixStream::connect(&nbd).unwrap(), "rm").unwrap();
    assert!(c.read(0, 128 << 10).unwrap() == data, "data lost");
}

/// Every member dead while the array is clean: the first write waits for
/// the superblocks to say dirty, which no member takes, so it is held
/// (blocked, R3). Deleting the array gives up: the held write fails, and
/// the delete ends within its stop timeout instead of being refused.
#[test]
fn a_blocked_array_with_every_member_dead_is_deleted() {
    let _g = serial();
    let dir = TempDir::new("blkdel");
    let d = Daemon::start(&dir, "d", None);
    mallocs(&d, "k", 2);
    for m in ["k0", "k1"] {
        d.ok("bdev_error_create", json!({ "base_name": m }));
    }
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "rm", "raid_level": "raid1", "base_bdevs": ["EE_k0", "EE_k1"], "assume_clean": true}),
    );
    // Clean (no write yet); then every member fails everything.
    for m in ["EE_k0", "EE_k1"] {
        d.ok(
            "bdev_error_inject_error",
            json!({"name": m, "io_type": "all", "error_type": "failure", "num": 1000000}),
        );
    }
    let nbd = export_rm(&d, &dir);
    let writer = std::thread::spawn(move || {
        let mut c = Client::connect(UnixStream::connect(&nbd).unwrap(), "rm").unwrap();
        c.write(0, &[7u8; 4096], false)
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while array(&d)["array_state"] != "blocked" {
        assert!(Instant::now() < deadline, "never blocked: {}", array(&d));
        std::thread::sleep(Duration::from_millis(20));
    }
    d.ok("mdraid_nbd_export_remove", json!({"export_name": "rm"}));
    let t = Instant::now();
    assert_eq!(
        d.ok("bdev_mdraid_delete", json!({"name": "rm"})),
        json!(true)
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(
        writer.join().unwrap().is_err(),
        "the held write did not fail"
    );
    assert_eq!(d.ok("bdev_mdraid_get_bdevs", Value::Null), json!([]));
}

/// An array started with a member missing lists its empty slot with no
/// data area (SPDK's raid lists 0 too) and the others with theirs.
#[test]
fn an_empty_slot_has_no_data_area() {
    let _g = serial();
    let dir = TempDir::new("emptyslot");
    let d = Daemon::start(&dir, "d", None);
    d.aio_members(&dir, "e", 2, MEMBER_BYTES);
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "rm", "raid_level": "raid1", "base_bdevs": ["e0", "e1"], "assume_clean": true}),
    );
    d.ok("bdev_mdraid_delete", json!({"name": "rm"}));
    d.ok("bdev_aio_delete", json!({"name": "e1"}));
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "rm", "raid_level": "raid1", "base_bdevs": ["e0"]}),
    );
    let a = array(&d);
    assert_eq!(states(&a), ["in_sync", "missing"], "{a}");
    assert_eq!(a["base_bdevs_list"][1]["data_offset"], json!(0), "{a}");
    assert_eq!(a["base_bdevs_list"][1]["data_size"], json!(0), "{a}");
    assert_eq!(a["base_bdevs_list"][0]["data_offset"], json!(2048), "{a}");
}
