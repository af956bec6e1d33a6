//! The repository README's quick start, compiled by `cargo test -p chassis-quickstart --doc`
//! with exactly the dependencies its `Cargo.toml` lists, so the first code a new user reads
//! keeps building as the crates change.

#![doc = include_str!("../../../README.md")]
