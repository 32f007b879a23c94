//! `dka`: fine-tune frozen vision backbones with the Dual-Kernel Adapter and its baselines.
//! A thin binary over the library: everything, from parsing the arguments to printing the
//! error chain on one line, is [`dka_bench::cli::main`].
fn main() -> std::process::ExitCode {
    dka_bench::cli::main()
}
