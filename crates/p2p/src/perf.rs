//! A raw-stream throughput probe, the ceiling that `/cas` transfers are measured against in
//! `cargo xtask bench`: the client writes N bytes on one stream, the server reads them all
//! and answers with the count (8 bytes, little-endian). A node speaks it only while
//! [`serve`] runs.

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};

use crate::streams::Control;

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/cairn/perf/1.0.0");

/// Serves perf streams until the swarm goes away; spawn it on the caller's runtime.
pub async fn serve(mut control: Control) {
    let Ok(mut incoming) = control.accept(PROTOCOL, 4) else {
        return;
    };
    while let Some((_, mut stream)) = incoming.next().await {
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(_) => break,
            }
        }
        let _ = stream.write_all(&total.to_le_bytes()).await;
        let _ = stream.close().await;
    }
}

/// Sends `len` bytes to `peer` and waits for its count; returns the count.
pub async fn send(control: &mut Control, peer: PeerId, len: u64) -> std::io::Result<u64> {
    let mut stream = control
        .open_stream(peer, PROTOCOL)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let chunk = vec![0x5au8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    stream.close().await?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).await?;
    Ok(u64::from_le_bytes(count))
}
