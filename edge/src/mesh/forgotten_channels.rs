//! A relay channel is forgotten by both ends of a mesh link, whichever end closes it first.
//!
//! russh 0.65 as published forgot a channel closed by its own side first only half: the
//! peer's answering `CHANNEL_CLOSE` was ignored, and the channel's queue was kept until the
//! whole SSH session ended. Mesh links live as long as the edges, so every relayed
//! connection cost the relaying edge (which closes first when the visitor leaves) about
//! 3.2 KiB, and the holder the same for each relay channel it closed first. The patch in
//! `vendor/russh` (see `vendor/README.md`) drops the queue when the answer comes; these
//! tests fail without it.
//!
//! russh drops a channel's queue by dropping its sender, so the channel's own reader sees
//! the end of its messages then: that is what the tests wait for.

use super::test_link::connect_confirming;
use russh::{Channel, ChannelMsg};
use std::time::Duration;

/// How long a test waits for russh to let go of a channel before it fails. With the patch
/// this takes one round trip on loopback; without it, the wait never ends.
const PATIENCE: Duration = Duration::from_secs(20);

/// Reads the channel's remaining messages until russh has dropped its side of the queue;
/// whether it did so within [`PATIENCE`], and the messages read.
async fn let_go<S: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static>(
    channel: &mut Channel<S>,
) -> (bool, Vec<ChannelMsg>) {
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Some(msg) = channel.wait().await {
            seen.push(msg);
        }
    })
    .await
    .is_ok();
    (ended, seen)
}

/// A relay channel opened and confirmed, as the relaying edge's and the holder's halves.
async fn relay_channel() -> (
    russh::client::Handle<super::links::PeerClient>,
    Channel<russh::client::Msg>,
    Channel<russh::server::Msg>,
) {
    let (handle, mut channels) = connect_confirming().await;
    let relaying = handle
        .channel_open_direct_tcpip("nearhop-relay/http", 0, "127.0.0.9", 40000)
        .await
        .expect("the holder confirms the channel");
    let holding = channels.recv().await.expect("the holder's half");
    (handle, relaying, holding)
}

#[tokio::test]
async fn the_relaying_edge_forgets_a_channel_it_closed_first() {
    let (_handle, mut relaying, mut holding) = relay_channel().await;
    relaying.close().await.expect("close sent");
    // The holder sees the close and answers it; its half ends as any peer-closed one.
    let (holder_let_go, seen) = let_go(&mut holding).await;
    assert!(holder_let_go, "the holder's half ended: {seen:?}");
    assert!(
        seen.iter().any(|m| matches!(m, ChannelMsg::Close)),
        "the holder saw the close: {seen:?}"
    );
    // The relaying edge's half ends once the holder's answer has come.
    let (relay_let_go, seen) = let_go(&mut relaying).await;
    assert!(
        relay_let_go,
        "russh kept the queue of a channel the relaying edge closed first after the \
         holder answered (seen: {seen:?}); is the vendor/russh patch in place?"
    );
}

#[tokio::test]
async fn the_holder_forgets_a_channel_it_closed_first() {
    let (_handle, mut relaying, mut holding) = relay_channel().await;
    holding.close().await.expect("close sent");
    let (relay_let_go, seen) = let_go(&mut relaying).await;
    assert!(relay_let_go, "the relaying edge's half ended: {seen:?}");
    assert!(
        seen.iter().any(|m| matches!(m, ChannelMsg::Close)),
        "the relaying edge saw the close: {seen:?}"
    );
    let (holder_let_go, seen) = let_go(&mut holding).await;
    assert!(
        holder_let_go,
        "russh kept the queue of a channel the holder closed first after the relaying \
         edge answered (seen: {seen:?}); is the vendor/russh patch in place?"
    );
}

#[tokio::test]
async fn a_session_keeps_working_after_many_channels_closed_first_from_both_ends() {
    let (handle, mut channels) = connect_confirming().await;
    for i in 0..200u32 {
        let mut relaying = handle
            .channel_open_direct_tcpip("nearhop-relay/http", 0, "127.0.0.9", 40000 + i)
            .await
            .expect("the holder confirms the channel");
        let mut holding = channels.recv().await.expect("the holder's half");
        // Alternate which end closes first, and send a little first.
        if i % 2 == 0 {
            relaying
                .data(&b"GET / HTTP/1.1\r\n\r\n"[..])
                .await
                .expect("sent");
            relaying.close().await.expect("close sent");
        } else {
            holding
                .data(&b"HTTP/1.1 200 OK\r\n\r\n"[..])
                .await
                .expect("sent");
            holding.close().await.expect("close sent");
        }
        let (a, seen_a) = let_go(&mut relaying).await;
        let (b, seen_b) = let_go(&mut holding).await;
        assert!(
            a && b,
            "channel {i}: both halves ended (relaying: {seen_a:?}, holder: {seen_b:?})"
        );
    }
    assert!(!handle.is_closed(), "the link is still up");
}
