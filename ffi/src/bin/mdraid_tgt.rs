//! `mdraid_tgt`: an SPDK application with the `mdraid` bdev module, SPDK's
//! bdev modules (malloc, aio, nvme, error, ...) and its NVMe-oF target,
//! like SPDK's `spdk_tgt` with mdraid built in.
//!
//! It takes SPDK's usual application options (`-m` core mask, `-r` RPC
//! socket, `-c`/`--json` config, `--no-huge -s MiB`, `--no-pci`, `-h`, ...)
//! and `-f <file>` to write its pid to. Arrays and NVMe-oF subsystems are
//! made by the JSON config or over RPC (`scripts/rpc.py` with
//! `--plugin rpc_mdraid_plugin` for the `bdev_mdraid_*` methods).
//!
//! Built without SPDK (no `SPDK_DIR`, nothing found by pkg-config) it is a
//! stub that says so and exits with status 1.

#[cfg(mdraid_spdk)]
mod app {
    use std::ffi::{c_char, c_int, c_void, CStr, CString};
    use std::os::unix::ffi::OsStrExt;
    use std::sync::Mutex;

    use mdraid_spdk::spdk::{guard, log, Level};
    use mdraid_spdk::sys;

    /// `-f`: where to write the pid once the app runs.
    static PID_FILE: Mutex<Option<String>> = Mutex::new(None);

    const EINVAL: c_int = 22;

    unsafe extern "C" fn parse_arg(ch: c_int, arg: *mut c_char) -> c_int {
        guard("argument parsing", -EINVAL, || {
            if ch != c_int::from(b'f') || arg.is_null() {
                return -EINVAL;
            }
            // SAFETY: getopt's optarg: a NUL-terminated argv string.
            let path = unsafe { CStr::from_ptr(arg) }
                .to_string_lossy()
                .into_owned();
            *PID_FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
            0
        })
    }

    extern "C" {
        /// C's stdio, which SPDK's usage text went to.
        fn fflush(stream: *mut c_void) -> c_int;
    }

    unsafe extern "C" fn usage() {
        guard("usage", (), || {
            // SAFETY: fflush(NULL) flushes every C output stream, so this
            // line follows SPDK's (buffered) usage text.
            unsafe { fflush(std::ptr::null_mut()) };
            println!(" -f <file>                 pidfile: write the process id to this file");
        })
    }

    unsafe extern "C" fn started(_arg: *mut c_void) {
        guard("app start", (), || {
            let pid_file = PID_FILE.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(path) = pid_file {
                if let Err(e) = std::fs::write(&path, format!("{}\n", std::process::id())) {
                    log(
                        Level::Error,
                        &format!("mdraid_tgt: cannot write the pid file {path}: {e}"),
                    );
                    // SAFETY: the app framework is running (this is its
                    // start callback); stopping it is allowed from here.
                    unsafe { sys::spdk_app_stop(-1) };
                    return;
                }
            }
            log(Level::Notice, "mdraid_tgt: started (mdraid module loaded)");
        })
    }

    pub fn main() -> i32 {
        // argv as C strings (getopt may permute the pointers, not the text).
        let args: Vec<CString> = std::env::args_os()
            .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
            .collect();
        let mut argv: Vec<*mut c_char> = args.iter().map(|a| a.as_ptr() as *mut c_char).collect();
        argv.push(std::ptr::null_mut());
        let argc = args.len() as c_int;

        let mut opts = sys::spdk_app_opts::default();
        // SAFETY: opts is a zeroed spdk_app_opts of the size we pass.
        unsafe { sys::spdk_app_opts_init(&mut opts, std::mem::size_of::<sys::spdk_app_opts>()) };
        opts.name = c"mdraid_tgt".as_ptr();
        // SAFETY: argv is argc NUL-terminated strings and a NULL, alive
        // (in `args`) for the whole process; the getopt string and the
        // callbacks are 'static; no long options of our own.
        let rc = unsafe {
            sys::spdk_app_parse_args(
                argc,
                argv.as_mut_ptr(),
                &mut opts,
                c"f:".as_ptr(),
                std::ptr::null(),
                Some(parse_arg),
                Some(usage),
            )
        };
        if rc != sys::SPDK_APP_PARSE_ARGS_SUCCESS {
            // HELP (0): usage printed; FAIL: SPDK said why.
            return rc as i32;
        }
        // SAFETY: opts was initialized and filled above; `started` is a
        // 'static callback. spdk_app_start returns when the app stops;
        // spdk_app_fini then releases what it set up, once.
        let rc = unsafe {
            let rc = sys::spdk_app_start(&mut opts, Some(started), std::ptr::null_mut());
            sys::spdk_app_fini();
            rc
        };
        // `args` (which argv points into) lives until here.
        drop(args);
        rc
    }
}

#[cfg(mdraid_spdk)]
fn main() {
    std::process::exit(app::main());
}

#[cfg(not(mdraid_spdk))]
fn main() {
    eprintln!(
        "mdraid_tgt: this build has no SPDK. Rebuild with SPDK_DIR set to an SPDK \
         tree built with shared libraries (./configure --with-shared), e.g. \
         SPDK_DIR=/path/to/spdk cargo build -p mdraid-spdk --bin mdraid_tgt"
    );
    std::process::exit(1);
}
