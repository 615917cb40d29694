//! Dispatch: decoded requests in, encoded responses out, the host's
//! handlers in between.
//!
//! A host implements [`Host`]: it receives each [`Call`] already decoded and
//! validated, and answers with a JSON result or an [`RpcError`]. This module
//! answers the framework methods itself (`rpc_get_methods`,
//! `spdk_get_version`, `save_config`, `framework_get_subsystems`,
//! `framework_get_config`), and a method the host does not serve is
//! `-32601 Method not found`, as in SPDK.
//!
//! Hosts that complete calls asynchronously (SPDK's module answers from a
//! callback) use the pieces instead: [`Call::parse`] to decode, then
//! [`Response`] / [`crate::framing::encode_batch`] or SPDK's own writer.

use crate::config;
use crate::error::RpcError;
use crate::framing::{encode_batch, Decoder, Frame, Incoming, Request, Response};
use crate::method::{Call, Method};
use crate::results::VersionInfo;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// What the embedded daemon and the SPDK module implement.
pub trait Host {
    /// Carry out one call (never a built-in, never a method `serves`
    /// refused). Return the JSON result (`true` for SPDK's bool answers).
    fn call(&mut self, call: Call) -> Result<Value, RpcError>;

    /// Whether this host serves `method`; the others are "Method not found"
    /// and absent from `rpc_get_methods`. Default: all.
    fn serves(&self, method: Method) -> bool {
        let _ = method;
        true
    }

    /// Calls that recreate the current configuration from nothing, in the
    /// order to replay them (members before arrays, arrays before exports).
    /// `save_config` and `framework_get_config` are built from this.
    fn saved_config(&mut self) -> Result<Vec<Call>, RpcError> {
        Ok(Vec::new())
    }

    /// `spdk_get_version`'s answer.
    fn version(&self) -> VersionInfo {
        VersionInfo::mdraid()
    }
}

/// Serialise a typed result for [`Host::call`].
pub fn reply<T: Serialize>(result: T) -> Result<Value, RpcError> {
    serde_json::to_value(result).map_err(|e| RpcError::internal(format!("result: {e}")))
}

/// Names of the methods `host` serves, in table order.
pub fn method_names<H: Host + ?Sized>(host: &H) -> Vec<&'static str> {
    Method::ALL
        .iter()
        .filter(|m| host.serves(**m))
        .map(|m| m.name())
        .collect()
}

/// Look up, decode and carry out one method call.
pub fn call_method<H: Host + ?Sized>(
    host: &mut H,
    method: &str,
    params: Option<&RawValue>,
) -> Result<Value, RpcError> {
    let m = Method::from_name(method)
        .filter(|m| host.serves(*m))
        .ok_or_else(RpcError::method_not_found)?;
    let call = Call::parse(m, params)?;
    handle_call(host, call)
}

/// Carry out a decoded call: built-ins here, the rest by the host.
pub fn handle_call<H: Host + ?Sized>(host: &mut H, call: Call) -> Result<Value, RpcError> {
    if !host.serves(call.method()) {
        return Err(RpcError::method_not_found());
    }
    match call {
        Call::RpcGetMethods(_) => reply(method_names(host)),
        Call::SpdkGetVersion(_) => reply(host.version()),
        Call::SaveConfig(_) => {
            let calls = host.saved_config()?;
            Ok(config::build_document(&calls))
        }
        Call::FrameworkGetSubsystems(_) => reply(config::subsystems()),
        Call::FrameworkGetConfig(p) => {
            let calls = host.saved_config()?;
            config::subsystem_config(&calls, &p.name).ok_or_else(|| {
                RpcError::invalid_params(format!("Subsystem '{}' not found", p.name))
            })
        }
        other => host.call(other),
    }
}

/// Answer one request; `None` for a notification.
pub fn handle_request<H: Host + ?Sized>(host: &mut H, req: &Request) -> Option<Response> {
    let outcome = call_method(host, &req.method, req.params.as_deref());
    req.id.clone().map(|id| Response { id, outcome })
}

fn handle_incoming<H: Host + ?Sized>(host: &mut H, inc: &Incoming) -> Option<Response> {
    match inc {
        Incoming::Request(r) => handle_request(host, r),
        Incoming::Invalid(resp) => Some(resp.clone()),
    }
}

/// Answer one frame, appending the bytes to send to `out`. Returns false
/// when the connection must be closed once `out` is sent.
pub fn handle_frame<H: Host + ?Sized>(host: &mut H, frame: &Frame, out: &mut Vec<u8>) -> bool {
    match frame {
        Frame::Single(inc) => {
            if let Some(r) = handle_incoming(host, inc) {
                r.encode_into(out);
            }
            true
        }
        Frame::Batch(items) => {
            let responses: Vec<Response> = items
                .iter()
                .filter_map(|i| handle_incoming(host, i))
                .collect();
            encode_batch(&responses, out);
            true
        }
        Frame::Fatal(resp) => {
            resp.encode_into(out);
            false
        }
    }
}

/// Whether a connection goes on after [`Connection::feed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    Open,
    /// Send what was produced, then close (parse error or oversize).
    Close,
}

/// One client connection, sans I/O: feed it what was read, write what it
/// produces.
#[derive(Debug, Default)]
pub struct Connection {
    decoder: Decoder,
}

impl Connection {
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests larger than `limit` bytes close the connection.
    pub fn with_limit(limit: usize) -> Self {
        Connection {
            decoder: Decoder::with_limit(limit),
        }
    }

    /// Take `bytes`, answer every complete request in them, append the
    /// responses to `out`.
    pub fn feed<H: Host + ?Sized>(
        &mut self,
        host: &mut H,
        bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> ConnState {
        if self.decoder.is_closed() {
            return ConnState::Close;
        }
        self.decoder.push(bytes);
        while let Some(frame) = self.decoder.next_frame() {
            if !handle_frame(host, &frame, out) {
                return ConnState::Close;
            }
        }
        ConnState::Open
    }

    /// True when no partial request is pending.
    pub fn is_idle(&self) -> bool {
        self.decoder.is_idle()
    }
}
