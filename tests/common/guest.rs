//! What the tests that build or boot a real guest share: the static agent,
//! and homes whose builds use one cache across homes and runs
//! (`$BANGER_TEST_ASSETS/build`, default /var/cache/banger-test/build). The
//! first run on a machine builds the kernel (~10 min on 2 cores) and the
//! image (~1-2 min); later runs take them from the cache as long as their
//! inputs are unchanged.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::{require_root, Home};

pub fn assets() -> PathBuf {
    std::env::var_os("BANGER_TEST_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/banger-test"))
}

/// The static agent: `BANGER_TEST_AGENT_BIN`, else built with the documented
/// command into `$BANGER_TEST_ASSETS/agent-target` (cargo makes it a no-op
/// when nothing changed).
pub fn static_agent() -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("BANGER_TEST_AGENT_BIN") {
                return PathBuf::from(p);
            }
            let target = assets().join("agent-target");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .args([
                    "build",
                    "--release",
                    "-p",
                    "banger-agent",
                    "--target",
                    "x86_64-unknown-linux-gnu",
                ])
                .env("CARGO_TARGET_DIR", &target)
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .status()
                .expect("run cargo");
            assert!(status.success(), "building the static agent failed");
            target.join("x86_64-unknown-linux-gnu/release/banger-agent")
        })
        .clone()
}

/// A home whose builds use the shared cache and the static agent.
pub fn build_home() -> Home {
    require_root();
    let h = Home::new();
    // agent_bin is a top-level key: it goes before the sections.
    let path = h.path().join("config.toml");
    let rest = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!(
            "agent_bin = {:?}\n{rest}\n[build]\ncache_dir = {:?}\n",
            static_agent(),
            assets().join("build")
        ),
    )
    .unwrap();
    h
}
