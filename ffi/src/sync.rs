//! Background processes of an array — resync after an unclean shutdown,
//! rebuild of a member brought in by `bdev_mdraid_add_base_bdev`, and
//! md's `sync_action` passes (check, repair, resync) — driven on the
//! array's metadata thread, window by window, through that thread's channel
//! of the array (parents tagged [`INTERNAL_TAG`]). The embedded daemon's
//! `SyncDriver` (runtime/src/array.rs), ported: the engine's `Resync` and
//! `Rebuild` plan the windows; the driver submits them, reports progress
//! to the metadata path (resync checkpoint, recovery offset, `mark_synced`)
//! and paces itself to the bandwidth cap of `bdev_mdraid_set_options`.
//!
//! One process at a time per array ([`SyncStatus`] holds the slot). The
//! metadata tick resumes a paced or refused driver, and starts a rebuild
//! once the metadata path says a member may be rebuilt. A stopping array
//! stops its driver: no new window, and the teardown waits until the
//! windows in flight ended (the driver's channel is put before the
//! io_device goes).

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use bdev_raid::channel::{Busy, IoStatus, IoType, ParentIo};
use bdev_raid::meta::Recovery;
use bdev_raid::state::MemberState;
use bdev_raid::sync::{Rebuild, Resync, Window};

use crate::array::{Array, ArrayChannel, IoBuf, INTERNAL_TAG};
use crate::spdk::{log_notice, log_warn, now_ms, DmaBuf};

/// What a background process does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    Resync,
    /// Rebuilding the member in this role.
    Rebuild(usize),
    Check,
    Repair,
}

impl SyncKind {
    /// `process.type` of `bdev_mdraid_get_bdevs`.
    pub fn process_name(self) -> &'static str {
        match self {
            SyncKind::Resync => "resync",
            SyncKind::Rebuild(_) => "rebuild",
            SyncKind::Check => "check",
            SyncKind::Repair => "repair",
        }
    }

    /// md's `sync_action` while it runs.
    pub fn action_name(self) -> &'static str {
        match self {
            SyncKind::Resync => "resync",
            SyncKind::Rebuild(_) => "recover",
            SyncKind::Check => "check",
            SyncKind::Repair => "repair",
        }
    }
}

/// Progress of the background process running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncProgress {
    pub kind: SyncKind,
    /// Blocks done (array blocks for a resync, member blocks for a rebuild).
    pub done: u64,
    pub total: u64,
}

const NONE: u8 = 0;
const RESYNC: u8 = 1;
const REBUILD: u8 = 2;
const CHECK: u8 = 3;
const REPAIR: u8 = 4;

/// Window and bandwidth of background processes (`bdev_mdraid_set_options`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessOptions {
    pub window_kb: u32,
    /// MiB/s; 0: no cap.
    pub max_mb_per_sec: u32,
}

/// The options every array uses (set for all at once, like the daemon's).
static OPTIONS: Mutex<ProcessOptions> = Mutex::new(ProcessOptions {
    window_kb: 1024,
    max_mb_per_sec: 0,
});

pub fn options() -> ProcessOptions {
    *OPTIONS.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn set_options(window_kb: Option<u32>, max_mb_per_sec: Option<u32>) {
    let mut o = OPTIONS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(w) = window_kb {
        o.window_kb = w;
    }
    if let Some(m) = max_mb_per_sec {
        o.max_mb_per_sec = m;
    }
}

/// The background process slot of an array, readable from any thread.
#[derive(Debug)]
pub struct SyncStatus {
    kind: AtomicU8,
    target: AtomicU64,
    done: AtomicU64,
    total: AtomicU64,
    /// Sectors the last check or repair found disagreeing (MAX: none ran).
    mismatch: AtomicU64,
    /// `sync_action idle/frozen`: stop the pass running.
    stop_pass: AtomicBool,
    /// `sync_action frozen`: no new process until `idle`.
    frozen: AtomicBool,
    /// The array is stopping: no new window, no new process.
    stopping: AtomicBool,
}

impl Default for SyncStatus {
    fn default() -> Self {
        SyncStatus {
            kind: AtomicU8::new(NONE),
            target: AtomicU64::new(0),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            mismatch: AtomicU64::new(u64::MAX),
            stop_pass: AtomicBool::new(false),
            frozen: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }
    }
}

impl SyncStatus {
    fn claim(&self, kind: u8, target: u64, total: u64) -> bool {
        if self
            .kind
            .compare_exchange(NONE, kind, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.target.store(target, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        true
    }

    fn release(&self) {
        self.kind.store(NONE, Ordering::Release);
    }

    pub fn progress(&self) -> Option<SyncProgress> {
        let kind = match self.kind.load(Ordering::Acquire) {
            RESYNC => SyncKind::Resync,
            REBUILD => SyncKind::Rebuild(self.target.load(Ordering::Relaxed) as usize),
            CHECK => SyncKind::Check,
            REPAIR => SyncKind::Repair,
            _ => return None,
        };
        let done = self.done.load(Ordering::Relaxed);
        Some(SyncProgress {
            kind,
            done,
            total: self.total.load(Ordering::Relaxed).max(done),
        })
    }

    pub fn frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire)
    }

    pub fn mismatch_cnt(&self) -> Option<u64> {
        match self.mismatch.load(Ordering::Relaxed) {
            u64::MAX => None,
            n => Some(n),
        }
    }

    /// The array is stopping (its `destruct` began).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

/// A background process's plan.
enum Job {
    Resync(Resync),
    Rebuild(Rebuild),
    /// A `sync_action` pass; `base` is the channel's mismatch count before.
    Pass {
        pass: Resync,
        op: IoType,
        base: u64,
    },
}

/// Drives one process on the metadata thread (see the module docs).
pub struct Driver {
    array: Arc<Array>,
    job: RefCell<Job>,
    ch: RefCell<Option<ArrayChannel>>,
    started_ms: u64,
    /// Bytes moved so far (for the bandwidth cap).
    bytes: Cell<u64>,
    /// Held back until then (ms; the cap, or a refused submission).
    paused_until: Cell<u64>,
    finished: Cell<bool>,
}

/// What a process does next.
enum Next {
    Submit(Window),
    Wait,
    Finished,
}

/// Metadata-path calls a completion asks for, made from a message (a
/// completion may run inside the metadata host's own calls).
enum Report {
    ResyncProgress(u64),
    Synced,
    Recovery(usize, u64, u64),
}

fn report(array: &Arc<Array>, r: Report) {
    let a = array.clone();
    let res = array.meta_thread.send(move || {
        crate::meta::with_host(&a, |h| match r {
            Report::ResyncProgress(lba) => h.resync_progress(lba),
            Report::Synced => h.mark_synced(),
            Report::Recovery(m, dev, off) => h.recovery_progress(m, dev, off),
        });
    });
    if res.is_err() {
        log_warn!(
            "mdraid {}: cannot report background progress to the metadata path",
            array.name
        );
    }
}

fn window_blocks(array: &Array) -> u64 {
    (u64::from(options().window_kb) * 1024 / u64::from(array.geom.block_size())).max(1)
}

impl Driver {
    fn start(array: &Arc<Array>, job: Job) -> Option<Rc<Driver>> {
        let drv = Rc::new(Driver {
            array: array.clone(),
            job: RefCell::new(job),
            ch: RefCell::new(None),
            started_ms: now_ms(),
            bytes: Cell::new(0),
            paused_until: Cell::new(0),
            finished: Cell::new(false),
        });
        let weak: Weak<Driver> = Rc::downgrade(&drv);
        let done = Rc::new(move |_tag: u64, status: IoStatus, buf: Option<IoBuf>| {
            drop(buf);
            if let Some(d) = weak.upgrade() {
                d.io_done(status);
            }
        });
        let Some(ch) = ArrayChannel::get(array, done) else {
            log_warn!("mdraid {}: no channel for a background process", array.name);
            array.sync.release();
            return None;
        };
        if let Job::Pass { base, .. } = &mut *drv.job.borrow_mut() {
            *base = ch.mismatch_blocks();
        }
        *drv.ch.borrow_mut() = Some(ch);
        Some(drv)
    }

    /// Whether the driver ended (its slot is free; drop it).
    pub fn finished(&self) -> bool {
        self.finished.get()
    }

    fn end(&self) {
        if !self.finished.replace(true) {
            self.array.sync.release();
        }
    }

    /// Drop the array channel (the driver has ended).
    pub fn close(&self) {
        self.ch.borrow_mut().take();
    }

    fn io_done(self: &Rc<Self>, status: IoStatus) {
        let a = &self.array;
        let ok = status == IoStatus::Success;
        let rep = match &mut *self.job.borrow_mut() {
            Job::Resync(rs) => {
                if !ok {
                    log_warn!(
                        "mdraid {}: a resync window failed; its chunks stay marked for resync",
                        a.name
                    );
                }
                rs.window_done(&a.shared, ok);
                a.sync.done.store(rs.progress().0, Ordering::Relaxed);
                ok.then(|| Report::ResyncProgress(rs.checkpoint()))
            }
            Job::Pass { pass, .. } => {
                pass.window_done(&a.shared, ok);
                a.sync.done.store(pass.progress().0, Ordering::Relaxed);
                None
            }
            Job::Rebuild(rb) => {
                rb.window_done(ok);
                let (rebuilt, skipped) = rb.counts();
                a.sync.done.store(rebuilt + skipped, Ordering::Relaxed);
                Some(Report::Recovery(rb.member(), rb.device(), rb.offset()))
            }
        };
        if let Some(r) = rep {
            report(a, r);
        }
        // Pace to the bandwidth cap: the bytes moved so far may not take
        // less than they would at the cap.
        let cap = options().max_mb_per_sec;
        if cap > 0 {
            let due_ms = self.bytes.get() * 1000 / (u64::from(cap) << 20);
            let at = self.started_ms + due_ms;
            if at > now_ms() {
                self.paused_until.set(at);
                return; // the metadata tick resumes it
            }
        }
        self.next();
    }

    /// The process's next step (the job is borrowed only here).
    fn next_step(&self) -> Next {
        let a = &self.array;
        let mut job = self.job.borrow_mut();
        let stopping = a.sync.stopping();
        let w = match &mut *job {
            Job::Resync(rs) | Job::Pass { pass: rs, .. } if stopping => {
                return if rs.in_flight().is_some() {
                    Next::Wait
                } else {
                    Next::Finished
                };
            }
            Job::Rebuild(rb) if stopping => {
                return if rb.in_flight() > 0 {
                    Next::Wait
                } else {
                    Next::Finished
                };
            }
            Job::Pass { pass, .. }
                if pass.in_flight().is_none() && a.sync.stop_pass.load(Ordering::Acquire) =>
            {
                log_notice!("mdraid {}: sync action stopped", a.name);
                return Next::Finished;
            }
            Job::Resync(rs) | Job::Pass { pass: rs, .. } => {
                if rs.in_flight().is_some() {
                    return Next::Wait;
                }
                rs.next_window(&a.shared)
            }
            Job::Rebuild(rb) => {
                // The member left (or the array went offline): stop. (A
                // finished rebuild's member is in sync by now, maybe: the
                // driver paced by the cap looks again only at the tick.)
                let st = a.state();
                let m = rb.member();
                if !rb.is_done() && !matches!(st.members[m], MemberState::Recovering(_))
                    || st.readded[m] != rb.device()
                    || st.offline
                {
                    if rb.in_flight() > 0 {
                        return Next::Wait;
                    }
                    log_warn!("mdraid {}: rebuild of role {m} stopped", a.name);
                    return Next::Finished;
                }
                rb.next_window(&a.geom, &a.shared)
            }
        };
        if let Some(w) = w {
            return Next::Submit(w);
        }
        let (done, failed, idle) = match &*job {
            Job::Resync(rs) | Job::Pass { pass: rs, .. } => (
                rs.is_done(),
                rs.failed_windows() > 0,
                rs.in_flight().is_none(),
            ),
            Job::Rebuild(rb) => (
                rb.is_done() || rb.failed(),
                rb.failed(),
                rb.in_flight() == 0,
            ),
        };
        if !(done && idle) {
            return Next::Wait;
        }
        match &*job {
            Job::Resync(_) if !failed => {
                log_notice!("mdraid {}: resync done", a.name);
                report(a, Report::Synced);
            }
            Job::Resync(rs) => log_warn!(
                "mdraid {}: resync ended with {} failed windows; the array stays dirty",
                a.name,
                rs.failed_windows()
            ),
            Job::Pass { op, base, .. } => {
                let now = self
                    .ch
                    .borrow()
                    .as_ref()
                    .map_or(*base, |c| c.mismatch_blocks());
                let sectors = now.saturating_sub(*base) * u64::from(a.geom.block_size()) / 512;
                if *op != IoType::Resync {
                    a.sync.mismatch.store(sectors, Ordering::Relaxed);
                }
                log_notice!(
                    "mdraid {}: {op:?} done: {sectors} sectors mismatched{}",
                    a.name,
                    if failed { " (some windows failed)" } else { "" }
                );
            }
            Job::Rebuild(rb) => {
                let (m, dev, off) = (rb.member(), rb.device(), rb.offset());
                let (rebuilt, skipped) = rb.counts();
                if failed {
                    log_warn!(
                        "mdraid {}: rebuild of role {m} failed at block {off}",
                        a.name
                    );
                } else {
                    log_notice!(
                        "mdraid {}: role {m} rebuilt ({rebuilt} blocks copied, {skipped} clean in the bitmap)",
                        a.name
                    );
                }
                report(a, Report::Recovery(m, dev, off));
            }
        }
        Next::Finished
    }

    /// Submit what the process needs next, or finish it.
    pub fn next(self: &Rc<Self>) {
        let a = &self.array;
        let bs = u64::from(a.geom.block_size());
        loop {
            if self.finished.get() || self.paused_until.get() > now_ms() {
                return;
            }
            self.paused_until.set(0);
            let w = match self.next_step() {
                Next::Submit(w) => w,
                Next::Wait => return,
                Next::Finished => return self.end(),
            };
            let op = match &*self.job.borrow() {
                Job::Pass { op, .. } => *op,
                _ => IoType::Resync,
            };
            // A mirrored check reads every copy: one buffer region each.
            let regions =
                if matches!(op, IoType::Check | IoType::Repair) && !a.geom.level().is_parity() {
                    a.geom.copies()
                } else {
                    1
                } as u64;
            let buf = if a.geom.copies() > 1 {
                match DmaBuf::zeroed((w.blocks * bs * regions) as usize, 4096) {
                    Some(b) => Some(IoBuf::Dma(b)),
                    None => {
                        self.unsubmit();
                        return;
                    }
                }
            } else {
                None
            };
            let io = ParentIo {
                tag: (w.lba << 1) | INTERNAL_TAG,
                op,
                lba: w.lba,
                blocks: w.blocks,
                fua: false,
                buf,
            };
            self.bytes.set(self.bytes.get() + w.blocks * bs);
            let res = match self.ch.borrow().as_ref() {
                Some(c) => c.submit(io),
                None => Err(Busy(io)),
            };
            if let Err(Busy(_io)) = res {
                self.bytes.set(self.bytes.get() - w.blocks * bs);
                self.unsubmit();
                return;
            }
        }
    }

    /// A window could not be submitted: hand it out again shortly.
    fn unsubmit(&self) {
        match &mut *self.job.borrow_mut() {
            Job::Resync(rs) | Job::Pass { pass: rs, .. } => rs.unsubmit(),
            Job::Rebuild(rb) => rb.unsubmit(),
        }
        self.paused_until.set(now_ms() + 1);
    }
}

/// Resync of an array assembled dirty (the chunks its bitmap marks, or all
/// of it), from where an orderly stop left it (`from`).
pub fn start_resync(array: &Arc<Array>, from: u64) -> Option<Rc<Driver>> {
    if !array.sync.claim(RESYNC, 0, 0) {
        return None;
    }
    let g = &array.geom;
    let unit = if g.level().is_parity() {
        g.stripe_data_blocks()
    } else {
        g.strip_blocks()
    };
    let mib = (1u64 << 20) / u64::from(g.block_size());
    let window = mib.div_ceil(unit).max(1) * unit;
    let rs = Resync::from(g, &array.shared, window, from);
    array.sync.total.store(rs.progress().1, Ordering::Relaxed);
    if from > 0 {
        log_notice!("mdraid {}: resync resumes at block {from}", array.name);
    }
    Driver::start(array, Job::Resync(rs))
}

/// A rebuild of role `m` as the metadata path describes it.
pub fn start_rebuild(
    array: &Arc<Array>,
    m: usize,
    info: bdev_raid::meta::RecoveryInfo,
) -> Option<Rc<Driver>> {
    if array.sync.frozen() || array.sync.stopping() {
        return None;
    }
    let g = &array.geom;
    let total = g.member_blocks(m) - info.from.min(g.member_blocks(m));
    if !array.sync.claim(REBUILD, m as u64, total) {
        return None;
    }
    let rb = Rebuild::new(
        g,
        m,
        info.device,
        info.from,
        window_blocks(array),
        info.kind == Recovery::Bitmap,
    );
    log_notice!(
        "mdraid {}: rebuilding role {m} from block {} ({:?})",
        array.name,
        info.from,
        info.kind
    );
    Driver::start(array, Job::Rebuild(rb))
}

/// md's `sync_action`: a check, repair or resync pass over the whole array
/// (`Err` names what runs already), or (`None`) stop the pass running;
/// `freeze` also holds back rebuilds until the next call. On the metadata
/// thread; a new driver is returned to be installed and started.
pub fn sync_action(
    array: &Arc<Array>,
    op: Option<IoType>,
    freeze: bool,
) -> Result<Option<Rc<Driver>>, String> {
    let s = &array.sync;
    let Some(op) = op else {
        s.frozen.store(freeze, Ordering::Release);
        if matches!(
            s.progress().map(|p| p.kind),
            Some(SyncKind::Check | SyncKind::Repair)
        ) || freeze
        {
            s.stop_pass.store(true, Ordering::Release);
        }
        return Ok(None);
    };
    let kind = match op {
        IoType::Check => CHECK,
        IoType::Repair => REPAIR,
        _ => RESYNC,
    };
    if s.frozen() {
        return Err("sync is frozen (sync_action idle first)".into());
    }
    if s.stopping() {
        return Err("the array is stopping".into());
    }
    if !s.claim(kind, 0, array.geom.array_blocks()) {
        let what = match s.progress().map(|p| p.kind) {
            Some(SyncKind::Rebuild(m)) => format!("a rebuild of role {m}"),
            Some(k) => format!("a {}", k.process_name()),
            None => "another process".into(),
        };
        return Err(format!("{what} is running"));
    }
    s.stop_pass.store(false, Ordering::Release);
    let pass = Resync::whole(&array.geom, window_blocks(array));
    Ok(Driver::start(array, Job::Pass { pass, op, base: 0 }))
}
