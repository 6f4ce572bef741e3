//! Who is calling: the peer credentials of the connection (SO_PEERCRED), read
//! once at accept. The kernel fills them, so a client cannot lie about them.

use crate::error::Error;
use std::fs::File;
use std::os::fd::OwnedFd;

use banger_proto::FdRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Caller {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Root, or the user the daemon itself runs as (a per-user daemon): who
    /// may stop the daemon or read its log.
    pub fn is_admin(&self) -> bool {
        self.is_root() || self.uid == rustix::process::geteuid().as_raw()
    }

    /// `None` for root (sees everything), else the uid to filter on.
    pub fn uid_filter(&self) -> Option<u32> {
        (!self.is_root()).then_some(self.uid)
    }

    /// May see an image or kernel owned by `owner`? Root-owned ones are shared
    /// with every user (the admin's golden images); others are private.
    pub fn can_see_shared(&self, owner: u32) -> bool {
        self.is_root() || owner == self.uid || owner == 0
    }

    /// May change or delete an object owned by `owner`?
    pub fn can_change(&self, owner: u32) -> bool {
        self.is_root() || owner == self.uid
    }
}

/// The descriptors that came with a request, taken one by one by index.
#[derive(Debug, Default)]
pub struct Fds(Vec<Option<OwnedFd>>);

impl Fds {
    pub fn new(fds: Vec<OwnedFd>) -> Fds {
        Fds(fds.into_iter().map(Some).collect())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Takes the descriptor `r` points at, as a file. `what` names the
    /// argument in the error.
    pub fn take(&mut self, r: FdRef, what: &str) -> Result<File, Error> {
        self.0
            .get_mut(r.fd as usize)
            .and_then(Option::take)
            .map(File::from)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{what}: descriptor #{} was not sent with the request (files are passed \
                     as descriptors with SCM_RIGHTS, never as paths)",
                    r.fd
                ))
            })
    }
}

/// What every handler gets besides its params.
#[derive(Debug)]
pub struct Ctx {
    pub caller: Caller,
    pub fds: Fds,
}
