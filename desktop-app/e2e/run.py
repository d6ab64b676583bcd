#!/usr/bin/env python3
"""The NX1 app end to end: the real app in a real WebKit window (tauri-driver +
WebKitWebDriver, under Xvfb), against a real `nx1 up` node with WireGuard, Guard and relay
duty, in a network namespace of its own.

    xvfb-run -a dbus-run-session -- python3 e2e/run.py NX1_BIN APP_BIN [--update-docs]

Checks: the Connect screen shows the node the daemon runs and the tunnel state; the Guard
screen shows a name Guard blocked (a query on the node's tunnel address) with its list, and
its Allow button allows it in the daemon; the Contribute screen shows relay duty, and its
button turns relay duty off and on in the daemon itself; the tray follows the daemon. Screenshots of each screen go to
e2e/artifacts/ (and to docs/screenshots/ with --update-docs).
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
    req = urllib.request.Request(WD + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r).get("value")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{method} {path} -> {e.code} {e.read().decode()}") from None


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


def main():
    nx1, app = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    update_docs = "--update-docs" in sys.argv
    artifacts = os.path.join(HERE, "artifacts")
    os.makedirs(artifacts, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="nx1-app-e2e-")
    node_dir = os.path.join(tmp, "node")
    ns = f"nx1e2e{os.getpid()}"
    procs = []
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run([nx1, "init", "--dir", node_dir], check=True, capture_output=True)
        config = os.path.join(node_dir, "nx1.toml")
        os.makedirs(os.path.join(node_dir, "lists"))
        open(os.path.join(node_dir, "lists", "ads.txt"), "w").write("||ads.example^\n")
        set_config(config, "vpn", "interface", '"nx1e2e"')
        set_config(config, "vpn", "exit", "false")
        set_config(config, "guard", "blocklists", '["lists/ads.txt"]')
        set_config(config, "api", "listen", f'"127.0.0.1:{free_port(socket.SOCK_STREAM)}"')
        set_config(config, "mesh", "enabled", "true")
        set_config(config, "mesh", "listen", f'"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"')
        set_config(config, "mesh", "region", '"home-lab"')
        set_config(config, "relay", "enabled", "true")
        set_config(config, "relay", "listen_port", str(free_port(socket.SOCK_DGRAM)))
        log = open(os.path.join(artifacts, "node.log"), "w")
        procs.append(subprocess.Popen(["ip", "netns", "exec", ns, nx1, "--config", config, "up"],
                                      stdout=log, stderr=log))

        def nx1_json(*args):
            out = subprocess.run([nx1, "--config", config, *args, "--json"],
                                 capture_output=True, text=True)
            return json.loads(out.stdout) if out.returncode == 0 else None

        node_id = eventually("the node", lambda: (nx1_json("status") or {}).get("node_id"), 30)

        env = dict(os.environ, NX1_CONTROL_SOCKET=os.path.join(node_dir, "nx1.sock"),
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

            def click(css):
                wd("POST", f"/session/{sid}/element/{find(css)}/click", {})

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
            assert "0 active / 0 clients of 65533" in text("#nodes"), text("#nodes")
            shots = [shot("connect.png")]

            # Guard: a query for a listed name is blocked, shown with its list, and allowed in
            # one click.
            dig = subprocess.run(["ip", "netns", "exec", ns, "dig", "@10.87.0.1", "+short",
                                  "+time=2", "+tries=2", "ads.example", "A"],
                                 capture_output=True, text=True)
            assert dig.stdout.strip() == "0.0.0.0", dig.stdout + dig.stderr
            click("#tab-guard")
            eventually("the blocked name on the Guard screen",
                       lambda: "ads.example" in text("#findings") and "ads.txt" in text("#findings"))
            shots.append(shot("guard.png"))
            click("button.allow")
            eventually("the name allowed in the daemon",
                       lambda: nx1_json("guard", "check", "ads.example")["verdict"] == "allowed")
            eventually("the verdict on screen", lambda: "allowed" in text("#verdict"))

            # Contribute: relay duty as the daemon has it; the button turns it off and on.
            click("#tab-contribute")
            eventually("relay duty shown", lambda: text("#relay-state") == "Relaying for others")
            eventually("the balance", lambda: text("#balance") == "0")
            shots.append(shot("contribute.png"))
            click("#relay-toggle")
            eventually("relay duty off in the daemon", lambda: nx1_json("contribute")["relay_on"] is False)
            eventually("relay duty off on screen", lambda: text("#relay-state") == "Not relaying")
            click("#relay-toggle")
            eventually("relay duty on in the daemon", lambda: nx1_json("contribute")["relay_on"] is True)
            eventually("relay duty on on screen", lambda: text("#relay-state") == "Relaying for others")

            # The tray follows the daemon (read through the app: Xvfb has no tray host).
            tray = eventually("the tray text", lambda: wd("POST", f"/session/{sid}/execute/async", {
                "args": [], "script": "const d=arguments[arguments.length-1];"
                "window.__TAURI_INTERNALS__.invoke('tray_text').then(d,e=>d('ERR '+e))"}))
            assert tray == "NX1: not connected", tray

            # The daemon stops: the app says so instead of showing stale data.
            procs[0].send_signal(signal.SIGTERM)
            procs[0].wait(20)
            click("#tab-connect")
            eventually("the daemon gone", lambda: text("#daemon-state") == "no daemon")
            assert "no nx1 daemon is running" in text("#error"), text("#error")
            shots.append(shot("no-daemon.png"))
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
        subprocess.run(["ip", "netns", "del", ns])
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
