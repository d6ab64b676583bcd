//! The node's WireGuard service: builds the `vpn` device from the config and the stored
//! peers, starts the interface, installs the exit, and carries out peer changes live.

use crate::config::Vpn;
use crate::peers::{self, PeerRecord};
use crate::store::Store;
use anyhow::Context as _;
use nx1_vpn::IpNetwork;
use nx1_vpn::device::Device;
use nx1_vpn::exit::ExitNat;
use nx1_vpn::io::{Interface, InterfaceConfig};
use nx1_vpn::keys::{PrivateKey, PublicKey};
use nx1_vpn::peer::PeerConfig;
use parking_lot::Mutex;
use std::sync::Arc;

/// The running WireGuard service.
pub struct VpnService {
    /// Validated `[vpn]` settings.
    pub config: Vpn,
    /// The protocol state.
    pub device: Arc<Device>,
    running: Mutex<Option<(Interface, Option<ExitNat>)>>,
    /// UDP port actually bound.
    pub port: u16,
    /// nftables table, when this node is an exit.
    pub exit_table: Option<String>,
    /// Data directory, where the original sysctl values are kept while the exit runs.
    originals: std::path::PathBuf,
}

/// Where a running exit keeps the sysctl values it will restore.
fn originals_file(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("exit-originals")
}

/// `path=value` lines; anything else is ignored.
fn parse_originals(text: &str) -> Vec<(std::path::PathBuf, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(p, _)| p.starts_with("/proc/sys/net/"))
        .map(|(p, v)| (std::path::PathBuf::from(p), format!("{v}\n")))
        .collect()
}

fn peer_config(record: &PeerRecord) -> anyhow::Result<PeerConfig> {
    Ok(PeerConfig {
        public_key: PublicKey::from_base64(&record.public_key)
            .with_context(|| format!("stored key of peer {:?}", record.name))?,
        allowed_ips: vec![
            IpNetwork::new(record.ipv4, 32).expect("a /32"),
            IpNetwork::new(record.ipv6, 128).expect("a /128"),
        ],
        endpoint: None,
        persistent_keepalive: None,
        preshared_key: None,
    })
}

/// The pools as networks (host bits cleared).
pub fn pools(config: &Vpn) -> Vec<IpNetwork> {
    let (a4, p4) = config.v4;
    let (a6, p6) = config.v6;
    vec![
        IpNetwork::new_truncate(a4, p4).expect("prefix checked at load"),
        IpNetwork::new_truncate(a6, p6).expect("prefix checked at load"),
    ]
}

impl VpnService {
    /// Starts the interface with every stored peer, then the exit if configured.
    pub async fn start(
        config: Vpn,
        key: &PrivateKey,
        store: &Store,
        data_dir: &std::path::Path,
        masquerade_also: &[IpNetwork],
    ) -> anyhow::Result<Self> {
        let device = Arc::new(Device::new(key));
        for record in peers::list(store).await? {
            device.upsert_peer(peer_config(&record)?)?;
        }
        let (a4, p4) = config.v4;
        let (a6, p6) = config.v6;
        let interface = Interface::start(
            device.clone(),
            &InterfaceConfig {
                name: config.interface.clone(),
                listen_port: config.listen_port,
                mtu: config.mtu,
                addresses: vec![(a4.into(), p4), (a6.into(), p6)],
            },
        )
        .with_context(|| {
            format!(
                "starting WireGuard interface {} on UDP port {}",
                config.interface, config.listen_port
            )
        })?;
        let port = interface.port();
        let exit = if config.exit {
            let mut masquerade = pools(&config);
            masquerade.extend_from_slice(masquerade_also);
            let mut nat = ExitNat::install(&config.interface, &masquerade)?;
            if nat.replaced_stale {
                tracing::warn!(
                    table = nat.table(),
                    "replaced an exit table left by an earlier run"
                );
            }
            // Originals saved by a run that crashed are the ones to restore, not the values
            // that run left behind.
            let saved = originals_file(data_dir);
            if let Ok(text) = std::fs::read_to_string(&saved) {
                nat.adopt_originals(parse_originals(&text));
            }
            let text: String = nat
                .originals()
                .iter()
                .map(|(path, value)| format!("{}={}\n", path.display(), value.trim()))
                .collect();
            if let Err(e) = std::fs::write(&saved, text) {
                tracing::warn!(error = %e, file = %saved.display(), "cannot save the original forwarding settings");
            }
            Some(nat)
        } else {
            None
        };
        let exit_table = exit.as_ref().map(|e| e.table().to_owned());
        Ok(Self {
            originals: data_dir.to_owned(),
            config,
            device,
            running: Mutex::new(Some((interface, exit))),
            port,
            exit_table,
        })
    }

    /// Makes a stored peer live.
    pub fn add_live(&self, record: &PeerRecord) -> anyhow::Result<()> {
        self.device.upsert_peer(peer_config(record)?)?;
        Ok(())
    }

    /// Drops a peer's sessions and routes at once.
    pub fn remove_live(&self, public_key: &str) {
        if let Ok(key) = PublicKey::from_base64(public_key) {
            self.device.remove_peer(&key);
        }
    }

    /// False once the interface's I/O has failed (or it was stopped).
    pub fn healthy(&self) -> bool {
        self.running
            .lock()
            .as_ref()
            .is_some_and(|(interface, _)| interface.healthy())
    }

    /// Removes the exit table and the interface.
    pub fn stop(&self) {
        if let Some((interface, exit)) = self.running.lock().take() {
            // The interface first, so no packet leaves unmasqueraded while the table goes.
            interface.stop();
            if let Some(exit) = exit {
                exit.remove();
                let _ = std::fs::remove_file(originals_file(&self.originals));
            }
        }
    }
}
