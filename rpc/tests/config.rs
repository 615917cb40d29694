//! Config files in SPDK's format: loading (including files SPDK saved),
//! errors naming entry/method/field, and save -> load round trips.

mod common;

use common::FakeDaemon;
use mdraid_rpc::config::{parse_config, strip_comments, Skipped};
use mdraid_rpc::{apply_config, build_document, call_method, load_config, Call, Method};
use serde_json::value::RawValue;
use serde_json::{json, Value};

fn call(host: &mut FakeDaemon, method: &str, params: Value) -> Value {
    let raw = RawValue::from_string(params.to_string()).unwrap();
    call_method(host, method, Some(&raw)).unwrap()
}

const OURS: &str = r#"{
  "subsystems": [
    {
      "subsystem": "bdev",
      "config": [
        {"method": "bdev_malloc_create", "params": {"name": "m0", "num_blocks": 2048, "block_size": 512}},
        {"method": "bdev_malloc_create", "params": {"name": "m1", "num_blocks": 2048, "block_size": 512}},
        {"method": "bdev_mdraid_create", "params": {"name": "r0", "raid_level": "raid1", "base_bdevs": ["m0", "m1"]}}
      ]
    },
    {
      "subsystem": "mdraid",
      "config": [{"method": "mdraid_nbd_export_add", "params": {"bdev_name": "r0"}}]
    }
  ]
}"#;

#[test]
fn loads_in_order() {
    let c = parse_config(OURS).unwrap();
    let methods: Vec<Method> = c.entries.iter().map(|e| e.call.method()).collect();
    assert_eq!(
        methods,
        [
            Method::BdevMallocCreate,
            Method::BdevMallocCreate,
            Method::BdevMdraidCreate,
            Method::MdraidNbdExportAdd
        ]
    );
    assert_eq!(c.entries[2].location.index, 2);
    assert_eq!(c.entries[3].location.subsystem, "mdraid");
    assert!(c.skipped.is_empty());
    let mut h = FakeDaemon::new();
    apply_config(&mut h, &c).unwrap();
    assert_eq!(h.arrays.len(), 1);
    assert_eq!(h.exports.len(), 1);
}

/// The shape of `rpc.py save_config` from an SPDK 26.05 target with malloc
/// and aio bdevs, SPDK's tuning methods, batches and other subsystems.
const SPDK_SAVED: &str = r#"{
  "subsystems": [
    {"subsystem": "keyring", "config": []},
    {"subsystem": "iobuf", "config": [{"method": "iobuf_set_options", "params": {"small_pool_count": 8192}}]},
    {"subsystem": "sock", "config": [{"method": "sock_set_default_impl", "params": {"impl_name": "posix"}}]},
    {"subsystem": "vmd", "config": []},
    {"subsystem": "accel", "config": [{"method": "accel_set_options", "params": {"small_cache_size": 128}}]},
    {
      "subsystem": "bdev",
      "config": [
        {"method": "bdev_set_options", "params": {"bdev_io_pool_size": 65535, "bdev_io_cache_size": 256, "bdev_auto_examine": true, "iobuf_small_cache_size": 128, "iobuf_large_cache_size": 16}},
        {"method": "bdev_raid_set_options", "params": {"process_window_size_kb": 1024, "process_max_bandwidth_mb_sec": 0}},
        {"method": "bdev_iscsi_set_options", "params": {"timeout_sec": 30}},
        {"method": "bdev_nvme_set_options", "params": {"action_on_timeout": "none", "timeout_us": 0}},
        {"method": "bdev_nvme_set_hotplug", "params": {"period_us": 100000, "enable": false}},
        {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 8192, "block_size": 4096, "physical_block_size": 4096, "uuid": "f3c0a3ad-0e6c-4d2c-9f0b-6a6d1d8b2b51", "optimal_io_boundary": 0, "md_size": 0, "dif_type": 0, "dif_is_head_of_md": false, "dif_pi_format": 0, "numa_id": -1}},
        [
          {"method": "bdev_aio_create", "params": {"name": "aio0", "block_size": 512, "filename": "/tmp/aio0", "readonly": false, "fallocate": false, "uuid": "0b3f6c1e-1111-4222-8333-944455556666", "nowait": false}},
          {"method": "bdev_error_create", "params": {"base_name": "aio0"}}
        ],
        {"method": "bdev_wait_for_examine"}
      ]
    },
    {"subsystem": "nbd", "config": [{"method": "nbd_start_disk", "params": {"bdev_name": "Malloc0", "nbd_device": "/dev/nbd0"}}]},
    {"subsystem": "nvmf", "config": null}
  ]
}"#;

#[test]
fn spdk_saved_file_loads_and_reports_what_it_skipped() {
    let c = parse_config(SPDK_SAVED).unwrap();
    let methods: Vec<&str> = c.entries.iter().map(|e| e.call.method().name()).collect();
    assert_eq!(
        methods,
        [
            "bdev_malloc_create",
            "bdev_aio_create",
            "bdev_error_create",
            "bdev_wait_for_examine"
        ]
    );
    assert_eq!(c.entries[1].location.index, 6);
    assert_eq!(c.entries[2].location.batch_index, Some(1));
    let skipped_subs: Vec<(&str, usize)> = c
        .skipped
        .iter()
        .filter_map(|s| match s {
            Skipped::Subsystem { name, entries } => Some((name.as_str(), *entries)),
            _ => None,
        })
        .collect();
    assert_eq!(
        skipped_subs,
        [
            ("keyring", 0),
            ("iobuf", 1),
            ("sock", 1),
            ("vmd", 0),
            ("accel", 1),
            ("nbd", 1),
            ("nvmf", 0)
        ]
    );
    let skipped_methods: Vec<&str> = c
        .skipped
        .iter()
        .filter_map(|s| match s {
            Skipped::Method { method, .. } => Some(method.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        skipped_methods,
        [
            "bdev_set_options",
            "bdev_raid_set_options",
            "bdev_iscsi_set_options",
            "bdev_nvme_set_options",
            "bdev_nvme_set_hotplug"
        ]
    );
}

fn err(text: &str) -> String {
    parse_config(text).unwrap_err().to_string()
}

/// A misspelt `bdev` or `mdraid` would be skipped whole, its arrays with
/// it: refused, naming it.
#[test]
fn a_misspelt_served_subsystem_is_refused() {
    for name in ["BDEV", "Bdev", "bdevs", " bdev", "mdraid2", "MDRAID"] {
        let text = format!(r#"{{"subsystems":[{{"subsystem":"{name}","config":[]}}]}}"#);
        let e = err(&text);
        assert!(
            e.contains("subsystems[0]") && e.contains("was meant"),
            "{name}: {e}"
        );
    }
    let c = parse_config(
        r#"{"subsystems":[{"subsystem":"bdev","config":[]},{"subsystem":"iobuf","config":[]}]}"#,
    )
    .unwrap();
    assert_eq!(
        c.skipped.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        ["subsystem `iobuf` (0 entries): not served here"]
    );
}

fn one_entry(entry: &str) -> String {
    format!(
        r#"{{"subsystems":[{{"subsystem":"accel","config":[]}},{{"subsystem":"bdev","config":[{{"method":"bdev_malloc_create","params":{{"name":"m0","num_blocks":8,"block_size":512}}}},{entry}]}}]}}"#
    )
}

#[test]
fn errors_name_entry_method_and_field() {
    let e = parse_config(&one_entry(
        r#"{"method":"bdev_mdraid_create","params":{"name":"r0","raid_level":"raid1","base_bdevs":["m0"],"strip_size_kb":"64"}}"#,
    ))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "config: subsystems[1] (bdev) config[1]: bdev_mdraid_create: field `strip_size_kb`: expected u32, got string \"64\""
    );
    assert_eq!(e.location.as_ref().unwrap().index, 1);
    assert_eq!(e.method.as_deref(), Some("bdev_mdraid_create"));
    assert_eq!(e.error.code, -32602);

    let e = err(&one_entry(
        r#"{"method":"bdev_raid_create","params":{"name":"r0"}}"#,
    ));
    assert_eq!(
        e,
        "config: subsystems[1] (bdev) config[1]: bdev_raid_create: Method not found"
    );
    let e = err(&one_entry(
        r#"{"method":"bdev_malloc_create","params":[1]}"#,
    ));
    assert!(
        e.contains("config[1]: bdev_malloc_create: `params` must be an object"),
        "{e}"
    );
    let e = err(&one_entry(r#"{"method":"bdev_malloc_create","parms":{}}"#));
    assert!(e.contains("config[1]: expected {\"method\""), "{e}");
    let e = err(&one_entry(
        r#"[{"method":"bdev_malloc_create","params":{"name":"x","num_blocks":8}}]"#,
    ));
    assert!(
        e.starts_with(
            "config: subsystems[1] (bdev) config[1][0]: bdev_malloc_create: field `block_size`"
        ),
        "{e}"
    );
    let e = err(&one_entry(
        r#"{"method":"bdev_malloc_create","params":{"name":"m0","num_blocks":8,"block_size":512,"block_size":512}}"#,
    ));
    assert!(
        e.ends_with("field `block_size`: given more than once"),
        "{e}"
    );
}

#[test]
fn document_shape_errors() {
    assert!(err("[1]").contains("not enclosed in {}"));
    assert!(err(r#"{"subsystems": 5}"#).contains("'subsystems' should be an array"));
    assert!(
        err(r#"{"subsystems": [{"subsystem": "bdev", "config": [], "x": 1}]}"#)
            .contains("subsystems[0]")
    );
    assert!(err(r#"{"subsystems": [{"config": []}]}"#).contains("subsystems[0]"));
    assert!(
        err(r#"{"subsystems": [{"subsystem": "bdev", "config": 3}]}"#).contains("subsystems[0]")
    );
    let e = err("{\"subsystems\": [\n  {\"subsystem\": \"bdev\",, }\n]}");
    assert!(e.contains("not valid JSON") && e.contains("line 2"), "{e}");
    // No subsystems key: an empty config, as SPDK treats it.
    assert!(parse_config("{}").unwrap().entries.is_empty());
    assert!(parse_config(r#"{"subsystems": []}"#)
        .unwrap()
        .entries
        .is_empty());
}

#[test]
fn comments_are_allowed_as_in_spdk_config_files() {
    let text = r#"
    // our arrays
    {"subsystems": [ /* only bdev */ {"subsystem": "bdev", "config": [
      {"method": "bdev_malloc_create", "params": {"name": "m//0", "num_blocks": 8, "block_size": 512}} // trailing
    ]}]}"#;
    let c = parse_config(text).unwrap();
    let Call::BdevMallocCreate(p) = &c.entries[0].call else {
        panic!()
    };
    assert_eq!(
        p.name.as_ref().unwrap(),
        "m//0",
        "a // inside a string is not a comment"
    );
    assert_eq!(
        strip_comments(r#""a\"/*" /* x */ 1"#),
        r#""a\"/*"         1"#
    );
}

#[test]
fn nothing_is_applied_when_any_entry_is_bad() {
    let mut h = FakeDaemon::new();
    let text = one_entry(r#"{"method":"bdev_mdraid_create","params":{"name":"r0"}}"#);
    assert!(load_config(&mut h, &text).is_err());
    assert!(h.calls.is_empty());
}

#[test]
fn apply_error_names_the_entry() {
    let mut h = FakeDaemon::new();
    let text = one_entry(
        r#"{"method":"bdev_mdraid_create","params":{"name":"r0","raid_level":"raid1","base_bdevs":["m0","m9"]}}"#,
    );
    let e = load_config(&mut h, &text).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config: subsystems[1] (bdev) config[1]: bdev_mdraid_create: field `base_bdevs[1]`: no bdev named `m9`"
    );
}

#[test]
fn save_then_load_gives_the_same_state() {
    let mut a = FakeDaemon::new();
    call(
        &mut a,
        "bdev_malloc_create",
        json!({"name": "m0", "num_blocks": 64, "block_size": 512}),
    );
    call(
        &mut a,
        "bdev_malloc_create",
        json!({"name": "m1", "num_blocks": 64, "block_size": 512}),
    );
    call(
        &mut a,
        "bdev_malloc_create",
        json!({"name": "m2", "num_blocks": 64, "block_size": 512}),
    );
    call(
        &mut a,
        "bdev_mdraid_create",
        json!({"name": "r5", "raid_level": "raid5", "base_bdevs": "m0 m1 m2", "strip_size_kb": 64,
               "layout": "left-asymmetric", "bitmap": {"chunk_kb": 1024}, "superblock": true}),
    );
    call(
        &mut a,
        "mdraid_nbd_export_add",
        json!({"bdev_name": "r5", "export_name": "vol", "read_only": true}),
    );

    let saved = call(&mut a, "save_config", json!({}));
    let text = serde_json::to_string_pretty(&saved).unwrap();
    let mut b = FakeDaemon::new();
    load_config(&mut b, &text).unwrap();
    assert_eq!(b.mallocs, a.mallocs);
    assert_eq!(b.arrays, a.arrays);
    assert_eq!(b.exports, a.exports);
    // And saving again gives the same document.
    assert_eq!(call(&mut b, "save_config", json!({})), saved);
}

#[test]
fn build_document_round_trips_every_saved_call_kind() {
    let calls: Vec<Call> = parse_config(OURS)
        .unwrap()
        .entries
        .into_iter()
        .chain(parse_config(SPDK_SAVED).unwrap().entries)
        .map(|e| e.call)
        .collect();
    let doc = build_document(&calls);
    let again: Vec<Call> = parse_config(&doc.to_string())
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.call)
        .collect();
    // Calls are grouped by subsystem: bdev first, then mdraid.
    let mut expect: Vec<Call> = calls
        .iter()
        .filter(|c| c.method() != Method::MdraidNbdExportAdd)
        .cloned()
        .collect();
    expect.extend(
        calls
            .iter()
            .filter(|c| c.method() == Method::MdraidNbdExportAdd)
            .cloned(),
    );
    assert_eq!(again, expect);
}
