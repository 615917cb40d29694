//! JSON-RPC errors as SPDK reports them.
//!
//! SPDK answers with the JSON-RPC 2.0 codes for protocol-level failures
//! (`-32700` .. `-32603`) and with a *negative errno* for failures of the
//! operation itself: `spdk_jsonrpc_send_error_response(request, -ENODEV,
//! "raid bdev r0 not found")` puts `"code": -19` on the wire. [`RpcError`]
//! carries either kind; [`errno`] has the numbers and glibc's texts.

use serde::{Deserialize, Serialize};
use std::fmt;

/// JSON-RPC 2.0 parse error: the bytes are not JSON. Fatal for the stream.
pub const PARSE_ERROR: i32 = -32700;
/// JSON-RPC 2.0 invalid request: JSON, but not a request object.
pub const INVALID_REQUEST: i32 = -32600;
/// JSON-RPC 2.0 method not found (or not served by this host).
pub const METHOD_NOT_FOUND: i32 = -32601;
/// JSON-RPC 2.0 invalid params: wrong type, missing or unknown field, bad value.
pub const INVALID_PARAMS: i32 = -32602;
/// JSON-RPC 2.0 internal error.
pub const INTERNAL_ERROR: i32 = -32603;
/// SPDK's `SPDK_JSONRPC_ERROR_INVALID_STATE`: method not callable in the
/// current state (e.g. before `framework_start_init`).
pub const INVALID_STATE: i32 = -1;

/// One error response body: `{"code": .., "message": ..}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(deny_unknown_fields)]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl RpcError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }

    /// `-19`: bdev `name` does not exist (SPDK's text).
    pub fn no_device(name: &str) -> Self {
        Self::errno(
            errno::ENODEV,
            format!("bdev {name} not found: No such device"),
        )
    }

    /// `-19`: no mdraid array is named `name`; `exists`: a bdev of that
    /// name does (another kind), which the message says.
    pub fn no_array(name: &str, exists: bool) -> Self {
        if exists {
            Self::errno(errno::ENODEV, format!("bdev {name} is not an mdraid array"))
        } else {
            Self::no_device(name)
        }
    }

    /// `-32700 Parse error` (SPDK's text).
    pub fn parse_error() -> Self {
        Self::new(PARSE_ERROR, "Parse error")
    }

    /// `-32600 Invalid request` (SPDK's text).
    pub fn invalid_request() -> Self {
        Self::new(INVALID_REQUEST, "Invalid request")
    }

    /// `-32601 Method not found` (SPDK's text).
    pub fn method_not_found() -> Self {
        Self::new(METHOD_NOT_FOUND, "Method not found")
    }

    /// `-32602` with a message of the caller's.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }

    /// `-32602` naming a field: `"<method>: field `<field>`: <message>"`.
    ///
    /// Hosts use this for checks only they can make (the engine refuses a
    /// strip size, a base bdev does not exist...) so every params error reads
    /// the same way.
    pub fn invalid_field(method: &str, field: &str, message: impl fmt::Display) -> Self {
        Self::new(
            INVALID_PARAMS,
            format!("{method}: field `{field}`: {message}"),
        )
    }

    /// `-32603` with a message of the caller's.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(INTERNAL_ERROR, message)
    }

    /// SPDK's `-1` invalid-state error.
    pub fn invalid_state(message: impl Into<String>) -> Self {
        Self::new(INVALID_STATE, message)
    }

    /// A negative-errno error as SPDK sends it: `errno` is positive
    /// (`errno::ENODEV`), the code on the wire is `-errno`.
    pub fn errno(errno: i32, message: impl Into<String>) -> Self {
        Self::new(-errno.abs(), message)
    }

    /// A negative-errno error whose message is `strerror(errno)`, like
    /// SPDK's `spdk_jsonrpc_send_error_response(req, rc, spdk_strerror(-rc))`.
    pub fn from_errno(errno: i32) -> Self {
        let e = errno.abs();
        Self::new(-e, errno::strerror(e))
    }

    /// The positive errno, when the code is one (SPDK style, `-4095..=-1`).
    pub fn as_errno(&self) -> Option<i32> {
        (-4095..=-1).contains(&self.code).then_some(-self.code)
    }
}

/// Linux errno numbers SPDK methods report, and glibc's `strerror` texts.
pub mod errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const E2BIG: i32 = 7;
    pub const EAGAIN: i32 = 11;
    pub const ENOMEM: i32 = 12;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const ENODEV: i32 = 19;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const ERANGE: i32 = 34;
    pub const ENOTSUP: i32 = 95;
    pub const ETIMEDOUT: i32 = 110;
    pub const EALREADY: i32 = 114;
    pub const EINPROGRESS: i32 = 115;
    pub const ECANCELED: i32 = 125;

    /// glibc's message for `e` (positive), as `spdk_strerror` prints it.
    pub fn strerror(e: i32) -> &'static str {
        match e {
            EPERM => "Operation not permitted",
            ENOENT => "No such file or directory",
            EIO => "Input/output error",
            E2BIG => "Argument list too long",
            EAGAIN => "Resource temporarily unavailable",
            ENOMEM => "Cannot allocate memory",
            EBUSY => "Device or resource busy",
            EEXIST => "File exists",
            ENODEV => "No such device",
            EINVAL => "Invalid argument",
            ENOSPC => "No space left on device",
            EROFS => "Read-only file system",
            ERANGE => "Numerical result out of range",
            ENOTSUP => "Operation not supported",
            ETIMEDOUT => "Connection timed out",
            EALREADY => "Operation already in progress",
            EINPROGRESS => "Operation now in progress",
            ECANCELED => "Operation canceled",
            _ => "Unknown error",
        }
    }
}
