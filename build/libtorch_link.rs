//! Build script shared by every crate whose binaries or tests link libtorch.
//!
//! `torch-sys` finds libtorch through `LIBTORCH` (set by `.cargo/config.toml` to the
//! `.libtorch` symlink that `just setup` makes), but it leaves two things undone that would
//! bite a user (see `shared/LIBTORCH.md`):
//! - no rpath, so binaries would need `LD_LIBRARY_PATH` to start;
//! - `--as-needed` drops `libtorch_cuda.so`, so a CUDA build would silently run on CPU.
//!
//! Link arguments from a build script apply to this package's binaries, tests and benches.
use std::path::Path;

pub fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=../../build/libtorch_link.rs");
    let Ok(root) = std::env::var("LIBTORCH") else {
        return;
    };
    // What this script reads comes from the wheel behind LIBTORCH, whose path stays the same
    // when `just setup` installs another variant (or installs the first one while cargo is
    // already compiling, as `scripts/prepare.sh` does): rerun when the wheel changes. A file
    // that does not exist yet makes cargo rerun the script every build until it does.
    println!(
        "cargo:rerun-if-changed={}",
        Path::new(&root).join("version.py").display()
    );
    let lib = Path::new(&root).join("lib");
    // The wheel's `version.py` says which PyTorch this is (e.g. `2.11.0+cu130`); `dka info`
    // prints it next to the library it actually loaded.
    let version = std::fs::read_to_string(Path::new(&root).join("version.py")).unwrap_or_default();
    if let Some(v) = version
        .lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
    {
        println!(
            "cargo:rustc-env=DKA_LIBTORCH_VERSION={}",
            v.trim().trim_matches('\'')
        );
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
