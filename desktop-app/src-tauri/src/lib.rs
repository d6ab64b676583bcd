//! The NX1 desktop app's native side: Tauri commands over the local daemon's control socket
//! (see [`daemon`]) and the tray icon with the connection state.
//!
//! The app runs as the user; the daemon (`nx1 up`) holds the privileges. Every command is a
//! request to the daemon, so what the app shows is what the node does.

pub mod daemon;

use daemon::Daemon;
use serde_json::Value;
use std::path::PathBuf;
use tauri::menu::{Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::TrayIconBuilder;
use tauri::{Manager, State, Wry};

/// The tray's menu entry that shows the state.
struct Tray {
    state: MenuItem<Wry>,
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

/// The owner's balance, rates and what the node carried.
#[tauri::command]
async fn credits(daemon: State<'_, Daemon>) -> Result<Value, String> {
    daemon.credits().await
}

/// Brings the client tunnel up from a wg-quick file.
#[tauri::command]
async fn connect(
    daemon: State<'_, Daemon>,
    config: String,
    interface: String,
) -> Result<Value, String> {
    daemon.connect(&PathBuf::from(config), &interface).await
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

/// Allows or blocks a domain on this node, or clears its rule.
#[tauri::command]
async fn guard_rule(
    daemon: State<'_, Daemon>,
    domain: String,
    action: String,
) -> Result<Value, String> {
    daemon.guard_rule(&domain, &action).await
}

/// What the tray shows now (the tray itself is outside the window).
#[tauri::command]
async fn tray_text(tray: State<'_, Tray>) -> Result<String, String> {
    tray.state.text().map_err(|e| e.to_string())
}

/// The daemon's control socket, for the window to show.
#[tauri::command]
fn socket_path(daemon: State<'_, Daemon>) -> String {
    daemon.socket().display().to_string()
}

/// Runs the app until its window is closed or Quit is chosen.
pub fn run() {
    tauri::Builder::default()
        .manage(Daemon::from_env())
        .setup(|app| {
            let state = MenuItem::with_id(app, "state", "NX1: …", false, None::<&str>)?;
            let quit = MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?;
            let menu =
                Menu::with_items(app, &[&state, &PredefinedMenuItem::separator(app)?, &quit])?;
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
            });
            // The tray follows the daemon: every two seconds, its tunnel's state.
            let daemon = app.state::<Daemon>().inner().clone();
            tauri::async_runtime::spawn(async move {
                loop {
                    let text = daemon::tray_state(&daemon.status().await);
                    let _ = state.set_text(&text);
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
            });
            Ok(())
        })
        .invoke_handler(tauri::generate_handler![
            status,
            contribute,
            credits,
            connect,
            disconnect,
            guard_findings,
            guard_check,
            guard_rule,
            tray_text,
            socket_path
        ])
        .run(tauri::generate_context!())
        .expect("the NX1 app could not start");
}
