//! The real metadata path (`bdev_raid::meta::Meta`) on the host: dirty and
//! failure superblocks land on the members, clean on stop.

mod common;

use std::sync::Arc;

use bdev_raid::channel::IoStatus;
use bdev_raid::layout::Level;
use bdev_raid::meta::{create_superblocks, CreateParams, Meta, MetaConfig};
use bdev_raid::ondisk::{DevRole, Superblock, SB_BLOCK_BYTES, SB_OFFSET_BYTES};
use bdev_raid::state::MemberState;
use common::*;
use mdraid_runtime::dev::error::{ErrorDevice, ErrorIoType, ErrorType, InjectOpts};
use mdraid_runtime::dev::malloc::MallocDevice;
use mdraid_runtime::{Array, ArrayParams, DevOp, Device, MdMeta, MetaPath, Mode, Runtime};

const MEMBER_BLOCKS: u64 = 8192; // 4 MiB of 512-byte blocks
const DATA_OFFSET: u64 = 2048; // sectors, as mdadm

fn superblock(rt: &Runtime, d: &Arc<dyn Device>) -> Superblock {
    let bs = d.block_size() as u64;
    let (s, data) = dev_io(
        rt,
        0,
        d,
        DevOp::Read,
        SB_OFFSET_BYTES / bs,
        SB_BLOCK_BYTES as u64 / bs,
        None,
    );
    assert_eq!(s, mdraid_runtime::DevStatus::Success);
    Superblock::decode(&data, MEMBER_BLOCKS).expect("a valid md superblock")
}

/// A raid1 of `members` with md superblocks (metadata path on reactor 1,
/// 20 ms safe mode) and, with `bitmap_chunk`, a bitmap of that many bytes
/// per bit whose daemon never clears within a test.
fn md_raid1(
    rt: &Runtime,
    name: &'static str,
    set_uuid: [u8; 16],
    members: &[Arc<dyn Device>],
    bitmap_chunk: Option<u64>,
) -> Arc<Array> {
    use bdev_raid::bitmap::{BitmapGeom, DiskBitmap};
    use bdev_raid::layout::{Geometry, GeometryParams};
    let geom = Geometry::new(&GeometryParams {
        level: Level::Raid1,
        layout: None,
        strip_size_kb: 0,
        block_size: 512,
        member_blocks: vec![MEMBER_BLOCKS - DATA_OFFSET; members.len()],
    })
    .unwrap();
    let bg = bitmap_chunk.map(|c| BitmapGeom::new(&geom, c).unwrap());
    let mut p = ArrayParams::new(name, Level::Raid1, 0, members.to_vec());
    p.data_offset_blocks = DATA_OFFSET;
    p.meta_reactor = 1;
    p.bitmap = bg.clone();
    let uuids: Vec<[u8; 16]> = members.iter().map(|d| d.uuid().0).collect();
    let n = members.len();
    Array::create_with_meta(rt, p, move |init| {
        let sbs = create_superblocks(
            &init.geom,
            &CreateParams {
                set_uuid,
                name,
                device_uuids: uuids,
                member_sectors: vec![MEMBER_BLOCKS; n],
                data_offset: DATA_OFFSET,
                now_secs: 1,
                bitmap: bg.is_some(),
            },
        );
        let disk = bg.as_ref().map(|g| DiskBitmap::new(g, set_uuid, 60_000));
        let meta = Meta::new(
            init.geom,
            init.shared,
            init.state,
            sbs.into_iter().map(Some).collect(),
            disk,
            MetaConfig {
                safemode_ms: 20,
                daemon_sleep_ms: 60_000,
                ..MetaConfig::default()
            },
            0,
        );
        Box::new(MdMeta::new(meta)) as Box<dyn MetaPath + Send>
    })
    .unwrap()
}

#[test]
fn md_superblocks_on_members() {
    let _g = serial();
    let rt = start(&[0, 1], Mode::Interrupt);
    let m0: Arc<dyn Device> = MallocDevice::new("sb0", MEMBER_BLOCKS, 512, None).unwrap();
    let m1: Arc<dyn Device> = MallocDevice::new("sb1", MEMBER_BLOCKS, 512, None).unwrap();
    let ee = ErrorDevice::new(m0.clone(), None);
    let members: Vec<Arc<dyn Device>> = vec![ee.clone(), m1.clone()];
    let a = md_raid1(&rt, "md1", [7; 16], &members, None);
    let bs = 512;

    // The first write marks the superblocks dirty before it is issued.
    let got = run_batch(&rt, 0, &a, vec![Req::write(1, 0, pattern(1, 8 * bs), bs)]);
    assert_eq!(got[0].status, IoStatus::Success);
    for d in [&m0, &m1] {
        let sb = superblock(&rt, d);
        assert!(
            !sb.is_clean(),
            "{}: not marked dirty before the write",
            d.name()
        );
    }
    let (_, data) = dev_io(&rt, 0, &m1, DevOp::Read, DATA_OFFSET, 8, None);
    assert!(data == pattern(1, 8 * bs), "data not at the data offset");

    // Member 0 fails a write: the write succeeds only after the survivor's
    // superblock records it faulty.
    ee.inject_error(&InjectOpts::new(
        ErrorIoType::All,
        ErrorType::Failure,
        u32::MAX,
    ))
    .unwrap();
    let before = superblock(&rt, &m1).events;
    let got = run_batch(&rt, 1, &a, vec![Req::write(2, 8, pattern(2, 8 * bs), bs)]);
    assert_eq!(got[0].status, IoStatus::Success);
    let sb = superblock(&rt, &m1);
    assert!(sb.events > before, "failure not committed to the survivor");
    assert_eq!(sb.dev_roles[0], DevRole::Faulty);
    assert_eq!(a.state().members[0], MemberState::Faulty);

    // Stop: the metadata path marks the survivor clean.
    a.stop(DEADLINE).unwrap();
    let sb = superblock(&rt, &m1);
    assert!(
        sb.is_clean(),
        "not marked clean on stop: events {} resync {:#x} state {:?}",
        sb.events,
        sb.resync_offset,
        a.state()
    );
    assert!(rt.shutdown(DEADLINE).drained);
}

/// A member that fails and comes back (`Array::add_member` with its old
/// superblock) is rebuilt from the write-intent bitmap: only the chunks
/// written while it was away (and those still dirty when it left) are
/// copied to it, and afterwards it holds what its mirror holds.
#[test]
fn readd_rebuilds_only_dirty_chunks() {
    use bdev_raid::meta::{NewMember, Recovery};
    use mdraid_runtime::dev::error::ErrorIoType;

    let _g = serial();
    let rt = start(&[0, 1], Mode::Interrupt);
    let m0: Arc<dyn Device> = MallocDevice::new("rb0", MEMBER_BLOCKS, 512, None).unwrap();
    let m1: Arc<dyn Device> = MallocDevice::new("rb1", MEMBER_BLOCKS, 512, None).unwrap();
    let ee = ErrorDevice::new(m0.clone(), None);
    let ee_dev: Arc<dyn Device> = ee.clone();
    let members: Vec<Arc<dyn Device>> = vec![ee_dev.clone(), m1.clone()];
    let data_blocks = MEMBER_BLOCKS - DATA_OFFSET;
    let a = md_raid1(&rt, "rb", [8; 16], &members, Some(64 << 10)); // 128-block chunks
    let bs = 512;
    let cb = 128; // blocks per chunk
    let w = |id: u64, chunk: u64| Req::write(id, chunk * cb + 3, pattern(id, 8 * bs), bs);

    // Chunks 0 and 5 written with both members in.
    let got = run_batch(&rt, 0, &a, vec![w(1, 0), w(2, 5)]);
    assert!(got.iter().all(|d| d.status == IoStatus::Success));
    // Member 0 fails on chunk 10; chunks 20 and 30 are written without it.
    ee.inject_error(&InjectOpts::new(
        ErrorIoType::All,
        ErrorType::Failure,
        u32::MAX,
    ))
    .unwrap();
    let got = run_batch(&rt, 0, &a, vec![w(3, 10)]);
    assert_eq!(got[0].status, IoStatus::Success);
    assert_eq!(a.state().members[0], MemberState::Faulty);
    let got = run_batch(&rt, 1, &a, vec![w(4, 20), w(5, 30)]);
    assert!(got.iter().all(|d| d.status == IoStatus::Success));
    let old = superblock(&rt, &m0);
    ee.inject_error(&InjectOpts::new(ErrorIoType::Clear, ErrorType::Failure, 0))
        .unwrap();

    let written = |a: &Arc<Array>| -> u64 {
        a.stats()
            .unwrap()
            .iter()
            .map(|(_, m)| m[0].written_blocks)
            .sum()
    };
    let before = written(&a);
    // No user writes from here: the array is marked clean after safe mode's
    // idle time, and a rebuild (md's recovery) does not mark it dirty again.
    let t0 = std::time::Instant::now();
    while a.state().writable {
        assert!(
            t0.elapsed() < DEADLINE,
            "never marked clean: {:?}",
            a.state()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Capped at 1 MiB/s: 5 chunks of 64 KiB cannot take less than 0.25 s
    // (the cap is checked before each window after the first).
    a.set_process_options(mdraid_runtime::ProcessOptions {
        window_kb: 64,
        max_mb_per_sec: 1,
    });
    let kind = a
        .add_member(
            0,
            ee_dev.clone(),
            NewMember {
                device_uuid: old.device_uuid,
                sectors: MEMBER_BLOCKS,
                old_sb: Some(old),
                write_mostly: false,
            },
        )
        .unwrap();
    assert_eq!(kind, Recovery::Bitmap);
    let t0 = std::time::Instant::now();
    while a.state().members[0] != MemberState::InSync {
        assert!(
            t0.elapsed() < DEADLINE,
            "rebuild did not end: {:?}",
            a.state()
        );
        assert!(!a.state().writable, "the rebuild marked the array dirty");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(
        superblock(&rt, &m1).resync_offset,
        u64::MAX,
        "clean on disk"
    );
    // Chunks 0, 5 (still dirty: the daemon never ran), 10, 20, 30.
    assert_eq!(written(&a) - before, 5 * cb, "only the dirty chunks");
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(240),
        "the bandwidth cap was not applied: {:?}",
        t0.elapsed()
    );
    a.set_process_options(mdraid_runtime::ProcessOptions::default());
    let sb = superblock(&rt, &m0);
    assert_eq!(sb.dev_roles[sb.dev_number as usize], DevRole::Active(0));
    // Both copies agree over the whole data area.
    let (_, d0) = dev_io(&rt, 0, &m0, DevOp::Read, DATA_OFFSET, data_blocks, None);
    let (_, d1) = dev_io(&rt, 0, &m1, DevOp::Read, DATA_OFFSET, data_blocks, None);
    assert!(d0 == d1, "copies differ after the rebuild");

    // md's check counts a damaged block of the second copy; repair rewrites
    // it from the first; a second check finds nothing.
    let (_, mut blk) = dev_io(&rt, 0, &m1, DevOp::Read, DATA_OFFSET + 700, 1, None);
    blk[9] ^= 0xff;
    dev_io(&rt, 0, &m1, DevOp::Write, DATA_OFFSET + 700, 1, Some(blk));
    let pass = |op| {
        a.sync_action(Some(op), false).unwrap();
        let t0 = std::time::Instant::now();
        while a.sync_progress().is_some() {
            assert!(t0.elapsed() < DEADLINE, "{op:?} did not end");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        a.mismatch_cnt().unwrap()
    };
    use bdev_raid::channel::IoType;
    assert_eq!(pass(IoType::Check), 1, "one 512-byte block damaged");
    assert_eq!(pass(IoType::Repair), 1);
    assert_eq!(pass(IoType::Check), 0, "repaired");
    let (_, d1) = dev_io(&rt, 0, &m1, DevOp::Read, DATA_OFFSET, data_blocks, None);
    assert!(d0 == d1, "repair did not restore the second copy");
    a.stop(DEADLINE).unwrap();
    assert!(rt.shutdown(DEADLINE).drained);
}
