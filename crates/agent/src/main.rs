//! `banger-agent`: see the library's documentation.

fn main() {
    // As the kernel's init (`init=` on the command line, see
    // banger_proto::guest): assemble the overlay root, then become systemd.
    if rustix::process::getpid().is_init() {
        std::process::exit(banger_agent::init::run());
    }
    match std::env::args().nth(1).as_deref() {
        None => std::process::exit(banger_agent::run()),
        Some("--version") => println!(
            "banger-agent {} (protocol {})",
            env!("CARGO_PKG_VERSION"),
            banger_proto::agent::PROTOCOL
        ),
        Some(_) => {
            eprintln!("usage: banger-agent [--version]  (runs as a service inside a banger guest)");
            std::process::exit(2);
        }
    }
}
