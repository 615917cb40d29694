//! How `bdev_mdraid_create` brings an array up, decided from what the
//! members are (block size, size, the md metadata they carry): a new array
//! on blank members, assembly when they carry one array's superblocks,
//! refusal of another array's or a damaged superblock, no superblock when
//! asked. Pure (no I/O): every host (the embedded daemon, the SPDK module)
//! plans with it, so both give the same `-32602` errors naming the field.

use bdev_raid::assemble::{assemble, md_uuid, AssembleOptions, Assembled, Candidate};
use bdev_raid::bitmap::BitmapGeom;
use bdev_raid::examine::layout_name;
use bdev_raid::layout::{Geometry, GeometryError, GeometryParams, Level};
use bdev_raid::ondisk::{
    bitmap_area_bytes, choose_bm_space, component_size, default_bitmap_chunk, MemberLayout,
    SbError, Superblock, SB_BLOCK_BYTES,
};

use crate::error::errno;
use crate::params::BdevMdraidCreate;
use crate::types::{BdevName, BitmapOptions, BitmapSetting, RaidLevel};
use crate::RpcError;

/// Strip (md chunk) size when `strip_size_kb` is absent: mdadm's default.
pub const DEFAULT_STRIP_KB: u32 = 512;

/// The engine's level of an RPC level.
pub fn level_of(l: RaidLevel) -> Level {
    Level::from_md(l.md_level()).expect("every RaidLevel is an engine level")
}

/// The write-intent bitmap of a new array.
#[derive(Clone, Debug)]
pub struct BitmapPlan {
    pub geom: BitmapGeom,
    pub daemon_sleep_ms: u64,
}

/// md's default bitmap daemon period.
pub const DEFAULT_DAEMON_SLEEP_MS: u64 = 5_000;

/// What planning knows about one member.
#[derive(Clone, Debug)]
pub struct Probe {
    pub block_size: u32,
    pub num_blocks: u64,
    /// The md metadata read from the device (superblock, then the bitmap
    /// area when it records one; empty: device too small).
    pub sb: Vec<u8>,
}

impl Probe {
    pub fn sectors(&self) -> u64 {
        self.num_blocks * self.block_size as u64 / 512
    }
}

/// How `bdev_mdraid_create` will bring an array up.
#[derive(Debug)]
pub enum Plan {
    /// New md array: superblocks to write, then start.
    Create {
        uuid: [u8; 16],
        geom: Geometry,
        strip_kb: u32,
        /// In 512-byte sectors, the same on every member.
        data_offset: u64,
        layouts: Vec<MemberLayout>,
        member_data_blocks: u64,
        bitmap: Option<BitmapPlan>,
        /// Write-mostly members (bit per role, `write_mostly`): their
        /// superblocks carry md's WriteMostly1 devflag.
        write_mostly: u64,
        /// md's max write-behind (`write_behind`, 0: off), in the bitmap's
        /// superblock.
        write_behind: u32,
    },
    /// The members carry this array: assemble it (their superblocks say
    /// which members are write-mostly and the bitmap the write-behind).
    Assemble {
        asm: Box<Assembled>,
        data_offset: u64,
        member_data_blocks: u64,
    },
    /// `superblock: false`: no metadata on the members.
    Bare { geom: Geometry, strip_kb: u32 },
}

pub const CREATE: &str = "bdev_mdraid_create";

pub fn field(f: impl AsRef<str>, msg: impl std::fmt::Display) -> RpcError {
    RpcError::invalid_field(CREATE, f.as_ref(), msg)
}

pub fn geometry_error(e: &GeometryError) -> RpcError {
    let f = match e {
        GeometryError::BlockSize(_) => "base_bdevs".to_string(),
        GeometryError::StripNotPowerOfTwo(_) | GeometryError::StripTooSmall { .. } => {
            "strip_size_kb".to_string()
        }
        GeometryError::TooFewMembers { .. } | GeometryError::TooManyMembers { .. } => {
            "base_bdevs".to_string()
        }
        GeometryError::UnequalMembers { member, .. }
        | GeometryError::MemberTooSmall { member, .. } => {
            format!("base_bdevs[{member}]")
        }
        GeometryError::BadLayout { .. } => "layout".to_string(),
    };
    field(f, e)
}

pub fn strip_for(p: &BdevMdraidCreate) -> u32 {
    match p.raid_level {
        RaidLevel::Raid1 => 0,
        RaidLevel::Linear => p.strip_size_kb.unwrap_or(0),
        _ => p.strip_size_kb.unwrap_or(DEFAULT_STRIP_KB),
    }
}

/// The longest array name md's 32-byte `set_name` holds (NUL-ended).
pub const MD_NAME_MAX: usize = 31;

/// Decide how to bring up the array `p` describes over `probes` (one per
/// `p.base_bdevs`, in order). Pure: no I/O.
/// `new_uuid` makes the array UUID of a new array when `p` names none.
pub fn plan_array(
    p: &BdevMdraidCreate,
    probes: &[Probe],
    new_uuid: impl FnOnce() -> [u8; 16],
) -> Result<Plan, RpcError> {
    let mirrored = matches!(p.raid_level, RaidLevel::Raid1 | RaidLevel::Raid10);
    if !p.write_mostly.is_empty() && !mirrored {
        return Err(field(
            "write_mostly",
            format!(
                "write-mostly members are copies read only when no other copy can serve; {} has no mirrors (raid1, raid10)",
                p.raid_level
            ),
        ));
    }
    if p.write_behind.is_some_and(|n| n > 0) && !mirrored {
        return Err(field(
            "write_behind",
            format!(
                "write-behind lets write-mostly mirrors lag; {} has no mirrors (raid1, raid10)",
                p.raid_level
            ),
        ));
    }
    if p.uuid.is_some_and(|u| u.is_nil()) {
        return Err(field("uuid", "must not be the nil UUID"));
    }
    if p.superblock && p.name.as_str().contains(':') {
        return Err(field(
            "name",
            format!(
                "`{}` contains ':'; md reads a superblock's name as `homehost:name`, so the array would come back as `{}`",
                p.name.as_str(),
                p.name.as_str().rsplit(':').next().unwrap_or("")
            ),
        ));
    }
    if p.superblock && p.name.as_str().len() > MD_NAME_MAX {
        return Err(field(
            "name",
            format!(
                "`{}` is {} bytes long; the superblocks record the array's name in md's set_name, which holds at most {MD_NAME_MAX}",
                p.name.as_str(),
                p.name.as_str().len()
            ),
        ));
    }
    let bs = probes[0].block_size;
    for (i, pr) in probes.iter().enumerate().skip(1) {
        if pr.block_size != bs {
            return Err(field(
                format!("base_bdevs[{i}]"),
                format!(
                    "block size {} differs from base_bdevs[0]'s {bs}",
                    pr.block_size
                ),
            ));
        }
    }
    let level = level_of(p.raid_level);
    let strip_kb = strip_for(p);
    let layout = p.layout.map(|l| l.md_number());

    // What the members carry.
    let mut found: Vec<Option<Superblock>> = Vec::new();
    for (i, pr) in probes.iter().enumerate() {
        if pr.sb.len() < SB_BLOCK_BYTES {
            found.push(None);
            continue;
        }
        match Superblock::decode(&pr.sb, pr.sectors()) {
            Ok(sb) => found.push(Some(sb)),
            Err(SbError::BadMagic { .. }) => found.push(None),
            Err(e) => {
                // md's magic with something wrong: assembly judges it if the
                // others belong to one array; alone it is refused below.
                if !p.superblock {
                    return Err(field(
                        format!("base_bdevs[{i}]"),
                        format!("`{}` carries a damaged md superblock ({e}); superblock=false would overwrite it", p.base_bdevs.0[i]),
                    ));
                }
                found.push(None);
                if probes
                    .iter()
                    .enumerate()
                    .all(|(j, q)| j == i || !Superblock::present(&q.sb, q.sectors()))
                {
                    return Err(field(
                        format!("base_bdevs[{i}]"),
                        format!(
                            "`{}` carries a damaged md superblock ({e}); wipe it before creating an array on it",
                            p.base_bdevs.0[i]
                        ),
                    ));
                }
            }
        }
    }

    if !p.superblock {
        if let Some(i) = found.iter().position(Option::is_some) {
            return Err(field(
                format!("base_bdevs[{i}]"),
                format!(
                    "`{}` carries an md superblock; superblock=false would overwrite it",
                    p.base_bdevs.0[i]
                ),
            ));
        }
        let smallest = probes.iter().map(|q| q.num_blocks).min().unwrap_or(0);
        let geom = Geometry::new(&GeometryParams {
            level,
            layout,
            strip_size_kb: strip_kb,
            block_size: bs,
            member_blocks: vec![smallest; probes.len()],
        })
        .map_err(|e| geometry_error(&e))?;
        return Ok(Plan::Bare { geom, strip_kb });
    }

    // Which array the members belong to.
    let uuids: Vec<[u8; 16]> = found.iter().flatten().map(|sb| sb.set_uuid).collect();
    // Blank members beside an array's: a create (no uuid) of a new array
    // over an old member, or an assembly with a stray bdev? Ambiguous, so
    // refused (mdadm --create asks before it overwrites such a member).
    let is_blank = |pr: &Probe| !Superblock::present(&pr.sb, pr.sectors());
    if let (None, Some(md), Some(blank)) = (
        p.uuid,
        found.iter().position(Option::is_some),
        probes.iter().position(is_blank),
    ) {
        let sb = found[md].as_ref().expect("found");
        return Err(field(
            format!("base_bdevs[{blank}]"),
            format!(
                "`{}` carries no md superblock while `{}` carries array {} (`{}`): to start that array, list its members only (or give its `uuid`); to make a new array, wipe `{}` first (bdev_mdraid_zero_superblock)",
                p.base_bdevs.0[blank],
                p.base_bdevs.0[md],
                md_uuid(&sb.set_uuid),
                sb.name(),
                p.base_bdevs.0[md]
            ),
        ));
    }
    if let Some(first) = uuids.first() {
        let target = p.uuid.map(|u| u.0).unwrap_or(*first);
        for (i, sb) in found.iter().enumerate() {
            if let Some(sb) = sb {
                if sb.set_uuid != target {
                    return Err(field(
                        format!("base_bdevs[{i}]"),
                        format!(
                            "`{}` carries the md superblock of another array ({} `{}`); delete that array with clear_sb, or wipe the member with bdev_mdraid_zero_superblock",
                            p.base_bdevs.0[i],
                            md_uuid(&sb.set_uuid),
                            sb.name()
                        ),
                    ));
                }
            }
        }
        return plan_assemble(p, probes, target, bs);
    }

    // A new array.
    let chunk_sectors = strip_kb * 2;
    let bitmap = bitmap_for(p, level, bs, probes)?;
    // Room for the bitmap of the largest chunk space the members allow.
    let bound: u64 = probes.iter().map(|q| q.sectors()).sum();
    let area = bitmap
        .as_ref()
        .map(|b| bitmap_area_bytes(bound, b.0 as u32));
    let mut layouts = Vec::new();
    for (i, pr) in probes.iter().enumerate() {
        let l = MemberLayout::new(pr.sectors(), chunk_sectors, area)
            .map_err(|e| field(format!("base_bdevs[{i}]"), e))?;
        layouts.push(l);
    }
    let data_offset = layouts.iter().map(|l| l.data_offset).max().unwrap_or(0);
    for (i, l) in layouts.iter_mut().enumerate() {
        if l.member_sectors <= data_offset {
            return Err(field(
                format!("base_bdevs[{i}]"),
                format!(
                    "{} sectors leave no room for data after md's data offset {data_offset}",
                    l.member_sectors
                ),
            ));
        }
        l.data_offset = data_offset;
        l.data_size = l.member_sectors - data_offset;
    }
    let min_data = layouts.iter().map(|l| l.data_size).min().unwrap_or(0);
    let sb_chunk = if matches!(level, Level::Raid1) {
        0
    } else {
        chunk_sectors
    };
    let used = component_size(level.md_level(), sb_chunk, min_data);
    let spb = bs as u64 / 512;
    let member_data_blocks = used / spb;
    if member_data_blocks == 0 {
        return Err(field("base_bdevs", "members too small for any data"));
    }
    let geom = Geometry::new(&GeometryParams {
        level,
        layout,
        strip_size_kb: strip_kb,
        block_size: bs,
        member_blocks: vec![member_data_blocks; probes.len()],
    })
    .map_err(|e| geometry_error(&e))?;
    let bitmap = match bitmap {
        Some((chunk, daemon_sleep_ms)) => Some(BitmapPlan {
            geom: BitmapGeom::new(&geom, chunk).map_err(|e| field("bitmap.chunk_kb", e))?,
            daemon_sleep_ms,
        }),
        None => None,
    };
    let write_mostly = p
        .base_bdevs
        .iter()
        .enumerate()
        .filter(|(_, n)| p.write_mostly.contains(n.as_str()))
        .fold(0u64, |a, (i, _)| a | 1 << i);
    if write_mostly != 0 && !bdev_raid::state::survives(&geom, write_mostly) {
        return Err(field(
            "write_mostly",
            "every copy of some data would be on a write-mostly member; leave at least one copy of each block on a member that is not",
        ));
    }
    let write_behind = p.write_behind.unwrap_or(0);
    if write_behind > 0 && bitmap.is_none() {
        return Err(field(
            "write_behind",
            "write-behind needs the write-intent bitmap (a crash must resync what the write-mostly members missed)",
        ));
    }
    let uuid = p.uuid.map(|u| u.0).unwrap_or_else(new_uuid);
    Ok(Plan::Create {
        uuid,
        geom,
        strip_kb,
        data_offset,
        layouts,
        member_data_blocks,
        bitmap,
        write_mostly,
        write_behind,
    })
}

/// Whether `probe` carries an md superblock of array `uuid`.
pub fn carries_array(probe: &Probe, uuid: [u8; 16]) -> bool {
    probe.sb.len() >= SB_BLOCK_BYTES
        && Superblock::decode(&probe.sb, probe.sectors()).is_ok_and(|sb| sb.set_uuid == uuid)
}

/// [`plan_array`], completed by devices the create does not list.
///
/// When `p` names its array (`uuid`, as every create `save_config` writes
/// does) and the listed members carry that array's superblocks without
/// serving every role, the devices `scan` offers that carry the same
/// array's superblocks are assembled with them, as SPDK's examine and md's
/// `--assemble --scan` find a member wherever it is. That is the case of a
/// config saved while a member was out, the member added back since.
/// Assembly's rules (R6) judge the devices found as they judge the listed
/// ones: a stale one, or one the freshest superblock records faulty, is
/// refused.
///
/// `scan` is called only then; it returns the devices that may be taken
/// (those no one claims), by name. Returns the create
/// as planned, with the devices taken listed after the listed ones, their
/// probes, and the plan.
pub fn plan_completed(
    p: &BdevMdraidCreate,
    mut probes: Vec<Probe>,
    scan: impl FnOnce() -> Vec<(BdevName, Probe)>,
    new_uuid: impl Fn() -> [u8; 16],
) -> (BdevMdraidCreate, Vec<Probe>, Result<Plan, RpcError>) {
    let plan = plan_array(p, &probes, &new_uuid);
    let incomplete = match (&plan, p.uuid) {
        (_, None) => false,
        _ if !p.superblock => false,
        (Ok(Plan::Assemble { asm, .. }), _) => asm.member_of_role.iter().any(Option::is_none),
        (Ok(_), _) => false,
        (Err(_), Some(u)) => probes.iter().any(|pr| carries_array(pr, u.0)),
    };
    let Some(uuid) = p.uuid.filter(|_| incomplete) else {
        return (p.clone(), probes, plan);
    };
    let found: Vec<(BdevName, Probe)> = scan()
        .into_iter()
        .filter(|(n, pr)| !p.base_bdevs.contains(n.as_str()) && carries_array(pr, uuid.0))
        .collect();
    if found.is_empty() {
        return (p.clone(), probes, plan);
    }
    let mut q = p.clone();
    for (n, pr) in found {
        q.base_bdevs.0.push(n);
        probes.push(pr);
    }
    let plan = plan_array(&q, &probes, &new_uuid);
    (q, probes, plan)
}

/// The bitmap a new array gets: `(chunk bytes, daemon sleep ms)`, or none.
/// Levels with redundancy get one unless `bitmap` is false; the default
/// chunk is mdadm's (at least 64 MiB, larger when the bits would not fit
/// mdadm's bitmap space).
pub fn bitmap_for(
    p: &BdevMdraidCreate,
    level: Level,
    bs: u32,
    probes: &[Probe],
) -> Result<Option<(u64, u64)>, RpcError> {
    let redundant = !matches!(level, Level::Raid0 | Level::Linear);
    let opts = match p.bitmap {
        BitmapSetting::Off => return Ok(None),
        BitmapSetting::Default if !redundant => return Ok(None),
        BitmapSetting::Default => BitmapOptions::default(),
        BitmapSetting::On(_) if !redundant => {
            return Err(field(
                "bitmap",
                format!(
                    "a {} array has no redundancy, so a write-intent bitmap has nothing to resync; omit `bitmap` or pass false",
                    level.name()
                ),
            ))
        }
        BitmapSetting::On(o) => o,
    };
    let chunk = match opts.chunk_kb {
        Some(kb) => {
            let bytes = u64::from(kb) * 1024;
            if !kb.is_power_of_two() || bytes < 4096 || bytes < u64::from(bs) {
                return Err(field(
                    "bitmap.chunk_kb",
                    format!(
                        "{kb}: must be a power of two of at least 4 KiB and the block size ({bs} bytes)"
                    ),
                ));
            }
            bytes
        }
        None => {
            let smallest = probes.iter().map(|q| q.sectors()).min().unwrap_or(0);
            let bound: u64 = probes.iter().map(|q| q.sectors()).sum();
            default_bitmap_chunk(bound, choose_bm_space(smallest))
        }
    };
    let daemon = opts
        .daemon_sleep_ms
        .map_or(DEFAULT_DAEMON_SLEEP_MS, u64::from);
    Ok(Some((chunk, daemon)))
}

pub fn plan_assemble(
    p: &BdevMdraidCreate,
    probes: &[Probe],
    uuid: [u8; 16],
    bs: u32,
) -> Result<Plan, RpcError> {
    let names: Vec<&str> = p.base_bdevs.iter().map(|n| n.as_str()).collect();
    let cands: Vec<Candidate> = probes
        .iter()
        .zip(&names)
        .map(|(pr, n)| Candidate {
            name: n,
            sb: &pr.sb,
            sectors: pr.sectors(),
        })
        .collect();
    let asm = assemble(
        &cands,
        &AssembleOptions {
            uuid: Some(uuid),
            force: p.force,
            block_size: bs,
        },
    )
    .map_err(|e| {
        RpcError::errno(
            errno::EINVAL,
            format!(
                "{CREATE}: the members carry md array {}, which cannot be started: {e}",
                md_uuid(&uuid)
            ),
        )
    })?;
    let lvl = asm.geometry.level();
    if lvl.md_level() != p.raid_level.md_level() {
        return Err(field(
            "raid_level",
            format!(
                "the members carry {} array {} (`{}`), not {}",
                lvl.name(),
                md_uuid(&uuid),
                asm.name,
                p.raid_level
            ),
        ));
    }
    let present: Vec<&Superblock> = asm.superblocks.iter().flatten().collect();
    let strip_kb = present[0].chunksize / 2;
    if let Some(s) = p.strip_size_kb {
        if s != strip_kb && !matches!(lvl, Level::Raid1) {
            return Err(field(
                "strip_size_kb",
                format!(
                    "the members carry array {} with a strip of {strip_kb} KiB, not {s}",
                    md_uuid(&uuid)
                ),
            ));
        }
    }
    if let Some(l) = p.layout {
        if l.md_number() != asm.geometry.layout() {
            return Err(field(
                "layout",
                format!(
                    "the members carry array {} with layout {}, not {l}",
                    md_uuid(&uuid),
                    layout_name(lvl.md_level(), asm.geometry.layout())
                ),
            ));
        }
    }
    match (p.bitmap, &asm.bitmap) {
        (BitmapSetting::On(_), None) => {
            return Err(field(
                "bitmap",
                format!(
                    "the members carry array {} without a write-intent bitmap; adding one to an existing array is not supported",
                    md_uuid(&uuid)
                ),
            ))
        }
        (BitmapSetting::Off, Some(_)) => {
            return Err(field(
                "bitmap",
                format!(
                    "the members carry array {} with a write-intent bitmap; removing it is not supported",
                    md_uuid(&uuid)
                ),
            ))
        }
        (BitmapSetting::On(o), Some(b)) => {
            if let Some(kb) = o.chunk_kb {
                if u64::from(kb) * 1024 != b.geom.chunk_bytes() {
                    return Err(field(
                        "bitmap.chunk_kb",
                        format!(
                            "the members carry array {} with a bitmap chunk of {} KiB, not {kb}",
                            md_uuid(&uuid),
                            b.geom.chunk_bytes() / 1024
                        ),
                    ));
                }
            }
        }
        _ => {}
    }
    let data_offset = present[0].data_offset;
    if let Some(sb) = present.iter().find(|sb| sb.data_offset != data_offset) {
        return Err(RpcError::errno(
            errno::ENOTSUP,
            format!(
                "{CREATE}: members of array {} have different data offsets ({} and {data_offset} sectors); not supported",
                md_uuid(&uuid),
                sb.data_offset
            ),
        ));
    }
    // Write-mostly members and write-behind are what the members record
    // (bdev_mdraid_set_write_mostly changes the former): a create that
    // asks for others is refused rather than half-honoured.
    if !p.write_mostly.is_empty() {
        for (r, c) in asm.member_of_role.iter().enumerate() {
            let Some(c) = *c else { continue };
            let name = p.base_bdevs.0[c].as_str();
            let recorded = asm.state.write_mostly & 1 << r != 0;
            if p.write_mostly.contains(name) != recorded {
                return Err(field(
                    "write_mostly",
                    format!(
                        "the members of array {} record `{name}` as {}write-mostly; change it with bdev_mdraid_set_write_mostly",
                        md_uuid(&uuid),
                        if recorded { "" } else { "not " }
                    ),
                ));
            }
        }
    }
    if let Some(wb) = p.write_behind {
        if wb != asm.state.write_behind {
            return Err(field(
                "write_behind",
                format!(
                    "the members of array {} record write-behind {}, not {wb}",
                    md_uuid(&uuid),
                    asm.state.write_behind
                ),
            ));
        }
    }
    // Assembly used only members whose superblocks agree with the
    // freshest on the size, but linear members each keep their own; the
    // hosts lay every member out alike.
    if let Some(sb) = present.iter().find(|sb| sb.size != present[0].size) {
        return Err(RpcError::errno(
            errno::ENOTSUP,
            format!(
                "{CREATE}: members of array {} use different sizes ({} and {} sectors); not supported",
                md_uuid(&uuid),
                sb.size,
                present[0].size
            ),
        ));
    }
    let spb = bs as u64 / 512;
    let member_data_blocks = present[0].size / spb;
    Ok(Plan::Assemble {
        asm: Box::new(asm),
        data_offset,
        member_data_blocks,
    })
}

/// Whether the new array `p` creates (laid out as `geom`) is resynced
/// from the start ([`BdevMdraidCreate::assume_clean`]): a level with
/// redundancy, with superblocks to record it.
pub fn initial_sync(p: &BdevMdraidCreate, geom: &Geometry) -> bool {
    p.superblock && !p.assume_clean && geom.redundancy() > 0
}

/// `bdev_mdraid_add_base_bdev`: bdev `name`, with blocks of `block_size`
/// bytes, can take a role only in an array of that block size.
pub fn check_add_block_size(name: &str, block_size: u32, array: u32) -> Result<(), RpcError> {
    if block_size == array {
        return Ok(());
    }
    Err(RpcError::invalid_field(
        "bdev_mdraid_add_base_bdev",
        "base_bdev",
        format!("bdev `{name}` has {block_size}-byte blocks, the array {array}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::decode;
    use crate::types::Uuid;
    use serde_json::value::RawValue;

    fn params(json: &str) -> BdevMdraidCreate {
        let raw = RawValue::from_string(json.to_string()).unwrap();
        decode(CREATE, Some(&raw)).unwrap()
    }

    fn blank(n: usize, blocks: u64) -> Vec<Probe> {
        (0..n)
            .map(|_| Probe {
                block_size: 512,
                num_blocks: blocks,
                sb: vec![0; SB_BLOCK_BYTES],
            })
            .collect()
    }

    #[test]
    fn new_raid5_on_blank_members() {
        let p =
            params(r#"{"name":"r","raid_level":"raid5","base_bdevs":"a b c","strip_size_kb":64}"#);
        let plan = plan_array(&p, &blank(3, 65536), || [9; 16]).unwrap();
        let Plan::Create {
            uuid,
            geom,
            strip_kb,
            data_offset,
            ..
        } = plan
        else {
            panic!("not a create: {plan:?}");
        };
        assert_eq!(uuid, [9; 16]);
        assert_eq!(strip_kb, 64);
        assert_eq!(data_offset, 2048);
        assert_eq!(geom.members(), 3);
        assert!(geom.array_blocks() > 0);
    }

    /// The probes of the members of a new raid1 of 2 (`a`, `b`, no
    /// bitmap) as planned by `plan_array`, after `edit` of their
    /// superblocks; and the array's UUID.
    fn raid1_members(edit: impl FnOnce(&mut [Superblock])) -> (Vec<Probe>, [u8; 16]) {
        members_of(
            r#"{"name":"r","raid_level":"raid1","base_bdevs":["a","b"],"bitmap":false}"#,
            edit,
        )
    }

    /// [`raid1_members`] of the new array `create` (no bitmap) describes.
    fn members_of(create: &str, edit: impl FnOnce(&mut [Superblock])) -> (Vec<Probe>, [u8; 16]) {
        let p = params(create);
        let n = p.base_bdevs.len();
        let Plan::Create {
            uuid,
            geom,
            data_offset,
            layouts,
            ..
        } = plan_array(&p, &blank(n, 65536), || [3; 16]).unwrap()
        else {
            panic!("not a create")
        };
        let mut sbs = bdev_raid::meta::create_superblocks(
            &geom,
            &bdev_raid::meta::CreateParams {
                set_uuid: uuid,
                name: "r",
                device_uuids: (1..=n as u8).map(|i| [i; 16]).collect(),
                member_sectors: layouts.iter().map(|l| l.member_sectors).collect(),
                data_offset,
                now_secs: 1,
                bitmap: false,
            },
        );
        for (sb, l) in sbs.iter_mut().zip(&layouts) {
            l.apply(sb);
        }
        edit(&mut sbs);
        let probes = sbs
            .iter()
            .map(|sb| {
                let mut b = sb.encode();
                b.resize(SB_BLOCK_BYTES, 0);
                Probe {
                    block_size: 512,
                    num_blocks: 65536,
                    sb: b,
                }
            })
            .collect();
        (probes, uuid)
    }

    #[test]
    fn members_of_one_array_are_assembled() {
        let p =
            params(r#"{"name":"r","raid_level":"raid1","base_bdevs":["a","b"],"bitmap":false}"#);
        let (probes, uuid) = raid1_members(|_| {});
        match plan_array(&p, &probes, || [4; 16]).unwrap() {
            Plan::Assemble { asm, .. } => assert_eq!(asm.set_uuid, uuid),
            other => panic!("not an assembly: {other:?}"),
        }
        // Asked for another level: refused, naming the field.
        let p5 = params(r#"{"name":"r","raid_level":"raid5","base_bdevs":["a","b"]}"#);
        let e = plan_array(&p5, &probes, || [4; 16]).unwrap_err();
        assert_eq!(e.code, -32602);
        assert!(e.message.contains("field `raid_level`"), "{}", e.message);
    }

    /// A new array with redundancy is resynced from the start unless
    /// assumed clean (or without superblocks to record it).
    #[test]
    fn initial_sync_only_where_copies_or_parity_must_agree() {
        for (json, want) in [
            (
                r#"{"name":"r","raid_level":"raid1","base_bdevs":"a b"}"#,
                true,
            ),
            (
                r#"{"name":"r","raid_level":"raid5","base_bdevs":"a b c"}"#,
                true,
            ),
            (
                r#"{"name":"r","raid_level":"raid10","base_bdevs":"a b c d"}"#,
                true,
            ),
            (
                r#"{"name":"r","raid_level":"raid0","base_bdevs":"a b"}"#,
                false,
            ),
            (
                r#"{"name":"r","raid_level":"linear","base_bdevs":"a b"}"#,
                false,
            ),
            (
                r#"{"name":"r","raid_level":"raid5","base_bdevs":"a b c","assume_clean":true}"#,
                false,
            ),
            (
                r#"{"name":"r","raid_level":"raid1","base_bdevs":"a b","superblock":false}"#,
                false,
            ),
        ] {
            let p = params(json);
            let Plan::Create { geom, .. } =
                plan_array(&p, &blank(p.base_bdevs.len(), 65536), || [1; 16])
                    .unwrap_or_else(|e| panic!("{json}: {e:?}"))
            else {
                // Without superblocks: a bare array, never resynced.
                assert!(!want, "{json}");
                continue;
            };
            assert_eq!(initial_sync(&p, &geom), want, "{json}");
        }
    }

    /// md's rule: a raid4/5/6 that was not shut down cleanly and is
    /// degraded starts only when forced (its parity may not match).
    #[test]
    fn dirty_degraded_parity_starts_only_with_force() {
        let (probes, uuid) = members_of(
            r#"{"name":"r","raid_level":"raid5","base_bdevs":"a b c","bitmap":false}"#,
            |sbs| sbs.iter_mut().for_each(|sb| sb.resync_offset = 0),
        );
        // Member c is gone.
        let create = |force: &str| {
            params(&format!(
                r#"{{"name":"r","raid_level":"raid5","base_bdevs":"a b"{force}}}"#
            ))
        };
        let e = plan_array(&create(""), &probes[..2], || [4; 16]).unwrap_err();
        assert_eq!(e.code, -22);
        assert!(e.message.contains("`force`"), "{}", e.message);
        match plan_array(&create(r#","force":true"#), &probes[..2], || [4; 16]).unwrap() {
            Plan::Assemble { asm, .. } => {
                assert_eq!(asm.set_uuid, uuid);
                assert_eq!(asm.state.not_in_sync(), 0b100);
            }
            other => panic!("not an assembly: {other:?}"),
        }
        // Clean, or with every member: no force needed.
        let (clean, _) = members_of(
            r#"{"name":"r","raid_level":"raid5","base_bdevs":"a b c","bitmap":false}"#,
            |_| {},
        );
        assert!(plan_array(&create(""), &clean[..2], || [4; 16]).is_ok());
        let all = params(r#"{"name":"r","raid_level":"raid5","base_bdevs":"a b c"}"#);
        assert!(plan_array(&all, &probes, || [4; 16]).is_ok());
        // Never saved: a restart from the saved config is not forced.
        let saved = serde_json::to_value(create(r#","force":true"#)).unwrap();
        assert!(saved.get("force").is_none(), "{saved}");
        // Without superblocks there is nothing to force.
        let e = decode::<BdevMdraidCreate>(
            CREATE,
            Some(
                &RawValue::from_string(
                    r#"{"name":"r","raid_level":"raid5","base_bdevs":"a b c","superblock":false,"force":true}"#
                        .into(),
                )
                .unwrap(),
            ),
        )
        .unwrap_err();
        assert!(e.message.contains("field `force`"), "{}", e.message);
    }

    /// A create that names its array and lists only some members is
    /// completed by devices carrying that array's superblocks; nothing
    /// else is taken, and nothing is looked for when it is not needed.
    #[test]
    fn a_create_naming_its_array_is_completed_by_its_other_members() {
        let (probes, uuid) = members_of(
            r#"{"name":"r","raid_level":"raid5","base_bdevs":"a b c","bitmap":false}"#,
            |sbs| sbs.iter_mut().for_each(|sb| sb.resync_offset = 0),
        );
        let (other, _) = members_of(
            r#"{"name":"o","raid_level":"raid5","base_bdevs":"x y z","bitmap":false}"#,
            |sbs| sbs.iter_mut().for_each(|sb| sb.set_uuid = [7; 16]),
        );
        let name = |n: &str| BdevName::new(n).unwrap();
        let offered = || {
            vec![
                (name("x"), other[0].clone()),
                (name("blank"), blank(1, 65536).remove(0)),
                (name("c"), probes[2].clone()),
            ]
        };
        let with = |extra: &str| {
            params(&format!(
                r#"{{"name":"r","raid_level":"raid5","base_bdevs":"a b"{extra}}}"#
            ))
        };
        let named = with(&format!(r#","uuid":"{}""#, Uuid(uuid)));
        // Dirty and degraded as listed: refused; completed, it starts whole.
        assert!(plan_array(&named, &probes[..2], || [4; 16]).is_err());
        let (q, qp, plan) = plan_completed(&named, probes[..2].to_vec(), offered, || [4; 16]);
        let names: Vec<&str> = q.base_bdevs.iter().map(|n| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(qp.len(), 3);
        match plan.unwrap() {
            Plan::Assemble { asm, .. } => {
                assert_eq!(asm.member_of_role, [Some(0), Some(1), Some(2)]);
                assert_eq!(asm.state.not_in_sync(), 0);
            }
            other => panic!("not an assembly: {other:?}"),
        }
        // A device the freshest superblocks record faulty is offered and
        // refused by assembly.
        let (failed, _) = members_of(
            r#"{"name":"r","raid_level":"raid5","base_bdevs":"a b c","bitmap":false}"#,
            |sbs| {
                for sb in &mut sbs[..2] {
                    sb.dev_roles[2] = bdev_raid::ondisk::DevRole::Faulty;
                    sb.events += 5;
                }
            },
        );
        let named_f = with(&format!(r#","uuid":"{}","force":true"#, Uuid(uuid)));
        let (q, _, plan) = plan_completed(
            &named_f,
            failed[..2].to_vec(),
            || vec![(name("c"), failed[2].clone())],
            || [4; 16],
        );
        assert_eq!(q.base_bdevs.len(), 3);
        match plan.unwrap() {
            Plan::Assemble { asm, .. } => {
                assert_eq!(asm.member_of_role, [Some(0), Some(1), None]);
                assert_eq!(asm.refused.len(), 1, "{:?}", asm.refused);
            }
            other => panic!("not an assembly: {other:?}"),
        }
        // Not looked for: no uuid, every role listed, no superblocks.
        let never = || -> Vec<(BdevName, Probe)> { panic!("looked for other members") };
        assert!(
            plan_completed(&with(""), probes[..2].to_vec(), never, || [4; 16])
                .2
                .is_err()
        );
        let all = params(&format!(
            r#"{{"name":"r","raid_level":"raid5","base_bdevs":"a b c","uuid":"{}"}}"#,
            Uuid(uuid)
        ));
        assert!(plan_completed(&all, probes.clone(), never, || [4; 16])
            .2
            .is_ok());
        let fresh = params(&format!(
            r#"{{"name":"r","raid_level":"raid5","base_bdevs":"a b c","uuid":"{}"}}"#,
            Uuid([5; 16])
        ));
        assert!(matches!(
            plan_completed(&fresh, blank(3, 65536), never, || [4; 16]).2,
            Ok(Plan::Create { .. })
        ));
        // Nothing found: the listed members' plan stands.
        let (q, _, plan) = plan_completed(&named, probes[..2].to_vec(), Vec::new, || [4; 16]);
        assert_eq!(q.base_bdevs.len(), 2);
        assert!(plan.is_err());
    }

    /// A blank bdev beside an array's member, without the array's uuid:
    /// a new array over an old member, or the old array with a stray bdev?
    /// Refused, naming the blank one; with the uuid it is an assembly.
    #[test]
    fn blank_and_md_members_without_a_uuid_are_refused() {
        let (probes, uuid) = raid1_members(|_| {});
        let mixed = vec![blank(1, 65536).remove(0), probes[0].clone()];
        let p =
            params(r#"{"name":"n","raid_level":"raid1","base_bdevs":["c","a"],"bitmap":false}"#);
        let e = plan_array(&p, &mixed, || [4; 16]).unwrap_err();
        assert!(e.message.contains("field `base_bdevs[0]`"), "{}", e.message);
        assert!(
            e.message
                .contains("`c` carries no md superblock while `a` carries"),
            "{}",
            e.message
        );
        let p = params(&format!(
            r#"{{"name":"n","raid_level":"raid1","base_bdevs":["c","a"],"bitmap":false,"uuid":"{}"}}"#,
            Uuid(uuid)
        ));
        match plan_array(&p, &mixed, || [4; 16]).unwrap() {
            Plan::Assemble { asm, .. } => assert_eq!(asm.member_of_role, [Some(1), None]),
            other => panic!("not an assembly: {other:?}"),
        }
    }

    #[test]
    fn assembly_keeps_the_recorded_write_mostly_members() {
        let (probes, _) = raid1_members(|sbs| sbs[1].set_write_mostly(true));
        let with = |wm: &str| {
            params(&format!(
                r#"{{"name":"r","raid_level":"raid1","base_bdevs":["a","b"],"bitmap":false,"write_mostly":{wm}}}"#
            ))
        };
        match plan_array(&with(r#"["b"]"#), &probes, || [4; 16]).unwrap() {
            Plan::Assemble { asm, .. } => assert_eq!(asm.state.write_mostly, 0b10),
            other => panic!("not an assembly: {other:?}"),
        }
        let e = plan_array(&with(r#"["a"]"#), &probes, || [4; 16]).unwrap_err();
        assert!(e.message.contains("field `write_mostly`"), "{}", e.message);
        // Not naming any: the members decide.
        assert!(matches!(
            plan_array(&with("[]"), &probes, || [4; 16]).unwrap(),
            Plan::Assemble { .. }
        ));
    }

    #[test]
    fn a_name_set_name_cannot_hold_is_refused_with_superblocks() {
        let long = "r".repeat(MD_NAME_MAX + 1);
        let p = params(&format!(
            r#"{{"name":"{long}","raid_level":"raid1","base_bdevs":"a b"}}"#
        ));
        let e = plan_array(&p, &blank(2, 65536), || [1; 16]).unwrap_err();
        assert_eq!(e.code, -32602);
        assert!(
            e.message.contains("field `name`") && e.message.contains("31"),
            "{}",
            e.message
        );
        let p = params(&format!(
            r#"{{"name":"{long}","raid_level":"raid1","base_bdevs":"a b","superblock":false}}"#
        ));
        assert!(plan_array(&p, &blank(2, 65536), || [1; 16]).is_ok());
        let p = params(r#"{"name":"host:r","raid_level":"raid1","base_bdevs":"a b"}"#);
        let e = plan_array(&p, &blank(2, 65536), || [1; 16]).unwrap_err();
        assert!(
            e.message.contains("field `name`") && e.message.contains("':'"),
            "{}",
            e.message
        );
        let ok = "r".repeat(MD_NAME_MAX);
        let p = params(&format!(
            r#"{{"name":"{ok}","raid_level":"raid1","base_bdevs":"a b"}}"#
        ));
        assert!(plan_array(&p, &blank(2, 65536), || [1; 16]).is_ok());
    }

    #[test]
    fn bad_strip_names_the_field() {
        let p = params(r#"{"name":"r","raid_level":"raid0","base_bdevs":"a b","strip_size_kb":3}"#);
        let e = plan_array(&p, &blank(2, 65536), || [1; 16]).unwrap_err();
        assert_eq!(e.code, -32602);
        assert!(e.message.contains("field `strip_size_kb`"), "{}", e.message);
    }

    #[test]
    fn unequal_block_sizes_are_refused() {
        let p = params(r#"{"name":"r","raid_level":"raid1","base_bdevs":"a b"}"#);
        let mut probes = blank(2, 65536);
        probes[1].block_size = 4096;
        let e = plan_array(&p, &probes, || [1; 16]).unwrap_err();
        assert!(e.message.contains("field `base_bdevs[1]`"), "{}", e.message);
    }
}
