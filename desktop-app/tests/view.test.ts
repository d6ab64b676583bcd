import { expect, test } from "vitest";
import type { Contribution, Credits, Status } from "../src/api";
import {
  bytes,
  connectView,
  contributeView,
  earningsByDay,
  earningsView,
  esc,
  guardView,
  latencyText,
  listName,
  rates,
  throughputView,
  tunnelState,
  verdictText,
} from "../src/view";

const base: Status = {
  version: "0.1.0",
  node_id: "NODEID0000000000000000000000000000000000000=",
  uptime_secs: 5,
  client: null,
  mesh: null,
  relay: null,
  vpn: null,
  guard: null,
};

const client = {
  interface: "nx1c",
  endpoints: ["198.51.100.7:51820"],
  addresses: ["10.87.0.2/32"],
  latest_handshake: Math.floor(Date.now() / 1000) - 3,
  rx_bytes: 2048,
  tx_bytes: 10,
  server: "198.51.100.7:51820",
  standby_servers: 2,
  moves: 0,
  node_answer: { refused: null, cut_off: false },
};

test("bytes are shown in the largest unit that fits", () => {
  expect(bytes(0)).toBe("0 B");
  expect(bytes(1023)).toBe("1023 B");
  expect(bytes(1536)).toBe("1.5 KiB");
  expect(bytes(3 * 1024 ** 3)).toBe("3.0 GiB");
});

test("text from the daemon is escaped", () => {
  expect(esc(`<img src=x onerror="alert(1)">`)).not.toContain("<img");
  const hostile = connectView({
    ...base,
    mesh: { members: [{ id: "<script>x</script>AAAAAAAAAAAA", state: "live", region: "<b>eu</b>", roles: [], endpoints: [] }] },
  });
  expect(hostile).not.toContain("<script>");
  expect(hostile).not.toContain("<b>eu</b>");
});

test("the tunnel's states: off, connecting, connected, moved, cut off", () => {
  expect(tunnelState(base).text).toBe("Not connected");
  expect(tunnelState({ ...base, client: { ...client, latest_handshake: null } }).text).toBe("Connecting…");
  expect(tunnelState({ ...base, client }).cls).toBe("ok");
  expect(tunnelState({ ...base, client: { ...client, moves: 2 } }).text).toBe("Connected (moved 2×)");
  const cut = {
    ...base,
    client: { ...client, node_answer: { refused: null, cut_off: true, out_of_credits: "out of credits — contribute or top up" } },
  };
  expect(tunnelState(cut)).toEqual({ text: "Cut off: out of credits", cls: "bad" });
  expect(connectView(cut)).toContain("out of credits — contribute or top up");
});

test("the Connect screen offers to connect when down and to disconnect when up", () => {
  const down = document.createElement("div");
  down.innerHTML = connectView(base);
  expect(down.querySelector("#connect")).not.toBeNull();
  expect(down.querySelector("#disconnect")).toBeNull();
  expect(down.querySelector("#node-id")!.textContent).toBe(base.node_id);
  const up = document.createElement("div");
  up.innerHTML = connectView({
    ...base,
    client,
    mesh: {
      members: [
        {
          id: "B".repeat(44),
          state: "live",
          region: "eu-west",
          roles: ["exit", "relay"],
          endpoints: [],
          load: { peers: 12, active_peers: 5 },
          capacity: { peers: 65533, bandwidth_mbps: 0 },
        },
      ],
    },
  });
  expect(up.querySelector("#disconnect")).not.toBeNull();
  expect(up.querySelector("#tunnel-server")!.textContent).toBe("198.51.100.7:51820");
  expect(up.querySelector("#nodes")!.textContent).toContain("eu-west");
  expect(up.querySelector(".load")!.textContent).toBe("5 active / 12 clients of 65533");
});

const contribution: Contribution = {
  relay_configured: true,
  relay_on: true,
  paused: null,
  exit: false,
  bandwidth_mbit: 40,
  relayed_bytes: 5 * 1024 * 1024,
  exited_bytes: 0,
  over_cap_drops: 0,
};

const credits: Credits = {
  owner: "OWNER=",
  balance: { balance: 70, earned: 100, granted: 0, spent: 30, by_service: { relay: 100, vault_sync: 30 }, overdrawn: false },
  pricing: {
    exit_per_mib: 10,
    relay_per_mib: 5,
    storage_per_mib_day: 2,
    vault_free_kib: 65536,
    vault_sync_per_mib: 20,
    vpn_free_mib: 10240,
    vpn_per_mib: 1,
  },
};

test("the Contribute screen shows relay duty, the cap, what was carried and the balance", () => {
  const el = document.createElement("div");
  el.innerHTML = contributeView(contribution, credits);
  expect(el.querySelector("#relay-state")!.textContent).toBe("Relaying for others");
  expect(el.querySelector("#relay-toggle")!.textContent).toBe("Stop relaying");
  expect(el.querySelector<HTMLInputElement>("#cap")!.value).toBe("40");
  expect(el.querySelector("#carried")!.textContent).toContain("5.0 MiB relayed");
  expect(el.querySelector("#balance")!.textContent).toBe("70");
  expect(el.querySelector("#by-service")!.textContent).toContain("vault_sync");
  const paused = document.createElement("div");
  paused.innerHTML = contributeView({ ...contribution, paused: "the machine is busy" }, credits);
  expect(paused.querySelector("#relay-state")!.textContent).toBe("Relaying: paused");
  expect(paused.textContent).toContain("the machine is busy");
  const off = document.createElement("div");
  off.innerHTML = contributeView({ ...contribution, relay_on: false }, { ...credits, balance: null, balance_error: "no replica" });
  expect(off.querySelector("#relay-toggle")!.textContent).toBe("Relay for others");
  expect(off.textContent).toContain("no replica");
});

test("the Guard screen lists what was blocked, why, with an Allow button each", () => {
  const off = document.createElement("div");
  off.innerHTML = guardView(base, [], null);
  expect(off.querySelector("#guard-off")).not.toBeNull();
  const s = { ...base, guard: { lists: ["lists/ads.txt"], blocked_names: 3, dns_listen: ["10.87.0.1:53"] } };
  const empty = document.createElement("div");
  empty.innerHTML = guardView(s, [], null);
  expect(empty.querySelector("#findings")!.textContent).toBe("Nothing blocked yet.");
  const el = document.createElement("div");
  el.innerHTML = guardView(
    s,
    [
      { at: 1, peer: "laptop", client: "10.87.0.2", name: "ads.example", query_type: "A", list: "lists/ads.txt", rule: "||ads.example^" },
      { at: 2, peer: null, client: "10.87.0.3", name: "<b>x</b>.test", query_type: "AAAA", list: "dga", rule: "score 0.99" },
    ],
    "ads.example: allowed by local",
  );
  const names = Array.from(el.querySelectorAll(".finding-name")).map((n) => n.textContent);
  expect(names).toEqual(["<b>x</b>.test", "ads.example"]);
  expect(el.querySelector<HTMLButtonElement>("button.allow")!.dataset.domain).toBe("<b>x</b>.test");
  expect(el.querySelector("#findings")!.textContent).toContain("laptop");
  expect(el.querySelector("#verdict")!.textContent).toBe("ads.example: allowed by local");
});

test("verdicts say blocked or allowed and by what", () => {
  const v = { domain: "ads.example", verdict: "blocked", list: "lists/ads.txt", rule: "||ads.example^", scores: [] };
  expect(verdictText(v)).toBe("ads.example: blocked by lists/ads.txt (||ads.example^)");
  expect(listName("/var/lib/nx1/./lists/ads.txt")).toBe("ads.txt");
  expect(listName("https://lists.example/hosts")).toBe("https://lists.example/hosts");
  expect(listName("nx1 guard allow/deny")).toBe("nx1 guard allow/deny");
  expect(verdictText({ ...v, verdict: "allowed", list: "local", rule: "allow ads.example" })).toBe(
    "ads.example: allowed by local (allow ads.example)",
  );
  expect(verdictText({ ...v, verdict: "unlisted", list: null, rule: null })).toBe(
    "ads.example: not on any list; the models pass it",
  );
  expect(
    verdictText({ ...v, verdict: "unlisted", list: null, rule: null, scores: [{ model: "dga", score: 0.97, flagged: true }] }),
  ).toBe("ads.example: blocked by the models (dga 0.97)");
});

test("the Guard screen shows what the exit blocked for this device, escaped", () => {
  const finding = { at: 1, client: "10.87.0.2", name: "tracker.example", query_type: "A", list: "/x/lists/trackers.txt", rule: "tracker.example" };
  const el = document.createElement("div");
  el.innerHTML = guardView({ ...base, client: { ...client, node_answer: { refused: null, cut_off: false, guard: [finding] } } }, [], null);
  expect(el.querySelector("#device-findings")!.textContent).toContain("tracker.example");
  expect(el.querySelector("#device-findings")!.textContent).toContain("trackers.txt");
  expect(el.querySelector<HTMLButtonElement>("#device-findings button.allow-device")!.dataset.domain).toBe("tracker.example");
  expect(el.querySelector("#guard-off")).not.toBeNull();
  el.innerHTML = guardView({ ...base, client }, [], null);
  expect(el.querySelector("#device-findings")!.textContent).toContain("blocked nothing");
  el.innerHTML = guardView(base, [], null);
  expect(el.querySelector("#device-findings")).toBeNull();
  const hostile = guardView(
    { ...base, client: { ...client, node_answer: { refused: null, cut_off: false, guard: [{ ...finding, name: "<img src=x>" }] } } },
    [],
    null,
  );
  expect(hostile).not.toContain("<img");
});

test("the Connect screen offers leak protection and shows what it stopped", () => {
  const down = document.createElement("div");
  down.innerHTML = connectView(base);
  expect(down.querySelector<HTMLInputElement>("#kill-switch")!.checked).toBe(true);
  expect(down.querySelector<HTMLInputElement>("#dns-protection")!.checked).toBe(true);
  const up = document.createElement("div");
  up.innerHTML = connectView({
    ...base,
    client: { ...client, protection: { table: "nx1ks_nx1c", kill_switch: true, dns_blocked: 2, other_blocked: 9 } },
  });
  expect(up.querySelector("#protection")!.textContent).toBe(
    "Kill switch on · stopped 2 DNS and 9 other packets outside the tunnel",
  );
  up.innerHTML = connectView({ ...base, client });
  expect(up.querySelector("#protection")!.textContent).toContain("None");
});

test("throughput: rates between samples, a new tunnel counts from zero, the graph shows the last", () => {
  const s = [
    { t: 0, rx: 0, tx: 0 },
    { t: 2000, rx: 4096, tx: 2048 },
    { t: 2000, rx: 9999, tx: 9999 },
    { t: 4000, rx: 1024, tx: 0 },
  ];
  const r = rates(s);
  expect(r).toHaveLength(2);
  expect(r[0]).toEqual({ t: 2000, rx: 2048, tx: 1024 });
  expect(r[1]).toEqual({ t: 4000, rx: 512, tx: 0 });
  const el = document.createElement("div");
  el.innerHTML = throughputView(s.slice(0, 2));
  expect(el.querySelector("#rate-rx")!.textContent).toBe("↓ 2.0 KiB/s");
  expect(el.querySelector("#rate-tx")!.textContent).toBe("↑ 1.0 KiB/s");
  expect(el.querySelectorAll("polyline")).toHaveLength(2);
  expect(throughputView([])).toContain("Measuring");
});

test("latency per node on the Connect screen", () => {
  expect(latencyText(0.42)).toBe("0.4 ms");
  expect(latencyText(87.6)).toBe("88 ms");
  expect(latencyText(null)).toBe("no answer");
  expect(latencyText(undefined)).toBe("…");
  const member = { id: "NODEA", state: "live", region: "eu", roles: ["exit"], endpoints: [] };
  const el = document.createElement("div");
  el.innerHTML = connectView({ ...base, mesh: { members: [member] } }, [], { NODEA: 12.2 });
  expect(el.querySelector("#nodes .latency")!.textContent).toBe("12 ms");
});

test("what contributing earned, by day and duty, over two weeks", () => {
  const now = 20000 * 86400 + 3600;
  const e = (kind: string, service: string, amount: number, daysAgo: number) => ({
    id: `${kind}/${service}/${amount}`,
    kind,
    service,
    amount,
    at: now - daysAgo * 86400,
    pending: false,
  });
  const history = [
    e("earn", "relay", 30, 0),
    e("earn", "relay", 12, 0),
    e("earn", "exit", 5, 13),
    e("earn", "storage", 7, 1),
    e("earn", "relay", 99, 14),
    e("spend", "vault_sync", 50, 0),
    e("grant", "", 1000, 0),
  ];
  const days = earningsByDay(history, now);
  expect(days).toHaveLength(14);
  expect(days[13]).toMatchObject({ relay: 42, exit: 0, storage: 0 });
  expect(days[12]).toMatchObject({ storage: 7 });
  expect(days[0]).toMatchObject({ exit: 5 });
  expect(days[13].day).toBe(new Date(now * 1000).toISOString().slice(0, 10));
  const k = { owner: "x", balance: null, pricing: { exit_per_mib: 1, relay_per_mib: 2, storage_per_mib_day: 1, vault_free_kib: 1, vault_sync_per_mib: 1, vpn_free_mib: 1, vpn_per_mib: 1 } };
  const el = document.createElement("div");
  el.innerHTML = earningsView(history, now, k);
  expect(el.querySelector("#earnings-total")!.textContent).toContain("54 credits earned in 14 days — about 21 MiB relayed and 5 MiB through the exit");
  expect(el.querySelectorAll("rect")).toHaveLength(3);
});

test("the route: direct, or private two-hop through a relay", () => {
  const el = document.createElement("div");
  el.innerHTML = connectView(base);
  expect(el.querySelector<HTMLInputElement>("#two-hop")!.checked).toBe(false);
  el.innerHTML = connectView({ ...base, client });
  expect(el.querySelector("#route")!.textContent).toBe("Direct to the node");
  el.innerHTML = connectView({ ...base, client: { ...client, via: "RELAYID0123456789" } });
  expect(el.querySelector("#route")!.textContent).toBe("Private two-hop through relay RELAYID01234…");
});

test("a tunnel whose session expired is reconnecting", () => {
  const now = 1_800_000_000;
  const s = { ...base, client: { ...client, latest_handshake: now - 200 } };
  expect(tunnelState(s, now)).toEqual({ text: "Reconnecting… (no handshake for 200 s)", cls: "bad" });
  expect(tunnelState({ ...base, client: { ...client, latest_handshake: now - 100 } }, now).text).toBe("Connected");
});
