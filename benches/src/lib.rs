//! Benchmarks of the chassis SDK and the resilience-tuning simulator.
//!
//! - [`sim`]: the resilience-tuning simulator (binary `resilience-sim`).
//! - [`raw_lapin`]: the raw-lapin publishing baseline of the broker benchmarks.
//! - `benches/*.rs`: criterion benchmarks; `benches/README.md` records their figures.

pub mod raw_lapin;
pub mod sim;
