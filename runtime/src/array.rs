//! The array host: drives one `bdev_raid` engine channel per reactor.
//!
//! For each array, every reactor holds (as a reactor-local object) an
//! `ArrayChannel`: the engine's [`Channel`] plus that reactor's channels of
//! the member devices, and a poller that moves engine actions to member
//! channels and member completions back (`child_done`). A member that is
//! out of resources (`NoMem` at submit or as a completion) is reported to
//! the engine as `ChildStatus::NoMem`; the engine resubmits it from its
//! `poll`, which the poller calls on its next turn (R2: never a failure).
//!
//! Parent I/O is submitted on the reactor that will complete it
//! ([`Array::submit`] / [`ArrayChannelRef::submit`]) with an [`IoDone`]
//! callback object; completions are delivered from the poller, outside any
//! borrow of the channel, so a callback may submit again. On this path no
//! lock is taken and nothing is allocated: parent and child slots, token
//! tables and queues are sized at creation, and callbacks are shared
//! `Rc`s. (A member failure sends one boxed message to the metadata
//! reactor; that is the failure path.)
//!
//! Member failures (`Action::Meta`) go by message to the array's metadata
//! reactor, where the array's [`MetaPath`] runs (see [`crate::meta`]). Its
//! broadcasts are carried out in two phases with
//! [`RuntimeHandle::for_each`]: `apply_state` on the channel of every
//! reactor, then — only when all have applied it — `release` on every one.
//! Its member writes are submitted through the metadata reactor's member
//! channels.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bdev_raid::bitmap::{Bitmap, BitmapGeom};
use bdev_raid::channel::{
    Action, Busy, Channel, ChannelConfig, ChannelStats, ChildOp, ChildStatus, ChildToken, IoStatus,
    IoType, MemberStats, MetaRequest, ParentIo,
};
use bdev_raid::layout::{Geometry, GeometryError, GeometryParams, Level};
use bdev_raid::meta::{FlagError, NewMember, Recovery};
use bdev_raid::state::{survives, ArrayState, MemberState, Shared};
use bdev_raid::sync::{self, Facts, Note, Output, Report, Start, Step, SyncStatus};
pub use bdev_raid::sync::{ProcessOptions, SyncKind, SyncProgress};

use crate::buf::{AlignedBuf, DevBuf};
use crate::dev::{DevChannel, DevError, DevIo, DevOp, DevStatus, Device};
use crate::meta::{MetaInit, MetaOutput, MetaPath, MetaWrite, StandInMeta};
use crate::reactor::{next_object_id, Poller, PollerId, Reactor, RuntimeError, RuntimeHandle};

/// Completion of a parent I/O, called on the reactor it was submitted on.
pub trait IoDone {
    fn io_done(&self, r: &mut Reactor, tag: u64, status: IoStatus, buf: Option<AlignedBuf>);
}

/// How to build an array.
pub struct ArrayParams {
    pub name: String,
    pub level: Level,
    /// md layout number (`None`: md's default for the level).
    pub layout: Option<u32>,
    pub strip_size_kb: u32,
    /// Members in role order; `None` for a missing member.
    pub members: Vec<Option<Arc<dyn Device>>>,
    /// Where the data area starts on every member, in member blocks (md's
    /// `data_offset`; 0 without a superblock).
    pub data_offset_blocks: u64,
    /// Blocks of each member's data area the array uses (`None`: the
    /// smallest member's blocks past `data_offset_blocks`).
    pub member_data_blocks: Option<u64>,
    pub channel: ChannelConfig,
    /// Reactor that runs the metadata path.
    pub meta_reactor: usize,
    /// Initial state (`None`: `ArrayState::new_in_sync`, absent members
    /// missing; not writable, so the first write asks the metadata path to
    /// mark the array dirty).
    pub state: Option<ArrayState>,
    /// Chunks of the write-intent bitmap, when the array has one (its
    /// metadata path must then be built with the bitmap read or created).
    pub bitmap: Option<BitmapGeom>,
    /// Window and bandwidth of resyncs and rebuilds.
    pub process: ProcessOptions,
}

impl ArrayParams {
    pub fn new(
        name: impl Into<String>,
        level: Level,
        strip_size_kb: u32,
        members: Vec<Arc<dyn Device>>,
    ) -> ArrayParams {
        ArrayParams {
            name: name.into(),
            level,
            layout: None,
            strip_size_kb,
            members: members.into_iter().map(Some).collect(),
            data_offset_blocks: 0,
            member_data_blocks: None,
            channel: ChannelConfig::default(),
            meta_reactor: 0,
            state: None,
            bitmap: None,
            process: ProcessOptions::default(),
        }
    }
}

/// Why an array could not be created or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ArrayError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Geometry(#[from] GeometryError),
    #[error("member {member}: {err}")]
    Device { member: usize, err: DevError },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("array {0} still has I/O in flight after {1:?}")]
    Timeout(String, Duration),
}

/// Why [`Array::remove_member`] refused, or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("role {0} is not a role of this array")]
    Role(usize),
    #[error("the array is offline")]
    Offline,
    /// md refuses to fail the last device holding some of the data.
    #[error("it holds data no other member has: removing it would take the array offline")]
    LastCopy,
    #[error("the metadata path is not running")]
    NoMeta,
    /// R3: the superblocks could not be written yet; the failure stays
    /// pending (the channels no longer use the member) and is committed
    /// when they can be.
    #[error("its failure was not committed within {0:?}: the array is blocked (its superblocks cannot be written)")]
    NotCommitted(Duration),
    /// Committed, but a channel still had I/O on the member: it is not
    /// released yet (calling again releases it).
    #[error("its failure is committed, but a channel still has I/O on it after {0:?}")]
    Busy(Duration),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// An array, shared by every thread. Its per-reactor channels live on the
/// reactors.
pub struct Array {
    id: u64,
    meta_key: u64,
    name: String,
    geom: Arc<Geometry>,
    members: Mutex<Vec<Option<Arc<dyn Device>>>>,
    data_offset: u64,
    meta_reactor: usize,
    rt: RuntimeHandle,
    /// Newest committed state, for status queries (the I/O path never
    /// looks at it).
    state: Mutex<Arc<ArrayState>>,
    /// `stop` began: the channels refuse new I/O, background processes end.
    closing: AtomicBool,
    stopped: AtomicBool,
    /// What the channels share (locks, bitmap words).
    shared: Arc<Shared>,
    /// The background process slot (what runs, its progress, md's
    /// mismatch_cnt, `sync_action idle/frozen`).
    sync: SyncStatus,
    /// Window and bandwidth of background processes.
    process: Mutex<ProcessOptions>,
}

/// Token bit of metadata writes (child tokens are slot indices).
const META_TOKEN: u64 = 1 << 63;

impl Array {
    /// Create the array with the in-memory metadata stand-in.
    pub fn create(rt: &RuntimeHandle, p: ArrayParams) -> Result<Arc<Array>, ArrayError> {
        Array::create_with_meta(rt, p, |init| {
            Box::new(StandInMeta::new(init.geom, init.state)) as Box<dyn MetaPath + Send>
        })
    }

    /// Create the array; `meta` builds its metadata path (see [`MetaInit`]).
    /// Blocks until every reactor has its channel; call it from a
    /// non-reactor thread. On error nothing is left behind.
    pub fn create_with_meta(
        rt: &RuntimeHandle,
        p: ArrayParams,
        meta: impl FnOnce(MetaInit) -> Box<dyn MetaPath + Send>,
    ) -> Result<Arc<Array>, ArrayError> {
        if p.name.is_empty() {
            return Err(ArrayError::Invalid("name must not be empty".into()));
        }
        if p.meta_reactor >= rt.reactors() {
            return Err(ArrayError::Invalid(format!(
                "meta_reactor {} is not a reactor (have {})",
                p.meta_reactor,
                rt.reactors()
            )));
        }
        let present: Vec<&Arc<dyn Device>> = p.members.iter().flatten().collect();
        let Some(first) = present.first() else {
            return Err(ArrayError::Invalid("no member present".into()));
        };
        let bs = first.block_size();
        if let Some(d) = present.iter().find(|d| d.block_size() != bs) {
            return Err(ArrayError::Invalid(format!(
                "member {} has block size {}, {} has {bs}",
                d.name(),
                d.block_size(),
                first.name()
            )));
        }
        let smallest = present.iter().map(|d| d.num_blocks()).min().unwrap_or(0);
        if smallest <= p.data_offset_blocks {
            return Err(ArrayError::Invalid(format!(
                "members have {smallest} blocks, not more than the data offset {}",
                p.data_offset_blocks
            )));
        }
        let data_blocks = p
            .member_data_blocks
            .unwrap_or(smallest - p.data_offset_blocks);
        if data_blocks == 0 || data_blocks > smallest - p.data_offset_blocks {
            return Err(ArrayError::Invalid(format!(
                "member_data_blocks {data_blocks} does not fit members of {smallest} blocks"
            )));
        }
        let geom = Arc::new(Geometry::new(&GeometryParams {
            level: p.level,
            layout: p.layout,
            strip_size_kb: p.strip_size_kb,
            block_size: bs,
            member_blocks: vec![data_blocks; p.members.len()],
        })?);
        let state = match p.state {
            Some(s) => {
                if s.members.len() != p.members.len() {
                    return Err(ArrayError::Invalid(format!(
                        "state has {} members, array {}",
                        s.members.len(),
                        p.members.len()
                    )));
                }
                s
            }
            None => {
                let mut s = ArrayState::new_in_sync(p.members.len());
                for (i, m) in p.members.iter().enumerate() {
                    if m.is_none() {
                        s.members[i] = MemberState::Missing;
                    }
                }
                s.offline = !survives(&geom, s.out_of_service());
                s
            }
        };
        let state = Arc::new(state);
        let array = Arc::new(Array {
            id: next_object_id(),
            meta_key: next_object_id(),
            name: p.name,
            geom: geom.clone(),
            members: Mutex::new(p.members),
            data_offset: p.data_offset_blocks,
            meta_reactor: p.meta_reactor,
            rt: rt.clone(),
            state: Mutex::new(state.clone()),
            closing: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            shared: Arc::new(Shared::with_bitmap(
                rt.reactors(),
                p.bitmap.map(Bitmap::new),
            )),
            sync: SyncStatus::default(),
            process: Mutex::new(p.process),
        });
        // One engine channel per reactor; channel index = reactor index.
        let shared = array.shared.clone();
        let mut installed = Vec::new();
        for n in 0..rt.reactors() {
            let (a, s, l, cfg) = (array.clone(), state.clone(), shared.clone(), p.channel);
            let res = rt
                .call(n, move |r| install_channel(r, &a, s, l, cfg))
                .map_err(ArrayError::from)
                .and_then(|x| x);
            match res {
                Ok(()) => installed.push(n),
                Err(e) => {
                    for n in installed {
                        let a = array.clone();
                        let _ = rt.call(n, move |r| uninstall_channel(r, &a));
                    }
                    return Err(e);
                }
            }
        }
        let path = meta(MetaInit {
            geom,
            shared,
            state,
        });
        let a = array.clone();
        if let Err(e) = rt.call(array.meta_reactor, move |r| install_meta(r, a, path)) {
            for n in installed {
                let a = array.clone();
                let _ = rt.call(n, move |r| uninstall_channel(r, &a));
            }
            return Err(e.into());
        }
        Ok(array)
    }

    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn geometry(&self) -> &Arc<Geometry> {
        &self.geom
    }
    /// The device of each role.
    pub fn members(&self) -> Vec<Option<Arc<dyn Device>>> {
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub fn block_size(&self) -> u32 {
        self.geom.block_size()
    }
    pub fn num_blocks(&self) -> u64 {
        self.geom.array_blocks()
    }
    pub fn meta_reactor(&self) -> usize {
        self.meta_reactor
    }
    pub fn data_offset_blocks(&self) -> u64 {
        self.data_offset
    }
    /// Newest state the metadata path has broadcast.
    pub fn state(&self) -> Arc<ArrayState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// This reactor's channel of the array (cache it: the lookup is a hash
    /// map probe).
    pub fn channel(&self, r: &Reactor) -> Option<ArrayChannelRef> {
        r.local::<ArrayLocal>(self.id).map(ArrayChannelRef)
    }

    /// Submit a parent I/O on reactor `r`; `done` is called on `r` when it
    /// ends. `Err(Busy)`: every parent slot and the backlog are full.
    pub fn submit(
        &self,
        r: &mut Reactor,
        io: ParentIo<AlignedBuf>,
        done: &Rc<dyn IoDone>,
    ) -> Result<(), Busy<AlignedBuf>> {
        match self.channel(r) {
            Some(ch) => ch.submit(r, io, done),
            None => Err(Busy(io)),
        }
    }

    /// Resync after an unclean shutdown: the chunks the bitmap marked at
    /// assembly, or the whole array without one, in windows of
    /// `window_blocks`, one at a time, through the metadata reactor's
    /// channel beside user I/O; when the last one ends the metadata path may
    /// mark the array clean. Rebuilds wait for it. Progress is
    /// [`Array::sync_progress`].
    pub fn start_resync(self: &Arc<Self>, window_blocks: u64) {
        if !self.sync.claim(SyncKind::Resync, 0) {
            tracing::warn!("array {}: a background process runs; no resync", self.name);
            return;
        }
        let a = self.clone();
        self.rt.send(self.meta_reactor, move |r| {
            // Where an orderly stop left a resync, if it did.
            let from = r
                .local::<RefCell<MetaHost>>(a.meta_key)
                .map_or(0, |h| h.borrow().path.resync_from());
            run_resync(r, &a, window_blocks, from);
        });
    }

    /// The background process running, if any.
    pub fn sync_progress(&self) -> Option<SyncProgress> {
        self.sync.progress()
    }

    /// md's `sync_action`: start a check, repair or resync pass over the
    /// whole array (`Err` names what runs already), or (`None`) stop the
    /// pass running; `freeze` also holds back rebuilds until the next call.
    pub fn sync_action(self: &Arc<Self>, op: Option<IoType>, freeze: bool) -> Result<(), String> {
        if !self
            .sync
            .sync_action(op, freeze, self.geom.array_blocks())?
        {
            return Ok(());
        }
        let (a, op) = (self.clone(), op.unwrap_or(IoType::Resync));
        let window = self.process_options().window_blocks(&self.geom);
        self.rt.send(self.meta_reactor, move |r| {
            let base = a.channel(r).map_or(0, |c| c.stats().mismatch_blocks);
            let drv = sync::Driver::pass(&a.geom, &a.shared, op, window, base, 0);
            start_driver(r, &a, drv);
        });
        Ok(())
    }

    /// `sync_action frozen` holds back background processes.
    pub fn frozen(&self) -> bool {
        self.sync.frozen()
    }

    /// Sectors the last check or repair found disagreeing.
    pub fn mismatch_cnt(&self) -> Option<u64> {
        self.sync.mismatch_cnt()
    }

    /// Change the window and bandwidth of background processes (a running
    /// one picks the bandwidth up at its next window).
    pub fn set_process_options(&self, o: ProcessOptions) {
        *self.process.lock().unwrap_or_else(|e| e.into_inner()) = o;
    }

    fn process_options(&self) -> ProcessOptions {
        *self.process.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bring `dev` into role `role` (faulty or missing): if it is another
    /// device than the role's, every reactor's channel of it is replaced
    /// first (the old one must have nothing in flight). Then the metadata
    /// path records it recovering; the rebuild starts by itself once every
    /// channel has that state. Call from a non-reactor thread.
    pub fn add_member(
        self: &Arc<Self>,
        role: usize,
        dev: Arc<dyn Device>,
        nm: NewMember,
    ) -> Result<Recovery, String> {
        if role >= self.geom.members() {
            return Err(format!("role {role} is not a role of this array"));
        }
        let same = self.members()[role]
            .as_ref()
            .is_some_and(|d| Arc::ptr_eq(d, &dev));
        // Refused before the swap, so a refused add leaves the role as it was.
        let key = self.meta_key;
        let nm2 = nm.clone();
        self.rt
            .call(self.meta_reactor, move |r| {
                let Some(h) = r.local::<RefCell<MetaHost>>(key) else {
                    return Err("the metadata path is not running".to_string());
                };
                let res = h.borrow().path.check_add(role, &nm2);
                res.map_err(|e| e.to_string())
            })
            .map_err(|e| e.to_string())??;
        if !same {
            for n in 0..self.rt.reactors() {
                let (a, d) = (self.clone(), dev.clone());
                let r = self
                    .rt
                    .call(n, move |r| {
                        let Some(l) = r.local::<ArrayLocal>(a.id) else {
                            return Err("array not installed".to_string());
                        };
                        let busy = l.ch.borrow().members[role]
                            .as_ref()
                            .is_some_and(|c| c.outstanding() != 0);
                        if busy {
                            return Err(format!(
                                "the device it replaces in role {role} still has I/O in flight; try again"
                            ));
                        }
                        let c = d.create_channel(r).map_err(|e| e.to_string())?;
                        l.ch.borrow_mut().members[role] = Some(c);
                        Ok(())
                    })
                    .map_err(|e| e.to_string())?;
                r?;
            }
            self.members.lock().unwrap_or_else(|e| e.into_inner())[role] = Some(dev);
        }
        self.rt
            .call(self.meta_reactor, move |r| {
                let Some(h) = r.local::<RefCell<MetaHost>>(key) else {
                    return Err("the metadata path is not running".to_string());
                };
                let res = h.borrow_mut().path.add_member(role, nm);
                meta_pump(r, key);
                res.map_err(|e| e.to_string())
            })
            .map_err(|e| e.to_string())?
    }

    /// Roles an accepted [`Array::add_member`] has not committed yet (bit
    /// per role; their published state still says faulty or missing).
    pub fn adds_pending(&self) -> u64 {
        let key = self.meta_key;
        self.rt
            .call(self.meta_reactor, move |r| {
                r.local::<RefCell<MetaHost>>(key)
                    .map_or(0, |h| h.borrow().path.adds_pending())
            })
            .unwrap_or(0)
    }

    /// Make member `role` write-mostly or not: the metadata path records it
    /// in the superblocks, then broadcasts it.
    pub fn set_write_mostly(self: &Arc<Self>, role: usize, on: bool) -> Result<(), FlagError> {
        let key = self.meta_key;
        self.rt
            .call(self.meta_reactor, move |r| {
                let Some(h) = r.local::<RefCell<MetaHost>>(key) else {
                    return Err(FlagError::NoSuperblock);
                };
                let res = h.borrow_mut().path.set_write_mostly(role, on);
                meta_pump(r, key);
                res
            })
            .unwrap_or(Err(FlagError::NoSuperblock))
    }

    /// Take member `role` out (md's `--fail` then `--remove`): it fails
    /// through the metadata path as a failure a channel saw does (every
    /// channel stops using it at once; the metadata path records it faulty
    /// on the survivors' superblocks, events + 1, R1), and once that commit
    /// is published (durable) and every channel has applied it with no I/O
    /// of the member in flight, every reactor's channel of its device is
    /// dropped and the device leaves the role (the caller may release its
    /// claim). Refused, changing nothing, when the array is offline or
    /// would go offline. A member out of service already (failed) is only
    /// released. Returns whether it was in service. Call from a non-reactor
    /// thread; waits up to `timeout` for each of the commit and the drain.
    pub fn remove_member(
        self: &Arc<Self>,
        role: usize,
        timeout: Duration,
    ) -> Result<bool, RemoveError> {
        if role >= self.geom.members() {
            return Err(RemoveError::Role(role));
        }
        let key = self.meta_key;
        let a = self.clone();
        // On the metadata reactor: checked and requested in the order of
        // the metadata path's other work.
        let (in_service, device) = self.rt.call(self.meta_reactor, move |r| {
            let Some(h) = r.local::<RefCell<MetaHost>>(key) else {
                return Err(RemoveError::NoMeta);
            };
            let st = h.borrow().path.state();
            let failed = a.shared.failed();
            let in_service = st.members[role].in_service() && failed & 1 << role == 0;
            if in_service {
                if st.offline {
                    return Err(RemoveError::Offline);
                }
                if !survives(&a.geom, st.not_in_sync() | failed | 1 << role) {
                    return Err(RemoveError::LastCopy);
                }
            }
            let device = st.readded[role];
            // As a channel reports a failure it saw: the first report goes
            // to the metadata path.
            if in_service && a.shared.set_failed(role, device) {
                h.borrow_mut().path.request(MetaRequest::MemberFailed {
                    member: role as u16,
                    device,
                });
                meta_pump(r, key);
            }
            Ok((in_service, device))
        })??;
        // Committed: no state with this device of the role in service.
        let out =
            move |s: &ArrayState| !(s.members[role].in_service() && s.readded[role] == device);
        let deadline = Instant::now() + timeout;
        while !out(&self.state()) {
            if Instant::now() >= deadline {
                return Err(RemoveError::NotCommitted(timeout));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let id = self.id;
        let deadline = Instant::now() + timeout;
        loop {
            let mut done = true;
            for n in 0..self.rt.reactors() {
                done &= self.rt.call(n, move |r| {
                    let Some(l) = r.local::<ArrayLocal>(id) else {
                        return true;
                    };
                    let Ok(mut c) = l.ch.try_borrow_mut() else {
                        return false;
                    };
                    let busy = !out(c.engine.state())
                        || c.members[role]
                            .as_ref()
                            .is_some_and(|m| m.outstanding() != 0)
                        || c.meta_slots
                            .iter()
                            .flatten()
                            .any(|s| s.member as usize == role);
                    if !busy {
                        c.members[role] = None;
                    }
                    !busy
                })?;
            }
            if done {
                break;
            }
            if Instant::now() >= deadline {
                return Err(RemoveError::Busy(timeout));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.members.lock().unwrap_or_else(|e| e.into_inner())[role] = None;
        Ok(in_service)
    }

    /// What the array's channels share (the bitmap's words among it).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Engine counters of every reactor's channel, in reactor order.
    pub fn stats(&self) -> Result<Vec<(ChannelStats, Vec<MemberStats>)>, ArrayError> {
        let mut v = Vec::new();
        for n in 0..self.rt.reactors() {
            let id = self.id;
            let s = self.rt.call(n, move |r| {
                r.local::<ArrayLocal>(id).map(|l| {
                    let c = l.ch.borrow();
                    (c.engine.stats(), c.engine.member_stats())
                })
            })?;
            if let Some(s) = s {
                v.push(s);
            }
        }
        Ok(v)
    }

    /// Refuse new I/O (it completes with an error), wait up to `timeout`
    /// for what is in flight, let the metadata path shut down (mark the
    /// array clean), then remove the channels and the metadata path from
    /// the reactors. Call from a non-reactor thread.
    pub fn stop(self: &Arc<Self>, timeout: Duration) -> Result<(), ArrayError> {
        self.closing.store(true, Ordering::Release);
        let n = self.rt.reactors();
        for i in 0..n {
            let id = self.id;
            self.rt.call(i, move |r| {
                if let Some(l) = r.local::<ArrayLocal>(id) {
                    l.ch.borrow_mut().closing = true;
                }
            })?;
        }
        let mut deadline = Instant::now() + timeout;
        let key = self.meta_key;
        let mut gave_up = false;
        loop {
            let mut idle = true;
            for i in 0..n {
                let id = self.id;
                idle &= self.rt.call(i, move |r| {
                    r.local::<ArrayLocal>(id)
                        .is_none_or(|l| l.ch.try_borrow().is_ok_and(|c| c.is_idle()))
                })?;
            }
            if idle {
                break;
            }
            // Half the time gone and writes still held by a blocked
            // metadata path (no member takes its superblocks): give up
            // on them (they fail), or the stop could never end.
            if !gave_up && Instant::now() + timeout / 2 >= deadline {
                gave_up = self.rt.call(self.meta_reactor, move |r| {
                    let Some(h) = r.local::<RefCell<MetaHost>>(key) else {
                        return false;
                    };
                    let g = h.borrow_mut().path.abandon();
                    meta_pump(r, key);
                    g
                })?;
                if gave_up {
                    tracing::warn!(
                        "array {}: stopped while blocked (no member takes its superblocks): the writes it held fail, and it goes offline",
                        self.name
                    );
                    deadline = deadline.max(Instant::now() + Duration::from_secs(1));
                }
            }
            if Instant::now() >= deadline {
                return Err(ArrayError::Timeout(self.name.clone(), timeout));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Let the metadata path finish (mark clean) before it goes.
        self.rt.call(self.meta_reactor, move |r| {
            meta_with(r, key, move |m| m.path.shutdown())
        })?;
        loop {
            let clean = self.rt.call(self.meta_reactor, move |r| {
                r.local::<RefCell<MetaHost>>(key)
                    .is_none_or(|h| h.borrow().path.stop_done())
            })?;
            if clean {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!("array {}: not marked clean within {timeout:?}", self.name);
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let a = self.clone();
        self.rt
            .call(self.meta_reactor, move |r| uninstall_meta(r, &a))?;
        for i in 0..n {
            let a = self.clone();
            self.rt.call(i, move |r| uninstall_channel(r, &a))?;
        }
        self.stopped.store(true, Ordering::Release);
        Ok(())
    }

    fn publish(&self, s: &Arc<ArrayState>) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s.clone();
    }
}

/// A reactor's channel of an array, for the export layer.
#[derive(Clone)]
pub struct ArrayChannelRef(Rc<ArrayLocal>);

impl ArrayChannelRef {
    /// See [`Array::submit`].
    pub fn submit(
        &self,
        r: &mut Reactor,
        io: ParentIo<AlignedBuf>,
        done: &Rc<dyn IoDone>,
    ) -> Result<(), Busy<AlignedBuf>> {
        {
            let mut c = self.0.ch.borrow_mut();
            c.submit(io, done)?;
            c.drive(r);
        }
        run_callbacks(&self.0, r);
        Ok(())
    }

    /// The engine channel's counters.
    pub fn stats(&self) -> ChannelStats {
        self.0.ch.borrow().engine.stats()
    }

    /// One line on what the channel holds (diagnosing a stuck host).
    pub fn describe(&self) -> String {
        let c = self.0.ch.borrow();
        format!(
            "{}; backlog {}, callbacks {}, member outstanding {:?}",
            c.engine.describe(),
            c.backlog.len(),
            c.done.len(),
            c.members
                .iter()
                .map(|m| m.as_ref().map_or(0, |m| m.outstanding()))
                .collect::<Vec<_>>()
        )
    }

    pub fn is_idle(&self) -> bool {
        self.0.ch.borrow().is_idle()
    }

    pub fn state(&self) -> Arc<ArrayState> {
        self.0.ch.borrow().engine.state().clone()
    }
}

/// The reactor-local object of one array on one reactor.
struct ArrayLocal {
    ch: RefCell<ArrayChannel>,
    in_callbacks: Cell<bool>,
    poller: Cell<Option<PollerId>>,
}

type Done = (Rc<dyn IoDone>, u64, IoStatus, Option<AlignedBuf>);

struct MetaSlot {
    id: u64,
    member: u16,
    lba: u64,
    blocks: u64,
    fua: bool,
    /// The member's flush ran: every write it completed before is durable
    /// (a cleared bitmap bit must never land before the data it covered),
    /// and the write itself may go.
    flushed: bool,
    buf: AlignedBuf,
}

struct ArrayChannel {
    meta_key: u64,
    meta_reactor: usize,
    rt: RuntimeHandle,
    engine: Channel<AlignedBuf>,
    members: Vec<Option<Box<dyn DevChannel>>>,
    data_offset: u64,
    /// Device token -> engine child token.
    tokens: Vec<Option<ChildToken>>,
    free_tokens: Vec<u32>,
    /// Engine tag -> caller's callback and tag.
    parents: Vec<Option<(Rc<dyn IoDone>, u64)>>,
    free_parents: Vec<u32>,
    /// Accepted but refused by the engine (all its parent slots busy).
    backlog: VecDeque<ParentIo<AlignedBuf>>,
    done: VecDeque<Done>,
    meta_slots: Vec<Option<MetaSlot>>,
    /// Metadata writes to (re)submit.
    meta_retry: VecDeque<u32>,
    meta_done: VecDeque<(u64, bool)>,
    closing: bool,
}

fn dev_op(op: ChildOp) -> DevOp {
    match op {
        ChildOp::Read => DevOp::Read,
        ChildOp::Write => DevOp::Write,
        ChildOp::Flush => DevOp::Flush,
        ChildOp::Unmap => DevOp::Unmap,
        ChildOp::WriteZeroes => DevOp::WriteZeroes,
        ChildOp::Reset => DevOp::Reset,
    }
}

fn child_status(s: DevStatus) -> ChildStatus {
    match s {
        DevStatus::Success => ChildStatus::Success,
        DevStatus::Error => ChildStatus::Error,
        DevStatus::NoMem => ChildStatus::NoMem,
    }
}

fn install_channel(
    r: &mut Reactor,
    a: &Arc<Array>,
    state: Arc<ArrayState>,
    shared: Arc<Shared>,
    cfg: ChannelConfig,
) -> Result<(), ArrayError> {
    let devs = a.members();
    let mut members = Vec::with_capacity(devs.len());
    for (i, m) in devs.iter().enumerate() {
        members.push(match m {
            Some(d) => Some(
                d.create_channel(r)
                    .map_err(|err| ArrayError::Device { member: i, err })?,
            ),
            None => None,
        });
    }
    let engine = Channel::new(a.geom.clone(), state, shared, r.id(), cfg, AlignedBuf::new);
    let nparents = cfg.max_parents * 2;
    let ntokens = cfg.max_children + cfg.stripe_ctxs * devs.len();
    let ch = ArrayChannel {
        meta_key: a.meta_key,
        meta_reactor: a.meta_reactor,
        rt: r.runtime().clone(),
        engine,
        members,
        data_offset: a.data_offset,
        tokens: vec![None; ntokens],
        free_tokens: (0..ntokens as u32).rev().collect(),
        parents: (0..nparents).map(|_| None).collect(),
        free_parents: (0..nparents as u32).rev().collect(),
        backlog: VecDeque::with_capacity(nparents),
        done: VecDeque::with_capacity(nparents),
        meta_slots: Vec::new(),
        meta_retry: VecDeque::new(),
        meta_done: VecDeque::new(),
        closing: false,
    };
    let local = Rc::new(ArrayLocal {
        ch: RefCell::new(ch),
        in_callbacks: Cell::new(false),
        poller: Cell::new(None),
    });
    let pid = r.register_poller(ArrayPoller(local.clone()));
    local.poller.set(Some(pid));
    r.set_local(a.id, local);
    Ok(())
}

fn uninstall_channel(r: &mut Reactor, a: &Arc<Array>) {
    if let Some(l) = r.local::<ArrayLocal>(a.id) {
        if let Some(p) = l.poller.take() {
            r.unregister_poller(p);
        }
        r.remove_local(a.id);
    }
}

struct ArrayPoller(Rc<ArrayLocal>);

impl Poller for ArrayPoller {
    fn poll(&mut self, r: &mut Reactor) -> bool {
        let work = self.0.ch.borrow_mut().drive(r);
        run_callbacks(&self.0, r);
        work
    }
    fn busy(&self) -> bool {
        self.0.ch.try_borrow().map_or(true, |c| !c.is_idle())
    }
}

/// Deliver finished parents (and metadata writes) with no borrow held.
fn run_callbacks(l: &Rc<ArrayLocal>, r: &mut Reactor) {
    if l.in_callbacks.replace(true) {
        return; // an outer call on the stack delivers them
    }
    loop {
        let next = l.ch.borrow_mut().done.pop_front();
        let Some((d, tag, status, buf)) = next else {
            break;
        };
        d.io_done(r, tag, status, buf);
    }
    loop {
        let (next, key) = {
            let mut c = l.ch.borrow_mut();
            (c.meta_done.pop_front(), c.meta_key)
        };
        let Some((id, ok)) = next else { break };
        meta_with(r, key, move |m| m.path.write_done(id, ok));
    }
    l.in_callbacks.set(false);
}

impl ArrayChannel {
    fn is_idle(&self) -> bool {
        self.engine.is_idle()
            && self.backlog.is_empty()
            && self.done.is_empty()
            && self.meta_done.is_empty()
            && self.meta_slots.iter().all(|s| s.is_none())
            && self.members.iter().flatten().all(|m| m.outstanding() == 0)
    }

    fn submit(
        &mut self,
        mut io: ParentIo<AlignedBuf>,
        done: &Rc<dyn IoDone>,
    ) -> Result<(), Busy<AlignedBuf>> {
        if self.closing {
            self.done
                .push_back((done.clone(), io.tag, IoStatus::Error, io.buf.take()));
            return Ok(());
        }
        let Some(slot) = self.free_parents.pop() else {
            return Err(Busy(io));
        };
        self.parents[slot as usize] = Some((done.clone(), io.tag));
        io.tag = slot as u64;
        if !self.backlog.is_empty() {
            self.backlog.push_back(io);
        } else if let Err(Busy(io)) = self.engine.submit(io) {
            self.backlog.push_back(io);
        }
        Ok(())
    }

    /// Move work between the engine and the members until nothing moves
    /// (bounded, so a member that keeps refusing cannot hold the reactor).
    fn drive(&mut self, r: &mut Reactor) -> bool {
        let mut work = false;
        for _ in 0..8 {
            let mut progress = false;
            {
                let ArrayChannel {
                    members,
                    engine,
                    tokens,
                    free_tokens,
                    meta_slots,
                    meta_retry,
                    meta_done,
                    ..
                } = self;
                for m in members.iter_mut().flatten() {
                    let n = m.poll(r, &mut |tok, st| {
                        if tok & META_TOKEN != 0 {
                            let slot = (tok & !META_TOKEN) as u32;
                            let s = meta_slots[slot as usize].as_mut().expect("meta slot");
                            if st == DevStatus::NoMem {
                                meta_retry.push_back(slot);
                            } else if !s.flushed && st == DevStatus::Success {
                                s.flushed = true;
                                meta_retry.push_back(slot);
                            } else {
                                let s = meta_slots[slot as usize].take().expect("meta slot");
                                meta_done.push_back((s.id, st == DevStatus::Success));
                            }
                        } else {
                            let ct = tokens[tok as usize].take().expect("child token");
                            free_tokens.push(tok as u32);
                            engine.child_done(ct, child_status(st));
                        }
                    });
                    progress |= n > 0;
                }
            }
            while let Some(io) = self.backlog.pop_front() {
                match self.engine.submit(io) {
                    Ok(()) => progress = true,
                    Err(Busy(io)) => {
                        self.backlog.push_front(io);
                        break;
                    }
                }
            }
            if !self.engine.is_idle() || self.engine.needs_poll() {
                self.engine.poll();
            }
            while let Some(a) = self.engine.poll_action() {
                progress = true;
                self.act(r, a);
            }
            if !self.meta_retry.is_empty() {
                self.submit_meta_writes(r);
            }
            if !progress {
                break;
            }
            work = true;
        }
        work
    }

    fn act(&mut self, r: &mut Reactor, a: Action<AlignedBuf>) {
        match a {
            Action::Submit(io) => {
                let m = io.member as usize;
                let Some(dev) = self.members.get_mut(m).and_then(|d| d.as_mut()) else {
                    self.engine.child_done(io.token, ChildStatus::Error);
                    return;
                };
                let Some(slot) = self.free_tokens.pop() else {
                    self.engine.child_done(io.token, ChildStatus::NoMem);
                    return;
                };
                self.tokens[slot as usize] = Some(io.token);
                let data = self.engine.child_data(io.buf);
                // SAFETY: the engine keeps a child's buffer (part of a
                // parent's or a stripe context's `AlignedBuf`, whose heap
                // memory never moves) in place and untouched until
                // `child_done` for it, which we call only after the device
                // reports the I/O (or refuses it below). Mirror writes may
                // share the memory; devices only read it then.
                let buf = unsafe { DevBuf::new(data.as_mut_ptr(), data.len()) };
                let dio = DevIo {
                    op: dev_op(io.op),
                    lba: io.lba + self.data_offset,
                    blocks: io.blocks,
                    fua: io.fua,
                    buf,
                    token: slot as u64,
                };
                if dev.submit(r, dio).is_err() {
                    self.tokens[slot as usize] = None;
                    self.free_tokens.push(slot);
                    self.engine.child_done(io.token, ChildStatus::NoMem);
                }
            }
            Action::Complete { tag, status, buf } => {
                let (d, user_tag) = self.parents[tag as usize]
                    .take()
                    .expect("completion of an unknown parent");
                self.free_parents.push(tag as u32);
                self.done.push_back((d, user_tag, status, buf));
            }
            Action::Meta(req) => {
                let key = self.meta_key;
                self.rt.send(self.meta_reactor, move |r| {
                    meta_with(r, key, move |m| m.path.request(req));
                });
            }
        }
    }

    /// Queue a metadata write (on the metadata reactor).
    fn meta_write(&mut self, r: &mut Reactor, w: MetaWrite, bs: u64) -> Result<(), u64> {
        let m = w.member as usize;
        if self.members.get(m).is_none_or(|d| d.is_none())
            || !w.offset.is_multiple_of(bs)
            || w.data.is_empty()
            || !(w.data.len() as u64).is_multiple_of(bs)
        {
            return Err(w.id);
        }
        let slot = MetaSlot {
            id: w.id,
            member: w.member,
            lba: w.offset / bs,
            blocks: w.data.len() as u64 / bs,
            fua: w.fua,
            flushed: !w.fua,
            buf: AlignedBuf::from_slice(&w.data),
        };
        let idx = match self.meta_slots.iter().position(|s| s.is_none()) {
            Some(i) => {
                self.meta_slots[i] = Some(slot);
                i
            }
            None => {
                self.meta_slots.push(Some(slot));
                self.meta_slots.len() - 1
            }
        };
        self.meta_retry.push_back(idx as u32);
        self.submit_meta_writes(r);
        Ok(())
    }

    fn submit_meta_writes(&mut self, r: &mut Reactor) {
        let n = self.meta_retry.len();
        for _ in 0..n {
            let Some(idx) = self.meta_retry.pop_front() else {
                break;
            };
            let s = self.meta_slots[idx as usize]
                .as_mut()
                .expect("meta slot in use");
            let data = s.buf.as_mut();
            // SAFETY: the slot owns the buffer and keeps it, untouched, until
            // the device reports this write (the slot is freed only then).
            let buf = unsafe { DevBuf::new(data.as_mut_ptr(), data.len()) };
            let io = if s.flushed {
                DevIo {
                    op: DevOp::Write,
                    lba: s.lba,
                    blocks: s.blocks,
                    fua: s.fua,
                    buf,
                    token: META_TOKEN | idx as u64,
                }
            } else {
                DevIo {
                    op: DevOp::Flush,
                    lba: 0,
                    blocks: 0,
                    fua: false,
                    buf: DevBuf::EMPTY,
                    token: META_TOKEN | idx as u64,
                }
            };
            let dev = self.members[s.member as usize]
                .as_mut()
                .expect("checked member");
            if dev.submit(r, io).is_err() {
                self.meta_retry.push_back(idx);
            }
        }
    }
}

// ----- metadata reactor -------------------------------------------------

/// How often the metadata path's `tick` runs.
const META_TICK: Duration = Duration::from_millis(10);

struct MetaHost {
    array: Arc<Array>,
    path: Box<dyn MetaPath>,
    tick: Option<PollerId>,
}

fn install_meta(r: &mut Reactor, array: Arc<Array>, path: Box<dyn MetaPath + Send>) {
    let key = array.meta_key;
    let host = Rc::new(RefCell::new(MetaHost {
        array,
        path,
        tick: None,
    }));
    let pid = r.register_timed_poller(META_TICK, move |r: &mut Reactor| {
        let now = r.now();
        meta_with(r, key, move |m| m.path.tick(now));
        maybe_start_process(r, key);
        false
    });
    host.borrow_mut().tick = Some(pid);
    r.set_local(key, host.clone());
    if let Some(early) = r.remove_local(key ^ EARLY_KEY) {
        if let Ok(early) = early.downcast::<EarlyRequests>() {
            for f in early.borrow_mut().drain(..) {
                f(&mut host.borrow_mut());
            }
        }
    }
    meta_pump(r, key);
}

fn uninstall_meta(r: &mut Reactor, a: &Arc<Array>) {
    if let Some(h) = r.local::<RefCell<MetaHost>>(a.meta_key) {
        if let Some(p) = h.borrow_mut().tick.take() {
            r.unregister_poller(p);
        }
        r.remove_local(a.meta_key);
    }
    r.remove_local(a.meta_key ^ EARLY_KEY);
}

/// Run `f` on the metadata path of `key` (if it is on this reactor), then
/// carry out what it asks for.
fn meta_with(r: &mut Reactor, key: u64, f: impl FnOnce(&mut MetaHost) + 'static) {
    let Some(h) = r.local::<RefCell<MetaHost>>(key) else {
        // Channels are installed before the metadata path, so a request
        // (a member failure!) can arrive first: keep it for install_meta.
        let early = match r.local::<EarlyRequests>(key ^ EARLY_KEY) {
            Some(e) => e,
            None => {
                let e: Rc<EarlyRequests> = Rc::new(RefCell::new(Vec::new()));
                r.set_local(key ^ EARLY_KEY, e.clone());
                e
            }
        };
        let mut q = early.borrow_mut();
        if q.len() < EARLY_MAX {
            q.push(Box::new(f));
        } else {
            tracing::warn!("metadata path {key} is not on reactor {}", r.id());
        }
        return;
    };
    f(&mut h.borrow_mut());
    meta_pump(r, key);
}

/// Requests for a metadata path not installed yet on its reactor.
type EarlyRequests = RefCell<Vec<Box<dyn FnOnce(&mut MetaHost)>>>;
/// Reactor-local key of an array's early requests: its meta key, flipped.
const EARLY_KEY: u64 = 1 << 63;
/// Most early requests kept (a bound for a metadata path that never comes).
const EARLY_MAX: usize = 4096;

/// Log what state `s` records failed for the first time
/// ([`mdraid_rpc::results::failure_lines`]).
fn log_failures(array: &Array, s: &ArrayState) {
    // Looked up only for a member that failed.
    let name_of = |m: usize| Some(array.members().get(m)?.as_ref()?.name().to_string());
    for l in mdraid_rpc::results::failure_lines(&array.name, &array.state(), s, name_of) {
        tracing::warn!("{l}");
    }
}

fn meta_pump(r: &mut Reactor, key: u64) {
    let Some(h) = r.local::<RefCell<MetaHost>>(key) else {
        return;
    };
    loop {
        let (out, array) = {
            let mut m = h.borrow_mut();
            (m.path.poll_output(), m.array.clone())
        };
        let Some(out) = out else { break };
        let id = array.id;
        match out {
            MetaOutput::Broadcast(s) => {
                log_failures(&array, &s);
                array.publish(&s);
                let s2 = s.clone();
                r.runtime().for_each(
                    Arc::new(move |r: &mut Reactor| {
                        if let Some(l) = r.local::<ArrayLocal>(id) {
                            l.ch.borrow_mut().engine.apply_state(s2.clone());
                        }
                    }),
                    r.id(),
                    move |r| meta_with(r, key, move |m| m.path.applied(&s)),
                );
            }
            MetaOutput::Release(s) => {
                let s2 = s.clone();
                r.runtime().for_each(
                    Arc::new(move |r: &mut Reactor| {
                        if let Some(l) = r.local::<ArrayLocal>(id) {
                            l.ch.borrow_mut().engine.release(s2.clone());
                        }
                    }),
                    r.id(),
                    move |r| meta_with(r, key, move |m| m.path.released(&s)),
                );
            }
            MetaOutput::Write(w) => {
                let bs = array.block_size() as u64;
                let res = match r.local::<ArrayLocal>(id) {
                    Some(l) => l.ch.borrow_mut().meta_write(r, w, bs),
                    None => Err(w.id),
                };
                if let Err(wid) = res {
                    h.borrow_mut().path.write_done(wid, false);
                }
            }
        }
    }
}

/// Runs the engine's [`sync::Driver`] on the metadata reactor: submits
/// the windows it hands out through the reactor's channel of the array,
/// feeds it their completions, carries out its reports (on the metadata
/// path, synchronously) and notes (log lines), and arms a timer when it
/// pauses (the bandwidth cap, a refused window).
struct SyncDriver {
    array: Arc<Array>,
    drv: RefCell<sync::Driver>,
    /// The driver's clock starts here (`now_ms` 0).
    started: Instant,
    /// A timer will step the driver again.
    timer: Cell<bool>,
    /// Itself, while the process runs.
    this: RefCell<Option<Rc<SyncDriver>>>,
}

fn start_driver(r: &mut Reactor, a: &Arc<Array>, drv: sync::Driver) {
    let drv = Rc::new(SyncDriver {
        array: a.clone(),
        drv: RefCell::new(drv),
        started: Instant::now(),
        timer: Cell::new(false),
        this: RefCell::new(None),
    });
    // The driver keeps itself alive until the process ends.
    *drv.this.borrow_mut() = Some(drv.clone());
    sync_next(r, &drv);
}

impl SyncDriver {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn end(&self) {
        self.drv.borrow_mut().end(&self.array.sync);
        self.this.borrow_mut().take();
    }

    /// Carry out what the driver asked for (no borrow of it held).
    fn outputs(&self, r: &mut Reactor) {
        let a = &self.array;
        loop {
            let out = self.drv.borrow_mut().poll_output();
            match out {
                None => return,
                Some(Output::Note(n)) => note(a, &n),
                Some(Output::Report(rep)) => meta_with(r, a.meta_key, move |h| match rep {
                    Report::ResyncProgress(lba) => h.path.resync_progress(lba),
                    Report::Synced => h.path.mark_synced(),
                    Report::Recovery {
                        member,
                        device,
                        offset,
                    } => h.path.recovery_progress(member, device, offset),
                }),
            }
        }
    }
}

fn note(a: &Array, n: &Note) {
    if n.is_warning() {
        tracing::warn!("array {}: {n}", a.name);
    } else {
        tracing::info!("array {}: {n}", a.name);
    }
}

impl IoDone for SyncDriver {
    fn io_done(&self, r: &mut Reactor, _tag: u64, status: IoStatus, buf: Option<AlignedBuf>) {
        if let Some(b) = buf {
            r.buf_pool().put(b);
        }
        let a = &self.array;
        let cap = a.process_options().max_mb_per_sec;
        let ok = status == IoStatus::Success;
        if !ok && a.closing.load(Ordering::Acquire) {
            // Refused by the stop, not by a member: the process ends here,
            // its checkpoint where its last good window left it.
            self.end();
            return;
        }
        let now = self.now_ms();
        self.drv.borrow_mut().window_done(&a.sync, ok, now, cap);
        self.outputs(r);
        let me = self.this.borrow().clone();
        if let Some(me) = me {
            sync_next(r, &me);
        }
    }
}

/// Submit what the process needs next, or finish it.
fn sync_next(r: &mut Reactor, drv: &Rc<SyncDriver>) {
    let a = &drv.array;
    loop {
        if a.closing.load(Ordering::Acquire) || a.stopped.load(Ordering::Relaxed) {
            drv.end();
            return;
        }
        let state = a.state();
        let facts = Facts {
            now_ms: drv.now_ms(),
            state: &state,
            mismatch_blocks: a.channel(r).map(|c| c.stats().mismatch_blocks),
        };
        // Borrowed only here: a submission may complete at once and
        // re-enter the driver.
        let step = drv.drv.borrow_mut().step(&a.sync, &facts);
        drv.outputs(r);
        let io = match step {
            Step::Submit(io) => io,
            Step::Wait => return,
            Step::Pause { until_ms } => {
                if !drv.timer.replace(true) {
                    let me = drv.clone();
                    let wait = Duration::from_millis(until_ms.saturating_sub(facts.now_ms));
                    r.after(wait, move |r| {
                        me.timer.set(false);
                        sync_next(r, &me)
                    });
                }
                return;
            }
            Step::Finished => return drv.end(),
        };
        let parent = ParentIo {
            tag: io.lba,
            op: io.op,
            lba: io.lba,
            blocks: io.blocks,
            fua: false,
            buf: io.buf_bytes.map(|n| r.buf_pool().get(n)),
        };
        let done: Rc<dyn IoDone> = drv.clone();
        if let Err(Busy(parent)) = a.submit(r, parent, &done) {
            // No parent slot now: the driver hands the window out again
            // shortly.
            if let Some(b) = parent.buf {
                r.buf_pool().put(b);
            }
            let now = drv.now_ms();
            drv.drv.borrow_mut().unsubmit(io, now);
            continue;
        }
        if drv.this.borrow().is_none() {
            return; // it completed and finished meanwhile
        }
    }
}

/// Run the resync whose slot is claimed, from array block `from`.
fn run_resync(r: &mut Reactor, a: &Arc<Array>, window_blocks: u64, from: u64) {
    let drv = sync::Driver::resync(&a.geom, &a.shared, &a.sync, window_blocks, from, 0);
    start_driver(r, a, drv);
}

/// Start the process `SyncStatus::select` picks, unless one runs: the
/// resync of a dirty array again (`sync_action frozen` stopped it; the
/// first starts at assembly, [`Array::start_resync`]), else the rebuild of
/// the first member the metadata path says may be rebuilt.
fn maybe_start_process(r: &mut Reactor, key: u64) {
    let Some(h) = r.local::<RefCell<MetaHost>>(key) else {
        return;
    };
    let (a, found) = {
        let h = h.borrow();
        let a = h.array.clone();
        if a.stopped.load(Ordering::Relaxed) {
            return;
        }
        let resync = h.path.resync_pending().then(|| h.path.resync_from());
        let found = a
            .sync
            .select(a.geom.members(), resync, |m| h.path.recovery(m));
        (a, found)
    };
    match found {
        Some(Start::Resync { from }) => {
            if !a.sync.claim(SyncKind::Resync, 0) {
                return;
            }
            run_resync(r, &a, sync::resync_window(&a.geom), from);
        }
        Some(Start::Rebuild { member, info }) => {
            let window = a.process_options().window_blocks(&a.geom);
            if let Some(drv) =
                sync::Driver::rebuild(&a.geom, &a.shared, &a.sync, member, info, window, 0)
            {
                start_driver(r, &a, drv);
            }
        }
        None => {}
    }
}
