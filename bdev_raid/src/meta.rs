//! The metadata path: one instance per array, on one pinned thread.
//!
//! A sans-I/O state machine. The host feeds it the channels' requests
//! ([`MetaRequest`]), the completions of the superblock writes it asked for,
//! and the time; it emits [`MetaAction`]s: write this superblock to that
//! member (durably: FUA), and broadcast this [`ArrayState`] to every channel.
//!
//! The host owns the second phase of every broadcast: once every channel has
//! applied a state (`Channel::apply_state`), it hands the same state to every
//! channel again (`Channel::release`), which completes the writes parked on
//! the failures that state records (R1).
//!
//! What it does:
//! - **Failures (R1).** Members reported failed are recorded faulty (role
//!   0xfffe), events + 1, in a superblock written to every surviving member
//!   in parallel; only when that is durable is the new state broadcast.
//!   Failures arriving while a commit is in flight are batched into the next.
//! - **Superblock write errors.** A survivor whose superblock write fails is
//!   failed too, in the next commit, as long as some survivor took the
//!   superblock. If none did, nothing is broadcast: the parked writes stay
//!   parked, the array reports `blocked` and the commit is retried with
//!   backoff (R3) until a survivor takes it.
//! - **Offline.** When the members left cannot hold all the data the state
//!   says `offline` and every I/O fails.
//! - **Clean/dirty.** Writes are issued only while the superblocks durably
//!   say dirty (`resync_offset` 0). After `safemode_ms` without new writes
//!   the array is made not-writable, and once every channel reports no
//!   write in flight the superblocks are marked clean (`resync_offset` =
//!   `u64::MAX`); the next write marks it dirty again first. Orderly
//!   shutdown does the same at once.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::bitmap::{DiskBitmap, DURABLE, IDLE, LOADED, NEEDED};
use crate::channel::MetaRequest;
use crate::layout::{Geometry, MAX_MEMBERS};
use crate::ondisk::{
    DevRole, MdTime, Superblock, MD_FEATURE_RECOVERY_BITMAP, MD_FEATURE_RECOVERY_OFFSET,
    SB_BLOCK_BYTES, SB_OFFSET_BYTES,
};
use crate::state::{survives, ArrayState, MemberState, Shared};

/// Tunables of the metadata path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaConfig {
    /// Idle time before the array is marked clean (md's safe_mode_delay).
    pub safemode_ms: u64,
    /// First and longest wait before retrying a commit no member took.
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    /// Time between two passes of the bitmap daemon: a chunk idle for two
    /// passes has its bit cleared (md's daemon_sleep).
    pub daemon_sleep_ms: u64,
    /// Time between two writes of a rebuild's progress to the member's
    /// superblock (a crash resumes the rebuild from there).
    pub checkpoint_ms: u64,
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            safemode_ms: 200,
            retry_min_ms: 10,
            retry_max_ms: 5_000,
            daemon_sleep_ms: 5_000,
            checkpoint_ms: 1_000,
        }
    }
}

/// What the host must do for the metadata path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaAction {
    /// Write `data` at byte `offset` of member `member` (absolute on the
    /// device, not in its data area), durably, and only once every write
    /// the member completed before is durable too (a flush, then the write
    /// with FUA; clearing a bitmap bit relies on it), then call
    /// [`Meta::sb_write_done`] with `token`. The data is a superblock,
    /// followed directly by the bitmap area when the array has one, or the
    /// bitmap area alone.
    WriteSb {
        member: u16,
        token: u64,
        offset: u64,
        data: Vec<u8>,
    },
    /// Apply this state on every channel; when all have, release it on
    /// every channel.
    Broadcast(Arc<ArrayState>),
}

/// How a member brought in by [`Meta::add_member`] is made current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Only the chunks the bitmap marks (written since it left).
    Bitmap,
    /// Every block.
    Full,
}

/// A rebuild to run (see [`Meta::recovery`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryInfo {
    pub kind: Recovery,
    /// Member block to start from (its recovery offset).
    pub from: u64,
    /// Which device in the role (`readded`): pass it back with progress.
    pub device: u64,
}

/// A device to bring into a role.
#[derive(Clone, Debug)]
pub struct NewMember {
    pub device_uuid: [u8; 16],
    /// Device size in 512-byte sectors.
    pub sectors: u64,
    /// The md superblock found on it, if any (a member coming back).
    pub old_sb: Option<Superblock>,
    /// Bring it in write-mostly (md's `--add --write-mostly`).
    pub write_mostly: bool,
}

/// Why [`Meta::add_member`] refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    #[error("role {role}: the array has {members} roles")]
    Role { role: usize, members: usize },
    #[error("role {role} is served ({state:?}); only a faulty or missing role takes a new member")]
    InUse { role: usize, state: MemberState },
    #[error("the array is offline: no member holds the data to rebuild from")]
    Offline,
    #[error("device of {sectors} sectors is smaller than the {needed} a member needs")]
    TooSmall { sectors: u64, needed: u64 },
}

/// Why [`Meta::set_write_mostly`] refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("role {role}: the array has {members} roles")]
    Role { role: usize, members: usize },
    #[error("role {role} has no member in service ({state:?})")]
    NotInService { role: usize, state: MemberState },
    #[error("write-mostly applies to mirrored levels (raid1, raid10), not {level}")]
    NotMirrored { level: &'static str },
    #[error(
        "role {role} is the only in-sync copy of some data: write-mostly would leave it readable only from write-mostly members"
    )]
    LastReadable { role: usize },
    #[error("write-mostly is recorded in the members' superblocks; this array has none")]
    NoSuperblock,
}

/// The metadata path's view, for the status API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaStatus {
    pub events: u64,
    /// A commit is waiting for a member to take its superblock (R3).
    pub blocked: bool,
    pub offline: bool,
    /// The superblocks say dirty.
    pub dirty: bool,
    pub writable: bool,
    pub members: Vec<MemberState>,
    pub bitmap: Option<BitmapStatus>,
    /// A resync is due (after a crash, or a new array's initial one): the
    /// sector of each member it resumes from (what an orderly stop records
    /// as `resync_offset`).
    pub resync_from_sector: Option<u64>,
}

/// The write-intent bitmap, for the status API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapStatus {
    pub chunk_bytes: u64,
    pub chunks: u64,
    /// Bits set on disk (or in the write in flight).
    pub dirty: u64,
    /// Chunks still to be resynced.
    pub needed: u64,
    pub events_cleared: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quiesce {
    /// Writable (or writes just resumed).
    Open,
    /// Not writable since publication `seq`; waiting for every channel to
    /// report no write in flight in that publication. (Events alone would
    /// not do: a drain called off and begun again keeps the events, and a
    /// late report from the first drain must not count for the second.)
    Draining { seq: u64, idle: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A new superblock (and the bitmap) on every member in service.
    Sb,
    /// Only bringing lagging superblocks up to the current events.
    Refresh,
    /// Only the bitmap, on every member in service.
    Bits,
    /// Only the superblocks of members being rebuilt, with their recovery
    /// offsets.
    Checkpoint,
}

struct Commit {
    seq: u64,
    kind: Kind,
    /// Chunks whose bits this write makes durable.
    bits: Vec<u64>,
    target: ArrayState,
    /// The target marks the superblocks dirty.
    dirty: bool,
    writing: u64,
    ok: u64,
    failed: u64,
    /// The failures this commit records (`pending_fail` when it started).
    failing: u64,
}

/// The metadata path of one array.
pub struct Meta {
    geom: Arc<Geometry>,
    shared: Arc<Shared>,
    cfg: MetaConfig,
    /// Superblock of each role's member as last written (None: no member).
    sbs: Vec<Option<Superblock>>,
    state: Arc<ArrayState>,
    disk_dirty: bool,
    pending_fail: u64,
    want_dirty: bool,
    want_clean: bool,
    quiesce: Quiesce,
    commit: Option<Commit>,
    seq: u64,
    blocked: bool,
    retry_at: u64,
    backoff: u64,
    now: u64,
    /// Wall clock (Unix seconds) for `utime`; 0 until the host sets it.
    wall_secs: u64,
    last_activity: u64,
    activity_seen: u64,
    shutting_down: bool,
    /// Superblocks must be rewritten even with nothing else to record.
    refresh: bool,
    /// The array's name changed ([`Meta::record_name`]): a commit records
    /// it.
    renamed: bool,
    /// Assembled dirty: the copies/parity must be resynced before the
    /// array may be marked clean again.
    resync_needed: bool,
    /// How far the resync got, in md's resync sectors (array sectors for
    /// raid1/10, member sectors for parity levels): an orderly stop before
    /// it ends records it as `resync_offset`, where the next start resumes.
    resync_cp: u64,
    /// The bitmap as on disk (or as the write in flight makes it).
    bitmap: Option<DiskBitmap>,
    /// Chunks set in `bitmap` by a write that did not land anywhere yet.
    bits_pending: Vec<u64>,
    /// A channel waits for bits: look for chunks that need theirs.
    bits_wanted: bool,
    /// Chunks cleared in memory, to clear on disk with the next write.
    to_clear: Vec<u64>,
    next_pass: u64,
    /// The bitmap was flushed for an orderly stop.
    stop_flushed: bool,
    /// Members added (superblock prepared), to be recorded recovering.
    pending_add: u64,
    /// Members whose rebuild reached the end, to be recorded in sync.
    pending_insync: u64,
    /// How far each member's rebuild got (member blocks), as reported.
    rec_progress: Vec<u64>,
    /// How each member being rebuilt is recovered.
    rec_kind: Vec<Option<Recovery>>,
    /// When the recovery offsets are next written to disk.
    next_checkpoint: u64,
    /// Publication that first recorded each member recovering: its rebuild
    /// may start once every channel has it (writes reach the member).
    rec_seq: Vec<u64>,
    /// Newest publication every channel has applied.
    released_seq: u64,
    /// Members added back whose failed flag is cleared at that release.
    unfail: u64,
    /// Write-mostly members as asked; recorded by the next commit.
    wm_want: u64,
    actions: VecDeque<MetaAction>,
}

impl Meta {
    /// The metadata path of an array in `state` whose members carry `sbs`
    /// (one per role; `None` for a missing member), and `bitmap` as read from
    /// them (its words live in `shared`). Whether the array is dirty is what
    /// the superblocks say; a dirty array's set bits are the chunks to
    /// resync.
    pub fn new(
        geom: Arc<Geometry>,
        shared: Arc<Shared>,
        state: Arc<ArrayState>,
        sbs: Vec<Option<Superblock>>,
        bitmap: Option<DiskBitmap>,
        cfg: MetaConfig,
        now_ms: u64,
    ) -> Meta {
        assert_eq!(sbs.len(), geom.members(), "one superblock slot per role");
        assert!(geom.members() <= MAX_MEMBERS);
        assert_eq!(
            state.write_mostly,
            write_mostly_of(&sbs),
            "the state's write-mostly members are the superblocks' (see `write_mostly_of`)"
        );
        assert_eq!(
            state.write_behind,
            bitmap.as_ref().map_or(0, |b| b.sb.write_behind),
            "the state's write-behind is the bitmap's"
        );
        let disk_dirty = sbs.iter().flatten().any(|sb| !sb.is_clean());
        if disk_dirty && bitmap.is_none() {
            // Until a resync gets there (the bitmap's marks say where,
            // when there is one).
            shared.set_unsynced_from(0);
        }
        assert_eq!(
            bitmap.is_some(),
            shared.bitmap.is_some(),
            "a bitmap needs its shared words and the words their bitmap"
        );
        // The bits read may be a merge of several members' (a bitmap write
        // a crash cut short): none counts as durable until the merged bitmap
        // has been written to every member, which is the first thing done.
        let mut bits_pending = Vec::new();
        if let (Some(b), Some(words)) = (&bitmap, &shared.bitmap) {
            for c in 0..words.geom().chunks() {
                if b.get(c) {
                    words.set_flags(c, LOADED | if disk_dirty { NEEDED } else { 0 });
                    bits_pending.push(c);
                }
            }
        }
        // A member whose superblock lags the array's (a commit cut short by
        // a crash) is brought up to date at once, so it never falls two
        // events behind without having missed anything.
        let lagging = sbs.iter().enumerate().any(|(m, sb)| {
            sb.as_ref()
                .is_some_and(|sb| sb.events != state.events && state.members[m].in_service())
        });
        let quiesce = if disk_dirty && !state.writable {
            // Dirty on disk and not writable: drain (trivially) towards clean.
            Quiesce::Draining {
                seq: state.seq,
                idle: 0,
            }
        } else {
            Quiesce::Open
        };
        let mut m = Meta {
            resync_needed: disk_dirty,
            resync_cp: sbs
                .iter()
                .flatten()
                .map(|sb| sb.resync_offset)
                .min()
                .filter(|_| disk_dirty)
                .unwrap_or(0),
            quiesce,
            geom,
            cfg,
            sbs,
            disk_dirty,
            pending_fail: 0,
            want_dirty: false,
            want_clean: false,
            commit: None,
            seq: 0,
            blocked: false,
            retry_at: 0,
            backoff: cfg.retry_min_ms,
            now: now_ms,
            wall_secs: 0,
            last_activity: now_ms,
            activity_seen: shared.activity(),
            shared,
            shutting_down: false,
            actions: VecDeque::new(),
            state,
            refresh: lagging,
            renamed: false,
            bits_wanted: !bits_pending.is_empty(),
            bitmap,
            bits_pending,
            to_clear: Vec::new(),
            next_pass: now_ms + cfg.daemon_sleep_ms,
            stop_flushed: false,
            pending_add: 0,
            pending_insync: 0,
            rec_progress: Vec::new(),
            rec_kind: Vec::new(),
            next_checkpoint: 0,
            rec_seq: Vec::new(),
            released_seq: 0,
            unfail: 0,
            wm_want: 0,
        };
        m.wm_want = m.state.write_mostly;
        let n = m.geom.members();
        m.rec_progress = (0..n)
            .map(|r| match m.state.members[r] {
                MemberState::Recovering(o) => o,
                _ => 0,
            })
            .collect();
        m.rec_seq = vec![m.state.seq; n];
        m.released_seq = m.state.seq;
        m.rec_kind = (0..n)
            .map(|r| {
                let sb = m.sbs[r].as_ref()?;
                matches!(m.state.members[r], MemberState::Recovering(_)).then_some(
                    if sb.feature_map & MD_FEATURE_RECOVERY_BITMAP != 0 {
                        Recovery::Bitmap
                    } else {
                        Recovery::Full
                    },
                )
            })
            .collect();
        m.step();
        m
    }

    pub fn state(&self) -> &Arc<ArrayState> {
        &self.state
    }

    pub fn status(&self) -> MetaStatus {
        MetaStatus {
            events: self.state.events,
            blocked: self.blocked,
            offline: self.state.offline,
            dirty: self.disk_dirty,
            writable: self.state.writable,
            members: self.state.members.clone(),
            resync_from_sector: self.resync_needed.then_some(self.resync_cp),
            bitmap: self.bitmap.as_ref().map(|b| {
                let words = self.shared.bitmap.as_ref().unwrap();
                BitmapStatus {
                    chunk_bytes: words.geom().chunk_bytes(),
                    chunks: words.geom().chunks(),
                    dirty: b.dirty(),
                    needed: words.needed_count(),
                    events_cleared: b.sb.events_cleared,
                }
            }),
        }
    }

    /// One line on the metadata path's inner state, for diagnosing a host.
    pub fn describe(&self) -> String {
        format!(
            "events {} writable {} disk_dirty {} quiesce {:?} commit {} pending_fail {:#b} want_dirty {} want_clean {} refresh {} resync_needed {} blocked {} shutting_down {}",
            self.state.events,
            self.state.writable,
            self.disk_dirty,
            self.quiesce,
            self.commit.as_ref().map_or("none".to_string(), |c| format!("{:?} seq {} writing {:#b}", c.kind, c.seq, c.writing)),
            self.pending_fail,
            self.want_dirty,
            self.want_clean,
            self.refresh,
            self.resync_needed,
            self.blocked,
            self.shutting_down,
        )
    }

    /// The superblock last written to role `member` (what `examine` shows).
    pub fn superblock(&self, member: usize) -> Option<&Superblock> {
        self.sbs[member].as_ref()
    }

    /// The bitmap as last written (or being written).
    pub fn bitmap(&self) -> Option<&DiskBitmap> {
        self.bitmap.as_ref()
    }

    pub fn poll_action(&mut self) -> Option<MetaAction> {
        self.actions.pop_front()
    }

    /// Whether the array is shut down cleanly: clean on disk, nothing in
    /// flight.
    pub fn is_clean(&self) -> bool {
        !self.disk_dirty && self.commit.is_none() && !self.state.writable
    }

    /// An orderly stop ([`Meta::shutdown`]) is done: marked clean, or
    /// offline with no commit in flight. An offline array is not marked
    /// clean (writes to it failed; what its survivors say is the truth), so
    /// waiting for that only runs the stop into its timeout.
    pub fn stop_done(&self) -> bool {
        self.is_clean() || (self.state.offline && self.commit.is_none())
    }

    /// A request from a channel.
    pub fn request(&mut self, req: MetaRequest) {
        match req {
            MetaRequest::MemberFailed { member, device } => {
                let m = member as usize;
                if m < self.geom.members()
                    && self.state.members[m].in_service()
                    && self.state.readded[m] == device
                {
                    self.pending_fail |= 1 << m;
                }
            }
            MetaRequest::MarkDirty { .. } => {
                if !self.state.writable && !self.state.offline {
                    self.want_dirty = true;
                    self.want_clean = false;
                }
            }
            MetaRequest::BitsNeeded { .. } => self.bits_wanted = true,
            MetaRequest::WritesIdle { channel, seq } => {
                if let Quiesce::Draining { seq: q, idle } = self.quiesce {
                    if q == seq {
                        let idle = idle | 1 << channel;
                        self.quiesce = Quiesce::Draining { seq: q, idle };
                        let all = (1u64 << self.shared.channels()) - 1;
                        if idle & all == all && !self.want_dirty {
                            self.want_clean = true;
                        }
                    }
                }
            }
        }
        self.step();
    }

    /// The superblock write `token` ended.
    pub fn sb_write_done(&mut self, token: u64, ok: bool) {
        let (seq, member) = (token >> 8, (token & 0xff) as usize);
        let Some(c) = self.commit.as_mut() else {
            return;
        };
        if c.seq != seq || c.writing & 1 << member == 0 {
            return; // a write of an abandoned commit
        }
        c.writing &= !(1 << member);
        if ok {
            c.ok |= 1 << member;
        } else {
            c.failed |= 1 << member;
        }
        if c.writing == 0 {
            self.finish_commit();
        }
        self.step();
    }

    /// The wall clock, for the superblocks' update time (Unix seconds).
    pub fn set_wall_clock(&mut self, unix_secs: u64) {
        self.wall_secs = unix_secs;
    }

    /// Time passes (milliseconds, monotonic).
    pub fn tick(&mut self, now_ms: u64) {
        self.now = now_ms;
        let a = self.shared.activity();
        if a != self.activity_seen {
            self.activity_seen = a;
            self.last_activity = now_ms;
        }
        if self.bitmap.is_some() && now_ms >= self.next_pass {
            self.next_pass = now_ms + self.cfg.daemon_sleep_ms;
            self.daemon_pass();
        }
        self.step();
    }

    /// The array was assembled dirty and its copies/parity have now been
    /// made consistent: it may be marked clean again.
    pub fn mark_synced(&mut self) {
        self.resync_needed = false;
        self.step();
    }

    /// Array block the resync of a dirty array starts from: 0 after a
    /// crash, where an orderly stop left it otherwise (`resync_offset`).
    pub fn resync_from(&self) -> u64 {
        let spb = u64::from(self.geom.block_size()) / 512;
        let b = self.resync_cp / spb;
        if self.geom.level().is_parity() {
            // Saturating: a damaged `resync_offset` may lie past the end.
            (b / self.geom.strip_blocks()).saturating_mul(self.geom.stripe_data_blocks())
        } else {
            b
        }
        .min(self.geom.array_blocks())
    }

    /// The resync has made everything below array block `lba` agree (an
    /// orderly stop records it; a crash restarts from 0).
    pub fn resync_progress(&mut self, lba: u64) {
        let spb = u64::from(self.geom.block_size()) / 512;
        let b = if self.geom.level().is_parity() {
            (lba / self.geom.stripe_data_blocks()) * self.geom.strip_blocks()
        } else {
            lba
        };
        self.resync_cp = self.resync_cp.max(b * spb);
    }

    /// Orderly shutdown: stop writes, and mark clean once they drained.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        self.step();
    }

    /// The host stops the array while it is blocked (a commit no member
    /// took is being retried, R3) and its held writes cannot drain: give
    /// up. The array goes offline without writing, as for a failure it
    /// cannot survive: the held writes fail, and the superblocks stay as
    /// they last recorded it. Nothing happens when it is not blocked.
    /// Whether it gave up.
    pub fn abandon(&mut self) -> bool {
        if !self.blocked || self.state.offline || self.commit.is_some() {
            return false;
        }
        self.blocked = false;
        let mut s = (*self.state).clone();
        s.offline = true;
        s.writable = false;
        self.publish(s);
        true
    }

    /// Bring a device into role `role` (faulty or missing): a member that
    /// left and comes back (its superblock `old_sb`, events at least the
    /// bitmap's `events_cleared`) is recovered from the bitmap, anything
    /// else fully. The member is recorded recovering (offset 0) by a commit
    /// like a failure's; it takes writes from then on and is read only below
    /// the offset the rebuild reports with [`Meta::recovery_progress`].
    /// Roles an accepted [`Meta::add_member`] has not committed yet (bit
    /// per role): their published state still says faulty or missing.
    pub fn adds_pending(&self) -> u64 {
        self.pending_add
    }

    /// Whether [`Meta::add_member`] would take `dev` into `role` now:
    /// hosts ask before they swap the device into the role's channels,
    /// so a refused add leaves the role as it was. The superblock of an
    /// in-sync member (the new one's template) when it would.
    pub fn check_add(&self, role: usize, dev: &NewMember) -> Result<Superblock, AddError> {
        let n = self.geom.members();
        if role >= n {
            return Err(AddError::Role { role, members: n });
        }
        if self.state.offline {
            return Err(AddError::Offline);
        }
        let st = self.state.members[role];
        if st.in_service() || self.pending_add & 1 << role != 0 {
            return Err(AddError::InUse { role, state: st });
        }
        let template = (0..n)
            .filter(|&r| self.state.members[r] == MemberState::InSync)
            .find_map(|r| self.sbs[r].clone())
            .ok_or(AddError::Offline)?;
        if dev.sectors < template.data_offset + template.size {
            return Err(AddError::TooSmall {
                sectors: dev.sectors,
                needed: template.data_offset + template.size,
            });
        }
        Ok(template)
    }

    pub fn add_member(&mut self, role: usize, dev: NewMember) -> Result<Recovery, AddError> {
        let template = self.check_add(role, &dev)?;
        let n = self.geom.members();
        // A device that was itself being rebuilt when it left was never in
        // sync beyond its recovery offset: the bitmap does not cover that.
        // A slot another role's device holds now cannot be taken back
        // (md refuses a desc_nr in use): such a device is added as new.
        let held = |dn: u32| {
            self.sbs
                .iter()
                .enumerate()
                .any(|(r, s)| r != role && s.as_ref().is_some_and(|s| s.dev_number == dn))
        };
        let readd = dev.old_sb.as_ref().filter(|o| {
            o.feature_map & MD_FEATURE_RECOVERY_OFFSET == 0
                && o.set_uuid == template.set_uuid
                && o.device_uuid == dev.device_uuid
                && !held(o.dev_number)
                && o.dev_roles.get(o.dev_number as usize) == Some(&DevRole::Active(role as u16))
                && self
                    .bitmap
                    .as_ref()
                    .is_some_and(|b| o.events >= b.sb.events_cleared && !b.sb.is_stale())
        });
        let (kind, dev_number) = match readd {
            Some(o) => (Recovery::Bitmap, o.dev_number),
            None => {
                // A new device takes the first free slot of dev_roles from
                // raid_disks on (md's choice of a desc_nr, so the slot of a
                // device that is out, missing or faulty, stays its own
                // should it come back and be re-added from the bitmap): one
                // no device of the array holds (a spare slot, or that of a
                // faulty device since replaced: md frees a removed device's
                // slot too, else slots run out after enough replacements),
                // else one past the end.
                let used: Vec<u32> = self.sbs.iter().flatten().map(|s| s.dev_number).collect();
                let dn = (n as u32..)
                    .find(|d| {
                        !used.contains(d)
                            && template
                                .dev_roles
                                .get(*d as usize)
                                .is_none_or(|r| matches!(r, DevRole::Spare | DevRole::Faulty))
                    })
                    .unwrap();
                (Recovery::Full, dn)
            }
        };
        let mut sb = template;
        sb.device_uuid = dev.device_uuid;
        sb.dev_number = dev_number;
        sb.data_size = dev.sectors - sb.data_offset;
        sb.devflags = 0;
        sb.cnt_corrected_read = 0;
        self.sbs[role] = Some(sb);
        if dev.write_mostly && self.geom.copies() > 1 {
            self.wm_want |= 1 << role;
        } else {
            self.wm_want &= !(1 << role);
        }
        self.rec_kind[role] = Some(kind);
        self.rec_progress[role] = 0;
        self.pending_add |= 1 << role;
        self.step();
        Ok(kind)
    }

    /// Make member `role` write-mostly or not (md's `writemostly` /
    /// `-writemostly` in the member's state): recorded in its superblock's
    /// devflags by a commit, then broadcast. Refused on levels without
    /// mirrors, for a role with no member in service, and where the
    /// members left to read (in sync, not write-mostly) would not hold all
    /// the data.
    pub fn set_write_mostly(&mut self, role: usize, on: bool) -> Result<(), FlagError> {
        let n = self.geom.members();
        if role >= n {
            return Err(FlagError::Role { role, members: n });
        }
        if self.geom.copies() < 2 {
            return Err(FlagError::NotMirrored {
                level: self.geom.level().name(),
            });
        }
        let st = self.state.members[role];
        if !st.in_service() || self.pending_fail & 1 << role != 0 {
            return Err(FlagError::NotInService { role, state: st });
        }
        let want = if on {
            self.wm_want | 1 << role
        } else {
            self.wm_want & !(1 << role)
        };
        if on
            && !survives(
                &self.geom,
                self.state.not_in_sync() | self.shared.failed() | want,
            )
        {
            return Err(FlagError::LastReadable { role });
        }
        self.wm_want = want;
        self.step();
        Ok(())
    }

    /// The rebuild of member `role` has made member blocks `[0, offset)`
    /// current. At the end of the member it is recorded in sync (a commit);
    /// before, the new offset is broadcast (reads may use the member below
    /// it) and written to its superblock now and then.
    /// `device` is the `device` of the [`Meta::recovery`] the rebuild
    /// started from: progress of a rebuild of a device that has left since
    /// is ignored, and so is that of a member seen failing (its rebuild may
    /// have gone on without writing it).
    pub fn recovery_progress(&mut self, role: usize, device: u64, offset: u64) {
        if role < self.rec_progress.len()
            && self.state.readded[role] == device
            && (self.pending_fail | self.shared.failed()) & 1 << role == 0
            && offset > self.rec_progress[role]
        {
            self.rec_progress[role] = offset;
            self.step();
        }
    }

    /// How member `role` is being rebuilt and from which member block, once
    /// it may be: every channel has applied a state recording it recovering
    /// (so every write now reaches it; a rebuild started earlier could be
    /// overtaken by a write that skipped it).
    pub fn recovery(&self, role: usize) -> Option<RecoveryInfo> {
        match self.state.members.get(role) {
            Some(MemberState::Recovering(o)) if self.released_seq >= self.rec_seq[role] => {
                self.rec_kind[role].map(|kind| RecoveryInfo {
                    kind,
                    from: *o,
                    device: self.state.readded[role],
                })
            }
            _ => None,
        }
    }

    /// Every channel has applied the state of publication `seq` (the host
    /// calls this where it starts the second phase of a broadcast).
    pub fn released(&mut self, seq: u64) {
        self.released_seq = self.released_seq.max(seq);
        for m in 0..self.geom.members() {
            if self.unfail & 1 << m != 0 && self.released_seq >= self.rec_seq[m] {
                // Every channel records the member recovering now: it may
                // take writes again (a channel still on an older state would
                // take it for the member that failed, and read it).
                self.unfail &= !(1 << m);
                self.shared.clear_failed(m);
            }
        }
    }

    /// Apply reported rebuild progress: a finished member goes in sync by a
    /// commit, others by a broadcast. True if something was started.
    fn publish_progress(&mut self) -> bool {
        let mut s = (*self.state).clone();
        let mut moved = false;
        for r in 0..self.geom.members() {
            if let MemberState::Recovering(o) = s.members[r] {
                let p = self.rec_progress[r];
                if p >= self.geom.member_blocks(r) {
                    self.pending_insync |= 1 << r;
                } else if p > o {
                    s.members[r] = MemberState::Recovering(p);
                    moved = true;
                }
            }
        }
        if self.pending_insync != 0 {
            self.start_commit(self.disk_dirty || self.want_dirty);
            return true;
        }
        if moved {
            self.publish(s);
        }
        false
    }

    /// Write the recovery offsets of the members being rebuilt into their
    /// own superblocks (md keeps it there), at the current events.
    fn start_checkpoint(&mut self) {
        let members = self.state.recovering()
            & (0..self.geom.members())
                .filter(|&m| self.sbs[m].is_some())
                .fold(0, |a, m| a | 1 << m);
        self.rewrite_superblocks(Kind::Checkpoint, members);
    }

    /// Write the current state's superblocks (and bitmap) to `members`
    /// only, at the current events.
    fn rewrite_superblocks(&mut self, kind: Kind, members: u64) {
        if members == 0 {
            return;
        }
        let target = (*self.state).clone();
        self.seq += 1;
        let dirty = self.disk_dirty;
        for m in 0..self.geom.members() {
            if members & 1 << m != 0 {
                self.actions.push_back(MetaAction::WriteSb {
                    member: m as u16,
                    token: self.seq << 8 | m as u64,
                    offset: SB_OFFSET_BYTES,
                    data: self.commit_data(m, &target, dirty),
                });
            }
        }
        self.commit = Some(Commit {
            seq: self.seq,
            kind,
            bits: Vec::new(),
            target,
            dirty,
            writing: members,
            ok: 0,
            failed: 0,
            failing: 0,
        });
    }

    /// Decide what to do next.
    fn step(&mut self) {
        if self.commit.is_some() {
            return;
        }
        if self.blocked && self.now < self.retry_at {
            return;
        }
        if self.state.offline {
            return;
        }
        // Going not-writable needs no disk write: broadcast first, the
        // channels then report when their writes have drained.
        let idle = self.now.saturating_sub(self.last_activity) >= self.cfg.safemode_ms;
        if self.state.writable
            && self.pending_fail == 0
            && !self.want_dirty
            && (self.shutting_down || idle)
        {
            let mut s = (*self.state).clone();
            s.writable = false;
            self.publish(s);
            self.quiesce = Quiesce::Draining {
                seq: self.state.seq,
                idle: 0,
            };
            return;
        }
        if self.pending_fail == 0
            && (self.pending_add != 0
                || self.pending_insync != 0
                || self.wm_want != self.state.write_mostly)
        {
            self.start_commit(self.disk_dirty || self.want_dirty);
            return;
        }
        if self.pending_fail == 0 && self.publish_progress() {
            return;
        }
        if self.want_dirty && !self.disk_dirty && self.pending_fail == 0 {
            self.start_commit(true);
        } else if self.want_dirty && self.disk_dirty && self.pending_fail == 0 {
            // Still dirty on disk (a clean was never written): reopen.
            self.want_dirty = false;
            self.quiesce = Quiesce::Open;
            self.last_activity = self.now;
            let mut s = (*self.state).clone();
            s.writable = true;
            self.publish(s);
        } else if self.pending_fail != 0 || self.renamed {
            self.renamed = false;
            self.start_commit(self.disk_dirty || self.want_dirty);
        } else if self.refresh {
            self.refresh = false;
            self.start_refresh();
        } else if self.bitmap.is_some() && (self.bits_wanted || !self.to_clear.is_empty()) {
            self.start_bits();
        } else if self.state.recovering() != 0 && self.now >= self.next_checkpoint {
            self.next_checkpoint = self.now + self.cfg.checkpoint_ms;
            self.start_checkpoint();
        } else if self.want_clean && self.disk_dirty && (!self.resync_needed || self.shutting_down)
        {
            if self.shutting_down {
                // md flushes the bitmap on an orderly stop: every idle chunk
                // is cleared with the clean superblock.
                self.stop_flushed = true;
                self.daemon_pass();
                self.daemon_pass();
            }
            self.start_commit(false);
        } else if self.shutting_down
            && !self.stop_flushed
            && !self.disk_dirty
            && !self.state.writable
            && self.bitmap.is_some()
        {
            // Already clean (no write since): flush the bitmap alone.
            self.stop_flushed = true;
            self.daemon_pass();
            self.daemon_pass();
            self.start_bits();
        } else if self.want_clean && !(self.disk_dirty && self.resync_needed) {
            // (Kept while only the resync holds the clean mark back: an
            // orderly stop then writes it with the resync's checkpoint.)
            self.want_clean = false;
        }
    }

    fn publish(&mut self, mut s: ArrayState) {
        s.seq = self.state.seq + 1;
        let s = Arc::new(s);
        self.state = s.clone();
        self.actions.push_back(MetaAction::Broadcast(s));
        if let Quiesce::Draining { .. } = self.quiesce {
            // Idle reports count only in the newest publication.
            self.quiesce = Quiesce::Draining {
                seq: self.state.seq,
                idle: 0,
            };
        }
    }

    /// Whether bits may be cleared: no member out of service or failing
    /// (a member that comes back is recovered from the bits set meanwhile).
    fn degraded(&self) -> bool {
        self.state.not_in_sync() != 0 || self.shared.failed() != 0 || self.pending_fail != 0
    }

    /// md's bitmap daemon: a chunk with its bit on disk, no write in flight
    /// and no resync owed is marked idle; one already idle since the last
    /// pass is cleared in memory, and on disk with the next bitmap write.
    fn daemon_pass(&mut self) {
        if self.degraded() {
            return;
        }
        let Some(words) = self.shared.bitmap.as_ref() else {
            return;
        };
        let to_clear = &mut self.to_clear;
        words.for_each_active(|c| {
            let w = words.word(c);
            if w == DURABLE {
                words.swap_if(c, DURABLE, DURABLE | IDLE);
            } else if w == DURABLE | IDLE && words.swap_if(c, DURABLE | IDLE, 0) {
                to_clear.push(c);
            }
        });
    }

    /// Fold the pending clears and the bits channels wait for into the
    /// bitmap; returns the chunks whose bits the next write makes durable,
    /// and whether any bit was cleared.
    fn prepare_bits(&mut self) -> (Vec<u64>, bool) {
        self.bits_wanted = false;
        let (Some(b), Some(words)) = (self.bitmap.as_mut(), self.shared.bitmap.as_ref()) else {
            return (Vec::new(), false);
        };
        let cleared = !self.to_clear.is_empty();
        if cleared {
            for c in self.to_clear.drain(..) {
                b.set(c, false);
            }
            // Everything cleared was in sync on every member at these
            // events: a member that left later may come back by the bitmap.
            b.sb.events_cleared = self.state.events;
        }
        let mut bits = std::mem::take(&mut self.bits_pending);
        words.for_each_active(|c| {
            let w = words.word(c);
            // A bit already set here and not durable is one of `bits`.
            if w & DURABLE == 0 && words.writes(c) > 0 && !b.get(c) {
                b.set(c, true);
                bits.push(c);
            }
        });
        (bits, cleared)
    }

    /// Write the bitmap alone: bits channels wait for, bits to clear.
    fn start_bits(&mut self) {
        let (bits, cleared) = self.prepare_bits();
        let target = (*self.state).clone();
        let survivors = self.survivors(&target);
        if survivors == 0 || (bits.is_empty() && !cleared) {
            return;
        }
        self.seq += 1;
        let area = self.bitmap.as_ref().unwrap().encode_area(target.events);
        for m in 0..self.geom.members() {
            if survivors & 1 << m != 0 {
                self.actions.push_back(MetaAction::WriteSb {
                    member: m as u16,
                    token: self.seq << 8 | m as u64,
                    offset: SB_OFFSET_BYTES + SB_BLOCK_BYTES as u64,
                    data: area.clone(),
                });
            }
        }
        self.commit = Some(Commit {
            seq: self.seq,
            kind: Kind::Bits,
            bits,
            dirty: self.disk_dirty,
            writing: survivors,
            ok: 0,
            failed: 0,
            failing: 0,
            target,
        });
    }

    /// Members a commit to `target` writes to.
    fn survivors(&self, target: &ArrayState) -> u64 {
        (0..self.geom.members())
            .filter(|&m| target.members[m].in_service() && self.sbs[m].is_some())
            .fold(0, |a, m| a | 1 << m)
    }

    /// The bytes of a commit for member `m`: its superblock, then the bitmap.
    fn commit_data(&self, m: usize, target: &ArrayState, dirty: bool) -> Vec<u8> {
        let mut data = self.superblock_for(m, target, dirty).encode();
        if let Some(b) = &self.bitmap {
            data.extend_from_slice(&b.encode_area(target.events));
        }
        data
    }

    /// Write a superblock recording the pending failures and the dirty flag
    /// to every member still in service.
    fn start_commit(&mut self, dirty: bool) {
        let mut target = (*self.state).clone();
        for m in 0..self.geom.members() {
            if self.pending_fail & 1 << m != 0 {
                target.members[m] = MemberState::Faulty;
            }
        }
        target.events += 1;
        for m in 0..self.geom.members() {
            if self.pending_add & 1 << m != 0 && self.pending_fail & 1 << m == 0 {
                target.members[m] = MemberState::Recovering(0);
                // Published as the next state (nothing else is published
                // while a commit is in flight).
                target.readded[m] = self.state.seq + 1;
            } else if self.pending_insync & 1 << m != 0
                && matches!(target.members[m], MemberState::Recovering(_))
            {
                target.members[m] = MemberState::InSync;
            }
        }
        target.write_mostly = self.wm_want;
        target.offline = !survives(&self.geom, target.not_in_sync());
        target.writable = dirty && !target.offline && (self.want_dirty || self.state.writable);
        // A failure that leaves the array unable to serve its data is not
        // recorded (md's raid0, linear, raid1 and raid10 do not fail such
        // a device): the array goes offline and every I/O fails, and the
        // superblocks still list the member, so the array assembles again
        // once it is back. One that was dirty then needs `force` if it is
        // degraded, as after any crash.
        let unrecorded = target.offline;
        if unrecorded {
            target.events -= 1;
        }
        self.seq += 1;
        // Nothing is written when unrecorded: no bit becomes durable.
        let (bits, survivors) = if unrecorded {
            (Vec::new(), 0)
        } else {
            (self.prepare_bits().0, self.survivors(&target))
        };
        let commit = Commit {
            seq: self.seq,
            kind: Kind::Sb,
            bits,
            dirty,
            writing: survivors,
            ok: 0,
            failed: 0,
            failing: self.pending_fail,
            target,
        };
        for m in 0..self.geom.members() {
            if survivors & 1 << m == 0 {
                continue;
            }
            self.actions.push_back(MetaAction::WriteSb {
                member: m as u16,
                token: commit.seq << 8 | m as u64,
                offset: SB_OFFSET_BYTES,
                data: self.commit_data(m, &commit.target, dirty),
            });
        }
        self.commit = Some(commit);
        if survivors == 0 {
            // Nothing left to write to: the state is all there is.
            self.finish_commit();
        }
    }

    /// Record `name`, the name the array runs under, in every member's
    /// superblock (md's `--update=name`), so that whoever assembles it from
    /// its superblocks (SPDK's examine, after a restart) names it the same:
    /// an array assembled under a new name is otherwise found under its old
    /// one. A commit (a new event, as md's superblock updates take, so no
    /// two superblocks of one events count say different things) records
    /// it when any superblock records another name.
    pub fn record_name(&mut self, name: &str) {
        let mut differs = false;
        for sb in self.sbs.iter_mut().flatten() {
            if sb.array_name() != name {
                sb.set_name_str(name);
                differs = true;
            }
        }
        if differs {
            self.renamed = true;
            self.step();
        }
    }

    /// Rewrite the superblocks that lag the current events (a commit cut
    /// short by a crash) with the current ones, without a new event: a
    /// crash during this leaves them no further behind than they were.
    fn start_refresh(&mut self) {
        let lagging: u64 = (0..self.geom.members())
            .filter(|&m| {
                self.state.members[m].in_service()
                    && self.sbs[m]
                        .as_ref()
                        .is_some_and(|sb| sb.events != self.state.events)
            })
            .fold(0, |a, m| a | 1 << m);
        self.rewrite_superblocks(Kind::Refresh, lagging);
    }

    fn superblock_for(&self, m: usize, target: &ArrayState, dirty: bool) -> Superblock {
        let mut sb = self.sbs[m]
            .clone()
            .expect("superblock of a member in service");
        sb.events = target.events;
        sb.resync_offset = if dirty {
            0
        } else if self.resync_needed {
            self.resync_cp
        } else {
            u64::MAX
        };
        if self.wall_secs != 0 {
            sb.utime = MdTime::new(self.wall_secs, 0);
        }
        sb.set_write_mostly(target.write_mostly & 1 << m != 0);
        for (role, st) in target.members.iter().enumerate() {
            let Some(dn) = self.sbs[role].as_ref().map(|s| s.dev_number as usize) else {
                if *st == MemberState::Missing {
                    // No device serves the role: whichever last held it is
                    // out of the array, and md writes such a slot spare.
                    for x in sb.dev_roles.iter_mut() {
                        if *x == DevRole::Active(role as u16) {
                            *x = DevRole::Spare;
                        }
                    }
                }
                continue;
            };
            let r = match st {
                MemberState::Faulty => DevRole::Faulty,
                MemberState::InSync | MemberState::Recovering(_) => DevRole::Active(role as u16),
                MemberState::Missing => continue,
            };
            if dn >= sb.dev_roles.len() {
                sb.dev_roles.resize(dn + 1, DevRole::Faulty);
            }
            if let DevRole::Active(_) = r {
                // A device that held the role before (left out at assembly,
                // replaced) is no longer in the array.
                for (j, x) in sb.dev_roles.iter_mut().enumerate() {
                    if j != dn && *x == r {
                        *x = DevRole::Faulty;
                    }
                }
            }
            sb.dev_roles[dn] = r;
        }
        let spb = u64::from(self.geom.block_size()) / 512;
        sb.feature_map &= !(MD_FEATURE_RECOVERY_OFFSET | MD_FEATURE_RECOVERY_BITMAP);
        sb.recovery_offset = 0;
        if let MemberState::Recovering(o) = target.members[m] {
            sb.feature_map |= MD_FEATURE_RECOVERY_OFFSET;
            if self.rec_kind[m] == Some(Recovery::Bitmap) {
                sb.feature_map |= MD_FEATURE_RECOVERY_BITMAP;
            }
            sb.recovery_offset = o * spb;
        }
        sb
    }

    fn finish_commit(&mut self) {
        let c = self.commit.take().expect("commit in flight");
        if c.ok == 0 && c.failed != 0 && !c.bits.is_empty() {
            // Nothing landed: the bits are still owed.
            self.bits_pending.extend_from_slice(&c.bits);
        } else if !c.bits.is_empty() {
            let words = self.shared.bitmap.as_ref().unwrap();
            for &b in &c.bits {
                words.set_flags(b, DURABLE);
                words.clear_flags(b, LOADED);
            }
            if c.kind == Kind::Bits {
                // The writes waiting for these bits may go.
                let s = (*self.state).clone();
                self.publish(s);
            }
        }
        if c.kind == Kind::Bits {
            if c.ok == 0 && c.failed != 0 {
                self.blocked = true;
                self.retry_at = self.now + self.backoff;
                self.backoff = (self.backoff * 2).min(self.cfg.retry_max_ms);
                self.bits_wanted = true;
                return;
            }
            self.blocked = false;
            self.backoff = self.cfg.retry_min_ms;
            self.fail_writers(c.failed, &c.target);
            return;
        }
        if matches!(c.kind, Kind::Refresh | Kind::Checkpoint) {
            // The others already hold this superblock: a member that cannot
            // take it is failed like any superblock write failure.
            for m in 0..self.geom.members() {
                if c.ok & 1 << m != 0 {
                    self.sbs[m] = Some(self.superblock_for(m, &c.target, c.dirty));
                }
            }
            self.fail_writers(c.failed, &c.target);
            return;
        }
        if c.ok == 0 && c.writing == 0 && c.failed != 0 {
            // No member took the superblock: hold everything and retry (R3).
            self.blocked = true;
            self.retry_at = self.now + self.backoff;
            self.backoff = (self.backoff * 2).min(self.cfg.retry_max_ms);
            return;
        }
        self.blocked = false;
        self.backoff = self.cfg.retry_min_ms;
        // The commit is durable on `ok`; members whose write failed are
        // failed in the next commit.
        for m in 0..self.geom.members() {
            if c.ok & 1 << m != 0 {
                let sb = self.superblock_for(m, &c.target, c.dirty);
                self.sbs[m] = Some(sb);
            }
        }
        for m in 0..self.geom.members() {
            match c.target.members[m] {
                MemberState::Faulty => {
                    self.pending_fail &= !(1 << m);
                    if c.failing & 1 << m != 0 {
                        // The member this commit failed: its add (a
                        // device that failed before it was recorded) or
                        // its rebuild's end is void. An add asked for
                        // after this commit started (the target still
                        // records the role faulty) stays pending.
                        self.pending_add &= !(1 << m);
                        self.pending_insync &= !(1 << m);
                    }
                }
                MemberState::Recovering(_) if self.pending_add & 1 << m != 0 => {
                    self.pending_add &= !(1 << m);
                    if c.failed & 1 << m == 0 {
                        // Channels take the member back once all of them
                        // have this state (see `released`).
                        self.rec_seq[m] = self.state.seq + 1;
                        self.unfail |= 1 << m;
                    }
                    // Else the new device could not take the superblock
                    // that adds it: it stays failed (below), and the next
                    // commit records it faulty.
                }
                MemberState::InSync => {
                    self.pending_insync &= !(1 << m);
                    self.rec_kind[m] = None;
                }
                _ => {}
            }
        }
        self.fail_writers(c.failed, &c.target);
        self.disk_dirty = c.dirty;
        if c.dirty && c.target.writable {
            self.want_dirty = false;
            self.quiesce = Quiesce::Open;
            self.last_activity = self.now;
        }
        if !c.dirty {
            self.want_clean = false;
        }
        self.publish(c.target);
    }

    /// Members whose metadata write failed are failed in the next commit;
    /// channels stop using them now, as for a failure they saw. `target`:
    /// the state the write was for, whose devices took it (an add's commit
    /// writes to the new device, which the published state does not have
    /// yet).
    fn fail_writers(&mut self, failed: u64, target: &ArrayState) {
        self.pending_fail |= failed;
        for m in 0..self.geom.members() {
            if failed & 1 << m != 0 {
                self.shared.fail_device(m, target.readded[m]);
            }
        }
    }
}

/// The write-mostly members the superblocks record (md's `WriteMostly1`
/// devflag): what [`ArrayState::write_mostly`] must say when a metadata
/// path starts over them.
pub fn write_mostly_of(sbs: &[Option<Superblock>]) -> u64 {
    sbs.iter()
        .enumerate()
        .filter(|(_, sb)| sb.as_ref().is_some_and(|sb| sb.write_mostly()))
        .fold(0, |a, (r, _)| a | 1 << r)
}

/// Build the superblocks of a new array: one per member, role = index,
/// every member active, clean, events 0 (the first commit makes it 1).
pub struct CreateParams<'a> {
    pub set_uuid: [u8; 16],
    /// Name stored in `set_name` (at most 32 bytes).
    pub name: &'a str,
    /// Device UUID of each member.
    pub device_uuids: Vec<[u8; 16]>,
    /// Size of each member in 512-byte sectors.
    pub member_sectors: Vec<u64>,
    /// Data offset in sectors (same on every member).
    pub data_offset: u64,
    pub now_secs: u64,
    /// An internal bitmap right after the superblock (`bitmap_offset` 8);
    /// `data_offset` must leave room for it.
    pub bitmap: bool,
}

/// A new array whose members' old contents are not known to agree (md's
/// create without `--assume-clean`): its superblocks say a resync is due
/// from the start, and every bit of its bitmap is set, so the resync an
/// unclean assembly runs covers the whole array (mdadm sets every bit too).
pub fn mark_unsynced(
    sbs: &mut [Superblock],
    bitmap: Option<(&mut DiskBitmap, &crate::bitmap::BitmapGeom)>,
) {
    for sb in sbs {
        sb.resync_offset = 0;
    }
    if let Some((b, g)) = bitmap {
        for c in 0..g.chunks() {
            b.set(c, true);
        }
    }
}

/// The superblocks of a new array laid out as `geom` says.
pub fn create_superblocks(geom: &Geometry, p: &CreateParams<'_>) -> Vec<Superblock> {
    let n = geom.members();
    let spb = u64::from(geom.block_size()) / 512;
    // mdadm writes chunk 0 for raid1 (no strip), and for linear without one.
    let chunk = match geom.level() {
        crate::layout::Level::Raid1 => 0,
        crate::layout::Level::Linear if geom.strip_blocks() == 1 => 0,
        _ => (geom.strip_blocks() * spb) as u32,
    };
    (0..n)
        .map(|m| {
            let mut sb = Superblock::new(p.set_uuid, geom.level().md_level(), n as u32, m as u32);
            sb.set_name_str(p.name);
            sb.ctime = MdTime::new(p.now_secs, 0);
            sb.utime = sb.ctime;
            sb.layout = geom.layout();
            sb.chunksize = chunk;
            // Linear members keep their own sizes; the others share one.
            let used = if geom.level() == crate::layout::Level::Linear {
                geom.member_blocks(m)
            } else {
                geom.member_blocks(0)
            };
            sb.size = used * spb;
            sb.data_offset = p.data_offset;
            sb.data_size = p.member_sectors[m] - p.data_offset;
            sb.device_uuid = p.device_uuids[m];
            sb.resync_offset = u64::MAX;
            if p.bitmap {
                sb.feature_map |= crate::ondisk::MD_FEATURE_BITMAP_OFFSET;
                sb.bitmap_offset = 8;
            }
            for r in 0..n {
                sb.dev_roles[r] = DevRole::Active(r as u16);
            }
            sb
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{GeometryParams, Level};
    use crate::ondisk::SB_BLOCK_BYTES;

    struct T {
        meta: Meta,
        /// Superblock writes asked for and not yet completed.
        writes: Vec<(u16, u64, Vec<u8>)>,
        broadcasts: Vec<Arc<ArrayState>>,
        now: u64,
    }

    fn t(level: Level, n: usize) -> T {
        tb(level, n, None)
    }

    /// With a bitmap of `chunk` bytes (chunks of the 4096-block members).
    fn tb(level: Level, n: usize, chunk: Option<u64>) -> T {
        let geom = Arc::new(
            Geometry::new(&GeometryParams {
                level,
                layout: None,
                strip_size_kb: 64,
                block_size: 512,
                member_blocks: vec![4096; n],
            })
            .unwrap(),
        );
        let sbs = create_superblocks(
            &geom,
            &CreateParams {
                set_uuid: [7; 16],
                name: "t",
                device_uuids: (0..n).map(|i| [i as u8; 16]).collect(),
                member_sectors: vec![4096 + 2048; n],
                data_offset: 2048,
                now_secs: 1,
                bitmap: chunk.is_some(),
            },
        );
        let state = Arc::new(ArrayState::new_in_sync(n));
        let bg = chunk.map(|c| crate::bitmap::BitmapGeom::new(&geom, c).unwrap());
        let disk = bg.as_ref().map(|g| DiskBitmap::new(g, [7; 16], 1000));
        let meta = Meta::new(
            geom,
            Arc::new(Shared::with_bitmap(1, bg.map(crate::bitmap::Bitmap::new))),
            state,
            sbs.into_iter().map(Some).collect(),
            disk,
            MetaConfig::default(),
            0,
        );
        T {
            meta,
            writes: Vec::new(),
            broadcasts: Vec::new(),
            now: 0,
        }
    }

    impl T {
        fn pump(&mut self) {
            while let Some(a) = self.meta.poll_action() {
                match a {
                    MetaAction::WriteSb {
                        member,
                        token,
                        offset,
                        data,
                    } => {
                        assert!(offset == 4096 || offset == 8192);
                        assert!(offset == 8192 || data.len() >= SB_BLOCK_BYTES);
                        self.writes.push((member, token, data));
                    }
                    MetaAction::Broadcast(s) => self.broadcasts.push(s),
                }
            }
        }
        /// A new device (`device_uuid`, `sectors`) added into faulty role
        /// `m`, its commit done and every channel on its state.
        fn add_new(&mut self, m: usize, device_uuid: [u8; 16], sectors: u64) {
            self.meta
                .add_member(
                    m,
                    NewMember {
                        device_uuid,
                        sectors,
                        old_sb: None,
                        write_mostly: false,
                    },
                )
                .unwrap();
            self.pump();
            self.complete(|_| true);
            self.meta.released(self.meta.state().seq);
        }
        fn fail(&mut self, m: u16) {
            let device = self.meta.state().readded[m as usize];
            self.meta
                .request(MetaRequest::MemberFailed { member: m, device });
            self.pump();
        }
        /// Complete every pending write; `ok(member)` decides success.
        fn complete(&mut self, ok: impl Fn(u16) -> bool) {
            let w = std::mem::take(&mut self.writes);
            for (m, token, _) in w {
                self.meta.sb_write_done(token, ok(m));
                self.pump();
            }
        }
        fn decoded(&self, m: u16) -> Superblock {
            let (_, _, data) = self.writes.iter().find(|w| w.0 == m).unwrap();
            Superblock::decode(data, 4096 + 2048).unwrap()
        }
    }

    #[test]
    fn write_mostly_is_committed_to_devflags_then_broadcast() {
        let mut t = t(Level::Raid1, 3);
        t.pump();
        t.broadcasts.clear();
        t.meta.set_write_mostly(2, true).unwrap();
        t.pump();
        assert!(t.broadcasts.is_empty(), "broadcast before the commit");
        assert_eq!(t.writes.len(), 3);
        assert!(t.decoded(2).write_mostly());
        assert!(!t.decoded(0).write_mostly());
        let events = t.decoded(0).events;
        assert_eq!(events, t.meta.state().events + 1);
        t.complete(|_| true);
        assert_eq!(t.broadcasts.last().unwrap().write_mostly, 1 << 2);
        assert_eq!(
            write_mostly_of(
                &(0..3)
                    .map(|m| t.meta.superblock(m).cloned())
                    .collect::<Vec<_>>()
            ),
            1 << 2
        );
        // Refusals: the last copy readable outside write-mostly members,
        // a role out of range, a level without mirrors.
        t.meta.set_write_mostly(1, true).unwrap();
        t.pump();
        t.complete(|_| true);
        assert_eq!(
            t.meta.set_write_mostly(0, true),
            Err(FlagError::LastReadable { role: 0 })
        );
        assert!(matches!(
            t.meta.set_write_mostly(3, true),
            Err(FlagError::Role { .. })
        ));
        t.fail(1);
        t.complete(|_| true);
        assert!(matches!(
            t.meta.set_write_mostly(1, false),
            Err(FlagError::NotInService { role: 1, .. })
        ));
        t.meta.set_write_mostly(2, false).unwrap();
        t.pump();
        t.complete(|_| true);
        assert_eq!(t.meta.state().write_mostly, 1 << 1);
        let mut t5 = super::tests::t(Level::Raid5, 3);
        assert!(matches!(
            t5.meta.set_write_mostly(0, true),
            Err(FlagError::NotMirrored { .. })
        ));
    }

    #[test]
    fn one_failure_is_written_to_survivors_before_broadcast() {
        let mut t = t(Level::Raid5, 4);
        t.fail(2);
        let members: Vec<u16> = t.writes.iter().map(|w| w.0).collect();
        assert_eq!(members, vec![0, 1, 3], "every survivor, not the failed one");
        let sb = t.decoded(0);
        assert_eq!(sb.events, 1, "events + 1 from the new array's 0");
        assert_eq!(sb.dev_roles[2], DevRole::Faulty);
        assert!(
            t.broadcasts.is_empty(),
            "broadcast before the superblock is durable"
        );
        t.complete(|_| true);
        let s = t.broadcasts.pop().unwrap();
        assert_eq!(s.members[2], MemberState::Faulty);
        assert_eq!(s.events, 1);
        assert!(!s.offline);
        assert!(!t.meta.status().blocked);
    }

    #[test]
    fn two_failures_in_one_batch() {
        let mut t = t(Level::Raid6, 6);
        t.fail(1);
        // The second arrives while the first commit is in flight.
        t.fail(4);
        assert_eq!(t.writes.len(), 5);
        t.complete(|_| true);
        assert_eq!(t.broadcasts.len(), 1);
        // The batch of what arrived meanwhile: one more commit.
        assert_eq!(t.writes.len(), 4);
        assert_eq!(t.decoded(0).dev_roles[4], DevRole::Faulty);
        assert_eq!(t.decoded(0).dev_roles[1], DevRole::Faulty);
        t.complete(|_| true);
        let s = t.broadcasts.last().unwrap();
        assert_eq!(s.faulty(), 0b10010);
        assert_eq!(s.events, 2);

        // Two reported before any commit starts go in one superblock write.
        let mut t2 = super::tests::t(Level::Raid6, 6);
        t2.meta.pending_fail = 0;
        t2.meta.commit = Some(Commit {
            seq: 99,
            kind: Kind::Sb,
            bits: Vec::new(),
            target: (*t2.meta.state).clone(),
            dirty: false,
            writing: 1,
            ok: 0,
            failed: 0,
            failing: 0,
        });
        t2.fail(1);
        t2.fail(4);
        t2.meta.commit = None;
        t2.meta.step();
        t2.pump();
        assert_eq!(t2.writes.len(), 4);
        let sb = t2.decoded(0);
        assert_eq!(
            (sb.dev_roles[1], sb.dev_roles[4]),
            (DevRole::Faulty, DevRole::Faulty)
        );
        assert_eq!(sb.events, 1, "one commit for both");
    }

    #[test]
    fn superblock_write_failing_on_one_survivor_fails_it_too() {
        let mut t = t(Level::Raid6, 5);
        t.fail(0);
        t.complete(|m| m != 3);
        assert_eq!(t.broadcasts.last().unwrap().faulty(), 0b1);
        // Next commit records 3 faulty on the rest.
        let members: Vec<u16> = t.writes.iter().map(|w| w.0).collect();
        assert_eq!(members, vec![1, 2, 4]);
        t.complete(|_| true);
        assert_eq!(t.broadcasts.last().unwrap().faulty(), 0b1001);
        assert!(!t.broadcasts.last().unwrap().offline);
    }

    /// A stop gives up on a blocked array: offline, nothing written, and
    /// not before it is blocked.
    #[test]
    fn a_blocked_array_is_abandoned_offline_without_writes() {
        let mut t = t(Level::Raid1, 2);
        assert!(!t.meta.abandon(), "not blocked: nothing to give up");
        assert!(t.broadcasts.is_empty());
        t.meta.request(MetaRequest::MarkDirty { channel: 0 });
        t.pump();
        t.complete(|_| false);
        assert!(t.meta.status().blocked);
        assert!(t.meta.abandon());
        t.pump();
        assert!(t.writes.is_empty());
        let s = t.broadcasts.last().unwrap();
        assert!(s.offline && !s.writable, "{s:?}");
        assert!(!t.meta.status().blocked);
        // Nothing more is tried.
        t.now += 60_000;
        t.meta.tick(t.now);
        t.pump();
        assert!(t.writes.is_empty());
        assert!(t.meta.stop_done());
    }

    #[test]
    fn superblock_write_failing_everywhere_blocks_then_recovers() {
        let mut t = t(Level::Raid1, 3);
        t.fail(0);
        t.complete(|_| false);
        assert!(
            t.broadcasts.is_empty(),
            "nothing durable, nothing broadcast"
        );
        assert!(t.meta.status().blocked);
        assert!(t.writes.is_empty());
        // Retries with backoff while the members refuse.
        for _ in 0..3 {
            t.now += 10_000;
            t.meta.tick(t.now);
            t.pump();
            assert_eq!(t.writes.len(), 2, "retried");
            t.complete(|_| false);
            assert!(t.meta.status().blocked);
            assert!(t.broadcasts.is_empty());
        }
        // A survivor recovers: the commit lands, the state goes out.
        t.now += 10_000;
        t.meta.tick(t.now);
        t.pump();
        t.complete(|m| m == 2);
        assert!(!t.meta.status().blocked);
        let s = t.broadcasts[0].clone();
        assert_eq!(s.members[0], MemberState::Faulty);
        // Member 1 refused its superblock: failed next.
        t.complete(|_| true);
        assert_eq!(t.broadcasts.last().unwrap().faulty(), 0b011);
        assert!(!t.broadcasts.last().unwrap().offline);
    }

    /// An array that went offline while dirty stops at once: nothing
    /// can be marked clean (the hosts waited their stop timeout for it).
    #[test]
    fn an_offline_array_stops_without_being_marked_clean() {
        let mut t = t(Level::Raid0, 2);
        t.writable();
        t.fail(1);
        t.complete(|_| true);
        assert!(t.broadcasts.last().unwrap().offline);
        t.meta.shutdown();
        t.pump();
        t.complete(|_| true);
        assert!(!t.meta.is_clean());
        assert!(t.meta.stop_done());
    }

    #[test]
    fn last_data_member_lost_goes_offline() {
        let mut t = t(Level::Raid1, 2);
        t.fail(0);
        t.complete(|_| true);
        t.fail(1);
        assert!(t.writes.is_empty(), "no survivor to write to");
        let s = t.broadcasts.last().unwrap();
        assert!(s.offline);
        assert_eq!(s.faulty(), 0b11);
        // raid5 losing a second member: offline, and not recorded (the
        // array assembles again once the member is back).
        let mut t = super::tests::t(Level::Raid5, 4);
        t.fail(0);
        let events = t.decoded(2).events;
        t.complete(|_| true);
        t.fail(1);
        assert!(
            t.writes.is_empty(),
            "the failure that fails the array is not written"
        );
        let s = t.broadcasts.last().unwrap();
        assert!(s.offline);
        assert_eq!(s.events, events);
        // raid0: the first failure already is.
        let mut t = super::tests::t(Level::Raid0, 2);
        t.fail(1);
        assert!(t.writes.is_empty());
        assert!(t.broadcasts.last().unwrap().offline);
    }

    #[test]
    fn dirty_before_first_write_clean_after_idle() {
        let mut t = t(Level::Raid1, 2);
        assert!(!t.meta.state().writable);
        t.meta.request(MetaRequest::MarkDirty { channel: 0 });
        t.pump();
        assert_eq!(t.decoded(0).resync_offset, 0, "marked dirty");
        assert!(t.broadcasts.is_empty());
        t.complete(|_| true);
        assert!(t.broadcasts.last().unwrap().writable);
        // Writes happen, then stop.
        t.meta.shared.note_write(0);
        t.now = 100;
        t.meta.tick(t.now);
        t.pump();
        assert!(
            t.broadcasts.last().unwrap().writable,
            "not idle long enough"
        );
        t.now = 400;
        t.meta.tick(t.now);
        t.pump();
        let s = t.broadcasts.last().unwrap().clone();
        assert!(!s.writable, "writes stopped before marking clean");
        assert!(t.writes.is_empty(), "clean only once channels drained");
        t.meta.request(MetaRequest::WritesIdle {
            channel: 0,
            seq: s.seq,
        });
        t.pump();
        assert_eq!(t.decoded(1).resync_offset, u64::MAX);
        t.complete(|_| true);
        assert!(t.meta.is_clean());
        // A write after the clean commit marks the array dirty first.
        t.meta.request(MetaRequest::MarkDirty { channel: 0 });
        t.pump();
        assert_eq!(t.decoded(0).resync_offset, 0);
    }

    fn words(t: &T) -> &crate::bitmap::Bitmap {
        t.meta.shared.bitmap.as_ref().unwrap()
    }

    /// Bits of the last bitmap write to member `m` (either kind of write).
    fn disk_bits(t: &T, m: u16) -> Vec<u8> {
        let (_, _, data) = t.writes.iter().rev().find(|w| w.0 == m).unwrap();
        let area = if data.len() > SB_BLOCK_BYTES && t.is_sb_write(data) {
            &data[SB_BLOCK_BYTES..]
        } else {
            &data[..]
        };
        area[256..].to_vec()
    }

    impl T {
        fn is_sb_write(&self, data: &[u8]) -> bool {
            data[..4] == crate::ondisk::MD_SB_MAGIC.to_le_bytes()
        }
        fn writable(&mut self) {
            self.meta.request(MetaRequest::MarkDirty { channel: 0 });
            self.pump();
            self.complete(|_| true);
        }
    }

    #[test]
    fn bits_are_written_before_they_count_as_durable() {
        let mut t = tb(Level::Raid1, 2, Some(64 << 10)); // 128-block chunks
        t.writable();
        let bm = words(&t);
        assert!(!bm.start_write(130, 200), "chunks 1..2 not on disk yet");
        t.meta.request(MetaRequest::BitsNeeded { channel: 0 });
        t.pump();
        assert_eq!(t.writes.len(), 2, "one bitmap write per member");
        assert!(
            !words(&t).durable(130, 200),
            "not durable before the write lands"
        );
        let bits = disk_bits(&t, 0);
        assert_eq!(bits[0], 0b110, "chunks 1 and 2 set");
        let seq = t.meta.state().seq;
        t.complete(|_| true);
        assert!(words(&t).durable(130, 200));
        assert!(
            t.meta.state().seq > seq,
            "a new state wakes the channels that wait"
        );
        // Chunks with bits on disk need no write.
        assert!(words(&t).start_write(140, 10));
        t.meta.request(MetaRequest::BitsNeeded { channel: 0 });
        t.pump();
        assert!(t.writes.is_empty());
        words(&t).end_write(140, 10);
        words(&t).end_write(130, 200);
        // Two idle daemon passes clear them, on disk with events_cleared.
        t.now = 5_000;
        t.meta.tick(t.now);
        t.pump();
        assert!(t.writes.is_empty(), "one pass only marks them idle");
        t.now = 10_000;
        t.meta.tick(t.now);
        t.pump();
        assert_eq!(t.writes.len(), 2);
        assert_eq!(disk_bits(&t, 1)[0], 0);
        t.complete(|_| true);
        let st = t.meta.status().bitmap.unwrap();
        assert_eq!((st.dirty, st.events_cleared), (0, t.meta.state().events));
    }

    #[test]
    fn no_clearing_while_degraded() {
        let mut t = tb(Level::Raid1, 3, Some(64 << 10));
        t.writable();
        assert!(!words(&t).start_write(0, 1));
        t.meta.request(MetaRequest::BitsNeeded { channel: 0 });
        t.pump();
        t.complete(|_| true);
        words(&t).end_write(0, 1);
        t.fail(2);
        t.complete(|_| true);
        for i in 1..5 {
            t.now = 5_000 * i;
            t.meta.tick(t.now);
            t.pump();
        }
        assert!(t.writes.is_empty());
        assert_eq!(t.meta.status().bitmap.unwrap().dirty, 1);
        assert_eq!(words(&t).word(0), crate::bitmap::DURABLE);
    }

    #[test]
    fn bitmap_write_taken_by_no_member_holds_and_retries() {
        let mut t = tb(Level::Raid1, 2, Some(64 << 10));
        t.writable();
        assert!(!words(&t).start_write(0, 1));
        t.meta.request(MetaRequest::BitsNeeded { channel: 0 });
        t.pump();
        t.complete(|_| false);
        assert!(t.meta.status().blocked);
        assert!(
            !words(&t).durable(0, 1),
            "R3: nothing durable, the write holds"
        );
        t.now += 100;
        t.meta.shared.note_write(0);
        t.meta.tick(t.now);
        t.pump();
        assert_eq!(t.writes.len(), 2, "retried");
        t.complete(|m| m == 1);
        assert!(words(&t).durable(0, 1));
        assert!(!t.meta.status().blocked);
        // Member 0 refused the bitmap: it is failed next.
        assert_eq!(t.writes.len(), 1);
        assert_eq!(t.decoded(1).dev_roles[0], DevRole::Faulty);
    }

    #[test]
    fn failure_commits_carry_the_bitmap_with_the_new_events() {
        let mut t = tb(Level::Raid5, 4, Some(64 << 10));
        t.fail(3);
        let (_, _, data) = &t.writes[0];
        assert!(
            data.len() > SB_BLOCK_BYTES,
            "superblock and bitmap in one write"
        );
        let bsb = crate::ondisk::BitmapSuper::decode(&data[SB_BLOCK_BYTES..]).unwrap();
        assert_eq!(bsb.events, 1);
        t.complete(|_| true);
    }

    /// A member that left and comes back with events at least the bitmap's
    /// events_cleared is rebuilt from the bitmap: only the chunks written
    /// since it left (and those still dirty when it left).
    /// A member seen failing while it is rebuilt is never recorded in sync,
    /// whatever progress its rebuild reports (the rebuild may have gone on
    /// without writing it).
    #[test]
    fn rebuild_progress_of_a_failing_member_is_ignored() {
        // A raid1 of 2 whose role 1 was failed and is being rebuilt onto a
        // new device, every channel on that state.
        let rebuilding = || {
            let mut t = tb(Level::Raid1, 2, None);
            t.fail(1);
            t.complete(|_| true);
            let old = t.meta.superblock(1).unwrap().clone();
            t.add_new(1, [7; 16], old.data_offset + old.size);
            let info = t.meta.recovery(1).unwrap();
            (t, info.device)
        };
        let settle = |t: &mut T| {
            t.pump();
            while !t.writes.is_empty() {
                t.complete(|_| true);
            }
        };
        // Seen failing (the metadata path has the request, not yet its commit).
        let (mut t, device) = rebuilding();
        let end = t.meta.geom.member_blocks(1);
        t.fail(1);
        t.meta.recovery_progress(1, device, end);
        settle(&mut t);
        assert!(
            t.broadcasts
                .iter()
                .all(|s| s.members[1] != MemberState::InSync || s.readded[1] != device),
            "recorded in sync: {:?}",
            t.broadcasts.last()
        );
        assert_eq!(t.meta.state().members[1], MemberState::Faulty);
        // Failed in the shared mask only (another channel saw it): the same.
        let (mut t, device) = rebuilding();
        t.meta.shared.fail_device(1, device);
        t.meta.recovery_progress(1, device, end);
        settle(&mut t);
        assert!(matches!(
            t.meta.state().members[1],
            MemberState::Recovering(0)
        ));
    }

    #[test]
    fn readd_recovers_from_the_bitmap_only() {
        use crate::sync::Rebuild;
        let mut t = tb(Level::Raid1, 2, Some(64 << 10)); // 128-block chunks, 32 of them
        t.writable();
        // Chunk 3 written and cleared again (in sync on both), then chunk 7
        // written and still dirty when member 1 fails.
        for (lba, clear) in [(3 * 128, true), (7 * 128, false)] {
            assert!(!words(&t).start_write(lba, 8));
            t.meta.request(MetaRequest::BitsNeeded { channel: 0 });
            t.pump();
            t.complete(|_| true);
            words(&t).end_write(lba, 8);
            if clear {
                for _ in 0..2 {
                    t.now += 5_000;
                    t.meta.tick(t.now);
                    t.pump();
                }
                t.complete(|_| true);
            }
        }
        let cleared_at = t.meta.status().bitmap.unwrap().events_cleared;
        let old = t.meta.superblock(1).unwrap().clone();
        assert!(old.events >= cleared_at);
        t.fail(1);
        t.complete(|_| true);
        // Chunk 12 written while it is away.
        assert!(!words(&t).start_write(12 * 128, 8));
        t.meta.request(MetaRequest::BitsNeeded { channel: 0 });
        t.pump();
        t.complete(|_| true);
        words(&t).end_write(12 * 128, 8);
        // No bit is cleared while degraded, however long it stays idle.
        for _ in 0..4 {
            t.now += 5_000;
            t.meta.tick(t.now);
            t.pump();
        }
        assert!(t.writes.is_empty());
        let kind = t
            .meta
            .add_member(
                1,
                NewMember {
                    device_uuid: old.device_uuid,
                    sectors: 4096 + 2048,
                    old_sb: Some(old.clone()),
                    write_mostly: false,
                },
            )
            .unwrap();
        assert_eq!(kind, Recovery::Bitmap);
        t.pump();
        let sb1 = t.decoded(1);
        assert_ne!(sb1.feature_map & MD_FEATURE_RECOVERY_BITMAP, 0);
        assert_eq!(sb1.recovery_offset, 0);
        t.complete(|_| true);
        assert_eq!(t.meta.state().members[1], MemberState::Recovering(0));
        assert!(
            t.meta.recovery(1).is_none(),
            "not before every channel has the state"
        );
        t.meta.released(t.meta.state().seq);
        let info = t.meta.recovery(1).unwrap();
        assert_eq!((info.kind, info.from), (Recovery::Bitmap, 0));
        let geom = t.meta.geom.clone();
        let shared = t.meta.shared.clone();
        let mut r = Rebuild::new(&geom, 1, info.device, info.from, 128, true);
        let mut windows = Vec::new();
        while let Some(w) = r.next_window(&geom, &shared) {
            windows.push(w.lba / 128);
            r.window_done(true);
            t.meta.recovery_progress(1, info.device, r.offset());
            t.pump();
        }
        assert!(r.is_done());
        t.meta.recovery_progress(1, info.device, r.offset());
        t.pump();
        assert_eq!(windows, vec![7, 12], "only the chunks dirty since it left");
        assert_eq!(r.counts(), (256, 4096 - 256));
        while !t.writes.is_empty() {
            t.complete(|_| true);
        }
        assert_eq!(t.meta.state().members[1], MemberState::InSync);
        let sb1 = t.meta.superblock(1).unwrap();
        assert_eq!(sb1.feature_map & MD_FEATURE_RECOVERY_OFFSET, 0);

        // A device that left before the last clear is rebuilt fully.
        t.fail(1);
        t.complete(|_| true);
        let mut stale = old;
        stale.events = cleared_at - 1;
        let kind = t
            .meta
            .add_member(
                1,
                NewMember {
                    device_uuid: stale.device_uuid,
                    sectors: 4096 + 2048,
                    old_sb: Some(stale),
                    write_mostly: false,
                },
            )
            .unwrap();
        assert_eq!(kind, Recovery::Full);
    }

    /// A new array of `n` started again without role `missing`'s device.
    fn missing_at_start(level: Level, n: usize, missing: usize) -> T {
        let mut t = t(level, n);
        let mut sbs: Vec<Option<Superblock>> =
            (0..n).map(|m| t.meta.superblock(m).cloned()).collect();
        sbs[missing] = None;
        let mut state = ArrayState::new_in_sync(n);
        state.members[missing] = MemberState::Missing;
        t.meta = Meta::new(
            t.meta.geom.clone(),
            t.meta.shared.clone(),
            Arc::new(state),
            sbs,
            None,
            MetaConfig::default(),
            0,
        );
        t.pump();
        t
    }

    /// A role with no device at assembly is recorded as md records a
    /// device no longer in the array: its slot becomes spare, so mdadm
    /// shows the role missing ('.') and the device, should it come back,
    /// is no longer taken for an active member.
    #[test]
    fn a_missing_role_is_written_spare() {
        let mut t = missing_at_start(Level::Raid6, 5, 2);
        t.fail(0);
        let sb = t.decoded(1);
        assert_eq!(sb.dev_roles[2], DevRole::Spare);
        assert_eq!(sb.dev_roles[0], DevRole::Faulty);
        assert_eq!(sb.array_state(), ".A.AA");
    }

    /// R6 across a degraded start: a member absent when the array was
    /// started degraded, coming back after the array's first write, is
    /// not taken for current though it is only one event behind (the
    /// tolerance for a commit cut short): the superblocks that recorded
    /// the write say its role is served by no device.
    #[test]
    fn a_member_absent_at_a_degraded_start_is_not_current_after_a_write() {
        use crate::assemble::{assemble, AssembleOptions, Candidate};
        let absent = t(Level::Raid1, 3).meta.superblock(2).cloned().unwrap();
        let mut t = missing_at_start(Level::Raid1, 3, 2);
        // The first write: the array is marked dirty, events + 1.
        t.meta.request(MetaRequest::MarkDirty { channel: 0 });
        t.pump();
        let survivors: Vec<Vec<u8>> = (0..2).map(|m| t.decoded(m).encode()).collect();
        assert_eq!(t.decoded(0).events, absent.events + 1);
        t.complete(|_| true);
        let bufs = [survivors[0].clone(), survivors[1].clone(), absent.encode()];
        let names: Vec<String> = (0..3).map(|i| format!("d{i}")).collect();
        let cands: Vec<Candidate> = bufs
            .iter()
            .zip(&names)
            .map(|(b, n)| Candidate {
                name: n,
                sb: b,
                sectors: 4096 + 2048,
            })
            .collect();
        let a = assemble(
            &cands,
            &AssembleOptions {
                block_size: 512,
                ..AssembleOptions::default()
            },
        )
        .unwrap();
        assert_eq!(
            a.member_of_role,
            vec![Some(0), Some(1), None],
            "{:?}",
            a.refused
        );
        assert!(
            a.refused[0].1.contains("not an active member"),
            "{:?}",
            a.refused
        );
    }

    /// An array started under another name than its superblocks record
    /// has every member's superblock rewritten with it, by a commit (a new
    /// event); mdadm's `host:name` form of the same name is left alone.
    #[test]
    fn the_name_it_runs_under_is_recorded() {
        let mut t = t(Level::Raid5, 3);
        t.pump();
        assert!(t.writes.is_empty());
        t.meta.record_name("t");
        t.pump();
        assert!(t.writes.is_empty(), "already recorded");
        t.meta.record_name("new");
        t.pump();
        let members: Vec<u16> = t.writes.iter().map(|w| w.0).collect();
        assert_eq!(members, vec![0, 1, 2]);
        for m in 0..3 {
            let sb = t.decoded(m);
            assert_eq!(sb.name(), "new");
            assert_eq!(sb.events, 1, "a new event");
        }
        t.complete(|_| true);
        assert!(t.writes.is_empty());
        // mdadm's form.
        let mut t2 = super::tests::t(Level::Raid1, 2);
        for m in 0..2 {
            t2.meta.sbs[m].as_mut().unwrap().set_name_str("host:new");
        }
        t2.meta.record_name("new");
        t2.pump();
        assert!(t2.writes.is_empty(), "host:new records new");
    }

    /// A device left out at assembly keeps its dev_roles slot: a new
    /// device brought into another role meanwhile takes one from
    /// raid_disks on (md's desc_nr), so the device that was out is re-added
    /// from the bitmap into its own slot, and no two devices share one
    /// (the next assembly would put one into the other's role). A device
    /// whose slot another role's device holds is added as new.
    #[test]
    fn a_device_out_keeps_its_slot_for_its_readd() {
        let mut t = tb(Level::Raid1, 4, Some(4096));
        let old0 = t.meta.superblock(0).cloned().unwrap();
        let mut sbs: Vec<Option<Superblock>> =
            (0..4).map(|m| t.meta.superblock(m).cloned()).collect();
        for sb in sbs.iter_mut().flatten() {
            sb.dev_roles[0] = DevRole::Faulty;
        }
        sbs[0] = None;
        let mut state = ArrayState::new_in_sync(4);
        state.members[0] = MemberState::Missing;
        state.members[3] = MemberState::Faulty;
        let bg = crate::bitmap::BitmapGeom::new(&t.meta.geom, 4096).unwrap();
        t.meta = Meta::new(
            t.meta.geom.clone(),
            Arc::new(Shared::with_bitmap(
                1,
                Some(crate::bitmap::Bitmap::new(bg.clone())),
            )),
            Arc::new(state),
            sbs,
            Some(DiskBitmap::new(&bg, [7; 16], 1000)),
            MetaConfig::default(),
            0,
        );
        t.pump();
        t.complete(|_| true);
        t.add_new(3, [33; 16], 4096 + 2048);
        let dn3 = t.meta.superblock(3).unwrap().dev_number;
        assert!(dn3 >= 4, "the new device took slot {dn3}");
        let back = NewMember {
            device_uuid: old0.device_uuid,
            sectors: 4096 + 2048,
            old_sb: Some(old0.clone()),
            write_mostly: false,
        };
        assert_eq!(t.meta.add_member(0, back.clone()), Ok(Recovery::Bitmap));
        assert_eq!(t.meta.superblock(0).unwrap().dev_number, 0);

        // Its slot held by another role's device: added as new.
        let mut t = tb(Level::Raid1, 3, Some(4096));
        t.pump();
        let mut old = t.meta.superblock(2).cloned().unwrap();
        t.fail(2);
        while t.meta.state().members[2] != MemberState::Faulty {
            t.complete(|_| true);
        }
        old.dev_number = 1; // role 1's device holds slot 1
        old.dev_roles[1] = DevRole::Active(2);
        let r = t.meta.add_member(
            2,
            NewMember {
                device_uuid: old.device_uuid,
                sectors: 4096 + 2048,
                old_sb: Some(old),
                write_mostly: false,
            },
        );
        assert_eq!(r, Ok(Recovery::Full));
        assert_ne!(t.meta.superblock(2).unwrap().dev_number, 1);
    }

    #[test]
    fn replaced_devices_free_their_dev_roles_slots() {
        // A role whose device fails and is replaced by a new one, over and
        // over: the replaced devices' slots are used again (md frees a
        // removed device's slot), so the superblock never runs out of the
        // 1920 slots a 4 KiB superblock holds.
        let mut t = t(Level::Raid1, 2);
        t.pump();
        for i in 0..2500u32 {
            t.fail(1);
            // (A recovery-offset checkpoint may be written first.)
            while t.meta.state().members[1] != MemberState::Faulty {
                assert!(!t.writes.is_empty(), "the failure is not being committed");
                t.complete(|_| true);
            }
            // Every channel has the state that brought it back.
            t.add_new(1, (i as u128 + 100).to_le_bytes(), 4096 + 2048);
            t.pump();
            // From raid_disks (2) on, the replaced device's slot freed.
            let dn = t.meta.superblock(1).unwrap().dev_number;
            assert!((2..4).contains(&dn), "replacement {i} took slot {dn}");
        }
    }

    /// A device brought into a faulty role while another role's add is
    /// being committed (that commit's superblocks still record the role
    /// faulty) is recorded recovering by the next commit, not dropped.
    #[test]
    fn add_during_another_adds_commit_is_kept() {
        let mut t = t(Level::Raid1, 3);
        t.pump();
        for m in [1, 2] {
            t.fail(m);
            while t.meta.state().members[m as usize] != MemberState::Faulty {
                assert!(!t.writes.is_empty(), "the failure is not being committed");
                t.complete(|_| true);
            }
        }
        let nm = |u: u8| NewMember {
            device_uuid: [u; 16],
            sectors: 4096 + 2048,
            old_sb: None,
            write_mostly: false,
        };
        assert_eq!(t.meta.add_member(2, nm(20)), Ok(Recovery::Full));
        t.pump();
        assert!(!t.writes.is_empty(), "role 2's add is being committed");
        // Role 1's add comes while that commit is in flight.
        assert_eq!(t.meta.add_member(1, nm(10)), Ok(Recovery::Full));
        t.pump();
        for _ in 0..4 {
            t.complete(|_| true);
        }
        let st = t.meta.state();
        assert!(
            matches!(st.members[1], MemberState::Recovering(_))
                && matches!(st.members[2], MemberState::Recovering(_)),
            "an add was lost: {:?}",
            st.members
        );
    }

    #[test]
    fn added_device_whose_superblock_write_fails_stays_failed() {
        let mut t = t(Level::Raid1, 3);
        t.pump();
        // Role 2's device fails, as a channel sees it.
        let old = t.meta.state().readded[2];
        t.meta.shared.set_failed(2, old);
        t.fail(2);
        while t.meta.state().members[2] != MemberState::Faulty {
            assert!(!t.writes.is_empty(), "the failure is not being committed");
            t.complete(|_| true);
        }
        let nm = NewMember {
            device_uuid: [20; 16],
            sectors: 4096 + 2048,
            old_sb: None,
            write_mostly: false,
        };
        assert_eq!(t.meta.add_member(2, nm), Ok(Recovery::Full));
        t.pump();
        assert!(
            t.writes.iter().any(|w| w.0 == 2),
            "the add's superblock goes to the new device"
        );
        // The new device cannot take its superblock.
        t.complete(|m| m != 2);
        let st = t.meta.state();
        assert!(st.readded[2] > old, "the add was published");
        // The failure is the new device's, and channels keep off it, also
        // once every channel has the add's state.
        assert_eq!(t.meta.shared.failed_inc(2), st.readded[2]);
        t.meta.released(st.seq);
        assert_ne!(
            t.meta.shared.failed() & 1 << 2,
            0,
            "channels took back a device whose superblock write failed"
        );
        // And the next commit records it faulty.
        for _ in 0..4 {
            t.complete(|_| true);
        }
        assert_eq!(t.meta.state().members[2], MemberState::Faulty);
    }

    #[test]
    fn add_member_refuses_what_it_cannot_take() {
        let mut t = tb(Level::Raid5, 3, Some(64 << 10));
        let nm = |s| NewMember {
            device_uuid: [9; 16],
            sectors: s,
            old_sb: None,
            write_mostly: false,
        };
        assert!(matches!(
            t.meta.add_member(1, nm(1 << 20)),
            Err(AddError::InUse { role: 1, .. })
        ));
        assert!(matches!(
            t.meta.add_member(5, nm(1 << 20)),
            Err(AddError::Role {
                role: 5,
                members: 3
            })
        ));
        t.fail(1);
        t.complete(|_| true);
        assert!(matches!(
            t.meta.add_member(1, nm(100)),
            Err(AddError::TooSmall { .. })
        ));
        assert_eq!(t.meta.add_member(1, nm(1 << 20)), Ok(Recovery::Full));
    }

    /// An orderly stop in the middle of a resync records how far it got in
    /// `resync_offset`; the next start resumes there instead of at 0.
    #[test]
    fn orderly_stop_mid_resync_checkpoints_resync_offset() {
        for idle_first in [false, true] {
            stop_mid_resync(idle_first);
        }
    }

    fn stop_mid_resync(idle_first: bool) {
        let mut t = t(Level::Raid5, 4); // 4096-block members, strip 128
        t.writable();
        // A crash: the superblocks say dirty.
        let sbs: Vec<Option<Superblock>> = (0..4).map(|m| t.meta.superblock(m).cloned()).collect();
        assert!(sbs.iter().flatten().all(|sb| sb.resync_offset == 0));
        let geom = t.meta.geom.clone();
        let state = |events| {
            let mut s = ArrayState::new_in_sync(4);
            s.events = events;
            Arc::new(s)
        };
        let mut meta = Meta::new(
            geom.clone(),
            Arc::new(Shared::new(1)),
            state(1),
            sbs,
            None,
            MetaConfig::default(),
            0,
        );
        assert_eq!(meta.resync_from(), 0, "after a crash: from the start");
        // The resync gets through 10 stripes (3 data strips each), then the
        // array is stopped; its channels were idle before the stop (no
        // user I/O) or go idle after it.
        meta.resync_progress(10 * 384);
        let seq = meta.state().seq;
        if idle_first {
            meta.request(MetaRequest::WritesIdle { channel: 0, seq });
            meta.shutdown();
        } else {
            meta.shutdown();
            meta.request(MetaRequest::WritesIdle { channel: 0, seq });
        }
        let mut t2 = T {
            meta,
            writes: Vec::new(),
            broadcasts: Vec::new(),
            now: 0,
        };
        t2.pump();
        assert_eq!(t2.writes.len(), 4, "a clean superblock for every member");
        let sb = t2.decoded(0);
        assert_eq!(
            sb.resync_offset,
            10 * 128,
            "member sectors of the stripes done"
        );
        t2.complete(|_| true);
        assert!(t2.meta.is_clean());
        let sbs: Vec<Option<Superblock>> = (0..4).map(|m| t2.meta.superblock(m).cloned()).collect();
        let meta = Meta::new(
            geom,
            Arc::new(Shared::new(1)),
            state(2),
            sbs,
            None,
            MetaConfig::default(),
            0,
        );
        assert_eq!(meta.resync_from(), 10 * 384, "resumes where it stopped");
    }

    /// A dirty superblock's `resync_offset` past the members' end (damaged,
    /// or another implementation's) resumes the resync at the end: nothing
    /// to do there, and no overflow.
    #[test]
    fn a_resync_offset_past_the_end_resumes_at_the_end() {
        for level in [Level::Raid5, Level::Raid1] {
            let n = 4;
            let t = t(level, n);
            let geom = t.meta.geom.clone();
            for off in [u64::MAX - 1, u64::MAX / 2, 1 << 40] {
                let sbs: Vec<Option<Superblock>> = (0..n)
                    .map(|m| {
                        let mut sb = t.meta.superblock(m).cloned().unwrap();
                        sb.resync_offset = off;
                        Some(sb)
                    })
                    .collect();
                let meta = Meta::new(
                    geom.clone(),
                    Arc::new(Shared::new(1)),
                    Arc::new(ArrayState::new_in_sync(n)),
                    sbs,
                    None,
                    MetaConfig::default(),
                    0,
                );
                assert_eq!(meta.resync_from(), geom.array_blocks(), "{level:?} {off}");
            }
        }
    }
}
