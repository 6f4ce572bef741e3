//! The CLI binary; everything lives in the banger-cli crate.
fn main() -> std::process::ExitCode {
    banger_cli::main()
}
