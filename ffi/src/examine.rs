//! Examine: arrays come back by themselves when their members appear.
//!
//! SPDK calls the module's `examine_disk` for every new bdev (the shim
//! registers it; `examine_config` has nothing to do from a config and only
//! reports done). The md metadata of the bdev is read through a read-only
//! descriptor ([`crate::probe`]): a bdev with no md superblock is left
//! alone, a damaged superblock is logged and ignored, a member of an array
//! that runs already is logged (`bdev_mdraid_add_base_bdev` brings it
//! back). Other members are kept, grouped by array uuid, until the group
//! is complete; then the array is assembled exactly as `bdev_mdraid_create`
//! does on those members (`crate::rpc::create`, which plans with
//! `mdraid_rpc::plan::plan_assemble` and assembles with
//! `bdev_raid::assemble`: the freshest `events` win, stale members are left
//! out, R6).
//!
//! When a group is complete (the policy): every role the freshest
//! superblock seen records active has a member that assembly would use —
//! one whose superblock is current (events within one of the freshest)
//! and claims that role. A member that failed and was recorded faulty is
//! not waited for; a member that is simply absent (a disk gone while the
//! array was down) is, as md's incremental assembly waits without `--run`:
//! a degraded array is started explicitly with `bdev_mdraid_create` on the
//! members present. Once it has run degraded, its superblocks record the
//! absent role as served by no device (md writes the slot spare), so it
//! is complete without it next time, as for md's incremental assembly.
//! Examine never starts an array on a stale member: a stale member cannot
//! complete a group (assembly refuses it), and when it shows up with the
//! fresh ones it is left out.
//!
//! The array is named after the superblock's name (the part after the
//! last `:` of mdadm's `host:name`), or `md_<uuid prefix>` when that name
//! is taken or not a valid bdev name. `spdk_bdev_module_examine_done` is
//! called once per examine, after the assembly the bdev completed ended,
//! so `bdev_wait_for_examine` (and `bdev_aio_create`, which waits for it)
//! return with the array registered. A create RPC arriving while such an
//! assembly runs waits for it, and succeeds without doing anything when
//! it names the array examine assembled with its members.

use std::cell::RefCell;
use std::rc::Rc;

use bdev_raid::assemble::{assemble, md_uuid, AssembleOptions, Candidate};
use bdev_raid::ondisk::{DevRole, SbError, Superblock, SB_BLOCK_BYTES};
use mdraid_rpc::params::BdevMdraidCreate;
use mdraid_rpc::results::MdraidExamineInfo;
use mdraid_rpc::types::{BdevName, BitmapSetting, NameList, RaidLevel, Uuid as RpcUuid};

use crate::probe::{read_md_meta, Target};
use crate::spdk::{guard, log_notice, log_warn, Bdev, Desc};
use crate::sys;

/// Ends an examine when dropped, whichever way it ends (a panic
/// included): for SPDK's examine callbacks it calls
/// `spdk_bdev_module_examine_done` exactly once; for
/// `bdev_mdraid_examine` it runs the RPC's continuation.
struct ExamineDone(Option<Box<dyn FnOnce()>>);

impl ExamineDone {
    /// For an examine callback of SPDK's.
    fn spdk() -> ExamineDone {
        ExamineDone(None)
    }
}

impl Drop for ExamineDone {
    fn drop(&mut self) {
        match self.0.take() {
            Some(f) => f(),
            // SAFETY: one examine_done per examine_config/examine_disk
            // call (each creates one such ExamineDone); the module lives
            // for the process.
            None => unsafe { sys::spdk_bdev_module_examine_done(sys::mdraid_shim_module()) },
        }
    }
}

/// A member seen, waiting for the rest of its array.
struct Cand {
    name: String,
    /// Its md metadata (superblock, then the bitmap area).
    meta: Vec<u8>,
    sb: Superblock,
    sectors: u64,
    block_size: u32,
}

struct Group {
    uuid: [u8; 16],
    cands: Vec<Cand>,
}

#[derive(Default)]
struct State {
    groups: Vec<Group>,
    /// Assemblies examine started, not finished.
    busy: usize,
    /// Run once no assembly of examine's is in flight.
    waiters: Vec<Box<dyn FnOnce()>>,
}

thread_local! {
    // Examine and the RPCs run on the app thread.
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// An assembly examine started is in flight.
pub fn busy() -> bool {
    STATE.with(|s| s.borrow().busy > 0)
}

/// Run `f` once no assembly of examine's is in flight.
pub fn after(f: impl FnOnce() + 'static) {
    if busy() {
        STATE.with(|s| s.borrow_mut().waiters.push(Box::new(f)));
    } else {
        f()
    }
}

/// The bdevs examine holds as members of md array `uuid`, waiting for the
/// rest of them.
pub fn waiting(uuid: &[u8; 16]) -> Vec<String> {
    STATE.with(|s| {
        s.borrow()
            .groups
            .iter()
            .filter(|g| g.uuid == *uuid)
            .flat_map(|g| g.cands.iter().map(|c| c.name.clone()))
            .collect()
    })
}

/// Array `uuid` runs: the members examine kept for it are not needed.
pub fn forget(uuid: &[u8; 16]) {
    STATE.with(|s| s.borrow_mut().groups.retain(|g| g.uuid != *uuid));
}

fn assembly_ended() {
    let waiters = STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.busy -= 1;
        if s.busy == 0 {
            std::mem::take(&mut s.waiters)
        } else {
            Vec::new()
        }
    });
    for w in waiters {
        w()
    }
}

/// `examine_config` (the shim's module table): nothing to claim from a
/// config; examine_disk reads the bdev.
#[no_mangle]
pub extern "C" fn mdraid_examine_config(_bdev: *mut sys::spdk_bdev) {
    let done = ExamineDone::spdk();
    guard("examine_config", (), move || drop(done))
}

/// `examine_disk` (the shim's module table).
///
/// # Safety
/// `bdev` must be a registered bdev (SPDK's contract for examine).
#[no_mangle]
pub unsafe extern "C" fn mdraid_examine_disk(bdev: *mut sys::spdk_bdev) {
    let done = ExamineDone::spdk();
    guard("examine_disk", (), move || {
        let Some(b) = std::ptr::NonNull::new(bdev).map(Bdev) else {
            return;
        };
        examine(b, done)
    })
}

fn examine(b: Bdev, done: ExamineDone) {
    let name = b.name();
    // Our own arrays (registered or being made) are not members.
    if crate::module::is_array(&name) {
        return;
    }
    let desc = match Desc::open_ro(&name) {
        Ok(d) => d,
        Err(rc) => {
            log_warn!("mdraid: examine {name}: cannot open it ({rc})");
            return;
        }
    };
    let Some(ch) = desc.channel() else {
        log_warn!("mdraid: examine {name}: no I/O channel");
        return;
    };
    let t = Target::of(desc.raw(), ch.raw(), &b);
    let read_done = move |res: Result<Vec<u8>, String>| {
        // The descriptor and channel go first (channel, then descriptor).
        drop(ch);
        drop(desc);
        match res {
            Ok(meta) => seen(&name, t, meta, done),
            Err(e) => log_warn!("mdraid: examine {name}: {e}; ignored"),
        }
    };
    // SAFETY: the descriptor and channel move into the completion, which
    // drops them only after the last read ended.
    unsafe { read_md_meta(t, read_done) }
}

/// The md metadata of bdev `name` was read.
fn seen(name: &str, t: Target, meta: Vec<u8>, done: ExamineDone) {
    if meta.len() < SB_BLOCK_BYTES {
        return;
    }
    let sectors = t.num_blocks * t.block_size / 512;
    let sb = match Superblock::decode(&meta, sectors) {
        Ok(sb) => sb,
        Err(SbError::BadMagic { .. }) => return,
        Err(e) => {
            log_warn!("mdraid: examine {name}: damaged md superblock ({e}); ignored");
            return;
        }
    };
    let uuid = sb.set_uuid;
    if let Some(a) = crate::module::all().into_iter().find(|a| a.uuid == uuid) {
        // One the array holds is no news; one it does not hold may come back.
        if a.serving_role(name).is_none() {
            log_notice!(
                "mdraid: examine {name}: a member of array {} ({}), which runs without it; bdev_mdraid_add_base_bdev brings it back",
                a.name,
                md_uuid(&uuid)
            );
        }
        return;
    }
    let ready = STATE.with(|s| {
        let mut s = s.borrow_mut();
        let gi = match s.groups.iter().position(|g| g.uuid == uuid) {
            Some(i) => i,
            None => {
                s.groups.push(Group {
                    uuid,
                    cands: Vec::new(),
                });
                s.groups.len() - 1
            }
        };
        let g = &mut s.groups[gi];
        g.cands.retain(|c| c.name != name);
        g.cands.push(Cand {
            name: name.to_string(),
            meta,
            sb,
            sectors,
            block_size: t.block_size as u32,
        });
        if complete(g) {
            let g = s.groups.remove(gi);
            s.busy += 1;
            Some(g)
        } else {
            log_notice!(
                "mdraid: examine {name}: member of md array {} (`{}`); waiting for the others ({} seen)",
                md_uuid(&uuid),
                g.cands[0].sb.name(),
                g.cands.len()
            );
            None
        }
    });
    if let Some(g) = ready {
        start(g, done);
    }
}

/// Whether `g` is complete (see the module docs).
fn complete(g: &Group) -> bool {
    let Some(fresh) = g.cands.iter().map(|c| &c.sb).max_by_key(|sb| sb.events) else {
        return false;
    };
    let cands: Vec<Candidate> = g
        .cands
        .iter()
        .map(|c| Candidate {
            name: &c.name,
            sb: &c.meta,
            sectors: c.sectors,
        })
        .collect();
    let Ok(asm) = assemble(
        &cands,
        &AssembleOptions {
            uuid: Some(g.uuid),
            force: false,
            block_size: g.cands[0].block_size,
        },
    ) else {
        return false;
    };
    let raid_disks = fresh.raid_disks as usize;
    fresh.dev_roles.iter().all(|r| match r {
        DevRole::Active(role) if (*role as usize) < raid_disks => asm
            .member_of_role
            .get(*role as usize)
            .is_some_and(|m| m.is_some()),
        _ => true,
    })
}

/// The name examine gives the array of `sb`.
fn array_name(sb: &Superblock) -> String {
    let short = sb.array_name();
    let free = |n: &str| {
        BdevName::new(n).is_ok() && Bdev::by_name(n).is_none() && !crate::module::is_array(n)
    };
    if free(&short) {
        return short;
    }
    let u = md_uuid(&sb.set_uuid);
    format!("md_{}", &u[..8])
}

fn start(g: Group, done: ExamineDone) {
    let sb = g.cands.iter().map(|c| &c.sb).max_by_key(|sb| sb.events);
    let Some(sb) = sb else {
        assembly_ended();
        return;
    };
    let Some(level) = RaidLevel::ALL
        .iter()
        .copied()
        .find(|l| l.md_level() == sb.level)
    else {
        log_warn!(
            "mdraid: examine: md array {} has level {}, which mdraid does not run; ignored",
            md_uuid(&g.uuid),
            sb.level
        );
        assembly_ended();
        return;
    };
    let name = array_name(sb);
    // A candidate another module claims (the base of a delay or error bdev
    // stacked on it, which carries the same superblock) is not a member:
    // the bdev stacked on it is.
    let claimable = |n: &str| crate::spdk::Desc::open(n).is_ok_and(|mut d| d.claim().is_ok());
    let names: Vec<BdevName> = g
        .cands
        .iter()
        .filter(|c| claimable(&c.name))
        .filter_map(|c| BdevName::new(c.name.as_str()).ok())
        .collect();
    let (Ok(bname), false) = (BdevName::new(name.as_str()), names.is_empty()) else {
        assembly_ended();
        return;
    };
    let p = BdevMdraidCreate {
        name: bname,
        raid_level: level,
        base_bdevs: NameList(names),
        strip_size_kb: None,
        uuid: Some(RpcUuid(g.uuid)),
        superblock: true,
        bitmap: BitmapSetting::Default,
        layout: None,
        write_mostly: NameList(Vec::new()),
        write_behind: None,
        force: false,
        assume_clean: false,
    };
    log_notice!(
        "mdraid: examine: md array {} complete on {}; assembling it as {name}",
        md_uuid(&g.uuid),
        g.cands
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let reply = crate::rpc::Reply::Done(Box::new(move |res| {
        if let Err(e) = res {
            log_warn!(
                "mdraid: examine: assembling md array {} failed: {}",
                md_uuid(&g.uuid),
                e.message
            );
        }
        // The bdev's examine ends with the assembly it completed.
        drop(done);
        assembly_ended();
    }));
    crate::rpc::create_now(p, reply, true);
}

// ------------------------------------------------------------ bdev_mdraid_examine

/// One bdev of a `bdev_mdraid_examine` call: its name, and its report
/// or why there is none.
pub type Found = (String, Result<MdraidExamineInfo, String>);

/// `bdev_mdraid_examine` on `bdevs` (on the app thread): read each one's
/// md metadata as the examine callback does and report it, and take the
/// members found exactly as the callback takes them — an array whose
/// members are all there now is assembled (see the module docs), e.g.
/// one deleted without `clear_sb` whose members stayed registered, which
/// SPDK does not examine again. `done` gets the reports in `bdevs`
/// order, once every read and every assembly they completed ended.
pub fn examine_bdevs(bdevs: Vec<Bdev>, done: impl FnOnce(Vec<Found>) + 'static) {
    struct Calls {
        found: Vec<Option<Found>>,
        left: usize,
        done: Option<Box<dyn FnOnce(Vec<Found>)>>,
    }
    let n = bdevs.len();
    let calls = Rc::new(RefCell::new(Calls {
        found: (0..n).map(|_| None).collect(),
        // One for this loop: no answer before every examine started.
        left: n + 1,
        done: Some(Box::new(done)),
    }));
    let one_done = |calls: &Rc<RefCell<Calls>>| {
        let f = {
            let mut c = calls.borrow_mut();
            c.left -= 1;
            if c.left > 0 {
                return;
            }
            let found = c
                .found
                .iter_mut()
                .map(|f| f.take().expect("every bdev reported"))
                .collect::<Vec<_>>();
            c.done.take().map(|d| (d, found))
        };
        if let Some((d, found)) = f {
            d(found)
        }
    };
    for (i, b) in bdevs.into_iter().enumerate() {
        let c2 = calls.clone();
        let end = ExamineDone(Some(Box::new(move || one_done(&c2))));
        let c3 = calls.clone();
        examine_one(b, end, move |f| c3.borrow_mut().found[i] = Some(f));
    }
    one_done(&calls);
}

/// Examine one bdev for `bdev_mdraid_examine`: `report` gets what was
/// found; `end` drops once it was taken as the examine callback takes a
/// bdev (and any assembly it completed ended).
fn examine_one(b: Bdev, end: ExamineDone, report: impl FnOnce(Found) + 'static) {
    let name = b.name();
    let desc = match Desc::open_ro(&name) {
        Ok(d) => d,
        Err(rc) => return report((name, Err(format!("cannot open it ({rc})")))),
    };
    let Some(ch) = desc.channel() else {
        return report((name, Err("no I/O channel".into())));
    };
    let t = Target::of(desc.raw(), ch.raw(), &b);
    let read_done = move |res: Result<Vec<u8>, String>| {
        drop(ch);
        drop(desc);
        match res {
            Err(e) => report((name, Err(e))),
            Ok(meta) => {
                let sectors = t.num_blocks * t.block_size / 512;
                report((
                    name.clone(),
                    MdraidExamineInfo::from_meta(&name, &meta, sectors),
                ));
                seen(&name, t, meta, end)
            }
        }
    };
    // SAFETY: the descriptor and channel move into the completion, which
    // drops them only after the last read ended.
    unsafe { read_md_meta(t, read_done) }
}
