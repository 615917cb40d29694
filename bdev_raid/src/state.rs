//! Array state shared between the metadata path and the channels.
//!
//! The metadata path owns the truth and replaces the snapshot by broadcast;
//! channels only read the snapshot they were last given. The one piece of
//! shared mutable state on the I/O path is [`StripeLocks`], a table of
//! atomics that serialises parity updates of one stripe across channels.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::bitmap::Bitmap;
use crate::layout::{Geometry, Level, MAX_MEMBERS};

/// A member's state as the metadata path has committed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Holds current data for the whole array.
    InSync,
    /// Being rebuilt: takes every write, but holds current data only below
    /// this member block (md's `recovery_offset`), and is read only there.
    Recovering(u64),
    /// Recorded as faulty (role 0xfffe) on the survivors; never used.
    Faulty,
    /// No device in this role.
    Missing,
}

impl MemberState {
    /// Whether the member takes I/O (writes, and reads where in sync).
    pub fn in_service(self) -> bool {
        matches!(self, MemberState::InSync | MemberState::Recovering(_))
    }

    /// Whether member blocks `[lba, lba+blocks)` hold current data.
    pub fn readable(self, lba: u64, blocks: u64) -> bool {
        match self {
            MemberState::InSync => true,
            MemberState::Recovering(o) => lba + blocks <= o,
            _ => false,
        }
    }
}

/// A snapshot of the array's state, broadcast by the metadata path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrayState {
    /// md's `events` at which this snapshot was committed.
    pub events: u64,
    /// Publication number: every state the metadata path broadcasts has a
    /// higher one (several can share `events`, e.g. writable on and off).
    pub seq: u64,
    /// One entry per role.
    pub members: Vec<MemberState>,
    /// No member holding some of the data is left: all I/O fails.
    pub offline: bool,
    /// The superblocks durably say "dirty" (`resync_offset` 0) and writes
    /// may be issued. While false, a channel parks writes and asks the
    /// metadata path to mark the array dirty first.
    pub writable: bool,
    /// Per role: publication that last brought a device back into it (0:
    /// never). A write parked on a member's failure may complete once a
    /// state is released that records the member out of service, or
    /// brought back after the write parked (which needed the failure
    /// committed first).
    pub readded: Vec<u64>,
    /// Write-mostly members (md's `WriteMostly1` devflag): they take every
    /// write but are read only when no other copy can serve the range.
    pub write_mostly: u64,
    /// md's max write-behind: writes to write-mostly members that may
    /// still be in flight after the array acknowledged them (0: off; needs
    /// the bitmap and a mirrored level).
    pub write_behind: u32,
}

impl ArrayState {
    /// A new array: every member in sync, events 0 (as a new array's
    /// superblocks say), clean (not writable until the metadata path marks
    /// it dirty).
    pub fn new_in_sync(members: usize) -> ArrayState {
        assert!(members <= MAX_MEMBERS, "too many members");
        ArrayState {
            events: 0,
            seq: 0,
            members: vec![MemberState::InSync; members],
            offline: false,
            writable: false,
            readded: vec![0; members],
            write_mostly: 0,
            write_behind: 0,
        }
    }

    /// Every member in sync and writable: for hosts and tests that run the
    /// data path without a metadata path.
    pub fn new_writable(members: usize) -> ArrayState {
        ArrayState {
            writable: true,
            ..ArrayState::new_in_sync(members)
        }
    }

    /// Bit mask of members that take no I/O (faulty or missing).
    pub fn out_of_service(&self) -> u64 {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.in_service())
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    /// Bit mask of members being rebuilt.
    pub fn recovering(&self) -> u64 {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, MemberState::Recovering(_)))
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    /// Members that cannot serve every read: out of service or being
    /// rebuilt. The array survives while the others hold all the data.
    pub fn not_in_sync(&self) -> u64 {
        self.out_of_service() | self.recovering()
    }

    /// Members (among `mask`) that do not hold current data in member blocks
    /// `[lba, lba+blocks)`: being rebuilt and not there yet.
    pub fn stale_in(&self, mask: u64, lba: u64, blocks: u64) -> u64 {
        let mut out = 0;
        let mut r = self.recovering() & mask;
        while r != 0 {
            let m = r.trailing_zeros() as usize;
            r &= r - 1;
            if !self.members[m].readable(lba, blocks) {
                out |= 1 << m;
            }
        }
        out
    }

    /// Bit mask of members recorded faulty.
    pub fn faulty(&self) -> u64 {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == MemberState::Faulty)
            .fold(0, |m, (i, _)| m | 1 << i)
    }
}

/// Whether every array block still has a readable copy (or can be
/// reconstructed) when the members in `dead` (bit mask) are gone.
pub fn survives(geom: &Geometry, dead: u64) -> bool {
    if dead == 0 {
        return true;
    }
    match geom.level() {
        Level::Linear | Level::Raid0 => false,
        Level::Raid4 | Level::Raid5 | Level::Raid6 => {
            dead.count_ones() as usize <= geom.redundancy()
        }
        Level::Raid1 => dead.count_ones() < geom.members() as u32,
        Level::Raid10 => {
            // The copy pattern repeats within members * copies strips; check
            // the pieces of a few periods so every copy set is seen.
            let period = geom.strip_blocks() * (geom.members() * geom.copies() * 2) as u64;
            range_survives(geom, 0, period.min(geom.array_blocks()), dead)
        }
    }
}

/// Whether every block of `[lba, lba+blocks)` has a copy outside `dead`
/// (mapped levels), or the array survives `dead` (parity levels).
pub fn range_survives(geom: &Geometry, lba: u64, blocks: u64, dead: u64) -> bool {
    if dead == 0 {
        return true;
    }
    if geom.level().is_parity() || blocks == 0 {
        return survives(geom, dead);
    }
    let end = lba + blocks;
    let mut at = lba;
    while at < end {
        let m = geom.map(at, end - at);
        if m.copies().iter().all(|c| dead & (1 << c.member) != 0) {
            return false;
        }
        at += m.len;
    }
    true
}

/// What the channels of one array share: the stripe/range locks and one
/// activity counter per channel (each written by its channel only, read by
/// the metadata path to see whether writes have gone idle).
pub struct Shared {
    pub locks: StripeLocks,
    activity: Box<[PaddedCounter]>,
    /// Members some channel saw fail (md's in-memory Faulty flag), set
    /// before the metadata path commits the failure.
    failed: AtomicU64,
    /// Per member: `readded` of the device that failed (which device in
    /// the role the failed flag is about).
    failed_inc: Box<[AtomicU64]>,
    /// The write-intent bitmap's per-chunk words, when the array has one.
    pub bitmap: Option<Bitmap>,
    /// Write-behind pieces in flight on all channels (md's
    /// `behind_writes`), at most `ArrayState::write_behind`.
    behind: AtomicU32,
    /// Per member: write-behind pieces in flight to it. A read of a member
    /// with any waits for the range lock (write-behind pieces hold theirs
    /// until done), whatever the channel's state says of write-mostly.
    behind_to: Box<[AtomicU32]>,
    /// Reads waiting to read a member with write-behind writes in flight:
    /// while any waits, no new write goes behind (R5, md's rule).
    behind_readers: AtomicU32,
}

#[repr(align(64))]
struct PaddedCounter(AtomicU64);

impl Shared {
    /// Shared state for an array with `channels` channels.
    pub fn new(channels: usize) -> Shared {
        Shared::with_bitmap(channels, None)
    }

    /// Shared state for an array with `channels` channels and, if given, a
    /// write-intent bitmap.
    pub fn with_bitmap(channels: usize, bitmap: Option<Bitmap>) -> Shared {
        Shared {
            bitmap,
            locks: StripeLocks::default(),
            activity: (0..channels.max(1))
                .map(|_| PaddedCounter(AtomicU64::new(0)))
                .collect(),
            failed: AtomicU64::new(0),
            failed_inc: (0..MAX_MEMBERS).map(|_| AtomicU64::new(0)).collect(),
            behind: AtomicU32::new(0),
            behind_to: (0..MAX_MEMBERS).map(|_| AtomicU32::new(0)).collect(),
            behind_readers: AtomicU32::new(0),
        }
    }

    /// Take one of the array's `max` write-behind places for a piece
    /// written behind to the members in `members`; false when all are
    /// taken or a read waits for a member with write-behind in flight.
    pub fn try_start_behind(&self, max: u32, members: u64) -> bool {
        if self.behind_readers.load(Ordering::Acquire) != 0 {
            return false;
        }
        let took = self
            .behind
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if took {
            for m in (0..MAX_MEMBERS).filter(|m| members & 1 << m != 0) {
                self.behind_to[m].fetch_add(1, Ordering::AcqRel);
            }
        }
        took
    }

    /// A write-behind piece is done on the members in `members`.
    pub fn end_behind(&self, members: u64) {
        for m in (0..MAX_MEMBERS).filter(|m| members & 1 << m != 0) {
            let was = self.behind_to[m].fetch_sub(1, Ordering::AcqRel);
            assert!(was > 0, "write-behind count underflow");
        }
        let was = self.behind.fetch_sub(1, Ordering::AcqRel);
        assert!(was > 0, "write-behind count underflow");
    }

    /// Write-behind pieces in flight to member `m`.
    pub fn behind_to(&self, m: usize) -> u32 {
        self.behind_to[m].load(Ordering::Acquire)
    }

    /// Write-behind pieces in flight on all channels.
    pub fn behind_in_flight(&self) -> u32 {
        self.behind.load(Ordering::Acquire)
    }

    /// A read starts (`true`) or stops (`false`) waiting to read a
    /// write-mostly member.
    pub fn behind_reader(&self, waits: bool) {
        if waits {
            self.behind_readers.fetch_add(1, Ordering::AcqRel);
        } else {
            let was = self.behind_readers.fetch_sub(1, Ordering::AcqRel);
            assert!(was > 0, "write-mostly reader count underflow");
        }
    }

    /// Members seen failing (bit mask).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Acquire)
    }

    /// Member `m` was brought back (a new device in its role): channels may
    /// use it again as the state says.
    pub fn clear_failed(&self, m: usize) {
        self.failed.fetch_and(!(1 << m), Ordering::AcqRel);
    }

    /// Record member `m` as failing; true if this call set it first.
    /// `inc` says which device in the role failed (the `readded` of the
    /// state the failed I/O was issued under).
    pub fn set_failed(&self, m: usize, inc: u64) -> bool {
        if self.failed() & 1 << m != 0 {
            return false;
        }
        self.failed_inc[m].store(inc, Ordering::Release);
        self.failed.fetch_or(1 << m, Ordering::AcqRel) & 1 << m == 0
    }

    /// Which device in role `m` the failed flag is about (see `set_failed`).
    pub fn failed_inc(&self, m: usize) -> u64 {
        self.failed_inc[m].load(Ordering::Acquire)
    }

    pub fn channels(&self) -> usize {
        self.activity.len()
    }

    /// Channel `i` started another write.
    pub fn note_write(&self, i: usize) {
        let c = &self.activity[i].0;
        // Only channel i writes its counter: no read-modify-write needed.
        c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    /// Sum of all channels' write counters; unchanged means no new writes.
    pub fn activity(&self) -> u64 {
        self.activity
            .iter()
            .fold(0u64, |a, c| a.wrapping_add(c.0.load(Ordering::Relaxed)))
    }
}

/// Cross-channel stripe locks: a fixed table of lock words indexed by a
/// hash of the stripe (or range granule) number. Two stripes that hash
/// alike merely serialise. A holder never waits for a second lock, so there
/// is no deadlock.
///
/// A word is held exclusively ([`StripeLocks::try_lock`]) or shared
/// ([`StripeLocks::try_share`]) by holders of disjoint parts of it: 16
/// part bits, one per sixteenth (or finer slice) of the granule, so direct
/// writes of one granule exclude only those that overlap them. An
/// exclusive taker that fails marks the word wanted, and a wanted word
/// takes no new sharers, so sharers coming and going never starve it.
pub struct StripeLocks {
    slots: Box<[AtomicU32]>,
    mask: u64,
}

const LOCK_EXCL: u32 = 1 << 31;
const LOCK_WANTED: u32 = 1 << 30;
/// The part bits of a shared word.
pub const LOCK_PARTS: u32 = 16;
const LOCK_PART_BITS: u32 = (1 << LOCK_PARTS) - 1;

impl StripeLocks {
    /// A table of `2^bits` locks.
    pub fn new(bits: u32) -> StripeLocks {
        let n = 1usize << bits;
        StripeLocks {
            slots: (0..n).map(|_| AtomicU32::new(0)).collect(),
            mask: n as u64 - 1,
        }
    }

    /// The table slot stripe `stripe` uses.
    pub fn key(&self, stripe: u64) -> usize {
        // Fibonacci hashing spreads neighbouring stripes over the table.
        (stripe.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20 & self.mask) as usize
    }

    /// Take `key` exclusively: no other holder, shared or not.
    pub fn try_lock(&self, key: usize) -> bool {
        let w = &self.slots[key];
        let mut cur = w.load(Ordering::Relaxed);
        loop {
            if cur & (LOCK_EXCL | LOCK_PART_BITS) != 0 {
                if cur & LOCK_WANTED == 0 {
                    w.fetch_or(LOCK_WANTED, Ordering::Relaxed);
                }
                return false;
            }
            // Taking it clears the wanted mark (another waiter sets it
            // again on its next try).
            match w.compare_exchange_weak(cur, LOCK_EXCL, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    pub fn unlock(&self, key: usize) {
        let was = self.slots[key].fetch_and(!LOCK_EXCL, Ordering::Release);
        assert!(
            was & LOCK_EXCL != 0,
            "unlock of a stripe lock that was not held"
        );
    }

    /// Take parts `parts` (non-zero, within [`LOCK_PARTS`]) of `key`:
    /// refused while the word is held exclusively or wanted, or another
    /// sharer holds one of those parts.
    pub fn try_share(&self, key: usize, parts: u32) -> bool {
        debug_assert!(parts != 0 && parts & !LOCK_PART_BITS == 0);
        let w = &self.slots[key];
        let mut cur = w.load(Ordering::Relaxed);
        loop {
            if cur & (LOCK_EXCL | LOCK_WANTED | parts) != 0 {
                return false;
            }
            match w.compare_exchange_weak(cur, cur | parts, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    pub fn unshare(&self, key: usize, parts: u32) {
        let was = self.slots[key].fetch_and(!parts, Ordering::Release);
        assert!(
            was & parts == parts,
            "unshare of stripe lock parts not held"
        );
    }
}

impl Default for StripeLocks {
    fn default() -> Self {
        StripeLocks::new(12)
    }
}
