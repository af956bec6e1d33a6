//! Generates the Rust code of `inventory.proto` in pure Rust: protox parses the file into a
//! descriptor set (no `protoc` on the machine), tonic's prost build writes the messages, the
//! client and the server from it. The encoded descriptor set is kept for gRPC reflection.

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=inventory.proto");
    let fds = protox::compile(["inventory.proto"], ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("inventory_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // The generated client takes any channel (the chassis `GrpcClient`); no tonic
        // transport is needed here.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
