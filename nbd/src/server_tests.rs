//! Unit tests of the connection state machine: byte sequences from the
//! spec for the handshake, every option, every command and every error.

use super::*;
use crate::client::{encode_info_request, encode_option, encode_request};
use crate::export::{BlockSizes, StaticCatalog};

const MIB: u64 = 1 << 20;

fn export(name: &str, size: u64) -> ExportInfo {
    ExportInfo::new(name, size)
}

fn catalog(exports: Vec<ExportInfo>) -> Arc<dyn ExportCatalog> {
    Arc::new(StaticCatalog::new(exports))
}

fn default_catalog() -> Arc<dyn ExportCatalog> {
    let mut a = export("disk", 16 * MIB);
    a.description = Some("first disk".into());
    let mut ro = export("ro", MIB);
    ro.read_only = true;
    catalog(vec![a, ro])
}

/// Take all pending output.
fn out(c: &mut ServerConn) -> Vec<u8> {
    let v = c.pending_output().to_vec();
    c.advance_output(v.len());
    v
}

fn events(c: &mut ServerConn) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// Push everything, asserting it is all consumed.
fn push_all(c: &mut ServerConn, b: &[u8]) {
    assert_eq!(c.push(b), b.len(), "input not fully consumed: {c:?}");
}

fn cflags(fixed: bool, no_zeroes: bool) -> [u8; 4] {
    let mut f = 0;
    if fixed {
        f |= FLAG_C_FIXED_NEWSTYLE;
    }
    if no_zeroes {
        f |= FLAG_C_NO_ZEROES;
    }
    u32::to_be_bytes(f)
}

/// Parsed option replies.
fn opt_replies(mut b: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let mut v = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= 20, "short option reply {b:?}");
        assert_eq!(be64(b), OPT_REPLY_MAGIC);
        let len = be32(&b[16..]) as usize;
        v.push((be32(&b[8..]), be32(&b[12..]), b[20..20 + len].to_vec()));
        b = &b[20 + len..];
    }
    v
}

/// Parsed simple replies; `read_len` gives the payload of successful
/// replies by handle.
fn simple_replies(mut b: &[u8], read_len: impl Fn(u64) -> usize) -> Vec<(u64, u32, Vec<u8>)> {
    let mut v = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= 16, "short reply {b:?}");
        assert_eq!(be32(b), SIMPLE_REPLY_MAGIC);
        let err = be32(&b[4..]);
        let handle = be64(&b[8..]);
        let n = if err == 0 { read_len(handle) } else { 0 };
        v.push((handle, err, b[16..16 + n].to_vec()));
        b = &b[16 + n..];
    }
    v
}

fn new_conn(cat: Arc<dyn ExportCatalog>) -> ServerConn {
    ServerConn::new(cat, ServerConfig::default())
}

/// A connection in the transmission phase on `name` (via NBD_OPT_GO).
fn go(cat: Arc<dyn ExportCatalog>, config: ServerConfig, name: &str) -> ServerConn {
    let mut c = ServerConn::new(cat, config);
    out(&mut c);
    push_all(&mut c, &cflags(true, true));
    push_all(
        &mut c,
        &encode_option(OPT_GO, &encode_info_request(name, &[])),
    );
    let r = opt_replies(&out(&mut c));
    assert_eq!(r.last().unwrap().1, REP_ACK, "{r:?}");
    assert!(matches!(events(&mut c).as_slice(), [Event::Ready(_)]));
    assert!(c.in_transmission());
    c
}

fn go_default(name: &str) -> ServerConn {
    go(default_catalog(), ServerConfig::default(), name)
}

fn req(c: &mut ServerConn, flags: u16, cmd: u16, handle: u64, offset: u64, len: u32) {
    push_all(c, &encode_request(flags, cmd, handle, offset, len));
}

/// The single reply now in the output, for a request with no payload.
fn one_reply(c: &mut ServerConn) -> (u64, u32) {
    let r = simple_replies(&out(c), |_| 0);
    assert_eq!(r.len(), 1, "{r:?}");
    (r[0].0, r[0].1)
}

fn one_request(c: &mut ServerConn) -> Request {
    match events(c).as_slice() {
        [Event::Request(r)] => r.clone(),
        e => panic!("expected one request, got {e:?}"),
    }
}

// ------------------------------------------------------------------ handshake

#[test]
fn greeting_is_fixed_newstyle_with_no_zeroes() {
    let mut c = new_conn(default_catalog());
    let g = out(&mut c);
    assert_eq!(&g[..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    assert_eq!(&g[16..], &[0, 3]);
    assert!(c.wants_read());
    assert!(!c.is_done());
}

#[test]
fn unknown_client_flags_close() {
    for f in [4u32, 0x8000_0000, 0xffff_ffff] {
        let mut c = new_conn(default_catalog());
        out(&mut c);
        push_all(&mut c, &f.to_be_bytes());
        assert!(c.is_done());
        assert!(c.pending_output().is_empty());
        assert_eq!(
            events(&mut c),
            vec![Event::Disconnect(DisconnectReason::Protocol(
                ProtocolError::BadClientFlags(f)
            ))]
        );
    }
}

#[test]
fn export_name_with_and_without_zeroes() {
    for no_zeroes in [false, true] {
        let mut c = new_conn(default_catalog());
        out(&mut c);
        push_all(&mut c, &cflags(true, no_zeroes));
        push_all(&mut c, &encode_option(OPT_EXPORT_NAME, b"disk"));
        let o = out(&mut c);
        assert_eq!(o.len(), if no_zeroes { 10 } else { 134 });
        assert_eq!(be64(&o), 16 * MIB);
        assert_eq!(
            be16(&o[8..]),
            FLAG_HAS_FLAGS
                | FLAG_SEND_FLUSH
                | FLAG_SEND_FUA
                | FLAG_SEND_TRIM
                | FLAG_SEND_WRITE_ZEROES
        );
        assert!(o[10..].iter().all(|&b| b == 0));
        match events(&mut c).as_slice() {
            [Event::Ready(info)] => assert_eq!(info.name, "disk"),
            e => panic!("{e:?}"),
        }
        assert!(c.in_transmission());
        assert_eq!(c.export().unwrap().size, 16 * MIB);
    }
}

#[test]
fn export_name_default_and_unknown() {
    let mut c = new_conn(default_catalog());
    out(&mut c);
    push_all(&mut c, &cflags(true, true));
    push_all(&mut c, &encode_option(OPT_EXPORT_NAME, b""));
    assert_eq!(be64(&out(&mut c)), 16 * MIB);

    for name in [&b"nope"[..], b"di\0sk", &[0xff, 0xfe]] {
        let mut c = new_conn(default_catalog());
        out(&mut c);
        push_all(&mut c, &cflags(true, true));
        push_all(&mut c, &encode_option(OPT_EXPORT_NAME, name));
        assert!(c.is_done());
        assert!(c.pending_output().is_empty());
        assert_eq!(
            events(&mut c),
            vec![Event::Disconnect(DisconnectReason::Protocol(
                ProtocolError::BadExportName
            ))]
        );
    }
    // No default export at all.
    let mut c = new_conn(catalog(vec![]));
    out(&mut c);
    push_all(&mut c, &cflags(true, true));
    push_all(&mut c, &encode_option(OPT_EXPORT_NAME, b""));
    assert!(c.is_done());
}

#[test]
fn abort_acks_then_finishes() {
    let mut c = new_conn(default_catalog());
    out(&mut c);
    push_all(&mut c, &cflags(true, false));
    push_all(&mut c, &encode_option(OPT_ABORT, &[]));
    assert!(!c.wants_read());
    assert!(!c.is_done(), "the ACK is still to be sent");
    assert_eq!(
        opt_replies(&out(&mut c)),
        vec![(OPT_ABORT, REP_ACK, vec![])]
    );
    assert!(c.is_done());
    assert_eq!(
        events(&mut c),
        vec![Event::Disconnect(DisconnectReason::ClientAbort)]
    );
    // Data sent with NBD_OPT_ABORT is ignored.
    let mut c = new_conn(default_catalog());
    out(&mut c);
    push_all(&mut c, &cflags(true, false));
    push_all(&mut c, &encode_option(OPT_ABORT, b"junk"));
    assert_eq!(
        opt_replies(&out(&mut c)),
        vec![(OPT_ABORT, REP_ACK, vec![])]
    );
    assert!(c.is_done());
}

#[test]
fn list_exports() {
    let mut c = new_conn(default_catalog());
    out(&mut c);
    push_all(&mut c, &cflags(true, true));
    push_all(&mut c, &encode_option(OPT_LIST, &[]));
    let r = opt_replies(&out(&mut c));
    let mut disk = vec![0, 0, 0, 4];
    disk.extend_from_slice(b"diskfirst disk");
    let mut ro = vec![0, 0, 0, 2];
    ro.extend_from_slice(b"ro");
    assert_eq!(
        r,
        vec![
            (OPT_LIST, REP_SERVER, disk),
            (OPT_LIST, REP_SERVER, ro),
            (OPT_LIST, REP_ACK, vec![])
        ]
    );
    // With data: invalid, and the session goes on.
    push_all(&mut c, &encode_option(OPT_LIST, b"x"));
    assert_eq!(
        opt_replies(&out(&mut c)),
        vec![(OPT_LIST, REP_ERR_INVALID, vec![])]
    );
    push_all(&mut c, &encode_option(OPT_EXPORT_NAME, b"ro"));
    assert_eq!(out(&mut c).len(), 10);
}

#[test]
fn list_too_big_is_refused() {
    let exports = (0..100)
        .map(|i| export(&format!("{i:0>1000}"), MIB))
        .collect();
    let mut c = new_conn(catalog(exports));
    out(&mut c);
    push_all(&mut c, &cflags(true, true));
    push_all(&mut c, &encode_option(OPT_LIST, &[]));
    assert_eq!(
        opt_replies(&out(&mut c)),
        vec![(OPT_LIST, REP_ERR_TOO_BIG, vec![])]
    );
}

#[test]
fn info_then_go() {
    let mut c = new_conn(default_catalog());
    out(&mut c);
    push_all(&mut c, &cflags(true, true));
    let data = encode_info_request(
        "",
        &[
            INFO_NAME,
            INFO_DESCRIPTION,
            INFO_BLOCK_SIZE,
            INFO_EXPORT,
            77,
            INFO_NAME,
        ],
    );
    push_all(&mut c, &encode_option(OPT_INFO, &data));
    let r = opt_replies(&out(&mut c));
    let mut exp = vec![0, 0];
    exp.extend_from_slice(&(16 * MIB).to_be_bytes());
    exp.extend_from_slice(
        &(FLAG_HAS_FLAGS
            | FLAG_SEND_FLUSH
            | FLAG_SEND_FUA
            | FLAG_SEND_TRIM
            | FLAG_SEND_WRITE_ZEROES)
            .to_be_bytes(),
    );
    let mut name = vec![0, 1];
    name.extend_from_slice(b"disk");
    let mut desc = vec![0, 2];
    desc.extend_from_slice(b"first disk");
    let mut bs = vec![0, 3];
    bs.extend_from_slice(&1u32.to_be_bytes());
    bs.extend_from_slice(&4096u32.to_be_bytes());
    bs.extend_from_slice(&DEFAULT_MAX_PAYLOAD.to_be_bytes());
    assert_eq!(
        r,
        vec![
            (OPT_INFO, REP_INFO, exp.clone()),
            (OPT_INFO, REP_INFO, name),
            (OPT_INFO, REP_INFO, desc),
            (OPT_INFO, REP_INFO, bs),
            (OPT_INFO, REP_ACK, vec![]),
        ]
    );
    assert!(!c.in_transmission());
    assert!(events(&mut c).is_empty());
    // GO without info requests still sends NBD_INFO_EXPORT.
    push_all(
        &mut c,
        &encode_option(OPT_GO, &encode_info_request("disk", &[])),
    );
    assert_eq!(
        opt_replies(&out(&mut c)),
        vec![(OPT_GO, REP_INFO, exp), (OPT_GO, REP_ACK, vec![])]
    );
    assert!(c.in_transmission());
    assert!(matches!(events(&mut c).as_slice(), [Event::Ready(_)]));
    // No zero padding after the ACK, and requests follow at once.
    req(&mut c, 0, CMD_FLUSH, 5, 0, 0);
    assert_eq!(one_request(&mut c).cmd, Command::Flush);
}

#[test]
fn go_unknown_export_then_retry() {
    let mut c = new_conn(default_catalog());
    out(&mut c);
    push_all(&mut c, &cflags(true, true));
    push_all(
        &mut c,
        &encode_option(OPT_GO, &encode_info_request("nope", &[])),
    );
    assert_eq!(
        opt_replies(&out(&mut c)),
        vec![(OPT_GO, REP_ERR_UNKNOWN, vec![])]
    );
    assert!(!c.in_transmission());
    push_all(
        &mut c,
        &encode_option(OPT_GO, &encode_info_request("ro", &[INFO_BLOCK_SIZE])),
    );
    let r = opt_replies(&out(&mut c));
    assert_eq!(r.len(), 3);
    assert_eq!(
        be16(&r[0].2[10..]),
        FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_SEND_FLUSH
    );
    assert!(c.in_transmission());
}

#[test]
fn go_malformed_is_invalid() {
    let mut bad: Vec<Vec<u8>> = vec![
        vec![],                       // shorter than 6
        vec![0, 0, 0, 0, 0],          // shorter than 6
        vec![0, 0, 0, 9, 0, 0],       // name longer than the data
        vec![0, 0, 0, 0, 0, 1],       // one info request announced, none sent
        vec![0, 0, 0, 0, 0, 0, 0, 1], // none announced, one sent
        vec![0xff, 0xff, 0xff, 0xff, 0, 0],
    ];
    bad.push(encode_info_request("di\0k", &[]));
    let mut nonutf8 = vec![0, 0, 0, 2, 0xc3, 0x28, 0, 0];
    bad.push(std::mem::take(&mut nonutf8));
    for opt in [OPT_INFO, OPT_GO] {
        let mut c = new_conn(default_catalog());
        out(&mut c);
        push_all(&mut c, &cflags(true, true));
        for data in &bad {
            push_all(&mut c, &encode_option(opt, data));
            assert_eq!(
                opt_replies(&out(&mut c)),
                vec![(opt, REP_ERR_INVALID, vec![])],
                "data {data:?}"
            );
        }
        assert!(!c.in_transmission());
        assert!(c.wants_read());
    }
}

#[test]
fn unsupported_options() {
    let mut c = new_conn(default_catalog());
    out(&mut c);
    push_all(&mut c, &cflags(true, true));
    for opt in [
        OPT_PEEK_EXPORT,
        OPT_STARTTLS,
        OPT_STRUCTURED_REPLY,
        OPT_LIST_META_CONTEXT,
        OPT_SET_META_CONTEXT,
        OPT_EXTENDED_HEADERS,
        0,
        12,
        0xdead_beef,
    ] {
        for data in [&b""[..], b"some option data"] {
            push_all(&mut c, &encode_option(opt, data));
            assert_eq!(
                opt_replies(&out(&mut c)),
                vec![(opt, REP_ERR_UNSUP, vec![])]
            );
        }
    }
    push_all(&mut c, &encode_option(OPT_EXPORT_NAME, b"disk"));
    assert_eq!(out(&mut c).len(), 10);
}

#[test]
fn oversize_options_are_skipped_without_buffering() {
    let mut c = new_conn(default_catalog());
    out(&mut c);
    push_all(&mut c, &cflags(true, true));
    let max = c.config().max_option_len;
    for (opt, rep) in [
        (OPT_GO, REP_ERR_TOO_BIG),
        (OPT_LIST, REP_ERR_TOO_BIG),
        (0x1234, REP_ERR_UNSUP),
    ] {
        let len: u32 = 64 * 1024 * 1024;
        let mut h = Vec::new();
        h.extend_from_slice(&IHAVEOPT.to_be_bytes());
        h.extend_from_slice(&opt.to_be_bytes());
        h.extend_from_slice(&len.to_be_bytes());
        push_all(&mut c, &h);
        assert_eq!(opt_replies(&out(&mut c)), vec![(opt, rep, vec![])]);
        let chunk = vec![0x55u8; 1 << 20];
        for _ in 0..64 {
            push_all(&mut c, &chunk);
            assert!(
                c.buffered_bytes() <= REQUEST_HEADER_LEN,
                "{}",
                c.buffered_bytes()
            );
        }
    }
    // Exactly at the limit is buffered and processed.
    let name = "x".repeat(max as usize - 6);
    push_all(
        &mut c,
        &encode_option(OPT_INFO, &encode_info_request(&name, &[])),
    );
    assert_eq!(
        opt_replies(&out(&mut c)),
        vec![(OPT_INFO, REP_ERR_INVALID, vec![])]
    );
    push_all(&mut c, &encode_option(OPT_EXPORT_NAME, b"disk"));
    assert_eq!(out(&mut c).len(), 10);

    // A too long NBD_OPT_EXPORT_NAME cannot be refused: close.
    let mut c = new_conn(default_catalog());
    out(&mut c);
    push_all(&mut c, &cflags(true, true));
    push_all(
        &mut c,
        &encode_option(OPT_EXPORT_NAME, &vec![b'a'; max as usize + 1]),
    );
    assert!(c.is_done());
}

#[test]
fn non_fixed_client_only_gets_export_name() {
    let mut c = new_conn(default_catalog());
    out(&mut c);
    push_all(&mut c, &cflags(false, false));
    push_all(
        &mut c,
        &encode_option(OPT_GO, &encode_info_request("disk", &[])),
    );
    assert_eq!(
        opt_replies(&out(&mut c)),
        vec![(OPT_GO, REP_ERR_INVALID, vec![])]
    );
    push_all(&mut c, &encode_option(OPT_EXPORT_NAME, b"disk"));
    assert_eq!(out(&mut c).len(), 134);
    assert!(c.in_transmission());
}

#[test]
fn bad_option_magic_closes() {
    let mut c = new_conn(default_catalog());
    out(&mut c);
    push_all(&mut c, &cflags(true, true));
    let mut o = encode_option(OPT_LIST, &[]);
    o[0] ^= 1;
    push_all(&mut c, &o);
    assert!(c.is_done());
    assert!(matches!(
        events(&mut c).as_slice(),
        [Event::Disconnect(DisconnectReason::Protocol(
            ProtocolError::BadOptionMagic(_)
        ))]
    ));
    // Further input is swallowed.
    assert_eq!(c.push(b"more"), 4);
    assert!(c.pending_output().is_empty());
}

#[test]
fn too_many_options_close() {
    let config = ServerConfig {
        max_options: 10,
        ..ServerConfig::default()
    };
    let mut c = ServerConn::new(default_catalog(), config);
    out(&mut c);
    push_all(&mut c, &cflags(true, true));
    for _ in 0..10 {
        push_all(&mut c, &encode_option(OPT_STRUCTURED_REPLY, &[]));
    }
    assert_eq!(opt_replies(&out(&mut c)).len(), 10);
    push_all(&mut c, &encode_option(OPT_STRUCTURED_REPLY, &[]));
    assert!(c.is_done());
}

#[test]
fn byte_at_a_time_equals_all_at_once() {
    let mut session = Vec::new();
    session.extend_from_slice(&cflags(true, true));
    session.extend_from_slice(&encode_option(OPT_LIST, &[]));
    session.extend_from_slice(&encode_option(OPT_STRUCTURED_REPLY, &[]));
    session.extend_from_slice(&encode_option(
        OPT_INFO,
        &encode_info_request("disk", &[INFO_BLOCK_SIZE]),
    ));
    session.extend_from_slice(&encode_option(OPT_GO, &encode_info_request("disk", &[])));
    session.extend_from_slice(&encode_request(0, CMD_WRITE, 1, 4096, 8));
    session.extend_from_slice(b"abcdefgh");
    session.extend_from_slice(&encode_request(0, CMD_READ, 2, 0, 4));
    session.extend_from_slice(&encode_request(0, 200, 3, 0, 0));

    let run = |chunk: usize| {
        let mut c = new_conn(default_catalog());
        let mut o = out(&mut c);
        let mut ev = Vec::new();
        for piece in session.chunks(chunk) {
            push_all(&mut c, piece);
            o.extend(out(&mut c));
            ev.extend(events(&mut c));
        }
        (o, ev)
    };
    let whole = run(session.len());
    assert_eq!(run(1), whole);
    assert_eq!(run(7), whole);
    let (_, ev) = whole;
    assert_eq!(ev.len(), 3, "{ev:?}");
    match &ev[1] {
        Event::Request(r) => {
            assert_eq!(
                (r.cmd, r.offset, r.len, r.handle),
                (Command::Write, 4096, 8, 1)
            );
            assert_eq!(r.data, b"abcdefgh");
        }
        e => panic!("{e:?}"),
    }
}

// --------------------------------------------------------------- transmission

#[test]
fn read_reply_carries_data() {
    let mut c = go_default("disk");
    req(&mut c, 0, CMD_READ, 0xfeed, 512, 8);
    let r = one_request(&mut c);
    assert_eq!(
        r,
        Request {
            handle: 0xfeed,
            cmd: Command::Read,
            offset: 512,
            len: 8,
            flags: CmdFlags(0),
            data: vec![]
        }
    );
    assert_eq!(c.inflight(), 1);
    assert_eq!(c.inflight_bytes(), 8);
    c.reply(0xfeed, Ok(Some(b"12345678"))).unwrap();
    let o = out(&mut c);
    let mut want = Vec::new();
    want.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    want.extend_from_slice(&0u32.to_be_bytes());
    want.extend_from_slice(&0xfeedu64.to_be_bytes());
    want.extend_from_slice(b"12345678");
    assert_eq!(o, want);
    assert_eq!(c.inflight(), 0);
    assert_eq!(c.inflight_bytes(), 0);
}

#[test]
fn read_error_has_no_payload() {
    let mut c = go_default("disk");
    req(&mut c, 0, CMD_READ, 9, 0, 4096);
    one_request(&mut c);
    c.reply(9, Err(Errno::Io)).unwrap();
    assert_eq!(one_reply(&mut c), (9, 5));
}

#[test]
fn write_payload_split_and_fua() {
    let mut c = go_default("disk");
    let data: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    push_all(
        &mut c,
        &encode_request(CMD_FLAG_FUA, CMD_WRITE, 7, 8192, 4096),
    );
    assert!(events(&mut c).is_empty());
    assert_eq!(c.inflight(), 1);
    for piece in data.chunks(1000) {
        assert!(c.wants_read());
        push_all(&mut c, piece);
    }
    let r = one_request(&mut c);
    assert_eq!(r.cmd, Command::Write);
    assert!(r.flags.fua());
    assert!(!r.flags.no_hole());
    assert_eq!(r.data, data);
    c.reply(7, Ok(None)).unwrap();
    assert_eq!(one_reply(&mut c), (7, 0));
}

#[test]
fn recycled_write_payloads_are_reused() {
    let mut c = go_default("disk");
    let mut last = None;
    for h in 0..4u64 {
        push_all(&mut c, &encode_request(0, CMD_WRITE, h, 0, 4096));
        push_all(&mut c, &[h as u8; 4096]);
        // Taken by value (one_request clones), so its buffer is the one
        // the connection filled.
        let Some(Event::Request(r)) = c.poll_event() else {
            panic!("no write request");
        };
        assert_eq!(r.data, vec![h as u8; 4096]);
        let ptr = r.data.as_ptr();
        if let Some(p) = last {
            assert_eq!(ptr, p, "write {h} did not reuse the recycled payload");
        }
        last = Some(ptr);
        c.recycle(r.data);
        c.reply(h, Ok(None)).unwrap();
        assert_eq!(one_reply(&mut c), (h, 0));
    }
    assert!(c.memory_in_use() <= c.memory_bound());
    // Beyond the cap nothing more is kept.
    c.recycle(Vec::with_capacity(SPARE_BYTES));
    assert!(c.memory_in_use() <= c.memory_bound());
}

#[test]
fn flush_trim_write_zeroes() {
    let mut c = go_default("disk");
    req(&mut c, 0, CMD_FLUSH, 1, 0, 0);
    assert_eq!(one_request(&mut c).cmd, Command::Flush);
    req(&mut c, CMD_FLAG_FUA, CMD_TRIM, 2, 4096, 1 << 30 >> 8);
    let r = one_request(&mut c);
    assert_eq!((r.cmd, r.flags.fua()), (Command::Trim, true));
    req(
        &mut c,
        CMD_FLAG_NO_HOLE | CMD_FLAG_FUA,
        CMD_WRITE_ZEROES,
        3,
        0,
        16 * MIB as u32,
    );
    let r = one_request(&mut c);
    assert_eq!(
        (r.cmd, r.flags.no_hole(), r.len),
        (Command::WriteZeroes, true, 16 << 20)
    );
    assert_eq!(c.inflight(), 3);
    assert_eq!(c.inflight_bytes(), 0, "no payload in either direction");
    for h in [3, 1, 2] {
        c.reply(h, Ok(None)).unwrap();
    }
    let r = simple_replies(&out(&mut c), |_| 0);
    assert_eq!(
        r.iter().map(|x| (x.0, x.1)).collect::<Vec<_>>(),
        vec![(3, 0), (1, 0), (2, 0)]
    );
}

#[test]
fn trim_and_write_zeroes_may_exceed_max_payload() {
    let mut c = go_default("disk");
    req(&mut c, 0, CMD_WRITE_ZEROES, 1, 0, 16 << 20);
    one_request(&mut c);
    let mut e = export("big", 1 << 40);
    e.block_sizes.max = 1 << 20;
    let mut c = go(catalog(vec![e]), ServerConfig::default(), "big");
    req(&mut c, 0, CMD_TRIM, 1, 0, u32::MAX - 4095);
    assert_eq!(one_request(&mut c).len, u32::MAX - 4095);
}

#[test]
fn disconnect_waits_for_inflight() {
    let mut c = go_default("disk");
    req(&mut c, 0, CMD_READ, 1, 0, 4);
    let mut b = encode_request(0, CMD_DISC, 2, 0, 0).to_vec();
    b.extend_from_slice(b"trailing garbage after DISC is ignored");
    push_all(&mut c, &b);
    let ev = events(&mut c);
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[1], Event::Disconnect(DisconnectReason::ClientDisc));
    assert!(!c.wants_read());
    assert!(!c.is_done());
    c.reply(1, Ok(Some(b"abcd"))).unwrap();
    assert!(!c.is_done(), "reply not yet sent");
    assert_eq!(simple_replies(&out(&mut c), |_| 4)[0].2, b"abcd");
    assert!(c.is_done());
}

#[test]
fn unknown_commands_are_einval() {
    let mut c = go_default("disk");
    for (h, cmd) in [
        (1, CMD_CACHE),
        (2, CMD_BLOCK_STATUS),
        (3, 8),
        (4, 99),
        (5, 0xffff),
    ] {
        req(&mut c, 0, cmd, h, 0, 512);
        assert_eq!(one_reply(&mut c), (h, Errno::Inval.code()));
    }
    assert!(events(&mut c).is_empty());
    assert!(c.wants_read());
}

#[test]
fn bad_flags_are_einval() {
    let mut c = go_default("disk");
    for (h, flags, cmd) in [
        (1, CMD_FLAG_NO_HOLE, CMD_WRITE),
        (2, CMD_FLAG_NO_HOLE, CMD_READ),
        (3, CMD_FLAG_DF, CMD_READ),
        (4, CMD_FLAG_REQ_ONE, CMD_READ),
        (5, CMD_FLAG_FAST_ZERO, CMD_WRITE_ZEROES),
        (6, 1 << 9, CMD_FLUSH),
        (7, 0x8000, CMD_TRIM),
    ] {
        req(
            &mut c,
            flags,
            cmd,
            h,
            0,
            if cmd == CMD_FLUSH { 0 } else { 512 },
        );
        if cmd == CMD_WRITE {
            assert!(c.pending_output().is_empty(), "payload must be read first");
            push_all(&mut c, &[0; 512]);
        }
        assert_eq!(
            one_reply(&mut c),
            (h, Errno::Inval.code()),
            "flags {flags:#x} cmd {cmd}"
        );
    }
    // FUA on any command is fine once advertised, even flush and read.
    req(&mut c, CMD_FLAG_FUA, CMD_READ, 8, 0, 512);
    assert!(one_request(&mut c).flags.fua());
    req(&mut c, CMD_FLAG_FUA, CMD_FLUSH, 9, 0, 0);
    one_request(&mut c);
    // Not advertised: EINVAL.
    let mut e = export("nofua", MIB);
    e.can_fua = false;
    let mut c = go(catalog(vec![e]), ServerConfig::default(), "nofua");
    req(&mut c, CMD_FLAG_FUA, CMD_READ, 1, 0, 512);
    assert_eq!(one_reply(&mut c), (1, Errno::Inval.code()));
}

#[test]
fn out_of_range() {
    let size = 16 * MIB;
    let mut c = go_default("disk");
    let cases: [(u16, u64, u32, Errno); 7] = [
        (CMD_READ, size, 1, Errno::Inval),
        (CMD_READ, size - 512, 1024, Errno::Inval),
        (CMD_READ, u64::MAX - 10, 512, Errno::Inval),
        (CMD_TRIM, size - 512, 1024, Errno::Inval),
        (CMD_WRITE, size - 512, 1024, Errno::NoSpc),
        (CMD_WRITE, u64::MAX, 4, Errno::NoSpc),
        (CMD_WRITE_ZEROES, size, 512, Errno::NoSpc),
    ];
    for (i, (cmd, off, len, err)) in cases.into_iter().enumerate() {
        let h = i as u64;
        req(&mut c, 0, cmd, h, off, len);
        if cmd == CMD_WRITE {
            // The payload is consumed (not taken for the next header).
            push_all(&mut c, &vec![0xaa; len as usize]);
        }
        assert_eq!(one_reply(&mut c), (h, err.code()), "case {i}");
    }
    // The very end is fine.
    req(&mut c, 0, CMD_READ, 100, size - 512, 512);
    one_request(&mut c);
    // Zero-length at the end is answered by the connection.
    req(&mut c, 0, CMD_READ, 101, size, 0);
    assert_eq!(one_reply(&mut c), (101, 0));
}

#[test]
fn read_only_export() {
    let mut c = go_default("ro");
    req(&mut c, 0, CMD_WRITE, 1, 0, 4);
    push_all(&mut c, b"abcd");
    assert_eq!(one_reply(&mut c), (1, Errno::Perm.code()));
    req(&mut c, 0, CMD_TRIM, 2, 0, 4);
    assert_eq!(one_reply(&mut c), (2, Errno::Perm.code()));
    req(&mut c, 0, CMD_WRITE_ZEROES, 3, 0, 4);
    assert_eq!(one_reply(&mut c), (3, Errno::Perm.code()));
    req(&mut c, 0, CMD_READ, 4, 0, 4);
    one_request(&mut c);
    req(&mut c, 0, CMD_FLUSH, 5, 0, 0);
    one_request(&mut c);
}

#[test]
fn commands_not_advertised() {
    let mut e = export("bare", MIB);
    e.can_flush = false;
    e.can_trim = false;
    e.can_write_zeroes = false;
    e.can_fua = false;
    assert_eq!(e.transmission_flags(), FLAG_HAS_FLAGS);
    let mut c = go(catalog(vec![e]), ServerConfig::default(), "bare");
    req(&mut c, 0, CMD_FLUSH, 1, 0, 0);
    assert_eq!(one_reply(&mut c), (1, Errno::Inval.code()));
    req(&mut c, 0, CMD_TRIM, 2, 0, 512);
    assert_eq!(one_reply(&mut c), (2, Errno::Inval.code()));
    req(&mut c, 0, CMD_WRITE_ZEROES, 3, 0, 512);
    assert_eq!(one_reply(&mut c), (3, Errno::Inval.code()));
    // Flush with a range is invalid even where flush exists.
    let mut c = go_default("disk");
    req(&mut c, 0, CMD_FLUSH, 4, 512, 0);
    assert_eq!(one_reply(&mut c), (4, Errno::Inval.code()));
    req(&mut c, 0, CMD_FLUSH, 5, 0, 512);
    assert_eq!(one_reply(&mut c), (5, Errno::Inval.code()));
}

#[test]
fn alignment_to_min_block() {
    let mut e = export("sect", MIB);
    e.block_sizes = BlockSizes {
        min: 512,
        preferred: 4096,
        max: 1 << 20,
    };
    let mut c = go(catalog(vec![e]), ServerConfig::default(), "sect");
    req(&mut c, 0, CMD_READ, 1, 1, 512);
    assert_eq!(one_reply(&mut c), (1, Errno::Inval.code()));
    req(&mut c, 0, CMD_READ, 2, 512, 100);
    assert_eq!(one_reply(&mut c), (2, Errno::Inval.code()));
    req(&mut c, 0, CMD_WRITE, 3, 512, 100);
    push_all(&mut c, &[0; 100]);
    assert_eq!(one_reply(&mut c), (3, Errno::Inval.code()));
    req(&mut c, 0, CMD_READ, 4, 1024, 1024);
    one_request(&mut c);
}

#[test]
fn oversize_requests() {
    let mut e = export("small", 1 << 30);
    e.block_sizes.max = 1 << 20; // advertised maximum payload 1 MiB
    let config = ServerConfig {
        max_payload: 4 << 20, // hard limit 4 MiB
        ..ServerConfig::default()
    };
    let mut c = go(catalog(vec![e]), config, "small");
    // Read above the advertised maximum: EINVAL.
    req(&mut c, 0, CMD_READ, 1, 0, 2 << 20);
    assert_eq!(one_reply(&mut c), (1, Errno::Inval.code()));
    // Write above the advertised maximum but within the hard limit:
    // payload consumed without buffering, then EINVAL.
    req(&mut c, 0, CMD_WRITE, 2, 0, 2 << 20);
    for _ in 0..32 {
        push_all(&mut c, &[7; 65536]);
        assert!(c.buffered_bytes() <= 64);
    }
    assert_eq!(one_reply(&mut c), (2, Errno::Inval.code()));
    assert_eq!(c.inflight(), 0);
    // The session goes on.
    req(&mut c, 0, CMD_READ, 3, 0, 1 << 20);
    one_request(&mut c);
    // Write above the hard limit: closed at once.
    req(&mut c, 0, CMD_WRITE, 4, 0, (4 << 20) + 1);
    assert!(c.is_done());
    assert!(matches!(
        events(&mut c).as_slice(),
        [Event::Disconnect(DisconnectReason::Protocol(
            ProtocolError::OversizeWrite(_)
        ))]
    ));
    // Late replies are dropped quietly.
    assert_eq!(c.reply(3, Ok(Some(&vec![0; 1 << 20]))), Ok(()));
    assert!(c.pending_output().is_empty());
}

#[test]
fn zero_length_requests_answered_directly() {
    let mut c = go_default("disk");
    for (h, cmd) in [
        (1, CMD_READ),
        (2, CMD_WRITE),
        (3, CMD_TRIM),
        (4, CMD_WRITE_ZEROES),
    ] {
        req(&mut c, 0, cmd, h, 4096, 0);
        assert_eq!(one_reply(&mut c), (h, 0));
    }
    assert!(events(&mut c).is_empty());
}

#[test]
fn bad_request_magic_closes_and_drops_output() {
    let mut c = go_default("disk");
    req(&mut c, 0, CMD_READ, 1, 0, 512);
    one_request(&mut c);
    req(&mut c, 0, 99, 2, 0, 0); // an error reply is pending
    assert!(!c.pending_output().is_empty());
    let mut h = encode_request(0, CMD_READ, 3, 0, 512);
    h[3] = 0;
    push_all(&mut c, &h);
    assert!(c.is_done());
    assert!(c.pending_output().is_empty());
    assert_eq!(c.inflight(), 0);
    assert!(!c.wants_read());
    assert_eq!(c.reply(1, Ok(Some(&[0; 512]))), Ok(()));
    assert!(c.pending_output().is_empty());
}

#[test]
fn backpressure_on_inflight_count_and_bytes() {
    let config = ServerConfig {
        max_inflight: 4,
        max_inflight_bytes: 1 << 30,
        ..ServerConfig::default()
    };
    let mut c = go(default_catalog(), config, "disk");
    let mut b = Vec::new();
    for h in 0..10 {
        b.extend_from_slice(&encode_request(0, CMD_READ, h, 0, 512));
    }
    let n = c.push(&b);
    assert_eq!(n, 4 * REQUEST_HEADER_LEN);
    assert!(!c.wants_read());
    assert_eq!(events(&mut c).len(), 4);
    assert_eq!(c.push(&b[n..]), 0);
    c.reply(2, Ok(Some(&[0; 512]))).unwrap();
    assert!(c.wants_read());
    assert_eq!(c.push(&b[n..]), REQUEST_HEADER_LEN);

    let config = ServerConfig {
        max_inflight: 100,
        max_inflight_bytes: 1 << 20,
        ..ServerConfig::default()
    };
    let mut c = go(default_catalog(), config, "disk");
    let mut b = Vec::new();
    for h in 0..10 {
        b.extend_from_slice(&encode_request(0, CMD_READ, h, 0, 256 << 10));
    }
    assert_eq!(c.push(&b), 4 * REQUEST_HEADER_LEN);
    assert!(!c.wants_read());
}

#[test]
fn backpressure_on_unsent_output() {
    let config = ServerConfig {
        output_high_water: 4096,
        ..ServerConfig::default()
    };
    let mut c = go(default_catalog(), config, "disk");
    // A client that sends bad requests and never reads the replies.
    let mut b = Vec::new();
    for h in 0..10_000 {
        b.extend_from_slice(&encode_request(0, 99, h, 0, 0));
    }
    let n = c.push(&b);
    assert_eq!(n, 4096 / SIMPLE_REPLY_HEADER_LEN * REQUEST_HEADER_LEN);
    assert!(!c.wants_read());
    assert!(c.pending_output().len() <= 4096);
    out(&mut c);
    assert!(c.wants_read());
}

#[test]
fn eof_at_boundary_is_clean() {
    let mut c = go_default("disk");
    req(&mut c, 0, CMD_WRITE, 1, 0, 4);
    push_all(&mut c, b"wxyz");
    one_request(&mut c);
    c.eof();
    assert_eq!(
        events(&mut c),
        vec![Event::Disconnect(DisconnectReason::Eof)]
    );
    assert!(!c.wants_read());
    assert!(!c.is_done());
    c.reply(1, Ok(None)).unwrap();
    assert_eq!(one_reply(&mut c), (1, 0));
    assert!(c.is_done());
    c.eof(); // idempotent
    assert!(events(&mut c).is_empty());
}

#[test]
fn eof_mid_message_drops_the_partial_request() {
    let mut c = go_default("disk");
    req(&mut c, 0, CMD_WRITE, 1, 0, 4096);
    push_all(&mut c, &[0; 100]);
    assert_eq!(c.inflight(), 1);
    c.eof();
    assert_eq!(
        events(&mut c),
        vec![Event::Disconnect(DisconnectReason::Protocol(
            ProtocolError::Truncated
        ))]
    );
    assert_eq!(c.inflight(), 0);
    assert_eq!(c.inflight_bytes(), 0);
    assert!(c.is_done());

    let mut c = go_default("disk");
    push_all(&mut c, &encode_request(0, CMD_READ, 1, 0, 4)[..10]);
    c.eof();
    assert!(c.is_done());

    // EOF in the handshake.
    let mut c = new_conn(default_catalog());
    push_all(&mut c, &cflags(true, true)[..2]);
    c.eof();
    out(&mut c);
    assert!(c.is_done());
}

#[test]
fn reply_errors() {
    let mut c = go_default("disk");
    assert_eq!(c.reply(42, Ok(None)), Err(ReplyError::UnknownHandle(42)));
    req(&mut c, 0, CMD_READ, 1, 0, 8);
    req(&mut c, 0, CMD_FLUSH, 2, 0, 0);
    events(&mut c);
    assert_eq!(c.reply(1, Ok(None)), Err(ReplyError::DataMismatch(1)));
    assert_eq!(
        c.reply(1, Ok(Some(b"short"))),
        Err(ReplyError::DataMismatch(1))
    );
    assert_eq!(c.reply(2, Ok(Some(b"x"))), Err(ReplyError::DataMismatch(2)));
    assert_eq!(c.inflight(), 2, "refused replies leave requests in flight");
    c.reply(1, Err(Errno::NoMem)).unwrap();
    c.reply(2, Err(Errno::Io)).unwrap();
    assert_eq!(c.reply(2, Ok(None)), Err(ReplyError::UnknownHandle(2)));
    let r = simple_replies(&out(&mut c), |_| 0);
    assert_eq!(r, vec![(1, 12, vec![]), (2, 5, vec![])]);
    // A write whose payload has not arrived cannot be answered.
    req(&mut c, 0, CMD_WRITE, 3, 0, 8);
    assert_eq!(c.reply(3, Ok(None)), Err(ReplyError::UnknownHandle(3)));
}

#[test]
fn duplicate_handles_are_answered_in_turn() {
    let mut c = go_default("disk");
    req(&mut c, 0, CMD_READ, 7, 0, 4);
    req(&mut c, 0, CMD_READ, 7, 0, 8);
    assert_eq!(events(&mut c).len(), 2);
    c.reply(7, Ok(Some(b"1234"))).unwrap();
    c.reply(7, Ok(Some(b"12345678"))).unwrap();
    assert_eq!(c.inflight(), 0);
}

#[test]
fn shutdown_drains() {
    let mut c = go_default("disk");
    req(&mut c, 0, CMD_READ, 1, 0, 4);
    one_request(&mut c);
    c.begin_shutdown();
    assert_eq!(
        events(&mut c),
        vec![Event::Disconnect(DisconnectReason::Shutdown)]
    );
    assert!(!c.wants_read());
    assert!(!c.is_done());
    c.reply(1, Ok(Some(b"abcd"))).unwrap();
    out(&mut c);
    assert!(c.is_done());
    // In the handshake.
    let mut c = new_conn(default_catalog());
    c.begin_shutdown();
    assert!(!c.is_done(), "the greeting is still unsent");
    out(&mut c);
    assert!(c.is_done());
}

#[test]
fn memory_bound_covers_config() {
    let c = new_conn(default_catalog());
    let cfg = ServerConfig::default();
    assert!(c.memory_bound() >= cfg.max_inflight_bytes + cfg.max_payload as usize);
    assert!(c.memory_bound() < 200 << 20);
    // Tiny limits are clamped to something workable.
    let c = ServerConn::new(
        default_catalog(),
        ServerConfig {
            max_payload: 1,
            max_inflight: 0,
            max_inflight_bytes: 0,
            ..ServerConfig::default()
        },
    );
    assert_eq!(c.config().max_payload, 64 * 1024);
    assert_eq!(c.config().max_inflight, 1);
}

#[test]
fn hard_close_drops_requests_not_handed_out() {
    let mut c = go_default("disk");
    let mut b = Vec::new();
    b.extend_from_slice(&encode_request(0, CMD_READ, 1, 0, 512));
    b.extend_from_slice(&encode_request(0, CMD_WRITE, 2, 0, 4));
    b.extend_from_slice(b"abcd");
    b.extend_from_slice(b"not a request header at all!");
    push_all(&mut c, &b);
    assert!(c.is_done());
    assert_eq!(c.buffered_bytes(), 0);
    assert!(matches!(
        events(&mut c).as_slice(),
        [Event::Disconnect(DisconnectReason::Protocol(
            ProtocolError::BadRequestMagic(_)
        ))]
    ));
}
