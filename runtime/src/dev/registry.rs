//! The set of named devices (SPDK's bdev list), with claims: a device used
//! by an array or wrapped by another device is claimed and cannot be
//! deleted or claimed again. Control path only (a mutex is fine here; the
//! I/O path never looks devices up by name).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{DevError, Device};

struct Entry {
    dev: Arc<dyn Device>,
    claimed_by: Option<String>,
}

/// Named devices. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<BTreeMap<String, Entry>>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add a device under its name.
    pub fn register(&self, dev: Arc<dyn Device>) -> Result<(), DevError> {
        let mut m = self.lock();
        let name = dev.name().to_string();
        if m.contains_key(&name) {
            return Err(DevError::Exists(name));
        }
        m.insert(
            name,
            Entry {
                dev,
                claimed_by: None,
            },
        );
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Device>> {
        self.lock().get(name).map(|e| e.dev.clone())
    }

    /// Every device, by name, with who claims it.
    pub fn list(&self) -> Vec<(Arc<dyn Device>, Option<String>)> {
        self.lock()
            .values()
            .map(|e| (e.dev.clone(), e.claimed_by.clone()))
            .collect()
    }

    /// Claim `name` for `by`; fails if missing or already claimed.
    pub fn claim(&self, name: &str, by: &str) -> Result<Arc<dyn Device>, DevError> {
        let mut m = self.lock();
        let e = m
            .get_mut(name)
            .ok_or_else(|| DevError::NotFound(name.to_string()))?;
        if let Some(c) = &e.claimed_by {
            return Err(DevError::Claimed {
                name: name.to_string(),
                by: c.clone(),
            });
        }
        e.claimed_by = Some(by.to_string());
        Ok(e.dev.clone())
    }

    /// Claim every name in `names` for `by`, or none of them.
    pub fn claim_all(&self, names: &[&str], by: &str) -> Result<Vec<Arc<dyn Device>>, DevError> {
        let mut got = Vec::new();
        for n in names {
            match self.claim(n, by) {
                Ok(d) => got.push(d),
                Err(e) => {
                    for d in &got {
                        self.release(d.name());
                    }
                    return Err(e);
                }
            }
        }
        Ok(got)
    }

    pub fn release(&self, name: &str) {
        if let Some(e) = self.lock().get_mut(name) {
            e.claimed_by = None;
        }
    }

    pub fn claimed_by(&self, name: &str) -> Option<String> {
        self.lock().get(name).and_then(|e| e.claimed_by.clone())
    }

    /// Remove an unclaimed device.
    pub fn unregister(&self, name: &str) -> Result<Arc<dyn Device>, DevError> {
        let mut m = self.lock();
        match m.get(name) {
            None => Err(DevError::NotFound(name.to_string())),
            Some(Entry {
                claimed_by: Some(by),
                ..
            }) => Err(DevError::Claimed {
                name: name.to_string(),
                by: by.clone(),
            }),
            Some(_) => Ok(m.remove(name).expect("present").dev),
        }
    }
}
