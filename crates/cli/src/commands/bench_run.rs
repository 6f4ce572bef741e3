//! `banger bench run`: what `vm run PATH --rm -- true` costs, stage by stage.
//!
//! Each round creates a VM (the daemon's stages say how much of that is the
//! host's work and how much the guest's boot to reachable), copies the
//! workspace in the way `vm run` does, runs `true` over SSH and deletes the
//! VM. In the last round's VM the same tree is also sent with a plain
//! `tar -c | ssh tar -x`, one right after the other, so the workspace copy
//! has a baseline measured on the same guest in the same run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use banger_proto::methods::vm::{CreateBegin, CreateParams, Delete, DeleteParams};
use serde_json::json;

use super::bench::Shape;
use super::workspace::{self, Options};
use super::Env;
use crate::output;
use crate::render::{said, Outcome};

/// A tree to copy in, with its size.
struct Repo {
    label: String,
    path: PathBuf,
    files: u64,
    bytes: u64,
}

/// One round's times, in milliseconds.
#[derive(Default)]
struct Round {
    create_host: f64,
    boot_to_reachable: f64,
    snapshot: f64,
    copy: f64,
    command: f64,
    delete: f64,
    total: f64,
}

pub fn run(
    env: &Env,
    repo: Option<PathBuf>,
    count: usize,
    image: Option<String>,
    shape: &Shape,
) -> anyhow::Result<Outcome> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let scratch = tempfile::Builder::new()
        .prefix("banger-bench-run-")
        .tempdir()
        .context("cannot make a scratch directory")?;
    let repos = match repo {
        Some(p) => {
            let (files, bytes) = tree_size(&p)?;
            vec![Repo {
                label: p.display().to_string(),
                path: p,
                files,
                bytes,
            }]
        }
        None => vec![
            generate(&scratch.path().join("small"), 100, 4 << 10)?,
            generate(&scratch.path().join("large"), 10_000, 20 << 10)?,
        ],
    };
    let mut text = String::new();
    let mut results = Vec::new();
    for r in &repos {
        eprintln!(
            "bench run: {} ({} files, {:.1} MB), {count} rounds",
            r.label,
            r.files,
            r.bytes as f64 / 1e6
        );
        let (rounds, tar_ms) = rounds(env, r, count, image.as_deref(), shape)?;
        let med = |f: fn(&Round) -> f64| {
            let mut v: Vec<f64> = rounds.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let stages = [
            ("create (host side)", med(|r| r.create_host)),
            ("boot to reachable", med(|r| r.boot_to_reachable)),
            ("workspace snapshot (host)", med(|r| r.snapshot)),
            ("workspace copy", med(|r| r.copy)),
            ("command (true)", med(|r| r.command)),
            ("delete", med(|r| r.delete)),
            ("total", med(|r| r.total)),
        ];
        let copy = med(|r| r.snapshot + r.copy);
        let rate = |ms: f64| {
            (
                r.bytes as f64 / 1e6 / (ms / 1000.0),
                r.files as f64 / (ms / 1000.0),
            )
        };
        let (ws_mbs, ws_fps) = rate(copy);
        let (tar_mbs, tar_fps) = rate(tar_ms);
        let mut t = output::Table::new(&["STAGE", "MEDIAN"]);
        for (n, m) in &stages {
            t.row(vec![(*n).into(), format!("{m:.0}ms")]);
        }
        text.push_str(&format!(
            "{} ({} files, {:.1} MB), {count} rounds, medians:\n{}\
             workspace (snapshot + copy) {copy:.0}ms: {ws_mbs:.1} MB/s, {ws_fps:.0} files/s\n\
             tar | ssh of the same tree, same guest, last round: {tar_ms:.0}ms: {tar_mbs:.1} MB/s, \
             {tar_fps:.0} files/s (workspace/tar time ratio {:.2})\n\n",
            r.label,
            r.files,
            r.bytes as f64 / 1e6,
            t.render(),
            copy / tar_ms
        ));
        results.push(json!({
            "repo": r.label,
            "files": r.files,
            "bytes": r.bytes,
            "count": count,
            "stages_median_ms": stages.iter().map(|(n, m)| json!({"stage": n, "median_ms": m})).collect::<Vec<_>>(),
            "workspace_median_ms": copy,
            "workspace_mb_per_s": ws_mbs,
            "workspace_files_per_s": ws_fps,
            "tar_ssh_ms": tar_ms,
            "tar_ssh_mb_per_s": tar_mbs,
            "tar_ssh_files_per_s": tar_fps,
        }));
    }
    Ok(Outcome::of(said(
        json!({"image": image, "vmm": shape.vmm, "vcpus": shape.vcpu,
               "memory_mib": shape.memory_mib, "results": results}),
        text,
    )))
}

/// `count` rounds for one repo; the tar baseline in the last round's VM.
fn rounds(
    env: &Env,
    repo: &Repo,
    count: usize,
    image: Option<&str>,
    shape: &Shape,
) -> anyhow::Result<(Vec<Round>, f64)> {
    let interrupt = crate::progress::Interrupt::install()?;
    let tag = &banger_core::ids::new_id()[..6];
    let mut out = Vec::new();
    let mut tar_ms = 0.0;
    for i in 0..count {
        let name = format!("bench-run-{tag}-{i}");
        let mut round = Round::default();
        let start = Instant::now();
        let mut client = env.client()?;
        let begun = client.call::<CreateBegin>(&CreateParams {
            name: Some(name.clone()),
            image: image.map(str::to_string),
            vcpus: Some(shape.vcpu),
            memory_mib: Some(shape.memory_mib),
            disk_bytes: Some(shape.disk_bytes),
            vmm: shape.vmm.clone(),
            ..Default::default()
        })?;
        let created = crate::progress::follow(&mut client, &begun.operation_id, true, &interrupt);
        let body = created.and_then(|op| {
            let guest =
                |s: &&banger_proto::methods::op::StageInfo| s.name == "boot" || s.name == "ssh";
            round.boot_to_reachable = op
                .stages
                .iter()
                .filter(guest)
                .filter_map(|s| s.duration_ms)
                .sum();
            round.create_host = op
                .stages
                .iter()
                .filter(|s| !guest(s))
                .filter_map(|s| s.duration_ms)
                .sum();
            let t = Instant::now();
            let snap = workspace::snapshot(&repo.path, &Options::default())?;
            round.snapshot = ms(t);
            let t = Instant::now();
            workspace::push(&snap, &|| super::ssh::ssh_to(env, &name))?;
            round.copy = ms(t);
            let t = Instant::now();
            let st = super::ssh::ssh_to(env, &name)?
                .args(["-T", "--", "true"])
                .stdin(Stdio::null())
                .status()
                .context("cannot run ssh")?;
            if !st.success() {
                bail!("`true` in the guest failed: {st}");
            }
            round.command = ms(t);
            if i + 1 == count {
                tar_ms = tar_over_ssh(env, &name, &repo.path)?;
            }
            Ok(())
        });
        let t = Instant::now();
        let deleted = client.call::<Delete>(&DeleteParams {
            name: name.clone(),
            force: true,
        });
        round.delete = ms(t);
        round.total = ms(start);
        body?;
        deleted.with_context(|| format!("cannot delete {name}"))?;
        eprintln!(
            "  round {}: total {:.0}ms (boot to reachable {:.0}ms, workspace {:.0}ms)",
            i + 1,
            round.total,
            round.boot_to_reachable,
            round.snapshot + round.copy
        );
        out.push(round);
    }
    Ok((out, tar_ms))
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// The baseline: `tar -c` of the tree piped into `ssh tar -x`.
fn tar_over_ssh(env: &Env, name: &str, tree: &Path) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(tree)
        .args(["-cf", "-", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run tar")?;
    let mut ssh = super::ssh::ssh_to(env, name)?;
    ssh.args([
        "-T",
        "--",
        "mkdir -p /root/.bench-tar && tar -xf - -C /root/.bench-tar --no-same-owner",
    ])
    .stdin(tar.stdout.take().context("tar stdout")?);
    let st = ssh.status().context("cannot run ssh")?;
    let tst = tar.wait()?;
    if !st.success() || !tst.success() {
        bail!("tar | ssh failed (ssh {st}, tar {tst})");
    }
    Ok(ms(t))
}

/// A git repo of `files` files of `size` bytes each (incompressible, in 100
/// directories), one commit.
fn generate(dir: &Path, files: u64, size: usize) -> anyhow::Result<Repo> {
    std::fs::create_dir_all(dir)?;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ files;
    let mut buf = vec![0u8; size];
    for i in 0..files {
        let sub = dir.join(format!("d{:02}", i % 100));
        std::fs::create_dir_all(&sub)?;
        for chunk in buf.chunks_mut(8) {
            // xorshift64: cheap bytes that do not compress.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        std::fs::File::create(sub.join(format!("f{i:05}.bin")))?.write_all(&buf)?;
    }
    let git = |args: &[&str]| -> anyhow::Result<()> {
        let st = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .context("cannot run git")?;
        if !st.success() {
            bail!("git {args:?} failed: {st}");
        }
        Ok(())
    };
    git(&["init", "-q"])?;
    git(&["add", "-A"])?;
    git(&["commit", "-q", "-m", "bench"])?;
    Ok(Repo {
        label: format!("generated {files} files"),
        path: dir.to_path_buf(),
        files,
        bytes: files * size as u64,
    })
}

/// Files and bytes under `dir`, `.git` left out.
fn tree_size(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let e = e?;
            let ty = e.file_type()?;
            if ty.is_dir() {
                if e.file_name() != ".git" {
                    stack.push(e.path());
                }
            } else if ty.is_file() {
                files += 1;
                bytes += e.metadata()?.len();
            }
        }
    }
    Ok((files, bytes))
}
