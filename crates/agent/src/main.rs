//! `banger-agent`: see the library's documentation.

fn main() {
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
