//! Decode arbitrary bytes as an md v1.2 superblock and as a bitmap
//! superblock; whatever decodes must re-encode byte for byte and decode back
//! to the same value. The body is `bdev_raid::ondisk::fuzz_decode`, which the
//! crate's property tests also run on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bdev_raid::ondisk::fuzz_decode(data);
});
