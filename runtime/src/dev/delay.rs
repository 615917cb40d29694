//! Latency injection (SPDK's `bdev_delay`, module/bdev/delay/vbdev_delay.c).
//!
//! Wraps a base device. Reads and writes go to the base at once; when the
//! base completes one, its completion is held for the configured latency
//! (average, or the p99 latency for one I/O in a hundred, chosen at
//! submit), then reported by the channel's `poll`. Each of the four
//! classes (avg/p99 × read/write) is a FIFO checked from its head, as in
//! SPDK, so lowering a latency while I/O is held delays newer I/O behind
//! older. Other I/O types are not delayed. Latencies are in microseconds
//! and can be changed while running ([`DelayDevice::update_latency`]).

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{DevChannel, DevError, DevIo, DevOp, DevStatus, Device, DeviceKind, NoMem, Uuid};
use crate::reactor::Reactor;

/// One of the four latencies (`latency_type` of `bdev_delay_update_latency`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatencyType {
    AvgRead = 0,
    P99Read = 1,
    AvgWrite = 2,
    P99Write = 3,
}

impl LatencyType {
    pub fn parse(s: &str) -> Option<LatencyType> {
        Some(match s {
            "avg_read" => LatencyType::AvgRead,
            "p99_read" => LatencyType::P99Read,
            "avg_write" => LatencyType::AvgWrite,
            "p99_write" => LatencyType::P99Write,
            _ => return None,
        })
    }
}

/// Parameters of `bdev_delay_create` (microseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latencies {
    pub avg_read_us: u64,
    pub p99_read_us: u64,
    pub avg_write_us: u64,
    pub p99_write_us: u64,
}

pub struct DelayDevice {
    name: String,
    base: Arc<dyn Device>,
    uuid: Uuid,
    lat: Arc<[AtomicU64; 4]>,
}

impl DelayDevice {
    pub fn new(
        name: impl Into<String>,
        base: Arc<dyn Device>,
        lat: Latencies,
        uuid: Option<Uuid>,
    ) -> Result<Arc<DelayDevice>, DevError> {
        let name = name.into();
        if name.is_empty() {
            return Err(DevError::Invalid("name must not be empty".into()));
        }
        if lat.p99_read_us < lat.avg_read_us || lat.p99_write_us < lat.avg_write_us {
            return Err(DevError::Invalid(
                "p99 latency must not be smaller than the average latency".into(),
            ));
        }
        Ok(Arc::new(DelayDevice {
            name,
            base,
            uuid: uuid.unwrap_or_else(Uuid::random),
            lat: Arc::new([
                AtomicU64::new(lat.avg_read_us),
                AtomicU64::new(lat.p99_read_us),
                AtomicU64::new(lat.avg_write_us),
                AtomicU64::new(lat.p99_write_us),
            ]),
        }))
    }

    pub fn base(&self) -> &Arc<dyn Device> {
        &self.base
    }

    pub fn latencies(&self) -> Latencies {
        let l = |i: usize| self.lat[i].load(Ordering::Relaxed);
        Latencies {
            avg_read_us: l(0),
            p99_read_us: l(1),
            avg_write_us: l(2),
            p99_write_us: l(3),
        }
    }

    /// Change one latency; applies to I/O completing from now on.
    pub fn update_latency(&self, t: LatencyType, us: u64) -> Result<(), DevError> {
        let cur = self.latencies();
        let ok = match t {
            LatencyType::AvgRead => us <= cur.p99_read_us,
            LatencyType::P99Read => us >= cur.avg_read_us,
            LatencyType::AvgWrite => us <= cur.p99_write_us,
            LatencyType::P99Write => us >= cur.avg_write_us,
        };
        if !ok {
            return Err(DevError::Invalid(
                "p99 latency must not be smaller than the average latency".into(),
            ));
        }
        self.lat[t as usize].store(us, Ordering::Relaxed);
        Ok(())
    }
}

impl Device for DelayDevice {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &str {
        "delay"
    }
    fn block_size(&self) -> u32 {
        self.base.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.base.num_blocks()
    }
    fn uuid(&self) -> Uuid {
        self.uuid
    }
    fn kind(&self) -> DeviceKind {
        let l = self.latencies();
        DeviceKind::Delay {
            base: self.base.name().to_string(),
            latencies_us: [l.avg_read_us, l.p99_read_us, l.avg_write_us, l.p99_write_us],
        }
    }
    fn supports(&self, op: DevOp) -> bool {
        self.base.supports(op)
    }
    fn create_channel(&self, r: &mut Reactor) -> Result<Box<dyn DevChannel>, DevError> {
        let base = self.base.create_channel(r)?;
        Ok(Box::new(DelayChannel {
            lat: self.lat.clone(),
            base,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (r.id() as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
            slab: Vec::with_capacity(256),
            free: Vec::with_capacity(256),
            held: Default::default(),
            passthrough: 0,
        }))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Delay class of an I/O at the base (index into the latencies), or none.
const NO_DELAY: u8 = u8::MAX;

struct DelayChannel {
    lat: Arc<[AtomicU64; 4]>,
    base: Box<dyn DevChannel>,
    rng: u64,
    /// I/O at the base: the caller's token and delay class.
    slab: Vec<Option<(u64, u8)>>,
    free: Vec<u32>,
    /// Completed at the base, waiting: due time, caller's token, status.
    held: [VecDeque<(Instant, u64, DevStatus)>; 4],
    /// Slab entries in use.
    passthrough: usize,
}

impl DelayChannel {
    fn p99(&mut self) -> bool {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D).is_multiple_of(100)
    }
}

impl DevChannel for DelayChannel {
    fn submit(&mut self, r: &mut Reactor, mut io: DevIo) -> Result<(), NoMem> {
        let class = match io.op {
            DevOp::Read => {
                if self.p99() {
                    LatencyType::P99Read as u8
                } else {
                    LatencyType::AvgRead as u8
                }
            }
            DevOp::Write => {
                if self.p99() {
                    LatencyType::P99Write as u8
                } else {
                    LatencyType::AvgWrite as u8
                }
            }
            _ => NO_DELAY,
        };
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slab.push(None);
                (self.slab.len() - 1) as u32
            }
        };
        self.slab[idx as usize] = Some((io.token, class));
        io.token = idx as u64;
        match self.base.submit(r, io) {
            Ok(()) => {
                self.passthrough += 1;
                Ok(())
            }
            Err(e) => {
                self.slab[idx as usize] = None;
                self.free.push(idx);
                Err(e)
            }
        }
    }

    fn poll(&mut self, r: &mut Reactor, done: &mut dyn FnMut(u64, DevStatus)) -> usize {
        let mut n = 0;
        let DelayChannel {
            lat,
            base,
            slab,
            free,
            held,
            passthrough,
            ..
        } = self;
        let mut now: Option<Instant> = None;
        base.poll(r, &mut |t, s| {
            let (token, class) = slab[t as usize].take().expect("delay slab entry");
            free.push(t as u32);
            *passthrough -= 1;
            if class == NO_DELAY || s == DevStatus::NoMem {
                done(token, s);
                n += 1;
            } else {
                let at = *now.get_or_insert_with(Instant::now);
                let us = lat[class as usize].load(Ordering::Relaxed);
                held[class as usize].push_back((at + Duration::from_micros(us), token, s));
            }
        });
        if held.iter().any(|q| !q.is_empty()) {
            let at = now.unwrap_or_else(Instant::now);
            for q in held.iter_mut() {
                while q.front().is_some_and(|e| e.0 <= at) {
                    let (_, t, s) = q.pop_front().expect("front");
                    done(t, s);
                    n += 1;
                }
            }
        }
        n
    }

    fn outstanding(&self) -> usize {
        self.passthrough + self.held.iter().map(|q| q.len()).sum::<usize>()
    }
}
