//! Background processes: which windows a resync ([`Resync`]) or a rebuild
//! ([`Rebuild`]) covers, in order, and the [`Driver`] both hosts run them
//! with (pacing, pauses, progress reports; see its section below).
//!
//! A resync rewrites the windows of the array one at a time.
//!
//! With a write-intent bitmap only the chunks marked `NEEDED` at assembly
//! are resynced, and each chunk's mark is dropped once all its windows
//! succeeded (its bit may then be cleared when idle). Without one the whole
//! array is. The host submits each window as an [`IoType::Resync`] parent
//! on a channel (which fences it from user I/O with the stripe and range
//! locks and takes the bitmap's counts like any write) and reports how it
//! ended.
//!
//! [`IoType::Resync`]: crate::channel::IoType::Resync

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use crate::channel::IoType;
use crate::layout::Geometry;
use crate::meta::{Recovery, RecoveryInfo};
use crate::state::{ArrayState, MemberState, Shared};

/// The next resync window to submit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub lba: u64,
    pub blocks: u64,
}

/// A resync in progress. See the module documentation.
#[derive(Clone, Debug)]
pub struct Resync {
    /// Array blocks per window (whole stripes on parity levels).
    window: u64,
    array_blocks: u64,
    /// Bitmap mode: the chunk being resynced and the end of its range.
    chunk: Option<u64>,
    /// Next array block to submit.
    at: u64,
    end: u64,
    /// Next chunk to look at (bitmap mode).
    next_chunk: u64,
    /// Array block it started from.
    from: u64,
    /// Start of the first window that failed (the checkpoint stays there).
    first_failed: Option<u64>,
    bitmap: bool,
    in_flight: Option<Window>,
    chunk_failed: bool,
    finished: bool,
    done_blocks: u64,
    total_blocks: u64,
    failed_windows: u64,
    /// It makes the array's copies and parity agree (not a check or
    /// repair pass): it tells the channels where it has been
    /// ([`Shared::unsynced_from`], without a bitmap).
    syncs: bool,
}

impl Resync {
    /// A resync of what `shared`'s bitmap marks needed (every chunk marked
    /// at assembly), or of the whole array without a bitmap. `window_blocks`
    /// is rounded to whole stripes on parity levels.
    pub fn new(geom: &Geometry, shared: &Shared, window_blocks: u64) -> Resync {
        Resync::from(geom, shared, window_blocks, 0)
    }

    /// A pass over the whole array whatever the bitmap says: for md's
    /// `check` and `repair`.
    pub fn whole(geom: &Geometry, window_blocks: u64) -> Resync {
        let mut r = Resync::from(geom, &Shared::new(1), window_blocks, 0);
        r.total_blocks = geom.array_blocks();
        r.syncs = false;
        r
    }

    /// A resync that starts at array block `from` (where an orderly stop
    /// left one): what lies below is in sync already.
    pub fn from(geom: &Geometry, shared: &Shared, window_blocks: u64, from: u64) -> Resync {
        let window = if geom.level().is_parity() {
            let s = geom.stripe_data_blocks();
            window_blocks.div_ceil(s).max(1) * s
        } else {
            window_blocks.max(1)
        };
        let from = from.min(geom.array_blocks());
        let (bitmap, total_blocks) = match &shared.bitmap {
            Some(bm) => {
                for c in 0..bm.geom().chunks() {
                    let (lba, blocks) = bm.geom().array_range(c);
                    if lba + blocks <= from {
                        bm.mark_synced(c);
                    }
                }
                (
                    true,
                    (0..bm.geom().chunks())
                        .filter(|&c| bm.needed(c))
                        .map(|c| bm.geom().array_range(c).1)
                        .sum(),
                )
            }
            None => {
                shared.set_unsynced_from(from);
                (false, geom.array_blocks() - from)
            }
        };
        Resync {
            window,
            array_blocks: geom.array_blocks(),
            chunk: None,
            at: from,
            end: if bitmap { from } else { geom.array_blocks() },
            from,
            first_failed: None,
            next_chunk: 0,
            bitmap,
            in_flight: None,
            chunk_failed: false,
            finished: false,
            done_blocks: 0,
            total_blocks,
            failed_windows: 0,
            syncs: true,
        }
    }

    /// The next window to submit; `None` while one is in flight or when
    /// the resync is over ([`Resync::is_done`]).
    pub fn next_window(&mut self, shared: &Shared) -> Option<Window> {
        if self.in_flight.is_some() || self.finished {
            return None;
        }
        while self.at >= self.end {
            if !self.bitmap || !self.next_chunk(shared) {
                self.finished = true;
                if self.syncs && self.first_failed.is_none() {
                    shared.set_unsynced_from(u64::MAX);
                }
                return None;
            }
        }
        let w = Window {
            lba: self.at,
            blocks: self.window.min(self.end - self.at),
        };
        self.at += w.blocks;
        self.in_flight = Some(w);
        Some(w)
    }

    /// Move to the next chunk marked needed; false if there is none.
    fn next_chunk(&mut self, shared: &Shared) -> bool {
        let bm = shared.bitmap.as_ref().unwrap();
        while self.next_chunk < bm.geom().chunks() {
            let c = self.next_chunk;
            self.next_chunk += 1;
            if bm.needed(c) {
                let (lba, blocks) = bm.geom().array_range(c);
                if blocks == 0 {
                    bm.mark_synced(c);
                    continue;
                }
                self.chunk = Some(c);
                self.chunk_failed = false;
                self.at = lba.max(self.from);
                self.end = (lba + blocks).min(self.array_blocks);
                return true;
            }
        }
        false
    }

    /// The window in flight ended; `ok` false if the resync parent failed.
    pub fn window_done(&mut self, shared: &Shared, ok: bool) {
        let w = self.in_flight.take().expect("no resync window in flight");
        self.done_blocks += w.blocks;
        if !ok {
            self.failed_windows += 1;
            self.chunk_failed = true;
            self.first_failed.get_or_insert(w.lba);
        }
        if let (Some(c), Some(bm)) = (self.chunk, &shared.bitmap) {
            if self.at >= self.end {
                if !self.chunk_failed {
                    bm.mark_synced(c);
                }
                self.chunk = None;
            }
        }
        if self.syncs && !self.bitmap {
            shared.set_unsynced_from(self.checkpoint());
        }
    }

    /// The window in flight could not be submitted (no parent slot): hand
    /// it out again from the next [`Resync::next_window`].
    pub fn unsubmit(&mut self) {
        let w = self.in_flight.take().expect("no resync window in flight");
        self.at = w.lba;
        self.finished = false;
    }

    pub fn in_flight(&self) -> Option<Window> {
        self.in_flight
    }

    /// Everything below this array block is in sync (or was not needed):
    /// what an orderly stop records as `resync_offset`.
    pub fn checkpoint(&self) -> u64 {
        let at = self.in_flight.map_or(self.at, |w| w.lba);
        self.first_failed.map_or(at, |f| f.min(at))
    }

    /// Every window was submitted and ended.
    pub fn is_done(&self) -> bool {
        self.finished && self.in_flight.is_none()
    }

    /// Blocks resynced and blocks to resync in all.
    pub fn progress(&self) -> (u64, u64) {
        (self.done_blocks, self.total_blocks.max(self.done_blocks))
    }

    /// Windows whose resync parent failed (their chunks stay marked).
    pub fn failed_windows(&self) -> u64 {
        self.failed_windows
    }
}

/// A rebuild of one member (md's recovery), window by window over the
/// member's blocks from its recovery offset on. Each window is handed out
/// as array ranges to submit as [`IoType::Rebuild`] parents (one per strip
/// on raid10, whose member blocks are not contiguous in the array; one
/// per window elsewhere): a resync reads a current copy (or the other
/// strips and parity) and writes every other copy, the member being rebuilt
/// among them. When every range of a window succeeded, the member is
/// current up to the window's end: report [`Rebuild::offset`] to the
/// metadata path. With `bitmap`, windows whose chunks have no bit set are
/// skipped (nothing was written there since the member left).
///
/// [`IoType::Rebuild`]: crate::channel::IoType::Rebuild
#[derive(Clone, Debug)]
pub struct Rebuild {
    member: usize,
    /// The device being rebuilt (`readded` of its role).
    device: u64,
    /// Member blocks rebuilt: `[0, done)` is current.
    done: u64,
    end: u64,
    window: u64,
    bitmap: bool,
    /// The window being handed out: `[done, win_end)`, next piece at `at`.
    at: u64,
    win_end: u64,
    outstanding: u32,
    /// A range of the window could not be submitted while others were in
    /// flight: once they end, the whole window is handed out again.
    redo: bool,
    failed: bool,
    skipped: u64,
    rebuilt: u64,
}

impl Rebuild {
    /// Rebuild `member` of `geom` from member block `from` on, in windows of
    /// about `window_blocks` member blocks (whole strips).
    pub fn new(
        geom: &Geometry,
        member: usize,
        device: u64,
        from: u64,
        window_blocks: u64,
        bitmap: bool,
    ) -> Rebuild {
        let strip = geom.strip_blocks();
        let window = window_blocks.div_ceil(strip).max(1) * strip;
        let end = geom.member_blocks(member);
        Rebuild {
            member,
            device,
            done: from.min(end),
            end,
            window,
            bitmap,
            at: from.min(end),
            win_end: from.min(end),
            outstanding: 0,
            redo: false,
            failed: false,
            skipped: 0,
            rebuilt: 0,
        }
    }

    pub fn member(&self) -> usize {
        self.member
    }

    /// The device being rebuilt (pass it with the progress).
    pub fn device(&self) -> u64 {
        self.device
    }

    /// Member blocks `[0, offset)` are current.
    pub fn offset(&self) -> u64 {
        self.done
    }

    /// The array range holding member block `x` and the member blocks it
    /// covers from `x` (up to `lim`); `None` range for blocks holding no
    /// array data (raid10's unused tail).
    fn piece(&self, geom: &Geometry, x: u64, lim: u64) -> (Option<(u64, u64)>, u64) {
        let strip = geom.strip_blocks();
        if geom.level().is_parity() {
            let dps = geom.stripe_data_blocks();
            let (s0, s1) = (x / strip, lim.div_ceil(strip).min(geom.stripes()));
            let r = (s1 > s0).then(|| (s0 * dps, (s1 - s0) * dps));
            return (r, lim - x);
        }
        let len = if geom.level() == crate::layout::Level::Raid1 {
            lim - x
        } else {
            (strip - x % strip).min(lim - x)
        };
        (geom.member_to_array(self.member, x).map(|a| (a, len)), len)
    }

    /// Whether any chunk of member blocks `[x, lim)` has its bit set.
    fn dirty(&self, geom: &Geometry, shared: &Shared, mut x: u64, lim: u64) -> bool {
        let Some(bm) = &shared.bitmap else {
            return true;
        };
        while x < lim {
            let (r, n) = self.piece(geom, x, lim);
            if let Some((a, len)) = r {
                let (c0, c1) = bm.geom().chunks_of(a, len);
                if (c0..=c1).any(|c| bm.word(c) != 0) {
                    return true;
                }
            }
            x += n;
        }
        false
    }

    /// The next array range to resync; `None` while the window's ranges are
    /// in flight, after a failure, or at the end.
    pub fn next_window(&mut self, geom: &Geometry, shared: &Shared) -> Option<Window> {
        loop {
            if self.failed || self.redo {
                return None;
            }
            if self.at >= self.win_end {
                if self.outstanding > 0 || self.done >= self.end {
                    return None;
                }
                // A new window; recovering from the bitmap, windows end at
                // chunk boundaries where chunks are member blocks, so clean
                // chunks next to dirty ones are skipped too.
                self.win_end = (self.done + self.window).min(self.end);
                if let Some(bg) = shared.bitmap.as_ref().map(|b| b.geom()) {
                    if self.bitmap && bg.member_space() {
                        let next = (self.done / bg.chunk_blocks() + 1) * bg.chunk_blocks();
                        self.win_end = self.win_end.min(next);
                    }
                }
                self.at = self.done;
                if self.bitmap && !self.dirty(geom, shared, self.at, self.win_end) {
                    self.skipped += self.win_end - self.done;
                    self.done = self.win_end;
                    self.at = self.win_end;
                    continue;
                }
            }
            let (r, n) = self.piece(geom, self.at, self.win_end);
            self.at += n;
            if let Some((lba, blocks)) = r {
                self.outstanding += 1;
                return Some(Window { lba, blocks });
            }
            if self.at >= self.win_end && self.outstanding == 0 {
                self.done = self.win_end;
            }
        }
    }

    /// A range handed out ended; `ok` false if its resync failed (the
    /// rebuild stops there: a member it reads from or the one it rebuilds
    /// failed).
    pub fn window_done(&mut self, ok: bool) {
        assert!(self.outstanding > 0, "no rebuild range in flight");
        self.outstanding -= 1;
        if !ok {
            self.failed = true;
        }
        if self.outstanding == 0 && self.redo {
            self.redo_window();
        } else if self.outstanding == 0 && self.at >= self.win_end && !self.failed {
            self.rebuilt += self.win_end - self.done;
            self.done = self.win_end;
        }
    }

    /// A range handed out could not be submitted: hand the window out
    /// again, once the window's other ranges in flight (raid10 hands a
    /// window out a strip at a time) ended, so the range is never skipped.
    pub fn unsubmit(&mut self) {
        assert!(self.outstanding > 0, "no rebuild range in flight");
        self.outstanding -= 1;
        self.redo = true;
        if self.outstanding == 0 {
            self.redo_window();
        }
    }

    /// Hand the window out again from its start.
    fn redo_window(&mut self) {
        self.redo = false;
        self.at = self.done;
        self.win_end = self.done;
    }

    pub fn in_flight(&self) -> u32 {
        self.outstanding
    }

    pub fn is_done(&self) -> bool {
        self.done >= self.end && self.outstanding == 0
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Member blocks rebuilt, and skipped as clean in the bitmap.
    pub fn counts(&self) -> (u64, u64) {
        (self.rebuilt, self.skipped)
    }
}

// ----- the process driver --------------------------------------------------
//
// Resync, rebuild and md's `sync_action` passes as both hosts run them: one
// process at a time per array (its [`SyncStatus`] holds the slot), window
// after window through one channel of the array, paced to a bandwidth cap,
// with progress reported to the metadata path. The [`Driver`] decides; the
// host submits the [`SyncIo`] it hands out, tells it how each ended, carries
// out its [`Output`]s (metadata-path calls, log lines) and calls it again
// when it asked to be (a completion, the end of a pause).

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

/// Window and bandwidth of background processes, like SPDK's
/// `bdev_raid_set_options` and md's `sync_speed_max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessOptions {
    /// Member data a rebuild (or `sync_action` pass) window covers, in KiB.
    pub window_kb: u32,
    /// Most bytes a process moves per second, in MiB (0: no cap).
    pub max_mb_per_sec: u32,
}

impl ProcessOptions {
    pub const DEFAULT: ProcessOptions = ProcessOptions {
        window_kb: 1024,
        max_mb_per_sec: 0,
    };

    /// The window in blocks of `geom` (at least one).
    pub fn window_blocks(&self, geom: &Geometry) -> u64 {
        (u64::from(self.window_kb) * 1024 / u64::from(geom.block_size())).max(1)
    }
}

impl Default for ProcessOptions {
    fn default() -> Self {
        ProcessOptions::DEFAULT
    }
}

/// The window of a resync after an unclean shutdown: 1 MiB, in whole
/// stripes (parity levels) or strips.
pub fn resync_window(geom: &Geometry) -> u64 {
    let unit = if geom.level().is_parity() {
        geom.stripe_data_blocks()
    } else {
        geom.strip_blocks()
    };
    let mib = (1u64 << 20) / u64::from(geom.block_size());
    mib.div_ceil(unit).max(1) * unit
}

const NONE: u8 = 0;
const RESYNC: u8 = 1;
const REBUILD: u8 = 2;
const CHECK: u8 = 3;
const REPAIR: u8 = 4;

/// The background process slot of an array, readable from any thread:
/// what runs and how far it got, md's `mismatch_cnt`, and the requests
/// (`sync_action idle/frozen`, the array stopping) a driver obeys.
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
    /// The rebuilds that ran to their end, one (role, device) per role:
    /// [`SyncStatus::select`] does not start one again for the same device.
    /// One that failed (md's `recovery_disabled`: a rebuild whose source
    /// cannot be read fails the same way each time) until `sync_action
    /// idle`; one that succeeded, while the metadata path has not yet taken
    /// its last report (it would redo the last window).
    ended_rebuilds: std::sync::Mutex<Vec<(usize, u64)>>,
    /// A resync ran to its end (done, or with windows failed):
    /// [`SyncStatus::select`] does not start one again until `sync_action
    /// idle` (one stopped by `frozen` or by the array stopping did not).
    resync_ended: AtomicBool,
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
            resync_ended: AtomicBool::new(false),
            ended_rebuilds: std::sync::Mutex::new(Vec::new()),
        }
    }
}

/// A process [`SyncStatus::select`] says to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The resync of an array assembled dirty, from this array block.
    Resync { from: u64 },
    /// The rebuild of this role, as the metadata path describes it.
    Rebuild { member: usize, info: RecoveryInfo },
}

impl SyncStatus {
    /// Take the slot for `kind` with `total` blocks to do; false if a
    /// process runs.
    pub fn claim(&self, kind: SyncKind, total: u64) -> bool {
        let (code, target) = match kind {
            SyncKind::Resync => (RESYNC, 0),
            SyncKind::Rebuild(m) => (REBUILD, m as u64),
            SyncKind::Check => (CHECK, 0),
            SyncKind::Repair => (REPAIR, 0),
        };
        if self
            .kind
            .compare_exchange(NONE, code, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.target.store(target, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        true
    }

    /// Free the slot (a driver does it when it ends; a host whose driver
    /// could not start does it itself).
    pub fn release(&self) {
        self.kind.store(NONE, Ordering::Release);
    }

    /// The process running, if any.
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

    fn ended_rebuilds(&self) -> std::sync::MutexGuard<'_, Vec<(usize, u64)>> {
        self.ended_rebuilds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// `sync_action frozen` holds back background processes.
    pub fn frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire)
    }

    /// Sectors the last check or repair found disagreeing.
    pub fn mismatch_cnt(&self) -> Option<u64> {
        match self.mismatch.load(Ordering::Relaxed) {
            u64::MAX => None,
            n => Some(n),
        }
    }

    /// The array is stopping: a driver submits no new window and ends once
    /// its windows in flight did; no process starts.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// md's `sync_action`. `Some(op)`: claim the slot for a check, repair
    /// or resync pass over the whole array (`Ok(true)`: start a
    /// [`Driver::pass`]; `Err` says why not). `None`: stop the pass
    /// running (`Ok(false)`); `freeze` also holds back new processes until
    /// the next call.
    pub fn sync_action(
        &self,
        op: Option<IoType>,
        freeze: bool,
        array_blocks: u64,
    ) -> Result<bool, String> {
        let Some(op) = op else {
            self.frozen.store(freeze, Ordering::Release);
            if !freeze {
                // `idle`: what ended may be tried again.
                self.ended_rebuilds().clear();
                self.resync_ended.store(false, Ordering::Release);
            }
            if matches!(
                self.progress().map(|p| p.kind),
                Some(SyncKind::Check | SyncKind::Repair)
            ) || freeze
            {
                self.stop_pass.store(true, Ordering::Release);
            }
            return Ok(false);
        };
        let kind = match op {
            IoType::Check => SyncKind::Check,
            IoType::Repair => SyncKind::Repair,
            _ => SyncKind::Resync,
        };
        if self.frozen() {
            return Err("sync is frozen (sync_action idle first)".into());
        }
        if self.stopping() {
            return Err("the array is stopping".into());
        }
        if !self.claim(kind, array_blocks) {
            let what = match self.progress().map(|p| p.kind) {
                Some(SyncKind::Rebuild(m)) => format!("a rebuild of role {m}"),
                Some(k) => format!("a {}", k.process_name()),
                None => "another process".into(),
            };
            return Err(format!("{what} is running"));
        }
        self.stop_pass.store(false, Ordering::Release);
        Ok(true)
    }

    /// Which process to start now, if any: none while one runs, the
    /// array stops or it is frozen (md's frozen holds back every process);
    /// the resync of an array assembled dirty (`resync`: where it starts,
    /// if one is due; not again once one ran to its end) first; then the
    /// rebuild of
    /// the first role `recovery` (the metadata path's) says may be rebuilt.
    pub fn select(
        &self,
        members: usize,
        resync: Option<u64>,
        mut recovery: impl FnMut(usize) -> Option<RecoveryInfo>,
    ) -> Option<Start> {
        if self.stopping() || self.progress().is_some() || self.frozen() {
            return None;
        }
        if let Some(from) = resync.filter(|_| !self.resync_ended.load(Ordering::Acquire)) {
            return Some(Start::Resync { from });
        }
        let ended = self.ended_rebuilds();
        (0..members).find_map(|m| {
            recovery(m)
                .filter(|info| !ended.contains(&(m, info.device)))
                .map(|info| Start::Rebuild { member: m, info })
        })
    }
}

/// What the host knows when the driver takes a step.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// The host's monotonic clock, in milliseconds.
    pub now_ms: u64,
    /// The newest state the metadata path broadcast.
    pub state: &'a ArrayState,
    /// Blocks the driver's channel found disagreeing so far (checks and
    /// repairs); `None` without a channel.
    pub mismatch_blocks: Option<u64>,
}

/// A window to submit as a [`ParentIo`](crate::channel::ParentIo) on the
/// driver's channel (tagged as the host's own I/O).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncIo {
    pub op: IoType,
    pub lba: u64,
    pub blocks: u64,
    /// Bytes of the buffer to pass (one region per copy for a mirrored
    /// check or repair); `None`: no buffer (levels that are not mirrored).
    pub buf_bytes: Option<usize>,
}

/// What the host does after [`Driver::step`] (having carried out the
/// driver's outputs first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Submit this window, then step again (unless the driver ended
    /// meanwhile). A window that cannot be submitted goes back with
    /// [`Driver::unsubmit`].
    Submit(SyncIo),
    /// Step again when a window completes.
    Wait,
    /// Held back (the bandwidth cap, or a refused window): step again at
    /// `until_ms`.
    Pause { until_ms: u64 },
    /// The process ended and its slot is free: drop the driver (after
    /// carrying out its outputs).
    Finished,
}

/// A metadata-path call the driver asks for (on the metadata thread).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// The resync checkpoint: everything below this array block is in sync.
    ResyncProgress(u64),
    /// The resync ended with every window done: the array may be clean.
    Synced,
    /// The rebuilt device of `member` is current below member block
    /// `offset`.
    Recovery {
        member: usize,
        device: u64,
        offset: u64,
    },
}

/// Something worth a log line (the text is its `Display`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    ResyncResumes {
        from: u64,
    },
    RebuildStarts {
        member: usize,
        from: u64,
        kind: Recovery,
    },
    ResyncWindowFailed,
    ResyncDone,
    ResyncFailed {
        failed_windows: u64,
    },
    PassStopped,
    PassDone {
        op: IoType,
        sectors: u64,
        failed: bool,
    },
    RebuildStopped {
        member: usize,
    },
    /// `sync_action frozen` stopped the resync below array block `at`
    /// (its checkpoint); it resumes from there after `idle`.
    ResyncFrozen {
        at: u64,
    },
    /// `sync_action frozen` stopped it; it resumes from its checkpoint
    /// once the array is no longer frozen.
    RebuildFrozen {
        member: usize,
    },
    RebuildFailed {
        member: usize,
        offset: u64,
    },
    Rebuilt {
        member: usize,
        copied: u64,
        skipped: u64,
    },
}

impl Note {
    /// Whether it is a warning (else a notice).
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            Note::ResyncWindowFailed
                | Note::ResyncFailed { .. }
                | Note::RebuildStopped { .. }
                | Note::RebuildFailed { .. }
        )
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Note::ResyncResumes { from } => write!(f, "resync resumes at block {from}"),
            Note::RebuildStarts { member, from, kind } => {
                write!(f, "rebuilding role {member} from block {from} ({kind:?})")
            }
            Note::ResyncWindowFailed => {
                f.write_str("a resync window failed; its chunks stay marked for resync")
            }
            Note::ResyncDone => f.write_str("resync done"),
            Note::ResyncFailed { failed_windows } => write!(
                f,
                "resync ended with {failed_windows} failed windows; the array stays dirty"
            ),
            Note::PassStopped => f.write_str("sync action stopped"),
            Note::PassDone {
                op,
                sectors,
                failed,
            } => write!(
                f,
                "{op:?} done: {sectors} sectors mismatched{}",
                if failed { " (some windows failed)" } else { "" }
            ),
            Note::RebuildStopped { member } => write!(f, "rebuild of role {member} stopped"),
            Note::ResyncFrozen { at } => write!(
                f,
                "resync stopped by sync_action frozen at array block {at}; it resumes after idle"
            ),
            Note::RebuildFrozen { member } => write!(
                f,
                "rebuild of role {member} stopped by sync_action frozen; it resumes after idle"
            ),
            Note::RebuildFailed { member, offset } => write!(
                f,
                "rebuild of role {member} failed at block {offset}; not retried on this device until sync_action idle (or the member is added again)"
            ),
            Note::Rebuilt {
                member,
                copied,
                skipped,
            } => write!(
                f,
                "role {member} rebuilt ({copied} blocks copied, {skipped} clean in the bitmap)"
            ),
        }
    }
}

/// What the driver asks of its host besides I/O: see [`Driver::poll_output`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Report(Report),
    Note(Note),
}

/// A background process's plan.
#[derive(Clone, Debug)]
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

/// What the process does next.
enum Next {
    Submit(Window),
    Wait,
    Finished,
}

/// One background process, driven by its host on the metadata thread: see
/// the section comment above. Sans-I/O: time comes in as `now_ms`, the
/// array's state and the channel's counters as [`Facts`].
pub struct Driver {
    geom: Arc<Geometry>,
    shared: Arc<Shared>,
    job: Job,
    started_ms: u64,
    /// Bytes moved so far (for the bandwidth cap).
    bytes: u64,
    /// Held back until then (ms; the cap, or a refused submission).
    paused_until: u64,
    finished: bool,
    out: VecDeque<Output>,
}

impl Driver {
    fn new(geom: &Arc<Geometry>, shared: &Arc<Shared>, job: Job, now_ms: u64) -> Driver {
        Driver {
            geom: geom.clone(),
            shared: shared.clone(),
            job,
            started_ms: now_ms,
            bytes: 0,
            paused_until: 0,
            finished: false,
            out: VecDeque::new(),
        }
    }

    /// The resync of an array assembled dirty (the chunks its bitmap
    /// marks, or all of it) from array block `from` (where an orderly stop
    /// left one), in windows of `window_blocks` (see [`resync_window`]).
    /// The caller claimed the slot ([`SyncKind::Resync`]); this sets its
    /// total.
    pub fn resync(
        geom: &Arc<Geometry>,
        shared: &Arc<Shared>,
        status: &SyncStatus,
        window_blocks: u64,
        from: u64,
        now_ms: u64,
    ) -> Driver {
        let rs = Resync::from(geom, shared, window_blocks, from);
        status.total.store(rs.progress().1, Ordering::Relaxed);
        let mut d = Driver::new(geom, shared, Job::Resync(rs), now_ms);
        if from > 0 {
            d.note(Note::ResyncResumes { from });
        }
        d
    }

    /// The rebuild of role `member` as the metadata path describes it, in
    /// windows of `window_blocks` member blocks; claims the slot (`None`:
    /// frozen, stopping, or a process runs).
    pub fn rebuild(
        geom: &Arc<Geometry>,
        shared: &Arc<Shared>,
        status: &SyncStatus,
        member: usize,
        info: RecoveryInfo,
        window_blocks: u64,
        now_ms: u64,
    ) -> Option<Driver> {
        if status.frozen() || status.stopping() {
            return None;
        }
        let size = geom.member_blocks(member);
        if !status.claim(SyncKind::Rebuild(member), size) {
            return None;
        }
        // Progress is the member's recovery offset, of its whole size (as
        // md's sync_completed), also when it resumes.
        status.done.store(info.from.min(size), Ordering::Relaxed);
        let rb = Rebuild::new(
            geom,
            member,
            info.device,
            info.from,
            window_blocks,
            info.kind == Recovery::Bitmap,
        );
        let mut d = Driver::new(geom, shared, Job::Rebuild(rb), now_ms);
        d.note(Note::RebuildStarts {
            member,
            from: info.from,
            kind: info.kind,
        });
        Some(d)
    }

    /// A `sync_action` pass (`op`: check, repair or resync) over the whole
    /// array, whose slot [`SyncStatus::sync_action`] claimed;
    /// `mismatch_base` is the channel's mismatch count now.
    pub fn pass(
        geom: &Arc<Geometry>,
        shared: &Arc<Shared>,
        op: IoType,
        window_blocks: u64,
        mismatch_base: u64,
        now_ms: u64,
    ) -> Driver {
        let pass = Resync::whole(geom, window_blocks);
        let job = Job::Pass {
            pass,
            op,
            base: mismatch_base,
        };
        Driver::new(geom, shared, job, now_ms)
    }

    fn note(&mut self, n: Note) {
        self.out.push_back(Output::Note(n));
    }

    /// The next metadata-path call or log line to carry out, in order.
    /// Drain them after every call of the driver.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Whether the process ended (its slot is free).
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// End the process now (the host gives up on it: its array is gone)
    /// and free the slot; once only.
    pub fn end(&mut self, status: &SyncStatus) {
        if !self.finished {
            self.finished = true;
            status.release();
        }
    }

    /// The window handed out last ended (`ok`: its parent succeeded).
    /// `max_mb_per_sec` is the bandwidth cap now (0: none): the bytes
    /// moved so far may not take less than they would at the cap, so the
    /// driver may pause (see [`Step::Pause`]).
    pub fn window_done(&mut self, status: &SyncStatus, ok: bool, now_ms: u64, max_mb_per_sec: u32) {
        let out = &mut self.out;
        let done = match &mut self.job {
            Job::Resync(rs) => {
                if !ok {
                    out.push_back(Output::Note(Note::ResyncWindowFailed));
                }
                rs.window_done(&self.shared, ok);
                if ok {
                    out.push_back(Output::Report(Report::ResyncProgress(rs.checkpoint())));
                }
                rs.progress().0
            }
            Job::Pass { pass, .. } => {
                pass.window_done(&self.shared, ok);
                pass.progress().0
            }
            Job::Rebuild(rb) => {
                rb.window_done(ok);
                out.push_back(Output::Report(Report::Recovery {
                    member: rb.member(),
                    device: rb.device(),
                    offset: rb.offset(),
                }));
                rb.offset()
            }
        };
        if !self.finished {
            status.done.store(done, Ordering::Relaxed);
        }
        if max_mb_per_sec > 0 {
            let due_ms = self.bytes * 1000 / (u64::from(max_mb_per_sec) << 20);
            let at = self.started_ms + due_ms;
            if at > now_ms {
                self.paused_until = at;
            }
        }
    }

    /// The window [`Step::Submit`] handed out could not be submitted (no
    /// parent slot, no buffer): it is handed out again after a pause of a
    /// millisecond.
    pub fn unsubmit(&mut self, io: SyncIo, now_ms: u64) {
        match &mut self.job {
            Job::Resync(rs) | Job::Pass { pass: rs, .. } => rs.unsubmit(),
            Job::Rebuild(rb) => rb.unsubmit(),
        }
        self.bytes -= io.blocks * u64::from(self.geom.block_size());
        self.paused_until = now_ms + 1;
    }

    /// What the host does next; see [`Step`]. Carry out the outputs
    /// ([`Driver::poll_output`]) first.
    pub fn step(&mut self, status: &SyncStatus, facts: &Facts) -> Step {
        if self.finished {
            return Step::Finished;
        }
        if self.paused_until > facts.now_ms {
            return Step::Pause {
                until_ms: self.paused_until,
            };
        }
        self.paused_until = 0;
        let w = match self.next_step(status, facts) {
            Next::Submit(w) => w,
            Next::Wait => return Step::Wait,
            Next::Finished => {
                self.end(status);
                return Step::Finished;
            }
        };
        let op = match &self.job {
            Job::Pass { op, .. } => *op,
            Job::Resync(_) => IoType::Resync,
            Job::Rebuild(rb) => IoType::Rebuild {
                member: rb.member() as u16,
            },
        };
        let g = &self.geom;
        let bs = u64::from(g.block_size());
        // A mirrored check reads every copy: one buffer region each.
        let regions = if matches!(op, IoType::Check | IoType::Repair) && !g.level().is_parity() {
            g.copies() as u64
        } else {
            1
        };
        self.bytes += w.blocks * bs;
        Step::Submit(SyncIo {
            op,
            lba: w.lba,
            blocks: w.blocks,
            buf_bytes: (g.copies() > 1).then(|| (w.blocks * bs * regions) as usize),
        })
    }

    fn next_step(&mut self, status: &SyncStatus, facts: &Facts) -> Next {
        let (geom, shared, out) = (&*self.geom, &*self.shared, &mut self.out);
        let stopping = status.stopping();
        let w = match &mut self.job {
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
                if pass.in_flight().is_none() && status.stop_pass.load(Ordering::Acquire) =>
            {
                out.push_back(Output::Note(Note::PassStopped));
                return Next::Finished;
            }
            Job::Resync(rs) | Job::Pass { pass: rs, .. } => {
                if rs.in_flight().is_some() {
                    return Next::Wait;
                }
                if status.frozen() && rs.syncs && !rs.is_done() {
                    // md's frozen stops a resync too; select starts it
                    // again from its checkpoint after idle.
                    out.push_back(Output::Note(Note::ResyncFrozen {
                        at: rs.checkpoint(),
                    }));
                    return Next::Finished;
                }
                rs.next_window(shared)
            }
            Job::Rebuild(rb) => {
                // The member left (or the array went offline): stop. A
                // finished rebuild's member may be recorded in sync by now
                // (a driver paused by the cap looks again only later): that
                // is no reason to stop.
                let st = facts.state;
                let m = rb.member();
                if status.frozen() && !rb.is_done() {
                    // md's frozen stops recovery too; select starts it
                    // again from its checkpoint after idle.
                    if rb.in_flight() > 0 {
                        return Next::Wait;
                    }
                    out.push_back(Output::Note(Note::RebuildFrozen { member: m }));
                    return Next::Finished;
                }
                if !rb.is_done() && !matches!(st.members[m], MemberState::Recovering(_))
                    || st.readded[m] != rb.device()
                    || st.offline
                {
                    if rb.in_flight() > 0 {
                        return Next::Wait;
                    }
                    out.push_back(Output::Note(Note::RebuildStopped { member: m }));
                    return Next::Finished;
                }
                rb.next_window(geom, shared)
            }
        };
        if let Some(w) = w {
            return Next::Submit(w);
        }
        let (done, failed, idle) = match &self.job {
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
        if let Job::Resync(_) = self.job {
            status.resync_ended.store(true, Ordering::Release);
        }
        match &self.job {
            Job::Resync(_) if !failed => {
                out.push_back(Output::Note(Note::ResyncDone));
                out.push_back(Output::Report(Report::Synced));
            }
            Job::Resync(rs) => out.push_back(Output::Note(Note::ResyncFailed {
                failed_windows: rs.failed_windows(),
            })),
            Job::Pass { op, base, .. } => {
                let now = facts.mismatch_blocks.unwrap_or(*base);
                let sectors = now.saturating_sub(*base) * u64::from(geom.block_size()) / 512;
                if *op != IoType::Resync {
                    status.mismatch.store(sectors, Ordering::Relaxed);
                }
                out.push_back(Output::Note(Note::PassDone {
                    op: *op,
                    sectors,
                    failed,
                }));
            }
            Job::Rebuild(rb) => {
                let (member, offset) = (rb.member(), rb.offset());
                let (copied, skipped) = rb.counts();
                let mut ended = status.ended_rebuilds();
                ended.retain(|e| e.0 != member);
                ended.push((member, rb.device()));
                out.push_back(Output::Note(if failed {
                    Note::RebuildFailed { member, offset }
                } else {
                    Note::Rebuilt {
                        member,
                        copied,
                        skipped,
                    }
                }));
                out.push_back(Output::Report(Report::Recovery {
                    member,
                    device: rb.device(),
                    offset,
                }));
            }
        }
        Next::Finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitmap::{Bitmap, BitmapGeom, DURABLE, NEEDED};
    use crate::layout::{GeometryParams, Level};

    fn geom(level: Level, n: usize) -> Geometry {
        Geometry::new(&GeometryParams {
            level,
            layout: None,
            strip_size_kb: 64,
            block_size: 512,
            member_blocks: vec![1 << 16; n],
        })
        .unwrap()
    }

    fn run(r: &mut Resync, shared: &Shared) -> Vec<Window> {
        let mut out = Vec::new();
        while let Some(w) = r.next_window(shared) {
            out.push(w);
            r.window_done(shared, true);
        }
        assert!(r.is_done());
        out
    }

    #[test]
    fn without_bitmap_the_whole_array_in_windows() {
        let g = geom(Level::Raid1, 2);
        let shared = Shared::new(1);
        let mut r = Resync::new(&g, &shared, 4096);
        let w = run(&mut r, &shared);
        assert_eq!(w.len(), 16);
        assert_eq!(w.iter().map(|w| w.blocks).sum::<u64>(), g.array_blocks());
        assert_eq!(r.progress(), (g.array_blocks(), g.array_blocks()));
    }

    #[test]
    fn with_bitmap_only_needed_chunks_and_marks_dropped() {
        let g = geom(Level::Raid5, 4);
        let bg = BitmapGeom::new(&g, 1 << 20).unwrap(); // 2048 member blocks
        let shared = Shared::with_bitmap(1, Some(Bitmap::new(bg.clone())));
        let bm = shared.bitmap.as_ref().unwrap();
        for c in [3, 7] {
            bm.set_flags(c, DURABLE | NEEDED);
        }
        bm.set_flags(5, DURABLE); // dirty but not needed (clean assembly)
                                  // Window of 1000 blocks rounds to whole stripes (384 data blocks).
        let mut r = Resync::new(&g, &shared, 1000);
        let w = run(&mut r, &shared);
        let (a3, n3) = bg.array_range(3);
        let (a7, n7) = bg.array_range(7);
        assert_eq!(w[0].lba, a3);
        assert!(w.iter().all(|w| w.blocks % 384 == 0));
        let covered: u64 = w.iter().map(|w| w.blocks).sum();
        assert_eq!(covered, n3 + n7);
        assert!(w
            .iter()
            .all(|w| (w.lba >= a3 && w.lba < a3 + n3) || (w.lba >= a7 && w.lba < a7 + n7)));
        assert!(!bm.needed(3) && !bm.needed(7));
        assert_eq!(bm.word(5), DURABLE, "untouched");
    }

    #[test]
    fn a_failed_window_keeps_its_chunk_marked() {
        let g = geom(Level::Raid1, 2);
        let bg = BitmapGeom::new(&g, 1 << 20).unwrap();
        let shared = Shared::with_bitmap(1, Some(Bitmap::new(bg)));
        let bm = shared.bitmap.as_ref().unwrap();
        bm.set_flags(1, DURABLE | NEEDED);
        bm.set_flags(2, DURABLE | NEEDED);
        let mut r = Resync::new(&g, &shared, 1024);
        let mut n = 0;
        while let Some(w) = r.next_window(&shared) {
            assert!(r.next_window(&shared).is_none(), "one window at a time");
            r.unsubmit();
            assert_eq!(r.next_window(&shared), Some(w), "handed out again");
            r.window_done(&shared, n != 0);
            n += 1;
        }
        assert!(r.is_done());
        assert_eq!(r.failed_windows(), 1);
        assert!(bm.needed(1) && !bm.needed(2));
    }

    fn rebuild_all(r: &mut Rebuild, g: &Geometry, shared: &Shared) -> Vec<Window> {
        let mut out = Vec::new();
        let mut guard = 0;
        while !r.is_done() {
            guard += 1;
            assert!(guard < 100_000, "rebuild does not end");
            let mut batch = Vec::new();
            while let Some(w) = r.next_window(g, shared) {
                batch.push(w);
            }
            for w in batch {
                out.push(w);
                r.window_done(true);
            }
        }
        out
    }

    /// A raid10 window goes out a strip at a time; one strip that cannot
    /// be submitted while others are in flight makes the whole window go
    /// out again once they ended: its member blocks are never taken for
    /// rebuilt without it.
    #[test]
    fn rebuild_range_not_submitted_is_handed_out_again() {
        use crate::layout::raid10_layout;
        let g = Geometry::new(&GeometryParams {
            level: Level::Raid10,
            layout: Some(raid10_layout::FAR2),
            strip_size_kb: 4,
            block_size: 512,
            member_blocks: vec![1 << 14; 3],
        })
        .unwrap();
        let shared = Shared::new(1);
        let mut r = Rebuild::new(&g, 2, 0, 0, 64, false);
        let mut out = Vec::new();
        while let Some(w) = r.next_window(&g, &shared) {
            out.push(w);
        }
        assert!(out.len() >= 3, "one window in pieces: {out:?}");
        // The second piece finds no parent slot; the others end.
        r.unsubmit();
        for _ in 1..out.len() {
            r.window_done(true);
        }
        assert_eq!(r.offset(), 0, "taken for rebuilt without a piece");
        let mut again = Vec::new();
        while let Some(w) = r.next_window(&g, &shared) {
            again.push(w);
        }
        assert_eq!(again, out, "the whole window again");
        for _ in 0..again.len() {
            r.window_done(true);
        }
        assert!(r.offset() > 0);
    }

    #[test]
    fn rebuild_covers_every_member_block_once() {
        use crate::layout::raid10_layout;
        for (level, n, layout) in [
            (Level::Raid1, 3, None),
            (Level::Raid5, 4, None),
            (Level::Raid6, 5, None),
            (Level::Raid10, 4, Some(raid10_layout::NEAR2)),
            (Level::Raid10, 3, Some(raid10_layout::FAR2)),
            (Level::Raid10, 4, Some(raid10_layout::OFFSET2)),
        ] {
            let g = Geometry::new(&GeometryParams {
                level,
                layout,
                strip_size_kb: 64,
                block_size: 512,
                member_blocks: vec![1 << 14; n],
            })
            .unwrap();
            let shared = Shared::new(1);
            let member = n - 1;
            let mut r = Rebuild::new(&g, member, 0, 0, 1000, false);
            let ws = rebuild_all(&mut r, &g, &shared);
            // Every member block holding array data lies in some window.
            let mut covered = vec![false; g.member_blocks(member) as usize];
            for w in &ws {
                if level.is_parity() {
                    let dps = g.stripe_data_blocks();
                    for st in w.lba / dps..(w.lba + w.blocks).div_ceil(dps) {
                        let m0 = g.stripe(st).member_lba;
                        for b in m0..m0 + g.strip_blocks() {
                            covered[b as usize] = true;
                        }
                    }
                    continue;
                }
                let mut at = w.lba;
                while at < w.lba + w.blocks {
                    let m = g.map(at, w.lba + w.blocks - at);
                    for l in m.copies() {
                        if l.member as usize == member {
                            for b in l.lba..l.lba + m.len {
                                covered[b as usize] = true;
                            }
                        }
                    }
                    at += m.len;
                }
            }
            for b in 0..g.member_blocks(member) {
                let used = g.member_to_array(member, b).is_some()
                    || (level.is_parity() && b / g.strip_blocks() < g.stripes());
                assert!(
                    !used || covered[b as usize],
                    "{level:?}: member block {b} not rebuilt"
                );
            }
            assert_eq!(r.offset(), g.member_blocks(member));
        }
    }

    #[test]
    fn bitmap_rebuild_skips_clean_windows_and_stops_on_failure() {
        let g = geom(Level::Raid1, 2);
        let bg = BitmapGeom::new(&g, 1 << 20).unwrap(); // 2048 blocks a chunk
        let shared = Shared::with_bitmap(1, Some(Bitmap::new(bg)));
        shared.bitmap.as_ref().unwrap().set_flags(5, DURABLE);
        let mut r = Rebuild::new(&g, 1, 0, 0, 1024, true);
        let ws = rebuild_all(&mut r, &g, &shared);
        assert_eq!(
            ws,
            vec![
                Window {
                    lba: 5 * 2048,
                    blocks: 1024
                },
                Window {
                    lba: 5 * 2048 + 1024,
                    blocks: 1024
                }
            ]
        );
        assert_eq!(r.counts(), (2048, (1 << 16) - 2048));
        let mut r = Rebuild::new(&g, 1, 0, 4096, 1024, false);
        let w = r.next_window(&g, &shared).unwrap();
        assert_eq!(w.lba, 4096, "resumes from the offset");
        r.window_done(false);
        assert!(r.failed() && r.next_window(&g, &shared).is_none());
        assert_eq!(r.offset(), 4096);
    }
}

#[cfg(test)]
mod driver_tests {
    use super::*;
    use crate::layout::{GeometryParams, Level};

    const MIB: u64 = 1 << 20;

    fn geom(level: Level, n: usize) -> Arc<Geometry> {
        Arc::new(
            Geometry::new(&GeometryParams {
                level,
                layout: None,
                strip_size_kb: 64,
                block_size: 512,
                member_blocks: vec![1 << 16; n],
            })
            .unwrap(),
        )
    }

    fn shared() -> Arc<Shared> {
        Arc::new(Shared::new(1))
    }

    fn at(now_ms: u64, state: &ArrayState) -> Facts<'_> {
        Facts {
            now_ms,
            state,
            mismatch_blocks: Some(0),
        }
    }

    fn outputs(d: &mut Driver) -> Vec<Output> {
        std::iter::from_fn(|| d.poll_output()).collect()
    }

    fn submit(d: &mut Driver, s: &SyncStatus, f: &Facts) -> SyncIo {
        match d.step(s, f) {
            Step::Submit(io) => io,
            other => panic!("expected a window, got {other:?}"),
        }
    }

    /// A state with `member` recovering on device `device`.
    fn recovering(n: usize, member: usize, device: u64) -> ArrayState {
        let mut st = ArrayState::new_in_sync(n);
        st.members[member] = MemberState::Recovering(0);
        st.readded[member] = device;
        st
    }

    fn full(device: u64) -> RecoveryInfo {
        RecoveryInfo {
            kind: Recovery::Full,
            from: 0,
            device,
        }
    }

    #[test]
    fn resync_windows_in_order_one_at_a_time_then_synced() {
        let (g, sh, s) = (geom(Level::Raid1, 2), shared(), SyncStatus::default());
        let st = ArrayState::new_in_sync(2);
        assert!(s.claim(SyncKind::Resync, 0));
        let mut d = Driver::resync(&g, &sh, &s, 4096, 0, 0);
        assert_eq!(s.progress().unwrap().total, g.array_blocks());
        assert_eq!(sh.unsynced_from(), 0, "where writes reconstruct");
        let mut next = 0;
        while next < g.array_blocks() {
            let io = submit(&mut d, &s, &at(0, &st));
            assert_eq!((io.op, io.lba, io.blocks), (IoType::Resync, next, 4096));
            assert_eq!(io.buf_bytes, Some(4096 * 512), "mirrored: one region");
            assert_eq!(d.step(&s, &at(0, &st)), Step::Wait, "one in flight");
            d.window_done(&s, true, 0, 0);
            next += io.blocks;
            assert_eq!(sh.unsynced_from(), next);
            assert_eq!(
                outputs(&mut d),
                vec![Output::Report(Report::ResyncProgress(next))]
            );
            assert_eq!(s.progress().unwrap().done, next);
        }
        assert_eq!(d.step(&s, &at(0, &st)), Step::Finished);
        assert_eq!(sh.unsynced_from(), u64::MAX, "all in sync");
        assert_eq!(
            outputs(&mut d),
            vec![
                Output::Note(Note::ResyncDone),
                Output::Report(Report::Synced)
            ]
        );
        assert!(d.finished() && s.progress().is_none(), "slot free");
        assert_eq!(d.step(&s, &at(0, &st)), Step::Finished);

        // Resumed where a stop left it; a failed window keeps it dirty.
        assert!(s.claim(SyncKind::Resync, 0));
        let mut d = Driver::resync(&g, &sh, &s, 1 << 15, 1 << 15, 0);
        assert_eq!(
            outputs(&mut d),
            vec![Output::Note(Note::ResyncResumes { from: 1 << 15 })]
        );
        let io = submit(&mut d, &s, &at(0, &st));
        assert_eq!((io.lba, io.blocks), (1 << 15, 1 << 15));
        d.window_done(&s, false, 0, 0);
        assert_eq!(
            outputs(&mut d),
            vec![Output::Note(Note::ResyncWindowFailed)]
        );
        assert_eq!(d.step(&s, &at(0, &st)), Step::Finished);
        assert_eq!(
            outputs(&mut d),
            vec![Output::Note(Note::ResyncFailed { failed_windows: 1 })]
        );
    }

    /// md's frozen stops a resync too (the initial one included): it ends
    /// once its window in flight did, at its checkpoint, and no resync is
    /// selected until idle; then it is selected again from where the host
    /// says (the checkpoint). A resync that failed is not selected again.
    #[test]
    fn frozen_stops_a_resync_and_idle_resumes_it() {
        let (g, sh, s) = (geom(Level::Raid5, 3), shared(), SyncStatus::default());
        let st = ArrayState::new_in_sync(3);
        let none = |_| None;
        assert_eq!(s.select(3, Some(0), none), Some(Start::Resync { from: 0 }));
        assert!(s.claim(SyncKind::Resync, 0));
        let mut d = Driver::resync(&g, &sh, &s, 4096, 0, 0);
        let io = submit(&mut d, &s, &at(0, &st));
        d.window_done(&s, true, 0, 0);
        submit(&mut d, &s, &at(0, &st));
        outputs(&mut d);
        assert_eq!(s.sync_action(None, true, g.array_blocks()), Ok(false));
        assert_eq!(d.step(&s, &at(0, &st)), Step::Wait, "its window first");
        d.window_done(&s, true, 0, 0);
        let cp = 2 * io.blocks;
        assert_eq!(
            outputs(&mut d),
            vec![Output::Report(Report::ResyncProgress(cp))]
        );
        assert_eq!(d.step(&s, &at(0, &st)), Step::Finished);
        assert_eq!(
            outputs(&mut d),
            vec![Output::Note(Note::ResyncFrozen { at: cp })],
            "not synced"
        );
        assert!(s.progress().is_none());
        assert_eq!(sh.unsynced_from(), cp, "still reconstructing past it");
        assert_eq!(s.select(3, Some(cp), none), None, "frozen");
        assert_eq!(s.sync_action(None, false, g.array_blocks()), Ok(false));
        assert_eq!(
            s.select(3, Some(cp), none),
            Some(Start::Resync { from: cp })
        );

        // One that ran to its end, here failed, is not started again by
        // select (one window covers the rest here).
        assert!(s.claim(SyncKind::Resync, 0));
        let mut d = Driver::resync(&g, &sh, &s, g.array_blocks(), cp, 0);
        submit(&mut d, &s, &at(0, &st));
        d.window_done(&s, false, 0, 0);
        assert_eq!(d.step(&s, &at(0, &st)), Step::Finished);
        assert_eq!(s.select(3, Some(cp), none), None, "failed");
        // The rebuilds still start meanwhile; `idle` lets the resync try
        // again.
        assert_eq!(
            s.select(3, Some(cp), |m| (m == 1).then_some(full(5))),
            Some(Start::Rebuild {
                member: 1,
                info: full(5)
            })
        );
        assert_eq!(s.sync_action(None, false, g.array_blocks()), Ok(false));
        assert_eq!(
            s.select(3, Some(cp), none),
            Some(Start::Resync { from: cp })
        );
    }

    /// Two rebuilds that fail (a source both need cannot be read) are
    /// each not started again, not in turn.
    #[test]
    fn two_failed_rebuilds_do_not_take_turns() {
        let (g, sh, s) = (geom(Level::Raid1, 3), shared(), SyncStatus::default());
        let mut st = recovering(3, 1, 9);
        st.members[2] = MemberState::Recovering(0);
        st.readded[2] = 8;
        for (m, dev) in [(1, 9), (2, 8)] {
            let mut d = Driver::rebuild(&g, &sh, &s, m, full(dev), 1 << 16, 0).unwrap();
            submit(&mut d, &s, &at(0, &st));
            d.window_done(&s, false, 0, 0);
            assert_eq!(d.step(&s, &at(0, &st)), Step::Finished);
        }
        let both = |m| match m {
            1 => Some(full(9)),
            2 => Some(full(8)),
            _ => None,
        };
        assert_eq!(s.select(3, None, both), None);
    }

    #[test]
    fn paced_to_the_bandwidth_cap() {
        let (g, sh, s) = (geom(Level::Raid1, 2), shared(), SyncStatus::default());
        let st = ArrayState::new_in_sync(2);
        assert_eq!(
            s.sync_action(Some(IoType::Check), false, g.array_blocks()),
            Ok(true)
        );
        // 1 MiB windows, started at t = 100 ms, capped at 2 MiB/s.
        let mut d = Driver::pass(&g, &sh, IoType::Check, 2048, 0, 100);
        let io = submit(&mut d, &s, &at(100, &st));
        assert_eq!(
            io.buf_bytes,
            Some(2 * MIB as usize),
            "a check reads both copies"
        );
        d.window_done(&s, true, 110, 2);
        // 1 MiB may not take less than 500 ms.
        for now in [110, 599] {
            assert_eq!(d.step(&s, &at(now, &st)), Step::Pause { until_ms: 600 });
        }
        let io2 = submit(&mut d, &s, &at(600, &st));
        assert_eq!(io2.lba, io.lba + io.blocks);
        d.window_done(&s, true, 700, 2);
        assert_eq!(d.step(&s, &at(700, &st)), Step::Pause { until_ms: 1100 });
        // The cap is read at each completion: raised, no pause.
        submit(&mut d, &s, &at(1100, &st));
        d.window_done(&s, true, 1110, 0);
        submit(&mut d, &s, &at(1110, &st));
        // Behind the cap already: no pause either.
        d.window_done(&s, true, 10_000, 2);
        submit(&mut d, &s, &at(10_000, &st));
    }

    #[test]
    fn a_refused_window_comes_again_after_a_millisecond_and_is_not_counted() {
        let (g, sh, s) = (geom(Level::Raid5, 3), shared(), SyncStatus::default());
        let st = ArrayState::new_in_sync(3);
        assert!(s.claim(SyncKind::Resync, 0));
        let mut d = Driver::resync(&g, &sh, &s, 2048, 0, 0);
        let io = submit(&mut d, &s, &at(0, &st));
        assert_eq!(io.buf_bytes, None, "parity levels take no buffer");
        d.unsubmit(io, 5);
        assert_eq!(d.step(&s, &at(5, &st)), Step::Pause { until_ms: 6 });
        assert_eq!(
            d.step(&s, &at(6, &st)),
            Step::Submit(io),
            "handed out again"
        );
        // Only the window that went counts against a cap of 1 MiB/s.
        d.window_done(&s, true, 6, 1);
        let due = io.blocks * 512 * 1000 / MIB;
        assert_eq!(d.step(&s, &at(6, &st)), Step::Pause { until_ms: due });
    }

    #[test]
    fn idle_stops_a_pass_and_frozen_holds_back_processes() {
        let (g, sh, s) = (geom(Level::Raid1, 2), shared(), SyncStatus::default());
        let st = ArrayState::new_in_sync(2);
        let blocks = g.array_blocks();
        assert_eq!(s.sync_action(Some(IoType::Repair), false, blocks), Ok(true));
        assert_eq!(
            s.sync_action(Some(IoType::Check), false, blocks),
            Err("a repair is running".into())
        );
        let mut d = Driver::pass(&g, &sh, IoType::Repair, 2048, 0, 0);
        submit(&mut d, &s, &at(0, &st));
        // `idle`: the window in flight ends first.
        assert_eq!(s.sync_action(None, false, blocks), Ok(false));
        assert!(!s.frozen());
        assert_eq!(d.step(&s, &at(0, &st)), Step::Wait);
        d.window_done(&s, true, 0, 0);
        assert_eq!(d.step(&s, &at(0, &st)), Step::Finished);
        assert_eq!(outputs(&mut d), vec![Output::Note(Note::PassStopped)]);
        assert_eq!(s.mismatch_cnt(), None, "a stopped pass counts nothing");
        assert!(s.progress().is_none());

        // `frozen`: no pass, no rebuild, until `idle`.
        let wants = |m| (m == 1).then_some(full(3));
        assert_eq!(s.sync_action(None, true, blocks), Ok(false));
        assert!(s.frozen());
        assert_eq!(
            s.sync_action(Some(IoType::Check), false, blocks),
            Err("sync is frozen (sync_action idle first)".into())
        );
        assert_eq!(s.select(2, None, wants), None);
        assert!(Driver::rebuild(&g, &sh, &s, 1, full(3), 2048, 0).is_none());
        assert!(s.progress().is_none());
        // Nor the resync of a dirty array (md's frozen holds back all).
        assert_eq!(s.select(2, Some(7), wants), None);
        assert_eq!(s.sync_action(None, false, blocks), Ok(false));
        assert_eq!(s.select(2, Some(7), wants), Some(Start::Resync { from: 7 }));
        assert_eq!(
            s.select(2, None, wants),
            Some(Start::Rebuild {
                member: 1,
                info: full(3)
            })
        );
        // A freeze stops a pass that was started before it.
        assert_eq!(s.sync_action(Some(IoType::Check), false, blocks), Ok(true));
        let mut d = Driver::pass(&g, &sh, IoType::Check, 2048, 0, 0);
        assert_eq!(s.select(2, Some(0), wants), None, "one process at a time");
        assert_eq!(s.sync_action(None, true, blocks), Ok(false));
        assert_eq!(d.step(&s, &at(0, &st)), Step::Finished);
        assert_eq!(s.sync_action(None, false, blocks), Ok(false));
        // A pass started after an `idle` is not stopped by it.
        assert_eq!(s.sync_action(Some(IoType::Check), false, blocks), Ok(true));
        let mut d = Driver::pass(&g, &sh, IoType::Check, 2048, 0, 0);
        submit(&mut d, &s, &at(0, &st));
    }

    #[test]
    fn a_check_counts_the_mismatches_its_channel_found() {
        let (g, sh, s) = (geom(Level::Raid1, 2), shared(), SyncStatus::default());
        let st = ArrayState::new_in_sync(2);
        for (op, want) in [(IoType::Resync, None), (IoType::Check, Some(4))] {
            assert_eq!(s.sync_action(Some(op), false, g.array_blocks()), Ok(true));
            let mut d = Driver::pass(&g, &sh, op, 1 << 15, 10, 0);
            let f = Facts {
                mismatch_blocks: Some(14),
                ..at(0, &st)
            };
            for _ in 0..2 {
                submit(&mut d, &s, &f);
                d.window_done(&s, true, 0, 0);
            }
            assert_eq!(s.progress().unwrap().done, g.array_blocks());
            assert_eq!(d.step(&s, &f), Step::Finished);
            assert_eq!(
                outputs(&mut d),
                vec![Output::Note(Note::PassDone {
                    op,
                    sectors: 4,
                    failed: false
                })]
            );
            assert_eq!(s.mismatch_cnt(), want);
        }
    }

    #[test]
    fn a_rebuild_reports_each_window_and_ends_rebuilt() {
        let (g, sh, s) = (geom(Level::Raid1, 2), shared(), SyncStatus::default());
        let st = recovering(2, 1, 9);
        let info = RecoveryInfo {
            kind: Recovery::Full,
            from: 1 << 15,
            device: 9,
        };
        let mut d = Driver::rebuild(&g, &sh, &s, 1, info, 1 << 14, 0).unwrap();
        // Resumed half way: its progress is the recovery offset, of the
        // member's whole size (md's sync_completed).
        assert_eq!(
            s.progress(),
            Some(SyncProgress {
                kind: SyncKind::Rebuild(1),
                done: 1 << 15,
                total: 1 << 16
            })
        );
        assert!(Driver::rebuild(&g, &sh, &s, 0, info, 1 << 14, 0).is_none());
        assert_eq!(
            s.sync_action(Some(IoType::Check), false, 1),
            Err("a rebuild of role 1 is running".into())
        );
        assert_eq!(
            outputs(&mut d),
            vec![Output::Note(Note::RebuildStarts {
                member: 1,
                from: 1 << 15,
                kind: Recovery::Full
            })]
        );
        for off in [3 << 14, 4 << 14] {
            let io = submit(&mut d, &s, &at(0, &st));
            assert_eq!(
                (io.lba + io.blocks, io.op),
                (off, IoType::Rebuild { member: 1 })
            );
            assert_eq!(d.step(&s, &at(0, &st)), Step::Wait);
            d.window_done(&s, true, 0, 0);
            let r = Report::Recovery {
                member: 1,
                device: 9,
                offset: off,
            };
            assert_eq!(outputs(&mut d), vec![Output::Report(r)]);
            assert_eq!(s.progress().map(|p| p.done), Some(off));
        }
        assert_eq!(d.step(&s, &at(0, &st)), Step::Finished);
        let out = outputs(&mut d);
        assert_eq!(
            out[0],
            Output::Note(Note::Rebuilt {
                member: 1,
                copied: 1 << 15,
                skipped: 0
            })
        );
        assert!(matches!(
            out[1],
            Output::Report(Report::Recovery { offset: 65536, .. })
        ));
        assert!(s.progress().is_none());
    }

    #[test]
    fn a_rebuild_stops_when_its_member_fails_mid_rebuild() {
        let (g, sh) = (geom(Level::Raid1, 2), shared());
        let st = recovering(2, 1, 9);
        let mut failed = st.clone();
        failed.members[1] = MemberState::Faulty;
        let mut replaced = st.clone();
        replaced.readded[1] = 10;
        let mut offline = st.clone();
        offline.offline = true;
        for gone in [failed, replaced, offline] {
            let s = SyncStatus::default();
            let mut d = Driver::rebuild(&g, &sh, &s, 1, full(9), 1 << 13, 0).unwrap();
            submit(&mut d, &s, &at(0, &st));
            d.window_done(&s, true, 0, 0);
            submit(&mut d, &s, &at(0, &st));
            outputs(&mut d);
            // The member leaves with a window in flight: it ends first.
            assert_eq!(d.step(&s, &at(0, &gone)), Step::Wait);
            d.window_done(&s, true, 0, 0);
            assert_eq!(
                outputs(&mut d),
                vec![Output::Report(Report::Recovery {
                    member: 1,
                    device: 9,
                    offset: 2 << 13
                })]
            );
            assert_eq!(d.step(&s, &at(0, &gone)), Step::Finished);
            assert_eq!(
                outputs(&mut d),
                vec![Output::Note(Note::RebuildStopped { member: 1 })]
            );
            assert!(s.progress().is_none());
        }

        // sync_action frozen stops it once its window in flight ended (md's
        // frozen stops recovery too); no process starts until idle.
        let s = SyncStatus::default();
        let mut d = Driver::rebuild(&g, &sh, &s, 1, full(9), 1 << 13, 0).unwrap();
        submit(&mut d, &s, &at(0, &st));
        outputs(&mut d);
        assert_eq!(s.sync_action(None, true, g.array_blocks()), Ok(false));
        assert_eq!(d.step(&s, &at(0, &st)), Step::Wait);
        d.window_done(&s, true, 0, 0);
        outputs(&mut d);
        assert_eq!(d.step(&s, &at(0, &st)), Step::Finished);
        assert_eq!(
            outputs(&mut d),
            vec![Output::Note(Note::RebuildFrozen { member: 1 })]
        );
        assert!(s.progress().is_none());
        assert!(Driver::rebuild(&g, &sh, &s, 1, full(9), 1 << 13, 0).is_none());
        assert_eq!(s.sync_action(None, false, g.array_blocks()), Ok(false));
        assert!(Driver::rebuild(&g, &sh, &s, 1, full(9), 1 << 13, 0).is_some());

        // A window that fails (a member it reads or writes failed) ends it
        // there, reported.
        let s = SyncStatus::default();
        let mut d = Driver::rebuild(&g, &sh, &s, 1, full(9), 1 << 13, 0).unwrap();
        submit(&mut d, &s, &at(0, &st));
        d.window_done(&s, true, 0, 0);
        submit(&mut d, &s, &at(0, &st));
        d.window_done(&s, false, 0, 0);
        outputs(&mut d);
        assert_eq!(d.step(&s, &at(0, &st)), Step::Finished);
        let r = Report::Recovery {
            member: 1,
            device: 9,
            offset: 1 << 13,
        };
        assert_eq!(
            outputs(&mut d),
            vec![
                Output::Note(Note::RebuildFailed {
                    member: 1,
                    offset: 1 << 13
                }),
                Output::Report(r)
            ]
        );
        // Not started again on that device (md's recovery_disabled): a
        // source that cannot be read would fail it the same way each time;
        // another device (the member added again) starts, and so does the
        // same one after `idle`.
        let on = |dev| move |m| (m == 1).then_some(full(dev));
        assert_eq!(s.select(2, None, on(9)), None);
        assert_eq!(
            s.select(2, None, on(10)),
            Some(Start::Rebuild {
                member: 1,
                info: full(10)
            })
        );
        assert_eq!(s.sync_action(None, false, g.array_blocks()), Ok(false));
        assert_eq!(
            s.select(2, None, on(9)),
            Some(Start::Rebuild {
                member: 1,
                info: full(9)
            })
        );
    }

    /// The SPDK port's fix, now both hosts': a rebuild held back by the
    /// cap after its last window, whose member the metadata path recorded
    /// in sync meanwhile, ends "rebuilt", not "stopped".
    #[test]
    fn a_rebuild_held_back_by_the_cap_ends_rebuilt_though_its_member_is_in_sync() {
        let (g, sh, s) = (geom(Level::Raid1, 2), shared(), SyncStatus::default());
        let st = recovering(2, 1, 9);
        let mut d = Driver::rebuild(&g, &sh, &s, 1, full(9), 1 << 15, 0).unwrap();
        submit(&mut d, &s, &at(0, &st));
        d.window_done(&s, true, 1, 1);
        assert_eq!(d.step(&s, &at(1, &st)), Step::Pause { until_ms: 16_000 });
        submit(&mut d, &s, &at(16_000, &st));
        d.window_done(&s, true, 16_001, 1);
        outputs(&mut d);
        // The last window's report made the member current: in sync now.
        let mut synced = st.clone();
        synced.members[1] = MemberState::InSync;
        assert_eq!(
            d.step(&s, &at(16_002, &synced)),
            Step::Pause { until_ms: 32_000 }
        );
        assert_eq!(d.step(&s, &at(32_000, &synced)), Step::Finished);
        let out = outputs(&mut d);
        assert_eq!(
            out[0],
            Output::Note(Note::Rebuilt {
                member: 1,
                copied: 1 << 16,
                skipped: 0
            })
        );
        assert!(!out.contains(&Output::Note(Note::RebuildStopped { member: 1 })));
        // Until the metadata path took its last report, it may still say
        // the member needs a rebuild from its last checkpoint: not again.
        let from_checkpoint = RecoveryInfo {
            from: 1 << 15,
            ..full(9)
        };
        assert_eq!(
            s.select(2, None, |m| (m == 1).then_some(from_checkpoint)),
            None
        );
    }

    #[test]
    fn a_stopping_array_ends_its_process_once_the_window_in_flight_did() {
        let (g, sh, s) = (geom(Level::Raid1, 2), shared(), SyncStatus::default());
        let st = recovering(2, 1, 9);
        assert!(s.claim(SyncKind::Resync, 0));
        let mut d = Driver::resync(&g, &sh, &s, 2048, 0, 0);
        submit(&mut d, &s, &at(0, &st));
        s.stop();
        assert_eq!(d.step(&s, &at(0, &st)), Step::Wait);
        d.window_done(&s, true, 0, 0);
        assert_eq!(d.step(&s, &at(0, &st)), Step::Finished);
        assert_eq!(
            outputs(&mut d),
            vec![Output::Report(Report::ResyncProgress(2048))],
            "not synced"
        );
        // Nothing starts any more.
        assert_eq!(s.select(2, Some(0), |_| Some(full(9))), None);
        assert!(Driver::rebuild(&g, &sh, &s, 1, full(9), 2048, 0).is_none());
        assert_eq!(
            s.sync_action(Some(IoType::Check), false, 1),
            Err("the array is stopping".into())
        );
    }

    #[test]
    fn a_rebuild_of_raid10_hands_out_every_range_of_a_window() {
        let (g, sh, s) = (geom(Level::Raid10, 4), shared(), SyncStatus::default());
        let st = recovering(4, 3, 1);
        // Two strips of member blocks a window: two array ranges.
        let mut d = Driver::rebuild(&g, &sh, &s, 3, full(1), 256, 0).unwrap();
        let a = submit(&mut d, &s, &at(0, &st));
        let b = submit(&mut d, &s, &at(0, &st));
        assert!(b.lba > a.lba);
        assert_eq!(d.step(&s, &at(0, &st)), Step::Wait);
        d.window_done(&s, true, 0, 0);
        d.window_done(&s, true, 0, 0);
        let last = outputs(&mut d).pop();
        assert_eq!(
            last,
            Some(Output::Report(Report::Recovery {
                member: 3,
                device: 1,
                offset: 256
            }))
        );
        assert_eq!(s.progress().unwrap().done, 256);
    }

    #[test]
    fn log_lines_hosts_and_their_tests_rely_on() {
        assert_eq!(Note::ResyncDone.to_string(), "resync done");
        let n = Note::Rebuilt {
            member: 1,
            copied: 8,
            skipped: 2,
        };
        assert_eq!(
            n.to_string(),
            "role 1 rebuilt (8 blocks copied, 2 clean in the bitmap)"
        );
        assert!(!n.is_warning() && Note::RebuildStopped { member: 0 }.is_warning());
        assert_eq!(
            resync_window(&geom(Level::Raid5, 3)),
            2048,
            "1 MiB in whole stripes"
        );
        assert_eq!(
            ProcessOptions::default().window_blocks(&geom(Level::Raid1, 2)),
            2048
        );
    }
}
