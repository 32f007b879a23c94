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
    // The CUDA runtime headers come with the wheel's `nvidia-*` packages, next to `torch/`
    // (CUDA 13: `nvidia/cu13`; CUDA 12: `nvidia/cuda_runtime`, with the crt/ headers in
    // `nvidia/cuda_nvcc`). Without them the CUDA functions are stubs that report
    // "unavailable", and the build says so.
    let lib = root.join("lib");
    println!(
        "cargo:rerun-if-changed={}",
        root.join("version.py").display()
    );
    let site = root.join("..");
    let cuda_headers = ["nvidia/cu13/include", "nvidia/cuda_runtime/include"]
        .iter()
        .map(|c| site.join(c))
        .find(|d| d.join("cuda_runtime_api.h").exists());
    let libtorch_has_cuda = lib.join("libc10_cuda.so").exists();
    match cuda_headers {
        Some(dir) if libtorch_has_cuda => {
            build.include(dir);
            let nvcc = site.join("nvidia/cuda_nvcc/include");
            if nvcc.join("crt").is_dir() {
                build.include(nvcc);
            }
            println!("cargo:rustc-link-search=native={}", lib.display());
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-lc10_cuda");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
        _ => {
            if libtorch_has_cuda {
                println!(
                    "cargo:warning=dka's C++ shim is built WITHOUT CUDA: libtorch at {} has CUDA but \
                     no CUDA runtime headers were found beside it (nvidia/cu13/include or \
                     nvidia/cuda_runtime/include under {}); GPU names, native-bf16 detection and \
                     peak memory will read as unavailable. Run `just setup` again.",
                    root.display(),
                    site.display()
                );
            } else {
                println!(
                    "cargo:warning=dka is built without CUDA: the libtorch at {} is CPU-only \
                     (`just setup cuda=cpu`); runs use the CPU.",
                    root.display()
                );
            }
            build.define("DKA_NO_CUDA", None);
        }
    }
    build.compile("dka_shim");
}
