//! Device presence shared by the edge, which folds the broker's connects and disconnects
//! into it, and the registry, which answers GetConnectivity and WatchConnectivity from it
//! (one process: `fleetcmd serve`).

use std::sync::Mutex;

use fleetcmd_domain::presence::{Connectivity, Folded, Lifecycle, PresenceBoard};
use tokio::sync::broadcast;

/// Connectivity changes kept for slow watchers before they miss some.
const CHANGES: usize = 4096;

/// A change of a client id's connectivity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub client_id: String,
    pub connectivity: Connectivity,
}

#[derive(Debug)]
pub struct Presence {
    board: Mutex<PresenceBoard>,
    changes: broadcast::Sender<Change>,
}

impl Default for Presence {
    fn default() -> Self {
        Self {
            board: Mutex::default(),
            changes: broadcast::channel(CHANGES).0,
        }
    }
}

impl Presence {
    /// Folds one lifecycle event; tells the watchers and the connected-devices gauge when
    /// the client id's connectivity changed.
    pub fn fold(&self, event: &Lifecycle) -> Folded {
        let (folded, delta) = {
            let mut board = self.board.lock().unwrap_or_else(|e| e.into_inner());
            let before = board.connected();
            let folded = board.fold(event);
            (folded, board.connected() as i64 - before as i64)
        };
        if delta != 0 {
            fleetcmd_telemetry::metrics::devices_connected(delta);
        }
        if let Some(connectivity) = &folded.changed {
            // No watcher: nobody to tell.
            let _ = self.changes.send(Change {
                client_id: event.client_id.clone(),
                connectivity: connectivity.clone(),
            });
        }
        folded
    }

    /// The connectivity of `client_id`, if it ever connected since the process started.
    pub fn connectivity(&self, client_id: &str) -> Option<Connectivity> {
        let board = self.board.lock().unwrap_or_else(|e| e.into_inner());
        board.connectivity(client_id).cloned()
    }

    /// Connectivity changes from now on.
    pub fn watch(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}
