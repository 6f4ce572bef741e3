//! One handler per RPC method, grouped by area. [`table`] is the single place
//! that maps method names to handlers.

use banger_proto::methods::{daemon as d, image as i, kernel as k, op as o, ssh as s, vm as v};

use crate::rpc::dispatch::Table;

mod daemon;
mod image;
mod kernel;
mod op;
mod ssh;
mod vm;

pub fn table() -> Table {
    let mut t = Table::default();
    t.add::<d::Status, _, _>(daemon::status);
    t.add::<d::Shutdown, _, _>(daemon::shutdown);
    t.add::<d::Logs, _, _>(daemon::logs);
    t.add::<d::OperationsList, _, _>(daemon::operations_list);
    t.add::<d::Doctor, _, _>(daemon::doctor);
    t.add::<o::Status, _, _>(op::status);
    t.add::<o::Wait, _, _>(op::wait);
    t.add::<o::Cancel, _, _>(op::cancel);
    t.add::<k::ImportBegin, _, _>(kernel::import_begin);
    t.add::<k::BuildBegin, _, _>(kernel::build_begin);
    t.add::<k::BundleBegin, _, _>(kernel::bundle_begin);
    t.add::<k::List, _, _>(kernel::list);
    t.add::<k::Show, _, _>(kernel::show);
    t.add::<k::Delete, _, _>(kernel::delete);
    t.add::<i::RegisterBegin, _, _>(image::register_begin);
    t.add::<i::BuildBegin, _, _>(image::build_begin);
    t.add::<i::PullBegin, _, _>(image::pull_begin);
    t.add::<i::BundleBegin, _, _>(image::bundle_begin);
    t.add::<i::List, _, _>(image::list);
    t.add::<i::Show, _, _>(image::show);
    t.add::<i::Delete, _, _>(image::delete);
    t.add::<i::Promote, _, _>(image::promote);
    t.add::<v::CreateBegin, _, _>(vm::create_begin);
    t.add::<v::CreateStatus, _, _>(vm::create_status);
    t.add::<v::CreateCancel, _, _>(vm::create_cancel);
    t.add::<v::Start, _, _>(vm::start);
    t.add::<v::Stop, _, _>(vm::stop);
    t.add::<v::Restart, _, _>(vm::restart);
    t.add::<v::Pause, _, _>(vm::pause);
    t.add::<v::Resume, _, _>(vm::resume);
    t.add::<v::Kill, _, _>(vm::kill);
    t.add::<v::Delete, _, _>(vm::delete);
    t.add::<v::Prune, _, _>(vm::prune);
    t.add::<v::Set, _, _>(vm::set);
    t.add::<v::List, _, _>(vm::list);
    t.add::<v::Show, _, _>(vm::show);
    t.add::<v::Logs, _, _>(vm::logs);
    t.add::<v::Stats, _, _>(vm::stats);
    t.add::<v::PortAdd, _, _>(vm::port_add);
    t.add::<v::PortRemove, _, _>(vm::port_remove);
    t.add::<v::PortList, _, _>(vm::port_list);
    t.add::<v::Health, _, _>(vm::health);
    t.add::<s::Identity, _, _>(ssh::identity);
    t.add::<s::KnownHosts, _, _>(ssh::known_hosts);
    t.add::<v::Ping, _, _>(vm::ping);
    t.add::<v::Ports, _, _>(vm::ports);
    t
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_protocol_method_has_a_handler() {
        let t = super::table();
        for m in banger_proto::methods::ALL {
            assert!(t.has(m), "no handler for {m}");
        }
    }
}
