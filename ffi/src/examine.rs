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
use mdraid_rpc::results::{MdraidBaseBdevInfo, MdraidBdevInfo, MdraidExamineInfo};
use mdraid_rpc::types::{BdevName, BitmapSetting, NameList, RaidLevel, RaidState, Uuid as RpcUuid};

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
    /// Creates of md arrays whose members are not all there yet (a
    /// replayed config, [`hold_create`]), by uuid: listed as configuring,
    /// saved by `save_config`, and naming the array examine assembles.
    creates: Vec<BdevMdraidCreate>,
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

/// Array `uuid` runs: the members examine kept for it, and a create
/// waiting for them, are not needed.
pub fn forget(uuid: &[u8; 16]) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.groups.retain(|g| g.uuid != *uuid);
        s.creates.retain(|p| p.uuid.map(|u| u.0) != Some(*uuid));
    });
}

/// Bdev `name` is no longer an md member (its superblock was wiped):
/// examine lets it go.
pub fn forget_member(name: &str) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        for g in &mut s.groups {
            g.cands.retain(|c| c.name != name);
        }
        s.groups.retain(|g| !g.cands.is_empty());
    })
}

/// An array named `name` runs: a create kept under that name is done.
pub fn forget_create(name: &str) {
    STATE.with(|s| s.borrow_mut().creates.retain(|c| c.name.as_str() != name));
}

/// Keep create `p` (of an md array, with its uuid) until examine assembles
/// the array: its members are not all there yet. A create kept for the
/// same array is replaced.
pub fn hold_create(p: BdevMdraidCreate) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.creates
            .retain(|c| c.uuid != p.uuid && c.name.as_str() != p.name.as_str());
        s.creates.push(p);
    })
}

/// The create kept for an array named `name`, if any.
pub fn held_create(name: &str) -> Option<BdevMdraidCreate> {
    STATE.with(|s| {
        s.borrow()
            .creates
            .iter()
            .find(|c| c.name.as_str() == name)
            .cloned()
    })
}

/// Forget the array named `name` that waits for its members
/// (`bdev_mdraid_delete`): the create kept for it and the members examine
/// holds. Whether there was one. `bdev_mdraid_examine` on its members
/// brings it back.
pub fn drop_waiting(name: &str) -> bool {
    let uuid = configuring()
        .into_iter()
        .find(|a| a.name == name)
        .map(|a| a.uuid.0);
    // A create kept has its array's uuid: forgetting the uuid drops it.
    if let Some(u) = uuid {
        forget(&u);
    }
    uuid.is_some()
}

/// The creates kept, for `save_config`.
pub fn held_creates() -> Vec<BdevMdraidCreate> {
    STATE.with(|s| s.borrow().creates.clone())
}

/// The arrays waiting for members, as `bdev_mdraid_get_bdevs` lists them
/// (state `configuring`, as SPDK's raid lists one): every create kept,
/// and every md array examine holds members of.
pub fn configuring() -> Vec<MdraidBdevInfo> {
    STATE.with(|s| {
        let s = s.borrow();
        let mut out: Vec<MdraidBdevInfo> = s
            .creates
            .iter()
            .map(|p| {
                let uuid = p.uuid.map_or([0; 16], |u| u.0);
                waiting_info(s.groups.iter().find(|g| g.uuid == uuid), Some(p))
            })
            .collect();
        out.extend(
            s.groups
                .iter()
                .filter(|g| {
                    !s.creates
                        .iter()
                        .any(|p| p.uuid.map(|u| u.0) == Some(g.uuid))
                })
                .map(|g| waiting_info(Some(g), None)),
        );
        out
    })
}

/// How array `g` (members examine holds), or `p` (a create kept), looks
/// while it waits for members.
fn waiting_info(g: Option<&Group>, p: Option<&BdevMdraidCreate>) -> MdraidBdevInfo {
    // Members deleted since examine saw them are not there.
    let cands: Vec<&Cand> = g
        .map(|g| {
            g.cands
                .iter()
                .filter(|c| Bdev::by_name(&c.name).is_some())
                .collect()
        })
        .unwrap_or_default();
    let fresh = cands.iter().map(|c| &c.sb).max_by_key(|sb| sb.events);
    let level = fresh
        .and_then(|sb| {
            RaidLevel::ALL
                .iter()
                .copied()
                .find(|l| l.md_level() == sb.level)
        })
        .or(p.map(|p| p.raid_level))
        .unwrap_or(RaidLevel::Raid1);
    let raid_disks = fresh.map_or(p.map_or(0, |p| p.base_bdevs.len()), |sb| {
        sb.raid_disks as usize
    });
    // The member serving each role, by its own superblock.
    let mut roles: Vec<Option<&Cand>> = vec![None; raid_disks];
    for c in &cands {
        if let DevRole::Active(r) = c.sb.role() {
            if let Some(slot) = roles.get_mut(r as usize) {
                if slot.is_none_or(|o| o.sb.events < c.sb.events) {
                    *slot = Some(c);
                }
            }
        }
    }
    // Members the create names that have not appeared fill the empty slots.
    let mut absent = p
        .map(|p| {
            p.base_bdevs
                .iter()
                .map(|n| n.to_string())
                .filter(|n| !cands.iter().any(|c| c.name == *n))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter();
    let active =
        |r: usize| fresh.is_none_or(|sb| sb.dev_roles.contains(&DevRole::Active(r as u16)));
    let block_size = cands
        .first()
        .map_or(512, |c| u64::from(c.block_size.max(1)));
    let blocks = |sectors: u64| sectors * 512 / block_size;
    let base_bdevs_list: Vec<MdraidBaseBdevInfo> = roles
        .iter()
        .enumerate()
        .map(|(r, c)| match c {
            Some(c) => MdraidBaseBdevInfo {
                name: Some(c.name.clone()),
                uuid: RpcUuid(c.sb.device_uuid),
                is_configured: false,
                data_offset: blocks(c.sb.data_offset),
                data_size: blocks(c.sb.data_size),
                role: Some(r as u32),
                state: Some("discovered".into()),
                write_mostly: c.sb.write_mostly(),
                io: None,
            },
            None => MdraidBaseBdevInfo {
                name: if active(r) { absent.next() } else { None },
                uuid: RpcUuid([0; 16]),
                is_configured: false,
                data_offset: 0,
                data_size: 0,
                role: Some(r as u32),
                state: Some(if active(r) { "missing" } else { "faulty" }.into()),
                write_mostly: false,
                io: None,
            },
        })
        .collect();
    let discovered = roles.iter().filter(|c| c.is_some()).count() as u32;
    let operational = (0..raid_disks).filter(|&r| active(r)).count() as u32;
    let name = match (p, fresh) {
        (Some(p), _) => p.name.to_string(),
        (None, Some(sb)) => array_name(sb),
        (None, None) => String::new(),
    };
    let uuid = g.map(|g| g.uuid).or(p.and_then(|p| p.uuid.map(|u| u.0)));
    MdraidBdevInfo {
        name,
        uuid: RpcUuid(uuid.unwrap_or([0; 16])),
        strip_size_kb: match (level, fresh) {
            (RaidLevel::Raid1, _) => 0,
            (_, Some(sb)) => sb.chunksize / 2,
            (_, None) => p.and_then(|p| p.strip_size_kb).unwrap_or(0),
        },
        state: RaidState::Configuring,
        raid_level: level,
        superblock: true,
        num_base_bdevs: raid_disks as u32,
        num_base_bdevs_discovered: discovered,
        num_base_bdevs_operational: operational,
        process: None,
        base_bdevs_list,
        layout: fresh.and_then(|sb| {
            matches!(
                level,
                RaidLevel::Raid4 | RaidLevel::Raid5 | RaidLevel::Raid6 | RaidLevel::Raid10
            )
            .then(|| bdev_raid::examine::layout_name(sb.level, sb.layout))
        }),
        events: fresh.map_or(0, |sb| sb.events),
        array_state: Some("inactive".into()),
        degraded: operational < raid_disks as u32,
        sync_action: None,
        mismatch_cnt: None,
        bitmap: None,
        write_behind: None,
    }
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
    // The name a create kept for it gives (a replayed config), else the
    // superblock's.
    let name = STATE
        .with(|s| {
            s.borrow()
                .creates
                .iter()
                .find(|p| p.uuid.map(|u| u.0) == Some(g.uuid))
                .map(|p| p.name.to_string())
        })
        .filter(|n| Bdev::by_name(n).is_none() && !crate::module::is_array(n))
        .unwrap_or_else(|| array_name(sb));
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
