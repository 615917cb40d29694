//! How `bdev_mdraid_create` brings an array up, decided from what the
//! members are (block size, size, the 4 KiB where md keeps its superblock).
//! Pure: no I/O, no SPDK, so it is tested on machines without SPDK.
//!
//! The planning itself is the embedded daemon's (`mdraid_rpc::plan`): a new array on blank members, assembly when the members
//! carry one array's md superblocks, refusal of members that carry another
//! array's (or a damaged) superblock, no superblock when asked. Errors are
//! the same `-32602` texts naming the field.

use bdev_raid::layout::Geometry;
use bdev_raid::meta::{create_superblocks, CreateParams};
use bdev_raid::ondisk::{MemberLayout, Superblock};
use mdraid_rpc::params::BdevMdraidCreate;
use mdraid_rpc::types::BitmapSetting;
use mdraid_rpc::RpcError;

pub use mdraid_rpc::plan::{field, plan_array, Plan, Probe, CREATE, DEFAULT_STRIP_KB};

/// What this host cannot do yet (the write-intent bitmap), refused before
/// any member is touched; the rest is `plan_array`'s.
pub fn check_supported(p: &BdevMdraidCreate) -> Result<(), RpcError> {
    if let BitmapSetting::On(_) = p.bitmap {
        return Err(field(
            "bitmap",
            "write-intent bitmaps are not implemented yet in the SPDK host; omit `bitmap` or pass false",
        ));
    }
    Ok(())
}

/// The superblocks of a new array `Plan::Create` describes: one per member,
/// laid out as `layouts` say.
pub fn new_superblocks(
    geom: &Geometry,
    uuid: [u8; 16],
    name: &str,
    device_uuids: Vec<[u8; 16]>,
    layouts: &[MemberLayout],
    data_offset: u64,
    now_secs: u64,
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
            bitmap: false,
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
    use serde_json::value::RawValue;

    fn params(json: &str) -> BdevMdraidCreate {
        let raw = RawValue::from_string(json.to_string()).unwrap();
        decode(CREATE, Some(&raw)).unwrap()
    }

    #[test]
    fn bitmap_is_refused_before_any_io() {
        let p = params(r#"{"name":"r","raid_level":"raid1","base_bdevs":"a b","bitmap":true}"#);
        let e = check_supported(&p).unwrap_err();
        assert!(e.message.contains("field `bitmap`"), "{}", e.message);
    }
}
