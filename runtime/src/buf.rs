//! I/O buffers.
//!
//! [`AlignedBuf`] is the host's buffer type: 4 KiB aligned (what `O_DIRECT`
//! needs), contiguous, and its bytes never move while the value is moved
//! around, so it is the engine's `IoBuf`. It is built from a plain `Vec<u8>`
//! over-allocated by up to one alignment unit, so it needs no `unsafe`.
//!
//! [`DevBuf`] is how a device receives the memory of one I/O: a pointer and a
//! length whose validity the *submitter* vouches for (see [`DevBuf::new`]).
//!
//! [`BufPool`] is a per-reactor free list by power-of-two size class, so the
//! I/O path reuses buffers instead of allocating.

use std::fmt;

/// Alignment of every [`AlignedBuf`]: the largest logical block size in use.
pub const BUF_ALIGN: usize = 4096;

/// A zero-initialised byte buffer whose first byte is [`BUF_ALIGN`]-aligned.
pub struct AlignedBuf {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn new(len: usize) -> AlignedBuf {
        let v = vec![0u8; len + BUF_ALIGN - 1];
        let addr = v.as_ptr() as usize;
        let off = (BUF_ALIGN - addr % BUF_ALIGN) % BUF_ALIGN;
        AlignedBuf { v, off, len }
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::new(data.len());
        b.as_mut().copy_from_slice(data);
        b
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the buffer can hold without reallocating (see [`AlignedBuf::set_len`]).
    pub fn capacity(&self) -> usize {
        self.v.len() - self.off
    }

    /// Shrink or grow the visible length within the capacity (pool reuse).
    /// Panics past the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity(), "AlignedBuf::set_len past capacity");
        self.len = len;
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        &self.v[self.off..self.off + self.len]
    }
}

impl AsMut<[u8]> for AlignedBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + self.len]
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

/// The memory of one device I/O: a raw pointer and a length.
///
/// Devices read from it (writes) or fill it (reads) until they report the
/// I/O complete; after that they never touch it again.
#[derive(Clone, Copy)]
pub struct DevBuf {
    ptr: *mut u8,
    len: usize,
}

impl DevBuf {
    /// No memory (flush, unmap, write-zeroes, reset).
    pub const EMPTY: DevBuf = DevBuf {
        ptr: std::ptr::null_mut(),
        len: 0,
    };

    /// Describe `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// From this call until the device reports the I/O complete (or refuses
    /// it with `NoMem`), `ptr..ptr+len` must stay allocated and must not be
    /// written by anyone else; for a read, must not be read by anyone else
    /// either. Several *write* I/Os may share the same memory (a mirror).
    pub unsafe fn new(ptr: *mut u8, len: usize) -> DevBuf {
        DevBuf { ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Raw address, for the kernel (io_uring).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The bytes, to read from (writes).
    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `DevBuf::new`'s contract keeps the memory valid and free of
        // writers while the I/O is in flight, which is when devices call this.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The bytes, to fill (reads) or to corrupt (error injection).
    #[allow(clippy::mut_from_ref)]
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: `DevBuf::new`'s contract gives the device exclusive use of
        // the memory of a read while it is in flight.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl fmt::Debug for DevBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DevBuf({:p}, {})", self.ptr, self.len)
    }
}

/// Smallest pooled class: 4 KiB.
const MIN_CLASS: u32 = 12;
/// Largest pooled class: 4 MiB.
const MAX_CLASS: u32 = 22;

/// A per-reactor pool of [`AlignedBuf`]s by power-of-two size class
/// (4 KiB .. 4 MiB). Not thread-safe and needs no lock: it lives on one
/// reactor. `get` returns a pooled buffer when one is free and allocates
/// otherwise; `put` keeps at most `max_per_class` buffers of each class.
pub struct BufPool {
    classes: Vec<Vec<AlignedBuf>>,
    max_per_class: usize,
    allocated: u64,
}

impl BufPool {
    pub fn new(max_per_class: usize) -> BufPool {
        BufPool {
            classes: (MIN_CLASS..=MAX_CLASS)
                .map(|_| Vec::with_capacity(max_per_class))
                .collect(),
            max_per_class,
            allocated: 0,
        }
    }

    fn class(len: usize) -> Option<usize> {
        let c = len
            .max(1)
            .next_power_of_two()
            .trailing_zeros()
            .max(MIN_CLASS);
        (c <= MAX_CLASS).then(|| (c - MIN_CLASS) as usize)
    }

    /// Pre-allocate `count` buffers of `len` bytes' class.
    pub fn prefill(&mut self, len: usize, count: usize) {
        if let Some(c) = Self::class(len) {
            while self.classes[c].len() < count.min(self.max_per_class) {
                self.classes[c].push(AlignedBuf::new(1 << (c as u32 + MIN_CLASS)));
            }
        }
    }

    /// A buffer of exactly `len` visible bytes (contents unspecified).
    pub fn get(&mut self, len: usize) -> AlignedBuf {
        match Self::class(len) {
            Some(c) => match self.classes[c].pop() {
                Some(mut b) => {
                    b.set_len(len);
                    b
                }
                None => {
                    self.allocated += 1;
                    let mut b = AlignedBuf::new(1 << (c as u32 + MIN_CLASS));
                    b.set_len(len);
                    b
                }
            },
            None => {
                self.allocated += 1;
                AlignedBuf::new(len)
            }
        }
    }

    /// Give a buffer back.
    pub fn put(&mut self, mut b: AlignedBuf) {
        let cap = b.capacity();
        if cap < 1 << MIN_CLASS {
            return;
        }
        // The largest class the capacity covers.
        let log = usize::BITS - 1 - cap.leading_zeros();
        if log > MAX_CLASS {
            return;
        }
        let c = (log - MIN_CLASS) as usize;
        if self.classes[c].len() < self.max_per_class {
            b.set_len(1 << log);
            self.classes[c].push(b);
        }
    }

    /// Buffers allocated because the pool was empty (a sizing hint).
    pub fn allocations(&self) -> u64 {
        self.allocated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned() {
        for len in [0, 1, 512, 4096, 12345] {
            let b = AlignedBuf::new(len);
            assert_eq!(b.as_ref().len(), len);
            if len > 0 {
                assert_eq!(b.as_ref().as_ptr() as usize % BUF_ALIGN, 0);
            }
        }
    }

    #[test]
    fn pool_reuses() {
        let mut p = BufPool::new(4);
        let b = p.get(4096);
        let addr = b.as_ref().as_ptr();
        p.put(b);
        let b = p.get(3000);
        assert_eq!(b.as_ref().as_ptr(), addr);
        assert_eq!(b.len(), 3000);
        assert_eq!(p.allocations(), 1);
    }
}
