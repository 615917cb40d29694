//! SPDK's own Python client (PyPI `spdk`, 26.5) against a unix socket
//! served by `Connection` and the fake daemon. Skipped, saying so, when the
//! client is not installed (`pip install spdk==26.5`).

mod common;

use common::FakeDaemon;
use mdraid_rpc::{ConnState, Connection};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;

fn serve(mut s: UnixStream, host: Arc<Mutex<FakeDaemon>>) {
    let mut conn = Connection::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut out = Vec::new();
        let st = conn.feed(&mut *host.lock().unwrap(), &buf[..n], &mut out);
        if s.write_all(&out).is_err() || st == ConnState::Close {
            return;
        }
    }
}

#[test]
fn spdk_python_client() {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let have = Command::new(&py)
        .args(["-c", "import spdk.rpc.client, spdk.spdk_rpc"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have {
        assert!(
            std::env::var("MDRAID_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "SPDK's Python client is not installed and MDRAID_REQUIRE_TOOLS=1 (run scripts/install-deps.sh)"
        );
        // Written to the real stderr so it shows despite output capture.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED spdk_python_client: SPDK's Python client is not installed (pip install spdk==26.5)"
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("mdraid-rpc-pytest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("rpc.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).unwrap();
    let host = Arc::new(Mutex::new(FakeDaemon::new()));
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let host = host.clone();
            thread::spawn(move || serve(s, host));
        }
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/spdk_client_test.py");
    let out = Command::new(&py).arg(script).arg(&sock).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "SPDK client test failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::io::stderr().write_all(&out.stdout);
}
