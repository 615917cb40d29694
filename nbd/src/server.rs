//! The sans-I/O server side of one NBD connection.
//!
//! [`ServerConn`] is fed the bytes read from the socket ([`ServerConn::push`])
//! and yields bytes to write ([`ServerConn::pending_output`]) and
//! [`Event`]s. The host answers each [`Event::Request`] with
//! [`ServerConn::reply`]. The connection never does I/O, never blocks and
//! never holds more than [`ServerConn::memory_bound`] bytes.
//!
//! Protocol choices (see the crate docs for the full list): fixed newstyle
//! handshake only, simple replies only (`NBD_OPT_STRUCTURED_REPLY` is refused
//! with `NBD_REP_ERR_UNSUP`), no TLS, no metadata contexts.

use crate::errno::Errno;
use crate::export::{ExportCatalog, ExportInfo};
use crate::proto::*;
use std::collections::VecDeque;
use std::sync::Arc;

/// Bytes one option may add to the output at most (the largest is an
/// `NBD_OPT_LIST` reply, which is capped at [`MAX_LIST_REPLY`]).
pub const OUTPUT_SLACK: usize = 64 * 1024;
/// Cap on the size of an `NBD_OPT_LIST` reply; above it the server answers
/// `NBD_REP_ERR_TOO_BIG`.
pub const MAX_LIST_REPLY: usize = 48 * 1024;

/// Limits of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Hard limit on the payload of one read or write. A write announcing a
    /// longer payload closes the connection (the payload cannot be skipped
    /// cheaply and the spec allows a hard disconnect for a denial of
    /// service); a longer read gets `EINVAL`. Exports advertise at most this
    /// as their maximum block size. At least 64 KiB; default 32 MiB, the
    /// size the spec says is never a denial of service.
    pub max_payload: u32,
    /// Requests admitted but not yet answered; at the limit the connection
    /// stops reading (see [`ServerConn::wants_read`]). Default 128.
    pub max_inflight: usize,
    /// Sum of read and write lengths admitted but not yet answered; at the
    /// limit the connection stops reading. Default 64 MiB.
    pub max_inflight_bytes: usize,
    /// Longest option payload buffered. Longer options are answered with
    /// `NBD_REP_ERR_TOO_BIG` (or `NBD_REP_ERR_UNSUP` if unknown) and their
    /// payload skipped without buffering; a too long `NBD_OPT_EXPORT_NAME`,
    /// which cannot be refused, closes the connection. Default 8 KiB (a
    /// 4096-byte name plus info requests).
    pub max_option_len: u32,
    /// Options accepted before the connection is closed as a denial of
    /// service. Default 1024.
    pub max_options: u32,
    /// Unsent output above which no further request or option is read.
    /// Default 1 MiB.
    pub output_high_water: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_inflight: 128,
            max_inflight_bytes: 64 << 20,
            max_option_len: 8192,
            max_options: 1024,
            output_high_water: 1 << 20,
        }
    }
}

/// A transmission-phase command handed to the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// `NBD_CMD_READ`: answer with `len` bytes.
    Read,
    /// `NBD_CMD_WRITE`: `data` holds the `len` bytes to write.
    Write,
    /// `NBD_CMD_FLUSH`: `offset` and `len` are zero.
    Flush,
    /// `NBD_CMD_TRIM`: discard hint.
    Trim,
    /// `NBD_CMD_WRITE_ZEROES`: the range must read back as zeroes.
    WriteZeroes,
}

/// Command flags of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CmdFlags(pub u16);

impl CmdFlags {
    /// `NBD_CMD_FLAG_FUA`: the reply must wait until the data written by
    /// this command is durable.
    pub fn fua(self) -> bool {
        self.0 & CMD_FLAG_FUA != 0
    }
    /// `NBD_CMD_FLAG_NO_HOLE` (write-zeroes only): allocate, do not punch.
    pub fn no_hole(self) -> bool {
        self.0 & CMD_FLAG_NO_HOLE != 0
    }
}

/// A validated request for the host to execute.
///
/// Validation already done: the command is supported by the export and not
/// a write on a read-only export, flags are valid, `offset + len` lies within
/// the export, offset and length are aligned to the minimum block size,
/// read/write lengths are within the maximum payload, and `len > 0` (empty
/// requests are answered by the connection itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The client's opaque cookie; pass it to [`ServerConn::reply`].
    pub handle: u64,
    /// What to do.
    pub cmd: Command,
    /// Byte offset in the export.
    pub offset: u64,
    /// Byte length.
    pub len: u32,
    /// Command flags.
    pub flags: CmdFlags,
    /// Write payload (`len` bytes) for [`Command::Write`], empty otherwise.
    pub data: Vec<u8>,
}

/// Why a connection ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent `NBD_CMD_DISC` (soft disconnect).
    ClientDisc,
    /// The client sent `NBD_OPT_ABORT` during the handshake.
    ClientAbort,
    /// The client closed (or half-closed) its side; see [`ServerConn::eof`].
    Eof,
    /// The host called [`ServerConn::begin_shutdown`].
    Shutdown,
    /// The client broke the protocol; the connection is closed at once.
    Protocol(ProtocolError),
}

/// A client protocol violation that ends the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The client flags have bits the server does not know or did not offer.
    #[error("unknown client flags {0:#x}")]
    BadClientFlags(u32),
    /// An option header did not start with `IHAVEOPT`.
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    /// A request header did not start with `NBD_REQUEST_MAGIC`.
    #[error("bad request magic {0:#010x}")]
    BadRequestMagic(u32),
    /// `NBD_OPT_EXPORT_NAME` (which cannot be refused) named an export that
    /// does not exist or is not a valid name.
    #[error("NBD_OPT_EXPORT_NAME for an unknown or invalid export")]
    BadExportName,
    /// More options than [`ServerConfig::max_options`].
    #[error("too many options")]
    TooManyOptions,
    /// A write announced a payload above [`ServerConfig::max_payload`].
    #[error("write payload of {0} bytes is over the limit")]
    OversizeWrite(u32),
    /// The input ended in the middle of a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
}

/// Something the host must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The handshake ended and the transmission phase began on this export
    /// (its block sizes normalized to the connection's limits).
    Ready(ExportInfo),
    /// Execute this request and answer it with [`ServerConn::reply`].
    Request(Request),
    /// The connection is ending: no more requests will come. Requests
    /// already handed out should still be answered (the replies are sent
    /// unless the reason is a protocol error); close the socket when
    /// [`ServerConn::is_done`] says so. Emitted at most once.
    Disconnect(DisconnectReason),
}

/// A reply the connection refused (a host bug, not a client problem).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// No request with this handle is waiting for a reply.
    #[error("no request in flight with handle {0:#x}")]
    UnknownHandle(u64),
    /// Successful reads must carry exactly `len` bytes; other commands none.
    #[error("reply data does not match the request (handle {0:#x})")]
    DataMismatch(u64),
}

#[derive(Debug)]
enum Phase {
    /// Greeting sent; waiting for the 32-bit client flags.
    ClientFlags,
    /// Waiting for an option header.
    OptHeader,
    /// Collecting `len` bytes of option data into `opt_buf`.
    OptData { opt: u32, len: usize },
    /// Discarding the data of an option already answered.
    OptSkip { remaining: u64 },
    /// Waiting for a request header.
    ReqHeader,
    /// Collecting a write payload.
    WriteData { req: Request },
    /// Discarding the payload of a refused write, then replying `err`.
    WriteDiscard {
        remaining: u32,
        handle: u64,
        err: Errno,
    },
    /// No more input; answer what is in flight, flush, close.
    Draining,
    /// Closed at once; nothing more is sent.
    Closed,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    handle: u64,
    cmd: Command,
    len: u32,
    /// Bytes charged to `inflight_bytes` (read/write length, 0 otherwise).
    charge: usize,
}

/// Most bytes of recycled write payloads a connection keeps.
pub const SPARE_BYTES: usize = 4 << 20;

/// The server side of one NBD connection, without I/O.
///
/// Typical host loop:
/// 1. write [`pending_output`](Self::pending_output) to the socket and
///    [`advance_output`](Self::advance_output) by what was written;
/// 2. drain [`poll_event`](Self::poll_event), execute requests, answer with
///    [`reply`](Self::reply) (now or later, in any order);
/// 3. if [`wants_read`](Self::wants_read), read from the socket and
///    [`push`](Self::push) the bytes, keeping any the connection did not
///    consume for the next call; on end of file call [`eof`](Self::eof);
/// 4. close the socket when [`is_done`](Self::is_done).
pub struct ServerConn {
    catalog: Arc<dyn ExportCatalog>,
    config: ServerConfig,
    phase: Phase,
    hdr: [u8; REQUEST_HEADER_LEN],
    hdr_len: usize,
    opt_buf: Vec<u8>,
    /// Write payload buffers handed back by the host ([`ServerConn::recycle`]),
    /// reused so a steady stream of writes allocates nothing.
    spare: Vec<Vec<u8>>,
    spare_bytes: usize,
    fixed_newstyle: bool,
    no_zeroes: bool,
    options_seen: u32,
    export: Option<ExportInfo>,
    eflags: u16,
    inflight: Vec<InFlight>,
    inflight_bytes: usize,
    events: VecDeque<Event>,
    event_bytes: usize,
    output: Vec<u8>,
    out_pos: usize,
    disconnected: bool,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConn")
            .field("phase", &self.phase)
            .field("export", &self.export.as_ref().map(|e| &e.name))
            .field("inflight", &self.inflight.len())
            .field("inflight_bytes", &self.inflight_bytes)
            .field("output", &(self.output.len() - self.out_pos))
            .finish()
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// A protocol string: valid UTF-8, no NUL, at most 4096 bytes.
fn valid_string(b: &[u8]) -> Option<&str> {
    if b.len() > MAX_STRING || b.contains(&0) {
        return None;
    }
    std::str::from_utf8(b).ok()
}

impl ServerConn {
    /// A new connection; the server greeting is already in the output.
    pub fn new(catalog: Arc<dyn ExportCatalog>, mut config: ServerConfig) -> ServerConn {
        config.max_payload = config.max_payload.max(64 * 1024);
        config.max_inflight = config.max_inflight.max(1);
        config.max_inflight_bytes = config.max_inflight_bytes.max(1);
        let mut c = ServerConn {
            catalog,
            config,
            phase: Phase::ClientFlags,
            hdr: [0; REQUEST_HEADER_LEN],
            hdr_len: 0,
            opt_buf: Vec::new(),
            fixed_newstyle: false,
            no_zeroes: false,
            options_seen: 0,
            export: None,
            eflags: 0,
            inflight: Vec::new(),
            inflight_bytes: 0,
            events: VecDeque::new(),
            event_bytes: 0,
            output: Vec::with_capacity(256),
            spare: Vec::new(),
            spare_bytes: 0,
            out_pos: 0,
            disconnected: false,
        };
        c.output.extend_from_slice(&NBD_MAGIC.to_be_bytes());
        c.output.extend_from_slice(&IHAVEOPT.to_be_bytes());
        c.output
            .extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        c
    }

    /// The limits in force (after clamping).
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The export chosen by the client, once in the transmission phase.
    pub fn export(&self) -> Option<&ExportInfo> {
        self.export.as_ref()
    }

    /// Requests handed out (or being received) and not yet answered.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Read and write bytes of the requests in flight.
    pub fn inflight_bytes(&self) -> usize {
        self.inflight_bytes
    }

    /// Bytes the connection holds now: unsent output, partial messages and
    /// write payloads of events not yet polled.
    pub fn buffered_bytes(&self) -> usize {
        let partial = match &self.phase {
            Phase::WriteData { req } => req.data.len(),
            _ => 0,
        };
        (self.output.len() - self.out_pos)
            + self.hdr_len
            + self.opt_buf.len()
            + partial
            + self.event_bytes
    }

    /// Bytes the connection holds or has committed to: unsent output,
    /// partial headers and options, and the payloads of admitted requests
    /// (write data being received, queued, or held by the host until it
    /// replies; read data still to be returned). Never above
    /// [`memory_bound`](Self::memory_bound).
    pub fn memory_in_use(&self) -> usize {
        self.unsent() + self.hdr_len + self.opt_buf.len() + self.inflight_bytes + self.spare_bytes
    }

    /// Upper bound of [`memory_in_use`](Self::memory_in_use) (and so of
    /// [`buffered_bytes`](Self::buffered_bytes)), whatever the client sends
    /// and however slowly the host answers or writes.
    pub fn memory_bound(&self) -> usize {
        let c = &self.config;
        c.output_high_water
            + OUTPUT_SLACK
            + SPARE_BYTES
            + c.max_inflight_bytes
            + c.max_payload as usize
            + SIMPLE_REPLY_HEADER_LEN * (c.max_inflight + 1)
            + c.max_option_len as usize
            + REQUEST_HEADER_LEN
    }

    /// Whether the handshake is over and requests are being served.
    pub fn in_transmission(&self) -> bool {
        self.export.is_some()
    }

    fn unsent(&self) -> usize {
        self.output.len() - self.out_pos
    }

    fn at_boundary(&self) -> bool {
        self.hdr_len == 0
            && matches!(
                self.phase,
                Phase::ClientFlags | Phase::OptHeader | Phase::ReqHeader
            )
    }

    fn can_admit(&self) -> bool {
        if self.unsent() >= self.config.output_high_water {
            return false;
        }
        match self.phase {
            Phase::ReqHeader => {
                self.inflight.len() < self.config.max_inflight
                    && self.inflight_bytes < self.config.max_inflight_bytes
            }
            _ => true,
        }
    }

    /// Whether the host should read from the socket and [`push`](Self::push).
    /// False while the connection applies backpressure (too many requests
    /// in flight or too much unsent output) and once it is ending.
    pub fn wants_read(&self) -> bool {
        match self.phase {
            Phase::Draining | Phase::Closed => false,
            _ => !self.at_boundary() || self.can_admit(),
        }
    }

    /// Whether the host should close the socket now: after a protocol
    /// error, or once a finished connection has answered everything and its
    /// output has been written.
    pub fn is_done(&self) -> bool {
        match self.phase {
            Phase::Closed => true,
            Phase::Draining => self.inflight.is_empty() && self.unsent() == 0,
            _ => false,
        }
    }

    /// Bytes to send to the client.
    pub fn pending_output(&self) -> &[u8] {
        &self.output[self.out_pos..]
    }

    /// Mark `n` bytes of [`pending_output`](Self::pending_output) as sent.
    pub fn advance_output(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.output.len());
        if self.out_pos == self.output.len() {
            self.output.clear();
            self.out_pos = 0;
            if self.output.capacity() > 4 << 20 {
                self.output.shrink_to(64 * 1024);
            }
        } else if self.out_pos > 64 * 1024 && self.out_pos * 2 > self.output.len() {
            self.output.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front()?;
        if let Event::Request(r) = &ev {
            self.event_bytes -= r.data.len();
        }
        Some(ev)
    }

    /// The client closed its sending side (read returned 0). In-flight
    /// requests are still answered; the connection is done once they are
    /// and the output is written.
    pub fn eof(&mut self) {
        match self.phase {
            Phase::Draining | Phase::Closed => {}
            _ => {
                let reason = if self.at_boundary() {
                    DisconnectReason::Eof
                } else {
                    DisconnectReason::Protocol(ProtocolError::Truncated)
                };
                self.drop_partial();
                self.phase = Phase::Draining;
                self.disconnect(reason);
            }
        }
    }

    /// The server is stopping: read nothing more, answer what is in flight,
    /// then close.
    pub fn begin_shutdown(&mut self) {
        match self.phase {
            Phase::Draining | Phase::Closed => {}
            _ => {
                self.drop_partial();
                self.phase = Phase::Draining;
                self.disconnect(DisconnectReason::Shutdown);
            }
        }
    }

    /// Forget a partially received message (its in-flight entry too).
    fn drop_partial(&mut self) {
        if let Phase::WriteData { req } = &self.phase {
            // The entry being received is the newest with its handle.
            let h = req.handle;
            if let Some(i) = self.inflight.iter().rposition(|f| f.handle == h) {
                let f = self.inflight.remove(i);
                self.inflight_bytes -= f.charge;
            }
        }
        self.hdr_len = 0;
        self.opt_buf = Vec::new();
    }

    fn disconnect(&mut self, reason: DisconnectReason) {
        if !self.disconnected {
            self.disconnected = true;
            self.events.push_back(Event::Disconnect(reason));
        }
    }

    fn hard_close(&mut self, err: ProtocolError) {
        self.phase = Phase::Closed;
        self.output = Vec::new();
        self.out_pos = 0;
        self.opt_buf = Vec::new();
        self.hdr_len = 0;
        self.inflight.clear();
        self.inflight_bytes = 0;
        // Requests not yet handed out can no longer be answered.
        self.events.retain(|e| !matches!(e, Event::Request(_)));
        self.event_bytes = 0;
        self.disconnect(DisconnectReason::Protocol(err));
    }

    /// Feed bytes received from the client. Returns how many were consumed;
    /// the rest must be offered again later (the connection stops consuming
    /// when it applies backpressure, see [`wants_read`](Self::wants_read)).
    /// Once the connection is ending, all input is consumed and ignored.
    pub fn push(&mut self, input: &[u8]) -> usize {
        let mut pos = 0;
        loop {
            if matches!(self.phase, Phase::Draining | Phase::Closed) {
                return input.len();
            }
            if pos == input.len() || (self.at_boundary() && !self.can_admit()) {
                return pos;
            }
            self.step(input, &mut pos);
        }
    }

    /// Accumulate into `hdr` up to `need` bytes; true when complete.
    fn fill_hdr(&mut self, input: &[u8], pos: &mut usize, need: usize) -> bool {
        let take = (need - self.hdr_len).min(input.len() - *pos);
        self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&input[*pos..*pos + take]);
        self.hdr_len += take;
        *pos += take;
        if self.hdr_len == need {
            self.hdr_len = 0;
            true
        } else {
            false
        }
    }

    fn step(&mut self, input: &[u8], pos: &mut usize) {
        let avail = input.len() - *pos;
        match &mut self.phase {
            Phase::ClientFlags => {
                if self.fill_hdr(input, pos, 4) {
                    self.on_client_flags(be32(&self.hdr));
                }
            }
            Phase::OptHeader => {
                if self.fill_hdr(input, pos, OPT_HEADER_LEN) {
                    let h = self.hdr;
                    self.on_option_header(be64(&h[0..]), be32(&h[8..]), be32(&h[12..]));
                }
            }
            Phase::OptData { opt, len } => {
                let (opt, len) = (*opt, *len);
                let take = (len - self.opt_buf.len()).min(avail);
                self.opt_buf.extend_from_slice(&input[*pos..*pos + take]);
                *pos += take;
                if self.opt_buf.len() == len {
                    let data = std::mem::take(&mut self.opt_buf);
                    self.phase = Phase::OptHeader;
                    self.on_option(opt, &data);
                }
            }
            Phase::OptSkip { remaining } => {
                let take = (*remaining).min(avail as u64);
                *remaining -= take;
                *pos += take as usize;
                if *remaining == 0 {
                    self.phase = Phase::OptHeader;
                }
            }
            Phase::ReqHeader => {
                if self.fill_hdr(input, pos, REQUEST_HEADER_LEN) {
                    let h = self.hdr;
                    self.on_request_header(&h);
                }
            }
            Phase::WriteData { req } => {
                let need = req.len as usize - req.data.len();
                let take = need.min(avail);
                if req.data.len() + take > req.data.capacity() {
                    req.data.reserve_exact(req.len as usize - req.data.len());
                }
                req.data.extend_from_slice(&input[*pos..*pos + take]);
                *pos += take;
                if req.data.len() == req.len as usize {
                    let Phase::WriteData { req } =
                        std::mem::replace(&mut self.phase, Phase::ReqHeader)
                    else {
                        unreachable!()
                    };
                    self.event_bytes += req.data.len();
                    self.events.push_back(Event::Request(req));
                }
            }
            Phase::WriteDiscard {
                remaining,
                handle,
                err,
            } => {
                let take = (*remaining as usize).min(avail);
                *remaining -= take as u32;
                *pos += take;
                if *remaining == 0 {
                    let (handle, err) = (*handle, *err);
                    self.phase = Phase::ReqHeader;
                    self.simple_reply(handle, err.code(), &[]);
                }
            }
            Phase::Draining | Phase::Closed => *pos = input.len(),
        }
    }

    // ---------------------------------------------------------------- handshake

    fn on_client_flags(&mut self, flags: u32) {
        if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
            self.hard_close(ProtocolError::BadClientFlags(flags));
            return;
        }
        self.fixed_newstyle = flags & FLAG_C_FIXED_NEWSTYLE != 0;
        self.no_zeroes = flags & FLAG_C_NO_ZEROES != 0;
        self.phase = Phase::OptHeader;
    }

    fn opt_reply(&mut self, opt: u32, rtype: u32, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.output
            .extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
        self.output.extend_from_slice(&opt.to_be_bytes());
        self.output.extend_from_slice(&rtype.to_be_bytes());
        self.output.extend_from_slice(&(len as u32).to_be_bytes());
        for p in parts {
            self.output.extend_from_slice(p);
        }
    }

    fn on_option_header(&mut self, magic: u64, opt: u32, len: u32) {
        if magic != IHAVEOPT {
            self.hard_close(ProtocolError::BadOptionMagic(magic));
            return;
        }
        self.options_seen += 1;
        if self.options_seen > self.config.max_options {
            self.hard_close(ProtocolError::TooManyOptions);
            return;
        }
        let known = matches!(
            opt,
            OPT_EXPORT_NAME | OPT_ABORT | OPT_LIST | OPT_INFO | OPT_GO
        );
        let refusal = if !self.fixed_newstyle && opt != OPT_EXPORT_NAME {
            // Only NBD_OPT_EXPORT_NAME exists without fixed newstyle; answer
            // like nbdkit does rather than dropping the client.
            Some(REP_ERR_INVALID)
        } else if !known {
            Some(REP_ERR_UNSUP)
        } else if len > self.config.max_option_len {
            if opt == OPT_EXPORT_NAME {
                // Cannot be answered with an error.
                self.hard_close(ProtocolError::BadExportName);
                return;
            }
            if opt == OPT_ABORT {
                // Data is to be ignored; the reply is the same.
                Some(REP_ACK)
            } else {
                Some(REP_ERR_TOO_BIG)
            }
        } else {
            None
        };
        match refusal {
            Some(rep) => {
                self.opt_reply(opt, rep, &[]);
                if opt == OPT_ABORT && rep == REP_ACK {
                    self.phase = Phase::Draining;
                    self.disconnect(DisconnectReason::ClientAbort);
                } else if len > 0 {
                    self.phase = Phase::OptSkip {
                        remaining: u64::from(len),
                    };
                }
            }
            None if len == 0 => self.on_option(opt, &[]),
            None => {
                self.opt_buf = Vec::with_capacity(len as usize);
                self.phase = Phase::OptData {
                    opt,
                    len: len as usize,
                };
            }
        }
    }

    fn on_option(&mut self, opt: u32, data: &[u8]) {
        match opt {
            OPT_EXPORT_NAME => {
                let info = valid_string(data).and_then(|n| self.catalog.lookup(n));
                match info {
                    None => self.hard_close(ProtocolError::BadExportName),
                    Some(info) => {
                        let info = self.normalize(info);
                        self.output.extend_from_slice(&info.size.to_be_bytes());
                        self.output
                            .extend_from_slice(&info.transmission_flags().to_be_bytes());
                        if !self.no_zeroes {
                            self.output.extend_from_slice(&[0u8; 124]);
                        }
                        self.enter_transmission(info);
                    }
                }
            }
            OPT_ABORT => {
                self.opt_reply(opt, REP_ACK, &[]);
                self.phase = Phase::Draining;
                self.disconnect(DisconnectReason::ClientAbort);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    self.opt_reply(opt, REP_ERR_INVALID, &[]);
                    return;
                }
                let mut entries = Vec::new();
                let mut total = OPT_REPLY_HEADER_LEN;
                for name in self.catalog.list() {
                    if valid_string(name.as_bytes()).is_none() {
                        continue;
                    }
                    let desc = self
                        .catalog
                        .lookup(&name)
                        .and_then(|e| e.description)
                        .filter(|d| valid_string(d.as_bytes()).is_some())
                        .unwrap_or_default();
                    total += OPT_REPLY_HEADER_LEN + 4 + name.len() + desc.len();
                    entries.push((name, desc));
                }
                if total > MAX_LIST_REPLY {
                    self.opt_reply(opt, REP_ERR_TOO_BIG, &[]);
                    return;
                }
                for (name, desc) in entries {
                    let nlen = (name.len() as u32).to_be_bytes();
                    self.opt_reply(opt, REP_SERVER, &[&nlen, name.as_bytes(), desc.as_bytes()]);
                }
                self.opt_reply(opt, REP_ACK, &[]);
            }
            OPT_INFO | OPT_GO => self.on_info_go(opt, data),
            _ => self.opt_reply(opt, REP_ERR_UNSUP, &[]),
        }
    }

    fn on_info_go(&mut self, opt: u32, data: &[u8]) {
        // 32-bit name length, name, 16-bit count, count x 16-bit info types.
        if data.len() < 6 {
            self.opt_reply(opt, REP_ERR_INVALID, &[]);
            return;
        }
        let name_len = be32(data) as usize;
        if name_len > data.len() - 6 {
            self.opt_reply(opt, REP_ERR_INVALID, &[]);
            return;
        }
        let name = &data[4..4 + name_len];
        let nreq = be16(&data[4 + name_len..]) as usize;
        if data.len() != 4 + name_len + 2 + 2 * nreq {
            self.opt_reply(opt, REP_ERR_INVALID, &[]);
            return;
        }
        let Some(name) = valid_string(name) else {
            self.opt_reply(opt, REP_ERR_INVALID, &[]);
            return;
        };
        let Some(info) = self.catalog.lookup(name) else {
            self.opt_reply(opt, REP_ERR_UNKNOWN, &[]);
            return;
        };
        let info = self.normalize(info);
        let mut export = [0u8; 12];
        export[0..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
        export[2..10].copy_from_slice(&info.size.to_be_bytes());
        export[10..12].copy_from_slice(&info.transmission_flags().to_be_bytes());
        self.opt_reply(opt, REP_INFO, &[&export]);
        let mut sent = [false; 4];
        sent[INFO_EXPORT as usize] = true;
        for i in 0..nreq {
            let off = 4 + name_len + 2 + 2 * i;
            let kind = be16(&data[off..]);
            if (kind as usize) >= sent.len() || sent[kind as usize] {
                continue; // unknown info requests are ignored
            }
            sent[kind as usize] = true;
            match kind {
                INFO_NAME if valid_string(info.name.as_bytes()).is_some() => {
                    let name = info.name.clone();
                    self.opt_reply(opt, REP_INFO, &[&INFO_NAME.to_be_bytes(), name.as_bytes()]);
                }
                INFO_DESCRIPTION => {
                    if let Some(d) = info
                        .description
                        .clone()
                        .filter(|d| valid_string(d.as_bytes()).is_some())
                    {
                        self.opt_reply(
                            opt,
                            REP_INFO,
                            &[&INFO_DESCRIPTION.to_be_bytes(), d.as_bytes()],
                        );
                    }
                }
                INFO_BLOCK_SIZE => {
                    let b = info.block_sizes;
                    let mut p = [0u8; 14];
                    p[0..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                    p[2..6].copy_from_slice(&b.min.to_be_bytes());
                    p[6..10].copy_from_slice(&b.preferred.to_be_bytes());
                    p[10..14].copy_from_slice(&b.max.to_be_bytes());
                    self.opt_reply(opt, REP_INFO, &[&p]);
                }
                _ => {}
            }
        }
        self.opt_reply(opt, REP_ACK, &[]);
        if opt == OPT_GO {
            self.enter_transmission(info);
        }
    }

    fn normalize(&self, mut info: ExportInfo) -> ExportInfo {
        info.block_sizes = info.block_sizes.normalized(self.config.max_payload);
        info
    }

    fn enter_transmission(&mut self, info: ExportInfo) {
        self.eflags = info.transmission_flags();
        self.export = Some(info.clone());
        self.opt_buf = Vec::new();
        self.phase = Phase::ReqHeader;
        self.events.push_back(Event::Ready(info));
    }

    // ------------------------------------------------------------- transmission

    fn simple_reply(&mut self, handle: u64, error: u32, data: &[u8]) {
        self.output
            .extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        self.output.extend_from_slice(&error.to_be_bytes());
        self.output.extend_from_slice(&handle.to_be_bytes());
        self.output.extend_from_slice(data);
    }

    /// Check a request against the export; `Err` is the error to reply.
    fn validate(&self, cmd: u16, flags: u16, offset: u64, len: u32) -> Result<Command, Errno> {
        let info = self.export.as_ref().expect("transmission phase");
        let ef = self.eflags;
        let command = match cmd {
            CMD_READ => Command::Read,
            CMD_WRITE => Command::Write,
            CMD_FLUSH => Command::Flush,
            CMD_TRIM => Command::Trim,
            CMD_WRITE_ZEROES => Command::WriteZeroes,
            _ => return Err(Errno::Inval), // unknown, CACHE, BLOCK_STATUS, ...
        };
        // Flags: FUA is valid on every command once advertised; NO_HOLE on
        // write-zeroes only; DF, REQ_ONE, FAST_ZERO were never advertised.
        let mut allowed = 0;
        if ef & FLAG_SEND_FUA != 0 {
            allowed |= CMD_FLAG_FUA;
        }
        if command == Command::WriteZeroes {
            allowed |= CMD_FLAG_NO_HOLE;
        }
        if flags & !allowed != 0 {
            return Err(Errno::Inval);
        }
        let writes = matches!(
            command,
            Command::Write | Command::Trim | Command::WriteZeroes
        );
        if writes && info.read_only {
            return Err(Errno::Perm);
        }
        let supported = match command {
            Command::Read | Command::Write => true,
            Command::Flush => ef & FLAG_SEND_FLUSH != 0,
            Command::Trim => ef & FLAG_SEND_TRIM != 0,
            Command::WriteZeroes => ef & FLAG_SEND_WRITE_ZEROES != 0,
        };
        if !supported {
            return Err(Errno::Inval);
        }
        if command == Command::Flush {
            return if offset == 0 && len == 0 {
                Ok(command)
            } else {
                Err(Errno::Inval)
            };
        }
        let in_range = offset
            .checked_add(u64::from(len))
            .is_some_and(|end| end <= info.size);
        if !in_range {
            return Err(match command {
                Command::Write | Command::WriteZeroes => Errno::NoSpc,
                _ => Errno::Inval,
            });
        }
        let min = u64::from(info.block_sizes.min);
        if !offset.is_multiple_of(min) || u64::from(len) % min != 0 {
            return Err(Errno::Inval);
        }
        if matches!(command, Command::Read | Command::Write) && len > info.block_sizes.max {
            return Err(Errno::Inval);
        }
        Ok(command)
    }

    fn on_request_header(&mut self, h: &[u8; REQUEST_HEADER_LEN]) {
        let magic = be32(&h[0..]);
        if magic != REQUEST_MAGIC {
            self.hard_close(ProtocolError::BadRequestMagic(magic));
            return;
        }
        let flags = be16(&h[4..]);
        let cmd = be16(&h[6..]);
        let handle = be64(&h[8..]);
        let offset = be64(&h[16..]);
        let len = be32(&h[24..]);
        if cmd == CMD_DISC {
            self.phase = Phase::Draining;
            self.disconnect(DisconnectReason::ClientDisc);
            return;
        }
        if cmd == CMD_WRITE && len > self.config.max_payload {
            self.hard_close(ProtocolError::OversizeWrite(len));
            return;
        }
        let command = match self.validate(cmd, flags, offset, len) {
            Ok(c) => c,
            Err(err) => {
                if cmd == CMD_WRITE && len > 0 {
                    self.phase = Phase::WriteDiscard {
                        remaining: len,
                        handle,
                        err,
                    };
                } else {
                    self.simple_reply(handle, err.code(), &[]);
                }
                return;
            }
        };
        if len == 0 && command != Command::Flush {
            // Nothing to do; the spec leaves empty requests unspecified
            // but says not to disconnect.
            self.simple_reply(handle, 0, &[]);
            return;
        }
        let charge = match command {
            Command::Read | Command::Write => len as usize,
            _ => 0,
        };
        self.inflight.push(InFlight {
            handle,
            cmd: command,
            len,
            charge,
        });
        self.inflight_bytes += charge;
        let req = Request {
            handle,
            cmd: command,
            offset,
            len,
            flags: CmdFlags(flags),
            data: Vec::new(),
        };
        if command == Command::Write {
            let mut req = req;
            req.data = match self.spare.pop() {
                Some(v) => {
                    self.spare_bytes -= v.capacity();
                    v
                }
                None => Vec::with_capacity((len as usize).min(256 * 1024)),
            };
            self.phase = Phase::WriteData { req };
        } else {
            self.events.push_back(Event::Request(req));
        }
    }

    /// Hand back the `data` of a write [`Request`] once the host is done
    /// with it; the next write's payload reuses it instead of allocating.
    /// At most [`SPARE_BYTES`] are kept.
    pub fn recycle(&mut self, mut data: Vec<u8>) {
        if self.spare_bytes + data.capacity() <= SPARE_BYTES {
            data.clear();
            self.spare_bytes += data.capacity();
            self.spare.push(data);
        }
    }

    fn take_inflight(&mut self, handle: u64) -> Option<InFlight> {
        let i = self.inflight.iter().position(|f| f.handle == handle)?;
        let f = self.inflight.remove(i);
        self.inflight_bytes -= f.charge;
        Some(f)
    }

    /// Answer a request handed out by [`Event::Request`]: `Ok(Some(data))`
    /// for a successful read (exactly `len` bytes), `Ok(None)` for any other
    /// success, `Err(errno)` for a failure (no data is sent, even for a
    /// read). Replies may come in any order. With duplicate handles in
    /// flight (a client bug), the oldest is answered first.
    ///
    /// Replies after a protocol error closed the connection are dropped
    /// (`Ok`).
    pub fn reply(
        &mut self,
        handle: u64,
        result: Result<Option<&[u8]>, Errno>,
    ) -> Result<(), ReplyError> {
        if matches!(self.phase, Phase::Closed) {
            return Ok(());
        }
        let Some(f) = self.inflight.iter().find(|f| f.handle == handle).copied() else {
            return Err(ReplyError::UnknownHandle(handle));
        };
        if let Phase::WriteData { req } = &self.phase {
            if req.handle == handle
                && self.inflight.iter().filter(|f| f.handle == handle).count() == 1
            {
                // The payload has not been received: the host cannot know it.
                return Err(ReplyError::UnknownHandle(handle));
            }
        }
        match (f.cmd, &result) {
            (Command::Read, Ok(Some(d))) if d.len() == f.len as usize => {}
            (Command::Read, Ok(_)) => return Err(ReplyError::DataMismatch(handle)),
            (_, Ok(Some(_))) => return Err(ReplyError::DataMismatch(handle)),
            _ => {}
        }
        self.take_inflight(handle);
        match result {
            Ok(data) => self.simple_reply(handle, 0, data.unwrap_or(&[])),
            Err(e) => self.simple_reply(handle, e.code(), &[]),
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
