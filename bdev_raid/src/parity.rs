//! Parity kernels: XOR (raid4/5 P) and RAID6 P+Q over GF(2^8) with md's
//! polynomial 0x11d and generator g = 2. SIMD where the CPU has it
//! (detected at run time), portable code elsewhere; both give identical bytes.
//!
//! All slices passed together must have the same length.

/// `dst ^= src`.
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    let _ = (dst, src);
    todo!("parity helper")
}

/// `dst = srcs[0] ^ srcs[1] ^ ...` (`srcs` non-empty).
pub fn xor_gen(dst: &mut [u8], srcs: &[&[u8]]) {
    let _ = (dst, srcs);
    todo!("parity helper")
}

/// RAID6 syndromes: `p = xor of data`, `q = sum g^i * data[i]`, where
/// `data` is given in Q-slot order (slot i has coefficient g^i).
pub fn gen_pq(data: &[&[u8]], p: &mut [u8], q: &mut [u8]) {
    let _ = (data, p, q);
    todo!("parity helper")
}

/// `q ^= g^slot * delta` (RAID6 read-modify-write update of Q).
pub fn q_update(q: &mut [u8], delta: &[u8], slot: usize) {
    let _ = (q, delta, slot);
    todo!("parity helper")
}

/// RAID6 recovery in place. `blocks` holds the data strips in Q-slot order
/// followed by P and Q (`ndata + 2` slices). `failed` names one or two
/// indices into `blocks` whose contents are garbage; they are rebuilt
/// from the others. Any combination works: one data, two data, data+P,
/// data+Q, P, Q, P+Q.
pub fn raid6_recover(blocks: &mut [&mut [u8]], failed: &[usize]) {
    let _ = (blocks, failed);
    todo!("parity helper")
}

/// Which implementation runs on this CPU ("avx2", "ssse3", "portable", ...).
pub fn implementation() -> &'static str {
    todo!("parity helper")
}
