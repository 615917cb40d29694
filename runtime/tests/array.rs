//! The array host on real reactors: data integrity on every level over
//! malloc and file members, member failure (R1), NoMem (R2), latency,
//! backlog, the metadata seam, stop and shutdown.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bdev_raid::channel::{ChannelConfig, IoStatus, IoType, MetaRequest};
use bdev_raid::layout::Level;
use bdev_raid::state::{ArrayState, MemberState};
use common::*;
use mdraid_runtime::dev::delay::{DelayDevice, Latencies};
use mdraid_runtime::dev::error::{ErrorDevice, ErrorIoType, ErrorType, InjectOpts};
use mdraid_runtime::dev::file::{FileDevice, FileOptions};
use mdraid_runtime::dev::malloc::MallocDevice;
use mdraid_runtime::{
    Array, ArrayParams, DevOp, Device, MetaOutput, MetaPath, MetaWrite, Mode, Runtime,
    RuntimeConfig, StandInMeta,
};

fn malloc(name: &str, blocks: u64) -> Arc<dyn Device> {
    MallocDevice::new(name, blocks, 512, None).unwrap()
}

fn mallocs(prefix: &str, n: usize, blocks: u64) -> Vec<Arc<dyn Device>> {
    (0..n)
        .map(|i| malloc(&format!("{prefix}{i}"), blocks))
        .collect()
}

fn all_ok(done: &[Done]) {
    for d in done {
        assert_eq!(d.status, IoStatus::Success, "I/O {} failed", d.tag);
    }
}

/// Writes, reads back on another reactor, concurrent writes from every
/// reactor, zeroing, flush.
fn verify(rt: &Runtime, a: &Arc<Array>) {
    let bs = a.block_size() as usize;
    let n = a.num_blocks();
    let last = rt.reactors() - 1;
    // Non-overlapping writes of assorted sizes, all in flight together.
    let mut reqs = Vec::new();
    let mut lba = 0;
    let mut t = 0;
    while lba < n {
        let blocks = (1 + (t * 37) % 200).min(n - lba);
        reqs.push(Req::write(
            t,
            lba,
            pattern(t + 100, blocks as usize * bs),
            bs,
        ));
        lba += blocks + (t % 3) * 17;
        t += 1;
        if t == 48 {
            break;
        }
    }
    all_ok(&run_batch(rt, 0, a, reqs.clone()));
    let reads: Vec<Req> = reqs
        .iter()
        .map(|q| Req::read(q.tag, q.lba, q.blocks, bs))
        .collect();
    for d in run_batch(rt, last, a, reads) {
        assert_eq!(d.status, IoStatus::Success);
        let want = &reqs.iter().find(|q| q.tag == d.tag).unwrap().data;
        assert!(d.data == *want, "read of write {} differs", d.tag);
    }

    // Every reactor writes interleaved single blocks of the same region
    // (same strips and stripes) at once.
    let region = 256.min(n);
    let nr = rt.reactors() as u64;
    let rxs: Vec<_> = (0..rt.reactors())
        .map(|r| {
            let reqs: Vec<Req> = (0..region)
                .filter(|b| b % nr == r as u64)
                .map(|b| Req::write(1000 + b, b, pattern(5000 + b, bs), bs))
                .collect();
            let k = reqs.len();
            (submit_batch(rt, r, a, reqs), k)
        })
        .collect();
    for (rx, k) in rxs {
        all_ok(&collect(&rx, k));
    }
    let got = run_batch(rt, 0, a, vec![Req::read(1, 0, region, bs)]);
    all_ok(&got);
    let data = got[0].data.as_ref().unwrap();
    for b in 0..region as usize {
        assert!(
            data[b * bs..(b + 1) * bs] == pattern(5000 + b as u64, bs)[..],
            "interleaved block {b} wrong"
        );
    }

    // Zeroing and flush.
    let z = vec![
        Req::other(1, IoType::WriteZeroes, 3, 5),
        Req::other(2, IoType::Unmap, 20, 9),
    ];
    all_ok(&run_batch(rt, last, a, z));
    all_ok(&run_batch(
        rt,
        0,
        a,
        vec![Req::other(3, IoType::Flush, 0, 0)],
    ));
    let got = run_batch(rt, 0, a, vec![Req::read(1, 0, 32, bs)]);
    let data = got[0].data.as_ref().unwrap();
    for b in 0..32usize {
        let blk = &data[b * bs..(b + 1) * bs];
        let zero = (3..8).contains(&b) || (20..29).contains(&b);
        if zero {
            assert!(blk.iter().all(|x| *x == 0), "block {b} not zeroed");
        } else {
            assert!(
                blk == &pattern(5000 + b as u64, bs)[..],
                "block {b} clobbered"
            );
        }
    }
    // Out of range is refused, not fatal.
    let got = run_batch(rt, 0, a, vec![Req::read(9, n - 1, 2, bs)]);
    assert_eq!(got[0].status, IoStatus::Invalid);
}

fn levels(cores: &[usize], mode: Mode) {
    let rt = start(cores, mode);
    for (level, n, strip) in [
        (Level::Raid1, 2, 0),
        (Level::Raid0, 2, 64),
        (Level::Raid5, 3, 64),
        (Level::Raid6, 4, 32),
        (Level::Raid10, 4, 64),
    ] {
        let members = mallocs(level.name(), n, 4096);
        let a = Array::create(
            &rt,
            ArrayParams::new(format!("{}a", level.name()), level, strip, members),
        )
        .unwrap();
        verify(&rt, &a);
        a.stop(DEADLINE).unwrap();
    }
    assert!(rt.shutdown(DEADLINE).drained);
}

#[test]
fn levels_over_malloc_two_reactors() {
    let _g = serial();
    levels(&[0, 1], Mode::Poll);
}

#[test]
fn levels_over_malloc_one_reactor() {
    let _g = serial();
    levels(&[0], Mode::Interrupt);
}

#[test]
fn levels_over_files() {
    let _g = serial();
    let rt = start(&[0, 1], Mode::Interrupt);
    let dir = TempDir::new("array");
    for (level, n, strip) in [
        (Level::Raid1, 2, 0),
        (Level::Raid5, 3, 64),
        (Level::Raid0, 2, 64),
    ] {
        let members: Vec<Arc<dyn Device>> = (0..n)
            .map(|i| {
                let name = format!("{}f{i}", level.name());
                let path = dir.file(&name, 4 << 20);
                FileDevice::open(FileOptions::new(name, path)).unwrap() as Arc<dyn Device>
            })
            .collect();
        let a = Array::create(
            &rt,
            ArrayParams::new(level.name(), level, strip, members.clone()),
        )
        .unwrap();
        verify(&rt, &a);
        if level == Level::Raid1 {
            // Both files hold the mirror.
            let bs = 512;
            let got = run_batch(&rt, 1, &a, vec![Req::read(1, 100, 8, bs)]);
            let want = got[0].data.clone().unwrap();
            for i in 0..n {
                let f = std::fs::read(dir.0.join(format!("raid1f{i}"))).unwrap();
                assert!(f[100 * bs..108 * bs] == want[..], "mirror {i} differs");
            }
        }
        a.stop(DEADLINE).unwrap();
    }
    assert!(rt.shutdown(DEADLINE).drained);
}

#[test]
fn file_ring_full_resumes() {
    let _g = serial();
    // A tiny ring: member submissions meet NoMem and must resume.
    let rt = Runtime::start(RuntimeConfig {
        cores: vec![0, 1],
        mode: Mode::Interrupt,
        ring_entries: 4,
        ring_inflight: 4,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let dir = TempDir::new("smallring");
    let members: Vec<Arc<dyn Device>> = (0..3)
        .map(|i| {
            FileDevice::open(FileOptions::new(
                format!("s{i}"),
                dir.file(&format!("s{i}"), 2 << 20),
            ))
            .unwrap() as Arc<dyn Device>
        })
        .collect();
    let a = Array::create(&rt, ArrayParams::new("r5", Level::Raid5, 16, members)).unwrap();
    let bs = 512;
    let reqs: Vec<Req> = (0..64)
        .map(|i| Req::write(i, i * 40, pattern(i, 40 * bs), bs))
        .collect();
    all_ok(&run_batch(&rt, 1, &a, reqs.clone()));
    let reads: Vec<Req> = reqs
        .iter()
        .map(|q| Req::read(q.tag, q.lba, 40, bs))
        .collect();
    for d in run_batch(&rt, 0, &a, reads) {
        assert_eq!(d.status, IoStatus::Success);
        assert!(d.data.unwrap() == pattern(d.tag, 40 * bs));
    }
    let stats = a.stats().unwrap();
    let retries: u64 = stats.iter().map(|(s, _)| s.nomem_retries).sum();
    assert!(retries > 0, "the small ring never refused a submission");
    a.stop(DEADLINE).unwrap();
    assert!(rt.shutdown(DEADLINE).drained);
}

/// What happened on the metadata path, and when (see `seq`).
type Log = Arc<Mutex<Vec<(String, u64)>>>;

/// Stand-in metadata path that records when things happened.
struct Traced {
    inner: StandInMeta,
    log: Log,
}

impl MetaPath for Traced {
    fn request(&mut self, req: MetaRequest) {
        self.log.lock().unwrap().push((format!("{req:?}"), seq()));
        self.inner.request(req)
    }
    fn applied(&mut self, s: &Arc<ArrayState>) {
        self.log
            .lock()
            .unwrap()
            .push((format!("applied {}", s.events), seq()));
        self.inner.applied(s)
    }
    fn released(&mut self, s: &Arc<ArrayState>) {
        self.log
            .lock()
            .unwrap()
            .push((format!("released {}", s.events), seq()));
    }
    fn poll_output(&mut self) -> Option<MetaOutput> {
        self.inner.poll_output()
    }
    fn state(&self) -> Arc<ArrayState> {
        self.inner.state()
    }
}

fn traced(rt: &Runtime, p: ArrayParams) -> (Arc<Array>, Log) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let a = Array::create_with_meta(rt, p, move |init| {
        Box::new(Traced {
            inner: StandInMeta::new(init.geom, init.state),
            log: l,
        })
    })
    .unwrap();
    (a, log)
}

fn logged(log: &Mutex<Vec<(String, u64)>>, what: &str) -> Option<u64> {
    log.lock()
        .unwrap()
        .iter()
        .find(|(s, _)| s == what)
        .map(|e| e.1)
}

#[test]
fn raid1_member_failure_commits_before_ack() {
    let _g = serial();
    let rt = start(&[0, 1], Mode::Poll);
    let m0 = malloc("m0", 4096);
    let m1 = malloc("m1", 4096);
    let ee = ErrorDevice::new(m0.clone(), None);
    let members: Vec<Arc<dyn Device>> = vec![ee.clone(), m1.clone()];
    let (a, log) = traced(&rt, ArrayParams::new("r1", Level::Raid1, 0, members));
    let bs = 512;
    assert!(
        !a.state().writable,
        "a new array starts clean (not writable)"
    );
    let ev0 = a.state().events;
    all_ok(&run_batch(
        &rt,
        0,
        &a,
        vec![Req::write(1, 0, pattern(1, 8 * bs), bs)],
    ));
    // The first write had the array made writable (MarkDirty), one event.
    assert!(a.state().writable);
    let ev = a.state().events;
    assert_eq!(ev, ev0 + 1);
    let fail_ev = ev + 1;
    let applied_s = format!("applied {fail_ev}");
    let released_s = format!("released {fail_ev}");

    // Every write to EE_m0 fails from now on. The metadata path is on
    // reactor 0; write from reactor 1.
    ee.inject_error(&InjectOpts::new(
        ErrorIoType::Write,
        ErrorType::Failure,
        u32::MAX,
    ))
    .unwrap();
    let d = run_batch(&rt, 1, &a, vec![Req::write(2, 0, pattern(2, 8 * bs), bs)]);
    assert_eq!(
        d[0].status,
        IoStatus::Success,
        "a raid1 write with one good leg must succeed"
    );
    let applied = logged(&log, &applied_s).expect("failure broadcast applied everywhere");
    assert!(
        d[0].seq > applied,
        "the write was acknowledged before every channel applied the failure"
    );
    // `released` runs once the last reactor released it: wait for it.
    let deadline = Instant::now() + DEADLINE;
    let released = loop {
        if let Some(t) = logged(&log, &released_s) {
            break t;
        }
        assert!(Instant::now() < deadline, "failure state never released");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(released > applied);

    // State: member 0 faulty, one event later, on the array and on every
    // channel.
    let s = a.state();
    assert_eq!(s.events, fail_ev);
    assert_eq!(s.members, vec![MemberState::Faulty, MemberState::InSync]);
    assert!(!s.offline);
    for n in 0..2 {
        let id = a.clone();
        let ev = rt
            .call(n, move |r| id.channel(r).unwrap().state().events)
            .unwrap();
        assert_eq!(ev, fail_ev, "reactor {n} did not apply the failure");
    }

    // Many more writes from both reactors: zero parent errors, one failure
    // recorded once.
    let rxs: Vec<_> = (0..2)
        .map(|r| {
            let reqs: Vec<Req> = (0..32)
                .map(|i| {
                    let t = r * 100 + i;
                    Req::write(t, t * 16, pattern(t, 16 * bs), bs)
                })
                .collect();
            submit_batch(&rt, r as usize, &a, reqs)
        })
        .collect();
    for rx in rxs {
        all_ok(&collect(&rx, 32));
    }
    assert_eq!(a.state().events, fail_ev);
    let failed = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(s, _)| s.starts_with("MemberFailed"))
        .count();
    assert!(failed >= 1);
    // Reads come from the survivor and see the acknowledged data.
    for r in 0..2usize {
        let got = run_batch(&rt, r, &a, vec![Req::read(0, 100 * 16, 16, bs)]);
        assert_eq!(got[0].status, IoStatus::Success);
        assert!(got[0].data.as_ref().unwrap() == &pattern(100, 16 * bs));
    }
    let (_, direct) = dev_io(&rt, 0, &m1, DevOp::Read, 0, 16, None);
    assert!(direct == pattern(0, 16 * bs));
    a.stop(DEADLINE).unwrap();
    assert!(rt.shutdown(DEADLINE).drained);
}

#[test]
fn raid5_failure_then_offline() {
    let _g = serial();
    let rt = start(&[0, 1], Mode::Interrupt);
    let ms = mallocs("p", 3, 4096);
    let e0 = ErrorDevice::new(ms[0].clone(), None);
    let e1 = ErrorDevice::new(ms[1].clone(), None);
    let members: Vec<Arc<dyn Device>> = vec![e0.clone(), e1.clone(), ms[2].clone()];
    let mut p = ArrayParams::new("r5", Level::Raid5, 16, members);
    p.meta_reactor = 1;
    let a = Array::create(&rt, p).unwrap();
    let bs = 512;
    let reqs: Vec<Req> = (0..24)
        .map(|i| Req::write(i, i * 50, pattern(i + 7, 50 * bs), bs))
        .collect();
    all_ok(&run_batch(&rt, 0, &a, reqs.clone()));
    // Member 0 dies for reads and writes: reads reconstruct, nothing fails.
    e0.inject_error(&InjectOpts::new(
        ErrorIoType::All,
        ErrorType::Failure,
        u32::MAX,
    ))
    .unwrap();
    let reads: Vec<Req> = reqs
        .iter()
        .map(|q| Req::read(q.tag, q.lba, 50, bs))
        .collect();
    for d in run_batch(&rt, 1, &a, reads.clone()) {
        assert_eq!(d.status, IoStatus::Success);
        assert!(
            d.data.unwrap() == pattern(d.tag + 7, 50 * bs),
            "degraded read {}",
            d.tag
        );
    }
    // The failure is committed (reads alone may not report it: write once).
    all_ok(&run_batch(
        &rt,
        0,
        &a,
        vec![Req::write(99, 0, pattern(99, 16 * bs), bs)],
    ));
    let deadline = Instant::now() + DEADLINE;
    while a.state().members[0] != MemberState::Faulty {
        assert!(Instant::now() < deadline, "member 0 never recorded faulty");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!a.state().offline);
    // A second member dies: the array goes offline and I/O fails. (A full
    // stripe write, so the failure is a write error, which fails the
    // member; a failed pre-read would only fail the parent.)
    e1.inject_error(&InjectOpts::new(
        ErrorIoType::All,
        ErrorType::Failure,
        u32::MAX,
    ))
    .unwrap();
    let got = run_batch(
        &rt,
        0,
        &a,
        vec![Req::write(100, 0, pattern(1, 64 * bs), bs)],
    );
    assert_eq!(got[0].status, IoStatus::Error);
    let deadline = Instant::now() + DEADLINE;
    while !a.state().offline {
        assert!(Instant::now() < deadline, "array never went offline");
        std::thread::sleep(Duration::from_millis(1));
    }
    let got = run_batch(&rt, 1, &a, vec![Req::read(1, 0, 4, bs)]);
    assert_eq!(got[0].status, IoStatus::Error);
    a.stop(DEADLINE).unwrap();
    assert!(rt.shutdown(DEADLINE).drained);
}

#[test]
fn nomem_from_error_bdev_resumes() {
    let _g = serial();
    let rt = start(&[0, 1], Mode::Poll);
    let m0 = malloc("n0", 4096);
    let m1 = malloc("n1", 4096);
    let ee = ErrorDevice::new(m0.clone(), None);
    let members: Vec<Arc<dyn Device>> = vec![ee.clone(), m1.clone()];
    let a = Array::create(&rt, ArrayParams::new("r1n", Level::Raid1, 0, members)).unwrap();
    ee.inject_error(&InjectOpts::new(ErrorIoType::Write, ErrorType::NoMem, 10))
        .unwrap();
    ee.inject_error(&InjectOpts::new(ErrorIoType::Read, ErrorType::NoMem, 10))
        .unwrap();
    let bs = 512;
    let reqs: Vec<Req> = (0..20)
        .map(|i| Req::write(i, i * 8, pattern(i, 8 * bs), bs))
        .collect();
    all_ok(&run_batch(&rt, 1, &a, reqs));
    assert_eq!(
        ee.remaining()[1],
        0,
        "the nomem injections were not all consumed"
    );
    // No failure was recorded: NoMem is never an error.
    assert_eq!(a.state().faulty(), 0);
    // Both legs hold every write.
    for d in [&m0, &m1] {
        let (_, got) = dev_io(&rt, 0, d, DevOp::Read, 0, 160, None);
        for i in 0..20usize {
            assert!(got[i * 8 * bs..(i + 1) * 8 * bs] == pattern(i as u64, 8 * bs)[..]);
        }
    }
    let reads: Vec<Req> = (0..20).map(|i| Req::read(i, i * 8, 8, bs)).collect();
    for d in run_batch(&rt, 0, &a, reads) {
        assert_eq!(d.status, IoStatus::Success);
        assert!(d.data.unwrap() == pattern(d.tag, 8 * bs));
    }
    let retries: u64 = a
        .stats()
        .unwrap()
        .iter()
        .map(|(s, _)| s.nomem_retries)
        .sum();
    assert!(retries >= 10, "only {retries} NoMem retries");
    a.stop(DEADLINE).unwrap();
    assert!(rt.shutdown(DEADLINE).drained);
}

#[test]
fn delayed_member_completes_last() {
    let _g = serial();
    let rt = start(&[0, 1], Mode::Interrupt);
    let slow = DelayDevice::new(
        "slow",
        malloc("d0", 4096),
        Latencies {
            avg_write_us: 100_000,
            p99_write_us: 100_000,
            ..Latencies::default()
        },
        None,
    )
    .unwrap();
    let members: Vec<Arc<dyn Device>> = vec![slow, malloc("d1", 4096)];
    let a = Array::create(&rt, ArrayParams::new("r0d", Level::Raid0, 4, members)).unwrap();
    let bs = 512;
    // raid0 with 4 KiB strips: blocks 0..8 on member 0 (slow), 8..16 on 1.
    let t0 = Instant::now();
    let done = run_batch(
        &rt,
        0,
        &a,
        vec![
            Req::write(1, 0, pattern(1, 8 * bs), bs),
            Req::write(2, 8, pattern(2, 8 * bs), bs),
        ],
    );
    all_ok(&done);
    assert_eq!(
        done.iter().map(|d| d.tag).collect::<Vec<_>>(),
        vec![2, 1],
        "the write to the delayed member should complete last"
    );
    assert!(t0.elapsed() >= Duration::from_millis(100));
    a.stop(DEADLINE).unwrap();
    assert!(rt.shutdown(DEADLINE).drained);
}

#[test]
fn backlog_when_parent_slots_run_out() {
    let _g = serial();
    let rt = start(&[0, 1], Mode::Interrupt);
    let mut p = ArrayParams::new("r5b", Level::Raid5, 16, mallocs("b", 3, 4096));
    p.channel = ChannelConfig {
        max_parents: 4,
        max_children: 16,
        stripe_ctxs: 2,
        max_row_bytes: 16 * 1024,
        behind_bufs: 4,
    };
    let a = Array::create(&rt, p).unwrap();
    let bs = 512;
    // 8 = twice the engine's parent slots: half wait in the host backlog.
    let reqs: Vec<Req> = (0..8)
        .map(|i| Req::write(i, i * 64, pattern(i, 64 * bs), bs))
        .collect();
    all_ok(&run_batch(&rt, 0, &a, reqs));
    let reads: Vec<Req> = (0..8).map(|i| Req::read(i, i * 64, 64, bs)).collect();
    for d in run_batch(&rt, 1, &a, reads) {
        assert_eq!(d.status, IoStatus::Success);
        assert!(d.data.unwrap() == pattern(d.tag, 64 * bs));
    }
    a.stop(DEADLINE).unwrap();
    assert!(rt.shutdown(DEADLINE).drained);
}

/// A metadata path that asks for one superblock-style write at start.
struct Writer {
    inner: StandInMeta,
    out: Vec<MetaOutput>,
    done: Arc<Mutex<Vec<(u64, bool)>>>,
}

impl MetaPath for Writer {
    fn request(&mut self, req: MetaRequest) {
        self.inner.request(req)
    }
    fn applied(&mut self, s: &Arc<ArrayState>) {
        self.inner.applied(s)
    }
    fn write_done(&mut self, id: u64, ok: bool) {
        self.done.lock().unwrap().push((id, ok));
    }
    fn poll_output(&mut self) -> Option<MetaOutput> {
        self.out.pop().or_else(|| self.inner.poll_output())
    }
    fn state(&self) -> Arc<ArrayState> {
        self.inner.state()
    }
}

#[test]
fn metadata_writes_reach_members() {
    let _g = serial();
    let rt = start(&[0, 1], Mode::Interrupt);
    let ms = mallocs("w", 2, 4096);
    let mut p = ArrayParams::new("r1w", Level::Raid1, 0, ms.clone());
    p.data_offset_blocks = 16;
    p.meta_reactor = 1;
    let done = Arc::new(Mutex::new(Vec::new()));
    let d2 = done.clone();
    let sb = pattern(77, 4096);
    let sb2 = sb.clone();
    let a = Array::create_with_meta(&rt, p, move |init| {
        Box::new(Writer {
            inner: StandInMeta::new(init.geom, init.state),
            out: vec![
                MetaOutput::Write(MetaWrite {
                    id: 5,
                    member: 1,
                    offset: 4096,
                    data: sb2,
                    fua: true,
                }),
                // Misaligned: refused, reported as failed.
                MetaOutput::Write(MetaWrite {
                    id: 6,
                    member: 0,
                    offset: 100,
                    data: vec![1; 512],
                    fua: false,
                }),
            ],
            done: d2,
        })
    })
    .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while done.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "metadata writes never finished");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut got = done.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, vec![(5, true), (6, false)]);
    let (_, data) = dev_io(&rt, 0, &ms[1], DevOp::Read, 8, 8, None);
    assert!(data == sb);
    // The data area starts at block 16 of each member.
    let bs = 512;
    all_ok(&run_batch(
        &rt,
        0,
        &a,
        vec![Req::write(1, 0, pattern(3, bs), bs)],
    ));
    let (_, data) = dev_io(&rt, 0, &ms[0], DevOp::Read, 16, 1, None);
    assert!(data == pattern(3, bs));
    a.stop(DEADLINE).unwrap();
    assert!(rt.shutdown(DEADLINE).drained);
}

#[test]
fn create_refuses_bad_params() {
    let _g = serial();
    let rt = start(&[0, 1], Mode::Interrupt);
    let err = |p: ArrayParams| Array::create(&rt, p).err().expect("refused").to_string();
    let e = err(ArrayParams::new(
        "x",
        Level::Raid5,
        64,
        mallocs("a", 2, 4096),
    ));
    assert!(e.contains("at least 3"), "{e}");
    let mut mixed = mallocs("b", 1, 4096);
    mixed.push(MallocDevice::new("b4k", 512, 4096, None).unwrap());
    let e = err(ArrayParams::new("x", Level::Raid1, 0, mixed));
    assert!(e.contains("block size"), "{e}");
    let mut p = ArrayParams::new("x", Level::Raid1, 0, mallocs("c", 2, 4096));
    p.meta_reactor = 7;
    assert!(err(p).contains("meta_reactor"));
    // A file member on a runtime without rings fails the whole create.
    let dir = TempDir::new("noring");
    let norings = Runtime::start(RuntimeConfig {
        cores: vec![0],
        mode: Mode::Interrupt,
        ring_entries: 0,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let f = FileDevice::open(FileOptions::new("f", dir.file("f", 1 << 20))).unwrap();
    let e = Array::create(
        &norings,
        ArrayParams::new("x", Level::Raid1, 0, vec![malloc("m", 2048), f]),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("member 1"), "{e}");
    assert!(norings.shutdown(DEADLINE).drained);
    // A missing member: degraded but usable.
    let mut p = ArrayParams::new("deg", Level::Raid1, 0, mallocs("d", 2, 4096));
    p.members[1] = None;
    let a = Array::create(&rt, p).unwrap();
    assert_eq!(a.state().members[1], MemberState::Missing);
    let bs = 512;
    all_ok(&run_batch(
        &rt,
        1,
        &a,
        vec![Req::write(1, 0, pattern(1, bs), bs)],
    ));
    a.stop(DEADLINE).unwrap();
    assert!(a.channel_count(&rt) == 0);
    assert!(rt.shutdown(DEADLINE).drained);
}

trait ChannelCount {
    fn channel_count(&self, rt: &Runtime) -> usize;
}

impl ChannelCount for Arc<Array> {
    fn channel_count(&self, rt: &Runtime) -> usize {
        (0..rt.reactors())
            .filter(|&n| {
                let a = self.clone();
                rt.call(n, move |r| a.channel(r).is_some()).unwrap()
            })
            .count()
    }
}

#[test]
fn shutdown_drains_in_flight_io() {
    let _g = serial();
    let rt = start(&[0, 1], Mode::Poll);
    let slow = DelayDevice::new(
        "slow",
        malloc("s0", 64 * 2048),
        Latencies {
            avg_write_us: 30_000,
            p99_write_us: 30_000,
            ..Latencies::default()
        },
        None,
    )
    .unwrap();
    let members: Vec<Arc<dyn Device>> = vec![slow, malloc("s1", 64 * 2048)];
    let a = Array::create(&rt, ArrayParams::new("r1s", Level::Raid1, 0, members)).unwrap();
    let bs = 512;
    // One write per 1 MiB (raid1's range-lock granule), so they overlap.
    let rxs: Vec<_> = (0..2)
        .map(|r| {
            let reqs: Vec<Req> = (0..32)
                .map(|i| {
                    let t = r * 32 + i;
                    Req::write(t, t * 2048, pattern(t, 8 * bs), bs)
                })
                .collect();
            submit_batch(&rt, r as usize, &a, reqs)
        })
        .collect();
    // Shut down at once: every write still completes first.
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let rep = rt.shutdown(DEADLINE);
    assert!(rep.drained, "{rep:?}");
    for rx in rxs {
        for _ in 0..32 {
            let d = rx.try_recv().expect("completion delivered before the stop");
            assert_eq!(d.status, IoStatus::Success);
            COUNT.fetch_add(1, Ordering::Relaxed);
        }
    }
    assert_eq!(COUNT.load(Ordering::Relaxed), 64);
}
