//! The seam between the array host and the metadata path.
//!
//! One [`MetaPath`] per array lives on the array's metadata reactor. It is
//! sans-I/O: the host feeds it inputs and carries out its outputs.
//!
//! In: [`MetaPath::request`] (a channel's `MetaRequest`, delivered by
//! message), [`MetaPath::applied`] (every channel has applied a state
//! broadcast), [`MetaPath::released`] (every channel has released it),
//! [`MetaPath::write_done`] (a member write finished), [`MetaPath::tick`]
//! (periodic, for daemons such as bitmap flushing).
//!
//! Out ([`MetaPath::poll_output`]):
//! * [`MetaOutput::Broadcast`]: phase one — the host calls `apply_state` on
//!   the array's channel on every reactor, then `applied`;
//! * [`MetaOutput::Release`]: phase two — `release` on every channel, then
//!   `released`;
//! * [`MetaOutput::Write`]: write bytes at a byte offset of a member (FUA
//!   when asked), then `write_done(id, ok)`.
//!
//! [`MdMeta`] adapts `bdev_raid::meta::Meta` (superblocks, R1/R3,
//! clean/dirty) to this seam. [`StandInMeta`] is an in-memory stand-in with
//! no superblock: it records a failed member faulty, bumps `events`, sets
//! the array offline when [`survives`] says so, makes the array writable
//! on the first `MarkDirty` (and never clean again), broadcasts, and
//! releases every state once all channels applied it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bdev_raid::channel::MetaRequest;
use bdev_raid::layout::Geometry;
use bdev_raid::meta::{AddError, FlagError, Meta, MetaAction, NewMember, Recovery, RecoveryInfo};
use bdev_raid::state::{survives, ArrayState, MemberState, Shared};

/// What a metadata path is built from when an array is created.
pub struct MetaInit {
    pub geom: Arc<Geometry>,
    /// Shared with the array's channels (one per reactor, index = reactor).
    pub shared: Arc<Shared>,
    /// The state every channel starts in.
    pub state: Arc<ArrayState>,
}

/// A member write the metadata path asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaWrite {
    /// Returned in [`MetaPath::write_done`].
    pub id: u64,
    /// Member role.
    pub member: u16,
    /// Byte offset on the member device (not its data area); a multiple of
    /// the block size, as is `data.len()`.
    pub offset: u64,
    pub data: Vec<u8>,
    /// Durable: the member is flushed first (every write it completed
    /// before becomes durable), then the data is written with FUA.
    pub fua: bool,
}

/// What the metadata path wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaOutput {
    Broadcast(Arc<ArrayState>),
    Release(Arc<ArrayState>),
    Write(MetaWrite),
}

/// An array's metadata path, driven by the host on one reactor.
pub trait MetaPath {
    /// A request from a channel.
    fn request(&mut self, req: MetaRequest);
    /// Every channel has applied `state`.
    fn applied(&mut self, state: &Arc<ArrayState>);
    /// Every channel has released `state`.
    fn released(&mut self, _state: &Arc<ArrayState>) {}
    /// A [`MetaWrite`] finished.
    fn write_done(&mut self, _id: u64, _ok: bool) {}
    /// Called periodically (every 10 ms) on the metadata reactor.
    fn tick(&mut self, _now: Instant) {}
    /// Orderly stop: the array's I/O has drained; mark it clean.
    fn shutdown(&mut self) {}
    /// The stop gives up on a blocked array (see `Meta::abandon`):
    /// whether it did.
    fn abandon(&mut self) -> bool {
        false
    }
    /// A resync of the whole array finished: it may be marked clean again.
    fn mark_synced(&mut self) {}
    /// Array block a resync starts from (where an orderly stop left one).
    fn resync_from(&self) -> u64 {
        0
    }
    /// The array was assembled dirty and is not resynced yet.
    fn resync_pending(&self) -> bool {
        false
    }
    /// The resync made everything below array block `lba` agree.
    fn resync_progress(&mut self, _lba: u64) {}
    /// The rebuild member `role` needs, once it may start.
    fn recovery(&self, _role: usize) -> Option<RecoveryInfo> {
        None
    }
    /// A rebuild of `role` (device `device`) made member blocks
    /// `[0, offset)` current.
    fn recovery_progress(&mut self, _role: usize, _device: u64, _offset: u64) {}
    /// Bring a device into a faulty or missing role.
    fn add_member(&mut self, _role: usize, _dev: NewMember) -> Result<Recovery, AddError> {
        Err(AddError::Offline)
    }
    /// Whether `add_member` would take `dev` into `role` now.
    fn check_add(&self, _role: usize, _dev: &NewMember) -> Result<(), AddError> {
        Err(AddError::Offline)
    }
    /// Roles an accepted `add_member` has not committed yet (bit per role).
    fn adds_pending(&self) -> u64 {
        0
    }
    /// Make member `role` write-mostly or not (recorded in superblocks).
    fn set_write_mostly(&mut self, _role: usize, _on: bool) -> Result<(), FlagError> {
        Err(FlagError::NoSuperblock)
    }
    /// The orderly stop is done: nothing in flight and clean on disk, or
    /// offline (nothing can be marked clean then; checked after `shutdown`).
    fn stop_done(&self) -> bool {
        true
    }
    /// Next thing to do.
    fn poll_output(&mut self) -> Option<MetaOutput>;
    /// The newest committed state.
    fn state(&self) -> Arc<ArrayState>;
}

/// The in-memory stand-in (see the module docs).
pub struct StandInMeta {
    geom: Arc<Geometry>,
    state: Arc<ArrayState>,
    out: VecDeque<MetaOutput>,
}

impl StandInMeta {
    pub fn new(geom: Arc<Geometry>, state: Arc<ArrayState>) -> StandInMeta {
        StandInMeta {
            geom,
            state,
            out: VecDeque::new(),
        }
    }
}

impl MetaPath for StandInMeta {
    fn request(&mut self, req: MetaRequest) {
        match req {
            MetaRequest::MarkDirty { .. } => {
                if !self.state.writable && !self.state.offline {
                    let mut s = (*self.state).clone();
                    s.writable = true;
                    s.events += 1;
                    self.state = Arc::new(s);
                    self.out
                        .push_back(MetaOutput::Broadcast(self.state.clone()));
                }
            }
            // No bitmap here (its arrays are built without one).
            MetaRequest::WritesIdle { .. } | MetaRequest::BitsNeeded { .. } => {}
            MetaRequest::MemberFailed { member, .. } => {
                let m = member as usize;
                if m >= self.state.members.len() || self.state.members[m] == MemberState::Faulty {
                    return;
                }
                let mut s = (*self.state).clone();
                s.members[m] = MemberState::Faulty;
                s.events += 1;
                s.offline = s.offline || !survives(&self.geom, s.out_of_service());
                self.state = Arc::new(s);
                self.out
                    .push_back(MetaOutput::Broadcast(self.state.clone()));
            }
        }
    }

    fn applied(&mut self, state: &Arc<ArrayState>) {
        self.out.push_back(MetaOutput::Release(state.clone()));
    }

    fn poll_output(&mut self) -> Option<MetaOutput> {
        self.out.pop_front()
    }

    fn state(&self) -> Arc<ArrayState> {
        self.state.clone()
    }
}

/// `bdev_raid::meta::Meta` on the host: superblock writes become
/// [`MetaOutput::Write`] with FUA (token = write id), broadcasts are
/// released once every channel applied them, `tick` feeds it milliseconds
/// since the adapter was made (build the `Meta` with `now_ms` 0) and the
/// wall clock.
pub struct MdMeta {
    meta: Meta,
    start: Instant,
    out: VecDeque<MetaOutput>,
}

impl MdMeta {
    pub fn new(meta: Meta) -> MdMeta {
        MdMeta {
            meta,
            start: Instant::now(),
            out: VecDeque::new(),
        }
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }
}

impl MetaPath for MdMeta {
    fn request(&mut self, req: MetaRequest) {
        self.meta.request(req);
    }

    fn mark_synced(&mut self) {
        self.meta.mark_synced();
    }

    fn recovery(&self, role: usize) -> Option<RecoveryInfo> {
        self.meta.recovery(role)
    }

    fn resync_from(&self) -> u64 {
        self.meta.resync_from()
    }

    fn resync_progress(&mut self, lba: u64) {
        self.meta.resync_progress(lba);
    }

    fn recovery_progress(&mut self, role: usize, device: u64, offset: u64) {
        self.meta.recovery_progress(role, device, offset);
    }

    fn add_member(&mut self, role: usize, dev: NewMember) -> Result<Recovery, AddError> {
        self.meta.add_member(role, dev)
    }

    fn check_add(&self, role: usize, dev: &NewMember) -> Result<(), AddError> {
        self.meta.check_add(role, dev).map(|_| ())
    }

    fn adds_pending(&self) -> u64 {
        self.meta.adds_pending()
    }

    fn set_write_mostly(&mut self, role: usize, on: bool) -> Result<(), FlagError> {
        self.meta.set_write_mostly(role, on)
    }

    fn applied(&mut self, state: &Arc<ArrayState>) {
        self.meta.released(state.seq);
        self.out.push_back(MetaOutput::Release(state.clone()));
    }

    fn write_done(&mut self, id: u64, ok: bool) {
        self.meta.sb_write_done(id, ok);
    }

    fn tick(&mut self, now: Instant) {
        if let Ok(d) = SystemTime::now().duration_since(UNIX_EPOCH) {
            self.meta.set_wall_clock(d.as_secs());
        }
        self.meta
            .tick(now.saturating_duration_since(self.start).as_millis() as u64);
    }

    fn shutdown(&mut self) {
        self.meta.shutdown();
    }

    fn abandon(&mut self) -> bool {
        self.meta.abandon()
    }

    fn stop_done(&self) -> bool {
        self.meta.stop_done()
    }

    fn poll_output(&mut self) -> Option<MetaOutput> {
        if let Some(o) = self.out.pop_front() {
            return Some(o);
        }
        Some(match self.meta.poll_action()? {
            MetaAction::WriteSb {
                member,
                token,
                offset,
                data,
            } => MetaOutput::Write(MetaWrite {
                id: token,
                member,
                offset,
                data,
                fua: true,
            }),
            MetaAction::Broadcast(s) => MetaOutput::Broadcast(s),
        })
    }

    fn state(&self) -> Arc<ArrayState> {
        self.meta.state().clone()
    }
}
