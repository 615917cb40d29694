//! Serve an in-memory export over NBD until killed.
//!
//! `cargo run -p mdraid-nbd --example memserver -- unix:/tmp/nbd.sock 64M`
//! `cargo run -p mdraid-nbd --example memserver -- tcp:127.0.0.1:10809 64M`
//!
//! The export is named `mem` (and is also the default export).

use mdraid_nbd::blocking::{self, MemStore};
use mdraid_nbd::ExportInfo;
use std::sync::Arc;

fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .first()
        .map(String::as_str)
        .unwrap_or("unix:/tmp/mdraid-nbd.sock");
    let size = args.get(1).and_then(|s| parse_size(s)).unwrap_or(64 << 20);
    let store = Arc::new(MemStore::new());
    let mut info = ExportInfo::new("mem", size);
    info.can_multi_conn = true;
    info.description = Some("mdraid-nbd in-memory export".into());
    store.add_export(info);
    if let Some(path) = addr.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        let l = std::os::unix::net::UnixListener::bind(path)?;
        eprintln!("serving nbd+unix:///mem?socket={path}");
        blocking::serve(l, store.clone(), store)
    } else {
        let a = addr.strip_prefix("tcp:").unwrap_or(addr);
        let l = std::net::TcpListener::bind(a)?;
        eprintln!("serving nbd://{}/mem", l.local_addr()?);
        blocking::serve(l, store.clone(), store)
    }
}
