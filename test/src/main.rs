//! Simulator command line: replay one seed or sweep a range.
//!
//! ```text
//! mdraid-sim --seed N [--ops M] [--verbose] [--write-behind] [--direct P]
//!             [--resync-faults 0|1] [--initial-resync 0|1]
//! mdraid-sim --sweep FROM..TO [--ops M] [--write-behind] [--direct P]
//!             [--resync-faults 0|1] [--initial-resync 0|1]
//! ```
//!
//! `--write-behind` runs the write-mostly workload's scenario of each seed
//! (`Scenario::write_behind`) instead of the general one. `--direct P`
//! sets the chance that the host tries the direct path for a user read or
//! write (default: the seed's own). `--resync-faults` and
//! `--initial-resync` turn member faults during resyncs and the initial
//! resync of a new array on (1) or off (0) (default: the seed's own).

use std::process::ExitCode;

use mdraid_sim::{run, Scenario};

fn usage() -> ExitCode {
    eprintln!(
        "usage: mdraid-sim (--seed N | --sweep FROM..TO) [--ops M] [--verbose] [--write-behind] [--direct P] [--resync-faults 0|1] [--initial-resync 0|1]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seeds = None;
    let mut ops = mdraid_sim::DEFAULT_OPS;
    let mut verbose = false;
    let mut wb = false;
    let mut direct = None;
    let (mut resync_faults, mut initial_resync) = (None, None);
    let mut i = 0;
    while i < args.len() {
        let val = args.get(i + 1);
        match (args[i].as_str(), val) {
            ("--seed", Some(v)) => {
                let Ok(n) = v.parse::<u64>() else {
                    eprintln!("--seed: {v:?} is not a number");
                    return usage();
                };
                seeds = Some(n..n + 1);
                i += 1;
            }
            ("--sweep", Some(v)) => {
                let parsed = v
                    .split_once("..")
                    .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
                let Some((a, b)) = parsed.filter(|(a, b)| a < b) else {
                    eprintln!("--sweep: {v:?} is not FROM..TO with FROM < TO");
                    return usage();
                };
                seeds = Some(a..b);
                i += 1;
            }
            ("--ops", Some(v)) => {
                let Ok(n) = v.parse::<u64>() else {
                    eprintln!("--ops: {v:?} is not a number");
                    return usage();
                };
                ops = n;
                i += 1;
            }
            ("--direct", Some(v)) => {
                let Some(p) = v.parse::<f64>().ok().filter(|p| (0.0..=1.0).contains(p)) else {
                    eprintln!("--direct: {v:?} is not a chance in 0..=1");
                    return usage();
                };
                direct = Some(p);
                i += 1;
            }
            (flag @ ("--resync-faults" | "--initial-resync"), Some(v)) => {
                let on = match v.as_str() {
                    "0" => false,
                    "1" => true,
                    _ => {
                        eprintln!("{flag}: {v:?} is not 0 or 1");
                        return usage();
                    }
                };
                if flag == "--resync-faults" {
                    resync_faults = Some(on);
                } else {
                    initial_resync = Some(on);
                }
                i += 1;
            }
            ("--verbose", _) => verbose = true,
            ("--write-behind", _) => wb = true,
            _ => return usage(),
        }
        i += 1;
    }
    let Some(seeds) = seeds else {
        return usage();
    };
    let mut failed = 0;
    let total = seeds.end - seeds.start;
    let (mut direct_reads, mut direct_writes, mut direct_redone, mut direct_cut) = (0, 0, 0, 0);
    let mut direct_write_errors = 0;
    let (mut faults_in_resync, mut hole_lost, mut initial) = (0, 0, 0);
    for seed in seeds {
        let mut sc = Scenario::of(seed, ops, wb);
        if let Some(p) = direct {
            sc.direct = p;
        }
        if let Some(on) = resync_faults {
            sc.resync_faults = on;
        }
        if let Some(on) = initial_resync {
            sc.initial_resync = on;
        }
        if verbose {
            println!("{sc:#?}");
        }
        match run(&sc) {
            Ok(o) => {
                direct_reads += o.direct_reads;
                direct_writes += o.direct_writes;
                direct_redone += o.direct_redone;
                direct_cut += o.direct_cut;
                direct_write_errors += o.direct_write_errors;
                faults_in_resync += o.resync_faults;
                hole_lost += o.hole_lost_blocks;
                initial += u64::from(o.initial_resync);
                if verbose || total == 1 {
                    println!(
                        "seed {seed}: ok {} {} members, {} parents, {} blocks verified, {} child errors, {} members failed, {} written behind, {} write-mostly reads{}{}",
                        sc.geometry.level.name(),
                        sc.geometry.member_blocks.len(),
                        o.parents,
                        o.blocks_verified,
                        o.child_errors,
                        o.members_failed,
                        o.behind_writes,
                        o.write_mostly_reads,
                        if o.offline { ", offline" } else { "" },
                        o.ended_by_refusal
                            .as_ref()
                            .map_or(String::new(), |r| format!("; ended: {r}"))
                    );
                }
                if verbose {
                    println!("{o:#?}");
                }
            }
            Err(v) => {
                failed += 1;
                println!("FAIL {v}");
            }
        }
    }
    println!(
        "resyncs: {initial} runs began with the initial resync; {faults_in_resync} member faults \
         injected during resyncs; {hole_lost} blocks lost to write holes"
    );
    println!(
        "{} passed, {} failed; direct path: {direct_reads} reads, {direct_writes} writes, \
         {direct_redone} redone as parents after a member I/O failed ({direct_write_errors} direct write errors, each failing its member), \
         {direct_cut} direct member writes cut by crashes",
        total - failed,
        failed
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
