//! Reactors: messages, calls, for_each, pollers, timers, modes, shutdown.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use mdraid_runtime::{Mode, Reactor, Runtime, RuntimeConfig, RuntimeError};

fn basics(cores: &[usize], mode: Mode) {
    let rt = start(cores, mode);
    assert_eq!(rt.reactors(), cores.len());
    for (i, &c) in cores.iter().enumerate() {
        let (id, core, on) = rt
            .call(i, |r| {
                (r.id(), r.core(), mdraid_runtime::reactor::current_reactor())
            })
            .unwrap();
        assert_eq!((id, core, on), (i, c, Some(i)));
    }
    assert!(matches!(
        rt.call(cores.len(), |_| ()),
        Err(RuntimeError::NoReactor(_))
    ));

    // for_each: every reactor runs it, then the completion runs once on the
    // chosen reactor, after all of them.
    let hits = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let h = hits.clone();
    let last = rt.reactors() - 1;
    rt.for_each(
        Arc::new(move |_r: &mut Reactor| {
            h.fetch_add(1, Ordering::SeqCst);
        }),
        last,
        {
            let hits = hits.clone();
            move |r| {
                tx.send((r.id(), hits.load(Ordering::SeqCst))).unwrap();
            }
        },
    );
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), (last, cores.len()));

    // Pollers run until unregistered; timers fire in deadline order.
    let (tx, rx) = mpsc::channel();
    rt.send(0, move |r| {
        let tx2 = tx.clone();
        let mut n = 0;
        let me = std::rc::Rc::new(std::cell::Cell::new(None));
        let me2 = me.clone();
        let id = r.register_poller(move |r: &mut Reactor| {
            n += 1;
            if n == 100 {
                tx2.send("poller done").unwrap();
                r.unregister_poller(me2.get().unwrap());
            }
            true
        });
        me.set(Some(id));
        let t1 = tx.clone();
        let t2 = tx.clone();
        r.after(Duration::from_millis(20), move |_| {
            t2.send("timer 20ms").unwrap()
        });
        r.after(Duration::from_millis(5), move |_| {
            t1.send("timer 5ms").unwrap()
        });
    });
    let mut got: Vec<&str> = (0..3).map(|_| rx.recv_timeout(DEADLINE).unwrap()).collect();
    let t5 = got.iter().position(|s| *s == "timer 5ms").unwrap();
    let t20 = got.iter().position(|s| *s == "timer 20ms").unwrap();
    assert!(t5 < t20, "timers out of order: {got:?}");
    got.sort();
    assert_eq!(got, vec!["poller done", "timer 20ms", "timer 5ms"]);

    // A timed poller runs repeatedly, not on every turn.
    let (tx, rx) = mpsc::channel();
    rt.send(last, move |r| {
        let mut n = 0;
        r.register_timed_poller(Duration::from_millis(2), move |_r: &mut Reactor| {
            n += 1;
            if n <= 3 {
                tx.send(n).unwrap();
            }
            false
        });
    });
    for want in 1..=3 {
        assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), want);
    }

    // Blocking calls are refused on a reactor thread.
    let h = rt.handle().clone();
    let refused = rt
        .call(0, move |_r| {
            matches!(h.call(0, |_| ()), Err(RuntimeError::OnReactor(0)))
        })
        .unwrap();
    assert!(refused);

    let t = Instant::now();
    let rep = rt.shutdown(DEADLINE);
    assert!(rep.drained, "idle runtime did not drain: {rep:?}");
    assert!(t.elapsed() < DEADLINE);
}

#[test]
fn two_reactors_poll_mode() {
    let _g = serial();
    basics(&[0, 1], Mode::Poll);
}

#[test]
fn one_reactor_poll_mode() {
    let _g = serial();
    basics(&[0], Mode::Poll);
}

#[test]
fn interrupt_mode_runs_and_sleeps() {
    let _g = serial();
    basics(&[0, 1], Mode::Interrupt);
    // An idle interrupt-mode reactor sleeps instead of spinning, and a
    // message wakes it.
    let rt = start(&[0, 1], Mode::Interrupt);
    std::thread::sleep(Duration::from_millis(50));
    let (turns, sleeps) = rt.call(1, |r| (r.stats().turns, r.stats().sleeps)).unwrap();
    assert!(sleeps > 0, "interrupt reactor never slept");
    // 50 ms of spinning would be millions of turns; sleeping ~1 ms each is
    // at most a few hundred. Generous bound.
    assert!(turns < 100_000, "interrupt reactor spun: {turns} turns");
    let t = Instant::now();
    let rep = rt.shutdown(DEADLINE);
    assert!(rep.drained);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "slow stop: {:?}",
        t.elapsed()
    );
}

#[test]
fn calls_after_stop_fail() {
    let _g = serial();
    let rt = start(&[0], Mode::Interrupt);
    let h = rt.handle().clone();
    rt.shutdown(DEADLINE);
    assert!(matches!(h.call(0, |_| 1), Err(RuntimeError::Stopped)));
}

#[test]
fn unpinnable_core_still_runs() {
    let _g = serial();
    // Core 1000 does not exist here: pinning fails with a warning and the
    // reactor runs unpinned.
    let rt = Runtime::start(RuntimeConfig {
        cores: vec![1000],
        mode: Mode::Interrupt,
        ..RuntimeConfig::default()
    })
    .unwrap();
    assert_eq!(rt.call(0, |r| r.core()).unwrap(), 1000);
    assert!(rt.shutdown(DEADLINE).drained);
}

#[test]
fn shutdown_waits_for_timers() {
    let _g = serial();
    let rt = start(&[0, 1], Mode::Poll);
    let (tx, rx) = mpsc::channel();
    rt.send(1, move |r| {
        r.after(Duration::from_millis(30), move |_| tx.send(()).unwrap());
    });
    let rep = rt.shutdown(DEADLINE);
    assert!(rep.drained);
    rx.try_recv().expect("timer ran before the reactor stopped");
}

#[test]
fn panicked_reactor_does_not_hang_callers() {
    let _g = serial();
    let rt = start(&[0, 1], Mode::Interrupt);
    rt.send(1, |_r| panic!("deliberate panic on reactor 1 (test)"));
    let deadline = Instant::now() + DEADLINE;
    loop {
        match rt.call(1, |_| ()) {
            Err(RuntimeError::Stopped) => break,
            Ok(()) => {
                assert!(Instant::now() < deadline, "reactor 1 never stopped");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{e}"),
        }
    }
    // The other reactor still works; shutdown does not hang.
    assert_eq!(rt.call(0, |r| r.id()).unwrap(), 0);
    let rep = rt.shutdown(Duration::from_secs(2));
    assert!(!rep.drained);
}
