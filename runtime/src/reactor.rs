//! Reactors: one OS thread per core, each running a loop over its message
//! queue, its io_uring completions, its pollers and its timers — SPDK's
//! reactor/thread model without SPDK.
//!
//! * Control path: [`RuntimeHandle::send`] boxes a closure onto a reactor's
//!   lock-free queue (`crossbeam_queue::SegQueue`); [`RuntimeHandle::call`]
//!   runs one and waits for its result from a non-reactor thread (the RPC
//!   thread); [`RuntimeHandle::for_each`] runs one on every reactor and then a
//!   completion on a chosen reactor (`spdk_for_each_channel`).
//! * Data path: pollers ([`Poller`]) registered on a reactor are called on
//!   every turn of its loop; state that several pollers or messages of one
//!   reactor share lives in reactor-local objects ([`Reactor::set_local`]),
//!   `Rc`s that never leave the thread, so nothing there takes a lock.
//! * [`Mode::Poll`] spins like SPDK; [`Mode::Interrupt`] sleeps when a turn
//!   did no work, on an eventfd that message senders and (registered with
//!   the ring) io_uring completions signal, for at most 1 ms (so pollers
//!   that watch the clock or a socket still run) or until the next timer.
//! * [`Runtime::shutdown`] drains: it waits until every reactor is quiescent
//!   (no queued message, no io_uring op in flight, no busy poller, no timer)
//!   with no message sent in between, then stops the loops.

use std::any::Any;
use std::cell::Cell;
use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;

use crate::buf::BufPool;
use crate::uring::Uring;

/// A message for a reactor: runs once on its thread.
pub type Msg = Box<dyn FnOnce(&mut Reactor) + Send>;

/// How a reactor waits when it has nothing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Busy loop (SPDK's default): lowest latency, one core each.
    #[default]
    Poll,
    /// Sleep when idle, woken by messages and io_uring completions.
    Interrupt,
}

/// How to start a [`Runtime`].
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// One reactor per entry, pinned to that core. Reactor `i` runs on
    /// `cores[i]`.
    pub cores: Vec<usize>,
    pub mode: Mode,
    /// Pin each reactor thread to its core (a failure only logs a warning).
    pub pin: bool,
    /// io_uring submission queue size per reactor (0: no ring, so no file
    /// devices on this runtime).
    pub ring_entries: u32,
    /// Operations one reactor's ring keeps in flight at most (its
    /// completion queue is this big, so it never overflows).
    pub ring_inflight: u32,
    /// Buffers kept per size class in each reactor's pool.
    pub pool_per_class: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cores: vec![0],
            mode: Mode::Poll,
            pin: true,
            ring_entries: 256,
            ring_inflight: 1024,
            pool_per_class: 256,
        }
    }
}

/// Errors of the control path.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no cores given")]
    NoCores,
    #[error("reactor {0} does not exist")]
    NoReactor(usize),
    #[error("the runtime has stopped")]
    Stopped,
    #[error("a blocking call was made from reactor {0}: reactors must never block")]
    OnReactor(usize),
    #[error("could not start reactor thread: {0}")]
    Spawn(std::io::Error),
}

thread_local! {
    static ON_REACTOR: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The reactor this thread runs, if it is a reactor thread.
pub fn current_reactor() -> Option<usize> {
    ON_REACTOR.with(|c| c.get())
}

static NEXT_OBJECT_ID: AtomicU64 = AtomicU64::new(1);

/// A process-unique id for reactor-local objects (arrays, metadata hosts).
pub fn next_object_id() -> u64 {
    NEXT_OBJECT_ID.fetch_add(1, Ordering::Relaxed)
}

struct Mailbox {
    q: SegQueue<Msg>,
    sleeping: AtomicBool,
    stop: AtomicBool,
    /// The loop has ended; nothing queued from now on will run.
    exited: AtomicBool,
    /// eventfd that wakes a sleeping reactor (interrupt mode).
    wake: Option<File>,
}

impl Mailbox {
    fn push(&self, m: Msg) {
        self.q.push(m);
        // Pairs with the fence in `Reactor::sleep`: either the reactor sees
        // the message before sleeping or we see it asleep and wake it.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            self.kick();
        }
    }

    fn kick(&self) {
        if let Some(mut f) = self.wake.as_ref() {
            let _ = f.write(&1u64.to_ne_bytes());
        }
    }
}

struct Shared {
    mailboxes: Vec<Arc<Mailbox>>,
    cores: Vec<usize>,
    /// Messages sent (drain detection: a quiet round must see no change).
    sent: AtomicU64,
    mode: Mode,
}

/// A cloneable, thread-safe handle to send work to reactors.
#[derive(Clone)]
pub struct RuntimeHandle {
    shared: Arc<Shared>,
}

impl RuntimeHandle {
    /// Number of reactors.
    pub fn reactors(&self) -> usize {
        self.shared.mailboxes.len()
    }

    /// Core of reactor `n`.
    pub fn core(&self, n: usize) -> usize {
        self.shared.cores[n]
    }

    pub fn mode(&self) -> Mode {
        self.shared.mode
    }

    /// Queue `f` to run on reactor `n`. Never blocks. Panics if `n` is not
    /// a reactor (a programming error).
    pub fn send(&self, n: usize, f: impl FnOnce(&mut Reactor) + Send + 'static) {
        self.send_boxed(n, Box::new(f));
    }

    pub fn send_boxed(&self, n: usize, m: Msg) {
        self.shared.sent.fetch_add(1, Ordering::Relaxed);
        self.shared.mailboxes[n].push(m);
    }

    /// Run `f` on reactor `n` and wait for its result. Only from a
    /// non-reactor thread (an RPC or main thread): a reactor must not block.
    pub fn call<T: Send + 'static>(
        &self,
        n: usize,
        f: impl FnOnce(&mut Reactor) -> T + Send + 'static,
    ) -> Result<T, RuntimeError> {
        if let Some(me) = current_reactor() {
            return Err(RuntimeError::OnReactor(me));
        }
        if n >= self.reactors() {
            return Err(RuntimeError::NoReactor(n));
        }
        let mb = &self.shared.mailboxes[n];
        if mb.stop.load(Ordering::Acquire) || mb.exited.load(Ordering::Acquire) {
            return Err(RuntimeError::Stopped);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(n, move |r| {
            let _ = tx.send(f(r));
        });
        // A stopped reactor drops the message, and with it `tx`; one that
        // stopped just before the push never sees it.
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(v) => return Ok(v),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(RuntimeError::Stopped),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.shared.mailboxes[n].exited.load(Ordering::Acquire) {
                        return Err(RuntimeError::Stopped);
                    }
                }
            }
        }
    }

    /// Run `f` on every reactor (in parallel), then `done` on reactor
    /// `done_on` once all have run it: `spdk_for_each_channel`.
    pub fn for_each(
        &self,
        f: Arc<dyn Fn(&mut Reactor) + Send + Sync>,
        done_on: usize,
        done: impl FnOnce(&mut Reactor) + Send + 'static,
    ) {
        let n = self.reactors();
        assert!(
            done_on < n,
            "for_each completion on reactor {done_on} of {n}"
        );
        let left = Arc::new(AtomicUsize::new(n));
        // Exactly one reactor (the last) takes `done`; a queue makes the
        // hand-over lock-free.
        let slot: Arc<SegQueue<Msg>> = Arc::new(SegQueue::new());
        slot.push(Box::new(done));
        for i in 0..n {
            let (f, left, slot) = (f.clone(), left.clone(), slot.clone());
            self.send(i, move |r| {
                f(r);
                if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                    let d = slot.pop().expect("for_each completion taken twice");
                    if r.id() == done_on {
                        d(r);
                    } else {
                        r.send_boxed(done_on, d);
                    }
                }
            });
        }
    }

    fn stop_all(&self) {
        for m in &self.shared.mailboxes {
            m.stop.store(true, Ordering::Release);
            m.kick();
        }
    }
}

/// What [`Runtime::shutdown`] achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Every reactor was quiescent before the loops stopped.
    pub drained: bool,
    pub elapsed: Duration,
}

/// The set of reactor threads. Dropping it without [`Runtime::shutdown`]
/// stops the loops without draining.
pub struct Runtime {
    handle: RuntimeHandle,
    threads: Vec<JoinHandle<()>>,
}

impl std::ops::Deref for Runtime {
    type Target = RuntimeHandle;
    fn deref(&self) -> &RuntimeHandle {
        &self.handle
    }
}

impl Runtime {
    /// Start one reactor per core and wait until each runs its loop.
    pub fn start(cfg: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        if cfg.cores.is_empty() {
            return Err(RuntimeError::NoCores);
        }
        let mailboxes: Vec<Arc<Mailbox>> = cfg
            .cores
            .iter()
            .map(|_| {
                Arc::new(Mailbox {
                    q: SegQueue::new(),
                    sleeping: AtomicBool::new(false),
                    stop: AtomicBool::new(false),
                    exited: AtomicBool::new(false),
                    wake: if cfg.mode == Mode::Interrupt {
                        make_eventfd()
                    } else {
                        None
                    },
                })
            })
            .collect();
        let handle = RuntimeHandle {
            shared: Arc::new(Shared {
                mailboxes,
                cores: cfg.cores.clone(),
                sent: AtomicU64::new(0),
                mode: cfg.mode,
            }),
        };
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        for (id, &core) in cfg.cores.iter().enumerate() {
            let h = handle.clone();
            let cfg = cfg.clone();
            let ready = ready_tx.clone();
            let t = std::thread::Builder::new()
                .name(format!("reactor_{id}"))
                .spawn(move || reactor_main(id, core, h, cfg, ready));
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    handle.stop_all();
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(RuntimeError::Spawn(e));
                }
            }
        }
        drop(ready_tx);
        for _ in 0..threads.len() {
            if ready_rx.recv().is_err() {
                break;
            }
        }
        Ok(Runtime { handle, threads })
    }

    pub fn handle(&self) -> &RuntimeHandle {
        &self.handle
    }

    /// Drain (see the module docs) for at most `timeout`, then stop every
    /// reactor and join the threads. Messages sent after this are dropped.
    pub fn shutdown(mut self, timeout: Duration) -> ShutdownReport {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut drained = false;
        while Instant::now() < deadline {
            if self.quiet_round(deadline) {
                drained = true;
                break;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        if !drained {
            tracing::warn!(
                "runtime shutdown: reactors still busy after {timeout:?}, stopping anyway"
            );
        }
        self.stop_and_join();
        ShutdownReport {
            drained,
            elapsed: start.elapsed(),
        }
    }

    /// One drain probe: every reactor quiescent, and no message sent by
    /// anyone from before the first probe to after the last. A probe queues
    /// behind every message sent before it, and a quiescent reactor can only
    /// get work from a new message, so this is stable once true.
    fn quiet_round(&self, deadline: Instant) -> bool {
        let before = self.shared.sent.load(Ordering::SeqCst);
        for i in 0..self.reactors() {
            let (tx, rx) = mpsc::sync_channel(1);
            // Probes are not counted in `sent`.
            self.shared.mailboxes[i].push(Box::new(move |r: &mut Reactor| {
                let _ = tx.send(r.quiescent());
            }));
            let wait = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(true) => {}
                _ => return false,
            }
        }
        self.shared.sent.load(Ordering::SeqCst) == before
    }

    fn stop_and_join(&mut self) {
        self.handle.stop_all();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a reactor thread panicked");
            }
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop_and_join();
        }
    }
}

fn make_eventfd() -> Option<File> {
    // SAFETY: eventfd(2) takes no pointers; a negative return is an error.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        tracing::warn!(
            "eventfd failed ({}); interrupt mode will sleep in 1 ms steps",
            std::io::Error::last_os_error()
        );
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Some(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn pin_to(core: usize) -> std::io::Result<()> {
    // SAFETY: `set` is a plain bit set on our stack; CPU_ZERO/CPU_SET only
    // write inside it (CPU_SET ignores cores past its size), and
    // sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn reactor_main(
    id: usize,
    core: usize,
    rt: RuntimeHandle,
    cfg: RuntimeConfig,
    ready: mpsc::Sender<()>,
) {
    ON_REACTOR.with(|c| c.set(Some(id)));
    // However the thread ends (a panic included), blocked callers must see
    // that nothing queued will run any more.
    struct Exited(Arc<Mailbox>);
    impl Drop for Exited {
        fn drop(&mut self) {
            self.0.exited.store(true, Ordering::Release);
            if std::thread::panicking() {
                tracing::error!("a reactor thread panicked; its queue is abandoned");
            }
        }
    }
    let _exited = Exited(rt.shared.mailboxes[id].clone());
    if cfg.pin {
        if let Err(e) = pin_to(core) {
            tracing::warn!("reactor {id}: could not pin to core {core}: {e}; running unpinned");
        }
    }
    let mailbox = rt.shared.mailboxes[id].clone();
    let uring = if cfg.ring_entries > 0 {
        match Uring::new(cfg.ring_entries, cfg.ring_inflight) {
            Ok(mut u) => {
                if let Some(w) = mailbox.wake.as_ref() {
                    u.register_eventfd(w.as_raw_fd());
                }
                Some(u)
            }
            Err(e) => {
                tracing::warn!("reactor {id}: io_uring unavailable ({e}); file devices disabled");
                None
            }
        }
    } else {
        None
    };
    let mut r = Reactor {
        id,
        core,
        mode: cfg.mode,
        rt,
        mailbox,
        uring,
        pollers: Vec::with_capacity(64),
        removed: Vec::new(),
        next_poller: 1,
        timers: BinaryHeap::new(),
        timer_seq: 0,
        locals: HashMap::new(),
        pool: BufPool::new(cfg.pool_per_class),
        now: Instant::now(),
        stats: ReactorStats::default(),
    };
    let _ = ready.send(());
    drop(ready);
    r.run();
    r.finish();
}

/// A unit of work a reactor calls on every turn of its loop.
pub trait Poller {
    /// Do some work; return whether there was any.
    fn poll(&mut self, r: &mut Reactor) -> bool;
    /// Whether it holds work in progress (shutdown waits for none).
    fn busy(&self) -> bool {
        false
    }
}

impl<F: FnMut(&mut Reactor) -> bool> Poller for F {
    fn poll(&mut self, r: &mut Reactor) -> bool {
        self(r)
    }
}

/// Identifies a registered poller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PollerId(u64);

struct PollerEntry {
    id: PollerId,
    period: Option<Duration>,
    next_due: Instant,
    p: Box<dyn Poller>,
}

struct Timer {
    due: Instant,
    seq: u64,
    f: Box<dyn FnOnce(&mut Reactor)>,
}

impl PartialEq for Timer {
    fn eq(&self, o: &Self) -> bool {
        self.due == o.due && self.seq == o.seq
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timer {
    // Earliest first out of the max-heap.
    fn cmp(&self, o: &Self) -> CmpOrdering {
        o.due.cmp(&self.due).then(o.seq.cmp(&self.seq))
    }
}

/// Counters of one reactor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReactorStats {
    pub turns: u64,
    pub busy_turns: u64,
    pub messages: u64,
    pub sleeps: u64,
}

/// Messages handled per turn at most, so I/O is never starved.
const MSGS_PER_TURN: usize = 128;
/// Longest sleep in interrupt mode.
const MAX_SLEEP: Duration = Duration::from_millis(1);

/// One reactor: lives on its own thread, reached through `&mut Reactor` by
/// messages and pollers.
pub struct Reactor {
    id: usize,
    core: usize,
    mode: Mode,
    rt: RuntimeHandle,
    mailbox: Arc<Mailbox>,
    uring: Option<Uring>,
    pollers: Vec<PollerEntry>,
    removed: Vec<PollerId>,
    next_poller: u64,
    timers: BinaryHeap<Timer>,
    timer_seq: u64,
    locals: HashMap<u64, Rc<dyn Any>>,
    pool: BufPool,
    now: Instant,
    stats: ReactorStats,
}

impl Reactor {
    /// Index of this reactor (0-based, in the order cores were given).
    pub fn id(&self) -> usize {
        self.id
    }
    pub fn core(&self) -> usize {
        self.core
    }
    pub fn mode(&self) -> Mode {
        self.mode
    }
    pub fn runtime(&self) -> &RuntimeHandle {
        &self.rt
    }
    /// Time at the start of this turn of the loop.
    pub fn now(&self) -> Instant {
        self.now
    }
    pub fn stats(&self) -> ReactorStats {
        self.stats
    }
    /// This reactor's io_uring, shared by every file device channel on it.
    pub fn uring(&mut self) -> Option<&mut Uring> {
        self.uring.as_mut()
    }
    pub fn buf_pool(&mut self) -> &mut BufPool {
        &mut self.pool
    }

    /// Queue `f` on reactor `n` (this one included: it runs next turn).
    pub fn send_to(&self, n: usize, f: impl FnOnce(&mut Reactor) + Send + 'static) {
        self.rt.send(n, f);
    }
    pub fn send_boxed(&self, n: usize, m: Msg) {
        self.rt.send_boxed(n, m);
    }

    /// Register a poller called on every turn.
    pub fn register_poller(&mut self, p: impl Poller + 'static) -> PollerId {
        self.add_poller(None, Box::new(p))
    }

    /// Register a poller called at most once per `period`.
    pub fn register_timed_poller(
        &mut self,
        period: Duration,
        p: impl Poller + 'static,
    ) -> PollerId {
        self.add_poller(Some(period), Box::new(p))
    }

    fn add_poller(&mut self, period: Option<Duration>, p: Box<dyn Poller>) -> PollerId {
        let id = PollerId(self.next_poller);
        self.next_poller += 1;
        self.pollers.push(PollerEntry {
            id,
            period,
            next_due: self.now + period.unwrap_or_default(),
            p,
        });
        id
    }

    /// Remove a poller (it may be the one running). Dropped after the turn.
    pub fn unregister_poller(&mut self, id: PollerId) {
        self.removed.push(id);
    }

    /// Run `f` on this reactor once `delay` has passed.
    pub fn after(&mut self, delay: Duration, f: impl FnOnce(&mut Reactor) + 'static) {
        self.timer_seq += 1;
        self.timers.push(Timer {
            due: Instant::now() + delay,
            seq: self.timer_seq,
            f: Box::new(f),
        });
    }

    /// Keep `v` on this reactor under `key` (see [`next_object_id`]).
    pub fn set_local<T: 'static>(&mut self, key: u64, v: Rc<T>) {
        self.locals.insert(key, v);
    }

    /// The object under `key`, if it is a `T`.
    pub fn local<T: 'static>(&self, key: u64) -> Option<Rc<T>> {
        self.locals.get(&key)?.clone().downcast::<T>().ok()
    }

    pub fn remove_local(&mut self, key: u64) -> Option<Rc<dyn Any>> {
        self.locals.remove(&key)
    }

    /// Nothing queued, in flight, pending on a timer, or held by a poller.
    pub fn quiescent(&self) -> bool {
        self.mailbox.q.is_empty()
            && self.timers.is_empty()
            && self.uring.as_ref().is_none_or(|u| u.inflight() == 0)
            && self.pollers.iter().all(|p| !p.p.busy())
    }

    fn run(&mut self) {
        loop {
            self.now = Instant::now();
            self.stats.turns += 1;
            let mut work = false;
            let mut n = 0;
            while n < MSGS_PER_TURN {
                match self.mailbox.q.pop() {
                    Some(m) => {
                        m(self);
                        n += 1;
                    }
                    None => break,
                }
            }
            self.stats.messages += n as u64;
            work |= n > 0;
            if let Some(u) = self.uring.as_mut() {
                work |= u.reap();
            }
            work |= self.run_pollers();
            work |= self.run_timers();
            if let Some(u) = self.uring.as_mut() {
                u.flush();
            }
            if work {
                self.stats.busy_turns += 1;
            }
            if self.mailbox.stop.load(Ordering::Acquire) {
                break;
            }
            if !work && self.mode == Mode::Interrupt {
                self.sleep();
            }
        }
    }

    fn run_pollers(&mut self) -> bool {
        self.apply_removals();
        let mut list = std::mem::take(&mut self.pollers);
        let mut work = false;
        let now = self.now;
        for e in list.iter_mut() {
            if let Some(period) = e.period {
                if now < e.next_due {
                    continue;
                }
                e.next_due = now + period;
            }
            if !self.removed.is_empty() && self.removed.contains(&e.id) {
                continue;
            }
            work |= e.p.poll(self);
        }
        // Pollers registered while running went to the (empty) list.
        let added = std::mem::replace(&mut self.pollers, list);
        self.pollers.extend(added);
        self.apply_removals();
        work
    }

    fn apply_removals(&mut self) {
        if !self.removed.is_empty() {
            let removed = std::mem::take(&mut self.removed);
            self.pollers.retain(|e| !removed.contains(&e.id));
        }
    }

    fn run_timers(&mut self) -> bool {
        let mut work = false;
        while self.timers.peek().is_some_and(|t| t.due <= self.now) {
            let t = self.timers.pop().expect("peeked timer");
            (t.f)(self);
            work = true;
        }
        work
    }

    fn next_wake(&self) -> Duration {
        let mut d = MAX_SLEEP;
        if let Some(t) = self.timers.peek() {
            d = d.min(t.due.saturating_duration_since(Instant::now()));
        }
        for p in &self.pollers {
            if p.period.is_some() {
                d = d.min(p.next_due.saturating_duration_since(Instant::now()));
            }
        }
        d
    }

    fn sleep(&mut self) {
        let timeout = self.next_wake();
        if timeout.is_zero() {
            return;
        }
        self.mailbox.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let ready = !self.mailbox.q.is_empty()
            || self.mailbox.stop.load(Ordering::SeqCst)
            || self.uring.as_mut().is_some_and(|u| u.has_completions());
        if !ready {
            self.stats.sleeps += 1;
            match self.mailbox.wake.as_ref() {
                Some(w) => wait_readable(w, timeout),
                None => std::thread::sleep(timeout),
            }
        }
        self.mailbox.sleeping.store(false, Ordering::SeqCst);
        if let Some(mut w) = self.mailbox.wake.as_ref() {
            let mut b = [0u8; 8];
            let _ = w.read(&mut b);
        }
    }

    /// After the loop: let the ring's operations finish (their buffers are
    /// owned by pollers and locals), then drop everything on this thread.
    fn finish(&mut self) {
        if let Some(u) = self.uring.as_mut() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while u.inflight() > 0 && Instant::now() < deadline {
                u.flush();
                u.reap();
                std::thread::sleep(Duration::from_micros(100));
            }
            if u.inflight() > 0 {
                tracing::error!(
                    "reactor {}: {} io_uring operations never completed; leaking their buffers",
                    self.id,
                    u.inflight()
                );
                self.mailbox.exited.store(true, Ordering::Release);
                std::mem::forget(std::mem::take(&mut self.pollers));
                std::mem::forget(std::mem::take(&mut self.locals));
                if let Some(u) = self.uring.take() {
                    std::mem::forget(u);
                }
                return;
            }
        }
        // Messages still queued are dropped (callers of `call` see Stopped).
        self.mailbox.exited.store(true, Ordering::Release);
        while self.mailbox.q.pop().is_some() {}
        self.pollers.clear();
        self.timers.clear();
        self.locals.clear();
    }
}

fn wait_readable(f: &File, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd and a valid timespec on our stack; no
    // signal mask.
    unsafe {
        libc::ppoll(&mut pfd, 1, &ts, std::ptr::null());
    }
}
