//! Every RPC method as a type: its name, its params and its result.
//!
//! Field names here are the stable `--json` output of the CLI as well; changing
//! one is a protocol change (bump [`crate::PROTOCOL_VERSION`]) and a docs change
//! (docs/json.md).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub mod daemon;
pub mod image;
pub mod kernel;
pub mod op;
pub mod ssh;
pub mod vm;

/// Ties a method name to its params and result types.
pub trait Method {
    const NAME: &'static str;
    type Params: Serialize + DeserializeOwned + Send + 'static;
    type Result: Serialize + DeserializeOwned + Send + 'static;
}

macro_rules! method {
    ($(#[$m:meta])* $ty:ident = $name:literal, $params:ty => $result:ty) => {
        $(#[$m])*
        pub enum $ty {}
        impl $crate::methods::Method for $ty {
            const NAME: &'static str = $name;
            type Params = $params;
            type Result = $result;
        }
    };
}
pub(crate) use method;

/// Params or result with no fields. Accepts `{}` (and `null`, mapped by the server).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Params naming one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameParams {
    pub name: String,
}

/// The answer of every `*.begin` method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpBegun {
    pub operation_id: String,
}

/// A stored file: where, how big, its sha256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileInfo {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// Names of all methods, for the daemon's completeness check and for docs.
pub const ALL: &[&str] = &[
    daemon::Status::NAME,
    daemon::Shutdown::NAME,
    daemon::Logs::NAME,
    daemon::OperationsList::NAME,
    daemon::Doctor::NAME,
    op::Status::NAME,
    op::Wait::NAME,
    op::Cancel::NAME,
    kernel::ImportBegin::NAME,
    kernel::BundleBegin::NAME,
    kernel::BuildBegin::NAME,
    kernel::List::NAME,
    kernel::Show::NAME,
    kernel::Delete::NAME,
    image::RegisterBegin::NAME,
    image::BuildBegin::NAME,
    image::PullBegin::NAME,
    image::BundleBegin::NAME,
    image::List::NAME,
    image::Show::NAME,
    image::Delete::NAME,
    image::Promote::NAME,
    vm::CreateBegin::NAME,
    vm::CreateStatus::NAME,
    vm::CreateCancel::NAME,
    vm::Start::NAME,
    vm::Stop::NAME,
    vm::Restart::NAME,
    vm::Pause::NAME,
    vm::Resume::NAME,
    vm::Kill::NAME,
    vm::Delete::NAME,
    vm::Prune::NAME,
    vm::Set::NAME,
    vm::List::NAME,
    vm::Show::NAME,
    vm::Logs::NAME,
    vm::Stats::NAME,
    vm::PortAdd::NAME,
    vm::PortRemove::NAME,
    vm::PortList::NAME,
    vm::Health::NAME,
    ssh::Identity::NAME,
    ssh::KnownHosts::NAME,
    vm::Ping::NAME,
    vm::Ports::NAME,
];
