//! Config files in SPDK's format:
//!
//! ```json
//! {"subsystems": [
//!   {"subsystem": "bdev", "config": [
//!     {"method": "bdev_malloc_create", "params": {"name": "m0", "num_blocks": 65536, "block_size": 512}},
//!     {"method": "bdev_mdraid_create", "params": {"name": "r0", "raid_level": "raid1", "base_bdevs": ["m0", "m1"]}}
//!   ]},
//!   {"subsystem": "mdraid", "config": [
//!     {"method": "mdraid_nbd_export_add", "params": {"bdev_name": "r0"}}
//!   ]}
//! ]}
//! ```
//!
//! Loading follows SPDK's `lib/init/json_config.c`: comments (`//`, `/* */`)
//! are allowed; a missing `subsystems` key is an empty config; a subsystem
//! object has exactly `subsystem` and `config` (an array or null); an entry
//! has exactly `method` and optional `params` (an object); an entry may be
//! an array of entries (SPDK's batches), loaded in order.
//!
//! **Subsystems.** Only `bdev` and `mdraid` are served. Every other
//! subsystem (`accel`, `iobuf`, `sock`, `nvmf`, `nbd`, `vhost`...) is
//! skipped whole and reported in [`LoadedConfig::skipped`], so a file saved
//! by an SPDK app loads; SPDK does the same for subsystems it does not link.
//! In `bdev`, SPDK's tuning methods that have no meaning here
//! ([`SKIPPED_BDEV_METHODS`]) are skipped and reported too; any other
//! unknown method is an error (silently dropping, say, an SPDK
//! `bdev_raid_create` would lose an array).
//!
//! **Saving.** Bdev methods go in `bdev` (where SPDK's modules, and the
//! SPDK host's `bdev_mdraid_create`, write theirs), NBD server methods in
//! `mdraid`; an SPDK app loading the file skips `mdraid`.
//!
//! Every entry is decoded and validated before anything is applied, so a
//! bad file changes nothing; an error names the subsystem, the entry index,
//! the method and the field.

use crate::dispatch::{handle_call, Host};
use crate::error::RpcError;
use crate::method::{Call, Method, Subsystem};
use crate::results::SubsystemInfo;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::fmt;

/// Subsystems whose entries are loaded.
pub const SERVED_SUBSYSTEMS: &[&str] = &["bdev", "mdraid"];

/// SPDK `bdev`-subsystem methods skipped on load: global tuning of SPDK
/// modules (bdev_io pools, NVMe, iSCSI initiator, SPDK's raid) with no
/// counterpart here.
pub const SKIPPED_BDEV_METHODS: &[&str] = &[
    "bdev_set_options",
    "bdev_nvme_set_options",
    "bdev_nvme_set_hotplug",
    "bdev_iscsi_set_options",
    "bdev_raid_set_options",
    "bdev_aio_set_options",
    "bdev_enable_histogram",
];

/// Where an entry is in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// Index in `subsystems`.
    pub subsystem_index: usize,
    pub subsystem: String,
    /// Index in that subsystem's `config`.
    pub index: usize,
    /// Index inside a batch entry (`config[index]` being an array).
    pub batch_index: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "subsystems[{}] ({}) config[{}]",
            self.subsystem_index, self.subsystem, self.index
        )?;
        if let Some(b) = self.batch_index {
            write!(f, "[{b}]")?;
        }
        Ok(())
    }
}

/// One entry to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigEntry {
    pub location: Location,
    pub call: Call,
}

/// What was left out, for the host to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// A whole subsystem not served here, with its number of entries.
    Subsystem { name: String, entries: usize },
    /// One of [`SKIPPED_BDEV_METHODS`].
    Method { location: Location, method: String },
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skipped::Subsystem { name, entries } => {
                write!(f, "subsystem `{name}` ({entries} entries): not served here")
            }
            Skipped::Method { location, method } => {
                write!(f, "{location}: {method}: no meaning here")
            }
        }
    }
}

/// A parsed, validated config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadedConfig {
    pub entries: Vec<ConfigEntry>,
    pub skipped: Vec<Skipped>,
}

/// A config that cannot be loaded or applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The entry at fault; `None` for the document's own shape.
    pub location: Option<Location>,
    /// The entry's method, when it could be read.
    pub method: Option<String>,
    /// The error; for params, the `-32602` message naming method and field.
    pub error: RpcError,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("config")?;
        if let Some(l) = &self.location {
            write!(f, ": {l}")?;
        }
        let msg = &self.error.message;
        match &self.method {
            // Params errors already start with the method name.
            Some(m) if !msg.starts_with(m.as_str()) => write!(f, ": {m}: {msg}"),
            _ => write!(f, ": {msg}"),
        }
    }
}

impl ConfigError {
    fn doc(message: impl Into<String>) -> Self {
        ConfigError {
            location: None,
            method: None,
            error: RpcError::invalid_params(message),
        }
    }

    fn at(location: &Location, method: Option<&str>, error: RpcError) -> Self {
        ConfigError {
            location: Some(location.clone()),
            method: method.map(str::to_string),
            error,
        }
    }
}

/// Replace `//` and `/* */` comments outside strings with spaces (newlines
/// kept), so serde's line/column still point into the original text.
pub fn strip_comments(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let mut in_str = false;
    while i < b.len() {
        let c = b[i];
        if in_str {
            out.push(c);
            if c == b'\\' && i + 1 < b.len() {
                out.push(b[i + 1]);
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        match (c, b.get(i + 1)) {
            (b'"', _) => {
                in_str = true;
                out.push(c);
                i += 1;
            }
            (b'/', Some(b'/')) => {
                while i < b.len() && b[i] != b'\n' {
                    out.push(b' ');
                    i += 1;
                }
            }
            (b'/', Some(b'*')) => {
                out.extend_from_slice(b"  ");
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    out.push(if b[i] == b'\n' { b'\n' } else { b' ' });
                    i += 1;
                }
                // Unterminated: leave the rest blank; serde reports EOF.
                if i < b.len() {
                    out.extend_from_slice(b"  ");
                    i += 2;
                }
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    // Only ASCII bytes were replaced by ASCII, so UTF-8 is intact.
    String::from_utf8(out).expect("comment stripping keeps UTF-8")
}

#[derive(Deserialize)]
struct Doc<'a> {
    #[serde(default, borrow)]
    subsystems: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubsystemEntry<'a> {
    subsystem: String,
    #[serde(default, borrow)]
    config: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry<'a> {
    method: String,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
}

fn syntax(e: &serde_json::Error) -> ConfigError {
    ConfigError::doc(format!("not valid JSON: {e}"))
}

/// Parse and validate a config file. Nothing is applied.
pub fn parse_config(text: &str) -> Result<LoadedConfig, ConfigError> {
    let text = strip_comments(text);
    serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| syntax(&e))?;
    if !text.trim_start().starts_with('{') {
        return Err(ConfigError::doc("not enclosed in {}"));
    }
    let doc: Doc = serde_json::from_str(&text).map_err(|e| syntax(&e))?;
    let mut loaded = LoadedConfig::default();
    let Some(subs) = doc.subsystems else {
        return Ok(loaded);
    };
    let subs: Vec<&RawValue> = serde_json::from_str(subs.get())
        .map_err(|_| ConfigError::doc("'subsystems' should be an array"))?;
    for (si, sub) in subs.iter().enumerate() {
        let sub: SubsystemEntry = serde_json::from_str(sub.get()).map_err(|e| {
            ConfigError::doc(format!(
                "subsystems[{si}]: expected {{\"subsystem\": name, \"config\": [..] or null}}: {}",
                strip_position(&e)
            ))
        })?;
        let config = sub.config.unwrap_or_default();
        // A misspelt served subsystem would be skipped whole, arrays and
        // all: refused instead (no SPDK subsystem begins with these).
        let folded = sub.subsystem.trim().to_ascii_lowercase();
        if let Some(meant) = SERVED_SUBSYSTEMS
            .iter()
            .find(|s| folded.starts_with(*s) && sub.subsystem != **s)
        {
            return Err(ConfigError::doc(format!(
                "subsystems[{si}]: `{}` is no subsystem; `{meant}` was meant? (names are exact)",
                sub.subsystem.escape_debug()
            )));
        }
        if !SERVED_SUBSYSTEMS.contains(&sub.subsystem.as_str()) {
            loaded.skipped.push(Skipped::Subsystem {
                name: sub.subsystem,
                entries: config.len(),
            });
            continue;
        }
        for (i, raw) in config.iter().enumerate() {
            let loc = Location {
                subsystem_index: si,
                subsystem: sub.subsystem.clone(),
                index: i,
                batch_index: None,
            };
            if raw.get().starts_with('[') {
                let items: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(|e| {
                    ConfigError::at(&loc, None, RpcError::invalid_params(strip_position(&e)))
                })?;
                for (bi, item) in items.iter().enumerate() {
                    let loc = Location {
                        batch_index: Some(bi),
                        ..loc.clone()
                    };
                    load_entry(&mut loaded, loc, item)?;
                }
            } else {
                load_entry(&mut loaded, loc, raw)?;
            }
        }
    }
    Ok(loaded)
}

fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn load_entry(loaded: &mut LoadedConfig, loc: Location, raw: &RawValue) -> Result<(), ConfigError> {
    let entry: Entry = serde_json::from_str(raw.get()).map_err(|e| {
        ConfigError::at(
            &loc,
            None,
            RpcError::invalid_params(format!(
                "expected {{\"method\": name, \"params\": {{..}}}}: {}",
                strip_position(&e)
            )),
        )
    })?;
    if let Some(p) = entry.params {
        if !p.get().starts_with('{') {
            return Err(ConfigError::at(
                &loc,
                Some(&entry.method),
                RpcError::invalid_params("`params` must be an object"),
            ));
        }
    }
    let Some(method) = Method::from_name(&entry.method) else {
        if loc.subsystem == "bdev" && SKIPPED_BDEV_METHODS.contains(&entry.method.as_str()) {
            loaded.skipped.push(Skipped::Method {
                location: loc,
                method: entry.method,
            });
            return Ok(());
        }
        return Err(ConfigError::at(
            &loc,
            Some(&entry.method),
            RpcError::method_not_found(),
        ));
    };
    let call = Call::parse(method, entry.params)
        .map_err(|e| ConfigError::at(&loc, Some(&entry.method), e))?;
    loaded.entries.push(ConfigEntry {
        location: loc,
        call,
    });
    Ok(())
}

/// Apply a parsed config through the host, in order; stops at the first
/// failure, naming the entry.
pub fn apply_config<H: Host + ?Sized>(
    host: &mut H,
    config: &LoadedConfig,
) -> Result<(), ConfigError> {
    for e in &config.entries {
        handle_call(host, e.call.clone())
            .map_err(|err| ConfigError::at(&e.location, Some(e.call.method().name()), err))?;
    }
    Ok(())
}

/// Parse, validate, then apply.
pub fn load_config<H: Host + ?Sized>(
    host: &mut H,
    text: &str,
) -> Result<LoadedConfig, ConfigError> {
    let loaded = parse_config(text)?;
    apply_config(host, &loaded)?;
    Ok(loaded)
}

fn subsystem_of(call: &Call) -> &'static str {
    match call.method().subsystem() {
        Subsystem::Mdraid => "mdraid",
        Subsystem::Bdev | Subsystem::None => "bdev",
    }
}

fn entry_json(call: &Call) -> Value {
    json!({"method": call.method().name(), "params": call.params_value()})
}

/// `framework_get_subsystems`'s answer.
pub fn subsystems() -> Vec<SubsystemInfo> {
    vec![
        SubsystemInfo {
            subsystem: "bdev".into(),
            depends_on: vec![],
        },
        SubsystemInfo {
            subsystem: "mdraid".into(),
            depends_on: vec!["bdev".into()],
        },
    ]
}

/// One subsystem's `config` array (`framework_get_config`); `None` for a
/// subsystem not served.
pub fn subsystem_config(calls: &[Call], name: &str) -> Option<Value> {
    if !SERVED_SUBSYSTEMS.contains(&name) {
        return None;
    }
    Some(Value::Array(
        calls
            .iter()
            .filter(|c| subsystem_of(c) == name)
            .map(entry_json)
            .collect(),
    ))
}

/// The whole document (`save_config`): both served subsystems, each with
/// its calls in the host's order.
pub fn build_document(calls: &[Call]) -> Value {
    let subs: Vec<Value> = SERVED_SUBSYSTEMS
        .iter()
        .map(|name| {
            json!({
                "subsystem": name,
                "config": subsystem_config(calls, name).expect("served subsystem"),
            })
        })
        .collect();
    json!({ "subsystems": subs })
}
