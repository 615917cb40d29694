//! Parity kernels: XOR (raid4/5 P) and RAID6 P+Q over GF(2^8) with md's
//! polynomial 0x11d and generator g = 2. SIMD where the CPU has it
//! (detected at run time), portable code elsewhere; both give identical bytes.
//!
//! All slices passed together must have the same length.
//!
//! The math is Linux md's (`lib/raid6`): `Q = sum g^i * D_i`, two-data
//! recovery as `raid6_2data_recov`, data+P recovery as `raid6_datap_recov`,
//! so members written here assemble under Linux and vice versa.
//!
//! Kernels (best first, chosen once per process and cached):
//! - `avx2` (x86_64): 256-bit XOR, `vpcmpgtb`/`vpaddb` multiply-by-2 for Q,
//!   split-nibble `vpshufb` tables for multiply-by-constant;
//! - `ssse3` (x86_64): the same on 128-bit vectors;
//! - `portable`: u64-word XOR and multiply-by-2, table lookups for
//!   multiply-by-constant. Always compiled, always tested.
//!
//! Vector kernels do the tail (length not a multiple of the vector width)
//! with the portable code, so any length, including 0, works.
//!
//! [`Kernel`] names one implementation explicitly (benchmarks, tests,
//! a host that wants to force one); the free functions use
//! [`Kernel::detected`].
#![deny(unsafe_op_in_unsafe_fn)]

use std::fmt;
use std::sync::OnceLock;

/// Most data blocks a RAID6 stripe may have: the order of g in GF(2^8)
/// (g^255 = g^0, so slot 255 would alias slot 0).
pub const MAX_DATA: usize = 255;

/// `dst ^= src`.
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    Kernel::detected().xor_into(dst, src)
}

/// `dst = srcs[0] ^ srcs[1] ^ ...` (`srcs` non-empty).
pub fn xor_gen(dst: &mut [u8], srcs: &[&[u8]]) {
    Kernel::detected().xor_gen(dst, srcs)
}

/// RAID6 syndromes: `p = xor of data`, `q = sum g^i * data[i]`, where
/// `data` is given in Q-slot order (slot i has coefficient g^i).
pub fn gen_pq(data: &[&[u8]], p: &mut [u8], q: &mut [u8]) {
    Kernel::detected().gen_pq(data, p, q)
}

/// `q ^= g^slot * delta` (RAID6 read-modify-write update of Q).
pub fn q_update(q: &mut [u8], delta: &[u8], slot: usize) {
    Kernel::detected().q_update(q, delta, slot)
}

/// RAID6 recovery in place. `blocks` holds the data strips in Q-slot order
/// followed by P and Q (`ndata + 2` slices). `failed` names one or two
/// indices into `blocks` whose contents are garbage; they are rebuilt
/// from the others. Any combination works: one data, two data, data+P,
/// data+Q, P, Q, P+Q.
pub fn raid6_recover(blocks: &mut [&mut [u8]], failed: &[usize]) {
    Kernel::detected().raid6_recover(blocks, failed)
}

/// Which implementation runs on this CPU ("avx512bw", "avx2", "ssse3", "portable").
pub fn implementation() -> &'static str {
    Kernel::detected().name()
}

// ---------------------------------------------------------------------------
// Kernel selection
// ---------------------------------------------------------------------------

/// "No index": a skip slot that matches no data slot.
const NONE: usize = usize::MAX;

/// `(data, skip, p, q)`, see `Kernel::gen_pq`.
type GenPqFn = fn(&[&[u8]], [usize; 2], &mut [u8], &mut [u8]);
/// `(p, q, dp, dq, pbmul, qmul)`, see `Kernel::recov2`.
type Recov2Fn = fn(&[u8], &[u8], &mut [u8], &mut [u8], u8, u8);

/// One parity implementation (a table of primitive operations). Its
/// methods check their arguments and panic on misuse, as the free
/// functions do; the vector primitives behind them re-check whatever
/// memory safety depends on.
///
/// A `Kernel` for a SIMD level is only ever handed out (by
/// [`Kernel::supported`] or [`Kernel::detected`]) after the CPU was found
/// to support that level, which is what makes calling it sound.
pub struct Kernel {
    name: &'static str,
    /// `dst ^= src`.
    xor_into: fn(&mut [u8], &[u8]),
    /// `dst = xor of srcs` (non-empty).
    xor_gen: fn(&mut [u8], &[&[u8]]),
    /// P and Q of `data`, treating the slots named in the skip pair as
    /// zero (their slices are not read and may be empty).
    gen_pq: GenPqFn,
    /// Q only, same conventions as `gen_pq`.
    gen_q: fn(&[&[u8]], [usize; 2], &mut [u8]),
    /// `dst ^= c * src`.
    mul_xor: fn(&mut [u8], &[u8], u8),
    /// `raid6_2data_recov` inner loop: `(p, q, dp, dq, pbmul, qmul)`; on
    /// entry `dp`/`dq` hold P/Q of the surviving data, on exit the two
    /// rebuilt data blocks (lower slot in `dp`).
    recov2: Recov2Fn,
    /// `raid6_datap_recov` inner loop: `(p, q, dq, qmul)`; on entry `p`/`dq`
    /// hold P/Q of the surviving data, on exit P and the rebuilt block.
    recov_datap: fn(&mut [u8], &[u8], &mut [u8], u8),
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernel").field("name", &self.name).finish()
    }
}

static DETECTED: OnceLock<&'static Kernel> = OnceLock::new();

impl Kernel {
    /// The best kernel this CPU supports, detected on first use and cached
    /// (later calls cost one atomic load).
    pub fn detected() -> &'static Kernel {
        DETECTED.get_or_init(|| Kernel::supported()[0])
    }

    /// The portable kernel (no SIMD; runs everywhere).
    pub fn portable() -> &'static Kernel {
        &PORTABLE
    }

    /// Every kernel this CPU can run, best first; the last is always the
    /// portable one.
    pub fn supported() -> Vec<&'static Kernel> {
        let mut v: Vec<&'static Kernel> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if avx512bw::available() {
                v.push(&avx512bw::KERNEL);
            }
            if avx2::available() {
                v.push(&avx2::KERNEL);
            }
            if ssse3::available() {
                v.push(&ssse3::KERNEL);
            }
        }
        v.push(&PORTABLE);
        v
    }

    /// The kernel's name ("avx512bw", "avx2", "ssse3", "portable").
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `dst ^= src`.
    pub fn xor_into(&self, dst: &mut [u8], src: &[u8]) {
        assert_eq!(
            dst.len(),
            src.len(),
            "xor_into: dst has {} bytes, src {}",
            dst.len(),
            src.len()
        );
        (self.xor_into)(dst, src)
    }

    /// `dst = srcs[0] ^ srcs[1] ^ ...` (`srcs` non-empty).
    pub fn xor_gen(&self, dst: &mut [u8], srcs: &[&[u8]]) {
        assert!(!srcs.is_empty(), "xor_gen: no sources");
        for (i, s) in srcs.iter().enumerate() {
            assert_eq!(
                s.len(),
                dst.len(),
                "xor_gen: source {i} has {} bytes, dst {}",
                s.len(),
                dst.len()
            );
        }
        (self.xor_gen)(dst, srcs)
    }

    /// RAID6 syndromes, see [`gen_pq`]. No data gives zero P and Q.
    pub fn gen_pq(&self, data: &[&[u8]], p: &mut [u8], q: &mut [u8]) {
        assert!(
            data.len() <= MAX_DATA,
            "gen_pq: {} data blocks, RAID6 allows at most {MAX_DATA}",
            data.len()
        );
        assert_eq!(
            p.len(),
            q.len(),
            "gen_pq: P has {} bytes, Q {}",
            p.len(),
            q.len()
        );
        for (i, d) in data.iter().enumerate() {
            assert_eq!(
                d.len(),
                p.len(),
                "gen_pq: data {i} has {} bytes, P {}",
                d.len(),
                p.len()
            );
        }
        if data.is_empty() {
            p.fill(0);
            q.fill(0);
            return;
        }
        (self.gen_pq)(data, [NONE, NONE], p, q)
    }

    /// `q ^= g^slot * delta`, see [`q_update`].
    pub fn q_update(&self, q: &mut [u8], delta: &[u8], slot: usize) {
        assert_eq!(
            q.len(),
            delta.len(),
            "q_update: Q has {} bytes, delta {}",
            q.len(),
            delta.len()
        );
        // g has order 255, so g^slot = g^(slot mod 255).
        (self.mul_xor)(q, delta, tables::EXP[slot % 255])
    }

    /// RAID6 recovery in place, see [`raid6_recover`].
    pub fn raid6_recover(&self, blocks: &mut [&mut [u8]], failed: &[usize]) {
        let nblocks = blocks.len();
        assert!(
            nblocks >= 3,
            "raid6_recover: {nblocks} blocks given; need at least one data block plus P and Q"
        );
        let ndata = nblocks - 2;
        assert!(
            ndata <= MAX_DATA,
            "raid6_recover: {ndata} data blocks, RAID6 allows at most {MAX_DATA}"
        );
        let len = blocks[0].len();
        for (i, b) in blocks.iter().enumerate() {
            assert_eq!(
                b.len(),
                len,
                "raid6_recover: block {i} has {} bytes, block 0 has {len}",
                b.len()
            );
        }
        let (x, y) = match *failed {
            [] => panic!("raid6_recover: no failed block named"),
            [a] => (a, None),
            [a, b] => {
                assert_ne!(a, b, "raid6_recover: failed index {a} named twice");
                (a.min(b), Some(a.max(b)))
            }
            _ => panic!(
                "raid6_recover: {} failed blocks {failed:?}; RAID6 rebuilds at most two",
                failed.len()
            ),
        };
        for &f in failed {
            assert!(
                f < nblocks,
                "raid6_recover: failed index {f} out of range ({nblocks} blocks)"
            );
        }
        let (pi, qi) = (ndata, ndata + 1);
        match (x, y) {
            // One data block: it is P xor the other data.
            (x, None) if x < ndata => {
                let (mut sh, a, _) = split(blocks, x, NONE);
                sh[x] = sh[pi];
                (self.xor_gen)(a, &sh[..ndata]);
            }
            (x, None) if x == pi => {
                let (sh, p, _) = split(blocks, pi, NONE);
                (self.xor_gen)(p, &sh[..ndata]);
            }
            (_, None) => {
                let (sh, q, _) = split(blocks, qi, NONE);
                (self.gen_q)(&sh[..ndata], [NONE, NONE], q);
            }
            // Two data blocks (raid6_2data_recov).
            (x, Some(y)) if y < ndata => {
                let (sh, dp, dq) = split(blocks, x, y);
                (self.gen_pq)(&sh[..ndata], [x, y], dp, dq);
                let pbmul = tables::EXI[y - x];
                let qmul = tables::INV[(tables::EXP[x] ^ tables::EXP[y]) as usize];
                (self.recov2)(sh[pi], sh[qi], dp, dq, pbmul, qmul);
            }
            // Data and P (raid6_datap_recov).
            (x, Some(y)) if y == pi => {
                let (sh, dq, p) = split(blocks, x, pi);
                (self.gen_pq)(&sh[..ndata], [x, NONE], p, dq);
                let qmul = tables::INV[tables::EXP[x] as usize];
                (self.recov_datap)(p, sh[qi], dq, qmul);
            }
            // Data and Q: the data from P, then Q afresh.
            (x, Some(_)) if x < ndata => {
                {
                    let (mut sh, a, _) = split(blocks, x, qi);
                    sh[x] = sh[pi];
                    (self.xor_gen)(a, &sh[..ndata]);
                }
                let (sh, q, _) = split(blocks, qi, NONE);
                (self.gen_q)(&sh[..ndata], [NONE, NONE], q);
            }
            // P and Q.
            (_, Some(_)) => {
                let (sh, p, q) = split(blocks, pi, qi);
                (self.gen_pq)(&sh[..ndata], [NONE, NONE], p, q);
            }
        }
    }
}

/// Most blocks in a RAID6 stripe: data plus P and Q.
const MAX_BLOCKS: usize = MAX_DATA + 2;

type Split<'a> = ([&'a [u8]; MAX_BLOCKS], &'a mut [u8], &'a mut [u8]);

/// Borrows `blocks[a]` and `blocks[b]` (`b` may be [`NONE`]; then the
/// second is empty) exclusively and every other block shared, at its own
/// index; the exclusive ones have empty slices in the shared table.
fn split<'a>(blocks: &'a mut [&mut [u8]], a: usize, b: usize) -> Split<'a> {
    let mut sh: [&'a [u8]; MAX_BLOCKS] = [&[]; MAX_BLOCKS];
    let mut ea: &'a mut [u8] = &mut [];
    let mut eb: &'a mut [u8] = &mut [];
    for (i, blk) in blocks.iter_mut().enumerate() {
        if i == a {
            ea = &mut **blk;
        } else if i == b {
            eb = &mut **blk;
        } else {
            sh[i] = &**blk;
        }
    }
    (sh, ea, eb)
}

// ---------------------------------------------------------------------------
// GF(2^8) tables (generated at compile time; same contents as Linux's
// lib/raid6/mktables.c output)
// ---------------------------------------------------------------------------

mod tables {
    /// Low byte of the field polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11d).
    pub(super) const POLY: u8 = 0x1d;

    /// Multiply by g = 2.
    pub(super) const fn mul2(a: u8) -> u8 {
        (a << 1) ^ if a & 0x80 != 0 { POLY } else { 0 }
    }

    /// `EXP[i] = g^i` (`EXP[255] = 1`, as `raid6_gfexp`).
    pub(super) static EXP: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut v = 1u8;
        let mut i = 0;
        while i < 256 {
            t[i] = v;
            v = mul2(v);
            i += 1;
        }
        t
    };

    /// `LOG[g^i] = i` for i < 255 (`LOG[0]` unused, 0).
    static LOG: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut v = 1u8;
        let mut i = 0;
        while i < 255 {
            t[v as usize] = i as u8;
            v = mul2(v);
            i += 1;
        }
        t
    };

    const fn mul(a: u8, b: u8) -> u8 {
        if a == 0 || b == 0 {
            0
        } else {
            EXP[(LOG[a as usize] as usize + LOG[b as usize] as usize) % 255]
        }
    }

    /// `MUL[a][b] = a * b` (as `raid6_gfmul`).
    pub(super) static MUL: [[u8; 256]; 256] = {
        let mut t = [[0u8; 256]; 256];
        let mut a = 0;
        while a < 256 {
            let mut b = 0;
            while b < 256 {
                t[a][b] = mul(a as u8, b as u8);
                b += 1;
            }
            a += 1;
        }
        t
    };

    /// `INV[a] = a^-1` (`INV[0] = 0`, as `raid6_gfinv`).
    pub(super) static INV: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut a = 1;
        while a < 256 {
            t[a] = EXP[(255 - LOG[a] as usize) % 255];
            a += 1;
        }
        t
    };

    /// `EXI[i] = (g^i + 1)^-1` (as `raid6_gfexi`).
    pub(super) static EXI: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = INV[(EXP[i] ^ 1) as usize];
            i += 1;
        }
        t
    };

    /// Split-nibble tables for multiply by c (as `raid6_vgfmul`):
    /// `VMUL[c][j] = c * j`, `VMUL[c][16 + j] = c * (j << 4)`, j < 16.
    pub(super) static VMUL: [[u8; 32]; 256] = {
        let mut t = [[0u8; 32]; 256];
        let mut c = 0;
        while c < 256 {
            let mut j = 0;
            while j < 16 {
                t[c][j] = mul(c as u8, j as u8);
                t[c][16 + j] = mul(c as u8, (j << 4) as u8);
                j += 1;
            }
            c += 1;
        }
        t
    };
}

// ---------------------------------------------------------------------------
// Portable kernel
// ---------------------------------------------------------------------------

static PORTABLE: Kernel = Kernel {
    name: "portable",
    xor_into: portable::xor_into,
    xor_gen: |dst, srcs| portable::xor_gen_from(dst, srcs, 0),
    gen_pq: |data, skip, p, q| portable::gen_from::<true>(data, skip, p, q, 0),
    gen_q: |data, skip, q| portable::gen_from::<false>(data, skip, &mut [], q, 0),
    mul_xor: portable::mul_xor,
    recov2: portable::recov2,
    recov_datap: portable::recov_datap,
};

/// Portable code; the `*_from` variants do bytes `start..` only, so the
/// vector kernels use them for their tails.
mod portable {
    use super::tables::{self, MUL};

    /// Bytes per block that multi-source loops keep hot in L1.
    const BLK: usize = 512;

    const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HI: u64 = 0x8080_8080_8080_8080;
    const POLY64: u64 = 0x1d1d_1d1d_1d1d_1d1d;

    #[inline]
    fn word(b: &[u8]) -> u64 {
        u64::from_ne_bytes(b.try_into().expect("8-byte chunk"))
    }

    /// Multiply each byte of a word by g (Linux's `SHLBYTE`/`MASK` trick).
    #[inline]
    fn mul2_u64(v: u64) -> u64 {
        let hi = v & HI;
        let mask = (hi << 1).wrapping_sub(hi >> 7);
        ((v & LO7) << 1) ^ (mask & POLY64)
    }

    pub(super) fn xor_into(dst: &mut [u8], src: &[u8]) {
        assert_eq!(dst.len(), src.len());
        let mut d = dst.chunks_exact_mut(8);
        let mut s = src.chunks_exact(8);
        for (dw, sw) in (&mut d).zip(&mut s) {
            dw.copy_from_slice(&(word(dw) ^ word(sw)).to_ne_bytes());
        }
        for (db, sb) in d.into_remainder().iter_mut().zip(s.remainder()) {
            *db ^= sb;
        }
    }

    /// `dst[start..] = xor of srcs[..][start..]`.
    pub(super) fn xor_gen_from(dst: &mut [u8], srcs: &[&[u8]], start: usize) {
        let n = dst.len();
        let mut off = start;
        while off < n {
            let end = (off + BLK).min(n);
            let d = &mut dst[off..end];
            d.copy_from_slice(&srcs[0][off..end]);
            for s in &srcs[1..] {
                xor_into(d, &s[off..end]);
            }
            off = end;
        }
    }

    /// `q = g * q ^ d` (or `q = g * q` without `d`).
    fn mul2_xor(q: &mut [u8], d: Option<&[u8]>) {
        if let Some(d) = d {
            assert_eq!(q.len(), d.len());
        }
        let mut qw = q.chunks_exact_mut(8);
        match d {
            Some(d) => {
                let mut dw = d.chunks_exact(8);
                for (a, b) in (&mut qw).zip(&mut dw) {
                    a.copy_from_slice(&(mul2_u64(word(a)) ^ word(b)).to_ne_bytes());
                }
                for (a, b) in qw.into_remainder().iter_mut().zip(dw.remainder()) {
                    *a = tables::mul2(*a) ^ b;
                }
            }
            None => {
                for a in &mut qw {
                    a.copy_from_slice(&mul2_u64(word(a)).to_ne_bytes());
                }
                for a in qw.into_remainder() {
                    *a = tables::mul2(*a);
                }
            }
        }
    }

    /// P (when `WP`) and Q of bytes `start..`, Horner's rule from the top
    /// slot down; slots named in `skip` count as zero and are not read.
    pub(super) fn gen_from<const WP: bool>(
        data: &[&[u8]],
        skip: [usize; 2],
        p: &mut [u8],
        q: &mut [u8],
        start: usize,
    ) {
        let n = q.len();
        let mut off = start;
        while off < n {
            let end = (off + BLK).min(n);
            let qb = &mut q[off..end];
            qb.fill(0);
            if WP {
                p[off..end].fill(0);
            }
            for (z, d) in data.iter().enumerate().rev() {
                if z == skip[0] || z == skip[1] {
                    mul2_xor(qb, None);
                } else {
                    let d = &d[off..end];
                    mul2_xor(qb, Some(d));
                    if WP {
                        xor_into(&mut p[off..end], d);
                    }
                }
            }
            off = end;
        }
    }

    /// `dst ^= c * src`.
    pub(super) fn mul_xor(dst: &mut [u8], src: &[u8], c: u8) {
        assert_eq!(dst.len(), src.len());
        let row = &MUL[c as usize];
        for (d, s) in dst.iter_mut().zip(src) {
            *d ^= row[*s as usize];
        }
    }

    pub(super) fn recov2(p: &[u8], q: &[u8], dp: &mut [u8], dq: &mut [u8], pbmul: u8, qmul: u8) {
        let n = p.len();
        assert!(q.len() == n && dp.len() == n && dq.len() == n);
        let (pb, qm) = (&MUL[pbmul as usize], &MUL[qmul as usize]);
        for (((p, q), dp), dq) in p.iter().zip(q).zip(dp.iter_mut()).zip(dq.iter_mut()) {
            let px = p ^ *dp;
            let qx = qm[(q ^ *dq) as usize];
            let db = pb[px as usize] ^ qx;
            *dq = db;
            *dp = db ^ px;
        }
    }

    pub(super) fn recov_datap(p: &mut [u8], q: &[u8], dq: &mut [u8], qmul: u8) {
        let n = p.len();
        assert!(q.len() == n && dq.len() == n);
        let qm = &MUL[qmul as usize];
        for ((p, q), dq) in p.iter_mut().zip(q).zip(dq.iter_mut()) {
            let d = qm[(q ^ *dq) as usize];
            *dq = d;
            *p ^= d;
        }
    }
}

// ---------------------------------------------------------------------------
// Vector kernels
// ---------------------------------------------------------------------------

/// The vector kernel bodies, shared by every SIMD level. Expanded inside a
/// level module that provides a `prim` module with the vector type `V`, its
/// width `W` and the primitive operations, all `#[target_feature($feat)]`.
#[cfg(target_arch = "x86_64")]
macro_rules! simd_kernel {
    ($feat:tt) => {
        use super::{portable, tables::VMUL, Kernel};
        use prim::*;

        /// Whether this CPU can run this level.
        pub(super) fn available() -> bool {
            std::is_x86_feature_detected!($feat)
        }

        pub(super) static KERNEL: Kernel = Kernel {
            name: $feat,
            xor_into: |dst, src| {
                debug_assert!(available());
                // SAFETY: `KERNEL` is handed out only by `Kernel::supported`,
                // which checks `available()` first: the CPU has this level's feature.
                unsafe { xor_into(dst, src) }
            },
            xor_gen: |dst, srcs| {
                debug_assert!(available());
                // SAFETY: as for `xor_into` above: the CPU has the feature.
                unsafe { xor_gen(dst, srcs) }
            },
            gen_pq: |data, skip, p, q| {
                debug_assert!(available());
                // SAFETY: as for `xor_into` above: the CPU has the feature.
                unsafe { gen::<true>(data, skip, p, q) }
            },
            gen_q: |data, skip, q| {
                debug_assert!(available());
                // SAFETY: as for `xor_into` above: the CPU has the feature.
                unsafe { gen::<false>(data, skip, &mut [], q) }
            },
            mul_xor: |dst, src, c| {
                debug_assert!(available());
                // SAFETY: as for `xor_into` above: the CPU has the feature.
                unsafe { mul_xor(dst, src, c) }
            },
            recov2: |p, q, dp, dq, pbmul, qmul| {
                debug_assert!(available());
                // SAFETY: as for `xor_into` above: the CPU has the feature.
                unsafe { recov2(p, q, dp, dq, pbmul, qmul) }
            },
            recov_datap: |p, q, dq, qmul| {
                debug_assert!(available());
                // SAFETY: as for `xor_into` above: the CPU has the feature.
                unsafe { recov_datap(p, q, dq, qmul) }
            },
        };

        /// `dst ^= src`.
        ///
        /// # Safety
        /// The CPU must support the target feature.
        #[target_feature(enable = $feat)]
        unsafe fn xor_into(dst: &mut [u8], src: &[u8]) {
            let n = dst.len();
            assert_eq!(src.len(), n);
            let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
            let mut i = 0;
            while i + 4 * W <= n {
                // SAFETY: the CPU has the feature (our caller's contract);
                // both slices hold n >= i + 4W bytes.
                unsafe {
                    let a0 = xor(load(d.add(i)), load(s.add(i)));
                    let a1 = xor(load(d.add(i + W)), load(s.add(i + W)));
                    let a2 = xor(load(d.add(i + 2 * W)), load(s.add(i + 2 * W)));
                    let a3 = xor(load(d.add(i + 3 * W)), load(s.add(i + 3 * W)));
                    store(d.add(i), a0);
                    store(d.add(i + W), a1);
                    store(d.add(i + 2 * W), a2);
                    store(d.add(i + 3 * W), a3);
                }
                i += 4 * W;
            }
            while i + W <= n {
                // SAFETY: the CPU has the feature; i + W <= n.
                unsafe { store(d.add(i), xor(load(d.add(i)), load(s.add(i)))) };
                i += W;
            }
            portable::xor_into(&mut dst[i..], &src[i..]);
        }

        /// One block of `U` vectors at byte `i` of `dst = xor of srcs`.
        ///
        /// # Safety
        /// The CPU must support the target feature; `dst` and every source
        /// must hold at least `i + U * W` bytes.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn xor_gen_block<const U: usize>(dst: *mut u8, srcs: &[&[u8]], i: usize) {
            // SAFETY: the caller guarantees the feature and `i + U*W` bytes
            // in every slice.
            unsafe {
                let s0 = srcs[0].as_ptr().add(i);
                let mut acc = [zero(); U];
                for (k, a) in acc.iter_mut().enumerate() {
                    *a = load(s0.add(k * W));
                }
                for s in &srcs[1..] {
                    let s = s.as_ptr().add(i);
                    for (k, a) in acc.iter_mut().enumerate() {
                        *a = xor(*a, load(s.add(k * W)));
                    }
                }
                for (k, a) in acc.iter().enumerate() {
                    store(dst.add(i + k * W), *a);
                }
            }
        }

        /// `dst = xor of srcs` (non-empty).
        ///
        /// # Safety
        /// The CPU must support the target feature.
        #[target_feature(enable = $feat)]
        unsafe fn xor_gen(dst: &mut [u8], srcs: &[&[u8]]) {
            let n = dst.len();
            assert!(!srcs.is_empty() && srcs.iter().all(|s| s.len() == n));
            let d = dst.as_mut_ptr();
            let mut i = 0;
            while i + 4 * W <= n {
                // SAFETY: the CPU has the feature; every slice holds
                // n >= i + 4W bytes (checked above).
                unsafe { xor_gen_block::<4>(d, srcs, i) };
                i += 4 * W;
            }
            while i + W <= n {
                // SAFETY: as above, with i + W <= n.
                unsafe { xor_gen_block::<1>(d, srcs, i) };
                i += W;
            }
            portable::xor_gen_from(dst, srcs, i);
        }

        /// One block of `U` vectors at byte `i` of P (if `WP`) and Q.
        ///
        /// # Safety
        /// The CPU must support the target feature; `data` is non-empty;
        /// `q`, `p` (if `WP`) and every data slice whose slot is not in
        /// `skip` must hold at least `i + U * W` bytes.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn gen_block<const U: usize, const WP: bool>(
            data: &[&[u8]],
            skip: [usize; 2],
            p: *mut u8,
            q: *mut u8,
            i: usize,
        ) {
            // SAFETY: the caller guarantees the feature and the lengths;
            // skipped slots are never read.
            unsafe {
                let top = data.len() - 1;
                let mut wq = [zero(); U];
                let mut wp = [zero(); U];
                if top != skip[0] && top != skip[1] {
                    let s = data[top].as_ptr().add(i);
                    for k in 0..U {
                        wq[k] = load(s.add(k * W));
                        wp[k] = wq[k];
                    }
                }
                for z in (0..top).rev() {
                    for w in wq.iter_mut() {
                        *w = mul2(*w);
                    }
                    if z == skip[0] || z == skip[1] {
                        continue;
                    }
                    let s = data[z].as_ptr().add(i);
                    for k in 0..U {
                        let d = load(s.add(k * W));
                        wq[k] = xor(wq[k], d);
                        wp[k] = xor(wp[k], d);
                    }
                }
                for k in 0..U {
                    store(q.add(i + k * W), wq[k]);
                    if WP {
                        store(p.add(i + k * W), wp[k]);
                    }
                }
            }
        }

        /// P (if `WP`; else `p` is ignored) and Q; slots in `skip` count
        /// as zero and are not read.
        ///
        /// # Safety
        /// The CPU must support the target feature.
        #[target_feature(enable = $feat)]
        unsafe fn gen<const WP: bool>(
            data: &[&[u8]],
            skip: [usize; 2],
            p: &mut [u8],
            q: &mut [u8],
        ) {
            let n = q.len();
            assert!(!data.is_empty());
            assert!(!WP || p.len() == n);
            for (z, d) in data.iter().enumerate() {
                assert!(z == skip[0] || z == skip[1] || d.len() == n);
            }
            let (pp, qp) = (p.as_mut_ptr(), q.as_mut_ptr());
            let mut i = 0;
            while i + 4 * W <= n {
                // SAFETY: the CPU has the feature; data is non-empty and
                // every slice read or written holds n >= i + 4W bytes.
                unsafe { gen_block::<4, WP>(data, skip, pp, qp, i) };
                i += 4 * W;
            }
            while i + W <= n {
                // SAFETY: as above, with i + W <= n.
                unsafe { gen_block::<1, WP>(data, skip, pp, qp, i) };
                i += W;
            }
            portable::gen_from::<WP>(data, skip, p, q, i);
        }

        /// `dst ^= c * src`.
        ///
        /// # Safety
        /// The CPU must support the target feature.
        #[target_feature(enable = $feat)]
        unsafe fn mul_xor(dst: &mut [u8], src: &[u8], c: u8) {
            let n = dst.len();
            assert_eq!(src.len(), n);
            let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
            // SAFETY: the CPU has the feature.
            let (lo, hi) = unsafe { nibble_tables(&VMUL[c as usize]) };
            let mut i = 0;
            while i + 2 * W <= n {
                // SAFETY: the CPU has the feature; both slices hold
                // n >= i + 2W bytes.
                unsafe {
                    let x0 = gfmul(lo, hi, load(s.add(i)));
                    let x1 = gfmul(lo, hi, load(s.add(i + W)));
                    store(d.add(i), xor(load(d.add(i)), x0));
                    store(d.add(i + W), xor(load(d.add(i + W)), x1));
                }
                i += 2 * W;
            }
            while i + W <= n {
                // SAFETY: as above, with i + W <= n.
                unsafe {
                    let x = gfmul(lo, hi, load(s.add(i)));
                    store(d.add(i), xor(load(d.add(i)), x));
                }
                i += W;
            }
            portable::mul_xor(&mut dst[i..], &src[i..], c);
        }

        /// The `raid6_2data_recov` loop (see `Kernel::recov2`).
        ///
        /// # Safety
        /// The CPU must support the target feature.
        #[target_feature(enable = $feat)]
        unsafe fn recov2(p: &[u8], q: &[u8], dp: &mut [u8], dq: &mut [u8], pbmul: u8, qmul: u8) {
            let n = p.len();
            assert!(q.len() == n && dp.len() == n && dq.len() == n);
            // SAFETY: the CPU has the feature.
            let ((pl, ph), (ql, qh)) = unsafe {
                (
                    nibble_tables(&VMUL[pbmul as usize]),
                    nibble_tables(&VMUL[qmul as usize]),
                )
            };
            let (pp, qp, dpp, dqp) = (p.as_ptr(), q.as_ptr(), dp.as_mut_ptr(), dq.as_mut_ptr());
            let mut i = 0;
            while i + W <= n {
                // SAFETY: the CPU has the feature; all four slices hold
                // n >= i + W bytes.
                unsafe {
                    let px = xor(load(pp.add(i)), load(dpp.add(i)));
                    let qx = xor(load(qp.add(i)), load(dqp.add(i)));
                    let db = xor(gfmul(pl, ph, px), gfmul(ql, qh, qx));
                    store(dqp.add(i), db);
                    store(dpp.add(i), xor(db, px));
                }
                i += W;
            }
            portable::recov2(&p[i..], &q[i..], &mut dp[i..], &mut dq[i..], pbmul, qmul);
        }

        /// The `raid6_datap_recov` loop (see `Kernel::recov_datap`).
        ///
        /// # Safety
        /// The CPU must support the target feature.
        #[target_feature(enable = $feat)]
        unsafe fn recov_datap(p: &mut [u8], q: &[u8], dq: &mut [u8], qmul: u8) {
            let n = p.len();
            assert!(q.len() == n && dq.len() == n);
            // SAFETY: the CPU has the feature.
            let (ql, qh) = unsafe { nibble_tables(&VMUL[qmul as usize]) };
            let (pp, qp, dqp) = (p.as_mut_ptr(), q.as_ptr(), dq.as_mut_ptr());
            let mut i = 0;
            while i + W <= n {
                // SAFETY: the CPU has the feature; all three slices hold
                // n >= i + W bytes.
                unsafe {
                    let d = gfmul(ql, qh, xor(load(qp.add(i)), load(dqp.add(i))));
                    store(dqp.add(i), d);
                    store(pp.add(i), xor(load(pp.add(i)), d));
                }
                i += W;
            }
            portable::recov_datap(&mut p[i..], &q[i..], &mut dq[i..], qmul);
        }
    };
}

/// AVX2: 256-bit vectors.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    /// AVX2 primitives. Every function requires the CPU to support AVX2;
    /// `load`/`store` also need `p` valid for 32 bytes.
    mod prim {
        // The bodies are single intrinsic calls, which are unsafe before
        // Rust 1.87 and safe (inside a target_feature fn) after; leaving
        // them unmarked keeps both compilers quiet.
        #![allow(unsafe_op_in_unsafe_fn)]
        use core::arch::x86_64::*;

        pub(super) type V = __m256i;
        pub(super) const W: usize = 32;

        #[inline]
        #[target_feature(enable = "avx2")]
        pub(super) unsafe fn load(p: *const u8) -> V {
            // SAFETY: the caller guarantees AVX2 and 32 readable bytes at `p`.
            _mm256_loadu_si256(p.cast())
        }

        #[inline]
        #[target_feature(enable = "avx2")]
        pub(super) unsafe fn store(p: *mut u8, v: V) {
            // SAFETY: the caller guarantees AVX2 and 32 writable bytes at `p`.
            _mm256_storeu_si256(p.cast(), v)
        }

        #[inline]
        #[target_feature(enable = "avx2")]
        pub(super) unsafe fn zero() -> V {
            // SAFETY: the caller guarantees AVX2; no memory is accessed.
            _mm256_setzero_si256()
        }

        #[inline]
        #[target_feature(enable = "avx2")]
        pub(super) unsafe fn xor(a: V, b: V) -> V {
            // SAFETY: the caller guarantees AVX2; no memory is accessed.
            _mm256_xor_si256(a, b)
        }

        /// Each byte times g: shift left, xor 0x1d where the top bit was set.
        #[inline]
        #[target_feature(enable = "avx2")]
        pub(super) unsafe fn mul2(v: V) -> V {
            // SAFETY: the caller guarantees AVX2; no memory is accessed.
            let top = _mm256_cmpgt_epi8(_mm256_setzero_si256(), v);
            let poly = _mm256_and_si256(top, _mm256_set1_epi8(0x1d));
            _mm256_xor_si256(_mm256_add_epi8(v, v), poly)
        }

        /// The split-nibble tables of one constant, in both 128-bit lanes.
        #[inline]
        #[target_feature(enable = "avx2")]
        pub(super) unsafe fn nibble_tables(t: &[u8; 32]) -> (V, V) {
            // SAFETY: the caller guarantees AVX2; both loads read 16 bytes inside `t`.
            let lo = _mm_loadu_si128(t.as_ptr().cast());
            let hi = _mm_loadu_si128(t[16..].as_ptr().cast());
            (
                _mm256_broadcastsi128_si256(lo),
                _mm256_broadcastsi128_si256(hi),
            )
        }

        /// Each byte of `x` times the constant whose tables are `lo`, `hi`.
        #[inline]
        #[target_feature(enable = "avx2")]
        pub(super) unsafe fn gfmul(lo: V, hi: V, x: V) -> V {
            // SAFETY: the caller guarantees AVX2; no memory is accessed.
            let m = _mm256_set1_epi8(0x0f);
            let l = _mm256_and_si256(x, m);
            let h = _mm256_and_si256(_mm256_srli_epi16(x, 4), m);
            _mm256_xor_si256(_mm256_shuffle_epi8(lo, l), _mm256_shuffle_epi8(hi, h))
        }
    }

    simd_kernel!("avx2");
}

/// AVX-512 (BW): 512-bit vectors.
#[cfg(target_arch = "x86_64")]
mod avx512bw {
    /// AVX-512 primitives. Every function requires the CPU to support
    /// AVX-512 F and BW; `load`/`store` also need `p` valid for 64 bytes.
    mod prim {
        // See the note in `avx2::prim`.
        #![allow(unsafe_op_in_unsafe_fn)]
        use core::arch::x86_64::*;

        pub(super) type V = __m512i;
        pub(super) const W: usize = 64;

        #[inline]
        #[target_feature(enable = "avx512bw")]
        pub(super) unsafe fn load(p: *const u8) -> V {
            // SAFETY: the caller guarantees AVX-512 and 64 readable bytes at `p`.
            _mm512_loadu_si512(p.cast())
        }

        #[inline]
        #[target_feature(enable = "avx512bw")]
        pub(super) unsafe fn store(p: *mut u8, v: V) {
            // SAFETY: the caller guarantees AVX-512 and 64 writable bytes at `p`.
            _mm512_storeu_si512(p.cast(), v)
        }

        #[inline]
        #[target_feature(enable = "avx512bw")]
        pub(super) unsafe fn zero() -> V {
            // SAFETY: the caller guarantees AVX-512; no memory is accessed.
            _mm512_setzero_si512()
        }

        #[inline]
        #[target_feature(enable = "avx512bw")]
        pub(super) unsafe fn xor(a: V, b: V) -> V {
            // SAFETY: the caller guarantees AVX-512; no memory is accessed.
            _mm512_xor_si512(a, b)
        }

        /// Each byte times g: shift left, xor 0x1d where the top bit was set.
        #[inline]
        #[target_feature(enable = "avx512bw")]
        pub(super) unsafe fn mul2(v: V) -> V {
            // SAFETY: the caller guarantees AVX-512; no memory is accessed.
            let top = _mm512_movepi8_mask(v);
            let poly = _mm512_maskz_mov_epi8(top, _mm512_set1_epi8(0x1d));
            _mm512_xor_si512(_mm512_add_epi8(v, v), poly)
        }

        /// The split-nibble tables of one constant, in every 128-bit lane.
        #[inline]
        #[target_feature(enable = "avx512bw")]
        pub(super) unsafe fn nibble_tables(t: &[u8; 32]) -> (V, V) {
            // SAFETY: the caller guarantees AVX-512; both loads read 16 bytes inside `t`.
            let lo = _mm_loadu_si128(t.as_ptr().cast());
            let hi = _mm_loadu_si128(t[16..].as_ptr().cast());
            (_mm512_broadcast_i32x4(lo), _mm512_broadcast_i32x4(hi))
        }

        /// Each byte of `x` times the constant whose tables are `lo`, `hi`.
        #[inline]
        #[target_feature(enable = "avx512bw")]
        pub(super) unsafe fn gfmul(lo: V, hi: V, x: V) -> V {
            // SAFETY: the caller guarantees AVX-512; no memory is accessed.
            let m = _mm512_set1_epi8(0x0f);
            let l = _mm512_and_si512(x, m);
            let h = _mm512_and_si512(_mm512_srli_epi16(x, 4), m);
            _mm512_xor_si512(_mm512_shuffle_epi8(lo, l), _mm512_shuffle_epi8(hi, h))
        }
    }

    simd_kernel!("avx512bw");
}

/// SSSE3: 128-bit vectors (`pshufb` needs SSSE3; the rest is SSE2).
#[cfg(target_arch = "x86_64")]
mod ssse3 {
    /// SSSE3 primitives. Every function requires the CPU to support SSSE3;
    /// `load`/`store` also need `p` valid for 16 bytes.
    mod prim {
        // See the note in `avx2::prim`.
        #![allow(unsafe_op_in_unsafe_fn)]
        use core::arch::x86_64::*;

        pub(super) type V = __m128i;
        pub(super) const W: usize = 16;

        #[inline]
        #[target_feature(enable = "ssse3")]
        pub(super) unsafe fn load(p: *const u8) -> V {
            // SAFETY: the caller guarantees SSSE3 and 16 readable bytes at `p`.
            _mm_loadu_si128(p.cast())
        }

        #[inline]
        #[target_feature(enable = "ssse3")]
        pub(super) unsafe fn store(p: *mut u8, v: V) {
            // SAFETY: the caller guarantees SSSE3 and 16 writable bytes at `p`.
            _mm_storeu_si128(p.cast(), v)
        }

        #[inline]
        #[target_feature(enable = "ssse3")]
        pub(super) unsafe fn zero() -> V {
            // SAFETY: the caller guarantees SSSE3; no memory is accessed.
            _mm_setzero_si128()
        }

        #[inline]
        #[target_feature(enable = "ssse3")]
        pub(super) unsafe fn xor(a: V, b: V) -> V {
            // SAFETY: the caller guarantees SSSE3; no memory is accessed.
            _mm_xor_si128(a, b)
        }

        /// Each byte times g: shift left, xor 0x1d where the top bit was set.
        #[inline]
        #[target_feature(enable = "ssse3")]
        pub(super) unsafe fn mul2(v: V) -> V {
            // SAFETY: the caller guarantees SSSE3; no memory is accessed.
            let top = _mm_cmpgt_epi8(_mm_setzero_si128(), v);
            let poly = _mm_and_si128(top, _mm_set1_epi8(0x1d));
            _mm_xor_si128(_mm_add_epi8(v, v), poly)
        }

        /// The split-nibble tables of one constant.
        #[inline]
        #[target_feature(enable = "ssse3")]
        pub(super) unsafe fn nibble_tables(t: &[u8; 32]) -> (V, V) {
            // SAFETY: the caller guarantees SSSE3; both loads read 16 bytes inside `t`.
            (
                _mm_loadu_si128(t.as_ptr().cast()),
                _mm_loadu_si128(t[16..].as_ptr().cast()),
            )
        }

        /// Each byte of `x` times the constant whose tables are `lo`, `hi`.
        #[inline]
        #[target_feature(enable = "ssse3")]
        pub(super) unsafe fn gfmul(lo: V, hi: V, x: V) -> V {
            // SAFETY: the caller guarantees SSSE3; no memory is accessed.
            let m = _mm_set1_epi8(0x0f);
            let l = _mm_and_si128(x, m);
            let h = _mm_and_si128(_mm_srli_epi16(x, 4), m);
            _mm_xor_si128(_mm_shuffle_epi8(lo, l), _mm_shuffle_epi8(hi, h))
        }
    }

    simd_kernel!("ssse3");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ---- independent reference (bitwise GF math, no tables) ----

    fn gf_mul_ref(mut a: u8, mut b: u8) -> u8 {
        let mut r = 0u8;
        while b != 0 {
            if b & 1 != 0 {
                r ^= a;
            }
            a = (a << 1) ^ if a & 0x80 != 0 { 0x1d } else { 0 };
            b >>= 1;
        }
        r
    }

    fn g_pow_ref(i: usize) -> u8 {
        (0..i).fold(1u8, |v, _| gf_mul_ref(v, 2))
    }

    fn pq_ref(data: &[Vec<u8>], len: usize) -> (Vec<u8>, Vec<u8>) {
        let mut p = vec![0u8; len];
        let mut q = vec![0u8; len];
        for (i, d) in data.iter().enumerate() {
            let c = g_pow_ref(i);
            for j in 0..len {
                p[j] ^= d[j];
                q[j] ^= gf_mul_ref(c, d[j]);
            }
        }
        (p, q)
    }

    /// splitmix64: deterministic test data.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn refs(v: &[Vec<u8>]) -> Vec<&[u8]> {
        v.iter().map(|b| &b[..]).collect()
    }

    /// Every kernel this CPU runs, and a check that the vector levels the
    /// CPU has are among them (so each one is tested explicitly).
    fn kernels() -> Vec<&'static Kernel> {
        let ks = Kernel::supported();
        #[cfg(target_arch = "x86_64")]
        {
            let names: Vec<_> = ks.iter().map(|k| k.name()).collect();
            if std::is_x86_feature_detected!("avx512bw") {
                assert!(names.contains(&"avx512bw"), "{names:?}");
            }
            if std::is_x86_feature_detected!("avx2") {
                assert!(names.contains(&"avx2"), "{names:?}");
            }
            if std::is_x86_feature_detected!("ssse3") {
                assert!(names.contains(&"ssse3"), "{names:?}");
            }
        }
        assert_eq!(ks.last().unwrap().name(), "portable");
        ks
    }

    /// Lengths that hit every vector/tail split of every kernel.
    fn lengths() -> Vec<usize> {
        let mut v: Vec<usize> = (0..=300).collect();
        v.extend([511, 512, 513, 1000, 4095, 4096, 4097, 65536 + 13]);
        v
    }

    // ---- tables ----

    #[test]
    fn tables_match_reference() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(tables::MUL[a as usize][b as usize], gf_mul_ref(a, b));
            }
        }
        for i in 0..256 {
            assert_eq!(tables::EXP[i], g_pow_ref(i));
        }
        for a in 1..=255u8 {
            assert_eq!(gf_mul_ref(a, tables::INV[a as usize]), 1);
        }
        assert_eq!(tables::INV[0], 0);
        for i in 1..255 {
            let e = tables::EXI[i];
            assert_eq!(gf_mul_ref(e, tables::EXP[i] ^ 1), 1);
        }
        for c in 0..=255u8 {
            for j in 0..16u8 {
                assert_eq!(tables::VMUL[c as usize][j as usize], gf_mul_ref(c, j));
                assert_eq!(
                    tables::VMUL[c as usize][16 + j as usize],
                    gf_mul_ref(c, j << 4)
                );
            }
        }
        // Linux lib/raid6 constants: g^8 = 0x1d, 2^-1 = 0x8e, g^255 = 1.
        assert_eq!(tables::EXP[8], 0x1d);
        assert_eq!(tables::INV[2], 0x8e);
        assert_eq!(tables::EXP[255], 1);
    }

    // ---- known answers ----

    #[test]
    fn gen_pq_known_answer() {
        // Slots 0, 1, 2 have coefficients 1, 2, 4.
        // byte 0: P = 01^01^03 = 03; Q = 01 ^ 2*01 ^ 4*03 = 01^02^0c = 0f
        // byte 1: P = 80^80^00 = 00; Q = 80 ^ 2*80 ^ 0 = 80 ^ 1d = 9d
        // byte 2: P = ff^00^01 = fe; Q = ff ^ 0 ^ 4*01 = fb
        let d0 = [0x01, 0x80, 0xff];
        let d1 = [0x01, 0x80, 0x00];
        let d2 = [0x03, 0x00, 0x01];
        for k in kernels() {
            let (mut p, mut q) = ([0u8; 3], [0u8; 3]);
            k.gen_pq(&[&d0, &d1, &d2], &mut p, &mut q);
            assert_eq!(p, [0x03, 0x00, 0xfe], "{}", k.name());
            assert_eq!(q, [0x0f, 0x9d, 0xfb], "{}", k.name());
        }
        // 2 * 0x80 wraps through the polynomial: 0x100 ^ 0x11d = 0x1d.
        let mut q = [0u8; 1];
        q_update(&mut q, &[0x80], 1);
        assert_eq!(q, [0x1d]);
    }

    #[test]
    fn gen_pq_matches_reference() {
        let mut rng = Rng(1);
        for k in kernels() {
            for len in [0, 1, 31, 32, 33, 100, 129, 1024 + 7] {
                for nd in 1..=12 {
                    let data: Vec<Vec<u8>> = (0..nd).map(|_| rng.bytes(len)).collect();
                    let (mut p, mut q) = (vec![0xaa; len], vec![0x55; len]);
                    k.gen_pq(&refs(&data), &mut p, &mut q);
                    assert_eq!((p, q), pq_ref(&data, len), "{} len {len} nd {nd}", k.name());
                }
            }
        }
    }

    #[test]
    fn gen_pq_slot_coefficients_up_to_max() {
        // One non-zero byte in slot i gives Q = g^i: covers every slot
        // coefficient, including the highest md allows.
        for k in kernels() {
            let zeros = vec![0u8; 40];
            let one = vec![1u8; 40];
            for i in [0, 1, 7, 8, 100, 254] {
                let mut data: Vec<&[u8]> = vec![&zeros; i + 1];
                data[i] = &one;
                let (mut p, mut q) = (vec![0; 40], vec![0; 40]);
                k.gen_pq(&data, &mut p, &mut q);
                assert_eq!(p, one);
                assert!(
                    q.iter().all(|&b| b == g_pow_ref(i)),
                    "{} slot {i}",
                    k.name()
                );
            }
        }
    }

    #[test]
    fn gen_pq_no_data_is_zero() {
        let (mut p, mut q) = (vec![7u8; 10], vec![9u8; 10]);
        gen_pq(&[], &mut p, &mut q);
        assert_eq!((p, q), (vec![0; 10], vec![0; 10]));
    }

    // ---- SIMD against portable, byte for byte ----

    #[test]
    fn simd_kernels_match_portable() {
        let port = Kernel::portable();
        let mut rng = Rng(2);
        for k in kernels() {
            for len in lengths() {
                // Misaligned views (offset 1) as well as aligned ones.
                let off = len % 3;
                let mk = |rng: &mut Rng, n: usize| -> Vec<Vec<u8>> {
                    (0..n).map(|_| rng.bytes(len + off)).collect()
                };

                // xor_into
                let src = mk(&mut rng, 2);
                let (mut a, mut b) = (src[0].clone(), src[0].clone());
                k.xor_into(&mut a[off..], &src[1][off..]);
                port.xor_into(&mut b[off..], &src[1][off..]);
                assert_eq!(a, b, "xor_into {} len {len}", k.name());

                // xor_gen, 1..=5 sources
                for ns in 1..=5 {
                    let srcs = mk(&mut rng, ns);
                    let s: Vec<&[u8]> = srcs.iter().map(|v| &v[off..]).collect();
                    let (mut a, mut b) = (vec![1u8; len], vec![2u8; len]);
                    k.xor_gen(&mut a, &s);
                    port.xor_gen(&mut b, &s);
                    assert_eq!(a, b, "xor_gen {} len {len} ns {ns}", k.name());
                }

                // gen_pq
                for nd in [1, 2, 3, 6, 9] {
                    let data = mk(&mut rng, nd);
                    let d: Vec<&[u8]> = data.iter().map(|v| &v[off..]).collect();
                    let (mut p1, mut q1) = (vec![0u8; len], vec![0u8; len]);
                    let (mut p2, mut q2) = (vec![0u8; len], vec![0u8; len]);
                    k.gen_pq(&d, &mut p1, &mut q1);
                    port.gen_pq(&d, &mut p2, &mut q2);
                    assert_eq!((p1, q1), (p2, q2), "gen_pq {} len {len} nd {nd}", k.name());
                }

                // q_update (multiply by every kind of constant)
                for slot in [0, 1, 2, 7, 8, 100, 254, 255, 300] {
                    let v = mk(&mut rng, 2);
                    let (mut a, mut b) = (v[0].clone(), v[0].clone());
                    k.q_update(&mut a[off..], &v[1][off..], slot);
                    port.q_update(&mut b[off..], &v[1][off..], slot);
                    assert_eq!(a, b, "q_update {} len {len} slot {slot}", k.name());
                }

                // raid6_recover: a few failure shapes on 5 data blocks.
                for failed in [
                    &[1usize][..],
                    &[5],
                    &[6],
                    &[0, 4],
                    &[2, 5],
                    &[3, 6],
                    &[5, 6],
                ] {
                    let mut b1 = mk(&mut rng, 7);
                    let mut b2 = b1.clone();
                    let mut v1: Vec<&mut [u8]> = b1.iter_mut().map(|v| &mut v[off..]).collect();
                    let mut v2: Vec<&mut [u8]> = b2.iter_mut().map(|v| &mut v[off..]).collect();
                    k.raid6_recover(&mut v1, failed);
                    port.raid6_recover(&mut v2, failed);
                    assert_eq!(b1, b2, "recover {} len {len} {failed:?}", k.name());
                }
            }
        }
    }

    #[test]
    fn implementation_is_best_supported() {
        assert_eq!(implementation(), Kernel::supported()[0].name());
        assert_eq!(implementation(), Kernel::detected().name());
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512bw") {
            assert_eq!(implementation(), "avx512bw");
        } else if std::is_x86_feature_detected!("avx2") {
            assert_eq!(implementation(), "avx2");
        }
        assert_eq!(Kernel::portable().name(), "portable");
    }

    // ---- recovery ----

    /// Stripe of `nd` random data blocks plus correct P and Q.
    fn stripe(k: &Kernel, nd: usize, len: usize, rng: &mut Rng) -> Vec<Vec<u8>> {
        let mut blocks: Vec<Vec<u8>> = (0..nd).map(|_| rng.bytes(len)).collect();
        let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
        k.gen_pq(&refs(&blocks), &mut p, &mut q);
        blocks.push(p);
        blocks.push(q);
        blocks
    }

    /// Garbles `failed`, recovers, and checks the stripe is whole again.
    fn check_recover(k: &Kernel, good: &[Vec<u8>], failed: &[usize], rng: &mut Rng) {
        let mut bad = good.to_vec();
        for &f in failed {
            let len = bad[f].len();
            bad[f] = rng.bytes(len);
        }
        let mut v: Vec<&mut [u8]> = bad.iter_mut().map(|b| &mut b[..]).collect();
        k.raid6_recover(&mut v, failed);
        assert!(
            bad == good,
            "{}: ndata {} len {} failed {failed:?} not restored",
            k.name(),
            good.len() - 2,
            good[0].len()
        );
    }

    fn check_all_failures(k: &Kernel, nd: usize, len: usize, rng: &mut Rng) {
        let good = stripe(k, nd, len, rng);
        let n = nd + 2;
        for a in 0..n {
            check_recover(k, &good, &[a], rng);
            for b in 0..n {
                if a != b {
                    check_recover(k, &good, &[a, b], rng);
                }
            }
        }
    }

    #[test]
    fn recover_every_combination() {
        let mut rng = Rng(3);
        for k in kernels() {
            for nd in 1..=10 {
                for len in [0, 1, 17, 64, 200, 4096 + 5] {
                    check_all_failures(k, nd, len, &mut rng);
                }
            }
        }
    }

    #[test]
    fn recover_matches_linux_equations() {
        // Two data blocks rebuilt from P and Q alone, checked against the
        // reference math (not against our own gen_pq).
        let mut rng = Rng(4);
        let data: Vec<Vec<u8>> = (0..4).map(|_| rng.bytes(50)).collect();
        let (p, q) = pq_ref(&data, 50);
        for k in kernels() {
            let mut blocks = data.clone();
            blocks.push(p.clone());
            blocks.push(q.clone());
            blocks[1].fill(0xee);
            blocks[3].fill(0x11);
            let mut v: Vec<&mut [u8]> = blocks.iter_mut().map(|b| &mut b[..]).collect();
            k.raid6_recover(&mut v, &[3, 1]);
            assert_eq!(blocks[1], data[1]);
            assert_eq!(blocks[3], data[3]);
        }
    }

    proptest! {
        #[test]
        fn prop_recover_every_combination(nd in 1usize..=10, len in 0usize..600, seed: u64) {
            let mut rng = Rng(seed);
            for k in kernels() {
                check_all_failures(k, nd, len, &mut rng);
            }
        }

        #[test]
        fn prop_q_update_equals_regeneration(
            nd in 1usize..=12, len in 0usize..700, slot_pick: usize, seed: u64
        ) {
            let mut rng = Rng(seed);
            let slot = slot_pick % nd;
            for k in kernels() {
                let mut data: Vec<Vec<u8>> = (0..nd).map(|_| rng.bytes(len)).collect();
                let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
                k.gen_pq(&refs(&data), &mut p, &mut q);

                // Read-modify-write of one slot: P ^= delta, Q ^= g^slot delta.
                let new = rng.bytes(len);
                let mut delta = data[slot].clone();
                k.xor_into(&mut delta, &new);
                k.xor_into(&mut p, &delta);
                k.q_update(&mut q, &delta, slot);
                data[slot] = new;

                let (mut p2, mut q2) = (vec![0u8; len], vec![0u8; len]);
                k.gen_pq(&refs(&data), &mut p2, &mut q2);
                prop_assert_eq!(&p, &p2, "{}", k.name());
                prop_assert_eq!(&q, &q2, "{}", k.name());
            }
        }

        #[test]
        fn prop_xor_gen_equals_fold_of_xor_into(
            ns in 1usize..=8, len in 0usize..700, seed: u64
        ) {
            let mut rng = Rng(seed);
            let srcs: Vec<Vec<u8>> = (0..ns).map(|_| rng.bytes(len)).collect();
            for k in kernels() {
                let mut gen = rng.bytes(len);
                k.xor_gen(&mut gen, &refs(&srcs));
                let mut fold = srcs[0].clone();
                for s in &srcs[1..] {
                    k.xor_into(&mut fold, s);
                }
                prop_assert_eq!(&gen, &fold, "{}", k.name());
            }
        }

        #[test]
        fn prop_simd_matches_portable(
            nd in 1usize..=16, len in 0usize..2000, c in 0usize..255, seed: u64
        ) {
            let mut rng = Rng(seed);
            let data: Vec<Vec<u8>> = (0..nd).map(|_| rng.bytes(len)).collect();
            let port = Kernel::portable();
            let (mut p0, mut q0) = (vec![0u8; len], vec![0u8; len]);
            port.gen_pq(&refs(&data), &mut p0, &mut q0);
            let mut m0 = q0.clone();
            port.q_update(&mut m0, &data[0], c);
            for k in kernels() {
                let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
                k.gen_pq(&refs(&data), &mut p, &mut q);
                prop_assert_eq!(&p, &p0, "{}", k.name());
                prop_assert_eq!(&q, &q0, "{}", k.name());
                let mut m = q.clone();
                k.q_update(&mut m, &data[0], c);
                prop_assert_eq!(&m, &m0, "{}", k.name());
            }
        }
    }

    // ---- free functions ----

    #[test]
    fn free_functions_work() {
        let mut rng = Rng(5);
        let data: Vec<Vec<u8>> = (0..4).map(|_| rng.bytes(333)).collect();
        let (mut p, mut q) = (vec![0u8; 333], vec![0u8; 333]);
        gen_pq(&refs(&data), &mut p, &mut q);
        assert_eq!((p.clone(), q.clone()), pq_ref(&data, 333));
        let mut x = vec![0u8; 333];
        xor_gen(&mut x, &refs(&data));
        assert_eq!(x, p);
        let mut y = data[0].clone();
        for d in &data[1..] {
            xor_into(&mut y, d);
        }
        assert_eq!(y, p);
        let mut blocks = data.clone();
        blocks.push(p);
        blocks.push(q);
        let good = blocks.clone();
        blocks[0].fill(0);
        blocks[2].fill(0);
        let mut v: Vec<&mut [u8]> = blocks.iter_mut().map(|b| &mut b[..]).collect();
        raid6_recover(&mut v, &[0, 2]);
        assert_eq!(blocks, good);
    }

    // ---- bad input ----

    fn blocks3(len: [usize; 3]) -> Vec<Vec<u8>> {
        len.iter().map(|&n| vec![0u8; n]).collect()
    }

    fn recover(mut b: Vec<Vec<u8>>, failed: &[usize]) {
        let mut v: Vec<&mut [u8]> = b.iter_mut().map(|b| &mut b[..]).collect();
        raid6_recover(&mut v, failed);
    }

    #[test]
    #[should_panic(expected = "rebuilds at most two")]
    fn recover_rejects_three_failures() {
        recover(vec![vec![0u8; 8]; 5], &[0, 1, 2]);
    }

    #[test]
    #[should_panic(expected = "named twice")]
    fn recover_rejects_equal_indices() {
        recover(blocks3([8, 8, 8]), &[1, 1]);
    }

    #[test]
    #[should_panic(expected = "block 2 has 7 bytes")]
    fn recover_rejects_mismatched_lengths() {
        recover(blocks3([8, 8, 7]), &[0]);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn recover_rejects_index_out_of_range() {
        recover(blocks3([8, 8, 8]), &[3]);
    }

    #[test]
    #[should_panic(expected = "no failed block")]
    fn recover_rejects_no_failure() {
        recover(blocks3([8, 8, 8]), &[]);
    }

    #[test]
    #[should_panic(expected = "need at least one data block")]
    fn recover_rejects_too_few_blocks() {
        recover(vec![vec![0u8; 8]; 2], &[0]);
    }

    #[test]
    #[should_panic(expected = "xor_into: dst has 4 bytes, src 5")]
    fn xor_into_rejects_mismatched_lengths() {
        xor_into(&mut [0u8; 4], &[0u8; 5]);
    }

    #[test]
    #[should_panic(expected = "gen_pq: data 1 has 3 bytes")]
    fn gen_pq_rejects_mismatched_lengths() {
        gen_pq(&[&[0u8; 4], &[0u8; 3]], &mut [0u8; 4], &mut [0u8; 4]);
    }

    #[test]
    #[should_panic(expected = "xor_gen: no sources")]
    fn xor_gen_rejects_no_sources() {
        xor_gen(&mut [0u8; 4], &[]);
    }
}
