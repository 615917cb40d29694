//! Array state shared between the metadata path and the channels.
//!
//! The metadata path owns the truth and replaces the snapshot by broadcast;
//! channels only read the snapshot they were last given. The one piece of
//! shared mutable state on the I/O path is [`StripeLocks`], a table of
//! lock words that serialises writes of one stripe or range across
//! channels (plain words while one channel owns it).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

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
    /// Array blocks from here on may have copies or parity that disagree
    /// (a resync has not reached them yet: md's `recovery_cp`); `u64::MAX`
    /// when the whole array is in sync.
    unsynced_from: AtomicU64,
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
            unsynced_from: AtomicU64::new(u64::MAX),
        }
    }

    /// Where the blocks a resync has not reached begin (`u64::MAX`: none).
    #[inline]
    pub fn unsynced_from(&self) -> u64 {
        self.unsynced_from.load(Ordering::Relaxed)
    }

    /// The resync has reached array block `lba` (`u64::MAX`: the whole
    /// array is in sync).
    pub fn set_unsynced_from(&self, lba: u64) {
        self.unsynced_from.store(lba, Ordering::Relaxed);
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

    /// Write-behind pieces in flight to member `m`. With none in flight
    /// on the array (the common case, asked on every direct read) the
    /// member's counter is not read: `behind` is taken before and given
    /// back after the members' counts, so it is 0 only when they are.
    #[inline(always)]
    pub fn behind_to(&self, m: usize) -> u32 {
        if self.behind.load(Ordering::Acquire) == 0 {
            return 0;
        }
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
    #[inline]
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

    /// Record device `inc` of role `m` as failing, also when the flag is
    /// already up for an earlier device of the role (the metadata path's
    /// view: it knows which device a write went to).
    pub fn fail_device(&self, m: usize, inc: u64) {
        self.failed_inc[m].fetch_max(inc, Ordering::AcqRel);
        self.failed.fetch_or(1 << m, Ordering::AcqRel);
    }

    /// Which device in role `m` the failed flag is about (see `set_failed`).
    pub fn failed_inc(&self, m: usize) -> u64 {
        self.failed_inc[m].load(Ordering::Acquire)
    }

    pub fn channels(&self) -> usize {
        self.activity.len()
    }

    /// Channel `i` started another write.
    #[inline(always)]
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
///
/// The only channel of an array owns the table: it reads and writes the
/// words with plain loads and stores, no atomic read-modify-write (which
/// on x86 also drains the store buffer, full after a data copy). A
/// channel that attaches while another owns the table asks it to give the
/// table back and takes no lock until it has: its tries fail as if the
/// lock were held, and it tries again when it polls. The owner gives the
/// table back at its next lock operation or poll
/// ([`StripeLocks::keep_owning`]); from then on every channel uses atomics.
/// A channel left alone takes the table again when it polls.
///
/// Why the hand-over is safe: a channel attaches (`attached` + 1) and then
/// reads `owner`; a channel taking the table sets `owner` and then reads
/// `attached`, all sequentially consistent, so at least one of the two sees
/// the other. The owner's release store of `owner = 0` publishes its plain
/// stores to whoever then reads 0 with acquire.
pub struct StripeLocks {
    slots: Box<[AtomicU32]>,
    mask: u64,
    mode: LockMode,
}

/// Who uses the table how, on a cache line of its own (read on every lock
/// operation, written only when the table changes hands).
#[repr(align(64))]
#[derive(Default)]
struct LockMode {
    /// The owning channel's index + 1; 0: every channel uses atomics.
    owner: AtomicU32,
    /// A channel waits for the owner to give the table back.
    revoke: AtomicBool,
    /// Channels attached ([`StripeLocks::attach`]).
    attached: AtomicU32,
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
            mode: LockMode::default(),
        }
    }

    /// The table slot stripe `stripe` uses.
    #[inline]
    pub fn key(&self, stripe: u64) -> usize {
        // Fibonacci hashing spreads neighbouring stripes over the table.
        (stripe.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20 & self.mask) as usize
    }

    /// A channel starts using the table (it does not own it).
    pub fn attach(&self) {
        let m = &self.mode;
        m.attached.fetch_add(1, Ordering::SeqCst);
        if m.owner.load(Ordering::SeqCst) != 0 {
            m.revoke.store(true, Ordering::SeqCst);
        }
    }

    /// A channel stops using the table (it holds none of its locks);
    /// `owned`: it owns the table.
    pub fn detach(&self, owned: bool) {
        if owned {
            self.mode.owner.store(0, Ordering::Release);
        }
        let was = self.mode.attached.fetch_sub(1, Ordering::SeqCst);
        assert!(was > 0, "stripe lock table detached more than attached");
    }

    /// Channel `me`, attached and not owning the table, takes it if it is
    /// the only channel attached; true if it now owns it.
    pub fn try_own(&self, me: usize) -> bool {
        let m = &self.mode;
        if m.attached.load(Ordering::Relaxed) != 1 || m.owner.load(Ordering::Relaxed) != 0 {
            return false;
        }
        // Cleared before taking it: a channel attaching later sets it
        // again after it sees the owner.
        m.revoke.store(false, Ordering::SeqCst);
        let id = me as u32 + 1;
        if m.owner
            .compare_exchange(0, id, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        if m.attached.load(Ordering::SeqCst) != 1 {
            // Another channel attached meanwhile (and may have seen no
            // owner): give it back before any plain store.
            m.owner.store(0, Ordering::Release);
            return false;
        }
        true
    }

    /// The owner keeps the table unless another channel asked for it; if
    /// one did, the owner gives it back (false).
    #[inline]
    pub fn keep_owning(&self) -> bool {
        if !self.mode.revoke.load(Ordering::Relaxed) {
            return true;
        }
        self.mode.owner.store(0, Ordering::Release);
        false
    }

    /// Whether channel `me` would take or give back the table if it
    /// polled (`owned`: it owns it now).
    pub fn change_due(&self, owned: bool) -> bool {
        let m = &self.mode;
        if owned {
            m.revoke.load(Ordering::Relaxed)
        } else {
            m.attached.load(Ordering::Relaxed) == 1 && m.owner.load(Ordering::Relaxed) == 0
        }
    }

    /// A channel not owning the table may use atomics on it: nobody owns
    /// it. If a channel does, it is asked to give it back.
    fn shared_ok(&self) -> bool {
        if self.mode.owner.load(Ordering::Acquire) == 0 {
            return true;
        }
        self.mode.revoke.store(true, Ordering::Relaxed);
        false
    }

    /// Take `key` exclusively: no other holder, shared or not. `owned`:
    /// the caller owns the table (and asked [`StripeLocks::keep_owning`]).
    pub fn try_lock(&self, key: usize, owned: bool) -> bool {
        let w = &self.slots[key];
        if owned {
            let cur = w.load(Ordering::Relaxed);
            if cur & (LOCK_EXCL | LOCK_PART_BITS) != 0 {
                Self::mark_wanted(w, cur, true);
                return false;
            }
            w.store(LOCK_EXCL, Ordering::Relaxed);
            return true;
        }
        if !self.shared_ok() {
            return false;
        }
        let mut cur = w.load(Ordering::Relaxed);
        loop {
            if cur & (LOCK_EXCL | LOCK_PART_BITS) != 0 {
                Self::mark_wanted(w, cur, false);
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

    /// Whether `key` is held (exclusively or in part); if it is, it is
    /// marked wanted, as a refused [`StripeLocks::try_lock`] marks it.
    /// False when it cannot tell (another channel owns the table).
    pub fn held(&self, key: usize, owned: bool) -> bool {
        if !owned && self.mode.owner.load(Ordering::Acquire) != 0 {
            return false;
        }
        let w = &self.slots[key];
        let cur = w.load(Ordering::Relaxed);
        if cur & (LOCK_EXCL | LOCK_PART_BITS) == 0 {
            return false;
        }
        Self::mark_wanted(w, cur, owned);
        true
    }

    /// Mark word `w` (last read as `cur`) wanted: a waiter for it
    /// exclusively keeps new sharers out.
    #[inline]
    fn mark_wanted(w: &AtomicU32, cur: u32, owned: bool) {
        if cur & LOCK_WANTED != 0 {
            return;
        }
        if owned {
            w.store(cur | LOCK_WANTED, Ordering::Relaxed);
        } else {
            w.fetch_or(LOCK_WANTED, Ordering::Relaxed);
        }
    }

    /// Whether `key` is held by sharers only: no exclusive holder, none
    /// waiting to be one. False when it cannot tell (another channel owns
    /// the table).
    pub fn shared_only(&self, key: usize, owned: bool) -> bool {
        if !owned && self.mode.owner.load(Ordering::Acquire) != 0 {
            return false;
        }
        let cur = self.slots[key].load(Ordering::Relaxed);
        cur & (LOCK_EXCL | LOCK_WANTED) == 0 && cur & LOCK_PART_BITS != 0
    }

    /// Clear `bits` of word `key` (plain if `owned`); the word before.
    #[inline]
    fn clear(&self, key: usize, bits: u32, owned: bool) -> u32 {
        let w = &self.slots[key];
        if owned {
            let cur = w.load(Ordering::Relaxed);
            w.store(cur & !bits, Ordering::Relaxed);
            cur
        } else {
            w.fetch_and(!bits, Ordering::Release)
        }
    }

    pub fn unlock(&self, key: usize, owned: bool) {
        let was = self.clear(key, LOCK_EXCL, owned);
        assert!(
            was & LOCK_EXCL != 0,
            "unlock of a stripe lock that was not held"
        );
    }

    /// Take parts `parts` (non-zero, within [`LOCK_PARTS`]) of `key`:
    /// refused while the word is held exclusively or wanted, or another
    /// sharer holds one of those parts. `owned` as in `try_lock`.
    #[inline(always)]
    pub fn try_share(&self, key: usize, parts: u32, owned: bool) -> bool {
        debug_assert!(parts != 0 && parts & !LOCK_PART_BITS == 0);
        if owned {
            let w = &self.slots[key];
            let cur = w.load(Ordering::Relaxed);
            if cur & (LOCK_EXCL | LOCK_WANTED | parts) != 0 {
                return false;
            }
            w.store(cur | parts, Ordering::Relaxed);
            return true;
        }
        self.try_share_atomic(key, parts)
    }

    /// [`StripeLocks::try_share`] by a channel that does not own the table.
    #[inline(never)]
    fn try_share_atomic(&self, key: usize, parts: u32) -> bool {
        let w = &self.slots[key];
        if !self.shared_ok() {
            return false;
        }
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

    #[inline]
    pub fn unshare(&self, key: usize, parts: u32, owned: bool) {
        let was = self.clear(key, parts, owned);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// `held` tells a held lock from a free one, and marks a held one
    /// wanted (a share is then refused, so a waiter is not starved), in
    /// both the owner's and the shared mode.
    #[test]
    fn stripe_lock_held_marks_wanted() {
        for owned in [true, false] {
            let l = StripeLocks::new(2);
            l.attach();
            if owned {
                assert!(l.try_own(0));
            }
            assert!(!l.held(1, owned), "free");
            assert!(!l.shared_only(1, owned), "free");
            assert!(l.try_share(1, 0b0001, owned));
            assert!(l.try_share(1, 0b0010, owned), "another part, not wanted");
            assert!(l.shared_only(1, owned), "parts held, none wants it");
            assert!(l.held(1, owned), "parts held");
            assert!(!l.shared_only(1, owned), "now wanted");
            assert!(!l.try_share(1, 0b0100, owned), "wanted: no new share");
            l.unshare(1, 0b0011, owned);
            assert!(!l.held(1, owned), "released");
            assert!(l.try_lock(1, owned), "the waiter takes it");
            assert!(l.held(1, owned), "held exclusively");
            assert!(!l.shared_only(1, owned), "held exclusively");
            l.unlock(1, owned);
            assert!(l.try_lock(1, owned));
            l.unlock(1, owned);
            assert!(l.try_share(1, 0b0100, owned), "taking it cleared wanted");
            l.unshare(1, 0b0100, owned);
        }
        // Another channel owns the table: its plain words cannot be read
        // here, so `held` says it cannot tell (the try decides).
        let l = StripeLocks::new(2);
        l.attach();
        assert!(l.try_own(0));
        assert!(l.try_lock(1, true));
        l.attach();
        assert!(!l.held(1, false));
        assert!(!l.shared_only(1, false));
    }

    /// The hand-over, step by step: an owner's plain stores are seen by
    /// the channel it gives the table to, a channel refused while another
    /// owns the table asks for it, and a channel left alone takes it.
    #[test]
    fn stripe_lock_owner_hands_over() {
        let l = StripeLocks::new(2);
        l.attach();
        assert!(!l.change_due(true), "no one asked for the table yet");
        assert!(l.change_due(false), "a lone channel would take the table");
        assert!(l.try_own(0));
        assert!(l.keep_owning());
        assert!(l.try_lock(1, true));
        assert!(l.try_share(2, 0b0110, true));
        assert!(!l.try_share(2, 0b0100, true), "part held");
        l.attach(); // channel 1
        assert!(!l.try_own(1), "two channels attached");
        assert!(l.change_due(true), "channel 1 asked for the table");
        assert!(!l.try_lock(3, false), "owned by channel 0");
        assert!(!l.try_share(3, 1, false), "owned by channel 0");
        assert!(!l.keep_owning(), "channel 0 gives the table back");
        assert!(!l.change_due(false), "two channels: nobody takes it");
        assert!(!l.try_lock(1, false), "channel 0's plain lock is seen");
        assert!(
            !l.try_share(2, 0b0010, false),
            "channel 0's plain share is seen"
        );
        assert!(l.try_share(2, 0b1000, false));
        assert!(l.try_lock(3, false));
        // Channel 0 releases what it took as owner with atomics now.
        l.unlock(1, false);
        l.unshare(2, 0b0110, false);
        assert!(l.try_lock(1, false));
        l.unlock(1, false);
        l.unlock(3, false);
        l.unshare(2, 0b1000, false);
        l.detach(false); // channel 0
        assert!(l.change_due(false), "channel 1 is alone");
        assert!(l.try_own(1));
        assert!(l.try_lock(1, true));
        l.unlock(1, true);
        l.detach(true);
        assert_eq!(l.mode.owner.load(Ordering::Relaxed), 0);
        assert_eq!(l.mode.attached.load(Ordering::Relaxed), 0);
        assert!(l.slots.iter().all(|w| w.load(Ordering::Relaxed) == 0));
    }

    /// An owner's plain operations give the same answers and leave the
    /// same words as the atomic ones, wanted marks included.
    #[test]
    fn stripe_lock_owned_ops_match_atomic_ops() {
        let owned = StripeLocks::new(2);
        owned.attach();
        assert!(owned.try_own(0));
        let shared = StripeLocks::new(2);
        shared.attach();
        let mut held: Vec<(usize, u32)> = Vec::new(); // parts 0: exclusive
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..20_000 {
            let r = rng(&mut seed);
            if r.is_multiple_of(3) && !held.is_empty() {
                let (k, parts) = held.swap_remove((r >> 8) as usize % held.len());
                if parts == 0 {
                    owned.unlock(k, true);
                    shared.unlock(k, false);
                } else {
                    owned.unshare(k, parts, true);
                    shared.unshare(k, parts, false);
                }
            } else {
                let k = (r >> 8) as usize % 4;
                let parts = if r >> 20 & 1 == 0 {
                    0
                } else {
                    let first = (r >> 24) as u32 % LOCK_PARTS;
                    let last = first + ((r >> 32) as u32 % (LOCK_PARTS - first));
                    ((2u32 << last) - 1) & !((1u32 << first) - 1)
                };
                let (a, b) = if parts == 0 {
                    (owned.try_lock(k, true), shared.try_lock(k, false))
                } else {
                    (
                        owned.try_share(k, parts, true),
                        shared.try_share(k, parts, false),
                    )
                };
                assert_eq!(a, b, "lock {k} parts {parts:#x}");
                if a {
                    held.push((k, parts));
                }
            }
            for k in 0..4 {
                assert_eq!(
                    owned.slots[k].load(Ordering::Relaxed),
                    shared.slots[k].load(Ordering::Relaxed),
                    "word {k}"
                );
            }
        }
    }

    /// Two threads, each a channel that comes and goes, own or share the
    /// table and hold locks across hand-overs: no two ever hold
    /// overlapping locks, and locks are taken both as owner and shared.
    #[test]
    fn stripe_lock_hand_over_keeps_mutual_exclusion() {
        const KEYS: usize = 4;
        let l = Arc::new(StripeLocks::new(2));
        // What each key's holders hold: bit 31 exclusive, low bits parts.
        let inside: Arc<Vec<AtomicU32>> = Arc::new((0..KEYS).map(|_| AtomicU32::new(0)).collect());
        let owned_ops = Arc::new(AtomicU64::new(0));
        let shared_ops = Arc::new(AtomicU64::new(0));
        let start = Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|me| {
                let (l, inside, start) = (l.clone(), inside.clone(), start.clone());
                let (owned_ops, shared_ops) = (owned_ops.clone(), shared_ops.clone());
                std::thread::spawn(move || {
                    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (me as u64 + 1) << 32;
                    start.wait();
                    let release = |k: usize, parts: u32, owned: bool| {
                        if parts == 0 {
                            inside[k].fetch_and(!LOCK_EXCL, Ordering::SeqCst);
                            l.unlock(k, owned);
                        } else {
                            inside[k].fetch_and(!parts, Ordering::SeqCst);
                            l.unshare(k, parts, owned);
                        }
                    };
                    for _round in 0..3000 {
                        l.attach();
                        let mut owned = l.try_own(me);
                        let mut held: Vec<(usize, u32)> = Vec::new();
                        for _ in 0..400 {
                            let r = rng(&mut seed);
                            if owned && !l.keep_owning() {
                                owned = false;
                            }
                            if !owned && r.is_multiple_of(7) {
                                owned = l.try_own(me);
                            }
                            if r.is_multiple_of(3) && !held.is_empty() {
                                let (k, parts) = held.swap_remove((r >> 8) as usize % held.len());
                                release(k, parts, owned);
                                continue;
                            }
                            let k = (r >> 8) as usize % KEYS;
                            let parts = if r >> 20 & 1 == 0 {
                                0
                            } else {
                                1u32 << ((r >> 24) as u32 % LOCK_PARTS)
                            };
                            let took = if parts == 0 {
                                l.try_lock(k, owned)
                            } else {
                                l.try_share(k, parts, owned)
                            };
                            if !took {
                                continue;
                            }
                            let mine = if parts == 0 { LOCK_EXCL } else { parts };
                            let before = inside[k].fetch_or(mine, Ordering::SeqCst);
                            let clash = if parts == 0 {
                                before
                            } else {
                                before & (LOCK_EXCL | parts)
                            };
                            assert_eq!(
                                clash, 0,
                                "channel {me} took {k}/{parts:#x} while {before:#x} was held"
                            );
                            held.push((k, parts));
                            if owned { &owned_ops } else { &shared_ops }
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        for (k, parts) in held.drain(..) {
                            release(k, parts, owned);
                        }
                        l.detach(owned);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(l
            .slots
            .iter()
            .all(|w| w.load(Ordering::Relaxed) & !LOCK_WANTED == 0));
        assert_eq!(l.mode.attached.load(Ordering::Relaxed), 0);
        assert!(
            owned_ops.load(Ordering::Relaxed) > 0,
            "no lock taken as owner"
        );
        assert!(
            shared_ops.load(Ordering::Relaxed) > 0,
            "no lock taken shared"
        );
    }
}
