//! Server side of the NBD (Network Block Device) protocol for mdraid.
//!
//! * [`ServerConn`]: a sans-I/O state machine for one connection. Feed it
//!   received bytes, send what it produces, execute the [`Request`]s it
//!   emits and answer them with [`ServerConn::reply`]. It holds at most
//!   [`ServerConn::memory_bound`] bytes whatever the client does, and
//!   applies backpressure ([`ServerConn::wants_read`]) when too many
//!   requests or too much output are pending.
//! * [`ExportCatalog`]: how the handshake finds exports.
//! * [`blocking`]: a small thread-per-connection server over unix and TCP
//!   sockets with a [`blocking::Backend`] trait and an in-memory backend,
//!   used to test against real clients (nbdinfo, qemu-io, fio).
//!
//! # Protocol
//!
//! Per NetworkBlockDevice/nbd `doc/proto.md`:
//!
//! * Fixed newstyle handshake (`NBD_FLAG_FIXED_NEWSTYLE`,
//!   `NBD_FLAG_NO_ZEROES`); oldstyle is not offered. Unknown client flags
//!   close the connection.
//! * Options: `NBD_OPT_EXPORT_NAME`, `NBD_OPT_ABORT`, `NBD_OPT_LIST`,
//!   `NBD_OPT_INFO` and `NBD_OPT_GO` (with `NBD_INFO_EXPORT` always, and
//!   `NBD_INFO_NAME`, `NBD_INFO_DESCRIPTION`, `NBD_INFO_BLOCK_SIZE` when
//!   asked). Every other option, including `NBD_OPT_STRUCTURED_REPLY`,
//!   `NBD_OPT_STARTTLS`, meta contexts and extended headers, is answered
//!   `NBD_REP_ERR_UNSUP`: the server uses simple replies only.
//! * Commands: `READ`, `WRITE` (+`FUA`), `FLUSH`, `TRIM`, `WRITE_ZEROES`
//!   (+`NO_HOLE`, +`FUA`), `DISC`. Anything else gets `EINVAL`.
//! * Errors: unknown command or flag, a command the export does not
//!   advertise, misalignment to the minimum block size, a read or write
//!   above the maximum payload, a read/trim beyond the end: `EINVAL`; a
//!   write or write-zeroes beyond the end: `ENOSPC`; a write, trim or
//!   write-zeroes on a read-only export: `EPERM`. A refused write's payload
//!   is read and discarded before the error reply. A write whose payload
//!   exceeds [`ServerConfig::max_payload`], a bad magic, unknown client
//!   flags or an unknown `NBD_OPT_EXPORT_NAME` close the connection.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod blocking;
pub mod client;
mod errno;
mod export;
pub mod proto;
mod server;

pub use errno::Errno;
pub use export::{BlockSizes, ExportCatalog, ExportInfo, StaticCatalog};
pub use server::{
    CmdFlags, Command, DisconnectReason, Event, ProtocolError, ReplyError, Request, ServerConfig,
    ServerConn, MAX_LIST_REPLY, OUTPUT_SLACK,
};
