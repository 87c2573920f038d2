//! Data on a relay channel arrives exactly as it was sent, each way of a mesh link.
//!
//! The patch in `vendor/russh` for received channel data (see `vendor/README.md`) hands a
//! channel its data as a slice of the SSH packet it came in, where russh as published
//! copied it out twice. These tests send data both ways over a real link, so through the
//! russh server's receiving code and the client's, and check every byte and its place.

use super::test_link::connect_confirming;
use russh::{Channel, ChannelMsg};
use std::time::Duration;

/// Sizes sent one after another: one byte, less than a packet, russh's default largest
/// packet, and a run of many packets ending with a short one.
const SIZES: [usize; 4] = [1, 100, 32768, 1_000_003];

/// How long a test waits for all the data before it fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// Bytes that differ from one offset to the next over a long stretch, so a slice taken at
/// the wrong place in a packet shows.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// Sends each size of [`SIZES`] as data, then the same as extended data (stderr), then EOF.
async fn send_all<S: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static>(
    channel: &Channel<S>,
) {
    for (i, &len) in SIZES.iter().enumerate() {
        channel
            .data_bytes(pattern(len, i as u32))
            .await
            .expect("data sent");
    }
    for (i, &len) in SIZES.iter().enumerate() {
        channel
            .extended_data_bytes(1, pattern(len, 100 + i as u32))
            .await
            .expect("extended data sent");
    }
    channel.eof().await.expect("eof sent");
}

/// Reads `channel` until EOF: the data and the extended data (stderr) received, in order.
async fn read_to_eof<S: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static>(
    channel: &mut Channel<S>,
) -> (Vec<u8>, Vec<u8>) {
    let (mut data, mut stderr) = (Vec::new(), Vec::new());
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Data { data: part }) => data.extend_from_slice(&part),
            Some(ChannelMsg::ExtendedData { ext: 1, data: part }) => {
                stderr.extend_from_slice(&part)
            }
            Some(ChannelMsg::Eof) | None => return (data, stderr),
            Some(_) => {}
        }
    }
}

/// The bytes [`send_all`] sends as data (or extended data, `seed_base` 100), end to end.
fn expected(seed_base: u32) -> Vec<u8> {
    SIZES
        .iter()
        .enumerate()
        .flat_map(|(i, &len)| pattern(len, seed_base + i as u32))
        .collect()
}

fn assert_received(received: (Vec<u8>, Vec<u8>), side: &str) {
    let (data, stderr) = received;
    assert_eq!(data.len(), expected(0).len(), "{side}: data length");
    assert!(
        data == expected(0),
        "{side}: the data differs from what was sent"
    );
    assert_eq!(stderr.len(), expected(100).len(), "{side}: stderr length");
    assert!(
        stderr == expected(100),
        "{side}: the extended data differs from what was sent"
    );
}

#[tokio::test]
async fn data_from_the_relaying_edge_reaches_the_holder_as_sent() {
    let (handle, mut channels) = connect_confirming().await;
    let relaying = handle
        .channel_open_direct_tcpip("nearhop-relay/http", 0, "127.0.0.9", 40000)
        .await
        .expect("the holder confirms the channel");
    let mut holding = channels.recv().await.expect("the holder's half");
    let sending = tokio::spawn(async move {
        send_all(&relaying).await;
        relaying
    });
    let received = tokio::time::timeout(PATIENCE, read_to_eof(&mut holding))
        .await
        .expect("all the data arrived in time");
    let _relaying = sending.await.expect("sender");
    assert_received(received, "the holder (russh server)");
}

#[tokio::test]
async fn data_from_the_holder_reaches_the_relaying_edge_as_sent() {
    let (handle, mut channels) = connect_confirming().await;
    let mut relaying = handle
        .channel_open_direct_tcpip("nearhop-relay/http", 0, "127.0.0.9", 40000)
        .await
        .expect("the holder confirms the channel");
    let holding = channels.recv().await.expect("the holder's half");
    let sending = tokio::spawn(async move {
        send_all(&holding).await;
        holding
    });
    let received = tokio::time::timeout(PATIENCE, read_to_eof(&mut relaying))
        .await
        .expect("all the data arrived in time");
    let _holding = sending.await.expect("sender");
    assert_received(received, "the relaying edge (russh client)");
}
