//! Real NBD clients against the blocking reference server, on a unix
//! socket in a temp dir and on TCP 127.0.0.1 with an ephemeral port.
//! Each test prints SKIP and passes if its tool is not installed
//! (Debian packages: libnbd-bin for nbdinfo, qemu-utils for qemu-io and
//! qemu-img, fio for fio).

mod common;

use common::*;
use mdraid_nbd::{Command, Errno};
use std::time::Duration;

fn contains_all(hay: &str, needles: &[&str]) {
    for n in needles {
        assert!(hay.contains(n), "missing {n:?} in:\n{hay}");
    }
}

#[test]
fn nbdinfo_describes_and_lists() {
    let Some(nbdinfo) = require_tool("nbdinfo_describes_and_lists", "nbdinfo") else {
        return;
    };
    each_transport("nbdinfo", |s, _| {
        let dir = s.dir.path();
        let o = run_ok(dir, &nbdinfo, &["--json", &s.uri("disk")]);
        contains_all(
            &o.stdout,
            &[
                "\"export-name\": \"disk\"",
                "\"description\": \"test disk\"",
                "\"export-size\": 33554432",
                "\"is_read_only\": false",
                "\"can_flush\": true",
                "\"can_fua\": true",
                "\"can_trim\": true",
                "\"can_zero\": true",
                "\"can_multi_conn\": true",
                "\"can_cache\": false",
                "\"can_df\": false",
                "\"block_size_minimum\": 1",
                "\"block_size_preferred\": 4096",
                "\"block_size_maximum\": 33554432",
            ],
        );
        let o = run_ok(dir, &nbdinfo, &["--json", &s.uri("ro")]);
        contains_all(
            &o.stdout,
            &[
                "\"is_read_only\": true",
                "\"can_trim\": false",
                "\"can_zero\": false",
                "\"can_multi_conn\": false",
                "\"export-size\": 1048576",
            ],
        );
        let o = run_ok(dir, &nbdinfo, &["--list", "--json", &s.uri("")]);
        contains_all(
            &o.stdout,
            &["\"export-name\": \"disk\"", "\"export-name\": \"ro\""],
        );
        let o = run_ok(dir, &nbdinfo, &["--size", &s.uri("disk")]);
        assert_eq!(o.stdout.trim(), "33554432");
        // The empty name is the default export.
        let o = run_ok(dir, &nbdinfo, &["--size", &s.uri("")]);
        assert_eq!(o.stdout.trim(), "33554432");
        let t = Duration::from_secs(60);
        assert_eq!(
            run(dir, &nbdinfo, &["--is", "read-only", &s.uri("ro")], t).code,
            Some(0)
        );
        assert_eq!(
            run(dir, &nbdinfo, &["--is", "read-only", &s.uri("disk")], t).code,
            Some(2)
        );
        assert_eq!(
            run(dir, &nbdinfo, &["--can", "multi-conn", &s.uri("disk")], t).code,
            Some(0)
        );
        assert_eq!(
            run(dir, &nbdinfo, &["--can", "flush", &s.uri("disk")], t).code,
            Some(0)
        );
        // An unknown export is an error the client reports; the server
        // goes on serving.
        let o = run(dir, &nbdinfo, &[&s.uri("nope")], t);
        assert!(!o.ok(), "{o:?}");
        run_ok(dir, &nbdinfo, &["--size", &s.uri("disk")]);
    });
}

#[test]
fn qemu_io_reads_and_writes() {
    let Some(qemu_io) = require_tool("qemu_io_reads_and_writes", "qemu-io") else {
        return;
    };
    each_transport("qemu-io", |s, st| {
        let dir = s.dir.path();
        let uri = s.uri("disk");
        let o = run_ok(
            dir,
            &qemu_io,
            &[
                "-f",
                "raw",
                "-c",
                "write -P 0xab 0 64k",
                "-c",
                "write -f -P 0xcd 64k 64k",
                "-c",
                "read -P 0xab 0 64k",
                "-c",
                "read -P 0xcd 64k 64k",
                "-c",
                "write -P 0xee 128k 64k",
                "-c",
                "flush",
                "-c",
                "discard 128k 64k",
                "-c",
                "write -P 0x77 192k 64k",
                "-c",
                "write -z 192k 64k",
                "-c",
                "read -P 0 192k 64k",
                "-c",
                "aio_write -P 0x11 1M 4k",
                "-c",
                "aio_write -P 0x22 2M 1M",
                "-c",
                "aio_flush",
                "-c",
                "read -P 0x11 1M 4k",
                "-c",
                "read -P 0x22 2M 1M",
                "-c",
                "write -P 0x33 32767k 1k",
                "-c",
                "read -P 0x33 32767k 1k",
                &uri,
            ],
        );
        let all = format!("{}{}", o.stdout, o.stderr);
        assert!(
            !all.contains("error") && !all.contains("failed") && !all.contains("mismatch"),
            "{all}"
        );
        // Every command reached the server as itself (not emulated by the
        // client), so the flags advertising them were seen.
        let stats = st.stats();
        assert!(stats.fua_writes >= 1, "{stats:?}");
        assert!(stats.flushes >= 2, "{stats:?}");
        assert!(stats.trims >= 1, "{stats:?}");
        assert!(stats.write_zeroes >= 1, "{stats:?}");
        let snap = |off: u64, len: usize| st.snapshot("disk", off, len).unwrap();
        assert!(snap(0, 65536).iter().all(|&b| b == 0xab));
        assert!(snap(65536, 65536).iter().all(|&b| b == 0xcd));
        assert!(snap(192 << 10, 65536).iter().all(|&b| b == 0));
        assert!(snap(1 << 20, 4096).iter().all(|&b| b == 0x11));
        assert!(snap(2 << 20, 1 << 20).iter().all(|&b| b == 0x22));
        assert!(snap((32 << 20) - 1024, 1024).iter().all(|&b| b == 0x33));

        // Past the end: qemu refuses or the server answers ENOSPC/EINVAL;
        // either way nothing is written and the server goes on.
        let o = run(
            dir,
            &qemu_io,
            &["-f", "raw", "-c", "write -P 0x44 32M 4k", &uri],
            Duration::from_secs(60),
        );
        let all = format!("{}{}", o.stdout, o.stderr);
        assert!(!all.contains("wrote 4096/4096"), "{all}");

        // A read-only export reads, and refuses writes.
        run_ok(
            dir,
            &qemu_io,
            &[
                "-r",
                "-f",
                "raw",
                "-c",
                "read -P 0x5a 0 4k",
                "-c",
                "read -P 0 4k 4k",
                &s.uri("ro"),
            ],
        );
        let o = run(
            dir,
            &qemu_io,
            &["-f", "raw", "-c", "write -P 1 0 4k", &s.uri("ro")],
            Duration::from_secs(60),
        );
        let all = format!("{}{}", o.stdout, o.stderr);
        assert!(!all.contains("wrote 4096/4096"), "{all}");
        assert!(st
            .snapshot("ro", 0, 4096)
            .unwrap()
            .iter()
            .all(|&b| b == 0x5a));

        // An I/O error from the backend reaches the client, and the
        // connection survives it.
        assert!(st.inject_fault("disk", Command::Read, Errno::Io, 1));
        let o = run(
            dir,
            &qemu_io,
            &[
                "-f",
                "raw",
                "-c",
                "read 0 4k",
                "-c",
                "read -P 0xab 0 4k",
                &uri,
            ],
            Duration::from_secs(60),
        );
        let all = format!("{}{}", o.stdout, o.stderr);
        assert!(all.contains("Input/output error"), "{all}");
        assert!(all.contains("read 4096/4096 bytes at offset 0"), "{all}");
    });
}

#[test]
fn qemu_img_info_convert_compare() {
    let Some(qemu_img) = require_tool("qemu_img_info_convert_compare", "qemu-img") else {
        return;
    };
    each_transport("qemu-img", |s, st| {
        let dir = s.dir.path();
        let uri = s.uri("disk");
        let o = run_ok(dir, &qemu_img, &["info", "--output=json", &uri]);
        assert!(
            o.stdout.contains("\"virtual-size\": 33554432"),
            "{}",
            o.stdout
        );
        // A sparse-ish source: data, a hole, more data.
        let mut src = pattern(8 << 20, 7);
        src[(2 << 20)..(5 << 20)].fill(0);
        let src_path = dir.join("src.img");
        std::fs::write(&src_path, &src).unwrap();
        let src_s = src_path.to_str().unwrap();
        run_ok(
            dir,
            &qemu_img,
            &["convert", "-n", "-f", "raw", "-O", "raw", src_s, &uri],
        );
        run_ok(
            dir,
            &qemu_img,
            &["compare", "-f", "raw", "-F", "raw", src_s, &uri],
        );
        assert_eq!(st.snapshot("disk", 0, src.len()).unwrap(), src);
        // Copy back out over NBD.
        let back = dir.join("back.img");
        run_ok(
            dir,
            &qemu_img,
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "raw",
                &uri,
                back.to_str().unwrap(),
            ],
        );
        let b = std::fs::read(&back).unwrap();
        assert_eq!(b.len(), 32 << 20);
        assert_eq!(&b[..src.len()], &src[..]);
        assert!(b[src.len()..].iter().all(|&x| x == 0));
    });
}

/// Whether this fio was built with the nbd engine (Debian's is, through
/// libnbd; a build without libnbd lacks it).
fn fio_has_nbd(fio: &std::path::Path) -> bool {
    let dir = TempDir::new("fio-enghelp");
    let o = run(dir.path(), fio, &["--enghelp"], Duration::from_secs(30));
    o.stdout.lines().any(|l| l.trim() == "nbd")
}

#[test]
fn fio_nbd_engine_verifies_crc32c() {
    let Some(fio) = require_tool("fio_nbd_engine_verifies_crc32c", "fio") else {
        return;
    };
    if !fio_has_nbd(&fio) {
        eprintln!("SKIP: fio_nbd_engine_verifies_crc32c: this fio has no nbd ioengine (`fio --enghelp` does not list nbd; fio must be built with libnbd)");
        return;
    }
    each_transport("fio", |s, _| {
        let dir = s.dir.path();
        let uri = format!("--uri={}", s.uri("disk"));
        // One connection, queue depth 16, write then verify.
        let o = run_ok(
            dir,
            &fio,
            &[
                "--name=crc",
                "--ioengine=nbd",
                &uri,
                "--rw=randwrite",
                "--bs=4k",
                "--size=16M",
                "--iodepth=16",
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
                "--verify_state_save=0",
            ],
        );
        assert!(o.stdout.contains("err= 0"), "{}", o.stdout);
        let all = format!("{}{}", o.stdout, o.stderr);
        assert!(
            !all.contains("bad magic") && !all.contains("verify failed"),
            "{all}"
        );
        // The verify pass read everything back.
        assert!(all.contains("read: IOPS="), "{all}");
        // Two jobs (two connections: multi-conn), mixed block sizes,
        // FUA-free writes then flushes via fsync every 16 writes.
        let o = run_ok(
            dir,
            &fio,
            &[
                "--name=multi",
                "--ioengine=nbd",
                &uri,
                "--rw=randwrite",
                "--bsrange=4k-256k",
                "--bs_unaligned=0",
                "--numjobs=2",
                "--size=16M",
                "--offset_increment=16M",
                "--iodepth=8",
                "--fsync=16",
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
                "--verify_state_save=0",
                "--group_reporting=1",
            ],
        );
        assert!(o.stdout.contains("err= 0"), "{}", o.stdout);
    });
}
