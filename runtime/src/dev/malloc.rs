//! Memory-backed device (SPDK's `bdev_malloc_create`).
//!
//! The memory is shared by every reactor. It is stored as `AtomicU64`
//! words accessed with relaxed loads and stores (plain moves on x86-64), so
//! concurrent channels need no lock and there is no data race in Rust's
//! sense; overlapping concurrent I/O has no defined order, as on a disk.
//! The data is copied at submit; the completion is reported by the next
//! `poll`. Unmap and write-zeroes store zeros (SPDK's malloc does the same).

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{
    check_io, DevChannel, DevError, DevIo, DevOp, DevStatus, Device, DeviceKind, NoMem, Uuid,
};
use crate::reactor::Reactor;

pub struct MallocDevice {
    name: String,
    block_size: u32,
    num_blocks: u64,
    uuid: Uuid,
    words: Arc<[AtomicU64]>,
}

impl MallocDevice {
    /// `num_blocks` blocks of `block_size` bytes, zeroed.
    pub fn new(
        name: impl Into<String>,
        num_blocks: u64,
        block_size: u32,
        uuid: Option<Uuid>,
    ) -> Result<Arc<MallocDevice>, DevError> {
        let name = name.into();
        if name.is_empty() {
            return Err(DevError::Invalid("name must not be empty".into()));
        }
        if block_size < 512 || !block_size.is_power_of_two() || block_size > 65536 {
            return Err(DevError::Invalid(format!(
                "block_size {block_size} is not a power of two between 512 and 65536"
            )));
        }
        if num_blocks == 0 {
            return Err(DevError::Invalid("num_blocks must be positive".into()));
        }
        let bytes = num_blocks
            .checked_mul(block_size as u64)
            .filter(|b| *b <= 1 << 40)
            .ok_or_else(|| DevError::Invalid("malloc bdev larger than 1 TiB".into()))?;
        let words: Arc<[AtomicU64]> = (0..bytes / 8).map(|_| AtomicU64::new(0)).collect();
        Ok(Arc::new(MallocDevice {
            name,
            block_size,
            num_blocks,
            uuid: uuid.unwrap_or_else(Uuid::random),
            words,
        }))
    }
}

impl Device for MallocDevice {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &str {
        "Malloc disk"
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    fn uuid(&self) -> Uuid {
        self.uuid
    }
    fn kind(&self) -> DeviceKind {
        DeviceKind::Malloc
    }
    fn supports(&self, _op: DevOp) -> bool {
        true
    }
    fn create_channel(&self, _r: &mut Reactor) -> Result<Box<dyn DevChannel>, DevError> {
        Ok(Box::new(MallocChannel {
            words: self.words.clone(),
            block_size: self.block_size,
            num_blocks: self.num_blocks,
            done: Vec::with_capacity(256),
        }))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct MallocChannel {
    words: Arc<[AtomicU64]>,
    block_size: u32,
    num_blocks: u64,
    done: Vec<(u64, DevStatus)>,
}

impl DevChannel for MallocChannel {
    fn submit(&mut self, _r: &mut Reactor, mut io: DevIo) -> Result<(), NoMem> {
        if check_io(&io, self.block_size, self.num_blocks).is_err() {
            self.done.push((io.token, DevStatus::Error));
            return Ok(());
        }
        let w0 = (io.lba * self.block_size as u64 / 8) as usize;
        let nw = (io.blocks * self.block_size as u64 / 8) as usize;
        match io.op {
            DevOp::Read => {
                let words = &self.words[w0..w0 + nw];
                for (w, c) in words.iter().zip(io.buf.bytes_mut().chunks_exact_mut(8)) {
                    c.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
                }
            }
            DevOp::Write => {
                let words = &self.words[w0..w0 + nw];
                for (w, c) in words.iter().zip(io.buf.bytes().chunks_exact(8)) {
                    w.store(
                        u64::from_ne_bytes(c.try_into().expect("8-byte chunk")),
                        Ordering::Relaxed,
                    );
                }
            }
            DevOp::Unmap | DevOp::WriteZeroes => {
                for w in &self.words[w0..w0 + nw] {
                    w.store(0, Ordering::Relaxed);
                }
            }
            DevOp::Flush | DevOp::Reset => {}
        }
        self.done.push((io.token, DevStatus::Success));
        Ok(())
    }

    fn poll(&mut self, _r: &mut Reactor, done: &mut dyn FnMut(u64, DevStatus)) -> usize {
        let n = self.done.len();
        for (t, s) in self.done.drain(..) {
            done(t, s);
        }
        n
    }

    fn outstanding(&self) -> usize {
        self.done.len()
    }
}
