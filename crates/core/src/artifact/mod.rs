//! Files banger takes in: kernel images ([`kernel_image`]), ext4 images
//! ([`ext4`]) and the atomic, copy-on-write-when-possible staging of both into
//! the state directory ([`stage`]).

pub mod ext4;
pub mod kernel_image;
pub mod stage;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Fills `buf` from `f` at `offset` with positioned reads (never moving the
/// descriptor's offset, which may be shared with another process); returns
/// fewer bytes only at end of file.
pub(crate) fn read_full_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
