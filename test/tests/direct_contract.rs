//! The direct path's failure contract, driven by hand.
//!
//! A direct write whose member I/O failed has left the copies of its range
//! different (one has the new data, one does not). The parent must be back
//! in the channel (for the redo) before the direct I/O leaves the writes
//! in flight (and its bitmap chunks): else the channel reports itself idle
//! and the metadata path may mark the array clean (or clear the bits) with
//! copies that differ and nothing left to resync them after a crash. When
//! the channel's parent slots were all taken, the redo used to be refused
//! (Busy) and wait in the host's retry queue meanwhile; a direct I/O now
//! keeps a parent slot for it.

use std::sync::Arc;

use bdev_raid::channel::{Action, Busy, Channel, ChannelConfig, IoType, MetaRequest, ParentIo};
use bdev_raid::layout::{Geometry, GeometryParams, Level};
use bdev_raid::state::{ArrayState, Shared};

fn raid1() -> Channel<Vec<u8>> {
    let geom = Arc::new(
        Geometry::new(&GeometryParams {
            level: Level::Raid1,
            layout: None,
            strip_size_kb: 64,
            block_size: 512,
            member_blocks: vec![1024, 1024],
        })
        .unwrap(),
    );
    let state = Arc::new(ArrayState {
        seq: 1,
        ..ArrayState::new_writable(2)
    });
    Channel::new(
        geom,
        state,
        Arc::new(Shared::new(1)),
        0,
        ChannelConfig {
            max_parents: 1,
            max_children: 4,
            stripe_ctxs: 1,
            max_row_bytes: 4096,
            behind_bufs: 1,
        },
        |len| vec![0u8; len],
    )
}

fn writes_idle(ch: &mut Channel<Vec<u8>>) -> bool {
    let mut idle = false;
    while let Some(a) = ch.poll_action() {
        idle |= matches!(a, Action::Meta(MetaRequest::WritesIdle { .. }));
    }
    idle
}

/// A failed direct write when every other parent slot is taken: the redo
/// goes in (in the slot the direct I/O kept), and the channel does not
/// report its writes idle meanwhile.
#[test]
fn failed_direct_write_with_a_full_channel_keeps_channel_dirty() {
    let mut ch = raid1();
    // A direct write takes the one parent slot for itself...
    let d = ch.direct(IoType::Write, 0, 8).expect("direct write");
    assert_eq!(d.targets().len(), 2);
    // ... so a read finds the channel full.
    let read = ParentIo {
        tag: 1,
        op: IoType::Read,
        lba: 512,
        blocks: 8,
        fua: false,
        buf: Some(vec![0; 8 * 512]),
    };
    assert!(matches!(ch.submit(read), Err(Busy(_))), "the slot was free");
    let _ = writes_idle(&mut ch);
    // The metadata path starts marking the array clean (safe mode).
    let s = ArrayState {
        seq: 2,
        writable: false,
        ..(**ch.state()).clone()
    };
    ch.apply_state(Arc::new(s));
    assert!(!writes_idle(&mut ch), "a direct write is in flight");
    // Member 1's write failed (member 0's landed): the parent is redone.
    let redo = ParentIo {
        tag: 2,
        op: IoType::Write,
        lba: 0,
        blocks: 8,
        fua: false,
        buf: Some(vec![7; 8 * 512]),
    };
    ch.direct_redo(&d, 0b10, redo);
    assert!(
        !writes_idle(&mut ch),
        "the channel reported its writes idle while a failed direct write's \
         copies differ and its redo was not in"
    );
    assert_eq!(ch.parents_in_flight(), 1, "the redo is in the channel");
}
