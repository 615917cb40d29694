//! Closed-loop load from completion callbacks (each completion submits the
//! next I/O), as an export layer would run it. The short run is a test of
//! resubmission from `io_done`; `cargo test -p mdraid --release --test perf
//! -- --ignored --nocapture` prints IOPS (a smoke number, not a benchmark).

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bdev_raid::channel::{IoStatus, IoType, ParentIo};
use bdev_raid::layout::Level;
use common::*;
use mdraid_runtime::dev::malloc::MallocDevice;
use mdraid_runtime::{AlignedBuf, Array, ArrayParams, Device, IoDone, Mode, Reactor};

struct Loop {
    array: Arc<Array>,
    op: IoType,
    blocks: u64,
    rng: Cell<u64>,
    until: Instant,
    done: Cell<u64>,
    errors: Cell<u64>,
    inflight: Cell<u64>,
    me: Cell<Option<Rc<dyn IoDone>>>,
    report: Cell<Option<mpsc::Sender<(u64, u64)>>>,
}

impl Loop {
    fn next(&self, r: &mut Reactor, buf: AlignedBuf) {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        let lba = (x % (self.array.num_blocks() / self.blocks)) * self.blocks;
        // Clone the handle out: the submit may call `io_done` (and so
        // `next`) again before it returns.
        let h = self.me.take();
        self.me.set(h.clone());
        let Some(me) = h else {
            // The loop has ended.
            r.buf_pool().put(buf);
            return;
        };
        let io = ParentIo {
            tag: 0,
            op: self.op,
            lba,
            blocks: self.blocks,
            fua: false,
            buf: Some(buf),
        };
        self.inflight.set(self.inflight.get() + 1);
        assert!(self.array.submit(r, io, &me).is_ok(), "busy");
    }
}

impl IoDone for Loop {
    fn io_done(&self, r: &mut Reactor, _tag: u64, status: IoStatus, buf: Option<AlignedBuf>) {
        self.inflight.set(self.inflight.get() - 1);
        self.done.set(self.done.get() + 1);
        if status != IoStatus::Success {
            self.errors.set(self.errors.get() + 1);
        }
        if Instant::now() < self.until {
            self.next(r, buf.expect("buffer back"));
        } else {
            r.buf_pool().put(buf.expect("buffer back"));
            if self.inflight.get() == 0 {
                if let Some(tx) = self.report.take() {
                    let _ = tx.send((self.done.get(), self.errors.get()));
                }
                // Break the self-reference.
                self.me.take();
            }
        }
    }
}

fn run(mode: Mode, level: Level, op: IoType, secs: f64, qd: usize) -> (u64, u64) {
    let rt = start(&[0, 1], mode);
    let members: Vec<Arc<dyn Device>> = (0..2)
        .map(|i| {
            MallocDevice::new(format!("p{i}"), 64 * 2048, 512, None).unwrap() as Arc<dyn Device>
        })
        .collect();
    let a = Array::create(&rt, ArrayParams::new("perf", level, 64, members)).unwrap();
    let (tx, rx) = mpsc::channel();
    for n in 0..rt.reactors() {
        let a = a.clone();
        let tx = tx.clone();
        rt.send(n, move |r| {
            let l = Rc::new(Loop {
                array: a,
                op,
                blocks: 8,
                rng: Cell::new(0x1234_5678 + n as u64),
                until: Instant::now() + Duration::from_secs_f64(secs),
                done: Cell::new(0),
                errors: Cell::new(0),
                inflight: Cell::new(0),
                me: Cell::new(None),
                report: Cell::new(Some(tx)),
            });
            let d: Rc<dyn IoDone> = l.clone();
            l.me.set(Some(d));
            for _ in 0..qd {
                let b = r.buf_pool().get(4096);
                l.next(r, b);
            }
        });
    }
    let mut total = (0, 0);
    for _ in 0..rt.reactors() {
        let (d, e) = rx.recv_timeout(DEADLINE).expect("load loop ends");
        total.0 += d;
        total.1 += e;
    }
    a.stop(DEADLINE).unwrap();
    assert!(rt.shutdown(DEADLINE).drained);
    total
}

#[test]
fn resubmit_from_completion() {
    let _g = serial();
    for op in [IoType::Write, IoType::Read] {
        let (done, errors) = run(Mode::Interrupt, Level::Raid1, op, 0.1, 8);
        assert!(done > 0);
        assert_eq!(errors, 0);
    }
}

#[test]
#[ignore]
fn iops_smoke() {
    let _g = serial();
    for (level, op) in [
        (Level::Raid1, IoType::Read),
        (Level::Raid1, IoType::Write),
        (Level::Raid0, IoType::Read),
    ] {
        let secs = 2.0;
        let (done, errors) = run(Mode::Poll, level, op, secs, 32);
        assert_eq!(errors, 0);
        println!(
            "{} {:?} 4 KiB QD32 x 2 reactors, malloc members: {:.0} IOPS",
            level.name(),
            op,
            done as f64 / secs
        );
    }
}
