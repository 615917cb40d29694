//! Property tests: arbitrary input never panics the decoder, the
//! connection or the params decoders, and how bytes are split into reads
//! never changes what is decoded.

mod common;

use common::FakeDaemon;
use mdraid_rpc::{Call, ConnState, Connection, Decoder, Method};
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

fn frames_debug(chunks: &[&[u8]]) -> Vec<String> {
    let mut d = Decoder::with_limit(4096);
    let mut out = Vec::new();
    for c in chunks {
        d.push(c);
        out.extend(d.by_ref().map(|f| format!("{f:?}")));
    }
    out
}

/// Token soup that is often nearly JSON-RPC.
fn soup() -> impl Strategy<Value = Vec<u8>> {
    let tok = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(":".to_string()),
        Just(",".to_string()),
        Just(" ".to_string()),
        Just("\n".to_string()),
        Just("\"".to_string()),
        Just("\\".to_string()),
        Just("\"jsonrpc\":\"2.0\"".to_string()),
        Just("\"id\":1".to_string()),
        Just("\"id\":null".to_string()),
        Just("\"params\":".to_string()),
        Just("\"method\":".to_string()),
        Just("null".to_string()),
        Just("-1e999".to_string()),
        Just("18446744073709551616".to_string()),
        Just("\"\\u0000\"".to_string()),
        Just("\"\\ud800\"".to_string()),
        proptest::sample::select(Method::ALL).prop_map(|m| format!("\"{}\"", m.name())),
        "[a-z_]{0,12}".prop_map(|s| format!("\"{s}\"")),
        any::<u64>().prop_map(|n| n.to_string()),
        Just(r#"{"jsonrpc":"2.0","id":7,"method":"rpc_get_methods"}"#.to_string()),
        Just(r#"{"jsonrpc":"2.0","id":8,"method":"bdev_malloc_create","params":{"num_blocks":8,"block_size":512}}"#.to_string()),
    ];
    proptest::collection::vec(tok, 0..40).prop_map(|v| v.concat().into_bytes())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e20f64..1e20).prop_map(Value::from),
        "[ -~]{0,10}".prop_map(Value::String),
        proptest::sample::select(vec![
            "r0",
            "m0",
            "m1",
            "raid1",
            "raid5",
            "n2",
            "left-symmetric",
            "all",
            "check",
            "write",
            "failure",
            "corrupt_data",
            "127.0.0.1",
            "/tmp/x",
            "0123abcd-89ab-cdef-0123-456789abcdef",
            "SIGTERM",
            "bdev",
            "m0 m1",
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "name",
                        "raid_level",
                        "base_bdevs",
                        "strip_size_kb",
                        "uuid",
                        "superblock",
                        "bitmap",
                        "layout",
                        "write_mostly",
                        "write_behind",
                        "chunk_kb",
                        "daemon_sleep_ms",
                        "category",
                        "clear_sb",
                        "raid_bdev",
                        "base_bdev",
                        "action",
                        "num_blocks",
                        "block_size",
                        "filename",
                        "base_name",
                        "io_type",
                        "error_type",
                        "num",
                        "corrupt_value",
                        "bdev_name",
                        "export_name",
                        "address",
                        "port",
                        "unix_path",
                        "timeout",
                        "current",
                        "sig_name",
                        "bogus",
                    ]),
                    inner,
                ),
                0..8
            )
            .prop_map(|kv| Value::Object(
                kv.into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect::<Map<_, _>>()
            )),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_splitting_changes_nothing(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = frames_debug(&[&bytes]);
        let mut pos: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        pos.sort();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in pos {
            chunks.push(&bytes[last..p]);
            last = p;
        }
        chunks.push(&bytes[last..]);
        prop_assert_eq!(frames_debug(&chunks), whole);
    }

    #[test]
    fn token_soup_through_a_connection(bytes in soup(), split in any::<usize>()) {
        let mut host = FakeDaemon::new();
        let mut conn = Connection::with_limit(4096);
        let mut out = Vec::new();
        let cut = split % (bytes.len() + 1);
        let mut st = conn.feed(&mut host, &bytes[..cut], &mut out);
        if st == ConnState::Open {
            st = conn.feed(&mut host, &bytes[cut..], &mut out);
        }
        let text = String::from_utf8(out).unwrap();
        let mut saw_parse_error = false;
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let one = |r: &Value| {
                assert_eq!(r["jsonrpc"], "2.0");
                assert!(r.get("result").is_some() != r.get("error").is_some());
                r["error"]["code"] == -32700 || r["error"]["code"] == -32600 && r["error"]["message"].as_str().unwrap().contains("bytes")
            };
            match &v {
                Value::Array(a) => { for r in a { prop_assert!(!one(r)); } }
                r => saw_parse_error |= one(r),
            }
        }
        prop_assert_eq!(saw_parse_error, st == ConnState::Close);
    }

    #[test]
    fn arbitrary_params_never_panic(m in proptest::sample::select(Method::ALL), params in json_value()) {
        let raw = RawValue::from_string(params.to_string()).unwrap();
        match Call::parse(m, Some(&raw)) {
            Ok(call) => {
                let again = Call::parse(m, Some(&RawValue::from_string(call.params_value().to_string()).unwrap()));
                prop_assert_eq!(again, Ok(call));
            }
            Err(e) => {
                prop_assert_eq!(e.code, -32602);
                let prefix = format!("{}: ", m.name());
                prop_assert!(e.message.starts_with(&prefix), "{}", e.message);
            }
        }
    }
}
