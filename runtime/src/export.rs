//! NBD export server on the reactors: listeners (unix socket, TCP on
//! loopback), connections spread over the reactors and driven in poll mode
//! by the sans-I/O `mdraid_nbd::ServerConn`, requests submitted to arrays
//! on the same reactor.
//!
//! (Contract stub: the implementation lands in the next step.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::array::Array;
use crate::reactor::RuntimeHandle;

/// How an array is exported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportOptions {
    pub read_only: bool,
    pub description: Option<String>,
}

/// An export as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportView {
    pub export_name: String,
    pub bdev_name: String,
    pub size_bytes: u64,
    pub block_size: u32,
    pub read_only: bool,
    pub connections: usize,
}

/// A listener as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenerView {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export {0:?} already exists")]
    Exists(String),
    #[error("no export {0:?}")]
    NoSuchExport(String),
    #[error("no listener {0}")]
    NoSuchListener(String),
    #[error("listener {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("the export server is stopped")]
    Stopped,
}

/// The NBD export server of one daemon.
pub struct ExportServer {
    _rt: RuntimeHandle,
}

impl ExportServer {
    pub fn start(rt: &RuntimeHandle) -> Arc<ExportServer> {
        Arc::new(ExportServer { _rt: rt.clone() })
    }
    /// Listen on a unix socket (created; an existing socket file is replaced).
    pub fn add_unix_listener(&self, path: &Path) -> Result<(), ExportError> {
        let _ = path;
        todo!("export server")
    }
    /// Listen on TCP; returns the bound address (port 0 picks one).
    pub fn add_tcp_listener(&self, addr: SocketAddr) -> Result<SocketAddr, ExportError> {
        let _ = addr;
        todo!("export server")
    }
    pub fn remove_listener(&self, which: &ListenerView) -> Result<(), ExportError> {
        let _ = which;
        todo!("export server")
    }
    pub fn listeners(&self) -> Vec<ListenerView> {
        todo!("export server")
    }
    /// Export `array` as `name`.
    pub fn add_export(
        &self,
        name: &str,
        array: Arc<Array>,
        opts: ExportOptions,
    ) -> Result<(), ExportError> {
        let _ = (name, array, opts);
        todo!("export server")
    }
    /// Remove an export, closing its connections after in-flight requests end.
    pub fn remove_export(&self, name: &str) -> Result<(), ExportError> {
        let _ = name;
        todo!("export server")
    }
    pub fn exports(&self) -> Vec<ExportView> {
        todo!("export server")
    }
    /// Whether `array` (by name) is exported (an exported array cannot be deleted).
    pub fn exports_array(&self, array_name: &str) -> bool {
        let _ = array_name;
        todo!("export server")
    }
    /// Stop accepting, let in-flight requests finish, close everything.
    pub fn stop(&self) {
        todo!("export server")
    }
}
