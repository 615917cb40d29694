//! The metadata host: runs an array's `bdev_raid::meta::Meta` on its
//! metadata thread (the SPDK thread that created the array).
//!
//! In: channels' requests (by `spdk_thread_send_msg`, [`request`]), a
//! 10 ms tick poller (clean/dirty timing, retries), superblock write
//! completions, vacated channel indices ([`vacated`]).
//! Out: superblock writes to the members through this thread's channels of
//! them — flush, write, flush, since SPDK's bdev API has no FUA (the first
//! flush makes every write the member completed before durable first) —
//! and state broadcasts ([`crate::array::broadcast`]: apply on every
//! channel, then release on every channel).
//!
//! The write-intent bitmap (when the array has one) is the engine's: the
//! channels ask for bits (`MetaRequest::BitsNeeded`), the metadata path
//! writes them (superblock + bitmap area, or the bitmap area alone) before
//! the writes go, and its daemon pass, run from the tick every
//! `daemon_sleep_ms`, clears idle chunks lazily. The tick also drives the
//! background processes (`crate::sync`): it resumes a paced driver,
//! starts the resync of an array assembled dirty, and starts a rebuild
//! once the metadata path says a member may be rebuilt.
//!
//! Arrays without superblocks (`superblock: false`) get a stand-in with no
//! metadata on disk: writable from the start, a failed member recorded
//! faulty in memory only.
//!
//! Stopping ([`begin_shutdown`], from the bdev's `destruct`): the metadata
//! path shuts down (writes drain, the superblocks are marked clean), the
//! superblocks are wiped if `bdev_mdraid_delete` asked, broadcasts finish,
//! then the io_device is unregistered, the members released and closed,
//! and SPDK told the bdev is destructed.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::c_void;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bdev_raid::bitmap::DiskBitmap;
use bdev_raid::channel::MetaRequest;
use bdev_raid::layout::Geometry;
use bdev_raid::meta::{
    AddError, FlagError, Meta, MetaAction, MetaConfig, NewMember, Recovery, RecoveryInfo,
};
use bdev_raid::ondisk::{Superblock, SB_BLOCK_BYTES, SB_OFFSET_BYTES};
use bdev_raid::state::{survives, ArrayState, MemberState, Shared};
use bdev_raid::sync::Start;
use mdraid_rpc::results::MdraidBitmapInfo;

use crate::array::{broadcast, Array, Snap, MAX_CHANNELS};
use crate::spdk::{
    fatal_guard, io_once, log_error, log_notice, log_warn, now_ms, BdevOp, Desc, DmaBuf, IoChannel,
    Poller,
};
use crate::sync::Driver;
use crate::sys;

const ENOMEM: i32 = 12;
/// How long a stopping array waits for its metadata path to mark it clean.
const STOP_TIMEOUT_MS: u64 = 10_000;

/// Build the metadata path of an md array (the one place that knows
/// `Meta::new`'s signature); its superblocks record `name` when given (a
/// user's create, not examine: see `Meta::record_name`).
pub fn new_meta(
    name: Option<&str>,
    geom: Arc<Geometry>,
    shared: Arc<Shared>,
    state: Arc<ArrayState>,
    sbs: Vec<Option<Superblock>>,
    bitmap: Option<DiskBitmap>,
    daemon_sleep_ms: u64,
) -> Meta {
    let mut cfg = MetaConfig::default();
    if daemon_sleep_ms != 0 {
        cfg.daemon_sleep_ms = daemon_sleep_ms;
    }
    let mut m = Meta::new(geom, shared, state, sbs, bitmap, cfg, 0);
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        m.set_wall_clock(d.as_secs());
    }
    if let Some(name) = name {
        m.record_name(name);
    }
    m
}

/// What lives on the metadata thread.
pub struct Owned {
    /// Member descriptors, by role (closed last, in the teardown).
    pub descs: Vec<Option<Desc>>,
    /// This thread's channels of the members, by role.
    pub chans: Vec<Option<IoChannel>>,
    pub host: Option<MetaHost>,
    pub tick: Option<Poller>,
    /// The background process running (resync, rebuild, check, repair).
    pub sync: Option<Rc<Driver>>,
    /// Descriptors of members replaced by `bdev_mdraid_add_base_bdev`,
    /// with this thread's channels of them: closed in the teardown
    /// (channels of them may live until then), or once hot-removed and no
    /// array channel holds one (`array::close_removed`).
    pub retired: Vec<(Desc, Option<IoChannel>)>,
    /// RPCs waiting for a state of the metadata path ([`wait_state`]).
    waiters: Vec<Waiter>,
    /// Per role: how many `bdev_mdraid_set_write_mostly` calls it had
    /// (a waiting call whose change a newer one superseded answers).
    pub wm_gen: Vec<Rc<Cell<u64>>>,
    stop: Option<Stop>,
}

/// Something waiting for the metadata path's published state: called
/// with each new state (and once at once), or with None when the
/// metadata path is gone; true when it is done (it answered). It runs
/// inside the borrow of [`Owned`]: it must not touch the array's `owned`.
pub type Waiter = Box<dyn FnMut(Option<&ArrayState>) -> bool>;

impl Owned {
    pub fn new(descs: Vec<Option<Desc>>, chans: Vec<Option<IoChannel>>) -> Owned {
        Owned {
            descs,
            chans,
            host: None,
            tick: None,
            sync: None,
            retired: Vec::new(),
            waiters: Vec::new(),
            wm_gen: Vec::new(),
            stop: None,
        }
    }
}

enum Path {
    Md(Box<Meta>),
    Bare(StandIn),
}

/// A superblock-less array's metadata path: state in memory only.
struct StandIn {
    geom: Arc<Geometry>,
    state: Arc<ArrayState>,
    out: VecDeque<Arc<ArrayState>>,
}

impl StandIn {
    fn request(&mut self, req: MetaRequest) {
        if let MetaRequest::MemberFailed { member, .. } = req {
            let m = member as usize;
            if m >= self.state.members.len() || !self.state.members[m].in_service() {
                return;
            }
            let mut s = (*self.state).clone();
            s.members[m] = MemberState::Faulty;
            s.events += 1;
            s.seq += 1;
            s.offline = s.offline || !survives(&self.geom, s.out_of_service());
            self.state = Arc::new(s);
            self.out.push_back(self.state.clone());
        }
        // Writable from the start and never made clean: nothing else to do.
    }
}

/// The metadata path of one array and its writes in flight.
pub struct MetaHost {
    path: Path,
    start_ms: u64,
    writes: usize,
    /// Writes SPDK had no memory for, retried by the tick.
    retry: VecDeque<SbJob>,
    /// Assembled dirty (or new and not assumed clean) and not resynced
    /// yet: a resync is due.
    resync_pending: bool,
    /// The bitmap daemon's period, for status.
    daemon_sleep_ms: u64,
}

impl MetaHost {
    pub fn md(meta: Meta, resync_pending: bool, daemon_sleep_ms: u64) -> MetaHost {
        MetaHost {
            path: Path::Md(Box::new(meta)),
            start_ms: now_ms(),
            writes: 0,
            retry: VecDeque::new(),
            resync_pending,
            daemon_sleep_ms,
        }
    }

    /// Whether a resync must run (assembled dirty, not resynced yet).
    pub fn resync_pending(&self) -> bool {
        self.resync_pending
    }

    /// Array block a resync starts from.
    pub fn resync_from(&self) -> u64 {
        match &self.path {
            Path::Md(m) => m.resync_from(),
            Path::Bare(_) => 0,
        }
    }

    pub fn resync_progress(&mut self, lba: u64) {
        if let Path::Md(m) = &mut self.path {
            m.resync_progress(lba);
        }
    }

    /// The resync of a dirty array ended: it may be marked clean again.
    pub fn mark_synced(&mut self) {
        self.resync_pending = false;
        if let Path::Md(m) = &mut self.path {
            m.mark_synced();
        }
    }

    pub fn recovery(&self, role: usize) -> Option<RecoveryInfo> {
        match &self.path {
            Path::Md(m) => m.recovery(role),
            Path::Bare(_) => None,
        }
    }

    pub fn recovery_progress(&mut self, role: usize, device: u64, offset: u64) {
        if let Path::Md(m) = &mut self.path {
            m.recovery_progress(role, device, offset);
        }
    }

    /// See [`Meta::adds_pending`].
    pub fn adds_pending(&self) -> u64 {
        match &self.path {
            Path::Md(m) => m.adds_pending(),
            Path::Bare(_) => 0,
        }
    }

    /// See [`Meta::check_add`].
    pub fn check_add(&self, role: usize, dev: &NewMember) -> Result<(), AddError> {
        match &self.path {
            Path::Md(m) => m.check_add(role, dev).map(|_| ()),
            Path::Bare(_) => Err(AddError::Offline),
        }
    }

    pub fn add_member(&mut self, role: usize, dev: NewMember) -> Result<Recovery, AddError> {
        match &mut self.path {
            Path::Md(m) => m.add_member(role, dev),
            Path::Bare(_) => Err(AddError::Offline),
        }
    }

    /// `bdev_mdraid_set_write_mostly`: recorded by the next commit, then
    /// broadcast. An array without superblocks has nowhere to record it.
    pub fn set_write_mostly(&mut self, role: usize, on: bool) -> Result<(), FlagError> {
        match &mut self.path {
            Path::Md(m) => m.set_write_mostly(role, on),
            Path::Bare(_) => Err(FlagError::NoSuperblock),
        }
    }

    pub fn bare(geom: Arc<Geometry>, state: Arc<ArrayState>) -> MetaHost {
        MetaHost {
            path: Path::Bare(StandIn {
                geom,
                state,
                out: VecDeque::new(),
            }),
            start_ms: now_ms(),
            writes: 0,
            retry: VecDeque::new(),
            resync_pending: false,
            daemon_sleep_ms: 0,
        }
    }

    fn request(&mut self, req: MetaRequest) {
        match &mut self.path {
            Path::Md(m) => m.request(req),
            Path::Bare(b) => b.request(req),
        }
    }

    fn released(&mut self, seq: u64) {
        if let Path::Md(m) = &mut self.path {
            m.released(seq);
        }
    }

    fn poll_action(&mut self) -> Option<MetaAction> {
        match &mut self.path {
            Path::Md(m) => m.poll_action(),
            Path::Bare(b) => b.out.pop_front().map(MetaAction::Broadcast),
        }
    }

    /// The newest state (published once its commit is durable).
    pub fn state(&self) -> Arc<ArrayState> {
        match &self.path {
            Path::Md(m) => m.state().clone(),
            Path::Bare(b) => b.state.clone(),
        }
    }

    fn snap(&self) -> Snap {
        match &self.path {
            Path::Md(m) => {
                let s = m.status();
                Snap {
                    events: s.events,
                    blocked: s.blocked,
                    dirty: s.dirty,
                    writable: s.writable,
                    offline: s.offline,
                    bitmap: s.bitmap.map(|b| MdraidBitmapInfo {
                        chunk_kb: (b.chunk_bytes / 1024) as u32,
                        daemon_sleep_ms: self.daemon_sleep_ms as u32,
                        dirty_chunks: b.dirty,
                        total_chunks: b.chunks,
                    }),
                }
            }
            Path::Bare(b) => Snap {
                events: b.state.events,
                blocked: false,
                dirty: true,
                writable: true,
                offline: b.state.offline,
                bitmap: None,
            },
        }
    }

    fn tick(&mut self) {
        if let Path::Md(m) = &mut self.path {
            if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
                m.set_wall_clock(d.as_secs());
            }
            m.tick(now_ms().saturating_sub(self.start_ms));
        }
    }

    fn sb_write_done(&mut self, token: u64, ok: bool) {
        self.writes -= 1;
        if let Path::Md(m) = &mut self.path {
            m.sb_write_done(token, ok);
        }
    }

    /// Superblock writes in flight (or waiting to be retried).
    pub fn sb_writes(&self) -> usize {
        self.writes
    }

    fn shutdown(&mut self) {
        if let Path::Md(m) = &mut self.path {
            m.shutdown();
        }
    }

    /// See [`Meta::abandon`]: whether it gave up.
    pub fn abandon(&mut self) -> bool {
        match &mut self.path {
            Path::Md(m) => m.abandon(),
            Path::Bare(_) => false,
        }
    }

    /// Nothing more to wait for before the array may go.
    fn stopped(&self) -> bool {
        match &self.path {
            Path::Bare(_) => true,
            // Marked clean, with the resync's checkpoint when one is due
            // (or offline: nothing can be).
            Path::Md(m) => m.stop_done(),
        }
    }
}

/// Start the metadata path of a registered io_device (on the metadata
/// thread): its tick poller, and what it asks for at once.
pub fn install(array: &Arc<Array>, host: MetaHost) {
    let a = array.clone();
    let tick = Poller::new(c"mdraid_meta", 10_000, move || tick(&a));
    if tick.is_none() {
        log_error!("mdraid {}: no poller for the metadata path", array.name);
    }
    array.owned.with(|o| {
        o.tick = tick;
        o.host = Some(host);
        let seq = o.host.as_ref().map(|h| h.state());
        if let Some(s) = seq {
            report_vacant(array, o, &s);
        }
        pump(array, o);
    });
}

/// Run `f` on the metadata host (on the metadata thread), then carry out
/// what it asks for. Nothing when the host is gone (the array stops).
pub fn with_host<R>(array: &Arc<Array>, f: impl FnOnce(&mut MetaHost) -> R) -> Option<R> {
    array.owned.with(|o| {
        let r = o.host.as_mut().map(f);
        pump(array, o);
        r
    })
}

/// A channel's request.
pub fn request(array: &Arc<Array>, req: MetaRequest) {
    array.owned.with(|o| {
        if let Some(h) = o.host.as_mut() {
            h.request(req);
            pump(array, o);
        }
    })
}

/// Every channel applied the state of publication `seq` (the first phase
/// of its broadcast completed).
pub fn released(array: &Arc<Array>, seq: u64) {
    array.owned.with(|o| {
        if let Some(h) = o.host.as_mut() {
            h.released(seq);
            pump(array, o);
        }
    })
}

/// Channel index `index` has no channel any more (it has no write in
/// flight, whatever the state).
pub fn vacated(array: &Arc<Array>, index: usize) {
    array.owned.with(|o| {
        let Some(h) = o.host.as_mut() else { return };
        let s = h.state();
        if !s.writable && array.slots_in_use() & 1 << index == 0 {
            h.request(MetaRequest::WritesIdle {
                channel: index as u16,
                seq: s.seq,
            });
            pump(array, o);
        }
    })
}

/// In a not-writable state, the vacant channel indices have no write in
/// flight: say so for them.
fn report_vacant(array: &Arc<Array>, o: &mut Owned, s: &ArrayState) {
    if s.writable {
        return;
    }
    let Some(h) = o.host.as_mut() else { return };
    let used = array.slots_in_use();
    for i in 0..MAX_CHANNELS {
        if used & 1 << i == 0 {
            h.request(MetaRequest::WritesIdle {
                channel: i as u16,
                seq: s.seq,
            });
        }
    }
}

/// Carry out what the metadata path asks for.
fn pump(array: &Arc<Array>, o: &mut Owned) {
    while let Some(a) = o.host.as_mut().and_then(|h| h.poll_action()) {
        match a {
            MetaAction::WriteSb {
                member,
                token,
                offset,
                data,
            } => start_write(array, o, member, token, offset, data),
            MetaAction::Broadcast(s) => {
                log_failures(array, &s);
                broadcast(array, s.clone());
                report_vacant(array, o, &s);
            }
        }
    }
    if let Some(h) = o.host.as_ref() {
        *array.snap.lock().unwrap_or_else(|e| e.into_inner()) = h.snap();
        if !o.waiters.is_empty() {
            let s = h.state();
            o.waiters.retain_mut(|w| !w(Some(&s)));
        }
    }
}

/// Log what state `s` records failed for the first time
/// ([`mdraid_rpc::results::failure_lines`]).
fn log_failures(array: &Array, s: &ArrayState) {
    // Looked up only for a member that failed.
    let name_of = |m: usize| Some(array.members().get(m)?.as_ref()?.name.clone());
    for l in mdraid_rpc::results::failure_lines(&array.name, &array.state(), s, name_of) {
        log_warn!("mdraid: {l}");
    }
}

/// Wait (on the metadata thread) for the metadata path's state: `w` is
/// called with the state now, then with each new one, until it says it
/// is done; with None if the metadata path goes first (the array stops).
pub fn wait_state(array: &Arc<Array>, mut w: Waiter) {
    array.owned.with(|o| match o.host.as_ref() {
        None => {
            w(None);
        }
        Some(h) => {
            if !w(Some(&h.state())) {
                o.waiters.push(w);
            }
        }
    })
}

/// The metadata path is gone: whoever waits for it hears so.
fn drop_waiters(o: &mut Owned) {
    for mut w in std::mem::take(&mut o.waiters) {
        w(None);
    }
}

/// What the tick does about background processes, decided under the
/// borrow of `Owned` and carried out after it (starting a driver gets a
/// channel of the array, which must not run inside that borrow).
enum SyncStep {
    None,
    Resume(Rc<Driver>),
    Finished(Rc<Driver>),
    Resync(u64),
    Rebuild(usize, RecoveryInfo),
}

fn sync_step(array: &Arc<Array>, o: &mut Owned) -> SyncStep {
    if let Some(d) = o.sync.clone() {
        if d.finished() {
            o.sync = None;
            return SyncStep::Finished(d);
        }
        return SyncStep::Resume(d);
    }
    let Some(h) = o.host.as_ref() else {
        return SyncStep::None;
    };
    // (Not again once it ran to its end: `select` knows.)
    let resync = h.resync_pending().then(|| h.resync_from());
    match array
        .sync
        .select(array.geom.members(), resync, |m| h.recovery(m))
    {
        Some(Start::Resync { from }) => SyncStep::Resync(from),
        Some(Start::Rebuild { member, info }) => SyncStep::Rebuild(member, info),
        None => SyncStep::None,
    }
}

/// Install a driver just started and let it submit.
pub fn run_driver(array: &Arc<Array>, d: Option<Rc<Driver>>) {
    let Some(d) = d else { return };
    array.owned.with(|o| o.sync = Some(d.clone()));
    d.next();
}

fn tick(array: &Arc<Array>) -> bool {
    let step = array.owned.with(|o| sync_step(array, o));
    match step {
        SyncStep::None => {}
        SyncStep::Resume(d) => d.next(),
        SyncStep::Finished(d) => d.close(),
        SyncStep::Resync(from) => run_driver(array, crate::sync::start_resync(array, from)),
        SyncStep::Rebuild(m, info) => run_driver(array, crate::sync::start_rebuild(array, m, info)),
    }
    let next = array.owned.with(|o| {
        if let Some(h) = o.host.as_mut() {
            h.tick();
        }
        let retry: Vec<SbJob> = o
            .host
            .as_mut()
            .map(|h| h.retry.drain(..).collect())
            .unwrap_or_default();
        for j in retry {
            issue(array, o, j);
        }
        pump(array, o);
        crate::array::close_removed(array, o);
        check_stop(array, o)
    });
    if next {
        let a = array.clone();
        // Not from inside the tick poller: the teardown drops it.
        if array.meta_thread.send(move || teardown(&a)).is_err() {
            log_error!("mdraid {}: cannot queue the teardown; retrying", array.name);
            array.owned.with(|o| {
                if let Some(s) = o.stop.as_mut() {
                    s.phase = Phase::Quiesce;
                }
            });
        }
    }
    false
}

// ------------------------------------------------------------ superblock writes

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    FlushBefore,
    Write,
    FlushAfter,
}

struct SbJob {
    member: u16,
    token: u64,
    lba: u64,
    blocks: u64,
    step: Step,
    data: Vec<u8>,
    buf: Option<DmaBuf>,
}

fn start_write(
    array: &Arc<Array>,
    o: &mut Owned,
    member: u16,
    token: u64,
    offset: u64,
    data: Vec<u8>,
) {
    let Some(h) = o.host.as_mut() else { return };
    h.writes += 1;
    let m = member as usize;
    let bs = array.geom.block_size() as u64;
    let ok = o.descs.get(m).is_some_and(|d| d.is_some())
        && o.chans.get(m).is_some_and(|c| c.is_some())
        && offset.is_multiple_of(bs)
        && !data.is_empty()
        && (data.len() as u64).is_multiple_of(bs);
    if !ok {
        h.sb_write_done(token, false);
        return;
    }
    let job = SbJob {
        member,
        token,
        lba: offset / bs,
        blocks: data.len() as u64 / bs,
        step: Step::FlushBefore,
        data,
        buf: None,
    };
    issue(array, o, job);
}

/// Submit the job's current step (skipping flushes a member does not
/// need); completions continue in `step_done`.
fn issue(array: &Arc<Array>, o: &mut Owned, mut job: SbJob) {
    let m = job.member as usize;
    let flush = array.members()[m].as_ref().is_some_and(|x| x.flush);
    if !flush && job.step != Step::Write {
        if job.step == Step::FlushAfter {
            if let Some(h) = o.host.as_mut() {
                h.sb_write_done(job.token, true);
            }
            return;
        }
        job.step = Step::Write;
    }
    let buf = match job.buf.take() {
        Some(b) => b,
        None => match DmaBuf::from_slice(&job.data, 4096) {
            Some(b) => b,
            None => {
                if let Some(h) = o.host.as_mut() {
                    h.retry.push_back(job);
                }
                return;
            }
        },
    };
    let (Some(desc), Some(ch)) = (o.descs[m].as_ref(), o.chans[m].as_ref()) else {
        if let Some(h) = o.host.as_mut() {
            h.sb_write_done(job.token, false);
        }
        return;
    };
    let (op, lba, blocks) = match job.step {
        Step::Write => (BdevOp::Write, job.lba, job.blocks),
        _ => (BdevOp::Flush, 0, desc.bdev().num_blocks()),
    };
    let a = array.clone();
    let (member, token, jlba, jblocks, step) =
        (job.member, job.token, job.lba, job.blocks, job.step);
    let data = std::mem::take(&mut job.data);
    let res = io_once(desc, ch, op, lba, blocks, buf, move |ok, buf| {
        step_done(
            &a,
            SbJob {
                member,
                token,
                lba: jlba,
                blocks: jblocks,
                step,
                data,
                buf: Some(buf),
            },
            ok,
        )
    });
    match res {
        Ok(()) => {}
        Err((rc, buf)) => {
            if let Some(h) = o.host.as_mut() {
                if rc == -ENOMEM {
                    // R2: retried by the tick, never a failure. (The data
                    // went into the closure; the buffer holds it.)
                    job.data = buf.as_ref().to_vec();
                    job.buf = Some(buf);
                    h.retry.push_back(job);
                } else {
                    log_warn!(
                        "mdraid {}: superblock write to role {m} refused ({rc})",
                        array.name
                    );
                    h.sb_write_done(job.token, false);
                }
            }
        }
    }
}

fn step_done(array: &Arc<Array>, mut job: SbJob, ok: bool) {
    array.owned.with(|o| {
        if o.host.is_none() {
            return;
        }
        if !ok {
            log_warn!(
                "mdraid {}: superblock {} on role {} failed",
                array.name,
                if job.step == Step::Write {
                    "write"
                } else {
                    "flush"
                },
                job.member
            );
            o.host.as_mut().unwrap().sb_write_done(job.token, false);
        } else if job.step == Step::FlushAfter {
            o.host.as_mut().unwrap().sb_write_done(job.token, true);
        } else {
            job.step = if job.step == Step::FlushBefore {
                Step::Write
            } else {
                Step::FlushAfter
            };
            if job.data.is_empty() {
                job.data = job
                    .buf
                    .as_ref()
                    .map(|b| b.as_ref().to_vec())
                    .unwrap_or_default();
            }
            issue(array, o, job);
        }
        pump(array, o);
    })
}

/// A callback run once, shared by the completions that may run it.
type Once = Rc<RefCell<Option<Box<dyn FnOnce()>>>>;

/// Zero `bytes` of md metadata from the superblock on (byte 4096: the
/// superblock's 4 KiB, then the bitmap area) on every given member, then
/// flush it; `done` runs once all ended. Returns how many were submitted
/// (`done` is called only if that is not 0, and never before this
/// returns).
pub fn wipe_all(
    targets: &[(&Desc, &IoChannel)],
    bytes: usize,
    done: impl FnOnce() + 'static,
) -> usize {
    let left = Rc::new(Cell::new(0usize));
    let done: Once = Rc::new(RefCell::new(Some(Box::new(done))));
    let mut n = 0;
    for (d, ch) in targets {
        let bs = u64::from(d.bdev().block_size());
        // Whole blocks, within the device.
        let len = ((bytes.max(SB_BLOCK_BYTES) as u64).div_ceil(bs) * bs)
            .min((d.bdev().num_blocks() * bs).saturating_sub(SB_OFFSET_BYTES) / bs * bs);
        if bs > SB_BLOCK_BYTES as u64 || len < SB_BLOCK_BYTES as u64 {
            continue;
        }
        let Some(buf) = DmaBuf::zeroed(len as usize, 4096) else {
            continue;
        };
        let (l2, d2) = (left.clone(), done.clone());
        let finish = move || {
            l2.set(l2.get() - 1);
            if l2.get() == 0 {
                if let Some(f) = d2.borrow_mut().take() {
                    f()
                }
            }
        };
        let nb = d.bdev().num_blocks();
        // The flush is issued from the write's completion, with the
        // descriptor and channel found again through raw pointers: both
        // outlive the wipe (the caller keeps them until `done`).
        let (desc_raw, ch_raw) = (d.raw(), ch.raw());
        let r = io_once(
            d,
            ch,
            BdevOp::Write,
            SB_OFFSET_BYTES / bs,
            len / bs,
            buf,
            move |_ok, buf| {
                flush_raw(desc_raw, ch_raw, nb, buf, finish);
            },
        );
        if r.is_ok() {
            n += 1;
        }
    }
    left.set(n);
    n
}

/// Flush a member after a wipe; `finish` runs when it ends (or at once if
/// it cannot be submitted).
fn flush_raw(
    desc: *mut sys::spdk_bdev_desc,
    ch: *mut sys::spdk_io_channel,
    blocks: u64,
    buf: DmaBuf,
    finish: impl FnOnce() + 'static,
) {
    struct Ctx {
        _buf: DmaBuf,
        finish: Box<dyn FnOnce()>,
    }
    unsafe extern "C" fn cb(io: *mut sys::spdk_bdev_io, _ok: bool, arg: *mut c_void) {
        fatal_guard("a wipe flush completion", || {
            // SAFETY: io is ours to free; arg is the Ctx box, handed back once.
            let ctx = unsafe {
                sys::spdk_bdev_free_io(io);
                Box::from_raw(arg as *mut Ctx)
            };
            (ctx.finish)()
        })
    }
    let ctx = Box::into_raw(Box::new(Ctx {
        _buf: buf,
        finish: Box::new(finish),
    }));
    // SAFETY: desc/ch are live on this thread (the wipe's caller keeps
    // them until every wipe ended); cb frees io and the ctx box.
    let rc = unsafe { sys::spdk_bdev_flush_blocks(desc, ch, 0, blocks, Some(cb), ctx.cast()) };
    if rc != 0 {
        // SAFETY: not submitted: the box is ours again.
        let ctx = unsafe { Box::from_raw(ctx) };
        (ctx.finish)()
    }
}

// ------------------------------------------------------------ stopping

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The metadata path marks the array clean.
    Drain,
    /// Superblocks being wiped.
    Wipe,
    /// Waiting for broadcasts to finish.
    Quiesce,
    /// The teardown message is queued.
    Teardown,
}

struct Stop {
    /// The bdev's reference to the array (from `destruct`), dropped after
    /// `spdk_bdev_destruct_done`. None when a create failed before the bdev
    /// was registered.
    ctxt: Option<Arc<Array>>,
    deadline_ms: u64,
    phase: Phase,
    /// Bytes of md metadata to zero on every member, from its superblock on.
    wipe: Option<usize>,
    /// Run after the io_device is unregistered and the members closed
    /// (a failed create answers its RPC here).
    on_done: Option<Box<dyn FnOnce()>>,
}

/// `destruct`: stop the array (see the module docs).
pub fn begin_shutdown(array: Arc<Array>) {
    // No new window or process; the teardown waits for the driver.
    array.sync.stop();
    // clear_sb zeroes the superblock, as mdadm --zero-superblock does.
    let wipe =
        (array.clear_sb.load(Ordering::Acquire) && array.info.superblock).then_some(SB_BLOCK_BYTES);
    let a = array.clone();
    a.owned.with(|o| {
        if let Some(h) = o.host.as_mut() {
            h.shutdown();
        }
        o.stop = Some(Stop {
            ctxt: Some(array),
            deadline_ms: now_ms() + STOP_TIMEOUT_MS,
            phase: Phase::Drain,
            wipe,
            on_done: None,
        });
        pump(&a, o);
    });
}

/// A create that registered the io_device but not the bdev: undo it
/// (zeroing the `wipe` bytes of metadata it wrote), then run `on_done`.
pub fn abort_create(array: &Arc<Array>, wipe: Option<usize>, on_done: impl FnOnce() + 'static) {
    array.owned.with(|o| {
        o.stop = Some(Stop {
            ctxt: None,
            deadline_ms: now_ms(),
            phase: Phase::Drain,
            wipe,
            on_done: Some(Box::new(on_done)),
        });
    });
}

/// Advance a stop; true when the teardown may run.
fn check_stop(array: &Arc<Array>, o: &mut Owned) -> bool {
    let now = now_ms();
    let Some(stop) = o.stop.as_ref() else {
        return false;
    };
    let (phase, deadline, wipe) = (stop.phase, stop.deadline_ms, stop.wipe);
    match phase {
        Phase::Drain => {
            // Windows in flight end first (the tick retires the driver).
            if o.sync.is_some() && now < deadline {
                return false;
            }
            let stopped = o.host.as_ref().is_none_or(|h| h.stopped());
            if !stopped && now < deadline {
                return false;
            }
            if !stopped {
                log_warn!(
                    "mdraid {}: not marked clean within {} ms; stopping anyway",
                    array.name,
                    STOP_TIMEOUT_MS
                );
            }
            // The metadata path is done: nothing may write superblocks now.
            o.host = None;
            drop_waiters(o);
            if let Some(bytes) = wipe {
                let a = array.clone();
                let targets: Vec<(&Desc, &IoChannel)> = o
                    .descs
                    .iter()
                    .zip(&o.chans)
                    .filter_map(|(d, c)| Some((d.as_ref()?, c.as_ref()?)))
                    .collect();
                let n = wipe_all(&targets, bytes, move || {
                    a.owned.with(|o| {
                        if let Some(s) = o.stop.as_mut() {
                            s.phase = Phase::Quiesce;
                        }
                    })
                });
                o.stop.as_mut().unwrap().phase = if n == 0 { Phase::Quiesce } else { Phase::Wipe };
            } else {
                o.stop.as_mut().unwrap().phase = Phase::Quiesce;
            }
            false
        }
        Phase::Wipe | Phase::Teardown => false,
        Phase::Quiesce => {
            if array.broadcasts.load(Ordering::Acquire) != 0 {
                return false;
            }
            o.stop.as_mut().unwrap().phase = Phase::Teardown;
            true
        }
    }
}

/// Unregister the io_device (every channel goes first), then close the
/// members and finish `destruct`.
fn teardown(array: &Arc<Array>) {
    let drv = array.owned.with(|o| {
        o.tick = None;
        o.host = None;
        drop_waiters(o);
        o.chans.clear();
        for (_, c) in o.retired.iter_mut() {
            *c = None;
        }
        o.sync.take()
    });
    if let Some(d) = drv {
        d.close();
    }
    unsafe extern "C" fn unregistered(io_device: *mut c_void) {
        fatal_guard("io_device unregister", || {
            // SAFETY: the reference `teardown` leaked for this callback.
            let a = unsafe { Arc::from_raw(io_device as *const Array) };
            finish_teardown(&a);
        })
    }
    // A reference for `unregistered`, which gets only the key.
    let key = Arc::into_raw(array.clone()) as *mut c_void;
    // SAFETY: registered by this thread (the metadata thread) in the
    // create, with this key; `unregistered` runs once every channel is
    // destroyed and takes the reference back.
    unsafe { sys::spdk_io_device_unregister(key, Some(unregistered)) };
}

fn finish_teardown(array: &Array) {
    let stop = array.owned.with(|o| {
        // Members: release the claims, close the descriptors.
        o.descs.clear();
        o.retired.clear();
        o.stop.take()
    });
    crate::module::remove(&array.name);
    log_notice!("mdraid {}: stopped", array.name);
    let Some(stop) = stop else { return };
    if let Some(ctxt) = stop.ctxt {
        // SAFETY: the bdev's destruct returned 1 (asynchronous); this is
        // its completion. SPDK does not touch the bdev after it.
        unsafe { sys::spdk_bdev_destruct_done(array.bdev_ptr(), 0) };
        drop(ctxt);
    }
    if let Some(f) = stop.on_done {
        f()
    }
}
