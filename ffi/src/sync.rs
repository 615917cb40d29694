//! Background processes of an array — resync after an unclean shutdown,
//! rebuild of a member brought in by `bdev_mdraid_add_base_bdev`, and
//! md's `sync_action` passes (check, repair, resync) — driven on the
//! array's metadata thread, window by window, through that thread's channel
//! of the array (parents tagged [`INTERNAL_TAG`]). The engine's
//! [`bdev_raid::sync::Driver`] decides everything (the embedded daemon runs
//! the same one): which window comes next, pacing to the bandwidth cap of
//! `bdev_mdraid_set_options`, when a process ends and how. This adapter
//! submits its windows, feeds it their completions and carries out its
//! reports (resync checkpoint, recovery offset, `mark_synced`: by message
//! to the metadata path) and log lines.
//!
//! One process at a time per array ([`SyncStatus`] holds the slot). The
//! metadata tick resumes a paused driver, and starts a rebuild once the
//! metadata path says a member may be rebuilt. A stopping array stops its
//! driver: no new window, and the teardown waits until the windows in
//! flight ended (the driver's channel is put before the io_device goes).

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex};

use bdev_raid::channel::{Busy, IoStatus, IoType, ParentIo};
use bdev_raid::meta::RecoveryInfo;
use bdev_raid::sync::{self, Facts, Note, Output, Report, Step};
pub use bdev_raid::sync::{ProcessOptions, SyncKind, SyncProgress, SyncStatus};

use crate::array::{Array, ArrayChannel, IoBuf, INTERNAL_TAG};
use crate::spdk::{log_notice, log_warn, now_ms, DmaBuf};

/// The options every array uses (set for all at once, like the daemon's).
static OPTIONS: Mutex<ProcessOptions> = Mutex::new(ProcessOptions::DEFAULT);

pub fn options() -> ProcessOptions {
    *OPTIONS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Module config callback (the shim's module table), for `save_config`:
/// the options, when they are not the defaults, and the creates of arrays
/// still waiting for their members (SPDK writes module configs before
/// every bdev's, so they replay before their members exist and wait
/// again, as they did here).
///
/// # Safety
/// `w` must be a live JSON write context.
#[no_mangle]
pub unsafe extern "C" fn mdraid_module_config_json(
    w: *mut crate::sys::spdk_json_write_ctx,
) -> std::ffi::c_int {
    crate::spdk::guard("module config_json", 0, || {
        // SAFETY: w is live for this call (the caller's contract).
        let Some(mut w) = (unsafe { crate::spdk::JsonWriter::new(w) }) else {
            return 0;
        };
        let mut call = |method: &str, params: String| {
            w.object_begin();
            w.named_raw("method", &format!("\"{method}\""));
            w.named_raw("params", &params);
            w.object_end();
        };
        let json = |p: Result<String, serde_json::Error>| p.unwrap_or_else(|_| "{}".into());
        if let Some(p) = mdraid_rpc::params::BdevMdraidSetOptions::saved(&options()) {
            call("bdev_mdraid_set_options", json(serde_json::to_string(&p)));
        }
        for p in crate::examine::held_creates() {
            call("bdev_mdraid_create", json(serde_json::to_string(&p)));
        }
        0
    })
}

pub fn set_options(window_kb: Option<u32>, max_mb_per_sec: Option<u32>) {
    let mut o = OPTIONS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(w) = window_kb {
        o.window_kb = w;
    }
    if let Some(m) = max_mb_per_sec {
        o.max_mb_per_sec = m;
    }
}

/// Drives one process on the metadata thread (see the module docs).
pub struct Driver {
    array: Arc<Array>,
    drv: RefCell<sync::Driver>,
    ch: RefCell<Option<ArrayChannel>>,
}

/// Metadata-path calls the driver asks for, made from a message (a
/// completion may run inside the metadata host's own calls).
fn report(array: &Arc<Array>, r: Report) {
    let a = array.clone();
    let res = array.meta_thread.send(move || {
        crate::meta::with_host(&a, |h| match r {
            Report::ResyncProgress(lba) => h.resync_progress(lba),
            Report::Synced => h.mark_synced(),
            Report::Recovery {
                member,
                device,
                offset,
            } => h.recovery_progress(member, device, offset),
        });
    });
    if res.is_err() {
        log_warn!(
            "mdraid {}: cannot report background progress to the metadata path",
            array.name
        );
    }
}

fn note(array: &Array, n: &Note) {
    if n.is_warning() {
        log_warn!("mdraid {}: {n}", array.name);
    } else {
        log_notice!("mdraid {}: {n}", array.name);
    }
}

impl Driver {
    /// Run `drv` (whose slot is claimed) through a channel of the array;
    /// `drv` gets the channel's mismatch count first.
    fn start(array: &Arc<Array>, drv: impl FnOnce(u64) -> sync::Driver) -> Option<Rc<Driver>> {
        let d = Rc::new_cyclic(|weak: &Weak<Driver>| {
            let weak = weak.clone();
            let done = Rc::new(move |_tag: u64, status: IoStatus, buf: Option<IoBuf>| {
                drop(buf);
                if let Some(d) = weak.upgrade() {
                    d.io_done(status);
                }
            });
            let ch = ArrayChannel::get(array, done);
            let base = ch.as_ref().map_or(0, |c| c.mismatch_blocks());
            Driver {
                array: array.clone(),
                drv: RefCell::new(drv(base)),
                ch: RefCell::new(ch),
            }
        });
        d.outputs();
        if d.ch.borrow().is_none() {
            log_warn!("mdraid {}: no channel for a background process", array.name);
            d.drv.borrow_mut().end(&array.sync);
            return None;
        }
        Some(d)
    }

    /// Whether the driver ended (its slot is free; drop it).
    pub fn finished(&self) -> bool {
        self.drv.borrow().finished()
    }

    /// Drop the array channel (the driver has ended).
    pub fn close(&self) {
        self.ch.borrow_mut().take();
    }

    /// Carry out what the driver asked for (no borrow of it held).
    fn outputs(&self) {
        loop {
            let out = self.drv.borrow_mut().poll_output();
            match out {
                None => return,
                Some(Output::Note(n)) => note(&self.array, &n),
                Some(Output::Report(r)) => report(&self.array, r),
            }
        }
    }

    fn io_done(self: &Rc<Self>, status: IoStatus) {
        let ok = status == IoStatus::Success;
        let cap = options().max_mb_per_sec;
        self.drv
            .borrow_mut()
            .window_done(&self.array.sync, ok, now_ms(), cap);
        self.outputs();
        self.next();
    }

    /// Submit what the process needs next, or finish it (a paused driver
    /// waits for the metadata tick).
    pub fn next(self: &Rc<Self>) {
        let a = &self.array;
        loop {
            let state = a.state();
            let facts = Facts {
                now_ms: now_ms(),
                state: &state,
                mismatch_blocks: self.ch.borrow().as_ref().map(|c| c.mismatch_blocks()),
            };
            // Borrowed only here: a submission may complete at once.
            let step = self.drv.borrow_mut().step(&a.sync, &facts);
            self.outputs();
            let Step::Submit(io) = step else {
                return;
            };
            let buf = match io.buf_bytes {
                Some(n) => match DmaBuf::zeroed(n, 4096) {
                    Some(b) => Some(IoBuf::Dma(b)),
                    None => {
                        self.drv.borrow_mut().unsubmit(io, now_ms());
                        return;
                    }
                },
                None => None,
            };
            let parent = ParentIo {
                tag: (io.lba << 1) | INTERNAL_TAG,
                op: io.op,
                lba: io.lba,
                blocks: io.blocks,
                fua: false,
                buf,
            };
            let res = match self.ch.borrow().as_ref() {
                Some(c) => c.submit(parent),
                None => Err(Busy(parent)),
            };
            if res.is_err() {
                // Handed out again after a pause (the tick resumes it).
                self.drv.borrow_mut().unsubmit(io, now_ms());
                return;
            }
        }
    }
}

/// Resync of an array assembled dirty (the chunks its bitmap marks, or all
/// of it), from where an orderly stop left it (`from`).
pub fn start_resync(array: &Arc<Array>, from: u64) -> Option<Rc<Driver>> {
    if !array.sync.claim(SyncKind::Resync, 0) {
        return None;
    }
    let (g, sh) = (&array.geom, &array.shared);
    let drv = sync::Driver::resync(g, sh, &array.sync, sync::resync_window(g), from, now_ms());
    Driver::start(array, move |_| drv)
}

/// A rebuild of role `m` as the metadata path describes it.
pub fn start_rebuild(array: &Arc<Array>, m: usize, info: RecoveryInfo) -> Option<Rc<Driver>> {
    let (g, sh) = (&array.geom, &array.shared);
    let window = options().window_blocks(g);
    let drv = sync::Driver::rebuild(g, sh, &array.sync, m, info, window, now_ms())?;
    Driver::start(array, move |_| drv)
}

/// md's `sync_action`: a check, repair or resync pass over the whole array
/// (`Err` names what runs already), or (`None`) stop the pass running;
/// `freeze` also holds back rebuilds until the next call. On the metadata
/// thread; a new driver is returned to be installed and started.
pub fn sync_action(
    array: &Arc<Array>,
    op: Option<IoType>,
    freeze: bool,
) -> Result<Option<Rc<Driver>>, String> {
    let (g, sh) = (&array.geom, &array.shared);
    if !array.sync.sync_action(op, freeze, g.array_blocks())? {
        return Ok(None);
    }
    let op = op.unwrap_or(IoType::Resync);
    let window = options().window_blocks(g);
    Ok(Driver::start(array, |base| {
        sync::Driver::pass(g, sh, op, window, base, now_ms())
    }))
}
