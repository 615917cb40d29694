//! Property test: members whose md metadata is wrong in ways no checksum
//! catches (superblock fields rewritten with the checksum made right again,
//! as a buggy or foreign md implementation or a half-done reshape would
//! leave them; bitmap superblock fields and bits rewritten; members cut
//! short) never panic the daemon's `bdev_mdraid_examine` or
//! `bdev_mdraid_create`, and nothing is left claimed: an array that starts
//! is listed, written and read at both ends, and stopped; a refused create
//! answers an error; the members can be deleted after either.
//!
//! The daemon runs in this process (one reactor, interrupt mode) over aio
//! members on files; each case starts from the members of a real array the
//! daemon made (every level), rewrites some of their metadata, and creates
//! again, with or without the array's uuid and `force`.

use std::cell::{Cell, RefCell};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bdev_raid::ondisk::{
    BitmapSuper, DevRole, Superblock, BITMAP_SB_BYTES, SB_BLOCK_BYTES, SB_OFFSET_BYTES,
};
use mdraid_nbd::client::{Client, ClientError};
use mdraid_rpc::{handle_call, Call, Method, RpcError};
use mdraid_runtime::daemon::{Daemon, DaemonOptions};
use mdraid_runtime::{Mode, Runtime, RuntimeConfig};
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::{json, Value};

mod common;

/// 4 MiB members: md's 1 MiB data offset leaves 3 MiB of data.
const MEMBER_BYTES: u64 = 4 << 20;

/// (level, members): one array of each shape the daemon makes.
const SHAPES: [(&str, usize); 7] = [
    ("raid1", 2),
    ("raid1", 3),
    ("raid5", 3),
    ("raid6", 4),
    ("raid10", 4),
    ("raid0", 2),
    ("linear", 2),
];

fn call(d: &mut Daemon, method: &str, params: Value) -> Result<Value, RpcError> {
    let m = Method::from_name(method).expect("a method of the daemon");
    let raw = RawValue::from_string(params.to_string()).unwrap();
    handle_call(d, Call::parse(m, Some(&raw))?)
}

fn ok(d: &mut Daemon, method: &str, params: Value) -> Value {
    call(d, method, params.clone()).unwrap_or_else(|e| panic!("{method} {params}: {e}"))
}

struct Template {
    level: &'static str,
    uuid: String,
    /// Each member's bytes as the daemon left them.
    members: Vec<Vec<u8>>,
}

/// The members of a real array of each shape, made by the daemon and
/// stopped without clearing the superblocks.
fn templates(d: &mut Daemon, dir: &Path) -> Vec<Template> {
    SHAPES
        .iter()
        .enumerate()
        .map(|(s, &(level, n))| {
            let files: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("t{s}m{i}"))).collect();
            let names: Vec<String> = (0..n).map(|i| format!("t{s}m{i}")).collect();
            for (f, name) in files.iter().zip(&names) {
                std::fs::File::create(f)
                    .unwrap()
                    .set_len(MEMBER_BYTES)
                    .unwrap();
                ok(
                    d,
                    "bdev_aio_create",
                    json!({"name": name, "filename": f.display().to_string()}),
                );
            }
            let mut p = json!({"name": "t", "raid_level": level, "base_bdevs": names});
            if level != "raid1" {
                p["strip_size_kb"] = json!(64);
            }
            if matches!(level, "raid1" | "raid5" | "raid6" | "raid10") {
                p["bitmap"] = json!({"chunk_kb": 64});
            }
            ok(d, "bdev_mdraid_create", p);
            let a = ok(d, "bdev_mdraid_get_bdevs", json!({"name": "t"}));
            let uuid = a[0]["uuid"].as_str().unwrap().to_string();
            ok(d, "bdev_mdraid_delete", json!({"name": "t"}));
            for name in &names {
                ok(d, "bdev_aio_delete", json!({ "name": name }));
            }
            Template {
                level,
                uuid,
                members: files.iter().map(|f| std::fs::read(f).unwrap()).collect(),
            }
        })
        .collect()
}

/// One rewrite of a member's metadata.
#[derive(Clone, Debug)]
enum Edit {
    Events(u64),
    DevNumber(u32),
    RaidDisks(u32),
    Level(i32),
    Layout(u32),
    Chunk(u32),
    DataOffset(u64),
    DataSize(u64),
    Size(u64),
    ResyncOffset(u64),
    RecoveryOffset(u64),
    FeatureMap(u32),
    Role(usize, u16),
    MaxDev(usize),
    BitmapOffset(i32),
    OtherUuid,
    DevFlags(u8),
    BitmapEvents(u64),
    BitmapCleared(u64),
    BitmapSyncSize(u64),
    BitmapChunk(u32),
    BitmapSleep(u32),
    BitmapBehind(u32),
    BitmapState(u32),
    /// A byte of the bitmap area (bits or its superblock), at this offset
    /// from the bitmap superblock.
    BitmapByte(usize, u8),
    /// The member cut short to this many bytes.
    Truncate(u64),
}

fn small_or_any() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..64, 0u64..(MEMBER_BYTES / 512 * 2), any::<u64>()]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        small_or_any().prop_map(Edit::Events),
        prop_oneof![0u32..8, any::<u32>()].prop_map(Edit::DevNumber),
        prop_oneof![0u32..8, 0u32..400, any::<u32>()].prop_map(Edit::RaidDisks),
        prop_oneof![-5i32..12, any::<i32>()].prop_map(Edit::Level),
        prop_oneof![0u32..0x300, any::<u32>()].prop_map(Edit::Layout),
        prop_oneof![Just(0u32), (0u32..16).prop_map(|s| 1 << s), any::<u32>()]
            .prop_map(Edit::Chunk),
        small_or_any().prop_map(Edit::DataOffset),
        small_or_any().prop_map(Edit::DataSize),
        small_or_any().prop_map(Edit::Size),
        small_or_any().prop_map(Edit::ResyncOffset),
        small_or_any().prop_map(Edit::RecoveryOffset),
        prop_oneof![(0u32..13).prop_map(|b| 1 << b), any::<u32>()].prop_map(Edit::FeatureMap),
        (
            0usize..8,
            prop_oneof![0u16..8, Just(0xfffe), Just(0xffff), any::<u16>()]
        )
            .prop_map(|(i, r)| Edit::Role(i, r)),
        (0usize..8).prop_map(Edit::MaxDev),
        prop_oneof![-16i32..64, any::<i32>()].prop_map(Edit::BitmapOffset),
        Just(Edit::OtherUuid),
        any::<u8>().prop_map(Edit::DevFlags),
        small_or_any().prop_map(Edit::BitmapEvents),
        small_or_any().prop_map(Edit::BitmapCleared),
        small_or_any().prop_map(Edit::BitmapSyncSize),
        prop_oneof![Just(0u32), (0u32..32).prop_map(|s| 1 << s), any::<u32>()]
            .prop_map(Edit::BitmapChunk),
        prop_oneof![0u32..8, any::<u32>()].prop_map(Edit::BitmapSleep),
        prop_oneof![0u32..300, any::<u32>()].prop_map(Edit::BitmapBehind),
        any::<u32>().prop_map(Edit::BitmapState),
        (0usize..4096, any::<u8>()).prop_map(|(o, b)| Edit::BitmapByte(o, b)),
        prop_oneof![
            0u64..(SB_OFFSET_BYTES + 2 * SB_BLOCK_BYTES as u64),
            (1u64..MEMBER_BYTES / 4096).prop_map(|b| b * 4096)
        ]
        .prop_map(Edit::Truncate),
    ]
}

/// Apply `e` to a member's bytes; superblock edits re-encode it with a
/// right checksum.
fn apply(data: &mut Vec<u8>, e: &Edit) {
    let sb_at = SB_OFFSET_BYTES as usize;
    let sectors = data.len() as u64 / 512;
    if data.len() < sb_at + SB_BLOCK_BYTES {
        return;
    }
    let Ok(mut sb) = Superblock::decode(&data[sb_at..sb_at + SB_BLOCK_BYTES], sectors) else {
        return;
    };
    let bm_at = (sb_at as i64 + sb.bitmap_offset as i64 * 512).max(0) as usize;
    let bitmap = |data: &mut Vec<u8>, f: &dyn Fn(&mut BitmapSuper)| {
        if bm_at + BITMAP_SB_BYTES <= data.len() {
            if let Ok(mut b) = BitmapSuper::decode(&data[bm_at..bm_at + BITMAP_SB_BYTES]) {
                f(&mut b);
                data[bm_at..bm_at + BITMAP_SB_BYTES].copy_from_slice(&b.encode());
            }
        }
    };
    match *e {
        Edit::Events(v) => sb.events = v,
        Edit::DevNumber(v) => sb.dev_number = v,
        Edit::RaidDisks(v) => sb.raid_disks = v,
        Edit::Level(v) => sb.level = v,
        Edit::Layout(v) => sb.layout = v,
        Edit::Chunk(v) => sb.chunksize = v,
        Edit::DataOffset(v) => sb.data_offset = v,
        Edit::DataSize(v) => sb.data_size = v,
        Edit::Size(v) => sb.size = v,
        Edit::ResyncOffset(v) => sb.resync_offset = v,
        Edit::RecoveryOffset(v) => sb.recovery_offset = v,
        Edit::FeatureMap(v) => sb.feature_map ^= v,
        Edit::Role(i, r) => {
            if let Some(role) = sb.dev_roles.get_mut(i) {
                *role = DevRole::from_raw(r);
            }
        }
        Edit::MaxDev(n) => sb.dev_roles.resize(n, DevRole::Spare),
        Edit::BitmapOffset(v) => sb.bitmap_offset = v,
        Edit::OtherUuid => sb.set_uuid[0] ^= 0x5a,
        Edit::DevFlags(v) => sb.devflags = v,
        Edit::BitmapEvents(v) => return bitmap(data, &|b| b.events = v),
        Edit::BitmapCleared(v) => return bitmap(data, &|b| b.events_cleared = v),
        Edit::BitmapSyncSize(v) => return bitmap(data, &|b| b.sync_size = v),
        Edit::BitmapChunk(v) => return bitmap(data, &|b| b.chunksize = v),
        Edit::BitmapSleep(v) => return bitmap(data, &|b| b.daemon_sleep = v),
        Edit::BitmapBehind(v) => return bitmap(data, &|b| b.write_behind = v),
        Edit::BitmapState(v) => return bitmap(data, &|b| b.state = v),
        Edit::BitmapByte(o, v) => {
            if let Some(b) = data.get_mut(bm_at + o) {
                *b = v;
            }
            return;
        }
        Edit::Truncate(len) => {
            data.truncate(len as usize);
            return;
        }
    }
    let mut block = vec![0u8; SB_BLOCK_BYTES];
    if sb.encode_into(&mut block).is_ok() {
        data[sb_at..sb_at + SB_BLOCK_BYTES].copy_from_slice(&block);
    }
}

/// Write the array's first and last 4 KiB through NBD and read them
/// back. An I/O error is an answer (the metadata may leave no member
/// readable); a write that succeeded must read back, and nothing may hang.
fn first_and_last_block(nbd: &Path) -> Result<(), String> {
    let s = UnixStream::connect(nbd).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut c = Client::connect(s, "f").map_err(|e| format!("NBD handshake: {e}"))?;
    let blocks = c.size / 4096;
    for (i, off) in [0, blocks.saturating_sub(1) * 4096].into_iter().enumerate() {
        if blocks == 0 {
            break;
        }
        let data = vec![0x5a ^ i as u8; 4096];
        match c.write(off, &data, true) {
            Ok(()) => match c.read(off, 4096) {
                Ok(got) if got == data => {}
                Ok(_) => {
                    return Err(format!(
                        "block at {off} does not read back what was written"
                    ))
                }
                Err(e) => return Err(format!("reading back {off}: {e}")),
            },
            Err(ClientError::Server(_)) => {}
            Err(e) => return Err(format!("writing {off}: {e}")),
        }
    }
    c.disconnect().map_err(|e| format!("disconnect: {e}"))?;
    Ok(())
}

#[test]
fn damaged_metadata_never_panics_a_create_and_leaves_nothing_claimed() {
    let _g = common::serial();
    let dir = std::env::temp_dir().join(format!("mdraid-asmfuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rt = Runtime::start(RuntimeConfig {
        cores: vec![0],
        mode: Mode::Interrupt,
        ..RuntimeConfig::default()
    })
    .expect("runtime starts");
    let mut d = Daemon::new(rt.handle(), DaemonOptions::default());
    let tpl = templates(&mut d, &dir);
    let nbd = dir.join("nbd.sock");
    ok(
        &mut d,
        "mdraid_nbd_listener_add",
        json!({"unix_path": nbd.display().to_string()}),
    );
    let d = RefCell::new(d);
    let (started, refused) = (Cell::new(0u32), Cell::new(0u32));
    let cases = std::env::var("MDRAID_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(160);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        0..SHAPES.len(),
        proptest::collection::vec((0usize..4, edit()), 1..5),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    );
    let result = runner.run(
        &strategy,
        |(shape, edits, with_uuid, force, other_level)| {
            let t = &tpl[shape];
            let d = &mut *d.borrow_mut();
            let mut members = t.members.clone();
            for (m, e) in &edits {
                let n = members.len();
                apply(&mut members[m % n], e);
            }
            let names: Vec<String> = (0..members.len()).map(|i| format!("f{i}")).collect();
            for (i, (data, name)) in members.iter().zip(&names).enumerate() {
                let f = dir.join(format!("case{i}"));
                std::fs::write(&f, data).unwrap();
                // A member too small for the aio bdev is no case.
                if call(
                    d,
                    "bdev_aio_create",
                    json!({"name": name, "filename": f.display().to_string()}),
                )
                .is_err()
                {
                    for n in &names[..i] {
                        ok(d, "bdev_aio_delete", json!({ "name": n }));
                    }
                    return Ok(());
                }
            }
            // Examine reads the same metadata (as mdadm --examine prints it).
            for n in &names {
                let _ = call(d, "bdev_mdraid_examine", json!({ "name": n }));
            }
            let level = if other_level && t.level != "raid5" {
                "raid5"
            } else {
                t.level
            };
            let mut p = json!({"name": "f", "raid_level": level, "base_bdevs": names});
            if with_uuid {
                p["uuid"] = json!(t.uuid);
            }
            if force {
                p["force"] = json!(true);
            }
            match call(d, "bdev_mdraid_create", p.clone()) {
                Ok(_) => {
                    started.set(started.get() + 1);
                    let a = ok(d, "bdev_mdraid_get_bdevs", json!({"name": "f"}));
                    prop_assert_eq!(a.as_array().map(Vec::len), Some(1));
                    ok(d, "mdraid_nbd_export_add", json!({"bdev_name": "f"}));
                    if let Err(e) = first_and_last_block(&nbd) {
                        prop_assert!(false, "array of {:?}: {}: {}", edits, e, a);
                    }
                    ok(d, "mdraid_nbd_export_remove", json!({"export_name": "f"}));
                    ok(d, "bdev_mdraid_delete", json!({"name": "f"}));
                }
                Err(e) => {
                    refused.set(refused.get() + 1);
                    prop_assert!(!e.message.is_empty());
                    prop_assert!(
                        call(d, "bdev_mdraid_get_bdevs", json!({"name": "f"})).is_err(),
                        "a refused create left an array behind: {}",
                        e
                    );
                }
            }
            for n in &names {
                // Nothing stays claimed.
                ok(d, "bdev_aio_delete", json!({ "name": n }));
            }
            Ok(())
        },
    );
    let (started, refused) = (started.get(), refused.get());
    eprintln!("damaged metadata: {started} creates started, {refused} refused");
    let mut d = d.into_inner();
    d.shutdown();
    drop(d);
    rt.shutdown(std::time::Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        started > 0 && refused > 0,
        "{started} started, {refused} refused"
    );
}
