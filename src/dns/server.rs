//! The DNS listeners: UDP and TCP sockets around [`super::handler`].
//!
//! This module owns sockets, connection limits and timeouts, and nothing else: every query is
//! answered by the handler against the snapshot loaded at that moment. Each UDP socket is
//! served by blocking worker threads (one per CPU the process may use) that receive and send
//! in batches and answer through a per-worker [`AnswerCache`]; see the UDP section below for
//! why not tasks. Each TCP connection gets a task, bounded by `max_tcp_connections`, that
//! reads pipelined queries a chunk at a time and writes the chunk's answers, in order, in one
//! write (see the TCP section); idle and stalled connections are closed. A zone transfer (AXFR,
//! IXFR) on a TCP connection is answered by [`super::transfer`] as a series of messages.

use std::{
    io::{self, IoSlice, IoSliceMut},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rustix::event::{PollFd, PollFlags};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{Semaphore, watch},
    task::JoinSet,
};
use tracing::{debug, warn};

use super::{
    handler::{AnswerCache, Summary, Transport, respond_cached},
    rrl::{self, ResponseRateLimiter, Verdict},
    transfer,
};
use crate::{
    admin::RecentDecisions,
    metrics::{Metrics, Tally},
    snapshot::{Snapshot, SnapshotStore},
};

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

/// What else watches the query path besides the metrics: response-rate limiting (UDP only;
/// applied when the snapshot's config has `[rrl]`) and the admin API's recent-decisions ring.
#[derive(Clone, Default)]
pub struct Observers {
    pub rrl: Option<Arc<ResponseRateLimiter>>,
    pub recent: Option<Arc<RecentDecisions>>,
}

/// At most one recent-decision sample per worker per this interval: the status page needs a
/// sample, and the query path must not pay a lock per query for it.
const RECENT_SAMPLE_INTERVAL: Duration = Duration::from_millis(5);

/// Serves until `shutdown` turns true. Returns when every listener has stopped.
pub async fn serve(
    listeners: Listeners,
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    limits: ServerLimits,
    shutdown: watch::Receiver<bool>,
) {
    serve_observed(
        listeners,
        store,
        metrics,
        limits,
        Observers::default(),
        shutdown,
    )
    .await
}

/// [`serve`] with [`Observers`] on the query path.
pub async fn serve_observed(
    listeners: Listeners,
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    limits: ServerLimits,
    observers: Observers,
    mut shutdown: watch::Receiver<bool>,
) {
    let seeds = Arc::new(AtomicU64::new(seed_start()));
    let connections = Arc::new(Semaphore::new(limits.max_tcp_connections));
    let stopping = Arc::new(AtomicBool::new(false));
    let workers = udp_workers_per_socket();
    let mut udp_threads = Vec::new();
    for (index, socket) in listeners.udp.into_iter().enumerate() {
        let shared = UdpShared {
            store: &store,
            metrics: &metrics,
            observers: &observers,
            stopping: &stopping,
        };
        match start_udp_workers(index, socket, workers, &shared, &seeds) {
            Ok(threads) => udp_threads.extend(threads),
            Err(error) => warn!(%error, "cannot serve a UDP socket"),
        }
    }
    let mut tasks = JoinSet::new();
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
    // Either a `true` or a dropped sender means stop.
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    stopping.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let joined = tokio::task::spawn_blocking(move || {
        for thread in udp_threads {
            if thread.join().is_err() {
                warn!("a UDP worker panicked");
            }
        }
    });
    let _ = joined.await;
}

/// UDP workers per socket: one per CPU this process may run on (a server pinned to one core
/// gets one), each a blocking thread of its own.
fn udp_workers_per_socket() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Entropy for weighted steering. Not security-relevant: it only spreads answers.
fn seed_start() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn next_seed(seeds: &AtomicU64) -> u64 {
    splitmix(seeds.fetch_add(GOLDEN_GAMMA, Ordering::Relaxed))
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// One splitmix64 output for `state`: consecutive states give well-spread seeds.
fn splitmix(state: u64) -> u64 {
    let mut z = state.wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// --- UDP ---------------------------------------------------------------------------------
//
// Each UDP socket is served by plain threads, not tasks: a worker receives up to
// `UDP_BATCH` datagrams with one system call (recvmmsg), answers them inline, folds its
// metric counts into the shared series, then sends every response with one system call
// (sendmmsg). Only when the socket is empty does it wait, in poll(2), which is also where it
// notices shutdown. Under load that is two system calls per batch instead of two per query
// plus the async runtime's wake-ups; idle, it costs one wake-up per `UDP_IDLE_WAIT`.

/// Datagrams per receive call and responses per send call.
const UDP_BATCH: usize = 32;
/// How long an idle worker sleeps before looking at the shutdown flag again.
const UDP_IDLE_WAIT: Duration = Duration::from_millis(100);
/// Room per received datagram. Queries are small; with UDP GRO the kernel may hand over
/// several same-sized datagrams from one sender in one buffer, hence the multiple.
const UDP_DATAGRAM_ROOM: usize = 4096;

/// What every UDP worker of the server shares.
struct UdpShared<'a> {
    store: &'a Arc<SnapshotStore>,
    metrics: &'a Arc<Metrics>,
    observers: &'a Observers,
    stopping: &'a Arc<AtomicBool>,
}

fn start_udp_workers(
    index: usize,
    socket: UdpSocket,
    workers: usize,
    shared: &UdpShared<'_>,
    seeds: &AtomicU64,
) -> io::Result<Vec<std::thread::JoinHandle<()>>> {
    let UdpShared {
        store,
        metrics,
        observers,
        stopping,
    } = *shared;
    // Leaves tokio's reactor: the workers block in poll(2) themselves.
    let socket = Arc::new(socket.into_std()?);
    let state = Arc::new(quinn_udp::UdpSocketState::new((&*socket).into())?);
    skip_traffic_class(&socket);
    let room = UDP_DATAGRAM_ROOM.max(state.gro_segments() * 1500);
    let mut threads = Vec::with_capacity(workers);
    for number in 0..workers {
        let worker = UdpWorker {
            socket: socket.clone(),
            state: state.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            observers: observers.clone(),
            last_recent_sample: None,
            stopping: stopping.clone(),
            seed: next_seed(seeds),
            room,
            tally: Tally::default(),
            cache: AnswerCache::new(),
            outbox: UdpOutbox::new(),
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("dns-udp-{index}.{number}"))
                .spawn(move || worker.run())?,
        );
    }
    Ok(threads)
}

/// Turns off the TOS / traffic class control message that quinn-udp asks for (QUIC's ECN):
/// DNS has no use for it, and the kernel would build one per received query. quinn-udp's
/// other options stay: the destination address (`IP_PKTINFO`, which no safe API turns off
/// again) and GRO (queries of one flow may arrive coalesced).
fn skip_traffic_class(socket: &std::net::UdpSocket) {
    use rustix::net::sockopt;
    // A dual-stack socket takes both; on an IPv4 socket the IPv6 option fails harmlessly.
    let v4 = sockopt::set_ip_recvtos(socket, false);
    let v6 = match socket.local_addr() {
        Ok(SocketAddr::V6(_)) => sockopt::set_ipv6_recvtclass(socket, false),
        _ => Ok(()),
    };
    if let Err(error) = v4.and(v6) {
        debug!(%error, "cannot turn off the traffic class of received datagrams");
    }
}

struct UdpWorker {
    socket: Arc<std::net::UdpSocket>,
    state: Arc<quinn_udp::UdpSocketState>,
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    observers: Observers,
    last_recent_sample: Option<Instant>,
    stopping: Arc<AtomicBool>,
    /// splitmix64 state of this worker: no shared counter between workers.
    seed: u64,
    room: usize,
    tally: Tally,
    cache: AnswerCache,
    outbox: UdpOutbox,
}

impl UdpWorker {
    fn run(mut self) {
        let mut received = vec![0u8; self.room * UDP_BATCH];
        let mut metas = [quinn_udp::RecvMeta::default(); UDP_BATCH];
        // Whether the last batch suggests more datagrams are queued. If not, waiting first
        // (poll returns at once when one is there) saves the receive call that would find the
        // socket empty: three system calls per batch at low load, two under load.
        let mut busy = false;
        while !self.stopping.load(Ordering::Relaxed) {
            if !busy && !wait_until(&self.socket, PollFlags::IN) {
                continue;
            }
            let count = {
                let mut chunks = received.chunks_mut(self.room);
                let mut buffers: [IoSliceMut<'_>; UDP_BATCH] =
                    std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
                match self
                    .state
                    .recv((&*self.socket).into(), &mut buffers, &mut metas)
                {
                    Ok(count) => count,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        // Another worker took it, or a busy guess was wrong.
                        busy = false;
                        continue;
                    }
                    Err(error) => {
                        // ICMP errors from earlier sends surface here on some platforms; they
                        // say nothing about this socket, which keeps serving.
                        debug!(%error, "UDP receive error");
                        continue;
                    }
                }
            };
            busy = count > 1;
            let snapshot = self.store.load_full();
            for (meta, buffer) in metas[..count].iter().zip(received.chunks(self.room)) {
                let datagrams = &buffer[..meta.len.min(buffer.len())];
                // Without GRO the stride is the whole datagram.
                for packet in datagrams.chunks(meta.stride.max(1)) {
                    self.answer(&snapshot, packet, meta.addr);
                }
            }
            // Counted before sending, so a client that scrapes after its answer sees it.
            self.metrics.flush(&mut self.tally, &snapshot);
            drop(snapshot);
            self.outbox.send(&self.socket);
        }
    }

    fn answer(&mut self, snapshot: &Arc<Snapshot>, packet: &[u8], peer: SocketAddr) {
        if peer.port() == 0 {
            return; // cannot be answered, and answering port 0 is a known reflection trick
        }
        if self.outbox.is_full() {
            // Only with GRO can a batch hold more datagrams than the outbox has room for.
            self.metrics.flush(&mut self.tally, snapshot);
            self.outbox.send(&self.socket);
        }
        let started = Instant::now();
        self.seed = self.seed.wrapping_add(GOLDEN_GAMMA);
        let summary = respond_cached(
            snapshot,
            &mut self.cache,
            packet,
            peer,
            Transport::Udp,
            splitmix(self.seed),
            started,
            self.outbox.buffer(),
        );
        let Some(summary) = summary else {
            self.tally.dropped(Transport::Udp);
            return;
        };
        self.tally
            .answered(Transport::Udp, &summary, started.elapsed());
        if let Some(recent) = &self.observers.recent
            && self
                .last_recent_sample
                .is_none_or(|at| started.duration_since(at) >= RECENT_SAMPLE_INTERVAL)
        {
            self.last_recent_sample = Some(started);
            let client = crate::admin::recent::decided_for(packet, peer.ip());
            recent.record_answer(client, &summary, snapshot);
        }
        // Response-rate limiting, on UDP only: a TCP client has proved its address.
        let verdict = match (&self.observers.rrl, &snapshot.config.rrl) {
            (Some(limiter), Some(config)) => {
                limiter.check(config, peer.ip(), self.outbox.buffer(), started)
            }
            _ => Verdict::Send,
        };
        match verdict {
            Verdict::Send => self.outbox.queue_response(peer, &summary),
            Verdict::Slip if rrl::truncate_for_slip(self.outbox.buffer()) => {
                self.outbox.queue_response(peer, &summary)
            }
            // Not queued: the slot's buffer is simply overwritten by the next response.
            Verdict::Slip | Verdict::Drop => {}
        }
    }
}

/// Waits until the socket is ready for `flags`, at most [`UDP_IDLE_WAIT`]; returns whether
/// it is.
fn wait_until(socket: &std::net::UdpSocket, flags: PollFlags) -> bool {
    let mut fds = [PollFd::new(socket, flags)];
    let timeout = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: i64::from(UDP_IDLE_WAIT.subsec_nanos()),
    };
    // EINTR or a timeout: the caller looks again either way.
    matches!(rustix::event::poll(&mut fds, Some(&timeout)), Ok(n) if n > 0)
}

/// The responses of one batch, sent together.
struct UdpOutbox {
    /// One buffer per slot, kept between batches so that steady state allocates nothing.
    buffers: Vec<Vec<u8>>,
    peers: Vec<SocketAddr>,
}

impl UdpOutbox {
    fn new() -> UdpOutbox {
        UdpOutbox {
            buffers: (0..UDP_BATCH).map(|_| Vec::with_capacity(512)).collect(),
            peers: Vec::with_capacity(UDP_BATCH),
        }
    }

    fn is_full(&self) -> bool {
        self.peers.len() == UDP_BATCH
    }

    /// The buffer the next response is written into.
    fn buffer(&mut self) -> &mut Vec<u8> {
        let slot = self.peers.len();
        &mut self.buffers[slot]
    }

    /// Queues the response written into [`Self::buffer`] for `peer`. Not calling it drops
    /// the response (response-rate limiting does so in [`UdpWorker::answer`]).
    fn queue_response(&mut self, peer: SocketAddr, _summary: &Summary) {
        self.peers.push(peer);
    }

    /// Sends every queued response, in order; a response the kernel refuses is dropped and
    /// logged, the others still go.
    fn send(&mut self, socket: &std::net::UdpSocket) {
        let count = self.peers.len();
        let mut sent = 0;
        let mut waits = 0;
        // Bounded: every round sends at least one response, skips one, or waits (at most
        // `MAX_SEND_WAITS` times for a full socket buffer).
        while sent < count {
            match send_batch(socket, &self.peers[sent..count], &self.buffers[sent..count]) {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(error)
                    if error.kind() == io::ErrorKind::WouldBlock && waits < MAX_SEND_WAITS =>
                {
                    waits += 1;
                    wait_until(socket, PollFlags::OUT);
                }
                Err(error) => {
                    debug!(%error, peer = %self.peers[sent], "UDP send failed");
                    sent += 1;
                }
            }
        }
        self.peers.clear();
    }
}

/// How often one batch may wait for room in the socket's send buffer before its remaining
/// responses are dropped (the client retries, as it would after a loss).
const MAX_SEND_WAITS: u32 = 3;

/// Sends `responses[i]` to `peers[i]` with as few system calls as the platform allows;
/// returns how many went.
#[cfg(target_os = "linux")]
fn send_batch(
    socket: &std::net::UdpSocket,
    peers: &[SocketAddr],
    responses: &[Vec<u8>],
) -> io::Result<usize> {
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};
    let count = peers.len().min(UDP_BATCH);
    let addresses: [SocketAddrAny; UDP_BATCH] =
        std::array::from_fn(|i| SocketAddrAny::from(peers.get(i).copied().unwrap_or(UNSPECIFIED)));
    let slices: [[IoSlice<'_>; 1]; UDP_BATCH] = std::array::from_fn(|i| {
        [IoSlice::new(
            responses.get(i).map_or(&[][..], Vec::as_slice),
        )]
    });
    let mut controls: [SendAncillaryBuffer<'_, '_, '_>; UDP_BATCH] =
        std::array::from_fn(|_| SendAncillaryBuffer::default());
    let mut messages: Vec<MMsgHdr<'_>> = addresses
        .iter()
        .zip(slices.iter())
        .zip(controls.iter_mut())
        .take(count)
        .map(|((address, slice), control)| MMsgHdr::new_with_addr(address, slice, control))
        .collect();
    Ok(sendmmsg(socket, &mut messages, SendFlags::empty())?)
}

#[cfg(not(target_os = "linux"))]
fn send_batch(
    socket: &std::net::UdpSocket,
    peers: &[SocketAddr],
    responses: &[Vec<u8>],
) -> io::Result<usize> {
    let (Some(peer), Some(response)) = (peers.first(), responses.first()) else {
        return Ok(0);
    };
    socket.send_to(response, peer).map(|_| 1)
}

#[cfg(target_os = "linux")]
const UNSPECIFIED: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));

// --- TCP ---------------------------------------------------------------------------------

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

// Each connection is read in chunks of up to `TCP_READ_CHUNK` octets; every complete message in
// a chunk is answered, in order, into one output buffer, and the answers go out in one write
// before the connection is read again. A pipelining client (a resolver, dnsperf) thus costs a
// read and a write per chunk instead of two reads and a write per query, and the kernel sends
// one segment where it sent one per answer. What the server holds per connection stays bounded:
// one chunk of queries (or one whole message, up to 65,537 octets with its prefix) and at most
// `TCP_WRITE_BATCH` octets of answers plus one message; the rest waits in the kernel's socket
// buffers, under TCP flow control.

/// Octets asked of the kernel per read, unless a longer message must be completed.
const TCP_READ_CHUNK: usize = 16 * 1024;
/// Answers buffered before they are written even though queries of the chunk remain.
const TCP_WRITE_BATCH: usize = 32 * 1024;

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
    let mut inbox = TcpInbox::new();
    let mut outbox = TcpOutbox::new(idle_timeout);
    let mut response = Vec::with_capacity(4096);
    // Pipelining resolvers ask the same shapes over one connection again and again.
    let mut cache = AnswerCache::new();
    // splitmix64 state of this connection: no shared counter per query.
    let mut seed = next_seed(seeds);
    // A message must be complete within the idle timeout of the previous one's end (or of the
    // connection's start): neither silence nor a trickle holds a slot longer.
    let mut deadline = tokio::time::Instant::now() + idle_timeout;
    loop {
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, inbox.fill(&mut stream)) => read,
            _ = shutdown.changed() => return Ok(()),
        };
        match read {
            Ok(Ok(0)) if inbox.is_empty() => return Ok(()),
            Ok(Ok(0)) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed mid-message",
                ));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()), // idle, or a message that stalls: close quietly
        }
        let mut answered_any = false;
        let snapshot = store.load_full();
        while let Some(packet) = inbox.next_message() {
            answered_any = true;
            let started = Instant::now();
            if transfer::is_transfer_query(packet) {
                // Earlier answers go first: answers stay in query order.
                outbox.write(&mut stream, metrics, &snapshot).await?;
                // Encoding a large zone takes a while: not on the runtime's threads.
                let (request, answering) = (packet.to_vec(), snapshot.clone());
                let transfer = tokio::task::spawn_blocking(move || {
                    transfer::respond(&answering, &request, peer)
                })
                .await
                .map_err(io::Error::other)?;
                if let Some(transfer) = transfer {
                    metrics.answered(
                        Transport::Tcp,
                        &transfer.summary,
                        &snapshot,
                        started.elapsed(),
                    );
                    for message in &transfer.messages {
                        outbox.push(message)?;
                        outbox.write(&mut stream, metrics, &snapshot).await?;
                    }
                    continue;
                }
            }
            seed = seed.wrapping_add(GOLDEN_GAMMA);
            let summary = respond_cached(
                &snapshot,
                &mut cache,
                packet,
                peer,
                Transport::Tcp,
                splitmix(seed),
                started,
                &mut response,
            );
            let Some(summary) = summary else {
                outbox.tally.dropped(Transport::Tcp);
                // Not a query: this connection is not a DNS client. What it was owed still goes.
                outbox.write(&mut stream, metrics, &snapshot).await?;
                return Ok(());
            };
            outbox
                .tally
                .answered(Transport::Tcp, &summary, started.elapsed());
            outbox.push(&response)?;
            if outbox.len() >= TCP_WRITE_BATCH {
                outbox.write(&mut stream, metrics, &snapshot).await?;
            }
        }
        outbox.write(&mut stream, metrics, &snapshot).await?;
        if answered_any {
            deadline = tokio::time::Instant::now() + idle_timeout;
        }
    }
}

/// The octets read from one TCP connection and not yet answered.
struct TcpInbox {
    /// `buffer[start..end]` is unanswered input: whole messages, then at most a partial one.
    buffer: Vec<u8>,
    start: usize,
    end: usize,
}

impl TcpInbox {
    fn new() -> TcpInbox {
        TcpInbox {
            buffer: vec![0; TCP_READ_CHUNK],
            start: 0,
            end: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Reads what the kernel has (at least one octet, or 0 at the end of the stream), after
    /// making room: the partial message moves to the front, and the buffer grows to hold the
    /// whole of a message announced longer than it (at most 65,537 octets).
    async fn fill(&mut self, stream: &mut TcpStream) -> io::Result<usize> {
        if self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let needed = match self.buffer.get(..2.min(self.end)) {
            Some(&[high, low]) => 2 + usize::from(u16::from_be_bytes([high, low])),
            _ => 2,
        };
        if needed > self.buffer.len() {
            self.buffer.resize(needed, 0);
        }
        let read = stream.read(&mut self.buffer[self.end..]).await?;
        self.end += read;
        Ok(read)
    }

    /// The next complete message (without its length prefix), if one has been read.
    fn next_message(&mut self) -> Option<&[u8]> {
        let pending = &self.buffer[self.start..self.end];
        let (&[high, low], body) = pending.split_first_chunk::<2>()?;
        let length = usize::from(u16::from_be_bytes([high, low]));
        let message = body.get(..length)?;
        self.start += 2 + length;
        Some(message)
    }
}

/// Framed answers of one TCP connection waiting to be written, with their metric counts.
struct TcpOutbox {
    framed: Vec<u8>,
    tally: Tally,
    /// A client that stops reading for this long is cut off.
    write_timeout: Duration,
}

impl TcpOutbox {
    fn new(write_timeout: Duration) -> TcpOutbox {
        TcpOutbox {
            framed: Vec::with_capacity(TCP_WRITE_BATCH + 4096),
            tally: Tally::default(),
            write_timeout,
        }
    }

    fn len(&self) -> usize {
        self.framed.len()
    }

    /// Queues one message with its length prefix.
    fn push(&mut self, message: &[u8]) -> io::Result<()> {
        let Ok(length) = u16::try_from(message.len()) else {
            // Cannot happen: the handler caps TCP responses, and transfers their messages, at
            // 65535.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "message over 65535 octets",
            ));
        };
        self.framed.extend_from_slice(&length.to_be_bytes());
        self.framed.extend_from_slice(message);
        Ok(())
    }

    /// Counts the queued answers (before sending, so a client that scrapes after its answer
    /// sees it) and writes them in one go. `snapshot` is the one they were decided on.
    async fn write(
        &mut self,
        stream: &mut TcpStream,
        metrics: &Metrics,
        snapshot: &Snapshot,
    ) -> io::Result<()> {
        metrics.flush(&mut self.tally, snapshot);
        if self.framed.is_empty() {
            return Ok(());
        }
        tokio::time::timeout(self.write_timeout, stream.write_all(&self.framed))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))??;
        self.framed.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const TYPE_A: u16 = 1;
    const TYPE_TXT: u16 = 16;
    const TYPE_AXFR: u16 = 252;
    const RCODE_REFUSED: u8 = 5;

    /// A query with EDNS (payload 1232) whose OPT carries `padding` octets of EDNS padding
    /// (option 12), so that a message can be made longer than a read chunk.
    fn query(id: u16, name: &str, qtype: u16, padding: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for field in [id, 0, 1, 0, 0, 1] {
            bytes.extend_from_slice(&field.to_be_bytes());
        }
        for label in name.split('.') {
            bytes.push(label.len() as u8);
            bytes.extend_from_slice(label.as_bytes());
        }
        bytes.push(0);
        bytes.extend_from_slice(&qtype.to_be_bytes());
        bytes.extend_from_slice(&1u16.to_be_bytes());
        let rdata_len = if padding > 0 { 4 + padding } else { 0 };
        bytes.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&(rdata_len as u16).to_be_bytes());
        if padding > 0 {
            bytes.extend_from_slice(&12u16.to_be_bytes());
            bytes.extend_from_slice(&(padding as u16).to_be_bytes());
            bytes.extend(std::iter::repeat_n(0u8, padding));
        }
        bytes
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut bytes = (message.len() as u16).to_be_bytes().to_vec();
        bytes.extend_from_slice(message);
        bytes
    }

    /// The TCP listener of a server on 127.0.0.1:0 over the bundled example.
    async fn start() -> (SocketAddr, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("zones/meridian.toml");
        let store = Arc::new(SnapshotStore::open(&config).expect("the bundled config loads"));
        let listeners = Listeners::bind(&["127.0.0.1:0".parse().expect("address")])
            .await
            .expect("bind");
        let addr = listeners.tcp_addresses().expect("address")[0];
        let limits = ServerLimits {
            tcp_idle_timeout: Duration::from_secs(10),
            max_tcp_connections: 4,
        };
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(
            listeners,
            store,
            Arc::new(Metrics::new()),
            limits,
            stopped,
        ));
        (addr, stop, task)
    }

    /// Everything the batched TCP path must keep: answers in query order across several
    /// output batches (large answers), a transfer request in the middle of a pipelined chunk
    /// (answered through the transfer path, here REFUSED), a message longer than a read chunk,
    /// and a message split across two writes.
    #[tokio::test]
    async fn pipelined_queries_are_answered_in_order_whatever_the_chunking() {
        let (addr, stop, task) = start().await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        // (id, query, expected RCODE)
        let mut plan = Vec::new();
        for id in 0..60 {
            plan.push((id, query(id, "big.example.test", TYPE_TXT, 0), 0));
        }
        plan.push((60, query(60, "example.test", TYPE_AXFR, 0), RCODE_REFUSED));
        for id in 61..70 {
            plan.push((id, query(id, "www.example.test", TYPE_A, 0), 0));
        }
        let long = query(70, "www.example.test", TYPE_A, TCP_READ_CHUNK + 1000);
        assert!(long.len() > TCP_READ_CHUNK);
        plan.push((70, long, 0));
        plan.push((71, query(71, "www.example.test", TYPE_A, 0), 0));
        let bytes: Vec<u8> = plan.iter().flat_map(|(_, q, _)| framed(q)).collect();
        // The big answers (~1.6 kB each) alone fill the output batch more than twice.
        const { assert!(60 * 1500 > 2 * TCP_WRITE_BATCH) };
        let split = bytes.len() - 7; // inside the last message
        let (first, second) = bytes.split_at(split);
        let (mut reader, mut writer) = stream.split();
        let write = async {
            writer.write_all(first).await.expect("first write");
            // The rest of the last message goes only once every other answer is back, so the
            // server has most likely read the first part on its own by then.
            writer
        };
        let read = async {
            let mut seen = Vec::new();
            for (id, _, rcode) in &plan[..plan.len() - 1] {
                let answer = read_framed_half(&mut reader).await;
                seen.push((u16::from_be_bytes([answer[0], answer[1]]), answer[3] & 0x0f));
                assert_eq!(
                    seen.last(),
                    Some(&(*id, *rcode)),
                    "answers so far: {seen:?}"
                );
            }
            reader
        };
        let (mut writer, mut reader) =
            tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(write, read) })
                .await
                .expect("answers within 10 s");
        writer.write_all(second).await.expect("second write");
        let last = tokio::time::timeout(Duration::from_secs(10), read_framed_half(&mut reader))
            .await
            .expect("the split message answered within 10 s");
        assert_eq!(u16::from_be_bytes([last[0], last[1]]), 71);
        assert_eq!(last[3] & 0x0f, 0);
        let _ = stop.send(true);
        task.await.expect("server task");
    }

    async fn read_framed_half(stream: &mut tokio::net::tcp::ReadHalf<'_>) -> Vec<u8> {
        let mut length = [0u8; 2];
        stream.read_exact(&mut length).await.expect("length");
        let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut message).await.expect("message");
        message
    }
}
