//! The write-intent bitmap's in-memory side: which chunk a write touches,
//! and one atomic word per chunk shared by every channel (R4).
//!
//! The chunk space is md's: array sectors for raid1 and raid10 (md's
//! `resync_max_sectors`), per-member sectors for raid4/5/6 (a stripe's
//! offset on its members). Linear and raid0 have no redundancy and no
//! bitmap.
//!
//! Each chunk's word holds the number of writes in flight in the chunk and
//! flags:
//! - `DURABLE`: the chunk's bit is set on disk. Only the metadata path sets
//!   it, after the bitmap write that carries the bit completed; a channel
//!   that sees it may issue data writes in the chunk at once.
//! - `NEEDED`: the chunk must be resynced (it was dirty at an unclean
//!   assembly); its bit is not cleared until the resync did it.
//! - `IDLE`: one daemon pass saw the chunk idle. A second pass that finds it
//!   still idle clears the bit (md's two passes).
//! - `LOADED`: set on disk when the array was assembled, not yet rewritten
//!   to every member (dirty, so a rebuild visits it, but not durable yet).
//!
//! A channel increments the count of every chunk a write touches before it
//! looks at `DURABLE`, and the metadata path clears `DURABLE` only by a
//! compare-and-swap that expects a zero count: so either the channel sees
//! the bit durable and the clear cannot happen while its write runs, or the
//! clear won and the channel waits for the bit to be written again. No lock
//! is taken on the I/O path.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::layout::{Geometry, Level};
use crate::ondisk::{bitmap_count_dirty, bitmap_get, bitmap_set, BitmapSuper, BITMAP_SB_BYTES};

const COUNT: u32 = 0x00ff_ffff;
pub(crate) const DURABLE: u32 = 1 << 31;
pub(crate) const NEEDED: u32 = 1 << 30;
pub(crate) const IDLE: u32 = 1 << 29;
/// The bit was found set at assembly and is not yet rewritten to every
/// member: the chunk is dirty (a rebuild must visit it) but not yet durable.
pub(crate) const LOADED: u32 = 1 << 28;

/// Why a bitmap configuration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BitmapError {
    #[error("bitmap chunk {0} bytes: must be a power of two of at least the block size and 4 KiB")]
    Chunk(u64),
    #[error("a {0} array has no redundancy and takes no bitmap")]
    Level(&'static str),
}

/// How chunks map onto an array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapGeom {
    /// Bytes of data one bit covers.
    chunk_bytes: u64,
    /// The same in blocks of the array.
    chunk_blocks: u64,
    /// Blocks of the chunk space (array blocks for raid1/10, member blocks
    /// for parity levels).
    space_blocks: u64,
    chunks: u64,
    level: Level,
    strip_blocks: u64,
    stripe_data_blocks: u64,
    array_blocks: u64,
    block_size: u32,
}

impl BitmapGeom {
    pub fn new(geom: &Geometry, chunk_bytes: u64) -> Result<BitmapGeom, BitmapError> {
        let bs = u64::from(geom.block_size());
        if !chunk_bytes.is_power_of_two() || chunk_bytes < bs.max(4096) {
            return Err(BitmapError::Chunk(chunk_bytes));
        }
        let level = geom.level();
        let space_blocks = match level {
            Level::Linear | Level::Raid0 => return Err(BitmapError::Level(level.name())),
            Level::Raid10 => geom.array_blocks(),
            _ => geom.member_blocks(0),
        };
        let chunk_blocks = chunk_bytes / bs;
        Ok(BitmapGeom {
            chunk_bytes,
            chunk_blocks,
            space_blocks,
            chunks: space_blocks.div_ceil(chunk_blocks),
            level,
            strip_blocks: geom.strip_blocks(),
            stripe_data_blocks: if level.is_parity() {
                geom.stripe_data_blocks()
            } else {
                0
            },
            array_blocks: geom.array_blocks(),
            block_size: geom.block_size(),
        })
    }

    pub fn chunks(&self) -> u64 {
        self.chunks
    }
    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }
    /// Blocks of the chunk space one bit covers.
    pub fn chunk_blocks(&self) -> u64 {
        self.chunk_blocks
    }
    /// Whether the chunk space is the members' blocks (raid1, parity
    /// levels), not the array's (raid10).
    pub fn member_space(&self) -> bool {
        self.level != Level::Raid10
    }
    /// md's `sync_size`: sectors of the chunk space.
    pub fn sync_sectors(&self) -> u64 {
        self.space_blocks * u64::from(self.block_size) / 512
    }

    /// The chunks (first, last inclusive) a write of array blocks
    /// `[lba, lba+blocks)` touches. Parity levels count whole stripes: a
    /// write to a stripe rewrites its parity.
    pub fn chunks_of(&self, lba: u64, blocks: u64) -> (u64, u64) {
        debug_assert!(blocks > 0);
        let (start, end) = if self.level.is_parity() {
            let s0 = lba / self.stripe_data_blocks;
            let s1 = (lba + blocks - 1) / self.stripe_data_blocks;
            (s0 * self.strip_blocks, (s1 + 1) * self.strip_blocks)
        } else {
            (lba, lba + blocks)
        };
        let last = ((end - 1) / self.chunk_blocks).min(self.chunks - 1);
        (start / self.chunk_blocks, last)
    }

    /// The array blocks `(lba, blocks)` chunk `c` covers (whole stripes on
    /// parity levels), for resync and recovery.
    pub fn array_range(&self, c: u64) -> (u64, u64) {
        let start = c * self.chunk_blocks;
        let end = (start + self.chunk_blocks).min(self.space_blocks);
        let (a, b) = if self.level.is_parity() {
            let s0 = start / self.strip_blocks;
            let s1 = end.div_ceil(self.strip_blocks);
            (s0 * self.stripe_data_blocks, s1 * self.stripe_data_blocks)
        } else {
            (start, end)
        };
        let b = b.min(self.array_blocks);
        (a.min(b), b - a.min(b))
    }
}

/// The per-chunk words every channel of an array shares.
pub struct Bitmap {
    geom: BitmapGeom,
    words: Box<[AtomicU32]>,
    /// A bit per chunk, set whenever its word leaves zero: the metadata
    /// path's scans visit only these ([`Bitmap::active`]), so their cost
    /// follows the chunks in use, not the bitmap's size (millions of
    /// chunks on a large array with small ones).
    active: Box<[AtomicU64]>,
    /// Chunks with `NEEDED` set (kept as the flag changes: status is read
    /// often, and every chunk is needed during a new array's resync).
    needed: AtomicU64,
}

impl Bitmap {
    /// A bitmap with every bit clear on disk.
    pub fn new(geom: BitmapGeom) -> Bitmap {
        Bitmap {
            words: (0..geom.chunks).map(|_| AtomicU32::new(0)).collect(),
            active: (0..geom.chunks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            needed: AtomicU64::new(0),
            geom,
        }
    }

    /// Chunk `c`'s word left zero (sequentially consistent with that
    /// change: see [`Bitmap::active`]).
    #[cold]
    fn activate(&self, c: u64) {
        self.active[(c / 64) as usize].fetch_or(1 << (c % 64), Ordering::SeqCst);
    }

    /// The chunks whose words are not zero (and perhaps a few that just
    /// became zero), in order. A chunk found at zero leaves the set; a
    /// word that leaves zero puts its chunk back in after the change (both
    /// sides sequentially consistent: either this scan sees the word's
    /// change, or the chunk's bit is set again after the scan cleared it).
    pub fn active(&self) -> Vec<u64> {
        let mut out = Vec::new();
        self.for_each_active(|c| out.push(c));
        out
    }

    /// [`Bitmap::active`] without collecting them: `f` of each, in order.
    pub fn for_each_active(&self, mut f: impl FnMut(u64)) {
        for (i, a) in self.active.iter().enumerate() {
            let mut bits = a.load(Ordering::SeqCst);
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                let c = i as u64 * 64 + b;
                if self.words[c as usize].load(Ordering::SeqCst) != 0 {
                    f(c);
                    continue;
                }
                a.fetch_and(!(1 << b), Ordering::SeqCst);
                if self.words[c as usize].load(Ordering::SeqCst) != 0 {
                    a.fetch_or(1 << b, Ordering::SeqCst);
                    f(c);
                }
            }
        }
    }

    /// A bitmap whose every bit is already on disk (the steady state of a
    /// working set that is being written: what benchmarks measure).
    pub fn new_durable(geom: BitmapGeom) -> Bitmap {
        let b = Bitmap::new(geom);
        for c in 0..b.geom.chunks() {
            b.set_flags(c, DURABLE);
        }
        b
    }

    pub fn geom(&self) -> &BitmapGeom {
        &self.geom
    }

    /// Count a write in `[lba, lba+blocks)`; true if every chunk it touches
    /// has its bit durable, so the write may be issued now (R4).
    pub fn start_write(&self, lba: u64, blocks: u64) -> bool {
        let (c0, c1) = self.geom.chunks_of(lba, blocks);
        let mut durable = true;
        for (i, w) in self.words[c0 as usize..=c1 as usize].iter().enumerate() {
            let old = w.fetch_add(1, Ordering::SeqCst);
            assert!(old & COUNT != COUNT, "bitmap chunk counter overflow");
            if old == 0 {
                self.activate(c0 + i as u64);
            }
            if old & IDLE != 0 {
                // Activity: the daemon's idle pass starts over.
                w.fetch_and(!IDLE, Ordering::AcqRel);
            }
            durable &= old & DURABLE != 0;
        }
        durable
    }

    /// Whether every chunk of `[lba, lba+blocks)` has its bit durable.
    pub fn durable(&self, lba: u64, blocks: u64) -> bool {
        let (c0, c1) = self.geom.chunks_of(lba, blocks);
        self.words[c0 as usize..=c1 as usize]
            .iter()
            .all(|w| w.load(Ordering::Acquire) & DURABLE != 0)
    }

    /// A write counted by [`Bitmap::start_write`] ended.
    pub fn end_write(&self, lba: u64, blocks: u64) {
        let (c0, c1) = self.geom.chunks_of(lba, blocks);
        for w in &self.words[c0 as usize..=c1 as usize] {
            let old = w.fetch_sub(1, Ordering::AcqRel);
            assert!(old & COUNT != 0, "bitmap chunk counter underflow");
        }
    }

    /// Raw word of chunk `c` (for the metadata path and tests).
    pub fn word(&self, c: u64) -> u32 {
        self.words[c as usize].load(Ordering::Acquire)
    }

    /// Writes in flight in chunk `c`.
    pub fn writes(&self, c: u64) -> u32 {
        self.word(c) & COUNT
    }

    pub(crate) fn set_flags(&self, c: u64, flags: u32) {
        let old = self.words[c as usize].fetch_or(flags, Ordering::SeqCst);
        if old == 0 {
            self.activate(c);
        }
        if flags & !old & NEEDED != 0 {
            self.needed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn clear_flags(&self, c: u64, flags: u32) {
        let old = self.words[c as usize].fetch_and(!flags, Ordering::AcqRel);
        if flags & old & NEEDED != 0 {
            self.needed.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Replace `from` by `to` if the word is exactly `from`.
    pub(crate) fn swap_if(&self, c: u64, from: u32, to: u32) -> bool {
        self.words[c as usize]
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether chunk `c` still waits for a resync.
    pub fn needed(&self, c: u64) -> bool {
        self.word(c) & NEEDED != 0
    }

    /// Chunk `c` has been resynced: its bit may be cleared when idle.
    pub fn mark_synced(&self, c: u64) {
        self.clear_flags(c, NEEDED);
    }

    /// Chunks still waiting for a resync.
    pub fn needed_count(&self) -> u64 {
        self.needed.load(Ordering::Relaxed)
    }
}

/// The bitmap as the metadata path keeps it: its superblock and the bits
/// as they are on disk (or will be once the write in flight lands).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskBitmap {
    pub sb: BitmapSuper,
    /// The bit array, `ceil(chunks / 8)` bytes.
    pub bits: Vec<u8>,
}

impl DiskBitmap {
    /// A new bitmap with every bit clear (a new array is created in sync).
    pub fn new(geom: &BitmapGeom, uuid: [u8; 16], daemon_sleep_ms: u64) -> DiskBitmap {
        let sb = BitmapSuper::new(
            uuid,
            geom.sync_sectors(),
            geom.chunk_bytes() as u32,
            daemon_sleep_ms.div_ceil(1000).max(1) as u32,
        );
        DiskBitmap {
            bits: vec![0; geom.chunks().div_ceil(8) as usize],
            sb,
        }
    }

    /// A bitmap read from disk, for an array of `geom`: `area` is the bitmap
    /// area (superblock then bits). The bits must cover every chunk.
    pub fn decode(area: &[u8], geom: &Geometry) -> Result<(DiskBitmap, BitmapGeom), String> {
        let sb = BitmapSuper::decode(area).map_err(|e| e.to_string())?;
        let bgeom = BitmapGeom::new(geom, u64::from(sb.chunksize)).map_err(|e| e.to_string())?;
        let n = bgeom.chunks().div_ceil(8) as usize;
        let bits = area
            .get(BITMAP_SB_BYTES..BITMAP_SB_BYTES + n)
            .ok_or_else(|| {
                format!(
                    "bitmap area: {} bytes read, {} needed for {} chunks",
                    area.len(),
                    BITMAP_SB_BYTES + n,
                    bgeom.chunks()
                )
            })?
            .to_vec();
        let mut b = DiskBitmap { sb, bits };
        // Bits past the last chunk mean nothing; keep them clear.
        for c in bgeom.chunks()..n as u64 * 8 {
            bitmap_set(&mut b.bits, c, false);
        }
        b.sb.sync_size = bgeom.sync_sectors();
        Ok((b, bgeom))
    }

    pub fn get(&self, c: u64) -> bool {
        bitmap_get(&self.bits, c)
    }
    pub fn set(&mut self, c: u64, dirty: bool) {
        bitmap_set(&mut self.bits, c, dirty);
    }
    /// Chunks whose bit is set.
    pub fn dirty(&self) -> u64 {
        // Bits past the last chunk are kept clear.
        bitmap_count_dirty(&self.bits, self.bits.len() as u64 * 8)
    }

    /// The bitmap area as written to a member: superblock (with `events`),
    /// bits, zeros up to a 4 KiB multiple.
    pub fn encode_area(&self, events: u64) -> Vec<u8> {
        let mut sb = self.sb.clone();
        sb.events = events;
        let len = (BITMAP_SB_BYTES + self.bits.len()).div_ceil(4096) * 4096;
        let mut out = vec![0u8; len];
        out[..BITMAP_SB_BYTES].copy_from_slice(&sb.encode());
        out[BITMAP_SB_BYTES..BITMAP_SB_BYTES + self.bits.len()].copy_from_slice(&self.bits);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::GeometryParams;

    fn geom(level: Level, n: usize, blocks: u64) -> Geometry {
        Geometry::new(&GeometryParams {
            level,
            layout: None,
            strip_size_kb: 64,
            block_size: 512,
            member_blocks: vec![blocks; n],
        })
        .unwrap()
    }

    #[test]
    fn mirrored_chunks_are_array_sectors() {
        let g = geom(Level::Raid1, 2, 1 << 16);
        let b = BitmapGeom::new(&g, 1 << 20).unwrap();
        assert_eq!(b.chunks(), 32);
        assert_eq!(b.sync_sectors(), 1 << 16);
        assert_eq!(b.chunks_of(0, 1), (0, 0));
        assert_eq!(b.chunks_of(2047, 2), (0, 1));
        assert_eq!(b.array_range(31), (31 * 2048, 2048));
        let g = geom(Level::Raid10, 4, 1 << 16);
        let b = BitmapGeom::new(&g, 1 << 20).unwrap();
        assert_eq!(b.sync_sectors(), g.array_blocks());
    }

    #[test]
    fn parity_chunks_are_member_sectors_of_whole_stripes() {
        // raid5 of 4: 3 data strips of 128 blocks per stripe.
        let g = geom(Level::Raid5, 4, 1 << 16);
        let b = BitmapGeom::new(&g, 1 << 17).unwrap(); // 256 blocks: 2 stripes
        assert_eq!(b.chunks(), (1 << 16) / 256);
        assert_eq!(b.chunks_of(0, 1), (0, 0));
        // Stripe 1 is member blocks 128..256: chunk 0; stripe 2 is chunk 1.
        assert_eq!(b.chunks_of(384, 1), (0, 0));
        assert_eq!(b.chunks_of(383, 2), (0, 0));
        assert_eq!(b.chunks_of(767, 2), (0, 1));
        assert_eq!(b.array_range(1), (768, 768));
        // Every array block's chunk covers it in array_range.
        for lba in (0..g.array_blocks()).step_by(97) {
            let (c, c1) = b.chunks_of(lba, 1);
            assert_eq!(c, c1);
            let (a, n) = b.array_range(c);
            assert!(a <= lba && lba < a + n, "lba {lba} chunk {c} range {a}+{n}");
        }
    }

    #[test]
    fn refuses_levels_without_redundancy_and_bad_chunks() {
        let g = geom(Level::Raid0, 2, 1 << 16);
        assert_eq!(
            BitmapGeom::new(&g, 1 << 20),
            Err(BitmapError::Level("raid0"))
        );
        let g = geom(Level::Raid1, 2, 1 << 16);
        assert_eq!(
            BitmapGeom::new(&g, 3 << 12),
            Err(BitmapError::Chunk(3 << 12))
        );
        assert_eq!(BitmapGeom::new(&g, 2048), Err(BitmapError::Chunk(2048)));
    }

    /// The metadata path's scans visit the chunks whose words are not
    /// zero, found through the active set, which drops a chunk only once
    /// its word is zero again.
    #[test]
    fn active_chunks_follow_their_words() {
        let g = geom(Level::Raid1, 2, 1 << 20);
        let bm = Bitmap::new(BitmapGeom::new(&g, 4096).unwrap());
        assert!(bm.geom().chunks() > 128);
        assert!(bm.active().is_empty());
        assert!(!bm.start_write(100 * 8, 8)); // chunk 100
        bm.set_flags(130, DURABLE | NEEDED);
        assert_eq!(bm.active(), [100, 130]);
        bm.end_write(100 * 8, 8);
        assert_eq!(bm.active(), [130], "zero again: dropped");
        assert!(!bm.start_write(100 * 8, 8), "back in once it leaves zero");
        bm.clear_flags(130, DURABLE | NEEDED);
        assert_eq!(bm.active(), [100]);
        bm.end_write(100 * 8, 8);
        assert!(bm.active().is_empty());
        // The last chunk of a size that is no multiple of 64.
        let last = bm.geom().chunks() - 1;
        bm.set_flags(last, DURABLE);
        assert_eq!(bm.active(), [last]);
        // The needed count follows the flag, set or cleared twice alike.
        assert_eq!(bm.needed_count(), 0);
        for c in [3, 9, last] {
            bm.set_flags(c, NEEDED);
            bm.set_flags(c, NEEDED | DURABLE);
        }
        assert_eq!(bm.needed_count(), 3);
        bm.mark_synced(9);
        bm.mark_synced(9);
        bm.clear_flags(3, DURABLE);
        assert_eq!(bm.needed_count(), 2);
        assert_eq!((bm.needed(3), bm.needed(9)), (true, false));
    }

    #[test]
    fn counting_and_durability() {
        let g = geom(Level::Raid1, 2, 1 << 16);
        let bm = Bitmap::new(BitmapGeom::new(&g, 1 << 20).unwrap());
        assert!(!bm.start_write(0, 4096), "bits not yet on disk");
        assert_eq!((bm.writes(0), bm.writes(1), bm.writes(2)), (1, 1, 0));
        bm.set_flags(0, DURABLE);
        assert!(!bm.durable(0, 4096));
        bm.set_flags(1, DURABLE);
        assert!(bm.durable(0, 4096));
        assert!(bm.start_write(10, 1));
        // A clear expecting an idle word fails while writes run.
        assert!(!bm.swap_if(0, DURABLE, 0));
        bm.end_write(0, 4096);
        bm.end_write(10, 1);
        assert!(bm.swap_if(0, DURABLE, 0));
        assert!(!bm.start_write(10, 1), "cleared: must wait again");
        bm.end_write(10, 1);
    }
}
