//! The `meridian` binary: everything lives in the library; see `meridian::cli`.
fn main() -> std::process::ExitCode {
    meridian::cli::main()
}
