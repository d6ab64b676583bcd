#!/usr/bin/env python3
"""The NX1 app end to end: the real app in a real WebKit window (tauri-driver +
WebKitWebDriver, under Xvfb), against a real `nx1 up` node with WireGuard, Guard and relay
duty, in a network namespace of its own.

    xvfb-run -a dbus-run-session -- python3 e2e/run.py NX1_BIN APP_BIN [--update-docs]

Two nodes in network namespaces of their own: "home", whose daemon the app drives (Guard on
its tunnel, relay duty), and "exit", a WireGuard exit with Guard and the vault.

Checks: the Connect screen shows the node the daemon runs; connecting with the config the
exit handed out brings the tunnel up in the daemon (traffic flows, the exit's Guard answers
its DNS) with the kill switch on (a ping beside the tunnel is stopped and counted), and
Disconnect takes it down; the Vault screen creates an account on the exit,
adds an item with a generated password and a live TOTP code, finds it, copies its password
(on the X clipboard, and gone 30 s later), and imports another manager's export, and
another device of the account gets the same password from the node; the Guard screen shows
a name Guard blocked with its list, and its Allow button allows it in the daemon; the
Contribute screen's button turns relay duty off and on in the daemon; the tray follows the
tunnel and announces what the exit's Guard blocked for this device (shown on the Guard
screen too); a stopped daemon is reported. Screenshots of each screen go to e2e/artifacts/ (and
to docs/screenshots/ with --update-docs).
"""
import base64, json, os, shutil, signal, socket, subprocess, sys, tempfile, time
import urllib.error, urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
WD = "http://127.0.0.1:4444"
ELEM = "element-6066-11e4-a52e-4f735466cecf"


def free_port(kind):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def set_config(path, section, key, value):
    """Replaces `key = …` inside `[section]` of the node's commented TOML."""
    lines, out, inside, done = open(path).read().splitlines(), [], False, False
    for line in lines:
        if line.startswith("["):
            inside = line.strip() == f"[{section}]"
        if inside and not done and line.split("=")[0].strip() == key:
            line, done = f"{key} = {value}", True
        out.append(line)
    assert done, f"{section}.{key} not in {path}"
    open(path, "w").write("\n".join(out) + "\n")


def wd(method, path, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    # Reads and element look-ups change nothing, so a dropped connection is retried once;
    # anything else (a click, a new session) is not repeated.
    safe = method in ("GET", "DELETE") or path.endswith(("/element", "/elements"))
    for attempt in (1, 2):
        req = urllib.request.Request(WD + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.load(r).get("value")
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{method} {path} -> {e.code} {e.read().decode()}") from None
        except ConnectionError:  # http.client.RemoteDisconnected among them
            if not safe or attempt == 2:
                raise
            time.sleep(0.5)


def eventually(what, check, timeout=20):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        try:
            got = check()
            if got:
                return got
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


def sh(*cmd, ns=None, check=True):
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    return subprocess.run(full, check=check, capture_output=True, text=True)


def init_node(nx1, d, settings):
    subprocess.run([nx1, "init", "--dir", d], check=True, capture_output=True)
    config = os.path.join(d, "nx1.toml")
    for section, key, value in settings:
        set_config(config, section, key, value)
    return config


def block_list(d, config, name, rule):
    """A Guard block list of one rule in the node's data directory, in its config."""
    os.makedirs(os.path.join(d, "lists"))
    open(os.path.join(d, "lists", name), "w").write(rule + "\n")
    set_config(config, "guard", "blocklists", f'["lists/{name}"]')


def node_up(nx1, ns, config, log_path):
    """`nx1 up` in the network namespace `ns`, logging to `log_path`."""
    log = open(log_path, "w")
    return subprocess.Popen(["ip", "netns", "exec", ns, nx1, "--config", config, "up"],
                            stdout=log, stderr=log)


def main():
    nx1, app = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    update_docs = "--update-docs" in sys.argv
    artifacts = os.path.join(HERE, "artifacts")
    os.makedirs(artifacts, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="nx1-app-e2e-")
    os.chmod(tmp, 0o755)
    pid = os.getpid()
    # home: the user's machine, whose daemon the app drives; exit: a node it connects
    # through and keeps its vault on. home-exit is the underlay; this machine reaches the
    # exit's API (the vault) over a second pair.
    home, exit_ns = f"nx1h{pid}", f"nx1x{pid}"
    veth_h, veth_x, veth_r, veth_rx = f"h{pid}", f"x{pid}", f"r{pid}", f"rx{pid}"
    procs = []
    for ns in (home, exit_ns):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for ns in (home, exit_ns):
            sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "link", "add", veth_h, "netns", home, "type", "veth", "peer", veth_x, "netns", exit_ns)
        sh("ip", "addr", "add", "10.201.0.1/30", "dev", veth_h, ns=home)
        sh("ip", "addr", "add", "10.201.0.2/30", "dev", veth_x, ns=exit_ns)
        sh("ip", "link", "set", veth_h, "up", ns=home)
        sh("ip", "link", "set", veth_x, "up", ns=exit_ns)
        sh("ip", "route", "add", "default", "via", "10.201.0.2", ns=home)
        sh("ip", "link", "add", veth_r, "type", "veth", "peer", veth_rx, "netns", exit_ns)
        sh("ip", "addr", "add", "10.202.0.1/30", "dev", veth_r)
        sh("ip", "link", "set", veth_r, "up")
        sh("ip", "addr", "add", "10.202.0.2/30", "dev", veth_rx, ns=exit_ns)
        sh("ip", "link", "set", veth_rx, "up", ns=exit_ns)

        # The exit: WireGuard exit, Guard with a list of its own, the vault.
        exit_dir = os.path.join(tmp, "exit")
        wg_port = free_port(socket.SOCK_DGRAM)
        vault_api = f"10.202.0.2:{free_port(socket.SOCK_STREAM)}"
        exit_config = init_node(nx1, exit_dir, [
            ("vpn", "interface", '"nx1x"'),
            ("vpn", "listen_port", str(wg_port)),
            ("vpn", "endpoint", f'"10.201.0.2:{wg_port}"'),
            ("api", "listen", f'"{vault_api}"'),
        ])
        block_list(exit_dir, exit_config, "trackers.txt", "||tracker.example^")
        procs.append(node_up(nx1, exit_ns, exit_config, os.path.join(artifacts, "exit-node.log")))

        # Home: the app's daemon, with Guard on its own tunnel and relay duty.
        node_dir = os.path.join(tmp, "node")
        home_api = free_port(socket.SOCK_STREAM)
        config = init_node(nx1, node_dir, [
            ("vpn", "interface", '"nx1e2e"'),
            ("vpn", "exit", "false"),
            ("vpn", "address_v4", '"10.88.0.1/24"'),
            ("vpn", "address_v6", '"fd00:88::1/64"'),
            ("api", "listen", f'"127.0.0.1:{home_api}"'),
            ("mesh", "api_url", f'"http://127.0.0.1:{home_api}"'),
            ("mesh", "enabled", "true"),
            ("mesh", "listen", f'"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"'),
            ("mesh", "region", '"home-lab"'),
            ("relay", "enabled", "true"),
            ("relay", "listen_port", str(free_port(socket.SOCK_DGRAM))),
        ])
        block_list(node_dir, config, "ads.txt", "||ads.example^")
        procs.append(node_up(nx1, home, config, os.path.join(artifacts, "node.log")))
        home_node = procs[-1]

        def nx1_json(*args, cfg=config):
            out = subprocess.run([nx1, "--config", cfg, *args, "--json"],
                                 capture_output=True, text=True)
            return json.loads(out.stdout) if out.returncode == 0 else None

        node_id = eventually("the node", lambda: (nx1_json("status") or {}).get("node_id"), 30)
        eventually("the exit", lambda: (nx1_json("status", cfg=exit_config) or {}).get("node_id"), 30)
        eventually("the exit's API", lambda: urllib.request.urlopen(
            f"http://{vault_api}/healthz", timeout=2).status == 200, 30)
        laptop = subprocess.run([nx1, "--config", exit_config, "peer", "add", "laptop"],
                                check=True, capture_output=True, text=True).stdout
        laptop_conf = os.path.join(tmp, "laptop.conf")
        open(laptop_conf, "w").write(laptop)
        os.chmod(laptop_conf, 0o600)

        vault_dir = os.path.join(tmp, "vault")
        env = dict(os.environ, NX1_CONTROL_SOCKET=os.path.join(node_dir, "nx1.sock"),
                   NX1_BIN=nx1, NX1_VAULT_DIR=vault_dir,
                   WEBKIT_DISABLE_DMABUF_RENDERER="1", WEBKIT_DISABLE_COMPOSITING_MODE="1",
                   NO_AT_BRIDGE="1")
        driver_log = open(os.path.join(artifacts, "tauri-driver.log"), "w")
        procs.append(subprocess.Popen(["tauri-driver", "--port", "4444", "--native-port", "4445"],
                                      env=env, stdout=driver_log, stderr=driver_log))
        eventually("tauri-driver", lambda: wd("GET", "/status", timeout=2) is not None, 30)
        caps = {"capabilities": {"alwaysMatch": {"tauri:options": {"application": app}}}}
        sid = wd("POST", "/session", caps, timeout=120)["sessionId"]
        try:
            def find(css):
                return wd("POST", f"/session/{sid}/element", {"using": "css selector", "value": css})[ELEM]

            def text(css):
                return wd("GET", f"/session/{sid}/element/{find(css)}/text")

            def count(css):
                return len(wd("POST", f"/session/{sid}/elements", {"using": "css selector", "value": css}))

            def value(css):
                return wd("GET", f"/session/{sid}/element/{find(css)}/property/value")

            def click(css):
                # The screens redraw every two seconds: an element found just before a redraw
                # is gone when clicked, so a stale one is looked up again.
                for attempt in range(5):
                    try:
                        wd("POST", f"/session/{sid}/element/{find(css)}/click", {})
                        return
                    except RuntimeError as e:
                        if "stale element" not in str(e) or attempt == 4:
                            raise

            def type_into(css, s):
                el = find(css)
                wd("POST", f"/session/{sid}/element/{el}/clear", {})
                # Emptying is typed too (a space, then backspace), so input events fire.
                wd("POST", f"/session/{sid}/element/{el}/value", {"text": s or " \ue003"})

            def shot(name):
                png = base64.b64decode(wd("GET", f"/session/{sid}/screenshot"))
                path = os.path.join(artifacts, name)
                open(path, "wb").write(png)
                return path

            # Connect: the node the daemon runs, the tunnel down, the daemon reachable.
            eventually("the node id on the Connect screen", lambda: text("#node-id") == node_id)
            assert text("#tunnel-state") == "Not connected", text("#tunnel-state")
            assert text("#daemon-state") == "daemon running"
            assert "home-lab" in text("#nodes"), text("#nodes")
            assert "0 active / 0 clients of" in text("#nodes"), text("#nodes")
            eventually("the node's latency", lambda: text("#nodes .latency").endswith(" ms"), 30)
            shots = [shot("connect.png")]

            # Connect through the exit with the config it handed out: the tunnel comes up in
            # the daemon, traffic flows through it, and the exit's Guard answers its DNS.
            type_into("#config-path", laptop_conf)
            click("#connect")
            eventually("the tunnel up", lambda: text("#tunnel-state") == "Connected", 30)
            exit_key = nx1_json("status", cfg=exit_config)["wireguard_public_key"]
            assert text("#tunnel-server") == exit_key, text("#tunnel-server")
            # Kill switch and DNS-leak protection are on by default: the exit's own address,
            # reached outside the tunnel, is not.
            assert text("#protection").startswith("Kill switch on"), text("#protection")
            leak = sh("ping", "-c", "1", "-W", "1", "10.201.0.2", ns=home, check=False)
            assert leak.returncode != 0, "the kill switch let a ping out beside the tunnel"
            eventually("the stopped packets counted", lambda: " 0 other packets" not in text("#protection"))
            ping = sh("ping", "-c", "3", "-W", "2", "10.87.0.1", ns=home, check=False)
            assert ping.returncode == 0, ping.stdout + ping.stderr
            dig = sh("dig", "@10.87.0.1", "+short", "+time=2", "+tries=2", "tracker.example", "A",
                     ns=home, check=False)
            assert dig.stdout.strip() == "0.0.0.0", dig.stdout + dig.stderr
            eventually("traffic counted", lambda: " 0 B in" not in text("#tunnel-traffic"))
            eventually("the throughput graph", lambda: text("#rate-rx").startswith("↓ "))
            shots.append(shot("connected.png"))

            def tray_text():
                return wd("POST", f"/session/{sid}/execute/async", {
                    "args": [], "script": "const d=arguments[arguments.length-1];"
                    "window.__TAURI_INTERNALS__.invoke('tray_text').then(d,e=>d('ERR '+e))"})

            # The exit tells the daemon what its Guard blocked for this device (with the
            # receipts' answers); the tray announces it.
            eventually("the exit's finding in the tray",
                       lambda: "Guard blocked tracker.example (trackers.txt)" in tray_text(), 30)

            # Vault: create an account on the exit, add an item with a generated password and
            # a TOTP secret, find it, copy its password, import another manager's export.
            click("#tab-vault")
            eventually("no vault yet", lambda: find("#vault-none"))
            master = "e2e master password"
            type_into("#vault-new-account", "ada")
            type_into("#vault-new-server", f"http://{vault_api}")
            type_into("#vault-new-password", master)
            click("#vault-register")
            eventually("the vault open", lambda: text("#vault-name") == "ada", 60)
            assert "Synced" in text("#vault-sync"), text("#vault-sync")
            click("#vault-new")
            type_into("#f-name", "GitHub")
            type_into("#f-username", "ada@example.org")
            click("#f-generate")
            generated = eventually("a generated password", lambda: value("#f-password"))
            assert len(generated) == 20, generated
            type_into("#f-url", "https://github.com")
            type_into("#f-totp", "JBSWY3DPEHPK3PXP")
            click("#f-save")
            eventually("the item shown", lambda: text("#vault-detail-name") == "GitHub", 60)
            code = eventually("a live TOTP code", lambda: text("#vault-totp"))
            assert len(code) == 6 and code.isdigit(), code
            assert generated not in text("#vault-detail"), "the password is masked"
            click("#vault-new")
            type_into("#f-name", "Mail")
            type_into("#f-username", "ada@mail.example")
            click("#f-save")
            eventually("the second item", lambda: text("#vault-detail-name") == "Mail", 60)
            type_into("#vault-search", "git")
            eventually("the search", lambda: "GitHub" in text("#vault-items") and "Mail" not in text("#vault-items"))
            click(".vault-item-name")
            eventually("GitHub open", lambda: text("#vault-detail-name") == "GitHub")
            click("#vault-show")
            eventually("the password shown", lambda: text("#vault-password-value") == generated)
            click("button.copy[data-field=password]")
            eventually("copied", lambda: "cleared in 30 s" in text("#vault-note"))
            copied_at = time.time()
            clip = sh("xclip", "-o", "-selection", "clipboard", check=False)
            assert clip.stdout == generated, (clip.stdout, clip.stderr)
            shots.append(shot("vault.png"))
            # What the node holds is what another device of the account gets.
            other = subprocess.run(
                [nx1, "vault", "--vault-dir", os.path.join(tmp, "other-device"), "--account", "ada",
                 "--password-fd", "0", "unlock", "--server", f"http://{vault_api}"],
                input=master + "\n", capture_output=True, text=True)
            assert other.returncode == 0, other.stderr
            got = subprocess.run(
                [nx1, "vault", "--vault-dir", os.path.join(tmp, "other-device"), "--account", "ada",
                 "--password-fd", "0", "get", "GitHub", "--field", "password"],
                input=master + "\n", capture_output=True, text=True)
            assert got.stdout.strip() == generated, (got.stdout, got.stderr)
            export = os.path.join(HERE, "..", "..", "vault", "tests", "data", "import", "bitwarden.json")
            type_into("#vault-import-path", os.path.abspath(export))
            click("#vault-import")
            eventually("imported", lambda: "Imported" in text("#vault-note"), 60)
            assert "uploaded" in text("#vault-import-count"), text("#vault-import-count")
            type_into("#vault-search", "")
            eventually("every item listed", lambda: count(".vault-item") == 2 + int(text("#vault-note").split()[1]))

            # Guard: a query for a listed name is blocked, shown with its list, and allowed in
            # one click.
            dig = sh("dig", "@10.88.0.1", "+short", "+time=2", "+tries=2", "ads.example", "A", ns=home,
                     check=False)
            assert dig.stdout.strip() == "0.0.0.0", dig.stdout + dig.stderr
            click("#tab-guard")
            eventually("what the exit blocked for this device",
                       lambda: "tracker.example" in text("#device-findings")
                       and "trackers.txt" in text("#device-findings"))
            shots.append(shot("guard.png"))
            # Allowed for this device by the exit, in one click (the exit keeps blocking it
            # for everyone else).
            click("button.allow-device")
            eventually("allowed at the exit for this device", lambda: nx1_json(
                "guard", "check", "tracker.example", "--peer", "laptop", cfg=exit_config)["verdict"] == "allowed")
            assert nx1_json("guard", "check", "tracker.example", cfg=exit_config)["verdict"] == "blocked"
            eventually("the answer on screen", lambda: "allowed for this device by the exit" in text("#verdict"))
            eventually("the blocked name on the Guard screen",
                       lambda: "ads.example" in text("#findings") and "ads.txt" in text("#findings"))
            click("button.allow")
            eventually("the name allowed in the daemon",
                       lambda: nx1_json("guard", "check", "ads.example")["verdict"] == "allowed")
            eventually("the verdict on screen", lambda: "allowed" in text("#verdict"))

            # Contribute: relay duty as the daemon has it; the button turns it off and on.
            click("#tab-contribute")
            eventually("relay duty shown", lambda: text("#relay-state") == "Relaying for others")
            eventually("the balance", lambda: text("#balance") == "0")
            assert text("#earnings-total").startswith("0 credits earned in 14 days"), text("#earnings-total")
            shots.append(shot("contribute.png"))
            click("#relay-toggle")
            eventually("relay duty off in the daemon", lambda: nx1_json("contribute")["relay_on"] is False)
            eventually("relay duty off on screen", lambda: text("#relay-state") == "Not relaying")
            click("#relay-toggle")
            eventually("relay duty on in the daemon", lambda: nx1_json("contribute")["relay_on"] is True)
            eventually("relay duty on on screen", lambda: text("#relay-state") == "Relaying for others")

            # Disconnect: the tunnel goes, and the tray follows the daemon (read through the
            # app: Xvfb has no tray host).
            click("#tab-connect")
            click("#disconnect")
            eventually("the tunnel down", lambda: text("#tunnel-state") == "Not connected", 20)
            assert (nx1_json("status") or {}).get("client") is None
            back = sh("ping", "-c", "1", "-W", "2", "10.201.0.2", ns=home, check=False)
            assert back.returncode == 0, "the kill switch left with the tunnel"
            eventually("the tray's state", lambda: tray_text().split("\n")[0] == "NX1: not connected")

            # The copied password left the clipboard after 30 s.
            time.sleep(max(0.0, copied_at + 32 - time.time()))
            clip = sh("xclip", "-o", "-selection", "clipboard", check=False)
            assert generated not in clip.stdout, "the clipboard still holds the password"

            # The daemon stops: the app says so instead of showing stale data.
            home_node.send_signal(signal.SIGTERM)
            home_node.wait(20)
            eventually("the daemon gone", lambda: text("#daemon-state") == "no daemon")
            assert "no nx1 daemon is running" in text("#error"), text("#error")
            shots.append(shot("no-daemon.png"))
        except Exception:
            shot("failure.png")  # what the window showed, for the artefacts
            raise
        finally:
            wd("DELETE", f"/session/{sid}")
        if update_docs:
            docs = os.path.join(HERE, "..", "..", "docs", "screenshots")
            os.makedirs(docs, exist_ok=True)
            for s in shots:
                shutil.copy(s, docs)
        print("app e2e: ok;", ", ".join(os.path.basename(s) for s in shots))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        subprocess.run(["ip", "link", "del", veth_r], capture_output=True)
        for ns in (home, exit_ns):
            subprocess.run(["ip", "netns", "del", ns])
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
