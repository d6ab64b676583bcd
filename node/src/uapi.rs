//! Serves the WireGuard UAPI on `/var/run/wireguard/IFNAME.sock` so `wg show` works on the
//! node. `get` reports the live device; `set` may remove peers (from the store too, so they
//! stay removed) and refuses every other change: peers are managed with `nx1 peer`.

use crate::daemon::Node;
use crate::peers;
use nx1_vpn::uapi::{self, Request};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// Where wireguard-tools looks for an interface's socket.
pub fn socket_path(interface: &str) -> PathBuf {
    PathBuf::from("/var/run/wireguard").join(format!("{interface}.sock"))
}

/// Binds the UAPI socket (creating /var/run/wireguard 0755 if missing, as wireguard-go does;
/// an existing directory keeps its mode).
pub async fn bind(interface: &str) -> anyhow::Result<(UnixListener, PathBuf)> {
    use anyhow::Context as _;
    use std::os::unix::fs::PermissionsExt as _;
    let path = socket_path(interface);
    let dir = path.parent().expect("has a parent");
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    }
    let listener = crate::control::bind(&path, None).await?;
    Ok((listener, path))
}

/// Accepts UAPI connections until told to stop.
pub async fn serve(listener: UnixListener, node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = crate::daemon::stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => { tokio::spawn(connection(stream, node.clone())); }
                Err(e) => {
                    tracing::warn!(error = %e, "UAPI accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Reads requests up to their empty line and answers each; bounded in size and time.
async fn connection(mut stream: UnixStream, node: Arc<Node>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await;
        let n = match read {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > uapi::MAX_REQUEST {
            let _ = stream.write_all(uapi::render_errno(22).as_bytes()).await;
            return;
        }
        // Only the new bytes (and the one before them) can complete a terminator.
        let mut from = buf.len().saturating_sub(n + 1);
        while let Some(end) = buf[from..].windows(2).position(|w| w == b"\n\n") {
            let request: Vec<u8> = buf.drain(..from + end + 2).collect();
            from = 0;
            let answer = answer(&node, &request).await;
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

async fn answer(node: &Node, request: &[u8]) -> zeroize::Zeroizing<String> {
    let Some(vpn) = node.vpn.as_ref() else {
        return uapi::render_errno(19).into();
    };
    let parsed = std::str::from_utf8(request)
        .map_err(|_| uapi::UapiError::NotKeyValue(0))
        .and_then(uapi::parse_request);
    match parsed {
        Ok(Request::Get) => uapi::render_get(&vpn.device, vpn.port),
        Ok(Request::Set(set)) => match uapi::only_removals(&set) {
            Some(keys) => {
                let _changing = node.peer_changes.lock().await;
                for key in keys {
                    let b64 = key.to_base64();
                    match peers::list(&node.store).await {
                        Ok(list) => {
                            if let Some(p) = list.iter().find(|p| p.public_key == b64) {
                                if let Err(e) = peers::remove(&node.store, &p.name).await {
                                    tracing::warn!(error = %e, "UAPI peer removal failed");
                                    return uapi::render_errno(5).into();
                                }
                                if let Some(mesh) = &node.mesh {
                                    mesh.withdraw_client(&p.public_key).await;
                                }
                                tracing::info!(peer = %p.name, "peer removed over UAPI");
                            }
                        }
                        Err(_) => return uapi::render_errno(5).into(),
                    }
                    vpn.device.remove_peer(&key);
                }
                uapi::render_errno(0).into()
            }
            None => {
                tracing::warn!(
                    "refused a UAPI set: peers are managed with `nx1 peer add|remove`; over UAPI only `wg set IF peer KEY remove` is supported"
                );
                uapi::render_errno(1).into()
            }
        },
        Err(e) => {
            node.metrics.control_bad_requests.inc();
            tracing::debug!(error = %e, "bad UAPI request");
            uapi::render_errno(e.errno()).into()
        }
    }
}
