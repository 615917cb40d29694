//! The write-intent bitmap through the real `mdraid` daemon, with
//! `mdadm --examine-bitmap` (-X) as the format oracle: file members (through
//! `bdev_aio_create`), writes through the NBD export to a known set of
//! chunks, a kill -9, a restart from the saved config, and the resync that
//! follows counted block by block with the per-member I/O counters of
//! `bdev_mdraid_get_bdevs`. Also: lazy clearing with a short daemon sleep.
//!
//! mdadm -X on a regular file takes it for an external bitmap file, so each
//! member is attached read-only to a loop device (`losetup -f --show -r`)
//! and detached after; where that fails (no loop devices, not root), or with
//! MDRAID_TEST_NO_LOOP=1, the bitmap area (bytes 8192..) is copied to a
//! scratch file and -X reads that. Each -X says which it used.
//!
//! Every wait is bounded; the daemon is killed and loop devices detached on
//! every exit path (Drop). Only unix sockets are used.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bdev_raid::bitmap::BitmapGeom;
use bdev_raid::layout::{Geometry, GeometryParams, Level};
use mdraid_nbd::client::Client;
use serde_json::{json, Value};

/// Member size: 64 MiB (63 MiB of data after md's 1 MiB data offset).
const MEMBER_BYTES: u64 = 64 << 20;
/// Bitmap chunk of the -X test: 1 MiB, 63 chunks per member.
const CHUNK_KB: u64 = 1024;

mod process;
use process::*;

/// The array's entry in bdev_mdraid_get_bdevs.
fn array(d: &Daemon, name: &str) -> Value {
    d.ok("bdev_mdraid_get_bdevs", json!({ "name": name }))[0].clone()
}

// ------------------------------------------------------------ mdadm -X

/// A read-only loop device over a member file, detached on drop.
struct LoopDev {
    losetup: PathBuf,
    dev: String,
}

impl LoopDev {
    fn attach(file: &Path) -> Result<LoopDev, String> {
        let losetup = Path::new("/usr/sbin/losetup");
        let losetup = if losetup.is_file() {
            losetup.to_path_buf()
        } else {
            Path::new("/sbin/losetup").to_path_buf()
        };
        if !losetup.is_file() {
            return Err("no losetup".into());
        }
        let f = file.display().to_string();
        let (ok, out, err) = run_tool(&losetup, &["-f", "--show", "-r", &f]);
        let dev = out.trim().to_string();
        if !ok || !dev.starts_with("/dev/") {
            return Err(format!("losetup -f --show -r {f}: {out}{err}"));
        }
        Ok(LoopDev { losetup, dev })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let (ok, out, err) = run_tool(&self.losetup, &["-d", &self.dev]);
        if !ok {
            eprintln!("warning: losetup -d {}: {out}{err}", self.dev);
        }
    }
}

/// What `mdadm -X` says of one member's bitmap.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Xbm {
    events: u64,
    events_cleared: u64,
    /// As mdadm prints it: `1 MB`, `64 MB`.
    chunksize: String,
    /// `Daemon : 600s flush period` → 600.
    daemon_s: u64,
    bits: u64,
    dirty: u64,
}

fn parse_x(text: &str) -> Xbm {
    let field = |k: &str| -> String {
        text.lines()
            .find_map(|l| {
                let (a, b) = l.split_once(" : ")?;
                (a.trim() == k).then(|| b.trim().to_string())
            })
            .unwrap_or_else(|| panic!("mdadm -X printed no `{k}`:\n{text}"))
    };
    let num = |s: &str| -> u64 {
        s.split_whitespace()
            .next()
            .and_then(|w| w.trim_end_matches('s').parse().ok())
            .unwrap_or_else(|| panic!("not a number: {s:?}\n{text}"))
    };
    // "63 bits (chunks), 5 dirty (7.9%)"
    let bm = field("Bitmap");
    let dirty = bm
        .split_once("),")
        .map(|(_, r)| num(r))
        .unwrap_or_else(|| panic!("Bitmap line: {bm:?}"));
    assert_eq!(field("Magic"), "6d746962", "{text}");
    Xbm {
        events: num(&field("Events")),
        events_cleared: num(&field("Events Cleared")),
        chunksize: field("Chunksize"),
        daemon_s: num(&field("Daemon")),
        bits: num(&bm),
        dirty,
    }
}

/// `mdadm -X` on a member file: through a read-only loop device, or (loop
/// devices unavailable, or MDRAID_TEST_NO_LOOP=1) on a copy of the bitmap
/// area. Returns the parsed report, its text and which way was used.
fn examine_bitmap(mdadm: &Path, member: &Path, scratch: &Path) -> (Xbm, String, &'static str) {
    let no_loop = std::env::var("MDRAID_TEST_NO_LOOP").as_deref() == Ok("1");
    let attached = if no_loop {
        Err("MDRAID_TEST_NO_LOOP=1".to_string())
    } else {
        LoopDev::attach(member)
    };
    let (ok, out, err, via) = match attached {
        Ok(l) => {
            let (ok, out, err) = run_tool(mdadm, &["--examine-bitmap", &l.dev]);
            drop(l);
            (ok, out, err, "loop device")
        }
        Err(why) => {
            static SAID: AtomicBool = AtomicBool::new(false);
            if !SAID.swap(true, Ordering::SeqCst) {
                eprintln!("mdadm -X: no loop device ({why}); reading a copy of the bitmap area");
            }
            // The bitmap superblock sits 4 KiB after the md superblock
            // (byte 8192, `bitmap_offset` 8 sectors); its 256-byte header is
            // followed by one bit per chunk. As an external bitmap file
            // mdadm reads the same layout from byte 0.
            let mut head = vec![0u8; 256];
            let f = std::fs::File::open(member).unwrap();
            f.read_exact_at(&mut head, 8192).unwrap();
            let sync_sectors = u64::from_le_bytes(head[24..32].try_into().unwrap());
            let chunk_bytes = u64::from(u32::from_le_bytes(head[32..36].try_into().unwrap()));
            let bits = (sync_sectors * 512).div_ceil(chunk_bytes.max(1));
            let len = (256 + bits.div_ceil(8)).div_ceil(4096) * 4096;
            let mut area = vec![0u8; len as usize];
            f.read_exact_at(&mut area, 8192).unwrap();
            std::fs::write(scratch, &area).unwrap();
            let s = scratch.display().to_string();
            let (ok, out, err) = run_tool(mdadm, &["--examine-bitmap", &s]);
            (ok, out, err, "copy of the bitmap area")
        }
    };
    assert!(
        ok,
        "mdadm -X {} ({via}) failed: {out}{err}",
        member.display()
    );
    (parse_x(&out), out, via)
}

// ------------------------------------------------------------ geometry

/// The array's geometry and bitmap chunk map, rebuilt from what the daemon
/// reports (and checked against it).
struct Shape {
    geom: Geometry,
    bg: BitmapGeom,
    bs: u64,
    members: Vec<String>,
}

fn shape(d: &Daemon, name: &str) -> Shape {
    let a = array(d, name);
    let level = match a["raid_level"].as_str().unwrap() {
        "raid1" => Level::Raid1,
        "raid5" => Level::Raid5,
        l => panic!("level {l} not used here"),
    };
    if level == Level::Raid5 {
        assert_eq!(a["layout"], "left-symmetric", "{a}");
    }
    let list = a["base_bdevs_list"].as_array().unwrap();
    let bdev = &d.ok("bdev_get_bdevs", json!({ "name": name }))[0];
    let bs = bdev["block_size"].as_u64().unwrap();
    let geom = Geometry::new(&GeometryParams {
        level,
        layout: None,
        strip_size_kb: a["strip_size_kb"].as_u64().unwrap() as u32,
        block_size: bs as u32,
        member_blocks: list
            .iter()
            .map(|m| m["data_size"].as_u64().unwrap())
            .collect(),
    })
    .unwrap();
    assert_eq!(
        geom.array_blocks(),
        bdev["num_blocks"].as_u64().unwrap(),
        "rebuilt geometry differs from {name}'s"
    );
    let chunk_kb = a["bitmap"]["chunk_kb"].as_u64().unwrap();
    let bg = BitmapGeom::new(&geom, chunk_kb * 1024).unwrap();
    assert_eq!(Some(bg.chunks()), a["bitmap"]["total_chunks"].as_u64());
    Shape {
        geom,
        bg,
        bs,
        members: list
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect(),
    }
}

impl Shape {
    /// Array byte offset where chunk `c` starts.
    fn chunk_start(&self, c: u64) -> u64 {
        self.bg.array_range(c).0 * self.bs
    }
    fn chunk_len(&self, c: u64) -> u64 {
        self.bg.array_range(c).1 * self.bs
    }
    /// The writes `(offset, len)` of the test: two in chunk 0, one in the
    /// middle of chunk 3, one across the boundary of chunks 10 and 11, one
    /// in the last 4 KiB of chunk 40.
    fn writes(&self) -> Vec<(u64, usize)> {
        vec![
            (self.chunk_start(0), 4096),
            (self.chunk_start(0) + (192 << 10), 8192),
            (self.chunk_start(3) + self.chunk_len(3) / 2, 4096),
            (self.chunk_start(11) - 2048, 4096),
            (self.chunk_start(40) + self.chunk_len(40) - 4096, 4096),
        ]
    }
    /// The chunks `writes` dirty, by the engine's own map.
    fn dirtied(&self, writes: &[(u64, usize)]) -> BTreeSet<u64> {
        let mut s = BTreeSet::new();
        for &(off, len) in writes {
            let (c0, c1) = self.bg.chunks_of(off / self.bs, len as u64 / self.bs);
            s.extend(c0..=c1);
        }
        s
    }
}

/// Per-member `io` counters of the array (summed over its channels).
fn member_io(d: &Daemon, name: &str) -> Vec<Value> {
    array(d, name)["base_bdevs_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["io"].clone())
        .collect()
}

fn sum_io(io: &[Value], key: &str) -> u64 {
    io.iter()
        .map(|m| {
            m[key]
                .as_u64()
                .unwrap_or_else(|| panic!("no io.{key}: {m}"))
        })
        .sum()
}

/// Rewrite `writes` on `export` until the connection dies (the daemon is
/// killed) or `stop` is set: keeps the array dirty (safemode would mark it
/// clean after 200 ms idle) without touching any other chunk.
fn keep_writing(
    nbd: PathBuf,
    export: String,
    writes: Vec<(u64, usize)>,
    done_once: Arc<AtomicU32>,
) -> u64 {
    let s = UnixStream::connect(&nbd).unwrap();
    let mut c = Client::connect(s, &export).expect("NBD handshake");
    let mut n = 0u64;
    loop {
        for &(off, len) in &writes {
            let data: Vec<u8> = (0..len).map(|i| (i as u64 + off + n) as u8).collect();
            if c.write(off, &data, false).is_err() {
                return n;
            }
            n += 1;
        }
        done_once.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Poll until the array's resync ended and it is clean again.
fn wait_resynced_and_clean(d: &Daemon, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = array(d, name);
        if a["process"].is_null() && a["sync_action"] == "idle" && a["array_state"] == "clean" {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: resync/clean not reached in 60 s: {a}\n{}",
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------ tests

/// The issue's "Done when": mdadm -X reports mdraid's chunk size, events,
/// events_cleared and dirty count after a known set of writes and after a
/// crash; the resync after the crash reads exactly the dirty chunks; an
/// orderly stop after it leaves 0 dirty with events_cleared advanced.
#[test]
fn examine_bitmap_after_writes_crash_and_resync() {
    let _g = serial();
    let test = "examine_bitmap_after_writes_crash_and_resync";
    let Some(mdadm) = require_tool(test, "mdadm") else {
        return;
    };
    let dir = TempDir::new("x");
    let scratch = dir.path("bitmap-copy.bin");
    let nbd = dir.path("nbd.sock");
    let mut d = Daemon::start(&dir, "d1", None);
    d.ok(
        "mdraid_nbd_listener_add",
        json!({"unix_path": nbd.display().to_string()}),
    );
    // (array, level, members, strip)
    let arrays: [(&str, &str, usize); 2] = [("bm5", "raid5", 3), ("bm1", "raid1", 2)];
    let mut files: Vec<Vec<PathBuf>> = Vec::new();
    for (name, level, n) in arrays {
        let mut members = Vec::new();
        let mut paths = Vec::new();
        for i in 0..n {
            let m = format!("{name}m{i}");
            let f = dir.member(&format!("{m}.img"), MEMBER_BYTES);
            d.aio(&m, &f);
            members.push(m);
            paths.push(f);
        }
        // Fresh (zeroed) members: no initial resync, every bit clear.
        let mut p = json!({"name": name, "raid_level": level, "base_bdevs": members,
            "bitmap": {"chunk_kb": CHUNK_KB, "daemon_sleep_ms": 600_000}, "assume_clean": true});
        if level != "raid1" {
            p["strip_size_kb"] = json!(64);
        }
        d.ok("bdev_mdraid_create", p);
        d.ok("mdraid_nbd_export_add", json!({ "bdev_name": name }));
        files.push(paths);
    }
    let saved = dir.path("saved.json");
    std::fs::write(&saved, d.ok("save_config", Value::Null).to_string()).unwrap();

    let shapes: Vec<Shape> = arrays.iter().map(|a| shape(&d, a.0)).collect();
    let expect: BTreeSet<u64> = [0, 3, 10, 11, 40].into();
    for (s, (name, ..)) in shapes.iter().zip(arrays) {
        assert_eq!(
            s.dirtied(&s.writes()),
            expect,
            "{name}: the planned writes do not dirty the planned chunks"
        );
        assert!(s.bg.chunks() > 41, "{name}: {} chunks", s.bg.chunks());
    }
    let n_dirty = expect.len() as u64;

    // Fresh arrays: every bit clear, mdraid's chunk size and daemon sleep.
    let mut cleared0 = Vec::new();
    for (i, (name, ..)) in arrays.iter().enumerate() {
        let total = shapes[i].bg.chunks();
        for f in &files[i] {
            let (x, text, via) = examine_bitmap(&mdadm, f, &scratch);
            assert_eq!(x.chunksize, "1 MB", "{text}");
            assert_eq!(x.daemon_s, 600, "{text}");
            assert_eq!((x.bits, x.dirty), (total, 0), "{text}");
            assert!(x.events_cleared <= x.events, "{text}");
            eprintln!(
                "{name} {}: fresh: {total} bits, 0 dirty, events {} cleared {} (-X via {via})",
                f.file_name().unwrap().to_string_lossy(),
                x.events,
                x.events_cleared
            );
            cleared0.push(x.events_cleared);
        }
    }

    // Write the planned set and keep rewriting it (the arrays stay dirty).
    let rounds = Arc::new(AtomicU32::new(0));
    let writers: Vec<_> = arrays
        .iter()
        .zip(&shapes)
        .map(|((name, ..), s)| {
            let (nbd, e, w, r) = (nbd.clone(), name.to_string(), s.writes(), rounds.clone());
            std::thread::spawn(move || keep_writing(nbd, e, w, r))
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let states: Vec<Value> = arrays.iter().map(|a| array(&d, a.0)).collect();
        if rounds.load(Ordering::SeqCst) >= 4
            && states.iter().all(|a| {
                a["bitmap"]["dirty_chunks"] == json!(n_dirty) && a["array_state"] == "active"
            })
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bits never set: {states:?}\n{}",
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // -X while running: N dirty on every member, events as the array's.
    let mut before_crash = Vec::new();
    let mut k = 0;
    for (i, (name, ..)) in arrays.iter().enumerate() {
        let events = array(&d, name)["events"].as_u64().unwrap();
        for f in &files[i] {
            let (x, text, via) = examine_bitmap(&mdadm, f, &scratch);
            assert_eq!(x.chunksize, "1 MB", "{text}");
            assert_eq!(
                (x.bits, x.dirty),
                (shapes[i].bg.chunks(), n_dirty),
                "{name}: {text}"
            );
            assert_eq!(x.events, events, "{name}: bitmap events: {text}");
            assert_eq!(
                x.events_cleared, cleared0[k],
                "{name}: nothing was cleared: {text}"
            );
            if k == 0 {
                eprintln!(
                    "mdadm -X {} (via {via}) after the writes:\n{text}",
                    f.file_name().unwrap().to_string_lossy()
                );
            }
            before_crash.push(x);
            k += 1;
        }
    }
    assert!(
        arrays
            .iter()
            .all(|a| array(&d, a.0)["array_state"] == "active"),
        "an array went clean before the kill"
    );

    // Crash.
    d.kill9();
    let acked: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    let mut k = 0;
    for (i, (name, ..)) in arrays.iter().enumerate() {
        for f in &files[i] {
            let (x, text, _) = examine_bitmap(&mdadm, f, &scratch);
            assert_eq!(x, before_crash[k], "{name}: -X changed by the kill: {text}");
            k += 1;
        }
    }
    eprintln!(
        "kill -9 after {acked} acknowledged writes: -X unchanged ({n_dirty} dirty, events {} / {})",
        before_crash[0].events,
        before_crash.last().unwrap().events
    );

    // Restart from the saved config: assembled dirty, the bitmap resync
    // runs on its own and the arrays end clean.
    let mut d = Daemon::start(&dir, "d2", Some(&saved));
    for (name, ..) in arrays {
        let a = wait_resynced_and_clean(&d, name);
        assert_eq!(a["bitmap"]["dirty_chunks"], json!(n_dirty), "{name}: {a}");
    }
    let log = d.stderr();
    for (name, ..) in arrays {
        assert!(log.contains(&format!("array {name}: resync done")), "{log}");
    }
    assert_eq!(
        log.matches(&format!("resyncing the {n_dirty} chunks its bitmap marks"))
            .count(),
        2,
        "{log}"
    );

    // The resync read exactly the dirty chunks: raid1 one copy of each
    // (chunk blocks), raid5 the data strips of every stripe of each (chunk
    // member blocks × data members); it wrote the other copy / the parity.
    for (s, (name, level, n)) in shapes.iter().zip(arrays) {
        let io = member_io(&d, name);
        let chunk_member_blocks = CHUNK_KB * 1024 / s.bs;
        let (want_read, want_written) = if level == "raid1" {
            (
                n_dirty * chunk_member_blocks,
                n_dirty * chunk_member_blocks * (n as u64 - 1),
            )
        } else {
            (
                n_dirty * chunk_member_blocks * (n as u64 - 1),
                n_dirty * chunk_member_blocks,
            )
        };
        // The same from the engine's map of a chunk onto the array.
        let mapped: u64 = expect.iter().map(|&c| s.bg.array_range(c).1).sum();
        assert_eq!(mapped, want_read, "{name}: chunk map");
        let (rb, wb) = (sum_io(&io, "read_blocks"), sum_io(&io, "written_blocks"));
        eprintln!(
            "{name} ({level}, {n} members, {} blocks of {} B, {} chunks): resync read {rb} blocks \
             (expected {want_read} = {n_dirty} dirty chunks), wrote {wb} (expected {want_written}); \
             per member: {}",
            s.geom.array_blocks(),
            s.bs,
            s.bg.chunks(),
            io.iter()
                .zip(&s.members)
                .map(|(m, name)| format!(
                    "{name} read {} in {} ios, wrote {} in {} ios",
                    m["read_blocks"], m["reads"], m["written_blocks"], m["writes"]
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        assert_eq!(rb, want_read, "{name}: blocks read by the resync: {io:?}");
        assert_eq!(
            wb, want_written,
            "{name}: blocks written by the resync: {io:?}"
        );
        assert_eq!(sum_io(&io, "errors"), 0, "{name}");
        assert_eq!(sum_io(&io, "outstanding"), 0, "{name}");
    }

    // Orderly stop: the bitmap is flushed, every bit cleared on disk.
    let after: Vec<u64> = arrays
        .iter()
        .map(|a| array(&d, a.0)["events"].as_u64().unwrap())
        .collect();
    let st = d.term();
    assert!(st.success(), "SIGTERM exit: {st:?}\n{}", d.stderr());
    let mut k = 0;
    for (i, (name, ..)) in arrays.iter().enumerate() {
        for f in &files[i] {
            let (x, text, via) = examine_bitmap(&mdadm, f, &scratch);
            assert_eq!(x.dirty, 0, "{name}: {text}");
            assert_eq!(x.chunksize, "1 MB", "{text}");
            assert!(
                x.events_cleared > before_crash[k].events_cleared
                    && x.events_cleared <= x.events
                    && x.events >= after[i],
                "{name}: events_cleared did not advance: {text} (before the crash {:?})",
                before_crash[k]
            );
            if k == 0 {
                eprintln!(
                    "mdadm -X {} (via {via}) after the resync and an orderly stop:\n{text}",
                    f.file_name().unwrap().to_string_lossy()
                );
            }
            k += 1;
        }
    }
}

/// Lazy clearing: with a short daemon sleep, the bits of chunks written once
/// go back to 0 by themselves after the writes stop (two daemon passes), in
/// memory (`dirty_chunks`) and on disk (mdadm -X, when mdadm is there).
#[test]
fn bits_clear_lazily_after_writes_stop() {
    let _g = serial();
    let dir = TempDir::new("lazy");
    let scratch = dir.path("bitmap-copy.bin");
    let nbd = dir.path("nbd.sock");
    let mut d = Daemon::start(&dir, "d", None);
    d.ok(
        "mdraid_nbd_listener_add",
        json!({"unix_path": nbd.display().to_string()}),
    );
    const SLEEP_MS: u64 = 300;
    // raid1 with the default chunk (one 64 MiB chunk), raid5 with 1 MiB.
    let arrays: [(&str, &str, usize, Value); 2] = [
        ("lz1", "raid1", 2, json!({ "daemon_sleep_ms": SLEEP_MS })),
        (
            "lz5",
            "raid5",
            3,
            json!({"chunk_kb": CHUNK_KB, "daemon_sleep_ms": SLEEP_MS}),
        ),
    ];
    let mut files = Vec::new();
    for (name, level, n, bitmap) in &arrays {
        let mut members = Vec::new();
        for i in 0..*n {
            let m = format!("{name}m{i}");
            let f = dir.member(&format!("{m}.img"), MEMBER_BYTES);
            d.aio(&m, &f);
            members.push(m);
            files.push((name.to_string(), f));
        }
        let mut p = json!({"name": name, "raid_level": level, "base_bdevs": members,
            "bitmap": bitmap, "assume_clean": true});
        if *level != "raid1" {
            p["strip_size_kb"] = json!(64);
        }
        d.ok("bdev_mdraid_create", p);
        d.ok("mdraid_nbd_export_add", json!({ "bdev_name": name }));
    }
    for (name, ..) in &arrays {
        let s = shape(&d, name);
        let writes = if s.bg.chunks() > 41 {
            s.writes()
        } else {
            vec![(0, 4096), (s.geom.array_blocks() * s.bs - 4096, 4096)]
        };
        let want = s.dirtied(&writes).len() as u64;
        let mut c = Client::connect(UnixStream::connect(&nbd).unwrap(), name).unwrap();
        for &(off, len) in &writes {
            c.write(off, &vec![0x5a; len], false).unwrap();
        }
        let acked = Instant::now();
        c.disconnect().unwrap();
        // Right after the last ack the bits are set: the earliest a bit
        // can go is the second daemon pass after its chunk went idle.
        let a = array(&d, name);
        let seen = a["bitmap"]["dirty_chunks"].as_u64().unwrap();
        let looked = acked.elapsed();
        assert_eq!(
            a["bitmap"]["daemon_sleep_ms"],
            json!(SLEEP_MS),
            "{name}: {a}"
        );
        if looked < Duration::from_millis(SLEEP_MS) {
            assert_eq!(seen, want, "{name}: {a}");
        }
        let deadline = acked + Duration::from_secs(10);
        let cleared = loop {
            let a = array(&d, name);
            if a["bitmap"]["dirty_chunks"] == json!(0) {
                break acked.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "{name}: bits not cleared 10 s after the writes: {a}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        eprintln!(
            "{name}: {want} chunks dirtied ({seen} seen {looked:?} after the last ack); \
             all clear {cleared:?} after it (daemon_sleep {SLEEP_MS} ms)"
        );
        assert!(
            cleared >= Duration::from_millis(SLEEP_MS - 50),
            "{name}: cleared after {cleared:?}, sooner than one daemon sleep"
        );
    }
    // On disk too, while the daemon runs.
    if let Some(mdadm) = require_tool("bits_clear_lazily_after_writes_stop", "mdadm") {
        for (name, f) in &files {
            let (x, text, via) = examine_bitmap(&mdadm, f, &scratch);
            assert_eq!(x.dirty, 0, "{name}: {text}");
            // md keeps daemon_sleep in whole seconds: 300 ms is 1 s there.
            assert_eq!(x.daemon_s, 1, "{name}: {text}");
            assert!(
                x.events_cleared > 0 && x.events_cleared <= x.events,
                "{name}: {text}"
            );
            eprintln!(
                "{name} {}: -X (via {via}): 0 dirty, events {} cleared {}",
                f.file_name().unwrap().to_string_lossy(),
                x.events,
                x.events_cleared
            );
        }
    }
    assert!(d.term().success(), "{}", d.stderr());
}

/// The `write_mostly` flags of an array's members, in role order.
fn write_mostly(info: &Value) -> Vec<bool> {
    info["base_bdevs_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["write_mostly"].as_bool().unwrap())
        .collect()
}

/// Write-mostly members and write-behind as mdadm reads them: `mdadm
/// --examine` prints `Flags : write-mostly` for exactly the members set so
/// (at create, then changed at runtime), and `-X` the bitmap's write-behind.
#[test]
fn write_mostly_and_write_behind_as_mdadm_reads_them() {
    let _g = serial();
    let test = "write_mostly_and_write_behind_as_mdadm_reads_them";
    let Some(mdadm) = require_tool(test, "mdadm") else {
        return;
    };
    let dir = TempDir::new("wm");
    let scratch = dir.path("bitmap-copy.bin");
    let mut d = Daemon::start(&dir, "d1", None);
    let mut files = Vec::new();
    for i in 0..3 {
        let f = dir.member(&format!("w{i}.img"), MEMBER_BYTES);
        d.aio(&format!("w{i}"), &f);
        files.push(f);
    }
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "wm", "raid_level": "raid1", "base_bdevs": ["w0", "w1", "w2"],
               "write_mostly": ["w1"], "write_behind": 100,
               "bitmap": {"chunk_kb": CHUNK_KB}}),
    );
    let flags = |files: &[PathBuf]| -> Vec<bool> {
        files
            .iter()
            .map(|f| {
                let (ok, out, err) = run_tool(&mdadm, &["--examine", &f.display().to_string()]);
                assert!(ok, "mdadm --examine {}: {out}{err}", f.display());
                out.lines()
                    .any(|l| l.trim().starts_with("Flags :") && l.contains("write-mostly"))
            })
            .collect()
    };
    assert_eq!(flags(&files), [false, true, false]);
    let (_, text, via) = examine_bitmap(&mdadm, &files[0], &scratch);
    assert!(
        text.contains("Allow write behind, max 100"),
        "mdadm -X ({via}):\n{text}"
    );
    // At runtime: w2 becomes write-mostly, w1 no longer (each a commit).
    d.ok(
        "bdev_mdraid_set_write_mostly",
        json!({"name": "wm", "base_bdev": "w2", "write_mostly": true}),
    );
    d.ok(
        "bdev_mdraid_set_write_mostly",
        json!({"name": "wm", "base_bdev": "w1", "write_mostly": false}),
    );
    let info = array(&d, "wm");
    assert_eq!(write_mostly(&info), [false, false, true], "{info}");
    assert_eq!(flags(&files), [false, false, true]);
    // And they survive a restart: the array assembles with them.
    let saved = dir.path("saved.json");
    std::fs::write(&saved, d.ok("save_config", Value::Null).to_string()).unwrap();
    d.kill9();
    let d = Daemon::start(&dir, "d2", Some(&saved));
    let info = array(&d, "wm");
    assert_eq!(write_mostly(&info), [false, false, true], "{info}");
    assert_eq!(info["write_behind"], 100, "{info}");
}

/// Members full of old, disagreeing data, as after another use.
fn old_data_member(dir: &TempDir, name: &str, seed: u8) -> PathBuf {
    let f = dir.member(name, MEMBER_BYTES);
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed | 1)
        .collect();
    let mut data = Vec::with_capacity(MEMBER_BYTES as usize);
    while (data.len() as u64) < MEMBER_BYTES {
        data.extend_from_slice(&chunk);
    }
    // The superblock's 4 KiB stay blank: the member is no array's.
    data[4096..8192].fill(0);
    std::fs::write(&f, &data).unwrap();
    f
}

/// md's `check`, to its end: the mismatch count in sectors.
fn check_mismatches(d: &Daemon, name: &str) -> u64 {
    d.ok(
        "bdev_mdraid_sync_action",
        json!({"name": name, "action": "check"}),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = array(d, name);
        if a["sync_action"] == "idle" && a["process"].is_null() {
            if let Some(n) = a["mismatch_cnt"].as_u64() {
                return n;
            }
        }
        assert!(Instant::now() < deadline, "{name}: check never ended: {a}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A new array on members holding old data is resynced from the start, as
/// mdadm's create is (every bitmap bit set, the superblocks dirty), so its
/// copies and parity agree before a member is lost; `assume_clean` skips
/// that (and its check then finds the old data disagreeing).
#[test]
fn new_array_on_old_data_is_resynced_first() {
    let _g = serial();
    let dir = TempDir::new("init");
    let d = Daemon::start(&dir, "d1", None);
    for (name, level, assume_clean) in [
        ("i5", "raid5", false),
        ("i1", "raid1", false),
        ("c5", "raid5", true),
    ] {
        let n = if level == "raid5" { 3 } else { 2 };
        let mut members = Vec::new();
        for i in 0..n {
            let m = format!("{name}m{i}");
            old_data_member(&dir, &format!("{m}.img"), 17 * i as u8 + 3);
            d.aio(&m, &dir.path(&format!("{m}.img")));
            members.push(m);
        }
        let mut p = json!({"name": name, "raid_level": level, "base_bdevs": members,
            "bitmap": {"chunk_kb": CHUNK_KB}});
        if assume_clean {
            p["assume_clean"] = json!(true);
        }
        d.ok("bdev_mdraid_create", p);
        if assume_clean {
            let a = array(&d, name);
            assert!(a["process"].is_null(), "{name}: {a}");
            assert_eq!(a["bitmap"]["dirty_chunks"], 0, "{name}: {a}");
            assert!(check_mismatches(&d, name) > 0, "{name}: old data agreed?");
            continue;
        }
        let a = array(&d, name);
        let chunks = a["bitmap"]["total_chunks"].as_u64();
        assert!(
            a["process"]["type"] == "resync" || a["array_state"] != "clean",
            "{name}: no initial resync: {a}"
        );
        if let Some(c) = chunks {
            assert_eq!(a["bitmap"]["dirty_chunks"].as_u64(), Some(c), "{name}: {a}");
        }
        wait_resynced_and_clean(&d, name);
        assert_eq!(
            check_mismatches(&d, name),
            0,
            "{name}: copies or parity disagree"
        );
    }
}

/// `sync_action frozen` stops a resync, here a new array's initial one,
/// as md's does: the process ends, the array stays unclean; `idle` starts
/// it again from its checkpoint (the chunks already resynced stay done),
/// and it runs to its end.
#[test]
fn frozen_stops_the_initial_resync_and_idle_resumes_it() {
    let _g = serial();
    let dir = TempDir::new("frz");
    let d = Daemon::start(&dir, "d1", None);
    // Slow enough to be caught running: 4 MiB/s, 256 KiB windows.
    d.ok(
        "bdev_mdraid_set_options",
        json!({"process_window_size_kb": 256, "process_max_bandwidth_mb_sec": 4}),
    );
    let mut members = Vec::new();
    for i in 0..3 {
        let m = format!("f{i}");
        old_data_member(&dir, &format!("{m}.img"), 29 * i as u8 + 5);
        d.aio(&m, &dir.path(&format!("{m}.img")));
        members.push(m);
    }
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "fz", "raid_level": "raid5", "base_bdevs": members,
            "bitmap": {"chunk_kb": CHUNK_KB}}),
    );
    let progress = |a: &Value| a["process"]["progress"]["blocks"].as_u64();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = array(&d, "fz");
        assert_eq!(a["process"]["type"], "resync", "{a}");
        if progress(&a).is_some_and(|b| b > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "resync does not move: {a}");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.ok(
        "bdev_mdraid_sync_action",
        json!({"name": "fz", "action": "frozen"}),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let frozen = loop {
        let a = array(&d, "fz");
        if a["process"].is_null() {
            break a;
        }
        assert!(Instant::now() < deadline, "frozen did not stop it: {a}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(frozen["sync_action"], "frozen", "{frozen}");
    assert_ne!(frozen["array_state"], "clean", "{frozen}");
    // Where it stopped, from its log line.
    let at_block = |text: &str, prefix: &str| -> Option<u64> {
        let i = text.find(prefix)? + prefix.len();
        let digits: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    };
    let stopped = at_block(
        &d.stderr(),
        "resync stopped by sync_action frozen at array block ",
    )
    .unwrap_or_else(|| panic!("no stop logged:\n{}", d.stderr()));
    assert!(stopped > 0, "{}", d.stderr());
    // Nothing starts it while frozen.
    std::thread::sleep(Duration::from_millis(500));
    let a = array(&d, "fz");
    assert!(a["process"].is_null(), "{a}");
    assert!(!d.stderr().contains("resync resumes"), "{}", d.stderr());

    d.ok(
        "bdev_mdraid_set_options",
        json!({"process_max_bandwidth_mb_sec": 0}),
    );
    d.ok(
        "bdev_mdraid_sync_action",
        json!({"name": "fz", "action": "idle"}),
    );
    wait_resynced_and_clean(&d, "fz");
    assert_eq!(
        at_block(&d.stderr(), "resync resumes at block "),
        Some(stopped),
        "{}",
        d.stderr()
    );
    assert_eq!(check_mismatches(&d, "fz"), 0, "parity disagrees");
}

/// An orderly stop in the middle of a resync records where the resync got
/// as `resync_offset`, so the next start resumes there instead of at 0:
/// stopped while it runs, and with its channels long idle (frozen first,
/// no user I/O).
#[test]
fn an_orderly_stop_mid_resync_records_its_checkpoint() {
    let _g = serial();
    for frozen in [false, true] {
        stop_mid_resync(frozen);
    }
}

/// A stop right after a create, its initial resync running at full
/// speed: the resync ends at its checkpoint, not in a storm of windows
/// "failed" because the stopping array refused them.
#[test]
fn a_stop_right_after_a_create_is_no_resync_failure() {
    let _g = serial();
    let dir = TempDir::new("stopnow");
    let mut d = Daemon::start(&dir, "d1", None);
    d.aio_members(&dir, "q", 3, 256 << 20);
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "qn", "raid_level": "raid5", "base_bdevs": ["q0", "q1", "q2"], "strip_size_kb": 64}),
    );
    assert!(d.term().success(), "{}", d.stderr());
    let log = d.stderr();
    assert!(!log.contains("window failed"), "{log}");
    assert!(!log.contains("resync ended with"), "{log}");
    if !log.contains("resync done") {
        assert!(
            log.contains("array qn: stopped before its resync ended"),
            "{log}"
        );
    }
}

fn stop_mid_resync(frozen: bool) {
    let dir = TempDir::new(if frozen { "stopcpf" } else { "stopcp" });
    let mut d = Daemon::start(&dir, "d1", None);
    d.ok(
        "bdev_mdraid_set_options",
        json!({"process_window_size_kb": 256, "process_max_bandwidth_mb_sec": 4}),
    );
    let mut files = Vec::new();
    for i in 0..2 {
        let m = format!("s{i}");
        files.push(old_data_member(&dir, &format!("{m}.img"), 31 * i as u8 + 7));
        d.aio(&m, &dir.path(&format!("{m}.img")));
    }
    d.ok(
        "bdev_mdraid_create",
        json!({"name": "sc", "raid_level": "raid1", "base_bdevs": ["s0", "s1"], "bitmap": false}),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while array(&d, "sc")["process"]["progress"]["blocks"]
        .as_u64()
        .is_none_or(|b| b == 0)
    {
        assert!(Instant::now() < deadline, "resync does not move");
        std::thread::sleep(Duration::from_millis(20));
    }
    if frozen {
        d.ok(
            "bdev_mdraid_sync_action",
            json!({"name": "sc", "action": "frozen"}),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !array(&d, "sc")["process"].is_null() {
            assert!(Instant::now() < deadline, "frozen did not stop it");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Idle for a while: the channels report it before the stop.
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(d.term().success(), "{}", d.stderr());
    let mut buf = vec![0u8; 4096];
    std::fs::File::open(&files[0])
        .unwrap()
        .read_exact_at(&mut buf, 4096)
        .unwrap();
    let sb = bdev_raid::ondisk::Superblock::decode(&buf, MEMBER_BYTES / 512).unwrap();
    assert!(
        sb.resync_offset > 0 && sb.resync_offset != u64::MAX,
        "frozen {frozen}: resync_offset {:#x}\n{}",
        sb.resync_offset,
        d.stderr()
    );
    // The log says so, and the stop is no resync failure.
    let log = d.stderr();
    assert!(
        log.contains(&format!(
            "array sc: stopped before its resync ended; the superblocks record resync_offset {}",
            sb.resync_offset
        )),
        "frozen {frozen}: {log}"
    );
    assert!(
        !log.contains("window failed") && !log.contains("stopped clean"),
        "frozen {frozen}: {log}"
    );
}
