//! `banger image register|build|pull|list|show|delete|promote`, and the
//! first-use build `vm create` runs when no image is registered.

use std::os::fd::AsFd;
use std::path::PathBuf;

use banger_proto::methods::image::{
    BuildBegin, BuildParams, BuildResult, Delete, ImageInfo, List, Promote, PullBegin, PullParams,
    PullResult, RegisterBegin, RegisterParams, RegistryAuth, Show,
};
use banger_proto::methods::{Empty, NameParams};
use banger_proto::FdRef;
use clap::Subcommand;
use serde::Serialize;
use serde_json::json;

use super::kernel::list_or_dash;
use super::{open_input, Env};
use crate::client::Client;
use crate::progress::{OpResult, OpSummary};
use crate::render::{Outcome, Render};
use crate::{output, progress, render};

/// What `vm create` builds when no image is registered.
pub const AUTO_DISTRO: &str = "debian-bookworm";

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Register an ext4 root filesystem (and optional /root seed) with a kernel.
    Register {
        #[arg(long)]
        name: String,
        /// The root filesystem, an ext4 image.
        #[arg(long)]
        rootfs: PathBuf,
        /// Name of a registered kernel (see `banger kernel list`).
        #[arg(long)]
        kernel: String,
        /// An ext4 image whose content seeds each VM's /root disk.
        #[arg(long)]
        work_seed: Option<PathBuf>,
        /// What the guest offers: ssh, agent, overlay (comma-separated;
        /// overlay: its agent, as init, can assemble an overlay root, so
        /// VMs share the rootfs read-only where there are no reflinks).
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
    },
    /// Build a golden image from Debian packages (mmdebstrap) and register it,
    /// with SSH and the guest agent, and banger's default kernel unless
    /// --kernel (built first when missing). Cached by recipe.
    Build {
        /// The distribution: debian-bookworm.
        distro: String,
        /// minimal (small, boots fast; what CI uses) or full (adds
        /// build-essential, docker.io, python3, jq, vim, ...).
        #[arg(long, default_value = "minimal", value_parser = ["minimal", "full"])]
        variant: String,
        /// Name to register it under (default: the distribution, plus -full
        /// for the full variant).
        #[arg(long)]
        name: Option<String>,
        /// A registered kernel (default: banger-6-1, built when missing).
        #[arg(long)]
        kernel: Option<String>,
        /// A Debian mirror instead of deb.debian.org.
        #[arg(long, value_name = "URL")]
        mirror: Option<String>,
        /// If an image of that name exists with other content, replace it
        /// (refused while VMs use it) instead of failing.
        #[arg(long)]
        replace: bool,
    },
    /// Pull an OCI image (docker.io/library/debian:bookworm,
    /// ghcr.io/org/img:1.4, localhost:5000/team/img@sha256:...), make it
    /// bootable (banger's guest setup and agent, as `image build` does) and
    /// register it. Credentials for its registry come from your
    /// ~/.docker/config.json (`docker login`). Layers are cached. A
    /// FILE.tar.zst made by `image bundle` is imported instead (checked,
    /// then registered with the kernel it names, or --kernel).
    Pull {
        /// `[registry/]repository[:tag|@sha256:...]`, or a bundle FILE.tar.zst.
        reference: String,
        /// Name to register it under (default: the repository's last
        /// component, plus the tag unless it is latest).
        #[arg(long)]
        name: Option<String>,
        /// A registered kernel (default: banger-6-1).
        #[arg(long)]
        kernel: Option<String>,
        /// The root filesystem's size (e.g. 2G), also the bound on the
        /// unpacked content (default: content + 25% + 64 MiB, at most 16 GiB of content).
        #[arg(long)]
        size: Option<String>,
        /// The platform to pull from a multi-platform image.
        #[arg(long, default_value = "linux/amd64", value_parser = ["linux/amd64"])]
        platform: String,
        /// Plain HTTP to a registry that is not on loopback (loopback always is).
        #[arg(long)]
        insecure: bool,
    },
    /// Write an image as one file to share (manifest.json, rootfs, /root
    /// seed in a tar.zst); `banger image pull FILE.tar.zst` imports it.
    Bundle {
        name: String,
        /// The bundle to write (replaced if it exists).
        #[arg(short = 'o', long = "output", value_name = "FILE.tar.zst")]
        output: PathBuf,
    },
    /// List images.
    #[command(visible_alias = "ls")]
    List,
    /// Show one image.
    Show { name: String },
    /// Delete an image no VM uses.
    #[command(visible_alias = "rm")]
    Delete { name: String },
    /// Make an image the default for `vm create` (root: for everyone).
    Promote { name: String },
}

pub fn run(env: &Env, cmd: ImageCmd) -> anyhow::Result<Outcome> {
    let mut client = env.client()?;
    Ok(match cmd {
        ImageCmd::Register {
            name,
            rootfs,
            kernel,
            work_seed,
            features,
        } => {
            let root = open_input(&rootfs, "rootfs")?;
            let seed = work_seed
                .as_deref()
                .map(|p| open_input(p, "work seed"))
                .transpose()?;
            Outcome::of(register(
                env,
                &mut client,
                RegisterParams {
                    name,
                    kernel,
                    rootfs: FdRef { fd: 0 },
                    work_seed: seed.as_ref().map(|_| FdRef { fd: 1 }),
                    rootfs_source: Some(rootfs.display().to_string()),
                    work_seed_source: work_seed.map(|p| p.display().to_string()),
                    features,
                },
                &root,
                seed.as_ref(),
            )?)
        }
        ImageCmd::Build {
            distro,
            variant,
            name,
            kernel,
            mirror,
            replace,
        } => {
            let interrupt = progress::Interrupt::install()?;
            let params = BuildParams {
                distro,
                variant: Some(variant),
                name,
                kernel,
                mirror,
                replace,
                auto: false,
            };
            Outcome::of(build(&mut client, env, &params, &interrupt)?)
        }
        ImageCmd::Pull {
            reference,
            name,
            kernel,
            size,
            platform,
            insecure,
        } => {
            if super::bundle::is_bundle_file(&reference) {
                return super::bundle::import_image(env, &mut client, &reference, name, kernel);
            }
            let interrupt = progress::Interrupt::install()?;
            let size = size
                .map(|s| banger_core::size::parse(&s).map_err(anyhow::Error::msg))
                .transpose()?;
            let params = PullParams {
                auth: docker_auth(&registry_of(&reference)),
                reference,
                name,
                kernel,
                size,
                platform: Some(platform),
                insecure,
            };
            let begun = client.call::<PullBegin>(&params)?;
            let op = progress::follow(&mut client, &begun.operation_id, env.json, &interrupt)?;
            let r: PullResult = op.result_of::<banger_proto::methods::op::ImagePull>()?;
            Outcome::of(Pulled {
                result: r,
                operation: OpSummary::of(&op),
            })
        }
        ImageCmd::Bundle { name, output } => super::bundle::write(
            env,
            &mut client,
            banger_core::bundle::Kind::Image,
            name,
            &output,
        )?,
        ImageCmd::List => Outcome::of(ImageTable(client.call::<List>(&Empty {})?)),
        ImageCmd::Show { name } => {
            Outcome::of(ImageShow(client.call::<Show>(&NameParams { name })?))
        }
        ImageCmd::Delete { name } => {
            client.call::<Delete>(&NameParams { name: name.clone() })?;
            let text = format!("deleted image {name}");
            Outcome::of(render::said(json!({ "deleted": name }), text))
        }
        ImageCmd::Promote { name } => {
            let i = client.call::<Promote>(&NameParams { name })?;
            let text = format!("image {} is now the default", i.name);
            Outcome::of(render::said(i, text))
        }
    })
}

/// `image register` of `rootfs` (descriptor 0) and `seed` (descriptor 1),
/// followed to its end.
pub(super) fn register(
    env: &Env,
    client: &mut Client,
    params: RegisterParams,
    rootfs: &std::fs::File,
    seed: Option<&std::fs::File>,
) -> anyhow::Result<Registered> {
    let interrupt = progress::Interrupt::install()?;
    let mut fds = vec![rootfs.as_fd()];
    if let Some(f) = seed {
        fds.push(f.as_fd());
    }
    let begun = client.call_with_fds::<RegisterBegin>(&params, &fds)?;
    let op = progress::follow(client, &begun.operation_id, env.json, &interrupt)?;
    Ok(Registered {
        image: op.result_of::<banger_proto::methods::op::ImageRegister>()?,
        operation: OpSummary::of(&op),
    })
}

/// `image register`: the image and the operation that made it.
#[derive(Serialize)]
pub(super) struct Registered {
    image: ImageInfo,
    operation: OpSummary,
}

impl Render for Registered {
    fn text(&self) -> String {
        format!(
            "registered image {} (rootfs {}, kernel {}) in {}\n",
            self.image.name,
            output::size(self.image.rootfs.size),
            self.image.kernel,
            progress::stage_summary(&self.operation.stages)
        )
    }
}

/// `image pull`.
#[derive(Serialize)]
struct Pulled {
    #[serde(flatten)]
    result: PullResult,
    operation: OpSummary,
}

impl Render for Pulled {
    fn text(&self) -> String {
        let r = &self.result;
        format!(
            "pulled image {} ({}; {} layers, {} from the cache, {} downloaded; rootfs {}, kernel \
             {}, features {}) in {}\n",
            r.image.name,
            r.digest,
            r.layers,
            r.layers_cached,
            output::size(r.downloaded),
            output::size(r.image.rootfs.size),
            r.image.kernel,
            list_or_dash(&r.image.features),
            progress::stage_summary(&self.operation.stages)
        )
    }
}

/// The registry host of an image reference, as docker names it: the first
/// component when it looks like a host (has `.` or `:`, or is localhost),
/// else docker.io.
pub fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_string()
        }
        _ => "docker.io".to_string(),
    }
}

/// Credentials for `registry` from the user's docker config
/// (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`): the
/// `auths` entry's `auth` (base64 `user:password`) or `username` and
/// `password`. Credential helpers are not run (a note says so). Read by the
/// CLI, as the user; the daemon reads no home.
fn docker_auth(registry: &str) -> Option<RegistryAuth> {
    let path = match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => PathBuf::from(d).join("config.json"),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".docker/config.json"),
    };
    let text = std::fs::read_to_string(&path).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    auth_from_config(&config, registry).or_else(|| {
        if config.get("credsStore").is_some() || config["credHelpers"].get(registry).is_some() {
            eprintln!(
                "note: {} names a credential helper for {registry}; banger does not run \
                 helpers, so the pull is anonymous",
                path.display()
            );
        }
        None
    })
}

pub fn auth_from_config(config: &serde_json::Value, registry: &str) -> Option<RegistryAuth> {
    use base64::Engine;
    let docker = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    let host = |key: &str| {
        let k = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        k.split('/').next().unwrap_or(k).to_string()
    };
    let same = |h: &str| h == registry || (docker.contains(&h) && docker.contains(&registry));
    let auths = config.get("auths")?.as_object()?;
    let entry = auths.iter().find(|(k, _)| same(&host(k)))?.1;
    if let Some(a) = entry.get("auth").and_then(|a| a.as_str()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (u, p) = text.split_once(':')?;
        return Some(RegistryAuth {
            username: u.to_string(),
            password: p.to_string(),
        });
    }
    Some(RegistryAuth {
        username: entry.get("username")?.as_str()?.to_string(),
        password: entry.get("password")?.as_str()?.to_string(),
    })
}

/// `image list`.
#[derive(Serialize)]
#[serde(transparent)]
struct ImageTable(Vec<ImageInfo>);

impl Render for ImageTable {
    fn text(&self) -> String {
        let mut t = output::Table::new(&[
            "NAME",
            "KERNEL",
            "ROOTFS",
            "WORK SEED",
            "DEFAULT",
            "CREATED",
        ]);
        for i in &self.0 {
            t.row(vec![
                i.name.clone(),
                i.kernel.clone(),
                output::size(i.rootfs.size),
                i.work_seed
                    .as_ref()
                    .map_or("-".into(), |s| output::size(s.size)),
                if i.default { "*" } else { "" }.into(),
                output::ago(&i.created_at),
            ]);
        }
        t.render()
    }
}

/// `image show`.
#[derive(Serialize)]
#[serde(transparent)]
struct ImageShow(ImageInfo);

impl Render for ImageShow {
    fn text(&self) -> String {
        let i = &self.0;
        let mut t = output::Table::new(&["FIELD", "VALUE"]);
        t.row(vec!["name".into(), i.name.clone()]);
        t.row(vec!["id".into(), i.id.clone()]);
        t.row(vec!["owner".into(), format!("uid {}", i.owner_uid)]);
        t.row(vec!["kernel".into(), i.kernel.clone()]);
        t.row(vec![
            "rootfs".into(),
            format!("{} ({})", i.rootfs.path, output::size(i.rootfs.size)),
        ]);
        t.row(vec!["rootfs sha256".into(), i.rootfs.sha256.clone()]);
        if let Some(s) = &i.work_seed {
            t.row(vec![
                "work seed".into(),
                format!("{} ({})", s.path, output::size(s.size)),
            ]);
        }
        t.row(vec![
            "default".into(),
            if i.default { "yes" } else { "no" }.into(),
        ]);
        t.row(vec!["created".into(), i.created_at.clone()]);
        t.row(vec!["used by".into(), list_or_dash(&i.used_by)]);
        t.render()
    }
}

/// `image build` (and the first-use build of `vm create`).
#[derive(Serialize)]
pub struct Built {
    image: ImageInfo,
    cached: bool,
    reused: bool,
    kernel_built: bool,
    cache_key: String,
    operation: OpSummary,
}

impl Render for Built {
    fn text(&self) -> String {
        let how = match (self.reused, self.cached) {
            (true, _) => "already registered",
            (false, true) => "from the build cache",
            (false, false) => "built",
        };
        format!(
            "image {} (rootfs {}, kernel {}, features {}{}) {how} in {}\n",
            self.image.name,
            output::size(self.image.rootfs.size),
            self.image.kernel,
            self.image.features.join(","),
            if self.image.default { ", default" } else { "" },
            progress::stage_summary(&self.operation.stages)
        )
    }
}

/// Runs an image build to its end.
fn build(
    client: &mut Client,
    env: &Env,
    params: &BuildParams,
    interrupt: &progress::Interrupt,
) -> anyhow::Result<Built> {
    let begun = client.call::<BuildBegin>(params)?;
    let op = progress::follow(client, &begun.operation_id, env.json, interrupt)?;
    let r: BuildResult = op.result_of::<banger_proto::methods::op::ImageBuild>()?;
    Ok(Built {
        image: r.image,
        cached: r.cached,
        reused: r.reused,
        kernel_built: r.kernel_built,
        cache_key: r.cache_key,
        operation: OpSummary::of(&op),
    })
}

/// Whether `vm create` builds an image first.
#[derive(Debug, PartialEq, Eq)]
pub enum AutoBuild {
    /// An image was named, or some image exists: create as usual.
    No,
    /// Nothing is registered: build debian-bookworm minimal first.
    Build,
    /// Nothing is registered and `--no-build` forbids building.
    Forbidden,
}

pub fn auto_build_decision(image_given: bool, visible_images: usize, no_build: bool) -> AutoBuild {
    match (image_given || visible_images > 0, no_build) {
        (true, _) => AutoBuild::No,
        (false, true) => AutoBuild::Forbidden,
        (false, false) => AutoBuild::Build,
    }
}

/// Before `vm create`: when no image is visible and none was named, build
/// the default one (the daemon refuses when `[build] auto = false`).
pub fn ensure_image(
    client: &mut Client,
    env: &Env,
    image_given: bool,
    no_build: bool,
    interrupt: &progress::Interrupt,
) -> anyhow::Result<()> {
    let visible = if image_given {
        0
    } else {
        client.call::<List>(&Empty {})?.len()
    };
    match auto_build_decision(image_given, visible, no_build) {
        AutoBuild::No => Ok(()),
        AutoBuild::Forbidden => Err(crate::error::usage(format!(
            "no image is registered and --no-build forbids building one; build it with \
             `banger image build {AUTO_DISTRO}` (or register one with `banger image register`)"
        ))),
        AutoBuild::Build => {
            eprintln!(
                "no image registered: building {AUTO_DISTRO} minimal (first time only; \
                 --no-build or [build] auto = false forbid this)"
            );
            let params = BuildParams {
                distro: AUTO_DISTRO.into(),
                auto: true,
                ..BuildParams::default()
            };
            let built = build(client, env, &params, interrupt)?;
            if !env.json {
                eprint!("{}", built.text());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_build_only_when_nothing_is_registered() {
        assert_eq!(auto_build_decision(false, 0, false), AutoBuild::Build);
        assert_eq!(auto_build_decision(false, 0, true), AutoBuild::Forbidden);
        assert_eq!(auto_build_decision(false, 2, false), AutoBuild::No);
        assert_eq!(auto_build_decision(false, 2, true), AutoBuild::No);
        assert_eq!(auto_build_decision(true, 0, false), AutoBuild::No);
        assert_eq!(auto_build_decision(true, 0, true), AutoBuild::No);
    }
}

#[cfg(test)]
mod pull_tests {
    use super::{auth_from_config, registry_of};

    #[test]
    fn registries_and_docker_config_credentials() {
        assert_eq!(registry_of("debian:bookworm"), "docker.io");
        assert_eq!(registry_of("library/debian"), "docker.io");
        assert_eq!(registry_of("ghcr.io/org/x:1"), "ghcr.io");
        assert_eq!(registry_of("localhost:5000/x"), "localhost:5000");
        assert_eq!(registry_of("localhost/x"), "localhost");
        let c = serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {"auth": "dTpwOnc="},
            "127.0.0.1:5000": {"username": "a", "password": "b"},
        }});
        let a = auth_from_config(&c, "docker.io").unwrap();
        assert_eq!((a.username.as_str(), a.password.as_str()), ("u", "p:w"));
        let a = auth_from_config(&c, "127.0.0.1:5000").unwrap();
        assert_eq!((a.username.as_str(), a.password.as_str()), ("a", "b"));
        assert!(auth_from_config(&c, "ghcr.io").is_none());
    }
}
