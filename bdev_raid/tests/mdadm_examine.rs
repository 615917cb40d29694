//! Format oracle: Debian's `mdadm --examine` and `blkid -p` read the
//! superblocks the metadata path writes, field by field.
//!
//! Needs `mdadm` and `blkid` (scripts/install-deps.sh installs them). When
//! missing the test says it was skipped, unless MDRAID_REQUIRE_TOOLS=1 (as
//! scripts/test.sh sets), when it fails.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bdev_raid::assemble::md_uuid;
use bdev_raid::channel::MetaRequest;
use bdev_raid::layout::{Geometry, GeometryParams, Level};
use bdev_raid::meta::{create_superblocks, CreateParams, Meta, MetaAction, MetaConfig};
use bdev_raid::ondisk::{MemberLayout, SB_OFFSET_BYTES};
use bdev_raid::state::{ArrayState, Shared};

fn tool(name: &str) -> Option<PathBuf> {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Some(p);
        }
    }
    None
}

fn tools() -> Option<(PathBuf, PathBuf)> {
    match (tool("mdadm"), tool("blkid")) {
        (Some(m), Some(b)) => Some((m, b)),
        _ if std::env::var("MDRAID_REQUIRE_TOOLS").as_deref() == Ok("1") => {
            panic!("mdadm or blkid missing and MDRAID_REQUIRE_TOOLS=1: run scripts/install-deps.sh")
        }
        _ => {
            eprintln!(
                "SKIPPED: mdadm or blkid not installed (scripts/install-deps.sh installs them)"
            );
            None
        }
    }
}

const MEMBER_SECTORS: u64 = 64 * 1024 * 2; // 64 MiB

struct Array {
    dir: PathBuf,
    files: Vec<PathBuf>,
    meta: Meta,
    uuid: [u8; 16],
    /// Members whose superblock writes fail (a member that died).
    dead: u64,
}

impl Array {
    fn new(tag: &str, level: Level, layout: Option<u32>, n: usize) -> Array {
        let dir = std::env::temp_dir().join(format!("mdraid-examine-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let chunk_kb = 64;
        let ml = MemberLayout::new(MEMBER_SECTORS, chunk_kb * 2, None).unwrap();
        let geom = Arc::new(
            Geometry::new(&GeometryParams {
                level,
                layout,
                strip_size_kb: chunk_kb,
                block_size: 512,
                member_blocks: vec![ml.data_size; n],
            })
            .unwrap(),
        );
        let uuid: [u8; 16] =
            std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ level.md_level() as u8);
        let mut sbs = create_superblocks(
            &geom,
            &CreateParams {
                set_uuid: uuid,
                name: tag,
                device_uuids: (0..n).map(|m| [0x40 + m as u8; 16]).collect(),
                member_sectors: vec![MEMBER_SECTORS; n],
                data_offset: ml.data_offset,
                now_secs: 1_700_000_000,
                bitmap: false,
            },
        );
        for sb in &mut sbs {
            ml.apply(sb);
        }
        let files: Vec<PathBuf> = (0..n).map(|m| dir.join(format!("m{m}.img"))).collect();
        for (f, sb) in files.iter().zip(&sbs) {
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(f)
                .unwrap();
            file.set_len(MEMBER_SECTORS * 512).unwrap();
            file.write_all_at(&sb.encode(), SB_OFFSET_BYTES).unwrap();
        }
        let mut meta = Meta::new(
            geom,
            Arc::new(Shared::new(1)),
            Arc::new(ArrayState::new_in_sync(n)),
            sbs.into_iter().map(Some).collect(),
            None,
            MetaConfig::default(),
            0,
        );
        meta.set_wall_clock(1_700_000_100);
        Array {
            dir,
            files,
            meta,
            uuid,
            dead: 0,
        }
    }

    /// Carry out the metadata path's actions until it has none.
    fn run(&mut self) -> Option<Arc<ArrayState>> {
        let mut last = None;
        while let Some(a) = self.meta.poll_action() {
            match a {
                MetaAction::WriteSb {
                    member,
                    token,
                    offset,
                    data,
                } => {
                    let ok = self.dead & 1 << member == 0;
                    if ok {
                        let f = OpenOptions::new()
                            .write(true)
                            .open(&self.files[member as usize])
                            .unwrap();
                        f.write_all_at(&data, offset).unwrap();
                    }
                    self.meta.sb_write_done(token, ok);
                }
                MetaAction::Broadcast(s) => last = Some(s),
            }
        }
        last
    }

    /// Mark dirty, fail `failed`, shut down cleanly.
    fn exercise(&mut self, failed: Option<u16>) {
        self.meta.request(MetaRequest::MarkDirty { channel: 0 });
        assert!(self.run().unwrap().writable);
        if let Some(m) = failed {
            self.dead |= 1 << m;
            self.meta.request(MetaRequest::MemberFailed {
                member: m,
                device: 0,
            });
            self.run();
        }
        self.meta.shutdown();
        let s = self.run().unwrap();
        assert!(!s.writable);
        self.meta.request(MetaRequest::WritesIdle {
            channel: 0,
            seq: s.seq,
        });
        self.run();
        assert!(self.meta.is_clean());
    }
}

impl Drop for Array {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn examine(mdadm: &Path, f: &Path) -> HashMap<String, String> {
    let out = Command::new(mdadm)
        .arg("--examine")
        .arg(f)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "mdadm --examine {f:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter_map(|l| l.split_once(" : "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn check(
    tag: &str,
    level: Level,
    layout: Option<u32>,
    n: usize,
    fail: Option<u16>,
    want_layout: Option<&str>,
) {
    let Some((mdadm, blkid)) = tools() else {
        return;
    };
    let mut a = Array::new(tag, level, layout, n);
    a.exercise(fail);
    let st = a.meta.state().clone();
    let state_str: String = (0..n)
        .map(|m| if st.members[m].in_service() { 'A' } else { '.' })
        .collect();
    for m in 0..n {
        if fail == Some(m as u16) {
            continue;
        }
        let f = &a.files[m];
        let e = examine(&mdadm, f);
        let get = |k: &str| {
            e.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("{tag} m{m}: no {k:?} in {e:?}"))
        };
        assert_eq!(get("Magic"), "a92b4efc", "{tag}");
        assert_eq!(get("Version"), "1.2", "{tag}");
        assert_eq!(get("Raid Level"), level.name(), "{tag}");
        assert_eq!(get("Raid Devices"), n.to_string(), "{tag}");
        assert_eq!(get("Array UUID"), md_uuid(&a.uuid), "{tag}");
        assert_eq!(get("Events"), st.events.to_string(), "{tag}");
        assert_eq!(get("Device Role"), format!("Active device {m}"), "{tag}");
        assert_eq!(
            get("Array State"),
            format!("{state_str} ('A' == active, '.' == missing, 'R' == replacing)"),
            "{tag}"
        );
        assert!(
            get("Checksum").ends_with("- correct"),
            "{tag}: {}",
            get("Checksum")
        );
        assert_eq!(get("State"), "clean", "{tag}");
        assert!(
            get("Update Time").contains("2023"),
            "{tag}: {}",
            get("Update Time")
        );
        if level != Level::Raid1 {
            assert_eq!(get("Chunk Size"), "64K", "{tag}");
        }
        if let Some(l) = want_layout {
            assert_eq!(get("Layout"), l, "{tag}");
        }
        let out = Command::new(&blkid).arg("-p").arg(f).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("TYPE=\"linux_raid_member\""),
            "{tag}: blkid says {text}"
        );
        let hex: String = a.uuid.iter().map(|b| format!("{b:02x}")).collect();
        let dashed = format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        );
        assert!(
            text.contains(&format!("UUID=\"{dashed}\"")),
            "{tag}: blkid says {text}"
        );
    }
}

#[test]
fn raid1_members_examine() {
    check("raid1", Level::Raid1, None, 3, Some(2), None);
}

#[test]
fn raid5_members_examine() {
    check(
        "raid5",
        Level::Raid5,
        None,
        4,
        Some(1),
        Some("left-symmetric"),
    );
}

#[test]
fn raid6_members_examine() {
    check(
        "raid6",
        Level::Raid6,
        None,
        5,
        Some(0),
        Some("left-symmetric"),
    );
}

#[test]
fn raid10_members_examine() {
    check("raid10", Level::Raid10, None, 4, Some(3), Some("near=2"));
}

#[test]
fn healthy_raid5_examine() {
    check(
        "raid5ok",
        Level::Raid5,
        None,
        3,
        None,
        Some("left-symmetric"),
    );
}
