//! RAID layouts: pure mapping from array blocks to member blocks.
//!
//! Levels and layouts are numbered as Linux md numbers them (`level` and
//! `layout` fields of the v1.2 superblock) so the superblock can record them.
//! Every function here is pure; nothing holds state beyond the geometry.
//!
//! Units: every address and length is in blocks of `block_size` bytes.
//! Member addresses are relative to the start of the member's data area
//! (md's `data_offset`), so the host adds the data offset.

/// Most members an array may have (md v1.2 allows more; this bounds the
/// fixed-size per-stripe tables on the I/O path).
pub const MAX_MEMBERS: usize = 32;

/// RAID level, numbered like md's `level` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    /// Concatenation (md level -1).
    Linear,
    Raid0,
    Raid1,
    Raid4,
    Raid5,
    Raid6,
    Raid10,
}

/// md's raid5 layout numbers (`ALGORITHM_*` in md's raid5.h).
pub mod raid5_layout {
    pub const LEFT_ASYMMETRIC: u32 = 0;
    pub const RIGHT_ASYMMETRIC: u32 = 1;
    pub const LEFT_SYMMETRIC: u32 = 2;
    pub const RIGHT_SYMMETRIC: u32 = 3;
    /// Parity on the first member (md `ALGORITHM_PARITY_0`).
    pub const PARITY_0: u32 = 4;
    /// Parity on the last member (md `ALGORITHM_PARITY_N`, what raid4 uses).
    pub const PARITY_N: u32 = 5;
}

/// md's raid10 layout numbers: `near | far << 8 | offset_flag`.
pub mod raid10_layout {
    /// Two near copies (md's default, "n2").
    pub const NEAR2: u32 = 0x102;
    /// Three near copies ("n3").
    pub const NEAR3: u32 = 0x103;
    /// Two far copies ("f2").
    pub const FAR2: u32 = 0x201;
    /// Two offset copies ("o2").
    pub const OFFSET2: u32 = 0x10201;
}

impl Level {
    /// md's number for the level (`mdp_superblock_1.level`).
    pub fn md_level(self) -> i32 {
        match self {
            Level::Linear => -1,
            Level::Raid0 => 0,
            Level::Raid1 => 1,
            Level::Raid4 => 4,
            Level::Raid5 => 5,
            Level::Raid6 => 6,
            Level::Raid10 => 10,
        }
    }

    /// The level md numbers `n`, if this engine implements it.
    pub fn from_md(n: i32) -> Option<Level> {
        Some(match n {
            -1 => Level::Linear,
            0 => Level::Raid0,
            1 => Level::Raid1,
            4 => Level::Raid4,
            5 => Level::Raid5,
            6 => Level::Raid6,
            10 => Level::Raid10,
            _ => return None,
        })
    }

    /// Name as users write it ("raid5", "linear", ...).
    pub fn name(self) -> &'static str {
        match self {
            Level::Linear => "linear",
            Level::Raid0 => "raid0",
            Level::Raid1 => "raid1",
            Level::Raid4 => "raid4",
            Level::Raid5 => "raid5",
            Level::Raid6 => "raid6",
            Level::Raid10 => "raid10",
        }
    }

    /// Parse a user-facing name ("raid5", "5", "linear", "concat").
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.to_ascii_lowercase().as_str() {
            "linear" | "concat" | "-1" => Level::Linear,
            "raid0" | "0" => Level::Raid0,
            "raid1" | "1" => Level::Raid1,
            "raid4" | "4" => Level::Raid4,
            "raid5" | "5" => Level::Raid5,
            "raid6" | "6" => Level::Raid6,
            "raid10" | "10" => Level::Raid10,
            _ => return None,
        })
    }

    /// Parity levels (raid4/5/6) use the stripe path; the others the mapped path.
    pub fn is_parity(self) -> bool {
        matches!(self, Level::Raid4 | Level::Raid5 | Level::Raid6)
    }
}

/// What the caller asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeometryParams {
    pub level: Level,
    /// md layout number; `None` picks md's default for the level
    /// (raid5/raid6: left-symmetric, raid4: parity-N, raid10: near2, others 0).
    pub layout: Option<u32>,
    /// Strip (md "chunk") size in KiB; power of two, at least one block.
    /// Ignored by raid1 (which has no strip); linear uses it as rounding only.
    pub strip_size_kb: u32,
    /// 512 or 4096.
    pub block_size: u32,
    /// Usable data blocks of each member, in role order.
    pub member_blocks: Vec<u64>,
}

/// Why a geometry is refused. Each message names the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    #[error("block_size {0} is not supported (512 or 4096)")]
    BlockSize(u32),
    #[error("strip_size_kb {0} is not a power of two")]
    StripNotPowerOfTwo(u32),
    #[error("strip_size_kb {strip_kb} is smaller than one block of {block_size} bytes")]
    StripTooSmall { strip_kb: u32, block_size: u32 },
    #[error("{level} needs at least {min} members, got {got}")]
    TooFewMembers {
        level: &'static str,
        min: usize,
        got: usize,
    },
    #[error("{got} members is more than the {max} supported")]
    TooManyMembers { got: usize, max: usize },
    #[error("{level} needs members of equal size: member {member} has {blocks} blocks, member 0 has {first}")]
    UnequalMembers {
        level: &'static str,
        member: usize,
        blocks: u64,
        first: u64,
    },
    #[error("layout {layout:#x} is not valid for {level}")]
    BadLayout { level: &'static str, layout: u32 },
    #[error("member {member} has {blocks} blocks, less than one strip of {strip_blocks}")]
    MemberTooSmall {
        member: usize,
        blocks: u64,
        strip_blocks: u64,
    },
}

/// One place a block lives: member role and block address in its data area.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Loc {
    pub member: u16,
    pub lba: u64,
}

/// Result of [`Geometry::map`]: a run of `len` blocks that is contiguous on
/// every copy. `copies[0..ncopies]` are the copies in md's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub len: u64,
    pub ncopies: usize,
    pub copies: [Loc; MAX_MEMBERS],
}

impl Mapping {
    pub fn copies(&self) -> &[Loc] {
        &self.copies[..self.ncopies]
    }
}

/// Result of [`Geometry::stripe`] for parity levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StripeMap {
    /// Number of data strips in the stripe.
    pub ndata: usize,
    /// `data[i]`: member holding data strip `i` (logical order).
    pub data: [u16; MAX_MEMBERS],
    /// `q_slot[i]`: exponent of data strip `i` in the Q syndrome
    /// (Q = sum g^q_slot[i] * D_i), md's order. Unused for raid4/5.
    pub q_slot: [u8; MAX_MEMBERS],
    pub p: u16,
    pub q: Option<u16>,
    /// Block address of the stripe's strips on every member.
    pub member_lba: u64,
}

/// A validated geometry. Cheap to share (`Arc`), never changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    level: Level,
    layout: u32,
    block_size: u32,
    strip_blocks: u64,
    members: usize,
    member_blocks: Vec<u64>,
    array_blocks: u64,
    /// raid10: near copies, far copies, offset flag, far stride (blocks).
    near: usize,
    far: usize,
    far_offset: bool,
    far_stride: u64,
    /// linear: start of each member in array blocks (prefix sums).
    linear_starts: Vec<u64>,
}

impl Geometry {
    /// Validate `p` and build the geometry.
    pub fn new(p: &GeometryParams) -> Result<Geometry, GeometryError> {
        let _ = p;
        todo!("layout helper")
    }

    pub fn level(&self) -> Level {
        self.level
    }
    /// md layout number in force (defaults resolved).
    pub fn layout(&self) -> u32 {
        self.layout
    }
    pub fn block_size(&self) -> u32 {
        self.block_size
    }
    /// Strip ("chunk") size in blocks.
    pub fn strip_blocks(&self) -> u64 {
        self.strip_blocks
    }
    pub fn members(&self) -> usize {
        self.members
    }
    pub fn member_blocks(&self, member: usize) -> u64 {
        self.member_blocks[member]
    }
    /// Size of the array in blocks.
    pub fn array_blocks(&self) -> u64 {
        self.array_blocks
    }
    /// How many member failures the level always survives
    /// (raid1: n-1, raid10: copies-1, raid4/5: 1, raid6: 2, raid0/linear: 0).
    pub fn redundancy(&self) -> usize {
        todo!("layout helper")
    }
    /// Copies of every block (raid1: members, raid10: near*far, others 1).
    pub fn copies(&self) -> usize {
        todo!("layout helper")
    }
    /// Parity levels: data strips per stripe.
    pub fn data_strips(&self) -> usize {
        todo!("layout helper")
    }
    /// Parity levels: data blocks per stripe (`strip_blocks * data_strips`).
    pub fn stripe_data_blocks(&self) -> u64 {
        self.strip_blocks * self.data_strips() as u64
    }
    /// Parity levels: number of stripes.
    pub fn stripes(&self) -> u64 {
        todo!("layout helper")
    }

    /// Non-parity levels (linear, raid0, raid1, raid10): the longest prefix
    /// (at most `len` blocks, at least 1) of `[lba, lba+len)` that is
    /// contiguous on every copy, and where its copies are.
    /// Panics on parity levels or if `lba >= array_blocks()` or `len == 0`.
    pub fn map(&self, lba: u64, len: u64) -> Mapping {
        let _ = (lba, len);
        todo!("layout helper")
    }

    /// Parity levels: stripe number, data strip index and block offset in
    /// the strip of array block `lba`.
    pub fn locate(&self, lba: u64) -> (u64, usize, u64) {
        let sdb = self.stripe_data_blocks();
        let stripe = lba / sdb;
        let rem = lba % sdb;
        (
            stripe,
            (rem / self.strip_blocks) as usize,
            rem % self.strip_blocks,
        )
    }

    /// Parity levels: where the strips of stripe `stripe` live.
    pub fn stripe(&self, stripe: u64) -> StripeMap {
        let _ = stripe;
        todo!("layout helper")
    }

    /// Inverse of `map`/`stripe` for one member block: the array block
    /// stored there, or `None` for parity, unused space or past the end.
    pub fn member_to_array(&self, member: usize, lba: u64) -> Option<u64> {
        let _ = (member, lba);
        todo!("layout helper")
    }
}
