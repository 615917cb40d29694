//! A minimal blocking NBD client and message encoders, for tests and
//! checkers (for example one that records which writes were acknowledged).
//!
//! It speaks what the server in this crate speaks: fixed newstyle,
//! `NBD_OPT_GO` (or `NBD_OPT_LIST`), simple replies.

use crate::errno::Errno;
use crate::export::BlockSizes;
use crate::proto::*;
use std::io::{self, Read, Write};

/// Encode one option: `IHAVEOPT`, option, length, data.
pub fn encode_option(opt: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(OPT_HEADER_LEN + data.len());
    v.extend_from_slice(&IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&opt.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// Encode the data of `NBD_OPT_INFO` / `NBD_OPT_GO`.
pub fn encode_info_request(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

/// Encode a request header (the payload of a write follows it).
pub fn encode_request(
    flags: u16,
    cmd: u16,
    handle: u64,
    offset: u64,
    len: u32,
) -> [u8; REQUEST_HEADER_LEN] {
    let mut h = [0u8; REQUEST_HEADER_LEN];
    h[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&flags.to_be_bytes());
    h[6..8].copy_from_slice(&cmd.to_be_bytes());
    h[8..16].copy_from_slice(&handle.to_be_bytes());
    h[16..24].copy_from_slice(&offset.to_be_bytes());
    h[24..28].copy_from_slice(&len.to_be_bytes());
    h
}

/// An error of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The server answered the request with an error value.
    #[error("server error {0}")]
    Server(u32),
    /// An option was refused with this reply type.
    #[error("option refused with reply type {0:#x}")]
    OptionRefused(u32),
    /// The server sent something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The NBD error value, if this is a server error reply.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            ClientError::Server(c) => Errno::from_code(*c),
            _ => None,
        }
    }
}

fn proto_err(s: impl Into<String>) -> ClientError {
    ClientError::Protocol(s.into())
}

/// One option reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptReply {
    /// The option answered.
    pub opt: u32,
    /// Reply type (`NBD_REP_*`).
    pub rtype: u32,
    /// Reply data.
    pub data: Vec<u8>,
}

/// Read one option reply (data capped at 1 MiB).
pub fn read_opt_reply<S: Read>(s: &mut S) -> Result<OptReply, ClientError> {
    let mut h = [0u8; OPT_REPLY_HEADER_LEN];
    s.read_exact(&mut h)?;
    let magic = u64::from_be_bytes(h[0..8].try_into().unwrap());
    if magic != OPT_REPLY_MAGIC {
        return Err(proto_err(format!("bad option reply magic {magic:#x}")));
    }
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
    if len > 1 << 20 {
        return Err(proto_err("option reply too long"));
    }
    let mut data = vec![0; len];
    s.read_exact(&mut data)?;
    Ok(OptReply {
        opt: u32::from_be_bytes(h[8..12].try_into().unwrap()),
        rtype: u32::from_be_bytes(h[12..16].try_into().unwrap()),
        data,
    })
}

/// Read the server greeting and send the client flags (fixed newstyle,
/// no zeroes).
pub fn greet<S: Read + Write>(s: &mut S) -> Result<u16, ClientError> {
    let mut g = [0u8; GREETING_LEN];
    s.read_exact(&mut g)?;
    if u64::from_be_bytes(g[0..8].try_into().unwrap()) != NBD_MAGIC
        || u64::from_be_bytes(g[8..16].try_into().unwrap()) != IHAVEOPT
    {
        return Err(proto_err("not a newstyle NBD server"));
    }
    let hflags = u16::from_be_bytes([g[16], g[17]]);
    let mut cflags = 0;
    if hflags & FLAG_FIXED_NEWSTYLE != 0 {
        cflags |= FLAG_C_FIXED_NEWSTYLE;
    }
    if hflags & FLAG_NO_ZEROES != 0 {
        cflags |= FLAG_C_NO_ZEROES;
    }
    s.write_all(&cflags.to_be_bytes())?;
    Ok(hflags)
}

/// List the exports of a server (`NBD_OPT_LIST`, then `NBD_OPT_ABORT`).
pub fn list<S: Read + Write>(mut s: S) -> Result<Vec<String>, ClientError> {
    greet(&mut s)?;
    s.write_all(&encode_option(OPT_LIST, &[]))?;
    let mut names = Vec::new();
    loop {
        let r = read_opt_reply(&mut s)?;
        match r.rtype {
            REP_SERVER => {
                if r.data.len() < 4 {
                    return Err(proto_err("short NBD_REP_SERVER"));
                }
                let n = u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize;
                let name = r
                    .data
                    .get(4..4 + n)
                    .ok_or_else(|| proto_err("bad NBD_REP_SERVER"))?;
                names.push(String::from_utf8_lossy(name).into_owned());
            }
            REP_ACK => break,
            t => return Err(ClientError::OptionRefused(t)),
        }
    }
    s.write_all(&encode_option(OPT_ABORT, &[]))?;
    let _ = read_opt_reply(&mut s);
    Ok(names)
}

/// A connected client in the transmission phase. Requests are sent one at
/// a time (or pipelined with [`send`](Client::send) / [`recv`](Client::recv)).
#[derive(Debug)]
pub struct Client<S> {
    stream: S,
    /// Export size.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Block sizes, if the server sent them.
    pub block_sizes: Option<BlockSizes>,
    /// Canonical name, if the server sent it.
    pub name: Option<String>,
    next_handle: u64,
}

impl<S: Read + Write> Client<S> {
    /// Handshake with `NBD_OPT_GO` on `export`, asking for the name and
    /// block sizes.
    pub fn connect(mut stream: S, export: &str) -> Result<Client<S>, ClientError> {
        greet(&mut stream)?;
        let data = encode_info_request(export, &[INFO_NAME, INFO_BLOCK_SIZE]);
        stream.write_all(&encode_option(OPT_GO, &data))?;
        let mut c = Client {
            stream,
            size: 0,
            flags: 0,
            block_sizes: None,
            name: None,
            next_handle: 1,
        };
        let mut got_export = false;
        loop {
            let r = read_opt_reply(&mut c.stream)?;
            if r.opt != OPT_GO {
                return Err(proto_err("reply to another option"));
            }
            match r.rtype {
                REP_INFO if r.data.len() >= 2 => {
                    let kind = u16::from_be_bytes([r.data[0], r.data[1]]);
                    let d = &r.data[2..];
                    match kind {
                        INFO_EXPORT if d.len() == 10 => {
                            c.size = u64::from_be_bytes(d[0..8].try_into().unwrap());
                            c.flags = u16::from_be_bytes([d[8], d[9]]);
                            got_export = true;
                        }
                        INFO_NAME => c.name = Some(String::from_utf8_lossy(d).into_owned()),
                        INFO_BLOCK_SIZE if d.len() == 12 => {
                            c.block_sizes = Some(BlockSizes {
                                min: u32::from_be_bytes(d[0..4].try_into().unwrap()),
                                preferred: u32::from_be_bytes(d[4..8].try_into().unwrap()),
                                max: u32::from_be_bytes(d[8..12].try_into().unwrap()),
                            })
                        }
                        _ => {}
                    }
                }
                REP_ACK if got_export => return Ok(c),
                REP_ACK => return Err(proto_err("ACK without NBD_INFO_EXPORT")),
                t => return Err(ClientError::OptionRefused(t)),
            }
        }
    }

    /// The socket.
    pub fn stream(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Send a request (and its payload) without waiting; returns the handle.
    pub fn send(
        &mut self,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Result<u64, ClientError> {
        let handle = self.next_handle;
        self.next_handle += 1;
        let mut msg = Vec::with_capacity(REQUEST_HEADER_LEN + payload.len());
        msg.extend_from_slice(&encode_request(flags, cmd, handle, offset, len));
        msg.extend_from_slice(payload);
        self.stream.write_all(&msg)?;
        Ok(handle)
    }

    /// Receive one simple reply; `read_len` is the payload length to expect
    /// if it answers a successful read (the caller knows from the handle).
    /// Returns the handle and the result.
    pub fn recv(
        &mut self,
        read_len: impl FnOnce(u64) -> usize,
    ) -> Result<(u64, Result<Vec<u8>, u32>), ClientError> {
        let mut h = [0u8; SIMPLE_REPLY_HEADER_LEN];
        self.stream.read_exact(&mut h)?;
        let magic = u32::from_be_bytes(h[0..4].try_into().unwrap());
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(proto_err(format!("bad reply magic {magic:#x}")));
        }
        let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let handle = u64::from_be_bytes(h[8..16].try_into().unwrap());
        if err != 0 {
            return Ok((handle, Err(err)));
        }
        let mut data = vec![0; read_len(handle)];
        self.stream.read_exact(&mut data)?;
        Ok((handle, Ok(data)))
    }

    fn call(
        &mut self,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let h = self.send(cmd, flags, offset, len, payload)?;
        let rlen = if cmd == CMD_READ { len as usize } else { 0 };
        let (rh, res) = self.recv(|_| rlen)?;
        if rh != h {
            return Err(proto_err("reply for another handle"));
        }
        res.map_err(ClientError::Server)
    }

    /// Read `len` bytes at `offset`.
    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, ClientError> {
        self.call(CMD_READ, 0, offset, len, &[])
    }

    /// Write `data` at `offset`, with FUA if asked.
    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<(), ClientError> {
        let flags = if fua { CMD_FLAG_FUA } else { 0 };
        self.call(CMD_WRITE, flags, offset, data.len() as u32, data)
            .map(|_| ())
    }

    /// Flush.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.call(CMD_FLUSH, 0, 0, 0, &[]).map(|_| ())
    }

    /// Trim.
    pub fn trim(&mut self, offset: u64, len: u32) -> Result<(), ClientError> {
        self.call(CMD_TRIM, 0, offset, len, &[]).map(|_| ())
    }

    /// Write zeroes.
    pub fn write_zeroes(
        &mut self,
        offset: u64,
        len: u32,
        no_hole: bool,
    ) -> Result<(), ClientError> {
        let flags = if no_hole { CMD_FLAG_NO_HOLE } else { 0 };
        self.call(CMD_WRITE_ZEROES, flags, offset, len, &[])
            .map(|_| ())
    }

    /// Send `NBD_CMD_DISC` and give the socket back.
    pub fn disconnect(mut self) -> Result<S, ClientError> {
        self.stream
            .write_all(&encode_request(0, CMD_DISC, 0, 0, 0))?;
        self.stream.flush()?;
        Ok(self.stream)
    }
}

/// Read from `s` until the server closes the connection (end of file,
/// reset or broken pipe); `Err` if it has not within `limit`. The caller
/// sets a short read timeout on `s` so the deadline is checked. Returns the
/// bytes received before the close (at most `keep` of them are kept).
pub fn read_until_closed<S: Read>(
    s: &mut S,
    limit: std::time::Duration,
    keep: usize,
) -> Result<Vec<u8>, String> {
    let deadline = std::time::Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => {
                if got.len() < keep {
                    got.extend_from_slice(&buf[..n]);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) =>
            {
                return Ok(got)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "server did not close the connection within {limit:?}"
            ));
        }
    }
}
