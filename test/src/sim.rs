//! The simulator proper: members, scheduler, metadata stand-in, oracle.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use bdev_raid::channel::{
    Action, Busy, Channel, ChildIo, ChildOp, ChildStatus, IoStatus, IoType, MetaRequest, ParentIo,
};
use bdev_raid::layout::{Geometry, Level};
use bdev_raid::state::{survives, ArrayState, MemberState, StripeLocks};

use crate::rng::{splitmix, Rng};
use crate::scenario::Scenario;

/// A failed run: what went wrong, at which step, under which seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub seed: u64,
    pub step: u64,
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} step {}: {} (replay: cargo run -p mdraid-sim --release -- --seed {})",
            self.seed, self.step, self.what, self.seed
        )
    }
}

/// What a successful run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub steps: u64,
    pub parents: u64,
    pub reads_verified: u64,
    pub blocks_verified: u64,
    pub parent_errors: u64,
    pub child_errors: u64,
    pub members_failed: usize,
    pub offline: bool,
    pub nomem: u64,
    pub rmw: u64,
    pub rcw: u64,
    pub full_stripe: u64,
    pub reconstruct_reads: u64,
    pub read_errors_corrected: u64,
    pub pool_waits: u64,
}

type Buf = Vec<u8>;

struct Member {
    data: Vec<u8>,
    dead: bool,
    broken: bool,
}

/// A message from the metadata path to one channel.
enum Bcast {
    Apply(Arc<ArrayState>),
    Release(Arc<ArrayState>),
}

struct InFlight {
    ch: usize,
    io: ChildIo,
}

#[derive(Clone, Copy, Default)]
struct BlockState {
    /// Last acknowledged write id (0: never written, zeros).
    cur: u64,
    /// A write that failed: its data may or may not be there.
    alt: Option<u64>,
    /// A write in flight.
    pending: Option<u64>,
}

struct ParentRec {
    /// Members that failed a read this parent issued.
    read_errors: u64,
    op: IoType,
    lba: u64,
    blocks: u64,
    id: u64,
    snap: Vec<BlockState>,
    final_check: bool,
}

struct Sim<'a> {
    sc: &'a Scenario,
    rng: Rng,
    geom: Arc<Geometry>,
    bs: usize,
    members: Vec<Member>,
    channels: Vec<Channel<Buf>>,
    retry: Vec<VecDeque<ParentIo<Buf>>>,
    inflight: Vec<InFlight>,
    state: Arc<ArrayState>,
    bcast: Vec<VecDeque<Bcast>>,
    /// How many channels applied the newest state.
    applied: usize,
    meta_pending: u64,
    meta_due: u64,
    blocks: Vec<BlockState>,
    history: Vec<Vec<(u64, bool)>>,
    parents: HashMap<u64, ParentRec>,
    per_channel: Vec<usize>,
    next_tag: u64,
    next_id: u64,
    step: u64,
    /// Step of the last parent completion.
    last_done: u64,
    faults_on: bool,
    out: Outcome,
}

/// Run `sc` to the end. `Err` names the first violation.
pub fn run(sc: &Scenario) -> Result<Outcome, Violation> {
    let geom = match Geometry::new(&sc.geometry) {
        Ok(g) => Arc::new(g),
        Err(e) => {
            return Err(Violation {
                seed: sc.seed,
                step: 0,
                what: format!("scenario geometry refused: {e}"),
            })
        }
    };
    let mut sim = Sim::new(sc, geom);
    sim.run().map_err(|what| Violation {
        seed: sc.seed,
        step: sim.step,
        what,
    })?;
    Ok(sim.out)
}

fn pattern(id: u64, lba: u64, zero: bool, out: &mut [u8]) {
    if zero {
        out.fill(0);
        return;
    }
    out[..8].copy_from_slice(&id.to_le_bytes());
    out[8..16].copy_from_slice(&lba.to_le_bytes());
    let mut x = id.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ lba;
    for c in out[16..].chunks_mut(8) {
        let v = splitmix(&mut x).to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

impl<'a> Sim<'a> {
    fn new(sc: &'a Scenario, geom: Arc<Geometry>) -> Sim<'a> {
        let bs = geom.block_size() as usize;
        let n = geom.members();
        let state = Arc::new(ArrayState::new_in_sync(n));
        let locks = Arc::new(StripeLocks::new(6));
        let channels = (0..sc.channels)
            .map(|_| {
                Channel::new(
                    geom.clone(),
                    state.clone(),
                    locks.clone(),
                    sc.config,
                    |len| vec![0u8; len],
                )
            })
            .collect();
        let nblocks = geom.array_blocks() as usize;
        Sim {
            sc,
            rng: Rng::new(sc.seed),
            bs,
            members: (0..n)
                .map(|m| Member {
                    data: vec![0; geom.member_blocks(m) as usize * bs],
                    dead: false,
                    broken: false,
                })
                .collect(),
            channels,
            retry: (0..sc.channels).map(|_| VecDeque::new()).collect(),
            inflight: Vec::new(),
            state,
            bcast: (0..sc.channels).map(|_| VecDeque::new()).collect(),
            applied: 0,
            meta_pending: 0,
            meta_due: 0,
            blocks: vec![BlockState::default(); nblocks],
            history: vec![Vec::new(); nblocks],
            parents: HashMap::new(),
            per_channel: vec![0; sc.channels],
            next_tag: 1,
            next_id: 1,
            step: 0,
            last_done: 0,
            faults_on: true,
            out: Outcome::default(),
            geom,
        }
    }

    fn broken_mask(&self) -> u64 {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.broken)
            .fold(0, |a, (i, _)| a | 1 << i)
    }

    fn broken(&self) -> usize {
        self.members.iter().filter(|m| m.broken).count()
    }

    fn run(&mut self) -> Result<(), String> {
        // A hang: no parent completed for this many steps.
        let patience = 200_000;
        let mut submitted = 0;
        while submitted < self.sc.ops || !self.quiet() {
            self.step += 1;
            if self.step > self.last_done + patience {
                return Err(format!(
                    "hang: {} parents never completed; {} children in flight; meta pending {:#b}; channels: {}",
                    self.parents.len(),
                    self.inflight.len(),
                    self.meta_pending,
                    self.channels.iter().map(|c| c.describe()).collect::<Vec<_>>().join(" | ")
                ));
            }
            let r = self.rng.below(100);
            if submitted < self.sc.ops && r < 35 {
                let ch = self.rng.below(self.sc.channels as u64) as usize;
                if self.per_channel[ch] < self.sc.queue_depth {
                    self.submit_random(ch)?;
                    submitted += 1;
                }
            } else if !self.inflight.is_empty() && r < 85 {
                self.complete_random()?;
            } else {
                self.misc()?;
            }
            if self.quiet() && submitted >= self.sc.ops {
                break;
            }
            if self.stuck() {
                return Err(format!(
                    "hang: {} parents outstanding and nothing in flight; host retry queues {:?}; channels: {}",
                    self.parents.len(),
                    self.retry.iter().map(|q| q.len()).collect::<Vec<_>>(),
                    self.channels.iter().map(|c| c.describe()).collect::<Vec<_>>().join(" | ")
                ));
            }
        }
        self.final_check()
    }

    /// Nothing left anywhere.
    fn quiet(&self) -> bool {
        self.parents.is_empty()
            && self.inflight.is_empty()
            && self.meta_pending == 0
            && self.bcast.iter().all(|q| q.is_empty())
    }

    /// Parents outstanding but no event can move them.
    fn stuck(&mut self) -> bool {
        if self.parents.is_empty()
            || !self.inflight.is_empty()
            || self.meta_pending != 0
            || self.bcast.iter().any(|q| !q.is_empty())
        {
            return false;
        }
        // Give every channel polls (retries, lock waiters; a resubmitted
        // child may meet ENOMEM again) before deciding.
        for _ in 0..100 {
            for ch in 0..self.channels.len() {
                self.poll_channel(ch);
                if self.drain(ch).is_err() {
                    return false;
                }
            }
            if self.parents.is_empty() || !self.inflight.is_empty() {
                return false;
            }
        }
        true
    }

    fn misc(&mut self) -> Result<(), String> {
        match self.rng.below(4) {
            0 => {
                if self.meta_pending != 0 && self.step >= self.meta_due {
                    self.meta_commit();
                }
            }
            1 => {
                let ch = self.rng.below(self.sc.channels as u64) as usize;
                if let Some(b) = self.bcast[ch].pop_front() {
                    self.deliver(ch, b)?;
                }
            }
            2 => {
                let ch = self.rng.below(self.sc.channels as u64) as usize;
                self.poll_channel(ch);
                self.drain(ch)?;
            }
            _ => {
                if self.faults_on
                    && self.rng.chance(self.sc.faults.member_death * 50.0)
                    && self.broken() < self.sc.faults.max_broken
                {
                    let m = self.rng.below(self.members.len() as u64) as usize;
                    self.members[m].dead = true;
                    self.members[m].broken = true;
                }
            }
        }
        Ok(())
    }

    fn poll_channel(&mut self, ch: usize) {
        while let Some(io) = self.retry[ch].pop_front() {
            if let Err(Busy(io)) = self.channels[ch].submit(io) {
                self.retry[ch].push_front(io);
                break;
            }
        }
        self.channels[ch].poll();
    }

    /// The metadata path stand-in: record every reported member faulty,
    /// events + 1, and broadcast to every channel.
    fn meta_commit(&mut self) {
        let mut s = (*self.state).clone();
        for m in 0..self.members.len() {
            if self.meta_pending & (1 << m) != 0 {
                s.members[m] = MemberState::Faulty;
            }
        }
        s.events += 1;
        s.offline = !survives(&self.geom, s.faulty());
        self.meta_pending = 0;
        let s = Arc::new(s);
        self.state = s.clone();
        self.applied = 0;
        for q in &mut self.bcast {
            q.push_back(Bcast::Apply(s.clone()));
        }
    }

    /// Hand a broadcast to a channel. When the last channel has applied a
    /// state, every channel is told to release what waited for it.
    fn deliver(&mut self, ch: usize, b: Bcast) -> Result<(), String> {
        match b {
            Bcast::Apply(s) => {
                self.channels[ch].apply_state(s.clone());
                if Arc::ptr_eq(&s, &self.state) {
                    self.applied += 1;
                    if self.applied == self.channels.len() {
                        for q in &mut self.bcast {
                            q.push_back(Bcast::Release(s.clone()));
                        }
                    }
                }
            }
            Bcast::Release(s) => self.channels[ch].release(s),
        }
        self.drain(ch)
    }

    fn submit_random(&mut self, ch: usize) -> Result<(), String> {
        let size = self.geom.array_blocks();
        let r = self.rng.below(100);
        let mut op = match r {
            0..=39 => IoType::Read,
            40..=87 => IoType::Write,
            88..=91 => IoType::WriteZeroes,
            92..=94 => IoType::Unmap,
            95..=98 => IoType::Flush,
            _ => IoType::Reset,
        };
        let max = self.sc.max_blocks.min(size);
        let blocks = if self.rng.chance(0.3) {
            // Whole strips / stripes, aligned.
            let unit = if self.geom.level().is_parity() {
                self.geom.stripe_data_blocks()
            } else {
                self.geom.strip_blocks()
            };
            (unit * self.rng.range(1, 2)).min(size)
        } else {
            self.rng.range(1, max)
        };
        let mut lba = self.rng.below(size - blocks + 1);
        if self.rng.chance(0.3) {
            let unit = self.geom.strip_blocks();
            lba -= lba % unit;
        }
        let range = lba as usize..(lba + blocks) as usize;
        if matches!(op, IoType::Write | IoType::WriteZeroes | IoType::Unmap)
            && self.blocks[range.clone()]
                .iter()
                .any(|b| b.pending.is_some())
        {
            op = IoType::Read;
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let mut rec = ParentRec {
            read_errors: 0,
            op,
            lba,
            blocks,
            id: 0,
            snap: Vec::new(),
            final_check: false,
        };
        let buf = match op {
            IoType::Read => {
                rec.snap = self.blocks[range].to_vec();
                Some(vec![0xa5; blocks as usize * self.bs])
            }
            IoType::Write | IoType::WriteZeroes | IoType::Unmap => {
                let id = self.next_id;
                self.next_id += 1;
                rec.id = id;
                let zero = op != IoType::Write;
                for b in range.clone() {
                    self.blocks[b].pending = Some(id);
                    self.history[b].push((id, zero));
                }
                if op == IoType::Write {
                    let mut v = vec![0u8; blocks as usize * self.bs];
                    for (i, c) in v.chunks_mut(self.bs).enumerate() {
                        pattern(id, lba + i as u64, false, c);
                    }
                    Some(v)
                } else {
                    None
                }
            }
            _ => None,
        };
        self.parents.insert(tag, rec);
        self.per_channel[ch] += 1;
        self.out.parents += 1;
        let io = ParentIo {
            tag,
            op,
            lba,
            blocks,
            fua: self.rng.chance(0.1),
            buf,
        };
        if !self.retry[ch].is_empty() {
            self.retry[ch].push_back(io);
        } else if let Err(Busy(io)) = self.channels[ch].submit(io) {
            self.retry[ch].push_back(io);
        }
        self.drain(ch)
    }

    /// Carry out every action channel `ch` has.
    fn drain(&mut self, ch: usize) -> Result<(), String> {
        while let Some(a) = self.channels[ch].poll_action() {
            match a {
                Action::Submit(io) => {
                    let m = io.member as usize;
                    if io.lba + io.blocks > self.geom.member_blocks(m) {
                        return Err(format!("child past the end of member {m}: {io:?}"));
                    }
                    if self.faults_on && self.rng.chance(self.sc.faults.nomem) {
                        self.out.nomem += 1;
                        self.channels[ch].child_done(io.token, ChildStatus::NoMem);
                    } else {
                        self.inflight.push(InFlight { ch, io });
                    }
                }
                Action::Complete { tag, status, buf } => self.parent_done(ch, tag, status, buf)?,
                Action::Meta(MetaRequest::MemberFailed { member, .. }) => {
                    if self.state.members[member as usize] != MemberState::Faulty {
                        if self.meta_pending == 0 {
                            self.meta_due = self.step + self.rng.range(0, self.sc.meta_delay);
                        }
                        self.meta_pending |= 1 << member;
                    }
                }
            }
        }
        Ok(())
    }

    fn complete_random(&mut self) -> Result<(), String> {
        let i = self.rng.below(self.inflight.len() as u64) as usize;
        let m = self.inflight[i].io.member as usize;
        if self.sc.faults.slow & (1 << m) != 0 && self.rng.chance(0.7) {
            return Ok(());
        }
        let InFlight { ch, io } = self.inflight.swap_remove(i);
        if std::env::var_os("MDRAID_SIM_TRACE").is_some() {
            eprintln!("step {} ch {ch} complete {io:?}", self.step);
        }
        let bs = self.bs;
        let off = io.lba as usize * bs;
        let len = io.blocks as usize * bs;
        let f = &self.sc.faults;
        let mem = &self.members[m];
        let status = match io.op {
            ChildOp::Read => {
                if mem.dead || (self.faults_on && self.rng.chance(f.read_error)) {
                    ChildStatus::Error
                } else {
                    let src = &self.members[m].data[off..off + len];
                    self.channels[ch].child_data(io.buf).copy_from_slice(src);
                    ChildStatus::Success
                }
            }
            ChildOp::Write | ChildOp::WriteZeroes | ChildOp::Unmap | ChildOp::Flush => {
                let inject = self.faults_on
                    && (mem.broken || self.broken() < f.max_broken)
                    && self.rng.chance(f.write_error);
                if mem.dead || inject {
                    self.members[m].broken = true;
                    ChildStatus::Error
                } else {
                    let dst = &mut self.members[m].data[off..off + len];
                    match io.op {
                        ChildOp::Write => {
                            let src = self.channels[ch].child_data(io.buf);
                            if src.len() != len {
                                return Err(format!("child buffer size mismatch: {io:?}"));
                            }
                            dst.copy_from_slice(src)
                        }
                        ChildOp::Flush => {}
                        _ => dst.fill(0),
                    }
                    ChildStatus::Success
                }
            }
            ChildOp::Reset => ChildStatus::Success,
        };
        if status == ChildStatus::Error {
            self.out.child_errors += 1;
            if io.op == ChildOp::Read {
                if let Some(p) = self.parents.get_mut(&io.parent) {
                    p.read_errors |= 1 << m;
                }
            }
        }
        self.channels[ch].child_done(io.token, status);
        self.drain(ch)
    }

    fn is_zero_id(&self, b: usize, id: u64) -> bool {
        id == 0
            || self.history[b]
                .binary_search_by_key(&id, |e| e.0)
                .is_ok_and(|i| self.history[b][i].1)
    }

    /// Whether block `b` reading `data` is allowed, given the block's state
    /// when the read was submitted.
    fn block_ok(
        &self,
        b: usize,
        snap: &BlockState,
        data: &[u8],
        tmp: &mut [u8],
    ) -> Result<(), String> {
        let lba = b as u64;
        let ok_id = |id: u64| {
            id == snap.cur
                || snap.alt == Some(id)
                || (id > snap.cur && self.history[b].binary_search_by_key(&id, |e| e.0).is_ok())
        };
        if data.iter().all(|x| *x == 0) {
            let ids = std::iter::once(snap.cur).chain(snap.alt).chain(
                self.history[b]
                    .iter()
                    .filter(|e| e.0 > snap.cur)
                    .map(|e| e.0),
            );
            for id in ids {
                if self.is_zero_id(b, id) && ok_id(id) {
                    return Ok(());
                }
            }
            return Err(format!(
                "block {lba}: read zeros, expected write {} (or a later one)",
                snap.cur
            ));
        }
        let id = u64::from_le_bytes(data[..8].try_into().unwrap());
        pattern(id, lba, false, tmp);
        if tmp != data {
            return Err(format!(
                "block {lba}: garbled data (header says write {id} of block {})",
                u64::from_le_bytes(data[8..16].try_into().unwrap())
            ));
        }
        if !ok_id(id) {
            return Err(format!(
                "block {lba}: stale read of write {id}, acknowledged write is {}",
                snap.cur
            ));
        }
        Ok(())
    }

    fn parent_done(
        &mut self,
        ch: usize,
        tag: u64,
        status: IoStatus,
        buf: Option<Buf>,
    ) -> Result<(), String> {
        self.last_done = self.step;
        let Some(rec) = self.parents.remove(&tag) else {
            return Err(format!("parent {tag} completed twice (or never submitted)"));
        };
        self.per_channel[ch] -= 1;
        let range = rec.lba as usize..(rec.lba + rec.blocks) as usize;
        let healthy = !self.state.offline && self.broken() <= self.redundancy();
        if status == IoStatus::Invalid {
            return Err(format!("valid parent {:?} refused as invalid", rec.op));
        }
        if status == IoStatus::Error {
            self.out.parent_errors += 1;
            // Read errors on more members than the level survives (broken
            // members included) lose the data this parent needed; md fails
            // there too. Anything less must not fail.
            let lost = (rec.read_errors | self.broken_mask()).count_ones() as usize;
            let survivable = match self.geom.level() {
                Level::Raid1 | Level::Raid10 => self.geom.copies() - 1,
                _ => self.geom.redundancy(),
            };
            let legit = !healthy || lost > survivable || rec.final_check && self.state.offline;
            if !legit {
                return Err(format!(
                    "{:?} of {}+{} failed although the array keeps its data \
                     (faulty {:#b}, broken {}, dead {:?})",
                    rec.op,
                    rec.lba,
                    rec.blocks,
                    self.state.faulty(),
                    self.broken(),
                    self.members.iter().map(|m| m.dead).collect::<Vec<_>>()
                ));
            }
        }
        match rec.op {
            IoType::Read if status == IoStatus::Success => {
                let buf = buf.ok_or("read completed without its buffer")?;
                let mut tmp = vec![0u8; self.bs];
                for (i, b) in range.enumerate() {
                    let data = &buf[i * self.bs..(i + 1) * self.bs];
                    self.block_ok(b, &rec.snap[i], data, &mut tmp)?;
                }
                self.out.reads_verified += 1;
                self.out.blocks_verified += rec.blocks;
            }
            IoType::Write | IoType::WriteZeroes | IoType::Unmap => {
                for b in range {
                    let s = &mut self.blocks[b];
                    debug_assert_eq!(s.pending, Some(rec.id));
                    s.pending = None;
                    if status == IoStatus::Success {
                        s.cur = rec.id;
                        s.alt = None;
                    } else {
                        s.alt = Some(rec.id);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn redundancy(&self) -> usize {
        match self.geom.level() {
            Level::Raid10 => 1,
            _ => self.geom.redundancy(),
        }
    }

    /// After the run: read back the whole array with faults off, then check
    /// that the members agree with each other.
    fn final_check(&mut self) -> Result<(), String> {
        self.faults_on = false;
        // Let every channel see the last state.
        while self.meta_pending != 0 {
            self.meta_commit();
        }
        while self.bcast.iter().any(|q| !q.is_empty()) {
            for ch in 0..self.channels.len() {
                if let Some(b) = self.bcast[ch].pop_front() {
                    self.deliver(ch, b)?;
                }
            }
        }
        if !self.state.offline {
            let size = self.geom.array_blocks();
            let chunk = self.sc.max_blocks.min(size);
            let mut lba = 0;
            while lba < size {
                let blocks = chunk.min(size - lba);
                let tag = self.next_tag;
                self.next_tag += 1;
                let range = lba as usize..(lba + blocks) as usize;
                self.parents.insert(
                    tag,
                    ParentRec {
                        read_errors: 0,
                        op: IoType::Read,
                        lba,
                        blocks,
                        id: 0,
                        snap: self.blocks[range].to_vec(),
                        final_check: true,
                    },
                );
                self.per_channel[0] += 1;
                let io = ParentIo {
                    tag,
                    op: IoType::Read,
                    lba,
                    blocks,
                    fua: false,
                    buf: Some(vec![0x5a; blocks as usize * self.bs]),
                };
                if let Err(Busy(io)) = self.channels[0].submit(io) {
                    self.retry[0].push_back(io);
                }
                self.drain(0)?;
                while !self.parents.is_empty() {
                    self.step += 1;
                    if self.inflight.is_empty() {
                        self.poll_channel(0);
                        self.drain(0)?;
                        if self.inflight.is_empty() && !self.parents.is_empty() {
                            return Err("hang in the final read-back".into());
                        }
                    } else {
                        self.complete_random()?;
                    }
                }
                lba += blocks;
            }
            self.check_members()?;
        }
        self.out.steps = self.step;
        self.out.members_failed = self.state.faulty().count_ones() as usize;
        self.out.offline = self.state.offline;
        for c in &self.channels {
            let s = c.stats();
            self.out.rmw += s.rmw;
            self.out.rcw += s.rcw;
            self.out.full_stripe += s.full_stripe;
            self.out.reconstruct_reads += s.reconstruct_reads;
            self.out.read_errors_corrected += s.read_errors_corrected;
            self.out.pool_waits += s.waits_for_resources;
        }
        Ok(())
    }

    /// Copies and parity agree on every member still in service.
    fn check_members(&self) -> Result<(), String> {
        let g = &self.geom;
        let bs = self.bs;
        let alive = |m: usize| self.state.members[m] == MemberState::InSync;
        if g.level().is_parity() {
            let strip = g.strip_blocks() as usize * bs;
            for s in 0..g.stripes() {
                let map = g.stripe(s);
                let members: Vec<usize> = (0..map.ndata)
                    .map(|i| map.data[i] as usize)
                    .chain(std::iter::once(map.p as usize))
                    .chain(map.q.map(|q| q as usize))
                    .collect();
                if !members.iter().all(|&m| alive(m)) {
                    continue;
                }
                let off = map.member_lba as usize * bs;
                let strip_of = |m: usize| &self.members[m].data[off..off + strip];
                let mut order = vec![&[][..]; map.ndata];
                for i in 0..map.ndata {
                    order[map.q_slot[i] as usize] = strip_of(map.data[i] as usize);
                }
                let mut p = vec![0u8; strip];
                let mut q = vec![0u8; strip];
                if map.q.is_some() {
                    bdev_raid::parity::gen_pq(&order, &mut p, &mut q);
                } else {
                    bdev_raid::parity::xor_gen(&mut p, &order);
                }
                if p != strip_of(map.p as usize) {
                    return Err(format!("stripe {s}: P on member {} is stale", map.p));
                }
                if let Some(qm) = map.q {
                    if q != strip_of(qm as usize) {
                        return Err(format!("stripe {s}: Q on member {qm} is stale"));
                    }
                }
            }
        } else if g.copies() > 1 {
            let mut lba = 0;
            while lba < g.array_blocks() {
                let m = g.map(lba, g.array_blocks() - lba);
                let live: Vec<_> = m
                    .copies()
                    .iter()
                    .filter(|l| alive(l.member as usize))
                    .collect();
                for w in live.windows(2) {
                    let a = &self.members[w[0].member as usize].data
                        [w[0].lba as usize * bs..(w[0].lba + m.len) as usize * bs];
                    let b = &self.members[w[1].member as usize].data
                        [w[1].lba as usize * bs..(w[1].lba + m.len) as usize * bs];
                    if a != b {
                        return Err(format!(
                            "array blocks {lba}+{}: copies on members {} and {} differ",
                            m.len, w[0].member, w[1].member
                        ));
                    }
                }
                lba += m.len;
            }
        }
        Ok(())
    }
}
