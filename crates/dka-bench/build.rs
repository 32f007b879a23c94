//! The shared libtorch link arguments (`build/libtorch_link.rs`), plus a small C++ shim
//! (`csrc/shim.cpp`) for libtorch functions that tch does not expose: the autocast dtype and
//! CPU autocast, and CUDA peak-memory statistics.
#[path = "../../build/libtorch_link.rs"]
mod libtorch_link;

use std::path::Path;

fn main() {
    libtorch_link::main();
    println!("cargo:rerun-if-changed=csrc/shim.cpp");
    let Ok(root) = std::env::var("LIBTORCH") else {
        return;
    };
    let root = Path::new(&root);
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("csrc/shim.cpp")
        .flag("-std=c++17")
        .flag("-w")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"));
    // The CUDA runtime headers come with the wheel's `nvidia-*` packages, next to `torch/`.
    // Without them (a CPU-only libtorch) the CUDA functions are stubs that report "unavailable".
    let lib = root.join("lib");
    let cuda_headers = ["nvidia/cu13/include", "nvidia/cuda_runtime/include"]
        .iter()
        .map(|c| root.join("..").join(c))
        .find(|d| d.join("cuda_runtime_api.h").exists());
    match cuda_headers {
        Some(dir) if lib.join("libc10_cuda.so").exists() => {
            build.include(dir);
            println!("cargo:rustc-link-search=native={}", lib.display());
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-lc10_cuda");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
        _ => {
            build.define("DKA_NO_CUDA", None);
        }
    }
    build.compile("dka_shim");
}
