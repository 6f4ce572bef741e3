//! The registry side of `image pull`, on `oci-client`: the reference, the
//! tag resolved to a digest (`HEAD`), the anonymous Bearer token flow (realm,
//! service and scope from `WWW-Authenticate`) or the caller's credentials, an
//! index resolved to linux/amd64 (attestation manifests, whose platform is
//! `unknown/unknown`, are never chosen), OCI and Docker schema2 media types,
//! `429` and 5xx retried with backoff, plain HTTP only for a loopback
//! registry or `--insecure`. Blobs stream into the layer cache through a
//! [`BlobWriter`] on a blocking thread, never whole in memory.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_core::oci::cache::{BlobWriter, LayerCache};
use banger_core::oci::Digest;
use futures_util::StreamExt;
use oci_client::client::{linux_amd64_resolver, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::PullError;
use crate::ops::OpHandle;

const ATTEMPTS: u32 = 5;
/// The image config's bound (real ones are a few KiB).
pub const MAX_CONFIG: u64 = 1 << 20;

/// A buffer that refuses to grow past [`MAX_CONFIG`].
struct Bounded(Vec<u8>);

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.0.len() as u64 + buf.len() as u64 > MAX_CONFIG {
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "the image config is longer than its bound",
            )));
        }
        self.0.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Whether `registry` (`host[:port]`) is on loopback: only then is plain
/// HTTP used without `--insecure`.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub fn parse_reference(s: &str) -> Result<Reference, PullError> {
    s.parse::<Reference>()
        .map_err(|e| PullError::Refused(format!("bad image reference {s:?}: {e}")))
}

pub struct Remote {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
}

/// What a pull resolved: the digest the reference named (an index's, for a
/// multi-platform image) and linux/amd64's manifest.
pub struct Resolved {
    pub digest: String,
    pub manifest: OciImageManifest,
}

impl Remote {
    pub fn new(
        reference: &str,
        insecure: bool,
        auth: Option<(String, String)>,
    ) -> Result<Remote, PullError> {
        let reference = parse_reference(reference)?;
        let registry = reference.resolve_registry().to_string();
        let protocol = if insecure || is_loopback(&registry) {
            ClientProtocol::HttpsExcept(vec![registry])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            platform_resolver: Some(Box::new(linux_amd64_resolver)),
            connect_timeout: Some(Duration::from_secs(20)),
            read_timeout: Some(Duration::from_secs(120)),
            ..Default::default()
        };
        Ok(Remote {
            client: Client::new(config),
            reference,
            auth: match auth {
                Some((u, p)) => RegistryAuth::Basic(u, p),
                None => RegistryAuth::Anonymous,
            },
        })
    }

    /// Tag → digest (`HEAD`), then the manifest by that digest (its bytes
    /// checked against it), an index resolved to linux/amd64.
    pub async fn resolve(&self, op: &OpHandle) -> Result<Resolved, PullError> {
        let digest = match self.reference.digest() {
            Some(d) => d.to_string(),
            None => {
                retry(op, "resolving the tag", || {
                    self.client
                        .fetch_manifest_digest(&self.reference, &self.auth)
                })
                .await?
            }
        };
        Digest::parse(&digest).map_err(PullError::Refused)?;
        let pinned = self.reference.clone_with_digest(digest.clone());
        let (manifest, _) = retry(op, "fetching the manifest", || {
            self.client.pull_image_manifest(&pinned, &self.auth)
        })
        .await
        .map_err(|e| match e {
            PullError::Registry(m)
                if m.contains("no platform resolver") || m.contains("Image Index") =>
            {
                PullError::Refused(format!("the image has no linux/amd64 manifest ({m})"))
            }
            e => e,
        })?;
        self.check_config(op, &pinned, &manifest).await?;
        Ok(Resolved { digest, manifest })
    }

    /// The image config (at most [`MAX_CONFIG`] bytes, digest checked) must
    /// say linux/amd64: a single-platform image has no index to choose from.
    async fn check_config(
        &self,
        op: &OpHandle,
        pinned: &Reference,
        manifest: &OciImageManifest,
    ) -> Result<(), PullError> {
        if manifest.config.size < 0 || manifest.config.size as u64 > MAX_CONFIG {
            return Err(PullError::Refused(format!(
                "the image config is {} bytes (at most {MAX_CONFIG} accepted)",
                manifest.config.size
            )));
        }
        let config = retry(op, "fetching the image config", || async {
            let mut buf = Bounded(Vec::new());
            self.client
                .pull_blob(pinned, &manifest.config, &mut buf)
                .await
                .map(|()| buf.0)
        })
        .await?;
        let v: serde_json::Value = serde_json::from_slice(&config)
            .map_err(|e| PullError::Refused(format!("the image config is not JSON: {e}")))?;
        let (os, arch) = (
            v["os"].as_str().unwrap_or("?"),
            v["architecture"].as_str().unwrap_or("?"),
        );
        if (os, arch) != ("linux", "amd64") {
            return Err(PullError::Refused(format!(
                "the image is for {os}/{arch}; banger's guests are linux/amd64"
            )));
        }
        Ok(())
    }

    /// Streams `layer` into the cache (`tmp` is its scratch file), counting
    /// into `done` for progress. Retried from the start on 429/5xx.
    pub async fn fetch(
        &self,
        op: &OpHandle,
        cache: &LayerCache,
        layer: &OciDescriptor,
        tmp: &Path,
        done: &mut u64,
        total: u64,
    ) -> Result<PathBuf, PullError> {
        let digest = Digest::parse(&layer.digest).map_err(PullError::Refused)?;
        let size = u64::try_from(layer.size)
            .map_err(|_| PullError::Refused(format!("layer {digest} has a negative size")))?;
        let start = *done;
        let mut attempt = 0;
        loop {
            attempt += 1;
            *done = start;
            let tmp = tmp.with_extension(attempt.to_string());
            match self
                .fetch_once(op, cache, layer, &digest, size, &tmp, done, total)
                .await
            {
                Err(PullError::Transient(m)) if attempt < ATTEMPTS => {
                    tracing::warn!(layer = %digest, attempt, error = %m, "layer download failed; retrying");
                    backoff(op, attempt).await?;
                }
                r => return r,
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_once(
        &self,
        op: &OpHandle,
        cache: &LayerCache,
        layer: &OciDescriptor,
        digest: &Digest,
        size: u64,
        tmp: &Path,
        done: &mut u64,
        total: u64,
    ) -> Result<PathBuf, PullError> {
        let writer = cache.writer(digest, size, tmp)?;
        let mut stream = tokio::select! {
            r = self.client.pull_blob_stream(&self.reference, layer) => r.map_err(|e| {
                if retryable(&e) { PullError::Transient(e.to_string()) } else { registry_error(e) }
            })?,
            _ = op.token().cancelled() => return Err(PullError::Cancelled),
        };
        // The writer lives on a blocking thread; chunks go to it through a
        // small channel (at most a few chunks in memory).
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<bytes::Bytes>>(8);
        let task = tokio::task::spawn_blocking(move || -> Result<Option<PathBuf>, PullError> {
            let mut w: BlobWriter = writer;
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    Some(chunk) => w.write(&chunk)?,
                    None => return Ok(Some(w.finish()?)),
                }
            }
            Ok(None) // the sender gave up: the writer's drop removes the file
        });
        let mut reported = 0u64;
        let outcome: Result<(), PullError> = async {
            loop {
                let next = tokio::select! {
                    n = stream.next() => n,
                    _ = op.token().cancelled() => return Err(PullError::Cancelled),
                };
                match next {
                    None => break,
                    // oci-client checks the digest at the end of the stream
                    // too: a mismatch is final, a broken connection is not.
                    Some(Err(e)) if e.to_string().to_lowercase().contains("digest") => {
                        return Err(PullError::Refused(format!(
                            "blob {digest} does not match its digest: {e}"
                        )))
                    }
                    Some(Err(e)) => {
                        return Err(PullError::Transient(format!("downloading {digest}: {e}")))
                    }
                    Some(Ok(chunk)) => {
                        *done += chunk.len() as u64;
                        if *done - reported >= 1 << 20 {
                            reported = *done;
                            op.progress(*done, total, "bytes");
                        }
                        if tx.send(Some(chunk)).await.is_err() {
                            break; // the writer failed; its error comes below
                        }
                    }
                }
            }
            let _ = tx.send(None).await;
            Ok(())
        }
        .await;
        drop(tx);
        let written = task
            .await
            .map_err(|e| PullError::Registry(format!("the blob writer died: {e}")))?;
        op.progress(*done, total, "bytes");
        // The writer's refusal (longer than the descriptor, wrong digest)
        // says more than the stream's end, which comes after it.
        match (written, outcome) {
            (Err(w), _) => Err(w),
            (Ok(_), Err(o)) => Err(o),
            (Ok(Some(p)), Ok(())) => Ok(p),
            (Ok(None), Ok(())) => Err(PullError::Registry(format!("downloading {digest} stopped"))),
        }
    }
}

fn retryable(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code, .. } => *code == 429 || *code >= 500,
        OciDistributionError::RequestError(r) => {
            r.is_connect()
                || r.is_timeout()
                || r.status()
                    .is_some_and(|s| s.as_u16() == 429 || s.is_server_error())
        }
        _ => false,
    }
}

fn registry_error(e: OciDistributionError) -> PullError {
    match e {
        OciDistributionError::UnauthorizedError { url } => PullError::Unauthorized(url),
        OciDistributionError::AuthenticationFailure(m) => PullError::Unauthorized(m),
        OciDistributionError::ImageManifestNotFoundError(m) => PullError::NotFound(m),
        e => PullError::Registry(e.to_string()),
    }
}

async fn backoff(op: &OpHandle, attempt: u32) -> Result<(), PullError> {
    let wait = Duration::from_millis(500 << attempt.min(5));
    tokio::select! {
        _ = tokio::time::sleep(wait) => Ok(()),
        _ = op.token().cancelled() => Err(PullError::Cancelled),
    }
}

async fn retry<T, F, Fut>(op: &OpHandle, what: &str, mut f: F) -> Result<T, PullError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, OciDistributionError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let r = tokio::select! {
            r = f() => r,
            _ = op.token().cancelled() => return Err(PullError::Cancelled),
        };
        match r {
            Ok(v) => return Ok(v),
            Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                tracing::warn!(attempt, error = %e, "{what} failed; retrying");
                backoff(op, attempt).await?;
            }
            Err(e) => return Err(registry_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn loopback_registries() {
        for r in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "registry-1.docker.io",
            "ghcr.io",
            "10.0.0.1:5000",
            "localhost.evil.com:80",
            "[::2]:1",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }
}
