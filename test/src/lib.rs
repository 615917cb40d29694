//! Deterministic simulator for the mdraid engine.
//!
//! Virtual members live in memory. A seeded scheduler interleaves several
//! channels of one array, reorders child completions, injects faults
//! (transient and permanent I/O errors, slow members, host `ENOMEM`, tiny
//! resource pools) and plays the metadata path with a random commit delay.
//! An oracle knows what every acknowledged write put where and fails the run
//! on any stale or garbled read, any lost acknowledged write, any parent
//! completed twice or never, and any hang. Everything derives from one seed,
//! so a seed replays its run exactly.

pub mod rng;
pub mod scenario;
pub mod sim;

pub use scenario::{Scenario, DEFAULT_OPS};
pub use sim::{run, Outcome, Violation};
