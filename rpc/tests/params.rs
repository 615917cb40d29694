//! Every method's params: what is accepted (with SPDK's defaults), and that
//! each bad field is refused with -32602 naming that field.

use mdraid_rpc::params::*;
use mdraid_rpc::types::*;
use mdraid_rpc::{Call, Method, RpcError};
use serde_json::value::RawValue;
use serde_json::{json, Value};

fn parse(method: &str, params: Value) -> Result<Call, RpcError> {
    let m = Method::from_name(method).unwrap_or_else(|| panic!("no method {method}"));
    let raw = RawValue::from_string(params.to_string()).unwrap();
    Call::parse(m, Some(&raw))
}

fn parse_text(method: &str, params: &str) -> Result<Call, RpcError> {
    let raw = RawValue::from_string(params.to_string()).unwrap();
    Call::parse(Method::from_name(method).unwrap(), Some(&raw))
}

/// Parse must succeed, and the saved form must parse back to the same call.
fn ok(method: &str, params: Value) -> Call {
    let call = parse(method, params.clone()).unwrap_or_else(|e| panic!("{method} {params}: {e}"));
    let again = parse(method, call.params_value()).unwrap();
    assert_eq!(again, call, "round trip of {method}");
    call
}

/// Parse must fail with -32602 naming `field`; returns the message.
fn bad(method: &str, params: Value, field: &str) -> String {
    let e = parse(method, params.clone()).expect_err(&format!("{method} {params} should fail"));
    assert_eq!(e.code, -32602, "{e}");
    let want = format!("{method}: field `{field}`: ");
    assert!(
        e.message.starts_with(&want),
        "{method} {params}:\n  got  {}\n  want {want}...",
        e.message
    );
    e.message
}

fn create(extra: Value) -> Value {
    let mut p = json!({"name": "r0", "raid_level": "raid1", "base_bdevs": ["m0", "m1"]});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

#[test]
fn method_table_is_consistent() {
    let mut seen = std::collections::HashSet::new();
    for m in Method::ALL {
        assert!(seen.insert(m.name()), "duplicate {}", m.name());
        assert_eq!(Method::from_name(m.name()), Some(*m));
    }
    assert_eq!(Method::from_name("bdev_raid_create"), None);
}

#[test]
fn mdraid_create_minimal_gets_defaults() {
    let Call::BdevMdraidCreate(p) = ok("bdev_mdraid_create", create(json!({}))) else {
        panic!()
    };
    assert_eq!(p.raid_level, RaidLevel::Raid1);
    assert_eq!(p.base_bdevs, NameList::from_names(["m0", "m1"]).unwrap());
    assert!(p.superblock, "superblock defaults to true");
    assert_eq!(p.bitmap, BitmapSetting::Default);
    assert_eq!(p.strip_size_kb, None);
    assert!(p.write_mostly.is_empty());
}

#[test]
fn mdraid_create_full() {
    let call = ok(
        "bdev_mdraid_create",
        json!({
            "name": "r5", "raid_level": "5", "base_bdevs": "a b  c\td",
            "strip_size_kb": 64, "uuid": "0123ABCD-89ab-cdef-0123-456789abcdef",
            "superblock": true, "bitmap": {"chunk_kb": 65536, "daemon_sleep_ms": 5000},
            "layout": "ls", "write_mostly": ["d"], "write_behind": 256
        }),
    );
    let Call::BdevMdraidCreate(p) = call else {
        panic!()
    };
    assert_eq!(p.raid_level, RaidLevel::Raid5);
    assert_eq!(p.base_bdevs.len(), 4, "whitespace-separated string form");
    assert_eq!(
        p.uuid.unwrap().to_string(),
        "0123abcd-89ab-cdef-0123-456789abcdef"
    );
    assert_eq!(p.layout, Some(Layout::LeftSymmetric));
    assert_eq!(p.layout.unwrap().md_number(), 2);
    assert_eq!(
        p.bitmap,
        BitmapSetting::On(BitmapOptions {
            chunk_kb: Some(65536),
            daemon_sleep_ms: Some(5000)
        })
    );
}

#[test]
fn mdraid_create_level_spellings() {
    for (s, l) in [
        ("raid0", RaidLevel::Raid0),
        ("0", RaidLevel::Raid0),
        ("RAID6", RaidLevel::Raid6),
        ("10", RaidLevel::Raid10),
        ("concat", RaidLevel::Linear),
        ("linear", RaidLevel::Linear),
        ("mirror", RaidLevel::Raid1),
        ("raid4", RaidLevel::Raid4),
    ] {
        let Call::BdevMdraidCreate(p) = ok("bdev_mdraid_create", create(json!({"raid_level": s})))
        else {
            panic!()
        };
        assert_eq!(p.raid_level, l, "{s}");
    }
}

#[test]
fn mdraid_create_layouts() {
    for (level, layout, n) in [
        ("raid10", json!("n2"), 0x102),
        ("raid10", json!("f2"), 0x201),
        ("raid10", json!("o2"), 0x10201),
        ("raid10", json!("n3"), 0x103),
        ("raid5", json!("left-asymmetric"), 0),
        ("raid5", json!("right-symmetric"), 3),
        ("raid4", json!("parity-last"), 5),
        ("raid6", json!("parity-first"), 4),
        ("raid0", json!(0), 0),
        ("raid5", json!(2), 2),
        ("raid5", json!("2"), 2),
    ] {
        let Call::BdevMdraidCreate(p) = ok(
            "bdev_mdraid_create",
            create(json!({"raid_level": level, "layout": layout.clone()})),
        ) else {
            panic!()
        };
        assert_eq!(p.layout.unwrap().md_number(), n, "{level} {layout}");
    }
}

#[test]
fn mdraid_create_bitmap_forms() {
    let get = |v: Value| match ok("bdev_mdraid_create", create(json!({"bitmap": v}))) {
        Call::BdevMdraidCreate(p) => p.bitmap,
        _ => unreachable!(),
    };
    assert_eq!(get(json!(false)), BitmapSetting::Off);
    assert_eq!(get(json!(null)), BitmapSetting::Off);
    assert_eq!(
        get(json!(true)),
        BitmapSetting::On(BitmapOptions::default())
    );
    assert_eq!(get(json!({})), BitmapSetting::On(BitmapOptions::default()));
    assert_eq!(
        get(json!({"chunk_kb": 4})),
        BitmapSetting::On(BitmapOptions {
            chunk_kb: Some(4),
            daemon_sleep_ms: None
        })
    );
}

#[test]
fn mdraid_create_bad_fields_are_named() {
    let m = "bdev_mdraid_create";
    let msg = bad(m, create(json!({"strip_size_kb": "64"})), "strip_size_kb");
    assert!(msg.contains("expected u32, got string"), "{msg}");
    bad(m, create(json!({"strip_size_kb": -1})), "strip_size_kb");
    bad(
        m,
        create(json!({"strip_size_kb": 4294967296u64})),
        "strip_size_kb",
    );
    bad(m, create(json!({"strip_size_kb": 1.5})), "strip_size_kb");
    let msg = bad(
        m,
        json!({"raid_level": "raid1", "base_bdevs": ["a"]}),
        "name",
    );
    assert!(msg.contains("required field is missing"), "{msg}");
    bad(m, json!({"name": "r", "base_bdevs": ["a"]}), "raid_level");
    bad(m, json!({"name": "r", "raid_level": "raid1"}), "base_bdevs");
    bad(m, create(json!({"name": ""})), "name");
    bad(m, create(json!({"name": "has space"})), "name");
    bad(m, create(json!({"name": "x".repeat(256)})), "name");
    bad(m, create(json!({"name": 5})), "name");
    let msg = bad(m, create(json!({"raid_level": "raid5f"})), "raid_level");
    assert!(msg.contains("SPDK"), "{msg}");
    bad(m, create(json!({"raid_level": "raid7"})), "raid_level");
    bad(m, create(json!({"raid_level": 1})), "raid_level");
    bad(m, create(json!({"base_bdevs": []})), "base_bdevs");
    bad(m, create(json!({"base_bdevs": ""})), "base_bdevs");
    bad(
        m,
        create(json!({"base_bdevs": ["m0", ""]})),
        "base_bdevs[1]",
    );
    bad(m, create(json!({"base_bdevs": ["m0", 7]})), "base_bdevs[1]");
    let msg = bad(
        m,
        create(json!({"base_bdevs": ["m0", "m1", "m0"]})),
        "base_bdevs[2]",
    );
    assert!(msg.contains("twice"), "{msg}");
    bad(m, create(json!({"base_bdevs": "m0 m0"})), "base_bdevs[1]");
    bad(m, create(json!({"base_bdevs": ["r0", "m1"]})), "base_bdevs");
    let many: Vec<String> = (0..256).map(|i| format!("m{i}")).collect();
    bad(m, create(json!({"base_bdevs": many})), "base_bdevs");
    bad(m, create(json!({"uuid": "not-a-uuid"})), "uuid");
    // A strip whose sector count overflows md's 32 bits (it panicked).
    bad(
        m,
        create(json!({"strip_size_kb": 2147483648u64})),
        "strip_size_kb",
    );
    bad(
        m,
        create(json!({"strip_size_kb": 2097152})),
        "strip_size_kb",
    );
    bad(
        m,
        create(json!({"uuid": "0123abcd-89ab-cdef-0123-456789abcdeg"})),
        "uuid",
    );
    bad(m, create(json!({"superblock": "yes"})), "superblock");
    bad(m, create(json!({"bitmap": 5})), "bitmap");
    bad(
        m,
        create(json!({"bitmap": {"chunk_kb": "big"}})),
        "bitmap.chunk_kb",
    );
    bad(
        m,
        create(json!({"bitmap": {"chunk_kb": 0}})),
        "bitmap.chunk_kb",
    );
    bad(
        m,
        create(json!({"bitmap": {"daemon_sleep_ms": 0}})),
        "bitmap.daemon_sleep_ms",
    );
    bad(m, create(json!({"bitmap": {"chunk": 64}})), "bitmap.chunk");
    bad(
        m,
        create(json!({"superblock": false, "bitmap": true})),
        "bitmap",
    );
    bad(m, create(json!({"layout": "n2"})), "layout");
    bad(
        m,
        create(json!({"raid_level": "raid10", "layout": "left-symmetric"})),
        "layout",
    );
    bad(
        m,
        create(json!({"raid_level": "raid10", "layout": "n0"})),
        "layout",
    );
    bad(
        m,
        create(json!({"raid_level": "raid10", "layout": "n256"})),
        "layout",
    );
    bad(
        m,
        create(json!({"raid_level": "raid10", "layout": "x2"})),
        "layout",
    );
    bad(m, create(json!({"layout": -1})), "layout");
    bad(m, create(json!({"layout": true})), "layout");
    bad(
        m,
        create(json!({"write_mostly": ["zz"]})),
        "write_mostly[0]",
    );
    bad(
        m,
        create(json!({"write_mostly": ["m1", "m1"]})),
        "write_mostly[1]",
    );
    bad(m, create(json!({"write_behind": 16384})), "write_behind");
    bad(
        m,
        create(json!({"write_behind": 10, "bitmap": false})),
        "write_behind",
    );
    bad(m, create(json!({"write_behind": "x"})), "write_behind");
    let msg = bad(m, create(json!({"strip_size": 64})), "strip_size");
    assert!(
        msg.contains("unknown field") && msg.contains("strip_size_kb"),
        "{msg}"
    );
}

#[test]
fn duplicate_keys_are_refused_like_spdk() {
    let e = parse_text(
        "bdev_mdraid_create",
        r#"{"name":"r0","raid_level":"raid1","base_bdevs":["a","b"],"name":"r1"}"#,
    )
    .unwrap_err();
    assert_eq!(
        e.message,
        "bdev_mdraid_create: field `name`: given more than once"
    );
    let e = parse_text(
        "bdev_mdraid_delete",
        r#"{"name":"r0","clear_sb":true,"clear_sb":false}"#,
    )
    .unwrap_err();
    assert!(e.message.contains("field `clear_sb`"), "{e}");
}

#[test]
fn params_must_be_an_object() {
    let e = parse("bdev_mdraid_delete", json!(["r0"])).unwrap_err();
    assert_eq!(e.code, -32602);
    assert!(
        e.message
            .starts_with("bdev_mdraid_delete: params must be an object"),
        "{e}"
    );
}

#[test]
fn absent_params_name_the_missing_field() {
    let e = Call::parse(Method::BdevMdraidDelete, None).unwrap_err();
    assert_eq!(
        e.message,
        "bdev_mdraid_delete: field `name`: required field is missing"
    );
    // Methods whose fields are all optional take absent params.
    assert_eq!(
        Call::parse(Method::BdevMdraidGetBdevs, None).unwrap(),
        Call::BdevMdraidGetBdevs(BdevMdraidGetBdevs::default())
    );
}

#[test]
fn mdraid_other_methods() {
    let Call::BdevMdraidGetBdevs(p) = ok("bdev_mdraid_get_bdevs", json!({"category": "online"}))
    else {
        panic!()
    };
    assert_eq!(p.category, RaidCategory::Online);
    ok(
        "bdev_mdraid_get_bdevs",
        json!({"category": "all", "name": "r0"}),
    );
    bad(
        "bdev_mdraid_get_bdevs",
        json!({"category": "broken"}),
        "category",
    );

    let Call::BdevMdraidDelete(p) = ok("bdev_mdraid_delete", json!({"name": "r0"})) else {
        panic!()
    };
    assert!(!p.clear_sb);
    ok(
        "bdev_mdraid_delete",
        json!({"name": "r0", "clear_sb": true}),
    );
    bad(
        "bdev_mdraid_delete",
        json!({"name": "r0", "clear_sb": 1}),
        "clear_sb",
    );
    bad("bdev_mdraid_delete", json!({}), "name");

    ok(
        "bdev_mdraid_add_base_bdev",
        json!({"raid_bdev": "r0", "base_bdev": "m2"}),
    );
    let Call::BdevMdraidAddBaseBdev(p) = ok(
        "bdev_mdraid_add_base_bdev",
        json!({"name": "r0", "base_bdev": "m2", "write_mostly": true}),
    ) else {
        panic!()
    };
    assert_eq!(p.raid_bdev, "r0");
    bad(
        "bdev_mdraid_add_base_bdev",
        json!({"raid_bdev": "r0"}),
        "base_bdev",
    );
    bad(
        "bdev_mdraid_add_base_bdev",
        json!({"raid_bdev": "r0", "base_bdev": "r0"}),
        "base_bdev",
    );
    bad(
        "bdev_mdraid_add_base_bdev",
        json!({"raid_bdev": "r0", "base_bdev": ""}),
        "base_bdev",
    );

    ok("bdev_mdraid_remove_base_bdev", json!({"name": "m1"}));
    bad(
        "bdev_mdraid_remove_base_bdev",
        json!({"name": ["m1"]}),
        "name",
    );

    ok("bdev_mdraid_set_options", json!({}));
    ok(
        "bdev_mdraid_set_options",
        json!({"process_window_size_kb": 1024, "process_max_bandwidth_mb_sec": 0}),
    );
    bad(
        "bdev_mdraid_set_options",
        json!({"process_window_size_kb": 0}),
        "process_window_size_kb",
    );
    bad(
        "bdev_mdraid_set_options",
        json!({"process_max_bandwidth_mb_sec": -5}),
        "process_max_bandwidth_mb_sec",
    );

    for a in ["check", "repair", "resync", "idle", "frozen"] {
        ok(
            "bdev_mdraid_sync_action",
            json!({"name": "r0", "action": a}),
        );
    }
    let msg = bad(
        "bdev_mdraid_sync_action",
        json!({"name": "r0", "action": "scrub"}),
        "action",
    );
    assert!(msg.contains("`check`"), "{msg}");

    ok("bdev_mdraid_examine", json!({}));
    ok("bdev_mdraid_examine", json!({"name": "m0"}));
    bad("bdev_mdraid_examine", json!({"name": ""}), "name");
}

#[test]
fn malloc() {
    // What rpc.py 26.05 sends for `bdev_malloc_create -b m0 32 512`.
    let Call::BdevMallocCreate(p) = ok(
        "bdev_malloc_create",
        json!({"num_blocks": 65536, "block_size": 512, "name": "m0", "md_interleave": false, "dif_is_head_of_md": false}),
    ) else {
        panic!()
    };
    assert_eq!(p.name.unwrap(), "m0");
    // What SPDK's save_config writes for a malloc bdev.
    ok(
        "bdev_malloc_create",
        json!({"name": "Malloc0", "num_blocks": 8192, "block_size": 4096, "physical_block_size": 4096,
               "uuid": "f3c0a3ad-0e6c-4d2c-9f0b-6a6d1d8b2b51", "optimal_io_boundary": 0, "md_size": 0,
               "dif_type": 0, "dif_is_head_of_md": false, "dif_pi_format": 0, "numa_id": -1}),
    );
    let m = "bdev_malloc_create";
    bad(m, json!({"block_size": 512}), "num_blocks");
    bad(m, json!({"num_blocks": 8}), "block_size");
    bad(m, json!({"num_blocks": 0, "block_size": 512}), "num_blocks");
    let msg = bad(
        m,
        json!({"num_blocks": u64::MAX, "block_size": 512}),
        "num_blocks",
    );
    assert!(msg.contains("overflow"), "{msg}");
    let e = parse_text(
        m,
        r#"{"num_blocks": 18446744073709551616, "block_size": 512}"#,
    )
    .unwrap_err();
    assert!(
        e.message
            .starts_with("bdev_malloc_create: field `num_blocks`: expected u64"),
        "{e}"
    );
    bad(
        m,
        json!({"num_blocks": 8, "block_size": 1000}),
        "block_size",
    );
    bad(m, json!({"num_blocks": 8, "block_size": 0}), "block_size");
    bad(
        m,
        json!({"num_blocks": 8, "block_size": 512, "physical_block_size": 3000}),
        "physical_block_size",
    );
    bad(
        m,
        json!({"num_blocks": 8, "block_size": 512, "md_size": 8}),
        "md_size",
    );
    bad(
        m,
        json!({"num_blocks": 8, "block_size": 512, "dif_type": 1}),
        "dif_type",
    );
    bad(
        m,
        json!({"num_blocks": 8, "block_size": 512, "uuid": 5}),
        "uuid",
    );
    bad(
        m,
        json!({"num_blocks": 8, "block_size": 512, "numa_id": 2147483648u64}),
        "numa_id",
    );

    ok("bdev_malloc_delete", json!({"name": "m0"}));
    bad(
        "bdev_malloc_delete",
        json!({"name": "m0", "force": true}),
        "force",
    );
}

#[test]
fn aio_and_uring() {
    ok(
        "bdev_aio_create",
        json!({"name": "a0", "filename": "/tmp/f"}),
    );
    // SPDK's save_config form.
    ok(
        "bdev_aio_create",
        json!({"name": "a0", "block_size": 512, "filename": "/tmp/f", "readonly": false, "fallocate": false,
               "uuid": "f3c0a3ad-0e6c-4d2c-9f0b-6a6d1d8b2b51", "nowait": false}),
    );
    ok(
        "bdev_aio_create",
        json!({"name": "a0", "filename": "/tmp/f", "block_size": 0}),
    );
    bad("bdev_aio_create", json!({"name": "a0"}), "filename");
    bad(
        "bdev_aio_create",
        json!({"name": "a0", "filename": ""}),
        "filename",
    );
    bad(
        "bdev_aio_create",
        json!({"name": "a0", "filename": "/f", "block_size": 100}),
        "block_size",
    );
    bad(
        "bdev_aio_create",
        json!({"name": "a0", "filename": "/f", "readonly": "no"}),
        "readonly",
    );
    ok("bdev_aio_delete", json!({"name": "a0"}));

    ok(
        "bdev_uring_create",
        json!({"name": "u0", "filename": "/dev/x", "block_size": 4096}),
    );
    bad("bdev_uring_create", json!({"filename": "/dev/x"}), "name");
    bad(
        "bdev_uring_create",
        json!({"name": "u0", "filename": 3}),
        "filename",
    );
    bad(
        "bdev_uring_create",
        json!({"name": "u0", "filename": "/f", "readonly": true}),
        "readonly",
    );
    ok("bdev_uring_delete", json!({"name": "u0"}));
}

#[test]
fn error_bdev() {
    let Call::BdevErrorCreate(p) = ok("bdev_error_create", json!({"base_name": "m0"})) else {
        panic!()
    };
    assert_eq!(p.bdev_name(), "EE_m0");
    bad("bdev_error_create", json!({"name": "m0"}), "name");
    bad(
        "bdev_error_create",
        json!({"base_name": "x".repeat(254)}),
        "base_name",
    );
    ok("bdev_error_delete", json!({"name": "EE_m0"}));

    let m = "bdev_error_inject_error";
    let Call::BdevErrorInjectError(p) = ok(
        m,
        json!({"name": "EE_m0", "io_type": "write", "error_type": "failure"}),
    ) else {
        panic!()
    };
    assert_eq!(p.num, 1, "SPDK's default");
    ok(
        m,
        json!({"name": "EE_m0", "io_type": "all", "error_type": "nomem", "num": 100}),
    );
    ok(
        m,
        json!({"name": "EE_m0", "io_type": "clear", "error_type": "failure"}),
    );
    ok(
        m,
        json!({"name": "EE_m0", "io_type": "read", "error_type": "corrupt_data", "corrupt_offset": 4, "corrupt_value": 255}),
    );
    ok(
        m,
        json!({"name": "EE_m0", "io_type": "read", "error_type": "nvme_failure", "nvme_sct": 1, "nvme_sc": 2}),
    );
    bad(
        m,
        json!({"name": "EE_m0", "io_type": "write"}),
        "error_type",
    );
    bad(
        m,
        json!({"name": "EE_m0", "io_type": "trim", "error_type": "failure"}),
        "io_type",
    );
    bad(
        m,
        json!({"name": "EE_m0", "io_type": "write", "error_type": "explode"}),
        "error_type",
    );
    bad(
        m,
        json!({"name": "EE_m0", "io_type": "write", "error_type": "failure", "num": -1}),
        "num",
    );
    bad(
        m,
        json!({"name": "EE_m0", "io_type": "read", "error_type": "corrupt_data"}),
        "corrupt_value",
    );
    bad(
        m,
        json!({"name": "EE_m0", "io_type": "read", "error_type": "corrupt_data", "corrupt_value": 256}),
        "corrupt_value",
    );
    bad(
        m,
        json!({"name": "EE_m0", "io_type": "read", "error_type": "nvme_failure"}),
        "nvme_sct",
    );
    bad(
        m,
        json!({"name": "EE_m0", "io_type": "read", "error_type": "failure", "nvme_sc": 2}),
        "nvme_sc",
    );
}

#[test]
fn delay_bdev() {
    let m = "bdev_delay_create";
    let p = json!({"base_bdev_name": "m0", "name": "d0", "avg_read_latency": 100, "p99_read_latency": 200,
                   "avg_write_latency": 300, "p99_write_latency": 400});
    ok(m, p.clone());
    let mut q = p.clone();
    q.as_object_mut().unwrap().remove("p99_write_latency");
    bad(m, q, "p99_write_latency");
    let mut q = p.clone();
    q["avg_read_latency"] = json!(-3);
    bad(m, q, "avg_read_latency");
    let mut q = p.clone();
    q["name"] = json!("m0");
    bad(m, q, "name");
    ok("bdev_delay_delete", json!({"name": "d0"}));
}

#[test]
fn get_bdevs() {
    ok("bdev_get_bdevs", json!({}));
    let Call::BdevGetBdevs(p) = ok("bdev_get_bdevs", json!({"name": "m0", "timeout": 1000})) else {
        panic!()
    };
    assert_eq!(p.timeout, Some(1000));
    let Call::BdevGetBdevs(p) = ok("bdev_get_bdevs", json!({"name": "m0", "timeout_ms": 5})) else {
        panic!()
    };
    assert_eq!(p.timeout, Some(5));
    bad("bdev_get_bdevs", json!({"timeout": "soon"}), "timeout");
    bad("bdev_get_bdevs", json!({"names": ["a"]}), "names");
}

#[test]
fn framework_methods() {
    ok("rpc_get_methods", json!({}));
    ok(
        "rpc_get_methods",
        json!({"current": true, "include_aliases": false}),
    );
    bad("rpc_get_methods", json!({"current": "yes"}), "current");
    for m in [
        "spdk_get_version",
        "save_config",
        "framework_get_subsystems",
        "framework_wait_init",
        "bdev_wait_for_examine",
        "mdraid_nbd_get_listeners",
    ] {
        ok(m, json!({}));
        assert!(Call::parse(Method::from_name(m).unwrap(), None).is_ok());
        let msg = bad(m, json!({"x": 1}), "x");
        assert!(msg.contains("takes no params"), "{msg}");
    }
    ok("framework_get_config", json!({"name": "bdev"}));
    ok(
        "framework_get_config",
        json!({"name": "bdev", "with_batches": true}),
    );
    bad("framework_get_config", json!({}), "name");
    ok("spdk_kill_instance", json!({"sig_name": "SIGTERM"}));
    bad(
        "spdk_kill_instance",
        json!({"sig_name": "SIGSEGV"}),
        "sig_name",
    );
}

#[test]
fn nbd_methods() {
    let Call::MdraidNbdExportAdd(p) = ok("mdraid_nbd_export_add", json!({"bdev_name": "r0"}))
    else {
        panic!()
    };
    assert_eq!(p.export_name(), "r0");
    ok(
        "mdraid_nbd_export_add",
        json!({"bdev_name": "r0", "export_name": "", "read_only": true, "description": "x"}),
    );
    bad(
        "mdraid_nbd_export_add",
        json!({"export_name": "e"}),
        "bdev_name",
    );
    bad(
        "mdraid_nbd_export_add",
        json!({"bdev_name": "r0", "export_name": "e".repeat(4097)}),
        "export_name",
    );
    bad(
        "mdraid_nbd_export_add",
        json!({"bdev_name": "r0", "read_only": "no"}),
        "read_only",
    );
    ok("mdraid_nbd_export_remove", json!({"export_name": "r0"}));
    bad("mdraid_nbd_export_remove", json!({}), "export_name");
    ok("mdraid_nbd_get_exports", json!({}));
    ok("mdraid_nbd_get_exports", json!({"export_name": "r0"}));

    let Call::MdraidNbdListenerAdd(p) =
        ok("mdraid_nbd_listener_add", json!({"address": "127.0.0.1"}))
    else {
        panic!()
    };
    assert_eq!(p.tcp(), Some(("127.0.0.1".parse().unwrap(), 10809)));
    ok(
        "mdraid_nbd_listener_add",
        json!({"address": "::1", "port": 10810}),
    );
    ok(
        "mdraid_nbd_listener_add",
        json!({"unix_path": "/tmp/nbd.sock"}),
    );
    ok(
        "mdraid_nbd_listener_remove",
        json!({"unix_path": "/tmp/nbd.sock"}),
    );
    bad(
        "mdraid_nbd_listener_add",
        json!({"address": "localhost"}),
        "address",
    );
    bad(
        "mdraid_nbd_listener_add",
        json!({"address": "127.0.0.1", "unix_path": "/x"}),
        "address",
    );
    bad(
        "mdraid_nbd_listener_add",
        json!({"unix_path": "/x", "port": 5}),
        "port",
    );
    bad(
        "mdraid_nbd_listener_add",
        json!({"address": "127.0.0.1", "port": 0}),
        "port",
    );
    bad(
        "mdraid_nbd_listener_add",
        json!({"address": "127.0.0.1", "port": 65536}),
        "port",
    );
    bad(
        "mdraid_nbd_listener_add",
        json!({"unix_path": "/".repeat(108)}),
        "unix_path",
    );
    let e = parse("mdraid_nbd_listener_add", json!({})).unwrap_err();
    assert_eq!(
        e.message,
        "mdraid_nbd_listener_add: give `unix_path` or `address`"
    );
}

#[test]
fn uuid_and_names() {
    let u: Uuid = "01234567-89AB-cdef-0123-456789abcdef".parse().unwrap();
    assert_eq!(u.to_string(), "01234567-89ab-cdef-0123-456789abcdef");
    // md's form (mdadm --examine's Array UUID): the same bytes.
    let md: Uuid = "01234567:89abcdef:01234567:89ABCDEF".parse().unwrap();
    assert_eq!(md.to_string(), "01234567-89ab-cdef-0123-456789abcdef");
    assert_eq!(
        bdev_raid::assemble::md_uuid(&md.0),
        "01234567:89abcdef:01234567:89abcdef"
    );
    for bad in [
        "",
        "0123456789abcdef0123456789abcdef",
        "01234567-89ab-cdef-0123-456789abcdef0",
        "0123456-789ab-cdef-0123-456789abcdef",
        "01234567:89abcdef:01234567-89abcdef",
        "01234567:89abcdef:0123456:789abcdef",
        "01234567-89abcdef:01234567:89abcdef",
    ] {
        assert!(bad.parse::<Uuid>().is_err(), "{bad}");
    }
    assert!(BdevName::new("Nvme0n1").is_ok());
    assert!(BdevName::new("a\u{7}").is_err());
    assert!(
        BdevName::new("a\u{a0}b").is_err(),
        "non-breaking space is whitespace"
    );
}
