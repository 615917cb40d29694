//! Reading a bdev's md metadata asynchronously: the 4 KiB superblock at
//! byte 4096, followed by the internal bitmap area when that superblock
//! records one right after it (what `mdraid_rpc::plan::Probe::sb` and
//! `bdev_raid::assemble::Candidate::sb` hold). Used by `bdev_mdraid_create`,
//! examine and `bdev_mdraid_add_base_bdev`. The same reads the embedded
//! daemon makes (`read_md_meta` there), as a chain of completions.

use std::ffi::c_void;

use bdev_raid::ondisk::{
    BitmapSuper, Superblock, BITMAP_SB_BYTES, SB_BLOCK_BYTES, SB_OFFSET_BYTES,
};

use crate::spdk::{guard, submit_raw, BdevOp, DmaBuf};
use crate::sys;

/// Where to read: an open descriptor and a channel of it on this thread.
#[derive(Clone, Copy)]
pub struct Target {
    pub desc: *mut sys::spdk_bdev_desc,
    pub ch: *mut sys::spdk_io_channel,
    pub block_size: u64,
    pub num_blocks: u64,
}

impl Target {
    /// Bdev `b` through descriptor `desc` and channel `ch` (of `desc`).
    pub fn of(
        desc: *mut sys::spdk_bdev_desc,
        ch: *mut sys::spdk_io_channel,
        b: &crate::spdk::Bdev,
    ) -> Target {
        Target {
            desc,
            ch,
            block_size: u64::from(b.block_size()),
            num_blocks: b.num_blocks(),
        }
    }
}

/// Whether md's metadata blocks (4 KiB at 4 KiB) can be read from a bdev
/// of these blocks.
pub fn fits(block_size: u64, num_blocks: u64) -> bool {
    block_size > 0
        && block_size <= SB_BLOCK_BYTES as u64
        && SB_OFFSET_BYTES.is_multiple_of(block_size)
        && num_blocks * block_size >= SB_OFFSET_BYTES + SB_BLOCK_BYTES as u64
}

/// Read `len` bytes at byte `offset` (whole blocks are read around them);
/// `done(None)` on an I/O error or when SPDK refused the read.
///
/// # Safety
/// `t.desc` must be open and `t.ch` its channel on the calling thread,
/// both until `done` has run.
unsafe fn read(t: Target, offset: u64, len: usize, done: Box<dyn FnOnce(Option<Vec<u8>>)>) {
    struct Ctx {
        buf: DmaBuf,
        skip: usize,
        len: usize,
        done: Box<dyn FnOnce(Option<Vec<u8>>)>,
    }
    unsafe extern "C" fn cb(io: *mut sys::spdk_bdev_io, ok: bool, arg: *mut c_void) {
        guard("a metadata read completion", (), || {
            // SAFETY: io is ours to free; arg is the Ctx box, handed back once.
            let ctx = unsafe {
                sys::spdk_bdev_free_io(io);
                Box::from_raw(arg as *mut Ctx)
            };
            let data = ok.then(|| ctx.buf.as_ref()[ctx.skip..ctx.skip + ctx.len].to_vec());
            (ctx.done)(data)
        })
    }
    let bs = t.block_size;
    let first = offset / bs;
    let last = (offset + len as u64).div_ceil(bs);
    if last > t.num_blocks || len == 0 {
        return done(None);
    }
    let Some(mut buf) = DmaBuf::zeroed(((last - first) * bs) as usize, 4096) else {
        return done(None);
    };
    let p = buf.as_mut_ptr();
    let ctx = Box::into_raw(Box::new(Ctx {
        buf,
        skip: (offset - first * bs) as usize,
        len,
        done,
    }));
    // SAFETY: the caller's contract for desc/ch; the buffer lives in the
    // ctx box (its heap memory does not move) until `cb` runs, which frees
    // the bdev_io and the box.
    let rc = unsafe {
        submit_raw(
            t.desc,
            t.ch,
            BdevOp::Read,
            p,
            first,
            last - first,
            Some(cb),
            ctx.cast(),
        )
    };
    if rc != 0 {
        // SAFETY: not submitted: the box is ours again.
        let ctx = unsafe { Box::from_raw(ctx) };
        (ctx.done)(None)
    }
}

/// Read the md metadata of `t` (see the module docs): empty when the bdev
/// is too small or its blocks do not fit md's; `Err` on an I/O error.
/// `done` runs on this thread, maybe before this returns.
///
/// # Safety
/// As for [`read`]: `t`'s descriptor and channel stay open until `done`.
pub unsafe fn read_md_meta(t: Target, done: impl FnOnce(Result<Vec<u8>, String>) + 'static) {
    if !fits(t.block_size, t.num_blocks) {
        return done(Ok(Vec::new()));
    }
    let size = t.block_size * t.num_blocks;
    let sb_read = move |out: Option<Vec<u8>>| {
        let Some(out) = out else {
            return done(Err("reading its superblock area: I/O error".into()));
        };
        let Ok(sb) = Superblock::decode(&out, size / 512) else {
            return done(Ok(out));
        };
        if !sb.has_bitmap() || sb.bitmap_offset != 8 {
            return done(Ok(out));
        }
        // The bitmap superblock says how long the bit array is; read no
        // further than the data area.
        let at = SB_OFFSET_BYTES + SB_BLOCK_BYTES as u64;
        let limit = (sb.data_offset * 512).min(size).saturating_sub(at);
        if limit == 0 {
            return done(Ok(out));
        }
        let head_len = (BITMAP_SB_BYTES as u64).min(limit) as usize;
        let head_read = move |head: Option<Vec<u8>>| {
            let Some(head) = head else {
                return done(Err("reading its bitmap: I/O error".into()));
            };
            let len = BitmapSuper::decode(&head)
                .map(|b| b.area_bytes())
                .unwrap_or(BITMAP_SB_BYTES as u64)
                .min(limit) as usize;
            let area_read = move |area: Option<Vec<u8>>| match area {
                Some(a) => {
                    let mut out = out;
                    out.extend_from_slice(&a);
                    done(Ok(out))
                }
                None => done(Err("reading its bitmap: I/O error".into())),
            };
            // SAFETY: the caller's contract holds until `done`, which only
            // the last read's completion calls.
            unsafe { read(t, at, len, Box::new(area_read)) }
        };
        // SAFETY: as above.
        unsafe { read(t, at, head_len, Box::new(head_read)) }
    };
    // SAFETY: as above.
    unsafe { read(t, SB_OFFSET_BYTES, SB_BLOCK_BYTES, Box::new(sb_read)) }
}
