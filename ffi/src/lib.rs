//! mdraid's SPDK host: the `mdraid` bdev module and its `bdev_mdraid_*`
//! RPCs, built as a cdylib that stock shared-library SPDK apps load with
//! `LD_PRELOAD` (bdevperf, spdk_tgt), and linked into the `mdraid_tgt`
//! app (`src/bin/mdraid_tgt.rs`).
//!
//! Without SPDK (no `SPDK_DIR`, nothing found by pkg-config) only the
//! SPDK-free parts build ([`plan`]); `build.rs` says so in a warning.
//!
//! - [`sys`]: bindgen bindings to SPDK's public headers and the C shim;
//! - [`spdk`]: safe wrappers (threads, pollers, channels, bdev I/O, DMA
//!   buffers, JSON) and the panic guards of every `extern "C"` callback;
//! - [`array`]: an array's io_device, channels and data path;
//! - [`meta`]: the metadata host on the array's metadata thread;
//! - [`rpc`]: `bdev_mdraid_create` / `_delete` / `_get_bdevs` /
//!   `_add_base_bdev` / `_remove_base_bdev` / `_set_write_mostly` /
//!   `_examine` / `_set_options` / `_sync_action`;
//! - [`probe`]: reading a bdev's md metadata (superblock and bitmap);
//! - [`examine`]: arrays assembled by themselves when their members appear;
//! - [`sync`]: resync, rebuild and check/repair passes;
//! - [`module`]: the bdev module and the registry of arrays.

pub mod plan;

// The SPDK host is left out of the crate's unit tests (an executable that
// does not link SPDK, see Cargo.toml); the cdylib and `mdraid_tgt` have it.

#[cfg(all(mdraid_spdk, not(test)))]
pub mod sys;

#[cfg(all(mdraid_spdk, not(test)))]
pub mod spdk;

#[cfg(all(mdraid_spdk, not(test)))]
pub mod array;
#[cfg(all(mdraid_spdk, not(test)))]
pub mod examine;
#[cfg(all(mdraid_spdk, not(test)))]
pub mod meta;
#[cfg(all(mdraid_spdk, not(test)))]
pub mod module;
#[cfg(all(mdraid_spdk, not(test)))]
pub mod probe;
#[cfg(all(mdraid_spdk, not(test)))]
pub mod rpc;
#[cfg(all(mdraid_spdk, not(test)))]
pub mod sync;
