//! Helpers shared by the runtime's integration tests.
#![allow(dead_code)]

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bdev_raid::channel::{IoStatus, IoType, ParentIo};
use mdraid_runtime::{
    AlignedBuf, Array, DevBuf, DevIo, DevOp, DevStatus, Device, IoDone, Mode, Reactor, Runtime,
    RuntimeConfig,
};

/// Generous deadline for anything a test waits on.
pub const DEADLINE: Duration = Duration::from_secs(30);

static SERIAL: Mutex<()> = Mutex::new(());

/// Tests that start reactors run one at a time (the machine has 2 cores).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn start(cores: &[usize], mode: Mode) -> Runtime {
    Runtime::start(RuntimeConfig {
        cores: cores.to_vec(),
        mode,
        ..RuntimeConfig::default()
    })
    .expect("runtime starts")
}

/// A global order of events, to compare "when" across reactors.
pub static SEQ: AtomicU64 = AtomicU64::new(1);

pub fn seq() -> u64 {
    SEQ.fetch_add(1, Ordering::SeqCst)
}

/// One finished parent I/O.
#[derive(Debug)]
pub struct Done {
    pub tag: u64,
    pub status: IoStatus,
    pub data: Option<Vec<u8>>,
    pub reactor: usize,
    pub seq: u64,
}

/// Sends every completion to the test thread.
pub struct ToTest(pub mpsc::Sender<Done>);

impl IoDone for ToTest {
    fn io_done(&self, r: &mut Reactor, tag: u64, status: IoStatus, buf: Option<AlignedBuf>) {
        let _ = self.0.send(Done {
            tag,
            status,
            data: buf.map(|b| b.as_ref().to_vec()),
            reactor: r.id(),
            seq: seq(),
        });
    }
}

/// A parent I/O to submit.
#[derive(Clone, Debug)]
pub struct Req {
    pub tag: u64,
    pub op: IoType,
    pub lba: u64,
    pub blocks: u64,
    pub fua: bool,
    pub data: Option<Vec<u8>>,
}

impl Req {
    pub fn write(tag: u64, lba: u64, data: Vec<u8>, bs: usize) -> Req {
        Req {
            tag,
            op: IoType::Write,
            lba,
            blocks: (data.len() / bs) as u64,
            fua: false,
            data: Some(data),
        }
    }
    pub fn read(tag: u64, lba: u64, blocks: u64, bs: usize) -> Req {
        Req {
            tag,
            op: IoType::Read,
            lba,
            blocks,
            fua: false,
            data: Some(vec![0xEE; blocks as usize * bs]),
        }
    }
    pub fn other(tag: u64, op: IoType, lba: u64, blocks: u64) -> Req {
        Req {
            tag,
            op,
            lba,
            blocks,
            fua: false,
            data: None,
        }
    }
}

/// Submit `reqs` on reactor `n` (all from one message, so they are in
/// flight together) and return their completions, in completion order.
pub fn run_batch(rt: &Runtime, n: usize, array: &Arc<Array>, reqs: Vec<Req>) -> Vec<Done> {
    let rx = submit_batch(rt, n, array, reqs.clone());
    collect(&rx, reqs.len())
}

pub fn submit_batch(
    rt: &Runtime,
    n: usize,
    array: &Arc<Array>,
    reqs: Vec<Req>,
) -> mpsc::Receiver<Done> {
    let (tx, rx) = mpsc::channel();
    let a = array.clone();
    rt.send(n, move |r| {
        let done: Rc<dyn IoDone> = Rc::new(ToTest(tx));
        let ch = a.channel(r).expect("array channel on this reactor");
        for q in reqs {
            let buf = q.data.map(|d| {
                let mut b = r.buf_pool().get(d.len());
                b.as_mut().copy_from_slice(&d);
                b
            });
            let io = ParentIo {
                tag: q.tag,
                op: q.op,
                lba: q.lba,
                blocks: q.blocks,
                fua: q.fua,
                buf,
            };
            if ch.submit(r, io, &done).is_err() {
                panic!("array channel busy");
            }
        }
    });
    rx
}

pub fn collect(rx: &mpsc::Receiver<Done>, n: usize) -> Vec<Done> {
    (0..n)
        .map(|i| {
            rx.recv_timeout(DEADLINE)
                .unwrap_or_else(|_| panic!("completion {i} of {n} never came"))
        })
        .collect()
}

/// Deterministic test pattern for `len` bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// One I/O straight to a device on reactor `n` through a channel made for
/// it; returns the status and (reads) the data.
pub fn dev_io(
    rt: &Runtime,
    n: usize,
    dev: &Arc<dyn Device>,
    op: DevOp,
    lba: u64,
    blocks: u64,
    data: Option<Vec<u8>>,
) -> (DevStatus, Vec<u8>) {
    let (tx, rx) = mpsc::channel();
    let dev = dev.clone();
    rt.send(n, move |r| {
        let bs = dev.block_size() as usize;
        let mut ch = dev.create_channel(r).expect("device channel");
        let mut buf = AlignedBuf::new(if op.has_data() {
            blocks as usize * bs
        } else {
            0
        });
        if let Some(d) = data {
            buf.as_mut().copy_from_slice(&d);
        }
        let b = buf.as_mut();
        // SAFETY: `buf` moves into the poller below, which keeps it until the
        // device reports this I/O.
        let dbuf = unsafe { DevBuf::new(b.as_mut_ptr(), b.len()) };
        let io = DevIo {
            op,
            lba,
            blocks,
            fua: false,
            buf: dbuf,
            token: 7,
        };
        assert!(ch.submit(r, io).is_ok(), "device refused the I/O");
        let me: Rc<Cell<Option<mdraid_runtime::PollerId>>> = Rc::new(Cell::new(None));
        let me2 = me.clone();
        let mut tx = Some(tx);
        let id = r.register_poller(move |r: &mut Reactor| {
            let mut got = None;
            ch.poll(r, &mut |t, s| got = Some((t, s)));
            if let Some((t, s)) = got {
                assert_eq!(t, 7);
                if let Some(tx) = tx.take() {
                    let _ = tx.send((s, buf.as_ref().to_vec()));
                }
                if let Some(id) = me2.take() {
                    r.unregister_poller(id);
                }
                return true;
            }
            false
        });
        me.set(Some(id));
    });
    rx.recv_timeout(DEADLINE).expect("device I/O completes")
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir::new_in(std::env::temp_dir(), tag)
    }
    pub fn new_in(base: impl Into<PathBuf>, tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = base.into().join(format!(
            "mdraid-rt-{}-{}-{}",
            std::process::id(),
            tag,
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    /// A file of `len` zero bytes.
    pub fn file(&self, name: &str, len: u64) -> PathBuf {
        let p = self.0.join(name);
        let f = std::fs::File::create(&p).expect("create member file");
        f.set_len(len).expect("size member file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
