//! One handler per RPC method, grouped by area. [`table`] is the single place
//! that maps method names to handlers.

use banger_proto::methods::{daemon as d, image as i, kernel as k, op as o};

use crate::dispatch::Table;

mod daemon;
mod image;
mod kernel;
mod op;

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
    t.add::<k::List, _, _>(kernel::list);
    t.add::<k::Show, _, _>(kernel::show);
    t.add::<k::Delete, _, _>(kernel::delete);
    t.add::<i::RegisterBegin, _, _>(image::register_begin);
    t.add::<i::List, _, _>(image::list);
    t.add::<i::Show, _, _>(image::show);
    t.add::<i::Delete, _, _>(image::delete);
    t.add::<i::Promote, _, _>(image::promote);
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
