//! Typed params of every method, with SPDK's names and defaults.
//!
//! Each struct denies unknown keys, as SPDK's `spdk_json_decode_object`
//! does, and (serde) duplicate keys, as SPDK does too. Where SPDK has the
//! method, its decoder table (`module/bdev/*/..._rpc.c`, v26.05) is copied
//! field for field, so configs saved by SPDK load here. What SPDK checks
//! after decoding and what is plainly wrong (empty names, duplicates,
//! overflowing sizes) is checked in [`Validate`]; judgements that need the
//! engine or the host's state (strip size a power of two, a bdev exists)
//! are the host's.
//!
//! One deliberate difference: SPDK answers a params decode failure with
//! `-32700`/`-32603` and "spdk_json_decode_object failed"; we answer
//! `-32602` with a message naming the field, as DESIGN.md asks.

use crate::error::RpcError;
use crate::types::*;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A params check that failed: which field (dotted path, `""` for the
/// params as a whole) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Checks made after a successful decode.
pub trait Validate {
    fn validate(&self) -> Result<(), FieldError> {
        Ok(())
    }
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// SPDK's `raid_base_bdevs` array holds at most 255 names.
pub const MAX_BASE_BDEVS: usize = 255;

/// md's `COUNTER_MAX` bounds write-behind (mdadm `--write-behind`, max 16383).
pub const MAX_WRITE_BEHIND: u32 = 16383;

fn check_list(field: &str, list: &NameList, allow_empty: bool) -> Result<(), FieldError> {
    if list.is_empty() && !allow_empty {
        return Err(FieldError::new(field, "must name at least one bdev"));
    }
    if list.len() > MAX_BASE_BDEVS {
        return Err(FieldError::new(
            field,
            format!("{} bdevs given; at most {MAX_BASE_BDEVS}", list.len()),
        ));
    }
    if let Some(i) = list.first_duplicate() {
        return Err(FieldError::new(
            format!("{field}[{i}]"),
            format!("bdev `{}` is listed twice", list.0[i]),
        ));
    }
    Ok(())
}

// ================================================================ mdraid

/// `bdev_mdraid_create`: SPDK's `bdev_raid_create` fields plus md's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevMdraidCreate {
    /// Name of the new array bdev.
    pub name: BdevName,
    /// `linear`/`concat`, `raid0`, `raid1`, `raid4`, `raid5`, `raid6`, `raid10`.
    pub raid_level: RaidLevel,
    /// Members in role order: an array, or a whitespace-separated string.
    pub base_bdevs: NameList,
    /// Strip (md chunk) size in KiB. Optional like SPDK's (raid1 has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_size_kb: Option<u32>,
    /// Array UUID; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    /// Write md v1.2 superblocks. Default **true** (SPDK's raid: false).
    #[serde(default = "yes")]
    pub superblock: bool,
    /// Write-intent bitmap: absent = host default, `false`/`null` = none,
    /// `true` or `{chunk_kb, daemon_sleep_ms}` = internal bitmap.
    #[serde(default, skip_serializing_if = "BitmapSetting::is_default")]
    pub bitmap: BitmapSetting,
    /// md layout (name or number); absent = md's default for the level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    /// Members that are read only when no other copy can serve (raid1).
    #[serde(default, skip_serializing_if = "NameList::is_empty")]
    pub write_mostly: NameList,
    /// Most writes to write-mostly members left in flight after the
    /// array acknowledged them (md write-behind; needs a bitmap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_behind: Option<u32>,
    /// Start the array the members' superblocks describe although it was
    /// not shut down cleanly and is degraded, so a raid4/5/6's parity may
    /// not match its data (md's `mdadm --assemble --force`,
    /// `start_dirty_degraded`). Never saved in the config.
    #[serde(default, skip_serializing)]
    pub force: bool,
    /// A new array on a level with redundancy is resynced from the start,
    /// as mdadm's create is: the members' old contents need not agree.
    /// `true` skips that, as `mdadm --create --assume-clean` does: only
    /// for members that read back zeros, or whose contents already agree.
    /// Never saved in the config (a replay assembles the array).
    #[serde(default, skip_serializing)]
    pub assume_clean: bool,
}

/// The largest `strip_size_kb`: 1 GiB (md's chunk is a 32-bit count of
/// sectors; no md level takes more).
pub const MAX_STRIP_KB: u32 = 1 << 20;

impl Validate for BdevMdraidCreate {
    fn validate(&self) -> Result<(), FieldError> {
        check_list("base_bdevs", &self.base_bdevs, false)?;
        if self.base_bdevs.contains(self.name.as_str()) {
            return Err(FieldError::new(
                "base_bdevs",
                format!("the array `{}` cannot be its own member", self.name),
            ));
        }
        check_list("write_mostly", &self.write_mostly, true)?;
        for (i, n) in self.write_mostly.iter().enumerate() {
            if !self.base_bdevs.contains(n.as_str()) {
                return Err(FieldError::new(
                    format!("write_mostly[{i}]"),
                    format!("`{n}` is not one of base_bdevs"),
                ));
            }
        }
        if let Some(kb) = self.strip_size_kb {
            if kb > MAX_STRIP_KB {
                return Err(FieldError::new(
                    "strip_size_kb",
                    format!("{kb} KiB is more than the largest strip, {MAX_STRIP_KB} KiB (1 GiB)"),
                ));
            }
        }
        if let Some(layout) = self.layout {
            if !layout.fits(self.raid_level) {
                return Err(FieldError::new(
                    "layout",
                    format!("layout `{layout}` does not apply to {}", self.raid_level),
                ));
            }
        }
        if let BitmapSetting::On(b) = &self.bitmap {
            if b.chunk_kb == Some(0) {
                return Err(FieldError::new("bitmap.chunk_kb", "must be greater than 0"));
            }
            if b.daemon_sleep_ms == Some(0) {
                return Err(FieldError::new(
                    "bitmap.daemon_sleep_ms",
                    "must be greater than 0",
                ));
            }
        }
        if let Some(wb) = self.write_behind {
            if wb > MAX_WRITE_BEHIND {
                return Err(FieldError::new(
                    "write_behind",
                    format!("{wb} is more than md allows ({MAX_WRITE_BEHIND})"),
                ));
            }
            if self.bitmap == BitmapSetting::Off {
                return Err(FieldError::new(
                    "write_behind",
                    "write-behind needs a bitmap, but `bitmap` is off",
                ));
            }
            if !self.superblock {
                return Err(FieldError::new(
                    "write_behind",
                    "write-behind needs a bitmap, which needs `superblock`",
                ));
            }
        }
        if !self.superblock && self.force {
            return Err(FieldError::new(
                "force",
                "force starts an array from its members' superblocks; `superblock` is false",
            ));
        }
        if !self.superblock && !self.write_mostly.is_empty() {
            return Err(FieldError::new(
                "write_mostly",
                "write-mostly is recorded in the members' superblocks; `superblock` is false",
            ));
        }
        if !self.superblock {
            if let BitmapSetting::On(_) = self.bitmap {
                return Err(FieldError::new(
                    "bitmap",
                    "an internal bitmap lives beside the superblock; `superblock` is false",
                ));
            }
        }
        Ok(())
    }
}

/// `bdev_mdraid_get_bdevs` (SPDK's `bdev_raid_get_bdevs`; `category`
/// defaults to `all` here, where SPDK requires it; `name` added).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevMdraidGetBdevs {
    #[serde(default)]
    pub category: RaidCategory,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<BdevName>,
}
impl Validate for BdevMdraidGetBdevs {}

/// `bdev_mdraid_delete` (SPDK's `bdev_raid_delete`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevMdraidDelete {
    pub name: BdevName,
    /// Wipe the md superblock on every member.
    #[serde(default, skip_serializing_if = "is_false")]
    pub clear_sb: bool,
}
impl Validate for BdevMdraidDelete {}

/// `bdev_mdraid_add_base_bdev` (SPDK's `bdev_raid_add_base_bdev`; `name`
/// is accepted for `raid_bdev`; `write_mostly` added, like `mdadm --add
/// --write-mostly`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevMdraidAddBaseBdev {
    #[serde(alias = "name")]
    pub raid_bdev: BdevName,
    pub base_bdev: BdevName,
    #[serde(default, skip_serializing_if = "is_false")]
    pub write_mostly: bool,
}

impl Validate for BdevMdraidAddBaseBdev {
    fn validate(&self) -> Result<(), FieldError> {
        if self.raid_bdev == self.base_bdev {
            return Err(FieldError::new(
                "base_bdev",
                format!("the array `{}` cannot be its own member", self.raid_bdev),
            ));
        }
        Ok(())
    }
}

/// `bdev_mdraid_remove_base_bdev` (SPDK's `bdev_raid_remove_base_bdev`):
/// `name` is the member's bdev name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevMdraidRemoveBaseBdev {
    pub name: BdevName,
}
impl Validate for BdevMdraidRemoveBaseBdev {}

/// `bdev_mdraid_set_options` (SPDK's `bdev_raid_set_options`): global
/// options of background processes (rebuild, resync, check).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevMdraidSetOptions {
    /// Window a background process works on at a time, in KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_window_size_kb: Option<u32>,
    /// Bandwidth cap of a background process in MiB/s; 0 = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_max_bandwidth_mb_sec: Option<u32>,
}

impl BdevMdraidSetOptions {
    /// The call `save_config` writes for options `o` (both hosts), none
    /// when they are the defaults.
    pub fn saved(o: &bdev_raid::sync::ProcessOptions) -> Option<BdevMdraidSetOptions> {
        (*o != bdev_raid::sync::ProcessOptions::DEFAULT).then_some(BdevMdraidSetOptions {
            process_window_size_kb: Some(o.window_kb),
            process_max_bandwidth_mb_sec: Some(o.max_mb_per_sec),
        })
    }
}

impl Validate for BdevMdraidSetOptions {
    fn validate(&self) -> Result<(), FieldError> {
        if self.process_window_size_kb == Some(0) {
            return Err(FieldError::new(
                "process_window_size_kb",
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}

/// `bdev_mdraid_set_write_mostly`: make member `base_bdev` of array `name`
/// write-mostly or not (md's `writemostly` / `-writemostly` member state),
/// recorded in its superblock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevMdraidSetWriteMostly {
    pub name: BdevName,
    pub base_bdev: BdevName,
    pub write_mostly: bool,
}
impl Validate for BdevMdraidSetWriteMostly {}

/// `bdev_mdraid_sync_action`: md's `sync_action` for one array.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevMdraidSyncAction {
    pub name: BdevName,
    pub action: SyncAction,
}
impl Validate for BdevMdraidSyncAction {}

impl BdevMdraidSyncAction {
    /// Refused on an array without redundancy (`redundant` false: raid0,
    /// linear), as md refuses any `sync_action` on a level with nothing to
    /// sync, naming the field.
    pub fn check_redundant(&self, level: &str, redundant: bool) -> Result<(), RpcError> {
        if redundant {
            return Ok(());
        }
        Err(RpcError::invalid_field(
            "bdev_mdraid_sync_action",
            "action",
            format!(
                "array `{}` is {level}, which has no redundancy: nothing to check, repair, resync, stop or freeze",
                self.name.as_str()
            ),
        ))
    }
}

/// `bdev_mdraid_examine`: read md superblocks (one bdev, or all).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevMdraidExamine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<BdevName>,
}
impl Validate for BdevMdraidExamine {}

impl BdevMdraidExamine {
    /// Both hosts' answer when `name` is an array: examine reads members.
    pub fn array_named(name: &str) -> crate::error::RpcError {
        crate::error::RpcError::invalid_field(
            crate::method::Method::BdevMdraidExamine.name(),
            "name",
            format!("`{name}` is an mdraid array, not a member"),
        )
    }
}

/// `bdev_mdraid_zero_superblock`: wipe the md superblock of a bdev no
/// array holds (mdadm's `--zero-superblock`), so it can serve a new array.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevMdraidZeroSuperblock {
    pub name: BdevName,
}
impl Validate for BdevMdraidZeroSuperblock {}

impl BdevMdraidZeroSuperblock {
    const M: &'static str = "bdev_mdraid_zero_superblock";

    /// Both hosts' answer when `name` is an array.
    pub fn array_named(name: &str) -> crate::error::RpcError {
        crate::error::RpcError::invalid_field(
            Self::M,
            "name",
            format!("`{name}` is an mdraid array, not a member; bdev_mdraid_delete with clear_sb wipes its members"),
        )
    }

    /// Both hosts' answer when the bdev is held by `by`.
    pub fn claimed(name: &str, by: &str) -> crate::error::RpcError {
        crate::error::RpcError::errno(
            crate::error::errno::EBUSY,
            format!(
                "{}: bdev `{name}` is claimed by `{by}`; remove it from there first",
                Self::M
            ),
        )
    }

    /// Both hosts' answer when the bdev carries no md superblock (as
    /// mdadm refuses an unrecognised device).
    pub fn blank(name: &str) -> crate::error::RpcError {
        crate::error::RpcError::errno(
            crate::error::errno::EINVAL,
            format!("{}: bdev `{name}` carries no md superblock", Self::M),
        )
    }
}

// ================================================================ SPDK bdevs

/// `bdev_malloc_create`: SPDK's decoder table. Metadata/DIF fields are
/// accepted (SPDK's `save_config` writes them) but only their "off" values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevMallocCreate {
    /// Default: `MallocN`, chosen by the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<BdevName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    pub num_blocks: u64,
    pub block_size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_block_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimal_io_boundary: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md_interleave: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dif_type: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dif_is_head_of_md: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dif_pi_format: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_id: Option<i32>,
}

fn check_block_size(field: &str, bs: u32) -> Result<(), FieldError> {
    if bs == 0 || !bs.is_multiple_of(512) {
        return Err(FieldError::new(
            field,
            format!("{bs} is not a multiple of 512"),
        ));
    }
    Ok(())
}

impl Validate for BdevMallocCreate {
    fn validate(&self) -> Result<(), FieldError> {
        check_block_size("block_size", self.block_size)?;
        if self.num_blocks == 0 {
            return Err(FieldError::new("num_blocks", "must be greater than 0"));
        }
        if self
            .num_blocks
            .checked_mul(self.block_size as u64)
            .is_none()
        {
            return Err(FieldError::new(
                "num_blocks",
                format!(
                    "{} blocks of {} bytes overflow a 64-bit byte count",
                    self.num_blocks, self.block_size
                ),
            ));
        }
        if let Some(p) = self.physical_block_size.filter(|&p| p != 0) {
            if !p.is_power_of_two() || p < 512 {
                return Err(FieldError::new(
                    "physical_block_size",
                    format!("{p} is not a power of 2 of at least 512"),
                ));
            }
        }
        if self.md_size.unwrap_or(0) != 0 {
            return Err(FieldError::new(
                "md_size",
                "separate metadata is not supported; only 0",
            ));
        }
        if self.dif_type.unwrap_or(0) != 0 {
            return Err(FieldError::new(
                "dif_type",
                "protection information is not supported; only 0",
            ));
        }
        Ok(())
    }
}

/// `bdev_malloc_delete`, `bdev_aio_delete`, `bdev_uring_delete`,
/// `bdev_error_delete`, `bdev_delay_delete`: SPDK's `{name}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevDelete {
    pub name: BdevName,
}
impl Validate for BdevDelete {}

fn check_filename(f: &str) -> Result<(), FieldError> {
    if f.is_empty() {
        return Err(FieldError::new("filename", "must not be empty"));
    }
    if f.contains('\0') {
        return Err(FieldError::new("filename", "contains a NUL byte"));
    }
    Ok(())
}

fn check_opt_block_size(bs: Option<u32>) -> Result<(), FieldError> {
    match bs {
        // 0: detect from the file, like SPDK.
        Some(bs) if bs != 0 => check_block_size("block_size", bs),
        _ => Ok(()),
    }
}

/// `bdev_aio_create`: SPDK's decoder table (served by io_uring in the
/// embedded host).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevAioCreate {
    pub name: BdevName,
    pub filename: String,
    /// 0 or absent: the file's logical block size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub readonly: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub fallocate: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub nowait: bool,
}

impl Validate for BdevAioCreate {
    fn validate(&self) -> Result<(), FieldError> {
        check_filename(&self.filename)?;
        check_opt_block_size(self.block_size)
    }
}

/// `bdev_uring_create`: SPDK's decoder table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevUringCreate {
    pub name: BdevName,
    pub filename: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
}

impl Validate for BdevUringCreate {
    fn validate(&self) -> Result<(), FieldError> {
        check_filename(&self.filename)?;
        check_opt_block_size(self.block_size)
    }
}

/// `bdev_error_create`: creates `EE_<base_name>` over `base_name`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevErrorCreate {
    pub base_name: BdevName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
}

impl BdevErrorCreate {
    /// The name SPDK gives the error bdev: `EE_<base_name>`.
    pub fn bdev_name(&self) -> String {
        format!("EE_{}", self.base_name)
    }
}

impl Validate for BdevErrorCreate {
    fn validate(&self) -> Result<(), FieldError> {
        if self.base_name.as_str().len() + 3 > MAX_NAME_LEN {
            return Err(FieldError::new(
                "base_name",
                format!("`EE_` + the name would exceed {MAX_NAME_LEN} bytes"),
            ));
        }
        Ok(())
    }
}

/// `bdev_error_inject_error`: SPDK's decoder table and checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevErrorInjectError {
    /// The error bdev (`EE_...`).
    pub name: BdevName,
    pub io_type: ErrorIoType,
    pub error_type: ErrorType,
    /// How many I/Os to fail; default 1 (SPDK's).
    #[serde(default = "one")]
    pub num: u32,
    /// Inject only at this queue depth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u64>,
    /// `corrupt_data`: byte offset (in the I/O) to XOR with `corrupt_value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt_offset: Option<u64>,
    /// `corrupt_data`: XOR value, 1..=255.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt_value: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvme_sct: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvme_sc: Option<u32>,
}

impl Validate for BdevErrorInjectError {
    fn validate(&self) -> Result<(), FieldError> {
        let nvme = self.nvme_sct.unwrap_or(0) != 0 || self.nvme_sc.unwrap_or(0) != 0;
        match self.error_type {
            ErrorType::NvmeFailure if !nvme => Err(FieldError::new(
                "nvme_sct",
                "nvme_sct or nvme_sc should be specified for NVMe error injection",
            )),
            t if t != ErrorType::NvmeFailure && nvme => Err(FieldError::new(
                if self.nvme_sct.unwrap_or(0) != 0 {
                    "nvme_sct"
                } else {
                    "nvme_sc"
                },
                "only meaningful with error_type `nvme_failure`",
            )),
            ErrorType::CorruptData if self.corrupt_value.unwrap_or(0) == 0 => Err(FieldError::new(
                "corrupt_value",
                "must be 1..=255 for `corrupt_data` (XOR with 0 changes nothing)",
            )),
            _ => Ok(()),
        }
    }
}

/// `bdev_delay_create`: SPDK's decoder table; latencies in microseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevDelayCreate {
    pub base_bdev_name: BdevName,
    pub name: BdevName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    pub avg_read_latency: u64,
    pub p99_read_latency: u64,
    pub avg_write_latency: u64,
    pub p99_write_latency: u64,
}

impl Validate for BdevDelayCreate {
    fn validate(&self) -> Result<(), FieldError> {
        if self.name == self.base_bdev_name {
            return Err(FieldError::new(
                "name",
                format!("`{}` is also the base bdev", self.name),
            ));
        }
        Ok(())
    }
}

/// `bdev_get_bdevs`: SPDK's `{name?, timeout?}` (`timeout` in ms waits for
/// `name` to appear; `timeout_ms` is accepted for it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevGetBdevs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<BdevName>,
    #[serde(default, alias = "timeout_ms", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}
impl Validate for BdevGetBdevs {}

// ================================================================ framework

/// Params of methods that take none: absent, `null` or `{}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}
impl Validate for NoParams {}

/// `rpc_get_methods`: SPDK's `{current?, include_aliases?}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcGetMethods {
    #[serde(default, skip_serializing_if = "is_false")]
    pub current: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub include_aliases: bool,
}
impl Validate for RpcGetMethods {}

/// `framework_get_config`: SPDK's `{name, with_batches?}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameworkGetConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub with_batches: bool,
}
impl Validate for FrameworkGetConfig {}

/// `spdk_kill_instance`: SPDK's `{sig_name}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpdkKillInstance {
    pub sig_name: KillSignal,
}
impl Validate for SpdkKillInstance {}

// ================================================================ NBD server

/// Longest NBD export name (the NBD protocol's limit).
pub const MAX_EXPORT_NAME: usize = 4096;

/// `mdraid_nbd_export_add`: export a bdev over the NBD server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MdraidNbdExportAdd {
    pub bdev_name: BdevName,
    /// Name clients ask for (`nbd://host/<export_name>`); default the bdev
    /// name. `""` is NBD's default export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_name: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// Free text shown by `NBD_OPT_INFO`/`LIST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl MdraidNbdExportAdd {
    pub fn export_name(&self) -> &str {
        self.export_name
            .as_deref()
            .unwrap_or(self.bdev_name.as_str())
    }
}

fn check_export_name(field: &str, n: &str) -> Result<(), FieldError> {
    if n.len() > MAX_EXPORT_NAME {
        return Err(FieldError::new(
            field,
            format!("{} bytes; NBD allows at most {MAX_EXPORT_NAME}", n.len()),
        ));
    }
    if n.contains('\0') {
        return Err(FieldError::new(field, "contains a NUL byte"));
    }
    Ok(())
}

impl Validate for MdraidNbdExportAdd {
    fn validate(&self) -> Result<(), FieldError> {
        if let Some(n) = &self.export_name {
            check_export_name("export_name", n)?;
        }
        if let Some(d) = &self.description {
            check_export_name("description", d)?;
        }
        Ok(())
    }
}

/// `mdraid_nbd_export_remove`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MdraidNbdExportRemove {
    pub export_name: String,
}

impl Validate for MdraidNbdExportRemove {
    fn validate(&self) -> Result<(), FieldError> {
        check_export_name("export_name", &self.export_name)
    }
}

/// `mdraid_nbd_get_exports`: all exports, or one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MdraidNbdGetExports {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_name: Option<String>,
}
impl Validate for MdraidNbdGetExports {}

/// Default NBD TCP port (IANA).
pub const NBD_DEFAULT_PORT: u16 = 10809;

/// Longest unix socket path (`sun_path` is 108 bytes with its NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// `mdraid_nbd_listener_add` / `mdraid_nbd_listener_remove`: a unix socket
/// (`unix_path`) or TCP (`address`, an IP literal, and `port`, default
/// 10809). Whether a TCP address is allowed (loopback) is the host's rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MdraidNbdListener {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl MdraidNbdListener {
    /// The TCP address, parsed (after [`Validate::validate`] succeeded).
    pub fn tcp(&self) -> Option<(IpAddr, u16)> {
        let a = self.address.as_deref()?.parse().ok()?;
        Some((a, self.port.unwrap_or(NBD_DEFAULT_PORT)))
    }
}

impl Validate for MdraidNbdListener {
    fn validate(&self) -> Result<(), FieldError> {
        match (&self.unix_path, &self.address) {
            (Some(_), Some(_)) => Err(FieldError::new(
                "address",
                "give either `unix_path` or `address`, not both",
            )),
            (None, None) => Err(FieldError::new("", "give `unix_path` or `address`")),
            (Some(p), None) => {
                if self.port.is_some() {
                    return Err(FieldError::new("port", "only meaningful with `address`"));
                }
                if p.is_empty() || p.len() > MAX_UNIX_PATH || p.contains('\0') {
                    return Err(FieldError::new(
                        "unix_path",
                        format!("must be 1..={MAX_UNIX_PATH} bytes without NUL"),
                    ));
                }
                Ok(())
            }
            (None, Some(a)) => {
                if a.parse::<IpAddr>().is_err() {
                    return Err(FieldError::new(
                        "address",
                        format!("`{}` is not an IP address literal", a.escape_debug()),
                    ));
                }
                if self.port == Some(0) {
                    return Err(FieldError::new("port", "must be 1..=65535"));
                }
                Ok(())
            }
        }
    }
}
