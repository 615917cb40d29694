//! The CI sweep: every level, faults on, zero oracle violations.
//!
//! `MDRAID_SIM_SEEDS` and `MDRAID_SIM_OPS` widen it on demand (the long
//! sweep); the defaults are what CI runs.

use mdraid_sim::{run, Scenario, DEFAULT_OPS};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `each(seed)` for seeds `0..seeds`, spread over one thread per core.
fn over_seeds<T: Send>(seeds: u64, each: impl Fn(u64) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let each = &each;
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t..seeds)
                        .step_by(threads as usize)
                        .map(each)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn sweep() {
    let seeds = env_u64("MDRAID_SIM_SEEDS", 500);
    let ops = env_u64("MDRAID_SIM_OPS", DEFAULT_OPS);
    let results = over_seeds(seeds, |seed| {
        let sc = Scenario::from_seed(seed, ops);
        let size = bdev_raid::layout::Geometry::new(&sc.geometry).map_or(0, |g| g.array_blocks());
        (
            seed,
            sc.geometry.level,
            sc.bitmap_chunk.is_some(),
            size,
            run(&sc),
        )
    });
    let mut levels = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    let (mut faults, mut blocks, mut crashes, mut sbw, mut refused) = (0, 0, 0, 0, 0);
    let (mut bitmap_runs, mut bm_resyncs, mut bm_resynced, mut bm_full, mut bit_waits) =
        (0, 0, 0, 0, 0);
    let (mut readd_bm, mut readd_full, mut rebuilds, mut rebuilt, mut skipped) = (0, 0, 0, 0, 0);
    let mut sync_checks = 0;
    let (mut resync_faults, mut hole_lost, mut initial, mut restarts) = (0, 0, 0, 0);
    let (mut direct_reads, mut direct_writes, mut direct_redone, mut direct_cut) = (0, 0, 0, 0);
    for (seed, level, bitmap, size, r) in &results {
        *levels.entry(level.name()).or_insert(0) += 1;
        match r {
            Ok(o) => {
                faults += o.child_errors;
                blocks += o.blocks_verified;
                crashes += o.crashes;
                sbw += o.superblock_writes;
                refused += u64::from(o.ended_by_refusal.is_some());
                readd_bm += o.readds_bitmap;
                sync_checks += o.sync_checks;
                resync_faults += o.resync_faults;
                hole_lost += o.hole_lost_blocks;
                initial += u64::from(o.initial_resync);
                restarts += o.resync_restarts;
                direct_reads += o.direct_reads;
                direct_writes += o.direct_writes;
                direct_redone += o.direct_redone;
                direct_cut += o.direct_cut;
                readd_full += o.readds_full;
                rebuilds += o.rebuilds;
                rebuilt += o.rebuilt_blocks;
                skipped += o.rebuild_skipped_blocks;
                if *bitmap {
                    bitmap_runs += 1;
                    bm_resyncs += o.resyncs;
                    bm_resynced += o.resync_blocks;
                    bm_full += o.resyncs * size;
                    bit_waits += o.bit_waits;
                }
            }
            Err(v) => failures.push(format!("{v}")),
        }
        let _ = seed;
    }
    println!(
        "sweep: {seeds} seeds x {ops} ops; levels {levels:?}; {faults} child errors injected; \
         {crashes} crashes; {sbw} superblock writes; {refused} runs ended early (an assembly md refuses too, or every member dead with writes held); \
         {blocks} blocks verified"
    );
    println!(
        "sweep: {bitmap_runs} runs with a bitmap: {bit_waits} writes waited for their bits; \
         {bm_resyncs} resyncs after dirty assemblies covered {bm_resynced} of {bm_full} array blocks \
         ({:.1}%: only dirty chunks)",
        100.0 * bm_resynced as f64 / bm_full.max(1) as f64
    );
    println!(
        "sweep: {readd_bm} members re-added from the bitmap, {readd_full} rebuilt fully; \
         {rebuilds} rebuilds finished: {rebuilt} member blocks copied, {skipped} skipped as clean; \
         members compared byte for byte after {sync_checks} of the resyncs and rebuilds"
    );
    println!(
        "sweep: direct path: {direct_reads} reads, {direct_writes} writes, \
         {direct_redone} redone as parents after a member I/O failed, \
         {direct_cut} direct member writes cut by crashes"
    );
    println!(
        "sweep: {initial} arrays made dirty and resynced from the start; {resync_faults} member \
         faults injected during resyncs; {restarts} resyncs started again after failed windows; \
         {hole_lost} blocks lost to write holes"
    );
    for f in &failures {
        println!("{f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed",
        failures.len()
    );
    assert_eq!(levels.len(), 7, "every level must be covered");
    assert!(
        initial > 0 && resync_faults > 0 && hole_lost > 0,
        "no run had member faults during a resync, or none lost blocks to a write hole"
    );
    assert!(
        direct_reads > 0 && direct_writes > 0 && direct_redone > 0,
        "no run exercised the direct path (and its failures)"
    );
    assert!(faults > 0, "the sweep injected no faults");
    assert!(crashes > 0, "the sweep crashed nothing");
    assert!(
        bitmap_runs > 0 && bit_waits > 0,
        "no run exercised the bitmap"
    );
    assert!(
        readd_bm > 0 && readd_full > 0 && rebuilds > 0 && skipped > 0 && sync_checks > 0,
        "no run exercised recovery"
    );
}

/// The write-mostly workload (R5): raid1/raid10 with a slow write-mostly
/// member, write-behind on, the fast members failing at random moments
/// but never a range's last copy; zero reads older than an acknowledged
/// write, and no run takes the array offline.
#[test]
fn write_behind_sweep() {
    let seeds = env_u64("MDRAID_SIM_WB_SEEDS", 500);
    let ops = env_u64("MDRAID_SIM_OPS", DEFAULT_OPS);
    let results = over_seeds(seeds, |seed| {
        (seed, run(&Scenario::write_behind(seed, ops)))
    });
    let (mut behind, mut wm_reads, mut failed, mut blocks, mut crashes) = (0, 0, 0, 0, 0);
    let (mut direct_reads, mut direct_writes, mut direct_redone, mut direct_cut) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    let mut offline = Vec::new();
    for (seed, r) in &results {
        match r {
            Ok(o) => {
                // Offline at some point, or ended by an assembly that
                // found too few members (as good as offline).
                if o.ever_offline || o.ended_by_refusal.is_some() {
                    offline.push(*seed);
                }
                behind += o.behind_writes;
                wm_reads += o.write_mostly_reads;
                failed += o.members_failed;
                blocks += o.blocks_verified;
                crashes += o.crashes;
                direct_reads += o.direct_reads;
                direct_writes += o.direct_writes;
                direct_redone += o.direct_redone;
                direct_cut += o.direct_cut;
            }
            Err(v) => failures.push(format!("{v}")),
        }
    }
    println!(
        "sweep: write-behind: direct path: {direct_reads} reads, {direct_writes} writes, \
         {direct_redone} redone as parents after a member I/O failed, \
         {direct_cut} direct member writes cut by crashes"
    );
    println!(
        "sweep: write-behind: {seeds} seeds x {ops} ops; {behind} writes written behind; \
         {wm_reads} reads served by write-mostly members; {failed} members failed at the end; \
         {crashes} crashes; {blocks} blocks verified"
    );
    for f in &failures {
        println!("{f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed",
        failures.len()
    );
    assert!(
        offline.is_empty(),
        "the workload took a range's last copy: the array went offline with seeds {offline:?}"
    );
    assert!(
        behind > 0 && wm_reads > 0,
        "no run wrote behind or read a write-mostly member"
    );
    assert!(
        direct_reads > 0 && direct_writes > 0,
        "no run exercised the direct path"
    );
}

/// Seeds past the CI's ranges that once failed, each on a bug since fixed
/// (in the engine or the checker): they run every time.
#[test]
fn seeds_that_found_bugs() {
    let found = [
        // Every member dead with a write held (the run ends early).
        (10286, false),
        // A write-behind loss reading back the initial zeros.
        (10481, true),
        // A stop that fails a dead member and takes the array offline.
        (14113, true),
        // A write acknowledged with its only copy in sync still behind.
        (17219, true),
        // A rebuild (which sets no bitmap bits) taken for done where it
        // had not written its member: the member failed meanwhile.
        (377, false),
        (187, true),
    ];
    for (seed, wb) in found {
        if let Err(v) = run(&Scenario::of(seed, DEFAULT_OPS, wb)) {
            panic!("{v}");
        }
    }
}

/// Seeds that, with member faults during resyncs forced on
/// (`--resync-faults 1`, and `--initial-resync` as given), once failed on
/// a checker that forgave too little or a host that misread a failed
/// resync: they run every time.
#[test]
fn resync_fault_seeds_that_found_bugs() {
    // (seed, write-behind workload, initial resync)
    let found = [
        // raid6: a read-modify-write taken while a member was out, into a
        // stripe the initial resync had not reached, then a data member
        // lost before the write was acknowledged: its block lives only in
        // parity that does not match (the write hole).
        (25, false, true),
        // raid1/raid10 write-behind: a read error on the fast copy before
        // the resync got there; the write-mostly copy, a crash having cut
        // its write short, is read and rewritten over the fast one.
        (28, true, true),
        (40036, true, true),
        // raid4: a member failed and another dead that only reads had met;
        // the resync cannot finish (the run ends there, not in a hang).
        (20232, false, false),
        // raid10: a failure that takes the array offline is not recorded,
        // so nothing is written; the bitmap bits of that empty commit were
        // marked durable, and a channel that had not applied the offline
        // state yet wrote a chunk whose bit was not on its disk (R4).
        (98228, false, true),
    ];
    for (seed, wb, initial) in found {
        let mut sc = Scenario::of(seed, DEFAULT_OPS, wb);
        sc.resync_faults = true;
        sc.initial_resync = initial;
        if let Err(v) = run(&sc) {
            panic!("{v}");
        }
    }
}
