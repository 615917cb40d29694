//! What the server needs to know about exports: the catalog trait and the
//! per-export description it returns.

use crate::proto;
use std::sync::Arc;

/// Size constraints of an export (`NBD_INFO_BLOCK_SIZE`).
///
/// The spec's defaults are `min = 1`, `preferred = 4096`, `max = 32 MiB`.
/// Requests not aligned to `min` are refused with `EINVAL`; read and write
/// requests longer than `max` are refused with `EINVAL` as well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSizes {
    /// Minimum block size: a power of two, at most 64 KiB.
    pub min: u32,
    /// Preferred block size: a power of two, at least `max(min, 512)`.
    pub preferred: u32,
    /// Maximum payload of one read or write: at least `preferred`.
    pub max: u32,
}

impl Default for BlockSizes {
    fn default() -> Self {
        BlockSizes {
            min: 1,
            preferred: 4096,
            max: proto::DEFAULT_MAX_PAYLOAD,
        }
    }
}

impl BlockSizes {
    /// Whether the values obey the spec's constraints.
    pub fn is_valid(&self) -> bool {
        self.min.is_power_of_two()
            && self.min <= 65536
            && self.preferred.is_power_of_two()
            && self.preferred >= self.min.max(512)
            && self.max >= self.preferred
    }

    /// Bring the values within the spec's constraints and cap `max` at
    /// `max_payload` (the connection's hard limit), rounding towards the
    /// stricter value so the backend's real constraint is never loosened.
    pub fn normalized(self, max_payload: u32) -> BlockSizes {
        let min = self.min.clamp(1, 65536).next_power_of_two();
        let preferred = self
            .preferred
            .max(min)
            .clamp(512, 1 << 30)
            .next_power_of_two();
        let max = self.max.min(max_payload).max(preferred);
        BlockSizes {
            min,
            preferred,
            max,
        }
    }
}

/// Description of one export, as the catalog reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    /// Canonical name (sent as `NBD_INFO_NAME` and in `NBD_OPT_LIST`).
    pub name: String,
    /// Human-readable description (`NBD_INFO_DESCRIPTION`), if any.
    pub description: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Read-only: writes, trims and write-zeroes fail with `EPERM`.
    pub read_only: bool,
    /// The backend implements flush (`NBD_FLAG_SEND_FLUSH`).
    pub can_flush: bool,
    /// The backend honours FUA on writes (`NBD_FLAG_SEND_FUA`).
    pub can_fua: bool,
    /// The backend implements trim (`NBD_FLAG_SEND_TRIM`).
    pub can_trim: bool,
    /// The backend implements write-zeroes (`NBD_FLAG_SEND_WRITE_ZEROES`).
    pub can_write_zeroes: bool,
    /// Flush/FUA effects are visible on every connection
    /// (`NBD_FLAG_CAN_MULTI_CONN`).
    pub can_multi_conn: bool,
    /// Rotational medium hint (`NBD_FLAG_ROTATIONAL`).
    pub rotational: bool,
    /// Size constraints.
    pub block_sizes: BlockSizes,
}

impl ExportInfo {
    /// A read-write export supporting flush, FUA, trim and write-zeroes,
    /// with default block sizes and no multi-conn.
    pub fn new(name: impl Into<String>, size: u64) -> ExportInfo {
        ExportInfo {
            name: name.into(),
            description: None,
            size,
            read_only: false,
            can_flush: true,
            can_fua: true,
            can_trim: true,
            can_write_zeroes: true,
            can_multi_conn: false,
            rotational: false,
            block_sizes: BlockSizes::default(),
        }
    }

    /// The transmission flags this export advertises. Write-related flags
    /// are not advertised on a read-only export.
    pub fn transmission_flags(&self) -> u16 {
        let mut f = proto::FLAG_HAS_FLAGS;
        if self.read_only {
            f |= proto::FLAG_READ_ONLY;
        } else {
            if self.can_fua {
                f |= proto::FLAG_SEND_FUA;
            }
            if self.can_trim {
                f |= proto::FLAG_SEND_TRIM;
            }
            if self.can_write_zeroes {
                f |= proto::FLAG_SEND_WRITE_ZEROES;
            }
        }
        if self.can_flush {
            f |= proto::FLAG_SEND_FLUSH;
        }
        if self.can_multi_conn {
            f |= proto::FLAG_CAN_MULTI_CONN;
        }
        if self.rotational {
            f |= proto::FLAG_ROTATIONAL;
        }
        f
    }
}

/// Where a connection looks exports up during the handshake.
///
/// Implementations must be cheap and must not block: the sans-I/O core calls
/// them from inside [`crate::ServerConn::push`].
pub trait ExportCatalog: Send + Sync {
    /// Names of the exports offered to `NBD_OPT_LIST`.
    fn list(&self) -> Vec<String>;

    /// Look an export up by the name the client sent. The empty name is the
    /// default export: return `None` if there is none. The returned
    /// [`ExportInfo::name`] is the canonical name.
    fn lookup(&self, name: &str) -> Option<ExportInfo>;
}

impl<T: ExportCatalog + ?Sized> ExportCatalog for Arc<T> {
    fn list(&self) -> Vec<String> {
        (**self).list()
    }
    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        (**self).lookup(name)
    }
}

/// A fixed list of exports; the first one is the default export.
#[derive(Clone, Debug, Default)]
pub struct StaticCatalog {
    exports: Vec<ExportInfo>,
}

impl StaticCatalog {
    /// A catalog of the given exports (the first is the default).
    pub fn new(exports: Vec<ExportInfo>) -> StaticCatalog {
        StaticCatalog { exports }
    }
}

impl ExportCatalog for StaticCatalog {
    fn list(&self) -> Vec<String> {
        self.exports.iter().map(|e| e.name.clone()).collect()
    }

    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        if name.is_empty() {
            return self.exports.first().cloned();
        }
        self.exports.iter().find(|e| e.name == name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_truthful() {
        let mut e = ExportInfo::new("a", 1 << 20);
        assert_eq!(
            e.transmission_flags(),
            proto::FLAG_HAS_FLAGS
                | proto::FLAG_SEND_FLUSH
                | proto::FLAG_SEND_FUA
                | proto::FLAG_SEND_TRIM
                | proto::FLAG_SEND_WRITE_ZEROES
        );
        e.read_only = true;
        e.can_multi_conn = true;
        assert_eq!(
            e.transmission_flags(),
            proto::FLAG_HAS_FLAGS
                | proto::FLAG_READ_ONLY
                | proto::FLAG_SEND_FLUSH
                | proto::FLAG_CAN_MULTI_CONN
        );
        e.can_flush = false;
        e.rotational = true;
        assert_eq!(
            e.transmission_flags(),
            proto::FLAG_HAS_FLAGS
                | proto::FLAG_READ_ONLY
                | proto::FLAG_CAN_MULTI_CONN
                | proto::FLAG_ROTATIONAL
        );
    }

    #[test]
    fn block_sizes_normalize() {
        assert!(BlockSizes::default().is_valid());
        let b = BlockSizes {
            min: 3,
            preferred: 100,
            max: 10,
        }
        .normalized(1 << 25);
        assert!(b.is_valid(), "{b:?}");
        assert_eq!(b.min, 4);
        assert_eq!(b.preferred, 512);
        assert_eq!(b.max, 512);
        let b = BlockSizes {
            min: 0,
            preferred: 0,
            max: u32::MAX,
        }
        .normalized(1 << 20);
        assert!(b.is_valid(), "{b:?}");
        assert_eq!(b.max, 1 << 20);
        let b = BlockSizes {
            min: 1 << 20,
            preferred: 4096,
            max: 1 << 25,
        }
        .normalized(1 << 25);
        assert!(b.is_valid(), "{b:?}");
        assert_eq!(b.min, 65536);
    }

    #[test]
    fn static_catalog_default_is_first() {
        let c = StaticCatalog::new(vec![ExportInfo::new("x", 1), ExportInfo::new("y", 2)]);
        assert_eq!(c.lookup("").unwrap().name, "x");
        assert_eq!(c.lookup("y").unwrap().size, 2);
        assert!(c.lookup("z").is_none());
        assert_eq!(c.list(), vec!["x".to_string(), "y".to_string()]);
        assert!(StaticCatalog::default().lookup("").is_none());
    }
}
