//! `banger vm workspace export NAME [--apply | -o FILE.patch|FILE.bundle]
//! [--base-commit REV] [PATH]`: the guest's own changes back to the host.
//!
//! What comes back is the guest's work only: its commits since the
//! workspace was prepared and its working tree (tracked and untracked,
//! never ignored files), never the host's dirty state that was sent in.
//! `prepare` leaves `refs/banger/base` in the guest's repository, pointing
//! at the snapshot commit `W` (the host's working tree as it was sent; see
//! [`workspace`](super::workspace)). Export asks the guest to commit its
//! working tree to a temporary commit `E` (through a temporary index, so the
//! guest's own index and HEAD are untouched) whose first parent is `W` and,
//! when the guest made commits, whose second parent is the guest's HEAD;
//! the guest streams a bundle of `E` (without `W`'s parents, which the host
//! has) to the host. `W..E` is the guest's net change.
//!
//! The guest is hostile. On the host the bundle is fetched into a throwaway
//! bare repository that borrows the host repository's objects (as prepare
//! does), with git's object checks on (`transfer.fsckObjects`), and every git
//! command there runs with `core.fsmonitor` and `core.hooksPath` cleared and
//! attributes read from the empty tree: nothing the guest wrote configures
//! git on the host, and no guest-written `.git` is ever used. The net change
//! is then checked by [`review`]: paths with a `.git` component, absolute
//! symlinks or ones that lead outside the repository (or into `.git`),
//! gitlinks and `.gitmodules` changes are refused; new hook-like paths
//! (`hooks/`, `.husky/`, `.githooks/`, `.pre-commit-config.yaml`, `lefthook.yml`,
//! `.envrc`), `.gitattributes` lines naming a filter, diff or merge driver,
//! and files that became executable are flagged in the summary.
//!
//! Then: a patch on stdout or in `-o FILE.patch` (`git diff --binary`), a
//! bundle in `-o FILE.bundle` (`refs/banger/export`, which also carries the
//! guest's commits), or `--apply`: when the host's working tree still equals
//! `W` the change is applied as it is; when the host moved on, the host's
//! current working state `H` (tracked and untracked files, through a
//! temporary index) is merged with `E` by `git merge-tree --write-tree`,
//! `W` the merge base. A conflict touches nothing and names the files; a
//! clean result is written into the host's working tree with `git apply`
//! of `H`'s diff to it (all or nothing; the host's index and HEAD are not
//! touched).
//!
//! The base is whatever the guest says `refs/banger/base` is: only the
//! change is checked, not trusted.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use banger_core::proc::{Cmd, In, Out};
use banger_proto::ErrorKind;
use serde::Serialize;

use super::ssh::shell_quote as q;
use super::Env;
use crate::error::{refuse, usage};
use crate::render::{Outcome, Render};

/// The most a guest may send (a hostile guest could stream forever).
const MAX_BUNDLE: u64 = 4 << 30;
/// Symlink targets and `.gitattributes` files bigger than this are not
/// read into memory: a link is refused, an attributes file is flagged.
const MAX_INSPECT: u64 = 1 << 20;
/// `git hash-object -t tree /dev/null`.
const EMPTY_TREE: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";

#[derive(Debug, Clone)]
pub struct ExportArgs {
    pub name: String,
    pub path: PathBuf,
    pub apply: bool,
    pub output: Option<PathBuf>,
    pub base_commit: Option<String>,
}

/// One path of the net change, as `git diff-tree --raw` gives it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Change {
    pub old_mode: u32,
    pub new_mode: u32,
    /// A (added), M, D, T (type change).
    pub status: char,
    pub path: Vec<u8>,
    /// The new symlink target (when the new side is a link).
    pub link_target: Option<Vec<u8>>,
    /// `.gitattributes` lines new on this side (when it is one).
    pub new_attr_lines: Vec<String>,
}

/// What [`review`] found.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Review {
    /// Reasons the change is refused (empty: accepted).
    pub refused: Vec<String>,
    /// Worth a look before trusting the change.
    pub flagged: Vec<String>,
}

const MODE_LINK: u32 = 0o120000;
const MODE_GITLINK: u32 = 0o160000;
const MODE_EXEC: u32 = 0o100755;

/// Shows a guest-chosen name safely: control characters (terminal escapes)
/// are escaped, the rest as it is.
pub(crate) fn shown(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A component git itself treats as `.git` (any case; NTFS's `git~1` and
/// trailing dots or spaces, which Windows drops).
fn is_dot_git(component: &[u8]) -> bool {
    let c = String::from_utf8_lossy(component).to_ascii_lowercase();
    let c = c.trim_end_matches(['.', ' ']);
    c == ".git" || c == "git~1"
}

fn last(path: &[u8]) -> &[u8] {
    path.rsplit(|&b| b == b'/').next().unwrap_or(path)
}

/// Where a relative link at `path` pointing at `target` lands, lexically,
/// as repository components; `None`: outside the repository.
fn resolve_link(path: &[u8], target: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut at: Vec<Vec<u8>> = path.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
    at.pop();
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                at.pop()?;
            }
            c => at.push(c.to_vec()),
        }
    }
    Some(at)
}

/// The path policy for a guest's change (see the module doc).
pub(crate) fn review(changes: &[Change]) -> Review {
    let mut r = Review::default();
    for c in changes {
        let p = shown(&c.path);
        if c.path.split(|&b| b == b'/').any(is_dot_git) {
            r.refused
                .push(format!("{p}: a path inside a .git directory"));
            continue;
        }
        if c.old_mode == MODE_GITLINK || c.new_mode == MODE_GITLINK {
            r.refused.push(format!("{p}: a gitlink (submodule commit)"));
            continue;
        }
        if last(&c.path).eq_ignore_ascii_case(b".gitmodules") {
            r.refused.push(format!("{p}: a .gitmodules change"));
            continue;
        }
        if c.status != 'D' && c.new_mode == MODE_LINK {
            match &c.link_target {
                None => r
                    .refused
                    .push(format!("{p}: a symlink whose target is too large to check")),
                Some(t) if t.first() == Some(&b'/') => r
                    .refused
                    .push(format!("{p}: an absolute symlink (to {})", shown(t))),
                Some(t) => match resolve_link(&c.path, t) {
                    None => r.refused.push(format!(
                        "{p}: a symlink pointing outside the repository (to {})",
                        shown(t)
                    )),
                    Some(to) if to.iter().any(|c| is_dot_git(c)) => r.refused.push(format!(
                        "{p}: a symlink into a .git directory (to {})",
                        shown(t)
                    )),
                    Some(_) => {}
                },
            }
        }
        if c.status == 'D' {
            continue;
        }
        let comps: Vec<&[u8]> = c.path.split(|&b| b == b'/').collect();
        let dirs = &comps[..comps.len().saturating_sub(1)];
        let name = last(&c.path);
        let hook_dir = dirs
            .iter()
            .any(|d| [&b"hooks"[..], b".husky", b".githooks"].contains(d));
        let hook_file = [
            &b".pre-commit-config.yaml"[..],
            b"lefthook.yml",
            b"lefthook.yaml",
            b".lefthook.yml",
            b".envrc",
        ]
        .contains(&name);
        if hook_dir || hook_file {
            r.flagged.push(format!(
                "{p}: hook-like ({} by the guest)",
                if c.status == 'A' { "added" } else { "changed" }
            ));
        }
        if c.new_mode == MODE_EXEC && c.old_mode != MODE_EXEC {
            r.flagged.push(format!("{p}: new executable file"));
        }
        for l in &c.new_attr_lines {
            r.flagged.push(format!(
                "{p}: names a driver your git config may run: {}",
                shown(l.as_bytes())
            ));
        }
    }
    r
}

/// Lines of a `.gitattributes` blob that name a filter, diff or merge driver.
fn driver_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            let l = l.trim();
            !l.starts_with('#')
                && l.split_whitespace().skip(1).any(|a| {
                    ["filter=", "diff=", "merge="]
                        .iter()
                        .any(|k| a.starts_with(k))
                })
        })
        .map(|l| l.trim().to_string())
        .collect()
}

/// Git, configured by us: in the throwaway repository nothing the guest
/// wrote can name a program to run.
fn git_safe(dir: &Path) -> Cmd<'static> {
    let mut c = Cmd::new("git");
    c.arg("-C").arg(dir).args([
        "-c",
        "core.fsmonitor=",
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        &format!("attr.tree={EMPTY_TREE}"),
        "-c",
        "transfer.fsckObjects=true",
    ]);
    for k in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_CONFIG_PARAMETERS",
    ] {
        c.command_mut().env_remove(k);
    }
    c
}

fn run_text(mut c: Cmd<'_>, what: &str) -> anyhow::Result<String> {
    c.stdout(Out::Capture(64 << 20));
    let done = c.run().with_context(|| what.to_string())?;
    Ok(done.stdout_text().trim_end().to_string())
}

/// The throwaway repository the guest's bundle lands in.
struct Scratch {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    /// The host repository's object store (alternates).
    host_objects: PathBuf,
}

impl Scratch {
    fn new(host_objects: PathBuf) -> anyhow::Result<Scratch> {
        let tmp = tempfile::Builder::new()
            .prefix("banger-export-")
            .tempdir()?;
        let dir = tmp.path().join("scratch.git");
        let mut c = git_safe(tmp.path());
        c.args(["init", "-q", "--bare", "scratch.git"]);
        run_text(c, "git init")?;
        std::fs::write(
            dir.join("objects/info/alternates"),
            format!("{}\n", host_objects.display()),
        )?;
        Ok(Scratch {
            _tmp: tmp,
            dir,
            host_objects,
        })
    }

    fn tmp(&self) -> &Path {
        self._tmp.path()
    }

    fn git(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut c = git_safe(&self.dir);
        c.args(args);
        run_text(c, &format!("git {}", args.join(" ")))
    }

    fn blob(&self, sha: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let size: u64 = self.git(&["cat-file", "-s", sha])?.parse()?;
        if size > MAX_INSPECT {
            return Ok(None);
        }
        let mut c = git_safe(&self.dir);
        c.args(["cat-file", "blob", sha]);
        Ok(Some(c.run()?.stdout))
    }

    /// The raw net change `from..to`, with link targets and attributes read.
    fn changes(&self, from: &str, to: &str) -> anyhow::Result<Vec<Change>> {
        let mut c = git_safe(&self.dir);
        c.args([
            "diff-tree",
            "-r",
            "-z",
            "--no-renames",
            "--no-abbrev",
            from,
            to,
        ]);
        c.stdout(Out::Capture(256 << 20));
        let raw = c.run().context("git diff-tree")?.stdout;
        let mut out = Vec::new();
        let mut it = raw.split(|&b| b == 0).filter(|s| !s.is_empty());
        while let Some(meta) = it.next() {
            let meta = String::from_utf8_lossy(meta);
            let f: Vec<&str> = meta.trim_start_matches(':').split(' ').collect();
            let path = it.next().context("diff-tree: a record without a path")?;
            let [om, nm, os, ns, st] = f[..] else {
                bail!("diff-tree: unexpected record {meta:?}");
            };
            let mode = |m: &str| u32::from_str_radix(m, 8).context("diff-tree mode");
            let (old_mode, new_mode) = (mode(om)?, mode(nm)?);
            let status = st.chars().next().unwrap_or('?');
            let link_target = if new_mode == MODE_LINK && status != 'D' {
                self.blob(ns)?
            } else {
                None
            };
            let mut new_attr_lines = Vec::new();
            if status != 'D' && last(path) == b".gitattributes" {
                let old = if old_mode != 0 {
                    self.blob(os)?
                } else {
                    Some(vec![])
                };
                match self.blob(ns)? {
                    Some(new) => {
                        let old = driver_lines(&String::from_utf8_lossy(&old.unwrap_or_default()));
                        new_attr_lines = driver_lines(&String::from_utf8_lossy(&new))
                            .into_iter()
                            .filter(|l| !old.contains(l))
                            .collect();
                    }
                    None => new_attr_lines.push("(too large to inspect)".into()),
                }
            }
            out.push(Change {
                old_mode,
                new_mode,
                status,
                path: path.to_vec(),
                link_target,
                new_attr_lines,
            });
        }
        Ok(out)
    }
}

/// The guest's side: commit the working tree through a temporary index,
/// bundle it from the base, write the bundle to stdout.
fn guest_script(dir: &str, base: &str) -> String {
    let base = q(&format!("{base}^{{commit}}"));
    format!(
        r#"set -e
cd -- {dir}
base=$(git rev-parse --verify -q {base}) || {{ echo "no workspace base in {dir_text} (prepared by an older banger?): give --base-commit REV" >&2; exit 17; }}
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
i=$(git rev-parse --git-path index)
if [ -f "$i" ]; then cp "$i" "$t/index"; fi
export GIT_INDEX_FILE="$t/index"
git add -A -- . >&2
tree=$(git write-tree)
set -- -p "$base"
if h=$(git rev-parse --verify -q HEAD) && ! git merge-base --is-ancestor "$h" "$base"; then set -- "$@" -p "$h"; fi
e=$(GIT_AUTHOR_NAME=banger GIT_AUTHOR_EMAIL=banger@localhost GIT_COMMITTER_NAME=banger GIT_COMMITTER_EMAIL=banger@localhost git commit-tree "$tree" "$@" -m 'banger workspace export')
git update-ref refs/banger/export "$e"
git update-ref refs/banger/export-base "$base"
git bundle create -q - refs/banger/export refs/banger/export-base $(git rev-parse "$base^@" | sed 's/^/^/')
git update-ref -d refs/banger/export
git update-ref -d refs/banger/export-base
"#,
        dir = q(dir),
        dir_text = dir.replace(['"', '$', '`', '\\'], "_"),
    )
}

/// Runs the guest's side (`ssh` runs the script); the bundle lands in `to`.
fn fetch_bundle(mut ssh: Command, to: &Path) -> anyhow::Result<()> {
    ssh.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = ssh.spawn().context("cannot run ssh")?;
    let mut out = child.stdout.take().context("ssh stdout")?;
    let mut file = std::fs::File::create(to)?;
    let copied = std::io::copy(&mut (&mut out).take(MAX_BUNDLE + 1), &mut file);
    if matches!(copied, Ok(n) if n > MAX_BUNDLE) {
        let _ = child.kill();
        let _ = child.wait();
        bail!("the guest sent more than {} GiB: refused", MAX_BUNDLE >> 30);
    }
    drop(out);
    let st = child.wait()?;
    copied.context("reading the guest's bundle")?;
    if !st.success() {
        bail!("the guest could not make the export ({st})");
    }
    file.flush()?;
    Ok(())
}

#[derive(Serialize)]
struct FileChange {
    status: String,
    path: String,
}

/// `vm workspace export`'s answer.
#[derive(Serialize)]
struct Exported {
    name: String,
    guest_path: String,
    /// The base the change is taken from (the snapshot commit).
    base: String,
    files: Vec<FileChange>,
    /// The guest's own commits (`abbrev subject`), newest first.
    commits: Vec<String>,
    flagged: Vec<String>,
    /// `patch`, `bundle` or `apply`.
    to: String,
    /// The file written (`-o`) or the host repository (`--apply`).
    target: Option<String>,
    /// `--apply` merged with changes the host made meanwhile.
    merged: bool,
}

impl Exported {
    fn summary(&self) -> String {
        let mut s = format!(
            "{}:{}: {} file{} changed by the guest",
            self.name,
            self.guest_path,
            self.files.len(),
            if self.files.len() == 1 { "" } else { "s" }
        );
        if !self.commits.is_empty() {
            s.push_str(&format!(", {} guest commit(s)", self.commits.len()));
        }
        s.push('\n');
        for f in &self.files {
            s.push_str(&format!("  {} {}\n", f.status, f.path));
        }
        for c in &self.commits {
            s.push_str(&format!("  commit {c}\n"));
        }
        for f in &self.flagged {
            s.push_str(&format!("  flagged: {f}\n"));
        }
        s
    }
}

impl Render for Exported {
    fn text(&self) -> String {
        let mut s = self.summary();
        match (self.to.as_str(), &self.target) {
            ("apply", Some(t)) if self.files.is_empty() => {
                s.push_str(&format!("nothing to apply to {t}\n"))
            }
            ("apply", Some(t)) => s.push_str(&format!(
                "applied to {t}{}\n",
                if self.merged {
                    " (merged with the host's changes since the snapshot)"
                } else {
                    ""
                }
            )),
            (to, Some(t)) => s.push_str(&format!("wrote the {to} to {t}\n")),
            _ => {}
        }
        s
    }
}

/// `banger vm workspace export` (see the module doc).
pub fn export(env: &Env, a: ExportArgs) -> anyhow::Result<Outcome> {
    let name = a.name.clone();
    export_with(a, env.json, "/root", &|script| {
        let mut ssh = super::ssh::ssh_to(env, &name)?;
        ssh.arg("-T").arg("--").arg(script);
        Ok(ssh)
    })
}

/// [`export`], with `guest(script)` the command that runs a script in the
/// guest (ssh; `sh -c` in the tests) and workspaces under `root` there.
fn export_with(
    a: ExportArgs,
    json: bool,
    root: &str,
    guest: &dyn Fn(&str) -> anyhow::Result<Command>,
) -> anyhow::Result<Outcome> {
    let kind =
        match (&a.output, a.apply) {
            (Some(_), true) => return Err(usage("--apply and -o go apart: choose one")),
            (Some(o), false) => match o.extension().and_then(|e| e.to_str()) {
                Some("bundle") => "bundle",
                Some("patch" | "diff") => "patch",
                _ => {
                    return Err(usage(format!(
                        "-o {}: name a FILE.patch or a FILE.bundle",
                        o.display()
                    )))
                }
            },
            (None, true) => "apply",
            (None, false) if json => return Err(usage(
                "a patch on stdout has no JSON form: use -o FILE.patch, -o FILE.bundle or --apply",
            )),
            (None, false) => "stdout",
        };
    if let Some(b) = &a.base_commit {
        if b.is_empty() || b.starts_with('-') {
            return Err(usage(format!("--base-commit {b:?} is not a revision")));
        }
    }
    let path = a
        .path
        .canonicalize()
        .with_context(|| format!("workspace {}", a.path.display()))?;
    let top = super::workspace::git_toplevel(&path).with_context(|| {
        format!(
            "{} is not a git repository: export brings changes back into one",
            path.display()
        )
    })?;
    if top != path {
        return Err(usage(format!(
            "{} is inside the git repository {}: give the repository's top directory",
            path.display(),
            top.display()
        )));
    }
    let guest_dir = format!("{root}/{}", super::workspace::workspace_name(&path));
    let common = PathBuf::from(run_text(
        {
            let mut c = Cmd::new("git");
            c.arg("-C").arg(&path).args([
                "rev-parse",
                "--path-format=absolute",
                "--git-common-dir",
            ]);
            c
        },
        "git rev-parse",
    )?);
    let scratch = Scratch::new(common.join("objects"))?;
    let bundle = scratch.tmp().join("guest.bundle");
    let script = guest_script(
        &guest_dir,
        a.base_commit.as_deref().unwrap_or("refs/banger/base"),
    );
    fetch_bundle(guest(&script)?, &bundle)?;
    let review = inspect(&scratch, &bundle)?;
    let base = scratch.git(&["rev-parse", "refs/banger/export-base"])?;
    let e = "refs/banger/export";
    let mut out = Exported {
        name: a.name.clone(),
        guest_path: guest_dir,
        base: base.clone(),
        files: review
            .changes
            .iter()
            .map(|c| FileChange {
                status: c.status.to_string(),
                path: shown(&c.path),
            })
            .collect(),
        commits: review.commits,
        flagged: review.flagged,
        to: kind.replace("stdout", "patch"),
        target: None,
        merged: false,
    };
    match kind {
        "stdout" => {
            let patch = diff(&scratch, &base, e)?;
            eprint!("{}", out.summary());
            std::io::stdout().write_all(&patch)?;
            return Ok(Outcome::Streamed(0));
        }
        "patch" => {
            let o = a.output.as_ref().expect("-o");
            std::fs::write(o, diff(&scratch, &base, e)?)
                .with_context(|| format!("cannot write {}", o.display()))?;
            out.target = Some(o.display().to_string());
        }
        "bundle" => {
            let o = a.output.as_ref().expect("-o");
            let o_abs = std::env::current_dir()?.join(o);
            let mut args = vec![
                "bundle".to_string(),
                "create".into(),
                "-q".into(),
                o_abs.display().to_string(),
                e.into(),
            ];
            let parents = scratch.git(&["rev-parse", &format!("{base}^@")])?;
            args.extend(parents.lines().map(|p| format!("^{p}")));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            scratch.git(&args)?;
            out.target = Some(o.display().to_string());
        }
        _ => {
            out.merged = apply(&scratch, &path, &base, e)?;
            out.target = Some(path.display().to_string());
        }
    }
    Ok(Outcome::of(out))
}

fn diff(s: &Scratch, from: &str, to: &str) -> anyhow::Result<Vec<u8>> {
    let mut c = git_safe(&s.dir);
    c.args([
        "diff",
        "--binary",
        "--full-index",
        "--no-ext-diff",
        "--no-textconv",
        "--no-color",
        "--no-renames",
        from,
        to,
    ]);
    c.stdout(Out::Capture(usize::MAX));
    Ok(c.run().context("git diff")?.stdout)
}

/// What [`inspect`] found in an accepted bundle.
struct Inspected {
    changes: Vec<Change>,
    commits: Vec<String>,
    flagged: Vec<String>,
}

/// Fetches the guest's bundle into the throwaway repository and reviews the
/// net change; a refused change is an error naming every reason.
fn inspect(s: &Scratch, bundle: &Path) -> anyhow::Result<Inspected> {
    let b = bundle.to_str().context("temp path")?;
    let mut c = git_safe(&s.dir);
    c.args([
        "fetch",
        "-q",
        "--no-write-fetch-head",
        b,
        "refs/banger/export:refs/banger/export",
        "refs/banger/export-base:refs/banger/export-base",
    ]);
    if let Err(e) = c.run() {
        return Err(refuse(
            ErrorKind::PermissionDenied,
            format!(
                "the guest's bundle was refused by git (its object checks, or commits the host lacks; nothing was written): {}",
                match e.stderr().trim() {
                    "" => e.to_string(),
                    s => s.replace('\n', "; "),
                }
            ),
        ));
    }
    let base = s.git(&["rev-parse", "--verify", "refs/banger/export-base^{commit}"])?;
    let first = s
        .git(&["rev-parse", "--verify", "refs/banger/export^1"])
        .ok();
    if first.as_deref() != Some(base.as_str()) {
        bail!("the guest's export is not a commit on its base: refused");
    }
    let changes = s.changes(&base, "refs/banger/export")?;
    let r = review(&changes);
    if !r.refused.is_empty() {
        return Err(refuse(
            ErrorKind::PermissionDenied,
            format!(
                "the guest's changes are refused (nothing was written):\n  {}",
                r.refused.join("\n  ")
            ),
        ));
    }
    let commits = match s.git(&["rev-parse", "--verify", "-q", "refs/banger/export^2"]) {
        Ok(h) if !h.is_empty() => s
            .git(&[
                "log",
                "--no-color",
                "--format=%h %s",
                "-n",
                "100",
                &h,
                "--not",
                &base,
            ])?
            .lines()
            .map(|l| shown(l.as_bytes()))
            .collect(),
        _ => Vec::new(),
    };
    Ok(Inspected {
        changes,
        commits,
        flagged: r.flagged,
    })
}

/// `--apply`: see the module doc. Whether a merge with the host's own
/// changes was needed.
fn apply(s: &Scratch, repo: &Path, base: &str, e: &str) -> anyhow::Result<bool> {
    // H: the host's working state now, in the scratch object store.
    let index = PathBuf::from(run_text(
        {
            let mut c = Cmd::new("git");
            c.arg("-C").arg(repo).args([
                "rev-parse",
                "--path-format=absolute",
                "--git-path",
                "index",
            ]);
            c
        },
        "git rev-parse",
    )?);
    let tmp_index = s.tmp().join("index-h");
    if index.exists() {
        std::fs::copy(&index, &tmp_index).context("copy of the index")?;
    }
    let objects = s.dir.join("objects");
    let host_git = |args: &[&str]| -> anyhow::Result<String> {
        let mut c = Cmd::new("git");
        c.arg("-C").arg(repo).args(args);
        c.env("GIT_INDEX_FILE", &tmp_index)
            .env("GIT_OBJECT_DIRECTORY", &objects)
            .env("GIT_ALTERNATE_OBJECT_DIRECTORIES", &s.host_objects);
        run_text(c, &format!("git {}", args.join(" ")))
    };
    host_git(&["add", "-A", "--", "."])?;
    let h_tree = host_git(&["write-tree"])?;
    let base_tree = s.git(&["rev-parse", &format!("{base}^{{tree}}")])?;
    let (result, merged) = if h_tree == base_tree {
        (s.git(&["rev-parse", &format!("{e}^{{tree}}")])?, false)
    } else {
        let mut c = git_safe(&s.dir);
        for (k, v) in [("NAME", "banger"), ("EMAIL", "banger@localhost")] {
            c.env(format!("GIT_AUTHOR_{k}"), v);
            c.env(format!("GIT_COMMITTER_{k}"), v);
        }
        c.args([
            "commit-tree",
            &h_tree,
            "-p",
            base,
            "-m",
            "host working state",
        ]);
        let h = run_text(c, "git commit-tree")?;
        let mut c = git_safe(&s.dir);
        c.args([
            "merge-tree",
            "--write-tree",
            "--name-only",
            "--no-messages",
            &h,
            e,
        ]);
        let done = c.output().context("git merge-tree")?;
        let text = done.stdout_text();
        let mut lines = text.lines();
        let tree = lines.next().unwrap_or("").to_string();
        match done.status.code() {
            Some(0) => (tree, true),
            Some(1) => {
                let files: Vec<String> = lines
                    .take_while(|l| !l.is_empty())
                    .map(|l| shown(l.as_bytes()))
                    .collect();
                return Err(refuse(
                    ErrorKind::InvalidState,
                    format!(
                        "the guest's changes conflict with the host's since the snapshot; nothing was written. Conflicting files:\n  {}",
                        files.join("\n  ")
                    ),
                ));
            }
            _ => return Err(done.into_error()).context("git merge-tree"),
        }
    };
    if result == h_tree {
        return Ok(merged);
    }
    let patch = diff(s, &h_tree, &result)?;
    let patch_file = s.tmp().join("apply.patch");
    std::fs::write(&patch_file, patch)?;
    let mut c = Cmd::new("git");
    c.arg("-C")
        .arg(repo)
        .args(["apply", "--binary", "--whitespace=nowarn"])
        .arg(&patch_file);
    c.stdin(In::Null);
    c.run()
        .context("git apply into the host's working tree (nothing was written)")?;
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(status: char, old: u32, new: u32, path: &str) -> Change {
        Change {
            old_mode: old,
            new_mode: new,
            status,
            path: path.as_bytes().to_vec(),
            link_target: None,
            new_attr_lines: vec![],
        }
    }

    fn link(path: &str, target: &str) -> Change {
        Change {
            link_target: Some(target.as_bytes().to_vec()),
            ..ch('A', 0, MODE_LINK, path)
        }
    }

    fn refused(c: Change) -> Vec<String> {
        review(&[c]).refused
    }

    #[test]
    fn dot_git_anywhere_in_any_spelling_is_refused() {
        for p in [
            ".git/config",
            "sub/.git/hooks/post-checkout",
            ".GIT/x",
            "a/.Git./x",
            "a/git~1/x",
            ".git",
        ] {
            let r = refused(ch('A', 0, 0o100644, p));
            assert!(
                r.len() == 1 && r[0].contains(".git directory"),
                "{p}: {r:?}"
            );
        }
        for p in [".gitignore", "a/.github/x", "x.git/y", ".gitkeep"] {
            assert!(refused(ch('A', 0, 0o100644, p)).is_empty(), "{p}");
        }
    }

    #[test]
    fn gitlinks_and_gitmodules_are_refused() {
        assert!(refused(ch('A', 0, MODE_GITLINK, "vendor/lib"))[0].contains("gitlink"));
        assert!(refused(ch('D', MODE_GITLINK, 0, "vendor/lib"))[0].contains("gitlink"));
        for c in [
            ch('A', 0, 0o100644, ".gitmodules"),
            ch('M', 0o100644, 0o100644, "sub/.GITMODULES"),
            ch('D', 0o100644, 0, ".gitmodules"),
        ] {
            assert!(refused(c)[0].contains(".gitmodules"));
        }
    }

    #[test]
    fn symlinks_must_stay_inside_and_out_of_dot_git() {
        for (p, t, why) in [
            ("evil", "/etc/passwd", "absolute"),
            ("a/b", "../../outside", "outside"),
            ("x", "..", "outside"),
            ("a/b/c", "../../../x/../y", "outside"),
            ("h", ".git/hooks", ".git"),
            ("d/h", "../.git", ".git"),
        ] {
            let r = refused(link(p, t));
            assert!(r.len() == 1 && r[0].contains(why), "{p} -> {t}: {r:?}");
        }
        for (p, t) in [
            ("l", "a.txt"),
            ("a/b", "../c"),
            ("a/b/c", "../../x/./y"),
            ("l", "."),
        ] {
            assert!(refused(link(p, t)).is_empty(), "{p} -> {t}");
        }
        assert!(refused(Change {
            link_target: None,
            ..ch('A', 0, MODE_LINK, "big")
        })[0]
            .contains("too large"));
        // A link the guest deleted is no link on the host.
        assert!(refused(Change {
            link_target: None,
            ..ch('D', MODE_LINK, 0, "gone")
        })
        .is_empty());
    }

    #[test]
    fn hooks_executables_and_drivers_are_flagged_not_refused() {
        let mut attrs = ch('A', 0, 0o100644, ".gitattributes");
        attrs.new_attr_lines = driver_lines("*.txt text\n*.bin filter=evil\n# x filter=y\n");
        let r = review(&[
            ch('A', 0, 0o100644, ".husky/pre-commit"),
            ch('A', 0, 0o100644, "tools/hooks/pre-push"),
            ch('A', 0, 0o100644, ".pre-commit-config.yaml"),
            ch('A', 0, 0o100644, ".envrc"),
            ch('A', 0, MODE_EXEC, "run.sh"),
            ch('M', 0o100644, MODE_EXEC, "b.sh"),
            ch('M', MODE_EXEC, MODE_EXEC, "c.sh"),
            ch('M', 0o100644, 0o100644, "src/main.rs"),
            attrs,
        ]);
        assert!(r.refused.is_empty(), "{r:?}");
        let f = r.flagged.join("\n");
        for want in [
            ".husky/pre-commit: hook-like",
            "tools/hooks/pre-push: hook-like",
            ".pre-commit-config.yaml: hook-like",
            ".envrc: hook-like",
            "run.sh: new executable",
            "b.sh: new executable",
            "*.bin filter=evil",
        ] {
            assert!(f.contains(want), "{want} in {f}");
        }
        assert!(
            !f.contains("c.sh") && !f.contains("main.rs") && !f.contains("filter=y"),
            "{f}"
        );
    }

    #[test]
    fn names_are_shown_without_terminal_escapes() {
        assert_eq!(shown(b"a\x1b[2Jb\n"), "a\\u{1b}[2Jb\\n");
    }

    fn sh(dir: &Path, script: &str) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// The host half against bundles a hostile guest could make with git's
    /// plumbing (trees porcelain git would never write): refused before
    /// anything reaches the host repository.
    #[test]
    fn hostile_bundles_are_refused_on_the_host() {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("host");
        let guest = t.path().join("guest");
        std::fs::create_dir(&host).unwrap();
        sh(
            &host,
            "git init -q -b main && git config user.email a@b && git config user.name a \
             && echo a > a && git add a && git commit -qm one",
        );
        sh(t.path(), "git clone -q host guest");
        let cases = [
            // (blob-or-tree lines for the new tree, expected words)
            ("100644 blob $b\tok\n040000 tree $sub\t.git\n", ".git"),
            (
                "100644 blob $b\ta\n120000 blob $abs\tevil\n",
                "absolute symlink",
            ),
            ("100644 blob $b\ta\n120000 blob $out\tevil\n", "outside"),
            ("100644 blob $b\ta\n160000 commit $head\tlib\n", "gitlink"),
            (
                "100644 blob $b\ta\n100644 blob $b\t.gitmodules\n",
                ".gitmodules",
            ),
        ];
        for (tree, want) in cases {
            let script = format!(
                "b=$(echo a | git hash-object -w --stdin) && abs=$(printf /etc/passwd | git hash-object -w --stdin) \
                 && out=$(printf ../outside | git hash-object -w --stdin) && head=$(git rev-parse HEAD) \
                 && sub=$(printf '100644 blob %s\\tconfig\\n' $b | git mktree) \
                 && base=$(git commit-tree HEAD^{{tree}} -p HEAD -m W) \
                 && tree=$(printf \"{tree}\" | git mktree) \
                 && e=$(git commit-tree $tree -p $base -m E) \
                 && git update-ref refs/banger/export $e && git update-ref refs/banger/export-base $base \
                 && git bundle create -q ../evil.bundle refs/banger/export refs/banger/export-base ^HEAD"
            );
            sh(&guest, &script);
            let s = Scratch::new(host.join(".git/objects")).unwrap();
            let err = match inspect(&s, &t.path().join("evil.bundle")) {
                Ok(i) => panic!("{want}: accepted {:?}", i.changes),
                Err(e) => format!("{e:#}"),
            };
            eprintln!("{want}: {err}");
            assert!(err.contains(want), "{want}: {err}");
        }
        // And an honest one passes, with its change.
        sh(
            &guest,
            "echo b >> a && base=$(git commit-tree HEAD^{tree} -p HEAD -m W) \
             && git add a && tree=$(git write-tree) && e=$(git commit-tree $tree -p $base -m E) \
             && git update-ref refs/banger/export $e && git update-ref refs/banger/export-base $base \
             && git bundle create -q ../ok.bundle refs/banger/export refs/banger/export-base ^HEAD",
        );
        let s = Scratch::new(host.join(".git/objects")).unwrap();
        let i = inspect(&s, &t.path().join("ok.bundle")).unwrap();
        assert_eq!(i.changes.len(), 1);
        assert_eq!(i.changes[0].path, b"a");
    }

    /// A command that runs its last argument as a shell script with `dir`
    /// bind-mounted over /root, in a mount namespace of its own: a local
    /// stand-in for ssh into a guest, with the same argument shape
    /// (`-T -- SCRIPT`).
    fn fake_ssh(dir: &Path) -> Command {
        let mut c = Command::new("unshare");
        c.args([
            "-m",
            "sh",
            "-c",
            "mount --bind \"$0\" /root && shift 2 && exec sh -c \"$1\"",
        ])
        .arg(dir);
        c
    }

    /// prepare, guest work, then export as a patch, with --apply over host
    /// changes (a clean merge), with --apply into a conflict (nothing
    /// written), and as a bundle; the guest being this host's shell with a
    /// directory over /root (so it needs root).
    #[test]
    fn export_brings_back_only_the_guests_work() {
        if !rustix::process::geteuid().is_root() {
            eprintln!(
                "SKIPPED export_brings_back_only_the_guests_work: needs root (a mount namespace)"
            );
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        let groot = t.path().join("groot");
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::create_dir_all(&groot).unwrap();
        sh(
            &repo,
            "git init -q -b main && git config user.email h@h && git config user.name h \
             && for f in a b c d; do printf '%s1\\n%s2\\n%s3\\n' $f $f $f > $f.txt; done \
             && git add -A && git commit -qm one && echo host-dirty >> a.txt",
        );
        let snap = super::super::workspace::snapshot(&repo, &Default::default()).unwrap();
        let dir = super::super::workspace::push(&snap, &|| Ok(fake_ssh(&groot))).unwrap();
        assert_eq!(dir, "/root/repo");
        let g = groot.join("repo");
        sh(
            &g,
            "echo guest-commit >> b.txt && git -c user.name=g -c user.email=g@g commit -qam 'guest: b' \
             && echo guest-wt >> c.txt && echo new > n.txt",
        );
        let export = |apply: bool, output: Option<PathBuf>| {
            export_with(
                ExportArgs {
                    name: "g".into(),
                    path: repo.clone(),
                    apply,
                    output,
                    base_commit: None,
                },
                true,
                "/root",
                &|script| {
                    let mut c = fake_ssh(&groot);
                    c.arg("-T").arg("--").arg(script);
                    Ok(c)
                },
            )
            .map(|o| match o {
                Outcome::Value(v) => {
                    serde_json::from_str::<serde_json::Value>(&v.json().unwrap()).unwrap()
                }
                Outcome::Streamed(_) => panic!("a value"),
            })
        };
        let patch = t.path().join("x.patch");
        let v = export(false, Some(patch.clone())).unwrap();
        let files: Vec<String> = v["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                format!(
                    "{} {}",
                    f["status"].as_str().unwrap(),
                    f["path"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(files, ["M b.txt", "M c.txt", "A n.txt"], "{v}");
        assert_eq!(v["commits"].as_array().unwrap().len(), 1, "{v}");
        let text = std::fs::read_to_string(&patch).unwrap();
        assert!(
            text.contains("+guest-commit") && text.contains("+guest-wt"),
            "{text}"
        );
        assert!(
            !text.contains("host-dirty") && !text.contains("a.txt"),
            "{text}"
        );
        // The guest's own index and HEAD are as they were.
        assert_eq!(
            sh(&g, "git status --porcelain; git log --format=%s -n 1"),
            // (`commit -a` took the host's dirty a.txt along: still not exported.)
            "M c.txt\n?? n.txt\nguest: b"
        );

        // The host moved on elsewhere: a clean merge.
        sh(&repo, "echo host-later >> d.txt");
        let v = export(true, None).unwrap();
        assert_eq!(v["merged"], true, "{v}");
        assert_eq!(sh(&repo, "cat a.txt"), "a1\na2\na3\nhost-dirty");
        assert_eq!(sh(&repo, "cat b.txt"), "b1\nb2\nb3\nguest-commit");
        assert_eq!(sh(&repo, "cat c.txt"), "c1\nc2\nc3\nguest-wt");
        assert_eq!(sh(&repo, "cat n.txt"), "new");
        assert_eq!(sh(&repo, "cat d.txt"), "d1\nd2\nd3\nhost-later");
        // The host's index and HEAD were not touched.
        assert_eq!(sh(&repo, "git log --format=%s"), "one");
        assert_eq!(sh(&repo, "git diff --cached --name-only"), "");

        // The same lines changed on both sides: a conflict, nothing written.
        sh(&repo, "sed -i s/guest-wt/host-other/ c.txt");
        let before = sh(&repo, "cat *.txt | sha256sum; git status --porcelain");
        let err = format!("{:#}", export(true, None).err().unwrap());
        assert!(err.contains("conflict") && err.contains("c.txt"), "{err}");
        assert!(!err.contains("b.txt"), "{err}");
        assert_eq!(
            sh(&repo, "cat *.txt | sha256sum; git status --porcelain"),
            before
        );

        // A bundle the host's git can fetch: the net change and the guest's commits.
        let bundle = t.path().join("x.bundle");
        export(false, Some(bundle.clone())).unwrap();
        sh(
            &repo,
            &format!("git fetch -q {} refs/banger/export", bundle.display()),
        );
        assert_eq!(
            sh(&repo, "git log --format=%s FETCH_HEAD^2 -n 1"),
            "guest: b"
        );
        assert_eq!(
            sh(&repo, "git diff --name-only FETCH_HEAD^1 FETCH_HEAD"),
            "b.txt\nc.txt\nn.txt"
        );
    }
}
