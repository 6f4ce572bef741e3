//! Making the host resolve `*.vm` through our DNS server.
//!
//! With systemd-resolved the daemon routes the `vm` domain to the server's
//! bridge address, on the bridge link: `resolvectl dns IFACE ADDR` and
//! `resolvectl domain IFACE ~vm` (a routing-only domain, so resolved sends
//! only `*.vm` there and keeps every other name on the host's usual servers).
//! The setting lives in resolved's memory and goes away with the link;
//! [`revert`] removes it sooner. resolved talks to port 53 only, so the
//! server must listen on ADDR:53.
//!
//! Without resolved there is nothing to call: `banger doctor` prints
//! [`manual_fix`]. The commands go through [`CommandRunner`] so the exact
//! calls are tested with a recording fake.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use banger_core::proc::{Cmd, Finished, ProcError};
use banger_core::tools::find_in_path;

/// Where systemd-resolved keeps its runtime files while it runs.
const RESOLVED_RUN_DIR: &str = "/run/systemd/resolve";

/// The tool that talks to systemd-resolved.
const RESOLVECTL: &str = "resolvectl";

/// Which resolver the host uses, as far as we care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolver {
    /// systemd-resolved is running (its runtime directory exists) and
    /// `resolvectl` is installed: [`route_vm_domain`] works.
    Resolved,
    /// Anything else; the text says what was found, for `doctor`.
    Other(String),
}

/// Runs a program to its end and returns how it finished, whatever its
/// status. Synchronous: call it from `spawn_blocking` on the async runtime.
pub trait CommandRunner: Send + Sync {
    fn run(&self, program: &str, args: &[&str]) -> Result<Finished, ProcError>;
}

/// The real [`CommandRunner`]: runs the program from `PATH` through
/// [`banger_core::proc`], stdin closed, `LC_ALL=C`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&self, program: &str, args: &[&str]) -> Result<Finished, ProcError> {
        let mut cmd = Cmd::new(program);
        cmd.args(args).env("LC_ALL", "C");
        cmd.output()
    }
}

/// A `resolvectl` call that did not work; the message names the command,
/// and its status and stderr when it ran.
#[derive(Debug, thiserror::Error)]
pub enum ResolvedError {
    /// The command could not be started (resolvectl missing?).
    #[error(transparent)]
    Spawn(ProcError),
    /// The command ran and failed (or could not be watched).
    #[error(transparent)]
    Failed(ProcError),
}

/// What resolver the host uses.
pub fn detect() -> Resolver {
    detect_with(
        Path::new(RESOLVED_RUN_DIR),
        find_in_path(RESOLVECTL).is_some(),
        Path::new("/etc/resolv.conf"),
    )
}

fn detect_with(run_dir: &Path, have_resolvectl: bool, resolv_conf: &Path) -> Resolver {
    let running = run_dir.is_dir();
    match (running, have_resolvectl) {
        (true, true) => Resolver::Resolved,
        (true, false) => Resolver::Other(format!(
            "systemd-resolved without {RESOLVECTL} (install the systemd-resolved package)"
        )),
        (false, _) => Resolver::Other(describe_resolv_conf(resolv_conf)),
    }
}

/// A short description of a host without resolved, from its resolv.conf.
fn describe_resolv_conf(path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return format!("no systemd-resolved, no readable {}", path.display());
    };
    let servers: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .collect();
    if servers.is_empty() {
        "resolv.conf without nameservers (no systemd-resolved)".to_string()
    } else {
        format!(
            "resolv.conf (no systemd-resolved), nameservers {}",
            servers.join(", ")
        )
    }
}

/// Routes the `vm` domain to `dns` (port 53) on link `iface`:
/// `resolvectl dns IFACE ADDR`, then `resolvectl domain IFACE ~vm`. If the
/// second call fails the first is undone (best effort) before the error is
/// returned. Undone with [`revert`].
pub fn route_vm_domain(
    runner: &dyn CommandRunner,
    iface: &str,
    dns: Ipv4Addr,
) -> Result<(), ResolvedError> {
    let addr = dns.to_string();
    resolvectl(runner, &["dns", iface, &addr])?;
    if let Err(e) = resolvectl(runner, &["domain", iface, "~vm"]) {
        if let Err(undo) = revert(runner, iface) {
            tracing::debug!(error = %undo, iface, "cannot undo resolvectl dns");
        }
        return Err(e);
    }
    tracing::debug!(iface, dns = %dns, "routed the vm domain through systemd-resolved");
    Ok(())
}

/// Drops everything set on link `iface` (`resolvectl revert IFACE`).
pub fn revert(runner: &dyn CommandRunner, iface: &str) -> Result<(), ResolvedError> {
    resolvectl(runner, &["revert", iface])
}

fn resolvectl(runner: &dyn CommandRunner, args: &[&str]) -> Result<(), ResolvedError> {
    match runner.run(RESOLVECTL, args).and_then(Finished::ok) {
        Ok(_) => Ok(()),
        Err(e @ ProcError::Spawn { .. }) => Err(ResolvedError::Spawn(e)),
        Err(e) => Err(ResolvedError::Failed(e)),
    }
}

/// The one-line fix `banger doctor` prints on a host without
/// systemd-resolved, given the server's loopback listener. /etc/resolv.conf
/// cannot route one domain (nor name a port), so the fix is a dnsmasq rule.
pub fn manual_fix(loopback: SocketAddr) -> String {
    format!(
        "to resolve *.vm from the host, add `server=/vm/{}#{}` to the dnsmasq configuration \
         (e.g. /etc/dnsmasq.d/banger.conf) and point /etc/resolv.conf at dnsmasq, or use \
         systemd-resolved",
        loopback.ip(),
        loopback.port()
    )
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;
    use std::sync::Mutex;

    use super::*;

    /// Records every call; fails the calls whose first argument is in `fail`.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        fail: Vec<&'static str>,
        missing: bool,
    }

    impl CommandRunner for Recorder {
        fn run(&self, program: &str, args: &[&str]) -> Result<Finished, ProcError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{program} {}", args.join(" ")));
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            if self.missing {
                return Err(ProcError::Spawn {
                    program: program.into(),
                    args,
                    source: io::Error::from(io::ErrorKind::NotFound),
                });
            }
            let failed = args
                .first()
                .is_some_and(|a| self.fail.contains(&a.as_str()));
            Ok(Finished {
                program: program.into(),
                args,
                truncated: false,
                status: ExitStatus::from_raw(if failed { 1 << 8 } else { 0 }),
                stdout: Vec::new(),
                stderr: if failed {
                    b"Failed to set\n".to_vec()
                } else {
                    Vec::new()
                },
            })
        }
    }

    impl Recorder {
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[test]
    fn route_makes_the_two_calls() {
        let r = Recorder::default();
        route_vm_domain(&r, "banger0", Ipv4Addr::new(172, 30, 0, 1)).unwrap();
        assert_eq!(
            r.calls(),
            [
                "resolvectl dns banger0 172.30.0.1",
                "resolvectl domain banger0 ~vm"
            ]
        );
    }

    #[test]
    fn revert_call() {
        let r = Recorder::default();
        revert(&r, "banger0").unwrap();
        assert_eq!(r.calls(), ["resolvectl revert banger0"]);
    }

    #[test]
    fn failed_domain_call_is_undone() {
        let r = Recorder {
            fail: vec!["domain"],
            ..Default::default()
        };
        let e = route_vm_domain(&r, "br0", Ipv4Addr::new(10, 9, 0, 1)).unwrap_err();
        assert_eq!(
            r.calls(),
            [
                "resolvectl dns br0 10.9.0.1",
                "resolvectl domain br0 ~vm",
                "resolvectl revert br0"
            ]
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with("resolvectl domain br0 ~vm failed ("),
            "{msg}"
        );
        assert!(msg.ends_with(": Failed to set"), "{msg}");
    }

    #[test]
    fn failed_dns_call_stops_there() {
        let r = Recorder {
            fail: vec!["dns"],
            ..Default::default()
        };
        route_vm_domain(&r, "br0", Ipv4Addr::new(10, 9, 0, 1)).unwrap_err();
        assert_eq!(r.calls(), ["resolvectl dns br0 10.9.0.1"]);
    }

    #[test]
    fn missing_resolvectl_is_a_spawn_error() {
        let r = Recorder {
            missing: true,
            ..Default::default()
        };
        let e = revert(&r, "br0").unwrap_err();
        assert!(matches!(e, ResolvedError::Spawn { .. }), "{e}");
        assert!(e
            .to_string()
            .starts_with("cannot run resolvectl revert br0: "));
    }

    #[test]
    fn detect_runs() {
        // Whatever this host has; it must not panic.
        let r = detect();
        if let Resolver::Other(s) = &r {
            assert!(!s.is_empty());
        }
    }

    #[test]
    fn detect_cases() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("resolve");
        let conf = dir.path().join("resolv.conf");
        std::fs::write(
            &conf,
            "# x\nnameserver 10.1.2.3\nnameserver ::1\nsearch lan\n",
        )
        .unwrap();
        assert_eq!(
            detect_with(&run, true, &conf),
            Resolver::Other("resolv.conf (no systemd-resolved), nameservers 10.1.2.3, ::1".into())
        );
        std::fs::create_dir(&run).unwrap();
        assert_eq!(detect_with(&run, true, &conf), Resolver::Resolved);
        assert!(
            matches!(detect_with(&run, false, &conf), Resolver::Other(s) if s.contains("without resolvectl"))
        );
        let missing = dir.path().join("nope");
        assert!(
            matches!(detect_with(&missing, true, &missing), Resolver::Other(s) if s.contains("no readable"))
        );
    }

    #[test]
    fn manual_fix_names_the_listener() {
        let fix = manual_fix("127.0.0.1:5353".parse().unwrap());
        assert!(fix.contains("server=/vm/127.0.0.1#5353"), "{fix}");
        assert!(!fix.contains('\n'));
    }
}
