//! mdraid's embedded host: reactors pinned to cores, io_uring base devices,
//! SPDK-style malloc / error / delay devices, and the array host that drives
//! the `bdev_raid` engine on every reactor. No SPDK needed.
//!
//! * [`reactor`]: [`Runtime`], [`Reactor`], messages, pollers, timers.
//! * [`dev`]: the [`Device`] / [`DevChannel`] traits and implementations.
//! * [`array`](mod@array): [`Array`], one engine channel per reactor.
//! * [`meta`]: the seam to the metadata path ([`MetaPath`]) and its
//!   in-memory stand-in.
//! * [`buf`]: [`AlignedBuf`] (the engine's `IoBuf` here) and the
//!   per-reactor [`BufPool`].
//! * [`cores`]: `-m 0x3` / `--cores 0,1` parsing.

pub mod array;
pub mod buf;
pub mod cores;
pub mod daemon;
pub mod dev;
pub mod export;
pub mod meta;
pub mod reactor;
pub mod uring;

pub use array::{
    Array, ArrayChannelRef, ArrayError, ArrayParams, IoDone, ProcessOptions, RemoveError, SyncKind,
    SyncProgress,
};
pub use buf::{AlignedBuf, BufPool, DevBuf};
pub use cores::{parse_core_list, parse_core_mask, parse_cores};
pub use dev::{DevChannel, DevError, DevIo, DevOp, DevStatus, Device, DeviceKind, NoMem, Uuid};
pub use meta::{MdMeta, MetaInit, MetaOutput, MetaPath, MetaWrite, StandInMeta};
pub use reactor::{
    Mode, Poller, PollerId, Reactor, Runtime, RuntimeConfig, RuntimeError, RuntimeHandle,
};
