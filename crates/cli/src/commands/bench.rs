//! `banger bench rpc`: round-trip latency of `daemon.status` over the socket.
//! `banger bench create`: the host-side cost of each create stage.
//! `banger bench run`: `vm run PATH --rm -- true`, stage by stage, and the
//! workspace copy against a plain `tar | ssh` of the same tree.

use std::time::{Duration, Instant};

use banger_proto::methods::daemon::Status;
use banger_proto::methods::Empty;
use clap::Subcommand;
use serde_json::json;

use super::Env;
use crate::client::Client;
use crate::output;
use crate::render::{said, Outcome};

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Create N VMs one after another (each deleted before the next unless
    /// --keep) and report the median host-side time of each create stage (default image: a stub guest registered on the fly).
    /// With an image that runs sshd (`image build`), create returns when SSH
    /// answers, so the total is "create to SSH-ready".
    Create {
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// Image to boot (default: `bench-stub`, made if missing).
        #[arg(long)]
        image: Option<String>,
        /// VMM: firecracker, qemu or auto (default: firecracker for the stub,
        /// else the config's `[vm] vmm`).
        #[arg(long)]
        vmm: Option<String>,
        #[arg(long, default_value_t = 1)]
        vcpu: u32,
        /// Guest memory (default 128M; a Debian guest wants 512M or more).
        #[arg(long, default_value = "128M")]
        memory: String,
        /// Work disk size.
        #[arg(long, default_value = "128M")]
        disk_size: String,
        /// Keep the VMs instead of deleting them.
        #[arg(long)]
        keep: bool,
        /// Create them with NAT (the network stage then rewrites the nftables table).
        #[arg(long)]
        nat: bool,
    },
    /// Time `vm run PATH --rm -- true` N times, split into create (host side),
    /// boot to reachable, workspace copy, command and delete (medians); then,
    /// in the last VM, a plain `tar | ssh` of the same tree for comparison.
    /// Without --repo: a generated 100-file repo and a 10,000-file / 200 MB one.
    Run {
        /// A directory (git repository or not) to copy in; default: the two
        /// generated repos.
        #[arg(long)]
        repo: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 3)]
        count: usize,
        /// Image (default: the config's default image).
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        vmm: Option<String>,
        #[arg(long, default_value_t = 1)]
        vcpu: u32,
        #[arg(long, default_value = "1G")]
        memory: String,
        #[arg(long, default_value = "2G")]
        disk_size: String,
    },
    /// Time daemon.status round trips (one connection per client thread).
    Rpc {
        /// Calls per client.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 1)]
        clients: usize,
    },
}

pub fn run(env: &Env, cmd: BenchCmd) -> anyhow::Result<Outcome> {
    match cmd {
        BenchCmd::Rpc { count, clients } => rpc(env, count, clients),
        BenchCmd::Run {
            repo,
            count,
            image,
            vmm,
            vcpu,
            memory,
            disk_size,
        } => {
            let shape = Shape::parse(vmm, vcpu, &memory, &disk_size)?;
            super::bench_run::run(env, repo, count, image, &shape)
        }
        BenchCmd::Create {
            count,
            image,
            vmm,
            vcpu,
            memory,
            disk_size,
            keep,
            nat,
        } => {
            let shape = Shape::parse(vmm, vcpu, &memory, &disk_size)?;
            create(env, count, image, &shape, keep, nat)
        }
    }
}

fn rpc(env: &Env, count: usize, clients: usize) -> anyhow::Result<Outcome> {
    // Make sure a daemon is up before timing anything.
    drop(env.client()?);
    let socket = env.paths.socket();
    let started = Instant::now();
    let handles: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let mut c = Client::connect_raw(&socket)?;
                // Warm-up: first calls pay for page faults and allocator growth.
                for _ in 0..20 {
                    c.call::<Status>(&Empty {})?;
                }
                let mut v = Vec::with_capacity(count);
                for _ in 0..count {
                    let t = Instant::now();
                    c.call::<Status>(&Empty {})?;
                    v.push(t.elapsed());
                }
                Ok(v)
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("bench thread panicked"))??,
        );
    }
    let wall = started.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6;
    let (p50, p90, p99) = (pct(0.50), pct(0.90), pct(0.99));
    let rate = all.len() as f64 / wall.as_secs_f64();
    let text = format!(
        "daemon.status x{} ({} client(s)): p50 {p50:.0}us  p90 {p90:.0}us  p99 {p99:.0}us  {rate:.0} calls/s",
        all.len(),
        clients
    );
    Ok(Outcome::of(said(
        json!({
            "method": "daemon.status", "calls": all.len(), "clients": clients,
            "p50_us": p50, "p90_us": p90, "p99_us": p99, "calls_per_sec": rate,
        }),
        text,
    )))
}

const BENCH_IMAGE: &str = "bench-stub";

/// Registers the stub guest kernel and a 64 MiB ext4 rootfs as `bench-stub`.
fn ensure_stub_image(client: &mut Client) -> anyhow::Result<()> {
    use banger_proto::methods::{image, kernel, NameParams};
    use std::os::fd::AsFd;
    if client
        .call::<image::Show>(&NameParams {
            name: BENCH_IMAGE.into(),
        })
        .is_ok()
    {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let k = dir.path().join("stub.vmlinux");
    std::fs::write(&k, banger_core::stub_guest::elf())?;
    let rootfs = dir.path().join("rootfs.ext4");
    std::fs::File::create(&rootfs)?.set_len(64 << 20)?;
    let st = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&rootfs)
        .status()?;
    anyhow::ensure!(st.success(), "mkfs.ext4 failed");
    let interrupt = crate::progress::Interrupt::install()?;
    if client
        .call::<kernel::Show>(&NameParams {
            name: BENCH_IMAGE.into(),
        })
        .is_err()
    {
        let f = std::fs::File::open(&k)?;
        let begun = client.call_with_fds::<kernel::ImportBegin>(
            &kernel::ImportParams {
                name: BENCH_IMAGE.into(),
                kernel: banger_proto::FdRef { fd: 0 },
                initrd: None,
                source: None,
            },
            &[f.as_fd()],
        )?;
        crate::progress::follow(client, &begun.operation_id, true, &interrupt)?;
    }
    let f = std::fs::File::open(&rootfs)?;
    let begun = client.call_with_fds::<image::RegisterBegin>(
        &image::RegisterParams {
            name: BENCH_IMAGE.into(),
            kernel: BENCH_IMAGE.into(),
            rootfs: banger_proto::FdRef { fd: 0 },
            work_seed: None,
            rootfs_source: None,
            work_seed_source: None,
            features: Vec::new(),
        },
        &[f.as_fd()],
    )?;
    crate::progress::follow(client, &begun.operation_id, true, &interrupt)?;
    Ok(())
}

/// What each benchmarked VM looks like.
pub(super) struct Shape {
    pub(super) vmm: Option<String>,
    pub(super) vcpu: u32,
    pub(super) memory_mib: u64,
    pub(super) disk_bytes: u64,
}

impl Shape {
    fn parse(
        vmm: Option<String>,
        vcpu: u32,
        memory: &str,
        disk_size: &str,
    ) -> anyhow::Result<Shape> {
        Ok(Shape {
            vmm,
            vcpu,
            memory_mib: banger_core::size::parse_mib(memory).map_err(anyhow::Error::msg)?,
            disk_bytes: banger_core::size::parse(disk_size).map_err(anyhow::Error::msg)?,
        })
    }
}

fn create(
    env: &Env,
    count: usize,
    image: Option<String>,
    shape: &Shape,
    keep: bool,
    nat: bool,
) -> anyhow::Result<Outcome> {
    use banger_proto::methods::vm::{CreateBegin, CreateParams, Delete, DeleteParams};
    use std::collections::BTreeMap;
    let mut client = env.client()?;
    let image = match image {
        Some(i) => i,
        None => {
            ensure_stub_image(&mut client)?;
            BENCH_IMAGE.to_string()
        }
    };
    let interrupt = crate::progress::Interrupt::install()?;
    let tag = &banger_core::ids::new_id()[..6];
    let mut per_stage: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut totals = Vec::new();
    let mut without_disk = Vec::new();
    let mut names = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for i in 0..count {
            let name = format!("bench-{tag}-{i}");
            let t = Instant::now();
            let begun = client.call::<CreateBegin>(&CreateParams {
                name: Some(name.clone()),
                image: Some(image.clone()),
                vcpus: Some(shape.vcpu),
                memory_mib: Some(shape.memory_mib),
                disk_bytes: Some(shape.disk_bytes),
                nat,
                // The bench stub is Firecracker's stub guest (no PVH note).
                vmm: shape
                    .vmm
                    .clone()
                    .or_else(|| (image == BENCH_IMAGE).then(|| "firecracker".to_string())),
                ..Default::default()
            })?;
            names.push(name);
            let op = crate::progress::follow(&mut client, &begun.operation_id, true, &interrupt)?;
            let total = t.elapsed().as_secs_f64() * 1000.0;
            totals.push(total);
            let disk: f64 = op
                .stages
                .iter()
                .filter(|s| s.name.starts_with("disk-"))
                .filter_map(|s| s.duration_ms)
                .sum();
            without_disk.push(total - disk);
            for s in &op.stages {
                if !order.contains(&s.name) {
                    order.push(s.name.clone());
                }
                per_stage
                    .entry(s.name.clone())
                    .or_default()
                    .push(s.duration_ms.unwrap_or(0.0));
            }
            // One VM at a time: a real guest left running (under TCG, say)
            // would slow the next one's boot and skew every later sample.
            if !keep {
                let name = names.pop().expect("pushed above");
                client.call::<Delete>(&DeleteParams { name, force: true })?;
            }
        }
        Ok(())
    })();
    if !keep {
        for n in &names {
            if let Err(e) = client.call::<Delete>(&DeleteParams {
                name: n.clone(),
                force: true,
            }) {
                eprintln!("warning: could not delete {n}: {e}");
            }
        }
    }
    result?;
    let median = |v: &mut Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut rows = Vec::new();
    for s in &order {
        let v = per_stage.get_mut(s).expect("recorded");
        rows.push((s.clone(), median(v)));
    }
    let total = median(&mut totals);
    let rest = median(&mut without_disk);
    let mut t = output::Table::new(&["STAGE", "MEDIAN"]);
    for (n, m) in &rows {
        t.row(vec![n.clone(), format!("{m:.2}ms")]);
    }
    t.row(vec![
        "total (request to running)".into(),
        format!("{total:.2}ms"),
    ]);
    t.row(vec![
        "total without disk creation".into(),
        format!("{rest:.2}ms"),
    ]);
    let text = format!(
        "{count} creates of image {image}, {} vcpu, {} MiB, {} MiB work disk, vmm {} (medians):\n{}",
        shape.vcpu,
        shape.memory_mib,
        shape.disk_bytes >> 20,
        shape.vmm.as_deref().unwrap_or("default"),
        t.render()
    );
    Ok(Outcome::of(said(
        json!({
            "count": count,
            "image": image,
            "vmm": shape.vmm,
            "vcpus": shape.vcpu,
            "memory_mib": shape.memory_mib,
            "disk_bytes": shape.disk_bytes,
            "stages_median_ms": rows.iter().map(|(n, m)| json!({"stage": n, "median_ms": m})).collect::<Vec<_>>(),
            "total_median_ms": total,
            "total_excluding_disk_creation_median_ms": rest,
        }),
        text,
    )))
}
