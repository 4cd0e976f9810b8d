//! Generates the protobuf types of `proto/tickwire.proto` with prost, compiling
//! the schema with protox so that no `protoc` is needed on any machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/tickwire.proto");
    let fds = protox::compile(["proto/tickwire.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
