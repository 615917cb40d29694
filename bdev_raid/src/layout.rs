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
    /// Ignored by raid1 (which has no strip); linear uses it as rounding only
    /// (each member rounded down to it, like md-linear). Linear and raid1
    /// also accept 0, md's chunk size for them: no rounding.
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
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

/// md's raid0 layout numbers (`enum r0layout` in md's raid0.h). They only
/// matter for multi-zone arrays (members of different sizes); this engine
/// builds single-zone arrays only, where all three map identically.
mod raid0_layout {
    /// Unset (what older mdadm wrote).
    pub const UNSET: u32 = 0;
    /// `RAID0_ORIG_LAYOUT`, what current mdadm writes by default.
    pub const ORIG: u32 = 1;
    /// `RAID0_ALT_MULTIZONE_LAYOUT`.
    pub const ALT_MULTIZONE: u32 = 2;
}

/// raid10 layout word: bit 16 selects "offset" instead of "far" copies.
const RAID10_OFFSET_FLAG: u32 = 1 << 16;

/// A validated geometry. Cheap to share (`Arc`), never changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    level: Level,
    layout: u32,
    block_size: u32,
    strip_blocks: u64,
    members: usize,
    /// Blocks of each member the layout uses (see [`Geometry::member_blocks`]).
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

/// Smallest member count md (or this engine) accepts for `level`, given the
/// raid10 copy count.
fn min_members(level: Level, raid10_copies: usize) -> usize {
    match level {
        Level::Linear => 1,
        Level::Raid0 | Level::Raid1 => 2,
        Level::Raid4 | Level::Raid5 => 3,
        Level::Raid6 => 4,
        Level::Raid10 => raid10_copies.max(2),
    }
}

/// Raid0 within one zone (md's `map_sector`): the member and member
/// block of block `off` of array strip `chunk`, over `n` members with
/// strips of `strip` blocks.
#[inline(always)]
pub fn raid0_place(chunk: u64, off: u64, n: u64, strip: u64) -> Loc {
    Loc {
        member: (chunk % n) as u16,
        lba: (chunk / n) * strip + off,
    }
}

/// md's symmetric raid5/raid6 layouts over `n` members: the member of data
/// strip `i` of stripe `stripe`. The parity strip(s) of stripe `stripe`
/// start at member `n - 1 - stripe % n` (left) or `stripe % n` (right);
/// the data strips follow the `skip` parity strips (raid5 1, raid6 2),
/// wrapping around.
#[inline(always)]
pub fn symmetric_data_member(n: u64, stripe: u64, i: u64, left: bool, skip: u64) -> u64 {
    let r = stripe % n;
    let pd = if left { n - 1 - r } else { r };
    let m = pd + skip + i;
    if m >= n {
        m - n
    } else {
        m
    }
}

/// Round `x` down to a multiple of `m`.
fn round_down(x: u64, m: u64) -> u64 {
    x - x % m
}

impl Geometry {
    /// Validate `p` and build the geometry.
    ///
    /// Checks, in order: block size, strip size, too many members, layout,
    /// too few members (raid10's minimum is its copy count), member sizes.
    /// Sizes follow md:
    ///
    /// * linear: each member rounded down to the strip (md-linear's
    ///   "rounding", applied when the superblock's chunk size is non-zero),
    ///   then concatenated. `strip_size_kb == 0` (what mdadm writes for
    ///   linear) means no rounding.
    /// * raid0: members rounded down to the strip must be equal (one md
    ///   "zone"); array = members * that.
    /// * raid1: every member uses the smallest member's size (not rounded;
    ///   `strip_size_kb == 0`, what mdadm writes for raid1, is accepted).
    /// * raid4/5/6: every member uses the smallest member rounded down to the
    ///   strip; array = data strips * that.
    /// * raid10: the smallest member rounded down to the strip goes through
    ///   md's `calc_sectors` (per-member used size and far stride) and
    ///   `raid10_size` (array size), exactly as the kernel does on assembly.
    pub fn new(p: &GeometryParams) -> Result<Geometry, GeometryError> {
        let level = p.level;
        let name = level.name();

        if p.block_size != 512 && p.block_size != 4096 {
            return Err(GeometryError::BlockSize(p.block_size));
        }

        // Strip. Linear and raid1 accept 0 (md stores chunk 0 for them) and
        // then work in single blocks, which is the same as no rounding.
        let no_strip_ok = matches!(level, Level::Linear | Level::Raid1);
        let strip_blocks = if p.strip_size_kb == 0 && no_strip_ok {
            1
        } else {
            if !p.strip_size_kb.is_power_of_two() {
                return Err(GeometryError::StripNotPowerOfTwo(p.strip_size_kb));
            }
            let strip_bytes = u64::from(p.strip_size_kb) * 1024;
            if strip_bytes < u64::from(p.block_size) {
                return Err(GeometryError::StripTooSmall {
                    strip_kb: p.strip_size_kb,
                    block_size: p.block_size,
                });
            }
            strip_bytes / u64::from(p.block_size)
        };

        let members = p.member_blocks.len();
        if members > MAX_MEMBERS {
            return Err(GeometryError::TooManyMembers {
                got: members,
                max: MAX_MEMBERS,
            });
        }

        // Layout (defaults resolved). raid10's copy count decides its
        // minimum member count, so the layout is parsed before that check.
        let bad_layout = |layout| GeometryError::BadLayout {
            level: name,
            layout,
        };
        let layout = p.layout.unwrap_or(match level {
            Level::Raid5 | Level::Raid6 => raid5_layout::LEFT_SYMMETRIC,
            Level::Raid4 => raid5_layout::PARITY_N,
            Level::Raid10 => raid10_layout::NEAR2,
            Level::Linear | Level::Raid0 | Level::Raid1 => 0,
        });
        let (mut near, mut far, mut far_offset) = (1usize, 1usize, false);
        match level {
            Level::Linear | Level::Raid1 => {
                if layout != 0 {
                    return Err(bad_layout(layout));
                }
            }
            Level::Raid0 => {
                if !matches!(
                    layout,
                    raid0_layout::UNSET | raid0_layout::ORIG | raid0_layout::ALT_MULTIZONE
                ) {
                    return Err(bad_layout(layout));
                }
            }
            // md ignores the layout for level 4 (parity is always on the
            // last member, `pd_idx = data_disks`) and does not validate it.
            // mdadm writes 0 for raid4 and md's raid5->raid4 takeover sets
            // 0 too; PARITY_N is the same placement in raid5 terms (the
            // default here, as documented on `GeometryParams`). Accept both.
            Level::Raid4 => {
                if layout != 0 && layout != raid5_layout::PARITY_N {
                    return Err(bad_layout(layout));
                }
            }
            Level::Raid5 => {
                if layout > raid5_layout::PARITY_N {
                    return Err(bad_layout(layout));
                }
            }
            // md's non-DDF rotating raid6 layouts.
            Level::Raid6 => {
                if layout > raid5_layout::RIGHT_SYMMETRIC {
                    return Err(bad_layout(layout));
                }
            }
            Level::Raid10 => {
                // Bits 17/18 select dm-raid's "far sets"; mdadm never
                // writes them and they are not supported here.
                if layout >> 17 != 0 {
                    return Err(bad_layout(layout));
                }
                near = (layout & 0xff) as usize;
                far = ((layout >> 8) & 0xff) as usize;
                far_offset = layout & RAID10_OFFSET_FLAG != 0;
                if near == 0 || far == 0 || near * far < 2 {
                    return Err(bad_layout(layout));
                }
            }
        }

        let min = min_members(level, near * far);
        if members < min {
            return Err(GeometryError::TooFewMembers {
                level: name,
                min,
                got: members,
            });
        }

        if level == Level::Raid10 && far_offset && near > 1 && (members / near) * near != members {
            // md's __raid10_find_phys moves a near copy that wraps past the
            // last member to the next chunk row, but in offset mode that row
            // holds the far copies: two blocks would share one place.
            return Err(bad_layout(layout));
        }

        // Every member must hold a strip; raid10 far/offset copies need one
        // strip per far copy (reported as the strip size they add up to).
        let min_member = strip_blocks * far as u64;
        for (member, &blocks) in p.member_blocks.iter().enumerate() {
            if blocks < min_member {
                return Err(GeometryError::MemberTooSmall {
                    member,
                    blocks,
                    strip_blocks: min_member,
                });
            }
        }

        let min_blocks = p.member_blocks.iter().copied().min().unwrap_or(0);
        let mut g = Geometry {
            level,
            layout,
            block_size: p.block_size,
            strip_blocks,
            members,
            member_blocks: Vec::new(),
            array_blocks: 0,
            near,
            far,
            far_offset,
            far_stride: 0,
            linear_starts: Vec::new(),
        };

        match level {
            Level::Linear => {
                g.member_blocks = p
                    .member_blocks
                    .iter()
                    .map(|&b| round_down(b, strip_blocks))
                    .collect();
                let mut start = 0;
                for &b in &g.member_blocks {
                    g.linear_starts.push(start);
                    start += b;
                }
                g.array_blocks = start;
            }
            Level::Raid0 => {
                let first = round_down(p.member_blocks[0], strip_blocks);
                for (member, &blocks) in p.member_blocks.iter().enumerate() {
                    if round_down(blocks, strip_blocks) != first {
                        return Err(GeometryError::UnequalMembers {
                            level: name,
                            member,
                            blocks,
                            first: p.member_blocks[0],
                        });
                    }
                }
                g.member_blocks = vec![first; members];
                g.array_blocks = first * members as u64;
            }
            Level::Raid1 => {
                g.member_blocks = vec![min_blocks; members];
                g.array_blocks = min_blocks;
            }
            Level::Raid4 | Level::Raid5 | Level::Raid6 => {
                let dev = round_down(min_blocks, strip_blocks);
                g.member_blocks = vec![dev; members];
                g.array_blocks = dev * g.data_strips() as u64;
            }
            Level::Raid10 => {
                let disks = members as u64;
                let (nc, fc) = (near as u64, far as u64);
                let copies = nc * fc;
                // md calc_sectors(): chunks in the array, then chunks used
                // per member (rounded up), then the far stride.
                let dev_chunks = min_blocks / strip_blocks;
                let array_chunks = (dev_chunks / fc) * disks / nc;
                let used_chunks = (array_chunks * copies).div_ceil(disks);
                g.far_stride = if far_offset {
                    strip_blocks
                } else {
                    (used_chunks / fc) * strip_blocks
                };
                g.member_blocks = vec![used_chunks * strip_blocks; members];
                // md run(): array = raid10_size(dev_sectors from above).
                g.array_blocks = (used_chunks / fc) * disks / nc * strip_blocks;
                debug_assert_eq!(g.array_blocks, array_chunks * strip_blocks);
                debug_assert!(g.array_blocks > 0);
            }
        }
        Ok(g)
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
    /// Strip ("chunk") size in blocks (1 for linear/raid1 built with
    /// `strip_size_kb == 0`).
    pub fn strip_blocks(&self) -> u64 {
        self.strip_blocks
    }
    pub fn members(&self) -> usize {
        self.members
    }
    /// Blocks of `member`'s data area the layout uses: the member's size
    /// clipped as described in [`Geometry::new`] (for raid1/4/5/6/10 the same
    /// for every member, md's per-device `size`). Blocks at or past this are
    /// never mapped.
    pub fn member_blocks(&self, member: usize) -> u64 {
        self.member_blocks[member]
    }
    /// Size of the array in blocks.
    pub fn array_blocks(&self) -> u64 {
        self.array_blocks
    }
    /// raid10: (near copies, far copies, offset) from the layout word.
    /// Other levels: `(1, 1, false)`.
    pub fn raid10_copies(&self) -> (usize, usize, bool) {
        (self.near, self.far, self.far_offset)
    }
    /// How many member failures the level always survives
    /// (raid1: n-1, raid10: copies-1, raid4/5: 1, raid6: 2, raid0/linear: 0).
    pub fn redundancy(&self) -> usize {
        match self.level {
            Level::Linear | Level::Raid0 => 0,
            Level::Raid1 => self.members - 1,
            Level::Raid10 => self.near * self.far - 1,
            Level::Raid4 | Level::Raid5 => 1,
            Level::Raid6 => 2,
        }
    }
    /// Copies of every block (raid1: members, raid10: near*far, others 1).
    pub fn copies(&self) -> usize {
        match self.level {
            Level::Raid1 => self.members,
            Level::Raid10 => self.near * self.far,
            _ => 1,
        }
    }
    /// Parity levels: data strips per stripe (raid4/5: n-1, raid6: n-2).
    /// Other levels: raid0 the member count (a "stripe" is one row of
    /// strips), linear/raid1/raid10 1.
    pub fn data_strips(&self) -> usize {
        match self.level {
            Level::Raid4 | Level::Raid5 => self.members - 1,
            Level::Raid6 => self.members - 2,
            Level::Raid0 => self.members,
            Level::Linear | Level::Raid1 | Level::Raid10 => 1,
        }
    }
    /// Parity levels: data blocks per stripe (`strip_blocks * data_strips`).
    pub fn stripe_data_blocks(&self) -> u64 {
        self.strip_blocks * self.data_strips() as u64
    }
    /// Parity levels: number of stripes. Other levels:
    /// `array_blocks / stripe_data_blocks`, rounded up.
    pub fn stripes(&self) -> u64 {
        self.array_blocks.div_ceil(self.stripe_data_blocks())
    }

    /// Non-parity levels (linear, raid0, raid1, raid10): the longest prefix
    /// (at most `len` blocks, at least 1) of `[lba, lba+len)` that is
    /// contiguous on every copy, and where its copies are.
    /// Panics on parity levels or if `lba >= array_blocks()` or `len == 0`.
    /// A request running past the end of the array is cut at the end.
    pub fn map(&self, lba: u64, len: u64) -> Mapping {
        let mut m = Mapping {
            len: 0,
            ncopies: 0,
            copies: [Loc { member: 0, lba: 0 }; MAX_MEMBERS],
        };
        m.len = self.map_each(lba, len, |member, lba| {
            m.copies[m.ncopies] = Loc {
                member: member as u16,
                lba,
            };
            m.ncopies += 1;
        });
        m
    }

    /// [`Geometry::map`] without building a [`Mapping`]: calls `out(member,
    /// member_lba)` for each copy in md's order and returns the run's
    /// length.
    pub fn map_each(&self, lba: u64, len: u64, mut out: impl FnMut(usize, u64)) -> u64 {
        assert!(
            !self.level.is_parity(),
            "map() on parity level {}",
            self.level.name()
        );
        assert!(
            lba < self.array_blocks,
            "lba {lba} past array end {}",
            self.array_blocks
        );
        assert!(len > 0, "map() of 0 blocks");
        let len = len.min(self.array_blocks - lba);
        let strip = self.strip_blocks;
        let run = match self.level {
            Level::Linear => {
                // The last member starting at or before lba (md-linear's
                // which_dev). Every member holds at least one strip, so
                // starts are strictly increasing.
                let member = self.linear_starts.partition_point(|&s| s <= lba) - 1;
                let off = lba - self.linear_starts[member];
                out(member, off);
                len.min(self.member_blocks[member] - off)
            }
            Level::Raid0 => {
                let (l, left) = self.raid0_loc(lba);
                out(l.member as usize, l.lba);
                len.min(left)
            }
            Level::Raid1 => {
                for member in 0..self.members {
                    out(member, lba);
                }
                len
            }
            Level::Raid10 => {
                self.raid10_find_phys(lba, out);
                len.min(strip - self.strip_of(lba).1)
            }
            Level::Raid4 | Level::Raid5 | Level::Raid6 => unreachable!(),
        };
        debug_assert!(run >= 1 && run <= len);
        run
    }

    /// Raid0: where array block `lba` is (md raid0 map_sector() for a
    /// single zone), and the blocks left in its strip from there. `lba`
    /// must be inside the array.
    #[inline]
    pub fn raid0_loc(&self, lba: u64) -> (Loc, u64) {
        debug_assert!(self.level == Level::Raid0 && lba < self.array_blocks);
        let (chunk, off) = self.strip_of(lba);
        let l = raid0_place(chunk, off, self.members as u64, self.strip_blocks);
        (l, self.strip_blocks - off)
    }

    /// Strip number and offset in the strip of array block `lba` (a shift
    /// for strips of a power of two, as md's always are).
    #[inline]
    fn strip_of(&self, lba: u64) -> (u64, u64) {
        let strip = self.strip_blocks;
        if strip.is_power_of_two() {
            (lba >> strip.trailing_zeros(), lba & (strip - 1))
        } else {
            (lba / strip, lba % strip)
        }
    }

    /// md's `__raid10_find_phys` (with `far_set_size == raid_disks`, the
    /// only variant mdadm creates): calls `out(member, member_lba)` for every
    /// copy of array block `lba`, in md's `devs[]` order.
    ///
    /// Chunk `c` of the array is laid out raid0-style on "slots"
    /// `c*near .. c*near+near-1` (slot `s` = row `s / disks`, member
    /// `s % disks`); each near copy then gets `far-1` more copies, each
    /// shifted by `near` members and by one far stride (far: a whole
    /// section of the members; offset: one chunk, the row being widened to
    /// `far` chunks).
    fn raid10_find_phys(&self, lba: u64, mut out: impl FnMut(usize, u64)) {
        let strip = self.strip_blocks;
        let disks = self.members;
        let (chunk, off) = self.strip_of(lba);
        let slot = chunk * self.near as u64;
        let mut row = slot / disks as u64;
        let mut dev = (slot % disks as u64) as usize;
        if self.far_offset {
            row *= self.far as u64;
        }
        let mut sector = row * strip + off;
        for _ in 0..self.near {
            let (mut d, mut s) = (dev, sector);
            out(d, s);
            for _ in 1..self.far {
                d = (d + self.near) % disks;
                s += self.far_stride;
                out(d, s);
            }
            // The next near copy goes on the next member, wrapping to the
            // next chunk row.
            dev += 1;
            if dev >= disks {
                dev = 0;
                sector += strip;
            }
        }
    }

    /// md's `raid10_find_virt`: the array block whose copy member `dev`
    /// holds at `lba`, or `None` for unused space.
    fn raid10_find_virt(&self, dev: usize, lba: u64) -> Option<u64> {
        let strip = self.strip_blocks;
        let disks = self.members as u64;
        let near = self.near as u64;
        let far = self.far as u64;
        let off = lba % strip;
        let (row, d) = if self.far_offset {
            // Physical chunk row = logical row * far + far copy index.
            let chunk = lba / strip;
            let fc = chunk % far;
            (
                chunk / far,
                (dev as u64 + disks - fc * near % disks) % disks,
            )
        } else {
            let fc = lba / self.far_stride;
            if fc >= far {
                return None;
            }
            let rem = lba - fc * self.far_stride;
            (
                rem / strip,
                (dev as u64 + disks - fc * near % disks) % disks,
            )
        };
        let vchunk = (row * disks + d) / near;
        let a = vchunk * strip + off;
        (a < self.array_blocks).then_some(a)
    }

    /// Parity levels: stripe number, data strip index and block offset in
    /// the strip of array block `lba`.
    pub fn locate(&self, lba: u64) -> (u64, usize, u64) {
        let sdb = self.stripe_data_blocks();
        let stripe = lba / sdb;
        let (i, row) = self.strip_of(lba % sdb);
        (stripe, i as usize, row)
    }

    /// Block address of stripe `stripe`'s strips on every member
    /// (`StripeMap::member_lba`).
    #[inline]
    pub fn stripe_member_lba(&self, stripe: u64) -> u64 {
        stripe * self.strip_blocks
    }

    /// The member holding data strip `i` of stripe `stripe`: what
    /// `stripe(stripe).data[i]` says, without building the whole map (a
    /// read of one strip needs only this).
    pub fn data_member(&self, stripe: u64, i: usize) -> u16 {
        assert!(
            self.level.is_parity() && i < self.data_strips(),
            "data_member({stripe}, {i}) on {} of {} members",
            self.level.name(),
            self.members
        );
        let n = self.members;
        let r = (stripe % n as u64) as usize;
        let left = matches!(
            self.layout,
            raid5_layout::LEFT_ASYMMETRIC | raid5_layout::LEFT_SYMMETRIC
        );
        let symmetric = matches!(
            self.layout,
            raid5_layout::LEFT_SYMMETRIC | raid5_layout::RIGHT_SYMMETRIC
        );
        let pd = if left { n - 1 - r } else { r };
        let sym = |skip| symmetric_data_member(n as u64, stripe, i as u64, left, skip) as usize;
        let m = match (self.level, self.layout) {
            (Level::Raid4, _) | (Level::Raid5, raid5_layout::PARITY_N) => i,
            (Level::Raid5, raid5_layout::PARITY_0) => i + 1,
            (Level::Raid5, _) if symmetric => sym(1),
            (Level::Raid5, _) => i + usize::from(i >= pd),
            (Level::Raid6, _) if symmetric => sym(2),
            (Level::Raid6, _) if pd == n - 1 => i + 1,
            (Level::Raid6, _) => i + if i >= pd { 2 } else { 0 },
            _ => unreachable!("non-parity level"),
        };
        m as u16
    }

    /// Parity levels: where the strips of stripe `stripe` live.
    ///
    /// Follows md's `raid5_compute_sector` for the parity/data placement and
    /// `set_syndrome_sources` / `raid6_idx_to_slot` for the Q order.
    /// Panics on non-parity levels or if `stripe >= stripes()`.
    pub fn stripe(&self, stripe: u64) -> StripeMap {
        assert!(
            self.level.is_parity(),
            "stripe() on non-parity level {}",
            self.level.name()
        );
        assert!(
            stripe < self.stripes(),
            "stripe {stripe} past the last stripe {}",
            self.stripes()
        );
        let n = self.members;
        let ndata = self.data_strips();
        // md: stripe2 % raid_disks picks the rotation.
        let r = (stripe % n as u64) as usize;
        let mut data = [0u16; MAX_MEMBERS];
        let mut q_slot = [0u8; MAX_MEMBERS];
        let (p, q) = match (self.level, self.layout) {
            (Level::Raid4, _) | (Level::Raid5, raid5_layout::PARITY_N) => {
                // Parity on the last member, data in order.
                for (i, d) in data.iter_mut().take(ndata).enumerate() {
                    *d = i as u16;
                }
                (n - 1, None)
            }
            (Level::Raid5, raid5_layout::PARITY_0) => {
                for (i, d) in data.iter_mut().take(ndata).enumerate() {
                    *d = (i + 1) as u16;
                }
                (0, None)
            }
            (Level::Raid5, layout) => {
                // LEFT_*: parity walks backwards from the last member;
                // RIGHT_*: forwards from member 0.
                let pd = match layout {
                    raid5_layout::LEFT_ASYMMETRIC | raid5_layout::LEFT_SYMMETRIC => n - 1 - r,
                    _ => r,
                };
                let symmetric = matches!(
                    layout,
                    raid5_layout::LEFT_SYMMETRIC | raid5_layout::RIGHT_SYMMETRIC
                );
                for (i, d) in data.iter_mut().take(ndata).enumerate() {
                    *d = if symmetric {
                        // Data starts just after parity and wraps.
                        (pd + 1 + i) % n
                    } else if i >= pd {
                        // Data in member order, skipping parity.
                        i + 1
                    } else {
                        i
                    } as u16;
                }
                (pd, None)
            }
            (Level::Raid6, layout) => {
                let pd = match layout {
                    raid5_layout::LEFT_ASYMMETRIC | raid5_layout::LEFT_SYMMETRIC => n - 1 - r,
                    _ => r,
                };
                let symmetric = matches!(
                    layout,
                    raid5_layout::LEFT_SYMMETRIC | raid5_layout::RIGHT_SYMMETRIC
                );
                let qd = if symmetric {
                    // Q just after P (wrapping), data after Q.
                    for (i, d) in data.iter_mut().take(ndata).enumerate() {
                        *d = ((pd + 2 + i) % n) as u16;
                    }
                    (pd + 1) % n
                } else if pd == n - 1 {
                    // Q D D D P: Q wraps to member 0, data in between.
                    for (i, d) in data.iter_mut().take(ndata).enumerate() {
                        *d = (i + 1) as u16;
                    }
                    0
                } else {
                    // D D P Q D: data in member order skipping P and Q.
                    for (i, d) in data.iter_mut().take(ndata).enumerate() {
                        *d = if i >= pd { i + 2 } else { i } as u16;
                    }
                    pd + 1
                };
                (pd, Some(qd))
            }
            _ => unreachable!("non-parity level"),
        };

        match q {
            None => {
                for (i, s) in q_slot.iter_mut().take(ndata).enumerate() {
                    *s = i as u8;
                }
            }
            Some(qd) => {
                // md set_syndrome_sources(): walk the members starting at
                // raid6_d0 (just after Q, i.e. member 0 when Q is last),
                // numbering the data members 0, 1, ... in walk order; that
                // number is the data strip's power of g in Q.
                let mut dd_of_member = [usize::MAX; MAX_MEMBERS];
                for (i, &d) in data.iter().take(ndata).enumerate() {
                    dd_of_member[d as usize] = i;
                }
                let d0 = if qd == n - 1 { 0 } else { qd + 1 };
                let mut count = 0u8;
                for k in 0..n {
                    let member = (d0 + k) % n;
                    if member == p || member == qd {
                        continue;
                    }
                    q_slot[dd_of_member[member]] = count;
                    count += 1;
                }
                debug_assert_eq!(count as usize, ndata);
            }
        }

        StripeMap {
            ndata,
            data,
            q_slot,
            p: p as u16,
            q: q.map(|q| q as u16),
            member_lba: self.stripe_member_lba(stripe),
        }
    }

    /// Inverse of `map`/`stripe` for one member block: the array block
    /// stored there, or `None` for parity, unused space or past the end.
    /// For raid1/raid10 every copy maps back to the array block it holds.
    pub fn member_to_array(&self, member: usize, lba: u64) -> Option<u64> {
        if member >= self.members || lba >= self.member_blocks[member] {
            return None;
        }
        let strip = self.strip_blocks;
        match self.level {
            Level::Linear => Some(self.linear_starts[member] + lba),
            Level::Raid0 => {
                let row = lba / strip;
                Some((row * self.members as u64 + member as u64) * strip + lba % strip)
            }
            Level::Raid1 => Some(lba),
            Level::Raid10 => self.raid10_find_virt(member, lba),
            Level::Raid4 | Level::Raid5 | Level::Raid6 => {
                let stripe = lba / strip;
                if stripe >= self.stripes() {
                    return None;
                }
                let sm = self.stripe(stripe);
                let i = sm.data[..sm.ndata]
                    .iter()
                    .position(|&d| usize::from(d) == member)?;
                Some(stripe * self.stripe_data_blocks() + i as u64 * strip + lba % strip)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn params(
        level: Level,
        layout: Option<u32>,
        strip_size_kb: u32,
        block_size: u32,
        member_blocks: Vec<u64>,
    ) -> GeometryParams {
        GeometryParams {
            level,
            layout,
            strip_size_kb,
            block_size,
            member_blocks,
        }
    }

    fn geo(
        level: Level,
        layout: Option<u32>,
        strip_size_kb: u32,
        block_size: u32,
        member_blocks: Vec<u64>,
    ) -> Geometry {
        Geometry::new(&params(
            level,
            layout,
            strip_size_kb,
            block_size,
            member_blocks,
        ))
        .unwrap()
    }

    /// `data_member` says what `stripe().data` says, for every parity
    /// level and layout md has, member counts up to 10, strips that are
    /// and are not a power of two, and every stripe of the rotation.
    #[test]
    fn data_member_matches_the_stripe_map() {
        let mut checked = 0;
        for level in [Level::Raid4, Level::Raid5, Level::Raid6] {
            for layout in 0..=5u32 {
                let min = if level == Level::Raid6 { 4 } else { 3 };
                for n in min..=10usize {
                    for (strip_kb, bs) in [(64, 512), (12, 4096)] {
                        let Ok(g) = Geometry::new(&params(
                            level,
                            Some(layout),
                            strip_kb,
                            bs,
                            vec![64 * 1024; n],
                        )) else {
                            continue;
                        };
                        for stripe in 0..(3 * n as u64).min(g.stripes()) {
                            let sm = g.stripe(stripe);
                            for i in 0..sm.ndata {
                                assert_eq!(
                                    g.data_member(stripe, i),
                                    sm.data[i],
                                    "{level:?} layout {layout} n {n} stripe {stripe} strip {i}"
                                );
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 1000, "only {checked} strips checked");
    }

    /// Every place array block `lba` is stored, in md's copy order.
    fn locs(g: &Geometry, lba: u64) -> Vec<Loc> {
        if g.level().is_parity() {
            let (stripe, idx, off) = g.locate(lba);
            let sm = g.stripe(stripe);
            vec![Loc {
                member: sm.data[idx],
                lba: sm.member_lba + off,
            }]
        } else {
            g.map(lba, 1).copies().to_vec()
        }
    }

    fn loc(member: u16, lba: u64) -> Loc {
        Loc { member, lba }
    }

    /// Exhaustive checks on one (small) geometry.
    fn check_geometry(g: &Geometry) {
        let n = g.members();
        assert!(g.array_blocks() > 0);
        let mut seen: HashSet<(u16, u64)> = HashSet::new();
        for lba in 0..g.array_blocks() {
            let ls = locs(g, lba);
            assert_eq!(ls.len(), g.copies(), "lba {lba}");
            let members: HashSet<u16> = ls.iter().map(|l| l.member).collect();
            assert_eq!(
                members.len(),
                ls.len(),
                "copies of {lba} share a member: {ls:?}"
            );
            for l in &ls {
                assert!((l.member as usize) < n);
                assert!(
                    l.lba < g.member_blocks(l.member as usize),
                    "lba {lba} -> {l:?} past member end {}",
                    g.member_blocks(l.member as usize)
                );
                assert_eq!(
                    g.member_to_array(l.member as usize, l.lba),
                    Some(lba),
                    "round trip of {lba} via {l:?}"
                );
                assert!(
                    seen.insert((l.member, l.lba)),
                    "{l:?} holds two array blocks"
                );
            }
        }
        assert_eq!(seen.len() as u64, g.array_blocks() * g.copies() as u64);

        // The inverse maps nothing else: every member block it claims is one
        // the forward map produced.
        for m in 0..n {
            for b in 0..g.member_blocks(m) {
                if let Some(a) = g.member_to_array(m, b) {
                    assert!(a < g.array_blocks());
                    assert!(
                        seen.contains(&(m as u16, b)),
                        "({m},{b}) -> {a} not forward"
                    );
                }
            }
            assert_eq!(g.member_to_array(m, g.member_blocks(m)), None);
            assert_eq!(g.member_to_array(m, u64::MAX / 2), None);
        }
        assert_eq!(g.member_to_array(n, 0), None);

        if g.level().is_parity() {
            assert_eq!(
                g.stripes() * g.strip_blocks(),
                g.member_blocks(0),
                "stripes cover the members"
            );
            for s in 0..g.stripes() {
                let sm = g.stripe(s);
                assert_eq!(sm.ndata, g.data_strips());
                assert_eq!(sm.member_lba, s * g.strip_blocks());
                let mut all: Vec<u16> = sm.data[..sm.ndata].to_vec();
                all.push(sm.p);
                if let Some(q) = sm.q {
                    all.push(q);
                }
                let distinct: HashSet<u16> = all.iter().copied().collect();
                assert_eq!(distinct.len(), all.len(), "stripe {s}: {sm:?}");
                assert_eq!(all.len(), n, "every member has a strip in stripe {s}");
                assert_eq!(sm.q.is_some(), g.level() == Level::Raid6);
                let slots: HashSet<u8> = sm.q_slot[..sm.ndata].iter().copied().collect();
                assert_eq!(slots, (0..sm.ndata as u8).collect::<HashSet<u8>>());
                for k in 0..g.strip_blocks() {
                    assert_eq!(g.member_to_array(sm.p as usize, sm.member_lba + k), None);
                    if let Some(q) = sm.q {
                        assert_eq!(g.member_to_array(q as usize, sm.member_lba + k), None);
                    }
                }
            }
        }
    }

    /// Valid parameters for every level and layout, small enough to check
    /// exhaustively.
    fn arb_params() -> impl Strategy<Value = GeometryParams> {
        let levels = prop_oneof![
            Just(Level::Linear),
            Just(Level::Raid0),
            Just(Level::Raid1),
            Just(Level::Raid4),
            Just(Level::Raid5),
            Just(Level::Raid6),
            Just(Level::Raid10),
        ];
        let strips = prop_oneof![
            (Just(512u32), prop_oneof![Just(1u32), Just(2), Just(4)]),
            (Just(4096u32), prop_oneof![Just(4u32), Just(8), Just(16)]),
        ];
        (levels, strips, any::<u32>(), 0usize..5).prop_flat_map(
            |(level, (block_size, strip_kb), pick, extra)| {
                let strip_blocks = u64::from(strip_kb) * 1024 / u64::from(block_size);
                let (layout, copies, far) = match level {
                    Level::Linear | Level::Raid1 => (Some(0), 1, 1),
                    Level::Raid0 => (Some(pick % 3), 1, 1),
                    Level::Raid4 => ([None, Some(0), Some(5)][pick as usize % 3], 1, 1),
                    Level::Raid5 => ((pick % 7 < 6).then_some(pick % 7), 1, 1),
                    Level::Raid6 => ((pick % 5 < 4).then_some(pick % 5), 1, 1),
                    Level::Raid10 => {
                        const SHAPES: [(u32, u32); 9] = [
                            (2, 1),
                            (3, 1),
                            (1, 2),
                            (1, 3),
                            (2, 2),
                            (4, 1),
                            (1, 4),
                            (2, 3),
                            (3, 2),
                        ];
                        let (near, far) = SHAPES[pick as usize % SHAPES.len()];
                        let offset = if (pick >> 8) & 1 == 1 { 1 << 16 } else { 0 };
                        (
                            Some(near | far << 8 | offset),
                            (near * far) as usize,
                            u64::from(far),
                        )
                    }
                };
                let members = min_members(level, copies) + extra;
                // Member sizes: a whole number of strips plus a random
                // remainder; raid0 members share the strip count.
                let max_strips = 1 + 48 / members as u64;
                let sizes = (
                    far..=far + max_strips,
                    proptest::collection::vec((0..=2 * far, 0..strip_blocks), members),
                )
                    .prop_map(move |(base, v)| {
                        v.into_iter()
                            .map(|(more, rem)| {
                                let strips = if level == Level::Raid0 {
                                    base
                                } else {
                                    base + more
                                };
                                strips * strip_blocks + rem
                            })
                            .collect::<Vec<u64>>()
                    });
                sizes.prop_map(move |member_blocks| GeometryParams {
                    level,
                    layout,
                    strip_size_kb: strip_kb,
                    block_size,
                    member_blocks,
                })
            },
        )
    }

    /// Build, skipping the one family of raid10 shapes refused on purpose
    /// (offset with near copies not dividing the member count).
    fn build(p: &GeometryParams) -> Option<Geometry> {
        match Geometry::new(p) {
            Ok(g) => Some(g),
            Err(GeometryError::BadLayout { layout, .. })
                if p.level == Level::Raid10
                    && layout & RAID10_OFFSET_FLAG != 0
                    && (layout & 0xff) > 1 =>
            {
                None
            }
            Err(e) => panic!("{p:?}: {e}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn layout_prop_roundtrip_injective(p in arb_params()) {
            if let Some(g) = build(&p) {
                check_geometry(&g);
            }
        }

        #[test]
        fn layout_prop_member_blocks_reassemble(p in arb_params()) {
            // Re-creating the geometry from the used member sizes (what the
            // superblock records) gives the same geometry.
            if let Some(g) = build(&p) {
                let again = Geometry::new(&GeometryParams {
                    member_blocks: (0..g.members()).map(|m| g.member_blocks(m)).collect(),
                    ..p.clone()
                })
                .unwrap();
                prop_assert_eq!(again, g);
            }
        }

        #[test]
        fn layout_prop_map_prefix(p in arb_params(), at in any::<u64>(), len in 1u64..200) {
            let Some(g) = build(&p) else { return Ok(()) };
            if g.level().is_parity() {
                return Ok(());
            }
            let lba = at % g.array_blocks();
            let m = g.map(lba, len);
            prop_assert!(m.len >= 1 && m.len <= len && lba + m.len <= g.array_blocks());
            prop_assert_eq!(m.ncopies, g.copies());
            // Contiguous on every copy.
            for k in 0..m.len {
                let one = g.map(lba + k, 1);
                prop_assert_eq!(one.len, 1);
                for (c, o) in m.copies().iter().zip(one.copies()) {
                    prop_assert_eq!(*o, loc(c.member, c.lba + k));
                }
            }
            // Longest: stops only where the level says it must.
            let strip = g.strip_blocks();
            let want = match g.level() {
                Level::Raid1 => len.min(g.array_blocks() - lba),
                Level::Raid0 | Level::Raid10 => {
                    len.min(strip - lba % strip).min(g.array_blocks() - lba)
                }
                Level::Linear => {
                    let c = m.copies[0];
                    len.min(g.member_blocks(c.member as usize) - c.lba)
                }
                _ => unreachable!(),
            };
            prop_assert_eq!(m.len, want);
        }
    }

    /// Every raid10 shape md can express on 2..=8 members, including those
    /// the random test rarely reaches.
    #[test]
    fn layout_raid10_all_shapes_exhaustive() {
        for disks in 2..=8usize {
            for near in 1..=disks as u32 {
                for far in 1..=disks as u32 {
                    if near * far < 2 || (near * far) as usize > disks {
                        continue;
                    }
                    for offset in [0, RAID10_OFFSET_FLAG] {
                        let layout = near | far << 8 | offset;
                        for size in [far as u64 * 2, far as u64 * 2 + 3, 13, 17] {
                            let p = params(Level::Raid10, Some(layout), 4, 4096, vec![size; disks]);
                            let Some(g) = build(&p) else {
                                assert!(
                                    near > 1 && (disks / near as usize) * near as usize != disks
                                );
                                continue;
                            };
                            assert_eq!(g.copies(), (near * far) as usize);
                            assert_eq!(g.redundancy(), (near * far) as usize - 1);
                            check_geometry(&g);
                        }
                    }
                }
            }
        }
    }

    fn stripe_of(g: &Geometry, s: u64) -> (u16, Option<u16>, Vec<u16>, Vec<u8>) {
        let sm = g.stripe(s);
        (
            sm.p,
            sm.q,
            sm.data[..sm.ndata].to_vec(),
            sm.q_slot[..sm.ndata].to_vec(),
        )
    }

    fn raid5(layout: u32, disks: usize) -> Geometry {
        geo(Level::Raid5, Some(layout), 64, 512, vec![1024; disks])
    }

    #[test]
    fn layout_known_raid5_left_symmetric() {
        let g = raid5(raid5_layout::LEFT_SYMMETRIC, 4);
        assert_eq!(
            g.layout(),
            geo(Level::Raid5, None, 64, 512, vec![1024; 4]).layout()
        );
        assert_eq!(g.strip_blocks(), 128);
        assert_eq!(g.array_blocks(), 3 * 1024);
        assert_eq!(g.stripes(), 8);
        let want: [(u16, [u16; 3]); 5] = [
            (3, [0, 1, 2]),
            (2, [3, 0, 1]),
            (1, [2, 3, 0]),
            (0, [1, 2, 3]),
            (3, [0, 1, 2]),
        ];
        for (s, (p, data)) in want.iter().enumerate() {
            let (gp, q, gd, slots) = stripe_of(&g, s as u64);
            assert_eq!((gp, q, gd), (*p, None, data.to_vec()), "stripe {s}");
            assert_eq!(slots, vec![0, 1, 2]);
            assert_eq!(g.stripe(s as u64).member_lba, s as u64 * 128);
        }
        // Array block 3*128*1 + 5 is stripe 1, data strip 0: member 3.
        assert_eq!(g.member_to_array(3, 128 + 5), Some(3 * 128 + 5));
        assert_eq!(g.member_to_array(2, 128 + 5), None);
        assert_eq!(g.locate(3 * 128 + 2 * 128 + 7), (1, 2, 7));
    }

    #[test]
    fn layout_known_raid5_other_layouts() {
        use raid5_layout::*;
        type Stripes = [(u16, [u16; 3]); 4];
        let cases: [(u32, Stripes); 5] = [
            (
                LEFT_ASYMMETRIC,
                [
                    (3, [0, 1, 2]),
                    (2, [0, 1, 3]),
                    (1, [0, 2, 3]),
                    (0, [1, 2, 3]),
                ],
            ),
            (
                RIGHT_ASYMMETRIC,
                [
                    (0, [1, 2, 3]),
                    (1, [0, 2, 3]),
                    (2, [0, 1, 3]),
                    (3, [0, 1, 2]),
                ],
            ),
            (
                RIGHT_SYMMETRIC,
                [
                    (0, [1, 2, 3]),
                    (1, [2, 3, 0]),
                    (2, [3, 0, 1]),
                    (3, [0, 1, 2]),
                ],
            ),
            (PARITY_0, [(0, [1, 2, 3]); 4]),
            (PARITY_N, [(3, [0, 1, 2]); 4]),
        ];
        for (layout, stripes) in cases {
            let g = raid5(layout, 4);
            for (s, (p, data)) in stripes.iter().enumerate() {
                let (gp, q, gd, _) = stripe_of(&g, s as u64);
                assert_eq!(
                    (gp, q, gd),
                    (*p, None, data.to_vec()),
                    "layout {layout} stripe {s}"
                );
            }
        }
    }

    #[test]
    fn layout_known_raid4() {
        // mdadm writes layout 0 for raid4; md puts parity on the last
        // member whatever the layout says.
        for layout in [None, Some(0), Some(raid5_layout::PARITY_N)] {
            let g = geo(Level::Raid4, layout, 4, 4096, vec![10, 11, 12]);
            assert_eq!(g.array_blocks(), 20);
            for s in 0..g.stripes() {
                assert_eq!(stripe_of(&g, s), (2, None, vec![0, 1], vec![0, 1]));
            }
        }
        assert_eq!(geo(Level::Raid4, None, 4, 4096, vec![3; 3]).layout(), 5);
        assert_eq!(geo(Level::Raid4, Some(0), 4, 4096, vec![3; 3]).layout(), 0);
    }

    #[test]
    fn layout_known_raid6_left_symmetric() {
        let g = geo(Level::Raid6, None, 4, 4096, vec![20; 5]);
        assert_eq!(g.layout(), raid5_layout::LEFT_SYMMETRIC);
        assert_eq!(g.array_blocks(), 60);
        assert_eq!(g.redundancy(), 2);
        let want: [(u16, u16, [u16; 3]); 6] = [
            (4, 0, [1, 2, 3]),
            (3, 4, [0, 1, 2]),
            (2, 3, [4, 0, 1]),
            (1, 2, [3, 4, 0]),
            (0, 1, [2, 3, 4]),
            (4, 0, [1, 2, 3]),
        ];
        for (s, (p, q, data)) in want.iter().enumerate() {
            // Symmetric layouts walk the data in logical order from
            // raid6_d0, so Q's exponents are 0, 1, 2.
            assert_eq!(
                stripe_of(&g, s as u64),
                (*p, Some(*q), data.to_vec(), vec![0, 1, 2]),
                "stripe {s}"
            );
        }
    }

    #[test]
    fn layout_known_raid6_asymmetric_q_order() {
        // Left-asymmetric on 5: the Q walk starts after Q, so it meets the
        // data strips out of logical order once P/Q sit mid-stripe.
        let g = geo(
            Level::Raid6,
            Some(raid5_layout::LEFT_ASYMMETRIC),
            4,
            4096,
            vec![20; 5],
        );
        let want: [(u16, u16, [u16; 3], [u8; 3]); 5] = [
            (4, 0, [1, 2, 3], [0, 1, 2]), // Q D D D P
            (3, 4, [0, 1, 2], [0, 1, 2]), // D D D P Q
            (2, 3, [0, 1, 4], [1, 2, 0]), // D D P Q D: walk 4,0,1
            (1, 2, [0, 3, 4], [2, 0, 1]), // D P Q D D: walk 3,4,0
            (0, 1, [2, 3, 4], [0, 1, 2]), // P Q D D D
        ];
        for (s, (p, q, data, slots)) in want.iter().enumerate() {
            assert_eq!(
                stripe_of(&g, s as u64),
                (*p, Some(*q), data.to_vec(), slots.to_vec()),
                "stripe {s}"
            );
        }
        let g = geo(
            Level::Raid6,
            Some(raid5_layout::RIGHT_ASYMMETRIC),
            4,
            4096,
            vec![20; 5],
        );
        assert_eq!(stripe_of(&g, 0), (0, Some(1), vec![2, 3, 4], vec![0, 1, 2]));
        assert_eq!(stripe_of(&g, 1), (1, Some(2), vec![0, 3, 4], vec![2, 0, 1]));
        assert_eq!(stripe_of(&g, 4), (4, Some(0), vec![1, 2, 3], vec![0, 1, 2]));
        let g = geo(
            Level::Raid6,
            Some(raid5_layout::RIGHT_SYMMETRIC),
            4,
            4096,
            vec![20; 5],
        );
        assert_eq!(stripe_of(&g, 1), (1, Some(2), vec![3, 4, 0], vec![0, 1, 2]));
        assert_eq!(stripe_of(&g, 4), (4, Some(0), vec![1, 2, 3], vec![0, 1, 2]));
    }

    fn copies(g: &Geometry, lba: u64) -> Vec<(u16, u64)> {
        g.map(lba, 1)
            .copies()
            .iter()
            .map(|l| (l.member, l.lba))
            .collect()
    }

    #[test]
    fn layout_known_raid10_near2_on_3() {
        // One-block strips make chunk numbers array blocks.
        let g = geo(Level::Raid10, None, 4, 4096, vec![11, 12, 11]);
        assert_eq!(g.layout(), raid10_layout::NEAR2);
        // raid10_size: 11 chunks * 3 disks / 2 near = 16; calc_sectors:
        // ceil(16 * 2 / 3) = 11 chunks used per member.
        assert_eq!(g.array_blocks(), 16);
        assert_eq!(g.member_blocks(1), 11);
        assert_eq!(copies(&g, 0), vec![(0, 0), (1, 0)]);
        assert_eq!(copies(&g, 1), vec![(2, 0), (0, 1)]);
        assert_eq!(copies(&g, 2), vec![(1, 1), (2, 1)]);
        assert_eq!(copies(&g, 3), vec![(0, 2), (1, 2)]);
        assert_eq!(copies(&g, 15), vec![(0, 10), (1, 10)]);
        // Slot 32 (member 2, row 10) would be chunk 16: unused.
        assert_eq!(g.member_to_array(2, 10), None);
        assert_eq!(g.member_to_array(0, 1), Some(1));
        // Strips of 8 blocks: the map stops at the strip end.
        let g = geo(Level::Raid10, None, 4, 512, vec![64; 3]);
        let m = g.map(5, 100);
        assert_eq!(m.len, 3);
        assert_eq!(m.copies(), &[loc(0, 5), loc(1, 5)]);
        assert_eq!(copies(&g, 8), vec![(2, 0), (0, 8)]);
    }

    #[test]
    fn layout_known_raid10_near3_on_3_is_raid1_like() {
        let g = geo(
            Level::Raid10,
            Some(raid10_layout::NEAR3),
            4,
            4096,
            vec![9; 3],
        );
        assert_eq!(g.array_blocks(), 9);
        for c in 0..9 {
            assert_eq!(copies(&g, c), vec![(0, c), (1, c), (2, c)]);
        }
    }

    #[test]
    fn layout_known_raid10_far2_on_4() {
        let g = geo(
            Level::Raid10,
            Some(raid10_layout::FAR2),
            4,
            4096,
            vec![8; 4],
        );
        // 8/2 chunks * 4 disks = 16; used ceil(16*2/4) = 8; stride 4.
        assert_eq!(g.array_blocks(), 16);
        assert_eq!(g.member_blocks(0), 8);
        assert_eq!(copies(&g, 0), vec![(0, 0), (1, 4)]);
        assert_eq!(copies(&g, 1), vec![(1, 0), (2, 4)]);
        assert_eq!(copies(&g, 3), vec![(3, 0), (0, 4)]);
        assert_eq!(copies(&g, 4), vec![(0, 1), (1, 5)]);
        assert_eq!(copies(&g, 15), vec![(3, 3), (0, 7)]);
        assert_eq!(g.member_to_array(0, 7), Some(15));
        // f2 on 3 members of 11 chunks: 5 * 3 = 15 chunks, used 10, stride 5.
        let g = geo(
            Level::Raid10,
            Some(raid10_layout::FAR2),
            4,
            4096,
            vec![11; 3],
        );
        assert_eq!(g.array_blocks(), 15);
        assert_eq!(g.member_blocks(2), 10);
        assert_eq!(copies(&g, 2), vec![(2, 0), (0, 5)]);
        assert_eq!(g.member_to_array(1, 10), None);
    }

    #[test]
    fn layout_known_raid10_offset2_on_3() {
        let g = geo(
            Level::Raid10,
            Some(raid10_layout::OFFSET2),
            4,
            4096,
            vec![6; 3],
        );
        // 6/2 * 3 = 9 chunks; used ceil(9*2/3) = 6; stride one chunk.
        assert_eq!(g.array_blocks(), 9);
        assert_eq!(copies(&g, 0), vec![(0, 0), (1, 1)]);
        assert_eq!(copies(&g, 1), vec![(1, 0), (2, 1)]);
        assert_eq!(copies(&g, 2), vec![(2, 0), (0, 1)]);
        assert_eq!(copies(&g, 3), vec![(0, 2), (1, 3)]);
        assert_eq!(copies(&g, 8), vec![(2, 4), (0, 5)]);
        assert_eq!(g.raid10_copies(), (1, 2, true));
    }

    #[test]
    fn raid0_loc_is_md_map_sector() {
        // md raid0's map_sector() for one zone, written out plainly: the
        // direct path and map_each both place raid0 I/O with raid0_loc.
        for n in 2..=9usize {
            for strip_kb in [1u32, 4, 64] {
                let strip = u64::from(strip_kb) * 2;
                let g = geo(Level::Raid0, None, strip_kb, 512, vec![strip * 37; n]);
                for lba in (0..g.array_blocks()).step_by(5) {
                    let chunk = lba / strip;
                    let want = (
                        (chunk % n as u64) as u16,
                        chunk / n as u64 * strip + lba % strip,
                        strip - lba % strip,
                    );
                    let (l, left) = g.raid0_loc(lba);
                    assert_eq!(
                        (l.member, l.lba, left),
                        want,
                        "{n} members, {strip_kb} KiB, lba {lba}"
                    );
                }
            }
        }
    }

    #[test]
    fn layout_known_raid0_raid1_linear() {
        // raid0, 3 members, 2-block strips; sub-strip tails are dropped.
        let g = geo(Level::Raid0, None, 1, 512, vec![8, 9, 8]);
        assert_eq!(g.array_blocks(), 24);
        assert_eq!(g.data_strips(), 3);
        assert_eq!(g.redundancy(), 0);
        assert_eq!(copies(&g, 0), vec![(0, 0)]);
        assert_eq!(copies(&g, 2), vec![(1, 0)]);
        assert_eq!(copies(&g, 4), vec![(2, 0)]);
        assert_eq!(copies(&g, 7), vec![(0, 3)]);
        assert_eq!(g.map(1, 10).len, 1);
        assert_eq!(g.member_to_array(1, 8), None);
        for layout in [1, 2] {
            let g2 = geo(Level::Raid0, Some(layout), 1, 512, vec![8, 9, 8]);
            assert_eq!(copies(&g2, 7), vec![(0, 3)]);
        }

        // raid1: the smallest member, not rounded; whole requests.
        let g = geo(Level::Raid1, None, 64, 512, vec![1001, 1000, 1003]);
        assert_eq!(g.array_blocks(), 1000);
        assert_eq!((g.copies(), g.redundancy()), (3, 2));
        let m = g.map(10, 5000);
        assert_eq!(m.len, 990);
        assert_eq!(m.copies(), &[loc(0, 10), loc(1, 10), loc(2, 10)]);
        // chunk 0, what mdadm writes for raid1, is accepted.
        assert_eq!(
            geo(Level::Raid1, None, 0, 512, vec![7, 9]).array_blocks(),
            7
        );

        // linear: members rounded to the strip (md-linear "rounding").
        let g = geo(Level::Linear, None, 1, 512, vec![10, 7, 5]);
        assert_eq!(g.array_blocks(), 20);
        assert_eq!(g.member_blocks(1), 6);
        assert_eq!(copies(&g, 9), vec![(0, 9)]);
        assert_eq!(copies(&g, 10), vec![(1, 0)]);
        assert_eq!(copies(&g, 16), vec![(2, 0)]);
        assert_eq!(g.map(8, 100).len, 2);
        assert_eq!(g.map(12, 100).len, 4);
        assert_eq!(g.member_to_array(1, 6), None);
        // chunk 0 (mdadm's default for linear): whole members.
        let g = geo(Level::Linear, None, 0, 512, vec![10, 7, 5]);
        assert_eq!(g.array_blocks(), 22);
        assert_eq!(copies(&g, 17), vec![(2, 0)]);
        // A single member is a valid linear array.
        assert_eq!(geo(Level::Linear, None, 4, 4096, vec![5]).array_blocks(), 5);
    }

    fn err(p: GeometryParams) -> (GeometryError, String) {
        let e = Geometry::new(&p).unwrap_err();
        let s = e.to_string();
        (e, s)
    }

    #[test]
    fn layout_errors_name_the_problem() {
        let (e, s) = err(params(Level::Raid5, None, 64, 1024, vec![100; 3]));
        assert_eq!(e, GeometryError::BlockSize(1024));
        assert!(s.contains("block_size 1024"), "{s}");

        let (e, s) = err(params(Level::Raid5, None, 48, 512, vec![100; 3]));
        assert_eq!(e, GeometryError::StripNotPowerOfTwo(48));
        assert!(
            s.contains("strip_size_kb 48") && s.contains("power of two"),
            "{s}"
        );
        let (e, _) = err(params(Level::Raid0, None, 0, 512, vec![100; 3]));
        assert_eq!(e, GeometryError::StripNotPowerOfTwo(0));

        let (e, s) = err(params(Level::Raid0, None, 2, 4096, vec![100; 3]));
        assert_eq!(
            e,
            GeometryError::StripTooSmall {
                strip_kb: 2,
                block_size: 4096
            }
        );
        assert!(s.contains("smaller than one block of 4096"), "{s}");

        for (level, got, min) in [
            (Level::Linear, 0, 1),
            (Level::Raid0, 1, 2),
            (Level::Raid1, 1, 2),
            (Level::Raid4, 2, 3),
            (Level::Raid5, 2, 3),
            (Level::Raid6, 3, 4),
            (Level::Raid10, 1, 2),
        ] {
            let (e, s) = err(params(level, None, 4, 4096, vec![100; got]));
            assert_eq!(
                e,
                GeometryError::TooFewMembers {
                    level: level.name(),
                    min,
                    got
                }
            );
            assert!(
                s.contains(level.name()) && s.contains(&format!("at least {min}")),
                "{s}"
            );
        }
        let (e, _) = err(params(
            Level::Raid10,
            Some(raid10_layout::NEAR3),
            4,
            4096,
            vec![100; 2],
        ));
        assert_eq!(
            e,
            GeometryError::TooFewMembers {
                level: "raid10",
                min: 3,
                got: 2
            }
        );

        let (e, s) = err(params(Level::Raid0, None, 4, 4096, vec![100; 33]));
        assert_eq!(e, GeometryError::TooManyMembers { got: 33, max: 32 });
        assert!(s.contains("33 members"), "{s}");

        let (e, s) = err(params(Level::Raid0, None, 4, 4096, vec![100, 100, 99]));
        assert_eq!(
            e,
            GeometryError::UnequalMembers {
                level: "raid0",
                member: 2,
                blocks: 99,
                first: 100
            }
        );
        assert!(s.contains("equal size") && s.contains("member 2"), "{s}");

        for (level, layout) in [
            (Level::Linear, 1),
            (Level::Raid0, 3),
            (Level::Raid1, 2),
            (Level::Raid4, 2),
            (Level::Raid5, 6),
            (Level::Raid6, 4),
            (Level::Raid6, 0x10),
            (Level::Raid10, 0x100),
            (Level::Raid10, 0x001),
            (Level::Raid10, 0x200),
            (Level::Raid10, 0x20102),
            (Level::Raid10, 0x40102),
        ] {
            let (e, s) = err(params(level, Some(layout), 4, 4096, vec![100; 6]));
            assert_eq!(
                e,
                GeometryError::BadLayout {
                    level: level.name(),
                    layout
                },
                "{level:?} {layout:#x}"
            );
            assert!(
                s.contains(&format!("{layout:#x}")) && s.contains(level.name()),
                "{s}"
            );
        }
        // Offset with near copies that do not divide the members collides
        // in md; with 4 members the same shape is fine.
        let (e, _) = err(params(Level::Raid10, Some(0x10202), 4, 4096, vec![100; 5]));
        assert!(matches!(e, GeometryError::BadLayout { .. }));
        geo(Level::Raid10, Some(0x10202), 4, 4096, vec![100; 4]);

        let (e, s) = err(params(Level::Raid5, None, 64, 512, vec![1000, 127, 1000]));
        assert_eq!(
            e,
            GeometryError::MemberTooSmall {
                member: 1,
                blocks: 127,
                strip_blocks: 128
            }
        );
        assert!(
            s.contains("member 1 has 127 blocks") && s.contains("strip of 128"),
            "{s}"
        );
        // Far copies need one strip per copy.
        let (e, _) = err(params(
            Level::Raid10,
            Some(raid10_layout::FAR2),
            4,
            4096,
            vec![1, 2],
        ));
        assert_eq!(
            e,
            GeometryError::MemberTooSmall {
                member: 0,
                blocks: 1,
                strip_blocks: 2
            }
        );
    }

    /// Why `Geometry::new` refuses offset layouts whose near copies do not
    /// divide the member count: md's own math puts two blocks in one place.
    #[test]
    fn layout_raid10_offset_near_wrap_collides_in_md() {
        let mut g = geo(Level::Raid10, Some(0x10202), 4, 4096, vec![40; 4]);
        // Force n2o2 onto 5 members, bypassing validation.
        g.members = 5;
        g.member_blocks = vec![40; 5];
        g.array_blocks = 40 * 5 / 4;
        let mut seen = HashSet::new();
        let mut collisions = 0;
        for lba in 0..g.array_blocks {
            g.raid10_find_phys(lba, |m, b| {
                if !seen.insert((m, b)) {
                    collisions += 1;
                }
            });
        }
        assert!(collisions > 0);
    }

    #[test]
    fn layout_defaults_and_counts() {
        let g = geo(Level::Raid6, None, 4, 4096, vec![10; 6]);
        assert_eq!(
            (g.data_strips(), g.stripe_data_blocks(), g.stripes()),
            (4, 4, 10)
        );
        assert_eq!(g.copies(), 1);
        let g = geo(Level::Raid10, None, 4, 4096, vec![10; 4]);
        assert_eq!((g.copies(), g.redundancy(), g.data_strips()), (2, 1, 1));
        assert_eq!(g.raid10_copies(), (2, 1, false));
        let g = geo(Level::Raid5, None, 4, 4096, vec![10; 3]);
        assert_eq!(
            (g.layout(), g.redundancy()),
            (raid5_layout::LEFT_SYMMETRIC, 1)
        );
        assert_eq!(geo(Level::Raid0, None, 4, 4096, vec![10; 2]).layout(), 0);
    }

    #[test]
    #[should_panic(expected = "past array end")]
    fn layout_map_past_end_panics() {
        geo(Level::Raid1, None, 4, 4096, vec![10; 2]).map(10, 1);
    }

    #[test]
    #[should_panic(expected = "parity level")]
    fn layout_map_on_parity_panics() {
        geo(Level::Raid5, None, 4, 4096, vec![10; 3]).map(0, 1);
    }
}
