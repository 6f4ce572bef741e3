//! The layer cache: `<layers>/sha256/<hex>`, one verified, complete blob per
//! digest, shared by every later pull. A download streams into a scratch
//! file through [`BlobWriter`], which hashes while writing, refuses a byte
//! past the descriptor's size, and only on [`BlobWriter::finish`] (length
//! and digest both right) fsyncs and renames the file into the cache. A
//! writer dropped before that removes its scratch file, so a failed or
//! cancelled download leaves nothing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::Digest;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The registry sent more bytes than the manifest's descriptor says.
    #[error("blob {digest} is longer than its descriptor says ({size} bytes): refused")]
    TooLong { digest: String, size: u64 },
    /// The stream ended early.
    #[error("blob {digest} ended after {got} of {size} bytes")]
    TooShort { digest: String, got: u64, size: u64 },
    /// The content does not hash to its digest.
    #[error("blob {digest} does not match its digest (got sha256:{actual})")]
    Mismatch { digest: String, actual: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> BlobError {
    let context = context.into();
    move |source| BlobError::Io { context, source }
}

/// The cache directory (created 0700).
#[derive(Debug, Clone)]
pub struct LayerCache {
    dir: PathBuf,
}

impl LayerCache {
    pub fn open(dir: &Path) -> io::Result<LayerCache> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("sha256"))?;
        Ok(LayerCache {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("sha256").join(digest.hex())
    }

    /// The cached blob, when present with the descriptor's size (its content
    /// was verified when it was written).
    pub fn get(&self, digest: &Digest, size: u64) -> Option<PathBuf> {
        let p = self.path(digest);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() && m.len() == size => Some(p),
            _ => None,
        }
    }

    /// A writer for `digest` of `size` bytes, its scratch file `tmp`
    /// (created, must not exist; on the cache's filesystem).
    pub fn writer(&self, digest: &Digest, size: u64, tmp: &Path) -> Result<BlobWriter, BlobError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)
            .map_err(io_ctx(format!("cannot create {}", tmp.display())))?;
        Ok(BlobWriter {
            file: Some(file),
            hasher: Sha256::new(),
            written: 0,
            size,
            digest: digest.clone(),
            tmp: tmp.to_path_buf(),
            dest: self.path(digest),
        })
    }
}

pub struct BlobWriter {
    file: Option<File>,
    hasher: Sha256,
    written: u64,
    size: u64,
    digest: Digest,
    tmp: PathBuf,
    dest: PathBuf,
}

impl BlobWriter {
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        if self.written + bytes.len() as u64 > self.size {
            return Err(BlobError::TooLong {
                digest: self.digest.to_string(),
                size: self.size,
            });
        }
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        self.file
            .as_mut()
            .expect("open until finish")
            .write_all(bytes)
            .map_err(io_ctx(format!("cannot write {}", self.tmp.display())))
    }

    /// Checks length and digest, then fsyncs and renames into the cache.
    pub fn finish(mut self) -> Result<PathBuf, BlobError> {
        if self.written != self.size {
            return Err(BlobError::TooShort {
                digest: self.digest.to_string(),
                got: self.written,
                size: self.size,
            });
        }
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if actual != self.digest.hex() {
            return Err(BlobError::Mismatch {
                digest: self.digest.to_string(),
                actual,
            });
        }
        let f = self.file.take().expect("open until finish");
        f.sync_all()
            .map_err(io_ctx(format!("cannot sync {}", self.tmp.display())))?;
        drop(f);
        fs::rename(&self.tmp, &self.dest).map_err(io_ctx(format!(
            "cannot move {} into the layer cache",
            self.tmp.display()
        )))?;
        if let Some(dir) = self.dest.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(self.dest.clone())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.is_some() || self.tmp.exists() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(b: &[u8]) -> Digest {
        Digest::parse(&format!("sha256:{}", hex::encode(Sha256::digest(b)))).unwrap()
    }

    #[test]
    fn verified_blobs_land_and_bad_ones_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(&dir.path().join("layers")).unwrap();
        let tmp = dir.path().join("dl");
        let data = b"hello layer";
        let d = digest_of(data);

        // Longer than the descriptor: refused at the first extra byte.
        let mut w = cache.writer(&d, 5, &tmp).unwrap();
        let e = w.write(data).unwrap_err();
        assert!(matches!(e, BlobError::TooLong { .. }), "{e}");
        drop(w);
        assert!(!tmp.exists());

        // Right length, wrong content.
        let mut w = cache.writer(&d, data.len() as u64, &tmp).unwrap();
        w.write(b"hello LAYER").unwrap();
        let e = w.finish().unwrap_err();
        assert!(matches!(e, BlobError::Mismatch { .. }), "{e}");
        assert!(!tmp.exists());

        // Short.
        let mut w = cache.writer(&d, data.len() as u64, &tmp).unwrap();
        w.write(b"hello").unwrap();
        assert!(matches!(
            w.finish().unwrap_err(),
            BlobError::TooShort { .. }
        ));
        assert!(cache.get(&d, data.len() as u64).is_none());

        let mut w = cache.writer(&d, data.len() as u64, &tmp).unwrap();
        w.write(&data[..3]).unwrap();
        w.write(&data[3..]).unwrap();
        let p = w.finish().unwrap();
        assert_eq!(fs::read(&p).unwrap(), data);
        assert_eq!(cache.get(&d, data.len() as u64), Some(p));
        assert!(!tmp.exists());
    }
}
