//! The data path's own cost: submit a 4 KiB parent, carry out its child ops
//! against memory-less members (reads return whatever is in the buffer),
//! complete them, collect the parent. Measures the engine, not a device.
//!
//! A counting allocator checks that the measured loop allocates nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bdev_raid::bitmap::{Bitmap, BitmapGeom};
use bdev_raid::channel::{Action, Channel, ChannelConfig, ChildStatus, IoStatus, IoType, ParentIo};
use bdev_raid::layout::{Geometry, GeometryParams, Level};
use bdev_raid::state::{ArrayState, Shared};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A channel over `n` members; with `bitmap`, a write-intent bitmap (64 MiB
/// chunks) whose bits are all on disk already, as in a busy working set.
fn channel(level: Level, n: usize, bitmap: bool) -> Channel<Vec<u8>> {
    let g = Geometry::new(&GeometryParams {
        level,
        layout: None,
        strip_size_kb: 64,
        block_size: 4096,
        member_blocks: vec![1 << 16; n],
    })
    .unwrap();
    let bm = bitmap.then(|| Bitmap::new_durable(BitmapGeom::new(&g, 64 << 20).unwrap()));
    Channel::new(
        Arc::new(g),
        Arc::new(ArrayState::new_writable(n)),
        Arc::new(Shared::with_bitmap(1, bm)),
        0,
        ChannelConfig::default(),
        |l| vec![0; l],
    )
}

/// One parent write through the channel; returns its buffer.
fn one_write(
    ch: &mut Channel<Vec<u8>>,
    lba: u64,
    buf: Vec<u8>,
    pending: &mut Vec<bdev_raid::channel::ChildToken>,
) -> Vec<u8> {
    let io = ParentIo {
        tag: lba,
        op: IoType::Write,
        lba,
        blocks: 1,
        fua: false,
        buf: Some(buf),
    };
    assert!(ch.submit(io).is_ok());
    loop {
        while let Some(a) = ch.poll_action() {
            match a {
                Action::Submit(c) => pending.push(c.token),
                Action::Complete { status, buf, .. } => {
                    assert_eq!(status, IoStatus::Success);
                    return buf.unwrap();
                }
                Action::Meta(_) => unreachable!(),
            }
        }
        // Complete in reverse order of issue (any order is valid).
        while let Some(t) = pending.pop() {
            ch.child_done(t, ChildStatus::Success);
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("datapath");
    g.throughput(Throughput::Elements(1));
    for (name, level, n, bitmap) in [
        ("raid1_4k_write", Level::Raid1, 2, false),
        // The same with the write-intent bitmap's bits set (R4's cost in
        // the steady state: counting the write in its chunk, both ways).
        ("raid1_4k_write_bitmap", Level::Raid1, 2, true),
        // Five members: a 4 KiB write reads old data + P (2) rather than
        // the other three strips, so it takes read-modify-write.
        ("raid5_4k_rmw_write", Level::Raid5, 5, false),
        ("raid5_4k_rmw_write_bitmap", Level::Raid5, 5, true),
        // Four members: both need two reads; md's rule picks reconstruct.
        ("raid5_4k_rcw_write", Level::Raid5, 4, false),
        ("raid0_4k_write", Level::Raid0, 4, false),
    ] {
        let mut ch = channel(level, n, bitmap);
        let mut buf = Some(vec![7u8; 4096]);
        let mut pending = Vec::with_capacity(64);
        let mut lba = 0u64;
        // Warm up, then check the loop allocates nothing.
        for _ in 0..1000 {
            buf = Some(one_write(
                &mut ch,
                lba % 4096,
                buf.take().unwrap(),
                &mut pending,
            ));
            lba += 7;
        }
        let before = ALLOCS.load(Ordering::Relaxed);
        for _ in 0..1000 {
            buf = Some(one_write(
                &mut ch,
                lba % 4096,
                buf.take().unwrap(),
                &mut pending,
            ));
            lba += 7;
        }
        let allocs = ALLOCS.load(Ordering::Relaxed) - before;
        assert_eq!(
            allocs, 0,
            "{name}: the data path allocated {allocs} times in 1000 writes"
        );
        let st = ch.stats();
        if name.contains("rmw") {
            assert!(st.rmw > 0 && st.rcw == 0, "{name}: {st:?}");
        }
        if name.contains("rcw") {
            assert!(st.rcw > 0 && st.rmw == 0, "{name}: {st:?}");
        }
        g.bench_function(name, |b| {
            b.iter(|| {
                buf = Some(one_write(
                    &mut ch,
                    lba % 4096,
                    buf.take().unwrap(),
                    &mut pending,
                ));
                lba += 7;
            })
        });
    }
    // The direct path's engine side (Channel::direct + direct_done), what
    // a host pays in the engine per 4 KiB I/O besides the member I/Os.
    for (name, level, n, op) in [
        ("raid0x4_4k_direct_read", Level::Raid0, 4, IoType::Read),
        ("raid0x3_4k_direct_read", Level::Raid0, 3, IoType::Read),
        ("raid1_4k_direct_read", Level::Raid1, 2, IoType::Read),
        ("raid1_4k_direct_write", Level::Raid1, 2, IoType::Write),
    ] {
        let mut ch = channel(level, n, false);
        let blocks = ch.geometry().array_blocks();
        let mut lba = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                // One 4 KiB block (the channel's block size).
                let d = ch
                    .direct(op, lba % blocks, 1)
                    .expect("a healthy array takes the direct path");
                ch.direct_done(std::hint::black_box(&d));
                lba += 7;
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(3)).sample_size(30);
    targets = bench
}
criterion_main!(benches);
