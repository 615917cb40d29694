//! One mdraid array as an SPDK bdev: its io_device, the per-thread
//! channels that drive the engine, and the bdev function table.
//!
//! - **io_device**: the [`Array`] itself (its address). Every SPDK thread
//!   that does I/O on the array gets one channel ([`ChanCtx`], in the
//!   io_channel's context): an engine [`Channel`] plus that thread's
//!   channels of the members, a table of child slots (the `cb_arg` of each
//!   member I/O) and a poller.
//! - **Direct I/O**: a read or write the engine hands out as a [`Direct`]
//!   (one piece on a healthy array, `Channel::direct`) goes to the members
//!   straight from the bdev_io's iovecs, its state in the bdev_io's driver
//!   context ([`DirectIo`]); if a member I/O fails, the bdev_io is
//!   submitted again as a parent (below), which handles the failure.
//! - **submit_request** turns the bdev_io into a [`ParentIo`] (tag = the
//!   bdev_io's address). Its data is the bdev_io's single iovec, wrapped
//!   ([`IoBuf::User`]), or — with several iovecs — a DMA bounce buffer.
//!   Engine actions become member I/Os; their completions go back with
//!   `child_done`. Finished parents are completed with no borrow of the
//!   channel held, because the caller's completion callback may submit
//!   again on the same channel.
//! - **`-ENOMEM` from a member** (R2): the child is reported `NoMem`, the
//!   channel waits with `spdk_bdev_queue_io_wait` and then lets the engine
//!   resubmit (`Channel::poll`). Never a failure.
//! - **FUA** does not exist in SPDK's bdev API: a FUA child write is a
//!   write followed by a flush of the member (when it has a write cache
//!   to flush).
//! - **Metadata requests** go to the array's metadata thread by message;
//!   its broadcasts come back through `spdk_for_each_channel` in two
//!   phases (`apply_state` everywhere, then `release` everywhere), see
//!   [`crate::meta`].
//!
//! Channel indices: the engine numbers its channels `0..n` with `n` fixed
//! when the array is made, and the metadata path waits for every index to
//! report "no write in flight" before marking the array clean. SPDK makes
//! channels as threads come and go, so the array has [`MAX_CHANNELS`]
//! indices, a channel takes a free one, and the metadata host reports the
//! vacant ones idle itself (a vacant index has no write in flight).
//!
//! A new channel starts from the newest state every channel has applied
//! (`released`) and then applies the newest published one: it then never
//! routes to a member another channel may still read, and never completes
//! a write on a failure not every channel has applied (R1).

use std::cell::{RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::ffi::{c_char, c_int, c_void, CString};
use std::mem::MaybeUninit;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::SyncKind;
use bdev_raid::bitmap::{Bitmap, BitmapGeom};
use bdev_raid::channel::{
    Action, Busy, Channel, ChannelConfig, ChildIo, ChildOp, ChildStatus, ChildToken, Direct,
    IoStatus, IoType, MemberStats, MetaRequest, ParentIo, DIRECT_COPIES,
};
use bdev_raid::layout::{Geometry, Level};
use bdev_raid::state::{ArrayState, MemberState, Shared};
use mdraid_rpc::params::BdevMdraidCreate;
use mdraid_rpc::results::{
    MdraidBaseBdevInfo, MdraidBdevInfo, MdraidBitmapInfo, MdraidMemberIo, MdraidProcess,
    MdraidProgress,
};
use mdraid_rpc::types::{BdevName, NameList, RaidLevel, RaidState, Uuid as RpcUuid};

use crate::meta::{self, Owned};
use crate::spdk::{
    fatal_guard, guard, log_error, log_notice, log_warn, submit_raw, Bdev, BdevOp, DmaBuf,
    IoChannel, OnThread, Poller, Thread,
};
use crate::sys;

/// Channel indices an array has (the engine's idle mask is a u64 and
/// `1 << n` must not overflow).
pub const MAX_CHANNELS: usize = 63;

const ENOMEM: c_int = 12;
/// Period of a channel's poller: it retries what waits for another
/// channel (a range or stripe lock held there), sends metadata requests
/// SPDK could not queue, and puts removed members' channels. Everything
/// else moves on completions and messages.
const CHANNEL_POLL_US: u64 = 10;
/// Alignment of DMA buffers the module allocates.
const DMA_ALIGN: usize = 4096;

// ------------------------------------------------------------ buffers

/// A parent's data, or a stripe context's scratch, as the engine holds it.
pub enum IoBuf {
    /// Memory the module allocated (scratch, bounce buffers).
    Dma(DmaBuf),
    /// The bdev_io's own single data buffer.
    User { ptr: NonNull<u8>, len: usize },
}

impl IoBuf {
    /// The data buffer of `io` (`len` bytes): its single iovec when it has
    /// one big enough, else a DMA bounce buffer (filled from the iovecs
    /// when `gather`). None when no DMA memory is left.
    ///
    /// # Safety
    /// `io` must be a live READ or WRITE bdev_io with its buffers set;
    /// the returned value must be dropped before `io` is completed.
    unsafe fn for_bdev_io(io: *mut sys::spdk_bdev_io, len: usize, gather: bool) -> Option<IoBuf> {
        // SAFETY: the caller's contract: a live block bdev_io.
        let (iovs, cnt) = unsafe { ((*io).u.bdev.iovs, (*io).u.bdev.iovcnt) };
        if cnt == 1 && !iovs.is_null() {
            // SAFETY: one iovec, set by the bdev layer.
            let v = unsafe { *iovs };
            if v.iov_len >= len {
                if let Some(ptr) = NonNull::new(v.iov_base as *mut u8) {
                    return Some(IoBuf::User { ptr, len });
                }
            }
        }
        let mut b = DmaBuf::zeroed(len, DMA_ALIGN)?;
        if gather {
            let dst = b.as_mut();
            let mut at = 0;
            for i in 0..cnt.max(0) as usize {
                // SAFETY: iovs has iovcnt entries describing readable memory.
                let v = unsafe { *iovs.add(i) };
                let n = v.iov_len.min(len - at);
                // SAFETY: as above; n bytes of the iovec are readable.
                let src = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, n) };
                dst[at..at + n].copy_from_slice(src);
                at += n;
                if at == len {
                    break;
                }
            }
        }
        Some(IoBuf::Dma(b))
    }

    /// Copy a bounce buffer into the bdev_io's iovecs (after a read).
    ///
    /// # Safety
    /// `io` must be the live bdev_io this buffer was made for.
    unsafe fn scatter(&self, io: *mut sys::spdk_bdev_io) {
        let IoBuf::Dma(b) = self else { return };
        // SAFETY: the caller's contract.
        let (iovs, cnt) = unsafe { ((*io).u.bdev.iovs, (*io).u.bdev.iovcnt) };
        let src = b.as_ref();
        let mut at = 0;
        for i in 0..cnt.max(0) as usize {
            // SAFETY: iovs has iovcnt entries describing writable memory.
            let v = unsafe { *iovs.add(i) };
            let n = v.iov_len.min(src.len() - at);
            // SAFETY: as above; n bytes of the iovec are writable and do not
            // overlap our own buffer.
            unsafe { std::ptr::copy_nonoverlapping(src[at..].as_ptr(), v.iov_base as *mut u8, n) };
            at += n;
            if at == src.len() {
                break;
            }
        }
    }
}

impl AsRef<[u8]> for IoBuf {
    fn as_ref(&self) -> &[u8] {
        match self {
            IoBuf::Dma(b) => b.as_ref(),
            // SAFETY: made by `for_bdev_io` from the bdev_io's iovec, which
            // stays valid until the bdev_io completes, and we drop this
            // value before completing it.
            IoBuf::User { ptr, len } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), *len) },
        }
    }
}

impl AsMut<[u8]> for IoBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        match self {
            IoBuf::Dma(b) => b.as_mut(),
            // SAFETY: as in as_ref; the engine holds the only IoBuf of this
            // bdev_io, and the caller does not touch its buffer while the
            // I/O is in flight (SPDK's contract).
            IoBuf::User { ptr, len } => unsafe {
                std::slice::from_raw_parts_mut(ptr.as_ptr(), *len)
            },
        }
    }
}

// ------------------------------------------------------------ the array

/// One member: what every thread needs to do I/O on it.
#[derive(Clone)]
pub struct Member {
    pub name: String,
    /// Open for the array's lifetime (closed in the teardown, after the
    /// io_device is gone and with it every channel of the member).
    pub desc: *mut sys::spdk_bdev_desc,
    pub bdev: Bdev,
    /// It has a write cache worth flushing (and takes flushes).
    pub flush: bool,
    pub unmap: bool,
    /// Device UUID its superblock records (or the bdev's).
    pub uuid: [u8; 16],
}

// SAFETY: `desc` is an open descriptor: any thread may get its own
// channel of it (spdk_bdev_get_io_channel), which is all other threads do
// with it, and only while the array's removal entry for it exists (see
// `Array::member_channel`); it is closed only on the metadata thread (in
// the teardown, or once hot-removed and no channel of it is left). The
// bdev's getters read fields fixed at registration.
unsafe impl Send for Member {}
// SAFETY: as for Send: shared references only read the plain fields.
unsafe impl Sync for Member {}

/// Hot-removal of one member device (see [`Array::bdev_removed`]): one
/// entry per member descriptor the array holds open, whether the device
/// serves its role or was replaced by `bdev_mdraid_add_base_bdev`; the
/// entry goes when the descriptor is closed.
#[derive(Clone, Copy, Debug)]
struct Removal {
    desc: *mut sys::spdk_bdev_desc,
    bdev: *mut sys::spdk_bdev,
    role: usize,
    /// Its bdev is going (SPDK_BDEV_EVENT_REMOVE): no new channels of it.
    removed: bool,
    /// Array channels that hold a channel of it.
    chans: usize,
}

impl Removal {
    fn of(role: usize, m: &Member) -> Removal {
        Removal {
            desc: m.desc,
            bdev: m.bdev.raw(),
            role,
            removed: false,
            chans: 0,
        }
    }
}

/// What the array was made from, for RPCs and `save_config`.
pub struct Info {
    pub level: RaidLevel,
    pub superblock: bool,
    /// The call `save_config` writes: uuid set, members in role order
    /// (`bdev_mdraid_add_base_bdev` changes them).
    pub saved: Mutex<BdevMdraidCreate>,
}

/// What the metadata path last reported, for status queries.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snap {
    pub events: u64,
    pub blocked: bool,
    pub dirty: bool,
    pub writable: bool,
    pub offline: bool,
    pub bitmap: Option<MdraidBitmapInfo>,
}

pub struct Array {
    pub name: String,
    pub uuid: [u8; 16],
    pub geom: Arc<Geometry>,
    pub shared: Arc<Shared>,
    /// One per role (`None`: missing). Replaced by
    /// `bdev_mdraid_add_base_bdev` (on the metadata thread, then on every
    /// channel); the data path reads its channel's copy ([`MemberRef`]).
    members: Mutex<Vec<Option<Member>>>,
    /// Start of the data area on every member, in blocks.
    pub data_offset: u64,
    pub meta_thread: Thread,
    pub info: Info,
    pub chan_cfg: ChannelConfig,
    bdev: Box<UnsafeCell<sys::spdk_bdev>>,
    _cname: CString,
    /// (published, released): the newest state broadcast, and the newest
    /// every channel has applied.
    states: Mutex<(Arc<ArrayState>, Arc<ArrayState>)>,
    /// Channel indices in use (bit mask).
    slots: Mutex<u64>,
    /// Broadcasts not finished (both phases).
    pub broadcasts: AtomicUsize,
    /// Roles a `bdev_mdraid_add_base_bdev` is bringing a device into (bit
    /// per role; see [`RoleAdd`]).
    pub adding: std::sync::atomic::AtomicU64,
    pub snap: Mutex<Snap>,
    /// Descriptors, the metadata host and its members' channels: only on
    /// the metadata thread.
    pub owned: OnThread<Owned>,
    /// Wipe the superblocks when the bdev goes (bdev_mdraid_delete clear_sb).
    pub clear_sb: std::sync::atomic::AtomicBool,
    /// The background process (resync, rebuild, check, repair), for status.
    pub sync: crate::sync::SyncStatus,
    /// Hot-removal, by member descriptor; `removals` counts the removals
    /// so far (the channels' pollers look at it).
    removal: Mutex<Vec<Removal>>,
    removals: AtomicUsize,
    /// Member I/O counters of the channels destroyed so far, by role
    /// (`chan_destroy` adds a channel's; see [`gather_member_io`]).
    retired_io: Mutex<Vec<MdraidMemberIo>>,
}

// SAFETY: the raw pointers are descriptors (usable from any thread to get
// channels; closed only on the metadata thread in the teardown) and the
// bdev struct, which SPDK owns while registered; the rest is Sync.
unsafe impl Send for Array {}
// SAFETY: as for Send.
unsafe impl Sync for Array {}

static PRODUCT: &std::ffi::CStr = c"mdraid";

impl Array {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        uuid: [u8; 16],
        geom: Arc<Geometry>,
        members: Vec<Option<Member>>,
        data_offset: u64,
        state: Arc<ArrayState>,
        bitmap: Option<BitmapGeom>,
        info: Info,
        owned: Owned,
        meta_thread: Thread,
    ) -> Arc<Array> {
        let cname = CString::new(name).expect("bdev names have no NUL");
        let removal: Vec<Removal> = members
            .iter()
            .enumerate()
            .filter_map(|(r, m)| Some(Removal::of(r, m.as_ref()?)))
            .collect();
        let present: Vec<&Member> = members.iter().flatten().collect();
        let align = present
            .iter()
            .map(|m| m.bdev.buf_align())
            .max()
            .unwrap_or(1)
            .max(1);
        let mut b = sys::spdk_bdev {
            name: cname.as_ptr() as *mut c_char,
            product_name: PRODUCT.as_ptr() as *mut c_char,
            blocklen: geom.block_size(),
            blockcnt: geom.array_blocks(),
            write_cache: present.iter().any(|m| m.bdev.write_cache()) as c_int,
            required_alignment: align.trailing_zeros() as u8,
            ..Default::default()
        };
        b.uuid.u.raw = uuid;
        Arc::new(Array {
            name: name.to_string(),
            uuid,
            shared: Arc::new(Shared::with_bitmap(MAX_CHANNELS, bitmap.map(Bitmap::new))),
            geom,
            members: Mutex::new(members),
            data_offset,
            meta_thread,
            info,
            // Write-behind children outlive their parents: a channel with
            // any in flight holds a reference to itself (see
            // `ChanCtx::drive`), so SPDK keeps it, and its broadcasts,
            // until they are done.
            chan_cfg: ChannelConfig::default(),
            bdev: Box::new(UnsafeCell::new(b)),
            _cname: cname,
            states: Mutex::new((state.clone(), state)),
            slots: Mutex::new(0),
            broadcasts: AtomicUsize::new(0),
            adding: std::sync::atomic::AtomicU64::new(0),
            snap: Mutex::new(Snap::default()),
            owned: OnThread::new(meta_thread, owned),
            clear_sb: std::sync::atomic::AtomicBool::new(false),
            sync: crate::sync::SyncStatus::default(),
            removal: Mutex::new(removal),
            removals: AtomicUsize::new(0),
            retired_io: Mutex::new(Vec::new()),
        })
    }

    /// The member of each role now.
    pub fn members(&self) -> Vec<Option<Member>> {
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Put `m` in role `role` (on the metadata thread, before every
    /// channel takes it with [`ChanCtx::set_member`]). A new device gets
    /// its own removal entry; the one it replaces keeps its entry until its
    /// descriptor is closed.
    pub fn set_member(&self, role: usize, m: Option<Member>) {
        if let Some(new) = &m {
            let mut r = self.removal.lock().unwrap_or_else(|e| e.into_inner());
            if !r.iter().any(|x| x.desc == new.desc) {
                r.push(Removal::of(role, new));
            }
        }
        if let Some(slot) = self
            .members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(role)
        {
            *slot = m;
        }
    }

    /// The io_device key (the array's address).
    pub fn io_device(self: &Arc<Self>) -> *mut c_void {
        Arc::as_ptr(self) as *mut c_void
    }

    pub fn bdev_ptr(&self) -> *mut sys::spdk_bdev {
        self.bdev.get()
    }

    /// Register the io_device (on the metadata thread, before anything can
    /// broadcast).
    pub fn register_io_device(self: &Arc<Self>) {
        let name = CString::new(format!("mdraid_{}", self.name)).unwrap_or_default();
        // SAFETY: the key is this array's address, unique while it lives;
        // it stays registered until the teardown unregisters it, and the
        // callbacks below cast the key back to this array.
        unsafe {
            sys::spdk_io_device_register(
                self.io_device(),
                Some(chan_create),
                Some(chan_destroy),
                std::mem::size_of::<*mut ChanCtx>() as u32,
                name.as_ptr(),
            )
        }
    }

    /// Register the bdev. The bdev holds one strong reference to the array
    /// (its `ctxt`) until `destruct` finishes.
    pub fn register_bdev(self: &Arc<Self>) -> Result<(), c_int> {
        let ctxt = Arc::into_raw(self.clone()) as *mut c_void;
        // SAFETY: the bdev struct lives in this array, which the ctxt
        // reference keeps alive; SPDK owns the struct while registered.
        let rc = unsafe {
            let b = &mut *self.bdev.get();
            b.ctxt = ctxt;
            b.fn_table = sys::mdraid_shim_fn_table();
            b.module = sys::mdraid_shim_module();
            sys::spdk_bdev_register(b)
        };
        if rc != 0 {
            // SAFETY: not registered: the reference is ours again.
            drop(unsafe { Arc::from_raw(ctxt as *const Array) });
            return Err(rc);
        }
        Ok(())
    }

    /// Newest state broadcast.
    pub fn state(&self) -> Arc<ArrayState> {
        self.states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    pub fn publish(&self, s: &Arc<ArrayState>) {
        self.states.lock().unwrap_or_else(|e| e.into_inner()).0 = s.clone();
    }

    pub fn set_released(&self, s: &Arc<ArrayState>) {
        let mut g = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if s.seq >= g.1.seq {
            g.1 = s.clone();
        }
    }

    /// Channel indices in use.
    pub fn slots_in_use(&self) -> u64 {
        *self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_slot(&self) -> Option<usize> {
        let mut g = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let i = (0..MAX_CHANNELS).find(|i| *g & 1 << i == 0)?;
        *g |= 1 << i;
        Some(i)
    }

    fn free_slot(&self, i: usize) {
        *self.slots.lock().unwrap_or_else(|e| e.into_inner()) &= !(1 << i);
    }

    // -------------------------------------------------- hot-removal
    //
    // SPDK_BDEV_EVENT_REMOVE on a member's descriptor (on the metadata
    // thread, which opened it): the member fails through the metadata path
    // like a member with I/O errors (R1: the failure is committed to the
    // survivors before any write that failed on it completes), no new
    // channel of it is taken, each array channel puts its channel of it
    // once that channel applied a state with the member out of service and
    // has no I/O on it in flight (its poller checks), and the metadata
    // tick closes the descriptor (with the metadata thread's channel) once
    // no array channel holds one and no superblock write is in flight.
    // The bdev's unregistration, which waits for that close, then ends.
    //
    // The entries are by descriptor, not by role: a device that
    // `bdev_mdraid_add_base_bdev` replaced may still be open (its channels
    // are kept while I/O of it may be in flight) and be removed in turn,
    // and the device that replaced a removed one is tracked afresh.

    /// This thread's channel of the member whose descriptor is `desc`, for
    /// an array channel: None when it was hot-removed (or is closed).
    fn member_channel(&self, desc: *mut sys::spdk_bdev_desc) -> Result<Option<IoChannel>, ()> {
        let mut r = self.removal.lock().unwrap_or_else(|e| e.into_inner());
        let Some(x) = r.iter_mut().find(|x| x.desc == desc && !x.removed) else {
            return Ok(None);
        };
        // SAFETY: the descriptor is open: it is closed only after its
        // device was marked removed and no channel of it is left (both
        // checked under this lock), or in the teardown, after every array
        // channel is gone.
        let ch = NonNull::new(unsafe { sys::spdk_bdev_get_io_channel(desc) }).ok_or(())?;
        x.chans += 1;
        Ok(Some(IoChannel::from_raw(ch)))
    }

    /// An array channel is done with its channel of the member whose
    /// descriptor is `desc`.
    fn put_member_channel(&self, desc: *mut sys::spdk_bdev_desc, ch: IoChannel) {
        drop(ch);
        let mut r = self.removal.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(x) = r.iter_mut().find(|x| x.desc == desc) {
            x.chans = x.chans.saturating_sub(1);
        }
    }

    /// `bdev` is being removed (on the metadata thread): mark the array's
    /// open descriptors of it. The role it serves, if it serves one (the
    /// caller fails that member); None also when it was marked already
    /// (every descriptor of a bdev gets the event).
    pub fn bdev_removed(&self, bdev: *mut sys::spdk_bdev) -> Option<usize> {
        let members = self.members();
        let mut serving = None;
        let mut any = false;
        {
            let mut r = self.removal.lock().unwrap_or_else(|e| e.into_inner());
            for x in r.iter_mut().filter(|x| x.bdev == bdev && !x.removed) {
                x.removed = true;
                any = true;
                let current = members
                    .get(x.role)
                    .and_then(|m| m.as_ref())
                    .is_some_and(|m| m.desc == x.desc);
                if current {
                    serving = Some(x.role);
                }
            }
        }
        if any {
            self.removals.fetch_add(1, Ordering::AcqRel);
        }
        serving
    }

    /// Whether the member serving `role` now was hot-removed (its device
    /// is going or gone).
    pub fn member_gone(&self, role: usize) -> bool {
        let Some(m) = self.members().get(role).cloned().flatten() else {
            return false;
        };
        let r = self.removal.lock().unwrap_or_else(|e| e.into_inner());
        r.iter()
            .find(|x| x.desc == m.desc && x.role == role)
            .is_none_or(|x| x.removed)
    }

    /// Descriptors of hot-removed devices not closed yet.
    fn removed_descs(&self) -> Vec<*mut sys::spdk_bdev_desc> {
        let r = self.removal.lock().unwrap_or_else(|e| e.into_inner());
        r.iter().filter(|x| x.removed).map(|x| x.desc).collect()
    }

    /// The role the device called `name` serves, if it is a member not
    /// hot-removed (or removed by `bdev_mdraid_remove_base_bdev`).
    pub fn serving_role(&self, name: &str) -> Option<(usize, Member)> {
        let members = self.members();
        let r = self.removal.lock().unwrap_or_else(|e| e.into_inner());
        members.into_iter().enumerate().find_map(|(role, m)| {
            let m = m.filter(|m| m.name == name)?;
            r.iter()
                .any(|x| x.desc == m.desc && x.role == role && !x.removed)
                .then_some((role, m))
        })
    }

    /// `bdev_mdraid_get_bdevs` element without I/O counters (and
    /// `dump_info_json`).
    pub fn rpc_info(&self) -> MdraidBdevInfo {
        self.rpc_info_io(None)
    }

    /// `bdev_mdraid_get_bdevs` element; `io` are the per-role counters
    /// ([`gather_member_io`]).
    pub fn rpc_info_io(&self, io: Option<&[MdraidMemberIo]>) -> MdraidBdevInfo {
        let st = self.state();
        let snap = *self.snap.lock().unwrap_or_else(|e| e.into_inner());
        let geom = &self.geom;
        let bs = geom.block_size();
        let strip_kb = if matches!(geom.level(), Level::Raid1) {
            0
        } else {
            (geom.strip_blocks() * u64::from(bs) / 1024) as u32
        };
        let offline = st.offline || snap.offline;
        let members = self.members();
        let sync = self.sync.progress();
        let base_bdevs_list = members
            .iter()
            .enumerate()
            .map(|(r, m)| {
                let ms = st.members.get(r).copied().unwrap_or(MemberState::Missing);
                MdraidBaseBdevInfo {
                    name: match (ms, m) {
                        (MemberState::Missing, _) | (_, None) => None,
                        (_, Some(m)) => Some(m.name.clone()),
                    },
                    uuid: RpcUuid(m.as_ref().map_or([0; 16], |m| m.uuid)),
                    is_configured: ms.in_service(),
                    // An empty slot has neither (SPDK's raid lists 0).
                    data_offset: m.as_ref().map_or(0, |_| self.data_offset),
                    data_size: m.as_ref().map_or(0, |_| geom.member_blocks(r)),
                    role: Some(r as u32),
                    state: Some(mdraid_rpc::results::member_state_name(ms).into()),
                    write_mostly: st.write_mostly & 1 << r != 0,
                    io: io.and_then(|v| v.get(r).copied()),
                }
            })
            .collect();
        let (present, operational) = mdraid_rpc::results::member_counts(&st, |r| {
            members.get(r).is_some_and(Option::is_some)
        });
        let array_state = if offline {
            "inactive"
        } else if snap.blocked {
            "blocked"
        } else if !self.info.superblock || snap.dirty || snap.writable {
            "active"
        } else {
            "clean"
        };
        let layout = match geom.level() {
            Level::Raid4 | Level::Raid5 | Level::Raid6 | Level::Raid10 => Some(
                bdev_raid::examine::layout_name(geom.level().md_level(), geom.layout()),
            ),
            _ => None,
        };
        MdraidBdevInfo {
            name: self.name.clone(),
            uuid: RpcUuid(self.uuid),
            strip_size_kb: strip_kb,
            state: if offline {
                RaidState::Offline
            } else {
                RaidState::Online
            },
            raid_level: self.info.level,
            superblock: self.info.superblock,
            num_base_bdevs: members.len() as u32,
            num_base_bdevs_discovered: present,
            num_base_bdevs_operational: operational,
            process: sync.map(|p| MdraidProcess {
                kind: p.kind.process_name().into(),
                target: match p.kind {
                    SyncKind::Rebuild(m) => members.get(m).cloned().flatten().map(|m| m.name),
                    _ => None,
                },
                progress: MdraidProgress {
                    blocks: p.done,
                    percent: (p.done * 100 / p.total.max(1)) as u32,
                },
            }),
            base_bdevs_list,
            layout,
            events: snap.events.max(st.events),
            array_state: Some(array_state.into()),
            degraded: st.not_in_sync() != 0,
            sync_action: Some(
                match sync.map(|p| p.kind) {
                    Some(k) => k.action_name(),
                    None if self.sync.frozen() => "frozen",
                    None => "idle",
                }
                .into(),
            ),
            mismatch_cnt: self.sync.mismatch_cnt(),
            bitmap: snap.bitmap,
            write_behind: (st.write_behind > 0).then_some(st.write_behind),
        }
    }
}

/// Metadata tick: close the descriptors of hot-removed members no array
/// channel uses any more, with the metadata thread's channels of them —
/// not while a superblock write may be in flight (`sb_writes`), nor once
/// the array is stopping (`o.host` gone: the teardown closes them all).
/// A member replaced by `bdev_mdraid_add_base_bdev` is closed the same way
/// (its descriptor was retired).
pub fn close_removed(array: &Array, o: &mut Owned) {
    if o.host.as_ref().is_none_or(|h| h.sb_writes() > 0) {
        return;
    }
    let done: Vec<Removal> = {
        let mut r = array.removal.lock().unwrap_or_else(|e| e.into_inner());
        let (done, keep) = r.drain(..).partition(|x| x.removed && x.chans == 0);
        *r = keep;
        done
    };
    for x in done {
        let m = x.role;
        let desc = if o.descs.get(m).and_then(|d| d.as_ref()).map(|d| d.raw()) == Some(x.desc) {
            if let Some(c) = o.chans.get_mut(m) {
                *c = None;
            }
            o.descs[m].take()
        } else {
            o.retired
                .iter()
                .position(|(d, _)| d.raw() == x.desc)
                .map(|i| {
                    let (d, c) = o.retired.swap_remove(i);
                    drop(c);
                    d
                })
        };
        let name = desc
            .as_ref()
            .map_or_else(|| "?".into(), |d| d.bdev().name());
        // Releases the claim and closes the descriptor.
        drop(desc);
        log_notice!(
            "mdraid {}: member {name} (role {m}) removed; its descriptor is closed",
            array.name
        );
    }
}

// ------------------------------------------------------------ member I/O counters
//
// `base_bdevs_list[].io` of `bdev_mdraid_get_bdevs`: the engine channels'
// `member_stats()`, summed. They live in each channel's engine, touched
// only by its thread, so they are read on those threads by
// `spdk_for_each_channel` (the RPC answers in its completion) rather
// than mirrored into shared counters: that would put atomics (or a
// lock) on every member I/O, and the data path stays as it is. The
// counts of channels already destroyed are kept in the array
// (`retired_io`, added once per channel in `chan_destroy`), so they run
// from the array's start as in the embedded host, whose channels live as
// long as the array.

fn io_of(m: &MemberStats) -> MdraidMemberIo {
    MdraidMemberIo {
        reads: m.reads,
        writes: m.writes,
        read_blocks: m.read_blocks,
        written_blocks: m.written_blocks,
        errors: m.errors,
        outstanding: u64::from(m.outstanding),
    }
}

/// Add `more` to `sum`, role by role.
fn add_io(sum: &mut Vec<MdraidMemberIo>, more: impl IntoIterator<Item = MdraidMemberIo>) {
    for (i, m) in more.into_iter().enumerate() {
        if sum.len() <= i {
            sum.push(MdraidMemberIo::default());
        }
        let t = &mut sum[i];
        t.reads += m.reads;
        t.writes += m.writes;
        t.read_blocks += m.read_blocks;
        t.written_blocks += m.written_blocks;
        t.errors += m.errors;
        t.outstanding += m.outstanding;
    }
}

impl Array {
    /// A channel goes: keep its counters (nothing of it is in flight).
    fn retire_member_io(&self, stats: &[MemberStats]) {
        let mut g = self.retired_io.lock().unwrap_or_else(|e| e.into_inner());
        add_io(
            &mut g,
            stats.iter().map(|m| MdraidMemberIo {
                outstanding: 0,
                ..io_of(m)
            }),
        );
    }
}

/// The array's per-role member I/O counters, summed over its channels
/// (live ones visited on their threads) and the ones destroyed; `done`
/// runs on this thread, with None when the array is stopping. Call on
/// the array's metadata thread.
pub fn gather_member_io(
    array: &Arc<Array>,
    done: impl FnOnce(Option<Vec<MdraidMemberIo>>) + Send + 'static,
) {
    // The teardown (on the metadata thread) unregisters the io_device
    // only after the stop began and once `broadcasts` is zero: counting
    // this visit in `broadcasts` before the stop keeps it until `done`.
    if !array.meta_thread.is_current() || array.sync.stopping() {
        return done(None);
    }
    let n = array.geom.members();
    let sum = Arc::new(Mutex::new(vec![MdraidMemberIo::default(); n]));
    let s2 = sum.clone();
    let per = move |ch: *mut sys::spdk_io_channel| {
        // SAFETY: a live channel of this array's io_device, on its own
        // thread (spdk_for_each_channel runs this there, as a message:
        // no borrow of the channel is held then).
        let ctx = unsafe { ChanCtx::from_io_channel(ch) };
        let c = ctx.inner.borrow();
        let mut g = s2.lock().unwrap_or_else(|e| e.into_inner());
        add_io(&mut g, c.engine.member_stats().iter().map(io_of));
    };
    array.broadcasts.fetch_add(1, Ordering::AcqRel);
    let a2 = array.clone();
    let finished = move |_| {
        let mut v = std::mem::take(&mut *sum.lock().unwrap_or_else(|e| e.into_inner()));
        let retired = a2
            .retired_io
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        add_io(&mut v, retired);
        a2.broadcasts.fetch_sub(1, Ordering::AcqRel);
        done(Some(v))
    };
    // SAFETY: the io_device stays registered until the teardown, which
    // waits for `broadcasts` to drop to zero; its channels are ChanCtxs.
    unsafe { crate::spdk::for_each_channel(array.io_device(), per, finished) };
}

// ------------------------------------------------------------ channels

/// Where a member I/O's completion finds its channel and slot.
struct SlotId {
    ctx: *const ChanCtx,
    idx: u32,
}

/// A member I/O in flight.
#[derive(Clone, Copy)]
struct Slot {
    token: ChildToken,
    member: u16,
    /// The device it went to (the role's member may be replaced since).
    desc: *mut sys::spdk_bdev_desc,
    /// A FUA write: flush the member once the write is done.
    flush_after: bool,
}

type Done = (*mut sys::spdk_bdev_io, IoStatus, Option<IoBuf>);

/// Tag bit of parents the module submits itself (resync and rebuild
/// windows, see [`crate::sync`]); a bdev_io's address never has it.
pub const INTERNAL_TAG: u64 = 1;

/// Completion of an internal parent: (tag, status, buffer).
pub type InternalDone = Rc<dyn Fn(u64, IoStatus, Option<IoBuf>)>;

/// What a channel needs of a member for its I/O (its copy of [`Member`]).
#[derive(Clone, Copy)]
struct MemberRef {
    desc: *mut sys::spdk_bdev_desc,
    bdev: Bdev,
    flush: bool,
}

impl MemberRef {
    fn of(m: &Member) -> MemberRef {
        MemberRef {
            desc: m.desc,
            bdev: m.bdev,
            flush: m.flush,
        }
    }
}

/// A role on one array channel: its member, as the channel uses it, and
/// this thread's channel of that member (taken when a hot-removed member
/// is detached), side by side for the I/O path.
#[derive(Default)]
struct Role {
    r: Option<MemberRef>,
    ch: Option<IoChannel>,
}

impl Role {
    /// The member and the channel to issue to, if the role has both.
    #[inline]
    fn io(&self) -> Option<(MemberRef, *mut sys::spdk_io_channel)> {
        match (&self.r, &self.ch) {
            (Some(r), Some(c)) => Some((*r, c.raw())),
            _ => None,
        }
    }
}

#[repr(C)]
struct ChanInner {
    // Laid out as declared: what a direct I/O touches first.
    /// Each role's member and this thread's channel of it.
    roles: Vec<Role>,
    /// Direct I/Os in flight (or waiting for a bdev_io), per generation,
    /// and the generation new ones count in: a hot-removed member's
    /// channel is put only once every direct I/O issued before the member
    /// went out of service has ended (`ChanInner::directs_drained`).
    direct_gens: [u32; 2],
    gen: usize,
    engine: Channel<IoBuf>,
    index: usize,
    /// Channels of members replaced by `bdev_mdraid_add_base_bdev`, kept
    /// until the channel goes (an I/O of the old member may be in flight)
    /// or, once the old member is hot-removed, until no I/O of it is.
    retired: Vec<(MemberRef, IoChannel)>,
    /// Internal parents finished, for `ChanCtx::internal`.
    internal_done: Vec<(u64, IoStatus, Option<IoBuf>)>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    done: Vec<Done>,
    spare: Vec<Done>,
    /// Metadata requests SPDK could not queue; sent again by the poller.
    meta_retry: VecDeque<MetaRequest>,
    /// An io_wait entry is queued (R2).
    waiting: bool,
    poller: Option<Poller>,
    /// Hot-removed members (by descriptor) whose channel is still to be
    /// put, and the array's removal count last looked at.
    detach: Vec<*mut sys::spdk_bdev_desc>,
    removals_seen: usize,
    /// Direct I/Os whose redo waits for DMA memory (see
    /// `ChanCtx::direct_redo`).
    redo_wait: Vec<*mut sys::spdk_bdev_io>,
    /// This thread's reference to the array's own channel while
    /// write-behind children are in flight (they outlive their parents;
    /// SPDK would destroy the channel once the last user put it).
    behind_ref: Option<IoChannel>,
    /// The generation being drained, if any.
    draining: Option<usize>,
    /// Writes waiting outside the engine for a range lock direct writes
    /// hold, and the lock (`ChanCtx::park`).
    parked: VecDeque<(*mut sys::spdk_bdev_io, u32)>,
    /// The locks of `parked`, a bit per lock modulo 64 (`parked_bit`).
    parked_keys: u64,
    /// Times a write was parked, counting each time again (said when the
    /// channel goes).
    parked_total: u64,
}

/// The bit of range lock `k` in `ChanInner::parked_keys`.
#[inline(always)]
fn parked_bit(k: u32) -> u64 {
    1 << (k & 63)
}

/// The context of one array channel (one per SPDK thread); laid out as
/// declared, `array` and `inner` first (every I/O reads them).
#[repr(C)]
pub struct ChanCtx {
    array: Arc<Array>,
    inner: RefCell<ChanInner>,
    /// `cb_arg` of each member I/O slot (fixed once the box exists).
    slot_ids: Box<[SlotId]>,
    /// SPDK links this into its wait queue while `waiting`.
    wait: UnsafeCell<sys::spdk_bdev_io_wait_entry>,
    /// Where internal parents' completions go (the sync driver).
    internal: RefCell<Option<InternalDone>>,
}

impl ChanCtx {
    /// # Safety
    /// `ch` must be a live io_channel of an mdraid array.
    unsafe fn from_io_channel<'a>(ch: *mut sys::spdk_io_channel) -> &'a ChanCtx {
        // SAFETY: the channel's context holds the ChanCtx pointer written
        // by `chan_create`, valid until `chan_destroy`.
        // spdk_io_channel_get_ctx, a static inline: the context follows
        // the channel's struct (the shim's call, in debug builds, checks it).
        unsafe {
            let at = (ch as *mut u8).add(sys::SPDK_IO_CHANNEL_STRUCT_SIZE as usize);
            debug_assert_eq!(at as *mut c_void, sys::mdraid_shim_io_channel_get_ctx(ch));
            &**(at as *mut *mut ChanCtx)
        }
    }

    fn new(array: Arc<Array>) -> Result<Box<ChanCtx>, c_int> {
        let index = array.take_slot().ok_or_else(|| {
            log_error!(
                "mdraid {}: more than {MAX_CHANNELS} threads use the array",
                array.name
            );
            -ENOMEM
        })?;
        // Read before the members' channels are taken: a removal after
        // this is seen by the first poll.
        let removals_seen = array.removals.load(Ordering::Acquire);
        let members = array.members();
        let mut roles: Vec<Role> = Vec::with_capacity(members.len());
        for m in &members {
            let r = m.as_ref().map(MemberRef::of);
            match m.as_ref().map(|m| array.member_channel(m.desc)) {
                None => roles.push(Role { r, ch: None }),
                Some(Ok(ch)) => roles.push(Role { r, ch }),
                Some(Err(())) => {
                    put_channels(&array, roles);
                    array.free_slot(index);
                    log_error!(
                        "mdraid {}: no I/O channel for member {}",
                        array.name,
                        m.as_ref().map_or("?", |x| x.name.as_str())
                    );
                    return Err(-ENOMEM);
                }
            }
        }
        let (published, released) = {
            let g = array.states.lock().unwrap_or_else(|e| e.into_inner());
            (g.0.clone(), g.1.clone())
        };
        let (geom, shared, cfg) = (array.geom.clone(), array.shared.clone(), array.chan_cfg);
        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Channel::new(geom, released.clone(), shared, index, cfg, |len| {
                IoBuf::Dma(DmaBuf::zeroed(len, DMA_ALIGN).expect("DMA memory for channel scratch"))
            })
        }));
        let mut engine = match made {
            Ok(e) => e,
            Err(_) => {
                put_channels(&array, roles);
                array.free_slot(index);
                log_error!("mdraid {}: no DMA memory for a channel", array.name);
                return Err(-ENOMEM);
            }
        };
        engine.join(published);
        let nslots = cfg.max_children + cfg.stripe_ctxs * members.len();
        let mut ctx = Box::new(ChanCtx {
            array,
            inner: RefCell::new(ChanInner {
                engine,
                index,
                roles,
                retired: Vec::new(),
                internal_done: Vec::new(),
                slots: vec![None; nslots],
                free: (0..nslots as u32).rev().collect(),
                done: Vec::with_capacity(cfg.max_parents),
                spare: Vec::with_capacity(cfg.max_parents),
                meta_retry: VecDeque::new(),
                waiting: false,
                poller: None,
                detach: Vec::new(),
                removals_seen,
                behind_ref: None,
                redo_wait: Vec::new(),
                direct_gens: [0; 2],
                gen: 0,
                draining: None,
                parked: VecDeque::with_capacity(cfg.max_parents),
                parked_keys: 0,
                parked_total: 0,
            }),
            slot_ids: Box::new([]),
            wait: UnsafeCell::new(sys::spdk_bdev_io_wait_entry::default()),
            internal: RefCell::new(None),
        });
        let me: *const ChanCtx = &*ctx;
        ctx.slot_ids = (0..nslots as u32)
            .map(|idx| SlotId { ctx: me, idx })
            .collect();
        Ok(ctx)
    }

    /// Start the poller and carry out what the new engine channel asks.
    fn start(&self) {
        let me = self as *const ChanCtx as usize;
        let poller = Poller::new(c"mdraid_channel", CHANNEL_POLL_US, move || {
            // SAFETY: the poller is unregistered in `chan_destroy` before
            // the ChanCtx is freed.
            let ctx = unsafe { &*(me as *const ChanCtx) };
            ctx.poll()
        });
        if poller.is_none() {
            log_warn!(
                "mdraid {}: no poller for a channel; stripe waits resume only on completions",
                self.array.name
            );
        }
        self.inner.borrow_mut().poller = poller;
        self.drive();
    }

    fn poll(&self) -> bool {
        let mut work = false;
        let (redo, parked) = {
            let mut c = self.inner.borrow_mut();
            c.detach_removed(&self.array);
            while let Some(req) = c.meta_retry.pop_front() {
                if !send_meta(&self.array, req) {
                    c.meta_retry.push_front(req);
                    break;
                }
                work = true;
            }
            if !c.waiting && c.engine.needs_poll() {
                c.engine.poll();
            }
            (std::mem::take(&mut c.redo_wait), !c.parked.is_empty())
        };
        for io in redo {
            work = true;
            self.direct_redo(io);
        }
        if parked {
            work |= self.retry_parked(None);
        }
        work | self.drive()
    }

    /// Move work between the engine and the members until nothing moves;
    /// complete finished parents with no borrow held.
    fn drive(&self) -> bool {
        let mut work = false;
        loop {
            let (mut done, internal) = {
                let mut c = self.inner.borrow_mut();
                work |= c.pump(self);
                if c.done.is_empty() && c.internal_done.is_empty() {
                    break;
                }
                let spare = std::mem::take(&mut c.spare);
                (
                    std::mem::replace(&mut c.done, spare),
                    std::mem::take(&mut c.internal_done),
                )
            };
            for (io, status, buf) in done.drain(..) {
                finish_parent(io, status, buf);
            }
            if !internal.is_empty() {
                let f = self.internal.borrow().clone();
                for (tag, status, buf) in internal {
                    match &f {
                        Some(f) => f(tag, status, buf),
                        None => drop(buf),
                    }
                }
            }
            let mut c = self.inner.borrow_mut();
            if c.spare.capacity() < done.capacity() {
                c.spare = done;
            }
        }
        self.hold_for_behind();
        work
    }

    /// Hold a reference to this channel while write-behind children are
    /// in flight, and let it go once they are done.
    fn hold_for_behind(&self) {
        let mut c = self.inner.borrow_mut();
        let behind = c.engine.behind_in_flight() > 0;
        if behind == c.behind_ref.is_some() {
            return;
        }
        if behind {
            // SAFETY: the io_device is registered while a channel of it
            // exists; on this thread it hands out this same channel.
            let ch = unsafe { sys::spdk_get_io_channel(self.array.io_device()) };
            c.behind_ref = NonNull::new(ch).map(IoChannel::from_raw);
            if c.behind_ref.is_none() {
                log_warn!(
                    "mdraid {}: no reference to a channel with write-behind in flight (array going away)",
                    self.array.name
                );
            }
        } else {
            let r = c.behind_ref.take();
            drop(c);
            // The put destroys the channel later (by message) if this was
            // its last reference.
            drop(r);
        }
    }

    /// A parent bdev_io whose buffers are ready.
    #[inline(always)]
    fn submit(&self, io: *mut sys::spdk_bdev_io) {
        // SAFETY: io is the live bdev_io SPDK handed to submit_request.
        let (ty, lba, blocks) = unsafe {
            (
                (*io).type_ as u32,
                (*io).u.bdev.offset_blocks,
                (*io).u.bdev.num_blocks,
            )
        };
        let op = match ty {
            sys::SPDK_BDEV_IO_TYPE_READ => IoType::Read,
            sys::SPDK_BDEV_IO_TYPE_WRITE => IoType::Write,
            sys::SPDK_BDEV_IO_TYPE_FLUSH => IoType::Flush,
            sys::SPDK_BDEV_IO_TYPE_UNMAP => IoType::Unmap,
            sys::SPDK_BDEV_IO_TYPE_WRITE_ZEROES => IoType::WriteZeroes,
            sys::SPDK_BDEV_IO_TYPE_RESET => IoType::Reset,
            _ => {
                complete_io(io, sys::SPDK_BDEV_IO_STATUS_FAILED);
                return;
            }
        };
        if matches!(op, IoType::Read | IoType::Write) && self.try_direct(io, op, lba, blocks) {
            return;
        }
        let (lba, blocks) = if op == IoType::Reset {
            (0, 0)
        } else {
            (lba, blocks)
        };
        self.submit_parent(io, op, lba, blocks);
    }

    /// Submit `io` to the engine as a parent.
    fn submit_parent(&self, io: *mut sys::spdk_bdev_io, op: IoType, lba: u64, blocks: u64) {
        let Some(p) = self.parent_io(io, op, lba, blocks) else {
            complete_io(io, sys::SPDK_BDEV_IO_STATUS_NOMEM);
            return;
        };
        let res = self.inner.borrow_mut().engine.submit(p);
        if let Err(Busy(p)) = res {
            // Every parent slot is taken: the bdev layer retries it when
            // one of ours completes.
            drop(p);
            complete_io(io, sys::SPDK_BDEV_IO_STATUS_NOMEM);
            return;
        }
        self.drive();
    }

    /// `io` as the engine's parent; None when no DMA memory is left for
    /// the bounce buffer it needs.
    fn parent_io(
        &self,
        io: *mut sys::spdk_bdev_io,
        op: IoType,
        lba: u64,
        blocks: u64,
    ) -> Option<ParentIo<IoBuf>> {
        let buf = if matches!(op, IoType::Read | IoType::Write) {
            let len = (blocks * u64::from(self.array.geom.block_size())) as usize;
            // SAFETY: a READ (after get_buf) or WRITE bdev_io with its
            // buffers; the IoBuf is dropped in finish_parent before the
            // bdev_io is completed.
            Some(unsafe { IoBuf::for_bdev_io(io, len, op == IoType::Write) }?)
        } else {
            None
        };
        Some(ParentIo {
            tag: io as u64,
            op,
            lba,
            blocks,
            fua: false,
            buf,
        })
    }

    /// Do `io` on the engine's direct path if it allows; false if not.
    #[inline(always)]
    fn try_direct(&self, io: *mut sys::spdk_bdev_io, op: IoType, lba: u64, blocks: u64) -> bool {
        if !(io as usize).is_multiple_of(DIRECT_TAG) {
            return false; // no room for target indices in its address
        }
        // SAFETY: the driver context has room for a DirectIo (the module's
        // get_ctx_size), is cache-line aligned, and is ours until the
        // bdev_io completes.
        let x = unsafe { direct_of(io) };
        let mut c = self.inner.borrow_mut();
        // SAFETY: as above; `d` is a MaybeUninit (any bytes will do),
        // which the engine fills in place.
        let d = unsafe { &mut *std::ptr::addr_of_mut!((*x).d) };
        if c.engine.direct_into(op, lba, blocks, d).is_none() {
            return op == IoType::Write && Self::park(&mut c, io);
        }
        let gen = c.gen;
        c.direct_gens[gen] += 1;
        // SAFETY: as above; the rest of the DirectIo (`wait` and
        // `wait_desc` stay unset until needed).
        let x = unsafe {
            std::ptr::addr_of_mut!((*x).ctx).write(self);
            std::ptr::addr_of_mut!((*x).pending).write(1);
            std::ptr::addr_of_mut!((*x).next).write(0);
            std::ptr::addr_of_mut!((*x).gen).write(gen as u8);
            std::ptr::addr_of_mut!((*x).waited).write(false);
            std::ptr::addr_of_mut!((*x).failed).write(0);
            &mut *x
        };
        let waiting = self.issue_targets::<false>(&c, io, x);
        drop(c);
        if !waiting {
            self.drop_bias(io, x);
        }
        true
    }

    /// A write the engine refused for a range lock only direct writes
    /// hold (`Channel::parkable`): keep `io` until one of them ends, then
    /// offer it again (`retry_parked`), rather than queue it on the
    /// general path; true if kept. Only with a poller, which offers it
    /// again whoever held the lock.
    #[cold]
    #[inline(never)]
    fn park(c: &mut ChanInner, io: *mut sys::spdk_bdev_io) -> bool {
        match c.engine.parkable() {
            Some(k) if c.poller.is_some() => {
                c.parked.push_back((io, k));
                c.parked_keys |= parked_bit(k);
                c.parked_total += 1;
                true
            }
            _ => false,
        }
    }

    /// Offer the parked writes again: those waiting for range lock `key`
    /// (a direct write holding it ended), or all (None: the poller). True
    /// if any was offered. Each keeps its place among the others.
    #[cold]
    #[inline(never)]
    fn retry_parked(&self, key: Option<u32>) -> bool {
        let n = {
            let mut c = self.inner.borrow_mut();
            // Set again below for those that stay, and by `park`.
            c.parked_keys = 0;
            c.parked.len()
        };
        let mut any = false;
        for _ in 0..n {
            let Some((io, k)) = self.inner.borrow_mut().parked.pop_front() else {
                break;
            };
            if key.is_some_and(|key| key != k) {
                let mut c = self.inner.borrow_mut();
                c.parked.push_back((io, k));
                c.parked_keys |= parked_bit(k);
                continue;
            }
            any = true;
            // Parked again (at the back) if the lock is still taken.
            self.submit(io);
        }
        any
    }

    /// Issue the member I/Os of direct `io` not yet issued (after waiting
    /// for a bdev_io: R2).
    fn direct_issue(&self, io: *mut sys::spdk_bdev_io) {
        // SAFETY: io is a live bdev_io of ours holding a DirectIo (made in
        // try_direct), touched only on this thread.
        let x = unsafe { &mut *direct_of(io) };
        let c = self.inner.borrow();
        let waiting = self.issue_targets::<true>(&c, io, x);
        drop(c);
        if !waiting {
            self.drop_bias(io, x);
        }
    }

    /// The submission bias of direct `io`, once its targets are issued:
    /// member I/Os complete later (SPDK defers a completion made during
    /// submission), so it is seldom the last.
    #[inline]
    fn drop_bias(&self, io: *mut sys::spdk_bdev_io, x: &mut DirectIo) {
        x.pending -= 1;
        if x.pending == 0 {
            self.direct_finish_cold(io);
        }
    }

    /// Issue the member I/Os of direct `io` (`x`) not yet issued; true if
    /// a member out of bdev_ios makes it wait (R2: it resumes in
    /// `direct_issue`). `RESUMED`: after such a wait (the first issue of a
    /// direct I/O never waited, so it skips those checks).
    #[inline(always)]
    fn issue_targets<const RESUMED: bool>(
        &self,
        c: &ChanInner,
        io: *mut sys::spdk_bdev_io,
        x: &mut DirectIo,
    ) -> bool {
        // SAFETY: a live READ/WRITE bdev_io: its iovecs stay valid until it
        // completes, which is after every member I/O of it ended.
        let (iovs, iovcnt) = unsafe { ((*io).u.bdev.iovs, (*io).u.bdev.iovcnt) };
        let (blocks, n, rw) = {
            let d = x.d();
            let rw = if d.is_write() {
                sys::spdk_bdev_writev_blocks
            } else {
                sys::spdk_bdev_readv_blocks
            };
            (d.blocks(), d.target_count(), rw)
        };
        let offset = self.array.data_offset;
        // The target `next` waited for a bdev_io of `wait_desc`.
        let mut waited = RESUMED && x.waited;
        if RESUMED {
            x.waited = false;
        }
        let (mut i, mut issued, mut failed) = (x.next as usize, 0u8, 0u64);
        // Member I/Os complete later (SPDK defers a completion made during
        // submission), so the counts are written once, after the loop.
        let waiting = loop {
            if i >= n {
                break false;
            }
            let t = x.d().target(i);
            let m = t.member as usize;
            // Only the first target issued here can have waited.
            let this_waited = RESUMED && std::mem::take(&mut waited);
            let Some((member, ch)) = c.roles.get(m).and_then(Role::io) else {
                failed |= 1 << m;
                i += 1;
                continue;
            };
            if this_waited {
                // SAFETY: wait_desc is set when this target waited.
                if unsafe { x.wait_desc.assume_init() } != member.desc {
                    // The role's device was replaced while this target
                    // waited for a bdev_io: the general path does it (the
                    // target was chosen for the device before).
                    failed |= 1 << m;
                    i += 1;
                    continue;
                }
            }
            // The target's index in the low bits of the parent's address
            // (bdev_ios are cache-line aligned).
            let arg = (io as usize | i) as *mut c_void;
            // SAFETY: desc/ch are live on this thread; the iovecs are the
            // parent's (see above), which completes after this I/O.
            let rc = unsafe {
                rw(
                    member.desc,
                    ch,
                    iovs,
                    iovcnt,
                    t.lba + offset,
                    blocks,
                    Some(direct_cb),
                    arg,
                )
            };
            if rc == 0 {
                issued += 1;
                i += 1;
                continue;
            }
            if self.direct_refused(io, x, member, ch, rc) {
                break true; // resumes in direct_wait_cb
            }
            failed |= 1 << m;
            i += 1;
        };
        x.next = i as u8;
        x.pending += issued;
        x.failed |= failed;
        waiting
    }

    /// A member refused a member I/O of direct `io` with `rc`: true if it
    /// is out of bdev_ios and SPDK queued `io`'s wait for one (R2), else
    /// (said in the log) the target counts as failed.
    #[cold]
    #[inline(never)]
    fn direct_refused(
        &self,
        io: *mut sys::spdk_bdev_io,
        x: &mut DirectIo,
        member: MemberRef,
        ch: *mut sys::spdk_io_channel,
        rc: c_int,
    ) -> bool {
        if rc == -ENOMEM {
            let e = x.wait.write(sys::spdk_bdev_io_wait_entry {
                bdev: member.bdev.raw(),
                cb_fn: Some(direct_wait_cb),
                cb_arg: io as *mut c_void,
                ..Default::default()
            });
            // SAFETY: the entry is this bdev_io's, not queued (one target
            // waits at a time), alive until it completes.
            let rc = unsafe { sys::spdk_bdev_queue_io_wait(member.bdev.raw(), ch, e) };
            if rc == 0 {
                x.wait_desc.write(member.desc);
                x.waited = true;
                return true;
            }
        } else {
            log_error!(
                "mdraid {}: member {} refused an I/O ({rc})",
                self.array.name,
                member.bdev.name()
            );
        }
        false
    }

    /// One member I/O of direct `io` ended.
    #[inline(always)]
    fn direct_end(&self, io: *mut sys::spdk_bdev_io) {
        // SAFETY: as in direct_issue.
        let x = unsafe { &mut *direct_of(io) };
        x.pending -= 1;
        if x.pending == 0 {
            self.direct_finish(io);
        }
    }

    /// [`ChanCtx::direct_finish`], out of line (the rare caller's).
    #[cold]
    #[inline(never)]
    fn direct_finish_cold(&self, io: *mut sys::spdk_bdev_io) {
        self.direct_finish(io);
    }

    /// Every member I/O of direct `io` ended: complete it, or redo it.
    #[inline(always)]
    fn direct_finish(&self, io: *mut sys::spdk_bdev_io) {
        // SAFETY: as in direct_issue.
        let x = unsafe { &mut *direct_of(io) };
        if x.failed == 0 {
            let (more, parked) = {
                let mut c = self.inner.borrow_mut();
                c.direct_gens[usize::from(x.gen & 1)] -= 1;
                c.engine.direct_done(x.d());
                (c.engine.has_actions(), c.parked_keys)
            };
            if parked != 0 {
                // Before this one completes (and its submitter sends the
                // next): those waiting for its lock go first.
                if let Some(k) = x.d().lock().filter(|&k| parked & parked_bit(k) != 0) {
                    self.retry_parked(Some(k));
                }
            }
            complete_io(io, sys::SPDK_BDEV_IO_STATUS_SUCCESS);
            if more {
                self.drive();
            }
            return;
        }
        self.direct_redo(io);
    }

    /// Direct `io` had a member I/O fail: the general path does it again
    /// and handles the failure (R1 for a write, the other copies for a
    /// read), taking it over from the direct I/O without a gap
    /// (`Channel::direct_redo`). With no DMA memory for the bounce buffer
    /// the parent needs, the direct I/O stays (its lock and counts held)
    /// and the poller tries again.
    fn direct_redo(&self, io: *mut sys::spdk_bdev_io) {
        // SAFETY: as in direct_issue.
        let x = unsafe { &*direct_of(io) };
        let (d, failed) = (*x.d(), x.failed);
        let op = if d.is_write() {
            IoType::Write
        } else {
            IoType::Read
        };
        // SAFETY: a live bdev_io of ours.
        let lba = unsafe { (*io).u.bdev.offset_blocks };
        match self.parent_io(io, op, lba, d.blocks()) {
            Some(p) => {
                {
                    let mut c = self.inner.borrow_mut();
                    c.direct_gens[usize::from(x.gen & 1)] -= 1;
                    c.engine.direct_redo(&d, failed, p);
                }
                self.drive();
            }
            None => self.inner.borrow_mut().redo_wait.push(io),
        }
    }

    /// A member I/O of slot `idx` ended.
    fn child_done(&self, idx: u32, ok: bool) {
        {
            let mut c = self.inner.borrow_mut();
            let slot = c.slots[idx as usize]
                .take()
                .expect("completion of a free slot");
            let mut status = if ok {
                ChildStatus::Success
            } else {
                ChildStatus::Error
            };
            if ok && slot.flush_after {
                // FUA: the write is done; now make it durable.
                let m = slot.member as usize;
                let (member, ch) = c.channel_of(slot.desc).expect("channel of an issued child");
                c.slots[idx as usize] = Some(Slot {
                    flush_after: false,
                    ..slot
                });
                // SAFETY: desc/ch are live on this thread; a flush has no
                // buffer; `child_cb` frees the bdev_io.
                let rc = unsafe {
                    submit_raw(
                        member.desc,
                        ch,
                        BdevOp::Flush,
                        std::ptr::null_mut(),
                        self.array.data_offset,
                        self.array.geom.member_blocks(m),
                        Some(child_cb),
                        &self.slot_ids[idx as usize] as *const SlotId as *mut c_void,
                    )
                };
                if rc == 0 {
                    return;
                }
                c.slots[idx as usize] = None;
                status = if rc == -ENOMEM {
                    // The whole write is issued again (writes are idempotent).
                    c.arm_wait(self, slot.desc);
                    ChildStatus::NoMem
                } else {
                    ChildStatus::Error
                };
            }
            c.free.push(idx);
            c.engine.child_done(slot.token, status);
        }
        self.drive();
    }

    fn wait_done(&self) {
        {
            let mut c = self.inner.borrow_mut();
            c.waiting = false;
            c.engine.poll();
        }
        self.drive();
    }

    fn apply(&self, s: Arc<ArrayState>) {
        self.inner.borrow_mut().engine.apply_state(s);
        self.drive();
    }

    fn release(&self, s: Arc<ArrayState>) {
        self.inner.borrow_mut().engine.release(s);
        self.drive();
    }

    /// Use `m` in role `role` from now on (`bdev_mdraid_add_base_bdev`).
    /// The old member's channel is kept until this channel goes (or, if
    /// the old member was hot-removed, until no I/O of it is in flight).
    /// False when no channel of the new member could be had.
    fn set_member(&self, role: usize, m: Option<&Member>) -> bool {
        let array = &self.array;
        let mut c = self.inner.borrow_mut();
        if role >= c.roles.len() {
            return false;
        }
        let ch = match m {
            None => None,
            Some(m) => match array.member_channel(m.desc) {
                Ok(ch) => ch,
                Err(()) => return false,
            },
        };
        let old = std::mem::replace(&mut c.roles[role].ch, ch);
        let old_ref = std::mem::replace(&mut c.roles[role].r, m.map(MemberRef::of));
        if let (Some(old), Some(r)) = (old, old_ref) {
            c.retired.push((r, old));
            // A removal seen already: the poller puts it when it can.
            if array.removed_descs().contains(&r.desc) && !c.detach.contains(&r.desc) {
                c.detach.push(r.desc);
            }
        }
        true
    }
}

/// Put `m` in role `role` on the channel `ch` of an array (see
/// [`ChanCtx::set_member`]).
///
/// # Safety
/// `ch` must be a live channel of an mdraid array, on the calling thread.
pub unsafe fn channel_set_member(
    ch: *mut sys::spdk_io_channel,
    role: usize,
    m: Option<&Member>,
) -> bool {
    // SAFETY: the caller's contract.
    unsafe { ChanCtx::from_io_channel(ch) }.set_member(role, m)
}

/// The array's channel on the calling thread, for the module's own I/O
/// (resync and rebuild windows): parents tagged with [`INTERNAL_TAG`]
/// whose completions go to the callback given.
pub struct ArrayChannel {
    ch: IoChannel,
    done: InternalDone,
}

impl ArrayChannel {
    pub fn get(array: &Arc<Array>, done: InternalDone) -> Option<ArrayChannel> {
        // SAFETY: the io_device is registered (the caller holds the array
        // between register and the teardown, which drops this first).
        let ch = NonNull::new(unsafe { sys::spdk_get_io_channel(array.io_device()) })?;
        let ch = IoChannel::from_raw(ch);
        // SAFETY: a channel of an mdraid io_device, on this thread.
        let ctx = unsafe { ChanCtx::from_io_channel(ch.raw()) };
        *ctx.internal.borrow_mut() = Some(done.clone());
        Some(ArrayChannel { ch, done })
    }

    fn ctx(&self) -> &ChanCtx {
        // SAFETY: our own live channel of an mdraid io_device.
        unsafe { ChanCtx::from_io_channel(self.ch.raw()) }
    }

    /// Submit an internal parent (`io.tag` must have [`INTERNAL_TAG`]).
    pub fn submit(&self, io: ParentIo<IoBuf>) -> Result<(), Busy<IoBuf>> {
        debug_assert!(io.tag & INTERNAL_TAG != 0);
        let ctx = self.ctx();
        ctx.inner.borrow_mut().engine.submit(io)?;
        ctx.drive();
        Ok(())
    }

    /// Blocks the engine channel found disagreeing by checks and repairs.
    pub fn mismatch_blocks(&self) -> u64 {
        self.ctx().inner.borrow().engine.stats().mismatch_blocks
    }
}

impl Drop for ArrayChannel {
    fn drop(&mut self) {
        // Only its own callback: a newer driver may share the channel.
        let mut g = self.ctx().internal.borrow_mut();
        if g.as_ref().is_some_and(|f| Rc::ptr_eq(f, &self.done)) {
            *g = None;
        }
    }
}

impl ChanInner {
    /// Put this thread's channels of hot-removed members once they are out
    /// of service in the applied state (a replaced member is), with no
    /// member I/O (or io_wait) on them in flight.
    fn detach_removed(&mut self, array: &Array) {
        let n = array.removals.load(Ordering::Acquire);
        if n != self.removals_seen {
            self.removals_seen = n;
            for d in array.removed_descs() {
                if self.channel_of(d).is_some() && !self.detach.contains(&d) {
                    self.detach.push(d);
                }
            }
        }
        if self.detach.is_empty() || self.waiting {
            return;
        }
        let state = self.engine.state().clone();
        let mut i = 0;
        while i < self.detach.len() {
            let d = self.detach[i];
            // The role it serves on this channel, if it still does.
            let role = (0..self.roles.len())
                .find(|&m| self.roles[m].io().is_some_and(|(r, _)| r.desc == d));
            let busy = role.is_some_and(|m| state.members.get(m).is_some_and(|s| s.in_service()))
                || self.slots.iter().flatten().any(|s| s.desc == d)
                || !self.directs_drained();
            if busy {
                i += 1;
                continue;
            }
            self.detach.swap_remove(i);
            if let Some(ch) = role.and_then(|m| self.roles[m].ch.take()) {
                array.put_member_channel(d, ch);
            }
            while let Some(j) = self.retired.iter().position(|(r, _)| r.desc == d) {
                let (_, ch) = self.retired.swap_remove(j);
                array.put_member_channel(d, ch);
            }
        }
    }

    /// The member whose descriptor is `desc` and this thread's channel of
    /// it, if this channel holds one (its role's, or a retired one).
    fn channel_of(
        &self,
        desc: *mut sys::spdk_bdev_desc,
    ) -> Option<(MemberRef, *mut sys::spdk_io_channel)> {
        self.roles
            .iter()
            .find_map(|x| x.io().filter(|(r, _)| r.desc == desc))
            .or_else(|| {
                self.retired
                    .iter()
                    .find(|(r, _)| r.desc == desc)
                    .map(|(r, c)| (*r, c.raw()))
            })
    }

    /// Whether every direct I/O issued before the first of a run of calls
    /// has ended (the caller asks again until it has). The applied state
    /// already keeps new direct I/Os off the member being detached, so
    /// the generation current at that first call holds all that may
    /// still use it.
    fn directs_drained(&mut self) -> bool {
        let g = match self.draining {
            Some(g) => g,
            None => {
                if self.direct_gens[self.gen ^ 1] != 0 {
                    return false; // an earlier drain's generation first
                }
                let g = self.gen;
                self.gen ^= 1;
                self.draining = Some(g);
                g
            }
        };
        if self.direct_gens[g] != 0 {
            return false;
        }
        self.draining = None;
        true
    }

    /// Carry out the engine's actions; true if there were any.
    fn pump(&mut self, ctx: &ChanCtx) -> bool {
        let mut any = false;
        while let Some(a) = self.engine.poll_action() {
            any = true;
            match a {
                Action::Submit(io) => self.submit_child(ctx, io),
                Action::Complete { tag, status, buf } if tag & INTERNAL_TAG != 0 => {
                    self.internal_done.push((tag, status, buf))
                }
                Action::Complete { tag, status, buf } => {
                    self.done.push((tag as *mut sys::spdk_bdev_io, status, buf))
                }
                Action::Meta(req) => {
                    if !send_meta(&ctx.array, req) {
                        self.meta_retry.push_back(req);
                    }
                }
            }
        }
        any
    }

    fn submit_child(&mut self, ctx: &ChanCtx, io: ChildIo) {
        let a = &ctx.array;
        let m = io.member as usize;
        let Some((member, ch)) = self.roles.get(m).and_then(Role::io) else {
            self.engine.child_done(io.token, ChildStatus::Error);
            return;
        };
        let (op, flush_after) = match io.op {
            ChildOp::Read => (BdevOp::Read, false),
            ChildOp::Write => (BdevOp::Write, io.fua && member.flush),
            ChildOp::Flush => {
                if !member.flush {
                    // Nothing volatile to flush.
                    self.engine.child_done(io.token, ChildStatus::Success);
                    return;
                }
                (BdevOp::Flush, false)
            }
            ChildOp::Unmap => (BdevOp::Unmap, false),
            ChildOp::WriteZeroes => (BdevOp::WriteZeroes, false),
            ChildOp::Reset => (BdevOp::Reset, false),
        };
        let (lba, blocks) = if op == BdevOp::Flush {
            (a.data_offset, a.geom.member_blocks(m))
        } else {
            (io.lba + a.data_offset, io.blocks)
        };
        let Some(idx) = self.free.pop() else {
            // Cannot happen: there is a slot per engine child.
            self.engine.child_done(io.token, ChildStatus::NoMem);
            return;
        };
        let data = self.engine.child_data(io.buf).as_mut_ptr();
        self.slots[idx as usize] = Some(Slot {
            token: io.token,
            member: io.member,
            desc: member.desc,
            flush_after,
        });
        // SAFETY: desc/ch are live on this thread; `data` is part of a
        // parent's or a stripe context's buffer, which the engine keeps in
        // place and untouched until child_done for this token (called only
        // from child_cb, or below when SPDK refuses the I/O); child_cb frees
        // the bdev_io; the slot id lives as long as the channel, which SPDK
        // destroys only with no I/O in flight.
        let rc = unsafe {
            submit_raw(
                member.desc,
                ch,
                op,
                data,
                lba,
                blocks,
                Some(child_cb),
                &ctx.slot_ids[idx as usize] as *const SlotId as *mut c_void,
            )
        };
        if rc != 0 {
            self.slots[idx as usize] = None;
            self.free.push(idx);
            if rc == -ENOMEM {
                self.arm_wait(ctx, member.desc);
                self.engine.child_done(io.token, ChildStatus::NoMem);
            } else {
                log_error!(
                    "mdraid {}: member {} refused an I/O ({rc})",
                    a.name,
                    member.bdev.name()
                );
                self.engine.child_done(io.token, ChildStatus::Error);
            }
        }
    }

    /// Wait for a free bdev_io on this thread (R2), on the member whose
    /// descriptor is `desc`.
    fn arm_wait(&mut self, ctx: &ChanCtx, desc: *mut sys::spdk_bdev_desc) {
        if self.waiting {
            return;
        }
        let Some((member, ch)) = self.channel_of(desc) else {
            return;
        };
        let e = ctx.wait.get();
        // SAFETY: the entry is ours while not queued (`waiting` false); it
        // lives in the ChanCtx, which is not freed while I/O (and so a
        // queued wait) is outstanding.
        let rc = unsafe {
            (*e).bdev = member.bdev.raw();
            (*e).cb_fn = Some(wait_cb);
            (*e).cb_arg = ctx as *const ChanCtx as *mut c_void;
            sys::spdk_bdev_queue_io_wait(member.bdev.raw(), ch, e)
        };
        // When SPDK will not queue it (the -ENOMEM came from elsewhere),
        // the poller retries instead.
        self.waiting = rc == 0;
    }
}

/// Put an array channel's channels of its members.
fn put_channels(array: &Array, roles: Vec<Role>) {
    for x in roles {
        if let (Some(r), Some(c)) = (x.r, x.ch) {
            array.put_member_channel(r.desc, c);
        }
    }
}

/// Send a channel's request to the metadata thread; false if SPDK could
/// not queue the message.
fn send_meta(array: &Arc<Array>, req: MetaRequest) -> bool {
    let a = array.clone();
    array
        .meta_thread
        .send(move || meta::request(&a, req))
        .is_ok()
}

fn complete_io(io: *mut sys::spdk_bdev_io, status: sys::spdk_bdev_io_status) {
    // SAFETY: io is a live bdev_io of ours, completed once.
    unsafe { sys::spdk_bdev_io_complete(io, status) }
}

fn finish_parent(io: *mut sys::spdk_bdev_io, status: IoStatus, buf: Option<IoBuf>) {
    if let Some(b) = &buf {
        // SAFETY: io is the live parent this buffer was made for.
        if status == IoStatus::Success
            && unsafe { (*io).type_ as u32 } == sys::SPDK_BDEV_IO_TYPE_READ
        {
            // SAFETY: as above.
            unsafe { b.scatter(io) };
        }
    }
    drop(buf);
    complete_io(
        io,
        match status {
            IoStatus::Success => sys::SPDK_BDEV_IO_STATUS_SUCCESS,
            IoStatus::Error | IoStatus::Invalid => sys::SPDK_BDEV_IO_STATUS_FAILED,
        },
    );
}

unsafe extern "C" fn child_cb(bio: *mut sys::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    fatal_guard("a member I/O completion", || {
        // SAFETY: bio is ours to free; arg is a SlotId of a live channel
        // (channels are destroyed only with no I/O in flight).
        let sid = unsafe {
            sys::spdk_bdev_free_io(bio);
            &*(arg as *const SlotId)
        };
        // SAFETY: as above.
        let ctx = unsafe { &*sid.ctx };
        ctx.child_done(sid.idx, ok);
    })
}

/// A parent on the direct path, in its bdev_io's driver context.
/// What a member I/O's completion touches comes first (one cache line).
#[repr(C)]
struct DirectIo {
    ctx: *const ChanCtx,
    /// Members whose I/O failed (or could not be issued).
    failed: u64,
    /// Member I/Os in flight, plus one while issuing.
    pending: u8,
    /// Next target to issue.
    next: u8,
    /// The generation it counts in (`ChanInner::direct_gens`).
    gen: u8,
    /// The target `next` waited for a bdev_io of `wait_desc`.
    waited: bool,
    /// Written by the engine when the I/O takes the direct path (`d()`).
    d: MaybeUninit<Direct>,
    wait_desc: MaybeUninit<*mut sys::spdk_bdev_desc>,
    /// Queued with SPDK while a member has no bdev_io for it (R2); set
    /// when needed.
    wait: MaybeUninit<sys::spdk_bdev_io_wait_entry>,
}

impl DirectIo {
    /// The engine's [`Direct`].
    #[inline]
    fn d(&self) -> &Direct {
        // SAFETY: a DirectIo is only used once `try_direct` made it, which
        // writes `d` first (the engine's direct_into succeeded).
        unsafe { self.d.assume_init_ref() }
    }
}

/// Target indices fit below this in a bdev_io's address.
const DIRECT_TAG: usize = 64;
const _: () = assert!(DIRECT_COPIES <= DIRECT_TAG);

/// The [`DirectIo`] in `io`'s driver context.
///
/// # Safety
/// `io` must be a live bdev_io of an mdraid bdev.
unsafe fn direct_of(io: *mut sys::spdk_bdev_io) -> *mut DirectIo {
    // SAFETY: the caller's contract; the driver context is the module's
    // (get_ctx_size bytes, cache-line aligned).
    unsafe { (*io).driver_ctx.as_mut_ptr() as *mut DirectIo }
}

/// Size of the module's per-bdev_io context (the shim's module table).
#[no_mangle]
pub extern "C" fn mdraid_module_get_ctx_size() -> c_int {
    std::mem::size_of::<DirectIo>() as c_int
}

unsafe extern "C" fn direct_cb(bio: *mut sys::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    // arg: the parent (in flight until after this) and the target.
    let io = (arg as usize & !(DIRECT_TAG - 1)) as *mut sys::spdk_bdev_io;
    // SAFETY: io is a live parent bdev_io of ours holding a DirectIo; this
    // member I/O of it is in flight, so it counts in `pending`.
    let x = unsafe { &mut *direct_of(io) };
    if ok && x.pending > 1 {
        // Not the last member I/O, and it went well: nothing here can
        // panic, so no guard is needed.
        x.pending -= 1;
        // SAFETY: bio is ours to free.
        unsafe { sys::spdk_bdev_free_io(bio) };
        return;
    }
    // SAFETY: direct_cb's own contract.
    unsafe { direct_cb_end(bio, ok, arg) };
}

/// [`direct_cb`] of a failed member I/O, or of the last one.
///
/// # Safety
/// As for [`direct_cb`]: `bio` a member I/O of the direct parent `arg`
/// names, which is in flight.
#[inline(never)]
unsafe fn direct_cb_end(bio: *mut sys::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    fatal_guard("a direct member I/O completion", || {
        // SAFETY: bio is ours to free.
        unsafe { sys::spdk_bdev_free_io(bio) };
        let io = (arg as usize & !(DIRECT_TAG - 1)) as *mut sys::spdk_bdev_io;
        let i = arg as usize & (DIRECT_TAG - 1);
        // SAFETY: as in direct_cb.
        let x = unsafe { &mut *direct_of(io) };
        // SAFETY: the channel outlives its bdev_ios in flight.
        let ctx = unsafe { &*x.ctx };
        if !ok {
            x.failed |= 1 << x.d().member(i);
        }
        ctx.direct_end(io);
    })
}

unsafe extern "C" fn direct_wait_cb(arg: *mut c_void) {
    fatal_guard("a direct io_wait callback", || {
        let io = arg as *mut sys::spdk_bdev_io;
        // SAFETY: arg is a parent bdev_io in flight whose DirectIo queued
        // this wait; its channel outlives it.
        let ctx = unsafe { &*(*direct_of(io)).ctx };
        ctx.direct_issue(io);
    })
}

unsafe extern "C" fn wait_cb(arg: *mut c_void) {
    fatal_guard("an io_wait callback", || {
        // SAFETY: arg is the ChanCtx that queued the wait (alive, see arm_wait).
        let ctx = unsafe { &*(arg as *const ChanCtx) };
        ctx.wait_done();
    })
}

unsafe extern "C" fn chan_create(io_device: *mut c_void, ctx_buf: *mut c_void) -> c_int {
    guard("channel create", -ENOMEM, || {
        // SAFETY: io_device is the address of an Array registered as an
        // io_device; it is alive (the bdev or the creator holds a strong
        // reference until the io_device is unregistered), so we may take
        // another reference.
        let array = unsafe {
            Arc::increment_strong_count(io_device as *const Array);
            Arc::from_raw(io_device as *const Array)
        };
        match ChanCtx::new(array) {
            Ok(ctx) => {
                let p = Box::into_raw(ctx);
                // SAFETY: ctx_buf has room for one pointer (ctx_size); p is
                // freed in chan_destroy.
                unsafe {
                    *(ctx_buf as *mut *mut ChanCtx) = p;
                    (*p).start();
                }
                0
            }
            Err(rc) => rc,
        }
    })
}

unsafe extern "C" fn chan_destroy(_io_device: *mut c_void, ctx_buf: *mut c_void) {
    fatal_guard("channel destroy", || {
        // SAFETY: written by chan_create; SPDK destroys each channel once.
        let ctx = unsafe { Box::from_raw(*(ctx_buf as *mut *mut ChanCtx)) };
        let poller = ctx.inner.borrow_mut().poller.take();
        drop(poller);
        let (index, waiting, busy) = {
            let c = ctx.inner.borrow();
            (
                c.index,
                c.waiting,
                !c.engine.is_idle() || !c.parked.is_empty(),
            )
        };
        if waiting || busy {
            // SPDK destroys channels with no I/O in flight; if one still
            // holds work, freeing it would leave SPDK pointing into it.
            log_error!(
                "mdraid {}: channel destroyed with work in flight; leaking it",
                ctx.array.name
            );
            std::mem::forget(ctx);
            return;
        }
        let array = ctx.array.clone();
        {
            let mut c = ctx.inner.borrow_mut();
            let behind = c.engine.stats().behind_writes;
            if behind > 0 {
                log_notice!(
                    "mdraid {}: a channel wrote {behind} write pieces' write-mostly copies behind",
                    array.name
                );
            }
            if c.parked_total > 0 {
                log_notice!(
                    "mdraid {}: a channel held writes back {} times for overlapping writes in flight",
                    array.name,
                    c.parked_total
                );
            }
            array.retire_member_io(&c.engine.member_stats());
            let roles = std::mem::take(&mut c.roles);
            put_channels(&array, roles);
            for (r, ch) in c.retired.drain(..) {
                array.put_member_channel(r.desc, ch);
            }
        }
        array.free_slot(index);
        drop(ctx);
        // A vacant index has no write in flight: tell the metadata path.
        let a = array.clone();
        let _ = array.meta_thread.send(move || meta::vacated(&a, index));
    })
}

// ------------------------------------------------------------ bdev callbacks

/// # Safety
/// `ctx` must be the `ctxt` of a registered mdraid bdev.
unsafe fn array_of<'a>(ctx: *mut c_void) -> &'a Array {
    // SAFETY: ctxt is Arc::into_raw of the array (register_bdev), a
    // reference SPDK holds until destruct, so the array outlives the
    // callback this is called from.
    unsafe { &*(ctx as *const Array) }
}

/// Bdev callback (the shim's function table).
///
/// # Safety
/// `ch` must be an io_channel of an mdraid array and `io` a bdev_io submitted on it.
#[no_mangle]
pub unsafe extern "C" fn mdraid_bdev_submit_request(
    ch: *mut sys::spdk_io_channel,
    io: *mut sys::spdk_bdev_io,
) {
    // SAFETY: io is a live bdev_io SPDK submitted to one of our bdevs.
    if unsafe { (*io).type_ as u32 } == sys::SPDK_BDEV_IO_TYPE_READ && !unsafe { has_buf(io) } {
        // Nothing here can panic (no guard needed): the buffer first.
        // SAFETY: as above; get_buf calls get_buf_done (now or later)
        // with io.
        unsafe {
            let len = (*io)
                .u
                .bdev
                .num_blocks
                .wrapping_mul(u64::from((*(*io).bdev).blocklen));
            sys::spdk_bdev_io_get_buf(io, Some(get_buf_done), len)
        };
        return;
    }
    submit_guarded(ch, io)
}

/// Whether `io` has its data buffer, aligned as its bdev requires: then
/// `spdk_bdev_io_get_buf` would only call back at once (this is its own
/// test), and the read goes ahead without it.
///
/// # Safety
/// `io` must be a live READ bdev_io.
#[inline(always)]
unsafe fn has_buf(io: *mut sys::spdk_bdev_io) -> bool {
    // SAFETY: the caller's contract: its iovecs (iovcnt of them) and its
    // bdev are readable.
    unsafe {
        let (iovs, cnt) = ((*io).u.bdev.iovs, (*io).u.bdev.iovcnt);
        if iovs.is_null() || (*iovs).iov_base.is_null() {
            return false;
        }
        let Some(align) = 1usize.checked_shl(u32::from((*(*io).bdev).required_alignment)) else {
            return false;
        };
        let mask = align - 1;
        mask == 0 || (0..cnt.max(0) as usize).all(|i| (*iovs.add(i)).iov_base as usize & mask == 0)
    }
}

/// The rest of [`mdraid_bdev_submit_request`] (apart, so its read branch
/// is a plain jump to SPDK's get_buf).
#[inline(never)]
fn submit_guarded(ch: *mut sys::spdk_io_channel, io: *mut sys::spdk_bdev_io) {
    fatal_guard("submit_request", || {
        // SAFETY: ch is one of our io_channels; io a live bdev_io on it
        // (mdraid_bdev_submit_request's contract).
        unsafe { ChanCtx::from_io_channel(ch) }.submit(io);
    })
}

unsafe extern "C" fn get_buf_done(
    ch: *mut sys::spdk_io_channel,
    io: *mut sys::spdk_bdev_io,
    ok: bool,
) {
    fatal_guard("get_buf", || {
        if !ok {
            complete_io(io, sys::SPDK_BDEV_IO_STATUS_FAILED);
            return;
        }
        // SAFETY: ch is the io_channel the READ was submitted on.
        unsafe { ChanCtx::from_io_channel(ch) }.submit(io);
    })
}

/// Bdev callback (the shim's function table).
///
/// # Safety
/// `ctx` must be the `ctxt` of an mdraid bdev.
#[no_mangle]
pub unsafe extern "C" fn mdraid_bdev_io_type_supported(
    ctx: *mut c_void,
    t: sys::spdk_bdev_io_type,
) -> bool {
    guard("io_type_supported", false, || {
        // SAFETY: ctx is our bdev's ctxt.
        let a = unsafe { array_of(ctx) };
        match t {
            sys::SPDK_BDEV_IO_TYPE_READ
            | sys::SPDK_BDEV_IO_TYPE_WRITE
            | sys::SPDK_BDEV_IO_TYPE_FLUSH
            | sys::SPDK_BDEV_IO_TYPE_RESET
            | sys::SPDK_BDEV_IO_TYPE_WRITE_ZEROES => true,
            sys::SPDK_BDEV_IO_TYPE_UNMAP => a.members().iter().flatten().all(|m| m.unmap),
            _ => false,
        }
    })
}

/// Bdev callback (the shim's function table).
///
/// # Safety
/// `ctx` must be the `ctxt` of an mdraid bdev.
#[no_mangle]
pub unsafe extern "C" fn mdraid_bdev_get_io_channel(ctx: *mut c_void) -> *mut sys::spdk_io_channel {
    guard("get_io_channel", std::ptr::null_mut(), || {
        // SAFETY: ctx is our bdev's ctxt = the io_device key.
        unsafe { sys::spdk_get_io_channel(ctx) }
    })
}

/// Bdev callback (the shim's function table).
///
/// # Safety
/// `ctx` must be the `ctxt` of an mdraid bdev, `w` a live JSON write context.
#[no_mangle]
pub unsafe extern "C" fn mdraid_bdev_dump_info_json(
    ctx: *mut c_void,
    w: *mut sys::spdk_json_write_ctx,
) -> c_int {
    guard("dump_info_json", -1, || {
        // SAFETY: ctx is our bdev's ctxt; w is live for this call.
        let (a, w) = unsafe { (array_of(ctx), crate::spdk::JsonWriter::new(w)) };
        let Some(mut w) = w else { return -1 };
        let info = serde_json::to_string(&a.rpc_info()).unwrap_or_else(|_| "{}".into());
        w.named_raw("mdraid", &info);
        0
    })
}

/// Bdev callback (the shim's function table).
///
/// # Safety
/// `bdev` must be an mdraid bdev, `w` a live JSON write context.
#[no_mangle]
pub unsafe extern "C" fn mdraid_bdev_write_config_json(
    bdev: *mut sys::spdk_bdev,
    w: *mut sys::spdk_json_write_ctx,
) {
    guard("write_config_json", (), || {
        // SAFETY: bdev is ours (its ctxt is the array); w is live.
        let (a, w) = unsafe { (array_of((*bdev).ctxt), crate::spdk::JsonWriter::new(w)) };
        let Some(mut w) = w else { return };
        let mut saved = a
            .info
            .saved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // With superblocks (which record the roles) the members saved are
        // those in service now: one that failed, was removed or
        // hot-removed is not named, since its bdev may serve something
        // else by the time the config is replayed. Without, the create's
        // members are the roles in order and stay so.
        if a.info.superblock {
            let st = a.state();
            let serving: Vec<BdevName> = a
                .members()
                .iter()
                .enumerate()
                .filter(|(r, _)| st.members.get(*r).is_some_and(|s| s.in_service()))
                .filter_map(|(_, m)| BdevName::new(m.as_ref()?.name.as_str()).ok())
                .collect();
            if !serving.is_empty() {
                saved
                    .write_mostly
                    .0
                    .retain(|n| serving.iter().any(|s| s.as_str() == n.as_str()));
                saved.base_bdevs = NameList(serving);
            }
        }
        let params = serde_json::to_string(&saved).unwrap_or_else(|_| "{}".into());
        w.object_begin();
        w.named_raw("method", "\"bdev_mdraid_create\"");
        w.named_raw("params", &params);
        w.object_end();
    })
}

/// Bdev callback (the shim's function table).
///
/// # Safety
/// `ctx` must be the `ctxt` of an mdraid bdev being destructed (called once).
#[no_mangle]
pub unsafe extern "C" fn mdraid_bdev_destruct(ctx: *mut c_void) -> c_int {
    guard("destruct", 0, || {
        // SAFETY: ctx is the ctxt reference register_bdev made; from here
        // the teardown owns it and drops it after spdk_bdev_destruct_done.
        let a = unsafe { Arc::from_raw(ctx as *const Array) };
        let t = a.meta_thread;
        if t.is_current() {
            meta::begin_shutdown(a);
        } else if let Err(crate::spdk::MsgRefused) = t.send({
            let a = a.clone();
            move || meta::begin_shutdown(a)
        }) {
            log_error!(
                "mdraid {}: cannot reach the metadata thread to stop",
                a.name
            );
            return 0;
        }
        1
    })
}

/// Apply a state on every channel, then release it on every channel.
pub fn broadcast(array: &Arc<Array>, s: Arc<ArrayState>) {
    array.publish(&s);
    array.broadcasts.fetch_add(1, Ordering::AcqRel);
    let s1 = s.clone();
    let apply = move |ch: *mut sys::spdk_io_channel| {
        // SAFETY: ch is a live channel of this array's io_device.
        unsafe { ChanCtx::from_io_channel(ch) }.apply(s1.clone())
    };
    let a2 = array.clone();
    let applied = move |_| {
        a2.set_released(&s);
        crate::meta::released(&a2, s.seq);
        let s2 = s.clone();
        let release = move |ch: *mut sys::spdk_io_channel| {
            // SAFETY: as above.
            unsafe { ChanCtx::from_io_channel(ch) }.release(s2.clone())
        };
        let a3 = a2.clone();
        let released = move |_| {
            a3.broadcasts.fetch_sub(1, Ordering::AcqRel);
        };
        // SAFETY: as below (this broadcast still counts).
        unsafe { crate::spdk::for_each_channel(a2.io_device(), release, released) };
    };
    // SAFETY: the io_device stays registered until the teardown, which
    // waits for `broadcasts` to drop to zero; its channels are ChanCtxs.
    unsafe { crate::spdk::for_each_channel(array.io_device(), apply, applied) };
}

/// An add in progress into one role of an array: another add does not
/// take that role meanwhile (it would swap its device in under this one);
/// the role is free again when this is dropped, whatever the add's end.
pub struct RoleAdd {
    array: Arc<Array>,
    role: usize,
}

impl RoleAdd {
    /// Take `role` of `array` for an add, unless one is in progress there.
    pub fn take(array: &Arc<Array>, role: usize) -> Option<RoleAdd> {
        let bit = 1u64 << role;
        let was = array
            .adding
            .fetch_or(bit, std::sync::atomic::Ordering::AcqRel);
        (was & bit == 0).then(|| RoleAdd {
            array: array.clone(),
            role,
        })
    }

    /// Whether an add into `role` of `array` is in progress.
    pub fn busy(array: &Array, role: usize) -> bool {
        array.adding.load(std::sync::atomic::Ordering::Acquire) & 1 << role != 0
    }
}

impl Drop for RoleAdd {
    fn drop(&mut self) {
        self.array
            .adding
            .fetch_and(!(1u64 << self.role), std::sync::atomic::Ordering::AcqRel);
    }
}
