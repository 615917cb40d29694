//! Dispatch through a fake host: built-ins, errors as SPDK codes them.

mod common;

use common::FakeDaemon;
use mdraid_rpc::results::{MdraidBdevInfo, SubsystemInfo, VersionInfo};
use mdraid_rpc::{call_method, ConnState, Connection, Host, Method};
use serde_json::value::RawValue;
use serde_json::{json, Value};

fn call(host: &mut FakeDaemon, method: &str, params: Value) -> Result<Value, mdraid_rpc::RpcError> {
    let raw = RawValue::from_string(params.to_string()).unwrap();
    call_method(host, method, Some(&raw))
}

/// One request over a connection; the parsed response line.
fn wire(host: &mut FakeDaemon, method: &str, params: Value) -> Value {
    let req = json!({"jsonrpc": "2.0", "id": 42, "method": method, "params": params});
    let mut out = Vec::new();
    let st = Connection::new().feed(host, req.to_string().as_bytes(), &mut out);
    assert_eq!(st, ConnState::Open);
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn unknown_method() {
    let mut h = FakeDaemon::new();
    assert_eq!(
        wire(&mut h, "bdev_raid_create", json!({})),
        json!({"jsonrpc":"2.0","id":42,"error":{"code":-32601,"message":"Method not found"}})
    );
}

#[test]
fn rpc_get_methods_lists_what_the_host_serves() {
    let mut h = FakeDaemon::new();
    let all: Vec<String> =
        serde_json::from_value(call(&mut h, "rpc_get_methods", json!({})).unwrap()).unwrap();
    assert_eq!(all.len(), Method::ALL.len());
    for m in [
        "bdev_mdraid_create",
        "bdev_mdraid_get_bdevs",
        "bdev_mdraid_delete",
        "bdev_mdraid_add_base_bdev",
        "bdev_mdraid_remove_base_bdev",
        "bdev_mdraid_set_options",
        "bdev_mdraid_sync_action",
        "bdev_mdraid_examine",
        "bdev_malloc_create",
        "bdev_get_bdevs",
        "rpc_get_methods",
        "save_config",
        "framework_wait_init",
        "mdraid_nbd_export_add",
    ] {
        assert!(all.iter().any(|n| n == m), "{m} missing");
    }

    // An SPDK-module-like host serves only bdev_mdraid_*.
    let mut spdk = FakeDaemon {
        spdk_like: true,
        ..FakeDaemon::new()
    };
    assert_eq!(
        call(&mut spdk, "rpc_get_methods", json!({}))
            .unwrap_err()
            .code,
        -32601
    );
    assert_eq!(
        call(&mut spdk, "bdev_malloc_create", json!({}))
            .unwrap_err()
            .code,
        -32601
    );
    assert_eq!(mdraid_rpc::dispatch::method_names(&spdk).len(), 10);
}

#[test]
fn params_errors_reach_the_wire() {
    let mut h = FakeDaemon::new();
    let r = wire(
        &mut h,
        "bdev_mdraid_create",
        json!({"name": "r0", "raid_level": "raid1", "base_bdevs": ["a"], "strip_size_kb": "x"}),
    );
    assert_eq!(r["error"]["code"], json!(-32602));
    assert_eq!(
        r["error"]["message"],
        json!("bdev_mdraid_create: field `strip_size_kb`: expected u32, got string \"x\"")
    );
    assert!(h.calls.is_empty(), "nothing reached the host");
}

#[test]
fn host_errors_are_negative_errno() {
    let mut h = FakeDaemon::new();
    let r = wire(&mut h, "bdev_mdraid_delete", json!({"name": "r9"}));
    assert_eq!(
        r,
        json!({"jsonrpc":"2.0","id":42,"error":{"code":-19,"message":"raid bdev r9 not found"}})
    );
    let r = wire(&mut h, "bdev_get_bdevs", json!({"name": "nope"}));
    assert_eq!(
        r["error"],
        json!({"code": -19, "message": "No such device"})
    );
    call(
        &mut h,
        "bdev_malloc_create",
        json!({"name": "m0", "num_blocks": 8, "block_size": 512}),
    )
    .unwrap();
    let r = wire(
        &mut h,
        "bdev_malloc_create",
        json!({"name": "m0", "num_blocks": 8, "block_size": 512}),
    );
    assert_eq!(r["error"], json!({"code": -17, "message": "File exists"}));
}

#[test]
fn create_list_delete() {
    let mut h = FakeDaemon::new();
    assert_eq!(
        call(
            &mut h,
            "bdev_malloc_create",
            json!({"num_blocks": 8, "block_size": 512})
        )
        .unwrap(),
        json!("Malloc0")
    );
    call(
        &mut h,
        "bdev_malloc_create",
        json!({"name": "m1", "num_blocks": 8, "block_size": 512}),
    )
    .unwrap();
    assert_eq!(
        call(
            &mut h,
            "bdev_mdraid_create",
            json!({"name": "r0", "raid_level": "raid1", "base_bdevs": "Malloc0 m1"})
        )
        .unwrap(),
        json!(true)
    );
    let list: Vec<MdraidBdevInfo> = serde_json::from_value(
        call(&mut h, "bdev_mdraid_get_bdevs", json!({"category": "all"})).unwrap(),
    )
    .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].num_base_bdevs, 2);
    let e = call(
        &mut h,
        "bdev_mdraid_create",
        json!({"name": "r1", "raid_level": "raid1", "base_bdevs": ["m1", "m7"]}),
    )
    .unwrap_err();
    assert_eq!(
        e.message,
        "bdev_mdraid_create: field `base_bdevs[1]`: no bdev named `m7`"
    );
    assert_eq!(
        call(&mut h, "bdev_mdraid_delete", json!({"name": "r0"})).unwrap(),
        json!(true)
    );
}

#[test]
fn save_config_and_framework_get_config() {
    let mut h = FakeDaemon::new();
    call(
        &mut h,
        "bdev_malloc_create",
        json!({"name": "m0", "num_blocks": 8, "block_size": 512}),
    )
    .unwrap();
    call(
        &mut h,
        "bdev_malloc_create",
        json!({"name": "m1", "num_blocks": 8, "block_size": 512}),
    )
    .unwrap();
    call(
        &mut h,
        "bdev_mdraid_create",
        json!({"name": "r0", "raid_level": "raid1", "base_bdevs": ["m0", "m1"]}),
    )
    .unwrap();
    call(&mut h, "mdraid_nbd_export_add", json!({"bdev_name": "r0"})).unwrap();

    let doc = call(&mut h, "save_config", json!({})).unwrap();
    let subs = doc["subsystems"].as_array().unwrap();
    assert_eq!(subs.len(), 2);
    assert_eq!(subs[0]["subsystem"], json!("bdev"));
    let methods: Vec<&str> = subs[0]["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "bdev_malloc_create",
            "bdev_malloc_create",
            "bdev_mdraid_create",
            "bdev_wait_for_examine"
        ]
    );
    assert_eq!(
        subs[1],
        json!({"subsystem": "mdraid", "config": [{"method": "mdraid_nbd_export_add", "params": {"bdev_name": "r0"}}]})
    );

    // What rpc.py's save_config calls.
    let s: Vec<SubsystemInfo> =
        serde_json::from_value(call(&mut h, "framework_get_subsystems", json!({})).unwrap())
            .unwrap();
    assert_eq!(s[0].subsystem, "bdev");
    assert_eq!(
        call(&mut h, "framework_get_config", json!({"name": "bdev"})).unwrap(),
        subs[0]["config"]
    );
    let e = call(&mut h, "framework_get_config", json!({"name": "nvmf"})).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (-32602, "Subsystem 'nvmf' not found")
    );
}

#[test]
fn version() {
    let mut h = FakeDaemon::new();
    let v: VersionInfo =
        serde_json::from_value(call(&mut h, "spdk_get_version", json!({})).unwrap()).unwrap();
    assert!(v.version.starts_with("mdraid v"));
    assert_eq!(h.version(), v);
}

#[test]
fn request_without_params_and_with_null_params() {
    let mut h = FakeDaemon::new();
    let mut out = Vec::new();
    Connection::new().feed(
        &mut h,
        br#"{"jsonrpc":"2.0","id":1,"method":"framework_wait_init"}{"jsonrpc":"2.0","id":2,"method":"bdev_get_bdevs","params":null}"#,
        &mut out,
    );
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![
            json!({"jsonrpc":"2.0","id":1,"result":true}),
            json!({"jsonrpc":"2.0","id":2,"result":[]})
        ]
    );
}
