//! `banger image bundle` / `kernel bundle` (the daemon writes the bundle
//! into a file this process opened as the user) and their import, `image
//! pull FILE.tar.zst` / `kernel pull FILE.tar.zst`: the bundle is untrusted,
//! so it is read here, as the user, by [`banger_core::bundle::read`] (fixed
//! file names, sizes and sha256 checked while streaming) into a private
//! temporary directory (under `$TMPDIR`, else /tmp), and only the checked
//! files are handed to the daemon, as descriptors, through the ordinary
//! `image.register` / `kernel.import`, which check them again as any file
//! a user registers. The temporary copy is removed when the command ends.

use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use banger_core::bundle::{self, Kind, Manifest, Unpacked};
use banger_proto::methods::image::{BundleParams, BundleResult, RegisterParams};
use banger_proto::methods::{kernel, Empty};
use banger_proto::ErrorKind;
use banger_proto::FdRef;
use serde::Serialize;

use super::Env;
use crate::client::Client;
use crate::error::{usage, Refusal};
use crate::output;
use crate::progress::{self, OpResult, OpSummary};
use crate::render::{Outcome, Render};

/// Whether `image pull`'s argument names a bundle file rather than an OCI
/// reference: it ends in `.tar.zst` and is an existing file, or looks like a
/// path (starts with `/` or `.`, or has no `:` — a tag such as
/// `repo:v1.tar.zst` is a valid OCI reference, a missing `./x.tar.zst` is a
/// missing file and should be reported as one).
pub fn is_bundle_file(reference: &str) -> bool {
    reference.ends_with(".tar.zst")
        && (Path::new(reference).is_file()
            || reference.starts_with('/')
            || reference.starts_with('.')
            || !reference.contains(':'))
}

#[derive(Serialize)]
struct Bundled {
    #[serde(flatten)]
    result: BundleResult,
    path: String,
    operation: OpSummary,
}

impl Render for Bundled {
    fn text(&self) -> String {
        let r = &self.result;
        format!(
            "wrote {} bundle {} ({}; {}) in {}\n",
            r.kind,
            self.path,
            output::size(r.bytes),
            r.files
                .iter()
                .map(|f| format!("{} {}", f.name, output::size(f.size)))
                .collect::<Vec<_>>()
                .join(", "),
            progress::stage_summary(&self.operation.stages)
        )
    }
}

/// `image bundle NAME -o FILE` / `kernel bundle NAME -o FILE`. A failed or
/// cancelled bundle leaves no file behind.
pub fn write(
    env: &Env,
    client: &mut Client,
    kind: Kind,
    name: String,
    out: &Path,
) -> anyhow::Result<Outcome> {
    if out.is_dir() {
        return Err(usage(format!(
            "-o {}: is a directory; give the bundle's file name",
            out.display()
        )));
    }
    // Read-write: the daemon checks the descriptor is writable; the file is
    // the user's, made with the user's umask.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    let interrupt = progress::Interrupt::install()?;
    let params = BundleParams {
        name,
        out: FdRef { fd: 0 },
    };
    let fds = [file.as_fd()];
    let done = (|| -> anyhow::Result<Outcome> {
        let (op, result) = match kind {
            Kind::Image => {
                let begun = client
                    .call_with_fds::<banger_proto::methods::image::BundleBegin>(&params, &fds)?;
                let op = progress::follow(client, &begun.operation_id, env.json, &interrupt)?;
                let r = op.result_of::<banger_proto::methods::op::ImageBundle>()?;
                (op, r)
            }
            Kind::Kernel => {
                let begun = client.call_with_fds::<kernel::BundleBegin>(&params, &fds)?;
                let op = progress::follow(client, &begun.operation_id, env.json, &interrupt)?;
                let r = op.result_of::<banger_proto::methods::op::KernelBundle>()?;
                (op, r)
            }
        };
        Ok(Outcome::of(Bundled {
            result,
            path: out.display().to_string(),
            operation: OpSummary::of(&op),
        }))
    })();
    if done.is_err() {
        let _ = std::fs::remove_file(out);
    }
    done
}

/// Reads and checks the bundle at `path` (see the module doc).
fn unpack(env: &Env, path: &Path, want: Kind) -> anyhow::Result<(tempfile::TempDir, Unpacked)> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the bundle {}", path.display()))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let dir = tempfile::Builder::new()
        .prefix("banger-bundle-")
        .tempdir()
        .context("cannot make a temporary directory for the bundle (set TMPDIR)")?;
    if !env.json {
        eprintln!(
            "checking bundle {} ({})",
            path.display(),
            output::size(total)
        );
    }
    let interrupt = progress::Interrupt::install()?;
    let cancel: &AtomicBool = interrupt.flag();
    let unpacked = bundle::read(
        std::io::BufReader::new(file),
        dir.path(),
        cancel,
        &mut |_| {},
    )
    .with_context(|| format!("bundle {}", path.display()))?;
    if unpacked.manifest.kind != want {
        return Err(usage(format!(
            "{} is a {} bundle: import it with banger {} pull",
            path.display(),
            unpacked.manifest.kind.as_str(),
            unpacked.manifest.kind.as_str()
        )));
    }
    Ok((dir, unpacked))
}

fn file_of<'a>(u: &'a Unpacked, name: &str) -> Option<&'a Path> {
    u.files
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p.as_path())
}

/// `image pull FILE.tar.zst [--name N] [--kernel K]`: the kernel is the one
/// the bundle names, which must be registered with the same sha256 (else
/// import its kernel bundle, or give --kernel).
pub fn import_image(
    env: &Env,
    client: &mut Client,
    path: &str,
    name: Option<String>,
    kernel: Option<String>,
) -> anyhow::Result<Outcome> {
    let path = Path::new(path);
    let (_dir, u) = unpack(env, path, Kind::Image)?;
    let m: &Manifest = &u.manifest;
    let kernel = match (kernel, &m.kernel) {
        (Some(k), _) => k,
        (None, Some(want)) => {
            let visible = client.call::<kernel::List>(&Empty {})?;
            let Some(have) = visible.into_iter().find(|k| k.name == want.name) else {
                return Err(Refusal {
                    kind: ErrorKind::NotFound,
                    message: format!(
                        "the bundle was made with kernel {:?}, which is not registered here",
                        want.name
                    ),
                    hint: Some(
                        "import its kernel bundle first (banger kernel pull FILE.tar.zst), or pass --kernel".into(),
                    ),
                }
                .into());
            };
            if have.vmlinux.sha256 != want.sha256 {
                return Err(usage(format!(
                    "kernel {:?} here is not the one the bundle was made with (sha256 {} vs {}): \
                     import the bundle's kernel under another name and pass --kernel",
                    want.name, have.vmlinux.sha256, want.sha256
                )));
            }
            want.name.clone()
        }
        (None, None) => return Err(usage("the bundle names no kernel: pass --kernel")),
    };
    let rootfs = std::fs::File::open(file_of(&u, "rootfs.ext4").expect("checked by read"))?;
    let seed = file_of(&u, "work-seed.ext4")
        .map(std::fs::File::open)
        .transpose()?;
    let r = super::image::register(
        env,
        client,
        RegisterParams {
            name: name.unwrap_or_else(|| m.name.clone()),
            kernel,
            rootfs: FdRef { fd: 0 },
            work_seed: seed.as_ref().map(|_| FdRef { fd: 1 }),
            rootfs_source: Some(format!("{}:rootfs.ext4", path.display())),
            work_seed_source: seed
                .as_ref()
                .map(|_| format!("{}:work-seed.ext4", path.display())),
            features: m.features.clone(),
        },
        &rootfs,
        seed.as_ref(),
    )?;
    Ok(Outcome::of(r))
}

/// `kernel pull FILE.tar.zst [--name N]`.
pub fn import_kernel(
    env: &Env,
    client: &mut Client,
    path: &Path,
    name: Option<String>,
) -> anyhow::Result<Outcome> {
    let (_dir, u) = unpack(env, path, Kind::Kernel)?;
    let vmlinux = std::fs::File::open(file_of(&u, "vmlinux").expect("checked by read"))?;
    let initrd = file_of(&u, "initrd").map(std::fs::File::open).transpose()?;
    let r = super::kernel::import(
        env,
        client,
        name.unwrap_or_else(|| u.manifest.name.clone()),
        &vmlinux,
        initrd.as_ref(),
        format!("{}:vmlinux", path.display()),
    )?;
    Ok(Outcome::of(r))
}

#[cfg(test)]
mod tests {
    #[test]
    fn bundle_files_and_references_are_told_apart() {
        use super::is_bundle_file;
        for b in [
            "img.tar.zst",
            "./img.tar.zst",
            "/srv/b/img.tar.zst",
            "dir/img.tar.zst",
        ] {
            assert!(is_bundle_file(b), "{b}");
        }
        for r in [
            "debian:bookworm",
            "localhost:5000/team/img:v1.tar.zst",
            "ghcr.io/org/img:1.4",
        ] {
            assert!(!is_bundle_file(r), "{r}");
        }
    }
}
