//! `examine`: what a member's superblock says, as `mdadm --examine` prints
//! it, and as ordered key/value pairs the CLI also renders as JSON.

use crate::assemble::md_uuid;
use crate::layout::{raid10_layout, raid5_layout, Level};
use crate::ondisk::{DevRole, MdTime, SbError, Superblock, SB_BLOCK_BYTES, SB_CSUM_OFFSET};

/// One examined member: fields in mdadm's order. Keys are mdadm's labels;
/// [`Examined::json_key`] gives the JSON name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Examined {
    pub fields: Vec<(&'static str, String)>,
}

impl Examined {
    /// mdadm-style text, labels right-aligned on the colon.
    pub fn text(&self, path: &str) -> String {
        let mut s = format!("{path}:\n");
        for (k, v) in &self.fields {
            s.push_str(&format!("{k:>15} : {v}\n"));
        }
        s
    }

    /// `"Array UUID"` → `"array_uuid"`.
    pub fn json_key(label: &str) -> String {
        label.to_ascii_lowercase().replace(' ', "_")
    }

    pub fn get(&self, label: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| *k == label)
            .map(|(_, v)| v.as_str())
    }
}

/// md's name of a layout, as mdadm prints it.
pub fn layout_name(level: i32, layout: u32) -> String {
    match Level::from_md(level) {
        Some(Level::Raid5 | Level::Raid4 | Level::Raid6) => match layout {
            raid5_layout::LEFT_ASYMMETRIC => "left-asymmetric".into(),
            raid5_layout::RIGHT_ASYMMETRIC => "right-asymmetric".into(),
            raid5_layout::LEFT_SYMMETRIC => "left-symmetric".into(),
            raid5_layout::RIGHT_SYMMETRIC => "right-symmetric".into(),
            raid5_layout::PARITY_0 => "parity-first".into(),
            raid5_layout::PARITY_N => "parity-last".into(),
            n => format!("unknown ({n})"),
        },
        Some(Level::Raid10) => {
            let (near, far, offset) = (layout & 0xff, (layout >> 8) & 0xff, layout & 0x10000 != 0);
            let mut parts = Vec::new();
            if near > 1 {
                parts.push(format!("near={near}"));
            }
            if far > 1 {
                parts.push(format!("{}={far}", if offset { "offset" } else { "far" }));
            }
            if parts.is_empty() {
                let _ = raid10_layout::NEAR2;
                format!("unknown ({layout:#x})")
            } else {
                parts.join(", ")
            }
        }
        _ => layout.to_string(),
    }
}

/// `Tue Nov 14 22:13:20 2023` (UTC), as mdadm prints times.
pub fn md_time(t: MdTime) -> String {
    let secs = t.secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const DAY: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        DAY[days.rem_euclid(7) as usize],
        MON[(m - 1) as usize],
        d,
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        y
    )
}

/// mdadm's `human_size`: nothing below ~5 MB, MiB/MB below 2 GiB, else
/// GiB/GB, rounded as mdadm rounds.
fn human(bytes: u64) -> String {
    let b = bytes as u128;
    if b < 5000 * 1024 {
        String::new()
    } else if b < 2 << 30 {
        let mib = (b * 200 / (1 << 20)).div_ceil(2);
        let mb = (b / (1_000_000 / 200)).div_ceil(2);
        format!(
            " ({}.{:02} MiB {}.{:02} MB)",
            mib / 100,
            mib % 100,
            mb / 100,
            mb % 100
        )
    } else {
        let gib = (b * 200 / (1 << 30)).div_ceil(2);
        let gb = (b / (1_000_000_000 / 200)).div_ceil(2);
        format!(
            " ({}.{:02} GiB {}.{:02} GB)",
            gib / 100,
            gib % 100,
            gb / 100,
            gb % 100
        )
    }
}

fn size(sectors: u64) -> String {
    format!("{sectors} sectors{}", human(sectors * 512))
}

/// Examine the superblock bytes of a member (`buf` = the device's bytes from
/// offset 4096) of `member_sectors` sectors.
/// A superblock whose only fault is its checksum is printed as mdadm
/// prints it, with `Checksum : <stored> - expected <computed>` (assembly
/// never uses it: [`Superblock::decode`] refuses it).
pub fn examine(buf: &[u8], member_sectors: u64) -> Result<Examined, SbError> {
    let buf = &buf[..buf.len().min(SB_BLOCK_BYTES)];
    match Superblock::decode(buf, member_sectors) {
        Ok(sb) => Ok(examine_sb(&sb)),
        Err(SbError::BadChecksum { stored, computed }) => {
            let mut fixed = buf.to_vec();
            fixed[SB_CSUM_OFFSET..SB_CSUM_OFFSET + 4].copy_from_slice(&computed.to_le_bytes());
            let sb = Superblock::decode(&fixed, member_sectors)?;
            let mut ex = examine_sb(&sb);
            for (k, v) in &mut ex.fields {
                if *k == "Checksum" {
                    *v = format!("{stored:x} - expected {computed:x}");
                }
            }
            Ok(ex)
        }
        Err(e) => Err(e),
    }
}

/// The fields of a decoded superblock.
pub fn examine_sb(sb: &Superblock) -> Examined {
    let mut f: Vec<(&'static str, String)> = Vec::new();
    let level = Level::from_md(sb.level);
    f.push(("Magic", "a92b4efc".into()));
    f.push(("Version", "1.2".into()));
    f.push(("Feature Map", format!("{:#x}", sb.feature_map)));
    f.push(("Array UUID", md_uuid(&sb.set_uuid)));
    f.push(("Name", sb.name()));
    f.push(("Creation Time", md_time(sb.ctime)));
    f.push((
        "Raid Level",
        level.map_or(sb.level.to_string(), |l| l.name().to_string()),
    ));
    f.push(("Raid Devices", sb.raid_disks.to_string()));
    f.push(("Avail Dev Size", size(sb.data_size)));
    let n = u64::from(sb.raid_disks);
    // mdadm prints the array size for levels above 0 only.
    let data_members = match level {
        Some(Level::Raid1) => Some(2),
        Some(Level::Raid4 | Level::Raid5) => Some(n.saturating_sub(1) * 2),
        Some(Level::Raid6) => Some((n.saturating_sub(2)) * 2),
        Some(Level::Raid10) => {
            let copies = u64::from((sb.layout & 0xff) * ((sb.layout >> 8) & 0xff)).max(1);
            Some(n * 2 / copies)
        }
        _ => None,
    };
    if let Some(half_kib) = data_members {
        // `size` sectors per member; half_kib = data members * 2 (KiB per 2 sectors).
        let kib = sb.size.saturating_mul(half_kib) / 4;
        f.push(("Array Size", format!("{kib} KiB{}", human(kib * 1024))));
    }
    f.push(("Data Offset", format!("{} sectors", sb.data_offset)));
    f.push(("Super Offset", format!("{} sectors", sb.super_offset)));
    if sb.feature_map & crate::ondisk::MD_FEATURE_RECOVERY_OFFSET != 0 {
        f.push(("Recovery Offset", format!("{} sectors", sb.recovery_offset)));
    }
    f.push((
        "State",
        if sb.is_clean() {
            "clean".into()
        } else {
            "active".into()
        },
    ));
    f.push(("Device UUID", md_uuid(&sb.device_uuid)));
    if sb.has_bitmap() {
        f.push((
            "Internal Bitmap",
            format!("{} sectors from superblock", sb.bitmap_offset),
        ));
    }
    if sb.write_mostly() {
        f.push(("Flags", "write-mostly".into()));
    }
    f.push(("Update Time", md_time(sb.utime)));
    if sb.bblog_size != 0 {
        f.push((
            "Bad Block Log",
            format!(
                "{} entries available at offset {} sectors",
                u32::from(sb.bblog_size) * 512 / 8,
                sb.bblog_offset
            ),
        ));
    }
    f.push(("Checksum", format!("{:x} - correct", sb.checksum())));
    f.push(("Events", sb.events.to_string()));
    // As mdadm's examine_super1: a layout for raid5/6/10 only, the chunk
    // for the striped levels, linear's "rounding".
    if matches!(level, Some(Level::Raid5 | Level::Raid6 | Level::Raid10)) {
        f.push(("Layout", layout_name(sb.level, sb.layout)));
    }
    match level {
        Some(Level::Raid0 | Level::Raid4 | Level::Raid5 | Level::Raid6 | Level::Raid10) => {
            f.push(("Chunk Size", format!("{}K", sb.chunksize / 2)));
        }
        Some(Level::Linear) => f.push(("Rounding", format!("{}K", sb.chunksize / 2))),
        _ => {}
    }
    f.push((
        "Device Role",
        match sb.role() {
            DevRole::Active(r) => format!("Active device {r}"),
            DevRole::Spare => "spare".into(),
            DevRole::Faulty => "faulty".into(),
            DevRole::Journal => "journal".into(),
        },
    ));
    f.push((
        "Array State",
        format!(
            "{} ('A' == active, '.' == missing, 'R' == replacing)",
            sb.array_state()
        ),
    ));
    Examined { fields: f }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_like_mdadm() {
        assert_eq!(
            md_time(MdTime::new(1_700_000_000, 0)),
            "Tue Nov 14 22:13:20 2023"
        );
        assert_eq!(md_time(MdTime::new(0, 0)), "Thu Jan  1 00:00:00 1970");
        assert_eq!(
            md_time(MdTime::new(951_782_400, 0)),
            "Tue Feb 29 00:00:00 2000"
        );
    }

    #[test]
    fn layouts_are_named_like_mdadm() {
        assert_eq!(layout_name(5, 2), "left-symmetric");
        assert_eq!(layout_name(6, 0), "left-asymmetric");
        assert_eq!(layout_name(10, 0x102), "near=2");
        assert_eq!(layout_name(10, 0x201), "far=2");
        assert_eq!(layout_name(10, 0x10201), "offset=2");
    }

    /// The lines mdadm's examine_super1 prints per level: no array size
    /// for raid0, no layout for raid4, linear's rounding for its chunk;
    /// `Flags` after the bitmap line.
    #[test]
    fn level_dependent_lines_are_mdadm_s() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
        let buf = std::fs::read(format!("{dir}raid1_m1_writemostly.sb")).unwrap();
        let base = Superblock::decode(&buf, 1 << 30).unwrap();
        let keys = |level: i32| {
            let mut sb = base.clone();
            sb.level = level;
            sb.chunksize = 128;
            sb.layout = 0;
            let e = examine_sb(&sb);
            e.fields.iter().map(|(k, _)| *k).collect::<Vec<_>>()
        };
        let has = |ks: &[&str], k: &str| ks.contains(&k);
        let r0 = keys(0);
        assert!(
            !has(&r0, "Array Size") && !has(&r0, "Layout") && has(&r0, "Chunk Size"),
            "{r0:?}"
        );
        let r4 = keys(4);
        assert!(
            has(&r4, "Array Size") && !has(&r4, "Layout") && has(&r4, "Chunk Size"),
            "{r4:?}"
        );
        let r5 = keys(5);
        assert!(
            has(&r5, "Array Size") && has(&r5, "Layout") && has(&r5, "Chunk Size"),
            "{r5:?}"
        );
        let lin = keys(-1);
        assert!(
            !has(&lin, "Array Size") && has(&lin, "Rounding") && !has(&lin, "Chunk Size"),
            "{lin:?}"
        );
        let r1 = keys(1);
        assert!(!has(&r1, "Chunk Size") && !has(&r1, "Layout"), "{r1:?}");
        let pos = |k: &str| r1.iter().position(|x| *x == k).unwrap();
        assert!(
            pos("Internal Bitmap") < pos("Flags") && pos("Flags") < pos("Update Time"),
            "{r1:?}"
        );
        // raid_disks 0 (a damaged superblock) prints, not panics.
        let mut sb = base.clone();
        sb.level = 5;
        sb.raid_disks = 0;
        sb.size = u64::MAX / 2;
        let _ = examine_sb(&sb);
    }

    #[test]
    fn examines_superblocks_as_mdadm_did() {
        // Every fixture with what Debian's mdadm printed for it.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
        let mut seen = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            let Some(stem) = name.strip_suffix(".examine.txt") else {
                continue;
            };
            let sbp = format!("{dir}{stem}.sb");
            if std::path::Path::new(&sbp).exists() {
                check_fixture(&sbp, &p);
                seen += 1;
            }
        }
        assert!(seen >= 5, "only {seen} fixtures");
    }

    fn check_fixture(sbp: &str, txt: &std::path::Path) {
        let sb = std::fs::read(sbp).unwrap();
        let text = std::fs::read_to_string(txt).unwrap();
        let theirs: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.split_once(" : "))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let sectors = theirs
            .iter()
            .find(|(k, _)| k == "Avail Dev Size")
            .and_then(|(_, v)| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap();
        let data_offset: u64 = theirs
            .iter()
            .find(|(k, _)| k == "Data Offset")
            .and_then(|(_, v)| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        let ours = examine(&sb, sectors + data_offset).unwrap();
        for key in [
            "Magic",
            "Version",
            "Feature Map",
            "Array UUID",
            "Name",
            "Creation Time",
            "Raid Level",
            "Raid Devices",
            "Avail Dev Size",
            "Array Size",
            "Data Offset",
            "Super Offset",
            "State",
            "Device UUID",
            "Update Time",
            "Bad Block Log",
            "Internal Bitmap",
            "Checksum",
            "Events",
            "Layout",
            "Chunk Size",
            "Device Role",
            "Array State",
        ] {
            let t = theirs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str());
            assert_eq!(ours.get(key), t, "{sbp}: {key}");
        }
    }
}
