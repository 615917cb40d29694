//! Files and block devices through the reactor's io_uring (SPDK's
//! `bdev_aio_create` / `bdev_uring_create` are both served by this).
//!
//! Opened with `O_DIRECT`; when the file system refuses it (at `open`, or at
//! a one-block probe read — older tmpfs) the device falls back to buffered
//! I/O and logs a warning, and [`DeviceKind::File`] says `direct: false`.
//! With `O_DIRECT` the array's buffers must be aligned to the device's
//! logical block size: they are ([`crate::buf::AlignedBuf`], 4 KiB).
//! See [`crate::uring`] for how each operation (FUA, flush, unmap,
//! write-zeroes) maps onto the ring.

use std::any::Any;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{
    check_io, DevChannel, DevError, DevIo, DevOp, DevStatus, Device, DeviceKind, NoMem, Uuid,
};
use crate::buf::AlignedBuf;
use crate::reactor::Reactor;
use crate::uring::{FileShared, FileTarget, ZERO_PUNCH, ZERO_RANGE, ZERO_WRITE};

/// A file or block device.
pub struct FileDevice {
    name: String,
    path: PathBuf,
    product: &'static str,
    block_size: u32,
    num_blocks: u64,
    uuid: Uuid,
    direct: bool,
    block_device: bool,
    shared: Arc<FileShared>,
}

/// How to open a [`FileDevice`].
#[derive(Clone, Debug)]
pub struct FileOptions {
    pub name: String,
    pub path: PathBuf,
    /// Block size; `None`: the device's logical block size (block devices)
    /// or 512 (files).
    pub block_size: Option<u32>,
    pub uuid: Option<Uuid>,
    /// `product_name` to report ("AIO disk", "URING disk").
    pub product: &'static str,
}

impl FileOptions {
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> FileOptions {
        FileOptions {
            name: name.into(),
            path: path.into(),
            block_size: None,
            uuid: None,
            product: "AIO disk",
        }
    }
}

/// How long opening a file waits for another holder to let it go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn io_err(path: &Path, err: std::io::Error) -> DevError {
    DevError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// Open read-write; a block device exclusively (`O_EXCL`: not while
/// mounted or held by md, as mdadm opens members).
fn open(path: &Path, direct: bool, block_device: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    let mut flags = 0;
    if direct {
        flags |= libc::O_DIRECT;
    }
    if block_device {
        flags |= libc::O_EXCL;
    }
    o.custom_flags(flags);
    o.open(path)
}

/// Logical block size of a block device, from sysfs.
fn logical_block_size(md: &std::fs::Metadata) -> Option<u32> {
    let rdev = md.rdev();
    let (maj, min) = (libc::major(rdev), libc::minor(rdev));
    let p = format!("/sys/dev/block/{maj}:{min}/queue/logical_block_size");
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

impl FileDevice {
    pub fn open(opts: FileOptions) -> Result<Arc<FileDevice>, DevError> {
        let path = opts.path.clone();
        if opts.name.is_empty() {
            return Err(DevError::Invalid("name must not be empty".into()));
        }
        let md = std::fs::metadata(&path).map_err(|e| io_err(&path, e))?;
        let block_device = md.file_type().is_block_device();
        if !block_device && !md.file_type().is_file() {
            return Err(DevError::Invalid(format!(
                "{}: not a regular file or block device",
                path.display()
            )));
        }
        let native = if block_device {
            logical_block_size(&md).unwrap_or(512)
        } else {
            512
        };
        let bs = opts.block_size.unwrap_or(native);
        if bs == 0 || !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
            return Err(DevError::Invalid(format!(
                "block_size {bs} is not a power of two between 512 and 65536"
            )));
        }
        if bs < native {
            return Err(DevError::Invalid(format!(
                "block_size {bs} is smaller than the device's logical block size {native}"
            )));
        }
        let (mut file, mut direct) = match open(&path, true, block_device) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(
                    "{}: O_DIRECT refused at open; using buffered I/O",
                    path.display()
                );
                (
                    open(&path, false, block_device).map_err(|e| io_err(&path, e))?,
                    false,
                )
            }
            Err(e) => return Err(io_err(&path, e)),
        };
        let size = if block_device {
            file.seek(SeekFrom::End(0)).map_err(|e| io_err(&path, e))?
        } else {
            md.len()
        };
        let num_blocks = size / bs as u64;
        if num_blocks == 0 {
            return Err(DevError::Invalid(format!(
                "{}: smaller than one block of {bs} bytes",
                path.display()
            )));
        }
        if direct {
            // Some file systems accept O_DIRECT at open and refuse the I/O.
            let mut probe = AlignedBuf::new(bs as usize);
            if let Err(e) = file.read_at(probe.as_mut(), 0) {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    tracing::warn!(
                        "{}: O_DIRECT reads refused; using buffered I/O",
                        path.display()
                    );
                    file = open(&path, false, block_device).map_err(|e| io_err(&path, e))?;
                    direct = false;
                } else {
                    return Err(io_err(&path, e));
                }
            }
        }
        // One bdev per file, across processes too: two bdevs on one file
        // would let two arrays (or both legs of one mirror) write it
        // unbeknown to each other. The lock goes with the descriptor. A
        // process that just died may hold it a little longer (its
        // io_uring's references are dropped after it exits): bounded wait.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(std::fs::TryLockError::WouldBlock) => return Err(DevError::InUse(path)),
                Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path, e)),
            }
        }
        Ok(Arc::new(FileDevice {
            name: opts.name,
            path,
            product: opts.product,
            block_size: bs,
            num_blocks,
            uuid: opts.uuid.unwrap_or_else(Uuid::random),
            direct,
            block_device,
            shared: Arc::new(FileShared::new(file)),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opened with `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// How write-zeroes is carried out now (it degrades when the file
    /// system refuses a mode; unmap uses at least punch hole).
    pub fn zeroing(&self) -> Zeroing {
        match self.shared.zero_mode.load(Ordering::Relaxed) {
            ZERO_RANGE => Zeroing::ZeroRange,
            ZERO_PUNCH => Zeroing::PunchHole,
            _ => Zeroing::WriteZeros,
        }
    }

    /// Force a zeroing strategy (e.g. write zeros where discard is slow).
    pub fn set_zeroing(&self, z: Zeroing) {
        let m = match z {
            Zeroing::ZeroRange => ZERO_RANGE,
            Zeroing::PunchHole => ZERO_PUNCH,
            Zeroing::WriteZeros => ZERO_WRITE,
        };
        self.shared.zero_mode.store(m, Ordering::Relaxed);
    }
}

/// How a file device zeroes a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zeroing {
    /// `fallocate(FALLOC_FL_ZERO_RANGE)`.
    ZeroRange,
    /// `fallocate(FALLOC_FL_PUNCH_HOLE)`.
    PunchHole,
    /// Write zeros from a zero buffer.
    WriteZeros,
}

impl Device for FileDevice {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &str {
        self.product
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
        DeviceKind::File {
            path: self.path.clone(),
            direct: self.direct,
            block_device: self.block_device,
        }
    }
    fn supports(&self, _op: DevOp) -> bool {
        true
    }
    fn create_channel(&self, r: &mut Reactor) -> Result<Box<dyn DevChannel>, DevError> {
        if r.uring().is_none() {
            return Err(DevError::NoUring(r.id()));
        }
        Ok(Box::new(FileChannel {
            target: Rc::new(FileTarget::new(self.shared.clone(), 256)),
            block_size: self.block_size,
            num_blocks: self.num_blocks,
            local: Vec::with_capacity(16),
        }))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct FileChannel {
    target: Rc<FileTarget>,
    block_size: u32,
    num_blocks: u64,
    /// Completions decided without the ring (bad requests, reset).
    local: Vec<(u64, DevStatus)>,
}

impl DevChannel for FileChannel {
    fn submit(&mut self, r: &mut Reactor, io: DevIo) -> Result<(), NoMem> {
        if check_io(&io, self.block_size, self.num_blocks).is_err() {
            self.local.push((io.token, DevStatus::Error));
            return Ok(());
        }
        if io.op == DevOp::Reset {
            self.local.push((io.token, DevStatus::Success));
            return Ok(());
        }
        let bs = self.block_size as u64;
        let Some(u) = r.uring() else {
            self.local.push((io.token, DevStatus::Error));
            return Ok(());
        };
        u.submit(
            &self.target,
            io.op,
            io.lba * bs,
            (io.blocks * bs) as usize,
            io.buf,
            io.fua,
            io.token,
        )
    }

    fn poll(&mut self, _r: &mut Reactor, done: &mut dyn FnMut(u64, DevStatus)) -> usize {
        let mut n = 0;
        for (t, s) in self.local.drain(..) {
            done(t, s);
            n += 1;
        }
        loop {
            // Do not hold the queue borrowed while calling out.
            let next = self.target.done.borrow_mut().pop_front();
            let Some((t, s)) = next else { break };
            self.target
                .outstanding
                .set(self.target.outstanding.get() - 1);
            done(t, s);
            n += 1;
        }
        n
    }

    fn outstanding(&self) -> usize {
        self.target.outstanding.get() + self.local.len()
    }
}
