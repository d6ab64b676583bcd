// What each screen shows, as HTML from the daemon's answers: pure functions, so the tests
// can check them without a window.
import type {
  ClientStatus,
  Contribution,
  Credits,
  GuardFinding,
  GuardVerdict,
  HistoryEntry,
  MeshMember,
  Status,
} from "./api";

/** Escapes text for HTML. */
export function esc(s: unknown): string {
  return String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Bytes in the largest unit that keeps a number ≥ 1 (1024-based). */
export function bytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u += 1;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
}

/** The tunnel's state in words, and the pill class to show it with; `now` in Unix seconds. */
export function tunnelState(s: Status, now = Date.now() / 1000): { text: string; cls: "ok" | "off" | "bad" } {
  const c = s.client;
  if (!c) return { text: "Not connected", cls: "off" };
  if (c.node_answer?.out_of_credits) return { text: "Cut off: out of credits", cls: "bad" };
  if (c.node_answer?.cut_off) return { text: "Cut off by the node", cls: "bad" };
  if (c.latest_handshake === null) return { text: "Connecting…", cls: "off" };
  // Past WireGuard's reject-after time the session's keys are void: no traffic flows until a
  // new handshake succeeds.
  const age = Math.floor(now - c.latest_handshake);
  if (age > 180) return { text: `Reconnecting… (no handshake for ${age} s)`, cls: "bad" };
  if (c.moves > 0) return { text: `Connected (moved ${c.moves}×)`, cls: "ok" };
  return { text: "Connected", cls: "ok" };
}

/** The tunnel's leak protection in words. */
export function protectionText(c: ClientStatus): string {
  const p = c.protection;
  if (!p) return "None: traffic can leave outside the tunnel";
  const what = p.kill_switch ? "Kill switch on" : "DNS-leak protection on";
  return `${what} · stopped ${p.dns_blocked} DNS and ${p.other_blocked} other packets outside the tunnel`;
}

/** A node's load from its signed record: active clients of those it has, and of what it takes. */
export function load(m: MeshMember): string {
  if (!m.load) return "–";
  const of = m.capacity && m.capacity.peers > 0 ? ` of ${m.capacity.peers}` : "";
  return `${m.load.active_peers} active / ${m.load.peers} clients${of}`;
}

/** One reading of the tunnel's byte counters: when (ms) and the totals. */
export interface Sample {
  t: number;
  rx: number;
  tx: number;
}

/** Rates in bytes per second between consecutive samples (a counter that went back, as
 * with a new tunnel, counts from zero). */
export function rates(samples: Sample[]): Sample[] {
  const out: Sample[] = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = (samples[i].t - samples[i - 1].t) / 1000;
    if (dt <= 0) continue;
    const d = (a: number, b: number) => (a >= b ? a - b : a);
    out.push({
      t: samples[i].t,
      rx: d(samples[i].rx, samples[i - 1].rx) / dt,
      tx: d(samples[i].tx, samples[i - 1].tx) / dt,
    });
  }
  return out;
}

/** A rate in the largest unit that fits. */
export function rate(n: number): string {
  return `${bytes(Math.round(n))}/s`;
}

/** The live throughput graph: download and upload over the last minutes, as SVG. */
export function throughputView(samples: Sample[]): string {
  const r = rates(samples);
  if (!r.length) return `<p class="muted" id="throughput">Measuring throughput…</p>`;
  const [w, h] = [480, 80];
  const peak = Math.max(1, ...r.map((x) => Math.max(x.rx, x.tx)));
  const points = (key: "rx" | "tx") =>
    r
      .map((x, i) => `${((i / Math.max(r.length - 1, 1)) * w).toFixed(1)},${(h - (x[key] / peak) * (h - 4)).toFixed(1)}`)
      .join(" ");
  const last = r[r.length - 1];
  return `<div id="throughput">
    <svg class="chart" viewBox="0 0 ${w} ${h}" width="${w}" height="${h}" role="img" aria-label="throughput">
      <polyline class="rx" points="${points("rx")}" /><polyline class="tx" points="${points("tx")}" />
    </svg>
    <p class="muted"><span class="rx-label" id="rate-rx">↓ ${rate(last.rx)}</span>
      <span class="tx-label" id="rate-tx">↑ ${rate(last.tx)}</span> · peak ${rate(peak)}</p></div>`;
}

/** A round-trip time in words. */
export function latencyText(ms: number | null | undefined): string {
  if (ms === undefined) return "…";
  if (ms === null) return "no answer";
  return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}

/** The Connect screen: this node, the tunnel, and the nodes of the directory. */
export function connectView(
  s: Status,
  samples: Sample[] = [],
  latency: Record<string, number | null> | null = null,
): string {
  const t = tunnelState(s);
  const c = s.client;
  const tunnel = c
    ? `<table>
        <tr><th>Node</th><td id="tunnel-server">${esc(c.server ?? c.endpoints.join(", "))}</td></tr>
        <tr><th>Addresses</th><td>${esc(c.addresses.join(", "))}</td></tr>
        <tr><th>Traffic</th><td id="tunnel-traffic">${bytes(c.rx_bytes)} in, ${bytes(c.tx_bytes)} out</td></tr>
        <tr><th>Route</th><td id="route">${
          c.via ? `Private two-hop through relay <code>${esc(c.via.slice(0, 12))}…</code>` : "Direct to the node"
        }</td></tr>
        <tr><th>Standby nodes</th><td>${c.standby_servers}</td></tr>
        <tr><th>Protection</th><td id="protection">${protectionText(c)}</td></tr>
        ${c.node_answer?.out_of_credits ? `<tr><th>Why</th><td>${esc(c.node_answer.out_of_credits)}</td></tr>` : ""}
      </table>
      ${throughputView(samples)}
      <div class="row"><button id="disconnect">Disconnect</button></div>`
    : `<div class="row">
        <input id="config-path" size="44" placeholder="/path/to/nx1-client.conf" />
        <input id="interface" size="8" value="nx1c" />
        <button id="connect" class="primary">Connect</button>
      </div>
      <div class="row">
        <label><input id="kill-switch" type="checkbox" checked /> Kill switch: block traffic outside the tunnel</label>
        <label><input id="dns-protection" type="checkbox" checked /> DNS-leak protection</label>
        <label><input id="two-hop" type="checkbox" /> Private two-hop (through a relay: the exit never sees your address)</label>
      </div>
      <p class="muted">A config from <code>nx1 peer add</code> on the node you use.</p>`;
  const members = s.mesh?.members ?? [];
  const nodes = members.length
    ? `<table id="nodes"><tr><th>Node</th><th>Region</th><th>Roles</th><th>Load</th><th>Latency</th><th>State</th></tr>
        ${members
          .map(
            (m) => `<tr><td><code>${esc(m.id.slice(0, 12))}…</code></td><td>${esc(m.region)}</td>
              <td>${esc(m.roles.join(", "))}</td><td class="load">${load(m)}</td>
              <td class="latency">${latency ? latencyText(latency[m.id]) : "…"}</td><td>${esc(m.state)}</td></tr>`,
          )
          .join("")}</table>`
    : `<p class="muted" id="nodes">This node is not in a mesh.</p>`;
  return `<h2>Tunnel</h2>
    <p><span id="tunnel-state" class="pill ${t.cls}">${esc(t.text)}</span></p>
    ${tunnel}
    <h2>Nodes</h2>${nodes}
    <h2>This node</h2>
    <p class="muted">nx1 ${esc(s.version)} · node <code id="node-id">${esc(s.node_id)}</code></p>`;
}

/** Credits earned by contributing on each of the last `days` days (UTC), by duty, oldest
 * first; `now` in Unix seconds. */
export function earningsByDay(history: HistoryEntry[], now: number, days = 14) {
  const today = Math.floor(now / 86400);
  const out = Array.from({ length: days }, (_, i) => ({
    day: new Date((today - days + 1 + i) * 86400 * 1000).toISOString().slice(0, 10),
    relay: 0,
    exit: 0,
    storage: 0,
  }));
  for (const e of history) {
    if (e.kind !== "earn") continue;
    const ago = today - Math.floor(e.at / 86400);
    if (ago < 0 || ago >= days) continue;
    const slot = out[days - 1 - ago];
    if (e.service === "relay" || e.service === "exit" || e.service === "storage") slot[e.service] += e.amount;
  }
  return out;
}

/** What contributing earned over the last two weeks, by day and duty, as stacked bars. */
export function earningsView(history: HistoryEntry[], now: number, k: Credits): string {
  const days = earningsByDay(history, now);
  const total = (d: (typeof days)[number]) => d.relay + d.exit + d.storage;
  const sum = days.reduce((a, d) => a + total(d), 0);
  const [w, h, gap] = [480, 90, 4];
  const bw = w / days.length - gap;
  const peak = Math.max(1, ...days.map(total));
  const bars = days
    .map((d, i) => {
      let y = h;
      return (["relay", "exit", "storage"] as const)
        .map((duty) => {
          const bh = (d[duty] / peak) * (h - 4);
          y -= bh;
          return bh > 0
            ? `<rect class="${duty}" x="${(i * (bw + gap)).toFixed(1)}" y="${y.toFixed(1)}" width="${bw.toFixed(1)}" height="${bh.toFixed(1)}"><title>${d.day}: ${d[duty]} credits (${duty})</title></rect>`
            : "";
        })
        .join("");
    })
    .join("");
  const p = k.pricing;
  const relayed = days.reduce((a, d) => a + d.relay, 0);
  const exited = days.reduce((a, d) => a + d.exit, 0);
  const mib =
    p && p.relay_per_mib > 0 && p.exit_per_mib > 0
      ? ` — about ${Math.round(relayed / p.relay_per_mib)} MiB relayed and ${Math.round(exited / p.exit_per_mib)} MiB through the exit`
      : "";
  return `<div id="earnings">
    <svg class="chart" viewBox="0 0 ${w} ${h}" width="${w}" height="${h}" role="img" aria-label="credits earned by day">${bars}</svg>
    <p class="muted" id="earnings-total">${sum} credits earned in 14 days${mib}.
      <span class="relay-label">relay</span> <span class="exit-label">exit</span> <span class="storage-label">storage</span></p></div>`;
}

/** The Contribute screen: relay duty, the cap, what was carried, the balance, and what
 * contributing earned by day. */
export function contributeView(c: Contribution, k: Credits, history: HistoryEntry[] = [], now = Date.now() / 1000): string {
  const relay = !c.relay_configured
    ? `<p class="muted" id="relay-state">Relay duty is not set up on this node (<code>[relay] enabled</code>).</p>`
    : `<div class="row">
        <span id="relay-state" class="pill ${c.relay_on ? (c.paused ? "off" : "ok") : "off"}">${
          c.relay_on ? (c.paused ? "Relaying: paused" : "Relaying for others") : "Not relaying"
        }</span>
        <button id="relay-toggle">${c.relay_on ? "Stop relaying" : "Relay for others"}</button>
      </div>
      ${c.paused ? `<p class="muted">${esc(c.paused)}</p>` : ""}`;
  const b = k.balance;
  const balance = b
    ? `<p><span class="big" id="balance">${b.balance}</span> credits
        <span class="muted">(${b.earned} earned, ${b.granted} granted, ${b.spent} spent)</span>
        ${b.overdrawn ? `<span class="pill bad">overdrawn</span>` : ""}</p>
       ${Object.keys(b.by_service).length
         ? `<table id="by-service">${Object.entries(b.by_service)
             .map(([s, n]) => `<tr><th>${esc(s)}</th><td>${n}</td></tr>`)
             .join("")}</table>`
         : ""}`
    : `<p class="error">${esc(k.balance_error ?? "balance unknown")}</p>`;
  const p = k.pricing;
  const unlocks = p
    ? `<p class="muted">Earns ${p.relay_per_mib} per MiB relayed, ${p.exit_per_mib} per MiB through an exit,
        ${p.storage_per_mib_day} per MiB of vaults held a day. Pays for tunnels beyond
        ${p.vpn_free_mib} MiB (${p.vpn_per_mib} per MiB) and vault sync beyond ${p.vault_free_kib} KiB
        (${p.vault_sync_per_mib} per MiB) every 30 days.</p>`
    : "";
  return `<h2>Relay duty</h2>${relay}
    <h2>Cap</h2>
    <div class="row">
      <input id="cap" size="6" value="${c.bandwidth_mbit}" /> Mbit/s (0: none)
      <button id="cap-set">Set</button>
    </div>
    <p class="muted" id="carried">Carried ${bytes(c.relayed_bytes)} relayed, ${bytes(c.exited_bytes)} through the exit.</p>
    <h2>Contributed, last 14 days</h2>${earningsView(history, now, k)}
    <h2>Credits</h2>${balance}${unlocks}
    <p class="muted">Account <code>${esc(k.owner)}</code></p>`;
}

/** A block list by its file name (a local path is long and says little), or as given. */
export function listName(list: string): string {
  return list.startsWith("/") ? (list.split("/").pop() ?? list) : list;
}

/** A verdict in words: blocked or allowed by which list and rule, or what the models said. */
export function verdictText(v: GuardVerdict): string {
  const why = v.list ? ` by ${listName(v.list)}${v.rule ? ` (${v.rule})` : ""}` : "";
  const flagged = v.scores.filter((s) => s.flagged).map((s) => `${s.model} ${s.score.toFixed(2)}`);
  if (v.verdict === "blocked") return `${v.domain}: blocked${why}`;
  if (v.verdict === "allowed") return `${v.domain}: allowed${why}`;
  if (flagged.length) return `${v.domain}: blocked by the models (${flagged.join(", ")})`;
  return `${v.domain}: not on any list; the models pass it`;
}

/** The cells every finding row starts with: when, the name, the query type, and why. */
function findingCells(f: { at: number; name: string; query_type: string; list: string; rule: string }): string {
  return `<td>${esc(new Date(f.at * 1000).toLocaleTimeString())}</td>
        <td class="finding-name">${esc(f.name)}</td><td>${esc(f.query_type)}</td>
        <td>${esc(listName(f.list))} <code>${esc(f.rule)}</code></td>`;
}

/** What the exit's Guard blocked for this device (while a tunnel is up). */
export function deviceFindingsView(s: Status): string {
  if (!s.client) return "";
  const found = s.client.node_answer?.guard ?? [];
  const rows = found
    .slice()
    .reverse()
    .map(
      (f) => `<tr>${findingCells(f)}
        <td><button class="allow-device" data-domain="${esc(f.name)}">Allow for this device</button></td></tr>`,
    )
    .join("");
  const table = found.length
    ? `<table id="device-findings"><tr><th>When</th><th>Name</th><th>Type</th><th>Why</th><th></th></tr>${rows}</table>`
    : `<p class="muted" id="device-findings">The exit's Guard has blocked nothing for this device lately.</p>`;
  return `<h2>Blocked for this device</h2>${table}`;
}

/** The Guard screen: what was blocked for this device and on this node and why, one-click
 * allow, and a domain check. */
export function guardView(s: Status, findings: GuardFinding[], checked: string | null): string {
  const device = deviceFindingsView(s);
  if (!s.guard) {
    return `${device}<p class="muted" id="guard-off">Guard is not running on this node (<code>[guard] enabled</code>, with WireGuard).</p>`;
  }
  const rows = findings
    .slice()
    .reverse()
    .map(
      (f) => `<tr>${findingCells(f)}<td>${esc(f.peer ?? f.client)}</td>
        <td><button class="allow" data-domain="${esc(f.name)}">Allow</button></td></tr>`,
    )
    .join("");
  const table = findings.length
    ? `<table id="findings"><tr><th>When</th><th>Name</th><th>Type</th><th>Why</th><th>Who</th><th></th></tr>${rows}</table>`
    : `<p class="muted" id="findings">Nothing blocked yet.</p>`;
  return `${device}<h2>Blocked on this node</h2>${table}
    <h2>Check a domain</h2>
    <div class="row">
      <input id="check-domain" size="32" placeholder="example.com" />
      <button id="check">Check</button>
    </div>
    ${checked ? `<p id="verdict">${esc(checked)}</p>` : ""}
    <p class="muted">${s.guard.blocked_names} names on ${s.guard.lists.length} list(s): ${esc(s.guard.lists.map(listName).join(", "))}</p>`;
}
