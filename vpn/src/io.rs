//! The interface: a TUN device and a UDP socket around a [`Device`], driven by three threads —
//! UDP receive (decrypt → TUN), TUN receive (encrypt → UDP) and the timers.
//!
//! Both hot paths move packets in batches, the way wireguard-go reaches 10 Gbit/s: the UDP
//! side reads with `recvmmsg` and UDP GRO (quinn-udp) and writes with UDP GSO (one `sendmsg`
//! for a run of equal-sized datagrams to one endpoint); the TUN side uses `IFF_VNET_HDR`
//! offloads (tun-rs): one read returns a TCP super-packet split into MTU-sized packets, and
//! decrypted TCP segments are coalesced (GRO) before one write. Each thread owns its buffers
//! for its whole life, so the per-packet path allocates nothing.

use crate::device::{Device, Outbox};
use crate::timers::TICK;
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::Duration;
use tun_rs::{
    DeviceBuilder, GROTable, IDEAL_BATCH_SIZE, InterruptEvent, SyncDevice, VIRTIO_NET_HDR_LEN,
};

/// Datagrams per `recvmmsg`.
pub(crate) const RECV_BATCH: usize = 32;
/// Room for one GRO-coalesced receive per batch slot: up to 64 datagrams (the kernel's
/// UDP_GRO_CNT_MAX) of up to 2 KiB, which also covers BIG TCP's larger GRO sizes on the
/// path from a typical 1500-byte link.
pub(crate) const RECV_SLOT: usize = 64 * 2048;
/// Largest decrypted or TUN packet handled, plus the virtio header in front of it.
const PACKET: usize = 65_536 + VIRTIO_NET_HDR_LEN;
/// Scratch space for one encryption or decryption.
const SCRATCH: usize = 65_536 + 64;

/// How an interface is set up.
#[derive(Debug, Clone)]
pub struct InterfaceConfig {
    /// TUN device name (at most 15 bytes).
    pub name: String,
    /// UDP port; 0 picks one.
    pub listen_port: u16,
    /// MTU of the TUN device.
    pub mtu: u16,
    /// The interface's own addresses, each with the prefix of the network behind it
    /// (`10.87.0.1`, 16): the kernel then routes that network into the tunnel.
    pub addresses: Vec<(IpAddr, u8)>,
}

/// I/O counters of the running interface (the device counts protocol drops).
#[derive(Debug, Default)]
pub struct IoCounters {
    /// UDP sends that failed.
    pub udp_send_errors: AtomicU64,
    /// TUN writes that failed.
    pub tun_write_errors: AtomicU64,
    /// TUN reads that failed (bad offload packets included).
    pub tun_read_errors: AtomicU64,
    /// `sendmsg` calls on the UDP socket (each may carry many datagrams with GSO).
    pub udp_sends: AtomicU64,
    /// Datagrams sent.
    pub udp_datagrams_sent: AtomicU64,
}

/// A running interface. Dropping it (or [`Interface::stop`]) stops the threads and removes
/// the TUN device.
pub struct Interface {
    device: Arc<Device>,
    name: String,
    port: u16,
    offload: bool,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    interrupt: Arc<InterruptEvent>,
    threads: Vec<JoinHandle<()>>,
    /// I/O counters.
    pub io_counters: Arc<IoCounters>,
}

/// Marks the interface failed if its thread ends (returns or panics) before it was told to.
struct ThreadWatch {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    name: &'static str,
}

impl Drop for ThreadWatch {
    fn drop(&mut self) {
        if !self.stop.load(Relaxed) {
            self.failed.store(true, Relaxed);
            tracing::error!(
                thread = self.name,
                "WireGuard I/O thread ended unexpectedly"
            );
        }
    }
}

/// IPv4 peers are reached through mapped addresses on the dual-stack socket.
fn on_socket(dst: SocketAddr) -> SocketAddr {
    match dst {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    }
}

/// Datagrams for the network, gathered into GSO runs: consecutive datagrams to the same
/// endpoint of the same size (the last may be shorter) leave in one `sendmsg`.
pub(crate) struct GsoBatch<'a> {
    udp: &'a UdpSocket,
    state: &'a UdpSocketState,
    counters: &'a IoCounters,
    buf: Vec<u8>,
    dst: Option<SocketAddr>,
    segment: usize,
    segments: usize,
}

impl<'a> GsoBatch<'a> {
    pub(crate) fn new(
        udp: &'a UdpSocket,
        state: &'a UdpSocketState,
        counters: &'a IoCounters,
    ) -> Self {
        Self {
            udp,
            state,
            counters,
            buf: Vec::with_capacity(65_536),
            dst: None,
            segment: 0,
            segments: 0,
        }
    }

    pub(crate) fn push(&mut self, dst: SocketAddr, datagram: &[u8]) {
        // Read each time: quinn-udp lowers it when the kernel refuses GSO on this path.
        let max_segments = self.state.max_gso_segments().clamp(1, 64);
        let fits = self.dst == Some(dst)
            && datagram.len() <= self.segment
            && self.segments < max_segments
            && self.buf.len() + datagram.len() <= 65_000;
        if !fits {
            // The protocol paths call this with a peer's lock held: never wait here.
            self.send(false);
            self.dst = Some(dst);
            self.segment = datagram.len();
        }
        self.buf.extend_from_slice(datagram);
        self.segments += 1;
        // A shorter datagram can only end a run.
        if datagram.len() < self.segment {
            self.send(false);
        }
    }

    /// Sends what is gathered, waiting briefly for buffer space; called with no lock held.
    pub(crate) fn flush(&mut self) {
        self.send(true);
    }

    fn send(&mut self, may_wait: bool) {
        let Some(dst) = self.dst.take() else { return };
        let transmit = Transmit {
            destination: on_socket(dst),
            ecn: None,
            contents: &self.buf,
            segment_size: (self.segments > 1).then_some(self.segment),
            src_ip: None,
        };
        // The socket is non-blocking: when its send buffer is full, wait (briefly) for room.
        let mut sent = self.state.try_send(self.udp.into(), &transmit);
        for _ in 0..if may_wait { 10 } else { 0 } {
            match &sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_for(self.udp, PollFlags::OUT, Duration::from_millis(10));
                    sent = self.state.try_send(self.udp.into(), &transmit);
                }
                _ => break,
            }
        }
        // A run the kernel refused as a whole (no GSO on this route): one datagram at a time.
        if self.segments > 1 && matches!(&sent, Err(e) if e.kind() != io::ErrorKind::WouldBlock) {
            let mut all = Ok(());
            for segment in self.buf.chunks(self.segment) {
                let single = Transmit {
                    segment_size: None,
                    contents: segment,
                    ..transmit
                };
                if let Err(e) = self.state.try_send(self.udp.into(), &single) {
                    all = Err(e);
                }
            }
            sent = all;
        }
        match sent {
            Ok(()) => {
                self.counters.udp_sends.fetch_add(1, Relaxed);
                self.counters
                    .udp_datagrams_sent
                    .fetch_add(self.segments as u64, Relaxed);
            }
            Err(e) => {
                self.counters.udp_send_errors.fetch_add(1, Relaxed);
                tracing::trace!(%dst, error = %e, "udp send failed");
            }
        }
        self.buf.clear();
        self.segments = 0;
    }
}

/// Decrypted packets for the TUN device, written in batches (coalesced by GRO when offloads
/// are on). Each slot has room for the virtio header in front of the packet.
struct TunBatch<'a> {
    tun: &'a SyncDevice,
    counters: &'a IoCounters,
    slots: Vec<Vec<u8>>,
    used: usize,
    gro: GROTable,
}

impl<'a> TunBatch<'a> {
    fn new(tun: &'a SyncDevice, counters: &'a IoCounters) -> Self {
        Self {
            tun,
            counters,
            slots: (0..IDEAL_BATCH_SIZE)
                .map(|_| Vec::with_capacity(PACKET))
                .collect(),
            used: 0,
            gro: GROTable::default(),
        }
    }

    fn push(&mut self, packet: &[u8]) {
        if self.used == self.slots.len() {
            self.flush();
        }
        let slot = &mut self.slots[self.used];
        slot.clear();
        slot.resize(VIRTIO_NET_HDR_LEN, 0);
        slot.extend_from_slice(packet);
        self.used += 1;
    }

    fn flush(&mut self) {
        if self.used == 0 {
            return;
        }
        if let Err(e) = self.tun.send_multiple(
            &mut self.gro,
            &mut self.slots[..self.used],
            VIRTIO_NET_HDR_LEN,
        ) {
            self.counters.tun_write_errors.fetch_add(1, Relaxed);
            tracing::trace!(error = %e, "tun write failed");
        }
        self.used = 0;
    }
}

/// The UDP thread's outbox: decrypted packets batch up for the TUN device; replies
/// (handshake responses, cookies, queued packets) go out in GSO runs.
struct ReceiveSide<'a> {
    tun: TunBatch<'a>,
    udp: GsoBatch<'a>,
}

impl Outbox for ReceiveSide<'_> {
    fn to_network(&mut self, dst: SocketAddr, datagram: &[u8]) {
        self.udp.push(dst, datagram);
    }
    fn to_tunnel(&mut self, packet: &[u8]) {
        self.tun.push(packet);
    }
}

/// The TUN and timer threads' outbox: encrypted datagrams in GSO runs. Nothing they do
/// writes to the TUN device.
struct SendSide<'a> {
    udp: GsoBatch<'a>,
}

impl Outbox for SendSide<'_> {
    fn to_network(&mut self, dst: SocketAddr, datagram: &[u8]) {
        self.udp.push(dst, datagram);
    }
    fn to_tunnel(&mut self, _packet: &[u8]) {}
}

/// quinn-udp sets "don't fragment" for QUIC's path MTU discovery. WireGuard, like the kernel's
/// implementation, lets the kernel fragment a datagram larger than the path MTU instead of
/// losing it.
pub(crate) fn allow_fragmentation(udp: &UdpSocket) {
    use rustix::net::sockopt::{
        Ipv4PathMtuDiscovery, Ipv6PathMtuDiscovery, set_ip_mtu_discover, set_ipv6_mtu_discover,
    };
    let v4 = set_ip_mtu_discover(udp, Ipv4PathMtuDiscovery::DONT);
    let v6 = set_ipv6_mtu_discover(udp, Ipv6PathMtuDiscovery::DONT);
    let frag = nix::sys::socket::setsockopt(udp, nix::sys::socket::sockopt::Ipv6DontFrag, &false);
    if v4.is_err() || v6.is_err() || frag.is_err() {
        tracing::warn!(
            "could not allow fragmentation on the UDP socket; datagrams above the path MTU will be lost"
        );
    }
}

/// Waits until the socket is ready for `flags` or `timeout` passes.
pub(crate) fn wait_for(udp: &UdpSocket, flags: PollFlags, timeout: Duration) {
    let mut fds = [PollFd::new(udp, flags)];
    let timeout = Timespec {
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    let _ = poll(&mut fds, Some(&timeout));
}

/// One UDP socket for IPv4 and IPv6. It is non-blocking, so `recvmmsg` returns whatever has
/// arrived instead of waiting for a full batch; the threads wait in `poll`.
pub(crate) fn bind_udp(port: u16) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_only_v6(false)?;
    // Large buffers absorb bursts. The kernel caps them at net.core.[rw]mem_max unless the
    // process has CAP_NET_ADMIN, which the node has for its TUN device anyway.
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(8 << 20);
    let _ =
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBufForce, &(8 << 20));
    let _ =
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::SndBufForce, &(8 << 20));
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn open_tun(config: &InterfaceConfig, offload: bool) -> io::Result<SyncDevice> {
    let mut builder = DeviceBuilder::new()
        .name(&config.name)
        .mtu(config.mtu)
        .offload(offload);
    for &(addr, prefix) in &config.addresses {
        builder = match addr {
            IpAddr::V4(a) => builder.ipv4(a, prefix, None),
            IpAddr::V6(a) => builder.ipv6(a, prefix),
        };
    }
    builder.build_sync()
}

fn udp_loop(
    device: &Device,
    udp: &UdpSocket,
    state: &UdpSocketState,
    tun: &SyncDevice,
    counters: &IoCounters,
    stop: &AtomicBool,
) {
    let mut batch = RecvBatch::new();
    let mut scratch = vec![0u8; SCRATCH];
    let mut out = ReceiveSide {
        tun: TunBatch::new(tun, counters),
        udp: GsoBatch::new(udp, state, counters),
    };
    while !stop.load(Relaxed) {
        if batch.read(udp, state, TICK, |from, datagram| {
            device.receive_datagram(from, datagram, &mut scratch, &mut out)
        }) {
            out.tun.flush();
            out.udp.flush();
        }
    }
}

/// The receive side of a UDP socket: one `recvmmsg` into up to [`RECV_BATCH`] slots, each of
/// which may hold a GRO run of datagrams. It owns its buffers for its whole life.
pub(crate) struct RecvBatch {
    slab: Vec<u8>,
    metas: [RecvMeta; RECV_BATCH],
    drained: bool,
}

impl RecvBatch {
    pub(crate) fn new() -> Self {
        Self {
            slab: vec![0u8; RECV_BATCH * RECV_SLOT],
            metas: [RecvMeta::default(); RECV_BATCH],
            drained: false,
        }
    }

    /// Reads what has arrived and hands each datagram to `each` (a zero-length one as an
    /// empty slice); returns whether anything was read. After a short batch the queue is most
    /// likely empty, so it first waits in poll for up to `idle` (poll returns at once if
    /// something is there) instead of paying for a `recvmmsg` that would only say
    /// WouldBlock.
    pub(crate) fn read(
        &mut self,
        udp: &UdpSocket,
        state: &UdpSocketState,
        idle: Duration,
        mut each: impl FnMut(SocketAddr, &[u8]),
    ) -> bool {
        if self.drained {
            wait_for(udp, PollFlags::IN, idle);
        }
        let received = {
            let mut chunks = self.slab.chunks_mut(RECV_SLOT);
            let mut iovs: [IoSliceMut<'_>; RECV_BATCH] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().expect("RECV_BATCH slots")));
            state.recv(udp.into(), &mut iovs, &mut self.metas)
        };
        match received {
            Ok(n) => {
                self.drained = n < RECV_BATCH;
                for (meta, slot) in self.metas[..n].iter().zip(self.slab.chunks(RECV_SLOT)) {
                    if meta.len == 0 {
                        each(meta.addr, &[]);
                        continue;
                    }
                    // With GRO one slot holds several datagrams of `stride` bytes each.
                    for datagram in slot[..meta.len].chunks(meta.stride.max(1)) {
                        each(meta.addr, datagram);
                    }
                }
                n > 0
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                self.drained = true;
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "udp receive failed");
                std::thread::sleep(Duration::from_millis(10));
                false
            }
        }
    }
}

fn tun_loop(
    device: &Device,
    udp: &UdpSocket,
    state: &UdpSocketState,
    tun: &SyncDevice,
    counters: &IoCounters,
    stop: &AtomicBool,
    interrupt: &InterruptEvent,
) {
    let mut original = vec![0u8; PACKET];
    let mut packets: Vec<Vec<u8>> = (0..IDEAL_BATCH_SIZE).map(|_| vec![0u8; PACKET]).collect();
    let mut sizes = [0usize; IDEAL_BATCH_SIZE];
    let mut scratch = vec![0u8; SCRATCH];
    let mut out = SendSide {
        udp: GsoBatch::new(udp, state, counters),
    };
    let mut last_warning = std::time::Instant::now() - Duration::from_secs(2);
    while !stop.load(Relaxed) {
        match tun.recv_multiple_intr(&mut original, &mut packets, &mut sizes, 0, interrupt) {
            Ok(n) => {
                for (packet, &size) in packets[..n].iter().zip(&sizes[..n]) {
                    device.send_packet(&packet[..size], &mut scratch, &mut out);
                }
                out.udp.flush();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if stop.load(Relaxed) {
                    break;
                }
                counters.tun_read_errors.fetch_add(1, Relaxed);
                if last_warning.elapsed() >= Duration::from_secs(1) {
                    tracing::warn!(error = %e, "tun receive failed");
                    last_warning = std::time::Instant::now();
                }
                // A bad packet (an error tun-rs made, no errno) costs nothing more; a failing
                // device is not polled in a tight loop.
                if e.raw_os_error().is_some() {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

impl Interface {
    /// Opens the TUN device (with offloads where the kernel has them) and the UDP socket, and
    /// starts the threads.
    pub fn start(device: Arc<Device>, config: &InterfaceConfig) -> io::Result<Self> {
        let udp = Arc::new(bind_udp(config.listen_port)?);
        let state = Arc::new(UdpSocketState::new((&*udp).into())?);
        allow_fragmentation(&udp);
        let port = udp.local_addr()?.port();
        let (tun, offload) = match open_tun(config, true) {
            Ok(tun) => (tun, true),
            Err(e) => {
                tracing::info!(error = %e, "TUN offloads unavailable; using plain reads and writes");
                (open_tun(config, false)?, false)
            }
        };
        let tun = Arc::new(tun);
        let stop = Arc::new(AtomicBool::new(false));
        let interrupt = Arc::new(InterruptEvent::new()?);
        let io_counters = Arc::new(IoCounters::default());
        let failed = Arc::new(AtomicBool::new(false));
        // Built before the threads: if one cannot be spawned, dropping it stops the others.
        let mut iface = Self {
            device: device.clone(),
            name: config.name.clone(),
            port,
            offload,
            stop: stop.clone(),
            failed: failed.clone(),
            interrupt: interrupt.clone(),
            threads: Vec::new(),
            io_counters: io_counters.clone(),
        };
        let spawn = |name: &'static str, f: Box<dyn FnOnce() + Send>| {
            let watch = ThreadWatch {
                stop: stop.clone(),
                failed: failed.clone(),
                name,
            };
            std::thread::Builder::new()
                .name(format!("{}-{name}", config.name))
                .spawn(move || {
                    let _watch = watch;
                    f()
                })
        };
        {
            let (device, udp, state, tun, stop, counters) = (
                device.clone(),
                udp.clone(),
                state.clone(),
                tun.clone(),
                stop.clone(),
                io_counters.clone(),
            );
            iface.threads.push(spawn(
                "udp",
                Box::new(move || udp_loop(&device, &udp, &state, &tun, &counters, &stop)),
            )?);
        }
        {
            let (device, udp, state, tun, stop, interrupt, counters) = (
                device.clone(),
                udp.clone(),
                state.clone(),
                tun.clone(),
                stop.clone(),
                interrupt.clone(),
                io_counters.clone(),
            );
            iface.threads.push(spawn(
                "tun",
                Box::new(move || {
                    tun_loop(&device, &udp, &state, &tun, &counters, &stop, &interrupt)
                }),
            )?);
        }
        {
            let (device, udp, state, stop, counters) = (
                device.clone(),
                udp.clone(),
                state.clone(),
                stop.clone(),
                io_counters.clone(),
            );
            iface.threads.push(spawn(
                "timers",
                Box::new(move || {
                    let mut scratch = vec![0u8; SCRATCH];
                    let mut out = SendSide {
                        udp: GsoBatch::new(&udp, &state, &counters),
                    };
                    while !stop.load(Relaxed) {
                        std::thread::sleep(TICK);
                        device.tick(&mut scratch, &mut out);
                        out.udp.flush();
                    }
                }),
            )?);
        }
        Ok(iface)
    }

    /// The device behind the interface.
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// The TUN device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The UDP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// False once an I/O thread has ended without being told to (it panicked or failed).
    pub fn healthy(&self) -> bool {
        !self.failed.load(Relaxed)
    }

    /// Whether TUN offloads (virtio header, TSO/GRO) are in use.
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Stops the threads and closes the TUN device (which removes it).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Relaxed);
        let _ = self.interrupt.trigger();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Interface {
    fn drop(&mut self) {
        self.shutdown();
    }
}
