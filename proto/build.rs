fn main() {
    // Use the protoc shipped through crates.io, so nobody has to install one.
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    // SAFETY: build scripts are single-threaded.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=bnsweep.proto");
    tonic_prost_build::configure()
        .compile_protos(&["bnsweep.proto"], &["."])
        .expect("compiling bnsweep.proto");
}
