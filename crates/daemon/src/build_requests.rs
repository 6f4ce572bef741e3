//! What an `image.build`, `image.register`, `kernel.build` or `kernel.import`
//! (or `image.pull`) request becomes: the cheap checks (inputs, names, ownership, reserved
//! names, `--replace` rights, the caller's descriptors) done before any work
//! starts, and the job the operation then runs. The RPC handlers only adapt:
//! params → [`image_job`] / [`register_job`] / [`kernel_job`] /
//! [`import_job`] / [`pull_job`] → an operation.

use banger_core::config::Config;
use banger_proto::methods::{image, kernel};
use banger_proto::names::validate_name;

use crate::builds::{
    check_fragment, check_replace, check_reserved, check_shared_kernel, clamp_jobs, debian_source,
    default_image_name, default_kernel_name, find_agent, owner_of, read_fragment, ImageJob,
    KernelChoice, KernelJob,
};
use crate::caller::{Caller, Fds};
use crate::error::Error;
use crate::images::{self, RegisterJob};
use crate::kernels::ImportJob;
use crate::registry::Registry;
use crate::{caller_files, kernels};

/// `image register`: a name of the caller's (never a reserved one), a kernel
/// the caller may use, and ext4 images as descriptors.
pub async fn register_job(
    registry: &Registry,
    caller: &Caller,
    fds: &mut Fds,
    p: image::RegisterParams,
) -> Result<RegisterJob, Error> {
    validate_name(&p.name).map_err(|e| Error::invalid(e.to_string()))?;
    check_reserved("image", &p.name, caller.uid)?;
    if registry.store.image_by_name(&p.name)?.is_some() {
        return Err(Error::already_exists("image", &p.name));
    }
    let kernel = kernels::find(registry, caller, &p.kernel)?;
    check_shared_kernel(caller.uid, &kernel)?;
    for f in &p.features {
        if !image::FEATURES.contains(&f.as_str()) {
            return Err(Error::invalid(format!(
                "unknown image feature {f:?}: known ones are {}",
                image::FEATURES.join(", ")
            )));
        }
    }
    let rootfs = images::validate_ext4(fds.take(p.rootfs, "rootfs")?, "rootfs").await?;
    let work_seed = match p.work_seed {
        Some(r) => Some(images::validate_ext4(fds.take(r, "work seed")?, "work seed").await?),
        None => None,
    };
    Ok(RegisterJob {
        features: p.features,
        owner_uid: caller.uid,
        name: p.name,
        kernel_id: kernel.id,
        rootfs,
        work_seed,
    })
}

/// `kernel import`: a name of the caller's (never a reserved one), and the
/// kernel (and initrd) as regular-file descriptors.
pub async fn import_job(
    registry: &Registry,
    caller: &Caller,
    fds: &mut Fds,
    p: kernel::ImportParams,
) -> Result<ImportJob, Error> {
    validate_name(&p.name).map_err(|e| Error::invalid(e.to_string()))?;
    check_reserved("kernel", &p.name, caller.uid)?;
    if registry.store.kernel_by_name(&p.name)?.is_some() {
        return Err(Error::already_exists("kernel", &p.name));
    }
    let kernel = caller_files::regular(fds.take(p.kernel, "kernel")?, "kernel").await?;
    let initrd = match p.initrd {
        Some(r) => Some(caller_files::regular(fds.take(r, "initrd")?, "initrd").await?),
        None => None,
    };
    Ok(ImportJob {
        owner_uid: caller.uid,
        name: p.name,
        kernel,
        initrd,
    })
}

/// `auto` is the first-use build `vm create` asks for: banger's defaults
/// only, allowed unless `[build] auto = false`.
pub fn image_job(
    registry: &Registry,
    config: &Config,
    caller: &Caller,
    p: &image::BuildParams,
) -> Result<ImageJob, Error> {
    use banger_core::image_build::{self, ImageSpec, Variant};
    if p.auto {
        if !config.build.auto {
            return Err(Error::precondition(
                "no image is registered, and automatic builds are off ([build] auto = false)",
            )
            .hint(
                "build one with `banger image build debian-bookworm` (or register one with \
                 `banger image register`), then retry",
            ));
        }
        if p.name.is_some() || p.kernel.is_some() || p.mirror.is_some() || p.replace {
            return Err(Error::invalid(
                "auto builds use banger's defaults: no name, kernel, mirror or replace",
            ));
        }
    }
    let variant: Variant = p
        .variant
        .as_deref()
        .unwrap_or("minimal")
        .parse()
        .map_err(Error::invalid)?;
    if p.auto && variant != Variant::Minimal {
        return Err(Error::invalid("auto builds are minimal"));
    }
    if !image::DISTROS.contains(&p.distro.as_str()) {
        return Err(Error::invalid(format!(
            "unknown distribution {:?}: known ones are {}",
            p.distro,
            image::DISTROS.join(", ")
        )));
    }
    let mirror = p.mirror.clone().or_else(|| config.build.mirror.clone());
    if let Some(m) = &p.mirror {
        // apt reads a file: mirror as root: a user could read a root-only
        // repository into their image.
        let http = m.starts_with("http://") || m.starts_with("https://");
        if !caller.is_root() && !http {
            return Err(Error::denied(
                "--mirror: only root may use a file: mirror; users may give http(s) URLs",
            ));
        }
    }
    let agent = find_agent(config)?;
    let spec = ImageSpec {
        distro: p.distro.clone(),
        variant,
        agent_binary: agent,
        mirror,
    };
    image_build::check_spec(&spec).map_err(Error::from)?;

    let default_name = default_image_name(&p.distro, variant);
    let name = p.name.clone().unwrap_or_else(|| default_name.clone());
    validate_name(&name).map_err(|e| Error::invalid(e.to_string()))?;
    if let Some(i) = registry.store.image_by_name(&name)? {
        if !caller.can_see_shared(i.owner_uid) {
            return Err(Error::already_exists("image", &name));
        }
        check_replace(caller, "image", &name, i.owner_uid, p.replace)?;
    }
    let jobs = config.build.jobs as usize;
    let default_kernel = default_kernel_name();
    let kernel = match &p.kernel {
        Some(k) => KernelChoice::Registered(Box::new(kernels::find(registry, caller, k)?)),
        None => match registry.store.kernel_by_name(&default_kernel)? {
            // The default kernel is root's, or it is not the default: root's
            // requests see every user's objects, so without this check root's
            // first build could pick up a user's kernel under that name.
            Some(k) if k.owner_uid == 0 => KernelChoice::Registered(Box::new(k)),
            Some(k) if caller.can_see_shared(k.owner_uid) => {
                return Err(Error::precondition(format!(
                    "kernel {default_kernel:?} belongs to uid {}, not root: it is not banger's \
                     default kernel",
                    k.owner_uid
                ))
                .hint("pass --kernel NAME, or (root) delete it so the default can be built"))
            }
            Some(_) => {
                return Err(
                    Error::already_exists("kernel", &default_kernel).hint("pass --kernel NAME")
                )
            }
            None => KernelChoice::BuildDefault { jobs },
        },
    };
    // Shared only when every input is root's: the default mirror (root's
    // config), and root's default kernel.
    let root_kernel = match &kernel {
        KernelChoice::Registered(k) => k.owner_uid == 0 && k.name == default_kernel,
        KernelChoice::BuildDefault { .. } => true,
    };
    let default_inputs = p.mirror.is_none() && root_kernel;
    let owner_uid = owner_of(caller.uid, default_inputs, name == default_name);
    check_reserved("image", &name, owner_uid)?;
    if let KernelChoice::Registered(k) = &kernel {
        check_shared_kernel(owner_uid, k)?;
    }
    Ok(ImageJob {
        owner_uid,
        caller_uid: caller.uid,
        name: name.clone(),
        spec,
        kernel,
        replace: p.replace,
    })
}

/// `--source DIR` is root only: building a tree runs its Makefiles as root.
/// The tree comes as the caller's `O_DIRECTORY` descriptor, named for `make`
/// as `/proc/self/fd/N`; `--config` comes as a descriptor and is read here.
pub async fn kernel_job(
    registry: &Registry,
    config: &Config,
    caller: &Caller,
    fds: &mut Fds,
    p: kernel::BuildParams,
) -> Result<KernelJob, Error> {
    use banger_core::kernel_build::{self, Source};
    use std::os::fd::AsRawFd;
    let (source, source_dir) = match p.source {
        Some(r) => {
            if !caller.is_root() {
                return Err(Error::denied(
                    "--source: building a kernel tree runs its Makefiles as root, so only root \
                     may build one; without --source banger builds Debian's linux-source",
                ));
            }
            let shown = p.source_path.clone().unwrap_or_else(|| "DIR".into());
            let (dir, path) =
                caller_files::check_named(fds.take(r, "source")?, "--source", move |dir| {
                    let is_dir = dir
                        .metadata()
                        .map_err(|e| Error::internal(format!("fstat source: {e}")))?
                        .is_dir();
                    if !is_dir {
                        return Err(Error::invalid(
                            "--source: not a directory (pass an unpacked kernel tree)",
                        ));
                    }
                    let path =
                        std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
                    if !path.join("Makefile").is_file() {
                        return Err(Error::invalid(format!(
                            "--source {shown}: has no Makefile: not a kernel tree"
                        )));
                    }
                    Ok(path)
                })
                .await?;
            (Source::Tree(path), Some(dir))
        }
        None => {
            let tarball = std::path::Path::new(kernel_build::DEBIAN_TARBALL);
            if !tarball.is_file() {
                return Err(Error::missing_packages(
                    format!(
                        "Debian's kernel source {} is not installed",
                        tarball.display()
                    ),
                    &["linux-source-6.1"],
                ));
            }
            (debian_source(), None)
        }
    };
    let fragment = match p.config {
        Some(r) => {
            let bytes = read_fragment(fds.take(r, "config")?).await?;
            check_fragment(&bytes, caller.is_root())?;
            bytes
        }
        None => kernel_build::DEFAULT_FRAGMENT.as_bytes().to_vec(),
    };
    let default_name = kernel_build::default_name(kernel_build::series(&source).as_deref());
    let name = p.name.unwrap_or_else(|| default_name.clone());
    validate_name(&name).map_err(|e| Error::invalid(e.to_string()))?;
    if let Some(k) = registry.store.kernel_by_name(&name)? {
        if !caller.can_see_shared(k.owner_uid) {
            return Err(Error::already_exists("kernel", &name));
        }
        check_replace(caller, "kernel", &name, k.owner_uid, p.replace)?;
    }
    let default_inputs =
        source_dir.is_none() && fragment == kernel_build::DEFAULT_FRAGMENT.as_bytes();
    let owner_uid = owner_of(caller.uid, default_inputs, name == default_name);
    check_reserved("kernel", &name, owner_uid)?;
    Ok(KernelJob {
        owner_uid,
        caller_uid: caller.uid,
        name: name.clone(),
        source,
        source_dir,
        fragment,
        jobs: clamp_jobs(
            caller,
            p.jobs.filter(|&j| j > 0).unwrap_or(config.build.jobs) as usize,
        ),
        replace: p.replace,
    })
}

/// `image pull`: the reference and platform, a name of the caller's (never a
/// reserved one), a kernel the caller may use, the size bound. The image is
/// the caller's.
pub fn pull_job(
    registry: &Registry,
    config: &Config,
    caller: &Caller,
    p: image::PullParams,
) -> Result<crate::pull::PullJob, Error> {
    match p.platform.as_deref() {
        None | Some("linux/amd64") => {}
        Some(other) => {
            return Err(Error::invalid(format!(
            "platform {other:?}: banger's guests are x86-64 Linux, so only linux/amd64 is pulled"
        )))
        }
    }
    crate::pull::registry::parse_reference(&p.reference)?;
    let name = match &p.name {
        Some(n) => n.clone(),
        None => crate::pull::default_name(&p.reference)?,
    };
    validate_name(&name).map_err(|e| {
        Error::invalid(format!("image name {name:?}: {e}")).hint("pass --name NAME")
    })?;
    let owner_uid = caller.uid;
    check_reserved("image", &name, owner_uid)?;
    if registry.store.image_by_name(&name)?.is_some() {
        return Err(Error::already_exists("image", &name).hint("pass --name NAME"));
    }
    let kernel_name = p.kernel.clone().unwrap_or_else(default_kernel_name);
    let kernel = kernels::find(registry, caller, &kernel_name).map_err(|e| {
        if p.kernel.is_none() {
            e.hint("build the default kernel with `banger kernel build`, or pass --kernel NAME")
        } else {
            e
        }
    })?;
    check_shared_kernel(owner_uid, &kernel)?;
    if let Some(s) = p.size {
        if s < 64 << 20 {
            return Err(Error::invalid("--size: at least 64 MiB"));
        }
    }
    let agent = find_agent(config)?;
    Ok(crate::pull::PullJob {
        owner_uid,
        name: name.clone(),
        kernel_id: kernel.id,
        reference: p.reference.clone(),
        insecure: p.insecure,
        auth: p.auth.clone(),
        size: p.size,
        agent,
    })
}
