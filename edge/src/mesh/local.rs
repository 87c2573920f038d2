//! This edge's own tunnels in the holder table's memory: a tunnel that closes here is "just
//! gone" and one that opens here is an arrival, exactly as for a peer's, so a visitor
//! waiting through a reconnect is woken whichever edge the client comes back to.

use super::protocol::HoldingChange;
use crate::edge::Edge;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

/// Follows the registry's changes until the edge shuts down.
pub async fn follow_registry(edge: Arc<Edge>) {
    let mut changes = edge.registry.subscribe();
    loop {
        let change = tokio::select! {
            c = changes.recv() => c,
            _ = edge.shutdown.cancelled() => return,
        };
        match change {
            Ok(HoldingChange::Added(name, _)) => edge.mesh.holders.note_arrived(&name),
            Ok(HoldingChange::Removed(name)) => edge.mesh.holders.note_gone(&name),
            Ok(HoldingChange::Reset | HoldingChange::Sync(_)) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}
