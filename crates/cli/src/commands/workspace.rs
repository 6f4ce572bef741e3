//! Workspaces into a guest: `banger vm run PATH` and `banger vm workspace
//! prepare NAME PATH`.
//!
//! What lands in the guest is what the developer sees on the host: the
//! guest's `git status` equals the host's. The mechanism is the one `git
//! stash` uses. On the host (as the user, never the daemon), two snapshot
//! commits are made on top of HEAD: the index tree `I` and the working tree
//! `W` (tracked files as they are on disk; untracked, non-ignored ones too
//! with `--include-untracked`). They are sent with the history as one git
//! bundle over SSH, and the guest rebuilds its own index from them:
//! `read-tree W`, `checkout-index -a -f`, `read-tree I`, `update-index
//! --refresh`. The host's index file itself is never copied (it holds
//! host-specific stat data and paths).
//!
//! The host repository is not changed at all: the snapshot's objects and
//! refs live in a throwaway bare repository whose alternates point at the
//! host's object store, and the working-tree index is a temporary copy.
//!
//! Not a git repository: the directory is copied as it is, with tar (said
//! on stderr). Submodules are refused (their contents would not come
//! along). Git LFS files come as their pointers (`git add` runs LFS's clean
//! filter), and the CLI says so with what to run in the guest (`git lfs
//! pull`, which needs git-lfs and network there). A worktree of `git
//! worktree add` is snapshotted like the main one (its own HEAD, branch and
//! index; objects from the common directory). A sparse checkout comes in
//! full: the files outside the sparse set are taken from the index, and the
//! guest's checkout is not sparse.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use banger_core::proc::Cmd;

use super::ssh::shell_quote as q;

/// A workspace ready to send.
pub struct Snapshot {
    /// The directory name it gets under /root in the guest.
    pub name: String,
    pub kind: Kind,
    /// Files that will be copied (for `--dry-run` and the summary).
    pub files: Vec<String>,
}

pub enum Kind {
    Git(GitSnapshot),
    /// A plain directory, copied with tar.
    Plain(PathBuf),
}

/// What to snapshot.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Also untracked (never ignored) files.
    pub include_untracked: bool,
    /// Put the guest's copy on this new branch (guest-only).
    pub branch: Option<String>,
    /// Start from this commit instead of the working state (clean: no
    /// staged or unstaged changes come along).
    pub from: Option<String>,
}

pub struct GitSnapshot {
    /// The new guest-only branch (`--branch`).
    new_branch: Option<String>,
    /// Holds the bundle and the throwaway repository.
    _tmp: tempfile::TempDir,
    bundle: PathBuf,
    /// The host's branch, when HEAD is on one.
    branch: Option<String>,
    /// The host's HEAD commit (none in a repository without commits).
    head: Option<String>,
    /// Where the host's `origin` points.
    origin: Option<String>,
}

/// Runs git in `dir` with `envs`; its stdout, trimmed.
fn git(dir: &Path, args: &[&str], envs: &[(&str, &Path)]) -> anyhow::Result<String> {
    let mut c = Cmd::new("git");
    c.arg("-C").arg(dir).args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    let done = c
        .run()
        .with_context(|| format!("git {} in {}", args.join(" "), dir.display()))?;
    Ok(done.stdout_text().trim_end().to_string())
}

/// git, where failure means "no" (e.g. `rev-parse --verify HEAD` of an
/// unborn branch).
fn git_opt(dir: &Path, args: &[&str]) -> Option<String> {
    git(dir, args, &[]).ok().filter(|s| !s.is_empty())
}

/// The directory name a workspace at `path` (canonical) gets under /root.
pub(crate) fn workspace_name(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && !n.starts_with('.'))
        .unwrap_or("workspace")
        .to_string()
}

/// The tracked files of the repository at `path` that Git LFS filters.
fn lfs_files(path: &Path) -> anyhow::Result<Vec<String>> {
    let out = git(path, &["ls-files", "-z", "--", ":(attr:filter=lfs)"], &[])?;
    Ok(out
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect())
}

/// The top directory of the git repository `path` is in, if any.
pub(crate) fn git_toplevel(path: &Path) -> Option<PathBuf> {
    git_opt(path, &["rev-parse", "--show-toplevel"]).map(PathBuf::from)
}

/// Snapshots the directory at `path` (see the module doc).
pub fn snapshot(path: &Path, opts: &Options) -> anyhow::Result<Snapshot> {
    let include_untracked = opts.include_untracked;
    let path = path
        .canonicalize()
        .with_context(|| format!("workspace {}", path.display()))?;
    if !path.is_dir() {
        bail!("workspace {} is not a directory", path.display());
    }
    let name = workspace_name(&path);
    let Some(top) = git_toplevel(&path) else {
        eprintln!(
            "{} is not a git repository: copying the directory as it is",
            path.display()
        );
        if opts.branch.is_some() || opts.from.is_some() {
            bail!(
                "--branch and --from need a git repository; {} is not one",
                path.display()
            );
        }
        let files = plain_files(&path)?;
        return Ok(Snapshot {
            name,
            kind: Kind::Plain(path),
            files,
        });
    };
    if top != path {
        bail!(
            "{} is inside the git repository {}: give the repository's top directory",
            path.display(),
            top.display()
        );
    }
    if path.join(".gitmodules").exists()
        || !git(&path, &["ls-files", "-s"], &[])?
            .lines()
            .all(|l| !l.starts_with("160000"))
    {
        bail!(
            "{} has submodules, which a workspace does not carry yet: copy them in with `banger vm cp`, or run without PATH",
            path.display()
        );
    }
    if !git(&path, &["ls-files", "-u"], &[])?.is_empty() {
        bail!(
            "{} has unmerged paths: resolve the conflict first",
            path.display()
        );
    }
    let common = PathBuf::from(git(
        &path,
        &["rev-parse", "--path-format=absolute", "--git-common-dir"],
        &[],
    )?);
    let index = PathBuf::from(git(
        &path,
        &["rev-parse", "--path-format=absolute", "--git-path", "index"],
        &[],
    )?);
    if let Some(b) = &opts.branch {
        git(&path, &["check-ref-format", "--branch", b], &[])
            .map_err(|_| anyhow::anyhow!("--branch {b:?} is not a valid branch name"))?;
    }
    let (head, branch) = match &opts.from {
        Some(r) => {
            let c = git_opt(
                &path,
                &["rev-parse", "--verify", "-q", &format!("{r}^{{commit}}")],
            )
            .with_context(|| format!("--from {r:?}: no such commit in {}", path.display()))?;
            (Some(c), None)
        }
        None => (
            git_opt(&path, &["rev-parse", "--verify", "-q", "HEAD"]),
            git_opt(&path, &["symbolic-ref", "-q", "--short", "HEAD"]),
        ),
    };
    let origin = git_opt(&path, &["remote", "get-url", "origin"]);

    // The throwaway repository: new objects go there, the host's are read
    // through alternates.
    let tmp = tempfile::Builder::new().prefix("banger-ws-").tempdir()?;
    let scratch = tmp.path().join("scratch.git");
    let objects = scratch.join("objects");
    git(tmp.path(), &["init", "-q", "--bare", "scratch.git"], &[])?;
    std::fs::write(
        objects.join("info/alternates"),
        format!("{}\n", common.join("objects").display()),
    )?;
    let tmp_index = tmp.path().join("index");
    if index.exists() {
        std::fs::copy(&index, &tmp_index).context("copy of the index")?;
    }
    let alt = common.join("objects");
    let in_scratch: [(&str, &Path); 2] = [
        ("GIT_OBJECT_DIRECTORY", &objects),
        ("GIT_ALTERNATE_OBJECT_DIRECTORIES", &alt),
    ];
    let (i_tree, w_tree, listing) = match (&opts.from, &head) {
        // --from: that commit's tree, clean.
        (Some(_), Some(c)) => {
            let tree = git(&path, &["rev-parse", &format!("{c}^{{tree}}")], &[])?;
            let listing = git(&path, &["ls-tree", "-r", "-z", "--name-only", c], &[])?;
            (tree.clone(), tree, listing)
        }
        _ => {
            // I: the host's index as it is. On a copy: write-tree saves its
            // cache tree back into the index it read.
            let i_index = tmp.path().join("index-i");
            if index.exists() {
                std::fs::copy(&index, &i_index).context("copy of the index")?;
            }
            let i_tree = git(
                &path,
                &["write-tree"],
                &[in_scratch[0], in_scratch[1], ("GIT_INDEX_FILE", &i_index)],
            )?;
            // W: a copy of the index brought up to the working tree.
            let with_index: [(&str, &Path); 3] =
                [in_scratch[0], in_scratch[1], ("GIT_INDEX_FILE", &tmp_index)];
            git(
                &path,
                &[
                    "add",
                    if include_untracked { "-A" } else { "-u" },
                    "--",
                    ".",
                ],
                &with_index,
            )?;
            let w_tree = git(&path, &["write-tree"], &with_index)?;
            let listing = git(&path, &["ls-files", "-z"], &with_index)?;
            (i_tree, w_tree, listing)
        }
    };
    let files: Vec<String> = listing
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let lfs = lfs_files(&path)?;
    if !lfs.is_empty() {
        eprintln!(
            "{} Git LFS file(s) (e.g. {}) come in as LFS pointers: run `git lfs pull` in the guest's \
             copy (it needs git-lfs and network access there), or copy them with `banger vm cp`",
            lfs.len(),
            lfs[0]
        );
    }
    let commit = |tree: &str, msg: &str| -> anyhow::Result<String> {
        let mut args = vec!["commit-tree", tree, "-m", msg];
        if let Some(h) = &head {
            args.extend(["-p", h.as_str()]);
        }
        let mut c = Cmd::new("git");
        c.arg("-C").arg(&path).args(&args);
        for (k, v) in in_scratch {
            c.env(k, v);
        }
        for k in ["GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"] {
            c.env(k, "banger");
        }
        for k in ["GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"] {
            c.env(k, "banger@localhost");
        }
        Ok(c.run()
            .context("git commit-tree")?
            .stdout_text()
            .trim()
            .to_string())
    };
    let i_commit = commit(&i_tree, "banger workspace: index")?;
    let w_commit = commit(&w_tree, "banger workspace: working tree")?;
    git(
        &scratch,
        &["update-ref", "refs/banger/index", &i_commit],
        &[],
    )?;
    git(
        &scratch,
        &["update-ref", "refs/banger/worktree", &w_commit],
        &[],
    )?;
    if let (Some(b), Some(h)) = (&branch, &head) {
        git(
            &scratch,
            &["update-ref", &format!("refs/heads/{b}"), h],
            &[],
        )?;
    }
    let bundle = tmp.path().join("ws.bundle");
    git(
        &scratch,
        &[
            "bundle",
            "create",
            "-q",
            bundle.to_str().context("temp path")?,
            "--all",
        ],
        &[],
    )?;
    Ok(Snapshot {
        name,
        kind: Kind::Git(GitSnapshot {
            new_branch: opts.branch.clone(),
            _tmp: tmp,
            bundle,
            branch,
            head,
            origin,
        }),
        files,
    })
}

/// Regular files, links and directories under a plain directory (relative).
fn plain_files(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap_or(&p).display().to_string());
        }
    }
    out.sort();
    Ok(out)
}

/// Sends the snapshot to the guest at `/root/<name>`. `ssh` gives a fresh
/// ssh command line to the VM (no remote command yet). The guest directory
/// must not exist: a workspace is never merged over another.
pub fn push(snap: &Snapshot, ssh: &dyn Fn() -> anyhow::Result<Command>) -> anyhow::Result<String> {
    let dir = format!("/root/{}", snap.name);
    match &snap.kind {
        Kind::Plain(src) => {
            let mut tar = Command::new("tar")
                .arg("-C")
                .arg(src)
                .args(["-cf", "-", "."])
                .stdout(Stdio::piped())
                .spawn()
                .context("cannot run tar")?;
            let mut remote = ssh()?;
            remote.arg("-T").arg("--").arg(format!(
                "set -e; test ! -e {d} || {{ echo {d} already exists in the guest >&2; exit 17; }}; mkdir -p {d}; tar -xf - -C {d} --no-same-owner",
                d = q(&dir)
            ));
            remote.stdin(tar.stdout.take().context("tar stdout")?);
            let st = remote.status().context("cannot run ssh")?;
            let tst = tar.wait()?;
            if !st.success() || !tst.success() {
                bail!(
                    "copying {} into the guest failed (ssh {st}, tar {tst})",
                    src.display()
                );
            }
        }
        Kind::Git(g) => {
            let bundle = std::fs::File::open(&g.bundle)?;
            let tmp_bundle = format!("/root/.banger-ws-{}.bundle", std::process::id());
            let mut script = vec![
                "set -e".to_string(),
                format!("test ! -e {d} || {{ echo {d} already exists in the guest >&2; exit 17; }}", d = q(&dir)),
                format!("cat > {}", q(&tmp_bundle)),
                format!("git init -q {}", q(&dir)),
                format!("cd {}", q(&dir)),
                format!(
                    "git fetch -q --update-head-ok {} 'refs/heads/*:refs/heads/*' 'refs/banger/*:refs/banger/*'",
                    q(&tmp_bundle)
                ),
            ];
            match (&g.branch, &g.head) {
                (Some(b), _) => script.push(format!(
                    "git symbolic-ref HEAD {}",
                    q(&format!("refs/heads/{b}"))
                )),
                (None, Some(h)) => script.push(format!("git update-ref --no-deref HEAD {}", q(h))),
                (None, None) => {}
            }
            script.extend([
                "git read-tree refs/banger/worktree".to_string(),
                "git checkout-index -a -f".to_string(),
                "git read-tree refs/banger/index".to_string(),
                "git update-index -q --refresh || true".to_string(),
                // What `workspace export` takes the guest's changes from.
                "git update-ref refs/banger/base refs/banger/worktree".to_string(),
                "git update-ref -d refs/banger/index".to_string(),
                "git update-ref -d refs/banger/worktree".to_string(),
                format!("rm -f {}", q(&tmp_bundle)),
            ]);
            if let Some(o) = &g.origin {
                script.push(format!("git remote add origin {}", q(o)));
            }
            if let Some(b) = &g.new_branch {
                // A new branch keeps the index and working tree as they are.
                script.push(format!("git checkout -q -b {}", q(b)));
            }
            let mut remote = ssh()?;
            remote.arg("-T").arg("--").arg(script.join("\n"));
            remote.stdin(bundle);
            let st = remote.status().context("cannot run ssh")?;
            if !st.success() {
                bail!("setting up the workspace {dir} in the guest failed ({st})");
            }
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, script: &str) {
        let st = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(st.success(), "{script}");
    }

    /// The host repository is untouched by a snapshot: same refs, objects,
    /// index and status before and after.
    #[test]
    fn snapshot_leaves_the_host_repo_alone() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("repo");
        std::fs::create_dir(&r).unwrap();
        sh(
            &r,
            "git init -q -b main && git config user.email a@b && git config user.name a && echo a > a && git add a && git commit -qm one && echo b >> a && git add a && echo c >> a && echo new > untracked",
        );
        let state = |r: &Path| {
            let out = Command::new("sh")
                .arg("-c")
                .arg("git for-each-ref; git count-objects -v | grep -v size; md5sum .git/index; git --no-optional-locks status --porcelain=v2")
                .current_dir(r)
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        let before = state(&r);
        let s = snapshot(
            &r,
            &Options {
                include_untracked: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(state(&r), before);
        assert_eq!(s.name, "repo");
        assert_eq!(s.files, ["a", "untracked"]);
        let s = snapshot(&r, &Options::default()).unwrap();
        assert_eq!(s.files, ["a"]);
        let Kind::Git(g) = &s.kind else {
            panic!("a git snapshot")
        };
        assert_eq!(g.branch.as_deref(), Some("main"));
        assert!(g.bundle.metadata().unwrap().len() > 0);
    }

    #[test]
    fn from_a_commit_is_clean_and_checks_the_names() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("repo");
        std::fs::create_dir(&r).unwrap();
        sh(
            &r,
            "git init -q -b main && git config user.email a@b && git config user.name a && echo a > a && git add a && git commit -qm one && echo b > b && git add b && git commit -qm two && echo dirty >> a",
        );
        let opts = |from: Option<&str>, branch: Option<&str>| Options {
            include_untracked: false,
            from: from.map(String::from),
            branch: branch.map(String::from),
        };
        let s = snapshot(&r, &opts(Some("HEAD~1"), Some("try-it"))).unwrap();
        assert_eq!(s.files, ["a"]);
        let Kind::Git(g) = &s.kind else {
            panic!("a git snapshot")
        };
        assert_eq!(g.branch, None);
        assert_eq!(g.new_branch.as_deref(), Some("try-it"));
        let err = snapshot(&r, &opts(Some("nope"), None))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no such commit"), "{err}");
        let err = snapshot(&r, &opts(None, Some("bad..name")))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a valid branch name"), "{err}");
    }

    /// A `git worktree add` directory is a workspace of its own: its
    /// branch, its index and its working tree, not the main worktree's.
    #[test]
    fn a_linked_worktree_snapshots_its_own_state() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("repo");
        std::fs::create_dir(&r).unwrap();
        sh(
            &r,
            "git init -q -b main && git config user.email a@b && git config user.name a && echo a > a && git add a && git commit -qm one \
             && git worktree add -q -b feature ../wt && echo main-dirty >> a",
        );
        let wt = t.path().join("wt");
        sh(&wt, "echo f > f && git add f && echo wt-dirty >> a");
        let s = snapshot(&wt, &Options::default()).unwrap();
        assert_eq!(s.name, "wt");
        assert_eq!(s.files, ["a", "f"]);
        let Kind::Git(g) = &s.kind else {
            panic!("a git snapshot")
        };
        assert_eq!(g.branch.as_deref(), Some("feature"));
        // The bundle's working-tree commit has the worktree's edit, not main's.
        let scratch = t.path().join("check.git");
        sh(t.path(), "git init -q --bare check.git");
        let b = g.bundle.to_str().unwrap();
        sh(
            &scratch,
            &format!("git fetch -q {b} 'refs/banger/*:refs/banger/*'"),
        );
        let a = git(&scratch, &["show", "refs/banger/worktree:a"], &[]).unwrap();
        assert_eq!(a, "a\nwt-dirty");
        let idx = git(
            &scratch,
            &["ls-tree", "--name-only", "refs/banger/index"],
            &[],
        )
        .unwrap();
        assert_eq!(idx, "a\nf");
    }

    #[test]
    fn lfs_files_are_found_by_their_attribute() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("repo");
        std::fs::create_dir(&r).unwrap();
        sh(
            &r,
            "git init -q && printf '*.bin filter=lfs diff=lfs merge=lfs -text\\n' > .gitattributes \
             && echo x > big.bin && echo y > small.txt && git add -A",
        );
        assert_eq!(lfs_files(&r).unwrap(), ["big.bin"]);
        sh(&r, "git rm -q -f .gitattributes");
        assert!(lfs_files(&r).unwrap().is_empty());
    }

    #[test]
    fn refuses_submodules_and_subdirectories() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("repo");
        std::fs::create_dir_all(r.join("sub")).unwrap();
        sh(&r, "git init -q && touch .gitmodules");
        let err = snapshot(&r, &Options::default()).err().unwrap().to_string();
        assert!(err.contains("submodules"), "{err}");
        let err = snapshot(&r.join("sub"), &Options::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("top directory"), "{err}");
    }
}
