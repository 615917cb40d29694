//! Assembly: from the superblocks found on candidate devices to a running
//! array's geometry, state and superblocks (md's rules, R6).
//!
//! - Superblocks that do not decode are refused, with the reason; assembly
//!   goes on with the others.
//! - Candidates are grouped by `set_uuid`; the group asked for (or the one
//!   with the freshest superblock) is assembled, the others are refused as
//!   belonging to another array.
//! - The freshest `events` wins. A candidate the freshest records as faulty
//!   or spare, or whose events are more than one behind it, is not used
//!   (R6): it missed writes. (One behind is md's tolerance for a superblock
//!   update that did not reach every member before a crash.)
//! - The array starts if the members left hold all the data; a dirty
//!   degraded raid4/5/6 refuses to start unless forced (md's rule: its
//!   parity may not match the data, and the missing member's blocks would
//!   be reconstructed from it).

use crate::bitmap::{BitmapGeom, DiskBitmap};
use crate::layout::{Geometry, GeometryParams, Level};
use crate::ondisk::{DevRole, Superblock, MD_FEATURE_RECOVERY_OFFSET, SB_BLOCK_BYTES};
use crate::state::{survives, ArrayState, MemberState};

/// A device that may hold a member.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// For messages (bdev or file name).
    pub name: &'a str,
    /// The device's bytes from offset 4096 (at least 4096 of them).
    pub sb: &'a [u8],
    /// Device size in 512-byte sectors.
    pub sectors: u64,
}

#[derive(Clone, Debug, Default)]
pub struct AssembleOptions {
    /// Assemble this array; `None` picks the freshest one found.
    pub uuid: Option<[u8; 16]>,
    /// Start a dirty degraded parity array anyway.
    pub force: bool,
    /// Logical block size of the members.
    pub block_size: u32,
}

/// An assembled array.
#[derive(Clone, Debug)]
pub struct Assembled {
    pub set_uuid: [u8; 16],
    pub name: String,
    pub geometry: Geometry,
    pub state: ArrayState,
    /// Superblock of each role's member (`None`: no member in that role).
    pub superblocks: Vec<Option<Superblock>>,
    /// Candidate index serving each role.
    pub member_of_role: Vec<Option<usize>>,
    /// Candidates not used, with why.
    pub refused: Vec<(usize, String)>,
    /// The freshest superblock says the array was not shut down cleanly.
    pub dirty: bool,
    /// The write-intent bitmap, when the superblock records one.
    pub bitmap: Option<AssembledBitmap>,
}

/// The bitmap read at assembly: the members' bits OR'ed (a bitmap write cut
/// short by a crash may have reached some members only), the superblock of
/// the freshest.
#[derive(Clone, Debug)]
pub struct AssembledBitmap {
    pub disk: DiskBitmap,
    pub geom: BitmapGeom,
    /// The bitmap was out of date (older than the superblocks, or marked
    /// stale): every bit is set, as md does, so a dirty array resyncs fully.
    pub stale: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    #[error("no md superblock found on any candidate ({0})")]
    NoSuperblock(String),
    #[error("no member of array {0} among the candidates")]
    NoSuchArray(String),
    #[error("{level} array {uuid}: not enough members to start ({present} of {raid_disks} present{detail})")]
    NotEnough {
        level: &'static str,
        uuid: String,
        present: usize,
        raid_disks: usize,
        detail: String,
    },
    #[error("{level} array {uuid} was not shut down cleanly and is degraded: its parity may not match the data, so the missing members' blocks cannot be trusted; start it with `force` to accept that (md's --assemble --force)")]
    DirtyDegraded { level: &'static str, uuid: String },
    #[error("array {uuid}: level {level} is not supported")]
    Level { uuid: String, level: i32 },
    #[error("array {uuid}: bad geometry in its superblock: {err}")]
    Geometry { uuid: String, err: String },
    #[error("array {uuid}: no usable write-intent bitmap: {detail}")]
    Bitmap { uuid: String, detail: String },
}

/// Format a UUID as mdadm prints it (`xxxxxxxx:xxxxxxxx:xxxxxxxx:xxxxxxxx`).
pub fn md_uuid(u: &[u8; 16]) -> String {
    let h: Vec<String> = u
        .chunks(4)
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    h.join(":")
}

/// Assemble an array from `cands`. See the module documentation.
pub fn assemble(
    cands: &[Candidate<'_>],
    opts: &AssembleOptions,
) -> Result<Assembled, AssembleError> {
    let mut refused = Vec::new();
    let mut sbs: Vec<(usize, Superblock)> = Vec::new();
    for (i, c) in cands.iter().enumerate() {
        let buf = &c.sb[..c.sb.len().min(SB_BLOCK_BYTES)];
        match Superblock::decode(buf, c.sectors) {
            Ok(sb) => sbs.push((i, sb)),
            Err(e) => refused.push((i, format!("{}: {e}", c.name))),
        }
    }
    if sbs.is_empty() {
        let why: Vec<&str> = refused.iter().map(|r| r.1.as_str()).collect();
        return Err(AssembleError::NoSuperblock(why.join("; ")));
    }
    // The array with the most members found, then the freshest.
    let uuid = match opts.uuid {
        Some(u) => u,
        None => {
            let count = |u: &[u8; 16]| sbs.iter().filter(|(_, s)| &s.set_uuid == u).count();
            sbs.iter()
                .max_by_key(|(_, sb)| (count(&sb.set_uuid), sb.events))
                .unwrap()
                .1
                .set_uuid
        }
    };
    let (ours, others): (Vec<_>, Vec<_>) = sbs.into_iter().partition(|(_, sb)| sb.set_uuid == uuid);
    for (i, sb) in others {
        refused.push((
            i,
            format!(
                "{}: belongs to another array ({})",
                cands[i].name,
                md_uuid(&sb.set_uuid)
            ),
        ));
    }
    if ours.is_empty() {
        return Err(AssembleError::NoSuchArray(md_uuid(&uuid)));
    }
    let fresh = ours
        .iter()
        .max_by_key(|(_, sb)| sb.events)
        .unwrap()
        .1
        .clone();
    let uuid_s = md_uuid(&uuid);
    let Some(level) = Level::from_md(fresh.level) else {
        return Err(AssembleError::Level {
            uuid: uuid_s,
            level: fresh.level,
        });
    };
    let n = fresh.raid_disks as usize;
    let mut member_of_role: Vec<Option<usize>> = vec![None; n];
    let mut role_sb: Vec<Option<Superblock>> = vec![None; n];
    for (i, sb) in ours {
        let name = cands[i].name;
        let role = fresh
            .dev_roles
            .get(sb.dev_number as usize)
            .copied()
            .unwrap_or(DevRole::Spare);
        let r = match role {
            DevRole::Active(r) if (r as usize) < n => r as usize,
            DevRole::Faulty => {
                refused.push((
                    i,
                    format!(
                        "{name}: recorded faulty by the freshest superblock (events {})",
                        fresh.events
                    ),
                ));
                continue;
            }
            _ => {
                refused.push((
                    i,
                    format!("{name}: not an active member in the freshest superblock"),
                ));
                continue;
            }
        };
        if let Some(why) = shape_differs(&sb, &fresh, level) {
            refused.push((
                i,
                format!("{name}: its superblock does not match the freshest: {why}"),
            ));
            continue;
        }
        if sb.events + 1 < fresh.events {
            refused.push((
                i,
                format!(
                    "{name}: stale (events {} behind the freshest {}); it must be recovered before use",
                    sb.events, fresh.events
                ),
            ));
            continue;
        }
        if let Some(prev) = member_of_role[r] {
            // Two devices claim one role: keep the fresher.
            let prev_ev = role_sb[r].as_ref().unwrap().events;
            if prev_ev >= sb.events {
                refused.push((
                    i,
                    format!("{name}: role {r} is already served by {}", cands[prev].name),
                ));
                continue;
            }
            refused.push((
                prev,
                format!(
                    "{}: role {r} is served by the fresher {name}",
                    cands[prev].name
                ),
            ));
        }
        let mut sb = sb;
        // What the freshest knows about everyone else wins.
        sb.dev_roles = fresh.dev_roles.clone();
        sb.resync_offset = fresh.resync_offset;
        // Its own events stay as found: the metadata path rewrites every
        // superblock that lags once the array runs.
        member_of_role[r] = Some(i);
        role_sb[r] = Some(sb);
    }
    let spb = 512;
    let bs = opts.block_size.max(512);
    let member_blocks: Vec<u64> = (0..n)
        .map(|r| {
            let sectors = match (level, &role_sb[r]) {
                // Linear members keep their own sizes.
                (Level::Linear, Some(sb)) => sb.size,
                _ => fresh.size,
            };
            sectors * spb / u64::from(bs)
        })
        .collect();
    let geometry = Geometry::new(&GeometryParams {
        level,
        layout: Some(fresh.layout),
        strip_size_kb: fresh.chunksize / 2,
        block_size: bs,
        member_blocks,
    })
    .map_err(|e| AssembleError::Geometry {
        uuid: uuid_s.clone(),
        err: e.to_string(),
    })?;
    let members: Vec<MemberState> = role_sb
        .iter()
        .map(|sb| match sb {
            // A member being rebuilt holds current data only below its
            // recovery offset (its own superblock says where).
            Some(sb) if sb.feature_map & MD_FEATURE_RECOVERY_OFFSET != 0 => {
                MemberState::Recovering(sb.recovery_offset / (u64::from(bs) / 512))
            }
            Some(_) => MemberState::InSync,
            None => MemberState::Missing,
        })
        .collect();
    let state = ArrayState {
        readded: vec![0; n],
        events: fresh.events,
        seq: 0,
        members,
        offline: false,
        writable: false,
        write_mostly: crate::meta::write_mostly_of(&role_sb),
        write_behind: 0,
    };
    let out = state.not_in_sync();
    if !survives(&geometry, out) {
        let missing: Vec<String> = (0..n)
            .filter(|r| out & 1 << r != 0)
            .map(|r| r.to_string())
            .collect();
        return Err(AssembleError::NotEnough {
            level: level.name(),
            uuid: uuid_s,
            present: n - out.count_ones() as usize,
            raid_disks: n,
            detail: format!("; roles {} missing, stale or faulty", missing.join(", ")),
        });
    }
    let dirty = !fresh.is_clean();
    if dirty && out != 0 && level.is_parity() && !opts.force {
        return Err(AssembleError::DirtyDegraded {
            level: level.name(),
            uuid: uuid_s,
        });
    }
    let bitmap = if fresh.has_bitmap() {
        Some(
            load_bitmap(cands, &member_of_role, &role_sb, &geometry, &fresh).map_err(|detail| {
                AssembleError::Bitmap {
                    uuid: uuid_s.clone(),
                    detail,
                }
            })?,
        )
    } else {
        None
    };
    let mut state = state;
    state.write_behind = bitmap.as_ref().map_or(0, |b| b.disk.sb.write_behind);
    Ok(Assembled {
        set_uuid: uuid,
        name: fresh.name(),
        geometry,
        state,
        superblocks: role_sb,
        member_of_role,
        refused,
        dirty,
        bitmap,
    })
}

/// How `sb` describes the array otherwise than the freshest superblock
/// (mdadm's `compare_super`: such a superblock "doesn't match others").
/// Every host reads the array's shape from any member's superblock, so
/// only members that agree are used. Linear members keep their own sizes.
fn shape_differs(sb: &Superblock, fresh: &Superblock, level: Level) -> Option<String> {
    let fields = [
        ("level", i64::from(sb.level), i64::from(fresh.level)),
        ("layout", i64::from(sb.layout), i64::from(fresh.layout)),
        (
            "chunk sectors",
            i64::from(sb.chunksize),
            i64::from(fresh.chunksize),
        ),
        (
            "raid disks",
            i64::from(sb.raid_disks),
            i64::from(fresh.raid_disks),
        ),
    ];
    if let Some((f, a, b)) = fields.iter().find(|(_, a, b)| a != b) {
        return Some(format!("{f} {a}, not {b}"));
    }
    if level != Level::Linear && sb.size != fresh.size {
        return Some(format!("size {} sectors, not {}", sb.size, fresh.size));
    }
    None
}

/// Read the bitmap of every member used: OR the bits, keep the freshest
/// superblock. Members whose bitmap does not decode are skipped (their data
/// is still used); with none left it is an error naming why.
fn load_bitmap(
    cands: &[Candidate<'_>],
    member_of_role: &[Option<usize>],
    role_sb: &[Option<Superblock>],
    geometry: &Geometry,
    fresh: &Superblock,
) -> Result<AssembledBitmap, String> {
    if fresh.bitmap_offset != 8 {
        return Err(format!(
            "bitmap_offset {}: only an internal bitmap right after the superblock (8 sectors) is supported",
            fresh.bitmap_offset
        ));
    }
    let mut errors = Vec::new();
    let mut best: Option<(DiskBitmap, BitmapGeom)> = None;
    let mut bits: Vec<u8> = Vec::new();
    for (r, m) in member_of_role.iter().enumerate() {
        let (Some(i), Some(sb)) = (m, &role_sb[r]) else {
            continue;
        };
        let c = &cands[*i];
        let area = c.sb.get(SB_BLOCK_BYTES..).unwrap_or(&[]);
        let decoded = DiskBitmap::decode(area, geometry).and_then(|(b, g)| {
            b.sb.check_against(sb).map_err(|e| e.to_string())?;
            Ok((b, g))
        });
        match decoded {
            Ok((b, g)) => {
                if let Some((f, fg)) = &best {
                    if fg != &g {
                        errors.push(format!(
                            "{}: bitmap chunk {} differs from {}",
                            c.name,
                            g.chunk_bytes(),
                            fg.chunk_bytes()
                        ));
                        continue;
                    }
                    if b.sb.events <= f.sb.events {
                        for (o, x) in bits.iter_mut().zip(&b.bits) {
                            *o |= x;
                        }
                        continue;
                    }
                }
                let merged: Vec<u8> = b
                    .bits
                    .iter()
                    .zip(bits.iter().copied().chain(std::iter::repeat(0)))
                    .map(|(a, o)| a | o)
                    .collect();
                bits = merged;
                best = Some((b, g));
            }
            Err(e) => errors.push(format!("{}: {e}", c.name)),
        }
    }
    let Some((mut disk, geom)) = best else {
        return Err(errors.join("; "));
    };
    disk.bits = bits;
    // md's tolerance: a superblock one event behind is a commit a crash cut
    // short; the bitmap travels with the superblock, so the same holds.
    let stale = disk.sb.is_stale() || disk.sb.events + 1 < fresh.events;
    if stale {
        for c in 0..geom.chunks() {
            disk.set(c, true);
        }
        disk.sb.state &= !crate::ondisk::BITMAP_STATE_STALE;
    }
    Ok(AssembledBitmap { disk, geom, stale })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{create_superblocks, CreateParams};
    use crate::ondisk::MD_DISK_ROLE_FAULTY;

    const SECTORS: u64 = 4096 + 16;

    /// Encoded superblocks of a new array (4 KiB each).
    fn array(level: Level, n: usize, uuid: u8) -> Vec<Vec<u8>> {
        let g = Geometry::new(&GeometryParams {
            level,
            layout: None,
            strip_size_kb: 4,
            block_size: 512,
            member_blocks: vec![4096; n],
        })
        .unwrap();
        create_superblocks(
            &g,
            &CreateParams {
                set_uuid: [uuid; 16],
                name: "a",
                device_uuids: (0..n).map(|m| [m as u8; 16]).collect(),
                member_sectors: vec![SECTORS; n],
                data_offset: 16,
                now_secs: 1,
                bitmap: false,
            },
        )
        .iter()
        .map(|sb| sb.encode())
        .collect()
    }

    fn cands<'a>(bufs: &'a [Vec<u8>], names: &'a [String]) -> Vec<Candidate<'a>> {
        bufs.iter()
            .zip(names)
            .map(|(b, n)| Candidate {
                name: n,
                sb: b,
                sectors: SECTORS,
            })
            .collect()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("dev{i}")).collect()
    }

    fn opts() -> AssembleOptions {
        AssembleOptions {
            block_size: 512,
            ..AssembleOptions::default()
        }
    }

    fn edit(buf: &mut Vec<u8>, f: impl FnOnce(&mut Superblock)) {
        let mut sb = Superblock::decode(buf, SECTORS).unwrap();
        f(&mut sb);
        *buf = sb.encode();
    }

    #[test]
    fn healthy_array_assembles() {
        let bufs = array(Level::Raid5, 4, 1);
        let a = assemble(&cands(&bufs, &names(4)), &opts()).unwrap();
        assert_eq!(a.state.out_of_service(), 0);
        assert_eq!(a.geometry.level(), Level::Raid5);
        assert_eq!(a.member_of_role, vec![Some(0), Some(1), Some(2), Some(3)]);
        assert!(a.refused.is_empty());
        assert!(!a.dirty);
    }

    #[test]
    fn corrupt_superblocks_are_refused_naming_the_field_and_the_rest_assemble() {
        let mut bufs = array(Level::Raid6, 6, 1);
        // Flipped checksum.
        bufs[0][216] ^= 0xff;
        // Wrong magic.
        bufs[1][0] ^= 0x01;
        // A role pointing past max_dev: dev_number beyond the roles table.
        let max_dev = u32::from_le_bytes(bufs[2][220..224].try_into().unwrap());
        bufs[2][160..164].copy_from_slice(&(max_dev + 3).to_le_bytes());
        let sum = crate::ondisk::sb_checksum(&bufs[2]);
        bufs[2][216..220].copy_from_slice(&sum.to_le_bytes());
        let ns = names(6);
        let mut cs = cands(&bufs, &ns);
        // Truncated member: smaller than its data area claims.
        cs[3].sectors = 100;
        let err = assemble(&cs, &opts()).unwrap_err();
        // Four of six gone: raid6 cannot start, and says so.
        assert!(
            matches!(err, AssembleError::NotEnough { present: 2, .. }),
            "{err}"
        );
        // With only two refused, it starts degraded and lists why.
        let mut bufs = array(Level::Raid6, 6, 1);
        bufs[0][216] ^= 0xff;
        bufs[1][0] ^= 0x01;
        let a = assemble(&cands(&bufs, &ns), &opts()).unwrap();
        assert_eq!(a.state.out_of_service(), 0b11);
        let why: Vec<&str> = a.refused.iter().map(|r| r.1.as_str()).collect();
        assert!(
            why[0].contains("dev0") && why[0].contains("sb_csum"),
            "{why:?}"
        );
        assert!(
            why[1].contains("dev1") && why[1].contains("magic"),
            "{why:?}"
        );
        // The single-field messages of the other two cases.
        let mut b = array(Level::Raid6, 6, 1);
        b[2][160..164].copy_from_slice(&(max_dev + 3).to_le_bytes());
        let sum = crate::ondisk::sb_checksum(&b[2]);
        b[2][216..220].copy_from_slice(&sum.to_le_bytes());
        let a = assemble(&cands(&b, &ns), &opts()).unwrap();
        assert!(a.refused[0].1.contains("dev_number"), "{:?}", a.refused);
        let b = array(Level::Raid6, 6, 1);
        let mut cs = cands(&b, &ns);
        cs[3].sectors = 100;
        let a = assemble(&cs, &opts()).unwrap();
        assert!(
            a.refused[0].1.contains("dev3") && a.refused[0].1.contains("data"),
            "{:?}",
            a.refused
        );
    }

    #[test]
    fn freshest_wins_stale_and_faulty_are_not_used() {
        let mut bufs = array(Level::Raid1, 3, 1);
        // Member 2 failed at events 5: the others recorded it.
        for b in &mut bufs[0..2] {
            edit(b, |sb| {
                sb.events = 5;
                sb.dev_roles[2] = DevRole::from_raw(MD_DISK_ROLE_FAULTY);
            });
        }
        // Its own superblock missed that commit.
        edit(&mut bufs[2], |sb| sb.events = 4);
        let a = assemble(&cands(&bufs, &names(3)), &opts()).unwrap();
        assert_eq!(a.member_of_role, vec![Some(0), Some(1), None]);
        assert!(
            a.refused[0].1.contains("recorded faulty"),
            "{:?}",
            a.refused
        );
        // A member two events behind is stale; one behind is tolerated.
        let mut bufs = array(Level::Raid1, 3, 1);
        edit(&mut bufs[0], |sb| sb.events = 9);
        edit(&mut bufs[1], |sb| sb.events = 8);
        edit(&mut bufs[2], |sb| sb.events = 7);
        let a = assemble(&cands(&bufs, &names(3)), &opts()).unwrap();
        assert_eq!(a.member_of_role, vec![Some(0), Some(1), None]);
        assert!(a.refused[0].1.contains("stale"), "{:?}", a.refused);
        assert_eq!(a.state.events, 9);
    }

    #[test]
    fn foreign_superblock_is_refused() {
        let mut bufs = array(Level::Raid1, 2, 1);
        let other = array(Level::Raid1, 2, 2);
        bufs.push(other[0].clone());
        let a = assemble(&cands(&bufs, &names(3)), &opts()).unwrap();
        assert_eq!(a.set_uuid, [1; 16]);
        assert!(a.refused[0].1.contains("another array"), "{:?}", a.refused);
        // Asking for the other array gets it, degraded.
        let o = AssembleOptions {
            uuid: Some([2; 16]),
            ..opts()
        };
        let a = assemble(&cands(&bufs, &names(3)), &o).unwrap();
        assert_eq!(a.member_of_role, vec![Some(2), None]);
    }

    /// A member whose superblock describes the array otherwise than the
    /// freshest (size, level, layout, chunk, raid disks) is refused, as
    /// mdadm refuses a superblock that "doesn't match others"; so is one
    /// too small for the array's component size. What is assembled is then
    /// one array, whichever superblock a host reads a field from.
    #[test]
    fn a_member_describing_another_shape_is_refused() {
        type Edit = fn(&mut Superblock);
        let edits: [(&str, Edit); 6] = [
            ("size", |sb| sb.size -= 8),
            ("level", |sb| sb.level = 6),
            ("layout", |sb| sb.layout = 0),
            ("chunk", |sb| sb.chunksize *= 2),
            ("raid disks", |sb| sb.raid_disks = 5),
            ("data size", |sb| {
                sb.data_size = sb.size - 8;
                sb.size = sb.data_size;
            }),
        ];
        for (what, f) in edits {
            let mut bufs = array(Level::Raid5, 4, 1);
            // Member 3 is the freshest; member 1 disagrees with it.
            edit(&mut bufs[3], |sb| sb.events += 1);
            edit(&mut bufs[1], f);
            let a = assemble(&cands(&bufs, &names(4)), &opts()).unwrap();
            assert_eq!(
                a.member_of_role,
                vec![Some(0), None, Some(2), Some(3)],
                "{what}: {:?}",
                a.refused
            );
            assert!(
                a.refused
                    .iter()
                    .any(|(i, why)| *i == 1 && why.contains("dev1")),
                "{what}: {:?}",
                a.refused
            );
            let sizes: Vec<u64> = a.superblocks.iter().flatten().map(|sb| sb.size).collect();
            assert!(sizes.iter().all(|&s| s == sizes[0]), "{what}: {sizes:?}");
        }
    }

    #[test]
    fn dirty_degraded_parity_refuses_unless_forced() {
        let mut bufs = array(Level::Raid5, 3, 1);
        for b in &mut bufs {
            edit(b, |sb| sb.resync_offset = 0);
        }
        let ns = names(3);
        let err = assemble(&cands(&bufs[..2], &ns[..2]), &opts()).unwrap_err();
        assert!(matches!(err, AssembleError::DirtyDegraded { .. }), "{err}");
        assert!(err.to_string().contains("force"));
        let forced = AssembleOptions {
            force: true,
            ..opts()
        };
        let a = assemble(&cands(&bufs[..2], &ns[..2]), &forced).unwrap();
        assert!(a.dirty);
        // Dirty but complete starts (it needs a resync, not a refusal).
        assert!(assemble(&cands(&bufs, &ns), &opts()).unwrap().dirty);
        // Dirty degraded raid1 starts: copies, no parity to distrust.
        let mut r1 = array(Level::Raid1, 2, 1);
        for b in &mut r1 {
            edit(b, |sb| sb.resync_offset = 0);
        }
        assert!(assemble(&cands(&r1[..1], &ns[..1]), &opts()).is_ok());
    }

    /// Members of a raid1 of 2 with a bitmap of 64 KiB chunks: each gets
    /// its superblock (events `ev[m]`), then its bitmap with bits `bits[m]`
    /// and bitmap events `bev[m]`.
    fn with_bitmap(ev: [u64; 2], bev: [u64; 2], bits: [u8; 2]) -> Vec<Vec<u8>> {
        let g = Geometry::new(&GeometryParams {
            level: Level::Raid1,
            layout: None,
            strip_size_kb: 4,
            block_size: 512,
            member_blocks: vec![4096; 2],
        })
        .unwrap();
        let sbs = create_superblocks(
            &g,
            &CreateParams {
                set_uuid: [9; 16],
                name: "b",
                device_uuids: vec![[1; 16], [2; 16]],
                member_sectors: vec![SECTORS + 8; 2],
                data_offset: 24,
                now_secs: 1,
                bitmap: true,
            },
        );
        let bg = BitmapGeom::new(&g, 64 << 10).unwrap();
        (0..2)
            .map(|m| {
                let mut sb = sbs[m].clone();
                sb.events = ev[m];
                let mut d = DiskBitmap::new(&bg, [9; 16], 1000);
                d.bits[0] = bits[m];
                let mut out = sb.encode();
                out.extend_from_slice(&d.encode_area(bev[m]));
                out
            })
            .collect()
    }

    #[test]
    fn bitmaps_of_all_members_are_merged() {
        let bufs = with_bitmap([5, 5], [5, 5], [0b0010, 0b1000]);
        let n = names(2);
        let mut c = cands(&bufs, &n);
        for x in &mut c {
            x.sectors = SECTORS + 8;
        }
        let a = assemble(&c, &AssembleOptions::default()).unwrap();
        let b = a.bitmap.unwrap();
        assert!(!b.stale);
        assert_eq!(b.disk.bits[0], 0b1010);
        assert_eq!(b.geom.chunks(), 32);
    }

    #[test]
    fn an_out_of_date_bitmap_sets_every_bit() {
        let bufs = with_bitmap([7, 7], [5, 5], [0, 0]);
        let n = names(2);
        let mut c = cands(&bufs, &n);
        for x in &mut c {
            x.sectors = SECTORS + 8;
        }
        let b = assemble(&c, &AssembleOptions::default())
            .unwrap()
            .bitmap
            .unwrap();
        assert!(b.stale);
        assert_eq!(b.disk.dirty(), 32);
        // One event behind is a commit cut short, not a stale bitmap.
        let bufs = with_bitmap([7, 7], [6, 7], [0, 1]);
        let c: Vec<_> = cands(&bufs, &n)
            .into_iter()
            .map(|mut x| {
                x.sectors = SECTORS + 8;
                x
            })
            .collect();
        let b = assemble(&c, &AssembleOptions::default())
            .unwrap()
            .bitmap
            .unwrap();
        assert!(!b.stale);
        assert_eq!(b.disk.dirty(), 1);
    }

    #[test]
    fn a_bitmap_that_does_not_decode_anywhere_is_an_error() {
        let mut bufs = with_bitmap([3, 3], [3, 3], [0, 0]);
        for b in &mut bufs {
            b[SB_BLOCK_BYTES] ^= 0xff; // bitmap magic
        }
        let n = names(2);
        let c: Vec<_> = cands(&bufs, &n)
            .into_iter()
            .map(|mut x| {
                x.sectors = SECTORS + 8;
                x
            })
            .collect();
        let e = assemble(&c, &AssembleOptions::default()).unwrap_err();
        assert!(matches!(e, AssembleError::Bitmap { .. }), "{e}");
        assert!(e.to_string().contains("bitmap magic"), "{e}");
    }

    /// A member whose own superblock says it was being rebuilt comes back
    /// recovering from its recovery offset (a crash resumes the rebuild),
    /// and is not counted as holding the data.
    #[test]
    fn a_member_being_rebuilt_resumes_from_its_recovery_offset() {
        let mut bufs = array(Level::Raid1, 2, 5);
        let mut sb = Superblock::decode(&bufs[1], SECTORS).unwrap();
        sb.feature_map |= crate::ondisk::MD_FEATURE_RECOVERY_OFFSET;
        sb.recovery_offset = 1024;
        bufs[1] = sb.encode();
        let n = names(2);
        let a = assemble(&cands(&bufs, &n), &AssembleOptions::default()).unwrap();
        assert_eq!(a.state.members[1], MemberState::Recovering(1024));
        assert_eq!(a.state.not_in_sync(), 0b10);
        // Alone, it cannot start the array.
        let e = assemble(&cands(&bufs[1..], &n[1..]), &AssembleOptions::default()).unwrap_err();
        assert!(matches!(e, AssembleError::NotEnough { .. }), "{e}");
    }
}
