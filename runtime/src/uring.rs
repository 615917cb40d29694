//! One io_uring per reactor, shared by every file device channel on it.
//!
//! Each operation takes a slot from a fixed table (its `user_data` is the
//! slot index and a generation); the completion queue is as big as the
//! table, so it never overflows, and a full table is reported as
//! [`NoMem`]. A slot carries one device I/O through its stages, one SQE at a
//! time:
//!
//! * read / write: resubmitted for the rest after a short transfer. FUA is
//!   the write with `RWF_DSYNC` (`pwritev2` semantics: the data and the
//!   metadata needed to read it back are durable when it completes).
//! * flush: `IORING_OP_FSYNC` with `IORING_FSYNC_DATASYNC` (fdatasync).
//! * write-zeroes: `fallocate(FALLOC_FL_ZERO_RANGE | KEEP_SIZE)`; unmap:
//!   `fallocate(FALLOC_FL_PUNCH_HOLE | KEEP_SIZE)` (reads back zeros). When
//!   the file system refuses a mode (`EOPNOTSUPP`; tmpfs has no ZERO_RANGE)
//!   the device remembers it and falls back: zero range → punch hole →
//!   writing zeros from a shared zero buffer. With FUA, an fdatasync follows
//!   the fallocate.
//!
//! Completions are routed to the submitting channel's [`FileTarget`] queue
//! and reported by that channel's `poll`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};

use crate::buf::{AlignedBuf, DevBuf};
use crate::dev::{DevOp, DevStatus, NoMem};

/// Zero-buffer size for the write-zeroes fallback.
const ZERO_BUF: usize = 1 << 20;

/// How a file device zeroes ranges, learned at run time.
pub(crate) const ZERO_RANGE: u8 = 0;
pub(crate) const ZERO_PUNCH: u8 = 1;
pub(crate) const ZERO_WRITE: u8 = 2;

/// A file shared by all reactors.
pub struct FileShared {
    pub(crate) file: File,
    pub(crate) zero_mode: AtomicU8,
}

impl FileShared {
    pub(crate) fn new(file: File) -> FileShared {
        FileShared {
            file,
            zero_mode: AtomicU8::new(ZERO_RANGE),
        }
    }
    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Where one file channel's completions go.
pub struct FileTarget {
    pub(crate) shared: Arc<FileShared>,
    pub(crate) done: RefCell<VecDeque<(u64, DevStatus)>>,
    pub(crate) outstanding: Cell<usize>,
}

impl FileTarget {
    pub(crate) fn new(shared: Arc<FileShared>, cap: usize) -> FileTarget {
        FileTarget {
            shared,
            done: RefCell::new(VecDeque::with_capacity(cap)),
            outstanding: Cell::new(0),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Read,
    Write,
    Falloc(i32),
    ZeroWrite,
    Sync,
}

struct Slot {
    gen: u32,
    target: Option<Rc<FileTarget>>,
    token: u64,
    stage: Stage,
    ptr: *mut u8,
    off: u64,
    len: usize,
    done: usize,
    fua: bool,
}

/// A reactor's ring and its table of operations in flight.
pub struct Uring {
    ring: IoUring,
    slots: Vec<Slot>,
    free: Vec<u32>,
    inflight: usize,
    unsubmitted: usize,
    zeros: AlignedBuf,
}

fn user_data(idx: u32, gen: u32) -> u64 {
    (gen as u64) << 32 | idx as u64
}

impl Uring {
    /// A ring with `entries` SQEs and room for `inflight` operations.
    pub fn new(entries: u32, inflight: u32) -> std::io::Result<Uring> {
        let inflight = inflight.max(entries);
        let ring = IoUring::builder().setup_cqsize(inflight).build(entries)?;
        Ok(Uring {
            ring,
            slots: (0..inflight)
                .map(|_| Slot {
                    gen: 0,
                    target: None,
                    token: 0,
                    stage: Stage::Sync,
                    ptr: std::ptr::null_mut(),
                    off: 0,
                    len: 0,
                    done: 0,
                    fua: false,
                })
                .collect(),
            free: (0..inflight).rev().collect(),
            inflight: 0,
            unsubmitted: 0,
            zeros: AlignedBuf::new(ZERO_BUF),
        })
    }

    /// Have completions signal `fd` (interrupt mode).
    pub(crate) fn register_eventfd(&mut self, fd: RawFd) {
        if let Err(e) = self.ring.submitter().register_eventfd(fd) {
            tracing::warn!(
                "io_uring eventfd registration failed: {e}; completions may wait up to 1 ms"
            );
        }
    }

    /// Operations in flight.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    pub(crate) fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Start a device I/O on `target`'s file: `len` bytes at byte `off`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit(
        &mut self,
        target: &Rc<FileTarget>,
        op: DevOp,
        off: u64,
        len: usize,
        buf: DevBuf,
        fua: bool,
        token: u64,
    ) -> Result<(), NoMem> {
        let stage = match op {
            DevOp::Read => Stage::Read,
            DevOp::Write => Stage::Write,
            DevOp::Flush => Stage::Sync,
            DevOp::WriteZeroes | DevOp::Unmap => {
                let learned = target.shared.zero_mode.load(Ordering::Relaxed);
                let mode = if op == DevOp::Unmap {
                    learned.max(ZERO_PUNCH)
                } else {
                    learned
                };
                match mode {
                    ZERO_RANGE => {
                        Stage::Falloc(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE)
                    }
                    ZERO_PUNCH => {
                        Stage::Falloc(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                    }
                    _ => Stage::ZeroWrite,
                }
            }
            DevOp::Reset => unreachable!("reset is completed by the channel"),
        };
        let Some(idx) = self.free.pop() else {
            return Err(NoMem);
        };
        let s = &mut self.slots[idx as usize];
        s.target = Some(target.clone());
        s.token = token;
        s.stage = stage;
        s.ptr = buf.as_ptr();
        s.off = off;
        s.len = len;
        s.done = 0;
        s.fua = fua;
        if !self.push(idx) {
            let s = &mut self.slots[idx as usize];
            s.target = None;
            self.free.push(idx);
            return Err(NoMem);
        }
        self.inflight += 1;
        target.outstanding.set(target.outstanding.get() + 1);
        Ok(())
    }

    /// Queue the SQE for slot `idx`'s current stage.
    fn push(&mut self, idx: u32) -> bool {
        let s = &self.slots[idx as usize];
        let fd = types::Fd(s.target.as_ref().expect("slot in use").shared.fd());
        let ud = user_data(idx, s.gen);
        let rest = s.len - s.done;
        let at = s.off + s.done as u64;
        let dsync = if s.fua { libc::RWF_DSYNC } else { 0 };
        let sqe = match s.stage {
            // The slot's pointer plus `done` stays inside the caller's buffer.
            Stage::Read => opcode::Read::new(fd, s.ptr.wrapping_add(s.done), rest as u32)
                .offset(at)
                .build(),
            Stage::Write => opcode::Write::new(fd, s.ptr.wrapping_add(s.done), rest as u32)
                .offset(at)
                .rw_flags(dsync)
                .build(),
            Stage::ZeroWrite => {
                let n = rest.min(ZERO_BUF);
                opcode::Write::new(fd, self.zeros.as_ref().as_ptr(), n as u32)
                    .offset(at)
                    .rw_flags(dsync)
                    .build()
            }
            Stage::Falloc(mode) => opcode::Fallocate::new(fd, s.len as u64)
                .offset(s.off)
                .mode(mode)
                .build(),
            Stage::Sync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(ud);
        for attempt in 0..2 {
            // SAFETY: the SQE's buffer is either the submitter's memory,
            // valid until this slot completes by `DevBuf::new`'s contract,
            // or `self.zeros`, which lives as long as the ring (a reactor
            // waits for every operation to finish before dropping it). The
            // file descriptor is kept open by the slot's `FileTarget`.
            let pushed = unsafe { self.ring.submission().push(&sqe).is_ok() };
            if pushed {
                self.unsubmitted += 1;
                return true;
            }
            if attempt == 0 {
                self.flush();
            }
        }
        false
    }

    /// Hand queued SQEs to the kernel.
    pub fn flush(&mut self) {
        if self.unsubmitted == 0 {
            return;
        }
        match self.ring.submit() {
            Ok(_) => self.unsubmitted = 0,
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    || e.raw_os_error() == Some(libc::EAGAIN) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => tracing::error!("io_uring submit failed: {e}"),
        }
    }

    /// Route finished operations to their channels. Returns whether any.
    pub fn reap(&mut self) -> bool {
        let mut any = false;
        loop {
            let mut got = [(0u64, 0i32); 32];
            let mut n = 0;
            for cqe in self.ring.completion() {
                got[n] = (cqe.user_data(), cqe.result());
                n += 1;
                if n == got.len() {
                    break;
                }
            }
            if n == 0 {
                break;
            }
            any = true;
            for &(ud, res) in &got[..n] {
                self.on_cqe(ud, res);
            }
        }
        any
    }

    fn on_cqe(&mut self, ud: u64, res: i32) {
        let idx = (ud & 0xffff_ffff) as u32;
        let gen = (ud >> 32) as u32;
        let Some(s) = self.slots.get_mut(idx as usize) else {
            tracing::error!("io_uring completion for unknown slot {idx}");
            return;
        };
        assert!(
            s.gen == gen && s.target.is_some(),
            "io_uring completion for a free slot"
        );
        let status = match s.stage {
            Stage::Read | Stage::Write | Stage::ZeroWrite => {
                if res <= 0 {
                    if res < 0 {
                        tracing::debug!(
                            "io_uring {:?} at {} failed: {}",
                            s.stage,
                            s.off,
                            std::io::Error::from_raw_os_error(-res)
                        );
                    }
                    Some(DevStatus::Error)
                } else {
                    s.done += res as usize;
                    if s.done < s.len {
                        None // the rest, below
                    } else {
                        Some(DevStatus::Success)
                    }
                }
            }
            Stage::Falloc(mode) => {
                if res == -libc::EOPNOTSUPP {
                    let shared = &s.target.as_ref().expect("slot in use").shared;
                    if mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
                        shared.zero_mode.fetch_max(ZERO_PUNCH, Ordering::Relaxed);
                        s.stage =
                            Stage::Falloc(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE);
                    } else {
                        shared.zero_mode.fetch_max(ZERO_WRITE, Ordering::Relaxed);
                        s.stage = Stage::ZeroWrite;
                    }
                    None
                } else if res < 0 {
                    Some(DevStatus::Error)
                } else if s.fua {
                    s.stage = Stage::Sync;
                    None
                } else {
                    Some(DevStatus::Success)
                }
            }
            Stage::Sync => Some(if res < 0 {
                DevStatus::Error
            } else {
                DevStatus::Success
            }),
        };
        match status {
            Some(st) => self.finish(idx, st),
            None => {
                if !self.push(idx) {
                    self.finish(idx, DevStatus::Error);
                }
            }
        }
    }

    fn finish(&mut self, idx: u32, st: DevStatus) {
        let s = &mut self.slots[idx as usize];
        let t = s.target.take().expect("slot in use");
        s.gen = s.gen.wrapping_add(1);
        t.done.borrow_mut().push_back((s.token, st));
        self.free.push(idx);
        self.inflight -= 1;
    }
}
