//! This edge's own arrivals in the holder table's memory: a tunnel that opens here wakes the
//! visitors waiting through a reconnect, exactly as a peer's does, whichever edge the client
//! comes back to. (A tunnel that closes here is noted "just gone" by `Edge::close_tunnel`,
//! before routing to it stops.)

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
            Ok(HoldingChange::Added(name, ..)) => edge.mesh.holders.note_arrived(&name),
            // `Edge::close_tunnel` notes the name gone itself, before routing stops.
            Ok(HoldingChange::Removed(_) | HoldingChange::Reset | HoldingChange::Sync(_))
            | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}
