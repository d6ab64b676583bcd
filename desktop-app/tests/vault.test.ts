import { afterEach, expect, test, vi } from "vitest";
import { clearMocks, mockIPC } from "@tauri-apps/api/mocks";
import * as vault from "../src/vault";

afterEach(() => clearMocks());

const status: vault.VaultStatus = {
  account: "ada",
  items: 2,
  change: 7,
  pending: 0,
  servers: ["http://10.87.0.1:7870"],
  synced: true,
  unsynced_because: null,
  merged: 0,
  kept: 0,
};

const item: vault.VaultItem = {
  name: "GitHub",
  username: "ada",
  password: "hunter2-secret",
  urls: ["https://github.com"],
  notes: "",
  totp: "JBSWY3DPEHPK3PXP",
  folder: "",
  fields: [{ name: "pin", value: "4321", hidden: true }],
  history: [],
  modified: 0,
};

test("every vault request goes to the one native command, as the session's op", async () => {
  const calls = vi.fn((cmd: string, args?: unknown) => {
    if (cmd === "vault_copy") return 30;
    const r = (args as { request: { op: string } }).request;
    if (r.op === "list") return { items: [{ id: "1", name: "GitHub" }], ok: true };
    return { ...status, ok: true };
  });
  mockIPC(calls);
  await vault.open("ada", "correct horse");
  expect(calls).toHaveBeenLastCalledWith("vault", {
    request: { op: "open", account: "ada", password: "correct horse", servers: [] },
  });
  await vault.register("bob", "pw", ["http://n1:7870"]);
  expect(calls).toHaveBeenLastCalledWith("vault", {
    request: { op: "register", account: "bob", password: "pw", servers: ["http://n1:7870"] },
  });
  await expect(vault.list("git")).resolves.toEqual([{ id: "1", name: "GitHub" }]);
  expect(calls).toHaveBeenLastCalledWith("vault", { request: { op: "list", query: "git" } });
  await vault.edit("1", { password: "new" });
  expect(calls).toHaveBeenLastCalledWith("vault", { request: { op: "edit", id: "1", item: { password: "new" } } });
  await expect(vault.copy("1", "password")).resolves.toBe(30);
  expect(calls).toHaveBeenLastCalledWith("vault_copy", { id: "1", field: "password" });
});

test("a locked vault's refusal reaches the caller", async () => {
  mockIPC(() => {
    throw "the vault is locked: unlock it first";
  });
  await expect(vault.list("")).rejects.toMatch("locked");
});

test("the sync state says what waits and why, and explains conflicts", () => {
  expect(vault.syncText(status)[0]).toContain("Synced");
  expect(vault.syncText(status)[0]).toContain("change #7");
  const waiting = vault.syncText({ ...status, pending: 3, synced: false, unsynced_because: "only 1 of 3 replicas reachable, 2 needed to write" });
  expect(waiting[0]).toBe(
    "Saved on this device; 3 change(s) wait for the next sync (only 1 of 3 replicas reachable, 2 needed to write).",
  );
  const conflicts = vault.syncText({ ...status, merged: 2, kept: 1 });
  expect(conflicts).toHaveLength(3);
  expect(conflicts[1]).toContain("both edits are kept");
  expect(conflicts[2]).toContain("were kept");
});

test("locked: unlock when the device has accounts, create or join either way", () => {
  const none = document.createElement("div");
  none.innerHTML = vault.lockedView({ accounts: [], unlocked: null });
  expect(none.querySelector("#vault-none")).not.toBeNull();
  expect(none.querySelector("#vault-open")).toBeNull();
  expect(none.querySelector("#vault-register")).not.toBeNull();
  const some = document.createElement("div");
  some.innerHTML = vault.lockedView({ accounts: ["ada", "<b>x</b>"], unlocked: null });
  expect(some.querySelectorAll("#vault-account option")).toHaveLength(2);
  expect(some.innerHTML).not.toContain("<b>x</b>");
  expect(some.querySelector<HTMLInputElement>("#vault-password")!.type).toBe("password");
});

test("an item's secrets are masked until shown, and its TOTP code is live", () => {
  const el = document.createElement("div");
  el.innerHTML = vault.detailView("1", item, false, { code: "123456", remaining: 12, period: 30 }, null);
  expect(el.textContent).not.toContain("hunter2-secret");
  expect(el.textContent).not.toContain("4321");
  expect(el.querySelector("#vault-totp")!.textContent).toBe("123456");
  expect(el.textContent).toContain("12 s");
  el.innerHTML = vault.detailView("1", item, true, null, "Copied");
  expect(el.querySelector("#vault-password-value")!.textContent).toBe("hunter2-secret");
  expect(el.textContent).toContain("4321");
  expect(el.querySelectorAll("button.copy").length).toBe(3);
});

test("the form round-trips an item, and an emptied field is sent empty (cleared)", () => {
  const el = document.createElement("div");
  el.innerHTML = vault.formView(item);
  const form = el.querySelector<HTMLElement>("#vault-form")!;
  expect(vault.formInput(form)).toEqual({
    name: "GitHub",
    username: "ada",
    password: "hunter2-secret",
    url: "https://github.com",
    folder: "",
    totp: "JBSWY3DPEHPK3PXP",
    notes: "",
  });
  form.querySelector<HTMLInputElement>("#f-totp")!.value = "  ";
  expect(vault.formInput(form).totp).toBe("");
  el.innerHTML = vault.formView({ name: `"><img src=x onerror=alert(1)>` });
  expect(el.querySelector("img")).toBeNull();
});

test("the list marks the open item; an empty search says nothing matches", () => {
  const el = document.createElement("div");
  const entries = [
    { id: "a1", name: "GitHub", username: "ada", url: null, folder: "", totp: true },
    { id: "b2", name: "Mail", username: "ada@x", url: "https://mail.x", folder: "", totp: false },
  ];
  el.innerHTML = vault.listView(entries, "b2", "");
  expect(el.querySelectorAll(".vault-item")).toHaveLength(2);
  expect(el.querySelector(".selected")!.getAttribute("data-id")).toBe("b2");
  expect(vault.listView([], null, "zzz")).toContain("Nothing matches.");
  expect(vault.toolsView(null, { done: 40, total: 100 })).toContain("40 / 100 uploaded");
});
