//! Error injection (SPDK's `bdev_error`, module/bdev/error/vbdev_error.c).
//!
//! Wraps a base device as `EE_<base>`. [`ErrorDevice::inject_error`] arms,
//! per I/O type (read, write, unmap, flush; `all` arms every one, `clear`
//! disarms), an error type and a count `num` that every channel counts down
//! together; an I/O of an armed type, when the channel has at least
//! `queue_depth` I/O in flight at the base, takes one from the count and:
//!
//! * `failure` (and `nvme_failure`): completes with an error without
//!   touching the base;
//! * `nomem`: completes with NoMem ("try later") without touching the base;
//! * `pending`: is held until [`ErrorDevice::resume_pending`] (then goes to
//!   the base) or a reset (then fails, SPDK's ABORTED);
//! * `corrupt_data`: a write has byte `corrupt_offset` of its buffer XORed
//!   with `corrupt_value` before going to the base (the buffer is the
//!   caller's, as in SPDK: a mirror sharing it sees the change too); a read
//!   has it XORed after a successful base read.
//!
//! Write-zeroes and other types are never failed (as in SPDK). A reset
//! fails the held `pending` I/O of every channel and completes successfully
//! without going to the base.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use super::{DevChannel, DevError, DevIo, DevOp, DevStatus, Device, DeviceKind, NoMem, Uuid};
use crate::buf::DevBuf;
use crate::reactor::Reactor;

/// Which I/O an injection applies to (`io_type` of `bdev_error_inject_error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorIoType {
    Read,
    Write,
    Unmap,
    Flush,
    /// Every type.
    All,
    /// Disarm every type (sets every count to 0).
    Clear,
}

impl ErrorIoType {
    pub fn parse(s: &str) -> Option<ErrorIoType> {
        Some(match s {
            "read" => ErrorIoType::Read,
            "write" => ErrorIoType::Write,
            "unmap" => ErrorIoType::Unmap,
            "flush" => ErrorIoType::Flush,
            "all" => ErrorIoType::All,
            "clear" => ErrorIoType::Clear,
            _ => return None,
        })
    }
}

/// What an armed I/O does (`error_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    Failure,
    Pending,
    CorruptData,
    NoMem,
    /// SPDK completes these with an NVMe status; here it is a failure.
    NvmeFailure,
}

impl ErrorType {
    pub fn parse(s: &str) -> Option<ErrorType> {
        Some(match s {
            "failure" => ErrorType::Failure,
            "pending" => ErrorType::Pending,
            "corrupt_data" => ErrorType::CorruptData,
            "nomem" => ErrorType::NoMem,
            "nvme_failure" => ErrorType::NvmeFailure,
            _ => return None,
        })
    }

    fn code(self) -> u8 {
        match self {
            ErrorType::Failure => 1,
            ErrorType::Pending => 2,
            ErrorType::CorruptData => 3,
            ErrorType::NoMem => 4,
            ErrorType::NvmeFailure => 5,
        }
    }

    fn from_code(c: u8) -> Option<ErrorType> {
        Some(match c {
            1 => ErrorType::Failure,
            2 => ErrorType::Pending,
            3 => ErrorType::CorruptData,
            4 => ErrorType::NoMem,
            5 => ErrorType::NvmeFailure,
            _ => return None,
        })
    }
}

/// Parameters of `bdev_error_inject_error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InjectOpts {
    pub io_type: ErrorIoType,
    pub error_type: ErrorType,
    /// How many I/O to affect (SPDK's default is 1).
    pub num: u32,
    /// Only when at least this many I/O are in flight at the base.
    pub queue_depth: u64,
    pub corrupt_offset: u64,
    pub corrupt_value: u8,
}

impl InjectOpts {
    pub fn new(io_type: ErrorIoType, error_type: ErrorType, num: u32) -> InjectOpts {
        InjectOpts {
            io_type,
            error_type,
            num,
            queue_depth: 0,
            corrupt_offset: 0,
            corrupt_value: 0,
        }
    }
}

#[derive(Default)]
struct Armed {
    error_type: AtomicU8,
    num: AtomicU32,
    queue_depth: AtomicU64,
    corrupt_offset: AtomicU64,
    corrupt_value: AtomicU8,
}

/// Index into the error vector (read, write, unmap, flush).
fn slot_of(op: DevOp) -> Option<usize> {
    match op {
        DevOp::Read => Some(0),
        DevOp::Write => Some(1),
        DevOp::Unmap => Some(2),
        DevOp::Flush => Some(3),
        _ => None,
    }
}

struct Shared {
    armed: [Armed; 4],
    /// Bumped by `resume_pending` / reset; channels act on a change.
    resume_epoch: AtomicU64,
    abort_epoch: AtomicU64,
}

/// An error-injection device over `base`.
pub struct ErrorDevice {
    name: String,
    base: Arc<dyn Device>,
    uuid: Uuid,
    shared: Arc<Shared>,
}

impl ErrorDevice {
    /// `EE_<base name>` over `base` (SPDK's `bdev_error_create`).
    pub fn new(base: Arc<dyn Device>, uuid: Option<Uuid>) -> Arc<ErrorDevice> {
        Arc::new(ErrorDevice {
            name: format!("EE_{}", base.name()),
            base,
            uuid: uuid.unwrap_or_else(Uuid::random),
            shared: Arc::new(Shared {
                armed: Default::default(),
                resume_epoch: AtomicU64::new(0),
                abort_epoch: AtomicU64::new(0),
            }),
        })
    }

    pub fn base(&self) -> &Arc<dyn Device> {
        &self.base
    }

    /// Arm (or with `Clear`, disarm) errors. Takes effect on every reactor.
    pub fn inject_error(&self, o: &InjectOpts) -> Result<(), DevError> {
        if o.error_type == ErrorType::CorruptData && o.corrupt_value == 0 {
            return Err(DevError::Invalid("corrupt_value should be non-zero".into()));
        }
        let arm = |a: &Armed| {
            // Count last: a reactor that sees it also sees the rest.
            a.error_type.store(o.error_type.code(), Ordering::Relaxed);
            a.queue_depth.store(o.queue_depth, Ordering::Relaxed);
            a.corrupt_offset.store(o.corrupt_offset, Ordering::Relaxed);
            a.corrupt_value.store(o.corrupt_value, Ordering::Relaxed);
            a.num.store(o.num, Ordering::Release);
        };
        let s = &self.shared.armed;
        match o.io_type {
            ErrorIoType::Read => arm(&s[0]),
            ErrorIoType::Write => arm(&s[1]),
            ErrorIoType::Unmap => arm(&s[2]),
            ErrorIoType::Flush => arm(&s[3]),
            ErrorIoType::All => s.iter().for_each(arm),
            ErrorIoType::Clear => s.iter().for_each(|a| a.num.store(0, Ordering::Release)),
        }
        Ok(())
    }

    /// Send every held `pending` I/O to the base and disarm `pending`
    /// (SPDK's `bdev_error_resume_pending`).
    pub fn resume_pending(&self) {
        for a in &self.shared.armed {
            if a.error_type.load(Ordering::Relaxed) == ErrorType::Pending.code() {
                a.num.store(0, Ordering::Release);
            }
        }
        self.shared.resume_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Injections left of each type: read, write, unmap, flush.
    pub fn remaining(&self) -> [u32; 4] {
        let a = &self.shared.armed;
        [0, 1, 2, 3].map(|i| a[i].num.load(Ordering::Acquire))
    }
}

impl Device for ErrorDevice {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &str {
        "Error Injection Disk"
    }
    fn block_size(&self) -> u32 {
        self.base.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.base.num_blocks()
    }
    fn uuid(&self) -> Uuid {
        self.uuid
    }
    fn kind(&self) -> DeviceKind {
        DeviceKind::Error {
            base: self.base.name().to_string(),
        }
    }
    fn supports(&self, op: DevOp) -> bool {
        self.base.supports(op)
    }
    fn create_channel(&self, r: &mut Reactor) -> Result<Box<dyn DevChannel>, DevError> {
        let base = self.base.create_channel(r)?;
        Ok(Box::new(ErrorChannel {
            shared: self.shared.clone(),
            base,
            inflight: 0,
            own: VecDeque::with_capacity(64),
            pending: VecDeque::new(),
            corrupt: Vec::new(),
            resume_seen: self.shared.resume_epoch.load(Ordering::Acquire),
            abort_seen: self.shared.abort_epoch.load(Ordering::Acquire),
        }))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct ErrorChannel {
    shared: Arc<Shared>,
    base: Box<dyn DevChannel>,
    /// I/O at the base.
    inflight: u64,
    /// Completions decided here.
    own: VecDeque<(u64, DevStatus)>,
    /// Held by `pending`.
    pending: VecDeque<DevIo>,
    /// Reads to corrupt when they succeed: token, buffer, offset, value.
    corrupt: Vec<(u64, DevBuf, u64, u8)>,
    resume_seen: u64,
    abort_seen: u64,
}

fn corrupt(buf: &mut DevBuf, off: u64, val: u8) {
    if let Some(b) = buf.bytes_mut().get_mut(off as usize) {
        *b ^= val;
    }
}

impl ErrorChannel {
    /// The armed error this I/O takes, if any (one off the shared count).
    fn take_error(&self, op: DevOp) -> Option<(ErrorType, u64, u8)> {
        let a = &self.shared.armed[slot_of(op)?];
        let mut n = a.num.load(Ordering::Acquire);
        if n == 0 || self.inflight < a.queue_depth.load(Ordering::Relaxed) {
            return None;
        }
        loop {
            if n == 0 {
                return None;
            }
            match a
                .num
                .compare_exchange_weak(n, n - 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(cur) => n = cur,
            }
        }
        let t = ErrorType::from_code(a.error_type.load(Ordering::Relaxed))?;
        Some((
            t,
            a.corrupt_offset.load(Ordering::Relaxed),
            a.corrupt_value.load(Ordering::Relaxed),
        ))
    }

    fn submit_base(&mut self, r: &mut Reactor, io: DevIo) -> Result<(), NoMem> {
        self.inflight += 1;
        let res = self.base.submit(r, io);
        if res.is_err() {
            self.inflight -= 1;
        }
        res
    }
}

impl DevChannel for ErrorChannel {
    fn submit(&mut self, r: &mut Reactor, mut io: DevIo) -> Result<(), NoMem> {
        if io.op == DevOp::Reset {
            while let Some(p) = self.pending.pop_front() {
                self.own.push_back((p.token, DevStatus::Error));
            }
            self.abort_seen = self.shared.abort_epoch.fetch_add(1, Ordering::AcqRel) + 1;
            self.own.push_back((io.token, DevStatus::Success));
            return Ok(());
        }
        match self.take_error(io.op) {
            None => self.submit_base(r, io),
            Some((ErrorType::Failure | ErrorType::NvmeFailure, _, _)) => {
                self.own.push_back((io.token, DevStatus::Error));
                Ok(())
            }
            Some((ErrorType::NoMem, _, _)) => {
                self.own.push_back((io.token, DevStatus::NoMem));
                Ok(())
            }
            Some((ErrorType::Pending, _, _)) => {
                self.pending.push_back(io);
                Ok(())
            }
            Some((ErrorType::CorruptData, off, val)) => {
                match io.op {
                    DevOp::Write => corrupt(&mut io.buf, off, val),
                    DevOp::Read => self.corrupt.push((io.token, io.buf, off, val)),
                    _ => {}
                }
                let res = self.submit_base(r, io);
                if res.is_err() && io.op == DevOp::Read {
                    self.corrupt.pop();
                }
                res
            }
        }
    }

    fn poll(&mut self, r: &mut Reactor, done: &mut dyn FnMut(u64, DevStatus)) -> usize {
        let mut n = 0;
        let abort = self.shared.abort_epoch.load(Ordering::Acquire);
        if abort != self.abort_seen {
            self.abort_seen = abort;
            while let Some(p) = self.pending.pop_front() {
                self.own.push_back((p.token, DevStatus::Error));
            }
        }
        let resume = self.shared.resume_epoch.load(Ordering::Acquire);
        if resume != self.resume_seen {
            self.resume_seen = resume;
            while let Some(p) = self.pending.pop_front() {
                if self.submit_base(r, p).is_err() {
                    self.own.push_back((p.token, DevStatus::NoMem));
                }
            }
        }
        while let Some((t, s)) = self.own.pop_front() {
            done(t, s);
            n += 1;
        }
        let ErrorChannel {
            base,
            inflight,
            corrupt: to_corrupt,
            ..
        } = self;
        n += base.poll(r, &mut |t, s| {
            *inflight -= 1;
            if !to_corrupt.is_empty() {
                if let Some(i) = to_corrupt.iter().position(|c| c.0 == t) {
                    let (_, mut buf, off, val) = to_corrupt.swap_remove(i);
                    if s == DevStatus::Success {
                        corrupt(&mut buf, off, val);
                    }
                }
            }
            done(t, s);
        });
        n
    }

    fn outstanding(&self) -> usize {
        self.inflight as usize + self.own.len() + self.pending.len()
    }
}
