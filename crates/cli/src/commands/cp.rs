//! `banger vm cp SRC DST` (and `banger cp`), as `docker cp`: one side is
//! `NAME:PATH` in a VM, the other a host path or `-` (a tar stream on stdin
//! or stdout). Files and whole trees, in both directions, as a tar stream
//! over SSH: modes, symlinks (as links) and mtimes are kept, and nothing is
//! held in memory, so a file of any size streams.
//!
//! Where it lands, as with `docker cp` and `cp -r`: into DST when DST is an
//! existing directory (as DST/<basename of SRC>), else as DST itself (its
//! parent must exist). A copy is unpacked into a fresh temporary directory
//! beside its destination and renamed into place, so a failed copy leaves
//! nothing half-written at DST.
//!
//! The host side runs as the user (GNU tar, `--no-same-owner`): a hostile
//! guest's stream can do no more than the user could, and GNU tar refuses
//! members with `..` or absolute names and defers symlinks that point outside
//! until the end, so no write goes through a link the stream made.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use super::ssh::shell_quote as q;
use super::Env;
use crate::error::usage;
use crate::render::{Outcome, Render};

#[derive(Debug, Args)]
pub struct CpArgs {
    /// A host path, `NAME:PATH` in a VM, or `-` (a tar stream on stdin).
    pub src: String,
    /// A host path, `NAME:PATH` in a VM, or `-` (a tar stream on stdout).
    pub dst: String,
}

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Host(PathBuf),
    Stream,
    Guest { vm: String, path: String },
}

fn parse_end(s: &str) -> End {
    if s == "-" {
        return End::Stream;
    }
    // `NAME:PATH` where NAME is a VM name (no '/'); `./a:b` is a host path.
    if let Some((vm, path)) = s.split_once(':') {
        if !vm.is_empty() && !vm.contains('/') {
            return End::Guest {
                vm: vm.to_string(),
                path: path.to_string(),
            };
        }
    }
    End::Host(PathBuf::from(s))
}

#[derive(Serialize)]
struct Copied {
    from: String,
    to: String,
}

impl Render for Copied {
    fn text(&self) -> String {
        String::new()
    }
}

/// The guest (or host) shell script that unpacks a tar stream of one
/// top-level entry named `base` from stdin to `dst` with cp's rules.
fn unpack_script(dst: &str, base: Option<&str>, tar_flags: &str) -> String {
    match base {
        // A stream of several entries (`-` as SRC): DST must be a directory.
        None => format!(
            "set -e; d={d}; [ -d \"$d\" ] || {{ echo \"$d: not a directory\" >&2; exit 1; }}; tar -xf - {tar_flags} -C \"$d\"",
            d = q(dst)
        ),
        Some(base) => format!(
            "set -e; d={d}; b={b}
if [ -d \"$d\" ]; then parent=\"$d\"; target=\"$d/$b\"; else parent=$(dirname -- \"$d\"); target=\"$d\"; fi
[ -d \"$parent\" ] || {{ echo \"$parent: no such directory\" >&2; exit 1; }}
t=$(mktemp -d \"$parent/.banger-cp.XXXXXX\"); trap 'rm -rf \"$t\"' EXIT
tar -xf - {tar_flags} -C \"$t\"
if [ -d \"$target\" ] && [ ! -L \"$target\" ] && [ -d \"$t/$b\" ]; then cp -a \"$t/$b/.\" \"$target/\"; else rm -rf -- \"$target\"; mv -- \"$t/$b\" \"$target\"; fi",
            d = q(dst),
            b = q(base)
        ),
    }
}

/// `dirname` and `basename` of a path given on either side (`/` alone and
/// paths ending in `/.` copy the directory's contents as `docker cp` does:
/// treated as the directory itself here).
fn split(path: &str) -> anyhow::Result<(String, String)> {
    let trimmed = path.trim_end_matches('/');
    let p = Path::new(if trimmed.is_empty() { "/" } else { trimmed });
    let base = p
        .file_name()
        .and_then(|b| b.to_str())
        .filter(|b| *b != "..")
        .with_context(|| format!("{path:?}: name a file or directory"))?
        .to_string();
    let parent = p
        .parent()
        .map(|d| d.to_string_lossy().into_owned())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| ".".into());
    Ok((parent, base))
}

pub fn cp(env: &Env, a: CpArgs) -> anyhow::Result<Outcome> {
    let (src, dst) = (parse_end(&a.src), parse_end(&a.dst));
    let done = Copied {
        from: a.src.clone(),
        to: a.dst.clone(),
    };
    match (src, dst) {
        (End::Guest { .. }, End::Guest { .. }) => Err(usage(
            "copy between two VMs through the host: banger vm cp A:P - | banger vm cp - B:DIR",
        )),
        (End::Host(_) | End::Stream, End::Host(_) | End::Stream) => {
            Err(usage("one side must be NAME:PATH in a VM"))
        }
        (from, End::Guest { vm, path }) => {
            let mut ssh = super::ssh::ssh_to(env, &vm)?;
            ssh.arg("-T").arg("--");
            let st = match from {
                End::Stream => {
                    ssh.arg(unpack_script(&path, None, "--no-same-owner"));
                    ssh.stdin(Stdio::inherit());
                    ssh.status().context("cannot run ssh")?
                }
                End::Host(p) => {
                    std::fs::symlink_metadata(&p).with_context(|| format!("{}", p.display()))?;
                    let (parent, base) = split(&p.to_string_lossy())?;
                    let mut tar = Command::new("tar")
                        .arg("-C")
                        .arg(&parent)
                        .args(["-cf", "-", "--"])
                        .arg(&base)
                        .stdout(Stdio::piped())
                        .spawn()
                        .context("cannot run tar")?;
                    // Owned by root in the guest, as `docker cp` does.
                    ssh.arg(unpack_script(&path, Some(&base), "--no-same-owner"));
                    ssh.stdin(tar.stdout.take().context("tar's stdout")?);
                    let st = ssh.status().context("cannot run ssh")?;
                    let tst = tar.wait()?;
                    if !tst.success() {
                        bail!("tar of {} failed ({tst})", p.display());
                    }
                    st
                }
                End::Guest { .. } => unreachable!("matched above"),
            };
            if !st.success() {
                bail!("copy into {vm}:{path} failed ({st})");
            }
            Ok(Outcome::of(done))
        }
        (End::Guest { vm, path }, to) => {
            let (parent, base) = split(&path)?;
            let mut ssh = super::ssh::ssh_to(env, &vm)?;
            ssh.arg("-T").arg("--").arg(format!(
                "set -e; cd -- {} && tar -cf - -- {}",
                q(&parent),
                q(&base)
            ));
            let st = match to {
                End::Stream => {
                    ssh.stdout(Stdio::inherit());
                    ssh.status().context("cannot run ssh")?
                }
                End::Host(p) => {
                    let mut remote = ssh
                        .stdout(Stdio::piped())
                        .spawn()
                        .context("cannot run ssh")?;
                    // Modes as they were (-p), whatever the user's umask.
                    let script =
                        unpack_script(&p.to_string_lossy(), Some(&base), "--no-same-owner -p");
                    let local = Command::new("sh")
                        .arg("-c")
                        .arg(script)
                        .stdin(remote.stdout.take().context("ssh's stdout")?)
                        .status()
                        .context("cannot run sh")?;
                    let st = remote.wait()?;
                    if !local.success() {
                        bail!("unpacking into {} failed ({local})", p.display());
                    }
                    st
                }
                End::Guest { .. } => unreachable!("matched above"),
            };
            if !st.success() {
                bail!("copy from {vm}:{path} failed ({st})");
            }
            Ok(Outcome::of(done))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends() {
        assert_eq!(parse_end("-"), End::Stream);
        assert_eq!(
            parse_end("box:/root/a b"),
            End::Guest {
                vm: "box".into(),
                path: "/root/a b".into()
            }
        );
        assert_eq!(parse_end("./x:y"), End::Host("./x:y".into()));
        assert_eq!(parse_end("/tmp/f"), End::Host("/tmp/f".into()));
        assert_eq!(split("/root/dir/").unwrap(), ("/root".into(), "dir".into()));
        assert_eq!(split("file").unwrap(), (".".into(), "file".into()));
        assert!(split("/").is_err());
        assert!(split("a/..").is_err());
    }

    /// The unpack script, run on the host: into an existing directory, as a
    /// new name, and over an existing file; nothing left behind.
    #[test]
    fn unpack_follows_cp_rules() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("tree/empty")).unwrap();
        std::fs::write(src.join("tree/x"), "x").unwrap();
        std::os::unix::fs::symlink("x", src.join("tree/link")).unwrap();
        let pack_unpack = |dst: &Path| {
            let mut tar = Command::new("tar")
                .arg("-C")
                .arg(&src)
                .args(["-cf", "-", "tree"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let st = Command::new("sh")
                .arg("-c")
                .arg(unpack_script(
                    &dst.to_string_lossy(),
                    Some("tree"),
                    "--no-same-owner",
                ))
                .stdin(tar.stdout.take().unwrap())
                .status()
                .unwrap();
            assert!(st.success());
            assert!(tar.wait().unwrap().success());
        };
        let into = t.path().join("into");
        std::fs::create_dir(&into).unwrap();
        pack_unpack(&into);
        assert_eq!(std::fs::read_to_string(into.join("tree/x")).unwrap(), "x");
        assert!(into.join("tree/empty").is_dir());
        assert_eq!(
            std::fs::read_link(into.join("tree/link")).unwrap(),
            Path::new("x")
        );
        let named = t.path().join("named");
        pack_unpack(&named);
        assert_eq!(std::fs::read_to_string(named.join("x")).unwrap(), "x");
        let leftovers: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".banger-cp"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
