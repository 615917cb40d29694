//! The `bdev_mdraid_*` methods on SPDK's RPC server (registered by the C
//! shim's constructors, SPDK_RPC_REGISTER, state SPDK_RPC_RUNTIME).
//!
//! Params come as SPDK's parsed JSON values; they are written back to JSON
//! text with `spdk_json_write_val` and decoded by the shared `rpc` crate's
//! serde types, so bad params get the same `-32602` message, naming the
//! field, as in the embedded host. Errors go out through
//! `spdk_jsonrpc_send_error_response`.
//!
//! `bdev_mdraid_create` runs on the app thread, asynchronously: open and
//! claim the members, read the 4 KiB where md keeps its superblock on each,
//! plan (`crate::plan`), write new superblocks (write, then flush), then
//! register the io_device, start the metadata path and register the bdev.
//! Any failure undoes what was done — superblocks written are wiped,
//! claims released, descriptors closed — before the error is sent: a
//! failed create leaves no bdev, claim or superblock.

use std::cell::RefCell;
use std::ffi::c_void;
use std::rc::Rc;
use std::sync::Arc;

use bdev_raid::assemble::md_uuid;
use bdev_raid::ondisk::{Superblock, SB_BLOCK_BYTES, SB_OFFSET_BYTES};
use bdev_raid::state::ArrayState;
use mdraid_rpc::error::errno;
use mdraid_rpc::method::decode;
use mdraid_rpc::params::{BdevMdraidCreate, BdevMdraidDelete, BdevMdraidGetBdevs};
use mdraid_rpc::types::{BdevName, NameList, RaidCategory, RaidLevel, RaidState, Uuid as RpcUuid};
use mdraid_rpc::RpcError;
use serde_json::value::RawValue;

use crate::array::{Array, Info, Member};
use crate::meta::{self, MetaHost, Owned};
use crate::plan::{field, new_superblocks, plan_array, Plan, Probe, CREATE};
use crate::spdk::{
    guard, io_once, json_text, log_notice, random_uuid, Bdev, BdevOp, Desc, DmaBuf, IoChannel,
    Request, Thread,
};
use crate::sys;
use mdraid_rpc::types::BitmapSetting;

const ENODEV: i32 = 19;
const EPERM: i32 = 1;

/// Decode `params` for `method` as the rpc crate does.
///
/// # Safety
/// `params` is null or SPDK's parsed params of a live request.
unsafe fn params<T>(method: &str, params: *const sys::spdk_json_val) -> Result<T, RpcError>
where
    T: serde::de::DeserializeOwned + mdraid_rpc::params::Validate,
{
    let text = if params.is_null() {
        None
    } else {
        // SAFETY: the caller's contract.
        Some(unsafe { json_text(params) }.ok_or_else(|| {
            RpcError::invalid_params(format!("{method}: params could not be read"))
        })?)
    };
    let raw = match text {
        Some(t) => Some(RawValue::from_string(t).map_err(|e| {
            RpcError::invalid_params(format!("{method}: params are not valid JSON: {e}"))
        })?),
        None => None,
    };
    decode::<T>(method, raw.as_deref())
}

fn no_device(name: &str) -> RpcError {
    RpcError::errno(ENODEV, format!("bdev {name} not found: No such device"))
}

/// Run a method body. A panic is logged; the request, dropped
/// unanswered, then answers `-32603` by itself.
fn run(what: &str, req: *mut sys::spdk_jsonrpc_request, body: impl FnOnce(Request)) {
    // SAFETY: SPDK hands each method a live, unanswered request.
    let Some(r) = (unsafe { Request::new(req) }) else {
        return;
    };
    guard(what, (), || body(r))
}

// ------------------------------------------------------------ get_bdevs

/// RPC method (registered by the shim).
///
/// # Safety
/// `req` must be a live, unanswered request and `p` null or its params.
#[no_mangle]
pub unsafe extern "C" fn mdraid_rpc_bdev_mdraid_get_bdevs(
    req: *mut sys::spdk_jsonrpc_request,
    p: *const sys::spdk_json_val,
) {
    run("bdev_mdraid_get_bdevs", req, |r| {
        // SAFETY: p is this request's params.
        let p: BdevMdraidGetBdevs = match unsafe { params("bdev_mdraid_get_bdevs", p) } {
            Ok(p) => p,
            Err(e) => return r.rpc_error(&e),
        };
        let mut v: Vec<_> = crate::module::all().iter().map(|a| a.rpc_info()).collect();
        if let Some(n) = &p.name {
            v.retain(|a| a.name == n.as_str());
            if v.is_empty() {
                return r.rpc_error(&no_device(n.as_str()));
            }
        }
        v.retain(|a| match p.category {
            RaidCategory::All => true,
            RaidCategory::Online => a.state == RaidState::Online,
            RaidCategory::Offline => a.state == RaidState::Offline,
            RaidCategory::Configuring => a.state == RaidState::Configuring,
        });
        match serde_json::to_string(&v) {
            Ok(s) => r.result(&s),
            Err(e) => r.rpc_error(&RpcError::internal(e.to_string())),
        }
    })
}

// ------------------------------------------------------------ delete

/// RPC method (registered by the shim).
///
/// # Safety
/// `req` must be a live, unanswered request and `p` null or its params.
#[no_mangle]
pub unsafe extern "C" fn mdraid_rpc_bdev_mdraid_delete(
    req: *mut sys::spdk_jsonrpc_request,
    p: *const sys::spdk_json_val,
) {
    run("bdev_mdraid_delete", req, |r| {
        // SAFETY: p is this request's params.
        let p: BdevMdraidDelete = match unsafe { params("bdev_mdraid_delete", p) } {
            Ok(p) => p,
            Err(e) => return r.rpc_error(&e),
        };
        let Some(a) = crate::module::find(p.name.as_str()) else {
            return r.rpc_error(&no_device(p.name.as_str()));
        };
        a.clear_sb
            .store(p.clear_sb, std::sync::atomic::Ordering::Release);
        unsafe extern "C" fn done(arg: *mut c_void, rc: i32) {
            guard("bdev_mdraid_delete completion", (), || {
                // SAFETY: arg is the boxed request given to spdk_bdev_unregister.
                let r = unsafe { Box::from_raw(arg as *mut Request) };
                if rc == 0 {
                    r.result("true")
                } else {
                    r.rpc_error(&RpcError::from_errno(-rc))
                }
            })
        }
        log_notice!(
            "mdraid {}: deleting{}",
            a.name,
            if p.clear_sb {
                " and clearing its superblocks"
            } else {
                ""
            }
        );
        let arg = Box::into_raw(Box::new(r));
        // SAFETY: the bdev is registered (it is in the registry); `done`
        // takes back the request box once the bdev is destructed.
        unsafe { sys::spdk_bdev_unregister(a.bdev_ptr(), Some(done), arg.cast()) };
    })
}

// ------------------------------------------------------------ create

/// A create in progress (on the app thread).
struct Creating {
    req: Option<Request>,
    p: BdevMdraidCreate,
    thread: Thread,
    /// In `base_bdevs` order.
    descs: Vec<Option<Desc>>,
    chans: Vec<Option<IoChannel>>,
    probes: Vec<Option<Probe>>,
    pending: usize,
    error: Option<RpcError>,
}

type Ctx = Rc<RefCell<Creating>>;

impl Creating {
    /// Undo everything and answer with `e`.
    fn fail(&mut self, e: RpcError) {
        self.chans.clear();
        self.descs.clear();
        crate::module::unreserve(self.p.name.as_str());
        if let Some(r) = self.req.take() {
            r.rpc_error(&e);
        }
    }
}

/// RPC method (registered by the shim).
///
/// # Safety
/// `req` must be a live, unanswered request and `p` null or its params.
#[no_mangle]
pub unsafe extern "C" fn mdraid_rpc_bdev_mdraid_create(
    req: *mut sys::spdk_jsonrpc_request,
    p: *const sys::spdk_json_val,
) {
    run(CREATE, req, |r| {
        // SAFETY: p is this request's params.
        let p: BdevMdraidCreate = match unsafe { params(CREATE, p) } {
            Ok(p) => p,
            Err(e) => return r.rpc_error(&e),
        };
        if let Err(e) = crate::plan::check_supported(&p) {
            return r.rpc_error(&e);
        }
        let name = p.name.as_str().to_string();
        if Bdev::by_name(&name).is_some() || !crate::module::reserve(&name) {
            return r.rpc_error(&RpcError::errno(
                errno::EEXIST,
                format!("bdev {name} already exists: File exists"),
            ));
        }
        let Some(thread) = Thread::current() else {
            crate::module::unreserve(&name);
            return r.rpc_error(&RpcError::internal("not on an SPDK thread"));
        };
        let c = Rc::new(RefCell::new(Creating {
            req: Some(r),
            p,
            thread,
            descs: Vec::new(),
            chans: Vec::new(),
            probes: Vec::new(),
            pending: 0,
            error: None,
        }));
        if let Err(e) = open_members(&c) {
            c.borrow_mut().fail(e);
            return;
        }
        read_superblocks(&c);
    })
}

/// Open, claim and get a channel of every member.
fn open_members(c: &Ctx) -> Result<(), RpcError> {
    let mut g = c.borrow_mut();
    let names: Vec<String> = g.p.base_bdevs.iter().map(|n| n.to_string()).collect();
    for (i, m) in names.iter().enumerate() {
        let f = format!("base_bdevs[{i}]");
        if crate::module::is_array(m) {
            return Err(field(
                f,
                format!("`{m}` is an mdraid array; arrays cannot be members"),
            ));
        }
        let mut d = match Desc::open(m) {
            Ok(d) => d,
            Err(rc) if rc == -ENODEV => {
                return Err(field(f, format!("bdev `{m}` does not exist")));
            }
            // SPDK refuses to open a bdev claimed for exclusive write.
            Err(rc) if rc == -EPERM => {
                return Err(field(f, format!("bdev `{m}` is already claimed")));
            }
            Err(rc) => {
                return Err(RpcError::errno(
                    -rc,
                    format!(
                        "{CREATE}: {f} `{m}`: cannot open it: {}",
                        errno::strerror(-rc)
                    ),
                ))
            }
        };
        if d.claim().is_err() {
            return Err(field(
                f,
                format!("bdev `{m}` is already claimed by another module"),
            ));
        }
        let Some(ch) = d.channel() else {
            return Err(RpcError::errno(
                errno::ENOMEM,
                format!("{CREATE}: {f} `{m}`: no I/O channel"),
            ));
        };
        g.descs.push(Some(d));
        g.chans.push(Some(ch));
    }
    Ok(())
}

/// Read the superblock area of every member; then `planned`.
fn read_superblocks(c: &Ctx) {
    let n = c.borrow().descs.len();
    let mut submitted = 0;
    {
        let mut g = c.borrow_mut();
        g.probes = vec![None; n];
        let sb_wanted = g.p.superblock;
        for i in 0..n {
            let d = g.descs[i].as_ref().unwrap();
            let b = d.bdev();
            let (bs, nb) = (u64::from(b.block_size()), b.num_blocks());
            let probe = Probe {
                block_size: b.block_size(),
                num_blocks: nb,
                sb: Vec::new(),
            };
            let fits = bs <= SB_BLOCK_BYTES as u64
                && SB_OFFSET_BYTES % bs == 0
                && nb * bs >= SB_OFFSET_BYTES + SB_BLOCK_BYTES as u64;
            if !fits || !(sb_wanted || nb * bs >= 8192) {
                g.probes[i] = Some(probe);
                continue;
            }
            let Some(buf) = DmaBuf::zeroed(SB_BLOCK_BYTES, 4096) else {
                g.error = Some(RpcError::errno(
                    errno::ENOMEM,
                    format!("{CREATE}: no DMA memory"),
                ));
                break;
            };
            let c2 = c.clone();
            let name = b.name();
            let res = io_once(
                d,
                g.chans[i].as_ref().unwrap(),
                BdevOp::Read,
                SB_OFFSET_BYTES / bs,
                SB_BLOCK_BYTES as u64 / bs,
                buf,
                move |ok, buf| {
                    {
                        let mut g = c2.borrow_mut();
                        g.pending -= 1;
                        if ok {
                            g.probes[i] = Some(Probe {
                                sb: buf.as_ref().to_vec(),
                                ..probe
                            });
                        } else if g.error.is_none() {
                            g.error = Some(RpcError::errno(
                                errno::EIO,
                                format!("{CREATE}: base_bdevs[{i}] `{name}`: reading its superblock area: I/O error"),
                            ));
                        }
                    }
                    if c2.borrow().pending == 0 {
                        planned(&c2);
                    }
                },
            );
            match res {
                Ok(()) => submitted += 1,
                Err((rc, _)) => {
                    g.error = Some(RpcError::errno(
                        -rc,
                        format!(
                            "{CREATE}: base_bdevs[{i}]: reading its superblock area: {}",
                            errno::strerror(-rc)
                        ),
                    ));
                    break;
                }
            }
        }
        g.pending += submitted;
    }
    if submitted == 0 {
        planned(c);
    }
}

/// Every probe is in: plan, and carry the plan out.
fn planned(c: &Ctx) {
    let (plan, p) = {
        let mut g = c.borrow_mut();
        if let Some(e) = g.error.take() {
            g.fail(e);
            return;
        }
        let probes: Vec<Probe> = g
            .probes
            .iter()
            .map(|x| x.clone().expect("every probe"))
            .collect();
        // This host has no write-intent bitmap yet: arrays are created
        // without one unless asked (and asking is refused before this).
        let mut p = g.p.clone();
        if p.bitmap == BitmapSetting::Default {
            p.bitmap = BitmapSetting::Off;
        }
        let uuid = random_uuid();
        (plan_array(&p, &probes, move || uuid), g.p.clone())
    };
    match plan {
        Err(e) => c.borrow_mut().fail(e),
        Ok(Plan::Create {
            uuid,
            geom,
            strip_kb,
            data_offset,
            layouts,
            member_data_blocks: _,
            bitmap: _,
        }) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let device_uuids = c
                .borrow()
                .descs
                .iter()
                .map(|d| d.as_ref().unwrap().bdev().uuid())
                .collect();
            let sbs = new_superblocks(
                &geom,
                uuid,
                p.name.as_str(),
                device_uuids,
                &layouts,
                data_offset,
                now,
            );
            write_superblocks(c, sbs, move |c, sbs| {
                let bs = u64::from(geom.block_size());
                let n = sbs.len();
                let start = Start {
                    uuid,
                    geom,
                    strip_kb,
                    data_offset_blocks: data_offset * 512 / bs,
                    role_of: (0..n).map(Some).collect(),
                    state: ArrayState::new_in_sync(n),
                    sbs: Some(sbs.into_iter().map(Some).collect()),
                    created: true,
                    dirty: false,
                };
                start_array(c, start);
            });
        }
        Ok(Plan::Assemble {
            asm,
            data_offset,
            member_data_blocks: _,
        }) => {
            let bs = u64::from(asm.geometry.block_size());
            for (_, why) in &asm.refused {
                log_notice!("mdraid {}: member refused: {why}", p.name);
            }
            let strip_kb = asm
                .superblocks
                .iter()
                .flatten()
                .next()
                .map_or(0, |s| s.chunksize)
                / 2;
            let start = Start {
                uuid: asm.set_uuid,
                geom: asm.geometry.clone(),
                strip_kb,
                data_offset_blocks: data_offset * 512 / bs,
                role_of: asm.member_of_role.clone(),
                state: asm.state.clone(),
                sbs: Some(asm.superblocks.clone()),
                created: false,
                dirty: asm.dirty,
            };
            start_array(c, start);
        }
        Ok(Plan::Bare { geom, strip_kb }) => {
            let n = geom.members();
            let start = Start {
                uuid: p.uuid.map(|u| u.0).unwrap_or_else(random_uuid),
                geom,
                strip_kb,
                data_offset_blocks: 0,
                role_of: (0..n).map(Some).collect(),
                state: ArrayState::new_writable(n),
                sbs: None,
                created: false,
                dirty: false,
            };
            start_array(c, start);
        }
    }
}

/// What runs once the superblocks are written.
type Next = Box<dyn FnOnce(&Ctx, Vec<Superblock>)>;

/// Write each member's new superblock (write, then flush); then `next`.
/// On any failure every member's superblock area is wiped (they were all
/// blank: a new array is only made on members without one) and the create
/// fails.
fn write_superblocks(
    c: &Ctx,
    sbs: Vec<Superblock>,
    next: impl FnOnce(&Ctx, Vec<Superblock>) + 'static,
) {
    struct W {
        left: usize,
        failed: Option<String>,
        next: Option<Next>,
        sbs: Vec<Superblock>,
    }
    let w = Rc::new(RefCell::new(W {
        left: sbs.len(),
        failed: None,
        next: Some(Box::new(next)),
        sbs: sbs.clone(),
    }));
    let finish = {
        let (c, w) = (c.clone(), w.clone());
        move || {
            let failed = w.borrow().failed.clone();
            match failed {
                None => {
                    let (next, sbs) = {
                        let mut g = w.borrow_mut();
                        (g.next.take(), std::mem::take(&mut g.sbs))
                    };
                    if let Some(f) = next {
                        f(&c, sbs)
                    }
                }
                Some(msg) => {
                    let e = RpcError::errno(errno::EIO, format!("{CREATE}: {msg}"));
                    let all: Vec<usize> = (0..c.borrow().descs.len()).collect();
                    wipe_then_fail(&c, &all, e);
                }
            }
        }
    };
    let finish: Rc<dyn Fn()> = Rc::new(finish);
    let g = c.borrow();
    for (i, sb) in sbs.iter().enumerate() {
        let d = g.descs[i].as_ref().unwrap();
        let ch = g.chans[i].as_ref().unwrap();
        let bs = u64::from(d.bdev().block_size());
        let mut data = sb.encode();
        data.resize(SB_BLOCK_BYTES, 0);
        let name = d.bdev().name();
        let flush = d.bdev().write_cache() && d.bdev().supports(sys::SPDK_BDEV_IO_TYPE_FLUSH);
        let nb = d.bdev().num_blocks();
        let done = {
            let (w, finish) = (w.clone(), finish.clone());
            move |ok: bool| {
                {
                    let mut g = w.borrow_mut();
                    g.left -= 1;
                    if !ok && g.failed.is_none() {
                        g.failed = Some(format!(
                            "base_bdevs[{i}] `{name}`: writing the superblock: I/O error"
                        ));
                    }
                }
                if w.borrow().left == 0 {
                    finish()
                }
            }
        };
        let Some(buf) = DmaBuf::from_slice(&data, 4096) else {
            w.borrow_mut().failed.get_or_insert("no DMA memory".into());
            w.borrow_mut().left -= 1;
            continue;
        };
        let c2 = c.clone();
        let res = io_once(
            d,
            ch,
            BdevOp::Write,
            SB_OFFSET_BYTES / bs,
            SB_BLOCK_BYTES as u64 / bs,
            buf,
            move |ok, buf| {
                if !ok || !flush {
                    return done(ok);
                }
                let g = c2.borrow();
                let (d, ch) = (g.descs[i].as_ref().unwrap(), g.chans[i].as_ref().unwrap());
                let done = Rc::new(RefCell::new(Some(done)));
                let d2 = done.clone();
                let r = io_once(d, ch, BdevOp::Flush, 0, nb, buf, move |ok, _| {
                    if let Some(f) = d2.borrow_mut().take() {
                        f(ok)
                    }
                });
                drop(g);
                if r.is_err() {
                    if let Some(f) = done.borrow_mut().take() {
                        f(false)
                    }
                }
            },
        );
        if res.is_err() {
            let mut gw = w.borrow_mut();
            gw.failed
                .get_or_insert(format!("base_bdevs[{i}]: the superblock write was refused"));
            gw.left -= 1;
        }
    }
    drop(g);
    if w.borrow().left == 0 {
        // Nothing in flight (everything refused at once).
        finish();
    }
}

/// Wipe the superblock area of members `which`, then fail with `e`.
fn wipe_then_fail(c: &Ctx, which: &[usize], e: RpcError) {
    let n = {
        let g = c.borrow();
        let targets: Vec<(&Desc, &IoChannel)> = which
            .iter()
            .filter_map(|&i| Some((g.descs[i].as_ref()?, g.chans[i].as_ref()?)))
            .collect();
        let (c2, e2) = (c.clone(), e.clone());
        meta::wipe_all(&targets, move || c2.borrow_mut().fail(e2))
    };
    if n == 0 {
        c.borrow_mut().fail(e);
    }
}

/// What the array is started from.
struct Start {
    uuid: [u8; 16],
    geom: bdev_raid::layout::Geometry,
    strip_kb: u32,
    data_offset_blocks: u64,
    /// Index into `base_bdevs` of each role's member.
    role_of: Vec<Option<usize>>,
    state: ArrayState,
    /// Superblock per role; None without superblocks.
    sbs: Option<Vec<Option<Superblock>>>,
    /// This create wrote the superblocks (wipe them if it fails).
    created: bool,
    dirty: bool,
}

fn start_array(c: &Ctx, s: Start) {
    let (p, thread) = {
        let g = c.borrow();
        (g.p.clone(), g.thread)
    };
    let n = s.role_of.len();
    let mut descs: Vec<Option<Desc>> = (0..n).map(|_| None).collect();
    let mut chans: Vec<Option<IoChannel>> = (0..n).map(|_| None).collect();
    let mut members: Vec<Option<Member>> = (0..n).map(|_| None).collect();
    {
        let mut g = c.borrow_mut();
        for (role, idx) in s.role_of.iter().enumerate() {
            let Some(i) = *idx else { continue };
            let (Some(d), Some(ch)) = (g.descs[i].take(), g.chans[i].take()) else {
                continue;
            };
            let b = d.bdev();
            members[role] = Some(Member {
                name: b.name(),
                desc: d.raw(),
                bdev: b,
                flush: b.write_cache() && b.supports(sys::SPDK_BDEV_IO_TYPE_FLUSH),
                unmap: b.supports(sys::SPDK_BDEV_IO_TYPE_UNMAP),
                uuid: s
                    .sbs
                    .as_ref()
                    .and_then(|v| v[role].as_ref().map(|sb| sb.device_uuid))
                    .unwrap_or_else(|| b.uuid()),
            });
            descs[role] = Some(d);
            chans[role] = Some(ch);
        }
        // Members assembly did not use: released now.
        g.chans.clear();
        g.descs.clear();
    }
    // The call save_config writes: uuid set, members in role order.
    let mut saved = p.clone();
    saved.uuid = Some(RpcUuid(s.uuid));
    if !matches!(p.raid_level, RaidLevel::Raid1) {
        saved.strip_size_kb = Some(s.strip_kb);
    }
    saved.base_bdevs = NameList(
        members
            .iter()
            .flatten()
            .map(|m| BdevName::new(m.name.as_str()).expect("a bdev's name is valid"))
            .collect(),
    );
    let geom = Arc::new(s.geom);
    let state = Arc::new(s.state);
    let superblock = s.sbs.is_some();
    let array = Array::new(
        p.name.as_str(),
        s.uuid,
        geom.clone(),
        members,
        s.data_offset_blocks,
        state.clone(),
        Info {
            level: p.raid_level,
            superblock,
            saved,
        },
        Owned::new(descs, chans),
        thread,
    );
    array.register_io_device();
    let host = match s.sbs {
        Some(sbs) => MetaHost::md(
            meta::new_meta(geom, array.shared.clone(), state, sbs),
            s.dirty,
        ),
        None => MetaHost::bare(geom, state),
    };
    meta::install(&array, host);
    if let Err(rc) = array.register_bdev() {
        let e = RpcError::errno(
            -rc,
            format!(
                "{CREATE}: registering bdev {}: {}",
                p.name,
                mdraid_rpc::error::errno::strerror(-rc)
            ),
        );
        let c2 = c.clone();
        meta::abort_create(&array, s.created, move || c2.borrow_mut().fail(e));
        return;
    }
    crate::module::insert(array.clone());
    log_notice!(
        "mdraid {}: {} {} array {} on {}{}",
        p.name,
        if s.created || !superblock {
            "created"
        } else {
            "assembled"
        },
        p.raid_level,
        md_uuid(&s.uuid),
        array
            .members
            .iter()
            .map(|m| m
                .as_ref()
                .map_or("(missing)".to_string(), |m| m.name.clone()))
            .collect::<Vec<_>>()
            .join(", "),
        if s.dirty {
            "; not shut down cleanly: it needs a resync, which this host cannot do yet"
        } else {
            ""
        }
    );
    if let Some(r) = c.borrow_mut().req.take() {
        r.result("true");
    }
}
