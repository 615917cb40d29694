//! The `mdraid` bdev module: its init/fini callbacks (registered by the C
//! shim's constructor, SPDK_BDEV_MODULE_REGISTER), the registry of arrays,
//! and member events.

use std::ffi::c_int;
use std::sync::{Arc, Mutex};

use bdev_raid::channel::MetaRequest;

use crate::array::Array;
use crate::spdk::{guard, log_warn};
use crate::sys;

struct Registry {
    arrays: Vec<Arc<Array>>,
    /// Names of arrays being created (not registered yet).
    reserved: Vec<String>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    arrays: Vec::new(),
    reserved: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reserve `name` for an array being created; false if an mdraid array
/// has (or is getting) it.
pub fn reserve(name: &str) -> bool {
    let mut r = registry();
    if r.arrays.iter().any(|a| a.name == name) || r.reserved.iter().any(|n| n == name) {
        return false;
    }
    r.reserved.push(name.to_string());
    true
}

pub fn unreserve(name: &str) {
    registry().reserved.retain(|n| n != name);
}

/// A created array: reachable by name from now on.
pub fn insert(array: Arc<Array>) {
    let mut r = registry();
    r.reserved.retain(|n| *n != array.name);
    r.arrays.push(array);
}

/// Forget the array (and any reservation) called `name`.
pub fn remove(name: &str) {
    let mut r = registry();
    r.reserved.retain(|n| n != name);
    r.arrays.retain(|a| a.name != name);
}

pub fn find(name: &str) -> Option<Arc<Array>> {
    registry().arrays.iter().find(|a| a.name == name).cloned()
}

/// Whether `name` is an mdraid array (or one being created).
pub fn is_array(name: &str) -> bool {
    let r = registry();
    r.arrays.iter().any(|a| a.name == name) || r.reserved.iter().any(|n| n == name)
}

/// Whether `name` names an array, by its name or an alias (SPDK registers
/// a bdev's UUID as one).
pub fn names_array(name: &str) -> bool {
    is_array(name) || crate::spdk::Bdev::by_name(name).is_some_and(|b| is_array(&b.name()))
}

pub fn all() -> Vec<Arc<Array>> {
    registry().arrays.clone()
}

/// An event on a member's descriptor (on the thread that opened it: the
/// array's metadata thread). Hot-remove: the member has failed; the
/// metadata path records it faulty, the channels stop using it and put
/// their channels of it, and its descriptor is closed once nothing uses
/// it (see `Array::bdev_removed`), so the removal completes. A device
/// `bdev_mdraid_add_base_bdev` replaced is only closed the same way.
pub fn member_event(ty: sys::spdk_bdev_event_type, bdev: *mut sys::spdk_bdev) {
    if ty != sys::SPDK_BDEV_EVENT_REMOVE {
        return;
    }
    if crate::rpc::create_member_removed(bdev) {
        log_warn!("mdraid: a member of an array being created is being removed; it fails once the array exists");
    }
    for a in all() {
        let Some(role) = a.bdev_removed(bdev) else {
            continue;
        };
        let name = a.members()[role]
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        log_warn!(
            "mdraid {}: member {name} (role {role}) is being removed; failing it",
            a.name
        );
        let req = MetaRequest::MemberFailed {
            member: role as u16,
            device: a.state().readded[role],
        };
        let a2 = a.clone();
        if a.meta_thread
            .send(move || crate::meta::request(&a2, req))
            .is_err()
        {
            log_warn!(
                "mdraid {}: cannot queue the failure of {name}; it fails on its next I/O",
                a.name
            );
        }
    }
}

#[no_mangle]
pub extern "C" fn mdraid_module_init() -> c_int {
    guard("module_init", -1, || 0)
}

#[no_mangle]
pub extern "C" fn mdraid_module_fini() {
    guard("module_fini", (), || {
        let left = all();
        if !left.is_empty() {
            log_warn!(
                "mdraid: module stopping with {} array(s) registered",
                left.len()
            );
        }
    })
}
