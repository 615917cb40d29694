//! fio with SPDK's bdev plugin (`ioengine=spdk_bdev`) and the cdylib
//! preloaded with it: raid5 on aio files, random writes with fio's
//! verify (crc32c), then the members' superblocks.
//!
//! Without `SPDK_DIR` the test prints "SPDK tests skipped: SPDK_DIR not
//! set" and passes.

mod common;

use std::process::Stdio;

use common::*;

#[test]
fn fio_plugin_raid5_aio_randwrite_verify() {
    let Some(env) = spdk_env("fio") else {
        return;
    };
    let Some(plugin) = env.fio_plugin("fio") else {
        return;
    };
    let _g = serial();
    let files = env.files(4, 32);
    let mut bdevs: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, f)| aio(&format!("a{i}"), f))
        .collect();
    bdevs.push(mdraid_create_fresh("r", "raid5", &["a0", "a1", "a2", "a3"]));
    let cfg = write_cfg(&env, "bdev.json", &config(&[("bdev", &bdevs)]));
    let size: u64 = 64 << 20;
    let job = write_cfg(
        &env,
        "raid5.fio",
        &fio_job(
            &cfg,
            &format!(
                "rw=randwrite\nbs=4k\niodepth=16\nsize={size}\n\
                 verify=crc32c\ndo_verify=1\nverify_fatal=1\n"
            ),
        ),
    );
    let (out, v, t) = run_fio(&env, &plugin, &job);
    let j = &v["jobs"][0];
    let (written, verified) = (
        j["write"]["io_bytes"].as_u64().unwrap(),
        j["read"]["io_bytes"].as_u64().unwrap(),
    );
    println!(
        "fio randwrite + crc32c verify on raid5: error {}, wrote {written}, verified {verified} bytes, write IOPS {}",
        j["error"], j["write"]["iops"]
    );
    assert_eq!(j["error"], 0, "{t}");
    assert_eq!(written, size, "{t}");
    assert_eq!(
        verified, size,
        "fio did not verify everything it wrote:\n{t}"
    );
    // The plugin prints SPDK's errors only (no notices): there are none.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("*ERROR*") && !log.contains("panic"), "{log}");

    // The array was stopped cleanly when fio ended.
    let sbs: Vec<_> = files.iter().map(|f| read_sb(f)).collect();
    for (role, sb) in sbs.iter().enumerate() {
        assert!(sb.is_clean(), "role {role} not marked clean");
        assert_eq!(sb.events, sbs[0].events);
        assert!(sb.events > 0, "the array never went dirty");
    }
    env.cleanup();
}

/// md's read_balance where a resync has not been yet, through the SPDK
/// host's own paths (the direct ones included): a new raid1 on members
/// holding different old data, its initial resync held back by the cap,
/// serves fio's random reads from the first copy only, so what they read
/// is what the resync then copies to the others.
#[test]
fn fio_plugin_raid1_reads_where_the_resync_has_not_been_go_to_the_first_copy() {
    let Some(env) = spdk_env("fio-unsynced") else {
        return;
    };
    let Some(plugin) = env.fio_plugin("fio") else {
        return;
    };
    let _g = serial();
    let files = env.files(3, 32);
    for (f, b) in files.iter().zip([0xaau8, 0xbb, 0xcc]) {
        std::fs::write(f, vec![b; 32 << 20]).unwrap();
    }
    let mut bdevs = vec![
        r#"{"method":"bdev_mdraid_set_options","params":{"process_max_bandwidth_mb_sec":1}}"#
            .to_string(),
    ];
    bdevs.extend(
        files
            .iter()
            .enumerate()
            .map(|(i, f)| aio(&format!("u{i}"), f)),
    );
    bdevs.push(
        r#"{"method":"bdev_mdraid_create","params":{"name":"r","raid_level":"raid1","base_bdevs":"u0 u1 u2"}}"#
            .to_string(),
    );
    let cfg = write_cfg(&env, "bdev.json", &config(&[("bdev", &bdevs)]));
    // From 4 MiB on: past where a 1 MB/s resync gets in the run.
    let job = write_cfg(
        &env,
        "raid1.fio",
        &fio_job(
            &cfg,
            "rw=randread\nbs=4k\niodepth=32\noffset=4m\nsize=16m\n\
             verify=pattern\nverify_pattern=0xaa\nverify_only=1\nverify_fatal=1\n",
        ),
    );
    let (_, v, t) = run_fio(&env, &plugin, &job);
    let j = &v["jobs"][0];
    assert_eq!(j["error"], 0, "a read came from another copy:\n{t}");
    assert_eq!(j["read"]["io_bytes"].as_u64(), Some(16 << 20), "{t}");
    env.cleanup();
}

/// Run fio job file `job` with SPDK's bdev plugin and the cdylib
/// preloaded: its output, its JSON report, and the text of both streams.
fn run_fio(
    env: &Env,
    plugin: &std::path::Path,
    job: &std::path::Path,
) -> (std::process::Output, serde_json::Value, String) {
    let out = env
        .app(180, std::path::Path::new("fio"), &[&env.so, plugin])
        .arg("--output-format=json")
        .arg(job)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run fio");
    let t = text(&out);
    assert!(out.status.success(), "fio failed ({}):\n{t}", out.status);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("fio json: {e}:\n{t}"));
    (out, v, t)
}

/// A fio job on bdev `r` of the SPDK JSON config `cfg`: the plugin's
/// global options, then `opts` (one `key=value` per line).
fn fio_job(cfg: &std::path::Path, opts: &str) -> String {
    format!(
        "[global]\nioengine=spdk_bdev\nspdk_json_conf={}\nspdk_mem=2048\n\
         env_context=--no-huge --legacy-mem --iova-mode=va --no-pci\n\
         thread=1\ndirect=1\n{opts}[r]\nfilename=r\n",
        cfg.display()
    )
}
