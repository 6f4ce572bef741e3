//! The daemon binary; everything lives in the banger-daemon crate.
fn main() -> std::process::ExitCode {
    banger_daemon::main()
}
