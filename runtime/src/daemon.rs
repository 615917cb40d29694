//! The embedded daemon (`mdraid serve`): the JSON-RPC host over a
//! [`Runtime`], and its unix-socket server.
//!
//! * [`Daemon`] implements [`mdraid_rpc::Host`]: member devices (SPDK's
//!   `bdev_malloc_*`, `bdev_aio_*`, `bdev_uring_*` — both served by
//!   io_uring —, `bdev_error_*`, `bdev_delay_*`, `bdev_get_bdevs`), arrays
//!   (`bdev_mdraid_*`), the NBD export server (`mdraid_nbd_*`), and the
//!   configuration `save_config` writes (devices, then arrays with their
//!   uuid, then NBD listeners and exports).
//! * `bdev_mdraid_create` writes md v1.2 superblocks to new members; when
//!   the members already carry the superblocks of one array it *assembles*
//!   that array instead (md's rules, R6). That is how a restart from a
//!   saved config brings every array back with nothing for the user to do.
//!   Members carrying another array's superblock are refused, naming them.
//! * [`preflight`] checks a whole config file against the machine (names,
//!   files, member claims, superblocks found on the members) before anything
//!   is created, so a bad file changes nothing.
//! * [`RpcServer`]: JSON-RPC on a unix socket, SPDK's framing, one thread
//!   per connection (bounded), one shared `Mutex<Daemon>`.
//! * [`rpc_call`]: a blocking client (the CLI's `rpc` and `status`).
//!
//! Every failure leaves nothing half-created: claims are released, written
//! superblocks are wiped, and no array is left behind.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bdev_raid::assemble::{md_uuid, Assembled};
use bdev_raid::bitmap::DiskBitmap;
use bdev_raid::channel::{IoType, MetaRequest};
use bdev_raid::examine::layout_name;
use bdev_raid::layout::{Geometry, Level};
use bdev_raid::meta::{
    create_superblocks, mark_unsynced, AddError, CreateParams, FlagError, Meta, MetaConfig,
    NewMember, Recovery, RecoveryInfo,
};
use bdev_raid::ondisk::{
    BitmapSuper, MemberLayout, Superblock, BITMAP_SB_BYTES, SB_BLOCK_BYTES, SB_OFFSET_BYTES,
};
use bdev_raid::state::{ArrayState, MemberState};
use mdraid_rpc::config::{ConfigError, LoadedConfig, Location};
use mdraid_rpc::error::errno;
use mdraid_rpc::params::*;
use mdraid_rpc::plan::{
    check_add_block_size, field, initial_sync, plan_completed, BitmapPlan, Plan, Probe, CREATE,
};
pub use mdraid_rpc::plan::{DEFAULT_DAEMON_SLEEP_MS, DEFAULT_STRIP_KB};
use mdraid_rpc::results::*;
use mdraid_rpc::types::{
    BdevName, BitmapOptions, BitmapSetting, ErrorIoType as RpcIoType, ErrorType as RpcErrorType,
    KillSignal, NameList, RaidCategory, RaidLevel, RaidState, SyncAction, Uuid as RpcUuid,
};
use mdraid_rpc::{reply, Call, ConnState, Connection, Host, Method, RpcError};
use serde_json::{json, Value};

use crate::array::{Array, ArrayParams, ProcessOptions, RemoveError, SyncKind};
use crate::buf::{AlignedBuf, DevBuf};
use crate::dev::delay::{DelayDevice, Latencies};
use crate::dev::error::{ErrorDevice, ErrorIoType, ErrorType, InjectOpts};
use crate::dev::file::{FileDevice, FileOptions};
use crate::dev::malloc::MallocDevice;
use crate::dev::registry::Registry;
use crate::dev::{DevError, DevIo, DevOp, DevStatus, Device, DeviceKind, Uuid};
use crate::export::{ExportOptions, ExportServer, ListenerView};
use crate::meta::{MdMeta, MetaOutput, MetaPath};
use crate::reactor::{PollerId, Reactor, RuntimeHandle};

/// Where `mdraid serve` listens for JSON-RPC unless told (`-r`).
pub const DEFAULT_RPC_SOCKET: &str = "/var/tmp/mdraid.sock";

/// Largest JSON-RPC request one connection may send.
pub const RPC_MAX_REQUEST: usize = 1 << 20;

/// Connections served at once; more are closed at accept.
pub const RPC_MAX_CONNECTIONS: usize = 32;

/// How the daemon behaves.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// Longest wait for an array to drain and be marked clean when it is
    /// deleted or the daemon stops.
    pub stop_timeout: Duration,
    /// Longest wait for one superblock read or write.
    pub io_timeout: Duration,
    /// The metadata path's tunables (safe-mode delay...).
    pub meta: MetaConfig,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            stop_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            meta: MetaConfig::default(),
        }
    }
}

/// A member device as created (the call `save_config` replays).
struct DevRecord {
    name: String,
    /// The creating call, with the generated name and uuid filled in.
    call: Call,
    /// The wrapped base (error, delay), claimed by this device.
    base: Option<String>,
}

/// What the metadata path last reported, for status queries.
#[derive(Clone, Copy, Debug, Default)]
struct MetaSnap {
    events: u64,
    blocked: bool,
    dirty: bool,
    writable: bool,
    offline: bool,
    bitmap: Option<MdraidBitmapInfo>,
    /// A resync is due, from this member sector.
    resync_from_sector: Option<u64>,
}

/// An array the daemon runs.
struct ArrayRecord {
    name: String,
    array: Arc<Array>,
    uuid: [u8; 16],
    level: RaidLevel,
    superblock: bool,
    /// The call `save_config` writes: uuid set, members in role order.
    saved: BdevMdraidCreate,
    /// Member device of each role (`None`: missing).
    roles: Vec<Option<String>>,
    /// Per role: its device was taken out by
    /// `bdev_mdraid_remove_base_bdev` (recorded faulty, channels and claim
    /// released). The name stays in `roles` for status, as a failed
    /// member's does, but the array no longer holds the device.
    released: Vec<bool>,
    /// Device UUID of each role as its superblock records it.
    role_uuids: Vec<[u8; 16]>,
    /// Superblock-less arrays have no metadata path snapshot.
    snap: Option<Arc<Mutex<MetaSnap>>>,
}

/// An NBD listener the daemon opened.
struct ListenerRecord {
    params: MdraidNbdListener,
    view: ListenerView,
    /// From the config or RPC (saved); command-line ones are not.
    saved: bool,
}

/// The daemon's state: devices, arrays, NBD; see the module docs.
pub struct Daemon {
    rt: RuntimeHandle,
    reg: Registry,
    devices: Vec<DevRecord>,
    arrays: Vec<ArrayRecord>,
    export: Arc<ExportServer>,
    listeners: Vec<ListenerRecord>,
    exports: Vec<MdraidNbdExportAdd>,
    /// The export server was used (so it must be stopped).
    export_used: bool,
    malloc_next: u32,
    opts: DaemonOptions,
    /// Window and bandwidth of resyncs and rebuilds (bdev_mdraid_set_options).
    process: ProcessOptions,
    /// Set by `spdk_kill_instance`: the signal to raise after answering.
    kill: Option<i32>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn dev_err(e: &DevError) -> RpcError {
    RpcError::errno(e.errno(), e.to_string())
}

fn no_device(name: &str) -> RpcError {
    RpcError::no_device(name)
}

/// Bytes of memory `bdev_malloc_create` may take: half of what the kernel
/// says is available (so a typo cannot take the machine down).
fn malloc_budget() -> u64 {
    let avail = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(1 << 30);
    avail / 2
}

fn check_malloc(p: &BdevMallocCreate, used: u64) -> Result<(), RpcError> {
    const M: &str = "bdev_malloc_create";
    if !p.block_size.is_power_of_two() || p.block_size > 65536 {
        return Err(RpcError::invalid_field(
            M,
            "block_size",
            format!(
                "{} is not a power of two between 512 and 65536",
                p.block_size
            ),
        ));
    }
    let bytes = p.num_blocks.saturating_mul(p.block_size as u64);
    let budget = malloc_budget().saturating_sub(used);
    if bytes > budget {
        return Err(RpcError::invalid_field(
            M,
            "num_blocks",
            format!(
                "{} blocks of {} bytes need {bytes} bytes of memory; {budget} are available for malloc bdevs",
                p.num_blocks, p.block_size
            ),
        ));
    }
    Ok(())
}

// ------------------------------------------------------------ device I/O

#[allow(clippy::too_many_arguments)]
/// One I/O on `dev` from a non-reactor thread: submitted on reactor 0
/// through a channel made for it, waited for at most `timeout`.
fn dev_sync(
    rt: &RuntimeHandle,
    dev: &Arc<dyn Device>,
    op: DevOp,
    lba: u64,
    blocks: u64,
    data: Option<Vec<u8>>,
    fua: bool,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let (tx, rx) = mpsc::channel::<Result<Vec<u8>, String>>();
    let d = dev.clone();
    rt.send(0, move |r: &mut Reactor| {
        let bs = d.block_size() as usize;
        let mut ch = match d.create_channel(r) {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        let mut buf = AlignedBuf::new(if op.has_data() {
            blocks as usize * bs
        } else {
            0
        });
        if let Some(x) = data {
            buf.as_mut().copy_from_slice(&x);
        }
        let (ptr, len) = {
            let b = buf.as_mut();
            (b.as_mut_ptr(), b.len())
        };
        // SAFETY: `buf` moves into the poller below, which owns it until the
        // device reports this I/O (its heap memory does not move with it).
        let dbuf = unsafe { DevBuf::new(ptr, len) };
        let io = DevIo {
            op,
            lba,
            blocks,
            fua,
            buf: dbuf,
            token: 1,
        };
        let mut submitted = ch.submit(r, io).is_ok();
        let me: Rc<std::cell::Cell<Option<PollerId>>> = Rc::new(std::cell::Cell::new(None));
        let me2 = me.clone();
        let mut tx = Some(tx);
        let id = r.register_poller(move |r: &mut Reactor| {
            if tx.is_none() {
                return false;
            }
            if !submitted {
                submitted = ch.submit(r, io).is_ok();
                return submitted;
            }
            let mut got = None;
            ch.poll(r, &mut |_, s| got = Some(s));
            match got {
                None => false,
                Some(DevStatus::NoMem) => {
                    submitted = false;
                    true
                }
                Some(s) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(if s == DevStatus::Success {
                            Ok(buf.as_ref().to_vec())
                        } else {
                            Err("I/O error".into())
                        });
                    }
                    if let Some(id) = me2.take() {
                        r.unregister_poller(id);
                    }
                    true
                }
            }
        });
        me.set(Some(id));
    });
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => Err(format!("no completion within {timeout:?}")),
    }
}

/// `len` bytes at byte `offset` of `dev` (whole blocks are read).
fn read_at(
    rt: &RuntimeHandle,
    dev: &Arc<dyn Device>,
    offset: u64,
    len: usize,
    t: Duration,
) -> Result<Vec<u8>, String> {
    let bs = dev.block_size() as u64;
    let end = offset + len as u64;
    let first = offset / bs;
    let last = end.div_ceil(bs);
    let data = dev_sync(rt, dev, DevOp::Read, first, last - first, None, false, t)?;
    let skip = (offset - first * bs) as usize;
    Ok(data[skip..skip + len].to_vec())
}

/// The md 1.2 metadata of a device of `size` bytes, read with `read(offset,
/// len)`: the 4 KiB at byte 4096 (its superblock), followed by the bitmap
/// area when that superblock records an internal bitmap right after it;
/// empty when the device is smaller than 8 KiB.
fn read_md_meta(
    size: u64,
    mut read: impl FnMut(u64, usize) -> Result<Vec<u8>, String>,
) -> Result<Vec<u8>, String> {
    if size < SB_OFFSET_BYTES + SB_BLOCK_BYTES as u64 {
        return Ok(Vec::new());
    }
    let mut out = read(SB_OFFSET_BYTES, SB_BLOCK_BYTES)?;
    let Ok(sb) = Superblock::decode(&out, size / 512) else {
        return Ok(out);
    };
    if !sb.has_bitmap() || sb.bitmap_offset != 8 {
        return Ok(out);
    }
    // The bitmap superblock says how long the bit array is; read no
    // further than the data area.
    let at = SB_OFFSET_BYTES + SB_BLOCK_BYTES as u64;
    let limit = (sb.data_offset * 512).min(size).saturating_sub(at);
    let head = read(at, (BITMAP_SB_BYTES as u64).min(limit) as usize)?;
    let len = BitmapSuper::decode(&head)
        .map(|b| b.area_bytes())
        .unwrap_or(BITMAP_SB_BYTES as u64)
        .min(limit);
    out.extend_from_slice(&read(at, len as usize)?);
    Ok(out)
}

/// [`read_md_meta`] of a member device.
fn read_sb_area(rt: &RuntimeHandle, dev: &Arc<dyn Device>, t: Duration) -> Result<Vec<u8>, String> {
    let size = dev.num_blocks() * dev.block_size() as u64;
    read_md_meta(size, |off, len| read_at(rt, dev, off, len, t))
}

/// Write `data` at byte `offset`, durably (FUA); `data.len()` and `offset`
/// must be whole blocks.
fn write_at(
    rt: &RuntimeHandle,
    dev: &Arc<dyn Device>,
    offset: u64,
    data: &[u8],
    t: Duration,
) -> Result<(), String> {
    let bs = dev.block_size() as u64;
    if !offset.is_multiple_of(bs) || !(data.len() as u64).is_multiple_of(bs) {
        return Err(format!(
            "block size {bs} does not fit md's 4 KiB metadata blocks"
        ));
    }
    dev_sync(
        rt,
        dev,
        DevOp::Write,
        offset / bs,
        data.len() as u64 / bs,
        Some(data.to_vec()),
        true,
        t,
    )
    .map(|_| ())
}

/// Write a superblock (padded to 4 KiB), or a superblock followed by its
/// bitmap area, at byte 4096, durably.
fn write_sb_area(
    rt: &RuntimeHandle,
    dev: &Arc<dyn Device>,
    data: &[u8],
    t: Duration,
) -> Result<(), String> {
    let mut buf = data.to_vec();
    buf.resize(data.len().max(SB_BLOCK_BYTES), 0);
    write_at(rt, dev, SB_OFFSET_BYTES, &buf, t)
}

// ------------------------------------------------------------ planning

/// Claimed member devices and their probes.
type Members = (Vec<Arc<dyn Device>>, Vec<Probe>);

// ------------------------------------------------------------ metadata path

/// `MdMeta` plus what status queries need: a snapshot of the metadata
/// path's status, and a clean stop for arrays assembled dirty.
struct DaemonMeta {
    inner: MdMeta,
    snap: Arc<Mutex<MetaSnap>>,
    /// Assembled after an unclean shutdown (or new and not assumed clean)
    /// and not yet resynced: a resync is due.
    resync_pending: bool,
    /// The bitmap daemon's period, for status.
    daemon_sleep_ms: u64,
}

impl DaemonMeta {
    fn update(&self) {
        let s = self.inner.meta().status();
        let daemon_sleep_ms = self.daemon_sleep_ms;
        let mut g = self.snap.lock().unwrap_or_else(|e| e.into_inner());
        *g = MetaSnap {
            events: s.events,
            blocked: s.blocked,
            dirty: s.dirty,
            writable: s.writable,
            offline: s.offline,
            resync_from_sector: s.resync_from_sector,
            bitmap: s.bitmap.map(|b| MdraidBitmapInfo {
                chunk_kb: (b.chunk_bytes / 1024) as u32,
                daemon_sleep_ms: daemon_sleep_ms as u32,
                dirty_chunks: b.dirty,
                total_chunks: b.chunks,
            }),
        };
    }
}

impl MetaPath for DaemonMeta {
    fn request(&mut self, req: MetaRequest) {
        self.inner.request(req);
        self.update();
    }
    fn applied(&mut self, state: &Arc<ArrayState>) {
        self.inner.applied(state);
    }
    fn released(&mut self, state: &Arc<ArrayState>) {
        self.inner.released(state);
        self.update();
    }
    fn write_done(&mut self, id: u64, ok: bool) {
        self.inner.write_done(id, ok);
        self.update();
    }
    fn tick(&mut self, now: Instant) {
        self.inner.tick(now);
        self.update();
    }
    fn shutdown(&mut self) {
        self.inner.shutdown();
        self.update();
    }
    fn abandon(&mut self) -> bool {
        let gave_up = self.inner.abandon();
        self.update();
        gave_up
    }
    fn mark_synced(&mut self) {
        self.resync_pending = false;
        self.inner.mark_synced();
        self.update();
    }
    fn recovery(&self, role: usize) -> Option<RecoveryInfo> {
        self.inner.recovery(role)
    }
    fn resync_from(&self) -> u64 {
        self.inner.resync_from()
    }
    fn resync_pending(&self) -> bool {
        self.resync_pending
    }
    fn resync_progress(&mut self, lba: u64) {
        self.inner.resync_progress(lba);
    }
    fn recovery_progress(&mut self, role: usize, device: u64, offset: u64) {
        self.inner.recovery_progress(role, device, offset);
        self.update();
    }
    fn add_member(&mut self, role: usize, dev: NewMember) -> Result<Recovery, AddError> {
        let r = self.inner.add_member(role, dev);
        self.update();
        r
    }
    fn check_add(&self, role: usize, dev: &NewMember) -> Result<(), AddError> {
        self.inner.check_add(role, dev)
    }
    fn adds_pending(&self) -> u64 {
        self.inner.adds_pending()
    }

    fn set_write_mostly(&mut self, role: usize, on: bool) -> Result<(), FlagError> {
        let r = self.inner.set_write_mostly(role, on);
        self.update();
        r
    }
    fn stop_done(&self) -> bool {
        self.inner.stop_done()
    }
    fn poll_output(&mut self) -> Option<MetaOutput> {
        self.inner.poll_output()
    }
    fn state(&self) -> Arc<ArrayState> {
        self.inner.state()
    }
}

// ------------------------------------------------------------ the daemon

impl Daemon {
    /// A daemon over `rt` with no devices; starts the NBD export server.
    pub fn new(rt: &RuntimeHandle, opts: DaemonOptions) -> Daemon {
        Daemon {
            rt: rt.clone(),
            reg: Registry::new(),
            devices: Vec::new(),
            arrays: Vec::new(),
            export: ExportServer::start(rt),
            listeners: Vec::new(),
            exports: Vec::new(),
            export_used: false,
            malloc_next: 0,
            process: ProcessOptions::default(),
            opts,
            kill: None,
        }
    }

    /// The signal `spdk_kill_instance` asked for, once (the server raises
    /// it after the answer is sent).
    pub fn take_kill(&mut self) -> Option<i32> {
        self.kill.take()
    }

    fn name_taken(&self, name: &str) -> bool {
        self.reg.get(name).is_some() || self.arrays.iter().any(|a| a.name == name)
    }

    /// `name` names no array: ENODEV, saying so when it is another bdev.
    fn no_array(&self, name: &str) -> RpcError {
        RpcError::no_array(name, self.reg.get(name).is_some())
    }

    fn check_free(&self, name: &str) -> Result<(), RpcError> {
        if self.name_taken(name) {
            return Err(RpcError::errno(
                errno::EEXIST,
                format!("bdev {name} already exists: File exists"),
            ));
        }
        Ok(())
    }

    fn malloc_bytes(&self) -> u64 {
        self.devices
            .iter()
            .filter_map(|d| match &d.call {
                Call::BdevMallocCreate(p) => Some(p.num_blocks * p.block_size as u64),
                _ => None,
            })
            .sum()
    }

    fn register(
        &mut self,
        dev: Arc<dyn Device>,
        call: Call,
        base: Option<String>,
    ) -> Result<(), RpcError> {
        self.reg.register(dev.clone()).map_err(|e| dev_err(&e))?;
        self.devices.push(DevRecord {
            name: dev.name().to_string(),
            call,
            base,
        });
        Ok(())
    }

    // ---- members

    fn malloc_create(&mut self, mut p: BdevMallocCreate) -> Result<Value, RpcError> {
        let name = match &p.name {
            Some(n) => n.to_string(),
            None => loop {
                let n = format!("Malloc{}", self.malloc_next);
                self.malloc_next += 1;
                if !self.name_taken(&n) {
                    break n;
                }
            },
        };
        self.check_free(&name)?;
        check_malloc(&p, self.malloc_bytes())?;
        let dev = MallocDevice::new(&name, p.num_blocks, p.block_size, p.uuid.map(|u| Uuid(u.0)))
            .map_err(|e| RpcError::invalid_params(format!("bdev_malloc_create: {e}")))?;
        p.name = Some(BdevName::new(&name).map_err(RpcError::invalid_params)?);
        p.uuid = Some(RpcUuid(dev.uuid().0));
        self.register(dev, Call::BdevMallocCreate(p), None)?;
        Ok(json!(name))
    }

    fn file_create(
        &mut self,
        method: &str,
        name: &BdevName,
        filename: &str,
        block_size: Option<u32>,
        uuid: Option<RpcUuid>,
        product: &'static str,
    ) -> Result<Arc<FileDevice>, RpcError> {
        self.check_free(name.as_str())?;
        // Named here; another process's hold is found by the file's lock.
        for (d, _) in self.reg.list() {
            if let DeviceKind::File { path, .. } = d.kind() {
                if same_file(&path, Path::new(filename)) {
                    return Err(file_taken(method, filename, d.name()));
                }
            }
        }
        let dev = FileDevice::open(FileOptions {
            name: name.to_string(),
            path: PathBuf::from(filename),
            block_size: block_size.filter(|b| *b != 0),
            uuid: uuid.map(|u| Uuid(u.0)),
            product,
        })
        .map_err(|e| match e {
            DevError::Invalid(m) if m.contains("block_size") => {
                RpcError::invalid_field(method, "block_size", m)
            }
            DevError::Invalid(m) => RpcError::invalid_field(method, "filename", m),
            other => RpcError::errno(other.errno(), format!("{method}: {other}")),
        })?;
        Ok(dev)
    }

    fn aio_create(&mut self, mut p: BdevAioCreate) -> Result<Value, RpcError> {
        if p.readonly {
            return Err(RpcError::invalid_field(
                "bdev_aio_create",
                "readonly",
                "read-only members are not supported",
            ));
        }
        let dev = self.file_create(
            "bdev_aio_create",
            &p.name,
            &p.filename,
            p.block_size,
            p.uuid,
            "AIO disk",
        )?;
        p.uuid = Some(RpcUuid(dev.uuid().0));
        let name = p.name.to_string();
        self.register(dev, Call::BdevAioCreate(p), None)?;
        Ok(json!(name))
    }

    fn uring_create(&mut self, mut p: BdevUringCreate) -> Result<Value, RpcError> {
        let dev = self.file_create(
            "bdev_uring_create",
            &p.name,
            &p.filename,
            p.block_size,
            p.uuid,
            "URING bdev",
        )?;
        p.uuid = Some(RpcUuid(dev.uuid().0));
        let name = p.name.to_string();
        self.register(dev, Call::BdevUringCreate(p), None)?;
        Ok(json!(name))
    }

    fn claim_base(&self, base: &str, by: &str) -> Result<Arc<dyn Device>, RpcError> {
        if self.arrays.iter().any(|a| a.name == base) {
            return Err(RpcError::errno(
                errno::ENOTSUP,
                format!("bdev {base} is an mdraid array; arrays cannot be wrapped"),
            ));
        }
        self.reg.claim(base, by).map_err(|e| match e {
            DevError::NotFound(n) => no_device(&n),
            other => dev_err(&other),
        })
    }

    fn error_create(&mut self, mut p: BdevErrorCreate) -> Result<Value, RpcError> {
        let name = p.bdev_name();
        self.check_free(&name)?;
        let base = self.claim_base(p.base_name.as_str(), &name)?;
        let dev = ErrorDevice::new(base, p.uuid.map(|u| Uuid(u.0)));
        p.uuid = Some(RpcUuid(dev.uuid().0));
        let b = p.base_name.to_string();
        if let Err(e) = self.register(dev, Call::BdevErrorCreate(p), Some(b.clone())) {
            self.reg.release(&b);
            return Err(e);
        }
        Ok(json!(true))
    }

    fn delay_create(&mut self, mut p: BdevDelayCreate) -> Result<Value, RpcError> {
        let name = p.name.to_string();
        self.check_free(&name)?;
        let base = self.claim_base(p.base_bdev_name.as_str(), &name)?;
        let b = p.base_bdev_name.to_string();
        let lat = Latencies {
            avg_read_us: p.avg_read_latency,
            p99_read_us: p.p99_read_latency,
            avg_write_us: p.avg_write_latency,
            p99_write_us: p.p99_write_latency,
        };
        let dev = match DelayDevice::new(&name, base, lat, p.uuid.map(|u| Uuid(u.0))) {
            Ok(d) => d,
            Err(e) => {
                self.reg.release(&b);
                let f = if p.p99_read_latency < p.avg_read_latency {
                    "p99_read_latency"
                } else {
                    "p99_write_latency"
                };
                return Err(RpcError::invalid_field("bdev_delay_create", f, e));
            }
        };
        p.uuid = Some(RpcUuid(dev.uuid().0));
        if let Err(e) = self.register(dev, Call::BdevDelayCreate(p), Some(b.clone())) {
            self.reg.release(&b);
            return Err(e);
        }
        Ok(json!(name))
    }

    fn inject_error(&mut self, p: BdevErrorInjectError) -> Result<Value, RpcError> {
        let name = p.name.as_str();
        let dev = self.reg.get(name).ok_or_else(|| no_device(name))?;
        let Some(ee) = dev.as_any().downcast_ref::<ErrorDevice>() else {
            return Err(RpcError::errno(
                errno::ENODEV,
                format!("bdev {name} is not an error bdev (bdev_error_create makes EE_<base>)"),
            ));
        };
        let io_type = match p.io_type {
            RpcIoType::Clear => ErrorIoType::Clear,
            RpcIoType::Read => ErrorIoType::Read,
            RpcIoType::Write => ErrorIoType::Write,
            RpcIoType::Unmap => ErrorIoType::Unmap,
            RpcIoType::Flush => ErrorIoType::Flush,
            RpcIoType::All => ErrorIoType::All,
        };
        let error_type = match p.error_type {
            RpcErrorType::Failure => ErrorType::Failure,
            RpcErrorType::Pending => ErrorType::Pending,
            RpcErrorType::CorruptData => ErrorType::CorruptData,
            RpcErrorType::Nomem => ErrorType::NoMem,
            RpcErrorType::NvmeFailure => ErrorType::NvmeFailure,
        };
        let mut o = InjectOpts::new(io_type, error_type, p.num);
        o.queue_depth = p.queue_depth.unwrap_or(0);
        o.corrupt_offset = p.corrupt_offset.unwrap_or(0);
        o.corrupt_value = p.corrupt_value.unwrap_or(0);
        ee.inject_error(&o)
            .map_err(|e| RpcError::invalid_params(format!("bdev_error_inject_error: {e}")))?;
        Ok(json!(true))
    }

    fn delete_device(&mut self, method: Method, name: &str) -> Result<Value, RpcError> {
        let idx = self.devices.iter().position(|d| {
            d.name == name
                && matches!(
                    (method, &d.call),
                    (Method::BdevMallocDelete, Call::BdevMallocCreate(_))
                        | (Method::BdevAioDelete, Call::BdevAioCreate(_))
                        | (Method::BdevUringDelete, Call::BdevUringCreate(_))
                        | (Method::BdevErrorDelete, Call::BdevErrorCreate(_))
                        | (Method::BdevDelayDelete, Call::BdevDelayCreate(_))
                )
        });
        let Some(idx) = idx else {
            return Err(no_device(name));
        };
        self.reg.unregister(name).map_err(|e| dev_err(&e))?;
        let rec = self.devices.remove(idx);
        if let Some(b) = rec.base {
            self.reg.release(&b);
        }
        Ok(json!(true))
    }

    fn dev_info(&self, rec: &DevRecord) -> Option<BdevInfo> {
        let dev = self.reg.get(&rec.name)?;
        let claimed = self.reg.claimed_by(&rec.name).is_some();
        let io = |op| dev.supports(op);
        let driver = match (&rec.call, dev.kind()) {
            (Call::BdevAioCreate(p), DeviceKind::File { path, direct, .. }) => json!({"aio": {
                "filename": path, "block_size_override": p.block_size.is_some_and(|b| b != 0),
                "readonly": false, "fallocate": p.fallocate, "direct": direct}}),
            (Call::BdevUringCreate(_), DeviceKind::File { path, direct, .. }) => {
                json!({"uring": {"filename": path, "direct": direct}})
            }
            (_, DeviceKind::Delay { base, latencies_us }) => json!({"delay": {
                "base_bdev_name": base,
                "avg_read_latency": latencies_us[0], "p99_read_latency": latencies_us[1],
                "avg_write_latency": latencies_us[2], "p99_write_latency": latencies_us[3]}}),
            (_, DeviceKind::Error { base }) => json!({"error": {"base_bdev": base}}),
            _ => json!({}),
        };
        Some(BdevInfo {
            name: rec.name.clone(),
            aliases: vec![],
            product_name: dev.product_name().to_string(),
            block_size: dev.block_size(),
            num_blocks: dev.num_blocks(),
            preferred_write_alignment: 0,
            preferred_write_granularity: 0,
            optimal_write_size: 0,
            preferred_unmap_alignment: 0,
            preferred_unmap_granularity: 0,
            uuid: RpcUuid(dev.uuid().0),
            assigned_rate_limits: RateLimits::default(),
            claimed,
            claim_type: claimed.then(|| "exclusive_write".to_string()),
            zoned: false,
            supported_io_types: SupportedIoTypes {
                read: io(DevOp::Read),
                write: io(DevOp::Write),
                unmap: io(DevOp::Unmap),
                flush: io(DevOp::Flush),
                reset: io(DevOp::Reset),
                write_zeroes: io(DevOp::WriteZeroes),
                ..Default::default()
            },
            driver_specific: driver,
        })
    }

    fn array_bdev_info(&self, a: &ArrayRecord) -> BdevInfo {
        BdevInfo {
            name: a.name.clone(),
            aliases: vec![],
            product_name: "mdraid".into(),
            block_size: a.array.block_size(),
            num_blocks: a.array.num_blocks(),
            preferred_write_alignment: 0,
            preferred_write_granularity: 0,
            optimal_write_size: 0,
            preferred_unmap_alignment: 0,
            preferred_unmap_granularity: 0,
            uuid: RpcUuid(a.uuid),
            assigned_rate_limits: RateLimits::default(),
            claimed: false,
            claim_type: None,
            zoned: false,
            supported_io_types: SupportedIoTypes {
                read: true,
                write: true,
                unmap: true,
                flush: true,
                reset: true,
                write_zeroes: true,
                ..Default::default()
            },
            driver_specific: json!({ "mdraid": self.array_info(a) }),
        }
    }

    fn get_bdevs(&self, p: BdevGetBdevs) -> Result<Value, RpcError> {
        let mut v: Vec<BdevInfo> = self
            .devices
            .iter()
            .filter_map(|d| self.dev_info(d))
            .collect();
        v.extend(self.arrays.iter().map(|a| self.array_bdev_info(a)));
        if let Some(n) = &p.name {
            v.retain(|b| b.name == n.as_str() || b.uuid.to_string() == n.as_str());
            if v.is_empty() {
                return Err(no_device(n.as_str()));
            }
        }
        reply(v)
    }

    // ---- arrays

    fn array_info(&self, a: &ArrayRecord) -> MdraidBdevInfo {
        let st = a.array.state();
        let sync = a.array.sync_progress();
        let snap = a
            .snap
            .as_ref()
            .map(|s| *s.lock().unwrap_or_else(|e| e.into_inner()));
        let geom = a.array.geometry();
        let bs = geom.block_size();
        let strip_kb = if matches!(geom.level(), Level::Raid1) {
            0
        } else {
            (geom.strip_blocks() * bs as u64 / 1024) as u32
        };
        let offline = st.offline || snap.is_some_and(|s| s.offline);
        // Per-member I/O, summed over the array's channels (one per reactor).
        let io: Option<Vec<MdraidMemberIo>> = a.array.stats().ok().map(|chans| {
            let mut sum = vec![MdraidMemberIo::default(); a.roles.len()];
            for (_, members) in &chans {
                for (t, m) in sum.iter_mut().zip(members) {
                    t.reads += m.reads;
                    t.writes += m.writes;
                    t.read_blocks += m.read_blocks;
                    t.written_blocks += m.written_blocks;
                    t.errors += m.errors;
                    t.outstanding += u64::from(m.outstanding);
                }
            }
            sum
        });
        let members: Vec<MdraidBaseBdevInfo> = a
            .roles
            .iter()
            .enumerate()
            .map(|(r, name)| {
                let ms = st.members.get(r).copied().unwrap_or(MemberState::Missing);
                let dev = name.as_ref().and_then(|n| self.reg.get(n));
                MdraidBaseBdevInfo {
                    name: if ms == MemberState::Missing {
                        None
                    } else {
                        name.clone()
                    },
                    uuid: RpcUuid(a.role_uuids.get(r).copied().unwrap_or([0; 16])),
                    is_configured: ms.in_service(),
                    // An empty slot has neither (SPDK's raid lists 0).
                    data_offset: dev.as_ref().map_or(0, |_| a.array.data_offset_blocks()),
                    data_size: dev.map_or(0, |_| geom.member_blocks(r)),
                    role: Some(r as u32),
                    state: Some(mdraid_rpc::results::member_state_name(ms).into()),
                    write_mostly: st.write_mostly & 1 << r != 0,
                    io: io.as_ref().and_then(|v| v.get(r).copied()),
                }
            })
            .collect();
        let (present, operational) =
            mdraid_rpc::results::member_counts(&st, |r| a.roles[r].is_some() && !a.released[r]);
        let array_state = if offline {
            "inactive"
        } else if snap.is_some_and(|s| s.blocked) {
            "blocked"
        } else if snap.map_or(st.writable, |s| s.dirty || s.writable) {
            "active"
        } else {
            "clean"
        };
        let layout = match geom.level() {
            Level::Raid4 | Level::Raid5 | Level::Raid6 | Level::Raid10 => {
                Some(layout_name(geom.level().md_level(), geom.layout()))
            }
            _ => None,
        };
        MdraidBdevInfo {
            name: a.name.clone(),
            uuid: RpcUuid(a.uuid),
            strip_size_kb: strip_kb,
            state: if offline {
                RaidState::Offline
            } else {
                RaidState::Online
            },
            raid_level: a.level,
            superblock: a.superblock,
            num_base_bdevs: a.roles.len() as u32,
            num_base_bdevs_discovered: present,
            num_base_bdevs_operational: operational,
            process: sync.map(|p| MdraidProcess {
                kind: p.kind.process_name().into(),
                target: match p.kind {
                    SyncKind::Rebuild(m) => a.roles.get(m).cloned().flatten(),
                    _ => None,
                },
                progress: MdraidProgress {
                    blocks: p.done,
                    percent: (p.done * 100 / p.total.max(1)) as u32,
                },
            }),
            base_bdevs_list: members,
            layout,
            events: snap.map_or(st.events, |s| s.events.max(st.events)),
            array_state: Some(array_state.into()),
            degraded: st.not_in_sync() != 0,
            sync_action: Some(
                match sync.map(|p| p.kind) {
                    Some(k) => k.action_name(),
                    None if a.array.frozen() => "frozen",
                    None => "idle",
                }
                .into(),
            ),
            mismatch_cnt: a.array.mismatch_cnt(),
            bitmap: snap.and_then(|s| s.bitmap),
            write_behind: (st.write_behind > 0).then_some(st.write_behind),
        }
    }

    fn mdraid_get_bdevs(&self, p: BdevMdraidGetBdevs) -> Result<Value, RpcError> {
        let mut v: Vec<MdraidBdevInfo> = self.arrays.iter().map(|a| self.array_info(a)).collect();
        if let Some(n) = &p.name {
            v.retain(|a| a.name == n.as_str());
            if v.is_empty() {
                return Err(self.no_array(n.as_str()));
            }
        }
        v.retain(|a| match p.category {
            RaidCategory::All => true,
            RaidCategory::Online => a.state == RaidState::Online,
            RaidCategory::Offline => a.state == RaidState::Offline,
            RaidCategory::Configuring => a.state == RaidState::Configuring,
        });
        reply(v)
    }

    /// Resolve, probe and claim the members of `p`; returns the devices and
    /// their probes. On error nothing stays claimed.
    fn claim_members(&self, p: &BdevMdraidCreate) -> Result<Members, RpcError> {
        let name = p.name.as_str();
        let mut devs = Vec::new();
        for (i, m) in p.base_bdevs.iter().enumerate() {
            let f = format!("base_bdevs[{i}]");
            if self.arrays.iter().any(|a| a.name == m.as_str()) {
                return Err(field(
                    f,
                    format!("`{m}` is an mdraid array; arrays cannot be members"),
                ));
            }
            let Some(d) = self.reg.get(m.as_str()) else {
                return Err(field(f, format!("bdev `{m}` does not exist")));
            };
            if let Some(by) = self.reg.claimed_by(m.as_str()) {
                return Err(field(f, format!("bdev `{m}` is already claimed by `{by}`")));
            }
            devs.push(d);
        }
        let names: Vec<&str> = p.base_bdevs.iter().map(|n| n.as_str()).collect();
        self.reg.claim_all(&names, name).map_err(|e| dev_err(&e))?;
        let mut probes = Vec::new();
        for (i, d) in devs.iter().enumerate() {
            let sb = if p.superblock || d.num_blocks() * d.block_size() as u64 >= 8192 {
                match read_sb_area(&self.rt, d, self.opts.io_timeout) {
                    Ok(sb) => sb,
                    Err(e) => {
                        self.release_all(&names);
                        return Err(RpcError::errno(
                            errno::EIO,
                            format!(
                                "{CREATE}: base_bdevs[{i}] `{}`: reading its superblock area: {e}",
                                d.name()
                            ),
                        ));
                    }
                }
            } else {
                Vec::new()
            };
            probes.push(Probe {
                block_size: d.block_size(),
                num_blocks: d.num_blocks(),
                sb,
            });
        }
        Ok((devs, probes))
    }

    /// Devices no one claims, with their md metadata, for
    /// [`plan_completed`]; `devs` gets the devices, in the same order.
    /// Unreadable ones are left out.
    fn unclaimed_probes(
        &self,
        array: &str,
        devs: &mut Vec<Arc<dyn Device>>,
    ) -> Vec<(BdevName, Probe)> {
        let mut out = Vec::new();
        for (d, by) in self.reg.list() {
            if by.is_some() || d.num_blocks() * (d.block_size() as u64) < 8192 {
                continue;
            }
            match read_sb_area(&self.rt, &d, self.opts.io_timeout) {
                Ok(sb) => {
                    out.push((
                        BdevName::new(d.name()).expect("a registered name is valid"),
                        Probe {
                            block_size: d.block_size(),
                            num_blocks: d.num_blocks(),
                            sb,
                        },
                    ));
                    devs.push(d);
                }
                Err(e) => self.log(format!(
                    "array {array}: looking for its members: reading `{}`'s superblock area: {e}",
                    d.name()
                )),
            }
        }
        out
    }

    fn release_all(&self, names: &[&str]) {
        for n in names {
            self.reg.release(n);
        }
    }

    fn mdraid_create(&mut self, p: BdevMdraidCreate) -> Result<Value, RpcError> {
        self.check_free(p.name.as_str())?;
        let (mut devs, probes) = self.claim_members(&p)?;
        let mut found = Vec::new();
        let (p, _, plan) = plan_completed(
            &p,
            probes,
            || self.unclaimed_probes(p.name.as_str(), &mut found),
            || Uuid::random().0,
        );
        // Devices found by the scan that the plan took are claimed too.
        for d in found {
            if p.base_bdevs.contains(d.name()) && self.reg.claim(d.name(), p.name.as_str()).is_ok()
            {
                self.log(format!(
                    "array {}: `{}` is not listed but carries the array's superblock: offered to assembly as a member",
                    p.name,
                    d.name()
                ));
                devs.push(d);
            }
        }
        let names: Vec<String> = p.base_bdevs.iter().map(|n| n.to_string()).collect();
        let release = |d: &Daemon| {
            for n in &names {
                d.reg.release(n);
            }
        };
        if devs.len() != names.len() {
            release(self);
            return Err(RpcError::internal(format!(
                "{CREATE}: a device found carrying the array's superblock was claimed meanwhile"
            )));
        }
        let plan = match plan {
            Ok(plan) => plan,
            Err(e) => {
                release(self);
                return Err(e);
            }
        };
        let res = match plan {
            Plan::Create {
                uuid,
                geom,
                strip_kb,
                data_offset,
                layouts,
                member_data_blocks,
                bitmap,
                write_mostly,
                write_behind,
            } => self.start_new(
                &p,
                &devs,
                uuid,
                geom,
                strip_kb,
                data_offset,
                layouts,
                member_data_blocks,
                bitmap,
                (write_mostly, write_behind),
            ),
            Plan::Assemble {
                asm,
                data_offset,
                member_data_blocks,
            } => self.start_assembled(&p, &devs, *asm, data_offset, member_data_blocks),
            Plan::Bare { geom, strip_kb } => self.start_bare(&p, &devs, geom, strip_kb),
        };
        match res {
            Ok(rec) => {
                // Claims of members assembly did not use go back.
                for n in &names {
                    if !rec.roles.iter().flatten().any(|r| r == n) {
                        self.reg.release(n);
                    }
                }
                self.arrays.push(rec);
                Ok(json!(true))
            }
            Err(e) => {
                release(self);
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_new(
        &mut self,
        p: &BdevMdraidCreate,
        devs: &[Arc<dyn Device>],
        uuid: [u8; 16],
        geom: Geometry,
        strip_kb: u32,
        data_offset: u64,
        layouts: Vec<MemberLayout>,
        member_data_blocks: u64,
        bitmap: Option<BitmapPlan>,
        (write_mostly, write_behind): (u64, u32),
    ) -> Result<ArrayRecord, RpcError> {
        let bs = geom.block_size() as u64;
        let mut sbs = create_superblocks(
            &geom,
            &CreateParams {
                set_uuid: uuid,
                name: p.name.as_str(),
                device_uuids: devs.iter().map(|d| d.uuid().0).collect(),
                member_sectors: layouts.iter().map(|l| l.member_sectors).collect(),
                data_offset,
                now_secs: now_secs(),
                bitmap: bitmap.is_some(),
            },
        );
        for (m, (sb, l)) in sbs.iter_mut().zip(&layouts).enumerate() {
            l.apply(sb);
            sb.set_write_mostly(write_mostly & 1 << m != 0);
        }
        let mut disk = bitmap.as_ref().map(|b| {
            let mut d = DiskBitmap::new(&b.geom, uuid, b.daemon_sleep_ms);
            d.sb.write_behind = write_behind;
            d
        });
        // Resynced from the start unless assumed clean (then every bit
        // stays clear).
        let sync = initial_sync(p, &geom);
        if sync {
            mark_unsynced(
                &mut sbs,
                disk.as_mut().zip(bitmap.as_ref().map(|b| &b.geom)),
            );
        }
        // What the members hold where the metadata goes, put back if the
        // create fails after writing some of it: a failed create changes
        // nothing.
        let mut datas = Vec::new();
        let mut before = Vec::new();
        for (i, (d, sb)) in devs.iter().zip(&sbs).enumerate() {
            let mut data = sb.encode();
            if let Some(b) = &disk {
                data.extend_from_slice(&b.encode_area(sb.events));
            }
            data.resize(data.len().max(SB_BLOCK_BYTES), 0);
            let old = read_at(
                &self.rt,
                d,
                SB_OFFSET_BYTES,
                data.len(),
                self.opts.io_timeout,
            )
            .map_err(|e| {
                RpcError::errno(
                    errno::EIO,
                    format!(
                        "{CREATE}: base_bdevs[{i}] `{}`: reading its metadata area: {e}",
                        d.name()
                    ),
                )
            })?;
            before.push((d.clone(), old));
            datas.push(data);
        }
        for (i, (d, data)) in devs.iter().zip(&datas).enumerate() {
            if let Err(e) = write_sb_area(&self.rt, d, data, self.opts.io_timeout) {
                // Its write may have landed in part.
                self.restore(&before[..=i]);
                return Err(RpcError::errno(
                    errno::EIO,
                    format!(
                        "{CREATE}: base_bdevs[{i}] `{}`: writing the superblock: {e}",
                        d.name()
                    ),
                ));
            }
        }
        let snap = Arc::new(Mutex::new(MetaSnap::default()));
        let mut ap = ArrayParams::new(p.name.as_str(), geom.level(), strip_kb, devs.to_vec());
        ap.layout = Some(geom.layout());
        ap.data_offset_blocks = data_offset * 512 / bs;
        ap.member_data_blocks = Some(member_data_blocks);
        ap.meta_reactor = 0;
        ap.bitmap = bitmap.as_ref().map(|b| b.geom.clone());
        ap.process = self.process;
        ap.state = Some(ArrayState {
            write_mostly,
            write_behind: disk.as_ref().map_or(0, |d| d.sb.write_behind),
            ..ArrayState::new_in_sync(devs.len())
        });
        let daemon_ms = bitmap.as_ref().map_or(0, |b| b.daemon_sleep_ms);
        let role_uuids: Vec<[u8; 16]> = sbs.iter().map(|s| s.device_uuid).collect();
        let array = self.start_array(
            ap,
            sbs.into_iter().map(Some).collect(),
            disk,
            daemon_ms,
            sync,
            &snap,
        );
        let array = match array {
            Ok(a) => a,
            Err(e) => {
                self.restore(&before);
                return Err(e);
            }
        };
        if sync {
            array.start_resync(bdev_raid::sync::resync_window(array.geometry()));
        }
        let mut saved = p.clone();
        saved.uuid = Some(RpcUuid(uuid));
        if !matches!(p.raid_level, RaidLevel::Raid1) {
            saved.strip_size_kb = Some(strip_kb);
        }
        saved.bitmap = match &bitmap {
            Some(b) => BitmapSetting::On(BitmapOptions {
                chunk_kb: Some((b.geom.chunk_bytes() / 1024) as u32),
                daemon_sleep_ms: Some(b.daemon_sleep_ms as u32),
            }),
            None => BitmapSetting::Off,
        };
        self.log(format!(
            "created {} array {} ({}) on {}{}",
            p.raid_level,
            p.name,
            md_uuid(&uuid),
            devs.iter().map(|d| d.name()).collect::<Vec<_>>().join(", "),
            if sync { "; initial resync started" } else { "" }
        ));
        Ok(ArrayRecord {
            name: p.name.to_string(),
            array,
            uuid,
            level: p.raid_level,
            superblock: true,
            saved,
            released: vec![false; devs.len()],
            roles: devs.iter().map(|d| Some(d.name().to_string())).collect(),
            role_uuids,
            snap: Some(snap),
        })
    }

    fn start_assembled(
        &mut self,
        p: &BdevMdraidCreate,
        devs: &[Arc<dyn Device>],
        asm: Assembled,
        data_offset: u64,
        member_data_blocks: u64,
    ) -> Result<ArrayRecord, RpcError> {
        let bs = asm.geometry.block_size() as u64;
        let members: Vec<Option<Arc<dyn Device>>> = asm
            .member_of_role
            .iter()
            .map(|c| c.map(|i| devs[i].clone()))
            .collect();
        for (_, why) in &asm.refused {
            self.log(format!("array {}: member refused: {why}", p.name));
        }
        let strip_kb = asm
            .superblocks
            .iter()
            .flatten()
            .next()
            .map_or(0, |s| s.chunksize)
            / 2;
        let snap = Arc::new(Mutex::new(MetaSnap::default()));
        let ap = ArrayParams {
            name: p.name.to_string(),
            level: asm.geometry.level(),
            layout: Some(asm.geometry.layout()),
            strip_size_kb: strip_kb,
            members: members.clone(),
            data_offset_blocks: data_offset * 512 / bs,
            member_data_blocks: Some(member_data_blocks),
            channel: Default::default(),
            meta_reactor: 0,
            state: Some(asm.state.clone()),
            bitmap: asm.bitmap.as_ref().map(|b| b.geom.clone()),
            process: self.process,
        };
        let daemon_ms = match (&p.bitmap, &asm.bitmap) {
            (
                BitmapSetting::On(BitmapOptions {
                    daemon_sleep_ms: Some(ms),
                    ..
                }),
                _,
            ) => u64::from(*ms),
            (_, Some(b)) => u64::from(b.disk.sb.daemon_sleep) * 1000,
            _ => 0,
        };
        let role_uuids: Vec<[u8; 16]> = asm
            .superblocks
            .iter()
            .map(|s| s.as_ref().map_or([0; 16], |s| s.device_uuid))
            .collect();
        let array = self.start_array(
            ap,
            asm.superblocks.clone(),
            asm.bitmap.as_ref().map(|b| b.disk.clone()),
            daemon_ms,
            asm.dirty,
            &snap,
        )?;
        if asm.dirty {
            // Not shut down cleanly: make copies/parity agree (the chunks
            // the bitmap marks, or the whole array without one), then the
            // array may be marked clean again.
            array.start_resync(bdev_raid::sync::resync_window(array.geometry()));
            self.log(format!(
                "array {}: assembled dirty; resync started",
                p.name.as_str()
            ));
        }
        let roles: Vec<Option<String>> = members
            .iter()
            .map(|m| m.as_ref().map(|d| d.name().to_string()))
            .collect();
        let mut saved = p.clone();
        saved.uuid = Some(RpcUuid(asm.set_uuid));
        saved.base_bdevs = NameList(
            roles
                .iter()
                .flatten()
                .map(|n| BdevName::new(n.as_str()).expect("a registered name is valid"))
                .collect(),
        );
        if !matches!(asm.geometry.level(), Level::Raid1) {
            saved.strip_size_kb = Some(strip_kb);
        }
        let degraded = asm.state.out_of_service() != 0;
        self.log(format!(
            "assembled {} array {} ({}) at events {}{}{}",
            asm.geometry.level().name(),
            p.name,
            md_uuid(&asm.set_uuid),
            asm.state.events,
            if degraded { ", degraded" } else { "" },
            match (&asm.dirty, &asm.bitmap) {
                (false, _) => String::new(),
                (true, Some(b)) =>
                    format!(
                    "; it was not shut down cleanly: resyncing the {} chunks its bitmap marks{}",
                    b.disk.dirty(),
                    if b.stale { " (the bitmap was out of date: all of them)" } else { "" }
                ),
                (true, None) =>
                    "; it was not shut down cleanly and has no bitmap: resyncing all of it".into(),
            }
        ));
        Ok(ArrayRecord {
            name: p.name.to_string(),
            array,
            uuid: asm.set_uuid,
            level: p.raid_level,
            superblock: true,
            saved,
            released: vec![false; roles.len()],
            roles,
            role_uuids,
            snap: Some(snap),
        })
    }

    fn start_bare(
        &mut self,
        p: &BdevMdraidCreate,
        devs: &[Arc<dyn Device>],
        geom: Geometry,
        strip_kb: u32,
    ) -> Result<ArrayRecord, RpcError> {
        let mut ap = ArrayParams::new(p.name.as_str(), geom.level(), strip_kb, devs.to_vec());
        ap.layout = Some(geom.layout());
        let array = Array::create(&self.rt, ap)
            .map_err(|e| RpcError::errno(errno::EINVAL, format!("{CREATE}: {e}")))?;
        let uuid = p.uuid.map(|u| u.0).unwrap_or_else(|| Uuid::random().0);
        let mut saved = p.clone();
        saved.uuid = Some(RpcUuid(uuid));
        self.log(format!(
            "created {} array {} without superblocks (nothing on the members says what they hold)",
            p.raid_level, p.name
        ));
        Ok(ArrayRecord {
            name: p.name.to_string(),
            array,
            uuid,
            level: p.raid_level,
            superblock: false,
            saved,
            released: vec![false; devs.len()],
            roles: devs.iter().map(|d| Some(d.name().to_string())).collect(),
            role_uuids: devs.iter().map(|d| d.uuid().0).collect(),
            snap: None,
        })
    }

    fn start_array(
        &self,
        ap: ArrayParams,
        sbs: Vec<Option<Superblock>>,
        bitmap: Option<DiskBitmap>,
        daemon_sleep_ms: u64,
        dirty: bool,
        snap: &Arc<Mutex<MetaSnap>>,
    ) -> Result<Arc<Array>, RpcError> {
        let mut cfg = self.opts.meta;
        if daemon_sleep_ms != 0 {
            cfg.daemon_sleep_ms = daemon_sleep_ms;
        }
        let snap2 = snap.clone();
        let name = ap.name.clone();
        Array::create_with_meta(&self.rt, ap, move |init| {
            let mut meta = Meta::new(init.geom, init.shared, init.state, sbs, bitmap, cfg, 0);
            meta.set_wall_clock(now_secs());
            meta.record_name(&name);
            let dm = DaemonMeta {
                inner: MdMeta::new(meta),
                snap: snap2,
                resync_pending: dirty,
                daemon_sleep_ms: cfg.daemon_sleep_ms,
            };
            dm.update();
            Box::new(dm) as Box<dyn MetaPath + Send>
        })
        .map_err(|e| RpcError::errno(errno::EINVAL, format!("{CREATE}: {e}")))
    }

    /// Write back what `saved` read from each device's metadata area
    /// (best effort; logged).
    fn restore(&self, saved: &[(Arc<dyn Device>, Vec<u8>)]) {
        for (d, data) in saved {
            if let Err(e) = write_sb_area(&self.rt, d, data, self.opts.io_timeout) {
                self.log(format!(
                    "{}: putting its metadata area back after a failed create: {e}",
                    d.name()
                ));
            }
        }
    }

    /// Zero the superblock area of `devs` (best effort; logged).
    fn wipe(&self, devs: &[Arc<dyn Device>]) {
        for d in devs {
            if let Err(e) = write_sb_area(&self.rt, d, &[0u8; SB_BLOCK_BYTES], self.opts.io_timeout)
            {
                self.log(format!("{}: wiping the superblock: {e}", d.name()));
            }
        }
    }

    /// md's `sync_action`: check, repair, resync (whole array), idle,
    /// frozen.
    fn mdraid_sync_action(&mut self, p: BdevMdraidSyncAction) -> Result<Value, RpcError> {
        let name = p.name.as_str();
        let Some(a) = self.arrays.iter().find(|a| a.name == name) else {
            return Err(self.no_array(name));
        };
        let g = a.array.geometry();
        p.check_redundant(g.level().name(), g.redundancy() > 0)?;
        let r = match p.action {
            SyncAction::Check => a.array.sync_action(Some(IoType::Check), false),
            SyncAction::Repair => a.array.sync_action(Some(IoType::Repair), false),
            SyncAction::Resync => a.array.sync_action(Some(IoType::Resync), false),
            SyncAction::Idle => a.array.sync_action(None, false),
            SyncAction::Frozen => a.array.sync_action(None, true),
        };
        r.map(|()| json!(true)).map_err(|e| {
            RpcError::errno(
                errno::EBUSY,
                format!("bdev_mdraid_sync_action: array `{name}`: {e}"),
            )
        })
    }

    /// `bdev_mdraid_set_write_mostly`: md's `writemostly` member state.
    fn mdraid_set_write_mostly(&mut self, p: BdevMdraidSetWriteMostly) -> Result<Value, RpcError> {
        const M: &str = "bdev_mdraid_set_write_mostly";
        let name = p.name.as_str();
        let bname = p.base_bdev.as_str();
        let Some(idx) = self.arrays.iter().position(|a| a.name == name) else {
            return Err(self.no_array(name));
        };
        let a = &self.arrays[idx];
        let Some(role) =
            (0..a.roles.len()).find(|&r| a.roles[r].as_deref() == Some(bname) && !a.released[r])
        else {
            return Err(RpcError::invalid_field(
                M,
                "base_bdev",
                format!("`{bname}` is not a member of array `{name}`"),
            ));
        };
        a.array
            .set_write_mostly(role, p.write_mostly)
            .map_err(|e| {
                let f = match e {
                    FlagError::NotInService { .. } | FlagError::Role { .. } => "base_bdev",
                    _ => "write_mostly",
                };
                RpcError::invalid_field(M, f, format!("`{bname}`: {e}"))
            })?;
        // Answer once the state records it (committed to the superblocks
        // and published), as the SPDK host does: get_bdevs then shows it.
        let deadline = std::time::Instant::now() + self.opts.io_timeout;
        loop {
            let st = a.array.state();
            if st.offline || (st.write_mostly >> role & 1 != 0) == p.write_mostly {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(RpcError::errno(
                    errno::EAGAIN,
                    format!(
                        "{M}: `{bname}`: the change is not committed yet (the superblocks could not be written in time); it will be"
                    ),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        set_saved_write_mostly(&mut self.arrays[idx], Some(bname), p.write_mostly);
        self.log(format!(
            "array {name}: `{bname}` (role {role}) {} write-mostly",
            if p.write_mostly { "is" } else { "is no longer" }
        ));
        Ok(json!(true))
    }

    fn mdraid_set_options(&mut self, p: BdevMdraidSetOptions) -> Result<Value, RpcError> {
        if let Some(kb) = p.process_window_size_kb {
            self.process.window_kb = kb;
        }
        if let Some(mb) = p.process_max_bandwidth_mb_sec {
            self.process.max_mb_per_sec = mb;
        }
        for a in &self.arrays {
            a.array.set_process_options(self.process);
        }
        Ok(json!(true))
    }

    /// `bdev_mdraid_add_base_bdev`: bring a bdev into the first faulty or
    /// missing role (the role it served, if it comes back). A device that
    /// left with events at least the bitmap's events_cleared is recovered
    /// from the bitmap, anything else rebuilt fully.
    fn mdraid_add_base_bdev(&mut self, p: BdevMdraidAddBaseBdev) -> Result<Value, RpcError> {
        const M: &str = "bdev_mdraid_add_base_bdev";
        let name = p.raid_bdev.as_str();
        let bname = p.base_bdev.as_str();
        let Some(idx) = self.arrays.iter().position(|a| a.name == name) else {
            return Err(self.no_array(name));
        };
        let a = &self.arrays[idx];
        if p.write_mostly && a.array.geometry().copies() < 2 {
            return Err(RpcError::invalid_field(
                M,
                "write_mostly",
                format!("array `{name}` is {}: it has no mirrors", a.level),
            ));
        }
        if !a.superblock {
            return Err(RpcError::invalid_field(
                M,
                "raid_bdev",
                format!(
                    "array `{name}` has no superblocks, so a member cannot be brought back into it"
                ),
            ));
        }
        let Some(dev) = self.reg.get(bname) else {
            return Err(RpcError::invalid_field(
                M,
                "base_bdev",
                format!("bdev `{bname}` does not exist"),
            ));
        };
        let st = a.array.state();
        // A role an add has been accepted for still says faulty until that
        // add commits (after its answer): it is not free (swapping another
        // device in under it lost the data).
        let pending = a.array.adds_pending();
        let out = |r: usize| {
            matches!(st.members[r], MemberState::Faulty | MemberState::Missing)
                && pending & 1 << r == 0
        };
        // A member in service is not added again.
        if let Some(r) = (0..st.members.len())
            .find(|&r| st.members[r].in_service() && a.roles[r].as_deref() == Some(bname))
        {
            return Err(RpcError::invalid_field(
                M,
                "base_bdev",
                format!("bdev `{bname}` already serves role {r} of `{name}`"),
            ));
        }
        // Held by something else (a wrapper stacked on it, another array).
        if let Some(by) = self.reg.claimed_by(bname).filter(|by| by != name) {
            return Err(RpcError::invalid_field(
                M,
                "base_bdev",
                format!("bdev `{bname}` is already claimed by `{by}`"),
            ));
        }
        // The role it served (it comes back), else the first free one.
        let role = (0..st.members.len())
            .find(|&r| out(r) && a.roles[r].as_deref() == Some(bname))
            .or_else(|| (0..st.members.len()).find(|&r| out(r)));
        let Some(role) = role else {
            return Err(RpcError::errno(
                errno::EBUSY,
                format!("{M}: array `{name}` has no faulty or missing member to replace"),
            ));
        };
        // The array still holds (claims) the role's device: it comes back.
        let ours = a.roles[role].as_deref() == Some(bname) && !a.released[role];
        match self.reg.claimed_by(bname) {
            Some(by) if !(ours && by == name) => {
                return Err(RpcError::invalid_field(
                    M,
                    "base_bdev",
                    format!("bdev `{bname}` is already claimed by `{by}`"),
                ))
            }
            _ => {}
        }
        check_add_block_size(bname, dev.block_size(), a.array.geometry().block_size())?;
        let sectors = dev.num_blocks() * u64::from(dev.block_size()) / 512;
        let sb = read_sb_area(&self.rt, &dev, self.opts.io_timeout)
            .map_err(|e| RpcError::errno(errno::EIO, format!("{M}: `{bname}`: {e}")))?;
        let old_sb = Superblock::decode(&sb, sectors).ok();
        let nm = NewMember {
            device_uuid: old_sb.as_ref().map_or(dev.uuid().0, |s| s.device_uuid),
            sectors,
            old_sb,
            write_mostly: p.write_mostly,
        };
        if !ours {
            self.reg.claim(bname, name).map_err(|e| dev_err(&e))?;
        }
        let a = &self.arrays[idx];
        match a.array.add_member(role, dev.clone(), nm) {
            Ok(kind) => {
                let rec = &mut self.arrays[idx];
                let old = rec.roles[role].replace(bname.to_string());
                let old_held = !std::mem::replace(&mut rec.released[role], false);
                if let Some(o) = old.as_ref().filter(|o| *o != bname && old_held) {
                    self.reg.release(o);
                }
                let rec = &mut self.arrays[idx];
                set_saved_members(rec);
                // The role's write-mostly flag is the new member's.
                set_saved_write_mostly(rec, old.as_deref(), false);
                set_saved_write_mostly(rec, Some(bname), p.write_mostly);
                self.log(format!(
                    "array {name}: `{bname}` brought into role {role}, {}",
                    match kind {
                        Recovery::Bitmap => "recovering from the bitmap",
                        Recovery::Full => "rebuilding fully",
                    }
                ));
                Ok(json!(true))
            }
            Err(e) => {
                if !ours {
                    self.reg.release(bname);
                }
                Err(RpcError::errno(errno::EINVAL, format!("{M}: {e}")))
            }
        }
    }

    /// `bdev_mdraid_remove_base_bdev {name}` (the member's bdev, as SPDK's
    /// `bdev_raid_remove_base_bdev` takes it): the member fails through the
    /// metadata path as a member whose write failed does — recorded faulty
    /// on the survivors' superblocks, events + 1 (R1) — and the answer comes
    /// once that is durable; then, once no channel has I/O on it, the array
    /// drops its channels of the device and releases its claim (it may be
    /// deleted, or added back). Refused with EBUSY, changing nothing, when
    /// the array is offline or would go offline (md refuses to fail the
    /// last device holding some data); a member failed already is only
    /// released. As the SPDK host does.
    fn mdraid_remove_base_bdev(&mut self, p: BdevMdraidRemoveBaseBdev) -> Result<Value, RpcError> {
        const M: &str = "bdev_mdraid_remove_base_bdev";
        let bname = p.name.as_str();
        let found = self.arrays.iter().enumerate().find_map(|(i, a)| {
            (0..a.roles.len())
                .find(|&r| a.roles[r].as_deref() == Some(bname) && !a.released[r])
                .map(|r| (i, r))
        });
        let Some((idx, role)) = found else {
            if !self.name_taken(bname) {
                return Err(no_device(bname));
            }
            return Err(RpcError::invalid_field(
                M,
                "name",
                format!("bdev `{bname}` is not a member of an mdraid array"),
            ));
        };
        let a = &self.arrays[idx];
        let name = a.name.clone();
        let in_service = a
            .array
            .remove_member(role, self.opts.io_timeout)
            .map_err(|e| match e {
                RemoveError::Offline => {
                    RpcError::errno(errno::EBUSY, format!("{M}: array `{name}` is offline"))
                }
                RemoveError::LastCopy => RpcError::errno(
                    errno::EBUSY,
                    format!(
                        "{M}: `{bname}` (role {role}) holds data no other member of `{name}` has: removing it would take the array offline"
                    ),
                ),
                RemoveError::NotCommitted(_) => RpcError::errno(
                    errno::EAGAIN,
                    format!("{M}: `{bname}` (role {role}) of `{name}`: {e}"),
                ),
                RemoveError::Busy(_) => RpcError::errno(
                    errno::EBUSY,
                    format!("{M}: `{bname}` (role {role}) of `{name}`: {e}; call again to release it"),
                ),
                RemoveError::Role(_) | RemoveError::NoMeta | RemoveError::Runtime(_) => {
                    RpcError::internal(format!("{M}: `{bname}` (role {role}) of `{name}`: {e}"))
                }
            })?;
        self.reg.release(bname);
        let rec = &mut self.arrays[idx];
        rec.released[role] = true;
        // save_config no longer names it (assembly finds the roles from
        // the superblocks). A superblock-less array's members are its
        // roles in order, so its create stays as it was.
        if rec.superblock {
            set_saved_members(rec);
            set_saved_write_mostly(rec, Some(bname), false);
        }
        self.log(format!(
            "array {name}: member {bname} (role {role}) removed by {M}{}",
            if in_service {
                "; recorded faulty"
            } else {
                " (failed already)"
            }
        ));
        Ok(json!(true))
    }

    fn mdraid_delete(&mut self, p: BdevMdraidDelete) -> Result<Value, RpcError> {
        let name = p.name.as_str();
        let Some(idx) = self.arrays.iter().position(|a| a.name == name) else {
            return Err(self.no_array(name));
        };
        if let Some(e) = self.exports.iter().find(|e| e.bdev_name.as_str() == name) {
            return Err(RpcError::errno(
                errno::EBUSY,
                format!(
                    "array {name} is exported over NBD as `{}`; remove the export first (mdraid_nbd_export_remove)",
                    e.export_name()
                ),
            ));
        }
        let a = &self.arrays[idx];
        a.array
            .stop(self.opts.stop_timeout)
            .map_err(|e| RpcError::errno(errno::EBUSY, format!("bdev_mdraid_delete: {e}")))?;
        let rec = self.arrays.remove(idx);
        let devs: Vec<Arc<dyn Device>> = rec.held().filter_map(|n| self.reg.get(n)).collect();
        if p.clear_sb && rec.superblock {
            self.wipe(&devs);
        }
        for n in rec.held() {
            self.reg.release(n);
        }
        self.log(format!(
            "deleted array {name}{}",
            if p.clear_sb {
                " and cleared its superblocks"
            } else {
                ""
            }
        ));
        Ok(json!(true))
    }

    fn examine_dev(&self, dev: &Arc<dyn Device>) -> Result<MdraidExamineInfo, String> {
        let buf = read_sb_area(&self.rt, dev, self.opts.io_timeout)?;
        let sectors = dev.num_blocks() * dev.block_size() as u64 / 512;
        MdraidExamineInfo::from_meta(dev.name(), &buf, sectors)
    }

    fn mdraid_examine(&self, p: BdevMdraidExamine) -> Result<Value, RpcError> {
        match &p.name {
            Some(n) => {
                if self.arrays.iter().any(|a| a.name == n.as_str()) {
                    return Err(BdevMdraidExamine::array_named(n.as_str()));
                }
                let d = self
                    .reg
                    .get(n.as_str())
                    .ok_or_else(|| no_device(n.as_str()))?;
                let info = self.examine_dev(&d).map_err(|e| {
                    RpcError::errno(errno::EINVAL, format!("bdev_mdraid_examine: bdev {n}: {e}"))
                })?;
                reply(vec![info])
            }
            None => {
                let mut v = Vec::new();
                for rec in &self.devices {
                    if let Some(d) = self.reg.get(&rec.name) {
                        match self.examine_dev(&d) {
                            Ok(i) => v.push(i),
                            Err(e) => {
                                self.log(format!("examine {}: {e}", rec.name));
                                v.push(MdraidExamineInfo::blank(&rec.name));
                            }
                        }
                    }
                }
                reply(v)
            }
        }
    }

    /// `bdev_mdraid_zero_superblock {name}`: wipe the md superblock of a
    /// bdev no array holds (mdadm's `--zero-superblock`). A damaged one
    /// (md's magic, a bad checksum or field) is wiped too; a bdev with no
    /// md superblock is refused, as mdadm refuses it.
    fn mdraid_zero_superblock(&self, p: BdevMdraidZeroSuperblock) -> Result<Value, RpcError> {
        let n = p.name.as_str();
        if self.arrays.iter().any(|a| a.name == n) {
            return Err(BdevMdraidZeroSuperblock::array_named(n));
        }
        let d = self.reg.get(n).ok_or_else(|| no_device(n))?;
        if let Some(by) = self.reg.claimed_by(n) {
            return Err(BdevMdraidZeroSuperblock::claimed(n, &by));
        }
        let t = self.opts.io_timeout;
        let io = |e: String| {
            RpcError::errno(
                errno::EIO,
                format!("bdev_mdraid_zero_superblock: `{n}`: {e}"),
            )
        };
        let buf = read_sb_area(&self.rt, &d, t).map_err(io)?;
        let sectors = d.num_blocks() * u64::from(d.block_size()) / 512;
        if !Superblock::present(&buf, sectors) {
            return Err(BdevMdraidZeroSuperblock::blank(n));
        }
        write_sb_area(&self.rt, &d, &[], t).map_err(io)?;
        self.log(format!("`{n}`: md superblock zeroed"));
        Ok(json!(true))
    }

    // ---- NBD

    /// Run `f` on the export server; a server that cannot serve (a build
    /// without it) answers "not supported" instead of taking the daemon down.
    fn nbd<T>(
        &mut self,
        f: impl FnOnce(&ExportServer) -> Result<T, crate::export::ExportError>,
    ) -> Result<T, RpcError> {
        let srv = self.export.clone();
        match std::panic::catch_unwind(AssertUnwindSafe(|| f(&srv))) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(export_err(&e)),
            Err(_) => Err(RpcError::errno(
                errno::ENOTSUP,
                "the NBD export server is not available in this build",
            )),
        }
    }

    /// Open an NBD listener. `saved`: written by `save_config` (false for
    /// `serve`'s command-line listeners).
    pub fn add_listener(&mut self, p: MdraidNbdListener, saved: bool) -> Result<Value, RpcError> {
        const M: &str = "mdraid_nbd_listener_add";
        if let Some(l) = self.listeners.iter_mut().find(|l| l.params == p) {
            // The same listener from the command line and the config.
            l.saved |= saved;
            return Ok(json!(true));
        }
        let view = if let Some(path) = &p.unix_path {
            let path = PathBuf::from(path);
            self.nbd(|s| s.add_unix_listener(&path))?;
            ListenerView::Unix(path)
        } else {
            let (ip, port) = p.tcp().ok_or_else(|| {
                RpcError::invalid_field(M, "address", "not an IP address literal")
            })?;
            if !ip.is_loopback() {
                return Err(RpcError::invalid_field(
                    M,
                    "address",
                    format!("{ip} is not a loopback address; NBD has no authentication, so only 127.0.0.0/8 and ::1 are served"),
                ));
            }
            let bound = self.nbd(|s| s.add_tcp_listener(SocketAddr::new(ip, port)))?;
            ListenerView::Tcp(bound)
        };
        self.export_used = true;
        self.listeners.push(ListenerRecord {
            params: p,
            view,
            saved,
        });
        Ok(json!(true))
    }

    fn remove_listener(&mut self, p: MdraidNbdListener) -> Result<Value, RpcError> {
        let Some(idx) = self.listeners.iter().position(|l| {
            l.params == p
                || match (&l.view, p.tcp()) {
                    (ListenerView::Tcp(a), Some((ip, port))) => a.ip() == ip && a.port() == port,
                    _ => false,
                }
        }) else {
            return Err(RpcError::errno(errno::ENOENT, "no such NBD listener"));
        };
        let view = self.listeners[idx].view.clone();
        self.nbd(|s| s.remove_listener(&view))?;
        self.listeners.remove(idx);
        Ok(json!(true))
    }

    fn export_add(&mut self, p: MdraidNbdExportAdd) -> Result<Value, RpcError> {
        const M: &str = "mdraid_nbd_export_add";
        let Some(a) = self.arrays.iter().find(|a| a.name == p.bdev_name.as_str()) else {
            if self.reg.get(p.bdev_name.as_str()).is_some() {
                return Err(RpcError::invalid_field(
                    M,
                    "bdev_name",
                    format!(
                        "`{}` is not an mdraid array; only arrays are exported",
                        p.bdev_name
                    ),
                ));
            }
            return Err(no_device(p.bdev_name.as_str()));
        };
        let name = p.export_name().to_string();
        if self.exports.iter().any(|e| e.export_name() == name) {
            return Err(RpcError::errno(
                errno::EEXIST,
                format!("NBD export `{name}` already exists"),
            ));
        }
        let array = a.array.clone();
        let opts = ExportOptions {
            read_only: p.read_only,
            description: p.description.clone(),
        };
        self.nbd(|s| s.add_export(&name, array, opts))?;
        self.export_used = true;
        self.exports.push(p);
        Ok(json!(name))
    }

    fn export_remove(&mut self, p: MdraidNbdExportRemove) -> Result<Value, RpcError> {
        let Some(idx) = self
            .exports
            .iter()
            .position(|e| e.export_name() == p.export_name)
        else {
            return Err(RpcError::errno(
                errno::ENODEV,
                format!("no NBD export `{}`", p.export_name),
            ));
        };
        let n = p.export_name.clone();
        self.nbd(|s| s.remove_export(&n))?;
        self.exports.remove(idx);
        Ok(json!(true))
    }

    fn get_exports(&mut self, p: MdraidNbdGetExports) -> Result<Value, RpcError> {
        if self.exports.is_empty() {
            return reply(Vec::<NbdExportInfo>::new());
        }
        let views = self.nbd(|s| Ok(s.exports()))?;
        let mut v: Vec<NbdExportInfo> = views
            .into_iter()
            .map(|x| NbdExportInfo {
                description: self
                    .exports
                    .iter()
                    .find(|e| e.export_name() == x.export_name)
                    .and_then(|e| e.description.clone()),
                export_name: x.export_name,
                bdev_name: x.bdev_name,
                read_only: x.read_only,
                size_bytes: x.size_bytes,
                block_size: x.block_size,
                connections: x.connections as u32,
            })
            .collect();
        if let Some(n) = &p.export_name {
            v.retain(|e| &e.export_name == n);
            if v.is_empty() {
                return Err(RpcError::errno(
                    errno::ENODEV,
                    format!("no NBD export `{n}`"),
                ));
            }
        }
        reply(v)
    }

    fn get_listeners(&self) -> Result<Value, RpcError> {
        let v: Vec<MdraidNbdListener> = self
            .listeners
            .iter()
            .map(|l| match &l.view {
                ListenerView::Unix(p) => MdraidNbdListener {
                    unix_path: Some(p.display().to_string()),
                    address: None,
                    port: None,
                },
                ListenerView::Tcp(a) => MdraidNbdListener {
                    unix_path: None,
                    address: Some(a.ip().to_string()),
                    port: Some(a.port()),
                },
            })
            .collect();
        reply(v)
    }

    /// Where NBD clients connect, for the user (`nbd+unix:///?socket=..`,
    /// `nbd://127.0.0.1:10809/`).
    pub fn nbd_uris(&self) -> Vec<String> {
        self.listeners
            .iter()
            .map(|l| listener_text(&l.view))
            .collect()
    }

    fn log(&self, msg: String) {
        tracing::info!("{msg}");
    }

    /// Orderly stop: close NBD (in-flight requests finish), stop every
    /// array (drain, mark clean), newest first, all within
    /// `stop_timeout`. Returns the arrays that did not stop cleanly.
    pub fn shutdown(&mut self) -> Vec<String> {
        // One budget for the whole stop: NBD's drain and every array's.
        let deadline = Instant::now() + self.opts.stop_timeout;
        let left = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100))
        };
        if self.export_used {
            let srv = self.export.clone();
            let grace = crate::export::DRAIN_GRACE.min(left());
            if std::panic::catch_unwind(AssertUnwindSafe(|| srv.stop_within(grace))).is_err() {
                tracing::warn!("the NBD export server did not stop cleanly");
            }
            self.export_used = false;
        }
        self.exports.clear();
        self.listeners.clear();
        let mut failed = Vec::new();
        while let Some(a) = self.arrays.pop() {
            match a.array.stop(left()) {
                Ok(()) => {
                    let snap = a
                        .snap
                        .as_ref()
                        .map(|s| *s.lock().unwrap_or_else(|e| e.into_inner()));
                    if snap.is_some_and(|s| s.dirty) {
                        tracing::warn!(
                            "array {}: stopped, left dirty (it needs a resync after an unclean shutdown)",
                            a.name
                        );
                    } else if let Some(at) = snap.and_then(|s| s.resync_from_sector) {
                        tracing::info!(
                            "array {}: stopped before its resync ended; the superblocks record resync_offset {at} (sectors), where the next start resumes it",
                            a.name
                        );
                    } else {
                        tracing::info!("array {}: stopped clean", a.name);
                    }
                }
                Err(e @ crate::array::ArrayError::Timeout(..)) => {
                    // It names the array.
                    tracing::warn!("{e}");
                    failed.push(a.name.clone());
                }
                Err(e) => {
                    tracing::warn!("array {}: {e}", a.name);
                    failed.push(a.name.clone());
                }
            }
            for n in a.held() {
                self.reg.release(n);
            }
        }
        failed
    }
}

fn listener_text(v: &ListenerView) -> String {
    match v {
        ListenerView::Unix(p) => format!("nbd+unix:///?socket={}", p.display()),
        ListenerView::Tcp(a) => match a.ip() {
            IpAddr::V6(_) => format!("nbd://[{}]:{}/", a.ip(), a.port()),
            IpAddr::V4(_) => format!("nbd://{a}/"),
        },
    }
}

/// Whether `a` and `b` name the same file (device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// `filename` already backs bdev `other`.
fn file_taken(method: &str, filename: &str, other: &str) -> RpcError {
    RpcError::invalid_field(
        method,
        "filename",
        format!("{filename} is already bdev `{other}`; a file backs one bdev at a time"),
    )
}

fn export_err(e: &crate::export::ExportError) -> RpcError {
    use crate::export::ExportError as E;
    match e {
        E::Exists(_) => RpcError::errno(errno::EEXIST, e.to_string()),
        E::NoSuchExport(_) | E::NoSuchListener(_) => RpcError::errno(errno::ENODEV, e.to_string()),
        E::Listen(_, io) => {
            let no = io.raw_os_error().unwrap_or(match io.kind() {
                std::io::ErrorKind::AddrInUse => libc::EADDRINUSE,
                std::io::ErrorKind::AlreadyExists => errno::EEXIST,
                _ => errno::EIO,
            });
            RpcError::errno(no, e.to_string())
        }
        E::Stopped => RpcError::errno(errno::ECANCELED, e.to_string()),
        E::Invalid(_) => RpcError::invalid_params(format!("mdraid_nbd_export_add: {e}")),
    }
}

impl Host for Daemon {
    fn call(&mut self, call: Call) -> Result<Value, RpcError> {
        match call {
            Call::BdevMdraidCreate(p) => self.mdraid_create(p),
            Call::BdevMdraidDelete(p) => self.mdraid_delete(p),
            Call::BdevMdraidGetBdevs(p) => self.mdraid_get_bdevs(p),
            Call::BdevMdraidExamine(p) => self.mdraid_examine(p),
            Call::BdevMdraidZeroSuperblock(p) => self.mdraid_zero_superblock(p),
            Call::BdevMdraidAddBaseBdev(p) => self.mdraid_add_base_bdev(p),
            Call::BdevMdraidRemoveBaseBdev(p) => self.mdraid_remove_base_bdev(p),
            Call::BdevMdraidSetOptions(p) => self.mdraid_set_options(p),
            Call::BdevMdraidSyncAction(p) => self.mdraid_sync_action(p),
            Call::BdevMdraidSetWriteMostly(p) => self.mdraid_set_write_mostly(p),
            Call::BdevMallocCreate(p) => self.malloc_create(p),
            Call::BdevAioCreate(p) => self.aio_create(p),
            Call::BdevUringCreate(p) => self.uring_create(p),
            Call::BdevErrorCreate(p) => self.error_create(p),
            Call::BdevDelayCreate(p) => self.delay_create(p),
            Call::BdevErrorInjectError(p) => self.inject_error(p),
            Call::BdevMallocDelete(p) => {
                self.delete_device(Method::BdevMallocDelete, p.name.as_str())
            }
            Call::BdevAioDelete(p) => self.delete_device(Method::BdevAioDelete, p.name.as_str()),
            Call::BdevUringDelete(p) => {
                self.delete_device(Method::BdevUringDelete, p.name.as_str())
            }
            Call::BdevErrorDelete(p) => {
                self.delete_device(Method::BdevErrorDelete, p.name.as_str())
            }
            Call::BdevDelayDelete(p) => {
                self.delete_device(Method::BdevDelayDelete, p.name.as_str())
            }
            Call::BdevGetBdevs(p) => self.get_bdevs(p),
            Call::BdevWaitForExamine(_) => Ok(json!(true)),
            Call::MdraidNbdExportAdd(p) => self.export_add(p),
            Call::MdraidNbdExportRemove(p) => self.export_remove(p),
            Call::MdraidNbdGetExports(p) => self.get_exports(p),
            Call::MdraidNbdListenerAdd(p) => self.add_listener(p, true),
            Call::MdraidNbdListenerRemove(p) => self.remove_listener(p),
            Call::MdraidNbdGetListeners(_) => self.get_listeners(),
            Call::FrameworkWaitInit(_) => Ok(json!(true)),
            Call::SpdkKillInstance(p) => {
                let sig = match p.sig_name {
                    KillSignal::Sigint => libc::SIGINT,
                    KillSignal::Sigterm => libc::SIGTERM,
                    KillSignal::Sigquit => libc::SIGQUIT,
                    KillSignal::Sighup => libc::SIGHUP,
                    KillSignal::Sigkill => libc::SIGKILL,
                    KillSignal::Sigusr1 => libc::SIGUSR1,
                };
                self.kill = Some(sig);
                Ok(json!(true))
            }
            // Answered by mdraid_rpc's dispatch before they get here.
            Call::RpcGetMethods(_)
            | Call::SpdkGetVersion(_)
            | Call::SaveConfig(_)
            | Call::FrameworkGetSubsystems(_)
            | Call::FrameworkGetConfig(_) => Err(RpcError::method_not_found()),
        }
    }

    fn saved_config(&mut self) -> Result<Vec<Call>, RpcError> {
        let mut v: Vec<Call> = BdevMdraidSetOptions::saved(&self.process)
            .map(Call::BdevMdraidSetOptions)
            .into_iter()
            .collect();
        v.extend(self.devices.iter().map(|d| d.call.clone()));
        v.extend(
            self.arrays
                .iter()
                .map(|a| Call::BdevMdraidCreate(a.saved.clone())),
        );
        v.push(Call::BdevWaitForExamine(NoParams {}));
        v.extend(
            self.listeners
                .iter()
                .filter(|l| l.saved)
                .map(|l| Call::MdraidNbdListenerAdd(l.params.clone())),
        );
        v.extend(
            self.exports
                .iter()
                .map(|e| Call::MdraidNbdExportAdd(e.clone())),
        );
        Ok(v)
    }
}

// ------------------------------------------------------------ preflight

/// A device as the preflight sees it.
struct ShadowDev {
    block_size: u32,
    num_blocks: u64,
    /// The file holding its bytes (`None`: memory, all zero).
    file: Option<PathBuf>,
    kind: Method,
    claimed: bool,
}

fn file_probe(path: &Path, block_size: Option<u32>) -> Result<(u32, u64), String> {
    let md = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let ft = md.file_type();
    if !ft.is_file() && !ft.is_block_device() {
        return Err(format!(
            "{}: not a regular file or block device",
            path.display()
        ));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let size = if ft.is_block_device() {
        let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))
            .map_err(|e| format!("{}: {e}", path.display()))?
    } else {
        md.len()
    };
    let bs = block_size.filter(|b| *b != 0).unwrap_or(512);
    if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
        return Err(format!(
            "block_size {bs} is not a power of two between 512 and 65536"
        ));
    }
    let blocks = size / bs as u64;
    if blocks == 0 {
        return Err(format!(
            "{}: smaller than one block of {bs} bytes",
            path.display()
        ));
    }
    Ok((bs, blocks))
}

/// [`read_md_meta`] of a member file or block device of `size` bytes
/// (empty when it cannot be read).
fn read_file_sb(path: &Path, size: u64) -> Vec<u8> {
    let Ok(f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    read_md_meta(size, |off, len| {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off)
            .map(|()| buf)
            .map_err(|e| e.to_string())
    })
    .unwrap_or_default()
}

/// Check a whole config against this machine before anything is created:
/// names, files, member claims, and what the members' superblocks say
/// (create, assemble, or refuse). Reads only. `Err` names the entry.
pub fn preflight(cfg: &LoadedConfig) -> Result<(), ConfigError> {
    let mut devs: BTreeMap<String, ShadowDev> = BTreeMap::new();
    // Arrays by name: their level and members.
    let mut arrays: BTreeMap<String, (RaidLevel, Vec<String>)> = BTreeMap::new();
    // NBD exports: export name -> array.
    let mut exports: BTreeMap<String, String> = BTreeMap::new();
    let mut malloc_next = 0u32;
    let mut malloc_used = 0u64;
    for e in &cfg.entries {
        let at = |err: RpcError| ConfigError {
            location: Some(e.location.clone()),
            method: Some(e.call.method().name().to_string()),
            error: err,
        };
        let taken = |devs: &BTreeMap<String, ShadowDev>,
                     arrays: &BTreeMap<String, (RaidLevel, Vec<String>)>,
                     n: &str| {
            if devs.contains_key(n) || arrays.contains_key(n) {
                Err(RpcError::errno(
                    errno::EEXIST,
                    format!("bdev {n} already exists (defined earlier in the file)"),
                ))
            } else {
                Ok(())
            }
        };
        match &e.call {
            Call::BdevMallocCreate(p) => {
                let name = match &p.name {
                    Some(n) => n.to_string(),
                    None => loop {
                        let n = format!("Malloc{malloc_next}");
                        malloc_next += 1;
                        if !devs.contains_key(&n) && !arrays.contains_key(&n) {
                            break n;
                        }
                    },
                };
                taken(&devs, &arrays, &name).map_err(at)?;
                check_malloc(p, malloc_used).map_err(at)?;
                malloc_used += p.num_blocks * p.block_size as u64;
                devs.insert(
                    name,
                    ShadowDev {
                        block_size: p.block_size,
                        num_blocks: p.num_blocks,
                        file: None,
                        kind: Method::BdevMallocCreate,
                        claimed: false,
                    },
                );
            }
            Call::BdevAioCreate(BdevAioCreate {
                name,
                filename,
                block_size,
                ..
            })
            | Call::BdevUringCreate(BdevUringCreate {
                name,
                filename,
                block_size,
                ..
            }) => {
                let m = e.call.method().name();
                taken(&devs, &arrays, name.as_str()).map_err(at)?;
                if let Call::BdevAioCreate(p) = &e.call {
                    if p.readonly {
                        return Err(at(RpcError::invalid_field(
                            m,
                            "readonly",
                            "read-only members are not supported",
                        )));
                    }
                }
                let (bs, blocks) = file_probe(Path::new(filename), *block_size)
                    .map_err(|msg| at(RpcError::invalid_field(m, "filename", msg)))?;
                if let Some((other, _)) = devs.iter().find(|(_, d)| {
                    d.file
                        .as_deref()
                        .is_some_and(|f| same_file(f, Path::new(filename)))
                }) {
                    return Err(at(file_taken(m, filename, other)));
                }
                devs.insert(
                    name.to_string(),
                    ShadowDev {
                        block_size: bs,
                        num_blocks: blocks,
                        file: Some(PathBuf::from(filename)),
                        kind: e.call.method(),
                        claimed: false,
                    },
                );
            }
            Call::BdevErrorCreate(p) => {
                let name = p.bdev_name();
                taken(&devs, &arrays, &name).map_err(at)?;
                let b = shadow_claim(
                    &mut devs,
                    p.base_name.as_str(),
                    "base_name",
                    e.call.method(),
                )
                .map_err(at)?;
                devs.insert(
                    name,
                    ShadowDev {
                        kind: Method::BdevErrorCreate,
                        claimed: false,
                        ..b
                    },
                );
            }
            Call::BdevDelayCreate(p) => {
                taken(&devs, &arrays, p.name.as_str()).map_err(at)?;
                if p.p99_read_latency < p.avg_read_latency
                    || p.p99_write_latency < p.avg_write_latency
                {
                    return Err(at(RpcError::invalid_field(
                        "bdev_delay_create",
                        "p99_read_latency",
                        "p99 latency must not be smaller than the average latency",
                    )));
                }
                let b = shadow_claim(
                    &mut devs,
                    p.base_bdev_name.as_str(),
                    "base_bdev_name",
                    e.call.method(),
                )
                .map_err(at)?;
                devs.insert(
                    p.name.to_string(),
                    ShadowDev {
                        kind: Method::BdevDelayCreate,
                        claimed: false,
                        ..b
                    },
                );
            }
            Call::BdevMallocDelete(p)
            | Call::BdevAioDelete(p)
            | Call::BdevUringDelete(p)
            | Call::BdevErrorDelete(p)
            | Call::BdevDelayDelete(p) => {
                let create = match e.call.method() {
                    Method::BdevMallocDelete => Method::BdevMallocCreate,
                    Method::BdevAioDelete => Method::BdevAioCreate,
                    Method::BdevUringDelete => Method::BdevUringCreate,
                    Method::BdevErrorDelete => Method::BdevErrorCreate,
                    _ => Method::BdevDelayCreate,
                };
                match devs.get(p.name.as_str()) {
                    Some(d) if d.kind == create && !d.claimed => {
                        devs.remove(p.name.as_str());
                    }
                    Some(d) if d.claimed => {
                        return Err(at(RpcError::errno(
                            errno::EBUSY,
                            format!("bdev {} is claimed", p.name),
                        )))
                    }
                    _ => return Err(at(no_device(p.name.as_str()))),
                }
            }
            Call::BdevErrorInjectError(p) => match devs.get(p.name.as_str()) {
                Some(d) if d.kind == Method::BdevErrorCreate => {}
                _ => return Err(at(no_device(p.name.as_str()))),
            },
            Call::BdevMdraidCreate(p) => {
                taken(&devs, &arrays, p.name.as_str()).map_err(at)?;
                let mut probes = Vec::new();
                let shadow_probe = |d: &ShadowDev| Probe {
                    block_size: d.block_size,
                    num_blocks: d.num_blocks,
                    sb: match &d.file {
                        Some(path) if d.num_blocks * d.block_size as u64 >= 8192 => {
                            read_file_sb(path, d.num_blocks * d.block_size as u64)
                        }
                        Some(_) => Vec::new(),
                        None => vec![0; SB_BLOCK_BYTES],
                    },
                };
                for (i, m) in p.base_bdevs.iter().enumerate() {
                    let f = format!("base_bdevs[{i}]");
                    if arrays.contains_key(m.as_str()) {
                        return Err(at(field(
                            f,
                            format!("`{m}` is an mdraid array; arrays cannot be members"),
                        )));
                    }
                    let Some(d) = devs.get(m.as_str()) else {
                        return Err(at(field(f, format!("bdev `{m}` does not exist"))));
                    };
                    if d.claimed {
                        return Err(at(field(f, format!("bdev `{m}` is already claimed"))));
                    }
                    probes.push(shadow_probe(d));
                }
                let (p, _, plan) = plan_completed(
                    p,
                    probes,
                    || {
                        devs.iter()
                            .filter(|(_, d)| !d.claimed)
                            .map(|(n, d)| {
                                (
                                    BdevName::new(n).expect("a defined name is valid"),
                                    shadow_probe(d),
                                )
                            })
                            .collect()
                    },
                    || Uuid::random().0,
                );
                plan.map_err(at)?;
                for m in p.base_bdevs.iter() {
                    if let Some(d) = devs.get_mut(m.as_str()) {
                        d.claimed = true;
                    }
                }
                arrays.insert(
                    p.name.to_string(),
                    (
                        p.raid_level,
                        p.base_bdevs.iter().map(|n| n.to_string()).collect(),
                    ),
                );
            }
            Call::BdevMdraidDelete(p) => {
                let name = p.name.as_str();
                if let Some((export, _)) = exports.iter().find(|(_, a)| a.as_str() == name) {
                    return Err(at(RpcError::errno(
                        errno::EBUSY,
                        format!("array {name} is exported over NBD as `{export}`; remove the export first (mdraid_nbd_export_remove)"),
                    )));
                }
                if arrays.remove(name).is_none() {
                    return Err(at(no_device(name)));
                }
            }
            Call::BdevMdraidSyncAction(p) => {
                let Some((level, _)) = arrays.get(p.name.as_str()) else {
                    return Err(at(no_device(p.name.as_str())));
                };
                let redundant = !matches!(level, RaidLevel::Raid0 | RaidLevel::Linear);
                p.check_redundant(&level.to_string(), redundant)
                    .map_err(at)?;
            }
            Call::BdevMdraidSetWriteMostly(BdevMdraidSetWriteMostly { name, .. })
                if !arrays.contains_key(name.as_str()) =>
            {
                return Err(at(no_device(name.as_str())));
            }
            Call::BdevMdraidAddBaseBdev(p) => {
                let Some((_, members)) = arrays.get_mut(p.raid_bdev.as_str()) else {
                    return Err(at(RpcError::invalid_field(
                        "bdev_mdraid_add_base_bdev",
                        "raid_bdev",
                        format!(
                            "`{}` is not an mdraid array defined earlier in the file",
                            p.raid_bdev
                        ),
                    )));
                };
                shadow_claim(
                    &mut devs,
                    p.base_bdev.as_str(),
                    "base_bdev",
                    e.call.method(),
                )
                .map_err(at)?;
                members.push(p.base_bdev.to_string());
            }
            Call::BdevMdraidRemoveBaseBdev(p) => {
                let name = p.name.as_str();
                let Some((array, (level, members))) = arrays
                    .iter_mut()
                    .find(|(_, (_, m))| m.iter().any(|n| n == name))
                else {
                    return Err(at(RpcError::invalid_field(
                        "bdev_mdraid_remove_base_bdev",
                        "name",
                        format!(
                            "bdev `{name}` is not a member of an array defined earlier in the file"
                        ),
                    )));
                };
                if matches!(level, RaidLevel::Raid0 | RaidLevel::Linear) {
                    return Err(at(RpcError::errno(
                        errno::EBUSY,
                        format!("bdev_mdraid_remove_base_bdev: `{name}` holds data no other member of `{array}` has: removing it would take the array offline"),
                    )));
                }
                members.retain(|n| n != name);
                if let Some(d) = devs.get_mut(name) {
                    d.claimed = false;
                }
            }
            Call::SpdkKillInstance(_) => {
                return Err(at(RpcError::invalid_params(
                    "spdk_kill_instance: stops the daemon; a config cannot carry it",
                )));
            }
            Call::BdevMdraidZeroSuperblock(_) => {
                return Err(at(RpcError::invalid_params(
                    "bdev_mdraid_zero_superblock: wipes a member at every start; a config cannot carry it",
                )));
            }
            Call::MdraidNbdListenerAdd(p) => {
                if let Some((ip, port)) = p.tcp() {
                    if !ip.is_loopback() {
                        return Err(at(RpcError::invalid_field(
                            "mdraid_nbd_listener_add",
                            "address",
                            format!("{ip} is not a loopback address"),
                        )));
                    }
                    // Taken by another process: found now, before a member
                    // is touched (listeners come after the arrays).
                    if port != 0 {
                        if let Err(err) = std::net::TcpListener::bind((ip, port)) {
                            return Err(at(RpcError::invalid_field(
                                "mdraid_nbd_listener_add",
                                "port",
                                format!("{ip}:{port}: {err}"),
                            )));
                        }
                    }
                }
                if let Some(path) = &p.unix_path {
                    if UnixStream::connect(path).is_ok() {
                        return Err(at(RpcError::invalid_field(
                            "mdraid_nbd_listener_add",
                            "unix_path",
                            format!("{path}: a process is serving this socket"),
                        )));
                    }
                }
                if let Some(path) = &p.unix_path {
                    let parent = Path::new(path)
                        .parent()
                        .filter(|p| !p.as_os_str().is_empty());
                    if let Some(dir) = parent {
                        if !dir.is_dir() {
                            return Err(at(RpcError::invalid_field(
                                "mdraid_nbd_listener_add",
                                "unix_path",
                                format!("directory {} does not exist", dir.display()),
                            )));
                        }
                    }
                }
            }
            Call::MdraidNbdExportAdd(p) => {
                if !arrays.contains_key(p.bdev_name.as_str()) {
                    return Err(at(RpcError::invalid_field(
                        "mdraid_nbd_export_add",
                        "bdev_name",
                        format!(
                            "`{}` is not an mdraid array defined earlier in the file",
                            p.bdev_name
                        ),
                    )));
                }
                if exports
                    .insert(p.export_name().to_string(), p.bdev_name.to_string())
                    .is_some()
                {
                    return Err(at(RpcError::errno(
                        errno::EEXIST,
                        format!("NBD export `{}` defined twice", p.export_name()),
                    )));
                }
            }
            Call::MdraidNbdExportRemove(p) if exports.remove(&p.export_name).is_none() => {
                return Err(at(RpcError::errno(
                    errno::ENODEV,
                    format!(
                        "no NBD export `{}` defined earlier in the file",
                        p.export_name
                    ),
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

fn shadow_claim(
    devs: &mut BTreeMap<String, ShadowDev>,
    base: &str,
    f: &str,
    m: Method,
) -> Result<ShadowDev, RpcError> {
    let Some(b) = devs.get_mut(base) else {
        return Err(RpcError::invalid_field(
            m.name(),
            f,
            format!("bdev `{base}` does not exist"),
        ));
    };
    if b.claimed {
        return Err(RpcError::invalid_field(
            m.name(),
            f,
            format!("bdev `{base}` is already claimed"),
        ));
    }
    b.claimed = true;
    Ok(ShadowDev {
        block_size: b.block_size,
        num_blocks: b.num_blocks,
        file: b.file.clone(),
        kind: b.kind,
        claimed: false,
    })
}

// ------------------------------------------------------------ RPC server

/// JSON-RPC on a unix socket (SPDK's framing), one thread per connection.
pub struct RpcServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    conns: Arc<AtomicUsize>,
    accept: Option<std::thread::JoinHandle<()>>,
}

/// Serve `host` on a connected stream until it closes or `stop` is set.
fn serve_conn<H: Host + Send + 'static>(
    mut s: UnixStream,
    host: &Mutex<H>,
    stop: &AtomicBool,
    on_answer: &(dyn Fn(&mut H) + Sync),
) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let mut conn = Connection::with_limit(RPC_MAX_REQUEST);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                continue;
            }
            Err(_) => return,
        };
        let mut out = Vec::new();
        let st = {
            let mut h = host.lock().unwrap_or_else(|e| e.into_inner());
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                conn.feed(&mut *h, &buf[..n], &mut out)
            }));
            match r {
                Ok(st) => {
                    if !out.is_empty() {
                        let _ = s.write_all(&out);
                        out.clear();
                    }
                    on_answer(&mut h);
                    st
                }
                Err(_) => {
                    tracing::error!("an RPC handler panicked; closing its connection");
                    ConnState::Close
                }
            }
        };
        if st == ConnState::Close {
            return;
        }
    }
}

impl RpcServer {
    /// Listen on `path` (a stale socket file is replaced; a live one is an
    /// error) and serve `host`. `on_answer` runs under the host's lock after
    /// each batch of answers is written (the daemon raises the signal
    /// `spdk_kill_instance` asked for there).
    pub fn start<H: Host + Send + 'static>(
        path: &Path,
        host: Arc<Mutex<H>>,
        on_answer: Arc<dyn Fn(&mut H) + Send + Sync>,
    ) -> std::io::Result<RpcServer> {
        let listener = Self::bind(path)?;
        Self::serve(path, listener, host, on_answer)
    }

    /// The first half of [`RpcServer::start`]: the socket, bound (clients
    /// that connect wait until [`RpcServer::serve`] accepts them).
    pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
        crate::export::bind_unix(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    /// The second half of [`RpcServer::start`]: serve `host` on `listener`,
    /// bound at `path` by [`RpcServer::bind`].
    pub fn serve<H: Host + Send + 'static>(
        path: &Path,
        listener: UnixListener,
        host: Arc<Mutex<H>>,
        on_answer: Arc<dyn Fn(&mut H) + Send + Sync>,
    ) -> std::io::Result<RpcServer> {
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(AtomicUsize::new(0));
        let (st, cn) = (stop.clone(), conns.clone());
        let accept = std::thread::Builder::new()
            .name("rpc_accept".into())
            .spawn(move || loop {
                if st.load(Ordering::Acquire) {
                    return;
                }
                match listener.accept() {
                    Ok((s, _)) => {
                        if cn.load(Ordering::Acquire) >= RPC_MAX_CONNECTIONS {
                            tracing::warn!("RPC: too many connections; closing a new one");
                            continue;
                        }
                        let _ = s.set_nonblocking(false);
                        cn.fetch_add(1, Ordering::AcqRel);
                        let (h, st2, cn2, oa) =
                            (host.clone(), st.clone(), cn.clone(), on_answer.clone());
                        let spawned =
                            std::thread::Builder::new()
                                .name("rpc_conn".into())
                                .spawn(move || {
                                    serve_conn(s, &h, &st2, &*oa);
                                    cn2.fetch_sub(1, Ordering::AcqRel);
                                });
                        if spawned.is_err() {
                            cn.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => {
                        tracing::warn!("RPC accept: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })?;
        Ok(RpcServer {
            path: path.to_path_buf(),
            stop,
            conns,
            accept: Some(accept),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop accepting, let calls in progress answer, close every
    /// connection (waiting at most `timeout`), remove the socket file.
    pub fn stop(&mut self, timeout: Duration) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let deadline = Instant::now() + timeout;
        while self.conns.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        if self.accept.is_some() {
            self.stop(Duration::from_secs(1));
        }
    }
}

// ------------------------------------------------------------ client

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Rpc(RpcError),
}

/// Call `method` on the daemon at `sock` and wait (at most `timeout`) for
/// its answer.
pub fn rpc_call(
    sock: &Path,
    method: &str,
    params: Option<Value>,
    timeout: Duration,
) -> Result<Value, ClientError> {
    let io = |what: &str, e| ClientError::Io(format!("{}: {what}", sock.display()), e);
    let mut s = UnixStream::connect(sock).map_err(|e| io("connect", e))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| io("socket", e))?;
    let mut req = json!({"jsonrpc": "2.0", "method": method, "id": 1});
    if let Some(p) = params {
        req["params"] = p;
    }
    let bytes = serde_json::to_vec(&req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    s.write_all(&bytes).map_err(|e| io("send", e))?;
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut it = serde_json::Deserializer::from_slice(&got).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => {
                if let Some(e) = v.get("error") {
                    let e: RpcError = serde_json::from_value(e.clone()).map_err(|x| {
                        ClientError::Protocol(format!("malformed error response {e}: {x}"))
                    })?;
                    return Err(ClientError::Rpc(e));
                }
                return v
                    .get("result")
                    .cloned()
                    .ok_or_else(|| ClientError::Protocol(format!("response without result: {v}")));
            }
            Some(Err(e)) if !e.is_eof() => {
                return Err(ClientError::Protocol(format!("malformed response: {e}")))
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(ClientError::Protocol(format!(
                "no answer to {method} within {timeout:?}"
            )));
        }
        match s.read(&mut buf) {
            Ok(0) => {
                return Err(ClientError::Protocol(
                    "the daemon closed the connection without answering".into(),
                ))
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(io("receive", e)),
        }
    }
}

/// Location of a config entry, for messages (re-exported for the CLI).
pub fn describe_location(l: &Location) -> String {
    l.to_string()
}

/// Record in the array's saved create params (what `save_config` writes)
/// whether member `name` is write-mostly.
fn set_saved_write_mostly(rec: &mut ArrayRecord, name: Option<&str>, on: bool) {
    let Some(name) = name else { return };
    let mut wm: Vec<BdevName> = rec
        .saved
        .write_mostly
        .iter()
        .filter(|n| n.as_str() != name)
        .cloned()
        .collect();
    if on {
        wm.push(BdevName::new(name).expect("a registered name is valid"));
    }
    rec.saved.write_mostly = NameList(wm);
}

/// Record the members the array holds, in role order, as its saved create
/// params' `base_bdevs` (what `save_config` writes).
fn set_saved_members(rec: &mut ArrayRecord) {
    let names: Vec<BdevName> = rec
        .held()
        .map(|n| BdevName::new(n).expect("a registered name is valid"))
        .collect();
    rec.saved.base_bdevs = NameList(names);
}

impl ArrayRecord {
    /// Names of the member devices the array holds (claims), in role
    /// order: not missing, not released by `bdev_mdraid_remove_base_bdev`.
    fn held(&self) -> impl Iterator<Item = &str> {
        self.roles
            .iter()
            .zip(&self.released)
            .filter(|(_, released)| !**released)
            .filter_map(|(n, _)| n.as_deref())
    }
}
