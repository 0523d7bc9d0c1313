//! Compile proto/quiver/v1/*.proto with protox (pure Rust, no system protoc) and generate the
//! tonic service code; also keep the encoded descriptor set for gRPC server reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The manifest folder of this build, read when the script runs: a script binary reused
    // from a build of another checkout (same target folder) must not read that one's protos.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        root.join("quiver/v1/online.proto"),
        root.join("quiver/v1/registry.proto"),
        root.join("quiver/v1/training.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("quiver_descriptor.bin"), fds.encode_to_vec())?;
    // Requests that do not decode are INVALID_ARGUMENT (crate::codec), not tonic's INTERNAL.
    tonic_prost_build::configure()
        .codec_path("crate::codec::QuiverCodec")
        .compile_fds(fds)?;
    Ok(())
}
