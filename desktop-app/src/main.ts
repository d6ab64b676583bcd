// Wires the screens to the daemon: a refresh every two seconds and the buttons.
import { listen } from "@tauri-apps/api/event";
import * as api from "./api";
import * as vault from "./vault";
import { connectView, contributeView, guardView, type Sample, verdictText } from "./view";

type Screen = "connect" | "vault" | "guard" | "contribute";
const screens: Screen[] = ["connect", "vault", "guard", "contribute"];
let screen: Screen = "connect";
/** The last domain check's answer, in words. */
let checked: string | null = null;
/** The tunnel's byte counters, every refresh, for the throughput graph (3 minutes). */
let samples: Sample[] = [];
/** Round-trip times to the nodes, refreshed every 10 s while Connect is shown. */
let latency: Record<string, number | null> | null = null;
let latencyAt = 0;
/** The owner's ledger entries, refreshed every 15 s while Contribute is shown. */
let history: api.HistoryEntry[] = [];
let historyAt = 0;

const $ = <T extends HTMLElement>(sel: string) => document.querySelector<T>(sel);

function showError(e: unknown) {
  const el = $("#error")!;
  if (e === null) {
    el.hidden = true;
    return;
  }
  el.textContent = String(e);
  el.hidden = false;
}

async function refresh() {
  try {
    if (screen === "connect") {
      const s = await api.status();
      if (s.client) {
        samples.push({ t: Date.now(), rx: s.client.rx_bytes, tx: s.client.tx_bytes });
        samples = samples.slice(-90);
      } else {
        samples = [];
      }
      if (s.mesh && Date.now() - latencyAt > 10_000) {
        latencyAt = Date.now();
        api
          .latency()
          .then((l) => (latency = l))
          .catch(() => {});
      }
      // Keep what the user is typing: redraw only when no input has focus.
      if (!(document.activeElement instanceof HTMLInputElement)) {
        $("#screen-connect")!.innerHTML = connectView(s, samples, latency);
      }
    } else if (screen === "vault") {
      // The vault redraws on its own actions; this only keeps the daemon's pill current.
      await api.status();
    } else if (screen === "guard") {
      const s = await api.status();
      const findings = s.guard ? await api.guardFindings() : [];
      if (!(document.activeElement instanceof HTMLInputElement)) {
        $("#screen-guard")!.innerHTML = guardView(s, findings, checked);
      }
    } else {
      const [c, k] = await Promise.all([api.contribute(), api.credits()]);
      if (Date.now() - historyAt > 15_000) {
        historyAt = Date.now();
        history = await api.creditsHistory().catch(() => history);
      }
      if (!(document.activeElement instanceof HTMLInputElement)) {
        $("#screen-contribute")!.innerHTML = contributeView(c, k, history);
      }
    }
    const pill = $("#daemon-state")!;
    pill.textContent = "daemon running";
    pill.className = "pill ok";
    showError(null);
  } catch (e) {
    const pill = $("#daemon-state")!;
    pill.textContent = "no daemon";
    pill.className = "pill bad";
    showError(e);
  }
}

function show(next: Screen) {
  screen = next;
  for (const s of screens) {
    $(`#screen-${s}`)!.hidden = s !== next;
    $(`#tab-${s}`)!.classList.toggle("active", s === next);
  }
  if (next === "vault") void vaultAct(() => vaultLoad());
  void refresh();
}

// The Vault screen's state (the vault itself lives in the `nx1 vault serve` session).
const v = {
  state: null as vault.VaultState | null,
  entries: [] as vault.VaultEntry[],
  query: "",
  selected: null as string | null,
  item: null as vault.VaultItem | null,
  shown: false,
  code: null as vault.Totp | null,
  editing: null as null | "new" | "edit",
  confirmDelete: false,
  note: null as string | null,
  generated: null as string | null,
  progress: null as { done: number; total: number } | null,
};

function renderVault() {
  const s = v.state;
  const unlocked = s?.unlocked ?? null;
  $("#vault-locked")!.hidden = unlocked !== null;
  $("#vault-unlocked")!.hidden = unlocked === null;
  if (!unlocked) {
    if (s) $("#vault-locked")!.innerHTML = vault.lockedView(s);
    return;
  }
  $("#vault-top")!.innerHTML = vault.topView(unlocked);
  $("#vault-list")!.innerHTML = vault.listView(v.entries, v.selected, v.query);
  renderPane();
  $("#vault-tools")!.innerHTML = vault.toolsView(v.generated, v.progress);
}

function renderPane() {
  const pane = $("#vault-pane")!;
  if (v.editing) {
    pane.innerHTML = vault.formView(v.editing === "edit" ? v.item : null);
  } else if (v.selected && v.item) {
    pane.innerHTML = vault.detailView(v.selected, v.item, v.shown, v.code, v.note);
    const del = $("#vault-delete");
    if (del && v.confirmDelete) del.textContent = "Really delete?";
  } else {
    pane.innerHTML = "";
  }
}

/** The items for the search as it is now, or null when a newer request (typing fires one a
 * key) was made meanwhile: that one's answer is the one to show, whichever comes back last. */
let listSeq = 0;
async function listLatest(): Promise<vault.VaultEntry[] | null> {
  const seq = ++listSeq;
  const entries = await vault.list(v.query);
  return seq === listSeq ? entries : null;
}

async function vaultLoad() {
  v.state = await vault.state();
  v.entries = v.state.unlocked ? ((await listLatest()) ?? v.entries) : [];
  if (v.selected && !v.entries.some((e) => e.id === v.selected)) {
    v.selected = null;
    v.item = null;
  }
  renderVault();
}

async function vaultSelect(id: string) {
  v.selected = id;
  v.item = await vault.get(id);
  v.shown = false;
  v.editing = null;
  v.confirmDelete = false;
  v.note = null;
  v.code = v.item.totp ? await vault.totp(id) : null;
  renderVault();
}

/** Runs an action, showing its error or clearing the last one. */
async function attempt(f: () => Promise<unknown>) {
  try {
    await f();
    showError(null);
  } catch (e) {
    showError(e);
  }
}

/** A vault action: errors shown, the screen redrawn. */
async function vaultAct(f: () => Promise<unknown>) {
  await attempt(f);
  renderVault();
}

/** After a change that synced: its status, the list again. */
async function vaultChanged(status: vault.VaultStatus) {
  if (v.state) v.state.unlocked = status;
  v.entries = (await listLatest()) ?? v.entries;
}

const inputValue = (sel: string) => $<HTMLInputElement | HTMLSelectElement>(sel)?.value ?? "";

function vaultClick(t: HTMLElement): boolean {
  const id = t.id;
  if (id === "vault-open")
    void vaultAct(async () => {
      await vault.open(inputValue("#vault-account"), inputValue("#vault-password"));
      await vaultLoad();
    });
  else if (id === "vault-register" || id === "vault-join")
    void vaultAct(async () => {
      const account = inputValue("#vault-new-account").trim();
      const servers = [inputValue("#vault-new-server").trim()].filter((s) => s);
      const password = inputValue("#vault-new-password");
      if (id === "vault-register") await vault.register(account, password, servers);
      else await vault.open(account, password, servers);
      await vaultLoad();
    });
  else if (id === "vault-lock")
    void vaultAct(async () => {
      await vault.lock();
      Object.assign(v, { selected: null, item: null, code: null, editing: null, generated: null, progress: null });
      await vaultLoad();
    });
  else if (id === "vault-sync-now")
    void vaultAct(async () => {
      await vaultChanged(await vault.sync());
    });
  else if (id === "vault-new")
    void vaultAct(async () => {
      v.editing = "new";
    });
  else if (id === "vault-edit")
    void vaultAct(async () => {
      v.editing = "edit";
    });
  else if (id === "f-cancel")
    void vaultAct(async () => {
      v.editing = null;
    });
  else if (id === "vault-show")
    void vaultAct(async () => {
      v.shown = !v.shown;
    });
  else if (id === "vault-delete" && v.selected) {
    const sel = v.selected;
    void vaultAct(async () => {
      if (!v.confirmDelete) {
        v.confirmDelete = true;
        return;
      }
      const r = await vault.remove(sel);
      Object.assign(v, { selected: null, item: null, code: null, confirmDelete: false });
      await vaultChanged(r.status);
    });
  } else if (t.classList.contains("copy") && v.selected && t.dataset.field) {
    const [sel, field] = [v.selected, t.dataset.field];
    void vaultAct(async () => {
      const secs = await vault.copy(sel, field);
      v.note = `Copied the ${field}; the clipboard is cleared in ${secs} s.`;
    });
  } else if (id === "f-generate")
    void (async () => {
      try {
        $<HTMLInputElement>("#f-password")!.value = (await vault.generate(20, true, null)).password;
      } catch (e) {
        showError(e);
      }
    })();
  else if (id === "gen")
    void vaultAct(async () => {
      const words = Number(inputValue("#gen-words")) || null;
      const len = Number(inputValue("#gen-length")) || 20;
      v.generated = (await vault.generate(len, $<HTMLInputElement>("#gen-symbols")?.checked ?? true, words)).password;
    });
  else if (id === "vault-import")
    void vaultAct(async () => {
      const path = inputValue("#vault-import-path").trim();
      const password = inputValue("#vault-import-password") || null;
      v.progress = { done: 0, total: 0 };
      renderVault();
      const r = await vault.importFile(path, null, password);
      v.progress = { done: r.imported, total: r.imported };
      v.note = `Imported ${r.imported} item(s) (${r.format}).`;
      await vaultChanged(r);
    });
  else if (t.dataset.id && t.closest("#vault-items")) void vaultAct(() => vaultSelect(t.dataset.id!));
  else return false;
  return true;
}

document.addEventListener("submit", (ev) => {
  const form = ev.target as HTMLElement;
  if (form.id !== "vault-form") return;
  ev.preventDefault();
  const input = vault.formInput(form);
  void vaultAct(async () => {
    const r = v.editing === "edit" && v.selected ? await vault.edit(v.selected, input) : await vault.add(input);
    v.editing = null;
    await vaultChanged(r.status);
    await vaultSelect(r.id);
  });
});

document.addEventListener("input", (ev) => {
  const t = ev.target as HTMLElement;
  if (t.id !== "vault-search") return;
  v.query = (t as HTMLInputElement).value;
  void vaultAct(async () => {
    v.entries = (await listLatest()) ?? v.entries;
  });
});

void listen<{ done: number; total: number }>("vault-progress", (e) => {
  v.progress = { done: e.payload.done, total: e.payload.total };
  const bar = $<HTMLProgressElement>("#vault-import-progress");
  if (bar) {
    bar.max = Math.max(v.progress.total, 1);
    bar.value = v.progress.done;
    $("#vault-import-count")!.textContent = `${v.progress.done} / ${v.progress.total} uploaded`;
  } else if (screen === "vault") renderVault();
});

// Live TOTP codes: the open item's code, every second.
setInterval(() => {
  if (screen !== "vault" || v.editing || !v.selected || !v.item?.totp) return;
  const sel = v.selected;
  vault
    .totp(sel)
    .then((c) => {
      if (v.selected !== sel || v.editing) return;
      v.code = c;
      renderPane();
    })
    .catch(() => {});
}, 1000);

async function act(f: () => Promise<unknown>) {
  await attempt(f);
  (document.activeElement as HTMLElement | null)?.blur();
  await refresh();
}

document.addEventListener("click", (ev) => {
  const t = ev.target as HTMLElement;
  if (screen === "vault" && vaultClick(t)) return;
  if (t.classList.contains("tab")) show(t.dataset.screen as Screen);
  else if (t.id === "relay-toggle")
    void act(async () => {
      const now = await api.contribute();
      await api.contribute(!now.relay_on);
    });
  else if (t.id === "cap-set")
    void act(() => api.contribute(undefined, Number($<HTMLInputElement>("#cap")!.value) || 0));
  else if (t.id === "connect")
    void act(() =>
      api.connect(
        $<HTMLInputElement>("#config-path")!.value,
        $<HTMLInputElement>("#interface")!.value,
        $<HTMLInputElement>("#dns-protection")!.checked,
        $<HTMLInputElement>("#kill-switch")!.checked,
        $<HTMLInputElement>("#two-hop")!.checked ? "auto" : null,
      ),
    );
  else if (t.id === "disconnect") void act(() => api.disconnect());
  else if (t.classList.contains("allow-device") && t.dataset.domain) {
    const domain = t.dataset.domain;
    void act(async () => {
      checked = `${await api.guardAllowAtNode(domain)}: allowed for this device by the exit`;
    });
  } else if (t.classList.contains("allow") && t.dataset.domain) {
    const domain = t.dataset.domain;
    void act(async () => {
      checked = verdictText(await api.guardRule(domain, "allow"));
    });
  } else if (t.id === "check")
    void act(async () => {
      checked = verdictText(await api.guardCheck($<HTMLInputElement>("#check-domain")!.value));
    });
});

show("connect");
setInterval(() => void refresh(), 2000);
