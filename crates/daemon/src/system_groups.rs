//! Group lookup through NSS (getgrnam_r), so LDAP/sssd groups work too.

use std::ffi::CString;

/// The gid of `group` (a name or a number), `None` if no such group.
pub fn gid_of(group: &str) -> anyhow::Result<Option<u32>> {
    if let Ok(n) = group.parse::<u32>() {
        return Ok(Some(n));
    }
    let name = CString::new(group)?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: getgrnam_r writes only into `grp`, `buf` (of the length given)
    // and `result`; all outlive the call.
    unsafe {
        let mut grp: libc::group = std::mem::zeroed();
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 {
            anyhow::bail!("group lookup for {group:?} failed: errno {rc}");
        }
        Ok((!result.is_null()).then_some(grp.gr_gid))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_group_exists_and_numbers_pass_through() {
        assert_eq!(super::gid_of("root").unwrap(), Some(0));
        assert_eq!(super::gid_of("4242").unwrap(), Some(4242));
        assert_eq!(super::gid_of("no-such-group-banger").unwrap(), None);
    }
}
