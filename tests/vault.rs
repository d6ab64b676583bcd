//! The password vault end to end: real `nx1 up` nodes (SQLite and PostgreSQL) and devices
//! driven through `nx1 vault …`, plus hostile requests straight at `/v1/vault/`.

use nx1_tests::*;
use nx1_vault::client::Vault;
use nx1_vault::crypto::KdfParams;
use nx1_vault::wire;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A running node with the vault API on a fixed loopback port (so devices find it again after
/// a restart).
struct Node {
    daemon: Option<Daemon>,
    config: PathBuf,
    dir: PathBuf,
    addr: String,
}

impl Node {
    fn init(tmp: &Path, name: &str, pg: Option<&PgDatabase>) -> Node {
        let config = match pg {
            Some(pg) => pg.node(tmp, name),
            None => {
                let dir = tmp.join(name);
                let out = nx1(&["init", "--dir", dir.to_str().unwrap()], tmp);
                assert!(out.status.success(), "{}", text(&out.stderr));
                let config = dir.join("nx1.toml");
                set_config(&config, "vpn", "enabled", "false");
                config
            }
        };
        let addr = format!("127.0.0.1:{}", free_tcp_port());
        set_config(&config, "api", "listen", &format!("\"{addr}\""));
        Node {
            daemon: None,
            dir: config.parent().unwrap().to_owned(),
            config,
            addr,
        }
    }

    fn start(&mut self) {
        let log = self.dir.join("up.log");
        let daemon = Daemon::start(Some(&self.config), self.dir.parent().unwrap(), &log);
        eventually("the vault API to answer", Duration::from_secs(30), || {
            http_get(&self.addr, "/healthz")
                .ok()
                .filter(|(c, _)| *c == 200)
        });
        self.daemon = Some(daemon);
    }

    fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            assert!(d.stop_with(libc::SIGTERM).success());
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            let _ = d.stop_with(libc::SIGKILL);
        }
    }
}

/// One device of an account: its own vault directory and a password file fed as fd 0.
struct Device {
    dir: PathBuf,
    password: PathBuf,
    account: String,
}

impl Device {
    fn new(tmp: &Path, name: &str, account: &str, password: &str) -> Device {
        let dir = tmp.join(name);
        let pw = tmp.join(format!("{name}.pw"));
        std::fs::write(&pw, format!("{password}\n")).unwrap();
        Device {
            dir,
            password: pw,
            account: account.to_owned(),
        }
    }

    /// Runs `cmd ARGS` with this device's directory, account and password (as fd 0).
    fn run_in(&self, mut cmd: Command, args: &[&str], timeout: Duration) -> Output {
        let child = cmd
            .args(args)
            .args(["--vault-dir", self.dir.to_str().unwrap()])
            .args(["--account", &self.account, "--password-fd", "0"])
            .env_remove("NX1_VAULT_DIR")
            .env_remove("NX1_VAULT_ACCOUNT")
            .stdin(Stdio::from(std::fs::File::open(&self.password).unwrap()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nx1 vault");
        wait_output(child, timeout)
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(nx1_bin());
        cmd.arg("vault");
        self.run_in(cmd, args, Duration::from_secs(60))
    }

    /// Runs with `file` open as file descriptor 3 (for `--file-password-fd 3`).
    fn run_with_fd3(&self, args: &[&str], file: &Path) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg("exec 3<\"$FD3\"; exec \"$NX1\" vault \"$@\"")
            .arg("nx1")
            .env("FD3", file)
            .env("NX1", nx1_bin());
        self.run_in(cmd, args, Duration::from_secs(120))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "nx1 vault {args:?} failed: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "nx1 vault {args:?} should fail");
        text(&out.stderr)
    }

    fn item(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["get", name, "--json"])).unwrap()
    }
}

/// Values that must never reach a node in clear.
const CANARIES: [&str; 6] = [
    "Zurich-canary-name",
    "canary-user-5521",
    "canary-site-5521.example",
    "canary-note-5521",
    "canary-field-5521",
    "alice-canary@example.org",
];

/// Everything a device does against one node; `dump` reads the node's database directly.
fn devices_sync_through(node: &Node, tmp: &Path, dump: &dyn Fn() -> Vec<u8>) {
    let account = "alice-canary@example.org";
    let a = Device::new(tmp, "device-a", account, "correct horse battery staple");
    let b = Device::new(tmp, "device-b", account, "correct horse battery staple");
    let url = node.url();

    a.ok(&["register", "--server", &url]);
    a.ok(&[
        "add",
        "Zurich-canary-name",
        "--username",
        "canary-user-5521",
        "--url",
        "https://canary-site-5521.example/login",
        "--notes",
        "canary-note-5521",
        "--hidden-field",
        "recovery=canary-field-5521",
        "--totp",
        "JBSWY3DPEHPK3PXP",
        "--generate",
        "24",
    ]);
    a.ok(&["add", "Mail", "--username", "alice", "--generate"]);
    let secret = a.ok(&["get", "Zurich-canary-name", "--field", "password"]);
    assert_eq!(secret.trim().chars().count(), 24);

    // A second device gets everything from the node with the password alone.
    let out = b.ok(&["unlock", "--server", &url]);
    assert!(out.contains("2 items"), "{out}");
    assert_eq!(
        b.ok(&["get", "Zurich-canary-name", "--field", "password"]),
        secret
    );
    assert_eq!(
        b.ok(&["get", "Zurich-canary-name", "--field", "recovery"])
            .trim(),
        "canary-field-5521"
    );
    let code = b.ok(&["totp", "Zurich-canary-name"]);
    assert_eq!(code.trim().len(), 6);

    // Concurrent edits: A works offline on Mail's username and folder while B changes its
    // notes and folder online. When A syncs, every edit survives; the one field both changed
    // takes A's value and keeps B's in the history.
    a.ok(&[
        "edit",
        "Mail",
        "--username",
        "alice@mail.example",
        "--folder",
        "Work",
        "--offline",
    ]);
    let list = a.ok(&["list", "--offline"]);
    assert!(list.contains("alice@mail.example"), "{list}");
    b.ok(&["edit", "Mail", "--notes", "from B", "--folder", "Home"]);
    let out = a.run(&["sync"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("merged 1"),
        "{}",
        text(&out.stderr)
    );
    for dev in [&a, &b] {
        let mail = dev.item("Mail");
        assert_eq!(mail["username"], "alice@mail.example");
        assert_eq!(mail["notes"], "from B");
        assert_eq!(mail["folder"], "Work");
        let history = mail["history"].as_array().unwrap();
        assert!(
            history
                .iter()
                .any(|h| h["field"] == "folder" && h["value"] == "Home"),
            "{history:?}"
        );
    }

    // Deletes propagate; a wrong password opens nothing.
    b.ok(&["rm", "Mail"]);
    let list = a.ok(&["list"]);
    assert!(!list.contains("Mail"), "{list}");
    let err = Device {
        dir: a.dir.clone(),
        ..Device::new(tmp, "wrong", account, "wrong password")
    }
    .fails(&["list"]);
    assert!(err.contains("wrong master password"), "{err}");

    // The node counts what it holds: one account, one live item (Mail was deleted).
    let out = nx1(
        &[
            "--config",
            node.config.to_str().unwrap(),
            "status",
            "--json",
        ],
        tmp,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["vault"]["accounts"], 1, "{status}");
    assert_eq!(status["vault"]["items"], 1, "{status}");
    assert!(status["vault"]["bytes"].as_u64().unwrap() > 256, "{status}");

    // The node's database holds none of it in clear.
    let bytes = dump();
    for canary in CANARIES.iter().chain([secret.trim()].iter()) {
        assert!(
            !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
            "{canary} is in the node's database"
        );
    }
}

#[test]
fn devices_sync_through_a_sqlite_node_and_it_sees_only_ciphertext() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::init(tmp.path(), "node", None);
    node.start();
    let db = node.dir.join("nx1.db");
    devices_sync_through(&node, tmp.path(), &|| {
        let mut all = Vec::new();
        for suffix in ["", "-wal"] {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            all.extend(std::fs::read(&p).unwrap_or_default());
        }
        assert!(all.len() > 4096, "the database file is there");
        all
    });
    node.stop();
}

#[test]
fn devices_sync_through_a_postgresql_node_and_it_sees_only_ciphertext() {
    let pg = PgDatabase::create("vault");
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::init(tmp.path(), "node", Some(&pg));
    node.start();
    devices_sync_through(&node, tmp.path(), &|| {
        let rows = pg.query("SELECT count(*) FROM vault_items");
        assert!(rows.trim().parse::<u32>().unwrap() >= 2, "{rows}");
        pg.dump()
    });

    // A node that lowers the KDF parameters is refused by devices that saw stronger ones.
    let a = Device::new(
        tmp.path(),
        "device-a",
        "alice-canary@example.org",
        "correct horse battery staple",
    );
    pg.query("UPDATE vault_accounts SET kdf_m_kib = 19456, kdf_t = 2, kdf_p = 1");
    let err = a.fails(&["sync"]);
    assert!(err.contains("weaker"), "{err}");
    node.stop();
}

/// Copies a stopped node's SQLite database (with its WAL, if any) from one directory to
/// another, replacing what is there.
fn copy_sqlite(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for suffix in ["nx1.db", "nx1.db-wal", "nx1.db-shm"] {
        let _ = std::fs::remove_file(to.join(suffix));
        if from.join(suffix).exists() {
            std::fs::copy(from.join(suffix), to.join(suffix)).unwrap();
        }
    }
}

#[test]
fn a_node_restored_from_an_old_copy_is_caught_as_a_rollback_and_a_fork() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::init(tmp.path(), "node", None);
    node.start();
    let account = "bob@example.org";
    let a = Device::new(tmp.path(), "a", account, "pw one two three");
    let b = Device::new(tmp.path(), "b", account, "pw one two three");
    a.ok(&["register", "--server", &node.url()]);
    a.ok(&["add", "One", "--generate"]);
    b.ok(&["unlock", "--server", &node.url()]);

    // Snapshot the node's database, let A make a change, then put the snapshot back.
    node.stop();
    let snapshot = tmp.path().join("snapshot");
    copy_sqlite(&node.dir, &snapshot);
    node.start();
    a.ok(&["add", "Two", "--generate"]);
    node.stop();
    copy_sqlite(&snapshot, &node.dir);
    node.start();

    let err = a.fails(&["sync"]);
    assert!(err.contains("rollback"), "{err}");

    // B, which never saw A's change, builds on the old state: the node now shows A and B
    // different histories of the same length.
    b.ok(&["add", "Three", "--generate"]);
    let err = a.fails(&["sync"]);
    assert!(err.contains("fork"), "{err}");
    // A keeps its own data all along.
    let list = a.ok(&["list", "--offline"]);
    assert!(list.contains("One") && list.contains("Two"), "{list}");
    node.stop();
}

#[test]
fn offline_changes_wait_and_quotas_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::init(tmp.path(), "node", None);
    set_config(&node.config, "vault", "max_items", "3");
    node.start();
    let a = Device::new(tmp.path(), "a", "carol", "carol's long password");
    a.ok(&["register", "--server", &node.url()]);
    for n in ["A", "B", "C"] {
        a.ok(&["add", n, "--generate"]);
    }
    let out = a.run(&["add", "D", "--generate"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("quota exceeded"),
        "{}",
        text(&out.stderr)
    );

    // With the node down, changes stay on the device and go out when it is back.
    a.ok(&["rm", "D", "--offline"]);
    node.stop();
    let out = a.run(&["rm", "C"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("wait for the next sync"),
        "{}",
        text(&out.stderr)
    );
    node.start();
    a.ok(&["sync"]);
    let b = Device::new(tmp.path(), "b", "carol", "carol's long password");
    let out = b.ok(&["unlock", "--server", &node.url()]);
    assert!(out.contains("2 items"), "{out}");
    node.stop();
}

#[test]
fn a_node_holds_no_more_vault_data_than_it_contributes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::init(tmp.path(), "node", None);
    set_config(&node.config, "contribute", "storage_mb", "1");
    node.start();
    let a = Device::new(tmp.path(), "a", "dave", "dave's long password");
    a.ok(&["register", "--server", &node.url()]);
    // Items of over 100 kB each: the node takes them until its 1 MiB is full.
    let notes = "s".repeat(100_000);
    let mut added = 0;
    let refused = loop {
        let out = a.run(&["add", &format!("item {added}"), "--notes", &notes]);
        if !out.status.success() {
            break text(&out.stderr);
        }
        added += 1;
        assert!(added <= 10, "the node took more than 1 MiB");
    };
    assert!(added >= 6, "only {added} items fit");
    assert!(refused.contains("contributed storage is full"), "{refused}");
    // Freeing space lets the change that waited on the device through.
    let out = a.run(&["rm", "item 0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let b = Device::new(tmp.path(), "b", "dave", "dave's long password");
    let listed = b.ok(&["unlock", "--server", &node.url()]);
    assert!(listed.contains(&format!("{added} items")), "{listed}");
    node.stop();
}

/// A session on a node, made with the vault crate directly (so tests can send anything).
fn session(addr: &str, name: &str) -> String {
    let (_, reg) = Vault::create(name, b"pw", KdfParams::FLOOR).unwrap();
    let body = serde_json::to_vec(&reg).unwrap();
    let json = [("content-type", "application/json")];
    let (code, text) = http_request(addr, "POST", "/v1/vault/register", &json, &body).unwrap();
    assert_eq!(code, 201, "{text}");
    let pre = wire::Prelogin {
        salt: reg.salt.clone(),
        kdf: reg.kdf,
    };
    let master = Vault::master_for_login(name, b"pw", &pre, None).unwrap();
    let req = serde_json::to_vec(&wire::ChallengeRequest {
        account: reg.account,
    })
    .unwrap();
    let (_, ch) = http_request(addr, "POST", "/v1/vault/challenge", &json, &req).unwrap();
    let ch: wire::Challenge = serde_json::from_str(&ch).unwrap();
    let login = serde_json::to_vec(&Vault::answer(&master, &reg.account, &ch.challenge)).unwrap();
    let (code, s) = http_request(addr, "POST", "/v1/vault/login", &json, &login).unwrap();
    assert_eq!(code, 200, "{s}");
    let token = serde_json::from_str::<wire::Session>(&s).unwrap().token;

    // Two challenges at once (two devices logging in together): both stay good.
    let (_, first) = http_request(addr, "POST", "/v1/vault/challenge", &json, &req).unwrap();
    let (_, second) = http_request(addr, "POST", "/v1/vault/challenge", &json, &req).unwrap();
    for ch in [second, first] {
        let ch: wire::Challenge = serde_json::from_str(&ch).unwrap();
        let login =
            serde_json::to_vec(&Vault::answer(&master, &reg.account, &ch.challenge)).unwrap();
        let (code, s) = http_request(addr, "POST", "/v1/vault/login", &json, &login).unwrap();
        assert_eq!(code, 200, "{s}");
        // A challenge works once.
        let (code, _) = http_request(addr, "POST", "/v1/vault/login", &json, &login).unwrap();
        assert_eq!(code, 401);
    }
    token
}

/// A hostile request and the answer it must get.
type Case<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
    &'a str,
);

#[test]
fn hostile_requests_get_clear_4xx_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::init(tmp.path(), "node", None);
    node.start();
    let addr = node.addr.clone();
    let token = session(&addr, "dave");
    let auth = format!("Bearer {token}");
    let json = ("content-type", "application/json");
    let authed = [json, ("authorization", auth.as_str())];
    let changes = || http_request(&addr, "GET", "/v1/vault/changes?since=0", &authed, b"").unwrap();
    let before = changes();
    assert_eq!(before.0, 200, "{}", before.1);

    let big = vec![b'x'; 9 << 20];
    // (method, path, headers, body, expected status, expected words in the answer)
    let cases: Vec<Case> = vec![
        ("POST", "/v1/vault/register", vec![json], b"{}".to_vec(), 422, "missing field"),
        ("POST", "/v1/vault/register", vec![json], b"{not json".to_vec(), 400, "invalid request body"),
        ("POST", "/v1/vault/register", vec![], b"{}".to_vec(), 415, "Content-Type"),
        ("POST", "/v1/vault/register", vec![json], br#"{"account":5,"salt":"","kdf":{"m_kib":1,"t":1,"p":1},"auth_key":"","manifest_key":"","wrapped_key":"","proof":""}"#.to_vec(), 422, "invalid type"),
        ("POST", "/v1/vault/register", vec![json], br#"{"account":"00000000000000000000000000000000","salt":"AAAAAAAAAAAAAAAAAAAAAA==","kdf":{"m_kib":8,"t":1,"p":1},"auth_key":"","manifest_key":"","wrapped_key":"AA==","proof":""}"#.to_vec(), 400, "below the minimum"),
        ("POST", "/v1/vault/register", vec![json], br#"{"account":"00000000000000000000000000000000","salt":"!!","kdf":{"m_kib":65536,"t":3,"p":4},"auth_key":"","manifest_key":"","wrapped_key":"","proof":""}"#.to_vec(), 422, "invalid"),
        ("GET", "/v1/vault/prelogin?account=zz", vec![], Vec::new(), 400, "invalid query"),
        ("GET", "/v1/vault/changes?since=0", vec![], Vec::new(), 401, "not logged in"),
        ("GET", "/v1/vault/changes?since=0", vec![("authorization", "Bearer forged")], Vec::new(), 401, "unknown token"),
        ("GET", "/v1/vault/changes?since=-1", authed.to_vec(), Vec::new(), 400, "invalid query"),
        ("POST", "/v1/vault/push", authed.to_vec(), big, 413, ""),
        ("POST", "/v1/vault/push", authed.to_vec(), br#"{"base":0,"items":[],"manifest":{}}"#.to_vec(), 422, "missing field"),
        ("POST", "/v1/vault/login", vec![json], br#"{"account":"00000000000000000000000000000000","challenge":"AA==","signature":"AA=="}"#.to_vec(), 401, "login failed"),
    ];
    for (method, path, headers, body, want, says) in cases {
        let (code, answer) = http_request(&addr, method, path, &headers, &body).unwrap();
        assert_eq!(code, want, "{method} {path}: {answer}");
        assert!(answer.contains(says), "{method} {path}: {answer}");
    }

    // Well-formed pushes that break the rules: refused with a reason, nothing applied.
    let (mut v, _) = Vault::create("dave", b"pw", KdfParams::FLOOR).unwrap();
    v.add(nx1_vault::item::Item::default());
    let p = v.prepare_push(10, 1).unwrap().unwrap().push;
    let forged = serde_json::to_vec(&p).unwrap();
    let (code, answer) = http_request(&addr, "POST", "/v1/vault/push", &authed, &forged).unwrap();
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("manifest refused"), "{answer}");
    let mut twice = p.clone();
    twice.items.push(p.items[0].clone());
    let (code, answer) = http_request(
        &addr,
        "POST",
        "/v1/vault/push",
        &authed,
        &serde_json::to_vec(&twice).unwrap(),
    )
    .unwrap();
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("appears twice"), "{answer}");

    assert_eq!(changes(), before);
    let (_, metrics) = http_get(&addr, "/metrics").unwrap();
    for series in [
        "nx1_vault_requests_total{call=\"push\",status=\"400\"} 2",
        "nx1_vault_requests_total{call=\"push\",status=\"413\"} 1",
        "nx1_vault_requests_total{call=\"register\",status=\"201\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }

    // Guessing passwords: the account's login attempts run out.
    let junk =
        br#"{"account":"11111111111111111111111111111111","challenge":"AA==","signature":"AA=="}"#;
    let mut codes = Vec::new();
    for _ in 0..12 {
        codes.push(
            http_request(&addr, "POST", "/v1/vault/login", &[json], junk)
                .unwrap()
                .0,
        );
    }
    assert_eq!(codes.iter().filter(|c| **c == 401).count(), 10, "{codes:?}");
    assert_eq!(codes.last(), Some(&429), "{codes:?}");
    node.stop();
}

#[test]
fn three_replicas_lose_nothing_when_nodes_die_mid_write_and_catch_up_after() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| Node::init(tmp.path(), &format!("node{i}"), None))
        .collect();
    for n in &mut nodes {
        n.start();
    }
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    let servers: Vec<&str> = urls.iter().flat_map(|u| ["--server", u.as_str()]).collect();
    let account = "erin@example.org";
    let password = "three replicas, one password";
    let a = Device::new(tmp.path(), "a", account, password);
    a.ok(&[&["register"], servers.as_slice()].concat());
    a.ok(&["add", "Before", "--generate"]);

    // A writer adds items one after another; node 2 is killed (SIGKILL) while it writes.
    let writer = Device {
        dir: a.dir.clone(),
        password: a.password.clone(),
        account: account.to_owned(),
    };
    let adds = std::thread::spawn(move || {
        (0..16)
            .map(|i| writer.run(&["add", &format!("W{i}"), "--generate"]))
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(1500));
    let killed = nodes[1].daemon.take().unwrap();
    killed.stop_with(libc::SIGKILL);
    for out in adds.join().unwrap() {
        assert!(out.status.success(), "{}", text(&out.stderr));
        // Two of three replicas are enough to write: nothing waits.
        assert!(
            !text(&out.stderr).contains("wait for the next sync"),
            "{}",
            text(&out.stderr)
        );
    }

    // Still readable and writable through the two that are left.
    let b = Device::new(tmp.path(), "b", account, password);
    let out = b.ok(&[&["unlock"], servers.as_slice()].concat());
    assert!(out.contains("17 items"), "{out}");
    b.ok(&["add", "While node 2 is down", "--generate"]);

    // Node 2 comes back behind; the next sync brings it up to date.
    nodes[1].start();
    let out = a.run(&["sync"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("caught up"),
        "{}",
        text(&out.stderr)
    );

    // Lose the other two: node 2 alone serves everything, to a device that has never seen
    // the vault.
    for i in [0, 2] {
        nodes[i].daemon.take().unwrap().stop_with(libc::SIGKILL);
    }
    let c = Device::new(tmp.path(), "c", account, password);
    let out = c.ok(&[&["unlock"], servers.as_slice()].concat());
    assert!(out.contains("18 items"), "{out}");
    let list = c.ok(&["list"]);
    for i in 0..16 {
        assert!(list.contains(&format!("W{i} ")), "W{i} missing: {list}");
    }
    // One replica of three cannot take writes: the change waits on the device.
    let out = c.run(&["add", "Later", "--generate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("wait for the next sync"),
        "{}",
        text(&out.stderr)
    );
    nodes[1].stop();
}

#[test]
fn other_managers_exports_import_and_the_vault_exports_to_bitwarden() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::init(tmp.path(), "node", None);
    node.start();
    let a = Device::new(tmp.path(), "a", "gina", "gina's master password");
    a.ok(&["register", "--server", &node.url()]);
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vault/tests/data/import");
    let mut total = 0;
    for (file, format) in [
        ("bitwarden.json", None),
        ("bitwarden.csv", Some("bitwarden-csv")),
        ("keepassxc.xml", None),
        ("chrome.csv", Some("chrome-csv")),
        ("firefox.csv", None),
    ] {
        let path = samples.join(file);
        let mut args = vec!["import", path.to_str().unwrap()];
        if let Some(f) = format {
            args.extend(["--format", f]);
        }
        let out = a.ok(&args);
        let n: usize = out
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{file}: {out}"));
        assert!(n >= 3, "{file}: {out}");
        total += n;
    }
    let list: Vec<serde_json::Value> = serde_json::from_str(&a.ok(&["list", "--json"])).unwrap();
    assert_eq!(list.len(), total);

    // Garbage is refused with a reason and adds nothing.
    let junk = tmp.path().join("junk.csv");
    std::fs::write(&junk, "this,is\nnot,\"an export").unwrap();
    let err = a.fails(&[
        "import",
        junk.to_str().unwrap(),
        "--format",
        "bitwarden-csv",
    ]);
    assert!(err.contains("Bitwarden CSV"), "{err}");

    // Export, plain and password-protected; the protected file imports into another account
    // with every item and secret intact.
    let plain = tmp.path().join("plain.json");
    let out = a.run(&["export", plain.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("in clear"),
        "{}",
        text(&out.stderr)
    );
    let pw = tmp.path().join("export.pw");
    std::fs::write(&pw, "export file password\n").unwrap();
    let sealed = tmp.path().join("sealed.json");
    let out = a.run_with_fd3(
        &[
            "export",
            sealed.to_str().unwrap(),
            "--encrypt",
            "--file-password-fd",
            "3",
        ],
        &pw,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sealed_text = std::fs::read_to_string(&sealed).unwrap();
    assert!(
        sealed_text.contains("\"passwordProtected\": true"),
        "{sealed_text}"
    );
    let secret = a.ok(&[
        "get",
        &list[0]["id"].as_str().unwrap()[..8],
        "--field",
        "password",
    ]);
    assert!(!sealed_text.contains(secret.trim()) || secret.trim().is_empty());

    let b = Device::new(tmp.path(), "b", "gina-2", "another master password");
    b.ok(&["register", "--server", &node.url()]);
    let out = b.run_with_fd3(
        &[
            "import",
            sealed.to_str().unwrap(),
            "--file-password-fd",
            "3",
        ],
        &pw,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let names = |d: &Device| {
        let v: Vec<serde_json::Value> = serde_json::from_str(&d.ok(&["list", "--json"])).unwrap();
        let mut n: Vec<String> = v.iter().map(|i| i["name"].to_string()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&a), names(&b));
    let plain_b = tmp.path().join("plain-b.json");
    b.ok(&["export", plain_b.to_str().unwrap()]);
    let items = |p: &Path| {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let mut it: Vec<String> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                format!(
                    "{} {} {}",
                    i["name"], i["login"]["username"], i["login"]["password"]
                )
            })
            .collect();
        it.sort();
        it
    };
    assert_eq!(items(&plain), items(&plain_b));
    node.stop();
}

#[test]
fn a_new_replica_is_seeded_even_for_an_account_with_stronger_kdf_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let mut one = Node::init(tmp.path(), "one", None);
    let mut two = Node::init(tmp.path(), "two", None);
    one.start();
    two.start();
    let a = Device::new(tmp.path(), "a", "hank", "hank's master password");
    a.ok(&[
        "register",
        "--server",
        &one.url(),
        "--kdf-memory",
        "131072",
        "--kdf-passes",
        "4",
    ]);
    a.ok(&["add", "Only on one", "--generate"]);
    // Node two answers its made-up default parameters for an account it does not hold; the
    // device offers the account instead of refusing them, and fills the new replica.
    let out = a.run(&["unlock", "--server", &two.url()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("created the account on this replica"), "{err}");
    assert!(err.contains("caught up from change 0"), "{err}");
    let b = Device::new(tmp.path(), "b", "hank", "hank's master password");
    let out = b.ok(&["unlock", "--server", &two.url()]);
    assert!(out.contains("1 items"), "{out}");
    one.stop();
    two.stop();
}

#[test]
fn replicas_come_from_the_mesh_directory_and_survive_the_node_the_user_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = Vec::new();
    let mut seed = String::new();
    for i in 1..=4 {
        let n = Node::init(tmp.path(), &format!("m{i}"), None);
        let gossip = format!("127.0.0.1:{}", free_udp_port());
        set_config(&n.config, "mesh", "enabled", "true");
        set_config(&n.config, "mesh", "listen", &format!("\"{gossip}\""));
        set_config(&n.config, "mesh", "api_url", &format!("\"{}\"", n.url()));
        if seed.is_empty() {
            seed = gossip;
        } else {
            set_config(&n.config, "mesh", "bootstrap", &format!("[\"{seed}\"]"));
        }
        nodes.push(n);
    }
    for n in &mut nodes {
        n.start();
    }
    eventually("the mesh to converge", Duration::from_secs(20), || {
        let (_, body) = http_get(&nodes[0].addr, "/v1/directory").ok()?;
        let d: serde_json::Value = serde_json::from_str(&body).ok()?;
        let live = d["members"]
            .as_object()?
            .values()
            .filter(|m| m["state"] == "live")
            .count();
        (live == 4).then_some(())
    });

    // The user names one node; the device finds the others in its directory and puts the
    // account on three of them.
    let account = "jules";
    let password = "jules's master password";
    let a = Device::new(tmp.path(), "a", account, password);
    a.ok(&["register", "--server", &nodes[0].url()]);
    a.ok(&["add", "Found through the mesh", "--generate"]);
    let id = nx1_vault::ids::AccountId::from_name(account);
    let salt_at = |n: &Node| {
        http_get(&n.addr, &format!("/v1/vault/prelogin?account={id}"))
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    let real = salt_at(&nodes[0]);
    let holders = nodes.iter().filter(|n| salt_at(n) == real).count();
    assert!(holders >= 3, "the account is on {holders} nodes");

    // The node the user named dies; a new device given another node finds the account.
    nodes[0].daemon.take().unwrap().stop_with(libc::SIGKILL);
    let b = Device::new(tmp.path(), "b", account, password);
    let out = b.ok(&["unlock", "--server", &nodes[3].url()]);
    assert!(out.contains("1 items"), "{out}");
    let out = b.run(&["add", "Written without the first node", "--generate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("wait for the next sync"),
        "{}",
        text(&out.stderr)
    );
    for n in &mut nodes[1..] {
        n.stop();
    }
}

/// `nx1 vault serve` as the desktop app drives it: one JSON request per line on stdin, one
/// answer per line on stdout (progress events before it).
struct Serve {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    events: Vec<serde_json::Value>,
}

impl Serve {
    fn start(dir: &Path) -> Serve {
        use std::io::BufRead as _;
        let mut child = Command::new(nx1_bin())
            .args(["vault", "serve", "--vault-dir", dir.to_str().unwrap()])
            .env_remove("NX1_VAULT_DIR")
            .env_remove("NX1_VAULT_ACCOUNT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nx1 vault serve");
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Serve {
            child,
            stdin: Some(stdin),
            lines,
            events: Vec::new(),
        }
    }

    fn send_line(&mut self, line: &str) -> serde_json::Value {
        use std::io::Write as _;
        writeln!(self.stdin.as_mut().unwrap(), "{line}").unwrap();
        loop {
            let answer = self
                .lines
                .recv_timeout(Duration::from_secs(120))
                .expect("the session answers");
            let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
            if v.get("event").is_some() {
                self.events.push(v);
            } else {
                return v;
            }
        }
    }

    fn ok(&mut self, request: serde_json::Value) -> serde_json::Value {
        let a = self.send_line(&request.to_string());
        assert_eq!(a["ok"], true, "{request}: {a}");
        a
    }

    fn err(&mut self, request: serde_json::Value) -> String {
        let a = self.send_line(&request.to_string());
        assert_eq!(a["ok"], false, "{request} should fail: {a}");
        a["error"].as_str().unwrap().to_owned()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_app_session_does_what_the_command_line_does_and_syncs_it() {
    use serde_json::json;
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::init(tmp.path(), "node", None);
    node.start();
    let (account, password) = ("hana", "hana's master password");
    let mut s = Serve::start(&tmp.path().join("app-device"));

    // Before an account: nothing on the device, everything but unlocking refused.
    let st = s.ok(json!({ "op": "state" }));
    assert_eq!(st["accounts"], json!([]));
    assert!(st["unlocked"].is_null());
    assert!(s.err(json!({ "op": "list" })).contains("locked"));
    assert!(
        s.send_line("not json")["error"]
            .as_str()
            .unwrap()
            .contains("not a request")
    );
    assert!(
        s.err(json!({ "op": "format_disk" }))
            .contains("not a request")
    );
    let e = s.err(
        json!({ "op": "register", "account": account, "password": "", "servers": [node.url()] }),
    );
    assert!(e.contains("empty"), "{e}");

    let st = s.ok(json!({ "op": "register", "account": account, "password": password, "servers": [node.url()] }));
    assert_eq!(st["account"], account);
    assert_eq!(st["synced"], true, "{st}");

    // Add, find, read, TOTP.
    let secret = "JBSWY3DPEHPK3PXP";
    let added = s.ok(json!({ "op": "add", "item": {
        "name": "Codeberg", "username": "hana", "password": "s3cret-from-the-app",
        "url": "https://codeberg.org", "totp": secret } }));
    let id = added["id"].as_str().unwrap().to_owned();
    assert_eq!(added["status"]["pending"], 0, "{added}");
    let found = s.ok(json!({ "op": "list", "query": "codeb" }))["items"].clone();
    assert_eq!(found.as_array().unwrap().len(), 1);
    assert_eq!(found[0]["name"], "Codeberg");
    assert_eq!(found[0]["totp"], true);
    assert!(
        found[0].get("password").is_none(),
        "the list carries no secrets"
    );
    assert_eq!(
        s.ok(json!({ "op": "list", "query": "zzz" }))["items"],
        json!([])
    );
    let got = s.ok(json!({ "op": "get", "id": id }));
    assert_eq!(got["item"]["password"], "s3cret-from-the-app");
    let code = s.ok(json!({ "op": "totp", "id": id }));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let near: Vec<String> = [now - 30, now, now + 30]
        .iter()
        .map(|t| nx1_vault::totp::code(secret, *t).unwrap().code)
        .collect();
    assert!(
        near.contains(&code["code"].as_str().unwrap().to_owned()),
        "{code}"
    );

    // Edit: the new password, the TOTP secret cleared, the old password in the history.
    s.ok(json!({ "op": "edit", "id": id, "item": { "password": "n3w-password", "totp": "" } }));
    let got = s.ok(json!({ "op": "get", "id": id }))["item"].clone();
    assert_eq!(got["password"], "n3w-password");
    assert_eq!(got["totp"], "");
    assert!(
        got["history"].to_string().contains("s3cret-from-the-app"),
        "{got}"
    );
    assert!(s.err(json!({ "op": "totp", "id": id })).contains("no TOTP"));
    assert!(
        s.err(json!({ "op": "get", "id": "nonsense" }))
            .contains("not an item id")
    );

    // The generator.
    let g = s.ok(json!({ "op": "generate", "length": 24, "symbols": false }));
    let pw = g["password"].as_str().unwrap();
    assert_eq!(pw.len(), 24);
    assert!(pw.chars().all(|c| c.is_ascii_alphanumeric()), "{pw}");
    let g = s.ok(json!({ "op": "generate", "words": 5 }));
    assert_eq!(g["password"].as_str().unwrap().split('-').count(), 5, "{g}");

    // Import, with progress events up to every item.
    let export =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../vault/tests/data/import/bitwarden.json");
    let imported = s.ok(json!({ "op": "import", "path": export }));
    let n = imported["imported"].as_u64().unwrap();
    assert!(n >= 3, "{imported}");
    assert_eq!(imported["pending"], 0, "{imported}");
    let last = s.events.last().expect("progress events").clone();
    assert_eq!(last["done"], last["total"], "{last}");
    assert_eq!(last["total"].as_u64().unwrap(), n, "{last}");

    // Another device, through the command line, sees all of it.
    let b = Device::new(tmp.path(), "cli-device", account, password);
    b.ok(&["unlock", "--server", &node.url()]);
    assert_eq!(b.item("Codeberg")["password"], "n3w-password");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&b.ok(&["list", "--json"])).unwrap();
    assert_eq!(listed.len() as u64, n + 1);

    // Both devices edit the item: the session's sync merges the two edits and says so.
    b.ok(&["edit", "Codeberg", "--username", "hana-from-the-cli"]);
    let edited = s.ok(json!({ "op": "edit", "id": id, "item": { "notes": "from the app" } }));
    assert_eq!(edited["status"]["merged"], 1, "{edited}");
    let got = s.ok(json!({ "op": "get", "id": id }))["item"].clone();
    assert_eq!(got["username"], "hana-from-the-cli");
    assert_eq!(got["notes"], "from the app");

    // Delete syncs too.
    s.ok(json!({ "op": "delete", "id": id }));
    b.ok(&["sync"]);
    assert!(b.fails(&["get", "Codeberg"]).contains("no item named"));

    // Lock; a wrong password stays locked; the right one opens what was saved.
    s.ok(json!({ "op": "lock" }));
    assert!(s.err(json!({ "op": "list" })).contains("locked"));
    let e = s.err(json!({ "op": "open", "account": account, "password": "wrong" }));
    assert!(e.contains("wrong master password"), "{e}");
    assert!(s.err(json!({ "op": "list" })).contains("locked"));
    let st = s.ok(json!({ "op": "open", "account": account, "password": password }));
    assert_eq!(st["items"].as_u64().unwrap(), n);
    assert_eq!(s.ok(json!({ "op": "state" }))["accounts"], json!([account]));

    // A new device sets itself up from the node through a session too.
    let mut c = Serve::start(&tmp.path().join("new-device"));
    let e = c.err(json!({ "op": "open", "account": account, "password": password }));
    assert!(e.contains("give a node"), "{e}");
    let st = c.ok(
        json!({ "op": "open", "account": account, "password": password, "servers": [node.url()] }),
    );
    assert_eq!(st["items"].as_u64().unwrap(), n);

    // The end of stdin ends the session cleanly.
    s.stdin = None;
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status}");
    node.stop();
}
