//! Value types shared by params and results: checked names, UUIDs, RAID
//! levels and layouts, the bitmap setting. Each one refuses bad input while
//! it is deserialised, so the error carries the exact field path.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

// ---------------------------------------------------------------- names

/// Longest bdev name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// A bdev name: 1..=255 bytes, no whitespace or control characters (a name
/// with a space could not be given in the space-separated `base_bdevs`
/// form that `rpc.py -b "m0 m1"` users type).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BdevName(String);

impl BdevName {
    pub fn new(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        check_name(&s)?;
        Ok(BdevName(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_NAME_LEN {
        return Err(format!(
            "name is {} bytes long; at most {MAX_NAME_LEN} allowed",
            s.len()
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "name `{}` contains {c:?}; whitespace and control characters are not allowed",
            s.escape_debug()
        ));
    }
    Ok(())
}

impl fmt::Display for BdevName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for BdevName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for BdevName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for BdevName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl Serialize for BdevName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for BdevName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = BdevName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a bdev name (string)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BdevName, E> {
                BdevName::new(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A list of bdev names: a JSON array of names, or (as an extension of
/// SPDK's decoder, matching what `rpc.py -b "m0 m1"` users type) one string
/// of names separated by whitespace. Serialises as an array.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameList(pub Vec<BdevName>);

impl NameList {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &BdevName> {
        self.0.iter()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|n| n.as_str() == name)
    }

    /// Index of the first name that repeats an earlier one.
    pub fn first_duplicate(&self) -> Option<usize> {
        let mut seen = std::collections::HashSet::new();
        self.0.iter().position(|n| !seen.insert(n.as_str()))
    }

    pub fn from_names<I, S>(names: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        names
            .into_iter()
            .map(BdevName::new)
            .collect::<Result<Vec<_>, _>>()
            .map(NameList)
    }
}

impl Serialize for NameList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for n in &self.0 {
            seq.serialize_element(n)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for NameList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NameList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of bdev names or a whitespace-separated string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NameList, E> {
                // Tokens cannot hold whitespace; length is still checked.
                NameList::from_names(v.split_whitespace()).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NameList, A::Error> {
                let mut v = Vec::new();
                while let Some(n) = seq.next_element::<BdevName>()? {
                    v.push(n);
                }
                Ok(NameList(v))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------- uuid

/// A UUID in the canonical 8-4-4-4-12 hex form (what `spdk_uuid_parse`
/// accepts); printed lowercase like `spdk_uuid_fmt_lower`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    pub const NIL: Uuid = Uuid([0; 16]);

    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl FromStr for Uuid {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{}` is not a UUID (expected the form 01234567-89ab-cdef-0123-456789abcdef, or md's 01234567:89abcdef:01234567:89abcdef)",
                s.escape_debug()
            )
        };
        let b = s.as_bytes();
        // RFC 4122's form, or md's (`mdadm --examine`, `mdraid examine`):
        // the same bytes in the same order.
        let (sep, at): (u8, &[usize]) = match b.len() {
            36 => (b'-', &[8, 13, 18, 23]),
            35 => (b':', &[8, 17, 26]),
            _ => return Err(bad()),
        };
        let mut out = [0u8; 16];
        let mut nib = 0usize;
        for (i, &c) in b.iter().enumerate() {
            if at.contains(&i) {
                if c != sep {
                    return Err(bad());
                }
                continue;
            }
            let v = (c as char).to_digit(16).ok_or_else(bad)? as u8;
            out[nib / 2] |= if nib.is_multiple_of(2) { v << 4 } else { v };
            nib += 1;
        }
        Ok(Uuid(out))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl Serialize for Uuid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Uuid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Uuid;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a UUID string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Uuid, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

// ---------------------------------------------------------------- string enums

/// Defines a string enum whose deserialiser names the accepted values.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $canon:literal $(| $alias:literal)* ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $( $(#[$vmeta])* $variant ),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The canonical name, as serialised.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $canon),* }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($canon $(| $alias)* => Some($name::$variant),)*
                    _ => None,
                }
            }

            fn expected() -> String {
                let names: Vec<String> = Self::ALL.iter().map(|v| format!("`{}`", v.as_str())).collect();
                names.join(", ")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        write!(f, "{} (one of {})", $what, $name::expected())
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::parse(v).ok_or_else(|| {
                            E::custom(format!(
                                "unknown {} `{}`; expected one of {}",
                                $what, v.escape_debug(), $name::expected()
                            ))
                        })
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

string_enum! {
    /// `bdev_mdraid_get_bdevs` category (SPDK's `bdev_raid_state`).
    pub enum RaidCategory ("category") {
        All = "all",
        Online = "online",
        Configuring = "configuring",
        Offline = "offline",
    }
}

// The enum comes from a macro that does not derive Default.
#[allow(clippy::derivable_impls)]
impl Default for RaidCategory {
    fn default() -> Self {
        RaidCategory::All
    }
}

string_enum! {
    /// State of an array as `bdev_mdraid_get_bdevs` reports it (SPDK's words).
    pub enum RaidState ("state") {
        /// Registered and serving I/O.
        Online = "online",
        /// Waiting for members.
        Configuring = "configuring",
        /// Failed or being deleted.
        Offline = "offline",
    }
}

string_enum! {
    /// md's `sync_action` words.
    pub enum SyncAction ("sync action") {
        /// Read all copies/parity and count mismatches (md `check`).
        Check = "check",
        /// Like check, rewriting mismatches (md `repair`).
        Repair = "repair",
        /// Make all copies/parity consistent (md `resync`).
        Resync = "resync",
        /// Stop the running action (md `idle`).
        Idle = "idle",
        /// Stop it and start none until `idle` (md `frozen`).
        Frozen = "frozen",
    }
}

string_enum! {
    /// `bdev_error_inject_error` io_type (SPDK's `bdev_error_inject_io_type`).
    pub enum ErrorIoType ("io_type") {
        Clear = "clear",
        Read = "read",
        Write = "write",
        Unmap = "unmap",
        Flush = "flush",
        All = "all",
    }
}

string_enum! {
    /// `bdev_error_inject_error` error_type (SPDK's `bdev_error_inject_error_type`).
    pub enum ErrorType ("error_type") {
        Failure = "failure",
        Pending = "pending",
        CorruptData = "corrupt_data",
        Nomem = "nomem",
        NvmeFailure = "nvme_failure",
    }
}

string_enum! {
    /// `spdk_kill_instance` sig_name (SPDK's `kill_signal`).
    pub enum KillSignal ("sig_name") {
        Sigint = "SIGINT",
        Sigterm = "SIGTERM",
        Sigquit = "SIGQUIT",
        Sighup = "SIGHUP",
        Sigkill = "SIGKILL",
        Sigusr1 = "SIGUSR1",
    }
}

// ---------------------------------------------------------------- raid level

/// RAID level. Accepts md's and SPDK's spellings; serialises canonically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RaidLevel {
    /// md linear (SPDK calls it `concat`).
    Linear,
    Raid0,
    Raid1,
    Raid4,
    Raid5,
    Raid6,
    Raid10,
}

impl RaidLevel {
    pub const ALL: &'static [RaidLevel] = &[
        RaidLevel::Linear,
        RaidLevel::Raid0,
        RaidLevel::Raid1,
        RaidLevel::Raid4,
        RaidLevel::Raid5,
        RaidLevel::Raid6,
        RaidLevel::Raid10,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RaidLevel::Linear => "linear",
            RaidLevel::Raid0 => "raid0",
            RaidLevel::Raid1 => "raid1",
            RaidLevel::Raid4 => "raid4",
            RaidLevel::Raid5 => "raid5",
            RaidLevel::Raid6 => "raid6",
            RaidLevel::Raid10 => "raid10",
        }
    }

    /// md's level number (`mdp_superblock_1.level`).
    pub fn md_level(self) -> i32 {
        match self {
            RaidLevel::Linear => -1,
            RaidLevel::Raid0 => 0,
            RaidLevel::Raid1 => 1,
            RaidLevel::Raid4 => 4,
            RaidLevel::Raid5 => 5,
            RaidLevel::Raid6 => 6,
            RaidLevel::Raid10 => 10,
        }
    }

    /// Parse `raid5`, `5`, `linear`, `concat`, `mirror`, `stripe` (any case).
    pub fn parse(s: &str) -> Option<RaidLevel> {
        Some(match s.to_ascii_lowercase().as_str() {
            "linear" | "concat" | "-1" => RaidLevel::Linear,
            "raid0" | "0" | "stripe" => RaidLevel::Raid0,
            "raid1" | "1" | "mirror" => RaidLevel::Raid1,
            "raid4" | "4" => RaidLevel::Raid4,
            "raid5" | "5" => RaidLevel::Raid5,
            "raid6" | "6" => RaidLevel::Raid6,
            "raid10" | "10" => RaidLevel::Raid10,
            _ => return None,
        })
    }
}

impl fmt::Display for RaidLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RaidLevel {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RaidLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RaidLevel;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a raid level string (linear, raid0, raid1, raid4, raid5, raid6, raid10)",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RaidLevel, E> {
                if let Some(l) = RaidLevel::parse(v) {
                    return Ok(l);
                }
                let hint = if v.eq_ignore_ascii_case("raid5f") || v.eq_ignore_ascii_case("5f") {
                    " (raid5f is SPDK's own raid module; mdraid offers md's raid5)"
                } else {
                    ""
                };
                Err(E::custom(format!(
                    "unknown raid level `{}`; expected one of linear, raid0, raid1, raid4, raid5, raid6, raid10{hint}",
                    v.escape_debug()
                )))
            }
        }
        d.deserialize_str(V)
    }
}

// ---------------------------------------------------------------- layout

/// An md layout: a name as mdadm writes it, or md's number.
///
/// Names: raid4/5/6 `left-asymmetric` (`la`, 0), `right-asymmetric` (`ra`, 1),
/// `left-symmetric` (`ls`, 2), `right-symmetric` (`rs`, 3), `parity-first`
/// (4), `parity-last` (5); raid10 `nK`, `fK`, `oK` (K copies, 1..=255).
/// Numbers are passed to the engine as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    LeftAsymmetric,
    RightAsymmetric,
    LeftSymmetric,
    RightSymmetric,
    ParityFirst,
    ParityLast,
    Near(u8),
    Far(u8),
    Offset(u8),
    /// md's layout number as given.
    Number(u32),
}

impl Layout {
    /// md's number for this layout.
    pub fn md_number(self) -> u32 {
        match self {
            Layout::LeftAsymmetric => 0,
            Layout::RightAsymmetric => 1,
            Layout::LeftSymmetric => 2,
            Layout::RightSymmetric => 3,
            Layout::ParityFirst => 4,
            Layout::ParityLast => 5,
            Layout::Near(k) => k as u32 | 1 << 8,
            Layout::Far(k) => 1 | (k as u32) << 8,
            Layout::Offset(k) => 1 | (k as u32) << 8 | 1 << 16,
            Layout::Number(n) => n,
        }
    }

    /// Whether a named layout belongs to `level` (numbers always pass here;
    /// the engine judges them).
    pub fn fits(self, level: RaidLevel) -> bool {
        match self {
            Layout::Number(_) => true,
            Layout::Near(_) | Layout::Far(_) | Layout::Offset(_) => level == RaidLevel::Raid10,
            _ => matches!(
                level,
                RaidLevel::Raid4 | RaidLevel::Raid5 | RaidLevel::Raid6
            ),
        }
    }

    pub fn parse(s: &str) -> Result<Layout, String> {
        let l = s.to_ascii_lowercase();
        Ok(match l.as_str() {
            "left-asymmetric" | "la" => Layout::LeftAsymmetric,
            "right-asymmetric" | "ra" => Layout::RightAsymmetric,
            "left-symmetric" | "ls" => Layout::LeftSymmetric,
            "right-symmetric" | "rs" => Layout::RightSymmetric,
            "parity-first" => Layout::ParityFirst,
            "parity-last" => Layout::ParityLast,
            _ => {
                if let Ok(n) = l.parse::<u32>() {
                    return Ok(Layout::Number(n));
                }
                let bad = || {
                    format!(
                        "unknown layout `{}`; expected left-asymmetric, right-asymmetric, left-symmetric, right-symmetric, parity-first, parity-last, nK, fK, oK (K copies) or md's layout number",
                        s.escape_debug()
                    )
                };
                let (kind, k) = l.split_at_checked(1).ok_or_else(bad)?;
                if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let k: u8 = k
                    .parse()
                    .map_err(|_| format!("layout `{}`: at most 255 copies", s.escape_debug()))?;
                if k == 0 {
                    return Err(format!(
                        "layout `{}`: the number of copies must be at least 1",
                        s.escape_debug()
                    ));
                }
                match kind {
                    "n" => Layout::Near(k),
                    "f" => Layout::Far(k),
                    "o" => Layout::Offset(k),
                    _ => return Err(bad()),
                }
            }
        })
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::LeftAsymmetric => f.write_str("left-asymmetric"),
            Layout::RightAsymmetric => f.write_str("right-asymmetric"),
            Layout::LeftSymmetric => f.write_str("left-symmetric"),
            Layout::RightSymmetric => f.write_str("right-symmetric"),
            Layout::ParityFirst => f.write_str("parity-first"),
            Layout::ParityLast => f.write_str("parity-last"),
            Layout::Near(k) => write!(f, "n{k}"),
            Layout::Far(k) => write!(f, "f{k}"),
            Layout::Offset(k) => write!(f, "o{k}"),
            Layout::Number(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for Layout {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Layout::Number(n) => s.serialize_u32(*n),
            other => s.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for Layout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Layout;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a layout name (e.g. \"left-symmetric\", \"n2\") or md's layout number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Layout, E> {
                Layout::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Layout, E> {
                u32::try_from(v)
                    .map(Layout::Number)
                    .map_err(|_| E::custom(format!("layout number {v} is out of range (u32)")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Layout, E> {
                u32::try_from(v)
                    .map(Layout::Number)
                    .map_err(|_| E::custom(format!("layout number {v} is out of range (u32)")))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------- bitmap

/// Write-intent bitmap options (`bitmap: {chunk_kb, daemon_sleep_ms}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitmapOptions {
    /// Bytes of data one bit covers, in KiB (mdadm `--bitmap-chunk`).
    /// `None`: the host's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_kb: Option<u32>,
    /// How long a chunk stays idle before its bit is cleared, in ms
    /// (md's `daemon_sleep`). `None`: the host's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_sleep_ms: Option<u32>,
}

/// The `bitmap` param: absent (host default), off (`false` / `null`), or
/// on (`true` for default options, or an options object).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BitmapSetting {
    #[default]
    Default,
    Off,
    On(BitmapOptions),
}

impl BitmapSetting {
    pub fn is_default(&self) -> bool {
        matches!(self, BitmapSetting::Default)
    }
}

impl Serialize for BitmapSetting {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            BitmapSetting::Default => s.serialize_none(),
            BitmapSetting::Off => s.serialize_bool(false),
            BitmapSetting::On(o) => o.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for BitmapSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BitmapSetting;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a bitmap object {chunk_kb, daemon_sleep_ms}, true, false or null")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<BitmapSetting, E> {
                Ok(if v {
                    BitmapSetting::On(BitmapOptions::default())
                } else {
                    BitmapSetting::Off
                })
            }
            fn visit_unit<E: de::Error>(self) -> Result<BitmapSetting, E> {
                Ok(BitmapSetting::Off)
            }
            fn visit_none<E: de::Error>(self) -> Result<BitmapSetting, E> {
                Ok(BitmapSetting::Off)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<BitmapSetting, A::Error> {
                BitmapOptions::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(BitmapSetting::On)
            }
        }
        d.deserialize_any(V)
    }
}
