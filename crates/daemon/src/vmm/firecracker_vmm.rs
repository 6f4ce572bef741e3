//! Firecracker as a [`Vmm`]: one process per VM, configured over its API
//! socket. The building blocks (launch, typed API client) live in
//! [`super::firecracker`]; this file maps the lifecycle's verbs onto them.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use banger_core::config::Config;
use banger_core::tools;
use banger_proto::agent::AGENT_VSOCK_PORT;
use tokio::net::UnixStream;

use super::backend::{LaunchSpec, Vmm, VmmError, VmmHandle};
use super::firecracker::api::{
    Action, ApiClient, BootSource, Drive, MachineConfig, NetworkInterface, Vsock,
};
use super::firecracker::launch::{self, LaunchPaths, API_READY_TIMEOUT};
use super::probe::BinaryCheck;
use super::process;

pub const KIND: &str = "firecracker";

/// The vsock device's Unix socket, in the VM's runtime dir.
pub const VSOCK_SOCKET: &str = "vsock.sock";

/// The guest's vsock context id (2 is the host; every VM has its own device,
/// so they can all use the first free one).
pub const GUEST_CID: u32 = 3;

pub struct FirecrackerVmm {
    config: Config,
    /// `firecracker --version` is supported: run on a blocking thread by the
    /// first caller, again only when the binary changes, so a start does not
    /// pay for it.
    checked: BinaryCheck<()>,
}

impl FirecrackerVmm {
    pub fn new(config: Config) -> FirecrackerVmm {
        FirecrackerVmm {
            config,
            checked: BinaryCheck::default(),
        }
    }

    fn binary(&self) -> Result<PathBuf, VmmError> {
        match tools::find_firecracker(&self.config) {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(VmmError::Unavailable(
                "firecracker not found (config firecracker_bin, PATH, or next to bangerd)".into(),
            )),
            Err(e) => Err(VmmError::Unavailable(e.to_string())),
        }
    }

    fn paths(spec_run: &Path, spec_vm: &Path) -> LaunchPaths {
        LaunchPaths {
            api_socket: spec_run.join("api.sock"),
            console_log: spec_vm.join(crate::vm::record::CONSOLE_LOG),
            vmm_log: spec_vm.join(crate::vm::record::VMM_LOG),
            metrics: spec_vm.join(crate::vm::record::METRICS),
        }
    }
}

fn api(h: &VmmHandle) -> ApiClient {
    ApiClient::new(&h.api_socket)
}

#[async_trait]
impl Vmm for FirecrackerVmm {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn preflight(&self) -> Result<(), VmmError> {
        let bin = self.binary()?;
        self.checked
            .get(&bin, |bin| {
                let v = tools::firecracker_version(bin)
                    .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
                tools::check_firecracker_supported(v)
                    .map_err(|why| format!("{}: {why}", bin.display()))
            })
            .await
            .map_err(VmmError::Unavailable)
    }

    async fn spawn(&self, spec: &LaunchSpec) -> Result<(VmmHandle, OwnedFd), VmmError> {
        let bin = self.binary()?;
        let paths = Self::paths(&spec.run_dir, &spec.vm_dir);
        let spawned = launch::launch(&bin, &spec.vm_id, &paths)?;
        if let Err(e) = launch::wait_api_ready(&paths, &spawned.pidfd, API_READY_TIMEOUT).await {
            // Nobody else knows this process yet: end and reap it here.
            let _ = process::signal(&spawned.pidfd, rustix::process::Signal::Kill);
            process::wait_exit(&spawned.pidfd).await;
            return Err(e.into());
        }
        let handle = VmmHandle {
            kind: KIND.into(),
            pid: spawned.pid,
            start_time: spawned.start_time,
            api_socket: paths.api_socket,
            metrics: Some(paths.metrics),
            agent_socket: Some(spec.run_dir.join(VSOCK_SOCKET)),
            accel: Some("kvm".into()),
        };
        Ok((handle, spawned.pidfd))
    }

    async fn configure(&self, h: &VmmHandle, spec: &LaunchSpec) -> Result<(), VmmError> {
        let api = api(h);
        let vcpu_count = u8::try_from(spec.vcpus)
            .map_err(|_| VmmError::Api(format!("{} vcpus is too many", spec.vcpus)))?;
        api.put_machine_config(&MachineConfig {
            vcpu_count,
            mem_size_mib: spec.memory_mib,
            smt: None,
            track_dirty_pages: None,
        })
        .await
        .map_err(VmmError::from)?;
        api.put_boot_source(&BootSource {
            kernel_image_path: spec.kernel.clone(),
            boot_args: Some(spec.boot_args.clone()),
            initrd_path: spec.initrd.clone(),
        })
        .await
        .map_err(VmmError::from)?;
        // `is_read_only`: Firecracker opens the file without write access
        // and the guest sees a read-only virtio disk (the overlay backend's
        // shared rootfs). Drives appear in the guest in this order: vda,
        // vdb, vdc.
        let drives = [
            ("rootfs", Some(&spec.root_disk), true, spec.root_read_only),
            ("work", Some(&spec.work_disk), false, false),
            ("overlay", spec.overlay_disk.as_ref(), false, false),
        ];
        for (id, path, root, read_only) in drives {
            let Some(path) = path else { continue };
            api.put_drive(&Drive {
                drive_id: id.into(),
                path_on_host: path.clone(),
                is_root_device: root,
                is_read_only: read_only,
                cache_type: None,
                io_engine: None,
            })
            .await
            .map_err(VmmError::from)?;
        }
        if let Some(net) = &spec.net {
            api.put_network_interface(&NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: net.tap.clone(),
                guest_mac: Some(net.mac.clone()),
            })
            .await
            .map_err(VmmError::from)?;
        }
        // The guest agent's channel. Firecracker binds the socket here and
        // refuses a path that exists: a previous boot's is stale.
        let uds = spec.run_dir.join(VSOCK_SOCKET);
        match std::fs::remove_file(&uds) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(VmmError::Io {
                    context: format!("cannot remove the stale vsock socket {}", uds.display()),
                    source: e,
                })
            }
        }
        api.put_vsock(&Vsock {
            guest_cid: GUEST_CID,
            uds_path: uds,
        })
        .await
        .map_err(VmmError::from)?;
        Ok(())
    }

    async fn boot(&self, h: &VmmHandle) -> Result<(), VmmError> {
        api(h)
            .action(Action::InstanceStart)
            .await
            .map_err(VmmError::from)
    }

    async fn request_shutdown(&self, h: &VmmHandle) -> Result<(), VmmError> {
        api(h)
            .action(Action::SendCtrlAltDel)
            .await
            .map_err(VmmError::from)
    }

    async fn pause(&self, h: &VmmHandle) -> Result<(), VmmError> {
        api(h).pause().await.map_err(VmmError::from)
    }

    async fn resume(&self, h: &VmmHandle) -> Result<(), VmmError> {
        api(h).resume().await.map_err(VmmError::from)
    }

    async fn status(&self, h: &VmmHandle) -> Result<String, VmmError> {
        Ok(api(h).instance_info().await.map_err(VmmError::from)?.state)
    }

    async fn metrics(&self, h: &VmmHandle) -> Result<Option<serde_json::Value>, VmmError> {
        let Some(path) = &h.metrics else {
            return Ok(None);
        };
        api(h)
            .action(Action::FlushMetrics)
            .await
            .map_err(VmmError::from)?;
        // Firecracker appends a line per flush: the file grows with the VM's
        // age, so it is read off the runtime.
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| VmmError::Io {
                context: format!("cannot read the metrics file {}", path.display()),
                source: e,
            })?;
        Ok(text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok()))
    }

    async fn effective_config(&self, h: &VmmHandle) -> Result<serde_json::Value, VmmError> {
        api(h).vm_config().await.map_err(VmmError::from)
    }

    async fn agent_connect(
        &self,
        h: &VmmHandle,
        timeout: Duration,
    ) -> Result<UnixStream, VmmError> {
        let uds = h.agent_socket.as_ref().ok_or_else(|| {
            VmmError::AgentChannel(
                "the VM was started without a vsock device; restart it to get one".into(),
            )
        })?;
        super::firecracker::vsock::connect(uds, AGENT_VSOCK_PORT, timeout)
            .await
            .map_err(VmmError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_core::stub_guest;
    use rustix::process::Signal;

    /// The overlay layout under the real Firecracker (stub guest): the
    /// rootfs drive `is_read_only` is opened without write access, the work
    /// and overlay drives read-write.
    #[tokio::test]
    async fn overlay_layout_opens_the_rootfs_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let (run_dir, vm_dir) = (dir.path().join("run"), dir.path().join("vm"));
        std::fs::create_dir_all(&run_dir).unwrap();
        std::fs::create_dir_all(&vm_dir).unwrap();
        let kernel = dir.path().join("stub.vmlinux");
        std::fs::write(&kernel, stub_guest::elf()).unwrap();
        let disk = |name: &str| {
            let p = dir.path().join(name);
            std::fs::File::create(&p).unwrap().set_len(8 << 20).unwrap();
            p
        };
        let spec = LaunchSpec {
            vm_id: "fc-overlay-test".into(),
            vcpus: 1,
            memory_mib: 128,
            kernel,
            initrd: None,
            boot_args: "console=ttyS0".into(),
            root_disk: disk("root.img"),
            root_read_only: true,
            work_disk: disk("work.img"),
            overlay_disk: Some(disk("overlay.img")),
            net: None,
            run_dir,
            vm_dir,
        };
        let vmm = FirecrackerVmm::new(Config::default());
        vmm.preflight()
            .await
            .expect("firecracker is installed (scripts/install-firecracker.sh)");
        let (h, pidfd) = vmm.spawn(&spec).await.unwrap();
        let configured = vmm.configure(&h, &spec).await;
        let modes = process::open_access_modes(h.pid, dir.path());
        let _ = process::signal(&pidfd, Signal::Kill);
        process::wait_exit(&pidfd).await;
        configured.unwrap();
        let (ro, rw) = (libc::O_RDONLY as u32, libc::O_RDWR as u32);
        for (file, mode) in [("overlay.img", rw), ("root.img", ro), ("work.img", rw)] {
            assert!(
                modes.iter().any(|(n, m)| n == file && *m == mode),
                "{file} should be open with access mode {mode}: {modes:?}"
            );
            assert!(
                !modes.iter().any(|(n, m)| n == file && *m != mode),
                "{file} also open otherwise: {modes:?}"
            );
        }
    }
}
