//! The DNS listeners: UDP and TCP sockets around [`super::handler::respond`].
//!
//! This module owns sockets, connection limits and timeouts, and nothing else: every query is
//! answered by the handler against the snapshot loaded at that moment. UDP is served inline by
//! one task per socket (no task or allocation per query: the buffers are reused); each TCP
//! connection gets a task, bounded by `max_tcp_connections`, with pipelined queries answered
//! in order and idle connections closed.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{Semaphore, watch},
    task::JoinSet,
};
use tracing::{debug, warn};

use super::handler::{Transport, respond};
use crate::{metrics::Metrics, snapshot::SnapshotStore};

/// Largest UDP datagram we read; larger ones are truncated by the kernel and fail to decode.
const UDP_RECV_BUFFER: usize = 65_535;

/// Sockets bound by the caller (port 0 allowed): the server never binds by itself.
pub struct Listeners {
    pub udp: Vec<UdpSocket>,
    pub tcp: Vec<TcpListener>,
}

impl Listeners {
    /// Binds UDP and TCP on every address. With port 0, TCP reuses the port UDP got, so one
    /// address serves both transports as resolvers expect.
    pub async fn bind(addresses: &[SocketAddr]) -> io::Result<Listeners> {
        let mut udp = Vec::with_capacity(addresses.len());
        let mut tcp = Vec::with_capacity(addresses.len());
        for address in addresses {
            let (u, t) = bind_pair(*address).await?;
            udp.push(u);
            tcp.push(t);
        }
        Ok(Listeners { udp, tcp })
    }

    pub fn udp_addresses(&self) -> io::Result<Vec<SocketAddr>> {
        self.udp.iter().map(UdpSocket::local_addr).collect()
    }

    pub fn tcp_addresses(&self) -> io::Result<Vec<SocketAddr>> {
        self.tcp.iter().map(TcpListener::local_addr).collect()
    }
}

async fn bind_pair(address: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    if address.port() != 0 {
        let udp = UdpSocket::bind(address)
            .await
            .map_err(|e| bind_error(address, "UDP", e))?;
        let tcp = TcpListener::bind(address)
            .await
            .map_err(|e| bind_error(address, "TCP", e))?;
        return Ok((udp, tcp));
    }
    // Port 0: the UDP port the kernel picks may be taken for TCP; try a few times.
    let mut last_error = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(address)
            .await
            .map_err(|e| bind_error(address, "UDP", e))?;
        let picked = udp.local_addr()?;
        match TcpListener::bind(picked).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(bind_error(
        address,
        "TCP",
        last_error.unwrap_or_else(|| io::Error::other("no free port pair")),
    ))
}

fn bind_error(address: SocketAddr, transport: &str, error: io::Error) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("cannot bind {transport} {address}: {error}"),
    )
}

/// Server-wide settings taken from the snapshot at start.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    pub tcp_idle_timeout: Duration,
    pub max_tcp_connections: usize,
}

/// Serves until `shutdown` turns true. Returns when every listener task has stopped.
pub async fn serve(
    listeners: Listeners,
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    limits: ServerLimits,
    shutdown: watch::Receiver<bool>,
) {
    let seeds = Arc::new(AtomicU64::new(seed_start()));
    let connections = Arc::new(Semaphore::new(limits.max_tcp_connections));
    let mut tasks = JoinSet::new();
    for socket in listeners.udp {
        tasks.spawn(serve_udp(
            socket,
            store.clone(),
            metrics.clone(),
            seeds.clone(),
            shutdown.clone(),
        ));
    }
    for listener in listeners.tcp {
        tasks.spawn(serve_tcp(
            listener,
            store.clone(),
            metrics.clone(),
            seeds.clone(),
            connections.clone(),
            limits.tcp_idle_timeout,
            shutdown.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
}

/// Entropy for weighted steering. Not security-relevant: it only spreads answers.
fn seed_start() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn next_seed(seeds: &AtomicU64) -> u64 {
    // splitmix64 step: consecutive queries get well-spread seeds.
    let mut z = seeds
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

async fn serve_udp(
    socket: UdpSocket,
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    seeds: Arc<AtomicU64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut packet = vec![0u8; UDP_RECV_BUFFER];
    let mut response = Vec::with_capacity(4096);
    loop {
        let (len, peer) = tokio::select! {
            received = socket.recv_from(&mut packet) => match received {
                Ok(received) => received,
                Err(error) => {
                    // ICMP errors from earlier sends surface here on some platforms; they say
                    // nothing about this socket, which keeps serving.
                    debug!(%error, "UDP receive error");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        if peer.port() == 0 {
            continue; // cannot be answered, and answering port 0 is a known reflection trick
        }
        let started = Instant::now();
        let snapshot = store.load();
        let summary = respond(
            &snapshot,
            &packet[..len],
            peer,
            Transport::Udp,
            next_seed(&seeds),
            started,
            &mut response,
        );
        let Some(summary) = summary else {
            metrics.dropped(Transport::Udp);
            continue;
        };
        metrics.answered(Transport::Udp, &summary, &snapshot, started.elapsed());
        // The guard is not held across the send: a reload may free the old snapshot meanwhile.
        drop(snapshot);
        if let Err(error) = socket.send_to(&response, peer).await {
            debug!(%error, %peer, "UDP send failed");
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_tcp(
    listener: TcpListener,
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    seeds: Arc<AtomicU64>,
    connections: Arc<Semaphore>,
    idle_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: keep the listener, shed this connection.
                    warn!(%error, "TCP accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics.tcp_rejected();
            drop(stream); // over the cap: close at once rather than queue
            continue;
        };
        let store = store.clone();
        let metrics = metrics.clone();
        let seeds = seeds.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _permit = permit;
            if let Err(error) = serve_tcp_connection(
                stream,
                peer,
                &store,
                &metrics,
                &seeds,
                idle_timeout,
                shutdown,
            )
            .await
            {
                debug!(%error, %peer, "TCP connection ended with an error");
            }
        });
    }
    tasks.abort_all();
}

async fn serve_tcp_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    store: &SnapshotStore,
    metrics: &Metrics,
    seeds: &AtomicU64,
    idle_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut packet = Vec::with_capacity(512);
    let mut response = Vec::with_capacity(4096);
    loop {
        let mut length = [0u8; 2];
        tokio::select! {
            read = tokio::time::timeout(idle_timeout, stream.read_exact(&mut length)) => match read {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(()), // idle: close quietly
            },
            _ = shutdown.changed() => return Ok(()),
        }
        let length = usize::from(u16::from_be_bytes(length));
        packet.resize(length, 0);
        // A peer that announces a length and stalls is cut off by the same idle timeout.
        match tokio::time::timeout(idle_timeout, stream.read_exact(&mut packet)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        let started = Instant::now();
        let snapshot = store.load();
        let summary = respond(
            &snapshot,
            &packet,
            peer,
            Transport::Tcp,
            next_seed(seeds),
            started,
            &mut response,
        );
        let Some(summary) = summary else {
            metrics.dropped(Transport::Tcp);
            return Ok(()); // not a query: this connection is not a DNS client
        };
        metrics.answered(Transport::Tcp, &summary, &snapshot, started.elapsed());
        drop(snapshot);
        let Ok(response_length) = u16::try_from(response.len()) else {
            return Ok(()); // cannot happen: the handler caps TCP responses at 65535
        };
        let mut framed = Vec::with_capacity(response.len() + 2);
        framed.extend_from_slice(&response_length.to_be_bytes());
        framed.extend_from_slice(&response);
        tokio::time::timeout(idle_timeout, stream.write_all(&framed))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))??;
    }
}
