//! Base devices with per-reactor channels: SPDK's bdev / io_channel model.
//!
//! A [`Device`] is shared by every reactor (`Arc<dyn Device>`); each reactor
//! that does I/O on it creates its own [`DevChannel`] with
//! [`Device::create_channel`], and uses it only there, so a channel needs no
//! lock. I/O is submitted with [`DevChannel::submit`] and a `u64` token; the
//! result comes back, never from inside `submit`, from
//! [`DevChannel::poll`], which the channel's owner calls on every turn of
//! its reactor poller. `submit` may refuse with [`NoMem`] and a completion
//! may be [`DevStatus::NoMem`]: both mean "try again later", never failure
//! (SPDK's `-ENOMEM` / `SPDK_BDEV_IO_STATUS_NOMEM`).
//!
//! Implementations: [`file`](mod@file) (files and block devices through the
//! reactor's io_uring), [`malloc`] (memory), and the wrappers [`error`]
//! (SPDK's bdev_error) and [`delay`] (SPDK's bdev_delay).

pub mod delay;
pub mod error;
pub mod file;
pub mod malloc;
pub mod registry;

use std::any::Any;
use std::fmt;
use std::path::PathBuf;

use crate::buf::DevBuf;
use crate::reactor::Reactor;

/// Operations on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DevOp {
    Read,
    Write,
    Flush,
    Unmap,
    WriteZeroes,
    Reset,
}

impl DevOp {
    pub const ALL: [DevOp; 6] = [
        DevOp::Read,
        DevOp::Write,
        DevOp::Flush,
        DevOp::Unmap,
        DevOp::WriteZeroes,
        DevOp::Reset,
    ];

    /// SPDK's name of the I/O type (`bdev_get_bdevs` `supported_io_types`).
    pub fn spdk_name(self) -> &'static str {
        match self {
            DevOp::Read => "read",
            DevOp::Write => "write",
            DevOp::Flush => "flush",
            DevOp::Unmap => "unmap",
            DevOp::WriteZeroes => "write_zeroes",
            DevOp::Reset => "reset",
        }
    }

    /// Whether the op carries a data buffer.
    pub fn has_data(self) -> bool {
        matches!(self, DevOp::Read | DevOp::Write)
    }

    /// Whether the op addresses a block range.
    pub fn has_range(self) -> bool {
        !matches!(self, DevOp::Flush | DevOp::Reset)
    }
}

/// One device I/O.
#[derive(Clone, Copy, Debug)]
pub struct DevIo {
    pub op: DevOp,
    /// First block.
    pub lba: u64,
    pub blocks: u64,
    /// Write (or write-zeroes) is durable when it completes.
    pub fua: bool,
    /// `blocks * block_size` bytes for reads and writes, empty otherwise.
    pub buf: DevBuf,
    /// The submitter's identifier, handed back on completion.
    pub token: u64,
}

/// How a device I/O ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevStatus {
    Success,
    Error,
    /// Out of resources: submit it again later.
    NoMem,
}

/// `submit` refused for lack of resources (a ring or table full): try again
/// later. Nothing was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoMem;

/// A 128-bit UUID (RFC 4122 text form).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// A random (version 4) UUID.
    pub fn random() -> Uuid {
        let mut b = [0u8; 16];
        fill_random(&mut b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(b)
    }

    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// Parse `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (hyphens optional).
    pub fn parse(s: &str) -> Option<Uuid> {
        let hex: Vec<u8> = s.bytes().filter(|c| *c != b'-').collect();
        if hex.len() != 32 || s.len() != 32 && s.len() != 36 {
            return None;
        }
        let mut b = [0u8; 16];
        for (i, pair) in hex.chunks(2).enumerate() {
            let t = std::str::from_utf8(pair).ok()?;
            b[i] = u8::from_str_radix(t, 16).ok()?;
        }
        Some(Uuid(b))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, x) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{x:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uuid({self})")
    }
}

fn fill_random(out: &mut [u8]) {
    use std::io::Read;
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(out))
        .is_ok();
    if !ok {
        // Fall back to the hasher's per-process random keys plus the clock.
        use std::hash::{BuildHasher, Hasher};
        let mut x = 0u64;
        for chunk in out.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(x);
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            x = h.finish();
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// What a device is, with what it was created from (for `bdev_get_bdevs`
/// and `save_config`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Malloc,
    /// A file or block device through io_uring.
    File {
        path: PathBuf,
        /// Opened with `O_DIRECT` (false: buffered fallback).
        direct: bool,
        block_device: bool,
    },
    Error {
        base: String,
    },
    Delay {
        base: String,
        /// avg read, p99 read, avg write, p99 write, in microseconds.
        latencies_us: [u64; 4],
    },
}

/// Why a device could not be created or used.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {err}")]
    Io {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("reactor {0} has no io_uring")]
    NoUring(usize),
    #[error("bdev {0} not found")]
    NotFound(String),
    #[error("bdev {0} already exists")]
    Exists(String),
    #[error("bdev {name} is claimed by {by}")]
    Claimed { name: String, by: String },
    /// The file is open as another bdev, here or in another process.
    #[error("{0}: already open as another bdev (of this or another mdraid process); a file backs one bdev at a time")]
    InUse(PathBuf),
}

impl DevError {
    /// The errno SPDK would report (for JSON-RPC error codes).
    pub fn errno(&self) -> i32 {
        match self {
            DevError::Invalid(_) => libc::EINVAL,
            DevError::Io { err, .. } => err.raw_os_error().unwrap_or(libc::EIO),
            DevError::NoUring(_) => libc::ENOTSUP,
            DevError::NotFound(_) => libc::ENODEV,
            DevError::Exists(_) => libc::EEXIST,
            DevError::Claimed { .. } | DevError::InUse(_) => libc::EBUSY,
        }
    }
}

/// A block device, shared by all reactors.
pub trait Device: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// SPDK's `product_name`.
    fn product_name(&self) -> &str;
    fn block_size(&self) -> u32;
    fn num_blocks(&self) -> u64;
    fn uuid(&self) -> Uuid;
    fn kind(&self) -> DeviceKind;
    fn supports(&self, op: DevOp) -> bool;
    /// A channel for use on reactor `r` only.
    fn create_channel(&self, r: &mut Reactor) -> Result<Box<dyn DevChannel>, DevError>;
    /// For downcasting to the concrete device (error injection, latency
    /// updates).
    fn as_any(&self) -> &dyn Any;
}

/// One reactor's handle on a device.
pub trait DevChannel {
    /// Start `io`. Its completion is reported by a later [`DevChannel::poll`].
    fn submit(&mut self, r: &mut Reactor, io: DevIo) -> Result<(), NoMem>;
    /// Report finished I/O through `done(token, status)`; returns how many.
    fn poll(&mut self, r: &mut Reactor, done: &mut dyn FnMut(u64, DevStatus)) -> usize;
    /// I/O submitted and not yet reported.
    fn outstanding(&self) -> usize;
}

/// Checks every device does on submit: the range fits and the buffer
/// matches. `Err` means complete with [`DevStatus::Error`].
pub(crate) fn check_io(io: &DevIo, block_size: u32, num_blocks: u64) -> Result<(), ()> {
    if io.op.has_range()
        && (io.blocks == 0 || io.lba.checked_add(io.blocks).is_none_or(|e| e > num_blocks))
    {
        return Err(());
    }
    if io.op.has_data() && io.buf.len() as u64 != io.blocks * block_size as u64 {
        return Err(());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_roundtrip() {
        let u = Uuid::random();
        let s = u.to_string();
        assert_eq!(s.len(), 36);
        assert_eq!(Uuid::parse(&s), Some(u));
        assert_eq!(&s[14..15], "4");
        assert_eq!(Uuid::parse("nope"), None);
        assert!(!u.is_nil());
    }
}
