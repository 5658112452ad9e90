//! Records where libtorch's libraries are, so the worker runs without LD_LIBRARY_PATH on the
//! machine that built it. The path is a RUNPATH: LD_LIBRARY_PATH still overrides it, which is
//! how a GPU machine points the same binary at its own (CUDA) libtorch.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags,-rpath,{dir}/lib");
    }
}
