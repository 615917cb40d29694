//! Finds SPDK, generates bindings to its public headers, compiles the C
//! shim and links SPDK's shared libraries.
//!
//! SPDK is looked for in `$SPDK_DIR/build/lib/pkgconfig` (an SPDK source
//! tree built with shared libraries), then through pkg-config's own search
//! path. When `SPDK_DIR` is set and SPDK is not there, the build fails.
//! When it is not set and pkg-config finds no SPDK, the crate builds
//! empty (no `mdraid_spdk` cfg) and says so in a cargo warning, so the
//! workspace builds and tests on machines without SPDK.

use std::env;
use std::path::{Path, PathBuf};

/// SPDK libraries the module calls into. They are linked with
/// `--no-as-needed`: an SPDK app that loads the cdylib with `LD_PRELOAD`
/// gets them even when its own link dropped one.
const LIBS: &[&str] = &[
    "spdk_bdev",
    "spdk_thread",
    "spdk_json",
    "spdk_jsonrpc",
    "spdk_rpc",
    "spdk_log",
    "spdk_util",
    "spdk_env_dpdk",
];

/// Public headers the bindings are generated from.
const HEADERS: &[&str] = &[
    "stdinc.h",
    "bdev.h",
    "bdev_module.h",
    "thread.h",
    "rpc.h",
    "jsonrpc.h",
    "json.h",
    "env.h",
    "log.h",
    "util.h",
    "uuid.h",
    "string.h",
    "event.h",
];

/// pkg-config packages (SPDK's `.pc` files) the `mdraid_tgt` app links:
/// SPDK's app framework with its subsystems (bdev, NVMe-oF, sock, accel,
/// keyring, scheduler, vmd), every bdev/accel/sock/keyring/scheduler
/// module spdk_tgt has, the DPDK environment and DPDK itself, and the
/// system libraries. All linked with `--no-as-needed`: modules and
/// subsystems register from constructors, nothing refers to them.
const APP_PACKAGES: &[&str] = &[
    "spdk_event",
    "spdk_event_bdev",
    "spdk_event_nvmf",
    "spdk_event_vmd",
    "spdk_event_nbd",
    "spdk_bdev_modules",
    "spdk_accel_modules",
    "spdk_sock_modules",
    "spdk_keyring_modules",
    "spdk_scheduler_modules",
    "spdk_env_dpdk",
    "spdk_env_dpdk_rpc",
    "spdk_syslibs",
];

struct Spdk {
    include: Vec<PathBuf>,
    libdir: PathBuf,
}

fn from_pkg_config(dir: Option<&Path>) -> Result<Spdk, String> {
    if let Some(dir) = dir {
        let old = env::var_os("PKG_CONFIG_PATH").unwrap_or_default();
        let mut paths = vec![dir.to_path_buf()];
        paths.extend(env::split_paths(&old));
        let joined = env::join_paths(paths).map_err(|e| e.to_string())?;
        // SAFETY (of the environment): a build script is single-threaded.
        env::set_var("PKG_CONFIG_PATH", joined);
    }
    let lib = pkg_config::Config::new()
        .cargo_metadata(false)
        .env_metadata(false)
        .print_system_libs(false)
        .probe("spdk_bdev")
        .map_err(|e| e.to_string())?;
    let libdir = lib
        .link_paths
        .iter()
        .find(|p| p.join("libspdk_bdev.so").exists())
        .cloned()
        .ok_or_else(|| {
            "pkg-config's spdk_bdev has no libspdk_bdev.so (SPDK must be built with --with-shared)"
                .to_string()
        })?;
    let include = lib.include_paths.clone();
    if !include
        .iter()
        .any(|p| p.join("spdk/bdev_module.h").exists())
    {
        return Err(
            "pkg-config's spdk_bdev has no include directory with spdk/bdev_module.h".into(),
        );
    }
    Ok(Spdk { include, libdir })
}

/// `$SPDK_DIR` without pkg-config: the tree's own layout.
fn from_tree(dir: &Path) -> Option<Spdk> {
    let libdir = dir.join("build/lib");
    let include = [dir.join("build/include"), dir.join("include")]
        .into_iter()
        .find(|p| p.join("spdk/bdev_module.h").exists())?;
    libdir.join("libspdk_bdev.so").exists().then(|| Spdk {
        include: vec![include],
        libdir,
    })
}

fn find_spdk() -> Result<Option<Spdk>, String> {
    match env::var_os("SPDK_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let pc = dir.join("build/lib/pkgconfig");
            match from_pkg_config(Some(&pc)) {
                Ok(s) => Ok(Some(s)),
                Err(e) => from_tree(&dir).map(Some).ok_or_else(|| {
                    format!(
                        "SPDK_DIR={} has no SPDK built with shared libraries ({e})",
                        dir.display()
                    )
                }),
            }
        }
        None => Ok(from_pkg_config(None).ok()),
    }
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(mdraid_spdk)");
    println!("cargo::rerun-if-env-changed=SPDK_DIR");
    println!("cargo::rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/shim.c");
    println!("cargo::rerun-if-changed=src/wrapper.h");

    let spdk = match find_spdk() {
        Ok(Some(s)) => s,
        Ok(None) => {
            println!(
                "cargo::warning=SPDK not found (set SPDK_DIR to an SPDK tree built with shared libraries): \
                 mdraid-spdk builds without the SPDK host"
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    println!("cargo::rustc-cfg=mdraid_spdk");
    // Where the SPDK apps and scripts are, for the tests.
    if let Some(root) = spdk.libdir.parent().and_then(Path::parent) {
        println!("cargo::rustc-env=MDRAID_SPDK_ROOT={}", root.display());
    }
    println!(
        "cargo::rustc-env=MDRAID_SPDK_LIBDIR={}",
        spdk.libdir.display()
    );

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));

    // The C shim: the module and RPC registration constructors, and
    // wrappers of SPDK's `static inline` helpers. A static library the
    // crate links (bundled into the rlib): the Rust code refers to its
    // wrappers, so wherever the host's code is linked (the cdylib, the
    // `mdraid_tgt` binary) the shim's one object file comes with it,
    // constructors included; where nothing of the host is used (test
    // executables) it is left out, and SPDK is not needed.
    let mut build = cc::Build::new();
    build
        .file("src/shim.c")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(true)
        .cargo_metadata(false);
    for i in &spdk.include {
        build.include(i);
    }
    build.compile("mdraid_spdk_shim");
    println!("cargo::rustc-link-search=native={}", out.display());
    println!("cargo::rustc-link-lib=static=mdraid_spdk_shim");

    // SPDK's libraries, kept although the linker might think them
    // unneeded; the cdylib finds them by its runpath (or the app's
    // LD_LIBRARY_PATH).
    println!("cargo::rustc-link-arg-cdylib=-L{}", spdk.libdir.display());
    println!("cargo::rustc-link-arg-cdylib=-Wl,--no-as-needed");
    for l in LIBS {
        println!("cargo::rustc-link-arg-cdylib=-l{l}");
    }
    println!("cargo::rustc-link-arg-cdylib=-Wl,--as-needed");
    println!(
        "cargo::rustc-link-arg-cdylib=-Wl,-rpath,{}",
        spdk.libdir.display()
    );

    app_link_args(&spdk);

    // Bindings, from the public headers only.
    let mut header = String::new();
    for h in HEADERS {
        header.push_str(&format!("#include <spdk/{h}>\n"));
    }
    header.push_str("#include \"wrapper.h\"\n");
    let mut b = bindgen::Builder::default()
        .header_contents("mdraid_spdk_all.h", &header)
        .clang_arg(format!(
            "-I{}",
            Path::new("src").canonicalize().expect("src").display()
        ))
        .allowlist_recursively(true)
        // Nothing newer than the workspace's rust-version.
        .rust_target(bindgen::RustTarget::stable(85, 0).expect("a Rust version bindgen knows"))
        .derive_default(true)
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for i in &spdk.include {
        b = b.clang_arg(format!("-I{}", i.display()));
    }
    for f in [
        // threads, messages, pollers, io_devices
        "spdk_get_thread",
        "spdk_thread_send_msg",
        "spdk_thread_get_name",
        "spdk_thread_is_app_thread",
        "spdk_poller_register_named",
        "spdk_poller_unregister",
        "spdk_io_device_register",
        "spdk_io_device_unregister",
        "spdk_get_io_channel",
        "spdk_put_io_channel",
        "spdk_io_channel_get_thread",
        "spdk_for_each_channel",
        "spdk_for_each_channel_continue",
        "spdk_io_channel_iter_get_channel",
        "spdk_io_channel_iter_get_ctx",
        "spdk_get_ticks",
        "spdk_get_ticks_hz",
        // bdevs
        "spdk_bdev_open_ext",
        "spdk_bdev_close",
        "spdk_bdev_desc_get_bdev",
        "spdk_bdev_get_by_name",
        "spdk_bdev_first",
        "spdk_bdev_next",
        "spdk_bdev_get_name",
        "spdk_bdev_get_block_size",
        "spdk_bdev_get_num_blocks",
        "spdk_bdev_get_buf_align",
        "spdk_bdev_get_uuid",
        "spdk_bdev_has_write_cache",
        "spdk_bdev_io_type_supported",
        "spdk_bdev_get_io_channel",
        "spdk_bdev_read_blocks",
        "spdk_bdev_write_blocks",
        "spdk_bdev_readv_blocks",
        "spdk_bdev_writev_blocks",
        "spdk_bdev_flush_blocks",
        "spdk_bdev_unmap_blocks",
        "spdk_bdev_write_zeroes_blocks",
        "spdk_bdev_reset",
        "spdk_bdev_free_io",
        "spdk_bdev_queue_io_wait",
        "spdk_bdev_module_claim_bdev",
        "spdk_bdev_module_release_bdev",
        "spdk_bdev_module_examine_done",
        "spdk_bdev_register",
        "spdk_bdev_unregister",
        "spdk_bdev_destruct_done",
        "spdk_bdev_io_complete",
        "spdk_bdev_io_get_buf",
        "spdk_bdev_io_get_io_channel",
        // RPC and JSON
        "spdk_jsonrpc_begin_result",
        "spdk_jsonrpc_end_result",
        "spdk_jsonrpc_send_bool_response",
        "spdk_jsonrpc_send_error_response",
        "spdk_json_write_begin",
        "spdk_json_write_end",
        "spdk_json_write_val",
        "spdk_json_write_val_raw",
        "spdk_json_write_name",
        "spdk_json_write_object_begin",
        "spdk_json_write_object_end",
        "spdk_json_write_named_string",
        // memory, log, uuid
        "spdk_dma_zmalloc",
        "spdk_dma_free",
        "spdk_log",
        "spdk_uuid_generate",
        "spdk_uuid_fmt_lower",
        // the app framework (mdraid_tgt)
        "spdk_app_opts_init",
        "spdk_app_parse_args",
        "spdk_app_start",
        "spdk_app_fini",
        "spdk_app_stop",
        // the shim
        "mdraid_shim_.*",
    ] {
        b = b.allowlist_function(f);
    }
    for t in [
        "spdk_bdev",
        "spdk_bdev_io",
        "spdk_bdev_fn_table",
        "spdk_bdev_io_wait_entry",
        "spdk_bdev_io_type",
        "spdk_bdev_io_status",
        "spdk_bdev_event_type",
        "spdk_json_val",
        "spdk_json_val_type",
        "spdk_log_level",
        "spdk_thread_poller_rc",
        "spdk_app_opts",
        "spdk_app_parse_args_rvals",
    ] {
        b = b.allowlist_type(t);
    }
    for v in [
        "SPDK_POLLER_.*",
        "SPDK_BDEV_IO_.*",
        "SPDK_BDEV_EVENT_.*",
        "SPDK_LOG_.*",
        "SPDK_JSON_VAL_.*",
        "SPDK_ENV_.*",
        "SPDK_UUID_STRING_LEN",
        "SPDK_IO_CHANNEL_STRUCT_SIZE",
        "SPDK_APP_PARSE_ARGS_.*",
    ] {
        b = b.allowlist_var(v);
    }
    let bindings = b.generate().expect("bindgen over SPDK's headers");
    bindings
        .write_to_file(out.join("spdk.rs"))
        .expect("write bindings");
}

/// Link arguments of the `mdraid_tgt` binary: [`APP_PACKAGES`] as
/// pkg-config lists them (search paths, libraries, runpaths).
fn app_link_args(spdk: &Spdk) {
    let mut paths: Vec<PathBuf> = vec![spdk.libdir.clone()];
    let mut libs: Vec<String> = Vec::new();
    let mut flags: Vec<String> = Vec::new();
    for p in APP_PACKAGES {
        let lib = match pkg_config::Config::new()
            .cargo_metadata(false)
            .env_metadata(false)
            .print_system_libs(true)
            .probe(p)
        {
            Ok(l) => l,
            Err(e) => {
                println!(
                    "cargo::warning=pkg-config has no {p} ({}): mdraid_tgt may not link",
                    e.to_string().lines().next().unwrap_or_default()
                );
                continue;
            }
        };
        for lp in lib.link_paths {
            if !paths.contains(&lp) {
                paths.push(lp);
            }
        }
        for l in lib.libs {
            if !libs.contains(&l) {
                libs.push(l);
            }
        }
        for f in lib.ld_args.into_iter().flatten() {
            if !flags.contains(&f) {
                flags.push(f);
            }
        }
    }
    // Runpaths: SPDK's lib directory and the others pkg-config named
    // (isa-l's, in an SPDK tree), not the system's.
    // System directories go last, so an SPDK tree's own isa-l wins over
    // an older system one.
    let system = |p: &Path| p.starts_with("/usr/lib") || p.starts_with("/lib");
    paths.sort_by_key(|p| system(p));
    for p in &paths {
        println!("cargo::rustc-link-arg-bins=-L{}", p.display());
    }
    println!("cargo::rustc-link-arg-bins=-Wl,--no-as-needed");
    for l in &libs {
        println!("cargo::rustc-link-arg-bins=-l{l}");
    }
    println!("cargo::rustc-link-arg-bins=-Wl,--as-needed");
    for f in &flags {
        println!("cargo::rustc-link-arg-bins=-Wl,{f}");
    }
    println!("cargo::rustc-link-arg-bins=-pthread");
    for p in paths.iter().filter(|p| !system(p)) {
        println!("cargo::rustc-link-arg-bins=-Wl,-rpath,{}", p.display());
    }
}
