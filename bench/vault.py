#!/usr/bin/env python3
"""Vault benchmark: unlock time, sync of many items, and the node's vault API under load.

1. Unlock: `nx1 vault list --offline` at the default KDF (Argon2id, 64 MiB, t=3, p=4), against
   the reference Argon2 implementation (Debian's `argon2` command) with the same parameters.
2. Sync: a device imports N generated items (uploaded in batches), a second device sets itself
   up from the node (cold sync of all N), then one edit on the first device reaches the second
   (incremental sync); opening the N-item device file offline is timed too.
3. Load: `nx1-vault-load` (tests/bin/vault_load.rs) runs C concurrent devices doing push/pull
   cycles for S seconds against a node on SQLite and against one on PostgreSQL.

Python 3.11 standard library only. Needs the release binaries (`cargo build --release -p
nx1-node -p nx1-tests --bins`), Debian's `argon2`, and for PostgreSQL the local server
(NX1_TEST_POSTGRES, default postgres://postgres@127.0.0.1:5432/test) with psql.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = "benchmark master password"


def log(msg: str) -> None:
    print(f"[vault-bench] {msg}", file=sys.stderr, flush=True)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_key(path: str, section: str, key: str, value: str) -> None:
    """Replaces (or adds) `key = value` in `[section]` of a TOML file."""
    lines = open(path).read().splitlines()
    out, inside, done = [], False, False
    for line in lines:
        t = line.strip()
        if t.startswith("["):
            if inside and not done:
                out.append(f"{key} = {value}")
                done = True
            inside = t == f"[{section}]"
        if inside and not done and t.split("=")[0].strip() == key:
            out.append(f"{key} = {value}")
            done = True
            continue
        out.append(line)
    if not done:
        if not inside:
            out.append(f"[{section}]")
        out.append(f"{key} = {value}")
    open(path, "w").write("\n".join(out) + "\n")


class Node:
    def __init__(self, nx1: str, root: str, name: str, database_url: str = ""):
        self.nx1, self.dir = nx1, os.path.join(root, name)
        subprocess.run([nx1, "init", "--dir", self.dir], check=True, capture_output=True)
        self.config = os.path.join(self.dir, "nx1.toml")
        self.port = free_port()
        set_key(self.config, "api", "listen", f'"127.0.0.1:{self.port}"')
        set_key(self.config, "vpn", "enabled", "false")
        set_key(self.config, "log", "level", '"warn"')
        set_key(self.config, "vault", "max_items", "1000000")
        set_key(self.config, "vault", "max_bytes", str(8 << 30))
        set_key(self.config, "vault", "registrations_per_hour", "100000")
        if database_url:
            set_key(self.config, "store", "database_url", f'"{database_url}"')
        self.proc = subprocess.Popen([nx1, "--config", self.config, "up"],
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "up.log"), "w"))
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"node {name} did not start; see {self.dir}/up.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


class Device:
    def __init__(self, nx1: str, root: str, name: str, account: str):
        self.nx1, self.dir, self.account = nx1, os.path.join(root, name), account
        self.pw = os.path.join(root, f"{name}.pw")
        open(self.pw, "w").write(PASSWORD + "\n")

    def run(self, *args: str) -> float:
        """Runs `nx1 vault ARGS`, returns the wall time in seconds."""
        cmd = [self.nx1, "vault", *args, "--vault-dir", self.dir, "--account", self.account,
               "--password-fd", "0"]
        t = time.perf_counter()
        with open(self.pw) as stdin:
            p = subprocess.run(cmd, stdin=stdin, capture_output=True, text=True, timeout=3600)
        elapsed = time.perf_counter() - t
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip()}")
        return elapsed


def median_time(f, n: int) -> float:
    return statistics.median(f() for _ in range(n))


def argon2_reference(n: int) -> float | None:
    exe = shutil.which("argon2")
    if not exe:
        return None

    def once() -> float:
        t = time.perf_counter()
        subprocess.run([exe, "somesaltsomesalt", "-id", "-m", "16", "-t", "3", "-p", "4", "-l", "32"],
                       input=PASSWORD.encode(), capture_output=True, check=True)
        return time.perf_counter() - t

    return median_time(once, n)


def bitwarden_export(n: int) -> str:
    rnd = random.Random(7)
    items = []
    for i in range(n):
        pw = "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(20))
        items.append({
            "id": f"00000000-0000-4000-8000-{i:012d}", "type": 1, "name": f"Site {i}",
            "notes": None, "favorite": False, "folderId": None,
            "login": {"username": f"user{i}@example.org", "password": pw,
                      "uris": [{"uri": f"https://site{i}.example/login", "match": None}],
                      "totp": None},
        })
    return json.dumps({"encrypted": False, "folders": [], "items": items})


def load(load_bin: str, url: str, concurrency: int, seconds: int) -> dict:
    p = subprocess.run([load_bin, url, str(concurrency), str(seconds)], capture_output=True,
                       text=True, timeout=seconds + 120)
    if p.returncode != 0:
        raise RuntimeError(f"nx1-vault-load: {p.stderr.strip()}")
    return json.loads(p.stdout)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nx1", default=os.path.join(REPO, "target/release/nx1"))
    ap.add_argument("--load", default=os.path.join(REPO, "target/release/nx1-vault-load"))
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5, help="runs of each unlock timing")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    for b in (args.nx1, args.load):
        if not os.access(b, os.X_OK):
            log(f"{b} is missing: cargo build --release -p nx1-node -p nx1-tests --bins")
            return 2
    results: dict = {"items": args.items, "date": time.strftime("%Y-%m-%d"),
                     "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="nx1-vault-bench-") as root:
        node = Node(args.nx1, root, "sqlite-node")
        try:
            a = Device(args.nx1, root, "device-a", "bench@example.org")
            b = Device(args.nx1, root, "device-b", "bench@example.org")
            a.run("register", "--server", node.url)
            log("unlock at the default KDF")
            results["unlock_s"] = median_time(lambda: a.run("list", "--offline"), args.repeat)
            results["argon2_reference_s"] = argon2_reference(args.repeat)

            export = os.path.join(root, "export.json")
            open(export, "w").write(bitwarden_export(args.items))
            log(f"import and upload {args.items} items")
            results["import_upload_s"] = a.run("import", export)
            log("cold sync on a second device")
            results["cold_sync_s"] = b.run("unlock", "--server", node.url)
            results["open_offline_s"] = median_time(lambda: b.run("list", "--offline"),
                                                    args.repeat)
            a.run("edit", "Site 17", "--notes", "changed")
            log("incremental sync of one edit")
            results["incremental_sync_s"] = median_time(lambda: b.run("sync"), args.repeat)
            log(f"load on SQLite: {args.concurrency} devices for {args.seconds} s")
            results["load_sqlite"] = load(args.load, node.url, args.concurrency, args.seconds)
        finally:
            node.stop()

        admin = os.environ.get("NX1_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/test")
        db = f"nx1_vault_bench_{os.getpid()}"
        if shutil.which("psql"):
            subprocess.run(["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {db}"], check=True)
            subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {db}"], check=True)
            try:
                pg = Node(args.nx1, root, "pg-node", admin.rsplit("/", 1)[0] + "/" + db)
                try:
                    log(f"load on PostgreSQL: {args.concurrency} devices for {args.seconds} s")
                    results["load_postgres"] = load(args.load, pg.url, args.concurrency,
                                                    args.seconds)
                finally:
                    pg.stop()
            finally:
                subprocess.run(["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"])

    r = results
    print(f"| measure | nx1 | peer | ratio |\n|---|---|---|---|")
    ref = r.get("argon2_reference_s")
    print(f"| unlock (Argon2id 64 MiB, t=3, p=4), s | {r['unlock_s']:.3f} | "
          f"{ref:.3f} (argon2 CLI) | {r['unlock_s'] / ref:.2f} |" if ref else
          f"| unlock, s | {r['unlock_s']:.3f} | – | – |")
    print(f"| import + upload of {args.items} items, s | {r['import_upload_s']:.2f} | | |")
    print(f"| cold sync of {args.items} items (new device), s | {r['cold_sync_s']:.2f} | | |")
    print(f"| open the {args.items}-item device file offline, s | {r['open_offline_s']:.3f} | | |")
    print(f"| incremental sync (one edit), s | {r['incremental_sync_s']:.3f} | | |")
    sq, pg = r.get("load_sqlite"), r.get("load_postgres")
    if sq and pg:
        print(f"| vault API requests/s, {args.concurrency} devices | "
              f"{sq['requests_per_second']:.0f} (SQLite) | {pg['requests_per_second']:.0f} "
              f"(PostgreSQL) | {sq['requests_per_second'] / pg['requests_per_second']:.2f} |")
        for op in ("push", "pull"):
            print(f"| {op} p50 / p99, ms | {sq[op]['p50_ms']:.1f} / {sq[op]['p99_ms']:.1f} | "
                  f"{pg[op]['p50_ms']:.1f} / {pg[op]['p99_ms']:.1f} | |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
