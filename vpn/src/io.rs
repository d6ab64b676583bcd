//! The interface: a TUN device and a UDP socket around a [`Device`], driven by three threads —
//! UDP receive (decrypt → TUN), TUN receive (encrypt → UDP) and the timers. Each hot thread
//! owns its buffers for its whole life, so the per-packet path allocates nothing.

use crate::device::{Device, Outbox};
use crate::timers::TICK;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::Duration;
use tun_rs::{DeviceBuilder, InterruptEvent, SyncDevice};

/// Largest datagram or packet handled (64 KiB plus WireGuard's overhead).
const BUF: usize = 65_536 + 64;

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

/// I/O errors of the running interface (the device counts protocol drops).
#[derive(Debug, Default)]
pub struct IoCounters {
    /// UDP sends that failed.
    pub udp_send_errors: AtomicU64,
    /// TUN writes that failed.
    pub tun_write_errors: AtomicU64,
}

/// A running interface. Dropping it (or [`Interface::stop`]) stops the threads and removes
/// the TUN device.
pub struct Interface {
    device: Arc<Device>,
    name: String,
    port: u16,
    stop: Arc<AtomicBool>,
    interrupt: Arc<InterruptEvent>,
    threads: Vec<JoinHandle<()>>,
    /// I/O error counters.
    pub io_counters: Arc<IoCounters>,
}

struct Wire<'a> {
    udp: &'a UdpSocket,
    tun: &'a SyncDevice,
    counters: &'a IoCounters,
}

impl Outbox for Wire<'_> {
    fn to_network(&mut self, dst: SocketAddr, datagram: &[u8]) {
        // The socket is dual-stack: IPv4 peers are reached through mapped addresses.
        let dst = match dst {
            SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
            v6 => v6,
        };
        if let Err(e) = self.udp.send_to(datagram, dst) {
            self.counters.udp_send_errors.fetch_add(1, Relaxed);
            tracing::trace!(%dst, error = %e, "udp send failed");
        }
    }

    fn to_tunnel(&mut self, packet: &[u8]) {
        if let Err(e) = self.tun.send(packet) {
            self.counters.tun_write_errors.fetch_add(1, Relaxed);
            tracing::trace!(error = %e, "tun write failed");
        }
    }
}

/// One UDP socket for IPv4 and IPv6.
fn bind_udp(port: u16) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_only_v6(false)?;
    // Large buffers absorb bursts (the kernel caps them at net.core.[rw]mem_max).
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(8 << 20);
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    socket.set_read_timeout(Some(TICK))?;
    Ok(socket.into())
}

fn open_tun(config: &InterfaceConfig) -> io::Result<SyncDevice> {
    let mut builder = DeviceBuilder::new().name(&config.name).mtu(config.mtu);
    for &(addr, prefix) in &config.addresses {
        builder = match addr {
            IpAddr::V4(a) => builder.ipv4(a, prefix, None),
            IpAddr::V6(a) => builder.ipv6(a, prefix),
        };
    }
    builder.build_sync()
}

impl Interface {
    /// Opens the TUN device and the UDP socket and starts the threads.
    pub fn start(device: Arc<Device>, config: &InterfaceConfig) -> io::Result<Self> {
        let udp = Arc::new(bind_udp(config.listen_port)?);
        let port = udp.local_addr()?.port();
        let tun = Arc::new(open_tun(config)?);
        let stop = Arc::new(AtomicBool::new(false));
        let interrupt = Arc::new(InterruptEvent::new()?);
        let io_counters = Arc::new(IoCounters::default());
        let mut threads = Vec::new();

        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(format!("{}-{name}", config.name))
                .spawn(f)
        };

        {
            let (device, udp, tun, stop, counters) = (
                device.clone(),
                udp.clone(),
                tun.clone(),
                stop.clone(),
                io_counters.clone(),
            );
            threads.push(spawn(
                "udp",
                Box::new(move || {
                    let mut datagram = vec![0u8; BUF];
                    let mut scratch = vec![0u8; BUF];
                    let mut wire = Wire {
                        udp: &udp,
                        tun: &tun,
                        counters: &counters,
                    };
                    while !stop.load(Relaxed) {
                        match udp.recv_from(&mut datagram) {
                            Ok((n, src)) => device.receive_datagram(
                                src,
                                &datagram[..n],
                                &mut scratch,
                                &mut wire,
                            ),
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    io::ErrorKind::WouldBlock
                                        | io::ErrorKind::TimedOut
                                        | io::ErrorKind::Interrupted
                                ) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "udp receive failed");
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                    }
                }),
            )?);
        }
        {
            let (device, udp, tun, stop, interrupt, counters) = (
                device.clone(),
                udp.clone(),
                tun.clone(),
                stop.clone(),
                interrupt.clone(),
                io_counters.clone(),
            );
            threads.push(spawn(
                "tun",
                Box::new(move || {
                    let mut packet = vec![0u8; BUF];
                    let mut scratch = vec![0u8; BUF];
                    let mut wire = Wire {
                        udp: &udp,
                        tun: &tun,
                        counters: &counters,
                    };
                    while !stop.load(Relaxed) {
                        match tun.recv_intr(&mut packet, &interrupt) {
                            Ok(n) => device.send_packet(&packet[..n], &mut scratch, &mut wire),
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                if stop.load(Relaxed) {
                                    break;
                                }
                                tracing::warn!(error = %e, "tun receive failed");
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                    }
                }),
            )?);
        }
        {
            let (device, udp, tun, stop, counters) = (
                device.clone(),
                udp.clone(),
                tun.clone(),
                stop.clone(),
                io_counters.clone(),
            );
            threads.push(spawn(
                "timers",
                Box::new(move || {
                    let mut scratch = vec![0u8; BUF];
                    let mut wire = Wire {
                        udp: &udp,
                        tun: &tun,
                        counters: &counters,
                    };
                    while !stop.load(Relaxed) {
                        std::thread::sleep(TICK);
                        device.tick(&mut scratch, &mut wire);
                    }
                }),
            )?);
        }
        Ok(Self {
            device,
            name: config.name.clone(),
            port,
            stop,
            interrupt,
            threads,
            io_counters,
        })
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
