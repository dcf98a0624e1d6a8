//! [`StallingProxy`]: a loopback TCP proxy in front of a live broker that a test can stall, so
//! that the broker stops answering while every connection stays open (a hung broker, a
//! partition), which closing or killing the broker cannot show.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Forwards every connection made to [`StallingProxy::address`] to the broker, byte for byte,
/// until [`StallingProxy::stall`]: from then on what either side sends is held (not dropped)
/// until [`StallingProxy::resume`]. Dropping the proxy closes its connections.
#[derive(Debug)]
pub struct StallingProxy {
    address: SocketAddr,
    stalled: watch::Sender<bool>,
    /// The accepting task, which owns the connections' tasks: aborting it aborts them.
    accepting: tokio::task::JoinHandle<()>,
}

impl StallingProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (stalled, watching) = watch::channel(false);
        let upstream = upstream.to_owned();
        let accepting = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, watching) = (upstream.clone(), watching.clone());
                connections.spawn(async move {
                    if let Ok(broker) = TcpStream::connect(&upstream).await {
                        pipe(client, broker, watching).await;
                    }
                });
            }
        });
        Ok(StallingProxy {
            address,
            stalled,
            accepting,
        })
    }

    /// Where clients connect instead of the broker.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Holds whatever either side sends from now on.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Forwards again, what was held first.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Forwards both ways until either side closes.
async fn pipe(client: TcpStream, broker: TcpStream, stalled: watch::Receiver<bool>) {
    let (client_reads, client_writes) = client.into_split();
    let (broker_reads, broker_writes) = broker.into_split();
    tokio::select! {
        () = forward(client_reads, broker_writes, stalled.clone()) => {}
        () = forward(broker_reads, client_writes, stalled) => {}
    }
}

async fn forward(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if stalled.wait_for(|stalled| !stalled).await.is_err()
            || to.write_all(&buffer[..read]).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An echo server behind the proxy: echoed while flowing, held while stalled, then
    /// delivered on resume.
    #[tokio::test]
    async fn stalls_and_resumes_without_losing_bytes() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = echo.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut socket, _) = echo.accept().await.unwrap();
            let mut buffer = [0; 64];
            loop {
                let read = socket.read(&mut buffer).await.unwrap();
                if read == 0 || socket.write_all(&buffer[..read]).await.is_err() {
                    return;
                }
            }
        });
        let proxy = StallingProxy::start(&upstream).await.unwrap();
        let mut client = TcpStream::connect(proxy.address()).await.unwrap();
        let mut answer = [0; 3];

        client.write_all(b"one").await.unwrap();
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"one");

        proxy.stall();
        client.write_all(b"two").await.unwrap();
        let held = tokio::time::timeout(Duration::from_millis(300), client.read(&mut answer)).await;
        assert!(held.is_err(), "answered while stalled: {held:?}");

        proxy.resume();
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"two");
    }
}
