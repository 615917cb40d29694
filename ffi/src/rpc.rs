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
//! claim the members, read their md metadata (superblock and bitmap area,
//! `crate::probe`), plan (`crate::plan`: a new array gets a write-intent
//! bitmap by default on levels with redundancy, as in the daemon), write
//! new superblocks and bitmaps (write, then flush), then register the
//! io_device, start the metadata path and register the bdev. An array
//! assembled dirty is resynced by the metadata thread (`crate::sync`).
//! Any failure undoes what was done — superblocks written are wiped,
//! claims released, descriptors closed — before the error is sent: a
//! failed create leaves no bdev, claim or superblock. Examine assembles
//! through the same path ([`create_now`]); a create naming an array that
//! runs already with the same level, uuid and members (a config replayed
//! after examine assembled it) succeeds without doing anything, and one
//! arriving while examine assembles waits for it.
//!
//! `bdev_mdraid_add_base_bdev`, `bdev_mdraid_sync_action`,
//! `bdev_mdraid_remove_base_bdev` and `bdev_mdraid_set_write_mostly` run
//! on the array's metadata thread; `bdev_mdraid_set_options` sets the
//! window and bandwidth of every array's background processes.
//!
//! `bdev_mdraid_remove_base_bdev {name}` (the member's bdev, as SPDK's
//! `bdev_raid_remove_base_bdev` takes it) fails the member as a
//! hot-remove does (`Array::bdev_removed`, then the metadata path records
//! it faulty on the survivors' superblocks) and answers once that is
//! committed; the claim is released and the descriptor closed by the
//! metadata tick once no channel has I/O on it. It is refused with EBUSY,
//! changing nothing, when the array would go offline (md refuses to fail
//! the last device holding some data); a member already faulty is only
//! released. The embedded host does the same.
//!
//! `bdev_mdraid_set_write_mostly` is checked and refused as in the
//! embedded host (`bdev_raid::meta::FlagError`, the field named); the
//! metadata path records it in the superblocks, then broadcasts it, and
//! the answer comes once the published state has it.
//!
//! `bdev_mdraid_examine {name}` reads one bdev's md metadata, or every
//! bdev's but the arrays', reports it as the embedded host does
//! (`[MdraidExamineInfo]`), and hands the bdevs to examine exactly as
//! the examine callback does ([`crate::examine::examine_bdevs`]): an
//! array they complete is assembled before the answer.
//!
//! `bdev_mdraid_get_bdevs` answers asynchronously: the members' I/O
//! counters are read on every channel first
//! ([`crate::array::gather_member_io`]).

use std::cell::RefCell;
use std::ffi::c_void;
use std::rc::Rc;
use std::sync::Arc;

use bdev_raid::assemble::md_uuid;
use bdev_raid::channel::IoType;
use bdev_raid::channel::MetaRequest;
use bdev_raid::meta::{FlagError, NewMember, Recovery};
use bdev_raid::ondisk::{Superblock, SB_BLOCK_BYTES, SB_OFFSET_BYTES};
use bdev_raid::state::ArrayState;
use bdev_raid::state::{survives, MemberState};
use mdraid_rpc::error::errno;
use mdraid_rpc::method::decode;
use mdraid_rpc::params::{
    BdevMdraidAddBaseBdev, BdevMdraidCreate, BdevMdraidDelete, BdevMdraidExamine,
    BdevMdraidGetBdevs, BdevMdraidRemoveBaseBdev, BdevMdraidSetOptions, BdevMdraidSetWriteMostly,
    BdevMdraidSyncAction, BdevMdraidZeroSuperblock,
};
use mdraid_rpc::results::{MdraidBdevInfo, MdraidMemberIo};
use mdraid_rpc::types::SyncAction;
use mdraid_rpc::types::{BdevName, NameList, RaidCategory, RaidLevel, RaidState, Uuid as RpcUuid};
use mdraid_rpc::RpcError;
use serde_json::value::RawValue;

use crate::array::{Array, Info, Member, RoleAdd};
use crate::meta::{self, MetaHost, Owned};
use crate::plan::{check_add_block_size, field, new_superblocks, plan_array, Plan, Probe, CREATE};
use crate::probe::{read_md_meta, Target};
use crate::spdk::{
    guard, io_once, json_text, log_notice, log_warn, random_uuid, Bdev, BdevOp, Desc, DmaBuf,
    IoChannel, Request, Thread,
};
use crate::sys;
use bdev_raid::bitmap::{BitmapGeom, DiskBitmap};
use mdraid_rpc::types::BitmapOptions;
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
    RpcError::no_device(name)
}

/// No mdraid array is named `name` (another bdev may be).
fn no_array(name: &str) -> RpcError {
    RpcError::no_array(name, Bdev::by_name(name).is_some())
}

/// Run a method body with its params decoded (as [`run`]); params that do
/// not decode are answered with the error naming the bad field.
///
/// # Safety
/// `req` must be a live, unanswered request and `p` null or its params.
unsafe fn run_with<T>(
    what: &str,
    req: *mut sys::spdk_jsonrpc_request,
    p: *const sys::spdk_json_val,
    body: impl FnOnce(Request, T),
) where
    T: serde::de::DeserializeOwned + mdraid_rpc::params::Validate,
{
    run(what, req, |r| {
        // SAFETY: p is this request's params (the caller's contract).
        match unsafe { params(what, p) } {
            Ok(p) => body(r, p),
            Err(e) => r.rpc_error(&e),
        }
    })
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
    // SAFETY: SPDK hands a method a live, unanswered request and its params.
    run_with(
        "bdev_mdraid_get_bdevs",
        req,
        p,
        |r, p: BdevMdraidGetBdevs| {
            let mut arrays = crate::module::all();
            let mut waiting = crate::examine::configuring();
            if let Some(n) = &p.name {
                arrays.retain(|a| a.name == n.as_str());
                waiting.retain(|a| a.name == n.as_str());
                if arrays.is_empty() && waiting.is_empty() {
                    return r.rpc_error(&no_array(n.as_str()));
                }
            }
            get_bdevs(arrays, waiting, p.category, r);
        },
    )
}

/// Answer `bdev_mdraid_get_bdevs` for `arrays`, with their members' I/O
/// counters: gathered from every array's channels first
/// ([`crate::array::gather_member_io`], on each array's metadata thread),
/// then the answer goes from this thread.
/// `waiting`: the arrays waiting for members (state `configuring`).
fn get_bdevs(
    arrays: Vec<Arc<Array>>,
    waiting: Vec<MdraidBdevInfo>,
    category: RaidCategory,
    r: Request,
) {
    struct Gather {
        io: Vec<Option<Vec<MdraidMemberIo>>>,
        left: usize,
        r: Option<Request>,
    }
    let Some(here) = Thread::current() else {
        return r.rpc_error(&RpcError::internal("not on an SPDK thread"));
    };
    let n = arrays.len();
    let arrays = Arc::new(arrays);
    let g = Arc::new(std::sync::Mutex::new(Gather {
        io: vec![None; n],
        // One for this loop: no answer before every gather started.
        left: n + 1,
        r: Some(r),
    }));
    let answer = {
        let arrays = arrays.clone();
        move |io: Vec<Option<Vec<MdraidMemberIo>>>, r: Request| {
            let v: Vec<_> = arrays
                .iter()
                .zip(&io)
                .map(|(a, io)| a.rpc_info_io(io.as_deref()))
                .chain(waiting.iter().cloned())
                .filter(|a| match category {
                    RaidCategory::All => true,
                    RaidCategory::Online => a.state == RaidState::Online,
                    RaidCategory::Offline => a.state == RaidState::Offline,
                    RaidCategory::Configuring => a.state == RaidState::Configuring,
                })
                .collect();
            match serde_json::to_string(&v) {
                Ok(s) => r.result(&s),
                Err(e) => r.rpc_error(&RpcError::internal(e.to_string())),
            }
        }
    };
    let one_done = move |g: &std::sync::Mutex<Gather>,
                         i: Option<(usize, Option<Vec<MdraidMemberIo>>)>| {
        let last = {
            let mut g = g.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((i, io)) = i {
                g.io[i] = io;
            }
            g.left -= 1;
            if g.left > 0 {
                return;
            }
            g.r.take().map(|r| (std::mem::take(&mut g.io), r))
        };
        let Some((io, r)) = last else { return };
        let answer = answer.clone();
        if here.is_current() {
            answer(io, r)
        } else {
            // If SPDK refuses the message the request is dropped
            // unanswered, which answers an internal error.
            let _ = here.send(move || answer(io, r));
        }
    };
    let one_done = Arc::new(one_done);
    for i in 0..n {
        let (a, g2, d2) = (arrays[i].clone(), g.clone(), one_done.clone());
        let gather = move || crate::array::gather_member_io(&a, move |io| d2(&g2, Some((i, io))));
        if arrays[i].meta_thread.is_current() {
            gather();
        } else if arrays[i].meta_thread.send(gather).is_err() {
            one_done(&g, Some((i, None)));
        }
    }
    one_done(&g, None);
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
    // SAFETY: SPDK hands a method a live, unanswered request and its params.
    run_with("bdev_mdraid_delete", req, p, |r, p: BdevMdraidDelete| {
        let Some(a) = crate::module::find(p.name.as_str()) else {
            // One waiting for its members has nothing to unregister.
            if crate::examine::drop_waiting(p.name.as_str()) {
                log_notice!(
                    "mdraid {}: deleted while it waited for its members; bdev_mdraid_examine on them brings it back",
                    p.name
                );
                return r.result("true");
            }
            return r.rpc_error(&no_array(p.name.as_str()));
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
        // Writes a blocked metadata path holds (no member takes its
        // superblocks, R3) would keep the bdev's users from closing it:
        // the delete gives up on them (they fail) and the array goes
        // offline.
        let a2 = a.clone();
        let _ = a.meta_thread.send(move || {
            if meta::with_host(&a2, |h| h.abandon()) == Some(true) {
                log_warn!(
                    "mdraid {}: deleted while blocked (no member takes its superblocks): the writes it held fail, and it goes offline",
                    a2.name
                );
            }
        });
        let arg = Box::into_raw(Box::new(r));
        // SAFETY: the bdev is registered (it is in the registry); `done`
        // takes back the request box once the bdev is destructed.
        unsafe { sys::spdk_bdev_unregister(a.bdev_ptr(), Some(done), arg.cast()) };
    })
}

// ------------------------------------------------------------ create

/// Who hears how a create ended: an RPC client, or examine.
pub enum Reply {
    Rpc(Request),
    Done(Box<dyn FnOnce(Result<(), RpcError>)>),
}

impl Reply {
    fn ok(self) {
        match self {
            Reply::Rpc(r) => r.result("true"),
            Reply::Done(f) => f(Ok(())),
        }
    }
    fn err(self, e: &RpcError) {
        match self {
            Reply::Rpc(r) => r.rpc_error(e),
            Reply::Done(f) => f(Err(e.clone())),
        }
    }
}

/// A create in progress (on the app thread).
struct Creating {
    req: Option<Reply>,
    p: BdevMdraidCreate,
    thread: Thread,
    /// In `base_bdevs` order.
    descs: Vec<Option<Desc>>,
    chans: Vec<Option<IoChannel>>,
    probes: Vec<Option<Probe>>,
    pending: usize,
    error: Option<RpcError>,
    /// Examine assembles it under a name of its choosing: the superblocks
    /// keep theirs (only a user's create records its name).
    examined: bool,
    /// Members whose bdev is being removed (SPDK's REMOVE event, sent once)
    /// while the create runs: failed once the array exists.
    removed: Vec<*mut sys::spdk_bdev>,
}

thread_local! {
    /// Creates in progress on this thread (the app thread), for the hot
    /// removal of a member they opened.
    static CREATES: RefCell<Vec<std::rc::Weak<RefCell<Creating>>>> =
        const { RefCell::new(Vec::new()) };
}

/// SPDK's REMOVE event for `bdev`: a create in progress that opened it
/// fails that member once the array exists (the event comes only once,
/// and the removal waits for the descriptor to close). Whether one did.
pub fn create_member_removed(bdev: *mut sys::spdk_bdev) -> bool {
    CREATES.with(|cs| {
        let mut cs = cs.borrow_mut();
        cs.retain(|w| w.strong_count() > 0);
        let mut found = false;
        for c in cs.iter().filter_map(std::rc::Weak::upgrade) {
            let Ok(mut g) = c.try_borrow_mut() else {
                continue;
            };
            if g.descs.iter().flatten().any(|d| d.bdev().raw() == bdev) {
                g.removed.push(bdev);
                found = true;
            }
        }
        found
    })
}

type Ctx = Rc<RefCell<Creating>>;

impl Drop for Creating {
    /// Never answered (a panic caught on the way, or a step that lost its
    /// context): the name is free again, as after a failed create.
    fn drop(&mut self) {
        if self.req.is_some() {
            crate::module::unreserve(self.p.name.as_str());
        }
    }
}

impl Creating {
    /// Undo everything and answer with `e`.
    fn fail(&mut self, e: RpcError) {
        self.chans.clear();
        self.descs.clear();
        crate::module::unreserve(self.p.name.as_str());
        if let Some(r) = self.req.take() {
            r.err(&e);
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
    // SAFETY: SPDK hands a method a live, unanswered request and its params.
    run_with(CREATE, req, p, |r, p: BdevMdraidCreate| {
        create(p, Reply::Rpc(r));
    })
}

/// Whether `p` asks for array `a`, which examine assembled (or an earlier
/// create): the same uuid when `p` names one (as `save_config` writes it:
/// then whatever members it lists, since a config saved while a member
/// was out lists fewer than the superblocks now hold), else every member
/// of `a` among those `p` lists.
fn is_same_array(a: &Array, p: &BdevMdraidCreate) -> bool {
    a.info.superblock
        && p.superblock
        && a.info.level == p.raid_level
        && match p.uuid {
            Some(u) => u.0 == a.uuid,
            None => a
                .members()
                .iter()
                .flatten()
                .all(|m| p.base_bdevs.contains(m.name.as_str())),
        }
}

/// `bdev_mdraid_create` (also examine's assembly): see the module docs.
pub fn create(p: BdevMdraidCreate, reply: Reply) {
    // An assembly examine started finishes first: it may be this array.
    if crate::examine::busy() {
        crate::examine::after(move || create(p, reply));
        return;
    }
    create_now(p, reply, false)
}

/// [`create`], with no examine assembly to wait for; `examined`: examine
/// assembles the array (see [`Creating::examined`]).
pub fn create_now(p: BdevMdraidCreate, reply: Reply, examined: bool) {
    let name = p.name.as_str().to_string();
    if let Some(a) = crate::module::find(&name) {
        if is_same_array(&a, &p) {
            log_notice!("mdraid {name}: already assembled from its members; nothing to do");
            return reply.ok();
        }
    }
    // Another bdev of that name (not an array of ours: handled above).
    if Bdev::by_name(&name).is_some() {
        return reply.err(&RpcError::errno(
            errno::EEXIST,
            format!("bdev {name} already exists: File exists"),
        ));
    }
    // A create kept for another array under this name (one that starts
    // the waiting array names its uuid).
    if let Some(w) = crate::examine::held_create(&name).filter(|w| w.uuid != p.uuid) {
        return reply.err(&RpcError::errno(
            errno::EEXIST,
            format!(
                "bdev {name} already exists: it waits for its members (md array {0}); bdev_mdraid_create with uuid {0} (and force) starts it, bdev_mdraid_delete drops it",
                w.uuid.map_or_else(String::new, |u| md_uuid(&u.0))
            ),
        ));
    }
    if left_to_examine(&p) {
        crate::examine::hold_create(p);
        return reply.ok();
    }
    if Bdev::by_name(&name).is_some() || !crate::module::reserve(&name) {
        return reply.err(&RpcError::errno(
            errno::EEXIST,
            format!("bdev {name} already exists: File exists"),
        ));
    }
    let Some(thread) = Thread::current() else {
        crate::module::unreserve(&name);
        return reply.err(&RpcError::internal("not on an SPDK thread"));
    };
    let c = Rc::new(RefCell::new(Creating {
        req: Some(reply),
        p,
        thread,
        descs: Vec::new(),
        chans: Vec::new(),
        probes: Vec::new(),
        pending: 0,
        error: None,
        examined,
        removed: Vec::new(),
    }));
    CREATES.with(|cs| cs.borrow_mut().push(Rc::downgrade(&c)));
    if let Err(e) = open_members(&c) {
        c.borrow_mut().fail(e);
        return;
    }
    read_superblocks(&c);
}

/// A create of md array `uuid` (as a saved config replays it) naming
/// members that do not exist yet, whose others (if any) examine already
/// holds as that array's, waiting for the rest: examine assembles it when
/// they appear, so the create succeeds now with nothing to do. SPDK saves bdevs
/// in the order they were made, so a member made after its array (one
/// replaced and rebuilt) comes after the array's create in the config;
/// SPDK's raid accepts members that do not exist yet the same way.
fn left_to_examine(p: &BdevMdraidCreate) -> bool {
    let Some(uuid) = p.uuid.filter(|_| p.superblock) else {
        return false;
    };
    let (missing, present): (Vec<&str>, Vec<&str>) = p
        .base_bdevs
        .iter()
        .map(|n| n.as_str())
        .partition(|n| Bdev::by_name(n).is_none());
    // None there yet (every member replaced since the array was made, so
    // all come after it in the config), or those there held by examine as
    // this array's members.
    let held = crate::examine::waiting(&uuid.0);
    if missing.is_empty() || !present.iter().all(|n| held.iter().any(|h| h == n)) {
        return false;
    }
    log_notice!(
        "mdraid {}: {} not there yet; examine assembles md array {} when they appear",
        p.name,
        missing.join(", "),
        md_uuid(&uuid.0)
    );
    true
}

/// Whether create `p` (as `save_config` writes it: with the array's uuid)
/// cannot start the array its members carry only because members are
/// missing, or because it is dirty and degraded (md's `--run` / `--force`
/// decisions): then it waits for them.
fn waits_for_members(p: &BdevMdraidCreate, probes: &[Probe]) -> bool {
    use bdev_raid::assemble::{assemble, AssembleError, AssembleOptions, Candidate};
    let (Some(uuid), true, false) = (p.uuid, p.superblock, p.force) else {
        return false;
    };
    let cands: Vec<Candidate> = probes
        .iter()
        .zip(p.base_bdevs.iter())
        .map(|(pr, n)| Candidate {
            name: n.as_str(),
            sb: &pr.sb,
            sectors: pr.sectors(),
        })
        .collect();
    let opts = AssembleOptions {
        uuid: Some(uuid.0),
        force: false,
        block_size: probes.first().map_or(512, |pr| pr.block_size),
    };
    matches!(
        assemble(&cands, &opts),
        Err(AssembleError::NotEnough { .. } | AssembleError::DirtyDegraded { .. })
    )
}

/// Open, claim and get a channel of every member.
fn open_members(c: &Ctx) -> Result<(), RpcError> {
    let mut g = c.borrow_mut();
    let names: Vec<String> = g.p.base_bdevs.iter().map(|n| n.to_string()).collect();
    for (i, m) in names.iter().enumerate() {
        let f = format!("base_bdevs[{i}]");
        if crate::module::names_array(m) {
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

/// Read the md metadata of every member (superblock and bitmap area,
/// [`crate::probe`]); then `planned`.
fn read_superblocks(c: &Ctx) {
    let n = c.borrow().descs.len();
    c.borrow_mut().probes = vec![None; n];
    // One count for this loop, so no completion plans before all are issued.
    c.borrow_mut().pending = n + 1;
    for i in 0..n {
        let (t, name) = {
            let g = c.borrow();
            let d = g.descs[i].as_ref().unwrap();
            let b = d.bdev();
            (
                Target::of(d.raw(), g.chans[i].as_ref().unwrap().raw(), &b),
                b.name(),
            )
        };
        let c2 = c.clone();
        let done = move |res: Result<Vec<u8>, String>| {
            {
                let mut g = c2.borrow_mut();
                match res {
                    Ok(sb) => {
                        g.probes[i] = Some(Probe {
                            block_size: t.block_size as u32,
                            num_blocks: t.num_blocks,
                            sb,
                        })
                    }
                    Err(e) => {
                        if g.error.is_none() {
                            g.error = Some(RpcError::errno(
                                errno::EIO,
                                format!("{CREATE}: base_bdevs[{i}] `{name}`: {e}"),
                            ));
                        }
                    }
                }
            }
            one_probe_done(&c2);
        };
        // SAFETY: the descriptor and channel stay in `Creating` until
        // every read ended (`planned` runs only then, and it alone lets
        // them go).
        unsafe { read_md_meta(t, done) };
    }
    one_probe_done(c);
}

fn one_probe_done(c: &Ctx) {
    let left = {
        let mut g = c.borrow_mut();
        g.pending -= 1;
        g.pending
    };
    if left == 0 {
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
        let uuid = random_uuid();
        let plan = plan_array(&g.p, &probes, move || uuid);
        if plan.is_err() && !g.examined && waits_for_members(&g.p, &probes) {
            // A replayed create of an array that cannot start yet: it
            // waits (listed as configuring), as SPDK's raid waits for
            // base bdevs, instead of failing the whole config.
            let reply = g.req.take();
            let p = g.p.clone();
            if let Err(e) = plan {
                g.fail(e.clone());
                drop(g);
                log_warn!(
                    "mdraid {}: {}; it waits for its members (listed as configuring): they start it when they appear, or bdev_mdraid_create with its uuid and force",
                    p.name,
                    e.message
                );
            }
            crate::examine::hold_create(p);
            if let Some(r) = reply {
                r.ok();
            }
            return;
        }
        (plan, g.p.clone())
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
            bitmap,
            write_mostly,
            write_behind,
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
            let mut sbs = new_superblocks(
                &geom,
                uuid,
                p.name.as_str(),
                device_uuids,
                &layouts,
                data_offset,
                now,
                bitmap.is_some(),
            );
            // md's WriteMostly1 devflag; write-behind in the bitmap's
            // superblock (the plan refused it without a bitmap).
            for (m, sb) in sbs.iter_mut().enumerate() {
                sb.set_write_mostly(write_mostly & 1 << m != 0);
            }
            let mut bm = bitmap.map(|b| {
                let mut disk = DiskBitmap::new(&b.geom, uuid, b.daemon_sleep_ms);
                disk.sb.write_behind = write_behind;
                StartBitmap {
                    disk,
                    geom: b.geom,
                    daemon_sleep_ms: b.daemon_sleep_ms,
                }
            });
            // Resynced from the start unless assumed clean (then every bit
            // stays clear).
            let sync = mdraid_rpc::plan::initial_sync(&p, &geom);
            if sync {
                bdev_raid::meta::mark_unsynced(
                    &mut sbs,
                    bm.as_mut().map(|b| (&mut b.disk, &b.geom)),
                );
            }
            let write_behind = bm.as_ref().map_or(0, |b| b.disk.sb.write_behind);
            let areas: Vec<Vec<u8>> = sbs
                .iter()
                .map(|sb| {
                    let mut data = sb.encode();
                    if let Some(b) = &bm {
                        data.extend_from_slice(&b.disk.encode_area(sb.events));
                    }
                    data
                })
                .collect();
            let written = areas.iter().map(Vec::len).max().unwrap_or(0);
            write_superblocks(c, sbs, areas, move |c, sbs| {
                let bs = u64::from(geom.block_size());
                let n = sbs.len();
                let start = Start {
                    uuid,
                    geom,
                    strip_kb,
                    data_offset_blocks: data_offset * 512 / bs,
                    role_of: (0..n).map(Some).collect(),
                    state: ArrayState {
                        write_mostly,
                        write_behind,
                        ..ArrayState::new_in_sync(n)
                    },
                    sbs: Some(sbs.into_iter().map(Some).collect()),
                    created: Some(written),
                    dirty: sync,
                    bitmap: bm,
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
            let bm = asm.bitmap.as_ref().map(|b| StartBitmap {
                disk: b.disk.clone(),
                geom: b.geom.clone(),
                daemon_sleep_ms: match p.bitmap {
                    BitmapSetting::On(BitmapOptions {
                        daemon_sleep_ms: Some(ms),
                        ..
                    }) => u64::from(ms),
                    _ => u64::from(b.disk.sb.daemon_sleep) * 1000,
                },
            });
            let start = Start {
                uuid: asm.set_uuid,
                geom: asm.geometry.clone(),
                strip_kb,
                data_offset_blocks: data_offset * 512 / bs,
                role_of: asm.member_of_role.clone(),
                state: asm.state.clone(),
                sbs: Some(asm.superblocks.clone()),
                created: None,
                dirty: asm.dirty,
                bitmap: bm,
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
                created: None,
                dirty: false,
                bitmap: None,
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
    areas: Vec<Vec<u8>>,
    next: impl FnOnce(&Ctx, Vec<Superblock>) + 'static,
) {
    struct W {
        left: usize,
        failed: Option<String>,
        next: Option<Next>,
        sbs: Vec<Superblock>,
    }
    // What is written on each member: zeroed again if the create fails.
    let written = areas.iter().map(Vec::len).max().unwrap_or(0);
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
                    wipe_then_fail(&c, &all, written, e);
                }
            }
        }
    };
    let finish: Rc<dyn Fn()> = Rc::new(finish);
    let g = c.borrow();
    for (i, mut data) in areas.into_iter().enumerate() {
        let d = g.descs[i].as_ref().unwrap();
        let ch = g.chans[i].as_ref().unwrap();
        let bs = u64::from(d.bdev().block_size());
        // The superblock (4 KiB), then the bitmap area when there is one.
        let len = (data.len().max(SB_BLOCK_BYTES) as u64).div_ceil(bs) * bs;
        data.resize(len as usize, 0);
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
            len / bs,
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

/// Zero the `bytes` of metadata written on members `which`, then fail
/// with `e`.
fn wipe_then_fail(c: &Ctx, which: &[usize], bytes: usize, e: RpcError) {
    let n = {
        let g = c.borrow();
        let targets: Vec<(&Desc, &IoChannel)> = which
            .iter()
            .filter_map(|&i| Some((g.descs[i].as_ref()?, g.chans[i].as_ref()?)))
            .collect();
        let (c2, e2) = (c.clone(), e.clone());
        meta::wipe_all(&targets, bytes, move || c2.borrow_mut().fail(e2))
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
    /// This create wrote the superblocks: the bytes of metadata written on
    /// each member (zeroed if it fails).
    created: Option<usize>,
    dirty: bool,
    bitmap: Option<StartBitmap>,
}

/// The write-intent bitmap an array starts with.
struct StartBitmap {
    disk: DiskBitmap,
    geom: BitmapGeom,
    daemon_sleep_ms: u64,
}

fn start_array(c: &Ctx, s: Start) {
    let (p, thread, examined) = {
        let g = c.borrow();
        (g.p.clone(), g.thread, g.examined)
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
    if s.created.is_some() {
        saved.bitmap = match &s.bitmap {
            Some(b) => BitmapSetting::On(BitmapOptions {
                chunk_kb: Some((b.geom.chunk_bytes() / 1024) as u32),
                daemon_sleep_ms: Some(b.daemon_sleep_ms as u32),
            }),
            None => BitmapSetting::Off,
        };
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
        s.bitmap.as_ref().map(|b| b.geom.clone()),
        Info {
            level: p.raid_level,
            superblock,
            saved: std::sync::Mutex::new(saved),
        },
        Owned::new(descs, chans),
        thread,
    );
    array.register_io_device();
    let (disk, daemon_ms) = match s.bitmap {
        Some(b) => (Some(b.disk), b.daemon_sleep_ms),
        None => (None, 0),
    };
    let dirty_chunks = disk.as_ref().map(|d| d.dirty());
    let host = match s.sbs {
        Some(sbs) => MetaHost::md(
            meta::new_meta(
                (!examined).then_some(p.name.as_str()),
                geom,
                array.shared.clone(),
                state,
                sbs,
                disk,
                daemon_ms,
            ),
            s.dirty,
            daemon_ms,
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
    crate::examine::forget(&s.uuid);
    crate::examine::forget_create(p.name.as_str());
    log_notice!(
        "mdraid {}: {} {} array {} on {}{}",
        p.name,
        if s.created.is_some() || !superblock {
            "created"
        } else {
            "assembled"
        },
        p.raid_level,
        md_uuid(&s.uuid),
        array
            .members()
            .iter()
            .map(|m| m
                .as_ref()
                .map_or("(missing)".to_string(), |m| m.name.clone()))
            .collect::<Vec<_>>()
            .join(", "),
        match (s.dirty, dirty_chunks) {
            (false, _) => String::new(),
            (true, _) if s.created.is_some() => "; initial resync started".into(),
            (true, Some(n)) =>
                format!("; it was not shut down cleanly: resyncing the {n} chunks its bitmap marks"),
            (true, None) =>
                "; it was not shut down cleanly and has no bitmap: resyncing all of it".into(),
        }
    );
    let (r, removed) = {
        let mut g = c.borrow_mut();
        (g.req.take(), std::mem::take(&mut g.removed))
    };
    if let Some(r) = r {
        r.ok();
    }
    // Members removed while the create ran fail now, as if removed now.
    for b in removed {
        crate::module::member_event(sys::SPDK_BDEV_EVENT_REMOVE, b);
    }
}

// ------------------------------------------------------------ set_options

/// RPC method (registered by the shim).
///
/// # Safety
/// `req` must be a live, unanswered request and `p` null or its params.
#[no_mangle]
pub unsafe extern "C" fn mdraid_rpc_bdev_mdraid_set_options(
    req: *mut sys::spdk_jsonrpc_request,
    p: *const sys::spdk_json_val,
) {
    // SAFETY: SPDK hands a method a live, unanswered request and its params.
    run_with(
        "bdev_mdraid_set_options",
        req,
        p,
        |r, p: BdevMdraidSetOptions| {
            // Every array reads them at its next window.
            crate::sync::set_options(p.process_window_size_kb, p.process_max_bandwidth_mb_sec);
            r.result("true")
        },
    )
}

// ------------------------------------------------------------ sync_action

/// RPC method (registered by the shim).
///
/// # Safety
/// `req` must be a live, unanswered request and `p` null or its params.
#[no_mangle]
pub unsafe extern "C" fn mdraid_rpc_bdev_mdraid_sync_action(
    req: *mut sys::spdk_jsonrpc_request,
    p: *const sys::spdk_json_val,
) {
    const M: &str = "bdev_mdraid_sync_action";
    // SAFETY: SPDK hands a method a live, unanswered request and its params.
    run_with(M, req, p, |r, p: BdevMdraidSyncAction| {
        let name = p.name.as_str().to_string();
        let Some(a) = crate::module::find(&name) else {
            return r.rpc_error(&no_array(&name));
        };
        if let Err(e) = p.check_redundant(a.geom.level().name(), a.geom.redundancy() > 0) {
            return r.rpc_error(&e);
        }
        let (op, freeze) = match p.action {
            SyncAction::Check => (Some(IoType::Check), false),
            SyncAction::Repair => (Some(IoType::Repair), false),
            SyncAction::Resync => (Some(IoType::Resync), false),
            SyncAction::Idle => (None, false),
            SyncAction::Frozen => (None, true),
        };
        let a2 = a.clone();
        on_meta_thread(&a, r, move |r| {
            match crate::sync::sync_action(&a2, op, freeze) {
                Ok(d) => {
                    meta::run_driver(&a2, d);
                    r.result("true")
                }
                Err(e) => r.rpc_error(&RpcError::errno(
                    errno::EBUSY,
                    format!("{M}: array `{name}`: {e}"),
                )),
            }
        });
    })
}

/// Run `f` with the request on the array's metadata thread.
fn on_meta_thread(a: &Arc<Array>, r: Request, f: impl FnOnce(Request) + Send + 'static) {
    if a.meta_thread.is_current() {
        return f(r);
    }
    // The request travels in the message; if SPDK refuses the message it
    // is dropped unanswered, which answers an internal error.
    let _ = a.meta_thread.send(move || f(r));
}

// ------------------------------------------------------------ add_base_bdev

const ADD: &str = "bdev_mdraid_add_base_bdev";

fn add_field(f: &str, msg: impl std::fmt::Display) -> RpcError {
    RpcError::invalid_field(ADD, f, msg)
}

/// RPC method (registered by the shim).
///
/// # Safety
/// `req` must be a live, unanswered request and `p` null or its params.
#[no_mangle]
pub unsafe extern "C" fn mdraid_rpc_bdev_mdraid_add_base_bdev(
    req: *mut sys::spdk_jsonrpc_request,
    p: *const sys::spdk_json_val,
) {
    // SAFETY: SPDK hands a method a live, unanswered request and its params.
    run_with(ADD, req, p, |r, p: BdevMdraidAddBaseBdev| {
        let name = p.raid_bdev.as_str().to_string();
        let Some(a) = crate::module::find(&name) else {
            return r.rpc_error(&no_array(&name));
        };
        let a2 = a.clone();
        on_meta_thread(&a, r, move |r| add_base_bdev(a2, p, r));
    })
}

/// A device being brought into a role: what the metadata host needs.
struct Adding {
    array: Arc<Array>,
    role: usize,
    /// The role is this add's until it ends.
    claim: RoleAdd,
    bname: String,
    /// A new device (not the role's own): opened and claimed here.
    new: Option<(Desc, IoChannel)>,
    /// `mdadm --add --write-mostly` (the engine ignores it without mirrors).
    write_mostly: bool,
}

/// `bdev_mdraid_add_base_bdev` on the metadata thread: bring `base_bdev`
/// into the first faulty or missing role (the role it served, if it comes
/// back). Checks first, then the device's md metadata is read; a device
/// that left with events at least the bitmap's events_cleared is recovered
/// from the bitmap, anything else rebuilt fully (the metadata path
/// decides). A new device is put in the role on every channel before the
/// metadata path records it recovering; the rebuild starts by itself once
/// every channel has that state.
fn add_base_bdev(a: Arc<Array>, p: BdevMdraidAddBaseBdev, r: Request) {
    let name = a.name.clone();
    let bname = p.base_bdev.as_str().to_string();
    if p.write_mostly && a.geom.copies() < 2 {
        return r.rpc_error(&add_field(
            "write_mostly",
            format!("array `{name}` is {}: it has no mirrors", a.info.level),
        ));
    }
    if !a.info.superblock {
        return r.rpc_error(&add_field(
            "raid_bdev",
            format!(
                "array `{name}` has no superblocks, so a member cannot be brought back into it"
            ),
        ));
    }
    if crate::module::names_array(&bname) {
        return r.rpc_error(&add_field(
            "base_bdev",
            format!("`{bname}` is an mdraid array; arrays cannot be members"),
        ));
    }
    let Some(b) = Bdev::by_name(&bname) else {
        return r.rpc_error(&add_field(
            "base_bdev",
            format!("bdev `{bname}` does not exist"),
        ));
    };
    // Its own name, not an alias it was given by (members are known by
    // name, as create records them).
    let bname = b.name();
    let st = a.state();
    if st.offline {
        return r.rpc_error(&RpcError::errno(
            errno::EINVAL,
            format!("{ADD}: array `{name}` is offline: no member holds the data to rebuild from"),
        ));
    }
    let members = a.members();
    let out = |r: usize| matches!(st.members[r], MemberState::Faulty | MemberState::Missing);
    let holds = |r: usize| members[r].as_ref().is_some_and(|m| m.name == bname);
    if let Some(r2) = (0..members.len()).find(|&r| holds(r) && !out(r)) {
        return r.rpc_error(&add_field(
            "base_bdev",
            format!("bdev `{bname}` already serves role {r2} of `{name}`"),
        ));
    }
    // A role another add is bringing a device into is not free: its
    // published state says faulty until that add commits (after its
    // answer), and swapping another device in under it loses the data.
    let pending = meta::with_host(&a, |h| h.adds_pending()).unwrap_or(0);
    let busy = |r: usize| RoleAdd::busy(&a, r) || pending & 1 << r != 0;
    let free = |r: usize| out(r) && !busy(r);
    if let Some(r2) = (0..members.len()).find(|&r| holds(r) && busy(r)) {
        return r.rpc_error(&RpcError::errno(
            errno::EBUSY,
            format!("{ADD}: `{bname}` is being brought into role {r2} of `{name}` already"),
        ));
    }
    let Some(role) = (0..members.len())
        .find(|&r| free(r) && holds(r))
        .or_else(|| (0..members.len()).find(|&r| free(r)))
    else {
        return r.rpc_error(&RpcError::errno(
            errno::EBUSY,
            format!(
                "{ADD}: array `{name}` has no faulty or missing member to replace{}",
                if (0..members.len()).any(out) {
                    " (adds in progress take the others)"
                } else {
                    ""
                }
            ),
        ));
    };
    let Some(claim) = RoleAdd::take(&a, role) else {
        return r.rpc_error(&RpcError::internal(format!(
            "{ADD}: role {role} of `{name}` was taken meanwhile"
        )));
    };
    if let Err(e) = check_add_block_size(&bname, b.block_size(), a.geom.block_size()) {
        return r.rpc_error(&e);
    }
    // What a member needs: the data offset plus the data size the array's
    // superblocks record (the metadata path checks it again).
    let needed = a.data_offset + a.geom.member_blocks(role);
    if b.num_blocks() < needed {
        return r.rpc_error(&add_field(
            "base_bdev",
            format!(
                "bdev `{bname}` has {} blocks; a member of `{name}` needs {needed}",
                b.num_blocks()
            ),
        ));
    }
    // The role's own device comes back, unless that device was
    // hot-removed: a bdev of the same name now is another device.
    let ours = holds(role) && !a.member_gone(role);
    let new = if ours {
        None
    } else {
        let mut d = match Desc::open(&bname) {
            Ok(d) => d,
            Err(rc) => {
                return r.rpc_error(&add_field(
                    "base_bdev",
                    format!("bdev `{bname}` cannot be opened: {}", errno::strerror(-rc)),
                ))
            }
        };
        if d.claim().is_err() {
            return r.rpc_error(&add_field(
                "base_bdev",
                format!("bdev `{bname}` is already claimed"),
            ));
        }
        let Some(ch) = d.channel() else {
            return r.rpc_error(&RpcError::errno(
                errno::ENOMEM,
                format!("{ADD}: `{bname}`: no I/O channel"),
            ));
        };
        Some((d, ch))
    };
    // The device's md metadata: read through the new descriptor, or the
    // role's own (kept by the metadata thread).
    let t = match &new {
        Some((d, ch)) => Some((d.raw(), ch.raw())),
        None => a.owned.with(|o| {
            Some((
                o.descs.get(role)?.as_ref()?.raw(),
                o.chans.get(role)?.as_ref()?.raw(),
            ))
        }),
    };
    let Some((desc, ch)) = t else {
        return r.rpc_error(&RpcError::internal(format!(
            "{ADD}: role {role} of `{name}` has no descriptor"
        )));
    };
    let t = Target::of(desc, ch, &b);
    let adding = Adding {
        array: a,
        role,
        claim,
        bname,
        new,
        write_mostly: p.write_mostly,
    };
    // SAFETY: a new device's descriptor and channel live in `adding`,
    // which the completion owns; the role's own live on the metadata
    // thread until the array's teardown, which cannot finish before the
    // read (the array's io_device keeps the members open until then, and
    // the read's completion runs on this thread).
    unsafe {
        read_md_meta(t, move |res| match res {
            Err(e) => r.rpc_error(&RpcError::errno(
                errno::EIO,
                format!("{ADD}: `{}`: {e}", adding.bname),
            )),
            Ok(meta) => add_read(adding, meta, r),
        })
    }
}

/// The device's md metadata is in: put it in the role, then tell the
/// metadata path.
fn add_read(ad: Adding, meta: Vec<u8>, r: Request) {
    let Adding {
        array: a,
        role,
        claim,
        bname,
        new,
        write_mostly,
    } = ad;
    if a.sync.stopping() {
        return r.rpc_error(&RpcError::errno(
            errno::ENODEV,
            format!("{ADD}: array `{}` is being deleted", a.name),
        ));
    }
    let b = match &new {
        Some((d, _)) => d.bdev(),
        None => match a.members()[role].as_ref() {
            Some(m) => m.bdev,
            None => return r.rpc_error(&RpcError::internal("the role lost its member")),
        },
    };
    let sectors = b.num_blocks() * u64::from(b.block_size()) / 512;
    let old_sb = Superblock::decode(&meta, sectors).ok();
    let nm = NewMember {
        device_uuid: old_sb.as_ref().map_or(b.uuid(), |s| s.device_uuid),
        sectors,
        old_sb,
        write_mostly,
    };
    let Some((d, ch)) = new else {
        // The role's own device comes back: nothing to swap.
        return add_commit(a, role, bname, nm, r);
    };
    // Refused before the swap, so a refused add leaves the role as it was
    // (the new device unclaimed).
    match meta::with_host(&a, |h| h.check_add(role, &nm)) {
        None => {
            return r.rpc_error(&RpcError::errno(
                errno::ENODEV,
                format!("{ADD}: array `{}` is being deleted", a.name),
            ))
        }
        Some(Err(e)) => return r.rpc_error(&RpcError::errno(errno::EINVAL, format!("{ADD}: {e}"))),
        Some(Ok(())) => {}
    }
    let member = Member {
        name: bname.clone(),
        desc: d.raw(),
        bdev: b,
        flush: b.write_cache() && b.supports(sys::SPDK_BDEV_IO_TYPE_FLUSH),
        unmap: b.supports(sys::SPDK_BDEV_IO_TYPE_UNMAP),
        uuid: nm.device_uuid,
    };
    a.set_member(role, Some(member.clone()));
    a.owned.with(|o| {
        let old_ch = o.chans[role].replace(ch);
        if let Some(old) = o.descs[role].replace(d) {
            o.retired.push((old, old_ch));
        }
    });
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f2 = failed.clone();
    let m2 = member.clone();
    let per = move |ch: *mut sys::spdk_io_channel| {
        // SAFETY: a live channel of this array's io_device, on its thread.
        if !unsafe { crate::array::channel_set_member(ch, role, Some(&m2)) } {
            f2.store(true, std::sync::atomic::Ordering::Release);
        }
    };
    a.broadcasts
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let a2 = a.clone();
    let done = move |_| {
        a2.broadcasts
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if failed.load(std::sync::atomic::Ordering::Acquire) {
            log_warn!(
                "mdraid {}: a channel got no I/O channel of `{bname}`; its writes to role {role} fail",
                a2.name
            );
        }
        add_commit(a2, role, bname, nm, r);
        drop(claim);
    };
    // SAFETY: the io_device stays registered until the teardown, which
    // waits for `broadcasts` to drop to zero; its channels are ChanCtxs.
    unsafe { crate::spdk::for_each_channel(a.io_device(), per, done) };
}

/// Record the device in the role (the metadata path commits it
/// recovering) and answer.
fn add_commit(a: Arc<Array>, role: usize, bname: String, nm: NewMember, r: Request) {
    let res = meta::with_host(&a, |h| h.add_member(role, nm));
    match res {
        None => r.rpc_error(&RpcError::errno(
            errno::ENODEV,
            format!("{ADD}: array `{}` is being deleted", a.name),
        )),
        Some(Err(e)) => r.rpc_error(&RpcError::errno(errno::EINVAL, format!("{ADD}: {e}"))),
        Some(Ok(kind)) => {
            {
                let mut saved = a.info.saved.lock().unwrap_or_else(|e| e.into_inner());
                saved.base_bdevs = NameList(
                    a.members()
                        .iter()
                        .flatten()
                        .filter_map(|m| BdevName::new(m.name.as_str()).ok())
                        .collect(),
                );
            }
            log_notice!(
                "mdraid {}: `{bname}` brought into role {role}, {}",
                a.name,
                match kind {
                    Recovery::Bitmap => "recovering from the bitmap",
                    Recovery::Full => "rebuilding fully",
                }
            );
            r.result("true")
        }
    }
}

// ------------------------------------------------------------ remove_base_bdev

const REMOVE: &str = "bdev_mdraid_remove_base_bdev";

/// RPC method (registered by the shim).
///
/// # Safety
/// `req` must be a live, unanswered request and `p` null or its params.
#[no_mangle]
pub unsafe extern "C" fn mdraid_rpc_bdev_mdraid_remove_base_bdev(
    req: *mut sys::spdk_jsonrpc_request,
    p: *const sys::spdk_json_val,
) {
    // SAFETY: SPDK hands a method a live, unanswered request and its params.
    run_with(REMOVE, req, p, |r, p: BdevMdraidRemoveBaseBdev| {
        let Some(b) = Bdev::by_name(p.name.as_str()) else {
            return r.rpc_error(&no_device(p.name.as_str()));
        };
        // Its own name, not an alias it was given by (members are known by
        // name, as create and add record them).
        let bname = b.name();
        let Some((a, _)) = crate::module::all()
            .into_iter()
            .find_map(|a| a.serving_role(&bname).map(|x| (a, x)))
        else {
            return r.rpc_error(&RpcError::invalid_field(
                REMOVE,
                "name",
                format!("bdev `{bname}` is not a member of an mdraid array"),
            ));
        };
        let a2 = a.clone();
        on_meta_thread(&a, r, move |r| remove_base_bdev(a2, b, bname, r));
    })
}

/// `bdev_mdraid_remove_base_bdev` on the array's metadata thread: the
/// member fails as a hot-removed one does (`Array::bdev_removed`): no
/// channel takes a new channel of it, the metadata path records it
/// faulty on the survivors (R1: before any write that skipped it
/// completes), each channel puts its channel of it once it applied that
/// state and has no I/O of it in flight, and the metadata tick then
/// releases the claim and closes the descriptor. The answer comes once
/// the failure is committed. Refused (EBUSY, as md refuses to fail the
/// last device holding some of the data) when the array would go
/// offline; a member already faulty is only released.
fn remove_base_bdev(a: Arc<Array>, b: Bdev, bname: String, r: Request) {
    let name = a.name.clone();
    // Checked again here: the metadata thread orders removals.
    let Some((role, _)) = a.serving_role(&bname) else {
        return r.rpc_error(&RpcError::invalid_field(
            REMOVE,
            "name",
            format!("bdev `{bname}` is not a member of an mdraid array"),
        ));
    };
    let st = a.state();
    let in_service = st.members[role].in_service() && a.shared.failed() & 1 << role == 0;
    if in_service {
        if st.offline {
            return r.rpc_error(&RpcError::errno(
                errno::EBUSY,
                format!("{REMOVE}: array `{name}` is offline"),
            ));
        }
        let dead = st.not_in_sync() | a.shared.failed() | 1 << role;
        if !survives(&a.geom, dead) {
            return r.rpc_error(&RpcError::errno(
                errno::EBUSY,
                format!(
                    "{REMOVE}: `{bname}` (role {role}) holds data no other member of `{name}` has: removing it would take the array offline"
                ),
            ));
        }
    }
    let device = st.readded[role];
    if a.bdev_removed(b.raw()) != Some(role) {
        return r.rpc_error(&RpcError::internal(format!(
            "{REMOVE}: `{bname}` no longer serves role {role} of `{name}`"
        )));
    }
    log_notice!(
        "mdraid {name}: member {bname} (role {role}) removed by {REMOVE}{}",
        if in_service {
            "; failing it"
        } else {
            " (failed already)"
        }
    );
    // As a channel reports a failure it saw: channels stop using the
    // member at once; the first report goes to the metadata path.
    if in_service && a.shared.set_failed(role, device) {
        meta::request(
            &a,
            MetaRequest::MemberFailed {
                member: role as u16,
                device,
            },
        );
    }
    let a2 = a.clone();
    let mut r = Some(r);
    meta::wait_state(
        &a,
        Box::new(move |s| {
            let Some(s) = s else {
                if let Some(r) = r.take() {
                    r.rpc_error(&RpcError::errno(
                        errno::ENODEV,
                        format!("{REMOVE}: array `{}` is being deleted", a2.name),
                    ));
                }
                return true;
            };
            if s.members[role].in_service() && s.readded[role] == device {
                return false;
            }
            // Committed: save_config no longer names it (with superblocks,
            // which record the roles; without, the create's members are the
            // roles in order and stay so: a replay of fewer would lay
            // another array over the data, as the daemon keeps them too).
            if a2.info.superblock {
                let mut saved = a2.info.saved.lock().unwrap_or_else(|e| e.into_inner());
                let left: Vec<BdevName> = saved
                    .base_bdevs
                    .iter()
                    .filter(|n| n.as_str() != bname)
                    .cloned()
                    .collect();
                saved.base_bdevs = NameList(left);
                let wm: Vec<BdevName> = saved
                    .write_mostly
                    .iter()
                    .filter(|n| n.as_str() != bname)
                    .cloned()
                    .collect();
                saved.write_mostly = NameList(wm);
            }
            if let Some(r) = r.take() {
                r.result("true");
            }
            true
        }),
    );
}

// ------------------------------------------------------------ set_write_mostly

const WRITE_MOSTLY: &str = "bdev_mdraid_set_write_mostly";

/// RPC method (registered by the shim).
///
/// # Safety
/// `req` must be a live, unanswered request and `p` null or its params.
#[no_mangle]
pub unsafe extern "C" fn mdraid_rpc_bdev_mdraid_set_write_mostly(
    req: *mut sys::spdk_jsonrpc_request,
    p: *const sys::spdk_json_val,
) {
    // SAFETY: SPDK hands a method a live, unanswered request and its params.
    run_with(WRITE_MOSTLY, req, p, |r, p: BdevMdraidSetWriteMostly| {
        let Some(a) = crate::module::find(p.name.as_str()) else {
            return r.rpc_error(&no_array(p.name.as_str()));
        };
        let a2 = a.clone();
        on_meta_thread(&a, r, move |r| set_write_mostly(a2, p, r));
    })
}

/// `bdev_mdraid_set_write_mostly` on the metadata thread: md's
/// `writemostly` member state, checked and refused as the embedded host
/// refuses it (`bdev_raid::meta::FlagError`); recorded in the
/// superblocks by the metadata path, then broadcast. The answer comes
/// once the state records it (or a newer call for the member superseded
/// this one).
fn set_write_mostly(a: Arc<Array>, p: BdevMdraidSetWriteMostly, r: Request) {
    let name = a.name.clone();
    let bname = p.base_bdev.as_str().to_string();
    let on = p.write_mostly;
    let Some(role) = a
        .members()
        .iter()
        .position(|m| m.as_ref().is_some_and(|m| m.name == bname))
    else {
        return r.rpc_error(&RpcError::invalid_field(
            WRITE_MOSTLY,
            "base_bdev",
            format!("`{bname}` is not a member of array `{name}`"),
        ));
    };
    let res = meta::with_host(&a, |h| h.set_write_mostly(role, on));
    match res {
        None => {
            return r.rpc_error(&RpcError::errno(
                errno::ENODEV,
                format!("{WRITE_MOSTLY}: array `{name}` is being deleted"),
            ))
        }
        Some(Err(e)) => {
            let f = match e {
                FlagError::NotInService { .. } | FlagError::Role { .. } => "base_bdev",
                _ => "write_mostly",
            };
            return r.rpc_error(&RpcError::invalid_field(
                WRITE_MOSTLY,
                f,
                format!("`{bname}`: {e}"),
            ));
        }
        Some(Ok(())) => {}
    }
    {
        let mut saved = a.info.saved.lock().unwrap_or_else(|e| e.into_inner());
        let mut wm: Vec<BdevName> = saved
            .write_mostly
            .iter()
            .filter(|n| n.as_str() != bname)
            .cloned()
            .collect();
        if on {
            wm.push(p.base_bdev.clone());
        }
        saved.write_mostly = NameList(wm);
    }
    log_notice!(
        "mdraid {name}: `{bname}` (role {role}) {} write-mostly",
        if on { "is" } else { "is no longer" }
    );
    // This call's number among the member's calls.
    let gen = a.owned.with(|o| {
        if o.wm_gen.len() <= role {
            o.wm_gen.resize_with(role + 1, Default::default);
        }
        let g = o.wm_gen[role].clone();
        g.set(g.get() + 1);
        g
    });
    let mine = gen.get();
    let mut r = Some(r);
    meta::wait_state(
        &a,
        Box::new(move |s| {
            let answer = match s {
                None => Some(Err(RpcError::errno(
                    errno::ENODEV,
                    format!("{WRITE_MOSTLY}: array `{name}` is being deleted"),
                ))),
                Some(s) if (s.write_mostly & 1 << role != 0) == on || gen.get() != mine => {
                    Some(Ok(()))
                }
                Some(s) if s.offline => Some(Err(RpcError::errno(
                    errno::EIO,
                    format!("{WRITE_MOSTLY}: array `{name}` went offline before the change was recorded"),
                ))),
                Some(_) => None,
            };
            match (answer, r.take()) {
                (None, req) => {
                    r = req;
                    false
                }
                (Some(Ok(())), Some(req)) => {
                    req.result("true");
                    true
                }
                (Some(Err(e)), Some(req)) => {
                    req.rpc_error(&e);
                    true
                }
                (Some(_), None) => true,
            }
        }),
    );
}

// ------------------------------------------------------------ examine

const EXAMINE: &str = "bdev_mdraid_examine";

/// RPC method (registered by the shim).
///
/// # Safety
/// `req` must be a live, unanswered request and `p` null or its params.
#[no_mangle]
pub unsafe extern "C" fn mdraid_rpc_bdev_mdraid_examine(
    req: *mut sys::spdk_jsonrpc_request,
    p: *const sys::spdk_json_val,
) {
    // SAFETY: SPDK hands a method a live, unanswered request and its params.
    run_with(EXAMINE, req, p, |r, p: BdevMdraidExamine| {
        let one = p.name.as_ref().map(|n| n.as_str().to_string());
        let bdevs = match &one {
            Some(n) => {
                let Some(b) = Bdev::by_name(n) else {
                    return r.rpc_error(&no_device(n));
                };
                if crate::module::names_array(n) {
                    return r.rpc_error(&BdevMdraidExamine::array_named(n));
                }
                vec![b]
            }
            // Every bdev but the arrays.
            None => Bdev::all()
                .into_iter()
                .filter(|b| !crate::module::is_array(&b.name()))
                .collect(),
        };
        crate::examine::examine_bdevs(bdevs, move |found| {
            let mut v = Vec::with_capacity(found.len());
            for (n, f) in found {
                match (f, one.is_some()) {
                    (Ok(i), _) => v.push(i),
                    (Err(e), true) => {
                        return r.rpc_error(&RpcError::errno(
                            errno::EINVAL,
                            format!("{EXAMINE}: bdev {n}: {e}"),
                        ))
                    }
                    (Err(e), false) => {
                        log_warn!("mdraid: {EXAMINE} {n}: {e}; reported without a superblock");
                        v.push(mdraid_rpc::results::MdraidExamineInfo::blank(&n));
                    }
                }
            }
            match serde_json::to_string(&v) {
                Ok(s) => r.result(&s),
                Err(e) => r.rpc_error(&RpcError::internal(e.to_string())),
            }
        });
    })
}

// ------------------------------------------------------------ bdev_mdraid_zero_superblock

/// RPC method (registered by the shim): wipe the md superblock of a bdev
/// no array holds (mdadm's `--zero-superblock`). The bdev is claimed while
/// it is wiped; the wipe is read back.
///
/// # Safety
/// `req` must be a live, unanswered request and `p` null or its params.
#[no_mangle]
pub unsafe extern "C" fn mdraid_rpc_bdev_mdraid_zero_superblock(
    req: *mut sys::spdk_jsonrpc_request,
    p: *const sys::spdk_json_val,
) {
    const M: &str = "bdev_mdraid_zero_superblock";
    // SAFETY: SPDK hands a method a live, unanswered request and its params.
    run_with(M, req, p, |r, p: BdevMdraidZeroSuperblock| {
        let n = p.name.as_str().to_string();
        if crate::module::names_array(&n) {
            return r.rpc_error(&BdevMdraidZeroSuperblock::array_named(&n));
        }
        let by = || {
            crate::module::all()
                .into_iter()
                .find(|a| a.serving_role(&n).is_some())
                .map_or_else(|| "another module".to_string(), |a| a.name.clone())
        };
        let mut d = match Desc::open(&n) {
            Ok(d) => d,
            Err(rc) if rc == -ENODEV => return r.rpc_error(&no_device(&n)),
            Err(rc) if rc == -EPERM => {
                return r.rpc_error(&BdevMdraidZeroSuperblock::claimed(&n, &by()))
            }
            Err(rc) => {
                return r.rpc_error(&RpcError::errno(
                    -rc,
                    format!("{M}: `{n}`: cannot open it: {}", errno::strerror(-rc)),
                ))
            }
        };
        if d.claim().is_err() {
            return r.rpc_error(&BdevMdraidZeroSuperblock::claimed(&n, &by()));
        }
        let Some(ch) = d.channel() else {
            return r.rpc_error(&RpcError::errno(
                errno::ENOMEM,
                format!("{M}: `{n}`: no I/O channel"),
            ));
        };
        let b = d.bdev();
        let t = Target::of(d.raw(), ch.raw(), &b);
        let sectors = b.num_blocks() * u64::from(b.block_size()) / 512;
        let is_md = move |meta: &[u8]| {
            meta.len() >= SB_BLOCK_BYTES
                && !matches!(
                    Superblock::decode(meta, sectors),
                    Err(bdev_raid::ondisk::SbError::BadMagic { .. })
                )
        };
        let io = {
            let n = n.clone();
            Rc::new(move |e: &str| RpcError::errno(errno::EIO, format!("{M}: `{n}`: {e}")))
        };
        let read_done = move |res: Result<Vec<u8>, String>| {
            let meta = match res {
                Ok(m) => m,
                Err(e) => return r.rpc_error(&io(&e)),
            };
            if !is_md(&meta) {
                return r.rpc_error(&BdevMdraidZeroSuperblock::blank(&n));
            }
            // The descriptor and channel live until the wipe is read back.
            let held = Rc::new(RefCell::new(Some((ch, d))));
            let answer = Rc::new(RefCell::new(Some(r)));
            let after = {
                let (held, answer, io) = (held.clone(), answer.clone(), io.clone());
                move || {
                    let Some(r) = answer.borrow_mut().take() else {
                        return;
                    };
                    let reread = move |res: Result<Vec<u8>, String>| {
                        // Channel, then descriptor (releasing the claim).
                        drop(held.borrow_mut().take());
                        match res {
                            Ok(m) if !is_md(&m) => {
                                log_notice!("mdraid: `{n}`: md superblock zeroed");
                                crate::examine::forget_member(&n);
                                r.result("true")
                            }
                            Ok(_) => {
                                r.rpc_error(&io("the superblock is still there after the wipe"))
                            }
                            Err(e) => r.rpc_error(&io(&e)),
                        }
                    };
                    // SAFETY: the descriptor and channel are held until
                    // `reread` runs.
                    unsafe { read_md_meta(t, reread) }
                }
            };
            let n = {
                let g = held.borrow();
                let (ch, d) = g.as_ref().expect("held");
                meta::wipe_all(&[(d, ch)], SB_BLOCK_BYTES, after)
            };
            if n == 0 {
                drop(held.borrow_mut().take());
                if let Some(r) = answer.borrow_mut().take() {
                    r.rpc_error(&io("the wipe could not be submitted"));
                }
            }
        };
        // SAFETY: the descriptor and channel move into the completion,
        // which keeps them until the last read ended.
        unsafe { read_md_meta(t, read_done) }
    })
}
