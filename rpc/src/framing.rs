//! JSON-RPC 2.0 framing as SPDK's server does it (`lib/jsonrpc/jsonrpc_server.c`).
//!
//! On the stream, requests are JSON values sent back to back: no length
//! prefix, no delimiter, any JSON whitespace between them (SPDK's Python
//! client sends pretty-printed objects with nothing after them). A value is
//! an object (one request) or an array (a batch). Responses are objects, each
//! followed by `"\n"`; a batch is answered by one array followed by `"\n"`.
//!
//! What SPDK does, and this module with it:
//! - bytes that are not JSON -> one `-32700 Parse error` response (id null),
//!   then the connection is closed: a byte stream of JSON has no point to
//!   resynchronise at ([`Frame::Fatal`]);
//! - JSON that is not a request (a number, an object without `method`, an
//!   unknown key, `"jsonrpc"` other than `"2.0"`, an id that is not a string,
//!   number or null, params that are not an object/array/null) ->
//!   `-32600 Invalid request`, and the connection goes on;
//! - `[]` -> one `-32600` response (not an array); a batch's invalid
//!   elements get `-32600` entries in the batch's answer;
//! - duplicate keys are invalid (SPDK's `spdk_json_decode_object`).
//!
//! Notifications: a request whose id is absent *or null* gets no result
//! (SPDK's `spdk_jsonrpc_end_result` skips both). JSON-RPC 2.0 also says a
//! notification gets no *error*; SPDK sends one anyway, with id null. We
//! follow the specification there ([`crate::dispatch`] answers nothing),
//! since a stray error on the stream desynchronises a client that pipelines.
//! Clients in practice (SPDK's Python client) always send an id.
//!
//! The buffer of one incomplete value is capped ([`DEFAULT_MAX_REQUEST`],
//! 32 MiB; SPDK's own receive buffer is 256 KiB): past it the decoder answers
//! `-32600` with a message giving the limit and closes, like a parse error.

use crate::error::RpcError;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::Value;

/// Largest request (one JSON value, including a whole batch) accepted.
pub const DEFAULT_MAX_REQUEST: usize = 32 << 20;

/// One request as decoded from the stream.
#[derive(Clone, Debug)]
pub struct Request {
    /// `None` for a notification (id absent or null).
    pub id: Option<Value>,
    pub method: String,
    /// Raw params text; `None` when absent or `null` (SPDK: "as if there
    /// were no parameters"). Kept raw so the typed decode sees duplicate
    /// keys and reports exact field paths.
    pub params: Option<Box<RawValue>>,
}

impl Request {
    /// Build a request (for clients and tests). `params: None` omits the key.
    pub fn new(id: Option<Value>, method: impl Into<String>, params: Option<&Value>) -> Self {
        Request {
            id: id.filter(|v| !v.is_null()),
            method: method.into(),
            params: params.map(|p| {
                RawValue::from_string(p.to_string()).expect("a Value serialises to valid JSON")
            }),
        }
    }

    pub fn is_notification(&self) -> bool {
        self.id.is_none()
    }

    /// Encode as a client would send it: `{"jsonrpc":"2.0","method":..,"id":..,"params":..}`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.method.len());
        out.extend_from_slice(br#"{"jsonrpc":"2.0","method":"#);
        serde_json::to_writer(&mut out, &self.method).expect("string serialises");
        if let Some(id) = &self.id {
            out.extend_from_slice(br#","id":"#);
            serde_json::to_writer(&mut out, id).expect("Value serialises");
        }
        if let Some(p) = &self.params {
            out.extend_from_slice(br#","params":"#);
            out.extend_from_slice(p.get().as_bytes());
        }
        out.push(b'}');
        out
    }
}

/// One response: `{"jsonrpc":"2.0","id":..,"result":..}` or `..,"error":{code,message}}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    /// The request's id; `Value::Null` when it could not be read.
    pub id: Value,
    pub outcome: Result<Value, RpcError>,
}

impl Response {
    pub fn result(id: Value, result: Value) -> Self {
        Response {
            id,
            outcome: Ok(result),
        }
    }

    pub fn error(id: Value, error: RpcError) -> Self {
        Response {
            id,
            outcome: Err(error),
        }
    }

    /// Append the JSON object, without a trailing newline.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Field order as SPDK writes it: jsonrpc, id, result|error.
        out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
        serde_json::to_writer(&mut *out, &self.id).expect("Value serialises");
        match &self.outcome {
            Ok(v) => {
                out.extend_from_slice(br#","result":"#);
                serde_json::to_writer(&mut *out, v).expect("Value serialises");
            }
            Err(e) => {
                out.extend_from_slice(br#","error":"#);
                serde_json::to_writer(&mut *out, e).expect("RpcError serialises");
            }
        }
        out.push(b'}');
    }

    /// Append the response as SPDK sends a single one: the object and `"\n"`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        self.write_json(out);
        out.push(b'\n');
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Parse one response object (client side).
    pub fn parse(bytes: &[u8]) -> Result<Response, serde_json::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            id: Value,
            result: Option<Value>,
            error: Option<RpcError>,
        }
        let w: Wire = serde_json::from_slice(bytes)?;
        let outcome = match (w.result, w.error) {
            (_, Some(e)) => Err(e),
            (Some(r), None) => Ok(r),
            (None, None) => Ok(Value::Null),
        };
        Ok(Response { id: w.id, outcome })
    }
}

/// Append a batch answer: `[r1,r2,...]\n`; nothing when `responses` is
/// empty (a batch of notifications gets no answer at all).
pub fn encode_batch(responses: &[Response], out: &mut Vec<u8>) {
    if responses.is_empty() {
        return;
    }
    out.push(b'[');
    for (i, r) in responses.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        r.write_json(out);
    }
    out.extend_from_slice(b"]\n");
}

/// One element of a frame.
#[derive(Clone, Debug)]
pub enum Incoming {
    Request(Request),
    /// Not a valid request: this is its answer (`-32600`).
    Invalid(Response),
}

/// One complete top-level value from the stream.
#[derive(Clone, Debug)]
pub enum Frame {
    Single(Incoming),
    /// A non-empty batch, in order.
    Batch(Vec<Incoming>),
    /// The stream is broken (parse error, oversize): send this, then close.
    Fatal(Response),
}

/// Why [`Splitter`] gave up on the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("request exceeds {limit} bytes")]
    TooLarge { limit: usize },
}

/// Incremental splitter of a byte stream into top-level JSON values.
///
/// It tracks only what delimits a value (nesting depth, strings and their
/// escapes), resuming where it stopped, so a large request arriving in many
/// reads is scanned once. Whether the value is valid JSON is left to the
/// parser that receives it. Also used by clients to split responses.
#[derive(Debug)]
pub struct Splitter {
    buf: Vec<u8>,
    /// Start of the value being scanned (bytes before it are consumed).
    start: usize,
    /// Next byte to scan.
    pos: usize,
    kind: Kind,
    depth: usize,
    in_string: bool,
    escape: bool,
    limit: usize,
    failed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    None,
    Container,
    String,
    Scalar,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn is_delim(b: u8) -> bool {
    is_ws(b) || matches!(b, b'{' | b'}' | b'[' | b']' | b',' | b':' | b'"')
}

impl Default for Splitter {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_REQUEST)
    }
}

impl Splitter {
    /// `limit`: largest value accepted, in bytes.
    pub fn new(limit: usize) -> Self {
        Splitter {
            buf: Vec::new(),
            start: 0,
            pos: 0,
            kind: Kind::None,
            depth: 0,
            in_string: false,
            escape: false,
            limit: limit.max(1),
            failed: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes held that are not yet part of a returned value.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// True when only whitespace (or nothing) is buffered.
    pub fn is_idle(&self) -> bool {
        self.buf[self.start..].iter().all(|&b| is_ws(b))
    }

    /// The next complete value, `None` if more bytes are needed. After an
    /// error every call returns the same error.
    pub fn next_value(&mut self) -> Option<Result<Vec<u8>, SplitError>> {
        if self.failed {
            return Some(Err(SplitError::TooLarge { limit: self.limit }));
        }
        let r = match self.scan() {
            Some(end) if end - self.start <= self.limit => {
                let v = self.buf[self.start..end].to_vec();
                self.start = end;
                self.pos = end;
                self.kind = Kind::None;
                self.compact();
                Some(Ok(v))
            }
            Some(_) => Some(Err(SplitError::TooLarge { limit: self.limit })),
            None if self.buffered() > self.limit => {
                Some(Err(SplitError::TooLarge { limit: self.limit }))
            }
            None => {
                self.compact();
                None
            }
        };
        if let Some(Err(_)) = r {
            self.failed = true;
            self.buf = Vec::new();
            self.start = 0;
            self.pos = 0;
        }
        r
    }

    fn compact(&mut self) {
        if self.start > 0 && (self.start == self.buf.len() || self.start >= 64 * 1024) {
            self.buf.drain(..self.start);
            self.pos -= self.start;
            self.start = 0;
        }
    }

    /// Advance the scan; `Some(end)` when a value ends at `end` (exclusive).
    fn scan(&mut self) -> Option<usize> {
        let buf = &self.buf;
        while self.pos < buf.len() {
            let b = buf[self.pos];
            match self.kind {
                Kind::None => {
                    if is_ws(b) {
                        self.pos += 1;
                        self.start = self.pos;
                        continue;
                    }
                    self.start = self.pos;
                    self.pos += 1;
                    match b {
                        b'{' | b'[' => {
                            self.kind = Kind::Container;
                            self.depth = 1;
                            self.in_string = false;
                            self.escape = false;
                        }
                        b'"' => {
                            self.kind = Kind::String;
                            self.in_string = true;
                            self.escape = false;
                        }
                        // A stray delimiter is a value of its own, which the
                        // parser then refuses.
                        b'}' | b']' | b',' | b':' => return Some(self.pos),
                        _ => self.kind = Kind::Scalar,
                    }
                }
                Kind::Container | Kind::String => {
                    self.pos += 1;
                    if self.in_string {
                        if self.escape {
                            self.escape = false;
                        } else if b == b'\\' {
                            self.escape = true;
                        } else if b == b'"' {
                            self.in_string = false;
                            if self.kind == Kind::String {
                                return Some(self.pos);
                            }
                        }
                    } else {
                        match b {
                            b'"' => self.in_string = true,
                            b'{' | b'[' => self.depth += 1,
                            b'}' | b']' => {
                                self.depth -= 1;
                                if self.depth == 0 {
                                    return Some(self.pos);
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Kind::Scalar => {
                    if is_delim(b) {
                        return Some(self.pos);
                    }
                    self.pos += 1;
                }
            }
        }
        None
    }
}

/// Sans-I/O request decoder: `push` bytes as they arrive, then take
/// [`Frame`]s until `next_frame` returns `None`.
///
/// ```
/// use mdraid_rpc::framing::{Decoder, Frame, Incoming};
/// let mut d = Decoder::new();
/// d.push(br#"{"jsonrpc":"2.0","method":"rpc_get_methods","id":1}  {"jsonrpc":"2.0","#);
/// assert!(matches!(d.next_frame(), Some(Frame::Single(Incoming::Request(_)))));
/// assert!(d.next_frame().is_none()); // second request incomplete
/// d.push(br#""method":"x","id":2}"#);
/// assert!(matches!(d.next_frame(), Some(Frame::Single(Incoming::Request(_)))));
/// ```
#[derive(Debug, Default)]
pub struct Decoder {
    splitter: Splitter,
    closed: bool,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder refusing requests larger than `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        Decoder {
            splitter: Splitter::new(limit),
            closed: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if !self.closed {
            self.splitter.push(bytes);
        }
    }

    /// True once a [`Frame::Fatal`] was returned: nothing more is decoded and
    /// the host should close the connection after sending that response.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Bytes buffered that are not yet a complete request.
    pub fn buffered(&self) -> usize {
        self.splitter.buffered()
    }

    /// True when no partial request is pending (only whitespace, if anything,
    /// is buffered): the peer closing now loses nothing.
    pub fn is_idle(&self) -> bool {
        self.closed || self.splitter.is_idle()
    }

    pub fn next_frame(&mut self) -> Option<Frame> {
        if self.closed {
            return None;
        }
        let value = match self.splitter.next_value()? {
            Ok(v) => v,
            Err(e) => {
                self.closed = true;
                return Some(Frame::Fatal(Response::error(
                    Value::Null,
                    RpcError::new(
                        crate::error::INVALID_REQUEST,
                        format!("Invalid request: {e}"),
                    ),
                )));
            }
        };
        let frame = classify(&value);
        if matches!(frame, Frame::Fatal(_)) {
            self.closed = true;
        }
        Some(frame)
    }
}

impl Iterator for Decoder {
    type Item = Frame;
    fn next(&mut self) -> Option<Frame> {
        self.next_frame()
    }
}

fn invalid(id: Value) -> Incoming {
    Incoming::Invalid(Response::error(id, RpcError::invalid_request()))
}

/// Decode one complete top-level value.
pub fn classify(value: &[u8]) -> Frame {
    // Syntax first, over the whole value, as SPDK parses before decoding
    // (SPDK's parser also refuses invalid UTF-8, which serde_json does not
    // check in strings it skips).
    if std::str::from_utf8(value).is_err() || serde_json::from_slice::<IgnoredAny>(value).is_err() {
        return Frame::Fatal(Response::error(Value::Null, RpcError::parse_error()));
    }
    match value.first() {
        Some(b'{') => Frame::Single(parse_single(value)),
        Some(b'[') => {
            let elems: Vec<&RawValue> = match serde_json::from_slice(value) {
                Ok(e) => e,
                Err(_) => {
                    return Frame::Fatal(Response::error(Value::Null, RpcError::parse_error()))
                }
            };
            if elems.is_empty() {
                Frame::Single(invalid(Value::Null))
            } else {
                Frame::Batch(
                    elems
                        .iter()
                        .map(|e| parse_single(e.get().as_bytes()))
                        .collect(),
                )
            }
        }
        _ => Frame::Single(invalid(Value::Null)),
    }
}

/// Captures a key's raw value even when it is `null` (an `Option` alone
/// would turn `null` into `None`).
fn raw_some<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    #[serde(default, deserialize_with = "raw_some")]
    jsonrpc: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "raw_some")]
    method: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "raw_some")]
    params: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "raw_some")]
    id: Option<Box<RawValue>>,
}

/// SPDK's `parse_single_request`, check for check.
fn parse_single(value: &[u8]) -> Incoming {
    if value.first() != Some(&b'{') {
        return invalid(Value::Null);
    }
    let env: Envelope = match serde_json::from_slice(value) {
        Ok(e) => e,
        Err(_) => return invalid(Value::Null),
    };
    if let Some(v) = &env.jsonrpc {
        if serde_json::from_str::<String>(v.get()).ok().as_deref() != Some("2.0") {
            return invalid(Value::Null);
        }
    }
    let method = match env
        .method
        .as_deref()
        .map(|m| serde_json::from_str::<String>(m.get()))
    {
        Some(Ok(m)) => m,
        _ => return invalid(Value::Null),
    };
    let id = match &env.id {
        None => Value::Null,
        Some(raw) => match serde_json::from_str::<Value>(raw.get()) {
            Ok(v @ (Value::String(_) | Value::Number(_) | Value::Null)) => v,
            _ => return invalid(Value::Null),
        },
    };
    let params = match env.params {
        None => None,
        Some(p) => match p.get().as_bytes().first() {
            Some(b'n') => None, // null: as if absent
            Some(b'{') | Some(b'[') => Some(p),
            _ => return invalid(id),
        },
    };
    Incoming::Request(Request {
        id: (!id.is_null()).then_some(id),
        method,
        params,
    })
}
