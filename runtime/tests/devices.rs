//! Base devices through their channels on real reactors.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use mdraid_runtime::dev::delay::{DelayDevice, Latencies, LatencyType};
use mdraid_runtime::dev::error::{ErrorDevice, ErrorIoType, ErrorType, InjectOpts};
use mdraid_runtime::dev::file::{FileDevice, FileOptions, Zeroing};
use mdraid_runtime::dev::malloc::MallocDevice;
use mdraid_runtime::dev::registry::Registry;
use mdraid_runtime::{
    AlignedBuf, DevBuf, DevIo, DevOp, DevStatus, Device, DeviceKind, Mode, Reactor,
};

fn exercise(rt: &mdraid_runtime::Runtime, dev: &Arc<dyn Device>) {
    let bs = dev.block_size() as usize;
    let data = pattern(1, 8 * bs);
    let (s, _) = dev_io(rt, 0, dev, DevOp::Write, 8, 8, Some(data.clone()));
    assert_eq!(s, DevStatus::Success);
    // Read back on the other reactor.
    let other = rt.reactors() - 1;
    let (s, got) = dev_io(rt, other, dev, DevOp::Read, 8, 8, None);
    assert_eq!(s, DevStatus::Success);
    assert!(got == data, "read back differs");
    let (s, _) = dev_io(rt, 0, dev, DevOp::Flush, 0, 0, None);
    assert_eq!(s, DevStatus::Success);
    // Write-zeroes and unmap read back zeros.
    let (s, _) = dev_io(rt, 0, dev, DevOp::WriteZeroes, 9, 2, None);
    assert_eq!(s, DevStatus::Success);
    let (s, _) = dev_io(rt, other, dev, DevOp::Unmap, 12, 3, None);
    assert_eq!(s, DevStatus::Success);
    let (_, got) = dev_io(rt, 0, dev, DevOp::Read, 8, 8, None);
    let mut want = data.clone();
    want[bs..3 * bs].fill(0);
    want[4 * bs..7 * bs].fill(0);
    assert!(got == want, "zeroed ranges wrong");
    let (s, _) = dev_io(rt, 0, dev, DevOp::Reset, 0, 0, None);
    assert_eq!(s, DevStatus::Success);
    // Past the end is an error, not a crash.
    let n = dev.num_blocks();
    let (s, _) = dev_io(rt, 0, dev, DevOp::Read, n - 1, 2, None);
    assert_eq!(s, DevStatus::Error);
}

#[test]
fn malloc_device() {
    let _g = serial();
    let rt = start(&[0, 1], Mode::Interrupt);
    let d: Arc<dyn Device> = MallocDevice::new("m0", 1024, 512, None).unwrap();
    assert_eq!(d.product_name(), "Malloc disk");
    exercise(&rt, &d);
    let d4k: Arc<dyn Device> = MallocDevice::new("m1", 64, 4096, None).unwrap();
    exercise(&rt, &d4k);
    assert!(MallocDevice::new("bad", 8, 1000, None).is_err());
    assert!(rt.shutdown(DEADLINE).drained);
}

#[test]
fn file_device_direct() {
    let _g = serial();
    let rt = start(&[0, 1], Mode::Poll);
    let dir = TempDir::new("file");
    let path = dir.file("f0", 4 << 20);
    let f = FileDevice::open(FileOptions::new("aio0", &path)).unwrap();
    assert_eq!(f.num_blocks(), (4 << 20) / 512);
    let d: Arc<dyn Device> = f.clone();
    exercise(&rt, &d);
    // The data is in the file where it should be.
    let bytes = std::fs::read(&path).unwrap();
    let data = pattern(1, 8 * 512);
    assert!(bytes[8 * 512..9 * 512] == data[..512]);
    if !f.is_direct() {
        eprintln!("note: {} did not take O_DIRECT", dir.0.display());
    }
    // Every zeroing strategy gives zeros (the fallbacks of file systems
    // that refuse fallocate modes).
    for z in [Zeroing::WriteZeros, Zeroing::PunchHole, Zeroing::ZeroRange] {
        f.set_zeroing(z);
        exercise(&rt, &d);
    }
    // 4 KiB blocks.
    let f4: Arc<dyn Device> = FileDevice::open(FileOptions {
        block_size: Some(4096),
        ..FileOptions::new("aio1", dir.file("f1", 1 << 20))
    })
    .unwrap();
    exercise(&rt, &f4);
    assert!(rt.shutdown(DEADLINE).drained);
}

#[test]
fn file_device_on_tmpfs_falls_back() {
    let _g = serial();
    if !std::path::Path::new("/dev/shm").is_dir() {
        eprintln!("skipped: no /dev/shm");
        return;
    }
    let rt = start(&[0, 1], Mode::Interrupt);
    let dir = TempDir::new_in("/dev/shm", "tmpfs");
    let f = FileDevice::open(FileOptions::new("shm0", dir.file("f0", 1 << 20))).unwrap();
    match f.kind() {
        DeviceKind::File { direct, .. } => eprintln!("tmpfs O_DIRECT: {direct}"),
        k => panic!("kind {k:?}"),
    }
    let d: Arc<dyn Device> = f.clone();
    // tmpfs has had no ZERO_RANGE: write-zeroes falls back (punch hole).
    exercise(&rt, &d);
    eprintln!("tmpfs zeroing: {:?}", f.zeroing());
    assert!(rt.shutdown(DEADLINE).drained);
}

/// A file backs one bdev at a time: a second open (another name, a path
/// through a symlink) is refused while the first is open, and works once
/// it is closed.
#[test]
fn a_file_is_open_as_one_bdev_at_a_time() {
    let dir = TempDir::new("once");
    let p = dir.file("m", 1 << 20);
    let link = dir.0.join("link");
    std::os::unix::fs::symlink(&p, &link).unwrap();
    let first = FileDevice::open(FileOptions::new("a", &p)).unwrap();
    for other in [&p, &link] {
        match FileDevice::open(FileOptions::new("b", other)) {
            Err(e @ mdraid_runtime::DevError::InUse(_)) => {
                assert_eq!(e.errno(), libc::EBUSY);
                assert!(e.to_string().contains("already open"), "{e}");
            }
            Err(e) => panic!("{}: {e}", other.display()),
            Ok(_) => panic!("{} opened twice", other.display()),
        }
    }
    drop(first);
    FileDevice::open(FileOptions::new("b", &link)).expect("free again");
}

#[test]
fn file_device_errors() {
    let dir = TempDir::new("bad");
    assert!(FileDevice::open(FileOptions::new("x", dir.0.join("missing"))).is_err());
    assert!(FileDevice::open(FileOptions::new("x", &dir.0)).is_err());
    let tiny = dir.file("tiny", 100);
    assert!(FileDevice::open(FileOptions::new("x", tiny)).is_err());
    let p = dir.file("ok", 8192);
    let e = FileDevice::open(FileOptions {
        block_size: Some(1000),
        ..FileOptions::new("x", p)
    });
    assert!(e.is_err());
}

#[test]
fn no_ring_no_file_channel() {
    let _g = serial();
    let rt = mdraid_runtime::Runtime::start(mdraid_runtime::RuntimeConfig {
        cores: vec![0],
        mode: Mode::Interrupt,
        ring_entries: 0,
        ..Default::default()
    })
    .unwrap();
    let dir = TempDir::new("noring");
    let f: Arc<dyn Device> =
        FileDevice::open(FileOptions::new("f", dir.file("f", 1 << 20))).unwrap();
    let ok = rt.call(0, move |r| f.create_channel(r).is_ok()).unwrap();
    assert!(!ok);
    rt.shutdown(DEADLINE);
}

#[test]
fn error_device_semantics() {
    let _g = serial();
    let rt = start(&[0, 1], Mode::Interrupt);
    let base: Arc<dyn Device> = MallocDevice::new("Malloc0", 256, 512, None).unwrap();
    let ee = ErrorDevice::new(base.clone(), None);
    assert_eq!(ee.name(), "EE_Malloc0");
    let d: Arc<dyn Device> = ee.clone();
    let data = pattern(3, 512);
    assert_eq!(
        dev_io(&rt, 0, &d, DevOp::Write, 0, 1, Some(data.clone())).0,
        DevStatus::Success
    );

    // failure x2 on writes: the base is not touched.
    ee.inject_error(&InjectOpts::new(ErrorIoType::Write, ErrorType::Failure, 2))
        .unwrap();
    for n in [0, 1] {
        let (s, _) = dev_io(&rt, n, &d, DevOp::Write, 0, 1, Some(vec![1; 512]));
        assert_eq!(s, DevStatus::Error);
    }
    assert_eq!(ee.remaining(), [0, 0, 0, 0]);
    assert_eq!(dev_io(&rt, 0, &base, DevOp::Read, 0, 1, None).1, data);
    // Reads were never armed.
    assert_eq!(
        dev_io(&rt, 1, &d, DevOp::Read, 0, 1, None).0,
        DevStatus::Success
    );

    // nomem.
    ee.inject_error(&InjectOpts::new(ErrorIoType::Read, ErrorType::NoMem, 1))
        .unwrap();
    assert_eq!(
        dev_io(&rt, 0, &d, DevOp::Read, 0, 1, None).0,
        DevStatus::NoMem
    );
    assert_eq!(
        dev_io(&rt, 0, &d, DevOp::Read, 0, 1, None).0,
        DevStatus::Success
    );

    // corrupt_data on reads flips one byte after the read.
    let mut o = InjectOpts::new(ErrorIoType::Read, ErrorType::CorruptData, 1);
    o.corrupt_offset = 5;
    o.corrupt_value = 0xff;
    ee.inject_error(&o).unwrap();
    let (s, got) = dev_io(&rt, 1, &d, DevOp::Read, 0, 1, None);
    assert_eq!(s, DevStatus::Success);
    let mut want = data.clone();
    want[5] ^= 0xff;
    assert_eq!(got, want);
    // ... and on writes before the base sees them.
    let mut o = InjectOpts::new(ErrorIoType::Write, ErrorType::CorruptData, 1);
    o.corrupt_offset = 0;
    o.corrupt_value = 1;
    ee.inject_error(&o).unwrap();
    dev_io(&rt, 0, &d, DevOp::Write, 1, 1, Some(vec![0x10; 512]));
    let got = dev_io(&rt, 0, &base, DevOp::Read, 1, 1, None).1;
    assert_eq!(got[0], 0x11);
    assert_eq!(got[1], 0x10);
    // corrupt_value 0 is refused.
    o.corrupt_value = 0;
    assert!(ee.inject_error(&o).is_err());

    // all + clear; write-zeroes is never failed.
    ee.inject_error(&InjectOpts::new(ErrorIoType::All, ErrorType::Failure, 100))
        .unwrap();
    assert_eq!(
        dev_io(&rt, 0, &d, DevOp::Flush, 0, 0, None).0,
        DevStatus::Error
    );
    assert_eq!(
        dev_io(&rt, 0, &d, DevOp::Unmap, 0, 1, None).0,
        DevStatus::Error
    );
    assert_eq!(
        dev_io(&rt, 0, &d, DevOp::WriteZeroes, 3, 1, None).0,
        DevStatus::Success
    );
    ee.inject_error(&InjectOpts::new(ErrorIoType::Clear, ErrorType::Failure, 0))
        .unwrap();
    assert_eq!(ee.remaining(), [0, 0, 0, 0]);
    assert_eq!(
        dev_io(&rt, 0, &d, DevOp::Flush, 0, 0, None).0,
        DevStatus::Success
    );

    // pending: held until resume_pending.
    ee.inject_error(&InjectOpts::new(ErrorIoType::Read, ErrorType::Pending, 1))
        .unwrap();
    let d2 = d.clone();
    let h = rt.handle().clone();
    let waiter = std::thread::spawn(move || {
        let (tx, rx) = mpsc::channel();
        h.send(1, move |r: &mut Reactor| hold_read(r, d2, tx));
        rx.recv_timeout(DEADLINE).expect("pending read resumed")
    });
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        !waiter.is_finished(),
        "pending read completed before resume"
    );
    ee.resume_pending();
    assert_eq!(waiter.join().unwrap(), DevStatus::Success);
    assert!(rt.shutdown(DEADLINE).drained);
}

/// Read block 0 of `d` on this reactor; report the status on `tx`.
fn hold_read(r: &mut Reactor, d: Arc<dyn Device>, tx: mpsc::Sender<DevStatus>) {
    let mut ch = d.create_channel(r).unwrap();
    let mut buf = AlignedBuf::new(512);
    let b = buf.as_mut();
    // SAFETY: `buf` moves into the poller and stays there until completion.
    let db = unsafe { DevBuf::new(b.as_mut_ptr(), b.len()) };
    ch.submit(
        r,
        DevIo {
            op: DevOp::Read,
            lba: 0,
            blocks: 1,
            fua: false,
            buf: db,
            token: 1,
        },
    )
    .unwrap();
    let mut tx = Some(tx);
    r.register_poller(move |r: &mut Reactor| {
        let _keep = &buf;
        let mut got = None;
        ch.poll(r, &mut |_, s| got = Some(s));
        if let Some(s) = got {
            if let Some(t) = tx.take() {
                let _ = t.send(s);
            }
        }
        false
    });
}

#[test]
fn delay_device_orders_by_latency() {
    let _g = serial();
    let rt = start(&[0, 1], Mode::Interrupt);
    let base: Arc<dyn Device> = MallocDevice::new("m", 64, 512, None).unwrap();
    let lat = Latencies {
        avg_read_us: 0,
        p99_read_us: 0,
        avg_write_us: 200_000,
        p99_write_us: 200_000,
    };
    let dd = DelayDevice::new("d0", base, lat, None).unwrap();
    assert!(DelayDevice::new(
        "bad",
        dd.base().clone(),
        Latencies {
            avg_read_us: 10,
            p99_read_us: 5,
            ..lat
        },
        None
    )
    .is_err());
    let d: Arc<dyn Device> = dd.clone();
    // A write, then a read, in flight together: the read (no latency)
    // completes first, the write no sooner than its latency.
    let (tx, rx) = mpsc::channel();
    let start_t = Instant::now();
    rt.send(0, move |r: &mut Reactor| {
        let mut ch = d.create_channel(r).unwrap();
        let mut bufs = vec![AlignedBuf::new(512), AlignedBuf::new(512)];
        for (i, op) in [DevOp::Write, DevOp::Read].into_iter().enumerate() {
            let b = bufs[i].as_mut();
            // SAFETY: `bufs` moves into the poller until both complete.
            let db = unsafe { DevBuf::new(b.as_mut_ptr(), b.len()) };
            ch.submit(
                r,
                DevIo {
                    op,
                    lba: 0,
                    blocks: 1,
                    fua: false,
                    buf: db,
                    token: i as u64,
                },
            )
            .unwrap();
        }
        let order = Rc::new(RefCell::new(Vec::new()));
        r.register_poller(move |r: &mut Reactor| {
            let _keep = &bufs;
            let o = order.clone();
            ch.poll(r, &mut |t, s| {
                assert_eq!(s, DevStatus::Success);
                o.borrow_mut().push(t);
                let _ = tx.send((t, Instant::now()));
            });
            false
        });
    });
    let (first, _) = rx.recv_timeout(DEADLINE).unwrap();
    let (second, t2) = rx.recv_timeout(DEADLINE).unwrap();
    assert_eq!(
        (first, second),
        (1, 0),
        "read should overtake the delayed write"
    );
    assert!(t2 - start_t >= Duration::from_millis(200));
    // Latency can be changed while running.
    dd.update_latency(LatencyType::AvgWrite, 0).unwrap();
    assert!(dd.update_latency(LatencyType::P99Read, 0).is_ok());
    assert!(dd.update_latency(LatencyType::AvgRead, 10).is_err());
    assert_eq!(dd.latencies().avg_write_us, 0);
    assert!(rt.shutdown(DEADLINE).drained);
}

#[test]
fn registry_claims() {
    let reg = Registry::new();
    let m: Arc<dyn Device> = MallocDevice::new("m0", 8, 512, None).unwrap();
    reg.register(m.clone()).unwrap();
    assert!(reg.register(m).is_err());
    reg.claim("m0", "raid0").unwrap();
    assert!(reg.claim("m0", "other").is_err());
    assert!(reg.unregister("m0").is_err());
    assert!(reg.claim_all(&["nope"], "x").is_err());
    reg.release("m0");
    assert!(reg.unregister("m0").is_ok());
    assert!(reg.get("m0").is_none());
}
