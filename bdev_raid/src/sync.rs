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
    /// Array block it started from.
    from: u64,
    /// Start of the first window that failed (the checkpoint stays there).
    first_failed: Option<u64>,
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
        Resync::from(geom, shared, window_blocks, 0)
    }

    /// A pass over the whole array whatever the bitmap says: for md's
    /// `check` and `repair`.
    pub fn whole(geom: &Geometry, window_blocks: u64) -> Resync {
        let mut r = Resync::from(geom, &Shared::new(1), window_blocks, 0);
        r.total_blocks = geom.array_blocks();
        r
    }

    /// A resync that starts at array block `from` (where an orderly stop
    /// left one): what lies below is in sync already.
    pub fn from(geom: &Geometry, shared: &Shared, window_blocks: u64, from: u64) -> Resync {
        let window = if geom.level().is_parity() {
            let s = geom.stripe_data_blocks();
            window_blocks.div_ceil(s).max(1) * s
        } else {
            window_blocks.max(1)
        };
        let from = from.min(geom.array_blocks());
        let (bitmap, total_blocks) = match &shared.bitmap {
            Some(bm) => {
                for c in 0..bm.geom().chunks() {
                    let (lba, blocks) = bm.geom().array_range(c);
                    if lba + blocks <= from {
                        bm.mark_synced(c);
                    }
                }
                (
                    true,
                    (0..bm.geom().chunks())
                        .filter(|&c| bm.needed(c))
                        .map(|c| bm.geom().array_range(c).1)
                        .sum(),
                )
            }
            None => (false, geom.array_blocks() - from),
        };
        Resync {
            window,
            array_blocks: geom.array_blocks(),
            chunk: None,
            at: from,
            end: if bitmap { from } else { geom.array_blocks() },
            from,
            first_failed: None,
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
                self.at = lba.max(self.from);
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
            self.first_failed.get_or_insert(w.lba);
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

    /// Everything below this array block is in sync (or was not needed):
    /// what an orderly stop records as `resync_offset`.
    pub fn checkpoint(&self) -> u64 {
        let at = self.in_flight.map_or(self.at, |w| w.lba);
        self.first_failed.map_or(at, |f| f.min(at))
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

/// A rebuild of one member (md's recovery), window by window over the
/// member's blocks from its recovery offset on. Each window is handed out
/// as array ranges to submit as [`IoType::Resync`] parents (one per strip
/// on raid10, whose member blocks are not contiguous in the array; one
/// per window elsewhere): a resync reads a current copy (or the other
/// strips and parity) and writes every other copy, the member being rebuilt
/// among them. When every range of a window succeeded, the member is
/// current up to the window's end: report [`Rebuild::offset`] to the
/// metadata path. With `bitmap`, windows whose chunks have no bit set are
/// skipped (nothing was written there since the member left).
///
/// [`IoType::Resync`]: crate::channel::IoType::Resync
#[derive(Clone, Debug)]
pub struct Rebuild {
    member: usize,
    /// The device being rebuilt (`readded` of its role).
    device: u64,
    /// Member blocks rebuilt: `[0, done)` is current.
    done: u64,
    end: u64,
    window: u64,
    bitmap: bool,
    /// The window being handed out: `[done, win_end)`, next piece at `at`.
    at: u64,
    win_end: u64,
    outstanding: u32,
    failed: bool,
    skipped: u64,
    rebuilt: u64,
}

impl Rebuild {
    /// Rebuild `member` of `geom` from member block `from` on, in windows of
    /// about `window_blocks` member blocks (whole strips).
    pub fn new(
        geom: &Geometry,
        member: usize,
        device: u64,
        from: u64,
        window_blocks: u64,
        bitmap: bool,
    ) -> Rebuild {
        let strip = geom.strip_blocks();
        let window = window_blocks.div_ceil(strip).max(1) * strip;
        let end = geom.member_blocks(member);
        Rebuild {
            member,
            device,
            done: from.min(end),
            end,
            window,
            bitmap,
            at: from.min(end),
            win_end: from.min(end),
            outstanding: 0,
            failed: false,
            skipped: 0,
            rebuilt: 0,
        }
    }

    pub fn member(&self) -> usize {
        self.member
    }

    /// The device being rebuilt (pass it with the progress).
    pub fn device(&self) -> u64 {
        self.device
    }

    /// Member blocks `[0, offset)` are current.
    pub fn offset(&self) -> u64 {
        self.done
    }

    /// The array range holding member block `x` and the member blocks it
    /// covers from `x` (up to `lim`); `None` range for blocks holding no
    /// array data (raid10's unused tail).
    fn piece(&self, geom: &Geometry, x: u64, lim: u64) -> (Option<(u64, u64)>, u64) {
        let strip = geom.strip_blocks();
        if geom.level().is_parity() {
            let dps = geom.stripe_data_blocks();
            let (s0, s1) = (x / strip, lim.div_ceil(strip).min(geom.stripes()));
            let r = (s1 > s0).then(|| (s0 * dps, (s1 - s0) * dps));
            return (r, lim - x);
        }
        let len = if geom.level() == crate::layout::Level::Raid1 {
            lim - x
        } else {
            (strip - x % strip).min(lim - x)
        };
        (geom.member_to_array(self.member, x).map(|a| (a, len)), len)
    }

    /// Whether any chunk of member blocks `[x, lim)` has its bit set.
    fn dirty(&self, geom: &Geometry, shared: &Shared, mut x: u64, lim: u64) -> bool {
        let Some(bm) = &shared.bitmap else {
            return true;
        };
        while x < lim {
            let (r, n) = self.piece(geom, x, lim);
            if let Some((a, len)) = r {
                let (c0, c1) = bm.geom().chunks_of(a, len);
                if (c0..=c1).any(|c| bm.word(c) != 0) {
                    return true;
                }
            }
            x += n;
        }
        false
    }

    /// The next array range to resync; `None` while the window's ranges are
    /// in flight, after a failure, or at the end.
    pub fn next_window(&mut self, geom: &Geometry, shared: &Shared) -> Option<Window> {
        loop {
            if self.failed {
                return None;
            }
            if self.at >= self.win_end {
                if self.outstanding > 0 || self.done >= self.end {
                    return None;
                }
                // A new window; recovering from the bitmap, windows end at
                // chunk boundaries where chunks are member blocks, so clean
                // chunks next to dirty ones are skipped too.
                self.win_end = (self.done + self.window).min(self.end);
                if let Some(bg) = shared.bitmap.as_ref().map(|b| b.geom()) {
                    if self.bitmap && bg.member_space() {
                        let next = (self.done / bg.chunk_blocks() + 1) * bg.chunk_blocks();
                        self.win_end = self.win_end.min(next);
                    }
                }
                self.at = self.done;
                if self.bitmap && !self.dirty(geom, shared, self.at, self.win_end) {
                    self.skipped += self.win_end - self.done;
                    self.done = self.win_end;
                    self.at = self.win_end;
                    continue;
                }
            }
            let (r, n) = self.piece(geom, self.at, self.win_end);
            self.at += n;
            if let Some((lba, blocks)) = r {
                self.outstanding += 1;
                return Some(Window { lba, blocks });
            }
            if self.at >= self.win_end && self.outstanding == 0 {
                self.done = self.win_end;
            }
        }
    }

    /// A range handed out ended; `ok` false if its resync failed (the
    /// rebuild stops there: a member it reads from or the one it rebuilds
    /// failed).
    pub fn window_done(&mut self, ok: bool) {
        assert!(self.outstanding > 0, "no rebuild range in flight");
        self.outstanding -= 1;
        if !ok {
            self.failed = true;
        }
        if self.outstanding == 0 && self.at >= self.win_end && !self.failed {
            self.rebuilt += self.win_end - self.done;
            self.done = self.win_end;
        }
    }

    /// A range handed out could not be submitted: hand the window out again.
    pub fn unsubmit(&mut self) {
        assert!(self.outstanding > 0, "no rebuild range in flight");
        self.outstanding -= 1;
        if self.outstanding == 0 {
            self.at = self.done;
            self.win_end = self.done;
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.outstanding
    }

    pub fn is_done(&self) -> bool {
        self.done >= self.end && self.outstanding == 0
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Member blocks rebuilt, and skipped as clean in the bitmap.
    pub fn counts(&self) -> (u64, u64) {
        (self.rebuilt, self.skipped)
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

    fn rebuild_all(r: &mut Rebuild, g: &Geometry, shared: &Shared) -> Vec<Window> {
        let mut out = Vec::new();
        let mut guard = 0;
        while !r.is_done() {
            guard += 1;
            assert!(guard < 100_000, "rebuild does not end");
            let mut batch = Vec::new();
            while let Some(w) = r.next_window(g, shared) {
                batch.push(w);
            }
            for w in batch {
                out.push(w);
                r.window_done(true);
            }
        }
        out
    }

    #[test]
    fn rebuild_covers_every_member_block_once() {
        use crate::layout::raid10_layout;
        for (level, n, layout) in [
            (Level::Raid1, 3, None),
            (Level::Raid5, 4, None),
            (Level::Raid6, 5, None),
            (Level::Raid10, 4, Some(raid10_layout::NEAR2)),
            (Level::Raid10, 3, Some(raid10_layout::FAR2)),
            (Level::Raid10, 4, Some(raid10_layout::OFFSET2)),
        ] {
            let g = Geometry::new(&GeometryParams {
                level,
                layout,
                strip_size_kb: 64,
                block_size: 512,
                member_blocks: vec![1 << 14; n],
            })
            .unwrap();
            let shared = Shared::new(1);
            let member = n - 1;
            let mut r = Rebuild::new(&g, member, 0, 0, 1000, false);
            let ws = rebuild_all(&mut r, &g, &shared);
            // Every member block holding array data lies in some window.
            let mut covered = vec![false; g.member_blocks(member) as usize];
            for w in &ws {
                if level.is_parity() {
                    let dps = g.stripe_data_blocks();
                    for st in w.lba / dps..(w.lba + w.blocks).div_ceil(dps) {
                        let m0 = g.stripe(st).member_lba;
                        for b in m0..m0 + g.strip_blocks() {
                            covered[b as usize] = true;
                        }
                    }
                    continue;
                }
                let mut at = w.lba;
                while at < w.lba + w.blocks {
                    let m = g.map(at, w.lba + w.blocks - at);
                    for l in m.copies() {
                        if l.member as usize == member {
                            for b in l.lba..l.lba + m.len {
                                covered[b as usize] = true;
                            }
                        }
                    }
                    at += m.len;
                }
            }
            for b in 0..g.member_blocks(member) {
                let used = g.member_to_array(member, b).is_some()
                    || (level.is_parity() && b / g.strip_blocks() < g.stripes());
                assert!(
                    !used || covered[b as usize],
                    "{level:?}: member block {b} not rebuilt"
                );
            }
            assert_eq!(r.offset(), g.member_blocks(member));
        }
    }

    #[test]
    fn bitmap_rebuild_skips_clean_windows_and_stops_on_failure() {
        let g = geom(Level::Raid1, 2);
        let bg = BitmapGeom::new(&g, 1 << 20).unwrap(); // 2048 blocks a chunk
        let shared = Shared::with_bitmap(1, Some(Bitmap::new(bg)));
        shared.bitmap.as_ref().unwrap().set_flags(5, DURABLE);
        let mut r = Rebuild::new(&g, 1, 0, 0, 1024, true);
        let ws = rebuild_all(&mut r, &g, &shared);
        assert_eq!(
            ws,
            vec![
                Window {
                    lba: 5 * 2048,
                    blocks: 1024
                },
                Window {
                    lba: 5 * 2048 + 1024,
                    blocks: 1024
                }
            ]
        );
        assert_eq!(r.counts(), (2048, (1 << 16) - 2048));
        let mut r = Rebuild::new(&g, 1, 0, 4096, 1024, false);
        let w = r.next_window(&g, &shared).unwrap();
        assert_eq!(w.lba, 4096, "resumes from the offset");
        r.window_done(false);
        assert!(r.failed() && r.next_window(&g, &shared).is_none());
        assert_eq!(r.offset(), 4096);
    }
}
