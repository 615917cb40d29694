//! Property tests: whatever bytes a client sends, in whatever pieces, and
//! however the host answers (or does not), the connection never panics,
//! never loops, and never holds more than its memory bound.

use mdraid_nbd::client::{encode_info_request, encode_option, encode_request};
use mdraid_nbd::proto::*;
use mdraid_nbd::{
    BlockSizes, Command, Errno, Event, ExportCatalog, ExportInfo, ServerConfig, ServerConn,
    StaticCatalog,
};
use proptest::prelude::*;
use std::sync::Arc;

const EXPORT_SIZE: u64 = 1 << 20;

fn catalog() -> Arc<dyn ExportCatalog> {
    let mut a = ExportInfo::new("a", EXPORT_SIZE);
    a.description = Some("export a".into());
    let mut ro = ExportInfo::new("ro", EXPORT_SIZE);
    ro.read_only = true;
    let mut s = ExportInfo::new("sect", EXPORT_SIZE);
    s.block_sizes = BlockSizes {
        min: 512,
        preferred: 4096,
        max: 32 * 1024,
    };
    Arc::new(StaticCatalog::new(vec![a, ro, s]))
}

fn small_config() -> ServerConfig {
    ServerConfig {
        max_payload: 64 * 1024,
        max_inflight: 4,
        max_inflight_bytes: 96 * 1024,
        max_option_len: 1024,
        max_options: 64,
        output_high_water: 8 * 1024,
    }
}

#[derive(Clone, Copy, Debug)]
struct Host {
    /// Answer requests as they come (else never).
    reply: bool,
    /// Fail every n-th answered request (0: never).
    fail_every: u8,
    /// Read the output every iteration (else only at the end).
    read_output: bool,
    small_limits: bool,
}

fn host() -> impl Strategy<Value = Host> {
    (
        prop::bool::weighted(0.8),
        0u8..4,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(reply, fail_every, read_output, small_limits)| Host {
            reply,
            fail_every,
            read_output,
            small_limits,
        })
}

/// Feed `input` in pieces of the given sizes (cycled) and play the host.
fn drive(input: &[u8], pieces: &[usize], h: Host) {
    let config = if h.small_limits {
        small_config()
    } else {
        ServerConfig::default()
    };
    let mut c = ServerConn::new(catalog(), config);
    let bound = c.memory_bound();
    let mut pos = 0;
    let mut piece = 0;
    let mut answered = 0u32;
    let mut eof_sent = false;
    let mut held: Vec<mdraid_nbd::Request> = Vec::new();
    let mut sent_out = 0usize;
    for _iteration in 0..1_000_000 {
        let held_bytes: usize = held.iter().map(|r| r.data.len()).sum();
        assert!(
            c.memory_in_use() <= bound && c.buffered_bytes() <= c.memory_in_use(),
            "in use {} (buffered {}, inflight {}) > bound {bound}",
            c.memory_in_use(),
            c.buffered_bytes(),
            c.inflight_bytes()
        );
        assert!(held_bytes <= c.inflight_bytes() || c.is_done());
        let mut progress = false;
        while let Some(ev) = c.poll_event() {
            progress = true;
            match ev {
                Event::Request(r) => {
                    assert!(r.len > 0 || r.cmd == Command::Flush);
                    assert!(r.offset + u64::from(r.len) <= EXPORT_SIZE || r.cmd == Command::Flush);
                    if r.cmd == Command::Write {
                        assert_eq!(r.data.len(), r.len as usize);
                    }
                    held.push(r);
                }
                Event::Ready(info) => assert!(info.block_sizes.is_valid()),
                Event::Disconnect(_) => {}
            }
        }
        if h.reply {
            for r in held.drain(..) {
                answered += 1;
                let fail = h.fail_every != 0 && answered.is_multiple_of(u32::from(h.fail_every));
                let res = if fail {
                    c.reply(r.handle, Err(Errno::Io))
                } else if r.cmd == Command::Read {
                    c.reply(r.handle, Ok(Some(&vec![0xab; r.len as usize])))
                } else {
                    c.reply(r.handle, Ok(None))
                };
                assert_eq!(res, Ok(()));
                progress = true;
            }
        }
        if h.read_output || pos == input.len() {
            let n = c.pending_output().len();
            if n > 0 {
                sent_out += n;
                c.advance_output(n);
                progress = true;
            }
        }
        if c.is_done() {
            return;
        }
        if pos < input.len() {
            if c.wants_read() {
                let len = pieces[piece % pieces.len()].max(1);
                piece += 1;
                let end = (pos + len).min(input.len());
                let n = c.push(&input[pos..end]);
                assert!(n <= end - pos);
                pos += n;
                progress |= n > 0;
            }
        } else if !eof_sent {
            eof_sent = true;
            c.eof();
            progress = true;
        }
        if !progress && !c.pending_output().is_empty() {
            // A slow client reads eventually.
            let n = c.pending_output().len();
            sent_out += n;
            c.advance_output(n);
            continue;
        }
        if !progress {
            // Only a host that never answers can leave the connection
            // waiting, and then only with requests in flight.
            assert!(!h.reply, "stuck with a replying host: {c:?}");
            assert!(c.inflight() > 0, "stuck without requests in flight: {c:?}");
            return;
        }
    }
    panic!("did not finish (sent {sent_out} bytes)");
}

/// A handshake reaching the transmission phase on export `name`.
fn handshake(name: &str, go: bool) -> Vec<u8> {
    let mut v = u32::to_be_bytes(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_vec();
    if go {
        v.extend(encode_option(
            OPT_GO,
            &encode_info_request(name, &[INFO_BLOCK_SIZE, INFO_NAME]),
        ));
    } else {
        v.extend(encode_option(OPT_EXPORT_NAME, name.as_bytes()));
    }
    v
}

#[derive(Clone, Debug)]
enum Msg {
    Opt(u32, Vec<u8>),
    Go(String, Vec<u16>),
    Req {
        flags: u16,
        cmd: u16,
        handle: u64,
        offset: u64,
        len: u32,
    },
}

fn option_msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        Just(Msg::Opt(OPT_LIST, vec![])),
        Just(Msg::Opt(OPT_STRUCTURED_REPLY, vec![])),
        (0u32..16, prop::collection::vec(any::<u8>(), 0..40)).prop_map(|(o, d)| Msg::Opt(o, d)),
        (
            prop_oneof![
                Just("a".to_string()),
                Just("ro".to_string()),
                Just("sect".to_string()),
                Just(String::new()),
                "[a-z]{0,6}"
            ],
            prop::collection::vec(0u16..5, 0..5)
        )
            .prop_map(|(n, i)| Msg::Go(n, i)),
    ]
}

fn request_msg() -> impl Strategy<Value = Msg> {
    let cmd = prop_oneof![
        8 => Just(CMD_READ),
        8 => Just(CMD_WRITE),
        3 => Just(CMD_FLUSH),
        3 => Just(CMD_TRIM),
        3 => Just(CMD_WRITE_ZEROES),
        1 => Just(CMD_DISC),
        1 => Just(CMD_CACHE),
        1 => any::<u16>(),
    ];
    let flags = prop_oneof![
        4 => Just(0u16),
        2 => Just(CMD_FLAG_FUA),
        1 => Just(CMD_FLAG_NO_HOLE),
        1 => any::<u16>(),
    ];
    let offset = prop_oneof![
        4 => (0u64..256).prop_map(|s| s * 4096),
        1 => any::<u64>(),
        1 => Just(EXPORT_SIZE),
    ];
    let len = prop_oneof![
        4 => (0u32..=16).prop_map(|s| s * 512),
        1 => 0u32..70_000,
        1 => any::<u32>(),
    ];
    (flags, cmd, 0u64..8, offset, len).prop_map(|(flags, cmd, handle, offset, len)| {
        // Mostly well-formed flushes.
        let (offset, len) = if cmd == CMD_FLUSH && handle < 6 {
            (0, 0)
        } else {
            (offset, len)
        };
        Msg::Req {
            flags,
            cmd,
            handle,
            offset,
            len,
        }
    })
}

fn session() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(option_msg(), 0..4),
        prop_oneof![Just("a"), Just("ro"), Just("sect")],
        any::<bool>(),
        prop::collection::vec(request_msg(), 0..24),
    )
        .prop_map(|(opts, name, go, reqs)| {
            let mut v = u32::to_be_bytes(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_vec();
            for m in opts {
                match m {
                    Msg::Opt(o, d) if o != OPT_EXPORT_NAME && o != OPT_GO && o != OPT_ABORT => {
                        v.extend(encode_option(o, &d))
                    }
                    Msg::Go(n, i) => {
                        v.extend(encode_option(OPT_INFO, &encode_info_request(&n, &i)))
                    }
                    _ => {}
                }
            }
            v.extend(&handshake(name, go)[4..]);
            for m in reqs {
                if let Msg::Req {
                    flags,
                    cmd,
                    handle,
                    offset,
                    len,
                } = m
                {
                    v.extend(encode_request(flags, cmd, handle, offset, len));
                    // Writes carry their payload, capped to keep inputs small.
                    if cmd == CMD_WRITE {
                        let n = (len as usize).min(70_000);
                        v.extend(std::iter::repeat_n((handle as u8) ^ 0x5a, n));
                    }
                }
            }
            v.extend(encode_request(0, CMD_DISC, 0, 0, 0));
            v
        })
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..32)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut v: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        if v.is_empty() {
            break;
        }
        match m {
            Mutation::Flip(i, x) => {
                let i = i % v.len();
                v[i] ^= x;
            }
            Mutation::Insert(i, b) => {
                let i = i % (v.len() + 1);
                v.splice(i..i, b.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let i = i % v.len();
                let end = (i + n).min(v.len());
                v.drain(i..end);
            }
            Mutation::Truncate(i) => v.truncate(i % v.len()),
        }
    }
    v
}

fn pieces() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![Just(1usize), 1usize..64, 64usize..100_000],
        1..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(
        prefix in prop_oneof![Just(0u8), Just(1), Just(2), Just(3)],
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        pieces in pieces(),
        h in host(),
    ) {
        let mut input = match prefix {
            0 => vec![],
            1 => u32::to_be_bytes(FLAG_C_FIXED_NEWSTYLE).to_vec(),
            2 => handshake("a", true),
            _ => handshake("sect", false),
        };
        input.extend(bytes);
        drive(&input, &pieces, h);
    }

    #[test]
    fn valid_session(s in session(), pieces in pieces(), h in host()) {
        drive(&s, &pieces, h);
    }

    #[test]
    fn mutated_session(
        s in session(),
        muts in prop::collection::vec(mutation(), 1..6),
        pieces in pieces(),
        h in host(),
    ) {
        drive(&mutate(s, &muts), &pieces, h);
    }

    /// Requests shaped like real ones but in arbitrary numbers, with a host
    /// that never answers and a client that never reads: the connection must
    /// stop reading at its bound.
    #[test]
    fn flood_is_bounded(reqs in prop::collection::vec(request_msg(), 1..400), pieces in pieces()) {
        let mut v = handshake("a", true);
        for m in reqs {
            if let Msg::Req { flags, cmd, handle, offset, len } = m {
                v.extend(encode_request(flags, cmd, handle, offset, len));
                if cmd == CMD_WRITE {
                    v.extend(std::iter::repeat_n(0u8, (len as usize).min(70_000)));
                }
            }
        }
        drive(&v, &pieces, Host { reply: false, fail_every: 0, read_output: false, small_limits: true });
    }
}
