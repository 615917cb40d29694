//! Stream framing: split reads, back-to-back objects, batches, garbage,
//! oversize, and the bytes of the answers.

mod common;

use common::FakeDaemon;
use mdraid_rpc::framing::{classify, encode_batch, Splitter};
use mdraid_rpc::{ConnState, Connection, Decoder, Frame, Incoming, Request, Response, RpcError};
use serde_json::{json, Value};

fn frames(input: &[u8]) -> Vec<Frame> {
    let mut d = Decoder::new();
    d.push(input);
    d.collect()
}

fn request(f: &Frame) -> &Request {
    match f {
        Frame::Single(Incoming::Request(r)) => r,
        other => panic!("expected a request, got {other:?}"),
    }
}

fn invalid(f: &Frame) -> &Response {
    match f {
        Frame::Single(Incoming::Invalid(r)) => r,
        other => panic!("expected an invalid-request answer, got {other:?}"),
    }
}

fn fatal(f: &Frame) -> &Response {
    match f {
        Frame::Fatal(r) => r,
        other => panic!("expected a fatal answer, got {other:?}"),
    }
}

/// Feed `input` through a connection to the fake daemon; the lines written.
fn talk(input: &[u8]) -> (Vec<Value>, ConnState) {
    let mut host = FakeDaemon::new();
    let mut conn = Connection::new();
    let mut out = Vec::new();
    let st = conn.feed(&mut host, input, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "every answer ends with a newline"
    );
    let vals = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (vals, st)
}

const R1: &str = r#"{"jsonrpc":"2.0","method":"rpc_get_methods","id":1}"#;

#[test]
fn one_request() {
    let f = frames(br#"{"jsonrpc":"2.0","method":"bdev_get_bdevs","id":7,"params":{"name":"m0"}}"#);
    assert_eq!(f.len(), 1);
    let r = request(&f[0]);
    assert_eq!(r.id, Some(json!(7)));
    assert_eq!(r.method, "bdev_get_bdevs");
    assert_eq!(r.params.as_ref().unwrap().get(), r#"{"name":"m0"}"#);
}

#[test]
fn split_reads_byte_by_byte() {
    // What SPDK's Python client sends: json.dumps(req, indent=2), back to back.
    let a = serde_json::to_string_pretty(
        &json!({"jsonrpc":"2.0","method":"a","id":1,"params":{"s":"}{\"]["}}),
    )
    .unwrap();
    let b =
        serde_json::to_string_pretty(&json!({"jsonrpc":"2.0","method":"b","id":"two"})).unwrap();
    let input = format!("{a}{b}");
    let mut d = Decoder::new();
    let mut got = Vec::new();
    for byte in input.as_bytes() {
        d.push(std::slice::from_ref(byte));
        got.extend(d.by_ref());
    }
    assert_eq!(got.len(), 2);
    assert_eq!(request(&got[0]).method, "a");
    let params: Value =
        serde_json::from_str(request(&got[0]).params.as_ref().unwrap().get()).unwrap();
    assert_eq!(params, json!({"s": "}{\"]["}));
    assert_eq!(request(&got[1]).id, Some(json!("two")));
    assert!(d.is_idle());
}

#[test]
fn many_objects_in_one_read_with_and_without_whitespace() {
    let input = format!("{R1}{R1}\n\t {R1}\r\n  ");
    let f = frames(input.as_bytes());
    assert_eq!(f.len(), 3);
    for x in &f {
        assert_eq!(request(x).method, "rpc_get_methods");
    }
}

#[test]
fn partial_request_waits() {
    let mut d = Decoder::new();
    d.push(br#"{"jsonrpc":"2.0","method":"x","id":1"#);
    assert!(d.next_frame().is_none());
    assert!(!d.is_idle());
    d.push(b"}");
    assert_eq!(request(&d.next_frame().unwrap()).method, "x");
    assert!(d.next_frame().is_none());
}

#[test]
fn top_level_scalar_split_across_reads_is_one_value() {
    let mut d = Decoder::new();
    d.push(b"12");
    assert!(d.next_frame().is_none(), "a number at the end may go on");
    d.push(b"3 ");
    let f: Vec<Frame> = d.collect();
    assert_eq!(f.len(), 1);
    assert_eq!(invalid(&f[0]).outcome, Err(RpcError::invalid_request()));
}

#[test]
fn non_object_values_are_invalid_requests_and_the_stream_goes_on() {
    let input = format!("5 \"str\" true null {R1}");
    let f = frames(input.as_bytes());
    assert_eq!(f.len(), 5);
    for x in &f[..4] {
        let r = invalid(x);
        assert_eq!(r.id, Value::Null);
        assert_eq!(r.outcome.as_ref().unwrap_err().code, -32600);
    }
    request(&f[4]);
}

#[test]
fn envelope_checks_follow_spdk() {
    let cases: &[(&str, Value)] = &[
        (r#"{"jsonrpc":"1.0","method":"x","id":1}"#, Value::Null),
        (r#"{"jsonrpc":null,"method":"x","id":1}"#, Value::Null),
        (r#"{"id":1}"#, Value::Null),
        (r#"{"method":5,"id":1}"#, Value::Null),
        (r#"{"method":"x","id":{"a":1}}"#, Value::Null),
        (r#"{"method":"x","id":[1]}"#, Value::Null),
        (r#"{"method":"x","id":1,"extra":true}"#, Value::Null),
        (r#"{"method":"x","method":"y","id":1}"#, Value::Null),
        // Params of the wrong type: SPDK has read the id by then.
        (r#"{"method":"x","id":9,"params":"s"}"#, json!(9)),
        (r#"{"method":"x","id":9,"params":3}"#, json!(9)),
    ];
    for (text, id) in cases {
        let f = frames(text.as_bytes());
        assert_eq!(f.len(), 1, "{text}");
        let r = invalid(&f[0]);
        assert_eq!(&r.id, id, "{text}");
        assert_eq!(r.outcome, Err(RpcError::invalid_request()), "{text}");
    }
}

#[test]
fn envelope_accepts_what_spdk_accepts() {
    // No "jsonrpc" key, null params, string and float ids.
    let f =
        frames(br#"{"method":"x","id":"a","params":null} {"method":"y","id":1.5,"params":[1]}"#);
    let a = request(&f[0]);
    assert_eq!(a.id, Some(json!("a")));
    assert!(a.params.is_none());
    let b = request(&f[1]);
    assert_eq!(b.id, Some(json!(1.5)));
    assert_eq!(b.params.as_ref().unwrap().get(), "[1]");
}

#[test]
fn notifications_get_no_answer() {
    let input = br#"{"jsonrpc":"2.0","method":"rpc_get_methods"}{"jsonrpc":"2.0","method":"rpc_get_methods","id":null}{"jsonrpc":"2.0","method":"no_such_method"}"#;
    let (out, st) = talk(input);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(st, ConnState::Open);
}

#[test]
fn batch() {
    let input = br#"[
        {"jsonrpc":"2.0","method":"bdev_malloc_create","id":1,"params":{"name":"m0","num_blocks":8,"block_size":512}},
        {"jsonrpc":"2.0","method":"framework_wait_init"},
        5,
        {"jsonrpc":"2.0","method":"nope","id":3}
    ]"#;
    let f = frames(input);
    assert_eq!(f.len(), 1);
    let Frame::Batch(items) = &f[0] else {
        panic!("{f:?}")
    };
    assert_eq!(items.len(), 4);

    let (out, st) = talk(input);
    assert_eq!(st, ConnState::Open);
    assert_eq!(out.len(), 1, "one array answers the batch");
    assert_eq!(
        out[0],
        json!([
            {"jsonrpc":"2.0","id":1,"result":"m0"},
            {"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid request"}},
            {"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"Method not found"}}
        ])
    );
}

#[test]
fn empty_batch_is_one_invalid_request() {
    let (out, _) = talk(b"[]");
    assert_eq!(
        out,
        vec![
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid request"}})
        ]
    );
}

#[test]
fn batch_of_notifications_gets_nothing() {
    let (out, _) =
        talk(br#"[{"jsonrpc":"2.0","method":"framework_wait_init"},{"method":"rpc_get_methods"}]"#);
    assert!(out.is_empty());
}

#[test]
fn garbage_is_one_parse_error_then_close() {
    for bad in [
        &br#"{"method":}"#[..],
        b"xyz ",
        b"}",
        b"{\"method\":\"x\",\"id\":1]",
        b"{\"method\":\"\xff\xfe\",\"id\":1}",
        b"[1,]",
        b"{\"a\":1,}",
        b"nul ",
    ] {
        let mut d = Decoder::new();
        d.push(bad);
        d.push(R1.as_bytes());
        let f: Vec<Frame> = d.by_ref().collect();
        assert_eq!(f.len(), 1, "{:?}", String::from_utf8_lossy(bad));
        let r = fatal(&f[0]);
        assert_eq!(r.id, Value::Null);
        assert_eq!(r.outcome, Err(RpcError::parse_error()));
        assert!(d.is_closed());
        d.push(R1.as_bytes());
        assert!(
            d.next_frame().is_none(),
            "nothing is decoded after a parse error"
        );

        let (out, st) = talk(&[bad, R1.as_bytes()].concat());
        assert_eq!(st, ConnState::Close);
        assert_eq!(
            out,
            vec![
                json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}})
            ]
        );
    }
}

#[test]
fn valid_requests_before_garbage_are_answered() {
    let input = format!("{R1} {{oops");
    let mut d = Decoder::new();
    d.push(input.as_bytes());
    request(&d.next_frame().unwrap());
    assert!(d.next_frame().is_none(), "`{{oops` may still be completed");
    d.push(b"}");
    fatal(&d.next_frame().unwrap());
}

#[test]
fn oversize_incomplete_request_closes() {
    let mut d = Decoder::with_limit(100);
    d.push(br#"{"method":"x","params":{"s":""#);
    assert!(d.next_frame().is_none());
    d.push(&[b'a'; 200]);
    let r = fatal(&d.next_frame().unwrap()).clone();
    let e = r.outcome.unwrap_err();
    assert_eq!(e.code, -32600);
    assert!(e.message.contains("100 bytes"), "{}", e.message);
    assert!(d.is_closed());
    assert!(d.next_frame().is_none());
}

#[test]
fn oversize_complete_request_closes() {
    let big = format!(
        r#"{{"method":"x","id":1,"params":{{"s":"{}"}}}}"#,
        "a".repeat(500)
    );
    let mut d = Decoder::with_limit(100);
    d.push(big.as_bytes());
    fatal(&d.next_frame().unwrap());

    let mut host = FakeDaemon::new();
    let mut conn = Connection::with_limit(100);
    let mut out = Vec::new();
    assert_eq!(
        conn.feed(&mut host, big.as_bytes(), &mut out),
        ConnState::Close
    );
    assert_eq!(
        conn.feed(&mut host, R1.as_bytes(), &mut out),
        ConnState::Close
    );
}

#[test]
fn large_request_in_small_reads_is_scanned_once() {
    // 8 MiB of params in 4 KiB reads: quadratic rescanning would take minutes.
    let payload = "x".repeat(8 << 20);
    let req = format!(r#"{{"jsonrpc":"2.0","method":"m","id":1,"params":{{"blob":"{payload}"}}}}"#);
    let mut d = Decoder::new();
    let t = std::time::Instant::now();
    let mut got = Vec::new();
    for chunk in req.as_bytes().chunks(4096) {
        d.push(chunk);
        got.extend(d.by_ref());
    }
    assert_eq!(got.len(), 1);
    assert_eq!(request(&got[0]).method, "m");
    assert!(t.elapsed().as_secs() < 10, "took {:?}", t.elapsed());
}

#[test]
fn deep_nesting_is_answered_not_a_crash() {
    // Valid JSON 100 000 levels deep: the framing passes it on (its scan is
    // iterative); the typed decode refuses it without recursing far.
    let deep = format!(
        r#"{{"jsonrpc":"2.0","method":"bdev_mdraid_create","id":1,"params":{{"base_bdevs":{}1{}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (out, st) = talk(deep.as_bytes());
    assert_eq!(st, ConnState::Open);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["error"]["code"], json!(-32602));
    let deep_obj = format!(
        r#"{{"jsonrpc":"2.0","method":"bdev_get_bdevs","id":1,"params":{{"name":"a","timeout":{}1{}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (out, _) = talk(deep_obj.as_bytes());
    assert_eq!(out[0]["error"]["code"], json!(-32602));
}

#[test]
fn response_bytes_match_spdk() {
    let ok = Response::result(json!(1), json!(true));
    assert_eq!(
        ok.encode(),
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":true}\n"
    );
    let err = Response::error(json!("a"), RpcError::errno(19, "raid bdev r0 not found"));
    assert_eq!(
        err.encode(),
        b"{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"error\":{\"code\":-19,\"message\":\"raid bdev r0 not found\"}}\n"
    );
    let mut out = Vec::new();
    encode_batch(&[ok.clone(), err.clone()], &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("[{") && text.ends_with("}]\n"), "{text}");
    let mut out = Vec::new();
    encode_batch(&[], &mut out);
    assert!(out.is_empty());
    // And back (the client side).
    assert_eq!(Response::parse(&ok.encode()).unwrap(), ok);
    assert_eq!(Response::parse(&err.encode()).unwrap(), err);
}

#[test]
fn request_encode_round_trips() {
    let r = Request::new(
        Some(json!(3)),
        "bdev_get_bdevs",
        Some(&json!({"name": "m0"})),
    );
    let f = frames(&r.encode());
    let back = request(&f[0]);
    assert_eq!(back.id, Some(json!(3)));
    assert_eq!(back.method, "bdev_get_bdevs");
    assert_eq!(back.params.as_ref().unwrap().get(), r#"{"name":"m0"}"#);
}

#[test]
fn splitter_splits_responses_for_clients() {
    let mut s = Splitter::default();
    s.push(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":true}\n{\"jsonrpc\":\"2.0\",\"id\":2,");
    let a = s.next_value().unwrap().unwrap();
    assert_eq!(Response::parse(&a).unwrap().outcome, Ok(json!(true)));
    assert!(s.next_value().is_none());
    s.push(b"\"result\":[1]}\n");
    let b = s.next_value().unwrap().unwrap();
    assert_eq!(Response::parse(&b).unwrap().outcome, Ok(json!([1])));
}

#[test]
fn classify_is_what_the_decoder_uses() {
    assert!(matches!(
        classify(R1.as_bytes()),
        Frame::Single(Incoming::Request(_))
    ));
    assert!(matches!(classify(b"{"), Frame::Fatal(_)));
}
