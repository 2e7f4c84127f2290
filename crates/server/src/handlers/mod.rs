//! One module per request kind; each adds methods to
//! [`crate::connection::Connection`].

mod backup;
mod download;
mod hash_list;
pub(crate) use hash_list::ListKind;
mod list_snapshots;
mod upload;

use hoard_protocol::ErrorId;

use crate::connection::{Connection, Flow};

impl Connection {
    /// Answers a datastore error, as Busy where retrying later may work.
    pub(crate) async fn fail_ds(&mut self, stream: u8, e: hoard_datastore::Error) -> Flow {
        use hoard_datastore::Error as E;
        let id = match e {
            E::SnapshotBusy(_) | E::FileBusy { .. } => ErrorId::Busy,
            E::SnapshotNotNewer { .. } | E::SnapshotInFuture { .. } | E::Owner { .. } => {
                ErrorId::Denied
            }
            _ => ErrorId::Generic,
        };
        self.fail_with(stream, id, e.to_string()).await
    }
}
