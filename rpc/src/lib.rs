//! mdraid's JSON-RPC, shared by every host (the embedded daemon and the
//! SPDK module): SPDK-compatible framing, typed params and results for
//! every method, one dispatch, and SPDK-format config files.
//!
//! - [`framing`]: sans-I/O stream decoder ([`Decoder`]) and response
//!   encoder, framed exactly as SPDK's JSON-RPC server frames them, so
//!   SPDK's Python client (`spdk` on PyPI) talks to us unchanged.
//! - [`params`], [`types`], [`results`]: serde types with SPDK's names and
//!   defaults; decoding errors are `-32602` naming the field
//!   (`bdev_mdraid_create: field `strip_size_kb`: expected u32, got a string`).
//! - [`method`]: the method table ([`Method`]) and decoded calls ([`Call`]).
//! - [`dispatch`]: the [`Host`] trait and [`Connection`], which turns bytes
//!   read into bytes to write.
//! - [`config`]: load and save `{"subsystems":[{"subsystem":"bdev","config":[..]}]}`.
//!
//! ```
//! use mdraid_rpc::{Call, Connection, ConnState, Host, RpcError};
//! use serde_json::{json, Value};
//!
//! struct Daemon;
//! impl Host for Daemon {
//!     fn call(&mut self, call: Call) -> Result<Value, RpcError> {
//!         match call {
//!             Call::BdevMallocCreate(p) => Ok(json!(p.name.map(|n| n.into_string()).unwrap_or("Malloc0".into()))),
//!             _ => Err(RpcError::method_not_found()),
//!         }
//!     }
//! }
//!
//! let mut conn = Connection::new();
//! let mut out = Vec::new();
//! let req = br#"{"jsonrpc":"2.0","id":1,"method":"bdev_malloc_create","params":{"name":"m0","num_blocks":8,"block_size":512}}"#;
//! assert_eq!(conn.feed(&mut Daemon, req, &mut out), ConnState::Open);
//! assert_eq!(out, b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":\"m0\"}\n");
//! ```

pub mod config;
pub mod dispatch;
pub mod error;
pub mod framing;
pub mod method;
pub mod params;
pub mod plan;
pub mod results;
pub mod types;

pub use config::{
    apply_config, build_document, load_config, parse_config, ConfigError, LoadedConfig,
};
pub use dispatch::{call_method, handle_call, handle_request, reply, ConnState, Connection, Host};
pub use error::{errno, RpcError};
pub use framing::{Decoder, Frame, Incoming, Request, Response};
pub use method::{Call, Method, Subsystem};
