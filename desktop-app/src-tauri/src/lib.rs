//! The NX1 desktop app's native side: Tauri commands over the local daemon's control socket
//! (see [`daemon`]), the vault session (see [`vault`]) and the tray icon with the connection
//! state.
//!
//! The app runs as the user; the daemon (`nx1 up`) holds the privileges. Every command is a
//! request to the daemon, so what the app shows is what the node does. The vault is the
//! user's own: a `nx1 vault serve` process of the user's holds it unlocked.

pub mod daemon;
pub mod vault;

use daemon::Daemon;
use serde_json::Value;
use std::path::PathBuf;
use tauri::menu::{Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::TrayIconBuilder;
use tauri::{AppHandle, Emitter as _, Manager, State, Wry};
use tauri_plugin_clipboard_manager::ClipboardExt as _;
use tauri_plugin_notification::NotificationExt as _;

/// A copied secret is cleared from the clipboard after this long (if it is still there).
const CLIPBOARD_CLEAR: std::time::Duration = std::time::Duration::from_secs(30);

/// The tray's menu entries that show the state and the latest Guard finding.
struct Tray {
    state: MenuItem<Wry>,
    guard: MenuItem<Wry>,
}

/// Everything `nx1 status` shows.
#[tauri::command]
async fn status(daemon: State<'_, Daemon>) -> Result<Value, String> {
    daemon.status().await
}

/// What the node contributes; turns relay duty on or off and sets the cap when given.
#[tauri::command]
async fn contribute(
    daemon: State<'_, Daemon>,
    relay: Option<bool>,
    bandwidth_mbit: Option<u32>,
) -> Result<Value, String> {
    daemon.contribute(relay, bandwidth_mbit).await
}

/// Round-trip time to each live node of the mesh.
#[tauri::command]
async fn latency(daemon: State<'_, Daemon>) -> Result<Value, String> {
    daemon.latency().await
}

/// The owner's ledger entries, for the chart of what contributing earned.
#[tauri::command]
async fn credits_history(daemon: State<'_, Daemon>) -> Result<Value, String> {
    daemon.credits_history().await
}

/// The owner's balance, rates and what the node carried.
#[tauri::command]
async fn credits(daemon: State<'_, Daemon>) -> Result<Value, String> {
    daemon.credits().await
}

/// Brings the client tunnel up from a wg-quick file, with DNS-leak protection and the kill
/// switch (both nftables in the daemon) as asked, and through a relay (private two-hop).
#[tauri::command]
async fn connect(
    daemon: State<'_, Daemon>,
    config: String,
    interface: String,
    dns_protection: bool,
    kill_switch: bool,
    two_hop: Option<String>,
) -> Result<Value, String> {
    daemon
        .connect(
            &PathBuf::from(config),
            &interface,
            dns_protection,
            kill_switch,
            two_hop.as_deref(),
        )
        .await
}

/// Takes the client tunnel down.
#[tauri::command]
async fn disconnect(daemon: State<'_, Daemon>) -> Result<Value, String> {
    daemon.disconnect().await
}

/// What Guard blocked lately.
#[tauri::command]
async fn guard_findings(daemon: State<'_, Daemon>) -> Result<Value, String> {
    daemon.guard_findings(None).await
}

/// Guard's verdict for a domain.
#[tauri::command]
async fn guard_check(daemon: State<'_, Daemon>, domain: String) -> Result<Value, String> {
    daemon.guard_check(&domain).await
}

/// Asks the exit this device's tunnel goes to that it allow a domain for this device.
#[tauri::command]
async fn guard_allow_at_node(daemon: State<'_, Daemon>, domain: String) -> Result<Value, String> {
    daemon.guard_allow_at_node(&domain).await
}

/// Allows or blocks a domain on this node, or clears its rule.
#[tauri::command]
async fn guard_rule(
    daemon: State<'_, Daemon>,
    domain: String,
    action: String,
) -> Result<Value, String> {
    daemon.guard_rule(&domain, &action).await
}

/// One vault request (`{"op": …}`, see `nx1 vault serve`); progress events of a long one
/// (import, sync) go to the window as `vault-progress`.
#[tauri::command]
async fn vault(
    app: AppHandle,
    session: State<'_, vault::Session>,
    request: Value,
) -> Result<Value, String> {
    session
        .call(request, |event| {
            let _ = app.emit("vault-progress", event);
        })
        .await
}

/// Copies a field of an item (`username`, `password`, `url`, `notes`, or `totp` for the
/// current code) to the clipboard without sending it to the window, and clears it after
/// [`CLIPBOARD_CLEAR`] unless something else was copied meanwhile. Returns the seconds.
#[tauri::command]
async fn vault_copy(
    app: AppHandle,
    session: State<'_, vault::Session>,
    id: String,
    field: String,
) -> Result<u64, String> {
    let value = if field == "totp" {
        let a = session
            .call(serde_json::json!({ "op": "totp", "id": id }), |_| {})
            .await?;
        a["code"].as_str().map(str::to_owned)
    } else {
        let a = session.call(vault::get_request(&id), |_| {}).await?;
        vault::field_value(&a, &field)
    }
    .ok_or_else(|| format!("the item has no {field}"))?;
    app.clipboard()
        .write_text(value.clone())
        .map_err(|e| format!("cannot use the clipboard: {e}"))?;
    tauri::async_runtime::spawn(async move {
        tokio::time::sleep(CLIPBOARD_CLEAR).await;
        if app.clipboard().read_text().ok().as_deref() == Some(value.as_str()) {
            let _ = app.clipboard().clear();
        }
    });
    Ok(CLIPBOARD_CLEAR.as_secs())
}

/// What the tray shows now (the tray itself is outside the window): the state, and the
/// latest Guard finding for this device when there was one.
#[tauri::command]
async fn tray_text(tray: State<'_, Tray>) -> Result<String, String> {
    let state = tray.state.text().map_err(|e| e.to_string())?;
    let guard = tray.guard.text().map_err(|e| e.to_string())?;
    Ok(if guard.is_empty() {
        state
    } else {
        format!("{state}\n{guard}")
    })
}

/// The daemon's control socket, for the window to show.
#[tauri::command]
fn socket_path(daemon: State<'_, Daemon>) -> String {
    daemon.socket().display().to_string()
}

/// Runs the app until its window is closed or Quit is chosen.
pub fn run() {
    tauri::Builder::default()
        .plugin(tauri_plugin_clipboard_manager::init())
        .plugin(tauri_plugin_notification::init())
        .manage(Daemon::from_env())
        .manage(vault::Session::from_env())
        .setup(|app| {
            let state = MenuItem::with_id(app, "state", "NX1: …", false, None::<&str>)?;
            let guard = MenuItem::with_id(app, "guard", "", false, None::<&str>)?;
            let quit = MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?;
            let menu = Menu::with_items(
                app,
                &[&state, &guard, &PredefinedMenuItem::separator(app)?, &quit],
            )?;
            let mut tray =
                TrayIconBuilder::with_id("nx1")
                    .menu(&menu)
                    .on_menu_event(|app, event| {
                        if event.id.as_ref() == "quit" {
                            app.exit(0);
                        }
                    });
            if let Some(icon) = app.default_window_icon() {
                tray = tray.icon(icon.clone());
            }
            tray.build(app)?;
            app.manage(Tray {
                state: state.clone(),
                guard: guard.clone(),
            });
            // The tray follows the daemon: every two seconds, its tunnel's state; what the
            // exit's Guard newly blocked for this device is announced.
            let daemon = app.state::<Daemon>().inner().clone();
            let handle = app.handle().clone();
            tauri::async_runtime::spawn(async move {
                let mut seen = daemon::FindingsSeen::default();
                loop {
                    let status = daemon.status().await;
                    let _ = state.set_text(daemon::tray_state(&status));
                    for f in seen.new_ones(&status) {
                        let text = daemon::finding_text(&f);
                        let _ = guard.set_text(&text);
                        // No notification service (a bare session) is not an error.
                        let _ = handle
                            .notification()
                            .builder()
                            .title("NX1 Guard")
                            .body(&text)
                            .show();
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
            });
            Ok(())
        })
        .invoke_handler(tauri::generate_handler![
            status,
            contribute,
            credits,
            credits_history,
            latency,
            connect,
            disconnect,
            guard_findings,
            guard_check,
            guard_rule,
            guard_allow_at_node,
            tray_text,
            socket_path,
            vault,
            vault_copy
        ])
        .run(tauri::generate_context!())
        .expect("the NX1 app could not start");
}
