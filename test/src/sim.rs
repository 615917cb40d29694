//! The simulator proper: members, scheduler, metadata stand-in, oracle.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use bdev_raid::assemble::{assemble, AssembleError, AssembleOptions, Candidate};
use bdev_raid::bitmap::{Bitmap, BitmapGeom, DiskBitmap};
use bdev_raid::channel::{
    Action, Busy, Channel, ChildBuf, ChildIo, ChildOp, ChildStatus, ChildToken, Direct, IoStatus,
    IoType, MetaRequest, ParentIo, RAID1_LOCK_BYTES,
};
use bdev_raid::layout::{Geometry, Level, StripeMap};
use bdev_raid::meta::{create_superblocks, CreateParams, Meta, MetaAction, MetaConfig};
use bdev_raid::meta::{NewMember, Recovery};
use bdev_raid::ondisk::{
    bitmap_count_dirty, bitmap_get, Superblock, SB_BLOCK_BYTES, SB_OFFSET_BYTES,
};
use bdev_raid::state::{survives, ArrayState, MemberState, Shared};
use bdev_raid::sync::{Rebuild, Resync};

use crate::rng::{splitmix, Rng};
use crate::scenario::Scenario;

/// A failed run: what went wrong, at which step, under which seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub seed: u64,
    pub step: u64,
    pub what: String,
    /// `mdraid-sim`'s arguments that make the same scenario.
    pub replay: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} step {}: {} (replay: cargo run -p mdraid-sim --release -- {})",
            self.seed, self.step, self.what, self.replay
        )
    }
}

/// The arguments that make `sc` again (its direct-path chance as given,
/// in case `--direct` changed it).
fn replay_args(sc: &Scenario) -> String {
    let mut a = format!("--seed {}", sc.seed);
    if sc.write_behind_workload {
        a.push_str(" --write-behind");
    }
    if sc.ops != crate::scenario::DEFAULT_OPS {
        a.push_str(&format!(" --ops {}", sc.ops));
    }
    let made = Scenario::of(sc.seed, sc.ops, sc.write_behind_workload);
    if made.direct != sc.direct {
        a.push_str(&format!(" --direct {}", sc.direct));
    }
    if made.resync_faults != sc.resync_faults {
        a.push_str(&format!(" --resync-faults {}", u8::from(sc.resync_faults)));
    }
    if made.initial_resync != sc.initial_resync {
        a.push_str(&format!(
            " --initial-resync {}",
            u8::from(sc.initial_resync)
        ));
    }
    a
}

/// What a successful run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub steps: u64,
    pub parents: u64,
    pub reads_verified: u64,
    pub blocks_verified: u64,
    pub parent_errors: u64,
    pub child_errors: u64,
    pub members_failed: usize,
    pub offline: bool,
    /// Some state the metadata path published had the array offline
    /// (a later crash may have brought it back).
    pub ever_offline: bool,
    pub nomem: u64,
    pub rmw: u64,
    pub rcw: u64,
    pub full_stripe: u64,
    pub reconstruct_reads: u64,
    pub read_errors_corrected: u64,
    pub pool_waits: u64,
    pub crashes: u64,
    /// Resyncs the engine completed after dirty assemblies.
    pub resyncs: u64,
    /// Members compared byte for byte right after a resync or rebuild.
    pub sync_checks: u64,
    /// Members brought back (from the bitmap / fully) and rebuilds finished.
    pub readds_bitmap: u64,
    pub readds_full: u64,
    pub rebuilds: u64,
    /// Member blocks rebuilt and skipped as clean in the bitmap.
    pub rebuilt_blocks: u64,
    pub rebuild_skipped_blocks: u64,
    /// Array blocks those resyncs covered (only dirty chunks with a bitmap).
    pub resync_blocks: u64,
    /// Writes that waited for their bitmap bits.
    pub bit_waits: u64,
    pub superblock_writes: u64,
    /// Write pieces written behind to write-mostly members, and reads that
    /// had to go to a write-mostly member (R5).
    pub behind_writes: u64,
    pub write_mostly_reads: u64,
    /// Write-behind writes a crash cut short while no other copy of their
    /// range survived (their acknowledged data may be lost, as in md).
    pub behind_lost: u64,
    /// User reads and writes the host carried out itself on the direct
    /// path (`Channel::direct`), and those of them a member I/O failed in,
    /// so the host submitted them again as parents.
    pub direct_reads: u64,
    pub direct_writes: u64,
    pub direct_redone: u64,
    /// Reads and writes the channel kept on the general path.
    pub direct_refused: u64,
    /// Direct member writes that failed (R1: the member is failed before
    /// the write completes, whatever its redo would do).
    pub direct_write_errors: u64,
    /// Member writes of direct writes a crash found in flight (torn,
    /// landed or lost like children's).
    pub direct_cut: u64,
    /// Member faults injected while a resync ran (deaths, failed writes,
    /// read errors), and array blocks the write hole took: a member lost
    /// (or failing a read) where the parity did not match the data.
    pub resync_faults: u64,
    pub hole_lost_blocks: u64,
    /// The run's array was made dirty and resynced from the start.
    pub initial_resync: bool,
    /// Resyncs that ended with failed windows and were started again.
    pub resync_restarts: u64,
    /// The run ended at an assembly md also refuses (dirty and degraded
    /// parity, or too few members left).
    pub ended_by_refusal: Option<String>,
}

type Buf = Vec<u8>;

struct Member {
    data: Vec<u8>,
    dead: bool,
    broken: bool,
    /// Brought back into the array and not in sync yet: assembly may leave
    /// it out (its superblock may predate the commit that added it).
    added: bool,
    /// Bumped when the device is replaced.
    gen: u64,
    /// Publication that brought the current device into its role (the
    /// state's `readded`); None until a state records it.
    joined: Option<u64>,
}

/// A message from the metadata path to one channel.
enum Bcast {
    Apply(Arc<ArrayState>),
    Release(Arc<ArrayState>),
}

/// An I/O handed to a member device; `gen` is the device's generation
/// then (a replaced device's I/O fails and never lands on its successor).
enum InFlight {
    Child {
        ch: usize,
        io: ChildIo,
        gen: u64,
    },
    Sb {
        member: u16,
        token: u64,
        offset: u64,
        data: Vec<u8>,
        gen: u64,
    },
    /// One member I/O of a direct read or write (its parent's tag); it
    /// moves the parent's whole buffer.
    Direct {
        tag: u64,
        member: u16,
        lba: u64,
        gen: u64,
    },
}

/// A direct read or write in flight: the parent itself (submitted to the
/// channel only if a member I/O fails), and its member I/Os.
struct DirectRec {
    ch: usize,
    d: Direct,
    io: ParentIo<Buf>,
    left: usize,
    failed: u64,
    /// Members whose device (still in its role) failed a write of it, and
    /// the publication of the state the channel mapped it by.
    write_errors: u64,
    seq: u64,
}

impl InFlight {
    fn gen(&self) -> u64 {
        match self {
            InFlight::Child { gen, .. }
            | InFlight::Sb { gen, .. }
            | InFlight::Direct { gen, .. } => *gen,
        }
    }

    fn member(&self) -> usize {
        match self {
            InFlight::Child { io, .. } => io.member as usize,
            InFlight::Sb { member, .. } | InFlight::Direct { member, .. } => *member as usize,
        }
    }
}

#[derive(Clone, Copy, Default)]
struct BlockState {
    /// Last acknowledged write id (0: never written, zeros).
    cur: u64,
    /// Writes from this id on failed or were cut by a crash since the last
    /// acknowledged one: their data may or may not be there.
    alt_since: Option<u64>,
    /// A write in flight.
    pending: Option<u64>,
    /// It may read back anything until an acknowledged write: the garbage
    /// a new array's members held (before the initial resync), or what a
    /// lost member's block is rebuilt as from parity that did not match
    /// the data (the write hole: see [`Sim::holes`]).
    lost: bool,
}

/// [`Sim::holes`]: the row's parity may not match its data (a crash cut
/// writes short, or a new array's garbage), and no resync or
/// reconstruct-write has made it right since.
const HOLE: u8 = 1;
/// A hole that lost a member (or a read of one) while open: the blocks it
/// lost are [`BlockState::lost`], and the row's parity is not checked
/// until the final repair.
const DAMAGED: u8 = 2;

struct ParentRec {
    /// Members that failed a read this parent issued.
    read_errors: u64,
    op: IoType,
    lba: u64,
    blocks: u64,
    id: u64,
    snap: Vec<BlockState>,
    final_check: bool,
    /// Members not in sync in some state a channel may have routed this
    /// parent by when it was submitted (being rebuilt, out of service).
    out_seen: u64,
    /// Members a direct write of this parent failed on, and the
    /// publication it was mapped by (R1 is checked at completion).
    write_errors: (u64, u64),
    /// Members its write children (not those written behind) landed on
    /// while the member was not failed: the copies that may acknowledge a
    /// write-behind write (md's R1BIO_Uptodate).
    landed: u64,
    /// A write child of it failed.
    write_failed: bool,
    /// Members lost (or failing a read in a hole) while it was in flight.
    lost_during: u64,
}

impl ParentRec {
    fn new(op: IoType, lba: u64, blocks: u64, out_seen: u64) -> ParentRec {
        ParentRec {
            read_errors: 0,
            op,
            lba,
            blocks,
            id: 0,
            snap: Vec::new(),
            final_check: false,
            out_seen,
            write_errors: (0, 0),
            landed: 0,
            write_failed: false,
            lost_during: 0,
        }
    }
}

/// One incarnation of the array: what a crash throws away.
struct Array {
    channels: Vec<Channel<Buf>>,
    retry: Vec<VecDeque<ParentIo<Buf>>>,
    bcast: Vec<VecDeque<Bcast>>,
    /// The newest broadcast state and how many channels applied it.
    newest: Arc<ArrayState>,
    applied: usize,
    meta: Meta,
    meta_inbox: VecDeque<MetaRequest>,
}

/// A write-behind child: the array blocks it writes, the write id of the
/// parent it writes for (which may have completed since), the other
/// copies of those blocks in sync in its channel's state when it was
/// issued (those the write may be acknowledged on), and the members the
/// parent's other writes landed on while not failed
/// ([`ParentRec::landed`], kept up to date while the parent is in flight).
#[derive(Clone, Copy, Debug)]
struct BehindRec {
    lba: u64,
    blocks: u64,
    id: u64,
    read: u64,
    landed: u64,
}

struct Sim<'a> {
    /// Write-behind children in flight.
    /// (Keyed by channel and token: tokens are per channel.)
    behind: HashMap<(usize, ChildToken), BehindRec>,
    /// Write-behind writes a crash cut short, until a resync has made the
    /// write-mostly copies agree again: their data then lives on the other
    /// copies only.
    exposed: Vec<BehindRec>,
    /// Direct reads and writes in flight, by parent tag (a crash drops
    /// them with the channels that handed them out).
    directs: HashMap<u64, DirectRec>,
    sc: &'a Scenario,
    rng: Rng,
    /// Paces the resync ([`Scenario::resync_pace`]): a stream of its own.
    pace: Rng,
    geom: Arc<Geometry>,
    bs: usize,
    /// Byte offset of the data area on every member.
    data_off: usize,
    members: Vec<Member>,
    arr: Array,
    inflight: Vec<InFlight>,
    blocks: Vec<BlockState>,
    history: Vec<Vec<(u64, bool)>>,
    parents: HashMap<u64, ParentRec>,
    per_channel: Vec<usize>,
    next_tag: u64,
    next_id: u64,
    step: u64,
    /// Step of the last parent completion.
    last_done: u64,
    crashes_left: u32,
    faults_on: bool,
    /// The resync running after a dirty assembly.
    resync: Option<Resync>,
    /// Tag of the resync window in flight.
    resync_tag: Option<u64>,
    /// The rebuild running, its ranges in flight, and where one stopped
    /// (member, events) so it is not restarted before something changes.
    rebuild: Option<Rebuild>,
    rebuild_tags: Vec<u64>,
    rebuild_stopped: Option<(usize, u64)>,
    /// A resync or rebuild just ended: hold new user I/O until everything
    /// in flight is done, then compare the members byte for byte.
    sync_check: bool,
    /// Parity levels, per row of member blocks (a row's index is its
    /// member block address): 0, [`HOLE`] or [`DAMAGED`]. Only a member
    /// lost (dead, failing writes, or failing a read of the row) while its
    /// row is a hole may leave garbage, in that member's blocks of the row
    /// (md's write hole); a resync window or a write acknowledged with
    /// every member in service and every read good closes the row (md's
    /// forced reconstruct-write on stripes not resynced yet).
    holes: Vec<u8>,
    /// Rows of `holes` not 0.
    open_holes: usize,
    out: Outcome,
}

/// Run `sc` to the end. `Err` names the first violation.
pub fn run(sc: &Scenario) -> Result<Outcome, Violation> {
    let geom = match Geometry::new(&sc.geometry) {
        Ok(g) => Arc::new(g),
        Err(e) => {
            return Err(Violation {
                seed: sc.seed,
                step: 0,
                what: format!("scenario geometry refused: {e}"),
                replay: replay_args(sc),
            })
        }
    };
    let mut sim = Sim::new(sc, geom);
    // An assertion inside the engine is a finding like any other: report it
    // with its seed instead of ending the sweep.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()));
    let r = r.unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(format!("panic: {msg}"))
    });
    r.map_err(|what| Violation {
        seed: sc.seed,
        step: sim.step,
        what,
        replay: replay_args(sc),
    })?;
    Ok(sim.out)
}

/// Data offset of the simulated members, in 512-byte sectors: right after
/// the superblock (the simulator keeps members small; md accepts any
/// data offset past the superblock).
const SIM_DATA_OFFSET: u64 = 24;

/// Byte offset of the bitmap area on a member (right after the superblock).
const BITMAP_AT: usize = SB_OFFSET_BYTES as usize + SB_BLOCK_BYTES;
/// Byte offset of the bits.
const BITS_AT: usize = BITMAP_AT + 256;

fn pattern(id: u64, lba: u64, zero: bool, out: &mut [u8]) {
    if zero {
        out.fill(0);
        return;
    }
    out[..8].copy_from_slice(&id.to_le_bytes());
    out[8..16].copy_from_slice(&lba.to_le_bytes());
    let mut x = id.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ lba;
    for c in out[16..].chunks_mut(8) {
        let v = splitmix(&mut x).to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

impl<'a> Sim<'a> {
    fn new(sc: &'a Scenario, geom: Arc<Geometry>) -> Sim<'a> {
        let bs = geom.block_size() as usize;
        let n = geom.members();
        let data_off = (SIM_DATA_OFFSET * 512) as usize;
        let mut members: Vec<Member> = (0..n)
            .map(|m| Member {
                data: vec![0; data_off + sc.geometry.member_blocks[m] as usize * bs],
                dead: false,
                broken: false,
                added: false,
                gen: 0,
                joined: Some(0),
            })
            .collect();
        let mut sbs = create_superblocks(
            &geom,
            &CreateParams {
                set_uuid: (sc.seed as u128 | 1 << 100).to_le_bytes(),
                name: "sim",
                device_uuids: (0..n).map(|m| [m as u8 + 1; 16]).collect(),
                member_sectors: members.iter().map(|m| m.data.len() as u64 / 512).collect(),
                data_offset: SIM_DATA_OFFSET,
                now_secs: 1,
                bitmap: sc.bitmap_chunk.is_some(),
            },
        );
        for (m, sb) in sbs.iter_mut().enumerate() {
            sb.set_write_mostly(sc.write_mostly & 1 << m != 0);
            if sc.initial_resync {
                // Made without --assume-clean: dirty until the initial
                // resync has been over the whole array.
                sb.resync_offset = 0;
            }
        }
        if sc.initial_resync {
            // What the devices held before: garbage, a stream of its own.
            let mut x = sc.seed ^ 0x9a4b_a9e0;
            for m in &mut members {
                for c in m.data[data_off..].chunks_mut(8) {
                    c.copy_from_slice(&splitmix(&mut x).to_le_bytes()[..c.len()]);
                }
            }
        }
        let bitmap = sc.bitmap_chunk.map(|chunk| {
            let bg = BitmapGeom::new(&geom, chunk).expect("scenario bitmap chunk");
            let mut d = DiskBitmap::new(&bg, sbs[0].set_uuid, 1000);
            d.sb.write_behind = sc.write_behind;
            if sc.initial_resync {
                // mdadm sets every bit of a new array's bitmap unless told
                // the array is clean: the initial resync covers it all.
                for c in 0..bg.chunks() {
                    d.set(c, true);
                }
            }
            (d, bg)
        });
        for (m, sb) in sbs.iter().enumerate() {
            let mut b = sb.encode();
            if let Some((d, _)) = &bitmap {
                b.extend_from_slice(&d.encode_area(0));
            }
            let at = SB_OFFSET_BYTES as usize;
            members[m].data[at..at + b.len()].copy_from_slice(&b);
        }
        let state = Arc::new(ArrayState {
            write_mostly: sc.write_mostly,
            write_behind: if sc.bitmap_chunk.is_some() {
                sc.write_behind
            } else {
                0
            },
            ..ArrayState::new_in_sync(n)
        });
        let arr = Sim::array(
            sc,
            &geom,
            state,
            sbs.into_iter().map(Some).collect(),
            bitmap,
            0,
        );
        let nblocks = geom.array_blocks() as usize;
        let block = BlockState {
            lost: sc.initial_resync,
            ..BlockState::default()
        };
        let rows = if geom.level().is_parity() {
            (geom.stripes() * geom.strip_blocks()) as usize
        } else {
            0
        };
        let mut sim = Sim {
            sc,
            rng: Rng::new(sc.seed),
            pace: Rng::new(sc.seed ^ 0x0a5e_7e11),
            bs,
            data_off,
            members,
            arr,
            inflight: Vec::new(),
            blocks: vec![block; nblocks],
            history: vec![Vec::new(); nblocks],
            parents: HashMap::new(),
            per_channel: vec![0; sc.channels],
            next_tag: 1,
            next_id: 1,
            step: 0,
            last_done: 0,
            crashes_left: sc.crashes,
            faults_on: true,
            resync: None,
            resync_tag: None,
            rebuild: None,
            rebuild_tags: Vec::new(),
            rebuild_stopped: None,
            sync_check: false,
            holes: vec![0; rows],
            open_holes: 0,
            out: Outcome::default(),
            behind: HashMap::new(),
            exposed: Vec::new(),
            directs: HashMap::new(),
            geom,
        };
        if sc.initial_resync {
            sim.out.initial_resync = true;
            sim.find_holes();
            sim.start_resync();
        }
        sim
    }

    /// Start the resync of a dirty array from where the metadata path
    /// says (the dirty chunks with a bitmap, the whole array without).
    fn start_resync(&mut self) {
        let window = if self.geom.level().is_parity() {
            self.geom.stripe_data_blocks() * 2
        } else {
            self.sc.max_blocks
        };
        self.resync = Some(Resync::from(
            &self.geom,
            self.arr.channels[0].shared(),
            window,
            self.arr.meta.resync_from(),
        ));
        self.resync_tag = None;
    }

    /// Whether row `r` (member block address) of a parity level has P (and
    /// Q) matching its data on the members' disks.
    fn row_consistent(&self, r: u64) -> bool {
        let map = self.geom.stripe(r / self.geom.strip_blocks());
        let at = self.data_off + r as usize * self.bs;
        let (p, q) = self.parity_of(&map, at, self.bs);
        p[..] == self.members[map.p as usize].data[at..at + self.bs]
            && map
                .q
                .is_none_or(|qm| q[..] == self.members[qm as usize].data[at..at + self.bs])
    }

    /// Open a hole at every row whose parity does not match its data on
    /// the disks (after a crash that left the array dirty, or on a new
    /// array's garbage; every member is in sync then: md assembles no
    /// dirty degraded parity array).
    fn find_holes(&mut self) {
        for r in 0..self.holes.len() {
            if self.holes[r] == 0 && !self.row_consistent(r as u64) {
                self.holes[r] = HOLE;
                self.open_holes += 1;
            }
        }
    }

    /// Rows `rows` (member block addresses) have parity matching their data
    /// again.
    fn close_holes(&mut self, rows: std::ops::Range<u64>) {
        for r in rows {
            if let Some(h) = self.holes.get_mut(r as usize).filter(|h| **h != 0) {
                *h = 0;
                self.open_holes -= 1;
            }
        }
    }

    /// Member `m` is lost (dead, failing writes) or failed reading member
    /// blocks `rows`: in every hole among them, its data block is rebuilt
    /// from parity that may not match, so it may read back anything until
    /// written (md's write hole), and the row's parity is no longer known.
    fn lose(&mut self, m: usize, rows: Option<std::ops::Range<u64>>) {
        if self.open_holes == 0 {
            return;
        }
        for rec in self.parents.values_mut().filter(|r| writes_data(r.op)) {
            rec.lost_during |= 1 << m;
        }
        let strip = self.geom.strip_blocks();
        let sdb = self.geom.stripe_data_blocks();
        let rows = rows.unwrap_or(0..self.holes.len() as u64);
        let trace = std::env::var_os("MDRAID_SIM_TRACE").is_some();
        let mut lost = 0;
        for r in rows {
            if self.holes.get(r as usize).is_none_or(|h| *h == 0) {
                continue;
            }
            self.holes[r as usize] = DAMAGED;
            let s = r / strip;
            let map = self.geom.stripe(s);
            if let Some(i) = (0..map.ndata).find(|&i| map.data[i] as usize == m) {
                let lba = s * sdb + i as u64 * strip + r % strip;
                if lba < self.geom.array_blocks() {
                    self.out.hole_lost_blocks += u64::from(!self.blocks[lba as usize].lost);
                    self.mark_lost(lba as usize);
                    lost += 1;
                }
            }
        }
        if trace && lost > 0 {
            eprintln!(
                "step {} member {m} lost with {lost} of its blocks in write holes",
                self.step
            );
        }
    }

    /// Array block `b` may read back anything until an acknowledged write,
    /// for reads in flight too.
    fn mark_lost(&mut self, b: usize) {
        self.blocks[b].lost = true;
        for rec in self.parents.values_mut() {
            let (a, e) = (rec.lba as usize, (rec.lba + rec.blocks) as usize);
            if rec.op == IoType::Read && (a..e).contains(&b) && rec.snap.len() == e - a {
                rec.snap[b - a].lost = true;
            }
        }
    }

    fn array(
        sc: &Scenario,
        geom: &Arc<Geometry>,
        state: Arc<ArrayState>,
        sbs: Vec<Option<Superblock>>,
        bitmap: Option<(DiskBitmap, BitmapGeom)>,
        now: u64,
    ) -> Array {
        let (disk, words) = match bitmap {
            Some((d, g)) => (Some(d), Some(Bitmap::new(g))),
            None => (None, None),
        };
        let shared = Arc::new(Shared::with_bitmap(sc.channels, words));
        let channels = (0..sc.channels)
            .map(|i| {
                Channel::new(
                    geom.clone(),
                    state.clone(),
                    shared.clone(),
                    i,
                    sc.config,
                    |len| vec![0u8; len],
                )
            })
            .collect();
        let meta = Meta::new(
            geom.clone(),
            shared.clone(),
            state.clone(),
            sbs,
            disk,
            MetaConfig {
                safemode_ms: sc.safemode,
                retry_min_ms: 5,
                retry_max_ms: 200,
                daemon_sleep_ms: sc.daemon_sleep,
                checkpoint_ms: 200,
            },
            now,
        );
        Array {
            channels,
            retry: (0..sc.channels).map(|_| VecDeque::new()).collect(),
            bcast: (0..sc.channels).map(|_| VecDeque::new()).collect(),
            newest: state,
            applied: 0,
            meta,
            meta_inbox: VecDeque::new(),
        }
    }

    /// Members not in sync in the newest state or any state a channel
    /// still routes by.
    fn out_now(&self) -> u64 {
        self.arr
            .channels
            .iter()
            .fold(self.state().not_in_sync(), |a, c| {
                a | c.state().not_in_sync()
            })
    }

    fn broken_mask(&self) -> u64 {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.broken)
            .fold(0, |a, (i, _)| a | 1 << i)
    }

    /// Whether a fault may break member `m` now (it may hit one already
    /// broken again): the scenario's limits, and with
    /// [`Faults::keep_a_copy`] the level surviving `m` gone beside the
    /// members broken or not in sync.
    fn may_break(&self, m: usize) -> bool {
        let f = &self.sc.faults;
        if f.protect & 1 << m != 0 {
            return false;
        }
        if self.members[m].broken {
            return true;
        }
        self.broken() < f.max_broken
            && (!f.keep_a_copy
                || survives(&self.geom, self.broken_mask() | self.out_now() | 1 << m))
    }

    fn broken(&self) -> usize {
        self.members.iter().filter(|m| m.broken).count()
    }

    fn state(&self) -> &Arc<ArrayState> {
        self.arr.meta.state()
    }

    fn describe(&self) -> String {
        format!(
            "{} children in flight ({} direct I/Os); members {:?}; resync {:?}; rebuild {:?}; crashes {}; meta {}; inbox {}; channels: {}",
            self.inflight.len(),
            self.directs.len(),
            self.state().members,
            self.resync.as_ref().map(|r| r.progress()),
            self.rebuild.as_ref(),
            self.out.crashes,
            self.arr.meta.describe(),
            self.arr.meta_inbox.len(),
            self.arr
                .channels
                .iter()
                .map(|c| c.describe())
                .collect::<Vec<_>>()
                .join(" | ")
        )
    }

    fn run(&mut self) -> Result<(), String> {
        // A hang: no parent completed for this many steps.
        let patience = 200_000;
        let mut submitted = 0;
        while submitted < self.sc.ops || !self.quiet() {
            self.step += 1;
            if self.step > self.last_done + patience {
                if self.ended_held_by_dead_members() {
                    return Ok(());
                }
                return Err(format!(
                    "hang: {} parents never completed; {}",
                    self.parents.len(),
                    self.describe()
                ));
            }
            self.drive_resync()?;
            self.drive_rebuild()?;
            self.check_after_sync()?;
            let r = self.rng.below(100);
            if submitted < self.sc.ops && r < 35 && !self.sync_check {
                let ch = self.rng.below(self.sc.channels as u64) as usize;
                if self.per_channel[ch] < self.sc.queue_depth {
                    self.submit_random(ch)?;
                    submitted += 1;
                }
            } else if !self.inflight.is_empty() && r < 85 {
                self.complete_random()?;
            } else {
                self.misc()?;
            }
            if self.out.ended_by_refusal.is_some() {
                self.out.steps = self.step;
                return Ok(());
            }
            if self.quiet() && submitted >= self.sc.ops {
                break;
            }
            if self.stuck()? {
                if self.ended_held_by_dead_members() {
                    return Ok(());
                }
                return Err(format!(
                    "hang: {} parents outstanding and nothing in flight; host retry queues {:?}; {}",
                    self.parents.len(),
                    self.arr.retry.iter().map(|q| q.len()).collect::<Vec<_>>(),
                    self.describe()
                ));
            }
        }
        self.final_check()
    }

    /// After a resync or rebuild, once nothing is in flight: every member
    /// in sync must agree with the others (copies, parity) byte for byte.
    fn check_after_sync(&mut self) -> Result<(), String> {
        if !self.sync_check || !self.quiet() {
            return Ok(());
        }
        self.sync_check = false;
        self.out.sync_checks += 1;
        self.check_members()
            .map_err(|e| format!("after a resync or rebuild: {e}"))
    }

    /// Nothing left anywhere (write-behind children outlive their parents,
    /// and one the host had no memory for waits in its channel).
    fn quiet(&self) -> bool {
        self.resync.is_none()
            && self.rebuild.is_none()
            && self.parents.is_empty()
            && self.inflight.is_empty()
            && self.arr.channels.iter().all(|c| c.behind_in_flight() == 0)
            && self.arr.meta_inbox.is_empty()
            && self.arr.bcast.iter().all(|q| q.is_empty())
    }

    /// End the run (true) if every member is dead and only writes (a
    /// rebuild's or resync's included) are outstanding, held by a
    /// metadata path that no member lets write a superblock: R3 holds
    /// them (a dead member cannot be told from a failing write, which a
    /// retry may get through), and the array reports itself blocked. The
    /// run ends there, as when assembly finds no member.
    fn ended_held_by_dead_members(&mut self) -> bool {
        let held = self.members.iter().all(|m| m.dead)
            && self.arr.meta.status().blocked
            && self.parents.values().all(|r| r.op.writes());
        if held {
            self.out.steps = self.step;
            self.out.ended_by_refusal = Some(format!(
                "every member is dead; the array is blocked (R3), holding writes: {}",
                self.parents.len()
            ));
        }
        held
    }

    /// Parents outstanding but no event can move them.
    fn stuck(&mut self) -> Result<bool, String> {
        if self.parents.is_empty()
            || !self.inflight.is_empty()
            || !self.arr.meta_inbox.is_empty()
            || self.arr.bcast.iter().any(|q| !q.is_empty())
        {
            return Ok(false);
        }
        // Polls (retries, lock waiters; a resubmitted child may meet ENOMEM
        // again) and time passing (the metadata path's retries and safe
        // mode) before deciding.
        for _ in 0..100 {
            self.step += 1;
            self.tick()?;
            for ch in 0..self.arr.channels.len() {
                self.poll_channel(ch);
                self.drain(ch)?;
            }
            self.flush_meta()?;
            if self.parents.is_empty() || !self.inflight.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Deliver every queued meta request and broadcast (no reordering).
    fn flush_meta(&mut self) -> Result<(), String> {
        loop {
            if let Some(r) = self.arr.meta_inbox.pop_front() {
                self.arr.meta.request(r);
                self.pump_meta();
                continue;
            }
            let Some(ch) = (0..self.arr.channels.len()).find(|&c| !self.arr.bcast[c].is_empty())
            else {
                return Ok(());
            };
            let b = self.arr.bcast[ch].pop_front().unwrap();
            self.deliver(ch, b)?;
        }
    }

    /// Member faults are off while a resync runs, unless the scenario
    /// keeps them on ([`Scenario::resync_faults`]): a member lost before
    /// the parity of every stripe is right again loses its blocks of the
    /// unsynced stripes (the write hole md documents), which no engine can
    /// avoid and the checker forgives ([`Sim::holes`]), nothing more.
    fn member_faults(&self) -> bool {
        self.faults_on && (self.resync.is_none() || self.sc.resync_faults)
    }

    /// Submit the next resync window when none is in flight; when every
    /// window is done, let the metadata path mark the array clean again.
    fn drive_resync(&mut self) -> Result<(), String> {
        let Some(r) = self.resync.as_ref() else {
            return Ok(());
        };
        // Paced: the next window waits (never the end of the resync).
        if self.sc.resync_faults
            && self.sc.resync_pace < 1.0
            && r.in_flight().is_none()
            && !r.is_done()
            && !self.pace.chance(self.sc.resync_pace)
        {
            return Ok(());
        }
        let r = self.resync.as_mut().unwrap();
        let shared = self.arr.channels[0].shared().clone();
        let Some(w) = r.next_window(&shared) else {
            if r.is_done() && r.failed_windows() > 0 {
                // A window failed (more reads failed in a stripe than the
                // level survives): the host's driver leaves the array
                // dirty, and this host starts the resync again over what
                // is left (the chunks still marked, or from the checkpoint)
                // until one gets through or the array is offline.
                let failed = r.failed_windows();
                self.out.resync_restarts += 1;
                if std::env::var_os("MDRAID_SIM_TRACE").is_some() {
                    eprintln!(
                        "step {} resync ended with {failed} failed windows{}",
                        self.step,
                        if self.state().offline {
                            "; the array is offline"
                        } else {
                            "; starting it again"
                        }
                    );
                }
                if self.out.resync_restarts > 1000 {
                    return Err(format!(
                        "a resync failed {} times over; {}",
                        self.out.resync_restarts,
                        self.describe()
                    ));
                }
                if self.broken() > self.redundancy() {
                    // More members broke than the level survives (one
                    // dead that only reads have met is not failed yet):
                    // some stripes cannot be resynced, as md finds too,
                    // and nothing can be verified past this point.
                    self.out.steps = self.step;
                    self.out.ended_by_refusal = Some(format!(
                        "{} members broke (the level survives {}); the resync cannot finish",
                        self.broken(),
                        self.redundancy()
                    ));
                    return Ok(());
                }
                if self.state().offline {
                    self.resync = None;
                    self.resync_tag = None;
                } else {
                    self.start_resync();
                }
                return Ok(());
            }
            if r.is_done() {
                // The write-mostly copies agree with the others again.
                self.exposed.clear();
                self.out.resyncs += 1;
                self.sync_check = true;
                self.out.resync_blocks += r.progress().0;
                self.resync = None;
                self.resync_tag = None;
                if std::env::var_os("MDRAID_SIM_TRACE").is_some() {
                    eprintln!("step {} resync done", self.step);
                }
                self.arr.meta.mark_synced();
                self.pump_meta();
            }
            return Ok(());
        };
        let (at, blocks) = (w.lba, w.blocks);
        let tag = self.next_tag;
        self.next_tag += 1;
        self.parents.insert(
            tag,
            ParentRec::new(IoType::Resync, at, blocks, self.out_now()),
        );
        self.per_channel[0] += 1;
        self.resync_tag = Some(tag);
        let io = ParentIo {
            tag,
            op: IoType::Resync,
            lba: at,
            blocks,
            fua: false,
            buf: Some(vec![0; blocks as usize * self.bs]),
        };
        let a = &mut self.arr;
        if !a.retry[0].is_empty() {
            a.retry[0].push_back(io);
        } else if let Err(Busy(io)) = a.channels[0].submit(io) {
            a.retry[0].push_back(io);
        }
        self.drain(0)
    }

    /// Bring a failed member back: one that is not dead is re-added (from
    /// the bitmap if its events allow), a dead one is replaced by a blank
    /// device. Not while a resync or a rebuild runs.
    fn maybe_readd(&mut self) -> Result<(), String> {
        if !self.sc.readd
            || !self.faults_on
            || self.resync.is_some()
            || self.rebuild.is_some()
            || !self.rng.chance(0.3)
        {
            return Ok(());
        }
        let st = self.state().clone();
        // Any role out (several may be added while one add's commit is in
        // flight).
        let out: Vec<usize> = (0..st.members.len())
            .filter(|&r| matches!(st.members[r], MemberState::Faulty | MemberState::Missing))
            .collect();
        if out.is_empty() {
            return Ok(());
        }
        let r = out[self.rng.below(out.len() as u64) as usize];
        let sectors = self.members[r].data.len() as u64 / 512;
        let at = SB_OFFSET_BYTES as usize;
        let blank = self.members[r].dead;
        let nm = if blank {
            // A new blank device in its place (put there once the add is
            // accepted: a refused add leaves the role as it was).
            NewMember {
                device_uuid: [0x40 | (self.step as u8 & 0x3f); 16],
                sectors,
                old_sb: None,
                write_mostly: self.sc.write_mostly & 1 << r != 0,
            }
        } else {
            let old = Superblock::decode(&self.members[r].data[at..at + 4096], sectors).ok();
            NewMember {
                device_uuid: old.as_ref().map_or([0x70; 16], |s| s.device_uuid),
                sectors,
                old_sb: old,
                write_mostly: self.sc.write_mostly & 1 << r != 0,
            }
        };
        let trace = std::env::var_os("MDRAID_SIM_TRACE").is_some();
        // An add accepted before and never published (no state brought a
        // device into the role since) must still be pending: the metadata
        // path refuses another.
        let unpublished = self.members[r].added && self.members[r].joined.is_none();
        match self.arr.meta.add_member(r, nm) {
            Ok(_) if unpublished => {
                return Err(format!(
                    "an add of role {r} was accepted and then dropped: the role is \
                     still out and another add was taken; {}",
                    self.describe()
                ));
            }
            Ok(kind) => {
                if blank {
                    self.members[r].data.fill(0);
                    self.members[r].dead = false;
                    self.members[r].gen += 1;
                }
                self.members[r].broken = false;
                self.members[r].added = true;
                self.members[r].joined = None;
                match kind {
                    Recovery::Bitmap => self.out.readds_bitmap += 1,
                    Recovery::Full => self.out.readds_full += 1,
                }
                if trace {
                    eprintln!("step {} member {r} added: {kind:?}", self.step);
                }
            }
            Err(e) if trace => eprintln!("step {} member {r} not added: {e}", self.step),
            Err(_) => {}
        }
        self.pump_meta();
        Ok(())
    }

    /// Rebuild members the state records recovering, after any resync:
    /// submit every range of the current window; a rebuild that failed is
    /// restarted only once the state changed.
    fn drive_rebuild(&mut self) -> Result<(), String> {
        if self.resync.is_some() {
            return Ok(());
        }
        let st = self.state().clone();
        if let Some(r) = &self.rebuild {
            let m = r.member();
            // Still rebuilding the same device (not one that left since).
            let still = matches!(st.members[m], MemberState::Recovering(_))
                && st.readded[m] == r.device()
                && !st.offline;
            if (!still || r.failed() || r.is_done()) && r.in_flight() == 0 {
                if r.is_done() && still {
                    // Waiting for the commit that records it in sync.
                    return Ok(());
                }
                if r.is_done() {
                    self.out.rebuilds += 1;
                    self.sync_check = true;
                    let (a, b) = r.counts();
                    self.out.rebuilt_blocks += a;
                    self.out.rebuild_skipped_blocks += b;
                    self.members[m].added = false;
                }
                if r.failed() {
                    self.rebuild_stopped = Some((m, st.events));
                }
                self.rebuild = None;
                return Ok(());
            }
        }
        if self.rebuild.is_none() && !st.offline {
            let Some(m) = (0..st.members.len())
                .find(|&m| matches!(st.members[m], MemberState::Recovering(_)))
            else {
                return Ok(());
            };
            if self.rebuild_stopped == Some((m, st.events)) {
                return Ok(());
            }
            let Some(info) = self.arr.meta.recovery(m) else {
                return Ok(());
            };
            let window = if self.geom.level().is_parity() {
                self.geom.strip_blocks()
            } else {
                self.sc.max_blocks
            };
            self.rebuild = Some(Rebuild::new(
                &self.geom,
                m,
                info.device,
                info.from,
                window,
                info.kind == Recovery::Bitmap,
            ));
        }
        let shared = self.arr.channels[0].shared().clone();
        loop {
            let Some(r) = self.rebuild.as_mut() else {
                return Ok(());
            };
            let Some(w) = r.next_window(&self.geom, &shared) else {
                if r.in_flight() == 0 {
                    let (m, dev, off) = (r.member(), r.device(), r.offset());
                    self.arr.meta.recovery_progress(m, dev, off);
                    self.pump_meta();
                }
                return Ok(());
            };
            let op = IoType::Rebuild {
                member: r.member() as u16,
            };
            let tag = self.next_tag;
            self.next_tag += 1;
            self.parents
                .insert(tag, ParentRec::new(op, w.lba, w.blocks, self.out_now()));
            self.per_channel[0] += 1;
            self.rebuild_tags.push(tag);
            let io = ParentIo {
                tag,
                op,
                lba: w.lba,
                blocks: w.blocks,
                fua: false,
                buf: Some(vec![0; w.blocks as usize * self.bs]),
            };
            let a = &mut self.arr;
            if !a.retry[0].is_empty() {
                a.retry[0].push_back(io);
            } else if let Err(Busy(io)) = a.channels[0].submit(io) {
                a.retry[0].push_back(io);
            }
            self.drain(0)?;
        }
    }

    fn tick(&mut self) -> Result<(), String> {
        self.arr.meta.tick(self.step);
        self.pump_meta();
        Ok(())
    }

    fn misc(&mut self) -> Result<(), String> {
        match self.rng.below(7) {
            6 => self.maybe_readd()?,
            0 => {
                if let Some(r) = self.arr.meta_inbox.pop_front() {
                    self.arr.meta.request(r);
                    self.pump_meta();
                }
            }
            1 => {
                let ch = self.rng.below(self.sc.channels as u64) as usize;
                if let Some(b) = self.arr.bcast[ch].pop_front() {
                    self.deliver(ch, b)?;
                }
            }
            2 => {
                let ch = self.rng.below(self.sc.channels as u64) as usize;
                self.poll_channel(ch);
                self.drain(ch)?;
            }
            3 => self.tick()?,
            4 => {
                // Crashes come at random, and far more often while a
                // superblock commit is in flight: the moments md's worst
                // bugs lived in.
                let committing = self
                    .inflight
                    .iter()
                    .any(|f| matches!(f, InFlight::Sb { .. }))
                    || self
                        .arr
                        .meta_inbox
                        .iter()
                        .any(|r| matches!(r, MetaRequest::MemberFailed { .. }));
                let chance = if committing {
                    0.5
                } else {
                    self.sc.crash_chance
                };
                if self.faults_on && self.crashes_left > 0 && self.rng.chance(chance) {
                    self.crash()?;
                }
            }
            _ => {
                let mut death = self.sc.faults.member_death * 50.0;
                if self.resync.is_some() && self.sc.resync_faults {
                    death = death.max(self.sc.resync_death);
                }
                if self.member_faults()
                    && self.rng.chance(death)
                    && self.broken() < self.sc.faults.max_broken
                {
                    let m = self.rng.below(self.members.len() as u64) as usize;
                    if self.may_break(m) {
                        self.out.resync_faults += u64::from(self.resync.is_some());
                        self.members[m].dead = true;
                        self.members[m].broken = true;
                        self.lose(m, None);
                    }
                }
            }
        }
        Ok(())
    }

    fn poll_channel(&mut self, ch: usize) {
        let a = &mut self.arr;
        while let Some(io) = a.retry[ch].pop_front() {
            if let Err(Busy(io)) = a.channels[ch].submit(io) {
                a.retry[ch].push_front(io);
                break;
            }
        }
        a.channels[ch].poll();
    }

    /// Carry out what the metadata path asks for.
    fn pump_meta(&mut self) {
        while let Some(a) = self.arr.meta.poll_action() {
            match a {
                MetaAction::WriteSb {
                    member,
                    token,
                    offset,
                    data,
                } => {
                    assert!(
                        offset == SB_OFFSET_BYTES || offset == BITMAP_AT as u64,
                        "metadata write at {offset}"
                    );
                    assert!(
                        offset as usize + data.len() <= self.data_off,
                        "metadata write into the data area"
                    );
                    self.out.superblock_writes += 1;
                    self.inflight.push(InFlight::Sb {
                        gen: self.members[member as usize].gen,
                        member,
                        token,
                        offset,
                        data,
                    });
                }
                MetaAction::Broadcast(s) => {
                    if std::env::var_os("MDRAID_SIM_TRACE").is_some() {
                        eprintln!(
                            "step {} broadcast {:?}; {}",
                            self.step,
                            s,
                            self.arr.meta.describe()
                        );
                    }
                    for (m, member) in self.members.iter_mut().enumerate() {
                        if s.readded[m] != self.arr.newest.readded[m] {
                            member.joined = Some(s.readded[m]);
                        }
                    }
                    self.out.ever_offline |= s.offline;
                    self.arr.newest = s.clone();
                    self.arr.applied = 0;
                    for q in &mut self.arr.bcast {
                        q.push_back(Bcast::Apply(s.clone()));
                    }
                }
            }
        }
    }

    /// Hand a broadcast to a channel. When the last channel has applied a
    /// state, every channel is told to release what waited for it.
    fn deliver(&mut self, ch: usize, b: Bcast) -> Result<(), String> {
        let a = &mut self.arr;
        match b {
            Bcast::Apply(s) => {
                a.channels[ch].apply_state(s.clone());
                if Arc::ptr_eq(&s, &a.newest) {
                    a.applied += 1;
                    if a.applied == a.channels.len() {
                        a.meta.released(s.seq);
                        for q in &mut a.bcast {
                            q.push_back(Bcast::Release(s.clone()));
                        }
                    }
                }
            }
            Bcast::Release(s) => a.channels[ch].release(s),
        }
        self.drain(ch)
    }

    fn submit_random(&mut self, ch: usize) -> Result<(), String> {
        if !self.exposed.is_empty() {
            // A fast copy may have died or failed since.
            self.check_exposed(0, None);
        }
        let size = self.geom.array_blocks();
        let r = self.rng.below(100);
        let mut op = match r {
            0..=39 => IoType::Read,
            40..=87 => IoType::Write,
            88..=91 => IoType::WriteZeroes,
            92..=94 => IoType::Unmap,
            95..=98 => IoType::Flush,
            _ => IoType::Reset,
        };
        let max = self.sc.max_blocks.min(size);
        let mut blocks = if self.rng.chance(0.3) {
            // Whole strips / stripes, aligned.
            let unit = if self.geom.level().is_parity() {
                self.geom.stripe_data_blocks()
            } else {
                self.geom.strip_blocks()
            };
            (unit * self.rng.range(1, 2)).min(size)
        } else {
            self.rng.range(1, max)
        };
        let mut lba = self.rng.below(size - blocks + 1);
        if self.rng.chance(0.3) {
            let unit = self.geom.strip_blocks();
            lba -= lba % unit;
        }
        if self.sc.direct > 0.0 && !self.geom.level().is_parity() && self.rng.chance(0.35) {
            // One piece (within a strip; raid1: within a range-lock
            // granule), which the direct path takes.
            let unit = if self.geom.level() == Level::Raid1 {
                (RAID1_LOCK_BYTES / self.bs as u64).max(1)
            } else {
                self.geom.strip_blocks()
            };
            lba = self.rng.below(size);
            blocks = self
                .rng
                .range(1, (lba / unit + 1) * unit - lba)
                .min(size - lba);
        }
        let range = lba as usize..(lba + blocks) as usize;
        if matches!(op, IoType::Write | IoType::WriteZeroes | IoType::Unmap)
            && self.blocks[range.clone()]
                .iter()
                .any(|b| b.pending.is_some())
        {
            op = IoType::Read;
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let mut rec = ParentRec::new(op, lba, blocks, self.out_now());
        let buf = match op {
            IoType::Read => {
                rec.snap = self.blocks[range].to_vec();
                Some(vec![0xa5; blocks as usize * self.bs])
            }
            IoType::Write | IoType::WriteZeroes | IoType::Unmap => {
                let id = self.next_id;
                self.next_id += 1;
                rec.id = id;
                let zero = op != IoType::Write;
                for b in range.clone() {
                    self.blocks[b].pending = Some(id);
                    self.history[b].push((id, zero));
                }
                if op == IoType::Write {
                    let mut v = vec![0u8; blocks as usize * self.bs];
                    for (i, c) in v.chunks_mut(self.bs).enumerate() {
                        pattern(id, lba + i as u64, false, c);
                    }
                    Some(v)
                } else {
                    None
                }
            }
            _ => None,
        };
        self.parents.insert(tag, rec);
        self.per_channel[ch] += 1;
        self.out.parents += 1;
        let io = ParentIo {
            tag,
            op,
            lba,
            blocks,
            fua: self.rng.chance(0.1),
            buf,
        };
        if matches!(op, IoType::Read | IoType::Write)
            && self.sc.direct > 0.0
            && self.rng.chance(self.sc.direct)
        {
            if let Some(d) = self.arr.channels[ch].direct(op, lba, blocks) {
                return self.issue_direct(ch, d, io);
            }
            self.out.direct_refused += 1;
        }
        let a = &mut self.arr;
        if !a.retry[ch].is_empty() {
            a.retry[ch].push_back(io);
        } else if let Err(Busy(io)) = a.channels[ch].submit(io) {
            a.retry[ch].push_back(io);
        }
        self.drain(ch)
    }

    /// Carry out every action channel `ch` has.
    fn drain(&mut self, ch: usize) -> Result<(), String> {
        while let Some(a) = self.arr.channels[ch].poll_action() {
            match a {
                Action::Submit(io) => {
                    let m = io.member as usize;
                    if io.lba + io.blocks > self.geom.member_blocks(m) {
                        return Err(format!("child past the end of member {m}: {io:?}"));
                    }
                    if matches!(
                        io.op,
                        ChildOp::Write | ChildOp::WriteZeroes | ChildOp::Unmap
                    ) {
                        self.check_bit_before_data(ch, io.member, io.parent)?;
                    }
                    if matches!(io.buf, ChildBuf::Behind { .. }) {
                        if let Some(rec) = self.parents.get(&io.parent) {
                            let b = self
                                .behind_rec(ch, rec.lba, rec.blocks, rec.id, rec.landed, &io)
                                .ok_or_else(|| {
                                    format!(
                                        "write-behind child {io:?} is no copy of its parent {}+{}",
                                        rec.lba, rec.blocks
                                    )
                                })?;
                            // A child resubmitted after ENOMEM keeps the
                            // record of its first issue.
                            self.behind.entry((ch, io.token)).or_insert(b);
                        }
                    }
                    if self.faults_on && self.rng.chance(self.sc.faults.nomem) {
                        self.out.nomem += 1;
                        self.arr.channels[ch].child_done(io.token, ChildStatus::NoMem);
                    } else {
                        let gen = self.members[m].gen;
                        self.inflight.push(InFlight::Child { ch, io, gen });
                    }
                }
                Action::Complete { tag, status, buf } => self.parent_done(ch, tag, status, buf)?,
                Action::Meta(r) => self.arr.meta_inbox.push_back(r),
            }
        }
        Ok(())
    }

    /// The host carries out direct read or write `d` of parent `io` on
    /// channel `ch`: one member I/O per target, each moving the whole
    /// buffer (R4 is checked for each write as for a child's).
    fn issue_direct(&mut self, ch: usize, d: Direct, io: ParentIo<Buf>) -> Result<(), String> {
        let trace = std::env::var_os("MDRAID_SIM_TRACE").is_some();
        if d.blocks() != io.blocks || d.is_write() != (io.op == IoType::Write) {
            return Err(format!("direct {d:?} does not match its parent {io:?}"));
        }
        if d.is_write() {
            self.out.direct_writes += 1;
        } else {
            self.out.direct_reads += 1;
            if d.targets().len() != 1 {
                return Err(format!("direct read with {} targets", d.targets().len()));
            }
        }
        for t in d.targets() {
            let m = t.member as usize;
            if t.lba + d.blocks() > self.geom.member_blocks(m) {
                return Err(format!("direct I/O past the end of member {m}: {d:?}"));
            }
            if d.is_write() {
                self.check_bit_before_data(ch, t.member, io.tag)?;
            }
            if trace {
                eprintln!(
                    "step {} ch {ch} direct {:?} {}+{} -> m{} lba {}",
                    self.step, io.op, io.lba, io.blocks, m, t.lba
                );
            }
            self.inflight.push(InFlight::Direct {
                tag: io.tag,
                member: t.member,
                lba: t.lba,
                gen: self.members[m].gen,
            });
        }
        let left = d.targets().len();
        let tag = io.tag;
        let seq = self.arr.channels[ch].state().seq;
        let prev = self.directs.insert(
            tag,
            DirectRec {
                ch,
                d,
                io,
                left,
                failed: 0,
                write_errors: 0,
                seq,
            },
        );
        if prev.is_some() {
            return Err(format!("parent {tag} went direct twice"));
        }
        Ok(())
    }

    /// A member I/O of direct parent `tag` ends (`gone`: its device was
    /// replaced since, it fails). When the last one ends, the host
    /// completes the parent itself if all succeeded; else it submits the
    /// parent to the channel (which redoes it and handles the failure) and
    /// only then reports the direct I/O done.
    fn direct_io_done(
        &mut self,
        tag: u64,
        member: u16,
        lba: u64,
        gone: bool,
    ) -> Result<(), String> {
        let m = member as usize;
        let Some(r) = self.directs.get(&tag) else {
            return Err(format!("direct I/O of parent {tag} outlived its record"));
        };
        let (write, ch) = (r.d.is_write(), r.ch);
        let off = self.data_off + lba as usize * self.bs;
        let len = r.d.blocks() as usize * self.bs;
        let ok = if gone {
            false
        } else if write {
            !self.write_fails(m)
        } else {
            let f = &self.sc.faults;
            !(self.members[m].dead || (self.member_faults() && self.rng.chance(f.read_error)))
        };
        let r = self.directs.get_mut(&tag).unwrap();
        let buf = r.io.buf.as_mut().expect("direct I/O without its buffer");
        if buf.len() != len {
            return Err(format!("direct buffer size mismatch: {:?}", r.d));
        }
        if ok {
            let data = &mut self.members[m].data[off..off + len];
            if write {
                data.copy_from_slice(buf);
            } else {
                buf.copy_from_slice(data);
            }
        } else {
            self.out.child_errors += 1;
            r.failed |= 1 << m;
            if write && !gone {
                self.out.direct_write_errors += 1;
                r.write_errors |= 1 << m;
            }
        }
        if std::env::var_os("MDRAID_SIM_TRACE").is_some() {
            eprintln!(
                "step {} ch {ch} direct {} of parent {tag} on m{m} lba {lba}: {}",
                self.step,
                if write { "write" } else { "read" },
                if ok { "ok" } else { "failed" }
            );
        }
        r.left -= 1;
        let left = r.left;
        if !ok && !write {
            self.read_failed(m, tag);
        }
        if left > 0 {
            return Ok(());
        }
        let r = self.directs.remove(&tag).unwrap();
        if r.failed == 0 {
            self.parent_done(ch, tag, IoStatus::Success, r.io.buf)?;
            self.arr.channels[ch].direct_done(&r.d);
        } else {
            self.out.direct_redone += 1;
            if let Some(rec) = self.parents.get_mut(&tag) {
                rec.write_errors = (r.write_errors, r.seq);
            }
            self.arr.channels[ch].direct_redo(&r.d, r.failed, r.io);
        }
        self.drain(ch)
    }

    /// R4: a data write (a child of parent `parent`, or a direct write's
    /// I/O) to `member` is issued only once the bits of every chunk its
    /// parent touches are on the member's disk (members whose writes fail
    /// are being failed and are not checked).
    fn check_bit_before_data(&self, ch: usize, member: u16, parent: u64) -> Result<(), String> {
        let shared = self.arr.channels[ch].shared();
        let (Some(bm), Some(rec)) = (&shared.bitmap, self.parents.get(&parent)) else {
            return Ok(());
        };
        let m = member as usize;
        // Rewrites of a block that failed a read put back the data the
        // other copies hold: torn or not, they leave nothing to resync.
        // So do a rebuild's writes (md's recovery), and the member being
        // rebuilt is trusted only below its checkpoint.
        if self.members[m].broken || matches!(rec.op, IoType::Read | IoType::Rebuild { .. }) {
            return Ok(());
        }
        // A channel still on a state from before the device in the role
        // joined writes for its predecessor: the device is no member yet
        // (its superblock says so) and is rebuilt once it is.
        let st = self.arr.channels[ch].state();
        if self.members[m].joined.is_none_or(|j| st.readded[m] < j) {
            return Ok(());
        }
        let (c0, c1) = bm.geom().chunks_of(rec.lba, rec.blocks);
        for c in c0..=c1 {
            if !bitmap_get(&self.members[m].data[BITS_AT..], c) {
                return Err(format!(
                    "R4: {:?} of {}+{} wrote member {m} before chunk {c}'s bit was on its disk",
                    rec.op, rec.lba, rec.blocks
                ));
            }
        }
        Ok(())
    }

    /// Whether a write to member `m` fails now.
    fn write_fails(&mut self, m: usize) -> bool {
        let f = &self.sc.faults;
        let inject = self.member_faults() && self.may_break(m) && self.rng.chance(f.write_error);
        if inject && self.resync.is_some() {
            self.out.resync_faults += 1;
        }
        if self.members[m].dead || inject {
            self.members[m].broken = true;
            self.lose(m, None);
            true
        } else {
            false
        }
    }

    fn complete_random(&mut self) -> Result<(), String> {
        let i = self.rng.below(self.inflight.len() as u64) as usize;
        let m = self.inflight[i].member();
        if self.sc.faults.slow & (1 << m) != 0 && self.rng.chance(self.sc.faults.slow_skip) {
            return Ok(());
        }
        let gone = self.inflight[i].gen() != self.members[m].gen;
        let (ch, io) = match self.inflight.swap_remove(i) {
            InFlight::Sb {
                member,
                token,
                offset,
                data,
                ..
            } => {
                let ok = !gone && !self.write_fails(m);
                if ok {
                    let at = offset as usize;
                    self.members[m].data[at..at + data.len()].copy_from_slice(&data);
                } else {
                    self.out.child_errors += 1;
                }
                let _ = member;
                self.arr.meta.sb_write_done(token, ok);
                self.pump_meta();
                return Ok(());
            }
            InFlight::Direct {
                tag, member, lba, ..
            } => return self.direct_io_done(tag, member, lba, gone),
            InFlight::Child { ch, io, .. } if gone => {
                // The device it went to was replaced: it fails.
                self.out.child_errors += 1;
                self.note_write_failed(&io);
                self.behind.remove(&(ch, io.token));
                self.arr.channels[ch].child_done(io.token, ChildStatus::Error);
                return self.drain(ch);
            }
            InFlight::Child { ch, io, .. } => (ch, io),
        };
        if std::env::var_os("MDRAID_SIM_TRACE").is_some() {
            let what = self
                .parents
                .get(&io.parent)
                .map(|p| (p.op, p.lba, p.blocks));
            eprintln!(
                "step {} ch {ch} complete {:?} m{} lba {} +{} for {:?}",
                self.step, io.op, io.member, io.lba, io.blocks, what
            );
        }
        let bs = self.bs;
        let off = self.data_off + io.lba as usize * bs;
        let len = io.blocks as usize * bs;
        let status = match io.op {
            ChildOp::Read => {
                let f = &self.sc.faults;
                // (Drawn only for a member not dead, as always.)
                let inject =
                    !self.members[m].dead && self.member_faults() && self.rng.chance(f.read_error);
                if inject && self.resync.is_some() {
                    self.out.resync_faults += 1;
                }
                if self.members[m].dead || inject {
                    ChildStatus::Error
                } else {
                    let src = &self.members[m].data[off..off + len];
                    self.arr.channels[ch]
                        .child_data(io.buf)
                        .copy_from_slice(src);
                    ChildStatus::Success
                }
            }
            ChildOp::Write | ChildOp::WriteZeroes | ChildOp::Unmap | ChildOp::Flush => {
                if self.write_fails(m) {
                    ChildStatus::Error
                } else {
                    match io.op {
                        ChildOp::Write => {
                            let src = self.arr.channels[ch].child_data(io.buf);
                            if src.len() != len {
                                return Err(format!("child buffer size mismatch: {io:?}"));
                            }
                            self.members[m].data[off..off + len].copy_from_slice(src)
                        }
                        ChildOp::Flush => {}
                        _ => self.members[m].data[off..off + len].fill(0),
                    }
                    ChildStatus::Success
                }
            }
            ChildOp::Reset => ChildStatus::Success,
        };
        if status == ChildStatus::Success
            && io.op == ChildOp::Write
            && !matches!(io.buf, ChildBuf::Behind { .. })
            && self.arr.channels[ch].shared().failed() & 1 << m == 0
        {
            self.note_landed(io.parent, m);
        }
        if status == ChildStatus::Error {
            self.out.child_errors += 1;
            self.note_write_failed(&io);
            if io.op == ChildOp::Read {
                if let Some(p) = self.parents.get_mut(&io.parent) {
                    p.read_errors |= 1 << m;
                }
                // The engine rebuilds what it could not read from the rest
                // and the parity (and writes it back).
                self.lose(m, Some(io.lba..io.lba + io.blocks));
                self.read_failed(m, io.parent);
            }
        }
        self.behind.remove(&(ch, io.token));
        self.arr.channels[ch].child_done(io.token, status);
        self.drain(ch)
    }

    /// Crash: every write in flight lands whole, in part or not at all
    /// (torn at the device's atomic unit), everything in memory is lost, and
    /// the array is assembled again from what the members hold.
    fn crash(&mut self) -> Result<(), String> {
        self.crashes_left -= 1;
        self.out.crashes += 1;
        let bs = self.bs;
        // The atomic write unit: a logical block (512 for 512-byte blocks).
        let unit = bs;
        for f in std::mem::take(&mut self.inflight) {
            if f.gen() != self.members[f.member()].gen {
                continue;
            }
            let token = match &f {
                InFlight::Child { ch, io, .. } => Some((*ch, io.token)),
                InFlight::Sb { .. } | InFlight::Direct { .. } => None,
            };
            let (m, off, data): (usize, usize, Vec<u8>) = match f {
                InFlight::Sb {
                    member,
                    offset,
                    data,
                    ..
                } => (member as usize, offset as usize, data),
                InFlight::Child { ch, io, .. } => {
                    let len = io.blocks as usize * bs;
                    let data = match io.op {
                        ChildOp::Write => self.arr.channels[ch].child_data(io.buf).to_vec(),
                        ChildOp::WriteZeroes | ChildOp::Unmap => vec![0; len],
                        _ => continue,
                    };
                    (
                        io.member as usize,
                        self.data_off + io.lba as usize * bs,
                        data,
                    )
                }
                // A direct write in flight is a member write like any
                // child's: torn, landed or not.
                InFlight::Direct {
                    tag, member, lba, ..
                } => {
                    let r = &self.directs[&tag];
                    if !r.d.is_write() {
                        continue;
                    }
                    let data = r.io.buf.clone().expect("direct write without its buffer");
                    self.out.direct_cut += 1;
                    (member as usize, self.data_off + lba as usize * bs, data)
                }
            };
            if self.members[m].dead {
                continue;
            }
            let how = self.rng.below(3);
            if how == 1 {
                if let Some(t) = token {
                    self.behind.remove(&t);
                }
            }
            for (i, c) in data.chunks(unit).enumerate() {
                if how == 1 || (how == 2 && self.rng.chance(0.5)) {
                    let at = off + i * unit;
                    self.members[m].data[at..at + c.len()].copy_from_slice(c);
                }
            }
        }
        // Write-behind writes that did not land whole (or never left their
        // channel): where no other copy of their range survives, the
        // acknowledged data is lost with them (md's write-behind risk: a
        // crash together with the loss of every fast copy).
        self.exposed
            .extend(std::mem::take(&mut self.behind).into_values());
        // Direct I/Os die with the channels that handed them out; their
        // parents are unacknowledged like any other in flight.
        self.directs.clear();
        self.check_exposed(0, None);
        // Whatever was not acknowledged may or may not have landed.
        for (_, rec) in self.parents.drain() {
            if writes_data(rec.op) {
                for b in rec.lba as usize..(rec.lba + rec.blocks) as usize {
                    let s = &mut self.blocks[b];
                    s.pending = None;
                    s.alt_since = Some(s.alt_since.map_or(rec.id, |a| a.min(rec.id)));
                }
            }
        }
        self.per_channel.iter_mut().for_each(|c| *c = 0);
        // Assemble from the members' bytes; dead members cannot be read.
        let names: Vec<String> = (0..self.members.len())
            .map(|m| format!("member{m}"))
            .collect();
        let mut idx = Vec::new();
        let cands: Vec<Candidate<'_>> = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.dead)
            .map(|(i, m)| {
                idx.push(i);
                Candidate {
                    name: &names[i],
                    sb: &m.data[SB_OFFSET_BYTES as usize..],
                    sectors: m.data.len() as u64 / 512,
                }
            })
            .collect();
        let opts = AssembleOptions {
            uuid: None,
            force: false,
            block_size: bs as u32,
        };
        let asm = match assemble(&cands, &opts) {
            Ok(a) => a,
            Err(_) if cands.is_empty() => {
                self.out.ended_by_refusal = Some("every member is dead".into());
                return Ok(());
            }
            Err(e @ (AssembleError::DirtyDegraded { .. } | AssembleError::NotEnough { .. })) => {
                self.out.ended_by_refusal = Some(e.to_string());
                return Ok(());
            }
            Err(e @ AssembleError::NoSuperblock(_))
                if self.members.iter().filter(|m| m.broken || m.added).count()
                    > self.redundancy() =>
            {
                // Only blank replacements are left of the members.
                self.out.ended_by_refusal = Some(e.to_string());
                return Ok(());
            }
            Err(e) => return Err(format!("assembly after crash failed: {e}")),
        };
        // R6: only members that missed something may be left out.
        for (r, m) in asm.member_of_role.iter().enumerate() {
            let used = m.map(|c| idx[c]);
            if used != Some(r) && !self.members[r].broken && !self.members[r].added {
                return Err(format!(
                    "assembly left out healthy member {r}: {:?}",
                    asm.refused
                ));
            }
        }
        // More members broke than the level survives and a broken one is
        // all that is left of some data: md assembles it too, and nothing
        // can be verified past this point.
        let used_broken = asm
            .member_of_role
            .iter()
            .flatten()
            .any(|&c| self.members[idx[c]].broken);
        if self.broken() > self.redundancy() && used_broken {
            self.out.ended_by_refusal = Some(format!(
                "{} members broke (the level survives {}); assembled from one that missed writes",
                self.broken(),
                self.redundancy()
            ));
            return Ok(());
        }
        let (a, g) = (&asm.geometry, &self.geom);
        if (a.level(), a.layout(), a.members(), a.array_blocks())
            != (g.level(), g.layout(), g.members(), g.array_blocks())
        {
            return Err(format!("assembly found another geometry: {a:?} vs {g:?}"));
        }
        if std::env::var_os("MDRAID_SIM_TRACE").is_some() {
            eprintln!(
                "step {} crash: assembled dirty {} events {} refused {:?}",
                self.step, asm.dirty, asm.state.events, asm.refused
            );
        }
        if !asm.dirty && self.geom.level().is_parity() && asm.state.not_in_sync() == 0 {
            // Clean means every stripe's parity matches its data on all
            // members (including ones assembly left out).
            // (Rows a write hole damaged excepted: their parity is known
            // only once written again.)
            let strip = self.geom.strip_blocks();
            for r in 0..self.holes.len() as u64 {
                if self.holes[r as usize] != DAMAGED && !self.row_consistent(r) {
                    return Err(format!(
                        "assembled clean but stripe {} has stale parity (row {})",
                        r / strip,
                        r % strip
                    ));
                }
            }
        }
        if self.sc.bitmap_chunk.is_some() != asm.bitmap.is_some() {
            return Err("assembly lost or invented the bitmap".into());
        }
        let state = Arc::new(asm.state);
        self.add_stats();
        // The assembled state numbers publications afresh.
        for m in &mut self.members {
            m.joined = Some(0);
        }
        self.arr = Sim::array(
            self.sc,
            &self.geom,
            state,
            asm.superblocks,
            asm.bitmap.map(|b| (b.disk, b.geom)),
            self.step,
        );
        self.rebuild = None;
        self.rebuild_tags.clear();
        self.rebuild_stopped = None;
        // A member added back that the assembly finds in sync (its
        // rebuild's last commit landed) is an ordinary member again.
        let st = self.state().clone();
        for (m, s) in st.members.iter().enumerate() {
            if *s == MemberState::InSync {
                self.members[m].added = false;
            }
        }
        // The engine resyncs the dirty chunks (the whole array without a
        // bitmap), window by window, beside user I/O; the array may be
        // marked clean after. Until it has been over a row whose parity
        // the crash left wrong, that row is a hole.
        self.resync = None;
        self.resync_tag = None;
        if asm.dirty {
            if self.geom.level().is_parity() {
                self.find_holes();
            }
            self.start_resync();
        }
        // New channels announce they are idle.
        for ch in 0..self.arr.channels.len() {
            self.drain(ch)?;
        }
        Ok(())
    }

    /// Write-behind child `io` of channel `ch`, for write `id` of the
    /// parent range `[lba, lba+blocks)` (a mirrored level): the array
    /// blocks it writes, found among the copies of that range, and the
    /// other copies of them in sync in the channel's state.
    fn behind_rec(
        &self,
        ch: usize,
        lba: u64,
        blocks: u64,
        id: u64,
        landed: u64,
        io: &ChildIo,
    ) -> Option<BehindRec> {
        let c = &self.arr.channels[ch];
        let (st, failed) = (c.state(), c.shared().failed());
        let (end, mut at) = (lba + blocks, lba);
        while at < end {
            let m = self.geom.map(at, end - at);
            let Some(l) = m.copies().iter().find(|l| {
                l.member == io.member && l.lba <= io.lba && io.lba + io.blocks <= l.lba + m.len
            }) else {
                at += m.len;
                continue;
            };
            let off = io.lba - l.lba;
            let read = m
                .copies()
                .iter()
                .filter(|c| {
                    let b = 1u64 << c.member;
                    self.sc.write_mostly & b == 0
                        && failed & b == 0
                        && st.members[c.member as usize] == MemberState::InSync
                })
                .fold(0, |a, c| a | 1 << c.member);
            return Some(BehindRec {
                lba: at + off,
                blocks: io.blocks,
                id,
                read,
                landed,
            });
        }
        None
    }

    /// Write-behind writes a crash cut short (`exposed`) none of whose
    /// fast copies is left lost their acknowledged data, as md's
    /// write-behind does on that double fault: the blocks they last wrote
    /// may read back any earlier write. A fast copy is one in sync when
    /// the child was issued that the parent's write landed on while the
    /// member was not failed; it is gone once dead, failed, taken out and
    /// added back since, or among `unreadable` (members a resync read
    /// failed on, or a user read of blocks `within`: md reads the other
    /// copy, the write-mostly one, and rewrites the fast one with it).
    /// One with no fast copy to begin with lost nothing md would: the
    /// loss is the engine's, and the check reports it. Returns the
    /// records it found lost (reads in flight are forgiven them too).
    fn check_exposed(
        &mut self,
        unreadable: u64,
        within: Option<std::ops::Range<u64>>,
    ) -> Vec<BehindRec> {
        let mut gone = Vec::new();
        let mut i = 0;
        while i < self.exposed.len() {
            let BehindRec {
                lba,
                blocks,
                id,
                read,
                landed,
            } = self.exposed[i];
            let end = lba + blocks;
            let unreadable = match &within {
                Some(w) if w.start >= end || lba >= w.end => 0,
                _ => unreadable,
            };
            let fast = read & landed;
            let fast_left = fast == 0
                || (0..self.members.len()).any(|m| {
                    fast & 1 << m != 0
                        && unreadable & 1 << m == 0
                        && !self.members[m].dead
                        && !self.members[m].broken
                        && !self.members[m].added
                });
            if fast_left {
                i += 1;
                continue;
            }
            gone.push(self.exposed.swap_remove(i));
            self.out.behind_lost += 1;
            for b in lba as usize..end as usize {
                let initial = self.sc.initial_resync;
                Self::behind_loss(&mut self.blocks[b], id, initial);
                for rec in self.parents.values_mut() {
                    let (a, e) = (rec.lba as usize, (rec.lba + rec.blocks) as usize);
                    if rec.op == IoType::Read && (a..e).contains(&b) && rec.snap.len() == e - a {
                        Self::behind_loss(&mut rec.snap[b - a], id, initial);
                    }
                }
            }
        }
        gone
    }

    /// A read of parent `tag` failed on member `m`: the engine reads
    /// another copy, the write-mostly one if no other is left, and
    /// rewrites `m` with it at once. Write-behind writes a crash cut short
    /// in the parent's range whose last fast copy that was are lost then
    /// (md's fix_read_error does the same), for every read in flight.
    fn read_failed(&mut self, m: usize, tag: u64) {
        if self.exposed.is_empty() {
            return;
        }
        if let Some(p) = self.parents.get(&tag) {
            let range = p.lba..p.lba + p.blocks;
            self.check_exposed(1 << m, Some(range));
        }
    }

    /// Block state `s` after write-behind write `id` was lost: if it is
    /// the block's last acknowledged write, any earlier one may read back
    /// (and what the devices held before may be garbage, on a new array
    /// made dirty).
    fn behind_loss(s: &mut BlockState, id: u64, initial: bool) {
        if s.cur == id {
            s.alt_since = Some(0);
            s.lost |= initial;
        }
    }

    /// Child `io` failed: if it wrote, its parent had a write fail.
    fn note_write_failed(&mut self, io: &ChildIo) {
        if io.op != ChildOp::Read {
            if let Some(p) = self.parents.get_mut(&io.parent) {
                p.write_failed = true;
            }
        }
    }

    /// A write child of parent `tag` landed on member `m`, not failed.
    fn note_landed(&mut self, tag: u64, m: usize) {
        let Some(p) = self.parents.get_mut(&tag).filter(|p| p.op == IoType::Write) else {
            return;
        };
        p.landed |= 1 << m;
        let id = p.id;
        for r in self.behind.values_mut().filter(|r| r.id == id) {
            r.landed |= 1 << m;
        }
    }

    fn is_zero_id(&self, b: usize, id: u64) -> bool {
        id == 0
            || self.history[b]
                .binary_search_by_key(&id, |e| e.0)
                .is_ok_and(|i| self.history[b][i].1)
    }

    /// Whether block `b` reading `data` is allowed, given the block's state
    /// when the read was submitted: the acknowledged write then, or any
    /// write of the block submitted since, or one that failed or was cut by
    /// a crash since the last acknowledged one.
    fn block_ok(
        &self,
        b: usize,
        snap: &BlockState,
        data: &[u8],
        tmp: &mut [u8],
    ) -> Result<(), String> {
        let lba = b as u64;
        if snap.lost {
            return Ok(());
        }
        // Id 0 is the array's initial zeros, which every block held before
        // its first write (a write-behind loss may read them back).
        let known = |id: u64| id == 0 || self.history[b].binary_search_by_key(&id, |e| e.0).is_ok();
        let ok_id = |id: u64| {
            id == snap.cur
                || (id > snap.cur && known(id))
                || snap.alt_since.is_some_and(|a| id >= a && known(id))
        };
        if data.iter().all(|x| *x == 0) {
            let ids = [snap.cur, 0]
                .into_iter()
                .chain(self.history[b].iter().map(|e| e.0));
            for id in ids {
                if self.is_zero_id(b, id) && ok_id(id) {
                    return Ok(());
                }
            }
            return Err(format!(
                "block {lba}: read zeros, expected write {} (or a later one)",
                snap.cur
            ));
        }
        let id = u64::from_le_bytes(data[..8].try_into().unwrap());
        pattern(id, lba, false, tmp);
        if tmp != data {
            return Err(format!(
                "block {lba}: garbled data (header says write {id} of block {})",
                u64::from_le_bytes(data[8..16].try_into().unwrap())
            ));
        }
        if !ok_id(id) {
            return Err(format!(
                "block {lba}: stale read of write {id}, acknowledged write is {}",
                snap.cur
            ));
        }
        Ok(())
    }

    fn parent_done(
        &mut self,
        ch: usize,
        tag: u64,
        status: IoStatus,
        buf: Option<Buf>,
    ) -> Result<(), String> {
        self.last_done = self.step;
        let Some(rec) = self.parents.remove(&tag) else {
            return Err(format!("parent {tag} completed twice (or never submitted)"));
        };
        self.per_channel[ch] -= 1;
        if self.resync_tag == Some(tag) && rec.read_errors != 0 {
            self.check_exposed(rec.read_errors, None);
        }
        if self.resync_tag == Some(tag) {
            let shared = self.arr.channels[0].shared().clone();
            if let Some(r) = self.resync.as_mut() {
                r.window_done(&shared, status == IoStatus::Success);
                if status == IoStatus::Success {
                    self.arr.meta.resync_progress(r.checkpoint());
                }
            }
        }
        if let Some(i) = self.rebuild_tags.iter().position(|t| *t == tag) {
            self.rebuild_tags.swap_remove(i);
            if let Some(r) = self.rebuild.as_mut() {
                r.window_done(status == IoStatus::Success);
                let (m, dev, off) = (r.member(), r.device(), r.offset());
                self.arr.meta.recovery_progress(m, dev, off);
                self.pump_meta();
            }
        }
        let range = rec.lba as usize..(rec.lba + rec.blocks) as usize;
        let offline = self.state().offline;
        // R1: a member that failed a direct write of this parent is out of
        // service in the committed state before the parent completes (or
        // a device has since been brought into its role).
        let (errs, seq) = rec.write_errors;
        let st = self.state();
        for m in (0..self.members.len()).filter(|&m| errs & 1 << m != 0) {
            if !offline && st.out_of_service() & 1 << m == 0 && st.readded[m] <= seq {
                return Err(format!(
                    "R1: {:?} {}+{} completed ({status:?}) with member {m}, which \
                     failed a direct write of it, in service; {}",
                    rec.op,
                    rec.lba,
                    rec.blocks,
                    self.describe()
                ));
            }
        }
        // Members that cannot serve all reads: broken, or not in sync in the
        // state (being rebuilt, brought back and not yet recorded).
        let out = self.broken_mask() | self.out_now() | rec.out_seen;
        let healthy = !offline && out.count_ones() as usize <= self.redundancy();
        if status == IoStatus::Invalid {
            return Err(format!("valid parent {:?} refused as invalid", rec.op));
        }
        if status == IoStatus::Error {
            self.out.parent_errors += 1;
            // Read errors on more members than the level survives (broken
            // members included) lose the data this parent needed; md fails
            // there too. Anything less must not fail.
            let lost = (rec.read_errors | out).count_ones() as usize;
            let survivable = match self.geom.level() {
                Level::Raid1 | Level::Raid10 => self.geom.copies() - 1,
                _ => self.geom.redundancy(),
            };
            // A rebuild window fails when a write to the member being
            // rebuilt (the only one it writes) fails, or could not be
            // issued since the member failed: that ends the rebuild.
            let target_gone = self.rebuild.as_ref().is_some_and(|r| {
                let b = 1u64 << r.member();
                (self.broken_mask()
                    | self.arr.channels[ch].shared().failed()
                    | self.state().out_of_service())
                    & b
                    != 0
            });
            let legit = !healthy
                || lost > survivable
                || rec.final_check && offline
                || matches!(rec.op, IoType::Rebuild { .. }) && (rec.write_failed || target_gone);
            if !legit {
                return Err(format!(
                    "{:?} of {}+{} failed although the array keeps its data \
                     (read errors {:#b}, faulty {:#b}, broken {}, dead {:?}; {})",
                    rec.op,
                    rec.lba,
                    rec.blocks,
                    rec.read_errors,
                    self.state().faulty(),
                    self.broken(),
                    self.members.iter().map(|m| m.dead).collect::<Vec<_>>(),
                    self.describe()
                ));
            }
        }
        let resync_window = self.resync_tag == Some(tag);
        if self.open_holes > 0
            && status == IoStatus::Success
            && (writes_data(rec.op) || resync_window)
        {
            self.close_holes_of(ch, &rec, resync_window);
        }
        match rec.op {
            IoType::Read if status == IoStatus::Success => {
                let buf = buf.ok_or("read completed without its buffer")?;
                let mut tmp = vec![0u8; self.bs];
                for (i, b) in range.enumerate() {
                    let data = &buf[i * self.bs..(i + 1) * self.bs];
                    self.block_ok(b, &rec.snap[i], data, &mut tmp)
                        .map_err(|e| {
                            format!(
                                "{e}; read {}+{} with read errors on {:#b}; {}",
                                rec.lba,
                                rec.blocks,
                                rec.read_errors,
                                self.describe()
                            )
                        })?;
                }
                self.out.reads_verified += 1;
                self.out.blocks_verified += rec.blocks;
            }
            op if writes_data(op) => {
                // A write's block whose member was lost before the write
                // was acknowledged, in a row the write did not close: its
                // data may live only in parity that does not match (a
                // read-modify-write, taken while a member was out, carried
                // the wrong parity on): the write hole has it.
                let stays_lost = |sim: &Self, b: usize| {
                    if rec.lost_during == 0 || sim.open_holes == 0 {
                        return false;
                    }
                    let (s, i, row) = sim.geom.locate(b as u64);
                    let r = s * sim.geom.strip_blocks() + row;
                    let m = sim.geom.stripe(s).data[i] as usize;
                    sim.holes[r as usize] != 0 && rec.lost_during & 1 << m != 0
                };
                let lost: Vec<bool> = range.clone().map(|b| stays_lost(self, b)).collect();
                for (b, lost) in range.zip(lost) {
                    let s = &mut self.blocks[b];
                    debug_assert_eq!(s.pending, Some(rec.id));
                    s.pending = None;
                    if status == IoStatus::Success {
                        s.cur = rec.id;
                        s.alt_since = None;
                        s.lost = lost;
                    } else {
                        s.alt_since = Some(s.alt_since.map_or(rec.id, |a| a.min(rec.id)));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Resync window or write `rec` (of channel `ch`) succeeded: if every
    /// member stayed in service (and, for a write, every read it made was
    /// good), the rows it covered have parity matching their data: the
    /// resync's (which recomputes the parity from the data, rebuilding a
    /// strip it failed to read and writing it back, as md does), or the
    /// reconstruct-write md forces on a stripe that may be unsynced (a
    /// read-modify-write, taken once a read failed, would carry a wrong
    /// parity on).
    fn close_holes_of(&mut self, ch: usize, rec: &ParentRec, resync_window: bool) {
        let dead = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.dead)
            .fold(0, |a, (i, _)| a | 1 << i);
        let lost = self.out_now() | rec.out_seen | self.arr.channels[ch].shared().failed() | dead;
        if lost != 0 || (rec.read_errors != 0 && !resync_window) || rec.write_failed {
            return;
        }
        let strip = self.geom.strip_blocks();
        let sdb = self.geom.stripe_data_blocks();
        if resync_window {
            let (s0, s1) = (rec.lba / sdb, (rec.lba + rec.blocks).div_ceil(sdb));
            self.close_holes(s0 * strip..s1 * strip);
        } else {
            for b in rec.lba..rec.lba + rec.blocks {
                let (s, _, row) = self.geom.locate(b);
                let r = s * strip + row;
                self.close_holes(r..r + 1);
            }
        }
    }

    fn redundancy(&self) -> usize {
        match self.geom.level() {
            Level::Raid10 => 1,
            _ => self.geom.redundancy(),
        }
    }

    /// After the run: read back the whole array with faults off, check that
    /// the members agree with each other, shut down cleanly and check what
    /// the superblocks say.
    fn final_check(&mut self) -> Result<(), String> {
        self.faults_on = false;
        self.flush_meta()?;
        if !self.state().offline {
            let size = self.geom.array_blocks();
            let chunk = self.sc.max_blocks.min(size);
            let mut lba = 0;
            while lba < size {
                let blocks = chunk.min(size - lba);
                let tag = self.next_tag;
                self.next_tag += 1;
                let range = lba as usize..(lba + blocks) as usize;
                self.parents.insert(
                    tag,
                    ParentRec {
                        snap: self.blocks[range].to_vec(),
                        final_check: true,
                        ..ParentRec::new(IoType::Read, lba, blocks, self.out_now())
                    },
                );
                self.per_channel[0] += 1;
                let io = ParentIo {
                    tag,
                    op: IoType::Read,
                    lba,
                    blocks,
                    fua: false,
                    buf: Some(vec![0x5a; blocks as usize * self.bs]),
                };
                self.submit_and_wait(io, "the final read-back")?;
                lba += blocks;
            }
            self.check_members()?;
            // (A dead member the state still counts in sync fails every
            // read: a check cannot compare its copies.)
            if self.state().not_in_sync() == 0
                && self.geom.redundancy() > 0
                && self.members.iter().all(|m| !m.dead)
            {
                self.check_and_repair()?;
            }
            self.shutdown()?;
        }
        self.out.steps = self.step;
        self.out.members_failed = self.state().faulty().count_ones() as usize;
        self.out.offline = self.state().offline;
        self.out.ever_offline |= self.out.offline;
        self.add_stats();
        Ok(())
    }

    /// Add the channels' counters to the outcome (at the end, and before a
    /// crash replaces the channels).
    fn add_stats(&mut self) {
        for c in &self.arr.channels {
            let s = c.stats();
            self.out.rmw += s.rmw;
            self.out.rcw += s.rcw;
            self.out.full_stripe += s.full_stripe;
            self.out.reconstruct_reads += s.reconstruct_reads;
            self.out.read_errors_corrected += s.read_errors_corrected;
            self.out.pool_waits += s.waits_for_resources;
            self.out.bit_waits += s.waits_for_bits;
            self.out.behind_writes += s.behind_writes;
            self.out.write_mostly_reads += s.write_mostly_reads;
        }
    }

    /// Submit `io` on channel 0 and run until no parent is outstanding
    /// (after the run: faults are off).
    fn submit_and_wait(&mut self, io: ParentIo<Buf>, what: &str) -> Result<(), String> {
        if let Err(Busy(io)) = self.arr.channels[0].submit(io) {
            self.arr.retry[0].push_back(io);
        }
        self.drain(0)?;
        let mut spins = 0;
        while !self.parents.is_empty() {
            self.step += 1;
            spins += 1;
            if spins > 100_000 {
                return Err(format!("hang in {what}; {}", self.describe()));
            }
            if self.inflight.is_empty() {
                self.tick()?;
                self.poll_channel(0);
                self.drain(0)?;
                self.flush_meta()?;
            } else {
                self.complete_random()?;
            }
        }
        Ok(())
    }

    /// Run a check or repair over the whole array on channel 0 (faults off)
    /// and return the blocks it found disagreeing.
    fn sync_pass(&mut self, op: IoType) -> Result<u64, String> {
        let before = self.arr.channels[0].stats().mismatch_blocks;
        let window = if self.geom.level().is_parity() {
            self.geom.stripe_data_blocks()
        } else {
            self.sc.max_blocks
        };
        let shared = self.arr.channels[0].shared().clone();
        let mut pass = Resync::whole(&self.geom, window);
        let copies = if self.geom.level().is_parity() {
            1
        } else {
            self.geom.copies()
        };
        while let Some(w) = pass.next_window(&shared) {
            let tag = self.next_tag;
            self.next_tag += 1;
            self.parents.insert(
                tag,
                ParentRec {
                    final_check: true,
                    ..ParentRec::new(op, w.lba, w.blocks, self.out_now())
                },
            );
            self.per_channel[0] += 1;
            let io = ParentIo {
                tag,
                op,
                lba: w.lba,
                blocks: w.blocks,
                fua: false,
                buf: Some(vec![0; w.blocks as usize * self.bs * copies]),
            };
            self.submit_and_wait(io, "a check or repair pass")?;
            pass.window_done(&shared, true);
        }
        Ok(self.arr.channels[0].stats().mismatch_blocks - before)
    }

    /// md's check finds nothing on members that agree; after blocks of a
    /// copy (not the first) or of the parity are damaged it counts exactly
    /// those, repair rewrites them, and a second check finds nothing.
    fn check_and_repair(&mut self) -> Result<(), String> {
        if self.holes.contains(&DAMAGED) {
            // The write hole's rows may disagree: md's repair makes their
            // parity match whatever their data is now, and then every row
            // must agree.
            self.sync_pass(IoType::Repair)?;
            self.close_holes(0..self.holes.len() as u64);
            self.check_members()
                .map_err(|e| format!("after repairing the write holes: {e}"))?;
        }
        let found = self.sync_pass(IoType::Check)?;
        if found != 0 {
            return Err(format!(
                "check found {found} mismatched blocks on agreeing members"
            ));
        }
        let bs = self.bs;
        let mut damaged = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let lba = self.rng.below(self.geom.array_blocks());
            let (m, mlba, key) = if self.geom.level().is_parity() {
                let (st, _, row) = self.geom.locate(lba);
                let map = self.geom.stripe(st);
                (map.p as usize, map.member_lba + row, (st, row))
            } else {
                let map = self.geom.map(lba, 1);
                let l = *map.copies().iter().max_by_key(|l| l.member).unwrap();
                (l.member as usize, l.lba, (lba, 0))
            };
            let at = self.data_off + mlba as usize * bs;
            self.members[m].data[at + 17] ^= 0x5a;
            if !damaged.insert(key) {
                // Damaged twice: flipped back.
                damaged.remove(&key);
            }
        }
        let found = self.sync_pass(IoType::Check)?;
        if found != damaged.len() as u64 {
            return Err(format!(
                "check found {found} mismatched blocks, {} were damaged",
                damaged.len()
            ));
        }
        self.sync_pass(IoType::Repair)?;
        let found = self.sync_pass(IoType::Check)?;
        if found != 0 {
            return Err(format!("{found} mismatched blocks left after repair"));
        }
        self.check_members()
    }

    /// Orderly shutdown: the array must end clean, and every member in
    /// service must carry a valid superblock with the final events that
    /// records the faulty members.
    fn shutdown(&mut self) -> Result<(), String> {
        self.arr.meta.shutdown();
        self.pump_meta();
        let mut spins = 0;
        // Until clean and every metadata write (the bitmap flush of an
        // array already clean) has landed.
        while !self.arr.meta.is_clean()
            || !self.inflight.is_empty()
            || !self.arr.meta_inbox.is_empty()
        {
            if self.state().offline && self.inflight.is_empty() && self.arr.meta_inbox.is_empty() {
                // The stop's superblock write failed a dead member that
                // the state still counted in sync, and with it the last
                // in-sync copy of some blocks: the array went offline,
                // and an offline array is not marked clean. Only a dead
                // member may take it there.
                let st = self.state().clone();
                let dead_failed = self
                    .members
                    .iter()
                    .enumerate()
                    .any(|(m, x)| x.dead && st.faulty() & 1 << m != 0);
                if !dead_failed {
                    return Err(format!(
                        "the array went offline during an orderly stop with no dead member; {}",
                        self.describe()
                    ));
                }
                return Ok(());
            }
            spins += 1;
            if spins > 100_000 {
                return Err(format!(
                    "shutdown never marked the array clean; {}",
                    self.describe()
                ));
            }
            self.step += 1;
            self.flush_meta()?;
            if !self.inflight.is_empty() {
                self.complete_random()?;
            } else {
                self.tick()?;
            }
        }
        let st = self.state().clone();
        for (m, s) in st.members.iter().enumerate() {
            if !s.in_service() {
                continue;
            }
            let at = SB_OFFSET_BYTES as usize;
            let sb = Superblock::decode(
                &self.members[m].data[at..at + 4096],
                self.members[m].data.len() as u64 / 512,
            )
            .map_err(|e| format!("member {m}: superblock after shutdown: {e}"))?;
            if sb.events != st.events || !sb.is_clean() {
                return Err(format!(
                    "member {m}: superblock events {} clean {} after shutdown, state events {}",
                    sb.events,
                    sb.is_clean(),
                    st.events
                ));
            }
            // An orderly stop of an array with every member in sync
            // flushes the bitmap: no bit is left set.
            if let Some(bm) = &self.arr.channels[0].shared().bitmap {
                let dirty =
                    bitmap_count_dirty(&self.members[m].data[BITS_AT..], bm.geom().chunks());
                if st.not_in_sync() == 0 && dirty != 0 {
                    return Err(format!(
                        "member {m}: {dirty} bitmap bits left set after an orderly stop"
                    ));
                }
            }
        }
        Ok(())
    }

    /// P and Q (Q empty for raid4/5) of the data strips of `map` at byte
    /// `at` of every member, `strip` bytes each.
    fn parity_of(&self, map: &StripeMap, at: usize, strip: usize) -> (Vec<u8>, Vec<u8>) {
        let mut order = vec![&[][..]; map.ndata];
        for i in 0..map.ndata {
            order[map.q_slot[i] as usize] =
                &self.members[map.data[i] as usize].data[at..at + strip];
        }
        let mut p = vec![0u8; strip];
        let mut q = vec![0u8; strip];
        if map.q.is_some() {
            bdev_raid::parity::gen_pq(&order, &mut p, &mut q);
        } else {
            bdev_raid::parity::xor_gen(&mut p, &order);
        }
        (p, q)
    }

    /// Copies and parity agree on every member still in service.
    fn check_members(&self) -> Result<(), String> {
        let g = &self.geom;
        let bs = self.bs;
        let off = self.data_off;
        let st = self.state().clone();
        let alive = |m: usize| st.members[m] == MemberState::InSync;
        if g.level().is_parity() {
            let strip = g.strip_blocks() as usize * bs;
            for s in 0..g.stripes() {
                let map = g.stripe(s);
                let members: Vec<usize> = (0..map.ndata)
                    .map(|i| map.data[i] as usize)
                    .chain(std::iter::once(map.p as usize))
                    .chain(map.q.map(|q| q as usize))
                    .collect();
                if !members.iter().all(|&m| alive(m)) {
                    continue;
                }
                let at = off + map.member_lba as usize * bs;
                let strip_of = |m: usize| &self.members[m].data[at..at + strip];
                let (p, q) = self.parity_of(&map, at, strip);
                let p_ok = p == strip_of(map.p as usize);
                let q_ok = map.q.is_none_or(|qm| q == strip_of(qm as usize));
                if p_ok && q_ok {
                    continue;
                }
                // Rows a write hole damaged are not known until the final
                // repair.
                let rows = map.member_lba..map.member_lba + g.strip_blocks();
                if let Some(r) = rows
                    .clone()
                    .find(|&r| self.holes[r as usize] != DAMAGED && !self.row_consistent(r))
                {
                    return Err(format!(
                        "stripe {s}: {} stale (row {}{})",
                        if p_ok {
                            format!("Q on member {}", map.q.unwrap_or(0))
                        } else {
                            format!("P on member {}", map.p)
                        },
                        r - map.member_lba,
                        match self.holes[r as usize] {
                            HOLE => ", a hole no resync or write has closed",
                            _ => "",
                        }
                    ));
                }
            }
        } else if g.copies() > 1 {
            let mut lba = 0;
            while lba < g.array_blocks() {
                let m = g.map(lba, g.array_blocks() - lba);
                let live: Vec<_> = m
                    .copies()
                    .iter()
                    .filter(|l| alive(l.member as usize))
                    .collect();
                for w in live.windows(2) {
                    let a = &self.members[w[0].member as usize].data
                        [off + w[0].lba as usize * bs..off + (w[0].lba + m.len) as usize * bs];
                    let b = &self.members[w[1].member as usize].data
                        [off + w[1].lba as usize * bs..off + (w[1].lba + m.len) as usize * bs];
                    if a != b {
                        let i = (0..m.len as usize)
                            .find(|&i| a[i * bs..(i + 1) * bs] != b[i * bs..(i + 1) * bs])
                            .unwrap_or(0);
                        let id = |d: &[u8]| {
                            u64::from_le_bytes(d[i * bs..i * bs + 8].try_into().unwrap())
                        };
                        return Err(format!(
                            "array blocks {lba}+{}: copies on members {} and {} differ, first at block {} (write {} against {}; acknowledged {})",
                            m.len,
                            w[0].member,
                            w[1].member,
                            lba + i as u64,
                            id(a),
                            id(b),
                            self.blocks[lba as usize + i].cur
                        ));
                    }
                }
                lba += m.len;
            }
        }
        Ok(())
    }
}

fn writes_data(op: IoType) -> bool {
    matches!(op, IoType::Write | IoType::WriteZeroes | IoType::Unmap)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failure names the arguments that make its scenario again.
    #[test]
    fn replay_args_make_the_same_scenario() {
        let plain = Scenario::from_seed(7, crate::scenario::DEFAULT_OPS);
        assert_eq!(replay_args(&plain), "--seed 7");
        let mut wb = Scenario::write_behind(7, 300);
        assert_eq!(replay_args(&wb), "--seed 7 --write-behind --ops 300");
        wb.direct = if wb.direct == 0.25 { 0.5 } else { 0.25 };
        let args = replay_args(&wb);
        assert_eq!(
            args,
            format!("--seed 7 --write-behind --ops 300 --direct {}", wb.direct)
        );
        // What main does with those arguments.
        let mut again = Scenario::write_behind(7, 300);
        again.direct = args.rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!(format!("{again:?}"), format!("{wb:?}"));
        // Forced resync modes are named too.
        let mut forced = Scenario::from_seed(7, crate::scenario::DEFAULT_OPS);
        forced.resync_faults = !forced.resync_faults;
        forced.initial_resync = !forced.initial_resync;
        assert_eq!(
            replay_args(&forced),
            format!(
                "--seed 7 --resync-faults {} --initial-resync {}",
                u8::from(forced.resync_faults),
                u8::from(forced.initial_resync)
            )
        );
    }
}
