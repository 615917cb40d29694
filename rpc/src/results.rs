//! Typed results. Hosts build these and return them as JSON
//! ([`crate::dispatch::reply`]); clients (the `mdraid` CLI) parse them back.
//! Shapes follow SPDK's where SPDK has the method.

use bdev_raid::state::{ArrayState, MemberState};

use crate::types::{RaidLevel, RaidState, Uuid};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `bdev_get_bdevs` element: SPDK's `rpc_dump_bdev_info` fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BdevInfo {
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `"Malloc disk"`, `"AIO disk"`, `"URING bdev"`, `"Error Injection Disk"`,
    /// `"delay"`, `"mdraid"`, as the host names its bdev types.
    pub product_name: String,
    pub block_size: u32,
    pub num_blocks: u64,
    #[serde(default)]
    pub preferred_write_alignment: u32,
    #[serde(default)]
    pub preferred_write_granularity: u32,
    #[serde(default)]
    pub optimal_write_size: u32,
    #[serde(default)]
    pub preferred_unmap_alignment: u32,
    #[serde(default)]
    pub preferred_unmap_granularity: u32,
    pub uuid: Uuid,
    #[serde(default)]
    pub assigned_rate_limits: RateLimits,
    pub claimed: bool,
    /// SPDK's claim names: `"exclusive_write"`, `"read_many_write_one"`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_type: Option<String>,
    #[serde(default)]
    pub zoned: bool,
    pub supported_io_types: SupportedIoTypes,
    /// Per-driver details (SPDK: `{"raid": {...}}`, `{"aio": {...}}`...).
    #[serde(default = "empty_object")]
    pub driver_specific: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// SPDK's `assigned_rate_limits` (QoS; always 0 here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimits {
    pub rw_ios_per_sec: u64,
    pub rw_mbytes_per_sec: u64,
    pub r_mbytes_per_sec: u64,
    pub w_mbytes_per_sec: u64,
}

/// SPDK's `supported_io_types`, every key SPDK writes, in its order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SupportedIoTypes {
    pub read: bool,
    pub write: bool,
    pub unmap: bool,
    pub flush: bool,
    pub reset: bool,
    pub nvme_admin: bool,
    pub nvme_io: bool,
    pub nvme_io_md: bool,
    pub write_zeroes: bool,
    pub zcopy: bool,
    pub get_zone_info: bool,
    pub zone_management: bool,
    pub zone_append: bool,
    pub compare: bool,
    pub compare_and_write: bool,
    pub abort: bool,
    pub seek_hole: bool,
    pub seek_data: bool,
    pub copy: bool,
    pub nvme_iov_md: bool,
    pub nvme_nssr: bool,
    pub write_uncorrectable: bool,
}

/// `bdev_mdraid_get_bdevs` element: SPDK's `bdev_raid_get_bdevs` fields
/// (name, uuid, strip_size_kb, state, raid_level, superblock, counts,
/// process, base_bdevs_list) plus md's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MdraidBdevInfo {
    pub name: String,
    pub uuid: Uuid,
    pub strip_size_kb: u32,
    pub state: RaidState,
    pub raid_level: RaidLevel,
    pub superblock: bool,
    pub num_base_bdevs: u32,
    pub num_base_bdevs_discovered: u32,
    pub num_base_bdevs_operational: u32,
    /// Running background process, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<MdraidProcess>,
    pub base_bdevs_list: Vec<MdraidBaseBdevInfo>,
    // ---- md's
    /// md layout as mdadm names it (`left-symmetric`, `n2`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// Superblock event count.
    #[serde(default)]
    pub events: u64,
    /// md's `array_state`: `clean`, `active`, `write-pending`, `blocked`
    /// (R3: metadata not durable, writes held), `readonly`, `inactive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_state: Option<String>,
    /// True when a member is missing, faulty or being rebuilt (md's
    /// `degraded`, which stays set until the recovery ends).
    #[serde(default)]
    pub degraded: bool,
    /// md's `sync_action` now: `idle`, `resync`, `recover`, `check`, `repair`, `frozen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_action: Option<String>,
    /// Mismatches found by the last check/repair (md `mismatch_cnt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch_cnt: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitmap: Option<MdraidBitmapInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_behind: Option<u32>,
}

/// SPDK's `process` object: `{type, target, progress: {blocks, percent}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MdraidProcess {
    /// `rebuild`, `resync`, `check`, `repair`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Member being rebuilt (rebuild only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub progress: MdraidProgress,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdraidProgress {
    pub blocks: u64,
    pub percent: u32,
}

/// One member: SPDK's base bdev fields plus md's role and state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MdraidBaseBdevInfo {
    /// `null` for an empty slot (SPDK writes null too).
    pub name: Option<String>,
    pub uuid: Uuid,
    pub is_configured: bool,
    /// In blocks, as SPDK reports them.
    pub data_offset: u64,
    pub data_size: u64,
    /// md role number; absent for spares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<u32>,
    /// `in_sync`, `faulty`, `rebuilding`, `spare`, `missing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default)]
    pub write_mostly: bool,
    /// I/O the array sent this member, summed over the array's channels
    /// (one per reactor); absent when the host cannot say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<MdraidMemberIo>,
}

/// Per-member I/O counters (md's per-device view of the data path): child
/// reads and writes the array issued to the member and that succeeded, the
/// blocks they moved, the ones that failed, and those in flight now.
/// Superblock and bitmap writes of the metadata path are not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdraidMemberIo {
    pub reads: u64,
    pub writes: u64,
    /// In blocks of the array's block size.
    pub read_blocks: u64,
    pub written_blocks: u64,
    pub errors: u64,
    pub outstanding: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdraidBitmapInfo {
    pub chunk_kb: u32,
    pub daemon_sleep_ms: u32,
    /// Bits set now.
    #[serde(default)]
    pub dirty_chunks: u64,
    /// Bits in the bitmap.
    #[serde(default)]
    pub total_chunks: u64,
}

/// `bdev_mdraid_examine` element: one bdev's md superblock, with mdadm
/// --examine's vocabulary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MdraidExamineInfo {
    /// The bdev examined.
    pub bdev: String,
    /// False when no md superblock was found (the rest is then absent).
    pub has_superblock: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_uuid: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raid_level: Option<RaidLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raid_devices: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_size_kb: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_uuid: Option<Uuid>,
    /// `Active device N`, `spare`, `faulty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
    /// In 512-byte sectors, as md records them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitmap: Option<MdraidBitmapInfo>,
}

impl MdraidExamineInfo {
    /// What `bdev_mdraid_examine` reports of bdev `name` whose md metadata
    /// (superblock area) is `meta`, on a bdev of `sectors` 512-byte
    /// sectors; `Err` for a damaged superblock.
    pub fn from_meta(name: &str, meta: &[u8], sectors: u64) -> Result<Self, String> {
        use bdev_raid::examine::{examine_sb, layout_name};
        use bdev_raid::ondisk::{SbError, Superblock, SB_BLOCK_BYTES};
        let mut info = MdraidExamineInfo::blank(name);
        if meta.len() < SB_BLOCK_BYTES {
            return Ok(info);
        }
        let sb = match Superblock::decode(meta, sectors) {
            Ok(sb) => sb,
            Err(SbError::BadMagic { .. }) => return Ok(info),
            Err(e) => return Err(format!("md superblock: {e}")),
        };
        let ex = examine_sb(&sb);
        info.has_superblock = true;
        info.array_uuid = Some(Uuid(sb.set_uuid));
        info.array_name = Some(sb.name());
        info.raid_level = RaidLevel::ALL
            .iter()
            .copied()
            .find(|l| l.md_level() == sb.level);
        info.raid_devices = Some(sb.raid_disks);
        info.layout = Some(layout_name(sb.level, sb.layout));
        info.strip_size_kb = (sb.chunksize != 0).then_some(sb.chunksize / 2);
        info.device_uuid = Some(Uuid(sb.device_uuid));
        info.device_role = ex.get("Device Role").map(str::to_string);
        info.events = Some(sb.events);
        info.data_offset = Some(sb.data_offset);
        info.data_size = Some(sb.data_size);
        info.array_state = ex
            .get("Array State")
            .and_then(|s| s.split_whitespace().next())
            .map(str::to_string);
        Ok(info)
    }

    /// What `bdev_mdraid_examine` says of a bdev with no md superblock.
    pub fn blank(bdev: &str) -> MdraidExamineInfo {
        MdraidExamineInfo {
            bdev: bdev.to_string(),
            has_superblock: false,
            array_uuid: None,
            array_name: None,
            raid_level: None,
            raid_devices: None,
            layout: None,
            strip_size_kb: None,
            device_uuid: None,
            device_role: None,
            events: None,
            data_offset: None,
            data_size: None,
            array_state: None,
            bitmap: None,
        }
    }
}

/// `mdraid_nbd_get_exports` element.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NbdExportInfo {
    pub export_name: String,
    pub bdev_name: String,
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub size_bytes: u64,
    pub block_size: u32,
    /// Clients connected now.
    #[serde(default)]
    pub connections: u32,
}

/// `spdk_get_version` result (SPDK's shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: String,
    pub fields: VersionFields,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionFields {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    pub suffix: String,
}

impl VersionInfo {
    /// This crate's version, as `"mdraid v0.1.0"`.
    pub fn mdraid() -> Self {
        let num = |s: &str| s.parse().unwrap_or(0);
        VersionInfo {
            version: format!("mdraid v{}", env!("CARGO_PKG_VERSION")),
            fields: VersionFields {
                major: num(env!("CARGO_PKG_VERSION_MAJOR")),
                minor: num(env!("CARGO_PKG_VERSION_MINOR")),
                patch: num(env!("CARGO_PKG_VERSION_PATCH")),
                suffix: env!("CARGO_PKG_VERSION_PRE").to_string(),
            },
        }
    }
}

/// `framework_get_subsystems` element (SPDK's shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubsystemInfo {
    pub subsystem: String,
    pub depends_on: Vec<String>,
}

/// A member state as `bdev_mdraid_get_bdevs` names it (both hosts).
pub fn member_state_name(ms: MemberState) -> &'static str {
    match ms {
        MemberState::InSync => "in_sync",
        MemberState::Recovering(_) => "rebuilding",
        MemberState::Faulty => "faulty",
        MemberState::Missing => "missing",
    }
}

/// The log lines for a new state `new` of array `array` (was `old`): each
/// member it records failed for the first time (`name_of(role)`: the
/// member's bdev), and whether that took the array offline, which is not
/// recorded in the superblocks. An I/O error leaves no other trace in
/// the log.
pub fn failure_lines(
    array: &str,
    old: &ArrayState,
    new: &ArrayState,
    name_of: impl Fn(usize) -> Option<String>,
) -> Vec<String> {
    let mut lines: Vec<String> = new
        .members
        .iter()
        .enumerate()
        .filter(|&(m, st)| *st == MemberState::Faulty && old.members.get(m) != Some(st))
        .map(|(m, _)| {
            let name = name_of(m).unwrap_or_else(|| "(none)".into());
            if new.offline {
                format!("array {array}: member {name} (role {m}) failed; the array is offline (not recorded in the superblocks: it assembles again once the member is back)")
            } else {
                format!(
                    "array {array}: member {name} (role {m}) failed; recorded faulty (events {})",
                    new.events
                )
            }
        })
        .collect();
    if new.offline && !old.offline && lines.is_empty() {
        lines.push(format!("array {array}: offline"));
    }
    lines
}

/// `(num_base_bdevs_discovered, num_base_bdevs_operational)` of an array
/// in state `st`: members in service whose device the array holds
/// (`held(role)`), the ones listed `is_configured`, as SPDK's raid counts
/// them (it lets a failed member go at once; a faulty member the array
/// still holds is not counted either), and members in service.
pub fn member_counts(st: &ArrayState, held: impl Fn(usize) -> bool) -> (u32, u32) {
    let present = st
        .members
        .iter()
        .enumerate()
        .filter(|(r, m)| m.in_service() && held(*r))
        .count() as u32;
    let operational = st.members.iter().filter(|m| m.in_service()).count() as u32;
    (present, operational)
}
