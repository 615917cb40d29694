//! mdraid engine: RAID layouts, the sans-I/O per-channel data path, parity
//! kernels. No threads, no syscalls, no SPDK: hosts drive it with events and
//! carry out the actions it emits.

pub mod assemble;
pub mod bitmap;
pub mod channel;
pub mod examine;
pub mod layout;
pub mod meta;
pub mod ondisk;
pub mod parity;
pub mod state;
pub mod sync;
