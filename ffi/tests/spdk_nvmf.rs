//! NVMe-oF over TCP on 127.0.0.1:
//!
//! - an array exported by `mdraid_tgt`, written by `spdk_nvme_perf` and
//!   read back and checked through the same TCP path by fio (SPDK's bdev
//!   plugin attaching it with bdev_nvme), then a bdevperf `-w verify` run
//!   over TCP too;
//! - raid1 members across the network: two stock nvmf_tgt processes
//!   export malloc namespaces, bdevperf (with the cdylib preloaded) attaches
//!   them and runs verify on a raid1 over them, and one exporting target
//!   is killed with SIGKILL in the middle of the run.
//!
//! `spdk_nvme_perf` cannot check data: its only check is of end-to-end
//! protection information (DIF/DIX), on namespaces formatted with
//! metadata. Its payload is a constant byte per queue slot (`queue_depth
//! % 8 + 1`, counting the slots down), so a sequential pass at queue depth
//! 1 writes the byte 0x01 everywhere, which fio's `verify=pattern` checks.
//!
//! Without `SPDK_DIR` each test prints "SPDK tests skipped: SPDK_DIR not
//! set" and passes.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

const NQN: &str = "nqn.2016-06.io.spdk:mdraid";

/// `spdk_nvme_perf` against the array's subsystem on `port`; checks it
/// ran without errors and returns its output.
fn nvme_perf(env: &Env, port: u16, args: &[&str], what: &str) -> String {
    let trid = format!("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN}");
    let out = env
        .app(120, &env.nvme_perf(), &[])
        .args(["--no-huge", "-s", "1024", "-c", "0x2", "-r", &trid])
        .args(args)
        .output()
        .expect("run spdk_nvme_perf");
    let t = text(&out);
    assert!(
        out.status.success(),
        "{what}: spdk_nvme_perf failed ({}):\n{t}",
        out.status
    );
    assert!(!t.contains("errors occurred"), "{what}: I/O errors:\n{t}");
    let total = t
        .lines()
        .find(|l| l.trim_start().starts_with("Total"))
        .unwrap_or_else(|| panic!("{what}: no Total line:\n{t}"));
    let iops: f64 = total
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or(0.0);
    println!("{what}: {}", total.trim());
    assert!(iops > 0.0, "{what}: no I/O done:\n{t}");
    t
}

#[test]
fn mdraid_tgt_nvmf_tcp_nvme_perf_then_verify() {
    let Some(env) = spdk_env("nvmf-tgt") else {
        return;
    };
    let Some(plugin) = env.fio_plugin("nvmf-tgt") else {
        return;
    };
    let _g = serial();

    // The app's own options are there besides SPDK's.
    let help = env
        .app(30, &env.mdraid_tgt(), &[])
        .arg("-h")
        .output()
        .expect("run mdraid_tgt -h");
    let h = text(&help);
    assert!(
        help.status.success(),
        "mdraid_tgt -h: {}:\n{h}",
        help.status
    );
    assert!(h.contains("--json") && h.contains("-f <file>"), "{h}");

    let files = env.files(4, 16);
    let port = free_port();
    let mut bdevs: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, f)| aio(&format!("a{i}"), f))
        .collect();
    bdevs.push(mdraid_create_fresh("r", "raid5", &["a0", "a1", "a2", "a3"]));
    let nvmf = nvmf_export(NQN, "r", port);
    let cfg = write_cfg(
        &env,
        "tgt.json",
        &config(&[("bdev", &bdevs), ("nvmf", &nvmf)]),
    );
    let sock = env.dir.join("tgt.sock");
    let pidfile = env.dir.join("tgt.pid");
    let mut c = env.app(300, &env.mdraid_tgt(), &[]);
    c.args(APP_OPTS)
        .args(["-s", "2048", "-m", "0x1", "-r"])
        .arg(&sock)
        .arg("-c")
        .arg(&cfg)
        .arg("-f")
        .arg(&pidfile);
    let mut tgt = Proc::spawn(&env, "mdraid_tgt", c, &sock);
    let info = array_info(&tgt, &env, "r");
    assert_eq!(info["state"], "online", "{info}");
    let bdev = tgt.json(&env, &["bdev_get_bdevs", "-b", "r"]);
    let bytes = bdev[0]["num_blocks"].as_u64().unwrap() * bdev[0]["block_size"].as_u64().unwrap();
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("the pid file")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(Some(pid), tgt.app_pid(), "pid file");

    // Random writes under load, then one sequential pass of 0x01.
    nvme_perf(
        &env,
        port,
        &["-q", "32", "-o", "4096", "-w", "randwrite", "-t", "3"],
        "nvme_perf randwrite",
    );
    nvme_perf(
        &env,
        port,
        &[
            "-q", "1", "-o", "65536", "-w", "write", "-d", "100%", "-t", "60",
        ],
        "nvme_perf sequential write",
    );

    // Read it all back over NVMe/TCP: fio, SPDK's bdev plugin, bdev_nvme.
    let attach = nvme_attach("N", NQN, port, "");
    let host = write_cfg(
        &env,
        "fio-host.json",
        &config(&[("bdev", std::slice::from_ref(&attach))]),
    );
    let job = write_cfg(
        &env,
        "verify.fio",
        &format!(
            "[global]\nioengine=spdk_bdev\nspdk_json_conf={}\nspdk_mem=1024\n\
             env_context=--no-huge --legacy-mem --iova-mode=va --no-pci\n\
             thread=1\ndirect=1\nrw=write\nbs=64k\niodepth=16\n\
             verify=pattern\nverify_pattern=0x01\nverify_only=1\nverify_fatal=1\n\
             [n]\nfilename=Nn1\n",
            host.display()
        ),
    );
    let out = env
        .app(120, std::path::Path::new("fio"), &[&plugin])
        .arg("--output-format=json")
        .arg(&job)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run fio");
    let t = text(&out);
    assert!(
        out.status.success(),
        "fio verify failed ({}):\n{t}",
        out.status
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("fio json: {e}:\n{t}"));
    let j = &v["jobs"][0];
    let read = j["read"]["io_bytes"].as_u64().unwrap();
    println!(
        "fio verify over NVMe/TCP: error {}, read {read} of {bytes} bytes",
        j["error"]
    );
    assert_eq!(j["error"], 0, "{t}");
    assert_eq!(read, bytes, "fio did not read the whole namespace:\n{t}");

    // And SPDK's initiator with bdevperf's own write-then-verify.
    let bp_cfg = write_cfg(&env, "bdevperf.json", &config(&[("bdev", &[attach])]));
    let out = env
        .app(120, &env.bdevperf(), &[])
        .args(APP_OPTS)
        .args(["-s", "1024", "-m", "0x2", "--json"])
        .arg(&bp_cfg)
        .args(["-q", "32", "-o", "4096", "-w", "verify", "-t", "3"])
        .output()
        .expect("run bdevperf");
    let t = text(&out);
    assert!(
        out.status.success(),
        "bdevperf over TCP failed ({}):\n{t}",
        out.status
    );
    let (iops, fails, timeouts) = totals(&t).unwrap_or_else(|| panic!("no Total line:\n{t}"));
    println!("bdevperf verify over NVMe/TCP: {iops} IOPS, {fails} fail/s, {timeouts} TO/s");
    assert!(iops > 0.0 && fails == 0.0 && timeouts == 0.0, "{t}");

    let info = array_info(&tgt, &env, "r");
    assert_eq!(member_states(&info), ["in_sync"; 4], "{info}");
    let log = tgt.stop(&env);
    assert!(log.contains("mdraid r: stopped"), "{log}");
    let sbs: Vec<_> = files.iter().map(|f| read_sb(f)).collect();
    assert!(sbs
        .iter()
        .all(|sb| sb.is_clean() && sb.events == sbs[0].events));
    env.cleanup();
}

/// Exports malloc bdev `M{i}` as `nqn...:m{i}` on `port` (nvmf_tgt).
fn exporter(env: &Env, i: usize, port: u16) -> Proc {
    let nqn = format!("nqn.2016-06.io.spdk:m{i}");
    let bdevs = vec![format!(
        r#"{{"method":"bdev_malloc_create","params":{{"name":"M{i}","num_blocks":131072,"block_size":512}}}}"#
    )];
    let cfg = write_cfg(
        env,
        &format!("exp{i}.json"),
        &config(&[
            ("bdev", &bdevs),
            ("nvmf", &nvmf_export(&nqn, &format!("M{i}"), port)),
        ]),
    );
    let sock = env.dir.join(format!("exp{i}.sock"));
    let mut c = env.app(300, &env.nvmf_tgt(), &[]);
    c.args(APP_OPTS)
        .args(["-s", "512", "-m", "0x1", "-r"])
        .arg(&sock)
        .arg("-c")
        .arg(&cfg);
    Proc::spawn(env, &format!("nvmf_tgt{i}"), c, &sock)
}

/// raid1 over two NVMe/TCP namespaces in bdevperf (the cdylib preloaded:
/// bdevperf is the host, which keeps the test to three SPDK processes on
/// a small machine); the second exporting target is killed with SIGKILL
/// during a verify run. bdev_nvme is set to give the controller up after
/// 2 s (reconnect every 1 s, I/O failed after 1 s), so the namespace
/// bdev is removed. No I/O fails, the member is failed, its descriptor
/// is closed (the namespace bdev goes away), and the array stays online.
#[test]
fn nvmf_members_raid1_target_killed() {
    let Some(env) = spdk_env("nvmf-kill") else {
        return;
    };
    let _g = serial();
    let ports = [free_port(), free_port()];
    let _e0 = exporter(&env, 0, ports[0]);
    let mut e1 = exporter(&env, 1, ports[1]);

    let fast = r#""ctrlr_loss_timeout_sec":2,"reconnect_delay_sec":1,"fast_io_fail_timeout_sec":1"#;
    let bdevs = vec![
        nvme_attach("N0", "nqn.2016-06.io.spdk:m0", ports[0], fast),
        nvme_attach("N1", "nqn.2016-06.io.spdk:m1", ports[1], fast),
        mdraid_create("r", "raid1", &["N0n1", "N1n1"]),
    ];
    let cfg = write_cfg(&env, "host.json", &config(&[("bdev", &bdevs)]));
    let sock = env.dir.join("host.sock");
    let mut c = env.app(300, &env.bdevperf(), &[&env.so]);
    c.args(APP_OPTS)
        .args(["-s", "1024", "-m", "0x2", "-r"])
        .arg(&sock)
        .arg("--json")
        .arg(&cfg)
        .args(["-q", "32", "-o", "4096", "-w", "verify", "-t", "10", "-z"]);
    let mut host = Proc::spawn(&env, "bdevperf", c, &sock);
    let info = array_info(&host, &env, "r");
    assert_eq!(member_states(&info), ["in_sync", "in_sync"], "{info}");

    let run = perform_tests(&env, &host.sock, 90);
    std::thread::sleep(Duration::from_secs(3));
    e1.kill9();
    run.clean("raid1 over NVMe/TCP, one target killed");

    let info = array_info(&host, &env, "r");
    println!("after: {info}");
    assert_eq!(member_states(&info), ["in_sync", "faulty"], "{info}");
    assert_eq!(info["state"], "online");
    // The namespace bdev is gone: bdev_nvme deleted the controller, and
    // the unregistration finished once the array closed its descriptor.
    let mut gone = false;
    for _ in 0..100 {
        let (exists, _) = host.rpc(&env, &["bdev_get_bdevs", "-b", "N1n1"]);
        if !exists {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(gone, "N1n1 still registered:\n{}", host.log_text());
    let log = host.stop(&env);
    assert!(
        log.contains("member N1n1 (role 1) removed; its descriptor is closed"),
        "{log}"
    );
    assert!(log.contains("mdraid r: stopped"), "{log}");
    env.cleanup();
}
