//! A run's parameters, all derived from its seed.

use bdev_raid::channel::ChannelConfig;
use bdev_raid::layout::{raid10_layout, raid5_layout, GeometryParams, Level};

use crate::rng::Rng;

/// Fault rates and limits of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Faults {
    /// Chance that a child read fails without the member being broken.
    pub read_error: f64,
    /// Chance that a child write fails (md then fails the member).
    pub write_error: f64,
    /// Chance per step that a member dies for good.
    pub member_death: f64,
    /// Chance that the host reports no memory for a child submission.
    pub nomem: f64,
    /// Most members that may break in this run (writes failing, deaths).
    pub max_broken: usize,
    /// Members that complete slowly (bit mask).
    pub slow: u64,
    /// Chance that a slow member's completion is put off at a step.
    pub slow_skip: f64,
    /// Members no fault is injected into (writes, deaths): the write-mostly
    /// workload keeps its slow member so reads are forced onto it.
    pub protect: u64,
    /// No fault takes away a range's last copy: a member is not broken
    /// while the level would not survive it with the members already
    /// broken or not yet in sync (recovering) gone too.
    pub keep_a_copy: bool,
}

/// Everything about one simulator run.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub seed: u64,
    pub ops: u64,
    /// Made by [`Scenario::write_behind`] (`--write-behind` replays it).
    pub write_behind_workload: bool,
    pub geometry: GeometryParams,
    pub channels: usize,
    pub queue_depth: usize,
    pub config: ChannelConfig,
    pub faults: Faults,
    /// Largest parent I/O in blocks.
    pub max_blocks: u64,
    /// Idle steps before the metadata path marks the array clean.
    pub safemode: u64,
    /// Most crashes in the run, and the chance of one per scheduler step.
    pub crashes: u32,
    pub crash_chance: f64,
    /// Write-intent bitmap chunk in bytes (levels with redundancy only).
    pub bitmap_chunk: Option<u64>,
    /// Steps between two passes of the bitmap daemon.
    pub daemon_sleep: u64,
    /// Failed members come back (re-add) or are replaced by blank devices,
    /// and are rebuilt beside user I/O.
    pub readd: bool,
    /// Write-mostly members (mirrored levels) and md's max write-behind
    /// (with a bitmap).
    pub write_mostly: u64,
    pub write_behind: u32,
    /// Chance that the host tries the channel's direct path
    /// (`Channel::direct`) for a user read or write before submitting it as
    /// a parent (0: never).
    pub direct: f64,
    /// Member faults (deaths, failing writes, read errors) go on while a
    /// resync runs: the checker forgives the write hole (blocks of a lost
    /// member in stripes whose parity did not match their data), nothing
    /// more. Off, faults pause for every resync.
    pub resync_faults: bool,
    /// The array is made without `--assume-clean`: its members hold
    /// garbage (every block reads back anything until written) and it
    /// starts with the initial resync (levels with redundancy only).
    pub initial_resync: bool,
    /// Used only with `resync_faults`: the chance per step that the next resync
    /// window is submitted (md paces its resync; a slow one meets more
    /// user writes and faults), and the chance per fault step that a
    /// member dies while a resync runs (at least the run's own).
    pub resync_pace: f64,
    pub resync_death: f64,
}

/// Parent I/Os per run unless told otherwise (`--ops`, `MDRAID_SIM_OPS`).
pub const DEFAULT_OPS: u64 = 5000;

impl Scenario {
    /// The scenario of `seed`, with `ops` parent I/Os.
    pub fn from_seed(seed: u64, ops: u64) -> Scenario {
        Scenario::generate(seed, ops, false)
    }

    /// The scenario of `seed`: the write-mostly workload's
    /// ([`Scenario::write_behind`], `--write-behind`) or the general one.
    pub fn of(seed: u64, ops: u64, write_behind: bool) -> Scenario {
        if write_behind {
            Scenario::write_behind(seed, ops)
        } else {
            Scenario::from_seed(seed, ops)
        }
    }

    /// The write-mostly workload of `seed`: raid1 or raid10 with a bitmap,
    /// a slow write-mostly member that no fault touches, write-behind on,
    /// and the other members failing at random moments, so reads are
    /// forced onto the write-mostly member while writes to it are behind.
    pub fn write_behind(seed: u64, ops: u64) -> Scenario {
        Scenario::generate(seed, ops, true)
    }

    fn generate(seed: u64, ops: u64, wb: bool) -> Scenario {
        let mut r = Rng::new(seed ^ 0x5ce9_a810);
        let level = if wb {
            *r.pick(&[Level::Raid1, Level::Raid1, Level::Raid10])
        } else {
            *r.pick(&[
                Level::Linear,
                Level::Raid0,
                Level::Raid1,
                Level::Raid10,
                Level::Raid4,
                Level::Raid5,
                Level::Raid5,
                Level::Raid6,
                Level::Raid6,
            ])
        };
        let (members, layout) = match level {
            Level::Linear => (r.range(1, 4) as usize, None),
            Level::Raid0 => (r.range(2, 5) as usize, None),
            Level::Raid1 => (r.range(2, 4) as usize, None),
            Level::Raid10 => {
                let l = *r.pick(&[
                    raid10_layout::NEAR2,
                    raid10_layout::NEAR3,
                    raid10_layout::FAR2,
                    raid10_layout::OFFSET2,
                ]);
                let min = if l == raid10_layout::NEAR3 { 3 } else { 2 };
                (r.range(min, 6) as usize, Some(l))
            }
            Level::Raid4 => (r.range(3, 6) as usize, None),
            Level::Raid5 => (
                r.range(3, 7) as usize,
                Some(*r.pick(&[
                    raid5_layout::LEFT_ASYMMETRIC,
                    raid5_layout::RIGHT_ASYMMETRIC,
                    raid5_layout::LEFT_SYMMETRIC,
                    raid5_layout::RIGHT_SYMMETRIC,
                    raid5_layout::PARITY_0,
                    raid5_layout::PARITY_N,
                ])),
            ),
            Level::Raid6 => (r.range(4, 8) as usize, None),
        };
        let block_size = if r.chance(0.2) { 4096 } else { 512 };
        let strip_size_kb = *r.pick(&[4u32, 8, 16, 64]).max(&(block_size / 1024).max(1));
        let strip_blocks = strip_size_kb as u64 * 1024 / block_size as u64;
        let strips = r.range(6, 24);
        let base = strips * strip_blocks;
        let member_blocks = (0..members)
            .map(|_| {
                if level == Level::Raid0 {
                    base
                } else {
                    base + r.below(strip_blocks * 2)
                }
            })
            .collect();
        let small = r.chance(0.4);
        let config = ChannelConfig {
            max_parents: if small { r.range(1, 4) as usize } else { 64 },
            max_children: if small {
                2 * members + r.below(4) as usize
            } else {
                256
            },
            stripe_ctxs: if small { r.range(1, 2) as usize } else { 8 },
            max_row_bytes: (*r.pick(&[1u64, 2, 4, 16]) * 4096).max(block_size as u64) as usize,
            behind_bufs: if small { r.range(1, 3) as usize } else { 16 },
        };
        let faulty = wb || r.chance(0.75);
        let redundancy = match level {
            Level::Linear | Level::Raid0 => 0,
            Level::Raid1 => members - 1,
            Level::Raid10 => 1,
            Level::Raid4 | Level::Raid5 => 1,
            Level::Raid6 => 2,
        };
        let faults = if faulty {
            Faults {
                read_error: *r.pick(&[0.0, 0.002, 0.01, 0.05]),
                write_error: *r.pick(&[0.0, 0.001, 0.005]),
                member_death: *r.pick(&[0.0, 0.0002, 0.001]),
                nomem: *r.pick(&[0.0, 0.01, 0.05]),
                // Sometimes break more than the level survives, to see the
                // array go offline cleanly.
                max_broken: if r.chance(0.1) {
                    redundancy + 1
                } else {
                    redundancy
                },
                slow: r.below(1 << members),
                slow_skip: 0.7,
                protect: 0,
                keep_a_copy: false,
            }
        } else {
            Faults {
                read_error: 0.0,
                write_error: 0.0,
                member_death: 0.0,
                nomem: 0.0,
                max_broken: 0,
                slow: 0,
                slow_skip: 0.7,
                protect: 0,
                keep_a_copy: false,
            }
        };
        let crashes = if r.chance(0.7) {
            r.range(1, 4) as u32
        } else {
            0
        };
        // Most arrays with redundancy get a bitmap with small chunks, so a
        // run sees many bits set, cleared and set again.
        let bitmap_chunk = (redundancy > 0 && (wb || r.chance(0.8))).then(|| {
            let min = (block_size as u64).max(4096);
            *r.pick(&[min, min * 2, min * 4, min * 16])
        });
        let daemon_sleep = r.range(10, 300);
        let readd = redundancy > 0 && r.chance(0.7);
        // Write-mostly members of mirrored levels: drawn from a stream of
        // their own, so the rest of every seed's scenario stays as it was.
        let mut w = Rng::new(seed ^ 0x3b1d_77e5);
        let mut faults = faults;
        let (mut write_mostly, mut write_behind) = (0, 0);
        let mirrored = matches!(level, Level::Raid1 | Level::Raid10);
        if mirrored && (wb || w.chance(0.4)) {
            // raid1: up to all members but one; raid10: one member (its
            // copies' partners stay readable).
            let k = if level == Level::Raid1 {
                w.range(1, members as u64 - 1) as usize
            } else {
                1
            };
            let mut roles: Vec<usize> = (0..members).collect();
            for _ in 0..k {
                let i = w.below(roles.len() as u64) as usize;
                write_mostly |= 1 << roles.swap_remove(i);
            }
            if bitmap_chunk.is_some() && (wb || w.chance(0.7)) {
                write_behind = *w.pick(&[1u32, 2, 4, 16, 256]);
            }
            if wb || w.chance(0.7) {
                faults.slow |= write_mostly;
                faults.slow_skip = if wb { 0.9 } else { 0.7 };
            }
            if wb {
                // Faults hit the fast members only, as many as the level
                // survives (a member still recovering counts as gone):
                // reads end up on the write-mostly member.
                faults.protect = write_mostly;
                faults.keep_a_copy = true;
                faults.max_broken = if level == Level::Raid1 {
                    members - k
                } else {
                    1
                };
                faults.write_error = faults.write_error.max(0.001);
                faults.member_death = faults.member_death.max(0.0002);
            }
        }
        // The direct path: from a stream of its own too; most runs use it,
        // some never (the general path alone, as before it existed).
        let mut d = Rng::new(seed ^ 0xd1ec_7a11);
        let direct = if d.chance(0.15) {
            0.0
        } else {
            *d.pick(&[0.3, 0.6, 0.9])
        };
        // Faults during resyncs, and the initial resync: a stream of their
        // own too; seeds that draw neither run as before they existed.
        let mut y = Rng::new(seed ^ 0x7e5f_a017);
        let resync_faults = faulty && y.chance(0.5);
        let initial_resync = redundancy > 0 && y.chance(0.3);
        // (Drawn for every seed, used only with resync faults on: forcing
        // them on with `--resync-faults 1` paces the resync too.)
        let resync_pace = *y.pick(&[1.0, 0.2, 0.05]);
        let resync_death = *y.pick(&[0.0, 0.01, 0.05]);
        Scenario {
            resync_faults,
            initial_resync,
            resync_pace,
            resync_death,
            direct,
            write_mostly,
            write_behind,
            write_behind_workload: wb,
            seed,
            ops,
            bitmap_chunk,
            daemon_sleep,
            readd,
            geometry: GeometryParams {
                level,
                layout,
                strip_size_kb,
                block_size,
                member_blocks,
            },
            channels: r.range(1, 3) as usize,
            queue_depth: r.range(1, 16) as usize,
            config,
            faults,
            max_blocks: strip_blocks * (members as u64 + 2),
            safemode: r.range(20, 400),
            crashes,
            crash_chance: (10.0 / ops.max(1) as f64).min(1.0),
        }
    }
}
