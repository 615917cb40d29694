//! How `bdev_mdraid_create` brings an array up, decided from what the
//! members are (block size, size, the 4 KiB where md keeps its superblock).
//! Pure: no I/O, no SPDK, so it is tested on machines without SPDK.
//!
//! The planning itself is the embedded daemon's (`mdraid_rpc::plan`): a
//! new array on blank members (with a write-intent bitmap by default on
//! levels with redundancy), assembly when the members carry one array's md
//! superblocks, refusal of members that carry another array's (or a
//! damaged) superblock, no superblock when asked. Errors are the same
//! `-32602` texts naming the field.

use bdev_raid::layout::Geometry;
use bdev_raid::meta::{create_superblocks, CreateParams};
use bdev_raid::ondisk::{MemberLayout, Superblock};

pub use mdraid_rpc::plan::{
    check_add_block_size, field, plan_array, Plan, Probe, CREATE, DEFAULT_STRIP_KB,
};

/// The superblocks of a new array `Plan::Create` describes: one per member,
/// laid out as `layouts` say, recording an internal bitmap when `bitmap`.
#[allow(clippy::too_many_arguments)]
pub fn new_superblocks(
    geom: &Geometry,
    uuid: [u8; 16],
    name: &str,
    device_uuids: Vec<[u8; 16]>,
    layouts: &[MemberLayout],
    data_offset: u64,
    now_secs: u64,
    bitmap: bool,
) -> Vec<Superblock> {
    let mut sbs = create_superblocks(
        geom,
        &CreateParams {
            set_uuid: uuid,
            name,
            device_uuids,
            member_sectors: layouts.iter().map(|l| l.member_sectors).collect(),
            data_offset,
            now_secs,
            bitmap,
        },
    );
    for (sb, l) in sbs.iter_mut().zip(layouts) {
        l.apply(sb);
    }
    sbs
}

#[cfg(test)]
mod tests {
    use super::*;
    use mdraid_rpc::method::decode;
    use mdraid_rpc::params::BdevMdraidCreate;
    use serde_json::value::RawValue;

    fn params(json: &str) -> BdevMdraidCreate {
        let raw = RawValue::from_string(json.to_string()).unwrap();
        decode(CREATE, Some(&raw)).unwrap()
    }

    fn blank(n: usize) -> Vec<Probe> {
        (0..n)
            .map(|_| Probe {
                block_size: 512,
                num_blocks: 65536,
                sb: vec![0; 4096],
            })
            .collect()
    }

    /// A redundant array gets a bitmap by default (as in the daemon), and
    /// its superblocks record it; `bitmap: false` makes none.
    #[test]
    fn bitmap_is_on_by_default_and_recorded() {
        let p = params(r#"{"name":"r","raid_level":"raid1","base_bdevs":"a b"}"#);
        let Plan::Create {
            uuid,
            geom,
            data_offset,
            layouts,
            bitmap,
            ..
        } = plan_array(&p, &blank(2), || [5; 16]).unwrap()
        else {
            panic!("not a create")
        };
        assert!(bitmap.is_some(), "no default bitmap");
        let sbs = new_superblocks(
            &geom,
            uuid,
            "r",
            vec![[1; 16], [2; 16]],
            &layouts,
            data_offset,
            1,
            true,
        );
        assert!(sbs
            .iter()
            .all(|sb| sb.has_bitmap() && sb.bitmap_offset == 8));
        let p = params(r#"{"name":"r","raid_level":"raid1","base_bdevs":"a b","bitmap":false}"#);
        let Plan::Create { bitmap, .. } = plan_array(&p, &blank(2), || [5; 16]).unwrap() else {
            panic!("not a create")
        };
        assert!(bitmap.is_none());
    }
}
