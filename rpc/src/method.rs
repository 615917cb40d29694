//! The method table: every method name, its params type, and where its
//! entries go in a saved config.

use crate::error::RpcError;
use crate::params::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// Which `subsystems[]` entry of a config file a method's calls go in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subsystem {
    /// Bdevs (members, wrappers, arrays): SPDK's `bdev` subsystem, where
    /// SPDK's own modules write their bdevs too.
    Bdev,
    /// The embedded host's NBD server: `mdraid` (an SPDK app has no such
    /// subsystem and skips it when loading the same file).
    Mdraid,
    /// Framework methods: never saved.
    None,
}

impl Subsystem {
    pub fn name(self) -> Option<&'static str> {
        match self {
            Subsystem::Bdev => Some("bdev"),
            Subsystem::Mdraid => Some("mdraid"),
            Subsystem::None => None,
        }
    }
}

macro_rules! methods {
    ($(
        $(#[$doc:meta])*
        $variant:ident = $name:literal, $params:ty, $sub:ident;
    )*) => {
        /// A method this crate knows. Which of them a host serves is
        /// [`crate::dispatch::Host::serves`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Method { $( $(#[$doc])* $variant ),* }

        impl Method {
            /// Every method, in table order.
            pub const ALL: &'static [Method] = &[$(Method::$variant),*];

            pub fn name(self) -> &'static str {
                match self { $(Method::$variant => $name),* }
            }

            pub fn from_name(s: &str) -> Option<Method> {
                match s { $($name => Some(Method::$variant),)* _ => None }
            }

            pub fn subsystem(self) -> Subsystem {
                match self { $(Method::$variant => Subsystem::$sub),* }
            }
        }

        /// A decoded, validated call: the method and its typed params.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Call { $( $(#[$doc])* $variant($params) ),* }

        impl Call {
            pub fn method(&self) -> Method {
                match self { $(Call::$variant(_) => Method::$variant),* }
            }

            /// Decode and validate `params` (raw JSON; `None` = absent or
            /// null) for `method`. Errors are `-32602` naming the field.
            pub fn parse(method: Method, params: Option<&RawValue>) -> Result<Call, RpcError> {
                match method {
                    $(Method::$variant => decode::<$params>($name, params).map(Call::$variant),)*
                }
            }

            /// The params as JSON (what `save_config` writes; parses back
            /// to an equal call).
            pub fn params_value(&self) -> Value {
                match self {
                    $(Call::$variant(p) => to_value(p),)*
                }
            }
        }
    };
}

methods! {
    // ---- arrays
    /// `bdev_mdraid_create` -> `true`.
    BdevMdraidCreate = "bdev_mdraid_create", BdevMdraidCreate, Bdev;
    /// `bdev_mdraid_delete` -> `true`.
    BdevMdraidDelete = "bdev_mdraid_delete", BdevMdraidDelete, Bdev;
    /// `bdev_mdraid_get_bdevs` -> `[MdraidBdevInfo]`.
    BdevMdraidGetBdevs = "bdev_mdraid_get_bdevs", BdevMdraidGetBdevs, None;
    /// `bdev_mdraid_add_base_bdev` -> `true`.
    BdevMdraidAddBaseBdev = "bdev_mdraid_add_base_bdev", BdevMdraidAddBaseBdev, Bdev;
    /// `bdev_mdraid_remove_base_bdev` -> `true`.
    BdevMdraidRemoveBaseBdev = "bdev_mdraid_remove_base_bdev", BdevMdraidRemoveBaseBdev, Bdev;
    /// `bdev_mdraid_set_options` -> `true`.
    BdevMdraidSetOptions = "bdev_mdraid_set_options", BdevMdraidSetOptions, Bdev;
    /// `bdev_mdraid_set_write_mostly` -> `true`.
    BdevMdraidSetWriteMostly = "bdev_mdraid_set_write_mostly", BdevMdraidSetWriteMostly, None;
    /// `bdev_mdraid_sync_action` -> `true`.
    BdevMdraidSyncAction = "bdev_mdraid_sync_action", BdevMdraidSyncAction, None;
    /// `bdev_mdraid_examine` -> `[MdraidExamineInfo]`.
    BdevMdraidExamine = "bdev_mdraid_examine", BdevMdraidExamine, None;
    /// `bdev_mdraid_zero_superblock` -> `true`.
    BdevMdraidZeroSuperblock = "bdev_mdraid_zero_superblock", BdevMdraidZeroSuperblock, None;
    // ---- SPDK's member bdevs (embedded host)
    /// `bdev_malloc_create` -> the bdev's name.
    BdevMallocCreate = "bdev_malloc_create", BdevMallocCreate, Bdev;
    /// `bdev_malloc_delete` -> `true`.
    BdevMallocDelete = "bdev_malloc_delete", BdevDelete, Bdev;
    /// `bdev_aio_create` -> the bdev's name.
    BdevAioCreate = "bdev_aio_create", BdevAioCreate, Bdev;
    /// `bdev_aio_delete` -> `true`.
    BdevAioDelete = "bdev_aio_delete", BdevDelete, Bdev;
    /// `bdev_uring_create` -> the bdev's name.
    BdevUringCreate = "bdev_uring_create", BdevUringCreate, Bdev;
    /// `bdev_uring_delete` -> `true`.
    BdevUringDelete = "bdev_uring_delete", BdevDelete, Bdev;
    /// `bdev_error_create` -> `true` (the bdev is `EE_<base_name>`).
    BdevErrorCreate = "bdev_error_create", BdevErrorCreate, Bdev;
    /// `bdev_error_delete` -> `true`.
    BdevErrorDelete = "bdev_error_delete", BdevDelete, Bdev;
    /// `bdev_error_inject_error` -> `true`.
    BdevErrorInjectError = "bdev_error_inject_error", BdevErrorInjectError, None;
    /// `bdev_delay_create` -> the bdev's name.
    BdevDelayCreate = "bdev_delay_create", BdevDelayCreate, Bdev;
    /// `bdev_delay_delete` -> `true`.
    BdevDelayDelete = "bdev_delay_delete", BdevDelete, Bdev;
    /// `bdev_get_bdevs` -> `[BdevInfo]`.
    BdevGetBdevs = "bdev_get_bdevs", BdevGetBdevs, None;
    /// `bdev_wait_for_examine` -> `true` once examine is done (SPDK writes it
    /// last in every saved `bdev` subsystem).
    BdevWaitForExamine = "bdev_wait_for_examine", NoParams, Bdev;
    // ---- NBD server (embedded host)
    /// `mdraid_nbd_export_add` -> the export's name.
    MdraidNbdExportAdd = "mdraid_nbd_export_add", MdraidNbdExportAdd, Mdraid;
    /// `mdraid_nbd_export_remove` -> `true`.
    MdraidNbdExportRemove = "mdraid_nbd_export_remove", MdraidNbdExportRemove, Mdraid;
    /// `mdraid_nbd_get_exports` -> `[NbdExportInfo]`.
    MdraidNbdGetExports = "mdraid_nbd_get_exports", MdraidNbdGetExports, None;
    /// `mdraid_nbd_listener_add` -> `true`.
    MdraidNbdListenerAdd = "mdraid_nbd_listener_add", MdraidNbdListener, Mdraid;
    /// `mdraid_nbd_listener_remove` -> `true`.
    MdraidNbdListenerRemove = "mdraid_nbd_listener_remove", MdraidNbdListener, Mdraid;
    /// `mdraid_nbd_get_listeners` -> `[MdraidNbdListener]`.
    MdraidNbdGetListeners = "mdraid_nbd_get_listeners", NoParams, None;
    // ---- framework (SPDK's names and shapes)
    /// `rpc_get_methods` -> method names (answered by [`crate::dispatch`]).
    RpcGetMethods = "rpc_get_methods", RpcGetMethods, None;
    /// `spdk_get_version` -> `VersionInfo` (answered by [`crate::dispatch`]).
    SpdkGetVersion = "spdk_get_version", NoParams, None;
    /// `save_config` -> the whole config document (answered by
    /// [`crate::dispatch`]; SPDK has this only client-side in rpc.py).
    SaveConfig = "save_config", NoParams, None;
    /// `framework_get_subsystems` -> `[SubsystemInfo]` (answered by
    /// [`crate::dispatch`]; rpc.py's `save_config` calls it).
    FrameworkGetSubsystems = "framework_get_subsystems", NoParams, None;
    /// `framework_get_config` -> one subsystem's config array (answered by
    /// [`crate::dispatch`]; rpc.py's `save_config` calls it).
    FrameworkGetConfig = "framework_get_config", FrameworkGetConfig, None;
    /// `framework_wait_init` -> `true` once the host is initialised.
    FrameworkWaitInit = "framework_wait_init", NoParams, None;
    /// `spdk_kill_instance` -> `true`; the host then acts on the signal.
    SpdkKillInstance = "spdk_kill_instance", SpdkKillInstance, None;
}

impl Method {
    /// Answered by [`crate::dispatch`] itself, never passed to the host.
    pub fn is_builtin(self) -> bool {
        matches!(
            self,
            Method::RpcGetMethods
                | Method::SpdkGetVersion
                | Method::SaveConfig
                | Method::FrameworkGetSubsystems
                | Method::FrameworkGetConfig
        )
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn to_value<T: Serialize>(p: &T) -> Value {
    serde_json::to_value(p).expect("params serialise to JSON")
}

/// Decode `params` into `T` (absent/null = `{}`), then validate. Errors
/// name the method and the field.
pub fn decode<T: DeserializeOwned + Validate>(
    method: &str,
    params: Option<&RawValue>,
) -> Result<T, RpcError> {
    let text = params.map(|p| p.get()).unwrap_or("{}");
    if text.trim_start().starts_with('[') {
        return Err(RpcError::invalid_params(format!(
            "{method}: params must be an object of named fields, not an array"
        )));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| RpcError::invalid_params(describe(method, &e)))?;
    value.validate().map_err(|e| field_error(method, &e))?;
    Ok(value)
}

pub(crate) fn field_error(method: &str, e: &FieldError) -> RpcError {
    if e.field.is_empty() {
        RpcError::invalid_params(format!("{method}: {}", e.message))
    } else {
        RpcError::invalid_field(method, &e.field, &e.message)
    }
}

/// serde_json's message without its " at line L column C" tail.
fn bare_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) if e.line() > 0 => s[..i].to_string(),
        _ => s,
    }
}

/// Split a serde message into (extra path segment, reworded message).
fn reword(msg: &str) -> (Option<String>, String) {
    let between = |s: &str| -> Option<String> {
        let a = s.find('`')?;
        let b = s[a + 1..].find('`')?;
        Some(s[a + 1..a + 1 + b].to_string())
    };
    if let Some(rest) = msg.strip_prefix("missing field ") {
        return (between(rest), "required field is missing".into());
    }
    if let Some(rest) = msg.strip_prefix("duplicate field ") {
        return (between(rest), "given more than once".into());
    }
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        let field = between(rest);
        let tail = rest
            .find(", expected ")
            .map(|i| format!(" (expected {})", &rest[i + ", expected ".len()..]))
            .or_else(|| {
                rest.contains("there are no fields")
                    .then(|| " (this method takes no params)".to_string())
            })
            .unwrap_or_default();
        return (field, format!("unknown field{tail}"));
    }
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            if let Some(i) = rest.rfind(", expected ") {
                let got = &rest[..i];
                let want = &rest[i + ", expected ".len()..];
                return (None, format!("expected {want}, got {got}"));
            }
        }
    }
    (None, msg.to_string())
}

/// Turn a decode error into `"<method>: field `<path>`: <what>"`.
fn describe(method: &str, e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let inner = e.inner();
    if inner.is_syntax() || inner.is_eof() {
        return format!("{method}: params are not valid JSON: {inner}");
    }
    let (extra, what) = reword(&bare_message(inner));
    let mut path = e.path().to_string();
    if path == "." {
        path.clear();
    }
    if let Some(extra) = extra {
        // serde_path_to_error may already end the path with the key.
        let ends_with = path == extra || path.ends_with(&format!(".{extra}"));
        if !ends_with {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&extra);
        }
    }
    if path.is_empty() {
        format!("{method}: {what}")
    } else {
        format!("{method}: field `{path}`: {what}")
    }
}
