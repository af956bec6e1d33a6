//! Benchmarks of the chassis SDK and the resilience-tuning simulator.
//!
//! - [`sim`]: the resilience-tuning simulator (binary `resilience-sim`).
//! - `benches/*.rs`: criterion benchmarks; `benches/README.md` records their figures.

pub mod sim;
