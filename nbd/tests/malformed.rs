//! Malformed clients on raw sockets (garbage, bad magic, oversize and
//! out-of-range requests, unknown commands, half-closed sockets, idle and
//! flooding clients) while a well-behaved client keeps being served on the
//! same server, over a unix socket and over TCP loopback.

mod common;

use common::*;
use mdraid_nbd::client::{
    encode_info_request, encode_option, encode_request, greet, read_opt_reply, Client,
};
use mdraid_nbd::proto::*;
use mdraid_nbd::{Errno, ServerConfig};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLOSE_LIMIT: Duration = Duration::from_secs(10);

/// Greet and enter transmission on `export` with NBD_OPT_GO.
fn go(t: &Transport, export: &str) -> Sock {
    let mut s = Sock::connect(t);
    greet(&mut s).unwrap();
    s.write_all(&encode_option(OPT_GO, &encode_info_request(export, &[])))
        .unwrap();
    loop {
        let r = read_opt_reply(&mut s).unwrap();
        match r.rtype {
            REP_INFO => {}
            REP_ACK => return s,
            t => panic!("GO refused: {t:#x}"),
        }
    }
}

/// Read one simple reply header: (error, handle).
fn reply(s: &mut Sock) -> (u32, u64) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    assert_eq!(
        u32::from_be_bytes(h[0..4].try_into().unwrap()),
        SIMPLE_REPLY_MAGIC
    );
    (
        u32::from_be_bytes(h[4..8].try_into().unwrap()),
        u64::from_be_bytes(h[8..16].try_into().unwrap()),
    )
}

/// A well-behaved client: write, read back, compare, in a loop, with a
/// reconnect every 25 rounds. Counts completed rounds.
fn good_client(t: Transport, stop: Arc<AtomicBool>, rounds: Arc<AtomicU64>) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if Instant::now() > deadline {
            return Err("good client ran past its deadline".into());
        }
        let mut c = Client::connect(Sock::connect(&t), "disk").map_err(|e| e.to_string())?;
        for _ in 0..25 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let off = (i % 64) * 65536;
            let data = pattern(65536, i);
            c.write(off, &data, i.is_multiple_of(3))
                .map_err(|e| e.to_string())?;
            let back = c.read(off, 65536).map_err(|e| e.to_string())?;
            if back != data {
                return Err(format!("round {i}: data mismatch"));
            }
            if i.is_multiple_of(5) {
                c.flush().map_err(|e| e.to_string())?;
            }
            rounds.fetch_add(1, Ordering::SeqCst);
            i += 1;
        }
        let mut s = c.disconnect().map_err(|e| e.to_string())?;
        expect_closed(&mut s, CLOSE_LIMIT);
    }
    Ok(())
}

/// The good client completes a few more rounds.
fn still_served(rounds: &AtomicU64, after: &str) {
    let start = rounds.load(Ordering::SeqCst);
    wait_until(
        &format!("the good client to progress after {after}"),
        Duration::from_secs(20),
        || rounds.load(Ordering::SeqCst) >= start + 3,
    );
}

fn scenarios(t: &Transport, rounds: &AtomicU64, keep: &mut Vec<Sock>) {
    // Garbage right after connecting (the first 4 bytes are taken as
    // client flags with unknown bits).
    let mut s = Sock::connect(t);
    s.write_all(&pattern(4096, 1)).unwrap();
    let got = expect_closed(&mut s, CLOSE_LIMIT);
    assert_eq!(got.len(), GREETING_LEN, "only the greeting is sent");
    still_served(rounds, "garbage");

    // Bad client flags.
    let mut s = Sock::connect(t);
    s.write_all(&0xffff_fffcu32.to_be_bytes()).unwrap();
    expect_closed(&mut s, CLOSE_LIMIT);

    // Bad option magic.
    let mut s = Sock::connect(t);
    greet(&mut s).unwrap();
    let mut o = encode_option(OPT_LIST, &[]);
    o[..8].copy_from_slice(b"BADMAGIC");
    s.write_all(&o).unwrap();
    expect_closed(&mut s, CLOSE_LIMIT);
    still_served(rounds, "bad option magic");

    // NBD_OPT_EXPORT_NAME of an unknown export cannot be refused: closed.
    let mut s = Sock::connect(t);
    greet(&mut s).unwrap();
    s.write_all(&encode_option(OPT_EXPORT_NAME, b"no-such-export"))
        .unwrap();
    expect_closed(&mut s, CLOSE_LIMIT);

    // An option announcing 1 GiB of data: refused with TOO_BIG, the data is
    // skipped as it streams in; then the client gives up.
    let mut s = Sock::connect(t);
    greet(&mut s).unwrap();
    let mut h = Vec::new();
    h.extend_from_slice(&IHAVEOPT.to_be_bytes());
    h.extend_from_slice(&OPT_GO.to_be_bytes());
    h.extend_from_slice(&(1u32 << 30).to_be_bytes());
    s.write_all(&h).unwrap();
    let r = read_opt_reply(&mut s).unwrap();
    assert_eq!((r.opt, r.rtype), (OPT_GO, REP_ERR_TOO_BIG));
    for _ in 0..8 {
        s.write_all(&[0x42; 1 << 20]).unwrap();
    }
    drop(s);
    still_served(rounds, "an oversize option");

    // Structured replies are refused; the client goes on with simple ones.
    let mut s = Sock::connect(t);
    greet(&mut s).unwrap();
    s.write_all(&encode_option(OPT_STRUCTURED_REPLY, &[]))
        .unwrap();
    assert_eq!(read_opt_reply(&mut s).unwrap().rtype, REP_ERR_UNSUP);
    s.write_all(&encode_option(OPT_ABORT, &[])).unwrap();
    assert_eq!(read_opt_reply(&mut s).unwrap().rtype, REP_ACK);
    expect_closed(&mut s, CLOSE_LIMIT);

    // Bad request magic after the handshake.
    let mut s = go(t, "disk");
    let mut r = encode_request(0, CMD_READ, 1, 0, 512);
    r[0] = 0;
    s.write_all(&r).unwrap();
    expect_closed(&mut s, CLOSE_LIMIT);
    still_served(rounds, "bad request magic");

    // A write announcing 64 MiB (over the 32 MiB limit): closed.
    let mut s = go(t, "disk");
    s.write_all(&encode_request(0, CMD_WRITE, 1, 0, 64 << 20))
        .unwrap();
    let _ = s.write_all(&[0; 65536]);
    expect_closed(&mut s, CLOSE_LIMIT);
    still_served(rounds, "an oversize write");

    // Errors that keep the connection usable.
    let mut s = go(t, "disk");
    s.write_all(&encode_request(0, CMD_READ, 1, DISK_SIZE - 512, 1024))
        .unwrap();
    assert_eq!(reply(&mut s), (Errno::Inval.code(), 1));
    s.write_all(&encode_request(0, CMD_READ, 2, u64::MAX - 100, 512))
        .unwrap();
    assert_eq!(reply(&mut s), (Errno::Inval.code(), 2));
    s.write_all(&encode_request(0, CMD_WRITE, 3, DISK_SIZE, 4096))
        .unwrap();
    s.write_all(&[0xee; 4096]).unwrap();
    assert_eq!(reply(&mut s), (Errno::NoSpc.code(), 3));
    s.write_all(&encode_request(0, 42, 4, 0, 0)).unwrap();
    assert_eq!(reply(&mut s), (Errno::Inval.code(), 4));
    s.write_all(&encode_request(CMD_FLAG_DF, CMD_READ, 5, 0, 512))
        .unwrap();
    assert_eq!(reply(&mut s), (Errno::Inval.code(), 5));
    s.write_all(&encode_request(0, CMD_READ, 6, 0, 64 << 20))
        .unwrap();
    assert_eq!(reply(&mut s), (Errno::Inval.code(), 6));
    s.write_all(&encode_request(0, CMD_FLUSH, 7, 4096, 0))
        .unwrap();
    assert_eq!(reply(&mut s), (Errno::Inval.code(), 7));
    // ... and then a valid read works.
    s.write_all(&encode_request(0, CMD_READ, 8, 0, 512))
        .unwrap();
    assert_eq!(reply(&mut s), (0, 8));
    let mut data = [0u8; 512];
    s.read_exact(&mut data).unwrap();
    s.write_all(&encode_request(0, CMD_DISC, 9, 0, 0)).unwrap();
    assert!(expect_closed(&mut s, CLOSE_LIMIT).is_empty());
    still_served(rounds, "invalid requests");

    // Writes on the read-only export.
    let mut s = go(t, "ro");
    s.write_all(&encode_request(0, CMD_WRITE, 1, 0, 512))
        .unwrap();
    s.write_all(&[1; 512]).unwrap();
    assert_eq!(reply(&mut s), (Errno::Perm.code(), 1));
    s.write_all(&encode_request(0, CMD_TRIM, 2, 0, 512))
        .unwrap();
    assert_eq!(reply(&mut s), (Errno::Perm.code(), 2));
    drop(s);

    // Half-close at a message boundary: the pending read is still
    // answered, then the server closes.
    let mut s = go(t, "disk");
    s.write_all(&encode_request(0, CMD_READ, 77, 0, 4096))
        .unwrap();
    s.shutdown_write();
    let got = expect_closed(&mut s, CLOSE_LIMIT);
    assert_eq!(got.len(), 16 + 4096);
    assert_eq!(&got[8..16], &77u64.to_be_bytes());

    // Half-close in the middle of a request header: closed, no reply.
    let mut s = go(t, "disk");
    s.write_all(&encode_request(0, CMD_READ, 78, 0, 4096)[..10])
        .unwrap();
    s.shutdown_write();
    assert!(expect_closed(&mut s, CLOSE_LIMIT).is_empty());

    // Half-close in the middle of a write payload.
    let mut s = go(t, "disk");
    s.write_all(&encode_request(0, CMD_WRITE, 79, 0, 4096))
        .unwrap();
    s.write_all(&[9; 100]).unwrap();
    s.shutdown_write();
    assert!(expect_closed(&mut s, CLOSE_LIMIT).is_empty());

    // Half-close during the handshake.
    let mut s = Sock::connect(t);
    greet(&mut s).unwrap();
    s.write_all(&IHAVEOPT.to_be_bytes()[..5]).unwrap();
    s.shutdown_write();
    expect_closed(&mut s, CLOSE_LIMIT);
    still_served(rounds, "half-closed sockets");

    // An idle client that never sends anything, kept open.
    keep.push(Sock::connect(t));
    // A client that floods reads and never reads the replies: the server
    // thread for it blocks on its socket, nobody else does.
    let mut s = go(t, "disk");
    let mut msg = Vec::new();
    for h in 0..200u64 {
        msg.extend_from_slice(&encode_request(0, CMD_READ, h, 0, 1 << 20));
    }
    s.write_all(&msg).unwrap();
    keep.push(s);
    // A client stuck in the middle of a write payload.
    let mut s = go(t, "disk");
    s.write_all(&encode_request(0, CMD_WRITE, 1, 0, 1 << 20))
        .unwrap();
    s.write_all(&[3; 1000]).unwrap();
    keep.push(s);
    still_served(rounds, "idle, flooding and stuck clients");
}

fn run_transport(served: Served) {
    let t = served.transport.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let good = {
        let (t, stop, rounds) = (t.clone(), stop.clone(), rounds.clone());
        std::thread::spawn(move || good_client(t, stop, rounds))
    };
    let mut keep = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("the good client to start", Duration::from_secs(20), || {
            rounds.load(Ordering::SeqCst) > 0
        });
        scenarios(&t, &rounds, &mut keep);
    }));
    stop.store(true, Ordering::SeqCst);
    let good_result = good.join().expect("good client thread panicked");
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    good_result.unwrap();
    eprintln!(
        "good client completed {} rounds",
        rounds.load(Ordering::SeqCst)
    );
    // Once the last clients go away every connection thread ends by itself.
    drop(keep);
    let h = served.handle.as_ref().unwrap();
    wait_until("all connections to end", Duration::from_secs(20), || {
        h.active() == 0
    });
    assert!(h.accepted() >= 20, "accepted {}", h.accepted());
    served.stop();
}

#[test]
fn malformed_clients_unix() {
    run_transport(serve_unix("malformed", store(), ServerConfig::default()));
}

#[test]
fn malformed_clients_tcp() {
    run_transport(serve_tcp("malformed", store(), ServerConfig::default()));
}

/// Stopping the server closes connections that are idle, mid-handshake
/// and blocked writing to a client that does not read.
#[test]
fn shutdown_closes_stuck_connections() {
    let served = serve_unix("shutdown", store(), ServerConfig::default());
    let t = served.transport.clone();
    let mut idle = Sock::connect(&t);
    let mut handshaking = Sock::connect(&t);
    greet(&mut handshaking).unwrap();
    let mut flooder = go(&t, "disk");
    let mut msg = Vec::new();
    for h in 0..100u64 {
        msg.extend_from_slice(&encode_request(0, CMD_READ, h, 0, 1 << 20));
    }
    flooder.write_all(&msg).unwrap();
    let h = served.handle.as_ref().unwrap();
    wait_until("three connections", Duration::from_secs(10), || {
        h.active() == 3
    });
    std::thread::sleep(Duration::from_millis(100));
    served.stop();
    expect_closed(&mut idle, CLOSE_LIMIT);
    expect_closed(&mut handshaking, CLOSE_LIMIT);
    // The flooder gets whatever was in flight, then the close.
    expect_closed(&mut flooder, Duration::from_secs(30));
}
