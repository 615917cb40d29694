//! The per-channel data path, sans-I/O.
//!
//! A host drives one [`Channel`] per reactor per array:
//! - [`Channel::submit`] a parent I/O,
//! - carry out every [`Action`] from [`Channel::poll_action`] (issue a child
//!   op on a member, complete a parent, send a request to the metadata path),
//! - report child completions with [`Channel::child_done`],
//! - hand over every new [`ArrayState`] broadcast by the metadata path with
//!   [`Channel::apply_state`], and once every channel of the array has
//!   applied it, hand it over again with [`Channel::release`],
//! - call [`Channel::poll`] from its loop (retries children the host had no
//!   memory for, and parents waiting for a stripe another channel holds).
//!
//! Resources are bounded and allocated when the channel is created: parent
//! slots, child slots, stripe contexts with their scratch buffers. A parent
//! that cannot get what its next step needs waits whole, in a FIFO queue,
//! and resumes where it stopped (R2). Completion counting starts with a
//! submission bias of one. A write that failed on a member is parked until
//! a state recording that member as faulty has been applied by every
//! channel (R1): only then can no channel read the stale member any more.

use std::cell::Cell;
use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::sync::Arc;

use crate::layout::{raid0_place, symmetric_data_member, Geometry, Loc, StripeMap, MAX_MEMBERS};
use crate::parity;
use crate::state::{range_survives, ArrayState, Shared, LOCK_PARTS};

/// Operations a parent (array) I/O can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoType {
    Read,
    Write,
    Flush,
    Unmap,
    WriteZeroes,
    Reset,
    /// Make the copies or parity of `[lba, lba+blocks)` agree again (resync
    /// after an unclean shutdown), fenced from user I/O by the range and
    /// stripe locks. Mirrored levels pass the data through `buf` (`blocks *
    /// block_size` bytes); parity levels rewrite P/Q from the data of whole
    /// stripes touching the range. Levels without redundancy do nothing.
    Resync,
    /// A window of the rebuild of `member` (md's recovery): its blocks in
    /// the range are made current from the other copies (or the other
    /// strips and the parity), and nothing else is written. Like md's
    /// recovery it needs no dirty mark, takes no write-intent bit and is no
    /// activity for safe mode: the member is trusted only below its
    /// checkpoint, so a crash leaves nothing to resync. It fails if it
    /// cannot write the member (the member failed, or its write did), so
    /// the member is never taken for current where it is not.
    Rebuild {
        member: u16,
    },
    /// md's `check`: read every copy (mirrored levels) or the data and the
    /// parity (parity levels) of `[lba, lba+blocks)` and count the blocks
    /// that disagree (`ChannelStats::mismatch_blocks`); fenced like a
    /// resync. Mirrored levels pass a buffer of `copies * blocks *
    /// block_size` bytes (one region per copy). Degraded stripes are not
    /// checked.
    Check,
    /// md's `repair`: a check that rewrites what disagrees (the parity from
    /// the data; the other copies from the first readable one).
    Repair,
}

impl IoType {
    fn has_range(self) -> bool {
        !matches!(self, IoType::Flush | IoType::Reset)
    }
    /// A resync of its range: [`IoType::Resync`] or [`IoType::Rebuild`].
    pub fn resyncs(self) -> bool {
        matches!(self, IoType::Resync | IoType::Rebuild { .. })
    }
    /// The members it may write of those a resync would: all, or the
    /// one a rebuild rebuilds.
    fn resync_targets(self) -> u64 {
        match self {
            IoType::Rebuild { member } => bit(member as usize),
            _ => !0,
        }
    }
    /// A rebuild of a unit over `members` that cannot write the member it
    /// rebuilds: not among `writable` (being rebuilt and not failed).
    fn rebuild_cannot_write(self, members: u64, writable: u64) -> bool {
        matches!(self, IoType::Rebuild { .. }) && members & self.resync_targets() & writable == 0
    }
    /// Whether it may change what the members hold (and so needs the
    /// array marked dirty and its write-intent bits first). A rebuild
    /// does not: see [`IoType::Rebuild`].
    pub fn writes(self) -> bool {
        matches!(
            self,
            IoType::Write | IoType::Unmap | IoType::WriteZeroes | IoType::Resync | IoType::Repair
        )
    }
    fn checks(self) -> bool {
        matches!(self, IoType::Check | IoType::Repair)
    }
}

/// A parent I/O as the host submits it. `buf` carries the data for writes
/// and receives it for reads (`blocks * block_size` bytes); the channel
/// hands it back in [`Action::Complete`].
#[derive(Debug)]
pub struct ParentIo<B> {
    /// Host's identifier, returned on completion.
    pub tag: u64,
    pub op: IoType,
    pub lba: u64,
    pub blocks: u64,
    /// Force unit access: every member write it causes is FUA.
    pub fua: bool,
    pub buf: Option<B>,
}

/// How a parent I/O ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoStatus {
    Success,
    /// I/O error: the data is not where it should be (or was not read).
    Error,
    /// The request itself is malformed (range past the end, buffer size).
    Invalid,
}

/// Operations on one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChildOp {
    Read,
    Write,
    Flush,
    Unmap,
    WriteZeroes,
    Reset,
}

/// Identifies an in-flight child op. Stale tokens are detected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChildToken {
    idx: u32,
    gen: u32,
}

/// Where a child op's data lives. Resolve with [`Channel::child_data`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildBuf {
    None,
    /// Part of a parent's buffer (scatter/gather: no copy).
    Parent {
        slot: u32,
        off: usize,
        len: usize,
    },
    /// Part of a stripe context's scratch buffer (parity, old data).
    Scratch {
        ctx: u32,
        off: usize,
        len: usize,
    },
    /// A write-behind copy of a write's data (the parent may have
    /// completed already).
    Behind {
        buf: u32,
        len: usize,
    },
}

/// A child op the host must carry out on member `member`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChildIo {
    pub token: ChildToken,
    /// Tag of the parent this child works for (tracing, accounting).
    pub parent: u64,
    pub member: u16,
    pub op: ChildOp,
    /// Block address in the member's data area.
    pub lba: u64,
    pub blocks: u64,
    pub fua: bool,
    pub buf: ChildBuf,
}

/// How a child op ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildStatus {
    Success,
    Error,
    /// The host could not submit it for lack of memory; the channel
    /// resubmits it from [`Channel::poll`]. Never a failure.
    NoMem,
}

/// Requests from a channel to the metadata path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaRequest {
    /// A write (or flush) failed on `member`: record it faulty and broadcast.
    /// `device` is which device in the role failed (`ArrayState::readded`
    /// of the state the failed I/O was issued under): a late failure of a
    /// device replaced since is no failure of its successor.
    MemberFailed { member: u16, device: u64 },
    /// Writes are waiting: mark the array dirty and make it writable.
    MarkDirty { channel: u16 },
    /// Writes are waiting for bitmap bits to be durable (R4): write every
    /// bit some chunk's in-flight writes need, then broadcast a new state.
    BitsNeeded { channel: u16 },
    /// In the not-writable state of publication `seq`, this channel has no
    /// write in flight (the metadata path may mark the array clean once all
    /// channels said so for the same publication).
    WritesIdle { channel: u16, seq: u64 },
}

/// What the host must do next.
#[derive(Debug)]
pub enum Action<B> {
    Submit(ChildIo),
    Complete {
        tag: u64,
        status: IoStatus,
        buf: Option<B>,
    },
    Meta(MetaRequest),
}

/// Why `submit` refused a parent: every parent slot is taken. The host
/// retries later (SPDK: complete with `NOMEM`, the bdev layer requeues).
#[derive(Debug)]
pub struct Busy<B>(pub ParentIo<B>);

/// Most copies a [`Direct`] I/O carries (arrays with more copies take the
/// general path).
pub const DIRECT_COPIES: usize = 4;
/// Smallest part of a range-lock granule a direct write locks.
const DIRECT_PART_BYTES: u64 = 4 << 10;

/// A read or write the host carries out itself on the members (see
/// [`Channel::direct`]): one piece of a mapped level on a healthy array,
/// with none of the channel's parent and child bookkeeping.
///
/// Laid out (`repr(C)`) with what the I/O's end reads in its first 40
/// bytes and the targets' addresses, which only issuing reads, last: a
/// host keeping it after a 24-byte header of its own has the end's part
/// on one cache line.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Direct {
    lba: u64,
    blocks: u64,
    /// Publication of the state it was mapped by: a failed write fails
    /// the devices that were in their roles then (`readded`).
    seq: u64,
    /// The range lock shared (NONE: none) and the parts of it held.
    lock: u32,
    parts: u32,
    /// Each target's member (`n` of them) ...
    members: [u8; DIRECT_COPIES],
    n: u8,
    write: bool,
    /// A raid1 write to more than one member: its targets are every
    /// member, counted once for all of them (`Channel::all_writes_out`).
    all: bool,
    /// ... and its block address in the member's data area.
    lbas: [u64; DIRECT_COPIES],
}

const _: () = assert!(crate::layout::MAX_MEMBERS <= u8::MAX as usize + 1);

/// Equal: the same I/O to the same targets, holding the same lock (the
/// unused target entries do not count).
impl PartialEq for Direct {
    fn eq(&self, o: &Direct) -> bool {
        (
            self.write,
            self.lba,
            self.blocks,
            self.lock,
            self.parts,
            self.seq,
        ) == (o.write, o.lba, o.blocks, o.lock, o.parts, o.seq)
            && self.targets().eq(o.targets())
    }
}
impl Eq for Direct {}

impl Direct {
    /// Where the host reads (one copy) or writes (every copy): member and
    /// block address in its data area; each moves the parent's whole
    /// buffer (`blocks` blocks).
    #[inline]
    pub fn targets(&self) -> impl ExactSizeIterator<Item = Loc> + '_ {
        (0..self.n as usize).map(|i| self.target(i))
    }
    /// Target `i` (below `targets().len()`).
    #[inline]
    pub fn target(&self, i: usize) -> Loc {
        Loc {
            member: self.members[i].into(),
            lba: self.lbas[i],
        }
    }
    /// The member of target `i`.
    #[inline]
    pub fn member(&self, i: usize) -> usize {
        self.members[i].into()
    }
    /// How many targets.
    #[inline]
    pub fn target_count(&self) -> usize {
        self.n.into()
    }
    #[inline]
    pub fn blocks(&self) -> u64 {
        self.blocks
    }
    #[inline]
    pub fn is_write(&self) -> bool {
        self.write
    }
    /// The range lock this write holds part of, if any (see
    /// [`Channel::parkable`]).
    #[inline]
    pub fn lock(&self) -> Option<u32> {
        (self.lock != NONE).then_some(self.lock)
    }
    /// Append a target.
    #[inline]
    fn push(&mut self, l: Loc) {
        let i = self.n as usize;
        self.members[i] = l.member as u8; // below MAX_MEMBERS
        self.lbas[i] = l.lba;
        self.n += 1;
    }
    /// Make `l` the only target.
    #[inline]
    fn only(&mut self, l: Loc) {
        self.n = 0;
        self.push(l);
    }
}

/// Sizes of the channel's pools, fixed at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelConfig {
    pub max_parents: usize,
    pub max_children: usize,
    pub stripe_ctxs: usize,
    /// Largest row range one stripe context handles (bytes per member).
    pub max_row_bytes: usize,
    /// Most write-behind copies this channel holds (mirrored levels), of
    /// `max_row_bytes` each, allocated as write-behind first needs them: a
    /// write piece larger than that, or one that finds none free, writes
    /// its write-mostly copies synchronously.
    pub behind_bufs: usize,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            max_parents: 256,
            max_children: 1024,
            stripe_ctxs: 16,
            max_row_bytes: 64 * 1024,
            // md's default max write-behind.
            behind_bufs: 256,
        }
    }
}

/// Per-member counters of this channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberStats {
    /// Child reads and writes that succeeded, and the blocks they moved.
    pub reads: u64,
    pub writes: u64,
    pub read_blocks: u64,
    pub written_blocks: u64,
    pub errors: u64,
    pub outstanding: u32,
}

/// Channel-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    pub parents_done: u64,
    /// Reads and writes done on the direct path ([`Channel::direct`]).
    pub direct_done: u64,
    pub read_errors_corrected: u64,
    pub rmw: u64,
    pub rcw: u64,
    pub full_stripe: u64,
    pub reconstruct_reads: u64,
    /// Parity units rewritten by resync.
    pub resync_units: u64,
    pub waits_for_resources: u64,
    pub waits_for_stripe: u64,
    pub nomem_retries: u64,
    /// Writes that waited for their bitmap bits to be written (R4).
    pub waits_for_bits: u64,
    /// Blocks a check or repair found disagreeing (md's mismatch_cnt
    /// counts them in sectors).
    pub mismatch_blocks: u64,
    /// Write pieces whose write-mostly copies were written behind.
    pub behind_writes: u64,
    /// Reads that had to go to a write-mostly member and waited for the
    /// range lock (no write-behind over their range in flight, R5).
    pub write_mostly_reads: u64,
}

const NONE: u32 = u32::MAX;

fn bit(m: usize) -> u64 {
    1u64 << m
}

/// The bit of lock `k` in `Channel::waited`.
fn waited_bit(k: usize) -> u64 {
    1u64 << (k % 64)
}

/// The members in `mask`, lowest first (one step per set bit).
fn members_of(mask: u64) -> impl Iterator<Item = usize> {
    let mut rest = mask;
    std::iter::from_fn(move || {
        (rest != 0).then(|| {
            let m = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            m
        })
    })
}

struct Parent<B> {
    tag: u64,
    op: IoType,
    lba: u64,
    blocks: u64,
    fua: bool,
    buf: Option<B>,
    /// Next array block to dispatch (mapped levels, parity reads).
    cursor: u64,
    /// Next (stripe, row) to dispatch (parity writes).
    cursor_stripe: u64,
    cursor_row: u64,
    /// Outstanding units plus the submission bias while dispatching.
    pending: u32,
    dispatched: bool,
    error: bool,
    /// Members whose failure must be committed before this completes (the
    /// devices: `Channel::wait_incs`).
    wait_members: u64,
    queued: bool,
    /// The range or stripe lock this queued parent last found held
    /// ([`NONE`]: it waits for something else): `run_waiters` looks at
    /// the lock before trying the parent again.
    blocked_on: u32,
    /// Counted in `writes_in_flight`.
    write_started: bool,
    /// Counted in the bitmap's chunk words (R4).
    bits_counted: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Free,
    Parent(u32),
    Stripe(u32),
    /// A write-behind child of piece `.0`: outlives its parent.
    Behind(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChildKind {
    /// A read of one mapped piece; `bad` = copies that failed it.
    MirrorRead {
        lba: u64,
        blocks: u64,
        bad: u64,
        locked: bool,
        /// A resync read: once read, write it to every other live copy.
        resync: bool,
        /// Waits for the range lock to read a write-mostly member (counted
        /// in `Shared::behind_reader`).
        wm_wait: bool,
    },
    /// Rewrite of a piece on members that failed to read it.
    MirrorFix { lba: u64, blocks: u64, todo: u64 },
    /// Parity level: a direct read of a data strip piece.
    StripRead {
        stripe: u64,
        data: u16,
        row: u64,
        rows: u64,
    },
    /// Mirrored check: the read of one copy of a check piece into region
    /// `region` of the parent's buffer.
    CheckRead { piece: u32, region: u16 },
    /// Flush or reset of one member, counted once on its parent.
    Plain,
    /// One copy of a mapped write piece.
    Piece(u32),
    /// A write-mostly copy of a mapped write piece, written behind.
    Behind(u32),
    /// Owned by a stripe context.
    Unit,
}

/// A mapped write piece: its copies' children and its range lock.
struct Piece {
    /// NONE once a write-behind piece let its parent go.
    parent: u32,
    pending: u32,
    lock: Option<usize>,
    /// A mirrored check piece.
    check: Option<CheckPiece>,
    /// Write-behind children in flight; the piece keeps its range lock,
    /// its bitmap count and its place among the array's write-behind
    /// pieces until they are done.
    behind: u32,
    /// The write-behind copy of the data (NONE: not written behind).
    behind_buf: u32,
    /// Members written behind.
    behind_mask: u64,
    /// Of a write-behind piece: the members of its copies in sync (a
    /// member being rebuilt takes the write but does not count).
    read_mask: u64,
    /// One of `read_mask` that is not written behind has the data: the
    /// parent need not wait for the write-behind children.
    fast_ok: bool,
    tag: u64,
    lba: u64,
    blocks: u64,
}

impl Piece {
    fn new(parent: u32, tag: u64, lock: Option<usize>) -> Piece {
        Piece {
            parent,
            pending: 1,
            lock,
            check: None,
            behind: 0,
            behind_buf: NONE,
            behind_mask: 0,
            read_mask: 0,
            fast_ok: false,
            tag,
            lba: 0,
            blocks: 0,
        }
    }
}

/// What a mirrored check piece compares: the copies of `[lba, lba+blocks)`
/// on the members in `members` (region i = the i-th of them by index).
#[derive(Clone, Copy, Debug)]
struct CheckPiece {
    lba: u64,
    blocks: u64,
    members: u64,
    /// Members whose read failed (left out of the comparison).
    bad: u64,
    /// The repair writes are in flight.
    writing: bool,
}

/// raid1 has no strip; its writes and read rewrites lock ranges this big.
/// A write-behind write holds its granule for as long as the slow member
/// takes, so a bigger granule makes more writes wait for it (64 KiB:
/// 30% fewer IOPS in `scripts/bench/write-behind.sh` than 16 KiB).
pub const RAID1_LOCK_BYTES: u64 = 16 << 10;

struct Child {
    gen: u32,
    owner: Owner,
    kind: ChildKind,
    io: ChildIo,
    in_flight: bool,
    /// Which device in the member's role it was issued to (the `readded`
    /// of the state applied then): a failure it meets is that device's.
    inc: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UnitKind {
    /// Write rows of the data strips in `cov`.
    Write { cov: u64 },
    /// Reconstruct data strip `target` for a read; rewrite `fix` if set.
    Recon { target: usize, fix: Option<u16> },
    /// Rewrite P (and Q) from the data (resync).
    Resync,
    /// Compare P (and Q) with the data; rewrite them if `repair`.
    Check { repair: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Read,
    Write,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Full,
    DataOnly,
    Rmw,
    Rcw,
}

struct StripeCtx<B> {
    busy: bool,
    parent: u32,
    kind: UnitKind,
    phase: Phase,
    stripe: u64,
    row: u64,
    rows: u64,
    map: StripeMap,
    lock: usize,
    pending: u32,
    /// Members whose region holds valid rows.
    have: u64,
    /// Members that failed a read in this unit (still writable).
    bad: u64,
    /// Members whose reads are in flight.
    reading: u64,
    error: bool,
    /// Regions: one per member, then one spare, `max_row_bytes` each.
    scratch: B,
    /// Children reserved for this context (one per member).
    first_child: u32,
}

/// Host buffers: contiguous, and stable in memory while the channel holds
/// them (the host may pass their address to a device).
pub trait IoBuf: AsRef<[u8]> + AsMut<[u8]> {}
impl<T: AsRef<[u8]> + AsMut<[u8]>> IoBuf for T {}

const _: () = assert!(MAX_MEMBERS <= u8::MAX as usize, "Lean::n is a u8");

/// [`Lean::allow`] bits.
const LEAN_READ: u8 = 1;
const LEAN_WRITE: u8 = 2;

/// What the lean direct path may do under the applied state, worked out
/// when a state is applied ([`Channel::refresh_lean`]): direct I/O on a
/// raid0 or raid1 array, or reads of a raid5/raid6 array in a symmetric
/// layout, with every member in service and current, none write-mostly,
/// not offline (writes: writable). In that state the general checks of
/// [`Channel::try_direct`] reduce to the lean path's few; an I/O it does
/// not take goes through them.
#[derive(Clone, Copy, Debug, Default)]
struct Lean {
    allow: u8,
    /// LEAN_RAID0, LEAN_RAID1 or LEAN_PARITY.
    kind: u8,
    /// Members.
    n: u8,
    /// log2 of the strip in blocks (raid0, parity levels).
    strip_shift: u8,
    /// Parity levels (symmetric layouts): data strip 0 follows the
    /// parity strip(s) by this many members (raid5 1, raid6 2), and the
    /// parity strip moves left from stripe to stripe (else right).
    skip: u8,
    left: bool,
    array_blocks: u64,
    /// Parity levels: data blocks per stripe.
    stripe_blocks: u64,
    /// Publication of the applied state.
    seq: u64,
}

/// [`Lean::kind`] values.
const LEAN_RAID0: u8 = 0;
const LEAN_RAID1: u8 = 1;
const LEAN_PARITY: u8 = 2;

/// The per-channel data path. See the module documentation.
#[repr(C)]
pub struct Channel<B: IoBuf> {
    // Declared in this order and laid out as declared: what a direct I/O
    // touches comes first, on as few cache lines as it takes.
    lean: Lean,
    /// [`Direct`] I/Os handed out and not yet done; each keeps a parent
    /// slot free (`submit` leaves them), should it be redone.
    direct_in_flight: u32,
    /// Direct writes to every member ([`Direct::all`]) in flight, and
    /// those done and their blocks: each member's `outstanding`, `writes`
    /// and `written_blocks` in [`Channel::member_stats`] count them too
    /// (one count for all members instead of one per member; the members'
    /// order by `outstanding`, which picks the copy a read goes to, is the
    /// same).
    all_writes_out: u32,
    all_writes: u64,
    all_written: u64,
    geom: Arc<Geometry>,
    state: Arc<ArrayState>,
    shared: Arc<Shared>,
    free_parents: Vec<u32>,
    /// Members being rebuilt in the applied state.
    rec_mask: u64,
    /// Members out of service in the applied state (`out_of_service()`,
    /// asked on every piece).
    oos_mask: u64,
    member_stats: Vec<MemberStats>,
    /// Per member: the member block after this channel's last read there
    /// (a read starting there continues a sequential stream).
    next_read: Vec<u64>,
    /// Range lock granule of mapped levels, in blocks, its log2, and the
    /// log2 of the part of it a direct write locks (a sixteenth, at least
    /// 4 KiB). Strips and blocks are powers of two: no division on the
    /// direct path.
    lock_blocks: u64,
    /// Locks `waiters` may wait for, one bit per key modulo 64 (all set
    /// when unknown, or while `fix_queue` or `recon_queue` holds work): a
    /// direct write that ends runs the waiters only if its lock's bit is
    /// set.
    waited: u64,
    /// This channel's index among the array's channels.
    index: usize,
    /// Write parents issued (past the dirty gate) and not completed.
    writes_in_flight: u32,
    lock_shift: u32,
    part_shift: u32,
    /// More than one copy of each block (`Geometry::copies`): range locks.
    mirrored: bool,
    /// This channel owns the stripe lock table (see [`StripeLocks`]).
    owns_locks: Cell<bool>,
    actions: VecDeque<Action<B>>,
    stats: ChannelStats,
    /// The newest state every channel has applied.
    released: Arc<ArrayState>,
    /// The publication [`Channel::join`] joined at: older broadcasts
    /// still visiting are stale.
    joined: u64,
    cfg: ChannelConfig,
    bs: u64,
    max_rows: u64,
    parents: Vec<Option<Parent<B>>>,
    children: Vec<Child>,
    free_children: Vec<u32>,
    stripes: Vec<StripeCtx<B>>,
    free_stripes: Vec<u32>,
    waiters: VecDeque<u32>,
    recon_queue: VecDeque<(u32, u64, u16, u64, u64, bool)>,
    /// Mirrored reads waiting for the range lock to retry after an error.
    fix_queue: VecDeque<u32>,
    pieces: Vec<Piece>,
    free_pieces: Vec<u32>,
    /// The lock the last failed [`Channel::take_lock`] found held.
    blocked: Cell<usize>,
    /// The range lock the last direct write refused found held by direct
    /// writes only ([`NONE`]: refused for another reason); see
    /// [`Channel::parkable`].
    share_busy: u32,
    parked: Vec<u32>,
    nomem: VecDeque<u32>,
    zeros: Vec<u8>,
    /// Writes waiting for the array to be marked dirty.
    dirty_wait: VecDeque<u32>,
    dirty_requested: bool,
    /// Writes waiting for their chunks' bitmap bits to be durable (R4).
    bits_wait: VecDeque<u32>,
    bits_requested: bool,
    /// Publication of the last not-writable state this channel reported idle
    /// in.
    idle_reported: Option<u64>,
    /// Per parent slot and member: the newest device (`readded`) whose
    /// failure the parent waits for; a state that brings a device back
    /// later proves it committed. Per member (one value for all made a
    /// member whose failure was of an older device wait for a re-add that
    /// never comes); beside the parents so a submit does not clear it
    /// (only entries of the parent's `wait_members` are meaningful).
    wait_incs: Vec<[u64; MAX_MEMBERS]>,
    /// Write-behind copies (mirrored levels) and the free ones.
    behind_bufs: Vec<B>,
    free_behind: Vec<u32>,
    /// The host's allocator (write-behind copies are made as needed).
    alloc: Option<Box<dyn FnMut(usize) -> B + Send>>,
}

impl<B: IoBuf> Drop for Channel<B> {
    fn drop(&mut self) {
        self.shared.locks.detach(self.owns_locks.get());
    }
}

impl<B: IoBuf> Channel<B> {
    /// A channel over `geom` in state `state`. `alloc(len)` gives the host's
    /// buffers for scratch (DMA-able memory in SPDK, aligned for O_DIRECT);
    /// the channel keeps it to allocate write-behind copies later, on the
    /// I/O path, as write-behind first needs them.
    pub fn new(
        geom: Arc<Geometry>,
        state: Arc<ArrayState>,
        shared: Arc<Shared>,
        index: usize,
        cfg: ChannelConfig,
        mut alloc: impl FnMut(usize) -> B + Send + 'static,
    ) -> Channel<B> {
        assert!(index < shared.channels(), "channel index out of range");
        let members = geom.members();
        assert_eq!(state.members.len(), members, "state/geometry mismatch");
        let bs = geom.block_size() as u64;
        let lock_blocks = if geom.level() == crate::layout::Level::Raid1 {
            (RAID1_LOCK_BYTES / bs).max(1)
        } else {
            geom.strip_blocks()
        };
        assert!(cfg.max_parents > 0 && cfg.max_children >= 2 * MAX_MEMBERS.min(members));
        let lock_part = (DIRECT_PART_BYTES / bs)
            .max(lock_blocks.div_ceil(u64::from(LOCK_PARTS)))
            .max(1);
        assert!(
            lock_blocks.is_power_of_two() && lock_part.is_power_of_two(),
            "lock granule of {lock_blocks} blocks, part {lock_part}: not powers of two"
        );
        let max_rows = if geom.level().is_parity() {
            let r = (cfg.max_row_bytes as u64 / bs).min(geom.strip_blocks());
            assert!(r > 0, "max_row_bytes smaller than a block");
            r
        } else {
            0
        };
        let nstripes = if geom.level().is_parity() {
            cfg.stripe_ctxs.max(1)
        } else {
            0
        };
        let total_children = cfg.max_children + nstripes * members;
        let region = (max_rows * bs) as usize;
        let stripes: Vec<StripeCtx<B>> = (0..nstripes)
            .map(|i| StripeCtx {
                busy: false,
                parent: NONE,
                kind: UnitKind::Write { cov: 0 },
                phase: Phase::Idle,
                stripe: 0,
                row: 0,
                rows: 0,
                map: geom.stripe(0),
                lock: 0,
                pending: 0,
                have: 0,
                bad: 0,
                reading: 0,
                error: false,
                scratch: {
                    let b = alloc(region * (members + 1));
                    assert!(b.as_ref().len() >= region * (members + 1), "short scratch");
                    b
                },
                first_child: (cfg.max_children + i * members) as u32,
            })
            .collect();
        let children = (0..total_children)
            .map(|_| Child {
                gen: 0,
                owner: Owner::Free,
                kind: ChildKind::Plain,
                io: ChildIo {
                    token: ChildToken { idx: 0, gen: 0 },
                    parent: 0,
                    member: 0,
                    op: ChildOp::Read,
                    lba: 0,
                    blocks: 0,
                    fua: false,
                    buf: ChildBuf::None,
                },
                in_flight: false,
                inc: 0,
            })
            .collect();
        let mut ch = Channel {
            lean: Lean::default(),
            alloc: None,
            released: state.clone(),
            joined: 0,
            state,
            shared,
            index,
            dirty_wait: VecDeque::with_capacity(cfg.max_parents),
            dirty_requested: false,
            bits_wait: VecDeque::with_capacity(cfg.max_parents),
            rec_mask: 0,
            oos_mask: 0,
            bits_requested: false,
            writes_in_flight: 0,
            idle_reported: None,
            cfg,
            bs,
            max_rows,
            parents: (0..cfg.max_parents).map(|_| None).collect(),
            free_parents: (0..cfg.max_parents as u32).rev().collect(),
            children,
            free_children: (0..cfg.max_children as u32).rev().collect(),
            free_stripes: (0..nstripes as u32).rev().collect(),
            stripes,
            waiters: VecDeque::with_capacity(cfg.max_parents),
            recon_queue: VecDeque::with_capacity(cfg.max_children),
            fix_queue: VecDeque::with_capacity(cfg.max_children),
            pieces: (0..cfg.max_children)
                .map(|_| Piece {
                    pending: 0,
                    ..Piece::new(NONE, 0, None)
                })
                .collect(),
            wait_incs: vec![[0; MAX_MEMBERS]; cfg.max_parents],
            behind_bufs: Vec::new(),
            free_behind: Vec::new(),
            next_read: vec![u64::MAX; members],
            direct_in_flight: 0,
            all_writes_out: 0,
            all_writes: 0,
            all_written: 0,
            free_pieces: (0..cfg.max_children as u32).rev().collect(),
            lock_blocks,
            lock_shift: lock_blocks.trailing_zeros(),
            mirrored: geom.copies() > 1,
            part_shift: lock_part.trailing_zeros(),
            owns_locks: Cell::new(false),
            blocked: Cell::new(0),
            share_busy: NONE,
            waited: 0,
            parked: Vec::with_capacity(cfg.max_parents),
            nomem: VecDeque::with_capacity(total_children),
            actions: VecDeque::with_capacity(total_children + cfg.max_parents),
            zeros: vec![0; region],
            stats: ChannelStats::default(),
            member_stats: vec![MemberStats::default(); members],
            geom,
        };
        ch.rec_mask = ch.state.recovering();
        ch.oos_mask = ch.state.out_of_service();
        ch.refresh_lean();
        ch.alloc = Some(Box::new(alloc));
        // A new channel of a not-writable array has no write in flight.
        ch.maybe_report_idle();
        ch.shared.locks.attach();
        ch.owns_locks.set(ch.shared.locks.try_own(ch.index));
        ch
    }

    pub fn geometry(&self) -> &Arc<Geometry> {
        &self.geom
    }
    pub fn state(&self) -> &Arc<ArrayState> {
        &self.state
    }
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
    pub fn stats(&self) -> ChannelStats {
        ChannelStats {
            parents_done: self.stats.parents_done + self.stats.direct_done,
            ..self.stats
        }
    }
    /// Each member's counts, raid1's direct writes (counted once for all
    /// members) included.
    pub fn member_stats(&self) -> Vec<MemberStats> {
        let mut v = self.member_stats.clone();
        for s in &mut v {
            s.outstanding += self.all_writes_out;
            s.writes += self.all_writes;
            s.written_blocks += self.all_written;
        }
        v
    }
    /// Parents accepted and not yet completed (direct I/Os among them).
    pub fn parents_in_flight(&self) -> usize {
        self.cfg.max_parents - self.free_parents.len() + self.direct_in_flight as usize
    }
    /// Whether the channel holds no work at all.
    pub fn is_idle(&self) -> bool {
        self.parents_in_flight() == 0
            && self.actions.is_empty()
            && self.free_behind.len() == self.behind_bufs.len()
    }

    /// Write-behind pieces of this channel still writing their
    /// write-mostly copies (their parents may have completed).
    pub fn behind_in_flight(&self) -> usize {
        self.behind_bufs.len() - self.free_behind.len()
    }

    /// One line on what the channel holds, for diagnosing a stuck host.
    pub fn describe(&self) -> String {
        format!(
            "parents {} (waiting {}, parked {}, dirty wait {}, bits wait {}), children free {}/{}, stripes free {}/{}, \
             pieces free {}, recon queue {}, fix queue {}, nomem {}, actions {}, failed {:#b}, \
             parked on {:?}, released seq {} readded {:?}",
            self.parents_in_flight(),
            self.waiters.len(),
            self.parked.len(),
            self.dirty_wait.len(),
            self.bits_wait.len(),
            self.free_children.len(),
            self.cfg.max_children,
            self.free_stripes.len(),
            self.stripes.len(),
            self.free_pieces.len(),
            self.recon_queue.len(),
            self.fix_queue.len(),
            self.nomem.len(),
            self.actions.len(),
            self.shared.failed(),
            self.parked
                .iter()
                .map(|&s| {
                    let p = self.parents[s as usize].as_ref().unwrap();
                    (
                        p.wait_members,
                        members_of(p.wait_members)
                            .map(|m| self.wait_incs[s as usize][m])
                            .collect::<Vec<_>>(),
                    )
                })
                .collect::<Vec<_>>(),
            self.released.seq,
            self.released.readded,
        )
    }

    /// Whether [`Channel::poll`] has anything to do: children to submit
    /// again, or parents and reads waiting for a lock (another channel may
    /// have released it).
    pub fn needs_poll(&self) -> bool {
        self.shared.locks.change_due(self.owns_locks.get())
            || !self.nomem.is_empty()
            || !self.waiters.is_empty()
            || !self.fix_queue.is_empty()
            || !self.recon_queue.is_empty()
    }

    /// Whether actions wait for the host ([`Channel::poll_action`]).
    pub fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    /// Next thing the host must do.
    pub fn poll_action(&mut self) -> Option<Action<B>> {
        self.actions.pop_front()
    }

    /// The bytes a child op reads from or writes into.
    pub fn child_data(&mut self, buf: ChildBuf) -> &mut [u8] {
        match buf {
            ChildBuf::None => &mut [],
            ChildBuf::Parent { slot, off, len } => {
                let p = self.parents[slot as usize]
                    .as_mut()
                    .expect("child buffer of a free parent");
                &mut p.buf.as_mut().expect("parent without buffer").as_mut()[off..off + len]
            }
            ChildBuf::Scratch { ctx, off, len } => {
                &mut self.stripes[ctx as usize].scratch.as_mut()[off..off + len]
            }
            ChildBuf::Behind { buf, len } => &mut self.behind_bufs[buf as usize].as_mut()[..len],
        }
    }

    /// Accept a parent I/O.
    pub fn submit(&mut self, io: ParentIo<B>) -> Result<(), Busy<B>> {
        let bs = self.bs;
        let invalid = (io.op.has_range()
            && (io.blocks == 0
                || io
                    .lba
                    .checked_add(io.blocks)
                    .is_none_or(|e| e > self.geom.array_blocks())))
            || ((matches!(io.op, IoType::Read | IoType::Write)
                || (io.op.resyncs() && self.geom.copies() > 1))
                && io
                    .buf
                    .as_ref()
                    .is_none_or(|b| (b.as_ref().len() as u64) < io.blocks * bs))
            || (io.op.checks()
                && !self.geom.level().is_parity()
                && self.geom.copies() > 1
                && io.buf.as_ref().is_none_or(|b| {
                    (b.as_ref().len() as u64) < io.blocks * bs * self.geom.copies() as u64
                }));
        if invalid || self.state.offline {
            let status = if invalid {
                IoStatus::Invalid
            } else {
                IoStatus::Error
            };
            self.actions.push_back(Action::Complete {
                tag: io.tag,
                status,
                buf: io.buf,
            });
            return Ok(());
        }
        if self.free_parents.len() <= self.direct_in_flight as usize {
            return Err(Busy(io)); // the rest are kept for direct I/Os
        }
        let slot = self
            .free_parents
            .pop()
            .expect("free_parents holds more than direct_in_flight");
        self.parents[slot as usize] = Some(Parent {
            tag: io.tag,
            op: io.op,
            lba: io.lba,
            blocks: io.blocks,
            fua: io.fua,
            buf: io.buf,
            cursor: io.lba,
            cursor_stripe: 0,
            cursor_row: 0,
            pending: 1,
            dispatched: false,
            error: false,
            wait_members: 0,
            queued: false,
            blocked_on: NONE,
            write_started: false,
            bits_counted: false,
        });
        if self.geom.level().is_parity() && (io.op.writes() || io.op.resyncs() || io.op.checks()) {
            let (s, _, _) = self.geom.locate(io.lba);
            let p = self.parents[slot as usize].as_mut().unwrap();
            p.cursor_stripe = s;
            p.cursor_row = 0;
        }
        if io.op.writes() && !self.state.writable {
            self.dirty_wait.push_back(slot);
            self.request_dirty();
            return Ok(());
        }
        self.start(slot);
        Ok(())
    }

    /// A read or write of `[lba, lba+blocks)` the host may carry out
    /// itself, straight from the parent's buffer to the members, when it
    /// needs nothing of the general path: a read of one strip of a parity
    /// level whose member is in service and current; or on a mapped level
    /// (linear, raid0, raid1, raid10) with at most [`DIRECT_COPIES`]
    /// copies, one piece (one strip; raid1: one range-lock granule), and
    /// - a read: the copy the general path would read (the same choice:
    ///   current, not failed, not write-mostly if another can serve,
    ///   sequential stream or fewest outstanding) needs no range lock (no
    ///   write-behind to it in flight);
    /// - a write: the array is writable, every copy is in service and none
    ///   written behind, the bits of its chunks are durable (R4: it is
    ///   counted in them like any write) and its range lock was free (it
    ///   holds it). It may overtake parents waiting in this channel (for
    ///   a lock, the bitmap, resources): those are writes in flight too,
    ///   and writes in flight have no order.
    ///
    /// A direct I/O keeps a parent slot (none free: `None`). Else `None`,
    /// and the host submits it as a parent. The host reports the end with
    /// [`Channel::direct_done`] and completes the parent itself; if a
    /// member I/O failed it does not complete the parent but hands it to
    /// [`Channel::direct_redo`].
    pub fn direct(&mut self, op: IoType, lba: u64, blocks: u64) -> Option<Direct> {
        let mut d = MaybeUninit::uninit();
        self.direct_into(op, lba, blocks, &mut d).copied()
    }

    /// [`Channel::direct`] into `d` (a host may keep it where the I/O's
    /// context lives): the [`Direct`] written there if the host does the
    /// I/O itself.
    #[inline(always)]
    pub fn direct_into<'a>(
        &mut self,
        op: IoType,
        lba: u64,
        blocks: u64,
        mut d: &'a mut MaybeUninit<Direct>,
    ) -> Option<&'a mut Direct> {
        let want = match op {
            IoType::Read => LEAN_READ,
            IoType::Write => LEAN_WRITE,
            _ => return None,
        };
        let l = self.lean;
        if l.allow & want != 0
            && blocks != 0
            && lba < l.array_blocks
            && blocks <= l.array_blocks - lba
            && self.free_parents.len() > self.direct_in_flight as usize
        {
            match self.lean_direct(l, want == LEAN_WRITE, lba, blocks, d) {
                Ok(x) => return Some(x),
                // Refused for its range lock or bitmap bits, as the
                // general checks would refuse it (`parkable` says which).
                Err(None) => return None,
                Err(Some(back)) => d = back,
            }
        }
        let mut x = Direct::default();
        self.try_direct(op, lba, blocks, &mut x)?;
        Some(d.write(x))
    }

    /// Work out [`Lean`] for the applied state.
    fn refresh_lean(&mut self) {
        use crate::layout::{raid5_layout, Level};
        let g = &self.geom;
        let st = &self.state;
        let symmetric = matches!(
            g.layout(),
            raid5_layout::LEFT_SYMMETRIC | raid5_layout::RIGHT_SYMMETRIC
        );
        let (kind, skip) = match g.level() {
            Level::Raid0 => (Some(LEAN_RAID0), 0),
            Level::Raid1 if g.members() <= DIRECT_COPIES => (Some(LEAN_RAID1), 0),
            Level::Raid5 if symmetric => (Some(LEAN_PARITY), 1),
            Level::Raid6 if symmetric => (Some(LEAN_PARITY), 2),
            _ => (None, 0),
        };
        let healthy = kind.is_some()
            && (kind == Some(LEAN_RAID1) || g.strip_blocks().is_power_of_two())
            && !st.offline
            && self.oos_mask == 0
            && self.rec_mask == 0
            && st.write_mostly == 0;
        let kind = kind.unwrap_or(LEAN_RAID0);
        self.lean = Lean {
            allow: match healthy {
                false => 0,
                // Parity writes are the general path's.
                true if kind == LEAN_PARITY => LEAN_READ,
                true if st.writable => LEAN_READ | LEAN_WRITE,
                true => LEAN_READ,
            },
            kind,
            n: g.members() as u8, // at most MAX_MEMBERS
            strip_shift: g.strip_blocks().trailing_zeros() as u8,
            skip,
            left: g.layout() == raid5_layout::LEFT_SYMMETRIC,
            array_blocks: g.array_blocks(),
            stripe_blocks: if kind == LEAN_PARITY {
                g.stripe_data_blocks()
            } else {
                0
            },
            seq: st.seq,
        };
    }

    /// The direct path in the state [`Lean`] describes (the range is
    /// checked and a parent slot is free): the same decisions as
    /// [`Channel::try_direct`] in that state, with none of its general
    /// mapping: `out` written, or given back (`try_direct` decides), or
    /// None: a write refused for its range lock or bitmap bits, which
    /// `try_direct` would refuse the same way (and `share_busy` is set as
    /// it would set it).
    #[inline(always)]
    fn lean_direct<'a>(
        &mut self,
        l: Lean,
        write: bool,
        lba: u64,
        blocks: u64,
        out: &'a mut MaybeUninit<Direct>,
    ) -> Result<&'a mut Direct, Option<&'a mut MaybeUninit<Direct>>> {
        let failed = self.shared.failed();
        // One target (member m0 at lba0), or raid1's write to every copy
        // (members 0..n, all at `lba`).
        let (mut m0, mut lba0) = (0usize, lba);
        let (n, all) = if l.kind == LEAN_PARITY {
            // A read of one strip whose member is in service and current:
            // Geometry::locate and data_member for the symmetric layouts.
            let stripe = lba / l.stripe_blocks;
            let within = lba - stripe * l.stripe_blocks;
            let shift = l.strip_shift;
            let (i, row) = (within >> shift, within & ((1u64 << shift) - 1));
            if row + blocks > 1u64 << shift {
                return Err(Some(out)); // more than one strip
            }
            m0 = symmetric_data_member(u64::from(l.n), stripe, i, l.left, u64::from(l.skip))
                as usize;
            if failed & bit(m0) != 0 {
                return Err(Some(out));
            }
            lba0 = stripe << shift | row;
            (1, bit(m0))
        } else if l.kind == LEAN_RAID1 {
            if lba >> self.lock_shift != (lba + blocks - 1) >> self.lock_shift {
                return Err(Some(out)); // more than one piece
            }
            let n = l.n as usize;
            if write {
                (n, (1u64 << n) - 1)
            } else if self.unsynced(lba, blocks) {
                // The copies may disagree there: pick_copy's first copy.
                return Err(Some(out));
            } else {
                // pick_copy with every copy live and current, none
                // write-mostly: the one continuing this channel's
                // sequential stream, else the first with the fewest
                // I/Os outstanding here.
                let mut pick = usize::MAX;
                let mut least = u32::MAX;
                for m in 0..n {
                    if failed & bit(m) != 0 {
                        continue;
                    }
                    if self.next_read[m] == lba {
                        pick = m;
                        break;
                    }
                    let o = self.member_stats[m].outstanding;
                    if o < least {
                        least = o;
                        pick = m;
                    }
                }
                if pick == usize::MAX || self.shared.behind_to(pick) != 0 {
                    return Err(Some(out));
                }
                self.next_read[pick] = lba + blocks;
                m0 = pick;
                (1, 0)
            }
        } else {
            let shift = l.strip_shift;
            let off = lba & ((1u64 << shift) - 1);
            if off + blocks > 1u64 << shift {
                return Err(Some(out)); // more than one strip
            }
            let t = raid0_place(lba >> shift, off, u64::from(l.n), 1u64 << shift);
            (m0, lba0) = (t.member as usize, t.lba);
            if failed & bit(m0) != 0 {
                return Err(Some(out));
            }
            (1, bit(m0))
        };
        let (lock, parts) = if !write {
            (NONE, 0)
        } else if all & failed != 0 {
            return Err(Some(out));
        } else {
            match self.start_direct_write(lba, blocks) {
                Some(held) => held,
                None => return Err(None),
            }
        };
        self.direct_in_flight += 1;
        // raid1's write to every member (all at `lba`) counts once (a
        // raid1 of one member counts it per member: the same sums).
        let every = n > 1;
        let (members, lbas) = if every {
            self.all_writes_out += 1;
            (std::array::from_fn(|m| m as u8), [lba; DIRECT_COPIES])
        } else {
            self.member_stats[m0].outstanding += 1;
            let mut members = [0; DIRECT_COPIES];
            members[0] = m0 as u8; // below MAX_MEMBERS
            (members, [lba0; DIRECT_COPIES])
        };
        Ok(out.write(Direct {
            lba,
            blocks,
            seq: l.seq,
            lock,
            parts,
            members,
            n: n as u8,
            write,
            all: every,
            lbas,
        }))
    }

    /// The bitmap count (R4) and range lock (the lock and its parts held,
    /// [`Direct::lock`] and `parts`) of a direct write of `blocks` at
    /// `lba`, and its place among the writes in flight; None (nothing
    /// taken) if either is not to be had now.
    #[inline(always)]
    fn start_direct_write(&mut self, lba: u64, blocks: u64) -> Option<(u32, u32)> {
        if let Some(bm) = &self.shared.bitmap {
            if !bm.start_write(lba, blocks) {
                bm.end_write(lba, blocks);
                self.share_busy = NONE;
                return None;
            }
        }
        let mut held = (NONE, 0);
        if let Some(k) = self.range_lock(lba) {
            match self.lock_direct(lba, blocks, k) {
                Some(parts) => held = (k as u32, parts),
                None => {
                    self.direct_lock_busy(lba, blocks, k);
                    return None;
                }
            }
        }
        self.writes_in_flight += 1;
        self.shared.note_write(self.index);
        Some(held)
    }

    /// A direct write of `blocks` at `lba` found range lock `k` taken:
    /// give back its bitmap count, and note whether only direct writes
    /// hold the lock (`parkable`).
    #[cold]
    #[inline(never)]
    fn direct_lock_busy(&mut self, lba: u64, blocks: u64, k: usize) {
        if let Some(bm) = &self.shared.bitmap {
            bm.end_write(lba, blocks);
        }
        self.share_busy = if self.shared.locks.shared_only(k, self.owns_locks()) {
            k as u32
        } else {
            NONE
        };
    }

    /// After [`Channel::direct_into`] refused a write: the range lock it
    /// found held by direct writes only (none holds it exclusively, none
    /// waits for it so), which the write may wait for outside the engine
    /// holding nothing, and offer again when a direct write holding that
    /// lock ends ([`Direct::lock`]) or, since the holders may be another
    /// channel's, after a while. None: the general path is to take it.
    pub fn parkable(&mut self) -> Option<u32> {
        let k = std::mem::replace(&mut self.share_busy, NONE);
        (k != NONE).then_some(k)
    }

    fn try_direct(&mut self, op: IoType, lba: u64, blocks: u64, d: &mut Direct) -> Option<()> {
        self.share_busy = NONE;
        let write = match op {
            IoType::Read => false,
            IoType::Write => true,
            _ => return None,
        };
        if self.state.offline
            || self.free_parents.len() <= self.direct_in_flight as usize
            || (self.geom.level().is_parity() && write)
            || self.geom.copies() > DIRECT_COPIES
            || blocks == 0
            || lba
                .checked_add(blocks)
                .is_none_or(|e| e > self.geom.array_blocks())
        {
            return None;
        }
        d.write = write;
        // As the lean path decides it (a raid1 of one member counts its
        // writes per member: the same sums).
        d.all =
            write && self.geom.level() == crate::layout::Level::Raid1 && self.geom.members() > 1;
        d.lba = lba;
        d.blocks = blocks;
        d.n = 0;
        d.lock = NONE;
        d.parts = 0;
        d.seq = self.state.seq;
        if self.geom.level().is_parity() {
            // A read of one strip whose member is in service and current
            // (the general path reads it the same way, with no lock).
            let (stripe, i, row) = self.geom.locate(lba);
            if row + blocks > self.geom.strip_blocks() {
                return None;
            }
            let l = Loc {
                member: self.geom.data_member(stripe, i),
                lba: self.geom.stripe_member_lba(stripe) + row,
            };
            let m = bit(l.member as usize);
            if (self.dead() | self.stale(m, l.lba, blocks)) & m != 0 {
                return None;
            }
            d.only(l);
            self.take_direct_slot(d);
            return Some(());
        }
        let run = if self.geom.level() == crate::layout::Level::Raid1 {
            // Every member at the same address (map_each's raid1 case,
            // without the general mapping's checks: the range is checked
            // above and the copies fit).
            let n = self.geom.members().min(DIRECT_COPIES);
            for m in 0..n {
                d.push(Loc {
                    member: m as u16,
                    lba,
                });
            }
            blocks
        } else if self.geom.level() == crate::layout::Level::Raid0 {
            let (l, left) = self.geom.raid0_loc(lba);
            d.only(l);
            blocks.min(left)
        } else {
            self.geom.map_each(lba, blocks, |member, lba| {
                d.push(Loc {
                    member: member as u16,
                    lba,
                });
            })
        };
        if run != blocks
            || (self.geom.copies() > 1
                && lba >> self.lock_shift != (lba + blocks - 1) >> self.lock_shift)
        {
            return None; // more than one piece
        }
        if !write {
            let copies: [Loc; DIRECT_COPIES] = std::array::from_fn(|i| {
                if i < d.target_count() {
                    d.target(i)
                } else {
                    Loc::default()
                }
            });
            let l = self.pick_copy(lba, &copies[..d.target_count()], blocks, 0, false)?;
            if self.shared.behind_to(l.member as usize) != 0 {
                return None; // R5: the read waits for the range lock
            }
            self.note_read(l, blocks);
            d.only(l);
            self.take_direct_slot(d);
            return Some(());
        }
        let all: u64 = d.targets().fold(0, |a, l| a | bit(l.member as usize));
        if !self.state.writable
            || all & self.dead() != 0
            || (self.state.write_behind != 0 && all & self.state.write_mostly != 0)
        {
            return None;
        }
        (d.lock, d.parts) = self.start_direct_write(lba, blocks)?;
        self.take_direct_slot(d);
        Some(())
    }

    /// Range lock `k` of a direct write of `blocks` at `lba`, shared: the
    /// parts of the granule its blocks are in (a part is a sixteenth of
    /// the granule, at least 4 KiB), so no resync, repair, read rewrite,
    /// write-behind or general write holds the granule, and no direct
    /// write overlaps it. The parts held, if it was free.
    #[inline(always)]
    fn lock_direct(&self, lba: u64, blocks: u64, k: usize) -> Option<u32> {
        let within = self.lock_blocks - 1;
        let first = (lba & within) >> self.part_shift;
        let last = ((lba + blocks - 1) & within) >> self.part_shift;
        let parts = ((2u32 << last) - 1) & !((1u32 << first) - 1);
        self.shared
            .locks
            .try_share(k, parts, self.owns_locks())
            .then_some(parts)
    }

    #[inline(always)]
    fn unlock_direct(&self, d: &Direct) {
        if d.lock != NONE {
            self.shared
                .locks
                .unshare(d.lock as usize, d.parts, self.owns_locks.get());
        }
    }

    /// Whether this channel owns the stripe lock table; an owner asked to
    /// give it back does so here.
    fn owns_locks(&self) -> bool {
        if self.owns_locks.get() && !self.shared.locks.keep_owning() {
            self.owns_locks.set(false);
        }
        self.owns_locks.get()
    }

    /// Take stripe/range lock `k` exclusively.
    fn take_lock(&self, k: usize) -> bool {
        let took = self.shared.locks.try_lock(k, self.owns_locks());
        if !took {
            self.blocked.set(k);
        }
        took
    }

    fn drop_lock(&self, k: usize) {
        self.shared.locks.unlock(k, self.owns_locks.get());
    }

    /// Count a direct I/O in, with the parent slot it keeps and its
    /// member I/Os outstanding.
    #[inline]
    fn take_direct_slot(&mut self, d: &mut Direct) {
        self.direct_in_flight += 1;
        if d.all {
            self.all_writes_out += 1;
            return;
        }
        for l in d.targets() {
            self.member_stats[l.member as usize].outstanding += 1;
        }
    }

    /// A [`Direct`] I/O ended with every member I/O done: the host
    /// completes its parent.
    #[inline]
    pub fn direct_done(&mut self, d: &Direct) {
        self.stats.direct_done += 1;
        self.direct_in_flight -= 1;
        self.end_direct(d, 0);
    }

    /// A [`Direct`] I/O ended with the member I/Os of `failed` failed: the
    /// parent `io` (the same I/O) goes to the general path, in the slot the
    /// direct I/O kept, before the direct I/O lets go of its range lock,
    /// its bitmap count and its place among the writes in flight (so the
    /// array is never marked clean, nor a bit cleared, while the copies it
    /// wrote differ). The general path redoes it and handles the failure:
    /// for a write, the members of `failed` are failed first (R1: the redo
    /// skips them and completes once their failure is committed); for a
    /// read, the other copies and the rewrite. `failed` may also name
    /// members the host could not issue to (no device on its channel any
    /// more); a device no longer in its role is never failed for it.
    pub fn direct_redo(&mut self, d: &Direct, failed: u64, io: ParentIo<B>) {
        if d.write {
            // R1 as on the general path: a member whose write failed is
            // failed, even if the redo's write to it would land (md fails
            // a member on a write error). The redo then skips it and
            // completes only once the failure is committed (`wait_for`).
            for l in d.targets() {
                let m = l.member as usize;
                let inc = self.state.readded[m];
                if failed & bit(m) != 0 && inc <= d.seq {
                    self.fail_member(l.member, inc);
                }
            }
        }
        // The slot kept for it takes the redo.
        self.direct_in_flight -= 1;
        if self.submit(io).is_err() {
            unreachable!("the direct I/O's parent slot was free");
        }
        self.end_direct(d, failed);
    }

    /// The counts of direct I/O `d` (member I/Os of `failed` failed), and
    /// what its write held.
    #[inline(always)]
    fn end_direct(&mut self, d: &Direct, failed: u64) {
        if d.all {
            self.all_writes_out -= 1;
            if failed == 0 {
                self.all_writes += 1;
                self.all_written += d.blocks;
            } else {
                self.end_targets(d, failed, 0);
            }
        } else {
            self.end_targets(d, failed, 1);
        }
        if d.write {
            self.end_direct_write(d);
        }
    }

    /// Each target's counts at the end of direct I/O `d` (member I/Os of
    /// `failed` failed); `out`: what its `outstanding` counted.
    #[inline(always)]
    fn end_targets(&mut self, d: &Direct, failed: u64, out: u32) {
        for l in d.targets() {
            let ms = &mut self.member_stats[l.member as usize];
            ms.outstanding -= out;
            if failed & bit(l.member as usize) != 0 {
                ms.errors += 1;
            } else if d.write {
                ms.writes += 1;
                ms.written_blocks += d.blocks;
            } else {
                ms.reads += 1;
                ms.read_blocks += d.blocks;
            }
        }
    }

    /// What direct write `d` held: its range lock, bitmap count and place
    /// among the writes in flight.
    #[inline(always)]
    fn end_direct_write(&mut self, d: &Direct) {
        self.unlock_direct(d);
        if let Some(bm) = &self.shared.bitmap {
            bm.end_write(d.lba, d.blocks);
        }
        self.writes_in_flight -= 1;
        self.maybe_report_idle();
        if d.lock == NONE {
            // No lock (one copy): nothing waits for what it held.
            return;
        }
        // A parent (this one, redone) may wait for the lock, or a read
        // fix or reconstruction for some lock (`waited` is all set then).
        if self.waited & waited_bit(d.lock as usize) != 0 {
            self.run_waiters_cold();
        }
    }

    /// [`Channel::run_waiters`], out of line (for the direct path's rare
    /// call).
    #[cold]
    #[inline(never)]
    fn run_waiters_cold(&mut self) {
        self.run_waiters();
    }

    /// Begin dispatching a parent that passed the dirty gate.
    fn start(&mut self, slot: u32) {
        let p = self.parents[slot as usize].as_mut().unwrap();
        if p.op.writes() {
            p.write_started = true;
            self.writes_in_flight += 1;
            self.shared.note_write(self.index);
            if let Some(bm) = &self.shared.bitmap {
                // R4: count the write in its chunks first, then issue it
                // only if every chunk's bit is already on disk.
                p.bits_counted = true;
                if !bm.start_write(p.lba, p.blocks) {
                    self.stats.waits_for_bits += 1;
                    self.bits_wait.push_back(slot);
                    self.request_bits();
                    return;
                }
            }
        }
        self.go(slot);
    }

    /// Run a parent now, or queue it behind others waiting for resources.
    fn go(&mut self, slot: u32) {
        if !self.waiters.is_empty() {
            // Others wait for resources: keep their order.
            self.enqueue(slot, None);
        } else {
            self.run_parent(slot);
        }
    }

    fn request_bits(&mut self) {
        if !self.bits_requested {
            self.bits_requested = true;
            self.actions
                .push_back(Action::Meta(MetaRequest::BitsNeeded {
                    channel: self.index as u16,
                }));
        }
    }

    /// Issue the writes whose bits became durable; ask again for the rest
    /// (a request answered before their chunks were counted wrote nothing
    /// for them).
    fn recheck_bits(&mut self) {
        // Any answer to the last request has arrived with this state.
        self.bits_requested = false;
        if self.bits_wait.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        let Some(bm) = shared.bitmap.as_ref() else {
            return;
        };
        let offline = self.state.offline;
        for _ in 0..self.bits_wait.len() {
            let slot = self.bits_wait.pop_front().unwrap();
            let p = self.parents[slot as usize].as_ref().unwrap();
            if offline {
                self.complete(slot);
            } else if bm.durable(p.lba, p.blocks) {
                self.go(slot);
            } else {
                self.bits_wait.push_back(slot);
            }
        }
        if !self.bits_wait.is_empty() {
            self.request_bits();
        }
    }

    fn request_dirty(&mut self) {
        if !self.dirty_requested {
            self.dirty_requested = true;
            self.actions.push_back(Action::Meta(MetaRequest::MarkDirty {
                channel: self.index as u16,
            }));
        }
    }

    /// In a not-writable state, tell the metadata path once that no write
    /// is in flight here, nor waiting for the array to be marked dirty (a
    /// waiting one may be the redo of a direct write whose copies differ).
    #[inline]
    fn maybe_report_idle(&mut self) {
        if !self.state.writable
            && self.writes_in_flight == 0
            && self.dirty_wait.is_empty()
            && self.idle_reported != Some(self.state.seq)
        {
            self.idle_reported = Some(self.state.seq);
            self.actions
                .push_back(Action::Meta(MetaRequest::WritesIdle {
                    channel: self.index as u16,
                    seq: self.state.seq,
                }));
        }
    }

    /// Join the array's broadcasts at `published`, the newest state
    /// published when this channel was made (it was made from the
    /// released one): apply it. A broadcast already running then may
    /// still bring this channel an older state, or the release of one;
    /// [`Channel::apply_state`] and [`Channel::release`] ignore those.
    pub fn join(&mut self, published: Arc<ArrayState>) {
        self.joined = published.seq;
        self.apply_state(published);
    }

    /// A broadcast from the metadata path.
    pub fn apply_state(&mut self, state: Arc<ArrayState>) {
        if state.seq < self.joined {
            return; // sent before this channel joined at a newer one
        }
        assert!(
            state.events >= self.state.events && state.seq >= self.state.seq,
            "state broadcast went back in events or publication"
        );
        self.state = state;
        self.rec_mask = self.state.recovering();
        self.oos_mask = self.state.out_of_service();
        self.refresh_lean();
        if self.state.offline {
            while let Some(slot) = self.dirty_wait.pop_front() {
                self.complete(slot);
            }
        } else if self.state.writable {
            self.dirty_requested = false;
            while let Some(slot) = self.dirty_wait.pop_front() {
                self.start(slot);
            }
        } else {
            if !self.dirty_wait.is_empty() {
                // A request made before this state may have been dropped.
                self.dirty_requested = false;
                self.request_dirty();
            }
            self.maybe_report_idle();
        }
        self.recheck_bits();
        self.run_waiters();
    }

    /// Second phase of a broadcast: `state` has been applied by every
    /// channel of the array (SPDK: the completion of
    /// `spdk_for_each_channel`), so no channel will route a new read to a
    /// member it records faulty. Writes parked on those failures complete.
    pub fn release(&mut self, state: Arc<ArrayState>) {
        if state.seq < self.joined && state.events <= self.released.events {
            return; // as in apply_state; this channel started past it
        }
        assert!(
            state.events <= self.state.events,
            "release of a state this channel has not applied"
        );
        assert!(
            state.events >= self.released.events,
            "release went back in events"
        );
        self.released = state;
        let mut i = 0;
        while i < self.parked.len() {
            let slot = self.parked[i];
            if self.may_complete(slot) {
                self.parked.swap_remove(i);
                self.complete(slot);
            } else {
                i += 1;
            }
        }
        self.run_waiters();
    }

    /// R1: every failure this parent saw is recorded faulty in a state all
    /// channels have applied (or the array is offline).
    fn may_complete(&self, slot: u32) -> bool {
        let p = self.parents[slot as usize].as_ref().unwrap();
        let w = &self.wait_incs[slot as usize];
        self.released.offline || members_of(p.wait_members).all(|m| self.released_out(m, w[m]))
    }

    /// Whether the released state has device `inc` of role `m` out: it
    /// records the role out of service in that device's time or later
    /// (not an earlier device's failure), or a later device came in since.
    fn released_out(&self, m: usize, inc: u64) -> bool {
        let r = &self.released;
        r.readded[m] > inc || (r.out_of_service() & bit(m) != 0 && r.readded[m] >= inc)
    }

    /// Members in `mask` were skipped by a write because they failed: the
    /// write must not complete before that failure is released (a channel
    /// that has not heard of it yet could still read those members).
    fn wait_for(&mut self, slot: u32, mask: u64) {
        if mask == 0 {
            return; // the common case: every copy was written
        }
        let failed = self.shared.failed();
        for m in members_of(mask) {
            // Skipped for a failure some channel saw (that device's), or
            // because the state records the member out of service.
            let inc = if failed & bit(m) != 0 {
                self.shared.failed_inc(m)
            } else {
                self.state.readded[m]
            };
            if !self.released_out(m, inc) {
                self.note_wait(slot, bit(m), inc);
            }
        }
    }

    /// The parent must wait for the failure of the members in `mask`, of
    /// the device brought in at publication `inc` (`readded`).
    fn note_wait(&mut self, slot: u32, mask: u64, inc: u64) {
        let p = self.parents[slot as usize].as_mut().unwrap();
        let w = &mut self.wait_incs[slot as usize];
        for m in members_of(mask) {
            // An entry counts only while its member is in wait_members.
            w[m] = if p.wait_members & bit(m) == 0 {
                inc
            } else {
                w[m].max(inc)
            };
        }
        p.wait_members |= mask;
    }

    /// Resubmit children the host had no memory for and retry waiters.
    pub fn poll(&mut self) {
        if !self.owns_locks() && self.shared.locks.try_own(self.index) {
            self.owns_locks.set(true);
        }
        while let Some(idx) = self.nomem.pop_front() {
            self.stats.nomem_retries += 1;
            let c = &self.children[idx as usize];
            let (io, inc, kind, owner) = (c.io, c.inc, c.kind, c.owner);
            let m = io.member as usize;
            if self.state.readded[m] != inc || self.dead() & bit(m) != 0 {
                if let (ChildKind::MirrorRead { .. }, Owner::Parent(slot)) = (kind, owner) {
                    // A mirrored read: pick a copy again (no read failed).
                    self.mirror_read_next(slot, idx);
                    continue;
                }
                self.children[idx as usize].in_flight = true;
                self.member_stats[m].outstanding += 1;
                // The device it was for failed or was replaced meanwhile:
                // it fails rather than reach another device.
                self.child_done(io.token, ChildStatus::Error);
                continue;
            }
            self.children[idx as usize].in_flight = true;
            self.member_stats[m].outstanding += 1;
            self.actions.push_back(Action::Submit(io));
        }
        self.run_waiters();
    }

    /// A child op ended.
    pub fn child_done(&mut self, token: ChildToken, status: ChildStatus) {
        let idx = token.idx as usize;
        {
            let c = &mut self.children[idx];
            assert!(
                c.gen == token.gen && c.owner != Owner::Free && c.in_flight,
                "completion of a child that is not in flight: {token:?}"
            );
            c.in_flight = false;
        }
        let io = self.children[idx].io;
        let ms = &mut self.member_stats[io.member as usize];
        ms.outstanding -= 1;
        match status {
            ChildStatus::NoMem => {
                self.nomem.push_back(token.idx);
                return;
            }
            ChildStatus::Error => ms.errors += 1,
            ChildStatus::Success => match io.op {
                ChildOp::Read => {
                    ms.reads += 1;
                    ms.read_blocks += io.blocks;
                }
                ChildOp::Write | ChildOp::WriteZeroes | ChildOp::Unmap => {
                    ms.writes += 1;
                    ms.written_blocks += io.blocks;
                }
                _ => {}
            },
        }
        let ok = status == ChildStatus::Success;
        match self.children[idx].owner {
            Owner::Free => unreachable!(),
            Owner::Stripe(ctx) => self.unit_child_done(ctx, idx as u32, ok),
            Owner::Parent(slot) => self.parent_child_done(slot, idx as u32, ok),
            Owner::Behind(piece) => self.behind_child_done(piece, idx as u32, ok),
        }
        self.run_waiters();
    }

    // ----- parents -------------------------------------------------------

    /// Queue a parent waiting for lock `lock` (None: for pool resources,
    /// or not tried yet).
    fn enqueue(&mut self, slot: u32, lock: Option<usize>) {
        let p = self.parents[slot as usize].as_mut().unwrap();
        if !p.queued {
            p.queued = true;
            self.waiters.push_back(slot);
        }
        p.blocked_on = lock.map_or(NONE, |k| k as u32);
        self.waited |= lock.map_or(!0, waited_bit);
    }

    /// Retry queued work in order. A parent blocked on pool resources stops
    /// the scan (FIFO: later parents must not take what it waits for); one
    /// blocked on a stripe lock does not.
    fn run_waiters(&mut self) {
        if !self.fix_queue.is_empty() {
            self.run_fix_queue();
        }
        while let Some(&(slot, stripe, data, row, rows, fix)) = self.recon_queue.front() {
            if !self.start_recon(slot, stripe, data, row, rows, fix) {
                break;
            }
            self.recon_queue.pop_front();
        }
        let mut i = 0;
        let mut waited = 0;
        while i < self.waiters.len() {
            let slot = self.waiters[i];
            let k = self.parents[slot as usize].as_ref().unwrap().blocked_on;
            if k != NONE && self.shared.locks.held(k as usize, self.owns_locks()) {
                // Still held: trying the parent again would only find it
                // so (held marks it wanted, as that try would).
                waited |= waited_bit(k as usize);
                i += 1;
                continue;
            }
            let step = self.dispatch(slot);
            let p = self.parents[slot as usize].as_mut().unwrap();
            match step {
                Step::Done => {
                    p.queued = false;
                    self.waiters.remove(i);
                    self.finish_dispatch(slot);
                }
                Step::WaitLock => {
                    p.blocked_on = self.blocked.get() as u32;
                    waited |= waited_bit(self.blocked.get());
                    i += 1;
                }
                Step::WaitPool => {
                    p.blocked_on = NONE;
                    waited = !0;
                    break;
                }
            }
        }
        self.waited = if self.fix_queue.is_empty() && self.recon_queue.is_empty() {
            waited
        } else {
            !0
        };
    }

    fn run_parent(&mut self, slot: u32) {
        match self.dispatch(slot) {
            Step::Done => self.finish_dispatch(slot),
            Step::WaitLock => {
                self.stats.waits_for_stripe += 1;
                self.enqueue(slot, Some(self.blocked.get()))
            }
            Step::WaitPool => {
                self.stats.waits_for_resources += 1;
                self.enqueue(slot, None)
            }
        }
    }

    fn finish_dispatch(&mut self, slot: u32) {
        let p = self.parents[slot as usize].as_mut().unwrap();
        debug_assert!(!p.dispatched);
        p.dispatched = true;
        self.unit_done(slot); // drop the submission bias
    }

    fn unit_done(&mut self, slot: u32) {
        let p = self.parents[slot as usize].as_mut().unwrap();
        assert!(p.pending > 0, "parent completion count underflow");
        p.pending -= 1;
        if p.pending == 0 {
            assert!(p.dispatched, "parent completed before it was fully issued");
            if !self.may_complete(slot) {
                self.parked.push(slot);
            } else {
                self.complete(slot);
            }
        }
    }

    fn complete(&mut self, slot: u32) {
        let p = self.parents[slot as usize].take().unwrap();
        if p.write_started {
            self.writes_in_flight -= 1;
        }
        if p.bits_counted {
            if let Some(bm) = &self.shared.bitmap {
                bm.end_write(p.lba, p.blocks);
            }
        }
        let status = if p.error || self.state.offline {
            IoStatus::Error
        } else if p.wait_members != 0 {
            let dead = self.dead() | p.wait_members;
            if p.op.has_range() {
                if range_survives(&self.geom, p.lba, p.blocks, dead) {
                    IoStatus::Success
                } else {
                    IoStatus::Error
                }
            } else if crate::state::survives(&self.geom, dead) {
                IoStatus::Success
            } else {
                IoStatus::Error
            }
        } else {
            IoStatus::Success
        };
        self.stats.parents_done += 1;
        self.free_parents.push(slot);
        self.actions.push_back(Action::Complete {
            tag: p.tag,
            status,
            buf: p.buf,
        });
        if p.write_started {
            self.maybe_report_idle();
        }
    }

    /// Members among `mask` that do not hold current data in member blocks
    /// `[lba, lba+blocks)` (being rebuilt and not there yet): never read
    /// there, still written.
    fn stale(&self, mask: u64, lba: u64, blocks: u64) -> u64 {
        if self.rec_mask & mask == 0 {
            0
        } else {
            self.state.stale_in(mask, lba, blocks)
        }
    }

    /// Members of a unit's stripe that are stale in its rows.
    fn unit_stale(&self, u: &StripeCtx<B>) -> u64 {
        self.stale(
            Self::data_mask(&u.map, (1u64 << u.map.ndata) - 1) | Self::parity_mask(&u.map),
            u.map.member_lba + u.row,
            u.rows,
        )
    }

    /// Members that take no I/O now: out of service in the state, or seen
    /// failing by any channel (md's in-memory Faulty flag: every channel
    /// stops using a failed member at once, before the commit, so no
    /// reconstruction mixes its stale strips with fresh parity).
    fn dead(&self) -> u64 {
        self.oos_mask | self.shared.failed()
    }

    /// A child to `member` of device `inc` failed.
    fn fail_member(&mut self, member: u16, inc: u64) {
        let m = member as usize;
        if self.oos_mask & bit(m) != 0 || self.state.readded[m] != inc {
            // Out already, or an I/O of a device that left since.
            return;
        }
        // The first channel to see it reports it.
        if self.shared.set_failed(m, inc) {
            self.actions
                .push_back(Action::Meta(MetaRequest::MemberFailed {
                    member,
                    device: inc,
                }));
        }
    }

    fn alloc_child(&mut self, owner: Owner, kind: ChildKind) -> u32 {
        let idx = self.free_children.pop().expect("child pool checked");
        let c = &mut self.children[idx as usize];
        debug_assert_eq!(c.owner, Owner::Free);
        c.owner = owner;
        c.kind = kind;
        idx
    }

    fn free_child(&mut self, idx: u32) {
        let c = &mut self.children[idx as usize];
        c.owner = Owner::Free;
        c.gen = c.gen.wrapping_add(1);
        if (idx as usize) < self.cfg.max_children {
            self.free_children.push(idx);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn issue(
        &mut self,
        idx: u32,
        member: u16,
        op: ChildOp,
        lba: u64,
        blocks: u64,
        fua: bool,
        buf: ChildBuf,
    ) {
        let parent = match self.children[idx as usize].owner {
            Owner::Parent(slot) => self.parents[slot as usize].as_ref().unwrap().tag,
            Owner::Stripe(ctx) => {
                let slot = self.stripes[ctx as usize].parent;
                self.parents[slot as usize].as_ref().unwrap().tag
            }
            Owner::Behind(piece) => self.pieces[piece as usize].tag,
            Owner::Free => unreachable!("issue of a free child"),
        };
        let c = &mut self.children[idx as usize];
        c.gen = c.gen.wrapping_add(1);
        c.inc = self.state.readded[member as usize];
        c.io = ChildIo {
            token: ChildToken { idx, gen: c.gen },
            parent,
            member,
            op,
            lba,
            blocks,
            fua,
            buf,
        };
        c.in_flight = true;
        self.member_stats[member as usize].outstanding += 1;
        self.actions.push_back(Action::Submit(c.io));
    }

    fn parent_buf(&self, slot: u32, lba: u64, blocks: u64) -> ChildBuf {
        let p = self.parents[slot as usize].as_ref().unwrap();
        if p.buf.is_none()
            || !matches!(
                p.op,
                IoType::Read
                    | IoType::Write
                    | IoType::Resync
                    | IoType::Rebuild { .. }
                    | IoType::Check
                    | IoType::Repair
            )
        {
            return ChildBuf::None;
        }
        ChildBuf::Parent {
            slot,
            off: ((lba - p.lba) * self.bs) as usize,
            len: (blocks * self.bs) as usize,
        }
    }

    /// The parent buffer region of copy `region` of `[lba, lba+blocks)`
    /// (mirrored check: one region of the parent's length per copy).
    fn region_buf(&self, slot: u32, region: usize, lba: u64, blocks: u64) -> ChildBuf {
        let p = self.parents[slot as usize].as_ref().unwrap();
        ChildBuf::Parent {
            slot,
            off: ((region as u64 * p.blocks + lba - p.lba) * self.bs) as usize,
            len: (blocks * self.bs) as usize,
        }
    }

    /// Mirrored check of one mapped piece: read every current copy under
    /// the range lock. Fewer than two copies: nothing to compare.
    fn start_check_piece(
        &mut self,
        slot: u32,
        lba: u64,
        m: &crate::layout::Mapping,
    ) -> Result<(), Step> {
        let dead = self.dead();
        let members: u64 = m
            .copies()
            .iter()
            .filter(|l| {
                let b = bit(l.member as usize);
                dead & b == 0 && self.stale(b, l.lba, m.len) == 0
            })
            .fold(0, |a, l| a | bit(l.member as usize));
        if members.count_ones() < 2 {
            return Ok(());
        }
        if self.free_children.len() < members.count_ones() as usize {
            return Err(Step::WaitPool);
        }
        let Some(&piece) = self.free_pieces.last() else {
            return Err(Step::WaitPool);
        };
        let lock = self.range_lock(lba);
        if let Some(k) = lock {
            if !self.take_lock(k) {
                return Err(Step::WaitLock);
            }
        }
        self.free_pieces.pop();
        let tag = self.parents[slot as usize].as_ref().unwrap().tag;
        self.pieces[piece as usize] = Piece {
            check: Some(CheckPiece {
                lba,
                blocks: m.len,
                members,
                bad: 0,
                writing: false,
            }),
            ..Piece::new(slot, tag, lock)
        };
        self.parents[slot as usize].as_mut().unwrap().pending += 1;
        for l in m.copies().iter().copied() {
            if members & bit(l.member as usize) == 0 {
                continue;
            }
            let region = (members & (bit(l.member as usize) - 1)).count_ones() as u16;
            let c = self.alloc_child(Owner::Parent(slot), ChildKind::CheckRead { piece, region });
            self.pieces[piece as usize].pending += 1;
            let buf = self.region_buf(slot, region as usize, lba, m.len);
            self.issue(c, l.member, ChildOp::Read, l.lba, m.len, false, buf);
        }
        self.piece_done(piece); // drop the piece's own bias
        Ok(())
    }

    /// Every copy of a check piece has been read: count the blocks where
    /// they disagree; on repair write the first copy over the others.
    /// True if repair writes were issued.
    fn compare_piece(&mut self, piece: u32) -> bool {
        let pc = &self.pieces[piece as usize];
        let ck = pc.check.unwrap();
        let slot = pc.parent;
        let read = ck.members & !ck.bad;
        if read.count_ones() < 2 {
            return false;
        }
        let p = self.parents[slot as usize].as_ref().unwrap();
        let repair = p.op == IoType::Repair;
        let (bs, plen) = (self.bs as usize, p.blocks as usize);
        let buf = p.buf.as_ref().unwrap().as_ref();
        let rank = |m: usize| (ck.members & (bit(m) - 1)).count_ones() as usize;
        let first = members_of(read).next().unwrap();
        let off = |m: usize, b: usize| (rank(m) * plen + (ck.lba - p.lba) as usize + b) * bs;
        let mut differ = 0u64;
        let mut mismatched = 0;
        for b in 0..ck.blocks as usize {
            let a = &buf[off(first, b)..off(first, b) + bs];
            let mut any = false;
            for m in members_of(read & !bit(first)) {
                if buf[off(m, b)..off(m, b) + bs] != *a {
                    any = true;
                    differ |= bit(m);
                }
            }
            mismatched += u64::from(any);
        }
        self.stats.mismatch_blocks += mismatched;
        if !repair || differ == 0 || self.free_children.len() < differ.count_ones() as usize {
            return false;
        }
        // Write the first copy's data over the copies that differ.
        let map = self.geom.map(ck.lba, ck.blocks);
        self.pieces[piece as usize].check.as_mut().unwrap().writing = true;
        let src = self.region_buf(slot, rank(first), ck.lba, ck.blocks);
        for l in map.copies().iter().copied() {
            if differ & bit(l.member as usize) == 0 {
                continue;
            }
            let c = self.alloc_child(Owner::Parent(slot), ChildKind::Piece(piece));
            self.pieces[piece as usize].pending += 1;
            self.issue(c, l.member, ChildOp::Write, l.lba, ck.blocks, false, src);
        }
        true
    }

    /// Issue as much of the parent as resources allow.
    fn dispatch(&mut self, slot: u32) -> Step {
        let (op, lba, blocks) = {
            let p = self.parents[slot as usize].as_ref().unwrap();
            (p.op, p.lba, p.blocks)
        };
        match op {
            IoType::Flush | IoType::Reset => self.dispatch_all_members(slot, op),
            IoType::Resync | IoType::Rebuild { .. } | IoType::Check | IoType::Repair
                if !self.geom.level().is_parity() && self.geom.copies() == 1 =>
            {
                Step::Done
            }
            _ if !self.geom.level().is_parity() => self.dispatch_mapped(slot, op, lba + blocks),
            IoType::Read => self.dispatch_parity_read(slot, lba + blocks),
            _ => self.dispatch_parity_write(slot, lba + blocks),
        }
    }

    fn dispatch_all_members(&mut self, slot: u32, op: IoType) -> Step {
        let p = self.parents[slot as usize].as_ref().unwrap();
        if p.cursor != p.lba {
            return Step::Done; // already issued
        }
        let all = (1u64 << self.geom.members()) - 1;
        let live = !self.dead() & all;
        if self.free_children.len() < live.count_ones() as usize {
            return Step::WaitPool;
        }
        if op == IoType::Flush {
            self.wait_for(slot, all & !live);
        }
        let cop = if op == IoType::Flush {
            ChildOp::Flush
        } else {
            ChildOp::Reset
        };
        for m in members_of(live) {
            let c = self.alloc_child(Owner::Parent(slot), ChildKind::Plain);
            self.parents[slot as usize].as_mut().unwrap().pending += 1;
            self.issue(c, m as u16, cop, 0, 0, false, ChildBuf::None);
        }
        self.parents[slot as usize].as_mut().unwrap().cursor += 1;
        Step::Done
    }

    /// The range lock covering mapped block `lba`, if the level has copies
    /// that must agree (writes and read-error rewrites take it).
    #[inline]
    fn range_lock(&self, lba: u64) -> Option<usize> {
        self.mirrored
            .then(|| self.shared.locks.key(lba >> self.lock_shift))
    }

    /// `map`, cut at lock granule boundaries.
    fn map_piece(&self, lba: u64, len: u64) -> crate::layout::Mapping {
        let mut m = self.geom.map(lba, len);
        if self.geom.copies() > 1 {
            m.len = m.len.min(self.lock_blocks - (lba & (self.lock_blocks - 1)));
        }
        m
    }

    fn dispatch_mapped(&mut self, slot: u32, op: IoType, end: u64) -> Step {
        loop {
            let (cursor, fua) = {
                let p = self.parents[slot as usize].as_ref().unwrap();
                (p.cursor, p.fua)
            };
            if cursor >= end {
                return Step::Done;
            }
            let m = self.map_piece(cursor, end - cursor);
            let dead = self.dead();
            if op == IoType::Read {
                if self.free_children.is_empty() {
                    return Step::WaitPool;
                }
                let c = self.alloc_child(
                    Owner::Parent(slot),
                    ChildKind::MirrorRead {
                        lba: cursor,
                        blocks: m.len,
                        bad: 0,
                        locked: false,
                        resync: false,
                        wm_wait: false,
                    },
                );
                self.parents[slot as usize].as_mut().unwrap().pending += 1;
                self.mirror_read_next(slot, c);
            } else if op.checks() {
                match self.start_check_piece(slot, cursor, &m) {
                    Ok(()) => {}
                    Err(step) => return step,
                }
            } else if op.resyncs() {
                let live = m
                    .copies()
                    .iter()
                    .filter(|l| dead & bit(l.member as usize) == 0)
                    .count();
                let readable = m.copies().iter().any(|l| {
                    dead & bit(l.member as usize) == 0
                        && self.stale(bit(l.member as usize), l.lba, m.len) == 0
                });
                let copies = m.copies().iter().fold(0, |a, l| a | bit(l.member as usize));
                if !readable || op.rebuild_cannot_write(copies, self.rec_mask & !dead) {
                    // No current copy left to resync from (a rebuild whose
                    // source failed), or a rebuild that cannot write the
                    // member it rebuilds (failed, or no longer being
                    // rebuilt): the window fails.
                    self.parents[slot as usize].as_mut().unwrap().error = true;
                } else if live >= 2 {
                    // Read one copy and write it over the others, all under
                    // the range lock user writes take.
                    if self.free_children.is_empty() {
                        return Step::WaitPool;
                    }
                    let k = self.range_lock(cursor).expect("copies > 1");
                    if !self.take_lock(k) {
                        return Step::WaitLock;
                    }
                    let c = self.alloc_child(
                        Owner::Parent(slot),
                        ChildKind::MirrorRead {
                            lba: cursor,
                            blocks: m.len,
                            bad: 0,
                            locked: true,
                            resync: true,
                            wm_wait: false,
                        },
                    );
                    self.parents[slot as usize].as_mut().unwrap().pending += 1;
                    self.mirror_read_next(slot, c);
                }
            } else {
                let live: u64 = m
                    .copies()
                    .iter()
                    .filter(|l| dead & bit(l.member as usize) == 0)
                    .fold(0, |a, l| a | bit(l.member as usize));
                if self.free_children.len() < live.count_ones() as usize {
                    return Step::WaitPool;
                }
                let Some(&piece) = self.free_pieces.last() else {
                    return Step::WaitPool;
                };
                let lock = self.range_lock(cursor);
                if let Some(k) = lock {
                    if !self.take_lock(k) {
                        return Step::WaitLock;
                    }
                }
                self.free_pieces.pop();
                let tag = self.parents[slot as usize].as_ref().unwrap().tag;
                self.pieces[piece as usize] = Piece::new(slot, tag, lock);
                self.parents[slot as usize].as_mut().unwrap().pending += 1;
                if live == 0 {
                    self.parents[slot as usize].as_mut().unwrap().error = true;
                }
                // Write-behind: the write-mostly copies finish after the
                // parent from a private copy of the data.
                let behind = if op == IoType::Write {
                    // The copies in sync (md's R1BIO_Uptodate: a member
                    // being rebuilt takes the write, but a crash may take
                    // its recovery back to its last checkpoint).
                    let read = live & !self.rec_mask;
                    let b = self.take_behind(live, read, m.len);
                    if b.is_some() {
                        self.pieces[piece as usize].read_mask = read;
                    }
                    b
                } else {
                    None
                };
                if let Some(b) = behind {
                    self.start_behind(slot, piece, b, cursor, m.len);
                }
                let cop = match op {
                    IoType::Write => ChildOp::Write,
                    IoType::WriteZeroes => ChildOp::WriteZeroes,
                    // Unmapped blocks read back as anything; only pass it
                    // through where no copies must agree.
                    IoType::Unmap if self.geom.copies() == 1 => ChildOp::Unmap,
                    _ => ChildOp::WriteZeroes,
                };
                let all: u64 = m.copies().iter().fold(0, |a, l| a | bit(l.member as usize));
                self.wait_for(slot, all & !live);
                let buf = self.parent_buf(slot, cursor, m.len);
                for l in m.copies().iter().copied() {
                    if dead & bit(l.member as usize) != 0 {
                        continue;
                    }
                    if let Some((b, wm)) =
                        behind.filter(|&(_, wm)| wm & bit(l.member as usize) != 0)
                    {
                        debug_assert!(wm & bit(l.member as usize) != 0);
                        let c = self.alloc_child(Owner::Behind(piece), ChildKind::Behind(piece));
                        self.pieces[piece as usize].behind += 1;
                        let len = (m.len * self.bs) as usize;
                        let buf = ChildBuf::Behind { buf: b, len };
                        self.issue(c, l.member, cop, l.lba, m.len, fua, buf);
                        continue;
                    }
                    let c = self.alloc_child(Owner::Parent(slot), ChildKind::Piece(piece));
                    self.pieces[piece as usize].pending += 1;
                    self.issue(c, l.member, cop, l.lba, m.len, fua, buf);
                }
                self.piece_done(piece); // drop the piece's own bias
            }
            self.parents[slot as usize].as_mut().unwrap().cursor += m.len;
        }
    }

    fn piece_done(&mut self, piece: u32) {
        let pc = &mut self.pieces[piece as usize];
        assert!(pc.pending > 0, "piece completion count underflow");
        pc.pending -= 1;
        if pc.pending == 0 && pc.check.is_some_and(|c| !c.writing) && self.compare_piece(piece) {
            return; // repair writes issued
        }
        let pc = &mut self.pieces[piece as usize];
        if pc.pending != 0 {
            return;
        }
        if pc.behind == 0 {
            self.end_piece(piece);
        } else if pc.fast_ok {
            // A copy the array reads is written: the parent may complete
            // while the write-mostly copies finish behind.
            let slot = std::mem::replace(&mut pc.parent, NONE);
            self.unit_done(slot);
        }
        // Else every fast copy failed: the parent waits for the
        // write-behind children, the only copies left (no data lost).
    }

    /// Every child of a piece is done: release its lock and, if written
    /// behind, its write-behind place, copy and bitmap count.
    fn end_piece(&mut self, piece: u32) {
        let pc = &mut self.pieces[piece as usize];
        debug_assert!(pc.pending == 0 && pc.behind == 0);
        pc.check = None;
        let (slot, lock, b) = (pc.parent, pc.lock, pc.behind_buf);
        pc.behind_buf = NONE;
        let pc = &self.pieces[piece as usize];
        if let Some(k) = lock {
            self.drop_lock(k);
        }
        if b != NONE {
            let (lba, blocks) = (pc.lba, pc.blocks);
            self.free_behind.push(b);
            self.shared.end_behind(pc.behind_mask);
            if let Some(bm) = &self.shared.bitmap {
                bm.end_write(lba, blocks);
            }
            self.writes_in_flight -= 1;
            self.maybe_report_idle();
        }
        self.free_pieces.push(piece);
        if slot != NONE {
            self.unit_done(slot);
        }
    }

    fn write_mostly(&self, member: u16) -> bool {
        self.state.write_mostly & bit(member as usize) != 0
    }

    /// A write copy buffer and a place among the array's write-behind
    /// pieces for a write piece of `blocks` going to the members in `live`,
    /// of which those in `read` are in sync, if it may be written behind:
    /// write-behind is on, the piece has a write-mostly copy and another
    /// copy in sync (a crash then resyncs from it), it fits a write-behind
    /// copy, and no read waits for a write-mostly member.
    fn take_behind(&mut self, live: u64, read: u64, blocks: u64) -> Option<(u32, u64)> {
        let wm = live & self.state.write_mostly;
        let max = self.state.write_behind;
        if max == 0
            || wm == 0
            || read & !wm == 0
            || self.shared.bitmap.is_none()
            || blocks * self.bs > self.cfg.max_row_bytes as u64
            || (self.free_behind.is_empty() && self.behind_bufs.len() >= self.cfg.behind_bufs)
            || !self.shared.try_start_behind(max, wm)
        {
            return None;
        }
        if self.free_behind.is_empty() {
            let len = self.cfg.max_row_bytes;
            let b = (self.alloc.as_mut().expect("allocator kept"))(len);
            assert!(b.as_ref().len() >= len, "short buffer");
            self.free_behind.push(self.behind_bufs.len() as u32);
            self.behind_bufs.push(b);
        }
        self.free_behind.pop().map(|b| (b, wm))
    }

    /// Make piece `piece` of parent `slot` a write-behind piece over array
    /// blocks `[lba, lba+blocks)`: copy the data, and count it in the
    /// bitmap and among the writes in flight until its write-mostly copies
    /// are done (the bits stay set: a crash before then resyncs them).
    fn start_behind(&mut self, slot: u32, piece: u32, (b, wm): (u32, u64), lba: u64, blocks: u64) {
        let len = (blocks * self.bs) as usize;
        let p = self.parents[slot as usize].as_ref().unwrap();
        let off = ((lba - p.lba) * self.bs) as usize;
        let src = &p.buf.as_ref().expect("write without buffer").as_ref()[off..off + len];
        self.behind_bufs[b as usize].as_mut()[..len].copy_from_slice(src);
        if let Some(bm) = &self.shared.bitmap {
            // The parent holds these chunks counted with their bits durable.
            let durable = bm.start_write(lba, blocks);
            debug_assert!(durable, "write-behind piece outside durable bits");
        }
        self.writes_in_flight += 1;
        self.stats.behind_writes += 1;
        let pc = &mut self.pieces[piece as usize];
        pc.behind_buf = b;
        pc.behind_mask = wm;
        pc.lba = lba;
        pc.blocks = blocks;
    }

    /// A write-behind child ended. A failure fails its member (reads of
    /// write-mostly members wait for this piece's range lock, so none reads
    /// it before the failed flag is set); a parent still held (its fast
    /// copies all failed) waits for that failure's commit (R1).
    fn behind_child_done(&mut self, piece: u32, c: u32, ok: bool) {
        let member = self.children[c as usize].io.member;
        let slot = self.pieces[piece as usize].parent;
        if !ok {
            let inc = self.children[c as usize].inc;
            self.fail_member(member, inc);
            if slot != NONE {
                self.note_wait(slot, bit(member as usize), inc);
            }
        }
        self.free_child(c);
        let pc = &mut self.pieces[piece as usize];
        pc.behind -= 1;
        if pc.behind == 0 && pc.pending == 0 {
            self.end_piece(piece);
        }
    }

    /// Pick the next copy for a mirrored read piece and issue it: among
    /// the live, current copies not yet tried, those not write-mostly if
    /// any; the one continuing this channel's sequential stream on its
    /// member, else the one with the fewest reads and writes outstanding on
    /// this channel. After a read error the retry runs under the range
    /// lock, so the rewrite of the bad copy cannot overwrite a newer write.
    /// A read of a member with write-behind writes in flight (on any
    /// channel) also runs under it: write-behind pieces hold their range
    /// lock until their write-mostly copies are done, so the read cannot
    /// overtake one of its range (R5: it waits for the overlapping ones
    /// only, at lock granularity), and while it waits no new write goes
    /// behind (md's rule, so the wait ends). If no copy is left, the piece
    /// fails.
    fn mirror_read_next(&mut self, slot: u32, c: u32) {
        let ChildKind::MirrorRead {
            lba,
            blocks,
            bad,
            locked,
            resync,
            ..
        } = self.children[c as usize].kind
        else {
            unreachable!()
        };
        let m = self.geom.map(lba, blocks);
        debug_assert!(m.len >= blocks);
        match self.pick_copy(lba, m.copies(), blocks, bad, resync) {
            Some(l) if !locked && (bad != 0 || self.shared.behind_to(l.member as usize) != 0) => {
                // Wait for the range lock before reading.
                let wm_wait = bad == 0;
                if wm_wait {
                    self.shared.behind_reader(true);
                }
                self.children[c as usize].kind = ChildKind::MirrorRead {
                    lba,
                    blocks,
                    bad,
                    locked,
                    resync,
                    wm_wait,
                };
                self.fix_queue.push_back(c);
                self.waited = !0;
            }
            Some(l) => {
                self.note_read(l, blocks);
                let buf = self.parent_buf(slot, lba, blocks);
                self.issue(c, l.member, ChildOp::Read, l.lba, blocks, false, buf);
            }
            None => {
                self.parents[slot as usize].as_mut().unwrap().error = true;
                self.end_mirror_piece(slot, c, locked);
            }
        }
    }

    /// The copy a read of array blocks `[lba, lba + blocks)`, mapped to
    /// `copies`, goes to: among the live, current copies not in `bad`,
    /// those not write-mostly if any; the first of them where the copies
    /// may disagree (md's read_balance past the resync point: the resync,
    /// which reads that copy too — `resync` — makes the others match it, so
    /// the block reads the same before and after), else the one continuing
    /// this channel's sequential stream on its member, else the one with
    /// the fewest I/Os outstanding here.
    fn pick_copy(
        &self,
        lba: u64,
        copies: &[Loc],
        blocks: u64,
        bad: u64,
        resync: bool,
    ) -> Option<Loc> {
        if let [l] = copies {
            // One copy (raid0, linear): no choice to make.
            let b = bit(l.member as usize);
            return ((self.dead() | bad) & b == 0 && self.stale(b, l.lba, blocks) == 0)
                .then_some(*l);
        }
        let dead = self.dead() | bad;
        let usable = copies
            .iter()
            .filter(|l| {
                dead & bit(l.member as usize) == 0
                    && self.stale(bit(l.member as usize), l.lba, blocks) == 0
            })
            .fold(0, |a, l| a | bit(l.member as usize));
        let fast = usable & !self.state.write_mostly;
        let pick = if fast != 0 { fast } else { usable };
        let mut cands = copies.iter().filter(|l| pick & bit(l.member as usize) != 0);
        if resync || self.unsynced(lba, blocks) {
            return cands.next().copied();
        }
        cands
            .clone()
            .find(|l| self.next_read[l.member as usize] == l.lba)
            .or_else(|| cands.min_by_key(|l| self.member_stats[l.member as usize].outstanding))
            .copied()
    }

    /// A read of `blocks` goes to copy `l`.
    fn note_read(&mut self, l: Loc, blocks: u64) {
        if self.write_mostly(l.member) {
            self.stats.write_mostly_reads += 1;
        }
        self.next_read[l.member as usize] = l.lba + blocks;
    }

    fn end_mirror_piece(&mut self, slot: u32, c: u32, locked: bool) {
        if locked {
            let lba = match self.children[c as usize].kind {
                ChildKind::MirrorRead { lba, .. } | ChildKind::MirrorFix { lba, .. } => lba,
                _ => unreachable!(),
            };
            let k = self.range_lock(lba).expect("locked piece without a lock");
            self.drop_lock(k);
        }
        self.free_child(c);
        self.unit_done(slot);
    }

    /// Try to lock the ranges of reads waiting to retry after an error.
    fn run_fix_queue(&mut self) {
        let mut i = 0;
        while i < self.fix_queue.len() {
            let c = self.fix_queue[i];
            let ChildKind::MirrorRead {
                lba,
                blocks,
                bad,
                locked: false,
                resync,
                wm_wait,
            } = self.children[c as usize].kind
            else {
                unreachable!()
            };
            let k = self
                .range_lock(lba)
                .expect("mirror retry on a level without copies");
            if self.take_lock(k) {
                self.fix_queue.remove(i);
                if wm_wait {
                    self.shared.behind_reader(false);
                }
                self.children[c as usize].kind = ChildKind::MirrorRead {
                    lba,
                    blocks,
                    bad,
                    locked: true,
                    resync,
                    wm_wait: false,
                };
                let Owner::Parent(slot) = self.children[c as usize].owner else {
                    unreachable!()
                };
                self.mirror_read_next(slot, c);
            } else {
                i += 1;
            }
        }
    }

    fn mirror_fix_next(&mut self, slot: u32, c: u32) {
        let ChildKind::MirrorFix { lba, blocks, todo } = self.children[c as usize].kind else {
            unreachable!()
        };
        let todo = todo & !self.dead();
        let m = self.geom.map(lba, blocks);
        if let Some(l) = m
            .copies()
            .iter()
            .find(|l| todo & bit(l.member as usize) != 0)
            .copied()
        {
            self.children[c as usize].kind = ChildKind::MirrorFix {
                lba,
                blocks,
                todo: todo & !bit(l.member as usize),
            };
            let buf = self.parent_buf(slot, lba, blocks);
            self.issue(c, l.member, ChildOp::Write, l.lba, blocks, false, buf);
        } else {
            self.end_mirror_piece(slot, c, true);
        }
    }

    fn parent_child_done(&mut self, slot: u32, c: u32, ok: bool) {
        let member = self.children[c as usize].io.member;
        match self.children[c as usize].kind {
            ChildKind::MirrorRead {
                lba,
                blocks,
                bad,
                locked,
                resync,
                ..
            } => {
                if ok && resync {
                    // Write what was read over every other live copy; a
                    // rebuild only over the member it rebuilds (md's
                    // recovery), so it changes nothing the array trusts,
                    // and over the copies that failed the read (md's
                    // fix_sync_read_error, as a user read's retry does).
                    let only = self.parents[slot as usize]
                        .as_ref()
                        .unwrap()
                        .op
                        .resync_targets();
                    if bad != 0 {
                        self.stats.read_errors_corrected += 1;
                    }
                    let todo = self
                        .geom
                        .map(lba, blocks)
                        .copies()
                        .iter()
                        .fold(0, |a, l| a | bit(l.member as usize))
                        & !bit(member as usize)
                        & (only | bad);
                    self.children[c as usize].kind = ChildKind::MirrorFix { lba, blocks, todo };
                    self.mirror_fix_next(slot, c);
                } else if ok {
                    if bad != 0 {
                        debug_assert!(locked);
                        self.stats.read_errors_corrected += 1;
                        self.children[c as usize].kind = ChildKind::MirrorFix {
                            lba,
                            blocks,
                            todo: bad,
                        };
                        self.mirror_fix_next(slot, c);
                    } else {
                        self.end_mirror_piece(slot, c, locked);
                    }
                } else {
                    self.children[c as usize].kind = ChildKind::MirrorRead {
                        lba,
                        blocks,
                        bad: bad | bit(member as usize),
                        locked,
                        resync,
                        wm_wait: false,
                    };
                    self.mirror_read_next(slot, c);
                }
            }
            ChildKind::MirrorFix { .. } => {
                if !ok {
                    // The data the read returned is good; this member is not.
                    self.fail_member(member, self.children[c as usize].inc);
                    self.rebuild_write_failed(slot, member);
                }
                self.mirror_fix_next(slot, c);
            }
            ChildKind::CheckRead { piece, .. } => {
                if !ok {
                    // Left out of the comparison; a read error does not
                    // fail a member (as for any read).
                    if let Some(c) = self.pieces[piece as usize].check.as_mut() {
                        c.bad |= bit(member as usize);
                    }
                }
                self.free_child(c);
                self.piece_done(piece);
            }
            ChildKind::Piece(piece) => {
                if !ok {
                    let inc = self.children[c as usize].inc;
                    self.fail_member(member, inc);
                    self.note_wait(slot, bit(member as usize), inc);
                } else {
                    // Of a piece written behind (`read_mask` is empty
                    // otherwise): md's R1BIO_Uptodate, the member still
                    // in sync, and not failed, when its write ends.
                    let b = bit(member as usize);
                    if self.pieces[piece as usize].read_mask & b != 0
                        && self.dead() & b == 0
                        && self.state.readded[member as usize] == self.children[c as usize].inc
                    {
                        self.pieces[piece as usize].fast_ok = true;
                    }
                }
                self.free_child(c);
                self.piece_done(piece);
            }
            ChildKind::StripRead {
                stripe,
                data,
                row,
                rows,
            } => {
                self.free_child(c);
                if ok {
                    self.unit_done(slot);
                } else {
                    // Reconstruct from the other strips, then rewrite it.
                    self.recon_queue
                        .push_back((slot, stripe, data, row, rows, true));
                    self.waited = !0;
                }
            }
            ChildKind::Plain => {
                let op = self.children[c as usize].io.op;
                if !ok && op != ChildOp::Reset {
                    let inc = self.children[c as usize].inc;
                    self.fail_member(member, inc);
                    self.note_wait(slot, bit(member as usize), inc);
                }
                self.free_child(c);
                self.unit_done(slot);
            }
            ChildKind::Unit | ChildKind::Behind(_) => unreachable!(),
        }
    }

    // ----- parity levels -------------------------------------------------

    fn dispatch_parity_read(&mut self, slot: u32, end: u64) -> Step {
        loop {
            let cursor = self.parents[slot as usize].as_ref().unwrap().cursor;
            if cursor >= end {
                return Step::Done;
            }
            let (stripe, d, row) = self.geom.locate(cursor);
            let rows = (self.geom.strip_blocks() - row)
                .min(self.max_rows - row % self.max_rows)
                .min(end - cursor);
            let map = self.geom.stripe(stripe);
            let member = map.data[d];
            let m = bit(member as usize);
            if (self.dead() | self.stale(m, map.member_lba + row, rows)) & m != 0 {
                match self.try_start_unit(
                    slot,
                    stripe,
                    row,
                    rows,
                    UnitKind::Recon {
                        target: d,
                        fix: None,
                    },
                ) {
                    Ok(()) => {}
                    Err(s) => return s,
                }
            } else {
                if self.free_children.is_empty() {
                    return Step::WaitPool;
                }
                let c = self.alloc_child(
                    Owner::Parent(slot),
                    ChildKind::StripRead {
                        stripe,
                        data: d as u16,
                        row,
                        rows,
                    },
                );
                self.parents[slot as usize].as_mut().unwrap().pending += 1;
                let buf = self.parent_buf(slot, cursor, rows);
                self.issue(
                    c,
                    member,
                    ChildOp::Read,
                    map.member_lba + row,
                    rows,
                    false,
                    buf,
                );
            }
            self.parents[slot as usize].as_mut().unwrap().cursor += rows;
        }
    }

    /// Start a recon unit for a failed direct read; false if it must wait.
    fn start_recon(
        &mut self,
        slot: u32,
        stripe: u64,
        d: u16,
        row: u64,
        rows: u64,
        fix: bool,
    ) -> bool {
        let map = self.geom.stripe(stripe);
        let fix = fix.then_some(map.data[d as usize]);
        // The parent's pending count already includes this piece.
        self.parents[slot as usize].as_mut().unwrap().pending -= 1;
        let r = self.try_start_unit(
            slot,
            stripe,
            row,
            rows,
            UnitKind::Recon {
                target: d as usize,
                fix,
            },
        );
        if r.is_err() {
            self.parents[slot as usize].as_mut().unwrap().pending += 1;
        }
        r.is_ok()
    }

    /// The next write unit of a parity write at or after `(stripe, row)`:
    /// a row range over which each data strip is either wholly written or
    /// untouched, so one plan serves every member.
    fn next_write_unit(
        &self,
        lba: u64,
        end: u64,
        mut stripe: u64,
        mut row: u64,
    ) -> Option<(u64, u64, u64, u64)> {
        let strip = self.geom.strip_blocks();
        let sdb = self.geom.stripe_data_blocks();
        loop {
            let s0 = stripe * sdb;
            if s0 >= end {
                return None;
            }
            let a = lba.max(s0) - s0;
            let b = end.min(s0 + sdb) - s0;
            let (da, db) = ((a / strip) as usize, ((b - 1) / strip) as usize);
            let (os, oe) = (a % strip, (b - 1) % strip + 1);
            while row < strip {
                let mut next = strip.min((row / self.max_rows + 1) * self.max_rows);
                for bp in [os, oe] {
                    if bp > row && bp < next {
                        next = bp;
                    }
                }
                let mut cov = 0u64;
                for i in da..=db {
                    let lo = if i == da { os } else { 0 };
                    let hi = if i == db { oe } else { strip };
                    if lo <= row && next <= hi {
                        cov |= bit(i);
                    }
                }
                if cov != 0 {
                    return Some((stripe, row, next - row, cov));
                }
                row = next;
            }
            stripe += 1;
            row = 0;
        }
    }

    /// Resync units: every row granule of every stripe that `[.., end)`
    /// touches, from `(stripe, row)` on.
    fn next_resync_unit(
        &self,
        end: u64,
        mut stripe: u64,
        mut row: u64,
    ) -> Option<(u64, u64, u64, u64)> {
        let strip = self.geom.strip_blocks();
        if row >= strip {
            stripe += 1;
            row = 0;
        }
        if stripe * self.geom.stripe_data_blocks() >= end {
            return None;
        }
        Some((stripe, row, self.max_rows.min(strip - row), 0))
    }

    fn dispatch_parity_write(&mut self, slot: u32, end: u64) -> Step {
        loop {
            let (lba, s, r) = {
                let p = self.parents[slot as usize].as_ref().unwrap();
                (p.lba, p.cursor_stripe, p.cursor_row)
            };
            let op = self.parents[slot as usize].as_ref().unwrap().op;
            let resync = op.resyncs() || op.checks();
            let next = if resync {
                self.next_resync_unit(end, s, r)
            } else {
                self.next_write_unit(lba, end, s, r)
            };
            let Some((stripe, row, rows, cov)) = next else {
                return Step::Done;
            };
            let kind = if op.checks() {
                UnitKind::Check {
                    repair: op == IoType::Repair,
                }
            } else if resync {
                UnitKind::Resync
            } else {
                UnitKind::Write { cov }
            };
            let started = self.try_start_unit(slot, stripe, row, rows, kind);
            let p = self.parents[slot as usize].as_mut().unwrap();
            p.cursor_stripe = stripe;
            p.cursor_row = row;
            if let Err(step) = started {
                return step;
            }
            p.cursor_row = row + rows;
        }
    }

    /// Take a stripe context and the stripe's lock and start a unit, or say
    /// what to wait for. Nothing is held on failure.
    fn try_start_unit(
        &mut self,
        slot: u32,
        stripe: u64,
        row: u64,
        rows: u64,
        kind: UnitKind,
    ) -> Result<(), Step> {
        let Some(&ctx) = self.free_stripes.last() else {
            return Err(Step::WaitPool);
        };
        // Units never cross a multiple of max_rows, so the lock covers the
        // stripe's rows in that granule only: units of one stripe over
        // other rows proceed in parallel.
        let granules = self.geom.strip_blocks().div_ceil(self.max_rows);
        let lock = self
            .shared
            .locks
            .key(stripe * granules + row / self.max_rows);
        if !self.take_lock(lock) {
            return Err(Step::WaitLock);
        }
        self.free_stripes.pop();
        let map = self.geom.stripe(stripe);
        let u = &mut self.stripes[ctx as usize];
        debug_assert!(!u.busy);
        u.busy = true;
        u.parent = slot;
        u.kind = kind;
        u.phase = Phase::Idle;
        u.stripe = stripe;
        u.row = row;
        u.rows = rows;
        u.map = map;
        u.lock = lock;
        u.pending = 0;
        u.have = 0;
        u.bad = 0;
        u.reading = 0;
        u.error = false;
        self.parents[slot as usize].as_mut().unwrap().pending += 1;
        if matches!(kind, UnitKind::Recon { .. }) {
            self.stats.reconstruct_reads += 1;
        }
        self.advance_unit(ctx);
        Ok(())
    }

    fn data_mask(map: &StripeMap, data: u64) -> u64 {
        (0..map.ndata)
            .filter(|i| data & bit(*i) != 0)
            .fold(0, |a, i| a | bit(map.data[i] as usize))
    }

    fn parity_mask(map: &StripeMap) -> u64 {
        bit(map.p as usize) | map.q.map_or(0, |q| bit(q as usize))
    }

    /// Whether stripe `s`'s parity may not match its data yet.
    fn stripe_unsynced(&self, s: u64) -> bool {
        self.unsynced(s * self.geom.stripe_data_blocks(), 1)
    }

    /// Whether the copies or parity of array blocks `[lba, lba + blocks)`
    /// may disagree yet: a bitmap chunk of theirs still needs a resync, or
    /// (without a bitmap) they reach where the resync has not been yet.
    #[inline(always)]
    fn unsynced(&self, lba: u64, blocks: u64) -> bool {
        match &self.shared.bitmap {
            Some(bm) => bm.needed_count() != 0 && Self::chunks_needed(bm, lba, blocks),
            None => lba + blocks > self.shared.unsynced_from(),
        }
    }

    #[cold]
    fn chunks_needed(bm: &crate::bitmap::Bitmap, lba: u64, blocks: u64) -> bool {
        let (c0, c1) = bm.geom().chunks_of(lba, blocks);
        (c0..=c1).any(|c| bm.needed(c))
    }

    /// Decide the unit's next step from what is readable and what was read.
    fn plan(&self, ctx: u32) -> Plan {
        let u = &self.stripes[ctx as usize];
        let map = &u.map;
        let nparity = if map.q.is_some() { 2 } else { 1 };
        let all_data = Self::data_mask(map, (1u64 << map.ndata) - 1);
        let par = Self::parity_mask(map);
        let dead_w = self.dead();
        let dead_r = dead_w | u.bad | self.unit_stale(u);
        let missing = |want: u64| want & !u.have;
        match u.kind {
            UnitKind::Resync => {
                // Read every data strip; parity is recomputed, not read. A
                // data strip that cannot be read (a member being rebuilt)
                // is recovered from the rest and the parity.
                let unknown = all_data & dead_r;
                let reads = if unknown == 0 {
                    all_data
                } else if ((all_data | par) & dead_r).count_ones() <= nparity {
                    (all_data | par) & !dead_r
                } else {
                    return Plan::Fail;
                };
                if missing(reads) != 0 {
                    Plan::Read(missing(reads))
                } else {
                    Plan::Go(Method::Rcw)
                }
            }
            UnitKind::Check { .. } => {
                // Everything is read and compared; a degraded stripe is not
                // checked (nothing to compare the parity with).
                let all = all_data | par;
                if all & dead_r != 0 {
                    return Plan::Go(Method::Rcw);
                }
                if missing(all) != 0 {
                    Plan::Read(missing(all))
                } else {
                    Plan::Go(Method::Rcw)
                }
            }
            UnitKind::Recon { target, .. } => {
                let unknown = ((all_data | par) & dead_r) | bit(map.data[target] as usize);
                if unknown.count_ones() > nparity {
                    return Plan::Fail;
                }
                let reads = (all_data | par) & !unknown;
                if missing(reads) != 0 {
                    Plan::Read(missing(reads))
                } else {
                    Plan::Go(Method::Rcw)
                }
            }
            UnitKind::Write { cov } => {
                let full = (1u64 << map.ndata) - 1;
                if cov == full {
                    return Plan::Go(Method::Full);
                }
                let par_w = par & !dead_w;
                if par_w == 0 {
                    return Plan::Go(Method::DataOnly);
                }
                let cov_m = Self::data_mask(map, cov);
                let unc_m = all_data & !cov_m;
                let rmw_ok = (cov_m | par_w) & dead_r == 0;
                let rmw_reads = cov_m | par_w;
                let (rcw_ok, rcw_reads) = if unc_m & dead_r == 0 {
                    (true, unc_m)
                } else {
                    let unknown = (all_data | par) & dead_r;
                    (unknown.count_ones() <= nparity, (all_data | par) & !dead_r)
                };
                let cost = |m: u64| missing(m).count_ones();
                // md's rule: where a resync has not been yet, the parity
                // may not match the data, and a read-modify-write would
                // carry that on; a reconstruct-write makes the stripe right
                // (unless a member is out, when there is nothing to
                // resync from anyway).
                let rmw_ok = rmw_ok && (dead_r != 0 || !self.stripe_unsynced(u.stripe));
                let (method, reads) = if rmw_ok && (!rcw_ok || cost(rmw_reads) < cost(rcw_reads)) {
                    (Method::Rmw, rmw_reads)
                } else if rcw_ok {
                    (Method::Rcw, rcw_reads)
                } else {
                    return Plan::Fail;
                };
                if missing(reads) != 0 {
                    Plan::Read(missing(reads))
                } else {
                    Plan::Go(method)
                }
            }
        }
    }

    fn region(&self) -> usize {
        (self.max_rows * self.bs) as usize
    }

    fn advance_unit(&mut self, ctx: u32) {
        match self.plan(ctx) {
            Plan::Fail => {
                self.stripes[ctx as usize].error = true;
                self.finish_unit(ctx);
            }
            Plan::Read(mask) => {
                let (first, lba, rows, region) = {
                    let u = &mut self.stripes[ctx as usize];
                    debug_assert_eq!(u.reading, 0);
                    u.phase = Phase::Read;
                    u.reading = mask;
                    u.pending = mask.count_ones();
                    (u.first_child, u.map.member_lba + u.row, u.rows, 0)
                };
                let _ = region;
                let len = (rows * self.bs) as usize;
                for m in members_of(mask) {
                    let c = first + m as u32;
                    self.children[c as usize].owner = Owner::Stripe(ctx);
                    self.children[c as usize].kind = ChildKind::Unit;
                    let buf = ChildBuf::Scratch {
                        ctx,
                        off: m * self.region(),
                        len,
                    };
                    self.issue(c, m as u16, ChildOp::Read, lba, rows, false, buf);
                }
            }
            Plan::Go(method) => {
                if let UnitKind::Write { cov } = self.stripes[ctx as usize].kind {
                    let map = self.stripes[ctx as usize].map;
                    let targets = Self::data_mask(&map, cov) | Self::parity_mask(&map);
                    let slot = self.stripes[ctx as usize].parent;
                    self.wait_for(slot, targets & self.dead());
                }
                let writes = self.compute(ctx, method);
                let (first, lba, rows, slot, kind) = {
                    let u = &mut self.stripes[ctx as usize];
                    u.phase = Phase::Write;
                    u.pending = writes.count_ones();
                    (
                        u.first_child,
                        u.map.member_lba + u.row,
                        u.rows,
                        u.parent,
                        u.kind,
                    )
                };
                let (fua, zero) = {
                    let p = self.parents[slot as usize].as_ref().unwrap();
                    (p.fua, p.op != IoType::Write)
                };
                let len = (rows * self.bs) as usize;
                for m in members_of(writes) {
                    let c = first + m as u32;
                    self.children[c as usize].owner = Owner::Stripe(ctx);
                    self.children[c as usize].kind = ChildKind::Unit;
                    let (op, buf) = match self.new_data_of(ctx, m) {
                        Some(_) if zero && matches!(kind, UnitKind::Write { .. }) => {
                            (ChildOp::WriteZeroes, ChildBuf::None)
                        }
                        Some(alba) => (ChildOp::Write, self.parent_buf(slot, alba, rows)),
                        None => (
                            ChildOp::Write,
                            ChildBuf::Scratch {
                                ctx,
                                off: m * self.region(),
                                len,
                            },
                        ),
                    };
                    self.issue(c, m as u16, op, lba, rows, fua, buf);
                }
                if writes == 0 {
                    self.finish_unit(ctx);
                }
            }
        }
    }

    /// For a write unit: the array block of member `m`'s new data if `m`
    /// holds a written (covered) data strip of the unit.
    fn new_data_of(&self, ctx: u32, m: usize) -> Option<u64> {
        let u = &self.stripes[ctx as usize];
        let UnitKind::Write { cov } = u.kind else {
            return None;
        };
        (0..u.map.ndata)
            .find(|i| cov & bit(*i) != 0 && u.map.data[*i] as usize == m)
            .map(|i| {
                u.stripe * self.geom.stripe_data_blocks()
                    + i as u64 * self.geom.strip_blocks()
                    + u.row
            })
    }

    /// Do the unit's parity math in its scratch buffer; return the members
    /// to write.
    fn compute(&mut self, ctx: u32, method: Method) -> u64 {
        let dead_w = self.dead();
        let rec_mask = self.rec_mask;
        let stale = self.unit_stale(&self.stripes[ctx as usize]);
        let region = self.region();
        let bs = self.bs;
        let sdb = self.geom.stripe_data_blocks();
        let strip = self.geom.strip_blocks();
        let Channel {
            stripes,
            parents,
            zeros,
            stats,
            ..
        } = self;
        let u = &mut stripes[ctx as usize];
        let map = u.map;
        let len = (u.rows * bs) as usize;
        let parent = parents[u.parent as usize].as_mut().unwrap();
        let nmem = u.scratch.as_ref().len() / region - 1;
        let mut regs: [&mut [u8]; MAX_MEMBERS + 1] = std::array::from_fn(|_| &mut [][..]);
        for (i, r) in u
            .scratch
            .as_mut()
            .chunks_mut(region)
            .take(nmem + 1)
            .enumerate()
        {
            regs[i] = &mut r[..len];
        }
        let par = Self::parity_mask(&map);
        let all_data = Self::data_mask(&map, (1u64 << map.ndata) - 1);
        let dead_r = dead_w | u.bad | stale;
        // Slot order of data strips for Q.
        let mut by_slot = [0usize; MAX_MEMBERS];
        for i in 0..map.ndata {
            by_slot[map.q_slot[i] as usize] = i;
        }
        let p_off =
            |i: usize| ((u.stripe * sdb + i as u64 * strip + u.row - parent.lba) * bs) as usize;
        match u.kind {
            UnitKind::Resync => {
                // A rebuild writes only the member it rebuilds (md's
                // recovery): it changes nothing the array trusts.
                let only = parent.op.resync_targets();
                if parent
                    .op
                    .rebuild_cannot_write(all_data | par, rec_mask & !dead_w)
                {
                    // It cannot write the member it rebuilds (failed, or no
                    // longer being rebuilt): the window fails.
                    u.error = true;
                    return 0;
                }
                let unknown = (all_data | par) & dead_r;
                if all_data & unknown != 0 {
                    // A data strip of a member being rebuilt (or out):
                    // recover it (and the parity). A rebuild writes what
                    // is writable of it; a resync also makes the parity
                    // again from the data, the recovered strip included,
                    // so a raid6 missing a member gets P and Q that agree
                    // (md regenerates both).
                    recover(&mut regs, &map, unknown);
                    if matches!(parent.op, IoType::Rebuild { .. }) {
                        stats.resync_units += 1;
                        return unknown & !dead_w & only;
                    }
                }
                let mut data: [&[u8]; MAX_MEMBERS] = [&[]; MAX_MEMBERS];
                let (pq, rest) = take_parity(&mut regs, &map);
                for s in 0..map.ndata {
                    data[s] = &*rest[map.data[by_slot[s]] as usize];
                }
                gen_into(pq, &data[..map.ndata]);
                stats.resync_units += 1;
                (par | unknown) & !dead_w & only
            }
            UnitKind::Check { repair } => {
                if (all_data | par) & dead_r != 0 {
                    return 0; // degraded: not checked
                }
                let rows = u.rows as usize;
                let bsz = bs as usize;
                assert!(rows <= 64 * 64, "check unit over 4096 rows");
                let mut flags = [0u64; 64];
                let spare = std::mem::take(&mut regs[nmem]);
                let ((p_old, q_old), rest) = take_parity(&mut regs, &map);
                let mut data: [&[u8]; MAX_MEMBERS] = [&[]; MAX_MEMBERS];
                for sl in 0..map.ndata {
                    data[sl] = &*rest[map.data[by_slot[sl]] as usize];
                }
                let data = &data[..map.ndata];
                // P: the data XORed, in the spare, against what P holds.
                parity::xor_gen(spare, data);
                let p_bad = mark_rows(rows, bsz, spare, p_old, &mut flags);
                let mut writes = 0;
                match q_old {
                    None => {
                        if repair && p_bad {
                            p_old.copy_from_slice(spare);
                            writes |= bit(map.p as usize);
                        }
                    }
                    Some(q_old) => {
                        // P's region takes the new P (compared already),
                        // the spare the new Q.
                        parity::gen_pq(data, p_old, spare);
                        let q_bad = mark_rows(rows, bsz, spare, q_old, &mut flags);
                        if repair && p_bad {
                            writes |= bit(map.p as usize);
                        }
                        if repair && q_bad {
                            q_old.copy_from_slice(spare);
                            writes |= bit(map.q.unwrap() as usize);
                        }
                    }
                }
                stats.mismatch_blocks +=
                    flags.iter().map(|f| u64::from(f.count_ones())).sum::<u64>();
                writes & !dead_w
            }
            UnitKind::Recon { target, fix } => {
                let unknown = ((all_data | par) & dead_r) | bit(map.data[target] as usize);
                recover(&mut regs, &map, unknown);
                let off = p_off(target);
                parent.buf.as_mut().unwrap().as_mut()[off..off + len]
                    .copy_from_slice(regs[map.data[target] as usize]);
                match fix {
                    Some(m) if dead_w & bit(m as usize) == 0 => bit(m as usize),
                    _ => 0,
                }
            }
            UnitKind::Write { cov } => {
                let zero = parent.op != IoType::Write;
                let pbuf: &[u8] = match (&parent.buf, zero) {
                    (Some(b), false) => b.as_ref(),
                    _ => &[],
                };
                let new = |i: usize| -> &[u8] {
                    if zero {
                        &zeros[..len]
                    } else {
                        &pbuf[p_off(i)..p_off(i) + len]
                    }
                };
                let cov_m = Self::data_mask(&map, cov);
                let par_w = par & !dead_w;
                let mut writes = (cov_m | par_w) & !dead_w;
                match method {
                    Method::DataOnly => {}
                    Method::Full => {
                        stats.full_stripe += 1;
                        let mut data: [&[u8]; MAX_MEMBERS] = [&[]; MAX_MEMBERS];
                        for s in 0..map.ndata {
                            data[s] = new(by_slot[s]);
                        }
                        gen_parity(&mut regs, &map, &data[..map.ndata]);
                    }
                    Method::Rmw => {
                        stats.rmw += 1;
                        let (spare, rest) = regs.split_at_mut(nmem + 1).0.split_last_mut().unwrap();
                        for i in 0..map.ndata {
                            if cov & bit(i) == 0 {
                                continue;
                            }
                            let dm = map.data[i] as usize;
                            spare.copy_from_slice(rest[dm]);
                            parity::xor_into(spare, new(i));
                            if par_w & bit(map.p as usize) != 0 {
                                parity::xor_into(rest[map.p as usize], spare);
                            }
                            if let Some(q) = map.q.filter(|q| par_w & bit(*q as usize) != 0) {
                                parity::q_update(rest[q as usize], spare, map.q_slot[i] as usize);
                            }
                        }
                    }
                    Method::Rcw => {
                        stats.rcw += 1;
                        let unknown = (all_data | par) & dead_r;
                        let unc_unknown = unknown & all_data & !cov_m;
                        if unc_unknown != 0 {
                            // Old contents of unreadable strips, from parity.
                            recover(&mut regs, &map, unknown);
                            // Rewrite what could not be read but can be written.
                            writes |= unc_unknown & u.bad & !dead_w;
                        }
                        let (pq, rest) = take_parity(&mut regs, &map);
                        let mut data: [&[u8]; MAX_MEMBERS] = [&[]; MAX_MEMBERS];
                        for s in 0..map.ndata {
                            let i = by_slot[s];
                            data[s] = if cov & bit(i) != 0 {
                                new(i)
                            } else {
                                &*rest[map.data[i] as usize]
                            };
                        }
                        gen_into(pq, &data[..map.ndata]);
                    }
                }
                writes
            }
        }
    }

    fn unit_child_done(&mut self, ctx: u32, c: u32, ok: bool) {
        let m = self.children[c as usize].io.member as usize;
        let child_inc = self.children[c as usize].inc;
        let ch = &mut self.children[c as usize];
        ch.owner = Owner::Free;
        ch.gen = ch.gen.wrapping_add(1);
        let u = &mut self.stripes[ctx as usize];
        assert!(u.pending > 0);
        u.pending -= 1;
        let phase = u.phase;
        match phase {
            Phase::Read => {
                u.reading &= !bit(m);
                if ok {
                    u.have |= bit(m);
                } else {
                    u.bad |= bit(m);
                }
            }
            Phase::Write => {
                if !ok {
                    let is_read = matches!(u.kind, UnitKind::Recon { .. });
                    let slot = u.parent;
                    if !is_read {
                        self.note_wait(slot, bit(m), child_inc);
                    }
                    self.fail_member(m as u16, child_inc);
                    self.rebuild_write_failed(slot, m as u16);
                }
            }
            Phase::Idle => unreachable!("child of an idle stripe context"),
        }
        let u = &self.stripes[ctx as usize];
        if u.pending == 0 {
            match phase {
                Phase::Read => self.advance_unit(ctx),
                _ => self.finish_unit(ctx),
            }
        }
    }

    /// A write of parent `slot` to `member` failed: if the parent is a
    /// window of the member's rebuild, it fails, so the member is not
    /// recorded current past blocks it may not hold (its rebuild ends with
    /// it). A bitmap would not cover them: a rebuild sets no bits.
    fn rebuild_write_failed(&mut self, slot: u32, member: u16) {
        let p = self.parents[slot as usize].as_mut().unwrap();
        if p.op == (IoType::Rebuild { member }) {
            p.error = true;
        }
    }

    fn finish_unit(&mut self, ctx: u32) {
        let u = &mut self.stripes[ctx as usize];
        debug_assert!(u.busy && u.pending == 0);
        u.busy = false;
        u.phase = Phase::Idle;
        let (slot, error, lock) = (u.parent, u.error, u.lock);
        self.drop_lock(lock);
        self.free_stripes.push(ctx);
        self.parents[slot as usize].as_mut().unwrap().error |= error;
        self.unit_done(slot);
    }
}

enum Step {
    Done,
    WaitPool,
    WaitLock,
}

enum Plan {
    Fail,
    Read(u64),
    Go(Method),
}

/// Take P (and Q) regions out of `regs`, leaving the data regions.
#[allow(clippy::type_complexity)]
fn take_parity<'a, 'b>(
    regs: &'b mut [&'a mut [u8]; MAX_MEMBERS + 1],
    map: &StripeMap,
) -> (
    (&'a mut [u8], Option<&'a mut [u8]>),
    &'b [&'a mut [u8]; MAX_MEMBERS + 1],
) {
    let p = std::mem::take(&mut regs[map.p as usize]);
    let q = map.q.map(|q| std::mem::take(&mut regs[q as usize]));
    ((p, q), regs)
}

/// Flag (in `flags`, one bit per row) the rows of `rows` blocks of `bs`
/// bytes where `a` and `b` differ; true if any does.
fn mark_rows(rows: usize, bs: usize, a: &[u8], b: &[u8], flags: &mut [u64; 64]) -> bool {
    let mut any = false;
    for r in 0..rows {
        if a[r * bs..(r + 1) * bs] != b[r * bs..(r + 1) * bs] {
            flags[r / 64] |= 1 << (r % 64);
            any = true;
        }
    }
    any
}

/// Parity of `data` (in Q-slot order) into P (and Q).
fn gen_into(pq: (&mut [u8], Option<&mut [u8]>), data: &[&[u8]]) {
    match pq {
        (p, Some(q)) => parity::gen_pq(data, p, q),
        (p, None) => parity::xor_gen(p, data),
    }
}

fn gen_parity(regs: &mut [&mut [u8]; MAX_MEMBERS + 1], map: &StripeMap, data: &[&[u8]]) {
    let (pq, _) = take_parity(regs, map);
    gen_into(pq, data);
    // Regions taken out are only views; the bytes live in the scratch buffer.
}

/// Rebuild the regions of the members in `unknown` (at most the level's
/// parity count) from the others.
fn recover(regs: &mut [&mut [u8]; MAX_MEMBERS + 1], map: &StripeMap, unknown: u64) {
    let n = map.ndata;
    match map.q {
        None => {
            // raid4/5: the one unknown strip is the XOR of all the others.
            debug_assert!(unknown.count_ones() == 1);
            let x = unknown.trailing_zeros() as usize;
            let dst = std::mem::take(&mut regs[x]);
            dst.fill(0);
            for i in 0..n {
                let m = map.data[i] as usize;
                if m != x {
                    parity::xor_into(dst, regs[m]);
                }
            }
            if map.p as usize != x {
                parity::xor_into(dst, regs[map.p as usize]);
            }
            regs[x] = dst;
        }
        Some(q) => {
            let mut blocks: [&mut [u8]; MAX_MEMBERS + 2] = std::array::from_fn(|_| &mut [][..]);
            let mut failed = [0usize; 2];
            let mut nf = 0;
            let mut order = [0usize; MAX_MEMBERS + 2];
            for i in 0..n {
                order[map.q_slot[i] as usize] = map.data[i] as usize;
            }
            order[n] = map.p as usize;
            order[n + 1] = q as usize;
            for (k, &m) in order[..n + 2].iter().enumerate() {
                blocks[k] = std::mem::take(&mut regs[m]);
                if unknown & bit(m) != 0 {
                    failed[nf] = k;
                    nf += 1;
                }
            }
            parity::raid6_recover(&mut blocks[..n + 2], &failed[..nf]);
            for (k, &m) in order[..n + 2].iter().enumerate() {
                regs[m] = std::mem::take(&mut blocks[k]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{GeometryParams, Level};
    use crate::state::MemberState;

    /// A minimal host: members in memory, children held until completed.
    struct Host {
        ch: Channel<Vec<u8>>,
        members: Vec<Vec<u8>>,
        held: Vec<ChildIo>,
        done: Vec<(u64, IoStatus, Option<Vec<u8>>)>,
        meta: Vec<u16>,
        /// Times the channel asked for the array to be marked dirty.
        dirty_asks: usize,
        /// Members whose writes fail.
        failing: u64,
    }

    impl Host {
        fn new(level: Level, n: usize, cfg: ChannelConfig) -> Host {
            Host::with(level, n, 64, cfg, |_| {}, false)
        }

        /// A host whose state `edit` adjusts, with a bitmap (every bit
        /// durable) if `bitmap`.
        fn with(
            level: Level,
            n: usize,
            member_blocks: u64,
            cfg: ChannelConfig,
            edit: impl FnOnce(&mut ArrayState),
            bitmap: bool,
        ) -> Host {
            Host::with_layout(level, None, n, member_blocks, cfg, edit, bitmap)
        }

        /// [`Host::with`] with md layout `layout` (None: the default).
        fn with_layout(
            level: Level,
            layout: Option<u32>,
            n: usize,
            member_blocks: u64,
            cfg: ChannelConfig,
            edit: impl FnOnce(&mut ArrayState),
            bitmap: bool,
        ) -> Host {
            let g = Geometry::new(&GeometryParams {
                level,
                layout,
                strip_size_kb: 4,
                block_size: 512,
                member_blocks: vec![member_blocks; n],
            })
            .unwrap();
            let bs = 512;
            let members = (0..n)
                .map(|m| vec![0; g.member_blocks(m) as usize * bs])
                .collect();
            let mut state = ArrayState::new_writable(n);
            edit(&mut state);
            let bm = bitmap.then(|| {
                crate::bitmap::Bitmap::new_durable(
                    crate::bitmap::BitmapGeom::new(&g, 4096).unwrap(),
                )
            });
            Host {
                ch: Channel::new(
                    Arc::new(g),
                    Arc::new(state),
                    Arc::new(crate::state::Shared::with_bitmap(1, bm)),
                    0,
                    cfg,
                    |l| vec![0; l],
                ),
                members,
                held: Vec::new(),
                done: Vec::new(),
                meta: Vec::new(),
                dirty_asks: 0,
                failing: 0,
            }
        }

        fn pump(&mut self) {
            while let Some(a) = self.ch.poll_action() {
                match a {
                    Action::Submit(io) => self.held.push(io),
                    Action::Complete { tag, status, buf } => self.done.push((tag, status, buf)),
                    Action::Meta(MetaRequest::MemberFailed { member, .. }) => {
                        self.meta.push(member)
                    }
                    Action::Meta(MetaRequest::MarkDirty { .. }) => self.dirty_asks += 1,
                    Action::Meta(_) => {}
                }
            }
        }

        /// Complete held child `i`.
        fn finish(&mut self, i: usize) {
            let io = self.held.remove(i);
            let (off, len) = (io.lba as usize * 512, io.blocks as usize * 512);
            let m = io.member as usize;
            let status = match io.op {
                ChildOp::Read => {
                    let src = self.members[m][off..off + len].to_vec();
                    self.ch.child_data(io.buf).copy_from_slice(&src);
                    ChildStatus::Success
                }
                ChildOp::Write if self.failing & bit(m) != 0 => ChildStatus::Error,
                ChildOp::Write => {
                    let src = self.ch.child_data(io.buf).to_vec();
                    self.members[m][off..off + len].copy_from_slice(&src);
                    ChildStatus::Success
                }
                _ => ChildStatus::Success,
            };
            self.ch.child_done(io.token, status);
            self.pump();
        }

        fn finish_all(&mut self) {
            while !self.held.is_empty() {
                self.finish(0);
            }
        }

        /// Resync (parity levels: no buffer) array block `lba`; it
        /// succeeds.
        fn resync_parity_block(&mut self, tag: u64, lba: u64) {
            let io = ParentIo {
                tag,
                op: IoType::Resync,
                lba,
                blocks: 1,
                fua: false,
                buf: None,
            };
            assert!(self.ch.submit(io).is_ok());
            self.pump();
            self.finish_all();
            let done = self.done.iter().find(|d| d.0 == tag).expect("resync done");
            assert_eq!(done.1, IoStatus::Success);
        }

        fn write(&mut self, tag: u64, lba: u64, blocks: u64, byte: u8) {
            assert!(self
                .ch
                .submit(parent(tag, IoType::Write, lba, blocks, byte))
                .is_ok());
            self.pump();
        }

        fn commit_faulty(&mut self, members: &[u16]) {
            let mut s = (**self.ch.state()).clone();
            for &m in members {
                s.members[m as usize] = MemberState::Faulty;
            }
            s.events += 1;
            s.offline = !crate::state::survives(self.ch.geometry(), s.faulty());
            let s = Arc::new(s);
            self.ch.apply_state(s.clone());
            self.ch.release(s);
            self.pump();
        }
    }

    #[test]
    fn r1_failed_write_waits_for_the_commit() {
        let mut h = Host::new(Level::Raid1, 2, ChannelConfig::default());
        h.failing = bit(1);
        h.write(7, 0, 8, 0xab);
        h.finish_all();
        assert_eq!(h.meta, vec![1], "the failure goes to the metadata path");
        assert!(
            h.done.is_empty(),
            "completed before the failure was committed"
        );
        h.commit_faulty(&[1]);
        assert_eq!(h.done.len(), 1);
        assert_eq!((h.done[0].0, h.done[0].1), (7, IoStatus::Success));
        // Later writes skip the faulty member.
        h.write(8, 0, 8, 0xcd);
        assert!(h.held.iter().all(|c| c.member == 0));
    }

    /// raid1 of 2, member 1 write-mostly, write-behind `wb`, bitmap on.
    fn wm_host(wb: u32) -> Host {
        wm_host_with(2, 1, wb, |_| {})
    }

    /// A raid1 of `n` with a bitmap, member `wm` write-mostly, write-behind
    /// `wb`, and `edit` to its state.
    fn wm_host_with(n: usize, wm: usize, wb: u32, edit: impl FnOnce(&mut ArrayState)) -> Host {
        Host::with(
            Level::Raid1,
            n,
            1024,
            ChannelConfig::default(),
            |s| {
                s.write_mostly = bit(wm);
                s.write_behind = wb;
                edit(s);
            },
            true,
        )
    }

    /// A read or write parent with a buffer of 512-byte blocks of `byte`.
    fn parent(tag: u64, op: IoType, lba: u64, blocks: u64, byte: u8) -> ParentIo<Vec<u8>> {
        ParentIo {
            tag,
            op,
            lba,
            blocks,
            fua: false,
            buf: Some(vec![byte; blocks as usize * 512]),
        }
    }

    fn read(h: &mut Host, tag: u64, lba: u64, blocks: u64) {
        let io = parent(tag, IoType::Read, lba, blocks, 0);
        assert!(h.ch.submit(io).is_ok());
        h.pump();
    }

    /// Held children going to `member`.
    fn to(h: &Host, member: u16) -> Vec<usize> {
        (0..h.held.len())
            .filter(|&i| h.held[i].member == member)
            .collect()
    }

    #[test]
    fn reads_avoid_write_mostly_members_and_balance_the_others() {
        let mut h = wm_host(0);
        for t in 0..8 {
            read(&mut h, t, t * 8, 8);
        }
        assert!(to(&h, 1).is_empty(), "read a write-mostly member");
        h.finish_all();
        // Without write-mostly, reads spread over both copies.
        let mut h = Host::new(Level::Raid1, 2, ChannelConfig::default());
        for t in 0..8 {
            read(&mut h, t, t * 8, 4); // not sequential: gaps between
        }
        assert_eq!((to(&h, 0).len(), to(&h, 1).len()), (4, 4));
        h.finish_all();
        // A sequential stream stays on one member even when the other has
        // fewer reads outstanding.
        read(&mut h, 20, 40, 4);
        let m = h.held[0].member;
        read(&mut h, 21, 44, 4);
        assert_eq!(h.held[1].member, m, "stream left its member");
        h.finish_all();
        assert_eq!(h.done.len(), 10);
    }

    /// md's read_balance where a resync has not been yet: there the copies
    /// may disagree (writes a crash cut short), so every read, the
    /// resync's own included, goes to the first readable copy that is not
    /// write-mostly (md's resync reads that one too); a block then reads
    /// the same before the resync and after it made the others match.
    /// Elsewhere reads balance.
    #[test]
    fn reads_where_copies_may_disagree_go_to_the_first_copy() {
        for (bitmap, wm) in [(false, None), (true, None), (true, Some(0usize))] {
            let mut h = Host::with(
                Level::Raid1,
                3,
                1024,
                ChannelConfig::default(),
                |s| s.write_mostly = wm.map_or(0, bit),
                bitmap,
            );
            let first = if wm == Some(0) { 1 } else { 0 };
            let shared = h.ch.shared().clone();
            let chunks = shared.bitmap.as_ref().map_or(0, |bm| bm.geom().chunks());
            match &shared.bitmap {
                Some(bm) => (0..chunks).for_each(|c| bm.set_flags(c, crate::bitmap::NEEDED)),
                None => shared.set_unsynced_from(0),
            }
            for t in 0..8 {
                read(&mut h, t, t * 8, 4); // not sequential
            }
            assert_eq!(
                to(&h, first).len(),
                8,
                "bitmap {bitmap} wm {wm:?}: reads left the first copy"
            );
            // The direct path (the lean one too) decides the same.
            for t in 0..8 {
                let d = h.ch.direct(IoType::Read, 512 + t * 8, 4);
                let d = d.unwrap_or_else(|| panic!("bitmap {bitmap} wm {wm:?}: no direct read"));
                assert_eq!(
                    d.target(0).member,
                    first,
                    "bitmap {bitmap} wm {wm:?}: direct read {t}"
                );
                h.ch.direct_done(&d);
            }
            // The resync window reads that copy too, though it is the
            // busiest.
            let io = ParentIo {
                tag: 50,
                op: IoType::Resync,
                lba: 256,
                blocks: 8,
                fua: false,
                buf: Some(vec![0; 8 * 512]),
            };
            assert!(h.ch.submit(io).is_ok());
            h.pump();
            assert_eq!(to(&h, first).len(), 9, "bitmap {bitmap} wm {wm:?}");
            h.finish_all();
            // In sync again: balanced.
            match &shared.bitmap {
                Some(bm) => (0..chunks).for_each(|c| bm.mark_synced(c)),
                None => shared.set_unsynced_from(u64::MAX),
            }
            for t in 0..8 {
                read(&mut h, 100 + t, t * 8, 4);
            }
            assert!(
                to(&h, first).len() < 8,
                "bitmap {bitmap} wm {wm:?}: not balanced once in sync"
            );
            h.finish_all();
        }
    }

    #[test]
    fn write_behind_completes_before_the_write_mostly_copy() {
        let mut h = wm_host(4);
        h.write(1, 0, 8, 0x5a);
        assert_eq!(h.held.len(), 2);
        let fast = to(&h, 0)[0];
        h.finish(fast);
        assert_eq!(h.done.len(), 1, "the write waited for the slow copy");
        assert_eq!(h.done[0].1, IoStatus::Success);
        assert_eq!(h.ch.stats().behind_writes, 1);
        assert_eq!(h.ch.shared().behind_in_flight(), 1);
        let bm = h.ch.shared().bitmap.as_ref().unwrap();
        assert_eq!(bm.writes(0), 1, "the bitmap chunk stays counted");
        // The behind copy is the data, though the parent buffer is gone.
        h.finish_all();
        assert!(h.members[1][..8 * 512].iter().all(|b| *b == 0x5a));
        assert_eq!(h.ch.shared().behind_in_flight(), 0);
        assert_eq!(h.ch.shared().bitmap.as_ref().unwrap().writes(0), 0);
        // At most `write_behind` pieces in flight: the fifth waits (each
        // in its own range lock granule).
        for t in 0..5 {
            h.write(10 + t, t * 128, 8, 1);
        }
        for i in to(&h, 0).into_iter().rev() {
            h.finish(i);
        }
        assert_eq!(h.done.len(), 5, "only four writes may go behind");
        assert_eq!(h.ch.stats().behind_writes, 5);
        h.finish_all();
        assert_eq!(h.done.len(), 6);
    }

    /// A write goes behind only where another copy is in sync: a fast
    /// member being rebuilt takes the write, but acknowledging it before
    /// the write-mostly copy lands would leave a crash nothing to resync
    /// from, past the recovery point and below it alike (a crash takes the
    /// rebuild back to its last checkpoint). md acknowledges such a write
    /// only once an in-sync copy has it (R1BIO_Uptodate).
    #[test]
    fn write_behind_needs_a_fast_copy_in_sync() {
        let mut h = wm_host_with(2, 1, 8, |s| s.members[0] = MemberState::Recovering(256));
        // Past the recovery point, below it, and once in sync again.
        for (tag, lba, in_sync) in [(1u64, 512u64, false), (2, 0, false), (3, 0, true)] {
            if in_sync {
                let mut s = (**h.ch.state()).clone();
                s.members[0] = MemberState::InSync;
                s.seq += 1;
                h.ch.apply_state(Arc::new(s));
                h.pump();
            }
            h.write(tag, lba, 8, tag as u8);
            assert_eq!(to(&h, 0).len(), 1, "member 0 takes the write");
            let fast = to(&h, 0)[0];
            h.finish(fast);
            assert_eq!(
                h.done.len() == tag as usize,
                in_sync,
                "write {tag}: acknowledged with its only copy in sync still behind, or not behind in sync"
            );
            assert_eq!(h.ch.stats().behind_writes, u64::from(in_sync));
            h.finish_all();
            assert_eq!(h.done[tag as usize - 1].1, IoStatus::Success);
            let at = lba as usize * 512;
            assert!(h.members[1][at..at + 8 * 512]
                .iter()
                .all(|b| *b == tag as u8));
        }
    }

    /// A fast copy counts for the early completion only if its member is
    /// still good when its write ends (md: In_sync and not Faulty then).
    /// Member 0 is seen failing before its write of a piece written
    /// behind lands: by another channel, or by an earlier write of this
    /// one that failed there.
    #[test]
    fn write_behind_ack_needs_the_fast_member_good_when_its_write_ends() {
        for other_channel in [true, false] {
            let mut h = wm_host(8);
            h.write(1, 0, 8, 0x41);
            h.write(2, 64, 8, 0x42);
            assert_eq!(h.ch.stats().behind_writes, 2);
            let on_member_0 = |h: &Host, lba: u64| {
                (0..h.held.len())
                    .find(|&i| h.held[i].member == 0 && h.held[i].lba == lba)
                    .unwrap()
            };
            if other_channel {
                h.ch.shared().set_failed(0, 0);
            } else {
                h.failing = bit(0);
                let c = on_member_0(&h, 0);
                h.finish(c); // write 1's copy on member 0 fails
                h.failing = 0;
            }
            let c = on_member_0(&h, 64);
            h.finish(c); // write 2's copy on member 0 lands
            h.commit_faulty(&[0]);
            assert!(
                h.done.iter().all(|d| d.0 != 2),
                "write 2 acknowledged with member 0 failed and its write-mostly copy behind"
            );
            h.finish_all();
            assert!(h.done.iter().any(|d| d.0 == 2 && d.1 == IoStatus::Success));
            assert!(h.members[1][64 * 512..72 * 512].iter().all(|b| *b == 0x42));
        }
    }

    #[test]
    fn r5_read_of_a_write_mostly_member_waits_for_write_behind() {
        let mut h = wm_host(8);
        h.write(1, 0, 8, 0x77);
        let fast = to(&h, 0)[0];
        h.finish(fast);
        assert_eq!(h.done.len(), 1);
        // The fast member fails: reads must go to the write-mostly one.
        h.commit_faulty(&[0]);
        read(&mut h, 2, 0, 8);
        assert!(
            h.held.iter().all(|c| c.op == ChildOp::Write),
            "read issued while a write-behind write of its range was in flight"
        );
        // No new write goes behind while the reader waits.
        h.write(3, 512, 8, 0x11);
        assert_eq!(h.ch.stats().behind_writes, 1);
        h.finish_all();
        let (_, st, buf) = h.done.iter().find(|d| d.0 == 2).unwrap();
        assert_eq!(*st, IoStatus::Success);
        assert!(
            buf.as_ref().unwrap().iter().all(|b| *b == 0x77),
            "stale read"
        );
        assert_eq!(h.ch.stats().write_mostly_reads, 1);
    }

    /// The parent of a write-behind piece goes before its write-mostly
    /// copies only once a copy in sync has the data. raid1 of 2: the fast
    /// copy fails. raid1 of 3: member 0's copy fails, and member 1, being
    /// rebuilt, takes the write but is no copy in sync (the piece went
    /// behind for member 0).
    #[test]
    fn write_behind_parent_waits_when_every_fast_copy_in_sync_failed() {
        let cases = [
            (wm_host(8), vec![0u16], 1),
            (
                wm_host_with(3, 2, 8, |s| s.members[1] = MemberState::Recovering(0)),
                vec![0, 1],
                2,
            ),
        ];
        for (mut h, fast, wm) in cases {
            h.failing = bit(0);
            h.write(1, 512, 8, 0x42);
            assert_eq!(
                h.ch.stats().behind_writes,
                1,
                "member 0 is in sync: it goes behind"
            );
            for m in fast {
                let c = to(&h, m)[0];
                h.finish(c);
            }
            assert_eq!(h.meta, vec![0]);
            h.commit_faulty(&[0]);
            assert!(
                h.done.is_empty(),
                "acknowledged with its only copy in sync still behind"
            );
            h.finish_all();
            assert_eq!(h.done[0].1, IoStatus::Success);
            assert!(h.members[wm][512 * 512..520 * 512]
                .iter()
                .all(|b| *b == 0x42));
        }
    }

    #[test]
    fn r1_waits_per_member_for_failures_of_different_devices() {
        // raid1 of 3: member 0 was brought back at publication 5 (its
        // failed flag, of the device before, 3, not yet cleared), member 1
        // at 7. A write skips member 0 (device 3 failed) and fails on
        // member 1 (device 7). Once member 1's failure is committed, the
        // write may complete: member 0's failure was of a device older than
        // the one the state has (5 > 3). One "newest device" for both would
        // make it wait for member 0 to come back after 7, forever.
        let mut h = Host::with(
            Level::Raid1,
            3,
            64,
            ChannelConfig::default(),
            |s| s.readded = vec![5, 7, 0],
            false,
        );
        h.ch.shared().set_failed(0, 3);
        h.failing = bit(1);
        h.write(1, 0, 8, 0x33);
        assert!(to(&h, 0).is_empty(), "wrote the failed member");
        h.finish_all();
        assert!(
            h.done.is_empty(),
            "completed before the failure was committed"
        );
        h.commit_faulty(&[1]);
        assert_eq!(h.done.len(), 1, "parked for good: {}", h.ch.describe());
        assert_eq!(h.done[0].1, IoStatus::Success);
    }

    fn bm_writes(h: &Host, c: u64) -> u32 {
        h.ch.shared().bitmap.as_ref().unwrap().writes(c)
    }

    #[test]
    fn direct_write_holds_its_range_lock_and_bitmap_count() {
        let mut h = Host::with(
            Level::Raid1,
            2,
            1024,
            ChannelConfig::default(),
            |_| {},
            true,
        );
        let d =
            h.ch.direct(IoType::Write, 0, 8)
                .expect("a healthy raid1 write");
        let t: Vec<(u16, u64)> = d.targets().map(|l| (l.member, l.lba)).collect();
        assert_eq!(t, vec![(0, 0), (1, 0)]);
        assert_eq!(bm_writes(&h, 0), 1, "R4: counted in its chunk");
        assert!(!h.ch.is_idle());
        // Direct writes exclude overlapping direct writes only.
        assert!(
            h.ch.direct(IoType::Write, 4, 8).is_none(),
            "overlapping direct writes"
        );
        assert!(d.lock().is_some());
        assert_eq!(
            h.ch.parkable(),
            d.lock(),
            "only a direct write holds it: the refused one may wait for it"
        );
        assert_eq!(h.ch.parkable(), None, "asked once per refusal");
        let r = h.ch.direct(IoType::Read, 0, 8).expect("reads take no lock");
        assert_eq!(h.ch.parkable(), None, "not refused");
        h.ch.direct_done(&r);
        let d2 =
            h.ch.direct(IoType::Write, 8, 8)
                .expect("same granule, other blocks");
        // A parent waits for the granule; meanwhile it is wanted, so no
        // new direct write shares it (no starvation).
        h.write(9, 16, 8, 0x11);
        assert!(h.held.is_empty(), "overtook a direct write's range lock");
        assert!(
            h.ch.direct(IoType::Write, 24, 8).is_none(),
            "shared a wanted lock"
        );
        assert_eq!(
            h.ch.parkable(),
            None,
            "a parent wants the lock: the general path queues behind it"
        );
        h.ch.direct_done(&d);
        h.pump();
        assert!(h.held.is_empty(), "ran with a direct write in its granule");
        h.ch.direct_done(&d2);
        h.pump();
        assert_eq!(
            h.held.len(),
            2,
            "the waiting parent runs once the lock is free"
        );
        h.finish_all();
        assert_eq!(h.done.len(), 1);
        assert_eq!(bm_writes(&h, 0), 0);
        assert!(h.ch.is_idle());
        let ms = h.ch.member_stats();
        assert_eq!((ms[0].writes, ms[1].writes, ms[0].outstanding), (3, 3, 0));
        assert!(
            h.ch.direct(IoType::Write, 0, 32).is_some(),
            "all locks free again"
        );
    }

    #[test]
    fn direct_is_refused_where_the_general_path_is_needed() {
        // A failed member: writes must wait for its commit (R1).
        let mut h = Host::new(Level::Raid1, 2, ChannelConfig::default());
        h.commit_faulty(&[1]);
        assert!(h.ch.direct(IoType::Write, 0, 8).is_none());
        let d =
            h.ch.direct(IoType::Read, 0, 8)
                .expect("a read of the survivor");
        assert_eq!(d.target(0).member, 0);
        h.ch.direct_done(&d);
        // Write-behind to a write-mostly copy; pieces crossing a strip.
        let mut h = wm_host(4);
        assert!(h.ch.direct(IoType::Write, 0, 8).is_none());
        let mut h = Host::new(Level::Raid0, 2, ChannelConfig::default());
        assert!(h.ch.direct(IoType::Read, 4, 8).is_none(), "crosses a strip");
        assert!(h.ch.direct(IoType::Read, 8, 8).is_some());
        assert!(h.ch.direct(IoType::Flush, 0, 0).is_none());
        // Bits not durable (R4): the write takes the general path.
        let mut h = Host::with(
            Level::Raid1,
            2,
            1024,
            ChannelConfig::default(),
            |_| {},
            true,
        );
        h.ch.shared()
            .bitmap
            .as_ref()
            .unwrap()
            .clear_flags(0, crate::bitmap::DURABLE);
        assert!(h.ch.direct(IoType::Write, 0, 8).is_none());
        assert_eq!(bm_writes(&h, 0), 0, "a refused direct write left a count");
    }

    #[test]
    fn lean_direct_decides_as_try_direct() {
        // Two channels over the same arrays, fed the same I/Os and
        // completions in the same order: one through direct() (the lean
        // path wherever Lean allows), one through try_direct's general
        // checks only. Every decision, every Direct and every counter
        // must agree, and the lean path must have taken part. Covered:
        // raid0 x3/x4, raid1 x2/x3, raid5 x4/x5 and raid6 x5/x6 (left-
        // and right-symmetric; raid1 and raid5 also with a bitmap), with
        // I/Os over strip and lock-granule ends and past the array's end,
        // a full channel, and a member failed by another channel (shared
        // mask only, state not yet applied).
        use crate::layout::raid5_layout::{LEFT_SYMMETRIC, RIGHT_SYMMETRIC};
        for (level, layout, n, bitmap) in [
            (Level::Raid0, None, 3, false),
            (Level::Raid0, None, 4, false),
            (Level::Raid1, None, 2, false),
            (Level::Raid1, None, 2, true),
            (Level::Raid1, None, 3, false),
            (Level::Raid5, Some(LEFT_SYMMETRIC), 4, false),
            (Level::Raid5, Some(RIGHT_SYMMETRIC), 5, true),
            (Level::Raid6, Some(LEFT_SYMMETRIC), 5, false),
            (Level::Raid6, Some(RIGHT_SYMMETRIC), 6, false),
        ] {
            let cfg = ChannelConfig {
                max_parents: 24,
                ..ChannelConfig::default()
            };
            let mk = || Host::with_layout(level, layout, n, 4096, cfg, |_| {}, bitmap);
            let (mut a, mut b) = (mk(), mk());
            let end = a.ch.geometry().array_blocks();
            let mut rng = 0x2545_f491_4f6c_dd1du64;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
            let mut lean_taken = 0;
            let mut parked = 0;
            for step in 0..4000 {
                if step == 3000 {
                    // Another channel failed member 1.
                    for h in [&a, &b] {
                        h.ch.shared().set_failed(1, h.ch.state().readded[1]);
                    }
                }
                let r = next();
                if r % 3 == 0 && !out_a.is_empty() {
                    let i = (next() % out_a.len() as u64) as usize;
                    let (da, db): (Direct, Direct) = (out_a.swap_remove(i), out_b.swap_remove(i));
                    a.ch.direct_done(&da);
                    b.ch.direct_done(&db);
                    continue;
                }
                let op = if r % 2 == 0 {
                    IoType::Read
                } else {
                    IoType::Write
                };
                let blocks = 1 + next() % 16;
                // Sometimes sequential (raid1 picks the stream's copy),
                // sometimes near or past the end.
                let lba = match next() % 8 {
                    0 => out_a.last().map_or(0, |d: &Direct| d.lba + d.blocks),
                    1 => end - next() % 20,
                    _ => next() % end,
                };
                let lean = a.ch.lean.allow != 0
                    && a.ch.free_parents.len() > a.ch.direct_in_flight as usize;
                let da = a.ch.direct(op, lba, blocks);
                let mut x = Direct::default();
                let db = b.ch.try_direct(op, lba, blocks, &mut x).map(|()| x);
                assert_eq!(
                    da, db,
                    "{level:?} x{n} bitmap {bitmap}: step {step}, {op:?} {lba}+{blocks}"
                );
                let (pa, pb) = (a.ch.parkable(), b.ch.parkable());
                assert_eq!(pa, pb, "{level:?} x{n}: step {step}, parkable");
                parked += u32::from(pa.is_some());
                if let (Some(da), Some(db)) = (da, db) {
                    lean_taken += u32::from(lean);
                    out_a.push(da);
                    out_b.push(db);
                }
                assert_eq!(a.ch.member_stats(), b.ch.member_stats());
                assert_eq!(a.ch.parents_in_flight(), b.ch.parents_in_flight());
            }
            for (da, db) in out_a.iter().zip(&out_b) {
                a.ch.direct_done(da);
                b.ch.direct_done(db);
            }
            assert_eq!(a.ch.member_stats(), b.ch.member_stats());
            assert_eq!(a.ch.stats(), b.ch.stats());
            assert!(a.ch.is_idle() && b.ch.is_idle());
            assert!(
                lean_taken > 500,
                "{level:?}: the lean path took {lean_taken}"
            );
            if level == Level::Raid1 {
                assert!(
                    parked > 0,
                    "{level:?} x{n}: no write met a lock held by direct writes"
                );
            }
        }
    }

    #[test]
    fn direct_targets_are_the_mapped_copies() {
        // try_direct places raid1 and raid0 pieces itself (not through
        // map_each): every copy of a piece that fits, where map puts it.
        for (level, n) in [
            (Level::Raid0, 3),
            (Level::Raid0, 4),
            (Level::Raid1, 2),
            (Level::Raid1, 4),
            (Level::Raid10, 4),
        ] {
            let mut h = Host::new(level, n, ChannelConfig::default());
            let geom = h.ch.geometry().clone();
            for lba in (0..geom.array_blocks().min(4096)).step_by(3) {
                let blocks = 1 + lba % 8;
                if lba + blocks > geom.array_blocks() {
                    continue;
                }
                let m = geom.map(lba, blocks);
                let want: Vec<(u16, u64)> = m.copies().iter().map(|l| (l.member, l.lba)).collect();
                match h.ch.direct(IoType::Write, lba, blocks) {
                    Some(d) => {
                        assert!(m.len >= blocks, "{level:?}: a piece over a strip at {lba}");
                        let got: Vec<(u16, u64)> = d.targets().map(|l| (l.member, l.lba)).collect();
                        assert_eq!(got, want, "{level:?} x{n} at {lba}+{blocks}");
                        h.ch.direct_done(&d);
                    }
                    None => assert!(
                        m.len < blocks || level != Level::Raid0,
                        "{level:?}: refused a piece in one strip at {lba}"
                    ),
                }
            }
        }
    }

    #[test]
    fn direct_reads_of_parity_levels_go_to_the_strip_not_degraded() {
        let mut h = Host::new(Level::Raid5, 3, ChannelConfig::default());
        // 4 KiB strips of 512-byte blocks: array block 8 is data strip 1
        // of stripe 0.
        let want = h.ch.geometry().stripe(0);
        let d =
            h.ch.direct(IoType::Read, 8, 4)
                .expect("a healthy strip read");
        assert_eq!((d.target(0).member, d.target(0).lba), (want.data[1], 0));
        h.ch.direct_done(&d);
        assert!(h.ch.direct(IoType::Read, 6, 4).is_none(), "crosses strips");
        assert!(h.ch.direct(IoType::Write, 8, 4).is_none(), "parity writes");
        // Its member failed: reconstruction is the general path's.
        h.commit_faulty(&[want.data[1]]);
        assert!(h.ch.direct(IoType::Read, 8, 4).is_none());
        assert!(h.ch.direct(IoType::Read, 0, 4).is_some());
    }

    #[test]
    fn r5_direct_read_of_a_member_written_behind_is_refused() {
        let mut h = wm_host(4);
        h.write(1, 0, 8, 0x5a);
        let fast = to(&h, 0)[0];
        h.finish(fast);
        assert_eq!(
            h.done.len(),
            1,
            "acknowledged with its write-behind copy in flight"
        );
        // The fast copy fails: only the write-mostly one is left to read.
        h.ch.shared().set_failed(0, 0);
        assert!(
            h.ch.direct(IoType::Read, 0, 8).is_none(),
            "read a member with write-behind in flight without the lock"
        );
        h.finish_all();
        let d = h.ch.direct(IoType::Read, 0, 8).expect("write-behind done");
        assert_eq!(d.target(0).member, 1);
    }

    /// R5 on the lean path: write-mostly is turned off while a write-behind
    /// copy to member 1 is still in flight. The state then allows the lean
    /// path, but a direct read must not go to member 1 before that copy
    /// lands.
    #[test]
    fn r5_lean_read_waits_for_write_behind_after_write_mostly_is_cleared() {
        let mut h = wm_host(4);
        h.write(1, 0, 8, 0x5a);
        let fast = to(&h, 0)[0];
        h.finish(fast);
        assert_eq!(
            h.done.len(),
            1,
            "acknowledged with its write-behind copy in flight"
        );
        let mut s = (**h.ch.state()).clone();
        s.write_mostly = 0;
        s.write_behind = 0;
        s.events += 1;
        s.seq += 1;
        let s = Arc::new(s);
        h.ch.apply_state(s.clone());
        h.ch.release(s);
        assert!(h.ch.lean.allow & LEAN_READ != 0, "the lean path is on");
        // Member 0 busier than member 1 (which has the write-behind copy
        // outstanding): a read picks member 1.
        let busy: Vec<Direct> = [64, 128]
            .iter()
            .map(|&lba| h.ch.direct(IoType::Read, lba, 8).expect("a read"))
            .collect();
        let out =
            h.ch.member_stats()
                .iter()
                .map(|m| m.outstanding)
                .collect::<Vec<_>>();
        assert!(out[0] > out[1], "outstanding {out:?}");
        assert!(
            h.ch.direct(IoType::Read, 0, 8).is_none(),
            "read member 1 with write-behind to it in flight"
        );
        for d in &busy {
            h.ch.direct_done(d);
        }
        h.finish_all();
        let d = h.ch.direct(IoType::Read, 0, 8).expect("write-behind done");
        h.ch.direct_done(&d);
    }

    /// A channel made while broadcasts are in flight starts from the
    /// released state and joins at the newest published one; a broadcast
    /// of an older state that started before it was made may still visit
    /// it, and so may the release of one. Those visits are stale and
    /// change nothing (the SPDK host aborted on them before).
    #[test]
    fn a_channel_joined_at_a_newer_state_ignores_older_broadcasts() {
        let mut h = Host::new(Level::Raid1, 2, ChannelConfig::default());
        let s0 = h.ch.state().clone();
        let next = |s: &ArrayState| {
            let mut n = s.clone();
            n.events += 1;
            n.seq += 1;
            Arc::new(n)
        };
        let s1 = next(&s0);
        let s2 = next(&s1);
        // Made from released s0 while s1's and s2's broadcasts run.
        h.ch.join(s2.clone());
        assert_eq!(h.ch.state().seq, s2.seq);
        h.ch.apply_state(s1.clone());
        assert_eq!(h.ch.state().seq, s2.seq, "went back to an older state");
        h.ch.release(s1.clone());
        h.ch.apply_state(s2.clone());
        h.ch.release(s2.clone());
        let s3 = next(&s2);
        h.ch.apply_state(s3.clone());
        h.ch.release(s3);
        assert!(h.ch.direct(IoType::Write, 0, 8).is_some());
        // Past the joining point, order is still checked.
        let old = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            h.ch.apply_state(s2.clone())
        }));
        assert!(old.is_err(), "an older state after joining is a bug");
    }

    /// A direct write error fails the member (R1) even when the redo's
    /// write to it would succeed: md fails a member on a write error, and
    /// so does the general path.
    #[test]
    fn r1_direct_write_error_fails_the_member_though_a_retry_would_land() {
        let mut h = Host::new(Level::Raid1, 2, ChannelConfig::default());
        let d = h.ch.direct(IoType::Write, 0, 8).unwrap();
        let out =
            |h: &Host| -> Vec<u32> { h.ch.member_stats().iter().map(|m| m.outstanding).collect() };
        assert_eq!(out(&h), [1, 1], "outstanding on every copy");
        let io = parent(7, IoType::Write, 0, 8, 0xab);
        // Member 1's write failed once; member 1 would take the redo.
        h.ch.direct_redo(&d, bit(1), io);
        h.pump();
        assert_eq!(h.meta, vec![1], "the failure goes to the metadata path");
        assert!(
            h.held.iter().all(|c| c.member == 0),
            "the redo wrote to the member that failed"
        );
        h.finish_all();
        assert!(
            h.done.is_empty(),
            "completed before the failure was committed"
        );
        h.commit_faulty(&[1]);
        assert_eq!((h.done[0].0, h.done[0].1), (7, IoStatus::Success));
        let ms = h.ch.member_stats();
        assert_eq!(ms[1].errors, 1, "the direct write's");
        assert_eq!(
            (ms[0].writes, ms[1].writes),
            (2, 0),
            "member 0: the direct write and the redo's"
        );
        assert_eq!(out(&h), [0, 0]);
    }

    /// A write that failed on a device brought back into its role waits
    /// for that device's failure: a released state older than the device
    /// (recording the role's previous device faulty) does not count.
    #[test]
    fn r1_failure_of_a_readded_device_is_not_covered_by_the_old_ones() {
        let mut h = Host::new(Level::Raid1, 2, ChannelConfig::default());
        h.commit_faulty(&[1]); // the old device failed: released
                               // A new device in role 1: applied, not yet released.
        let mut s = (**h.ch.state()).clone();
        s.seq += 1;
        s.events += 1;
        s.members[1] = MemberState::Recovering(0);
        s.readded[1] = s.seq;
        h.ch.apply_state(Arc::new(s.clone()));
        h.pump();
        h.failing = bit(1);
        h.write(7, 0, 8, 0xab);
        h.finish_all();
        assert_eq!(h.meta, vec![1], "the failure goes to the metadata path");
        assert!(
            h.done.is_empty(),
            "completed on a released state that recorded the role's old \
             device faulty, before the new device's failure was committed"
        );
        // A write issued now skips the failed device: it waits as well.
        h.write(8, 16, 8, 0xcd);
        assert!(h.held.iter().all(|c| c.member == 0));
        h.finish_all();
        assert!(h.done.is_empty(), "a write that skipped the new device");
        // The new device's failure committed and released: both complete.
        s.seq += 1;
        s.events += 1;
        s.members[1] = MemberState::Faulty;
        let s = Arc::new(s);
        h.ch.apply_state(s.clone());
        h.ch.release(s);
        h.pump();
        let mut done: Vec<_> = h.done.iter().map(|d| (d.0, d.1)).collect();
        done.sort_by_key(|d| d.0);
        assert_eq!(done, [(7, IoStatus::Success), (8, IoStatus::Success)]);
    }

    /// A failed direct read is only redone: the general path reads another
    /// copy and rewrites the bad one (md's read-error handling).
    #[test]
    fn failed_direct_read_does_not_fail_the_member() {
        let mut h = Host::new(Level::Raid1, 2, ChannelConfig::default());
        let d = h.ch.direct(IoType::Read, 0, 8).unwrap();
        let m = d.target(0).member;
        let io = parent(9, IoType::Read, 0, 8, 0);
        h.ch.direct_redo(&d, bit(m as usize), io);
        h.pump();
        h.finish_all();
        assert!(h.meta.is_empty(), "a read error failed the member");
        assert_eq!((h.done[0].0, h.done[0].1), (9, IoStatus::Success));
    }

    /// A direct write's error on a device that has since left its role
    /// fails nothing (the role's new device is not the one that failed).
    #[test]
    fn direct_write_error_of_a_replaced_device_fails_nothing() {
        let mut h = Host::new(Level::Raid1, 2, ChannelConfig::default());
        let d = h.ch.direct(IoType::Write, 0, 8).unwrap();
        // Member 1 failed (another I/O saw it), and a new device took its
        // role, before the direct write's error came back.
        h.commit_faulty(&[1]);
        let mut s = (**h.ch.state()).clone();
        s.seq += 1;
        s.members[1] = MemberState::InSync;
        s.readded[1] = s.seq;
        let s = Arc::new(s);
        h.ch.apply_state(s.clone());
        h.ch.release(s);
        h.pump();
        let io = parent(7, IoType::Write, 0, 8, 0xab);
        h.ch.direct_redo(&d, bit(1), io);
        h.pump();
        assert!(h.meta.is_empty(), "failed the role's new device");
        h.finish_all();
        assert_eq!((h.done[0].0, h.done[0].1), (7, IoStatus::Success));
    }

    #[test]
    fn r1_write_fails_when_no_copy_is_left() {
        let mut h = Host::new(Level::Raid1, 2, ChannelConfig::default());
        h.failing = bit(0) | bit(1);
        h.write(1, 0, 8, 1);
        h.finish_all();
        assert!(h.done.is_empty());
        h.commit_faulty(&[0, 1]);
        assert_eq!(h.done[0].1, IoStatus::Error);
        assert!(h.ch.state().offline);
    }

    #[test]
    fn r2_parent_waits_whole_and_bias_holds_it() {
        // Two child slots, a raid0 write over four strips: the parent must
        // not complete when the first two children do.
        let cfg = ChannelConfig {
            max_children: 4,
            ..ChannelConfig::default()
        };
        let mut h = Host::new(Level::Raid0, 2, cfg);
        // 4 KiB strips = 8 blocks; 6 strips span 6 children.
        h.write(1, 0, 48, 9);
        assert_eq!(h.held.len(), 4, "issues what the pool allows");
        h.finish(0);
        h.finish(0);
        assert!(h.done.is_empty(), "completed before all of it was issued");
        h.finish_all();
        assert_eq!(h.done.len(), 1);
        assert_eq!(h.done[0].1, IoStatus::Success);
        assert!(h
            .members
            .iter()
            .all(|m| m[..24 * 512].iter().all(|b| *b == 9)));
    }

    #[test]
    fn r2_nomem_child_is_resubmitted_not_failed() {
        let mut h = Host::new(Level::Raid1, 2, ChannelConfig::default());
        h.write(1, 0, 1, 5);
        let io = h.held.remove(0);
        h.ch.child_done(io.token, ChildStatus::NoMem);
        h.pump();
        assert_eq!(h.held.len(), 1);
        h.ch.poll();
        h.pump();
        assert_eq!(h.held.len(), 2, "resubmitted on poll");
        h.finish_all();
        assert_eq!(h.done[0].1, IoStatus::Success);
    }

    #[test]
    fn raid5_picks_rmw_for_small_and_rcw_for_large_writes() {
        let mut h = Host::new(Level::Raid5, 5, ChannelConfig::default());
        // One block: RMW reads old data + P (2 reads).
        h.write(1, 0, 1, 1);
        assert_eq!(h.held.len(), 2);
        assert!(h.held.iter().all(|c| c.op == ChildOp::Read));
        h.finish_all();
        assert_eq!(h.ch.stats().rmw, 1);
        // Three of four strips: RCW reads the one left (1 read).
        h.write(2, 32, 24, 2);
        assert_eq!(h.held.len(), 1);
        h.finish_all();
        assert_eq!(h.ch.stats().rcw, 1);
        // A whole stripe: no reads.
        h.write(3, 64, 32, 3);
        assert!(h.held.iter().all(|c| c.op == ChildOp::Write));
        h.finish_all();
        assert_eq!(h.ch.stats().full_stripe, 1);
        assert!(h.done.iter().all(|d| d.1 == IoStatus::Success));
    }

    /// md's rule: where a resync has not been yet (or the bitmap marks the
    /// chunk needed), a partial-stripe write reconstructs the parity from
    /// the data instead of patching parity that may be wrong, so the
    /// stripe is right after it whatever it held before.
    #[test]
    fn raid5_writes_reconstruct_where_the_resync_has_not_been() {
        for bitmap in [false, true] {
            let mut h = Host::with(
                Level::Raid5,
                5,
                64,
                ChannelConfig::default(),
                |_| {},
                bitmap,
            );
            // Old data that the parity does not match.
            for (m, v) in [(0usize, 3u8), (1, 5), (2, 9), (3, 17), (4, 33)] {
                h.members[m][..8 * 512].fill(v);
            }
            let shared = h.ch.shared().clone();
            match &shared.bitmap {
                Some(bm) => bm.set_flags(0, crate::bitmap::NEEDED),
                None => shared.set_unsynced_from(0),
            }
            h.write(1, 0, 1, 0xab);
            h.finish_all();
            assert_eq!(
                (h.ch.stats().rcw, h.ch.stats().rmw),
                (1, 0),
                "bitmap {bitmap}"
            );
            let map = h.ch.geometry().stripe(0);
            for b in 0..512 {
                let x = (0..map.ndata).fold(0, |a, i| a ^ h.members[map.data[i] as usize][b]);
                assert_eq!(h.members[map.p as usize][b], x, "bitmap {bitmap}: byte {b}");
            }
            // In sync: the cheaper read-modify-write again.
            match &shared.bitmap {
                Some(bm) => bm.mark_synced(0),
                None => shared.set_unsynced_from(u64::MAX),
            }
            h.write(2, 0, 1, 0xcd);
            h.finish_all();
            assert_eq!(
                (h.ch.stats().rcw, h.ch.stats().rmw),
                (1, 1),
                "bitmap {bitmap}"
            );
        }
    }

    /// A resync of a raid6 stripe missing a data member makes P and Q
    /// agree with the data again (the missing strip recovered from P), as
    /// md regenerates both; it used to write nothing there.
    #[test]
    fn degraded_raid6_resync_makes_p_and_q_again() {
        let mut h = Host::with(
            Level::Raid6,
            5,
            64,
            ChannelConfig::default(),
            |s| s.members[1] = MemberState::Faulty,
            false,
        );
        for (m, v) in [(0usize, 3u8), (1, 5), (2, 9), (3, 17), (4, 33)] {
            h.members[m][..8 * 512].fill(v);
        }
        let map = h.ch.geometry().stripe(0);
        h.resync_parity_block(1, 0);
        // The data strips as the array reads them: member 1's recovered
        // from P and the others (P itself was read, so that is P ^ rest).
        let q = map.q.unwrap() as usize;
        let strip = |h: &Host, m: usize| h.members[m][..512].to_vec();
        let mut data: Vec<Vec<u8>> = (0..map.ndata)
            .map(|i| strip(&h, map.data[i] as usize))
            .collect();
        if let Some(i) = (0..map.ndata).find(|&i| map.data[i] == 1) {
            let mut x = strip(&h, map.p as usize);
            for (j, d) in data.iter().enumerate() {
                if j != i {
                    for (a, b) in x.iter_mut().zip(d) {
                        *a ^= b;
                    }
                }
            }
            data[i] = x;
        }
        let mut by_slot = vec![Vec::new(); map.ndata];
        for i in 0..map.ndata {
            by_slot[map.q_slot[i] as usize] = data[i].clone();
        }
        let refs: Vec<&[u8]> = by_slot.iter().map(|d| d.as_slice()).collect();
        let (mut p, mut qq) = (vec![0u8; 512], vec![0u8; 512]);
        crate::parity::gen_pq(&refs, &mut p, &mut qq);
        assert_eq!(strip(&h, map.p as usize), p, "P");
        assert_eq!(strip(&h, q), qq, "Q does not agree with the data");
    }

    #[test]
    fn resync_makes_copies_and_parity_agree() {
        // raid1: member 1 holds other bytes than member 0.
        let mut h = Host::new(Level::Raid1, 2, ChannelConfig::default());
        h.members[0][..8 * 512].fill(0x11);
        h.members[1][..8 * 512].fill(0x22);
        let io = ParentIo {
            tag: 1,
            op: IoType::Resync,
            lba: 0,
            blocks: 8,
            fua: false,
            buf: Some(vec![0; 8 * 512]),
        };
        assert!(h.ch.submit(io).is_ok());
        h.pump();
        h.finish_all();
        assert_eq!(h.done[0].1, IoStatus::Success);
        assert_eq!(h.members[0][..8 * 512], h.members[1][..8 * 512]);
        // raid5: scribble on the parity of stripe 0, resync rewrites it.
        let mut h = Host::new(Level::Raid5, 3, ChannelConfig::default());
        for (m, v) in [(0usize, 3u8), (1, 5), (2, 9)] {
            h.members[m][..8 * 512].fill(v);
        }
        h.resync_parity_block(2, 0);
        let map = h.ch.geometry().stripe(0);
        let (d0, d1) = (map.data[0] as usize, map.data[1] as usize);
        for b in 0..8 * 512 {
            assert_eq!(
                h.members[map.p as usize][b],
                h.members[d0][b] ^ h.members[d1][b],
                "byte {b}"
            );
        }
        assert_eq!(h.ch.stats().resync_units, 1);
    }

    /// A rebuild window (md's recovery) needs no dirty mark: on an array
    /// marked clean (not writable) it goes at once, and the member being
    /// rebuilt gets the data. A resync window of the same array waits for
    /// the dirty mark.
    #[test]
    fn rebuild_window_needs_no_dirty_mark() {
        for (level, n, blocks) in [(Level::Raid1, 2, 8), (Level::Raid5, 3, 8)] {
            let mut h = Host::with(
                level,
                n,
                64,
                ChannelConfig::default(),
                |s| {
                    s.writable = false;
                    s.members[1] = MemberState::Recovering(0);
                },
                false,
            );
            h.members[0][..8 * 512].fill(0x5a);
            let buf = (h.ch.geometry().copies() > 1).then(|| vec![0; blocks as usize * 512]);
            let io = ParentIo {
                tag: 1,
                op: IoType::Rebuild { member: 1 },
                lba: 0,
                blocks,
                fua: false,
                buf: buf.clone(),
            };
            assert!(h.ch.submit(io).is_ok());
            h.pump();
            assert_eq!(
                h.dirty_asks, 0,
                "{level:?}: a rebuild asked for the dirty mark"
            );
            assert!(!h.held.is_empty(), "{level:?}: the rebuild waits");
            h.finish_all();
            assert_eq!(h.done[0].1, IoStatus::Success, "{level:?}");
            if level == Level::Raid1 {
                assert_eq!(h.members[1][..8 * 512], h.members[0][..8 * 512]);
            } else {
                let map = h.ch.geometry().stripe(0);
                let (d0, d1, p) = (map.data[0] as usize, map.data[1] as usize, map.p as usize);
                for b in 0..8 * 512 {
                    assert_eq!(h.members[p][b], h.members[d0][b] ^ h.members[d1][b]);
                }
            }
            let io = ParentIo {
                tag: 2,
                op: IoType::Resync,
                lba: 0,
                blocks,
                fua: false,
                buf,
            };
            assert!(h.ch.submit(io).is_ok());
            h.pump();
            assert_eq!(h.dirty_asks, 1, "{level:?}: a resync goes dirty first");
            assert!(h.held.is_empty(), "{level:?}: the resync waits for it");
        }
    }

    /// A raid1 of 3 whose member 2 is being rebuilt, its first 8 blocks
    /// holding `b0` on member 0 and `b1` on member 1.
    fn rebuild_host(b0: u8, b1: u8) -> Host {
        let mut h = Host::with(
            Level::Raid1,
            3,
            64,
            ChannelConfig::default(),
            |s| s.members[2] = MemberState::Recovering(0),
            false,
        );
        h.members[0][..8 * 512].fill(b0);
        h.members[1][..8 * 512].fill(b1);
        h
    }

    /// A rebuild window writes only the members being rebuilt (md's
    /// recovery), and fails when it cannot write the member it rebuilds:
    /// that member failed, or its write fails.
    #[test]
    fn rebuild_window_writes_only_members_being_rebuilt() {
        let host = |failing: u64| {
            let mut h = rebuild_host(0x11, 0x22);
            h.failing = failing;
            h
        };
        let rebuild = |h: &mut Host| {
            let io = parent(1, IoType::Rebuild { member: 2 }, 0, 8, 0);
            assert!(h.ch.submit(io).is_ok());
            h.pump();
            h.finish_all();
            h.done[0].1
        };
        let mut h = host(0);
        assert_eq!(rebuild(&mut h), IoStatus::Success);
        assert!(
            h.members[1][..8 * 512].iter().all(|&b| b == 0x22),
            "in sync: untouched"
        );
        assert_eq!(h.members[2][..8 * 512], h.members[0][..8 * 512]);
        // Its write fails.
        let mut h = host(bit(2));
        assert_eq!(rebuild(&mut h), IoStatus::Error);
        // Seen failing before the window: nothing to write, it fails.
        let mut h = host(0);
        h.ch.shared().fail_device(2, 0);
        assert_eq!(rebuild(&mut h), IoStatus::Error);
        assert!(h.members[2][..8 * 512].iter().all(|&b| b == 0));
    }

    /// A rebuild window whose source copy fails its read reads another
    /// and writes it over the failed copy too (md's fix_sync_read_error),
    /// as a user read's retry does; the copy is kept, not failed.
    #[test]
    fn rebuild_rewrites_a_source_copy_that_failed_its_read() {
        let mut h = rebuild_host(0x22, 0x22);
        let io = parent(1, IoType::Rebuild { member: 2 }, 0, 8, 0);
        assert!(h.ch.submit(io).is_ok());
        h.pump();
        assert_eq!(h.held.len(), 1, "one source read");
        let src = h.held.remove(0);
        assert_eq!(src.op, ChildOp::Read);
        // An unreadable sector there.
        h.members[src.member as usize][..512].fill(0xee);
        h.ch.child_done(src.token, ChildStatus::Error);
        h.pump();
        h.finish_all();
        assert_eq!(h.done[0].1, IoStatus::Success);
        for m in 0..3 {
            assert!(
                h.members[m][..8 * 512].iter().all(|&b| b == 0x22),
                "member {m} (the failed source: {})",
                src.member
            );
        }
        assert_eq!(h.ch.stats().read_errors_corrected, 1);
        assert!(h.meta.is_empty(), "no member failed");
    }

    #[test]
    fn out_of_range_is_invalid() {
        let mut h = Host::new(Level::Raid0, 2, ChannelConfig::default());
        let end = h.ch.geometry().array_blocks();
        h.write(1, end - 1, 2, 0);
        h.write(2, 0, 0, 0);
        assert_eq!(h.done.len(), 2);
        assert!(h.done.iter().all(|d| d.1 == IoStatus::Invalid));
        assert!(h.held.is_empty());
    }
}
