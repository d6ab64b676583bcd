// The Vault screen: requests to the user's vault session (`nx1 vault serve`, through the
// app's `vault` command) and what the screen shows for its answers, as pure functions.
import { invoke } from "@tauri-apps/api/core";
import { esc } from "./view";

export interface VaultStatus {
  account: string;
  items: number;
  change: number;
  pending: number;
  servers: string[];
  synced: boolean;
  unsynced_because: string | null;
  merged: number;
  kept: number;
}

export interface VaultState {
  accounts: string[];
  unlocked: VaultStatus | null;
}

/** An item in the list (no secrets). */
export interface VaultEntry {
  id: string;
  name: string;
  username: string;
  url: string | null;
  folder: string;
  totp: boolean;
}

export interface VaultItem {
  name: string;
  username: string;
  password: string;
  urls: string[];
  notes: string;
  totp: string;
  folder: string;
  fields: { name: string; value: string; hidden: boolean }[];
  history: { field: string; value: string; replaced: number }[];
  modified: number;
}

/** What a form sends: a field left out stays as it is. */
export interface ItemInput {
  name?: string;
  username?: string;
  password?: string;
  url?: string;
  notes?: string;
  totp?: string;
  folder?: string;
}

export interface Totp {
  code: string;
  remaining: number;
  period: number;
}

const call = <T>(request: Record<string, unknown>) => invoke<T>("vault", { request });

export const state = () => call<VaultState>({ op: "state" });
export const open = (account: string, password: string, servers: string[] = []) =>
  call<VaultStatus>({ op: "open", account, password, servers });
export const register = (account: string, password: string, servers: string[]) =>
  call<VaultStatus>({ op: "register", account, password, servers });
export const lock = () => call<unknown>({ op: "lock" });
export const list = (query: string) =>
  call<{ items: VaultEntry[] }>({ op: "list", query }).then((r) => r.items);
export const get = (id: string) => call<{ id: string; item: VaultItem }>({ op: "get", id }).then((r) => r.item);
export const add = (item: ItemInput) => call<{ id: string; status: VaultStatus }>({ op: "add", item });
export const edit = (id: string, item: ItemInput) =>
  call<{ id: string; status: VaultStatus }>({ op: "edit", id, item });
export const remove = (id: string) => call<{ id: string; status: VaultStatus }>({ op: "delete", id });
export const totp = (id: string) => call<Totp>({ op: "totp", id });
export const generate = (length: number, symbols: boolean, words: number | null) =>
  call<{ password: string; bits: number }>({ op: "generate", length, symbols, words });
export const importFile = (path: string, format: string | null, password: string | null) =>
  call<VaultStatus & { imported: number; format: string }>({ op: "import", path, format, password });
export const sync = () => call<VaultStatus>({ op: "sync" });
/** Copies a field to the clipboard in the native side; the answer is when it clears. */
export const copy = (id: string, field: string) => invoke<number>("vault_copy", { id, field });

/** The sync state in words, with conflicts explained. */
export function syncText(s: VaultStatus): string[] {
  const nodes = `${s.servers.length} node${s.servers.length === 1 ? "" : "s"}`;
  const lines = [];
  if (s.pending > 0) {
    const why = s.unsynced_because ? ` (${s.unsynced_because})` : "";
    lines.push(`Saved on this device; ${s.pending} change(s) wait for the next sync${why}.`);
  } else if (!s.synced) {
    lines.push(`Not synced: ${s.unsynced_because ?? "no node reached"}.`);
  } else {
    lines.push(`Synced with the account's replicas (${nodes} known) · change #${s.change}.`);
  }
  if (s.merged > 0) {
    lines.push(
      `${s.merged} item(s) were edited here and on another device: both edits are kept, and the values one replaced are in the item's history.`,
    );
  }
  if (s.kept > 0) {
    lines.push(`${s.kept} item(s) deleted here were edited on another device meanwhile, so they were kept.`);
  }
  return lines;
}

/** Locked: unlock an account of this device, create one, or set this device up. */
export function lockedView(s: VaultState): string {
  const unlock = s.accounts.length
    ? `<h2>Unlock</h2>
      <div class="row">
        <select id="vault-account">${s.accounts.map((a) => `<option>${esc(a)}</option>`).join("")}</select>
        <input id="vault-password" type="password" size="24" placeholder="Master password" />
        <button id="vault-open" class="primary">Unlock</button>
      </div>`
    : `<p class="muted" id="vault-none">This device has no vault yet.</p>`;
  return `${unlock}
    <h2>${s.accounts.length ? "Another account" : "Create an account, or use one from another device"}</h2>
    <div class="row">
      <input id="vault-new-account" size="16" placeholder="Account name" />
      <input id="vault-new-server" size="28" placeholder="Node, e.g. http://10.87.0.1:7870" />
      <input id="vault-new-password" type="password" size="20" placeholder="Master password" />
    </div>
    <div class="row">
      <button id="vault-register">Create account</button>
      <button id="vault-join">Set up this device</button>
    </div>
    <p class="muted">The master password never leaves this device: items are encrypted here
      (Argon2id, XChaCha20-Poly1305) and the nodes keep only ciphertext.</p>`;
}

/** The top of the unlocked vault: sync state and the toolbar. */
export function topView(s: VaultStatus): string {
  return `<div class="row">
      <b id="vault-name">${esc(s.account)}</b>
      <span class="muted">${s.items} item(s)</span>
      <button id="vault-new" class="primary">New item</button>
      <button id="vault-sync-now">Sync now</button>
      <button id="vault-lock">Lock</button>
    </div>
    <div id="vault-sync" class="${s.pending > 0 || !s.synced ? "warn" : "muted"}">${syncText(s)
      .map((l) => `<p>${esc(l)}</p>`)
      .join("")}</div>`;
}

/** The items, as a list to pick from. */
export function listView(entries: VaultEntry[], selected: string | null, query: string): string {
  if (!entries.length) {
    return `<p class="muted" id="vault-items">${query ? "Nothing matches." : "No items yet."}</p>`;
  }
  return `<table id="vault-items">${entries
    .map(
      (e) => `<tr class="vault-item${e.id === selected ? " selected" : ""}" data-id="${esc(e.id)}">
        <td class="vault-item-name" data-id="${esc(e.id)}">${esc(e.name)}</td>
        <td data-id="${esc(e.id)}">${esc(e.username)}</td>
        <td class="muted" data-id="${esc(e.id)}">${esc(e.url ?? "")}</td></tr>`,
    )
    .join("")}</table>`;
}

/** One item: its fields, secrets masked unless shown, the live TOTP code. */
export function detailView(id: string, it: VaultItem, shown: boolean, code: Totp | null, note: string | null): string {
  const copy = (field: string) => `<button class="copy" data-field="${field}">Copy</button>`;
  const row = (label: string, value: string, extra = "") =>
    value ? `<tr><th>${label}</th><td>${value}</td><td>${extra}</td></tr>` : "";
  const pw = it.password ? (shown ? esc(it.password) : "••••••••") : "";
  const totpRow = it.totp
    ? row(
        "TOTP",
        code ? `<code id="vault-totp">${esc(code.code)}</code> <span class="muted">${code.remaining} s</span>` : "…",
        copy("totp"),
      )
    : "";
  return `<h3 id="vault-detail-name">${esc(it.name)}</h3>
    <table id="vault-detail" data-id="${esc(id)}">
      ${row("Username", esc(it.username), copy("username"))}
      ${it.password ? row("Password", `<span id="vault-password-value">${pw}</span>`, `<button id="vault-show">${shown ? "Hide" : "Show"}</button> ${copy("password")}`) : ""}
      ${it.urls.map((u) => row("URL", esc(u), "")).join("")}
      ${row("Folder", esc(it.folder))}
      ${totpRow}
      ${it.fields.map((f) => row(esc(f.name), f.hidden && !shown ? "••••••••" : esc(f.value))).join("")}
      ${it.notes ? row("Notes", `<span class="notes">${esc(it.notes)}</span>`) : ""}
      ${it.history.length ? row("History", `${it.history.length} earlier value(s)`) : ""}
    </table>
    ${note ? `<p class="muted" id="vault-note">${esc(note)}</p>` : ""}
    <div class="row">
      <button id="vault-edit">Edit</button>
      <button id="vault-delete" class="danger">Delete</button>
    </div>`;
}

/** The add/edit form (the item's current values filled in when editing). */
export function formView(it: Partial<VaultItem> | null): string {
  const v = (s: string | undefined) => esc(s ?? "");
  return `<h3>${it ? "Edit item" : "New item"}</h3>
    <form id="vault-form">
      <label>Name <input id="f-name" value="${v(it?.name)}" /></label>
      <label>Username <input id="f-username" value="${v(it?.username)}" /></label>
      <label>Password <input id="f-password" value="${v(it?.password)}" />
        <button type="button" id="f-generate">Generate</button></label>
      <label>URL <input id="f-url" value="${v(it?.urls?.[0])}" /></label>
      <label>Folder <input id="f-folder" value="${v(it?.folder)}" /></label>
      <label>TOTP secret <input id="f-totp" value="${v(it?.totp)}" placeholder="base32 or otpauth://" /></label>
      <label>Notes <textarea id="f-notes">${v(it?.notes)}</textarea></label>
      <div class="row">
        <button type="submit" id="f-save" class="primary">Save</button>
        <button type="button" id="f-cancel">Cancel</button>
      </div>
    </form>`;
}

/** The form's values: every field, so an emptied one is cleared. */
export function formInput(form: HTMLElement): ItemInput {
  const val = (id: string) => (form.querySelector<HTMLInputElement | HTMLTextAreaElement>(`#${id}`)?.value ?? "");
  return {
    name: val("f-name").trim(),
    username: val("f-username"),
    password: val("f-password"),
    url: val("f-url").trim(),
    folder: val("f-folder"),
    totp: val("f-totp").trim(),
    notes: val("f-notes"),
  };
}

/** The tools under the list: generator and import (with its progress). */
export function toolsView(generated: string | null, progress: { done: number; total: number } | null): string {
  return `<h2>Password generator</h2>
    <div class="row">
      <input id="gen-length" size="4" value="20" /> characters
      <label><input id="gen-symbols" type="checkbox" checked /> symbols</label>
      <label>or <input id="gen-words" size="3" placeholder="5" /> words</label>
      <button id="gen">Generate</button>
    </div>
    ${generated ? `<p><code id="gen-output">${esc(generated)}</code></p>` : ""}
    <h2>Import</h2>
    <div class="row">
      <input id="vault-import-path" size="36" placeholder="/path/to/export (Bitwarden, KeePass, Chrome, Firefox, 1Password)" />
      <input id="vault-import-password" type="password" size="14" placeholder="its password, if any" />
      <button id="vault-import">Import</button>
    </div>
    ${
      progress
        ? `<p><progress id="vault-import-progress" max="${Math.max(progress.total, 1)}" value="${progress.done}"></progress>
           <span id="vault-import-count">${progress.done} / ${progress.total} uploaded</span></p>`
        : ""
    }`;
}
