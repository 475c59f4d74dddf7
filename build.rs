//! Generates the kms.v1 gRPC code from `proto/` with protox, so no system `protoc` is needed.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(
        [
            "kms/v1/auth.proto",
            "kms/v1/keys.proto",
            "kms/v1/users.proto",
            "kms/v1/audit.proto",
            "kms/v1/keyring.proto",
        ],
        ["proto"],
    )?;

    // `compile_fds` does not write the descriptor set; server reflection needs it.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("kms_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // A request that does not decode is INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::grpc::codec::ProstCodec")
        .compile_fds(fds)?;
    Ok(())
}
