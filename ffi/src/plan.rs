//! How `bdev_mdraid_create` brings an array up, decided from what the
//! members are (block size, size, the 4 KiB where md keeps its superblock).
//! Pure: no I/O, no SPDK, so it is tested on machines without SPDK.
//!
//! The rules are the embedded daemon's (`runtime/src/daemon.rs`,
//! `plan_array`): a new array on blank members, assembly when the members
//! carry one array's md superblocks, refusal of members that carry another
//! array's (or a damaged) superblock, no superblock when asked. Errors are
//! the same `-32602` texts naming the field.

use bdev_raid::assemble::{assemble, md_uuid, AssembleOptions, Assembled, Candidate};
use bdev_raid::examine::layout_name;
use bdev_raid::layout::{Geometry, GeometryError, GeometryParams, Level};
use bdev_raid::meta::{create_superblocks, CreateParams};
use bdev_raid::ondisk::{component_size, MemberLayout, SbError, Superblock, SB_BLOCK_BYTES};
use mdraid_rpc::error::errno;
use mdraid_rpc::params::BdevMdraidCreate;
use mdraid_rpc::types::{BitmapSetting, RaidLevel};
use mdraid_rpc::RpcError;

/// Strip (md chunk) size when `strip_size_kb` is absent: mdadm's default.
pub const DEFAULT_STRIP_KB: u32 = 512;

pub const CREATE: &str = "bdev_mdraid_create";

/// What planning knows about one member.
#[derive(Clone, Debug)]
pub struct Probe {
    pub block_size: u32,
    pub num_blocks: u64,
    /// The 4 KiB at byte 4096 (empty: the device is too small for it).
    pub sb: Vec<u8>,
}

impl Probe {
    pub fn sectors(&self) -> u64 {
        self.num_blocks * u64::from(self.block_size) / 512
    }
}

/// How the array comes up.
#[derive(Debug)]
pub enum Plan {
    /// A new md array: write these superblocks, then start.
    Create {
        uuid: [u8; 16],
        geom: Geometry,
        strip_kb: u32,
        /// In 512-byte sectors, the same on every member.
        data_offset: u64,
        layouts: Vec<MemberLayout>,
        member_data_blocks: u64,
    },
    /// The members carry this array: assemble it.
    Assemble {
        asm: Box<Assembled>,
        data_offset: u64,
        member_data_blocks: u64,
    },
    /// `superblock: false`: nothing on the members.
    Bare { geom: Geometry, strip_kb: u32 },
}

pub fn field(f: impl AsRef<str>, msg: impl std::fmt::Display) -> RpcError {
    RpcError::invalid_field(CREATE, f.as_ref(), msg)
}

pub fn level_of(l: RaidLevel) -> Level {
    Level::from_md(l.md_level()).expect("every RaidLevel is an engine level")
}

fn geometry_error(e: &GeometryError) -> RpcError {
    let f = match e {
        GeometryError::BlockSize(_) => "base_bdevs".to_string(),
        GeometryError::StripNotPowerOfTwo(_) | GeometryError::StripTooSmall { .. } => {
            "strip_size_kb".to_string()
        }
        GeometryError::TooFewMembers { .. } | GeometryError::TooManyMembers { .. } => {
            "base_bdevs".to_string()
        }
        GeometryError::UnequalMembers { member, .. }
        | GeometryError::MemberTooSmall { member, .. } => format!("base_bdevs[{member}]"),
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

/// What the engine cannot do yet, refused before any member is touched.
pub fn check_supported(p: &BdevMdraidCreate) -> Result<(), RpcError> {
    if let BitmapSetting::On(_) = p.bitmap {
        return Err(field(
            "bitmap",
            "write-intent bitmaps are not implemented yet; omit `bitmap` or pass false",
        ));
    }
    if p.write_behind.is_some() {
        return Err(field(
            "write_behind",
            "write-behind needs a write-intent bitmap, which is not implemented yet",
        ));
    }
    if !p.write_mostly.is_empty() {
        return Err(field(
            "write_mostly",
            "write-mostly members are not implemented yet",
        ));
    }
    if p.uuid.is_some_and(|u| u.is_nil()) {
        return Err(field("uuid", "must not be the nil UUID"));
    }
    Ok(())
}

/// Decide how to bring up the array `p` describes over `probes` (one per
/// `p.base_bdevs`, in order). `new_uuid` is the array UUID when a new array
/// is created and `p.uuid` is absent.
pub fn plan_array(
    p: &BdevMdraidCreate,
    probes: &[Probe],
    new_uuid: [u8; 16],
) -> Result<Plan, RpcError> {
    check_supported(p)?;
    assert_eq!(probes.len(), p.base_bdevs.len(), "one probe per member");
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
                if !p.superblock {
                    return Err(field(
                        format!("base_bdevs[{i}]"),
                        format!("`{}` carries a damaged md superblock ({e}); superblock=false would overwrite it", p.base_bdevs.0[i]),
                    ));
                }
                found.push(None);
                let alone = probes.iter().enumerate().all(|(j, q)| {
                    j == i
                        || q.sb.len() < SB_BLOCK_BYTES
                        || matches!(
                            Superblock::decode(&q.sb, q.sectors()),
                            Err(SbError::BadMagic { .. })
                        )
                });
                if alone {
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
    if let Some(first) = found.iter().flatten().map(|sb| sb.set_uuid).next() {
        let target = p.uuid.map(|u| u.0).unwrap_or(first);
        for (i, sb) in found.iter().enumerate() {
            if let Some(sb) = sb {
                if sb.set_uuid != target {
                    return Err(field(
                        format!("base_bdevs[{i}]"),
                        format!(
                            "`{}` carries the md superblock of another array ({} `{}`); delete that array with clear_sb or wipe the member first",
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
    let mut layouts = Vec::new();
    for (i, pr) in probes.iter().enumerate() {
        let l = MemberLayout::new(pr.sectors(), chunk_sectors, None)
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
    let spb = u64::from(bs) / 512;
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
    let uuid = p.uuid.map(|u| u.0).unwrap_or(new_uuid);
    Ok(Plan::Create {
        uuid,
        geom,
        strip_kb,
        data_offset,
        layouts,
        member_data_blocks,
    })
}

/// The superblocks of a new array `Plan::Create` describes: one per member,
/// laid out as `layouts` say.
pub fn new_superblocks(
    geom: &Geometry,
    uuid: [u8; 16],
    name: &str,
    device_uuids: Vec<[u8; 16]>,
    layouts: &[MemberLayout],
    data_offset: u64,
    now_secs: u64,
) -> Vec<Superblock> {
    let mut sbs = create_superblocks(
        geom,
        &CreateParams {
            set_uuid: uuid,
            name,
            device_uuids,
            member_sectors: layouts.iter().map(|l| l.member_sectors).collect(),
            data_offset,
            now_secs,
            bitmap: false,
        },
    );
    for (sb, l) in sbs.iter_mut().zip(layouts) {
        l.apply(sb);
    }
    sbs
}

fn plan_assemble(
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
            force: false,
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
    let spb = u64::from(bs) / 512;
    let member_data_blocks = present[0].size / spb;
    Ok(Plan::Assemble {
        asm: Box::new(asm),
        data_offset,
        member_data_blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mdraid_rpc::method::decode;
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
        let plan = plan_array(&p, &blank(3, 65536), [9; 16]).unwrap();
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

    #[test]
    fn members_of_one_array_are_assembled() {
        let p = params(r#"{"name":"r","raid_level":"raid1","base_bdevs":["a","b"]}"#);
        let Plan::Create {
            uuid,
            geom,
            data_offset,
            layouts,
            ..
        } = plan_array(&p, &blank(2, 65536), [3; 16]).unwrap()
        else {
            panic!("not a create")
        };
        let sbs = new_superblocks(
            &geom,
            uuid,
            "r",
            vec![[1; 16], [2; 16]],
            &layouts,
            data_offset,
            1,
        );
        let probes: Vec<Probe> = sbs
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
        match plan_array(&p, &probes, [4; 16]).unwrap() {
            Plan::Assemble { asm, .. } => assert_eq!(asm.set_uuid, uuid),
            other => panic!("not an assembly: {other:?}"),
        }
        // Asked for another level: refused, naming the field.
        let p5 = params(r#"{"name":"r","raid_level":"raid5","base_bdevs":["a","b"]}"#);
        let e = plan_array(&p5, &probes, [4; 16]).unwrap_err();
        assert_eq!(e.code, -32602);
        assert!(e.message.contains("field `raid_level`"), "{}", e.message);
    }

    #[test]
    fn bad_strip_names_the_field() {
        let p = params(r#"{"name":"r","raid_level":"raid0","base_bdevs":"a b","strip_size_kb":3}"#);
        let e = plan_array(&p, &blank(2, 65536), [1; 16]).unwrap_err();
        assert_eq!(e.code, -32602);
        assert!(e.message.contains("field `strip_size_kb`"), "{}", e.message);
    }

    #[test]
    fn unequal_block_sizes_are_refused() {
        let p = params(r#"{"name":"r","raid_level":"raid1","base_bdevs":"a b"}"#);
        let mut probes = blank(2, 65536);
        probes[1].block_size = 4096;
        let e = plan_array(&p, &probes, [1; 16]).unwrap_err();
        assert!(e.message.contains("field `base_bdevs[1]`"), "{}", e.message);
    }

    #[test]
    fn bitmap_is_refused_before_any_io() {
        let p = params(r#"{"name":"r","raid_level":"raid1","base_bdevs":"a b","bitmap":true}"#);
        let e = check_supported(&p).unwrap_err();
        assert!(e.message.contains("field `bitmap`"), "{}", e.message);
    }
}
