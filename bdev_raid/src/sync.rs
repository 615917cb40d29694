//! The resync driver: which windows of the array a resync rewrites, in
//! order, one window in flight at a time.
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

use crate::layout::Geometry;
use crate::state::Shared;

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
    bitmap: bool,
    in_flight: Option<Window>,
    chunk_failed: bool,
    finished: bool,
    done_blocks: u64,
    total_blocks: u64,
    failed_windows: u64,
}

impl Resync {
    /// A resync of what `shared`'s bitmap marks needed (every chunk marked
    /// at assembly), or of the whole array without a bitmap. `window_blocks`
    /// is rounded to whole stripes on parity levels.
    pub fn new(geom: &Geometry, shared: &Shared, window_blocks: u64) -> Resync {
        let window = if geom.level().is_parity() {
            let s = geom.stripe_data_blocks();
            window_blocks.div_ceil(s).max(1) * s
        } else {
            window_blocks.max(1)
        };
        let (bitmap, total_blocks) = match &shared.bitmap {
            Some(bm) => (
                true,
                (0..bm.geom().chunks())
                    .filter(|&c| bm.needed(c))
                    .map(|c| bm.geom().array_range(c).1)
                    .sum(),
            ),
            None => (false, geom.array_blocks()),
        };
        Resync {
            window,
            array_blocks: geom.array_blocks(),
            chunk: None,
            at: 0,
            end: if bitmap { 0 } else { geom.array_blocks() },
            next_chunk: 0,
            bitmap,
            in_flight: None,
            chunk_failed: false,
            finished: false,
            done_blocks: 0,
            total_blocks,
            failed_windows: 0,
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
                self.at = lba;
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
        }
        if let (Some(c), Some(bm)) = (self.chunk, &shared.bitmap) {
            if self.at >= self.end {
                if !self.chunk_failed {
                    bm.mark_synced(c);
                }
                self.chunk = None;
            }
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
}
