//! Safe wrappers over the SPDK calls the module makes: threads and
//! messages, pollers, `spdk_for_each_channel`, bdev descriptors and I/O
//! channels, base bdev I/O with a completion closure, DMA buffers, JSON
//! writing, logging, and the panic guards every `extern "C"` callback runs
//! its body in.
//!
//! Panics: a callback from SPDK never unwinds into C. Control-path
//! callbacks ([`guard`]) log the panic and return a fallback value (an RPC
//! gets an internal error). Data-path callbacks ([`fatal_guard`]) log it
//! and abort the process: a panic there means an engine invariant broke
//! with I/O in flight, and carrying on could acknowledge data that is not
//! where it should be (fail-stop, like SPDK's own asserts or md's BUG()).

use std::cell::RefCell;
use std::ffi::{c_int, c_void, CStr, CString};
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;

use crate::sys;

// ------------------------------------------------------------------ logs

/// Log levels of `spdk_log`.
#[derive(Clone, Copy, Debug)]
pub enum Level {
    Error,
    Warn,
    Notice,
}

pub fn log(level: Level, msg: &str) {
    let (l, name) = match level {
        Level::Error => (sys::SPDK_LOG_ERROR, "ERROR"),
        Level::Warn => (sys::SPDK_LOG_WARN, "WARNING"),
        Level::Notice => (sys::SPDK_LOG_NOTICE, "NOTICE"),
    };
    let text = format!("*{name}*: {}", msg.replace('\0', "?"));
    let c = CString::new(text).unwrap_or_default();
    // SAFETY: `c` is a NUL-terminated string that outlives the call; the
    // shim passes it to spdk_log as a "%s" argument, never as a format.
    unsafe { sys::mdraid_shim_log(l, c.as_ptr()) }
}

macro_rules! log_error { ($($t:tt)*) => { $crate::spdk::log($crate::spdk::Level::Error, &format!($($t)*)) } }
macro_rules! log_warn { ($($t:tt)*) => { $crate::spdk::log($crate::spdk::Level::Warn, &format!($($t)*)) } }
macro_rules! log_notice { ($($t:tt)*) => { $crate::spdk::log($crate::spdk::Level::Notice, &format!($($t)*)) } }
pub(crate) use {log_error, log_notice, log_warn};

// ------------------------------------------------------------ panic guards

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Run a control-path callback body: a panic is logged and `fallback`
/// returned instead.
pub fn guard<R>(what: &str, fallback: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            log_error!("mdraid: panic in {what}: {}", panic_text(&*p));
            fallback
        }
    }
}

/// Run a data-path callback body: a panic is logged and the process
/// aborted (see the module docs).
pub fn fatal_guard<R>(what: &str, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            log_error!(
                "mdraid: panic in {what}: {}; aborting (an engine invariant broke with I/O in flight)",
                panic_text(&*p)
            );
            std::process::abort()
        }
    }
}

// ------------------------------------------------------------ threads

/// An SPDK thread handle. Messages may be sent to it from any thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thread(NonNull<sys::spdk_thread>);

// SAFETY: an spdk_thread handle is an address; SPDK's message ring makes
// `spdk_thread_send_msg` to it safe from any thread, and nothing else is
// done with it off its own thread here.
unsafe impl Send for Thread {}
// SAFETY: as for Send: the handle is only compared and sent messages.
unsafe impl Sync for Thread {}

impl Thread {
    /// The SPDK thread the caller runs on (None outside SPDK threads).
    pub fn current() -> Option<Thread> {
        // SAFETY: spdk_get_thread only reads thread-local state.
        NonNull::new(unsafe { sys::spdk_get_thread() }).map(Thread)
    }

    pub fn is_current(self) -> bool {
        Thread::current() == Some(self)
    }

    /// Run `f` on this thread (later, from its message loop, also when it
    /// is the caller's). `Err` when SPDK could not queue the message.
    pub fn send<F: FnOnce() + Send + 'static>(self, f: F) -> Result<(), MsgRefused> {
        unsafe extern "C" fn run<F: FnOnce()>(ctx: *mut c_void) {
            fatal_guard("a thread message", || {
                // SAFETY: ctx is the Box::into_raw of `send` below, given to
                // SPDK once and handed back here once.
                let f = unsafe { Box::from_raw(ctx as *mut F) };
                f()
            })
        }
        let p = Box::into_raw(Box::new(f));
        // SAFETY: self is a live thread handle; `run::<F>` takes back
        // exactly this box.
        let rc = unsafe { sys::spdk_thread_send_msg(self.0.as_ptr(), Some(run::<F>), p.cast()) };
        if rc != 0 {
            // SAFETY: SPDK did not take the message: the box is still ours.
            drop(unsafe { Box::from_raw(p) });
            return Err(MsgRefused);
        }
        Ok(())
    }
}

/// SPDK could not queue a thread message (out of message buffers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsgRefused;

/// A value only one SPDK thread touches. It may be shared (in an `Arc`)
/// with other threads, which cannot reach it: [`OnThread::with`] asserts
/// it runs on the owning thread. Dropped elsewhere, it is leaked (with a
/// log line) rather than dropped on the wrong thread.
pub struct OnThread<T> {
    thread: Thread,
    cell: std::mem::ManuallyDrop<RefCell<T>>,
}

// SAFETY: the cell is only borrowed on `thread` (asserted in `with`), so
// no two threads ever touch it; dropping happens only there too.
unsafe impl<T> Send for OnThread<T> {}
// SAFETY: as for Send.
unsafe impl<T> Sync for OnThread<T> {}

impl<T> OnThread<T> {
    pub fn new(thread: Thread, v: T) -> OnThread<T> {
        OnThread {
            thread,
            cell: std::mem::ManuallyDrop::new(RefCell::new(v)),
        }
    }

    pub fn thread(&self) -> Thread {
        self.thread
    }

    /// Borrow the value; must be called on its thread, not re-entrantly.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        assert!(
            self.thread.is_current(),
            "thread-bound value used off its thread"
        );
        f(&mut self.cell.borrow_mut())
    }
}

impl<T> Drop for OnThread<T> {
    fn drop(&mut self) {
        if self.thread.is_current() {
            // SAFETY: dropped once, here, on the owning thread.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.cell) }
        } else if std::mem::needs_drop::<T>() {
            log_warn!("mdraid: thread-bound state dropped off its thread; leaked");
        }
    }
}

// ------------------------------------------------------------ pollers

/// A poller on the thread that made it; unregistered when dropped (on
/// that thread). Its closure returns whether it did work.
pub struct Poller {
    ptr: *mut sys::spdk_poller,
    f: *mut Box<dyn FnMut() -> bool>,
    _not_send: PhantomData<*mut ()>,
}

impl Poller {
    pub fn new(name: &CStr, period_us: u64, f: impl FnMut() -> bool + 'static) -> Option<Poller> {
        unsafe extern "C" fn run(ctx: *mut c_void) -> c_int {
            fatal_guard("a poller", || {
                // SAFETY: ctx is the boxed closure of `Poller::new`, freed
                // only after the poller is unregistered (in Drop).
                let f = unsafe { &mut *(ctx as *mut Box<dyn FnMut() -> bool>) };
                if f() {
                    sys::SPDK_POLLER_BUSY as c_int
                } else {
                    sys::SPDK_POLLER_IDLE as c_int
                }
            })
        }
        let b: Box<Box<dyn FnMut() -> bool>> = Box::new(Box::new(f));
        let f = Box::into_raw(b);
        // SAFETY: `run` matches spdk_poller_fn; `f` lives until Drop.
        let ptr = unsafe {
            sys::spdk_poller_register_named(Some(run), f.cast(), period_us, name.as_ptr())
        };
        if ptr.is_null() {
            // SAFETY: not registered: the box is still ours.
            drop(unsafe { Box::from_raw(f) });
            return None;
        }
        Some(Poller {
            ptr,
            f,
            _not_send: PhantomData,
        })
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: the poller was registered on this thread (Poller is not
        // Send); after unregistering, SPDK never calls `run` with `f`
        // again, so the box can go. (Never drop a poller from inside its
        // own closure: the owner defers that with a message.)
        unsafe {
            sys::spdk_poller_unregister(&mut self.ptr);
            drop(Box::from_raw(self.f));
        }
    }
}

/// Run `per` on every channel of `io_device` (each on its own thread),
/// then `done(status)` on the calling thread.
///
/// # Safety
/// `io_device` must be a registered io_device whose channels `per` may
/// use as it does, and stay registered until `done` runs.
pub unsafe fn for_each_channel<F, D>(io_device: *mut c_void, per: F, done: D)
where
    F: Fn(*mut sys::spdk_io_channel) + Send + Sync + 'static,
    D: FnOnce(c_int) + Send + 'static,
{
    struct Ctx<F, D> {
        per: F,
        done: Option<D>,
    }
    unsafe extern "C" fn each<F: Fn(*mut sys::spdk_io_channel), D>(
        i: *mut sys::spdk_io_channel_iter,
    ) {
        fatal_guard("a channel broadcast", || {
            // SAFETY: i is SPDK's live iterator; its ctx is our Ctx box,
            // alive until `cpl` frees it, and only read here.
            let ctx = unsafe { &*(sys::spdk_io_channel_iter_get_ctx(i) as *const Ctx<F, D>) };
            // SAFETY: as above.
            let ch = unsafe { sys::spdk_io_channel_iter_get_channel(i) };
            (ctx.per)(ch);
            // SAFETY: i is live; this hands the iteration to the next channel.
            unsafe { sys::spdk_for_each_channel_continue(i, 0) };
        })
    }
    unsafe extern "C" fn cpl<F, D: FnOnce(c_int)>(
        i: *mut sys::spdk_io_channel_iter,
        status: c_int,
    ) {
        fatal_guard("a channel broadcast completion", || {
            // SAFETY: the iteration is over: its ctx box is ours again.
            let mut ctx =
                unsafe { Box::from_raw(sys::spdk_io_channel_iter_get_ctx(i) as *mut Ctx<F, D>) };
            if let Some(d) = ctx.done.take() {
                d(status)
            }
        })
    }
    let ctx = Box::into_raw(Box::new(Ctx {
        per,
        done: Some(done),
    }));
    // SAFETY: io_device is registered (the caller's contract); each/cpl
    // take the ctx box as described above.
    unsafe {
        sys::spdk_for_each_channel(io_device, Some(each::<F, D>), ctx.cast(), Some(cpl::<F, D>))
    }
}

// ------------------------------------------------------------ DMA memory

/// Memory from `spdk_dma_zmalloc`: pinned, usable for any bdev's I/O.
pub struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: DMA memory is not tied to a thread; the buffer owns it.
unsafe impl Send for DmaBuf {}

impl DmaBuf {
    /// `len` zeroed bytes aligned to `align` (a power of two, or 0).
    pub fn zeroed(len: usize, align: usize) -> Option<DmaBuf> {
        if len == 0 {
            return Some(DmaBuf {
                ptr: NonNull::dangling(),
                len: 0,
            });
        }
        // SAFETY: plain allocation call.
        let p = unsafe { sys::spdk_dma_zmalloc(len, align.max(1), std::ptr::null_mut()) };
        NonNull::new(p as *mut u8).map(|ptr| DmaBuf { ptr, len })
    }

    pub fn from_slice(data: &[u8], align: usize) -> Option<DmaBuf> {
        let mut b = DmaBuf::zeroed(data.len(), align)?;
        b.as_mut().copy_from_slice(data);
        Some(b)
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl AsRef<[u8]> for DmaBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr/len describe the allocation this buffer owns.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsMut<[u8]> for DmaBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in as_ref; &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: allocated by spdk_dma_zmalloc, freed once.
            unsafe { sys::spdk_dma_free(self.ptr.as_ptr().cast()) }
        }
    }
}

// ------------------------------------------------------------ bdevs

/// An open bdev descriptor (read-write), optionally claimed by `mdraid`.
/// Closed (and released) when dropped, which must happen on the thread
/// that opened it.
pub struct Desc {
    desc: NonNull<sys::spdk_bdev_desc>,
    bdev: NonNull<sys::spdk_bdev>,
    claimed: bool,
    _not_send: PhantomData<*mut ()>,
}

/// Hot-remove and resize events of the members: what to do is the
/// module's (see `module::member_event`).
unsafe extern "C" fn desc_event(
    ty: sys::spdk_bdev_event_type,
    bdev: *mut sys::spdk_bdev,
    _ctx: *mut c_void,
) {
    guard("a bdev event", (), || crate::module::member_event(ty, bdev))
}

impl Desc {
    /// `spdk_bdev_open_ext(name, write=true)`; the error is a negative errno.
    pub fn open(name: &str) -> Result<Desc, c_int> {
        Desc::open_with(name, true)
    }

    /// A read-only descriptor (examine).
    pub fn open_ro(name: &str) -> Result<Desc, c_int> {
        Desc::open_with(name, false)
    }

    fn open_with(name: &str, write: bool) -> Result<Desc, c_int> {
        let c = CString::new(name).map_err(|_| -libc_einval())?;
        let mut d: *mut sys::spdk_bdev_desc = std::ptr::null_mut();
        // SAFETY: c outlives the call; d receives the descriptor.
        let rc = unsafe {
            sys::spdk_bdev_open_ext(
                c.as_ptr(),
                write,
                Some(desc_event),
                std::ptr::null_mut(),
                &mut d,
            )
        };
        if rc != 0 {
            return Err(rc);
        }
        let desc = NonNull::new(d).ok_or(-libc_einval())?;
        // SAFETY: desc is open.
        let bdev = NonNull::new(unsafe { sys::spdk_bdev_desc_get_bdev(desc.as_ptr()) })
            .ok_or(-libc_einval())?;
        Ok(Desc {
            desc,
            bdev,
            claimed: false,
            _not_send: PhantomData,
        })
    }

    /// Claim the bdev for the `mdraid` module (exclusive write).
    pub fn claim(&mut self) -> Result<(), c_int> {
        // SAFETY: bdev and desc are open; the module lives for the process.
        let rc = unsafe {
            sys::spdk_bdev_module_claim_bdev(
                self.bdev.as_ptr(),
                self.desc.as_ptr(),
                sys::mdraid_shim_module(),
            )
        };
        if rc == 0 {
            self.claimed = true;
            Ok(())
        } else {
            Err(rc)
        }
    }

    pub fn raw(&self) -> *mut sys::spdk_bdev_desc {
        self.desc.as_ptr()
    }

    pub fn bdev(&self) -> Bdev {
        Bdev(self.bdev)
    }

    /// An I/O channel of this descriptor on the calling thread.
    pub fn channel(&self) -> Option<IoChannel> {
        // SAFETY: desc is open; the channel is put on drop.
        NonNull::new(unsafe { sys::spdk_bdev_get_io_channel(self.desc.as_ptr()) }).map(|c| {
            IoChannel {
                ch: c,
                _not_send: PhantomData,
            }
        })
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: opened (and claimed) by this value on this thread;
        // released and closed once.
        unsafe {
            if self.claimed {
                sys::spdk_bdev_module_release_bdev(self.bdev.as_ptr());
            }
            sys::spdk_bdev_close(self.desc.as_ptr());
        }
    }
}

fn libc_einval() -> c_int {
    22
}

/// A bdev (borrowed: valid while a descriptor of it is open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bdev(pub NonNull<sys::spdk_bdev>);

// SAFETY: the getters used here read fields fixed at registration.
unsafe impl Send for Bdev {}
// SAFETY: as for Send.
unsafe impl Sync for Bdev {}

impl Bdev {
    pub fn by_name(name: &str) -> Option<Bdev> {
        let c = CString::new(name).ok()?;
        // SAFETY: lookup by a NUL-terminated name (app thread).
        NonNull::new(unsafe { sys::spdk_bdev_get_by_name(c.as_ptr()) }).map(Bdev)
    }

    /// Every registered bdev (app thread).
    pub fn all() -> Vec<Bdev> {
        let mut v = Vec::new();
        // SAFETY: walking SPDK's bdev list on the app thread; each bdev
        // returned is registered.
        let mut b = unsafe { sys::spdk_bdev_first() };
        while let Some(x) = NonNull::new(b) {
            v.push(Bdev(x));
            // SAFETY: x is a registered bdev of the list.
            b = unsafe { sys::spdk_bdev_next(x.as_ptr()) };
        }
        v
    }
    pub fn raw(self) -> *mut sys::spdk_bdev {
        self.0.as_ptr()
    }
    pub fn name(self) -> String {
        // SAFETY: a registered bdev's name is a NUL-terminated string.
        unsafe { CStr::from_ptr(sys::spdk_bdev_get_name(self.raw())) }
            .to_string_lossy()
            .into_owned()
    }
    pub fn block_size(self) -> u32 {
        // SAFETY: plain getter on a live bdev.
        unsafe { sys::spdk_bdev_get_block_size(self.raw()) }
    }
    pub fn num_blocks(self) -> u64 {
        // SAFETY: plain getter on a live bdev.
        unsafe { sys::spdk_bdev_get_num_blocks(self.raw()) }
    }
    pub fn buf_align(self) -> usize {
        // SAFETY: plain getter on a live bdev.
        unsafe { sys::spdk_bdev_get_buf_align(self.raw()) }
    }
    pub fn write_cache(self) -> bool {
        // SAFETY: plain getter on a live bdev.
        unsafe { sys::spdk_bdev_has_write_cache(self.raw()) }
    }
    pub fn supports(self, t: sys::spdk_bdev_io_type) -> bool {
        // SAFETY: plain getter on a live bdev.
        unsafe { sys::spdk_bdev_io_type_supported(self.raw(), t) }
    }
    pub fn uuid(self) -> [u8; 16] {
        // SAFETY: a registered bdev always has a uuid; the union holds raw bytes.
        unsafe { (*sys::spdk_bdev_get_uuid(self.raw())).u.raw }
    }
}

/// An I/O channel, put when dropped (on the thread that got it).
pub struct IoChannel {
    ch: NonNull<sys::spdk_io_channel>,
    _not_send: PhantomData<*mut ()>,
}

impl IoChannel {
    /// Own a channel got from SPDK on this thread (put on drop).
    pub fn from_raw(ch: NonNull<sys::spdk_io_channel>) -> IoChannel {
        IoChannel {
            ch,
            _not_send: PhantomData,
        }
    }

    pub fn raw(&self) -> *mut sys::spdk_io_channel {
        self.ch.as_ptr()
    }
}

impl Drop for IoChannel {
    fn drop(&mut self) {
        // SAFETY: got on this thread (not Send), put once.
        unsafe { sys::spdk_put_io_channel(self.ch.as_ptr()) }
    }
}

/// Operations on a base bdev.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BdevOp {
    Read,
    Write,
    Flush,
    Unmap,
    WriteZeroes,
    Reset,
}

/// Submit one base bdev I/O whose completion calls `cb(bdev_io, success,
/// arg)`. Returns SPDK's rc (0, or a negative errno such as `-ENOMEM`).
///
/// # Safety
/// `desc` must be open and `ch` its channel on the calling thread; `buf`
/// (for reads and writes) must hold `blocks` blocks and stay valid and
/// untouched until `cb` runs; `cb` must free the bdev_io.
#[allow(clippy::too_many_arguments)]
pub unsafe fn submit_raw(
    desc: *mut sys::spdk_bdev_desc,
    ch: *mut sys::spdk_io_channel,
    op: BdevOp,
    buf: *mut u8,
    lba: u64,
    blocks: u64,
    cb: sys::spdk_bdev_io_completion_cb,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: the caller's contract above.
    unsafe {
        match op {
            BdevOp::Read => sys::spdk_bdev_read_blocks(desc, ch, buf.cast(), lba, blocks, cb, arg),
            BdevOp::Write => {
                sys::spdk_bdev_write_blocks(desc, ch, buf.cast(), lba, blocks, cb, arg)
            }
            BdevOp::Flush => sys::spdk_bdev_flush_blocks(desc, ch, lba, blocks, cb, arg),
            BdevOp::Unmap => sys::spdk_bdev_unmap_blocks(desc, ch, lba, blocks, cb, arg),
            BdevOp::WriteZeroes => {
                sys::spdk_bdev_write_zeroes_blocks(desc, ch, lba, blocks, cb, arg)
            }
            BdevOp::Reset => sys::spdk_bdev_reset(desc, ch, cb, arg),
        }
    }
}

/// One base bdev I/O on the control path: the buffer moves into the call
/// and comes back in `done(success, buf)`. `Err((rc, buf))` when SPDK
/// refused it (`-ENOMEM`: try again later).
pub fn io_once<F>(
    desc: &Desc,
    ch: &IoChannel,
    op: BdevOp,
    lba: u64,
    blocks: u64,
    mut buf: DmaBuf,
    done: F,
) -> Result<(), (c_int, DmaBuf)>
where
    F: FnOnce(bool, DmaBuf) + 'static,
{
    struct Ctx<F> {
        buf: DmaBuf,
        done: F,
    }
    unsafe extern "C" fn cb<F: FnOnce(bool, DmaBuf)>(
        io: *mut sys::spdk_bdev_io,
        ok: bool,
        arg: *mut c_void,
    ) {
        guard("a control-path bdev I/O completion", (), || {
            // SAFETY: io is ours to free; arg is the Ctx box, handed back once.
            let ctx = unsafe {
                sys::spdk_bdev_free_io(io);
                Box::from_raw(arg as *mut Ctx<F>)
            };
            (ctx.done)(ok, ctx.buf)
        })
    }
    let bs = desc.bdev().block_size() as u64;
    if matches!(op, BdevOp::Read | BdevOp::Write) && (buf.as_ref().len() as u64) < blocks * bs {
        return Err((-libc_einval(), buf));
    }
    let p = buf.as_mut_ptr();
    let ctx = Box::into_raw(Box::new(Ctx { buf, done }));
    // SAFETY: desc/ch are live on this thread; the buffer lives in ctx
    // (its heap memory does not move) until `cb` runs, which frees io.
    let rc = unsafe {
        submit_raw(
            desc.raw(),
            ch.raw(),
            op,
            p,
            lba,
            blocks,
            Some(cb::<F>),
            ctx.cast(),
        )
    };
    if rc != 0 {
        // SAFETY: not submitted: the ctx box is ours again.
        let ctx = unsafe { Box::from_raw(ctx) };
        return Err((rc, ctx.buf));
    }
    Ok(())
}

// ------------------------------------------------------------ JSON

/// The JSON text of an SPDK-parsed value (re-serialised with
/// `spdk_json_write_val`: SPDK decodes strings in place, so the request's
/// bytes are not the text any more).
///
/// # Safety
/// `val` must point at a value of a live parsed request (for objects and
/// arrays, followed by their members up to the end marker).
pub unsafe fn json_text(val: *const sys::spdk_json_val) -> Option<String> {
    unsafe extern "C" fn collect(ctx: *mut c_void, data: *const c_void, size: usize) -> c_int {
        guard("a JSON write callback", -1, || {
            // SAFETY: ctx is the Vec below; data/size a chunk SPDK wrote.
            let v = unsafe { &mut *(ctx as *mut Vec<u8>) };
            v.extend_from_slice(unsafe { std::slice::from_raw_parts(data as *const u8, size) });
            0
        })
    }
    let mut out: Vec<u8> = Vec::new();
    // SAFETY: the write context lives for these calls only and writes to
    // `out` through `collect`; `val` is the caller's.
    unsafe {
        let w = sys::spdk_json_write_begin(Some(collect), (&mut out as *mut Vec<u8>).cast(), 0);
        if w.is_null() {
            return None;
        }
        let rc = sys::spdk_json_write_val(w, val);
        let end = sys::spdk_json_write_end(w);
        if rc != 0 || end != 0 {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// A JSON write context of SPDK's (valid for the callback it was given to).
pub struct JsonWriter(NonNull<sys::spdk_json_write_ctx>);

impl JsonWriter {
    /// # Safety
    /// `w` must be a live write context for as long as this value is used.
    pub unsafe fn new(w: *mut sys::spdk_json_write_ctx) -> Option<JsonWriter> {
        NonNull::new(w).map(JsonWriter)
    }

    /// Write a value given as JSON text.
    pub fn raw(&mut self, json: &str) {
        // SAFETY: live context; json is valid JSON text of `len` bytes.
        unsafe { sys::spdk_json_write_val_raw(self.0.as_ptr(), json.as_ptr().cast(), json.len()) };
    }

    /// Write `"name": <json>` inside an object.
    pub fn named_raw(&mut self, name: &str, json: &str) {
        let n = CString::new(name).unwrap_or_default();
        // SAFETY: live context; n is NUL-terminated.
        unsafe { sys::spdk_json_write_name(self.0.as_ptr(), n.as_ptr()) };
        self.raw(json);
    }

    pub fn object_begin(&mut self) {
        // SAFETY: live context.
        unsafe { sys::spdk_json_write_object_begin(self.0.as_ptr()) };
    }

    pub fn object_end(&mut self) {
        // SAFETY: live context.
        unsafe { sys::spdk_json_write_object_end(self.0.as_ptr()) };
    }
}

/// A JSON-RPC request of SPDK's RPC server, answered exactly once. One
/// dropped unanswered (a method body that panicked) is answered with an
/// internal error, so a client never waits for nothing.
pub struct Request(Option<NonNull<sys::spdk_jsonrpc_request>>);

// SAFETY: the request is only answered from the thread the RPC runs on
// (the app thread); it travels in closures that run there.
unsafe impl Send for Request {}

impl Request {
    /// # Safety
    /// `r` must be a request SPDK handed to a method and not answered yet.
    pub unsafe fn new(r: *mut sys::spdk_jsonrpc_request) -> Option<Request> {
        NonNull::new(r).map(|r| Request(Some(r)))
    }

    fn take(mut self) -> NonNull<sys::spdk_jsonrpc_request> {
        self.0.take().expect("a request is answered once")
    }

    /// Answer with a result given as JSON text.
    pub fn result(self, json: &str) {
        let r = self.take();
        // SAFETY: the request is unanswered (taken once); the write
        // context is ended by end_result.
        unsafe {
            let w = sys::spdk_jsonrpc_begin_result(r.as_ptr());
            if w.is_null() {
                return;
            }
            sys::spdk_json_write_val_raw(w, json.as_ptr().cast(), json.len());
            sys::spdk_jsonrpc_end_result(r.as_ptr(), w);
        }
    }

    /// Answer with an error as SPDK sends it: `{"code", "message"}`.
    pub fn error(self, code: i32, message: &str) {
        send_error(self.take(), code, message)
    }

    pub fn rpc_error(self, e: &mdraid_rpc::RpcError) {
        self.error(e.code, &e.message)
    }
}

fn send_error(r: NonNull<sys::spdk_jsonrpc_request>, code: i32, message: &str) {
    let m = CString::new(message.replace('\0', "?")).unwrap_or_default();
    // SAFETY: an unanswered request (each path answers once); m outlives
    // the call.
    unsafe { sys::spdk_jsonrpc_send_error_response(r.as_ptr(), code, m.as_ptr()) }
}

impl Drop for Request {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            send_error(
                r,
                mdraid_rpc::error::INTERNAL_ERROR,
                "mdraid: internal error, the request was not answered (see the SPDK log)",
            );
        }
    }
}

/// Monotonic milliseconds from SPDK's tick counter.
pub fn now_ms() -> u64 {
    // SAFETY: plain getters.
    let (t, hz) = unsafe { (sys::spdk_get_ticks(), sys::spdk_get_ticks_hz()) };
    if hz == 0 {
        return 0;
    }
    (t as u128 * 1000 / hz as u128) as u64
}

/// A random (version 4) UUID from SPDK.
pub fn random_uuid() -> [u8; 16] {
    let mut u = sys::spdk_uuid::default();
    // SAFETY: writes 16 bytes into u.
    unsafe { sys::spdk_uuid_generate(&mut u) };
    // SAFETY: the union holds raw bytes.
    unsafe { u.u.raw }
}
