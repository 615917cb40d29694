//! md v1.2 superblock and write-intent bitmap: byte-exact encode/decode.
//!
//! The formats are Linux md's, so `mdadm --examine` / `--examine-bitmap`
//! read what we write and Linux can assemble our members:
//!
//! - [`Superblock`]: `struct mdp_superblock_1` from `linux/raid/md_p.h`,
//!   256 bytes of fixed fields followed by `max_dev` little-endian `u16`
//!   roles. For metadata 1.2 it lives 4 KiB (sector 8) from the start of the
//!   member. `sb_csum` is md's `calc_sb_1_csum`.
//! - [`BitmapSuper`]: `bitmap_super_t` (mdadm's `bitmap.h`, Linux's
//!   `md-bitmap.h`), 256 bytes at `super_offset + bitmap_offset`, followed
//!   directly by the bit array: bit `n` (chunk `n`) is bit `n % 8` of byte
//!   `256 + n / 8` of the bitmap area (little-endian bit order, 1 = dirty).
//! - [`MemberLayout`]: where mdadm puts superblock, bitmap, bad-block log
//!   and data on a 1.2 member.
//!
//! All sizes and offsets in the on-disk structures are in 512-byte sectors
//! unless a name says bytes. Decoding validates everything that could make
//! us read or write outside the metadata area or misroute data, and refuses
//! with an error naming the offending field. Nothing here does I/O.
//!
//! # What md expects of the writer (notes for the metadata path)
//!
//! - mdadm writes `events` 0 at create; the kernel bumps it on every
//!   superblock update. The bitmap superblock's `events` must follow the
//!   superblock's on every update: md treats a bitmap whose events are below
//!   the array's as stale and resyncs everything.
//! - md resyncs a dirty bit at assembly only if its chunk lies at or beyond
//!   `resync_offset` (all of them after a crash, `resync_offset` 0; none on a
//!   clean array, `u64::MAX`), unless the array is degraded and
//!   `events_cleared != events` (then every dirty bit is resynced).
//! - `daemon_sleep` is whole seconds on disk and must be >= 1: md rejects the
//!   bitmap otherwise (round a millisecond option up).
//! - mdadm sets `feature_map` = `BITMAP_OFFSET` (0x1) with an internal bitmap
//!   and 0 without; it clears `BAD_BLOCKS` at create and only reserves the
//!   log (`bblog_size` 8 after the bitmap). raid0 gets `RAID0_LAYOUT`.
//! - md writes `write_len(block)` bytes of superblock, not 4 KiB: with a
//!   `bitmap_offset` below 8 (arrays that got a bitmap by `--grow`), the
//!   bitmap starts inside the 4 KiB after the superblock.
//! - mdadm writes the bitmap bits all ones at create (full resync of every
//!   chunk on first start unless the array is created clean).

use thiserror::Error;

/// md v1.x superblock magic (`MD_SB_MAGIC`).
pub const MD_SB_MAGIC: u32 = 0xa92b_4efc;
/// The only superblock major version we read and write.
pub const MD_SB_MAJOR_VERSION: u32 = 1;
/// Sector (512 B) at which metadata 1.2 puts the superblock.
pub const SB_OFFSET_SECTORS: u64 = 8;
/// Byte offset of the 1.2 superblock from the start of the member.
pub const SB_OFFSET_BYTES: u64 = SB_OFFSET_SECTORS * 512;
/// Fixed part of `mdp_superblock_1`, before `dev_roles[]`.
pub const SB_HEADER_BYTES: usize = 256;
/// Space md reserves for the superblock (`MAX_SB_SIZE` in mdadm): one 4 KiB
/// block. [`Superblock::encode`] returns exactly this many bytes.
pub const SB_BLOCK_BYTES: usize = 4096;
/// Most `dev_roles[]` entries that fit in 4 KiB (mdadm's `MAX_DEVS`, the
/// kernel's `(4096 - 256) / 2` limit on `max_dev`).
pub const MAX_DEVS: u32 = ((SB_BLOCK_BYTES - SB_HEADER_BYTES) / 2) as u32;

/// `feature_map` bit: `bitmap_offset` is meaningful (internal bitmap).
pub const MD_FEATURE_BITMAP_OFFSET: u32 = 1;
/// `feature_map` bit: `recovery_offset` is meaningful (partial recovery).
pub const MD_FEATURE_RECOVERY_OFFSET: u32 = 2;
/// `feature_map` bit: a reshape is in progress.
pub const MD_FEATURE_RESHAPE_ACTIVE: u32 = 4;
/// `feature_map` bit: the bad-block list is not empty.
pub const MD_FEATURE_BAD_BLOCKS: u32 = 8;
/// `feature_map` bit: this device is replacing an active device.
pub const MD_FEATURE_REPLACEMENT: u32 = 16;
/// `feature_map` bit: reshape goes backwards.
pub const MD_FEATURE_RESHAPE_BACKWARDS: u32 = 32;
/// `feature_map` bit: `new_offset` must be honoured.
pub const MD_FEATURE_NEW_OFFSET: u32 = 64;
/// `feature_map` bit: the recovery in progress is guided by the bitmap.
pub const MD_FEATURE_RECOVERY_BITMAP: u32 = 128;
/// `feature_map` bit: clustered md.
pub const MD_FEATURE_CLUSTERED: u32 = 256;
/// `feature_map` bit: raid5 journal (write cache) device.
pub const MD_FEATURE_JOURNAL: u32 = 512;
/// `feature_map` bit: partial parity log.
pub const MD_FEATURE_PPL: u32 = 1024;
/// `feature_map` bit: multiple partial parity logs.
pub const MD_FEATURE_MULTIPLE_PPLS: u32 = 2048;
/// `feature_map` bit: `layout` is meaningful for raid0 (1 = original,
/// 2 = alternate). mdadm sets it on every raid0 it creates on Linux >= 5.4.
pub const MD_FEATURE_RAID0_LAYOUT: u32 = 4096;

/// Feature bits this implementation understands. Everything else is refused:
/// reshape, bad-block lists, replacement, clusters, journal and PPL change
/// where data lives or what is trustworthy, and we do not implement them.
/// `RECOVERY_BITMAP` is accepted because ignoring it is safe (recovery from
/// `recovery_offset` onwards copies everything, the bitmap would only have
/// narrowed it).
pub const MD_FEATURES_SUPPORTED: u32 = MD_FEATURE_BITMAP_OFFSET
    | MD_FEATURE_RECOVERY_OFFSET
    | MD_FEATURE_RECOVERY_BITMAP
    | MD_FEATURE_RAID0_LAYOUT;

/// `devflags` bit: member is write-mostly (reads avoid it).
pub const WRITE_MOSTLY_1: u8 = 1;
/// `devflags` bit: fail fast (no retries).
pub const FAIL_FAST_1: u8 = 2;

/// `dev_roles[]` value of a spare (also: unused slot).
pub const MD_DISK_ROLE_SPARE: u16 = 0xffff;
/// `dev_roles[]` value of a faulty device.
pub const MD_DISK_ROLE_FAULTY: u16 = 0xfffe;
/// `dev_roles[]` value of a journal device.
pub const MD_DISK_ROLE_JOURNAL: u16 = 0xfffd;

/// md's `level` numbers.
pub mod level {
    pub const MULTIPATH: i32 = -4;
    pub const LINEAR: i32 = -1;
    pub const RAID0: i32 = 0;
    pub const RAID1: i32 = 1;
    pub const RAID4: i32 = 4;
    pub const RAID5: i32 = 5;
    pub const RAID6: i32 = 6;
    pub const RAID10: i32 = 10;
}

/// `bitmap_super_t` magic ("bitm" little-endian).
pub const BITMAP_MAGIC: u32 = 0x6d74_6962;
/// Bitmap version with host-endian bits (refused: ambiguous bit order).
pub const BITMAP_MAJOR_LO: u32 = 3;
/// Bitmap version mdadm writes for internal bitmaps (little-endian bits).
pub const BITMAP_MAJOR_HI: u32 = 4;
/// Clustered bitmap (refused).
pub const BITMAP_MAJOR_CLUSTERED: u32 = 5;
/// Lockless bitmap of recent kernels, a different format (refused).
pub const BITMAP_MAJOR_LOCKLESS: u32 = 6;
/// Size of `bitmap_super_t`; the bits follow it directly.
pub const BITMAP_SB_BYTES: usize = 256;
/// Kernel's `COUNTER_MAX`: the largest `write_behind` it accepts.
pub const BITMAP_WRITE_BEHIND_MAX: u32 = 16383;
/// Bitmap `state` bit: bitmap is out of date, a full resync is needed.
pub const BITMAP_STATE_STALE: u32 = 1 << 1;
/// Bitmap `state` bit: a write error occurred.
pub const BITMAP_STATE_WRITE_ERROR: u32 = 1 << 2;
/// Bitmap `state` bit: first use (lockless bitmaps).
pub const BITMAP_STATE_FIRST_USE: u32 = 1 << 3;
/// Bitmap `state` bit: clean (lockless bitmaps).
pub const BITMAP_STATE_CLEAN: u32 = 1 << 4;
/// Bitmap `state` bit: bits are host-endian.
pub const BITMAP_STATE_HOSTENDIAN: u32 = 1 << 15;

/// Why a superblock, bitmap superblock or layout was refused. Every message
/// names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SbError {
    #[error("{what} truncated: {field} needs {need} bytes, buffer has {got}")]
    Truncated {
        what: &'static str,
        field: &'static str,
        need: usize,
        got: usize,
    },
    #[error("magic: expected {expected:#010x}, found {found:#010x} (no md v1.x superblock)")]
    BadMagic { expected: u32, found: u32 },
    #[error("major_version: expected 1, found {found}")]
    UnsupportedMajorVersion { found: u32 },
    #[error("max_dev {max_dev}: more than {limit} dev_roles do not fit in the 4 KiB superblock")]
    MaxDevTooLarge { max_dev: u32, limit: u32 },
    #[error("sb_csum: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("{field} is not zero (possibly a newer md feature we do not know)")]
    NonZeroPad { field: &'static str },
    #[error("feature_map {feature_map:#x}: unsupported feature bits {unsupported:#x} ({names})")]
    UnsupportedFeatures {
        feature_map: u32,
        unsupported: u32,
        names: String,
    },
    #[error("super_offset: expected sector {expected} (metadata 1.2), found {found}")]
    SuperOffset { expected: u64, found: u64 },
    #[error("raid_disks {raid_disks}: must be between 1 and {limit}")]
    RaidDisks { raid_disks: u32, limit: u32 },
    #[error("dev_number {dev_number} is beyond max_dev {max_dev}")]
    DevNumberBeyondMaxDev { dev_number: u32, max_dev: u32 },
    #[error("dev_roles[{index}] = {role:#06x}: not below raid_disks {raid_disks} and not spare (0xffff) or faulty (0xfffe)")]
    RoleOutOfRange {
        index: usize,
        role: u16,
        raid_disks: u32,
    },
    #[error("dev_roles[{index}] = 0xfffd (journal): journal devices are not supported")]
    JournalRole { index: usize },
    #[error("dev_roles[{second}] and dev_roles[{first}] both claim active role {role}")]
    DuplicateRole {
        role: u16,
        first: usize,
        second: usize,
    },
    #[error("data_offset {data_offset}: data would overlap the superblock (which ends at sector {sb_end})")]
    DataOverlapsSuperblock { data_offset: u64, sb_end: u64 },
    #[error("data_offset {data_offset} + data_size {data_size} exceeds the member ({member_sectors} sectors)")]
    DataOutsideMember {
        data_offset: u64,
        data_size: u64,
        member_sectors: u64,
    },
    #[error("size {size}: larger than data_size {data_size}")]
    SizeExceedsDataSize { size: u64, data_size: u64 },
    #[error("recovery_offset {recovery_offset}: beyond data_size {data_size}")]
    RecoveryOffset {
        recovery_offset: u64,
        data_size: u64,
    },
    #[error("bitmap_offset {bitmap_offset}: {reason}")]
    BitmapOffset {
        bitmap_offset: i32,
        reason: &'static str,
    },
    #[error("bblog_offset {bblog_offset} / bblog_size {bblog_size}: {reason}")]
    BadBlockLog {
        bblog_offset: i32,
        bblog_size: u16,
        reason: &'static str,
    },
    #[error("bitmap magic: expected {expected:#010x}, found {found:#010x}")]
    BitmapBadMagic { expected: u32, found: u32 },
    #[error(
        "bitmap version {found}: only {supported} (little-endian internal bitmap) is supported"
    )]
    BitmapVersion { found: u32, supported: u32 },
    #[error("bitmap chunksize {chunksize}: must be a power of two of at least 512 bytes")]
    BitmapChunkSize { chunksize: u32 },
    #[error("bitmap daemon_sleep {daemon_sleep}: must be at least 1 second")]
    BitmapDaemonSleep { daemon_sleep: u32 },
    #[error("bitmap write_behind {write_behind}: must be at most {max}")]
    BitmapWriteBehind { write_behind: u32, max: u32 },
    #[error("bitmap nodes {nodes}: clustered bitmaps are not supported")]
    BitmapNodes { nodes: u32 },
    #[error("bitmap uuid does not match the superblock's set_uuid")]
    BitmapUuidMismatch,
    #[error("bitmap area (sectors {start}..{end}) {reason}")]
    BitmapArea {
        start: u64,
        end: u64,
        reason: &'static str,
    },
    #[error("member of {member_sectors} sectors is too small: metadata needs {needed} sectors plus data")]
    MemberTooSmall { member_sectors: u64, needed: u64 },
}

/// md's timestamp encoding for `ctime`/`utime`: seconds in the low 40 bits,
/// microseconds in the top 24 (mdadm writes 0 microseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MdTime(pub u64);

impl MdTime {
    const SEC_MASK: u64 = (1 << 40) - 1;

    /// Build from seconds since the epoch and microseconds (< 2^24).
    pub fn new(secs: u64, usecs: u32) -> MdTime {
        MdTime((secs & Self::SEC_MASK) | ((u64::from(usecs) & 0xff_ffff) << 40))
    }

    pub fn secs(self) -> u64 {
        self.0 & Self::SEC_MASK
    }

    pub fn usecs(self) -> u32 {
        (self.0 >> 40) as u32
    }
}

/// One `dev_roles[]` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DevRole {
    /// Holds slot `n` of the array (0-based, below `raid_disks`).
    Active(u16),
    /// Spare, or an unused `dev_number` (md does not distinguish them).
    Spare,
    /// Recorded as failed.
    Faulty,
    /// raid5 journal device (never accepted by [`Superblock::decode`]).
    Journal,
}

impl DevRole {
    pub fn from_raw(raw: u16) -> DevRole {
        match raw {
            MD_DISK_ROLE_SPARE => DevRole::Spare,
            MD_DISK_ROLE_FAULTY => DevRole::Faulty,
            MD_DISK_ROLE_JOURNAL => DevRole::Journal,
            n => DevRole::Active(n),
        }
    }

    pub fn to_raw(self) -> u16 {
        match self {
            DevRole::Active(n) => n,
            DevRole::Spare => MD_DISK_ROLE_SPARE,
            DevRole::Faulty => MD_DISK_ROLE_FAULTY,
            DevRole::Journal => MD_DISK_ROLE_JOURNAL,
        }
    }
}

/// Counts over `dev_roles[]`, as one member's superblock sees the array.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoleSummary {
    pub raid_disks: u32,
    /// Distinct active slots that have a device.
    pub active: u32,
    /// Devices recorded faulty (0xfffe).
    pub faulty: u32,
    /// Slots below `raid_disks` with no device (degraded when > 0).
    pub missing: u32,
}

/// md v1.2 superblock (`struct mdp_superblock_1`), every field typed.
///
/// `magic`, `major_version`, `pad0`, `pad3` and `sb_csum` are not stored:
/// encode writes the constants, zeros and a fresh checksum; decode checks
/// them. `max_dev` is `dev_roles.len()`. The fields after `bitmap_offset`
/// up to `new_offset` belong to reshape; we write them as we found them (zero
/// for new arrays) and refuse superblocks with a reshape in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub feature_map: u32,
    pub set_uuid: [u8; 16],
    /// NUL-padded, "homehost:name" by mdadm's convention.
    pub set_name: [u8; 32],
    pub ctime: MdTime,
    pub level: i32,
    pub layout: u32,
    /// Used size of each member in sectors (md's component size).
    pub size: u64,
    /// Chunk size in sectors.
    pub chunksize: u32,
    pub raid_disks: u32,
    /// Sectors from the superblock to the bitmap (signed); meaningful when
    /// `feature_map` has [`MD_FEATURE_BITMAP_OFFSET`].
    pub bitmap_offset: i32,
    pub new_level: i32,
    pub reshape_position: u64,
    pub delta_disks: i32,
    pub new_layout: u32,
    pub new_chunk: u32,
    pub new_offset: i32,
    /// First data sector on this member.
    pub data_offset: u64,
    /// Sectors usable for data from `data_offset`.
    pub data_size: u64,
    /// Sector of this superblock (8 for 1.2).
    pub super_offset: u64,
    /// Sectors (from `data_offset`) already recovered; meaningful with
    /// [`MD_FEATURE_RECOVERY_OFFSET`].
    pub recovery_offset: u64,
    /// Permanent index of this device in `dev_roles[]` (not its role).
    pub dev_number: u32,
    pub cnt_corrected_read: u32,
    pub device_uuid: [u8; 16],
    /// [`WRITE_MOSTLY_1`], [`FAIL_FAST_1`].
    pub devflags: u8,
    pub bblog_shift: u8,
    pub bblog_size: u16,
    /// Sectors from the superblock to the bad-block log (signed).
    pub bblog_offset: i32,
    pub utime: MdTime,
    pub events: u64,
    /// Sectors (from `data_offset`) known in sync; `u64::MAX` = clean.
    pub resync_offset: u64,
    /// Role of every `dev_number`; its length is `max_dev`.
    pub dev_roles: Vec<DevRole>,
}

// Field offsets in `mdp_superblock_1`.
/// Byte offset of `sb_csum` in the superblock.
pub const SB_CSUM_OFFSET: usize = off::SB_CSUM;

mod off {
    pub const MAGIC: usize = 0;
    pub const MAJOR_VERSION: usize = 4;
    pub const FEATURE_MAP: usize = 8;
    pub const PAD0: usize = 12;
    pub const SET_UUID: usize = 16;
    pub const SET_NAME: usize = 32;
    pub const CTIME: usize = 64;
    pub const LEVEL: usize = 72;
    pub const LAYOUT: usize = 76;
    pub const SIZE: usize = 80;
    pub const CHUNKSIZE: usize = 88;
    pub const RAID_DISKS: usize = 92;
    pub const BITMAP_OFFSET: usize = 96;
    pub const NEW_LEVEL: usize = 100;
    pub const RESHAPE_POSITION: usize = 104;
    pub const DELTA_DISKS: usize = 112;
    pub const NEW_LAYOUT: usize = 116;
    pub const NEW_CHUNK: usize = 120;
    pub const NEW_OFFSET: usize = 124;
    pub const DATA_OFFSET: usize = 128;
    pub const DATA_SIZE: usize = 136;
    pub const SUPER_OFFSET: usize = 144;
    pub const RECOVERY_OFFSET: usize = 152;
    pub const DEV_NUMBER: usize = 160;
    pub const CNT_CORRECTED_READ: usize = 164;
    pub const DEVICE_UUID: usize = 168;
    pub const DEVFLAGS: usize = 184;
    pub const BBLOG_SHIFT: usize = 185;
    pub const BBLOG_SIZE: usize = 186;
    pub const BBLOG_OFFSET: usize = 188;
    pub const UTIME: usize = 192;
    pub const EVENTS: usize = 200;
    pub const RESYNC_OFFSET: usize = 208;
    pub const SB_CSUM: usize = 216;
    pub const MAX_DEV: usize = 220;
    pub const PAD3: usize = 224;
    pub const DEV_ROLES: usize = 256;
}

// Field offsets in `bitmap_super_t`.
mod boff {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const UUID: usize = 8;
    pub const EVENTS: usize = 24;
    pub const EVENTS_CLEARED: usize = 32;
    pub const SYNC_SIZE: usize = 40;
    pub const STATE: usize = 48;
    pub const CHUNKSIZE: usize = 52;
    pub const DAEMON_SLEEP: usize = 56;
    pub const WRITE_BEHIND: usize = 60;
    pub const SECTORS_RESERVED: usize = 64;
    pub const NODES: usize = 68;
    pub const CLUSTER_NAME: usize = 72;
    pub const PAD: usize = 136;
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn arr<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn round_up(a: u64, to: u64) -> u64 {
    a.div_ceil(to) * to
}

/// md's `calc_sb_1_csum` over the first `256 + 2 * max_dev` bytes of `sb`
/// (`max_dev` read from the buffer), with the `sb_csum` field taken as zero:
/// the sum of little-endian 32-bit words (a trailing 16-bit word added as
/// such), folded once from 64 to 32 bits.
///
/// If `sb` is shorter than that (or than the header), only the bytes present
/// are summed; [`Superblock::decode`] checks the length first.
pub fn sb_checksum(sb: &[u8]) -> u32 {
    let max_dev = if sb.len() >= off::MAX_DEV + 4 {
        le32(sb, off::MAX_DEV) as usize
    } else {
        0
    };
    let len = (SB_HEADER_BYTES + 2 * max_dev).min(sb.len());
    let content = &sb[..len];
    let mut sum: u64 = 0;
    let mut words = content.chunks_exact(4);
    for (i, w) in words.by_ref().enumerate() {
        if i * 4 == off::SB_CSUM {
            continue;
        }
        sum += u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    if rest.len() == 2 {
        sum += u64::from(u16::from_le_bytes([rest[0], rest[1]]));
    }
    ((sum & 0xffff_ffff) as u32).wrapping_add((sum >> 32) as u32)
}

fn feature_names(bits: u32) -> String {
    const NAMES: [(u32, &str); 13] = [
        (MD_FEATURE_BITMAP_OFFSET, "BITMAP_OFFSET"),
        (MD_FEATURE_RECOVERY_OFFSET, "RECOVERY_OFFSET"),
        (MD_FEATURE_RESHAPE_ACTIVE, "RESHAPE_ACTIVE"),
        (MD_FEATURE_BAD_BLOCKS, "BAD_BLOCKS"),
        (MD_FEATURE_REPLACEMENT, "REPLACEMENT"),
        (MD_FEATURE_RESHAPE_BACKWARDS, "RESHAPE_BACKWARDS"),
        (MD_FEATURE_NEW_OFFSET, "NEW_OFFSET"),
        (MD_FEATURE_RECOVERY_BITMAP, "RECOVERY_BITMAP"),
        (MD_FEATURE_CLUSTERED, "CLUSTERED"),
        (MD_FEATURE_JOURNAL, "JOURNAL"),
        (MD_FEATURE_PPL, "PPL"),
        (MD_FEATURE_MULTIPLE_PPLS, "MULTIPLE_PPLS"),
        (MD_FEATURE_RAID0_LAYOUT, "RAID0_LAYOUT"),
    ];
    let mut out: Vec<String> = Vec::new();
    let mut known = 0;
    for (bit, name) in NAMES {
        known |= bit;
        if bits & bit != 0 {
            out.push(name.to_string());
        }
    }
    if bits & !known != 0 {
        out.push(format!("unknown {:#x}", bits & !known));
    }
    out.join("|")
}

/// mdadm's `max_dev` for a new array of `devices` members (raid disks plus
/// spares): the `dev_roles[]` table fills the superblock up to a 512-byte
/// boundary, so 1..=128 devices give 128. Capped at [`MAX_DEVS`].
pub fn mdadm_max_dev(devices: u32) -> u32 {
    let bytes = SB_HEADER_BYTES as u64 + 2 * u64::from(devices);
    let bytes = round_up(bytes.max(1), 512);
    (((bytes - SB_HEADER_BYTES as u64) / 2) as u32).min(MAX_DEVS)
}

impl Superblock {
    /// A superblock for member `dev_number` of a new 1.2 array with every
    /// other field at mdadm's defaults: `super_offset` 8, `max_dev` by
    /// [`mdadm_max_dev`], every role spare, clean (`resync_offset` =
    /// `u64::MAX`), events 0. The caller sets the geometry, roles, data
    /// area ([`MemberLayout::apply`]) and times.
    pub fn new(set_uuid: [u8; 16], level: i32, raid_disks: u32, dev_number: u32) -> Superblock {
        let max_dev = mdadm_max_dev(raid_disks.max(dev_number.saturating_add(1)));
        Superblock {
            feature_map: 0,
            set_uuid,
            set_name: [0; 32],
            ctime: MdTime::default(),
            level,
            layout: 0,
            size: 0,
            chunksize: 0,
            raid_disks,
            bitmap_offset: 0,
            new_level: 0,
            reshape_position: 0,
            delta_disks: 0,
            new_layout: 0,
            new_chunk: 0,
            new_offset: 0,
            data_offset: 0,
            data_size: 0,
            super_offset: SB_OFFSET_SECTORS,
            recovery_offset: 0,
            dev_number,
            cnt_corrected_read: 0,
            device_uuid: [0; 16],
            devflags: 0,
            bblog_shift: 0,
            bblog_size: 0,
            bblog_offset: 0,
            utime: MdTime::default(),
            events: 0,
            resync_offset: u64::MAX,
            dev_roles: vec![DevRole::Spare; max_dev as usize],
        }
    }

    /// Whether `buf` (a member's superblock block, as for [`Superblock::decode`])
    /// holds an md superblock: a whole block with md's magic, which may
    /// still be damaged (decode says how).
    pub fn present(buf: &[u8], member_sectors: u64) -> bool {
        buf.len() >= SB_BLOCK_BYTES
            && !matches!(
                Superblock::decode(buf, member_sectors),
                Err(SbError::BadMagic { .. })
            )
    }

    /// Decode and validate a superblock. `buf` starts at the superblock
    /// (byte 4096 of a 1.2 member) and must hold at least
    /// `256 + 2 * max_dev` bytes (4096 always suffices). `member_sectors` is
    /// the member's size in 512-byte sectors; offsets are checked against it.
    pub fn decode(buf: &[u8], member_sectors: u64) -> Result<Superblock, SbError> {
        if buf.len() < SB_HEADER_BYTES {
            return Err(SbError::Truncated {
                what: "superblock",
                field: "fixed header",
                need: SB_HEADER_BYTES,
                got: buf.len(),
            });
        }
        let magic = le32(buf, off::MAGIC);
        if magic != MD_SB_MAGIC {
            return Err(SbError::BadMagic {
                expected: MD_SB_MAGIC,
                found: magic,
            });
        }
        let major = le32(buf, off::MAJOR_VERSION);
        if major != MD_SB_MAJOR_VERSION {
            return Err(SbError::UnsupportedMajorVersion { found: major });
        }
        let max_dev = le32(buf, off::MAX_DEV);
        if max_dev > MAX_DEVS {
            return Err(SbError::MaxDevTooLarge {
                max_dev,
                limit: MAX_DEVS,
            });
        }
        let content_len = SB_HEADER_BYTES + 2 * max_dev as usize;
        if buf.len() < content_len {
            return Err(SbError::Truncated {
                what: "superblock",
                field: "dev_roles[max_dev]",
                need: content_len,
                got: buf.len(),
            });
        }
        let stored = le32(buf, off::SB_CSUM);
        let computed = sb_checksum(buf);
        if stored != computed {
            return Err(SbError::BadChecksum { stored, computed });
        }
        if le32(buf, off::PAD0) != 0 {
            return Err(SbError::NonZeroPad { field: "pad0" });
        }
        if buf[off::PAD3..off::DEV_ROLES].iter().any(|&b| b != 0) {
            return Err(SbError::NonZeroPad { field: "pad3" });
        }

        let sb = Superblock {
            feature_map: le32(buf, off::FEATURE_MAP),
            set_uuid: arr(buf, off::SET_UUID),
            set_name: arr(buf, off::SET_NAME),
            ctime: MdTime(le64(buf, off::CTIME)),
            level: le32(buf, off::LEVEL) as i32,
            layout: le32(buf, off::LAYOUT),
            size: le64(buf, off::SIZE),
            chunksize: le32(buf, off::CHUNKSIZE),
            raid_disks: le32(buf, off::RAID_DISKS),
            bitmap_offset: le32(buf, off::BITMAP_OFFSET) as i32,
            new_level: le32(buf, off::NEW_LEVEL) as i32,
            reshape_position: le64(buf, off::RESHAPE_POSITION),
            delta_disks: le32(buf, off::DELTA_DISKS) as i32,
            new_layout: le32(buf, off::NEW_LAYOUT),
            new_chunk: le32(buf, off::NEW_CHUNK),
            new_offset: le32(buf, off::NEW_OFFSET) as i32,
            data_offset: le64(buf, off::DATA_OFFSET),
            data_size: le64(buf, off::DATA_SIZE),
            super_offset: le64(buf, off::SUPER_OFFSET),
            recovery_offset: le64(buf, off::RECOVERY_OFFSET),
            dev_number: le32(buf, off::DEV_NUMBER),
            cnt_corrected_read: le32(buf, off::CNT_CORRECTED_READ),
            device_uuid: arr(buf, off::DEVICE_UUID),
            devflags: buf[off::DEVFLAGS],
            bblog_shift: buf[off::BBLOG_SHIFT],
            bblog_size: le16(buf, off::BBLOG_SIZE),
            bblog_offset: le32(buf, off::BBLOG_OFFSET) as i32,
            utime: MdTime(le64(buf, off::UTIME)),
            events: le64(buf, off::EVENTS),
            resync_offset: le64(buf, off::RESYNC_OFFSET),
            dev_roles: (0..max_dev as usize)
                .map(|i| DevRole::from_raw(le16(buf, off::DEV_ROLES + 2 * i)))
                .collect(),
        };
        sb.validate(member_sectors)?;
        Ok(sb)
    }

    /// The semantic checks of [`Superblock::decode`], usable on a superblock
    /// built in memory before it is written.
    pub fn validate(&self, member_sectors: u64) -> Result<(), SbError> {
        let max_dev = self.max_dev();
        if max_dev > MAX_DEVS {
            return Err(SbError::MaxDevTooLarge {
                max_dev,
                limit: MAX_DEVS,
            });
        }
        let unsupported = self.feature_map & !MD_FEATURES_SUPPORTED;
        if unsupported != 0 {
            return Err(SbError::UnsupportedFeatures {
                feature_map: self.feature_map,
                unsupported,
                names: feature_names(unsupported),
            });
        }
        if self.super_offset != SB_OFFSET_SECTORS {
            return Err(SbError::SuperOffset {
                expected: SB_OFFSET_SECTORS,
                found: self.super_offset,
            });
        }
        if self.raid_disks == 0 || self.raid_disks > MAX_DEVS {
            return Err(SbError::RaidDisks {
                raid_disks: self.raid_disks,
                limit: MAX_DEVS,
            });
        }
        if self.dev_number >= max_dev {
            return Err(SbError::DevNumberBeyondMaxDev {
                dev_number: self.dev_number,
                max_dev,
            });
        }
        let mut holder: Vec<Option<usize>> = vec![None; self.raid_disks as usize];
        for (index, role) in self.dev_roles.iter().enumerate() {
            match *role {
                DevRole::Spare | DevRole::Faulty => {}
                DevRole::Journal => return Err(SbError::JournalRole { index }),
                DevRole::Active(r) => {
                    let Some(slot) = holder.get_mut(r as usize) else {
                        return Err(SbError::RoleOutOfRange {
                            index,
                            role: r,
                            raid_disks: self.raid_disks,
                        });
                    };
                    if let Some(first) = *slot {
                        return Err(SbError::DuplicateRole {
                            role: r,
                            first,
                            second: index,
                        });
                    }
                    *slot = Some(index);
                }
            }
        }

        // Metadata area: superblock, then bitmap and bad-block log, then data.
        let sb_end = self.super_offset + (self.content_len() as u64).div_ceil(512);
        if self.data_offset < sb_end {
            return Err(SbError::DataOverlapsSuperblock {
                data_offset: self.data_offset,
                sb_end,
            });
        }
        match self.data_offset.checked_add(self.data_size) {
            Some(end) if end <= member_sectors => {}
            _ => {
                return Err(SbError::DataOutsideMember {
                    data_offset: self.data_offset,
                    data_size: self.data_size,
                    member_sectors,
                })
            }
        }
        if self.size > self.data_size {
            return Err(SbError::SizeExceedsDataSize {
                size: self.size,
                data_size: self.data_size,
            });
        }
        if self.feature_map & MD_FEATURE_RECOVERY_OFFSET != 0
            && self.recovery_offset > self.data_size
        {
            return Err(SbError::RecoveryOffset {
                recovery_offset: self.recovery_offset,
                data_size: self.data_size,
            });
        }
        if self.has_bitmap() {
            let err = |reason| SbError::BitmapOffset {
                bitmap_offset: self.bitmap_offset,
                reason,
            };
            if self.bitmap_offset < 0 {
                return Err(err("a 1.2 bitmap must follow the superblock"));
            }
            let start = self.super_offset + self.bitmap_offset as u64;
            if start < sb_end {
                return Err(err("bitmap overlaps the superblock"));
            }
            // At least the 256-byte bitmap superblock must fit before data.
            if start >= self.data_offset {
                return Err(err("bitmap starts at or after data_offset"));
            }
        }
        if self.bblog_size != 0 {
            let err = |reason| SbError::BadBlockLog {
                bblog_offset: self.bblog_offset,
                bblog_size: self.bblog_size,
                reason,
            };
            if self.bblog_offset < 0 {
                return Err(err("a 1.2 bad-block log must follow the superblock"));
            }
            let start = self.super_offset + self.bblog_offset as u64;
            if start < sb_end {
                return Err(err("bad-block log overlaps the superblock"));
            }
            if start + u64::from(self.bblog_size) > self.data_offset {
                return Err(err("bad-block log overlaps data"));
            }
        }
        Ok(())
    }

    /// `max_dev`: length of `dev_roles[]`.
    pub fn max_dev(&self) -> u32 {
        self.dev_roles.len() as u32
    }

    /// Bytes of superblock content: `256 + 2 * max_dev`.
    pub fn content_len(&self) -> usize {
        SB_HEADER_BYTES + 2 * self.dev_roles.len()
    }

    /// Bytes md writes for this superblock on a device with `block_size`
    /// byte logical blocks: the content rounded up to a block (mdadm and the
    /// kernel write no more; the rest of the 4 KiB stays as it was).
    pub fn write_len(&self, block_size: usize) -> usize {
        round_up(self.content_len() as u64, block_size.max(1) as u64) as usize
    }

    /// Encode into a fresh [`SB_BLOCK_BYTES`] (4 KiB) buffer: content, then
    /// zeros, with `sb_csum` computed.
    ///
    /// # Panics
    /// If `dev_roles.len() > MAX_DEVS` (the superblock cannot hold it).
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0u8; SB_BLOCK_BYTES];
        if let Err(e) = self.encode_into(&mut buf) {
            panic!("Superblock::encode: {e}");
        }
        buf
    }

    /// Encode into `buf` (at least [`Superblock::content_len`] bytes); bytes
    /// after the content are left alone. Returns the content length.
    pub fn encode_into(&self, buf: &mut [u8]) -> Result<usize, SbError> {
        let max_dev = self.max_dev();
        if max_dev > MAX_DEVS {
            return Err(SbError::MaxDevTooLarge {
                max_dev,
                limit: MAX_DEVS,
            });
        }
        let len = self.content_len();
        if buf.len() < len {
            return Err(SbError::Truncated {
                what: "superblock buffer",
                field: "dev_roles[max_dev]",
                need: len,
                got: buf.len(),
            });
        }
        let b = &mut buf[..len];
        b.fill(0);
        put32(b, off::MAGIC, MD_SB_MAGIC);
        put32(b, off::MAJOR_VERSION, MD_SB_MAJOR_VERSION);
        put32(b, off::FEATURE_MAP, self.feature_map);
        b[off::SET_UUID..off::SET_UUID + 16].copy_from_slice(&self.set_uuid);
        b[off::SET_NAME..off::SET_NAME + 32].copy_from_slice(&self.set_name);
        put64(b, off::CTIME, self.ctime.0);
        put32(b, off::LEVEL, self.level as u32);
        put32(b, off::LAYOUT, self.layout);
        put64(b, off::SIZE, self.size);
        put32(b, off::CHUNKSIZE, self.chunksize);
        put32(b, off::RAID_DISKS, self.raid_disks);
        put32(b, off::BITMAP_OFFSET, self.bitmap_offset as u32);
        put32(b, off::NEW_LEVEL, self.new_level as u32);
        put64(b, off::RESHAPE_POSITION, self.reshape_position);
        put32(b, off::DELTA_DISKS, self.delta_disks as u32);
        put32(b, off::NEW_LAYOUT, self.new_layout);
        put32(b, off::NEW_CHUNK, self.new_chunk);
        put32(b, off::NEW_OFFSET, self.new_offset as u32);
        put64(b, off::DATA_OFFSET, self.data_offset);
        put64(b, off::DATA_SIZE, self.data_size);
        put64(b, off::SUPER_OFFSET, self.super_offset);
        put64(b, off::RECOVERY_OFFSET, self.recovery_offset);
        put32(b, off::DEV_NUMBER, self.dev_number);
        put32(b, off::CNT_CORRECTED_READ, self.cnt_corrected_read);
        b[off::DEVICE_UUID..off::DEVICE_UUID + 16].copy_from_slice(&self.device_uuid);
        b[off::DEVFLAGS] = self.devflags;
        b[off::BBLOG_SHIFT] = self.bblog_shift;
        put16(b, off::BBLOG_SIZE, self.bblog_size);
        put32(b, off::BBLOG_OFFSET, self.bblog_offset as u32);
        put64(b, off::UTIME, self.utime.0);
        put64(b, off::EVENTS, self.events);
        put64(b, off::RESYNC_OFFSET, self.resync_offset);
        put32(b, off::MAX_DEV, max_dev);
        for (i, role) in self.dev_roles.iter().enumerate() {
            put16(b, off::DEV_ROLES + 2 * i, role.to_raw());
        }
        let csum = sb_checksum(b);
        put32(b, off::SB_CSUM, csum);
        Ok(len)
    }

    /// The checksum [`Superblock::encode`] would store.
    pub fn checksum(&self) -> u32 {
        let buf = self.encode();
        le32(&buf, off::SB_CSUM)
    }

    /// This device's role (`dev_roles[dev_number]`; spare if out of range,
    /// as md reads it).
    pub fn role(&self) -> DevRole {
        self.dev_roles
            .get(self.dev_number as usize)
            .copied()
            .unwrap_or(DevRole::Spare)
    }

    /// The `dev_number` holding active slot `slot`, if any.
    pub fn device_in_slot(&self, slot: u16) -> Option<u32> {
        self.dev_roles
            .iter()
            .position(|r| *r == DevRole::Active(slot))
            .map(|i| i as u32)
    }

    /// Active / faulty / missing counts as this superblock records them.
    pub fn summary(&self) -> RoleSummary {
        let mut seen = vec![false; self.raid_disks as usize];
        let mut faulty = 0;
        for role in &self.dev_roles {
            match *role {
                DevRole::Active(r) => {
                    if let Some(s) = seen.get_mut(r as usize) {
                        *s = true;
                    }
                }
                DevRole::Faulty => faulty += 1,
                DevRole::Spare | DevRole::Journal => {}
            }
        }
        let active = seen.iter().filter(|s| **s).count() as u32;
        RoleSummary {
            raid_disks: self.raid_disks,
            active,
            faulty,
            missing: self.raid_disks - active,
        }
    }

    /// mdadm's "Array State" string: one character per slot, `A` when a
    /// device holds it, `.` when missing (e.g. `"AA."`).
    pub fn array_state(&self) -> String {
        (0..self.raid_disks)
            .map(|slot| {
                let held = u16::try_from(slot)
                    .map(|s| self.device_in_slot(s).is_some())
                    .unwrap_or(false);
                if held {
                    'A'
                } else {
                    '.'
                }
            })
            .collect()
    }

    /// The array was shut down cleanly (`resync_offset == u64::MAX`).
    pub fn is_clean(&self) -> bool {
        self.resync_offset == u64::MAX
    }

    pub fn has_bitmap(&self) -> bool {
        self.feature_map & MD_FEATURE_BITMAP_OFFSET != 0
    }

    pub fn write_mostly(&self) -> bool {
        self.devflags & WRITE_MOSTLY_1 != 0
    }

    pub fn set_write_mostly(&mut self, on: bool) {
        if on {
            self.devflags |= WRITE_MOSTLY_1;
        } else {
            self.devflags &= !WRITE_MOSTLY_1;
        }
    }

    /// Absolute sector of the bitmap superblock, when there is a bitmap.
    pub fn bitmap_sector(&self) -> Option<u64> {
        if self.has_bitmap() {
            self.super_offset
                .checked_add_signed(i64::from(self.bitmap_offset))
        } else {
            None
        }
    }

    /// `set_name` up to its first NUL (lossy UTF-8).
    pub fn name(&self) -> String {
        let end = self.set_name.iter().position(|&b| b == 0).unwrap_or(32);
        String::from_utf8_lossy(&self.set_name[..end]).into_owned()
    }

    /// The array's own name: `set_name` after its last `:` (mdadm writes
    /// `homehost:name`).
    pub fn array_name(&self) -> String {
        let n = self.name();
        n.rsplit(':').next().unwrap_or("").to_string()
    }

    /// Set `set_name`, truncated to 31 bytes like mdadm (always NUL-ended).
    pub fn set_name_str(&mut self, name: &str) {
        self.set_name = [0; 32];
        let bytes = name.as_bytes();
        let n = bytes.len().min(31);
        self.set_name[..n].copy_from_slice(&bytes[..n]);
    }
}

/// Bitmap superblock (`bitmap_super_t`), every field typed. `magic` is
/// checked and written; `pad` must be zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapSuper {
    /// [`BITMAP_MAJOR_HI`] (4): the only version decode accepts.
    pub version: u32,
    /// Must equal the superblock's `set_uuid`.
    pub uuid: [u8; 16],
    /// Superblock `events` when the bitmap was last written; a bitmap whose
    /// events are below the superblock's is stale (md then resyncs fully).
    pub events: u64,
    /// `events` when bits were last cleared: a member whose events are at
    /// least this can be recovered from the bitmap.
    pub events_cleared: u64,
    /// Sectors the bitmap covers (component size; array size for raid10).
    pub sync_size: u64,
    /// `BITMAP_STATE_*` bits.
    pub state: u32,
    /// Bytes of data per bit.
    pub chunksize: u32,
    /// Seconds between bitmap flushes by md's daemon (>= 1).
    pub daemon_sleep: u32,
    /// Most outstanding write-behind writes (0 = off).
    pub write_behind: u32,
    /// Sectors reserved for the bitmap (0 = unknown; Linux fills it in).
    pub sectors_reserved: u32,
    /// Cluster nodes (must be 0).
    pub nodes: u32,
    pub cluster_name: [u8; 64],
}

impl BitmapSuper {
    /// A bitmap superblock like mdadm's for a new internal bitmap.
    pub fn new(uuid: [u8; 16], sync_size: u64, chunksize: u32, daemon_sleep: u32) -> BitmapSuper {
        BitmapSuper {
            version: BITMAP_MAJOR_HI,
            uuid,
            events: 0,
            events_cleared: 0,
            sync_size,
            state: 0,
            chunksize,
            daemon_sleep,
            write_behind: 0,
            sectors_reserved: 0,
            nodes: 0,
            cluster_name: [0; 64],
        }
    }

    /// Decode and validate the 256-byte bitmap superblock at the start of
    /// `buf` (the bitmap area; the bits follow at byte 256).
    pub fn decode(buf: &[u8]) -> Result<BitmapSuper, SbError> {
        if buf.len() < BITMAP_SB_BYTES {
            return Err(SbError::Truncated {
                what: "bitmap superblock",
                field: "bitmap_super_t",
                need: BITMAP_SB_BYTES,
                got: buf.len(),
            });
        }
        let magic = le32(buf, boff::MAGIC);
        if magic != BITMAP_MAGIC {
            return Err(SbError::BitmapBadMagic {
                expected: BITMAP_MAGIC,
                found: magic,
            });
        }
        let bm = BitmapSuper {
            version: le32(buf, boff::VERSION),
            uuid: arr(buf, boff::UUID),
            events: le64(buf, boff::EVENTS),
            events_cleared: le64(buf, boff::EVENTS_CLEARED),
            sync_size: le64(buf, boff::SYNC_SIZE),
            state: le32(buf, boff::STATE),
            chunksize: le32(buf, boff::CHUNKSIZE),
            daemon_sleep: le32(buf, boff::DAEMON_SLEEP),
            write_behind: le32(buf, boff::WRITE_BEHIND),
            sectors_reserved: le32(buf, boff::SECTORS_RESERVED),
            nodes: le32(buf, boff::NODES),
            cluster_name: arr(buf, boff::CLUSTER_NAME),
        };
        bm.validate()?;
        if buf[boff::PAD..BITMAP_SB_BYTES].iter().any(|&b| b != 0) {
            return Err(SbError::NonZeroPad {
                field: "bitmap pad",
            });
        }
        Ok(bm)
    }

    /// The kernel's checks (`md_bitmap_read_sb`) plus ours.
    pub fn validate(&self) -> Result<(), SbError> {
        if self.version != BITMAP_MAJOR_HI {
            return Err(SbError::BitmapVersion {
                found: self.version,
                supported: BITMAP_MAJOR_HI,
            });
        }
        if self.chunksize < 512 || !self.chunksize.is_power_of_two() {
            return Err(SbError::BitmapChunkSize {
                chunksize: self.chunksize,
            });
        }
        if self.daemon_sleep == 0 {
            return Err(SbError::BitmapDaemonSleep {
                daemon_sleep: self.daemon_sleep,
            });
        }
        if self.write_behind > BITMAP_WRITE_BEHIND_MAX {
            return Err(SbError::BitmapWriteBehind {
                write_behind: self.write_behind,
                max: BITMAP_WRITE_BEHIND_MAX,
            });
        }
        if self.nodes != 0 {
            return Err(SbError::BitmapNodes { nodes: self.nodes });
        }
        Ok(())
    }

    /// Check the bitmap against the member's superblock: same array UUID, and
    /// the whole bitmap area (superblock + bits) lies between the superblock
    /// and `data_offset` without overlapping the bad-block log.
    pub fn check_against(&self, sb: &Superblock) -> Result<(), SbError> {
        if self.uuid != sb.set_uuid {
            return Err(SbError::BitmapUuidMismatch);
        }
        let Some(start) = sb.bitmap_sector() else {
            return Err(SbError::BitmapOffset {
                bitmap_offset: sb.bitmap_offset,
                reason: "feature_map lacks BITMAP_OFFSET",
            });
        };
        let end = start.saturating_add(self.area_bytes_exact().div_ceil(512));
        if end > sb.data_offset {
            return Err(SbError::BitmapArea {
                start,
                end,
                reason: "overlaps data",
            });
        }
        if sb.bblog_size != 0 {
            if let Some(bb) = sb
                .super_offset
                .checked_add_signed(i64::from(sb.bblog_offset))
            {
                let bb_end = bb + u64::from(sb.bblog_size);
                if bb < end && start < bb_end {
                    return Err(SbError::BitmapArea {
                        start,
                        end,
                        reason: "overlaps the bad-block log",
                    });
                }
            }
        }
        Ok(())
    }

    /// Encode the 256-byte bitmap superblock (pad zeroed).
    pub fn encode(&self) -> [u8; BITMAP_SB_BYTES] {
        let mut b = [0u8; BITMAP_SB_BYTES];
        put32(&mut b, boff::MAGIC, BITMAP_MAGIC);
        put32(&mut b, boff::VERSION, self.version);
        b[boff::UUID..boff::UUID + 16].copy_from_slice(&self.uuid);
        put64(&mut b, boff::EVENTS, self.events);
        put64(&mut b, boff::EVENTS_CLEARED, self.events_cleared);
        put64(&mut b, boff::SYNC_SIZE, self.sync_size);
        put32(&mut b, boff::STATE, self.state);
        put32(&mut b, boff::CHUNKSIZE, self.chunksize);
        put32(&mut b, boff::DAEMON_SLEEP, self.daemon_sleep);
        put32(&mut b, boff::WRITE_BEHIND, self.write_behind);
        put32(&mut b, boff::SECTORS_RESERVED, self.sectors_reserved);
        put32(&mut b, boff::NODES, self.nodes);
        b[boff::CLUSTER_NAME..boff::CLUSTER_NAME + 64].copy_from_slice(&self.cluster_name);
        b
    }

    /// Number of bits (chunks) covering `sync_size`.
    pub fn chunks(&self) -> u64 {
        bitmap_chunks(self.sync_size, self.chunksize)
    }

    /// Bytes of the bit array.
    pub fn bits_bytes(&self) -> u64 {
        self.chunks().div_ceil(8)
    }

    /// 256 + bit-array bytes, unrounded.
    fn area_bytes_exact(&self) -> u64 {
        BITMAP_SB_BYTES as u64 + self.bits_bytes()
    }

    /// Bitmap area as mdadm sizes it: superblock + bits rounded up to 4 KiB.
    pub fn area_bytes(&self) -> u64 {
        bitmap_area_bytes(self.sync_size, self.chunksize)
    }

    /// The bitmap is out of date (md then resyncs everything).
    pub fn is_stale(&self) -> bool {
        self.state & BITMAP_STATE_STALE != 0
    }
}

/// Bits needed for `sync_size` sectors at `chunksize` bytes per bit (mdadm's
/// `bitmap_bits`). `chunksize` 0 yields 0.
pub fn bitmap_chunks(sync_size: u64, chunksize: u32) -> u64 {
    if chunksize == 0 {
        return 0;
    }
    let bytes = u128::from(sync_size) * 512;
    let c = u128::from(chunksize);
    bytes.div_ceil(c) as u64
}

/// mdadm's `calc_bitmap_size(bms, 4096)`: bitmap superblock plus bits,
/// rounded up to 4 KiB. This is what mdadm writes (bits initialised to 1)
/// and the space it leaves before the bad-block log.
pub fn bitmap_area_bytes(sync_size: u64, chunksize: u32) -> u64 {
    round_up(
        BITMAP_SB_BYTES as u64 + bitmap_chunks(sync_size, chunksize).div_ceil(8),
        4096,
    )
}

/// The bitmap's `sync_size` as mdadm computes it: the component size
/// (`size`), except for raid10 where it is the array capacity,
/// `size * raid_disks / copies`.
pub fn bitmap_sync_size(level: i32, layout: u32, raid_disks: u32, size: u64) -> u64 {
    if level == level::RAID10 {
        let copies = u64::from((layout & 0xff) * ((layout >> 8) & 0xff)).max(1);
        size / 2 * u64::from(raid_disks) / copies * 2
    } else {
        size
    }
}

/// mdadm's default bitmap chunk (bytes) for `sync_size` sectors and
/// `room_sectors` of bitmap space (mdadm caps the room at 128 KiB when no
/// chunk is requested): the smallest power of two >= 4 KiB whose bits fit,
/// but at least 64 MiB.
pub fn default_bitmap_chunk(sync_size: u64, room_sectors: u64) -> u64 {
    let room = room_sectors.min(256);
    let max_bits = (room * 512).saturating_sub(BITMAP_SB_BYTES as u64) * 8;
    let mut chunk: u64 = 4096;
    let mut bits = sync_size.saturating_mul(512) / chunk + 1;
    while bits > max_bits.max(1) {
        chunk *= 2;
        bits = bits.div_ceil(2);
    }
    chunk.max(64 << 20)
}

/// Whether chunk `n` is dirty. `bits` is the bit array (the bitmap area from
/// byte 256). Out-of-range chunks read as clean.
pub fn bitmap_get(bits: &[u8], n: u64) -> bool {
    usize::try_from(n / 8)
        .ok()
        .and_then(|i| bits.get(i))
        .is_some_and(|b| b & (1 << (n % 8)) != 0)
}

/// Set (dirty) or clear chunk `n`. Returns false if `n` is outside `bits`.
pub fn bitmap_set(bits: &mut [u8], n: u64, dirty: bool) -> bool {
    let Some(b) = usize::try_from(n / 8).ok().and_then(|i| bits.get_mut(i)) else {
        return false;
    };
    let mask = 1u8 << (n % 8);
    if dirty {
        *b |= mask;
    } else {
        *b &= !mask;
    }
    true
}

/// Dirty chunks among the first `chunks` bits.
pub fn bitmap_count_dirty(bits: &[u8], chunks: u64) -> u64 {
    let full = usize::try_from(chunks / 8)
        .unwrap_or(usize::MAX)
        .min(bits.len());
    let words = bits[..full].chunks_exact(8);
    let mut n: u64 = words
        .remainder()
        .iter()
        .map(|b| u64::from(b.count_ones()))
        .sum();
    n += words
        .map(|w| u64::from(u64::from_ne_bytes(w.try_into().unwrap()).count_ones()))
        .sum::<u64>();
    let rem = chunks % 8;
    if rem != 0 {
        if let Some(b) = bits.get(full) {
            n += u64::from((b & ((1u8 << rem) - 1)).count_ones());
        }
    }
    n
}

/// mdadm's `choose_bm_space`: sectors reserved for a bitmap on a member of
/// `member_sectors`: 4 KiB, 64 KiB above 8 GiB, 128 KiB above 200 GiB.
pub fn choose_bm_space(member_sectors: u64) -> u64 {
    if member_sectors < 64 * 2 {
        0
    } else if member_sectors - 64 * 2 >= 200 * 1024 * 1024 * 2 {
        128 * 2
    } else if member_sectors - 4 * 2 > 8 * 1024 * 1024 * 2 {
        64 * 2
    } else {
        4 * 2
    }
}

/// mdadm's reshape headroom in sectors: start at 128 MiB and halve while it
/// is more than ~0.1% of the member and the halved value would still be at
/// least twice the chunk (`chunk_sectors` 0, for raid1/linear: no chunk
/// limit). 64 MiB members get 128 sectors unchunked, 2048 with 512 KiB chunks.
pub fn mdadm_headroom(member_sectors: u64, chunk_sectors: u32) -> u64 {
    let mut headroom: u64 = 128 * 1024 * 2;
    while (headroom << 10) > member_sectors
        && (chunk_sectors == 0 || headroom / 2 >= u64::from(chunk_sectors) * 2)
    {
        headroom >>= 1;
    }
    headroom
}

/// Where things go on a metadata-1.2 member, as mdadm lays it out:
///
/// ```text
/// sector 0      8          16                16+bitmap     data_offset (1 MiB multiple)
///        | free | superblock | bitmap (sb+bits) | bblog (8) | headroom | data ...
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberLayout {
    pub member_sectors: u64,
    /// Always [`SB_OFFSET_SECTORS`].
    pub super_offset: u64,
    /// Sectors from the superblock to the bitmap (8), when there is one.
    pub bitmap_offset: Option<i32>,
    /// Sectors of the bitmap area (4 KiB-rounded), 0 without a bitmap.
    pub bitmap_sectors: u64,
    /// Sectors from the superblock to the bad-block log.
    pub bblog_offset: i32,
    /// Sectors of the bad-block log (8, like mdadm).
    pub bblog_size: u16,
    pub data_offset: u64,
    /// `member_sectors - data_offset` (mdadm does not round it).
    pub data_size: u64,
}

/// Data offset for a member, mdadm's rule extended for large bitmaps:
/// `round_up(24 + max(choose_bm_space, bitmap) + headroom, 2048)` sectors —
/// 8 sectors before the superblock, 8 for it, 8 for the bad-block log, the
/// bitmap space, reshape headroom, aligned to 1 MiB. When the bitmap fits
/// mdadm's reservation (always, with the default >= 64 MiB chunk on members
/// up to 64 TiB) this equals what `mdadm --create` picks: 2048 sectors for
/// small members, 264192 (129 MiB) for members above ~128 GiB.
pub fn default_data_offset(member_sectors: u64, chunk_sectors: u32, bitmap_area_bytes: u64) -> u64 {
    let bm = choose_bm_space(member_sectors).max(bitmap_area_bytes.div_ceil(4096) * 8);
    round_up(
        3 * 8 + bm + mdadm_headroom(member_sectors, chunk_sectors),
        2048,
    )
}

impl MemberLayout {
    /// Lay out a member of `member_sectors` for an array with chunk
    /// `chunk_sectors` (0 for raid1/linear) and, if `bitmap_area_bytes` is
    /// given, an internal bitmap of that size (see [`bitmap_area_bytes`]; pass
    /// the size for the largest `sync_size` the array can have).
    pub fn new(
        member_sectors: u64,
        chunk_sectors: u32,
        bitmap_area_bytes: Option<u64>,
    ) -> Result<MemberLayout, SbError> {
        let bitmap_sectors = bitmap_area_bytes.map_or(0, |b| b.div_ceil(4096) * 8);
        let data_offset = default_data_offset(
            member_sectors,
            chunk_sectors,
            bitmap_area_bytes.unwrap_or(0),
        );
        // Bad-block log right after the bitmap (or after mdadm's reserved
        // bitmap space when there is none), as mdadm does.
        let bm_space = if bitmap_area_bytes.is_some() {
            bitmap_sectors
        } else {
            choose_bm_space(member_sectors)
        };
        let bblog_offset = 8 + bm_space;
        let needed = data_offset + 1;
        if member_sectors < needed || bblog_offset > i32::MAX as u64 {
            return Err(SbError::MemberTooSmall {
                member_sectors,
                needed,
            });
        }
        Ok(MemberLayout {
            member_sectors,
            super_offset: SB_OFFSET_SECTORS,
            bitmap_offset: bitmap_area_bytes.map(|_| 8),
            bitmap_sectors,
            bblog_offset: bblog_offset as i32,
            bblog_size: 8,
            data_offset,
            data_size: member_sectors - data_offset,
        })
    }

    /// Write the layout into a superblock: offsets, sizes, the bitmap feature
    /// bit and `bitmap_offset`, and the bad-block log reservation.
    pub fn apply(&self, sb: &mut Superblock) {
        sb.super_offset = self.super_offset;
        sb.data_offset = self.data_offset;
        sb.data_size = self.data_size;
        match self.bitmap_offset {
            Some(o) => {
                sb.bitmap_offset = o;
                sb.feature_map |= MD_FEATURE_BITMAP_OFFSET;
            }
            None => {
                sb.bitmap_offset = 0;
                sb.feature_map &= !MD_FEATURE_BITMAP_OFFSET;
            }
        }
        sb.bblog_offset = self.bblog_offset;
        sb.bblog_size = self.bblog_size;
    }
}

/// mdadm's component size (`size`) from the smallest member's `data_size`:
/// rounded down to the chunk for chunked levels, to 64 KiB for raid1.
pub fn component_size(level: i32, chunk_sectors: u32, min_data_size: u64) -> u64 {
    if chunk_sectors != 0 {
        min_data_size / u64::from(chunk_sectors) * u64::from(chunk_sectors)
    } else if level == level::RAID1 {
        min_data_size & !127
    } else {
        min_data_size
    }
}

/// Fuzz body, shared by the cargo-fuzz target and the property tests so the
/// same checks run on stable: decode `data` as a superblock and as a bitmap
/// superblock; whatever decodes must re-encode to the same bytes and decode
/// back to the same value. Panics (the fuzzer's finding) on any mismatch.
pub fn fuzz_decode(data: &[u8]) {
    const MEMBER: u64 = 1 << 40;
    if let Ok(sb) = Superblock::decode(data, MEMBER) {
        let enc = sb.encode();
        let n = sb.content_len();
        assert_eq!(&enc[..n], &data[..n], "superblock re-encode differs");
        let again = Superblock::decode(&enc, MEMBER).expect("re-encoded superblock decodes");
        assert_eq!(again, sb, "superblock round trip");
        let s = sb.summary();
        assert!(s.active + s.missing == s.raid_disks);
        assert_eq!(sb.array_state().len(), sb.raid_disks as usize);
        let _ = sb.role();
        let _ = sb.name();
    }
    if let Ok(bm) = BitmapSuper::decode(data) {
        let enc = bm.encode();
        assert_eq!(
            &enc[..],
            &data[..BITMAP_SB_BYTES],
            "bitmap re-encode differs"
        );
        assert_eq!(
            BitmapSuper::decode(&enc).expect("re-encoded bitmap decodes"),
            bm
        );
        let bits = &data[BITMAP_SB_BYTES..];
        let dirty = bitmap_count_dirty(bits, bm.chunks());
        assert!(dirty <= bm.chunks());
        let _ = bm.area_bytes();
    }
    // The bitmap after a superblock, the way they sit on a member.
    if data.len() > SB_BLOCK_BYTES {
        if let (Ok(sb), Ok(bm)) = (
            Superblock::decode(data, MEMBER),
            BitmapSuper::decode(&data[SB_BLOCK_BYTES..]),
        ) {
            let _ = bm.check_against(&sb);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MEMBER_64M: u64 = 64 * 1024 * 2;

    fn fixture_sb(name: &str) -> &'static [u8] {
        match name {
            "raid1_m0" => include_bytes!("../tests/fixtures/raid1_m0.sb"),
            "raid1_m1_writemostly" => include_bytes!("../tests/fixtures/raid1_m1_writemostly.sb"),
            "raid5_nobitmap_m0" => include_bytes!("../tests/fixtures/raid5_nobitmap_m0.sb"),
            "raid5_nobitmap_m2_recovering_spare" => {
                include_bytes!("../tests/fixtures/raid5_nobitmap_m2_recovering_spare.sb")
            }
            "raid5_degraded_m0" => include_bytes!("../tests/fixtures/raid5_degraded_m0.sb"),
            "raid5_degraded_spare" => include_bytes!("../tests/fixtures/raid5_degraded_spare.sb"),
            "raid6_m0" => include_bytes!("../tests/fixtures/raid6_m0.sb"),
            "raid10_m0" => include_bytes!("../tests/fixtures/raid10_m0.sb"),
            "raid1_300g_m0" => include_bytes!("../tests/fixtures/raid1_300g_m0.sb"),
            _ => unreachable!("{name}"),
        }
    }

    fn fixture_bitmap(name: &str) -> &'static [u8] {
        match name {
            "raid1_m0" => include_bytes!("../tests/fixtures/raid1_m0.bitmap"),
            "raid6_m0" => include_bytes!("../tests/fixtures/raid6_m0.bitmap"),
            "raid10_m0" => include_bytes!("../tests/fixtures/raid10_m0.bitmap"),
            "raid1_300g_m0" => include_bytes!("../tests/fixtures/raid1_300g_m0.bitmap"),
            _ => unreachable!("{name}"),
        }
    }

    const FIXTURES_64M: [&str; 8] = [
        "raid1_m0",
        "raid1_m1_writemostly",
        "raid5_nobitmap_m0",
        "raid5_nobitmap_m2_recovering_spare",
        "raid5_degraded_m0",
        "raid5_degraded_spare",
        "raid6_m0",
        "raid10_m0",
    ];
    const MEMBER_300G: u64 = 300 * 1024 * 1024 * 2;

    fn uuid(s: &str) -> [u8; 16] {
        let hex: String = s.chars().filter(|c| *c != ':').collect();
        let mut u = [0u8; 16];
        for (i, b) in u.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        u
    }

    /// A valid superblock like the ones we will write.
    fn sample() -> Superblock {
        let mut sb = Superblock::new(uuid("3f054c2f:13df9dec:678f7d86:5c30e9c0"), 1, 2, 0);
        sb.set_name_str("mdraid:r1");
        sb.ctime = MdTime::new(1_700_000_000, 0);
        sb.utime = MdTime::new(1_700_000_100, 123_456);
        let bm_area = bitmap_area_bytes(MEMBER_64M, 64 << 20);
        let l = MemberLayout::new(MEMBER_64M, 0, Some(bm_area)).unwrap();
        l.apply(&mut sb);
        sb.size = component_size(1, 0, l.data_size);
        sb.dev_roles[0] = DevRole::Active(0);
        sb.dev_roles[1] = DevRole::Active(1);
        sb.device_uuid = [7; 16];
        sb.events = 42;
        sb
    }

    // Encode `sb` without validation and patch one field's raw bytes, with a
    // correct checksum, to reach each semantic check through `decode`.
    fn with_raw(sb: &Superblock, f: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let mut b = sb.encode();
        f(&mut b);
        let c = sb_checksum(&b);
        put32(&mut b, off::SB_CSUM, c);
        b
    }

    fn err_of(buf: &[u8]) -> SbError {
        Superblock::decode(buf, MEMBER_64M).unwrap_err()
    }

    #[test]
    fn mdadm_fixtures_decode_and_reencode_byte_exact() {
        for name in FIXTURES_64M {
            let raw = fixture_sb(name);
            let sb = Superblock::decode(raw, MEMBER_64M).unwrap_or_else(|e| panic!("{name}: {e}"));
            // mdadm leaves the rest of the 4 KiB block zero: whole-block equality.
            assert_eq!(sb.encode(), raw, "{name}");
            assert_eq!(sb.write_len(512), 512, "{name}");
            assert_eq!(sb.max_dev(), 128, "{name}");
        }
        let raw = fixture_sb("raid1_300g_m0");
        let sb = Superblock::decode(raw, MEMBER_300G).unwrap();
        assert_eq!(sb.encode(), raw);
    }

    #[test]
    fn mdadm_raid1_fields() {
        // Values printed by `mdadm --examine` (fixtures/raid1_m0.examine.txt).
        let sb = Superblock::decode(fixture_sb("raid1_m0"), MEMBER_64M).unwrap();
        assert_eq!(sb.feature_map, MD_FEATURE_BITMAP_OFFSET);
        assert_eq!(sb.set_uuid, uuid("3f054c2f:13df9dec:678f7d86:5c30e9c0"));
        assert_eq!(sb.name(), "mdraid:r1");
        assert_eq!(sb.level, level::RAID1);
        assert_eq!(sb.raid_disks, 2);
        assert_eq!(sb.data_size, 129024);
        assert_eq!(sb.size, 129024);
        assert_eq!(sb.data_offset, 2048);
        assert_eq!(sb.super_offset, 8);
        assert!(!sb.is_clean(), "State : active");
        assert_eq!(sb.device_uuid, uuid("7407f486:9e5a318a:4a39f8cd:3fc587a5"));
        assert_eq!(sb.bitmap_offset, 8);
        assert_eq!(sb.bitmap_sector(), Some(16));
        assert_eq!(
            (sb.bblog_size, sb.bblog_offset),
            (8, 16),
            "512 entries at 16"
        );
        assert_eq!(sb.checksum(), 0x3adfaafd);
        assert_eq!(sb.events, 0);
        assert_eq!(sb.role(), DevRole::Active(0));
        assert_eq!(sb.array_state(), "AA");
        assert!(!sb.write_mostly());
        assert_eq!(sb.ctime.usecs(), 0);
        assert_eq!(sb.ctime, sb.utime);

        let wm = Superblock::decode(fixture_sb("raid1_m1_writemostly"), MEMBER_64M).unwrap();
        assert!(wm.write_mostly(), "Flags : write-mostly");
        assert_eq!(wm.role(), DevRole::Active(1));
        assert_eq!(wm.dev_number, 1);
        assert_eq!(wm.checksum(), 0x3ec0f7e2);
    }

    #[test]
    fn mdadm_raid5_raid6_raid10_fields() {
        let r5 = Superblock::decode(fixture_sb("raid5_nobitmap_m0"), MEMBER_64M).unwrap();
        assert_eq!(r5.feature_map, 0);
        assert_eq!(
            (r5.level, r5.layout, r5.chunksize),
            (5, 2, 128),
            "left-symmetric, 64K"
        );
        assert!(r5.is_clean());
        assert_eq!(
            r5.array_state(),
            "AA.",
            "mdadm builds raid5 degraded + spare"
        );
        assert_eq!(
            r5.summary(),
            RoleSummary {
                raid_disks: 3,
                active: 2,
                faulty: 0,
                missing: 1
            }
        );
        let spare =
            Superblock::decode(fixture_sb("raid5_nobitmap_m2_recovering_spare"), MEMBER_64M)
                .unwrap();
        assert_eq!(spare.role(), DevRole::Spare);
        // mdadm gives the missing slot's insert point dev_number 2 and the
        // spare that will fill it dev_number 3.
        assert_eq!(spare.dev_number, 3);
        assert_eq!(r5.device_in_slot(2), None);

        let r5d = Superblock::decode(fixture_sb("raid5_degraded_m0"), MEMBER_64M).unwrap();
        assert_eq!(r5d.array_state(), "A.A");
        assert_eq!(r5d.data_offset, 4096);
        assert_eq!(r5d.chunksize, 1024, "512K default chunk");
        let r5s = Superblock::decode(fixture_sb("raid5_degraded_spare"), MEMBER_64M).unwrap();
        assert_eq!(r5s.role(), DevRole::Spare);

        let r6 = Superblock::decode(fixture_sb("raid6_m0"), MEMBER_64M).unwrap();
        assert_eq!((r6.level, r6.raid_disks, r6.chunksize), (6, 4, 256));
        assert!(r6.is_clean(), "--assume-clean");
        assert_eq!(r6.array_state(), "AAAA");

        let r10 = Superblock::decode(fixture_sb("raid10_m0"), MEMBER_64M).unwrap();
        assert_eq!((r10.level, r10.layout), (10, 0x102), "near=2");
        assert_eq!(r10.data_offset, 4096);
        assert_eq!(r10.checksum(), 0x9001e48e);
    }

    #[test]
    fn mdadm_bitmaps() {
        // --examine-bitmap: version 4, 64 MB chunk, 5s, sync 64512 KiB, all dirty.
        let raw = fixture_bitmap("raid1_m0");
        let bm = BitmapSuper::decode(raw).unwrap();
        let sb = Superblock::decode(fixture_sb("raid1_m0"), MEMBER_64M).unwrap();
        bm.check_against(&sb).unwrap();
        assert_eq!(bm.version, BITMAP_MAJOR_HI);
        assert_eq!(bm.uuid, sb.set_uuid);
        assert_eq!((bm.events, bm.events_cleared), (0, 0));
        assert_eq!(bm.chunksize, 64 << 20);
        assert_eq!(bm.daemon_sleep, 5);
        assert_eq!(bm.sync_size, 129024);
        assert_eq!(bm.chunks(), 1);
        assert_eq!(bm.area_bytes(), 4096);
        assert_eq!(bitmap_count_dirty(&raw[256..], bm.chunks()), 1);
        assert_eq!(&bm.encode()[..], &raw[..256]);

        let r6 = BitmapSuper::decode(fixture_bitmap("raid6_m0")).unwrap();
        assert_eq!((r6.chunksize, r6.chunks()), (4 << 20, 16));
        let r6sb = Superblock::decode(fixture_sb("raid6_m0"), MEMBER_64M).unwrap();
        r6.check_against(&r6sb).unwrap();
        assert_eq!(
            bitmap_count_dirty(&fixture_bitmap("raid6_m0")[256..], 16),
            16
        );

        // raid10: sync_size is the array capacity.
        let r10 = BitmapSuper::decode(fixture_bitmap("raid10_m0")).unwrap();
        let r10sb = Superblock::decode(fixture_sb("raid10_m0"), MEMBER_64M).unwrap();
        assert_eq!(
            r10.sync_size,
            bitmap_sync_size(r10sb.level, r10sb.layout, r10sb.raid_disks, r10sb.size)
        );
        assert_eq!(r10.sync_size, 126976 * 2);

        let big = BitmapSuper::decode(fixture_bitmap("raid1_300g_m0")).unwrap();
        let bigsb = Superblock::decode(fixture_sb("raid1_300g_m0"), MEMBER_300G).unwrap();
        big.check_against(&bigsb).unwrap();
        assert_eq!(big.chunksize as u64, default_bitmap_chunk(bigsb.size, 256));
    }

    #[test]
    fn layout_matches_mdadm() {
        // (member sectors, array chunk sectors, fixture) -> mdadm's choices.
        let cases: [(u64, u32, &str); 5] = [
            (MEMBER_64M, 0, "raid1_m0"),
            (MEMBER_64M, 128, "raid5_nobitmap_m0"),
            (MEMBER_64M, 256, "raid6_m0"),
            (MEMBER_64M, 1024, "raid10_m0"),
            (MEMBER_300G, 0, "raid1_300g_m0"),
        ];
        for (member, chunk, name) in cases {
            let sb = Superblock::decode(fixture_sb(name), member).unwrap();
            let bitmap = sb.has_bitmap().then(|| {
                let bm = BitmapSuper::decode(fixture_bitmap(name)).unwrap();
                bm.area_bytes()
            });
            let l = MemberLayout::new(member, chunk, bitmap).unwrap();
            assert_eq!(l.data_offset, sb.data_offset, "{name}");
            assert_eq!(l.data_size, sb.data_size, "{name}");
            assert_eq!(l.bblog_offset, sb.bblog_offset, "{name}");
            assert_eq!(l.bblog_size, sb.bblog_size, "{name}");
            assert_eq!(l.bitmap_offset.unwrap_or(0), sb.bitmap_offset, "{name}");
            assert_eq!(
                component_size(sb.level, sb.chunksize, l.data_size),
                sb.size,
                "{name}"
            );
            let mut mine = sb.clone();
            l.apply(&mut mine);
            assert_eq!(mine, sb, "{name}");
        }
        assert_eq!(default_data_offset(MEMBER_300G, 0, 4096), 264192);
        // A bitmap larger than mdadm's reservation pushes data out.
        let big_bm = 1 << 20;
        let l = MemberLayout::new(MEMBER_300G, 0, Some(big_bm)).unwrap();
        assert!(l.data_offset >= 16 + 2048 + 8);
        assert_eq!(l.data_offset % 2048, 0);
        assert!(matches!(
            MemberLayout::new(2048, 0, None),
            Err(SbError::MemberTooSmall { .. })
        ));
    }

    #[test]
    fn checksum_known_answer() {
        // Hand-computed: all-zero header except magic, major, max_dev = 1 and
        // a single role 0x0005 (a trailing 16-bit word).
        let mut b = vec![0u8; 258];
        put32(&mut b, off::MAGIC, MD_SB_MAGIC);
        put32(&mut b, off::MAJOR_VERSION, 1);
        put32(&mut b, off::MAX_DEV, 1);
        put16(&mut b, 256, 5);
        assert_eq!(sb_checksum(&b), 0xa92b4efc + 1 + 1 + 5);
        // The stored checksum does not feed into itself.
        put32(&mut b, off::SB_CSUM, 0xdead_beef);
        assert_eq!(sb_checksum(&b), 0xa92b4efc + 1 + 1 + 5);
        // Carry folding: two words of 0xffffffff sum to 0x1_ffff_fffe -> 0xffffffff.
        let mut c = vec![0u8; 256];
        put32(&mut c, 0, 0xffff_ffff);
        put32(&mut c, 4, 0xffff_ffff);
        assert_eq!(sb_checksum(&c), 0xffff_ffff);
    }

    #[test]
    fn roundtrip_sample() {
        let sb = sample();
        sb.validate(MEMBER_64M).unwrap();
        let enc = sb.encode();
        assert_eq!(enc.len(), SB_BLOCK_BYTES);
        assert!(enc[sb.content_len()..].iter().all(|&b| b == 0));
        let dec = Superblock::decode(&enc, MEMBER_64M).unwrap();
        assert_eq!(dec, sb);
        assert_eq!(dec.utime.usecs(), 123_456);
        assert_eq!(dec.utime.secs(), 1_700_000_100);
        // Short buffer holding exactly the content decodes too.
        Superblock::decode(&enc[..sb.content_len()], MEMBER_64M).unwrap();
    }

    #[test]
    fn err_truncated() {
        let enc = sample().encode();
        let e = err_of(&enc[..100]);
        assert!(matches!(
            e,
            SbError::Truncated {
                need: 256,
                got: 100,
                ..
            }
        ));
        assert!(e.to_string().contains("fixed header"), "{e}");
        let e = err_of(&enc[..300]);
        assert!(matches!(
            e,
            SbError::Truncated {
                need: 512,
                got: 300,
                ..
            }
        ));
        assert!(e.to_string().contains("dev_roles[max_dev]"), "{e}");
    }

    #[test]
    fn err_magic() {
        let mut enc = sample().encode();
        enc[0] ^= 1;
        let e = err_of(&enc);
        assert!(matches!(e, SbError::BadMagic { .. }));
        assert!(e.to_string().starts_with("magic"), "{e}");
    }

    #[test]
    fn err_major_version() {
        let b = with_raw(&sample(), |b| put32(b, off::MAJOR_VERSION, 2));
        let e = err_of(&b);
        assert_eq!(e, SbError::UnsupportedMajorVersion { found: 2 });
        assert!(e.to_string().contains("major_version"), "{e}");
    }

    #[test]
    fn err_max_dev() {
        // Checked before the checksum, so no need to fix it up.
        let mut b = sample().encode();
        put32(&mut b, off::MAX_DEV, MAX_DEVS + 1);
        let e = err_of(&b);
        assert!(matches!(e, SbError::MaxDevTooLarge { max_dev: 1921, .. }));
        assert!(e.to_string().contains("max_dev"), "{e}");
        // MAX_DEVS itself fits exactly in 4 KiB.
        let mut sb = sample();
        sb.dev_roles.resize(MAX_DEVS as usize, DevRole::Spare);
        let enc = sb.encode();
        assert_eq!(Superblock::decode(&enc, MEMBER_64M).unwrap(), sb);
        sb.dev_roles.push(DevRole::Spare);
        assert!(matches!(
            sb.encode_into(&mut [0u8; 8192]),
            Err(SbError::MaxDevTooLarge { .. })
        ));
    }

    #[test]
    fn err_checksum() {
        let mut enc = sample().encode();
        let good = le32(&enc, off::SB_CSUM);
        put32(&mut enc, off::SB_CSUM, good ^ 0x100);
        let e = err_of(&enc);
        assert_eq!(
            e,
            SbError::BadChecksum {
                stored: good ^ 0x100,
                computed: good
            }
        );
        assert!(e.to_string().contains("sb_csum"), "{e}");
        // A flipped data bit is caught too.
        let mut enc = sample().encode();
        enc[off::EVENTS] ^= 4;
        assert!(matches!(err_of(&enc), SbError::BadChecksum { .. }));
    }

    #[test]
    fn err_pads() {
        let b = with_raw(&sample(), |b| b[off::PAD0] = 1);
        assert!(err_of(&b).to_string().starts_with("pad0"));
        let b = with_raw(&sample(), |b| b[off::PAD3 + 31] = 1);
        assert!(err_of(&b).to_string().starts_with("pad3"));
    }

    #[test]
    fn err_features() {
        for (bit, name) in [
            (MD_FEATURE_RESHAPE_ACTIVE, "RESHAPE_ACTIVE"),
            (MD_FEATURE_BAD_BLOCKS, "BAD_BLOCKS"),
            (MD_FEATURE_REPLACEMENT, "REPLACEMENT"),
            (MD_FEATURE_JOURNAL, "JOURNAL"),
            (MD_FEATURE_PPL, "PPL"),
            (MD_FEATURE_CLUSTERED, "CLUSTERED"),
            (1 << 20, "unknown 0x100000"),
        ] {
            let mut sb = sample();
            sb.feature_map |= bit;
            let e = err_of(&sb.encode());
            assert!(
                matches!(e, SbError::UnsupportedFeatures { unsupported, .. } if unsupported == bit)
            );
            let msg = e.to_string();
            assert!(msg.contains("feature_map") && msg.contains(name), "{msg}");
        }
        // Supported bits decode.
        let mut sb = sample();
        sb.feature_map |= MD_FEATURE_RECOVERY_OFFSET | MD_FEATURE_RECOVERY_BITMAP;
        sb.recovery_offset = 1000;
        Superblock::decode(&sb.encode(), MEMBER_64M).unwrap();
    }

    #[test]
    fn err_super_offset() {
        let mut sb = sample();
        sb.super_offset = 0;
        let e = err_of(&sb.encode());
        assert_eq!(
            e,
            SbError::SuperOffset {
                expected: 8,
                found: 0
            }
        );
        assert!(e.to_string().contains("super_offset"), "{e}");
    }

    #[test]
    fn err_raid_disks() {
        let mut sb = sample();
        sb.raid_disks = 0;
        sb.dev_roles.fill(DevRole::Spare);
        let e = err_of(&sb.encode());
        assert!(e.to_string().starts_with("raid_disks 0"), "{e}");
    }

    #[test]
    fn err_dev_number() {
        let mut sb = sample();
        sb.dev_number = 128;
        let e = err_of(&sb.encode());
        assert_eq!(
            e,
            SbError::DevNumberBeyondMaxDev {
                dev_number: 128,
                max_dev: 128
            }
        );
        assert!(e.to_string().contains("dev_number 128") && e.to_string().contains("max_dev"));
    }

    #[test]
    fn err_roles() {
        let mut sb = sample();
        sb.dev_roles[5] = DevRole::Active(2);
        let e = err_of(&sb.encode());
        assert_eq!(
            e,
            SbError::RoleOutOfRange {
                index: 5,
                role: 2,
                raid_disks: 2
            }
        );
        assert!(e.to_string().starts_with("dev_roles[5] = 0x0002"), "{e}");

        let mut sb = sample();
        sb.dev_roles[3] = DevRole::from_raw(0xfffc);
        assert!(err_of(&sb.encode())
            .to_string()
            .contains("dev_roles[3] = 0xfffc"));

        let mut sb = sample();
        sb.dev_roles[4] = DevRole::Journal;
        let e = err_of(&sb.encode());
        assert_eq!(e, SbError::JournalRole { index: 4 });
        assert!(e.to_string().contains("dev_roles[4]"));

        let mut sb = sample();
        sb.dev_roles[2] = DevRole::Active(0);
        let e = err_of(&sb.encode());
        assert_eq!(
            e,
            SbError::DuplicateRole {
                role: 0,
                first: 0,
                second: 2
            }
        );
        assert!(e.to_string().contains("dev_roles[2]"));

        // Faulty and spare are fine, and counted.
        let mut sb = sample();
        sb.dev_roles[1] = DevRole::Faulty;
        let d = Superblock::decode(&sb.encode(), MEMBER_64M).unwrap();
        assert_eq!(
            d.summary(),
            RoleSummary {
                raid_disks: 2,
                active: 1,
                faulty: 1,
                missing: 1
            }
        );
        assert_eq!(d.array_state(), "A.");
    }

    #[test]
    fn err_offsets() {
        let mut sb = sample();
        sb.data_offset = 8;
        let e = err_of(&sb.encode());
        assert!(
            matches!(e, SbError::DataOverlapsSuperblock { sb_end: 9, .. }),
            "{e}"
        );
        assert!(e.to_string().starts_with("data_offset 8"));

        let sb = sample();
        let e = Superblock::decode(&sb.encode(), MEMBER_64M - 1).unwrap_err();
        assert!(matches!(e, SbError::DataOutsideMember { .. }));
        assert!(
            e.to_string().contains("data_offset 2048 + data_size"),
            "{e}"
        );

        let mut sb = sample();
        sb.data_size = u64::MAX;
        assert!(matches!(
            err_of(&sb.encode()),
            SbError::DataOutsideMember { .. }
        ));

        let mut sb = sample();
        sb.size = sb.data_size + 1;
        assert!(err_of(&sb.encode()).to_string().starts_with("size "));

        let mut sb = sample();
        sb.feature_map |= MD_FEATURE_RECOVERY_OFFSET;
        sb.recovery_offset = sb.data_size + 1;
        assert!(err_of(&sb.encode())
            .to_string()
            .starts_with("recovery_offset"));
    }

    #[test]
    fn err_bitmap_offset() {
        for (off, why) in [
            (-8, "follow the superblock"),
            (0, "overlaps the superblock"),
            (2040, "at or after data_offset"),
        ] {
            let mut sb = sample();
            sb.bitmap_offset = off;
            let e = err_of(&sb.encode());
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("bitmap_offset {off}")) && msg.contains(why),
                "{msg}"
            );
        }
        // Without the feature bit the field is not interpreted.
        let mut sb = sample();
        sb.feature_map = 0;
        sb.bitmap_offset = -8;
        Superblock::decode(&sb.encode(), MEMBER_64M).unwrap();
    }

    #[test]
    fn err_bblog() {
        for (off, size, why) in [
            (-8, 8, "follow the superblock"),
            (0, 8, "overlaps the superblock"),
            (2036, 8, "overlaps data"),
        ] {
            let mut sb = sample();
            sb.bblog_offset = off;
            sb.bblog_size = size;
            let msg = err_of(&sb.encode()).to_string();
            assert!(
                msg.starts_with(&format!("bblog_offset {off}")) && msg.contains(why),
                "{msg}"
            );
        }
    }

    fn sample_bitmap() -> BitmapSuper {
        let sb = sample();
        BitmapSuper::new(sb.set_uuid, sb.size, 64 << 20, 5)
    }

    #[test]
    fn bitmap_roundtrip_and_errors() {
        let bm = sample_bitmap();
        let enc = bm.encode();
        assert_eq!(BitmapSuper::decode(&enc).unwrap(), bm);
        bm.check_against(&sample()).unwrap();

        let e = BitmapSuper::decode(&enc[..255]).unwrap_err();
        assert!(matches!(
            e,
            SbError::Truncated {
                need: 256,
                got: 255,
                ..
            }
        ));
        assert!(e.to_string().contains("bitmap superblock"));

        let mut b = enc;
        b[0] = b'x';
        let e = BitmapSuper::decode(&b).unwrap_err();
        assert!(e.to_string().starts_with("bitmap magic"), "{e}");

        for (field, f, msg) in [
            (
                "version",
                (|m: &mut BitmapSuper| m.version = 5) as fn(&mut BitmapSuper),
                "bitmap version 5",
            ),
            (
                "version3",
                |m| m.version = BITMAP_MAJOR_LO,
                "bitmap version 3",
            ),
            ("chunk", |m| m.chunksize = 256, "bitmap chunksize 256"),
            (
                "chunk2",
                |m| m.chunksize = 3 << 20,
                "bitmap chunksize 3145728",
            ),
            ("sleep", |m| m.daemon_sleep = 0, "bitmap daemon_sleep 0"),
            (
                "wb",
                |m| m.write_behind = 16384,
                "bitmap write_behind 16384",
            ),
            ("nodes", |m| m.nodes = 2, "bitmap nodes 2"),
        ] {
            let mut m = sample_bitmap();
            f(&mut m);
            let e = BitmapSuper::decode(&m.encode()).unwrap_err();
            assert!(e.to_string().starts_with(msg), "{field}: {e}");
        }
        let mut b = sample_bitmap().encode();
        b[200] = 1;
        assert!(BitmapSuper::decode(&b)
            .unwrap_err()
            .to_string()
            .starts_with("bitmap pad"));

        // Against the superblock.
        let mut m = sample_bitmap();
        m.uuid[0] ^= 1;
        assert_eq!(m.check_against(&sample()), Err(SbError::BitmapUuidMismatch));
        let mut m = sample_bitmap();
        m.chunksize = 512; // 129024 bits = 16128 bytes: runs into the bblog at 16 + 8.
        let e = m.check_against(&sample()).unwrap_err();
        assert!(e.to_string().contains("bad-block log"), "{e}");
        let mut sb = sample();
        sb.bblog_size = 0;
        m.sync_size = 1 << 30; // far past data_offset
        let e = m.check_against(&sb).unwrap_err();
        assert!(
            e.to_string().starts_with("bitmap area") && e.to_string().contains("data"),
            "{e}"
        );
        let mut sb = sample();
        sb.feature_map = 0;
        assert!(sample_bitmap().check_against(&sb).is_err());
    }

    #[test]
    fn bitmap_bits() {
        assert_eq!(bitmap_chunks(129024, 64 << 20), 1);
        assert_eq!(bitmap_chunks(129024, 4 << 20), 16);
        assert_eq!(bitmap_chunks(0, 4096), 0);
        assert_eq!(bitmap_chunks(8, 4096), 1);
        assert_eq!(bitmap_chunks(9, 4096), 2);
        assert_eq!(bitmap_chunks(9, 0), 0);
        assert_eq!(bitmap_area_bytes(129024, 64 << 20), 4096);
        // 8 * (4096 - 256) bits fill exactly one 4 KiB block.
        assert_eq!(bitmap_area_bytes(8 * 3840 * 8, 4096), 4096);
        assert_eq!(bitmap_area_bytes(8 * 3840 * 8 + 1, 4096), 8192);

        let mut bits = [0u8; 4];
        assert!(bitmap_set(&mut bits, 0, true));
        assert!(bitmap_set(&mut bits, 9, true));
        assert!(bitmap_set(&mut bits, 31, true));
        assert!(!bitmap_set(&mut bits, 32, true));
        assert_eq!(bits, [0x01, 0x02, 0x00, 0x80], "little-endian bit order");
        assert!(bitmap_get(&bits, 9) && !bitmap_get(&bits, 8) && !bitmap_get(&bits, 99));
        assert_eq!(bitmap_count_dirty(&bits, 32), 3);
        assert_eq!(bitmap_count_dirty(&bits, 10), 2);
        assert_eq!(bitmap_count_dirty(&bits, 9), 1);
        assert_eq!(bitmap_count_dirty(&bits, 1000), 3);
        bitmap_set(&mut bits, 9, false);
        assert_eq!(bits, [0x01, 0x00, 0x00, 0x80]);
    }

    #[test]
    fn helpers() {
        assert_eq!(mdadm_max_dev(2), 128);
        assert_eq!(mdadm_max_dev(128), 128);
        assert_eq!(mdadm_max_dev(129), 384);
        assert_eq!(mdadm_max_dev(5000), MAX_DEVS);
        assert_eq!(MAX_DEVS, 1920);
        let t = MdTime::new(0xff_ffff_ffff, 999_999);
        assert_eq!((t.secs(), t.usecs()), (0xff_ffff_ffff, 999_999));
        let mut sb = sample();
        sb.set_name_str("a-name-longer-than-thirty-two-bytes-for-sure");
        assert_eq!(sb.name().len(), 31);
        sb.set_write_mostly(true);
        assert!(sb.write_mostly());
        sb.set_write_mostly(false);
        assert_eq!(sb.devflags, 0);
        assert_eq!(sb.device_in_slot(1), Some(1));
        assert_eq!(sb.device_in_slot(2), None);
        assert_eq!(bitmap_sync_size(10, 0x102, 4, 126976), 253952);
        assert_eq!(bitmap_sync_size(10, 0x103, 3, 1000), 1000);
        assert_eq!(bitmap_sync_size(5, 2, 3, 1000), 1000);
        assert_eq!(default_bitmap_chunk(129024, 8), 64 << 20);
        assert_eq!(mdadm_headroom(MEMBER_64M, 0), 128);
        assert_eq!(mdadm_headroom(MEMBER_64M, 1024), 2048);
        assert_eq!(choose_bm_space(MEMBER_300G), 256);
        assert_eq!(choose_bm_space(16 << 21), 128);
        assert_eq!(component_size(5, 1024, 129023), 128000);
        assert_eq!(component_size(1, 0, 129023), 128896);
    }

    #[test]
    fn our_bytes_that_mdadm_accepted() {
        // fixtures/ours_raid1_m1.*: mdadm --examine printed "Checksum :
        // 13d5a7cc - correct", --examine-bitmap "16 bits (chunks), 3 dirty".
        // Rebuild the same member and compare byte for byte.
        let uuid: [u8; 16] = core::array::from_fn(|i| (i as u8).wrapping_mul(17).wrapping_add(1));
        let sync = 129024;
        let l = MemberLayout::new(MEMBER_64M, 0, Some(bitmap_area_bytes(sync, 4 << 20))).unwrap();
        let mut sb = Superblock::new(uuid, level::RAID1, 2, 1);
        sb.set_name_str("mdraid:r1");
        sb.ctime = MdTime::new(1_750_000_000, 0);
        sb.utime = MdTime::new(1_750_000_500, 250_000);
        l.apply(&mut sb);
        sb.size = component_size(level::RAID1, 0, l.data_size);
        sb.events = 42;
        sb.device_uuid = core::array::from_fn(|i| (i as u8) ^ 31);
        sb.dev_roles[0] = DevRole::Active(0);
        sb.dev_roles[1] = DevRole::Active(1);
        sb.set_write_mostly(true);
        let raw = include_bytes!("../tests/fixtures/ours_raid1_m1.sb");
        assert_eq!(&sb.encode()[..], &raw[..]);
        assert_eq!(sb.checksum(), 0x13d5a7cc);
        assert_eq!(Superblock::decode(raw, MEMBER_64M).unwrap(), sb);

        let mut bm = BitmapSuper::new(uuid, sync, 4 << 20, 5);
        bm.events = 42;
        bm.events_cleared = 40;
        let raw = include_bytes!("../tests/fixtures/ours_raid1_m1.bitmap");
        assert_eq!(&bm.encode()[..], &raw[..256]);
        assert_eq!(bm.chunks(), 16);
        assert_eq!(bitmap_count_dirty(&raw[256..], 16), 3);
        assert!(
            bitmap_get(&raw[256..], 0) && bitmap_get(&raw[256..], 3) && bitmap_get(&raw[256..], 5)
        );
        bm.check_against(&sb).unwrap();
    }

    #[test]
    fn fuzz_corpus_seeds_are_valid() {
        let seeds: [(&str, &[u8]); 7] = [
            (
                "mdadm_raid10_m0_sb",
                include_bytes!("../fuzz/corpus/superblock/mdadm_raid10_m0_sb"),
            ),
            (
                "mdadm_raid1_m0_sb_bitmap",
                include_bytes!("../fuzz/corpus/superblock/mdadm_raid1_m0_sb_bitmap"),
            ),
            (
                "mdadm_raid5_spare_sb",
                include_bytes!("../fuzz/corpus/superblock/mdadm_raid5_spare_sb"),
            ),
            (
                "mdadm_raid6_m0_bitmap",
                include_bytes!("../fuzz/corpus/superblock/mdadm_raid6_m0_bitmap"),
            ),
            (
                "ours_raid1_writemostly_sb_bitmap",
                include_bytes!("../fuzz/corpus/superblock/ours_raid1_writemostly_sb_bitmap"),
            ),
            (
                "ours_raid5_faulty_dirty_sb",
                include_bytes!("../fuzz/corpus/superblock/ours_raid5_faulty_dirty_sb"),
            ),
            (
                "ours_raid6_recovering_sb_bitmap",
                include_bytes!("../fuzz/corpus/superblock/ours_raid6_recovering_sb_bitmap"),
            ),
        ];
        for (name, data) in seeds {
            let sb = Superblock::decode(data, 1 << 40);
            let bm = BitmapSuper::decode(data);
            assert!(sb.is_ok() || bm.is_ok(), "{name}");
            if data.len() > SB_BLOCK_BYTES {
                let bm = BitmapSuper::decode(&data[SB_BLOCK_BYTES..]).unwrap();
                bm.check_against(&sb.unwrap()).unwrap();
            }
            fuzz_decode(data);
        }
        let r6 = Superblock::decode(
            include_bytes!("../fuzz/corpus/superblock/ours_raid6_recovering_sb_bitmap"),
            MEMBER_64M,
        )
        .unwrap();
        assert_eq!(
            r6.feature_map,
            MD_FEATURE_BITMAP_OFFSET | MD_FEATURE_RECOVERY_OFFSET
        );
        assert_eq!(r6.recovery_offset, 2048);
        let r5 = Superblock::decode(
            include_bytes!("../fuzz/corpus/superblock/ours_raid5_faulty_dirty_sb"),
            MEMBER_64M,
        )
        .unwrap();
        assert_eq!(
            r5.summary(),
            RoleSummary {
                raid_disks: 3,
                active: 2,
                faulty: 1,
                missing: 1
            }
        );
        assert!(!r5.is_clean());
    }

    #[test]
    fn fuzz_body_on_fixtures_and_samples() {
        for name in FIXTURES_64M {
            fuzz_decode(fixture_sb(name));
        }
        let mut member = sample().encode();
        member.extend_from_slice(&sample_bitmap().encode());
        member.resize(2 * SB_BLOCK_BYTES, 0xff);
        fuzz_decode(&member);
        fuzz_decode(&sample_bitmap().encode());
        fuzz_decode(&[]);
    }

    fn arb_role(raid_disks: u32) -> impl Strategy<Value = DevRole> {
        prop_oneof![
            Just(DevRole::Spare),
            Just(DevRole::Faulty),
            (0..raid_disks as u16).prop_map(DevRole::Active),
        ]
    }

    prop_compose! {
        fn arb_sb()(raid_disks in 1u32..20, max_dev in 20u32..=MAX_DEVS)
            (roles in proptest::collection::vec(arb_role(raid_disks), max_dev as usize),
             raid_disks in Just(raid_disks),
             max_dev in Just(max_dev),
             dev_number in 0..max_dev,
             feature_map in prop_oneof![Just(0u32), Just(1), Just(3), Just(0x81), Just(0x1001)],
             uuids in any::<([u8; 16], [u8; 16], [u8; 32])>(),
             nums in any::<(u64, u64, i32, u32, u32, u32, u64, u64)>(),
             flags in any::<(u8, u8)>(),
             reshape in any::<(i32, u64, i32, u32, u32, i32)>(),
             data_size in 0u64..1_000_000,
             size_frac in 0u64..=100,
             rec_frac in 0u64..=100,
             data_offset in 2048u64..4096,
             bitmap_extra in 0i32..4,
             bblog in prop_oneof![Just((0u16, 0i32)), Just((8, 16))],
             )
            -> Superblock {
            // Active roles must be unique: keep the first holder of each slot.
            let mut seen = vec![false; raid_disks as usize];
            let dev_roles = roles.into_iter().map(|r| match r {
                DevRole::Active(n) if seen[n as usize] => DevRole::Spare,
                DevRole::Active(n) => { seen[n as usize] = true; r }
                other => other,
            }).collect();
            let (set_uuid, device_uuid, set_name) = uuids;
            // The bitmap starts after the superblock content (1..=8 sectors).
            let bitmap_offset = (SB_HEADER_BYTES as i32 + 2 * max_dev as i32 + 511) / 512 + bitmap_extra;
            Superblock {
                feature_map,
                set_uuid,
                set_name,
                ctime: MdTime(nums.0),
                level: nums.2,
                layout: nums.3,
                size: data_size * size_frac / 100,
                chunksize: nums.4,
                raid_disks,
                bitmap_offset,
                new_level: reshape.0,
                reshape_position: reshape.1,
                delta_disks: reshape.2,
                new_layout: reshape.3,
                new_chunk: reshape.4,
                new_offset: reshape.5,
                data_offset,
                data_size,
                super_offset: 8,
                recovery_offset: data_size * rec_frac / 100,
                dev_number,
                cnt_corrected_read: nums.5,
                device_uuid,
                devflags: flags.0,
                bblog_shift: flags.1,
                bblog_size: bblog.0,
                bblog_offset: bblog.1,
                utime: MdTime(nums.1),
                events: nums.6,
                resync_offset: nums.7,
                dev_roles,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn prop_roundtrip(sb in arb_sb()) {
            let enc = sb.encode();
            let dec = Superblock::decode(&enc, 1 << 32).unwrap();
            prop_assert_eq!(&dec, &sb);
            prop_assert_eq!(dec.encode(), enc.clone());
            fuzz_decode(&enc);
        }

        #[test]
        fn prop_decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..5000)) {
            fuzz_decode(&data);
            let _ = Superblock::decode(&data, 0);
            let _ = Superblock::decode(&data, u64::MAX);
        }

        #[test]
        fn prop_mutated_valid_never_panics(
            flips in proptest::collection::vec((0usize..SB_BLOCK_BYTES, any::<u8>()), 1..8),
            fix_csum in any::<bool>(),
            member in prop_oneof![Just(0u64), Just(MEMBER_64M), Just(u64::MAX)],
        ) {
            let mut b = sample().encode();
            for (i, v) in flips {
                b[i] = v;
            }
            if fix_csum && le32(&b, off::MAX_DEV) <= MAX_DEVS {
                let c = sb_checksum(&b);
                put32(&mut b, off::SB_CSUM, c);
            }
            let _ = Superblock::decode(&b, member);
            fuzz_decode(&b);
        }

        #[test]
        fn prop_bitmap_roundtrip(
            uuid in any::<[u8; 16]>(),
            ev in any::<(u64, u64, u64, u32)>(),
            shift in 9u32..32,
            sleep in 1u32..1000,
            wb in 0u32..=BITMAP_WRITE_BEHIND_MAX,
            reserved in any::<u32>(),
            cluster_name in any::<[u8; 32]>(),
        ) {
            let mut name = [0u8; 64];
            name[..32].copy_from_slice(&cluster_name);
            let bm = BitmapSuper {
                version: BITMAP_MAJOR_HI, uuid, events: ev.0, events_cleared: ev.1,
                sync_size: ev.2, state: ev.3, chunksize: 1 << shift, daemon_sleep: sleep,
                write_behind: wb, sectors_reserved: reserved, nodes: 0, cluster_name: name,
            };
            let enc = bm.encode();
            prop_assert_eq!(BitmapSuper::decode(&enc).unwrap(), bm);
            fuzz_decode(&enc);
        }

        #[test]
        fn prop_bits(n in 0u64..8192, preset in any::<bool>()) {
            let mut bits = vec![if preset { 0xff } else { 0 }; 1024];
            prop_assert!(bitmap_set(&mut bits, n, !preset));
            prop_assert_eq!(bitmap_get(&bits, n), !preset);
            let expect = if preset { 8191 } else { 1 };
            prop_assert_eq!(bitmap_count_dirty(&bits, 8192), expect);
        }
    }
}
