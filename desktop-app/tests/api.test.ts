import { afterEach, expect, test, vi } from "vitest";
import { clearMocks, mockIPC } from "@tauri-apps/api/mocks";
import * as api from "../src/api";

afterEach(() => clearMocks());

test("contribute sends the change in the native command's argument names", async () => {
  const calls = vi.fn((cmd: string, args?: unknown) => {
    if (cmd !== "contribute") throw new Error(`unexpected ${cmd}`);
    const a = args as { relay: boolean | null; bandwidthMbit: number | null };
    return { relay_configured: true, relay_on: a.relay ?? true, bandwidth_mbit: a.bandwidthMbit ?? 0 };
  });
  mockIPC(calls);
  await expect(api.contribute(false)).resolves.toMatchObject({ relay_on: false });
  expect(calls).toHaveBeenLastCalledWith("contribute", { relay: false, bandwidthMbit: null });
  await api.contribute(undefined, 40);
  expect(calls).toHaveBeenLastCalledWith("contribute", { relay: null, bandwidthMbit: 40 });
  await api.contribute();
  expect(calls).toHaveBeenLastCalledWith("contribute", { relay: null, bandwidthMbit: null });
});

test("connect passes the config path, interface and leak protection", async () => {
  const calls = vi.fn(() => ({ result: "connected" }));
  mockIPC(calls);
  await api.connect("/home/u/nx1.conf", "nx1c");
  expect(calls).toHaveBeenLastCalledWith("connect", {
    config: "/home/u/nx1.conf",
    interface: "nx1c",
    dnsProtection: true,
    killSwitch: true,
    twoHop: null,
  });
  await api.connect("/home/u/nx1.conf", "nx1c", true, false, "auto");
  expect(calls).toHaveBeenLastCalledWith("connect", {
    config: "/home/u/nx1.conf",
    interface: "nx1c",
    dnsProtection: true,
    killSwitch: false,
    twoHop: "auto",
  });
});

test("a refusal from the daemon reaches the caller as an error", async () => {
  mockIPC(() => {
    throw "no nx1 daemon is running at nx1-data/nx1.sock: start one with `nx1 up`";
  });
  await expect(api.status()).rejects.toMatch("no nx1 daemon is running");
});

test("Guard calls carry the domain and action", async () => {
  const calls = vi.fn((cmd: string) =>
    cmd === "guard_findings" ? { result: "guard_findings", findings: [{ name: "ads.example" }] } : { verdict: "allowed" },
  );
  mockIPC(calls);
  await expect(api.guardFindings()).resolves.toEqual([{ name: "ads.example" }]);
  await api.guardRule("ads.example", "allow");
  expect(calls).toHaveBeenLastCalledWith("guard_rule", { domain: "ads.example", action: "allow" });
  await api.guardCheck("x.test");
  expect(calls).toHaveBeenLastCalledWith("guard_check", { domain: "x.test" });
});

test("latency and the ledger history come from their own commands", async () => {
  const calls = vi.fn((cmd: string) =>
    cmd === "latency" ? { result: "latency", nodes: { A: 1.5, B: null } } : { result: "credits_history", history: [{ kind: "earn" }] },
  );
  mockIPC(calls);
  await expect(api.latency()).resolves.toEqual({ A: 1.5, B: null });
  await expect(api.creditsHistory()).resolves.toEqual([{ kind: "earn" }]);
  expect(calls.mock.calls.map((c) => c[0])).toEqual(["latency", "credits_history"]);
});

test("allowing at the exit names the domain", async () => {
  const calls = vi.fn(() => ({ result: "allowed_at_node", domain: "tracker.example" }));
  mockIPC(calls);
  await expect(api.guardAllowAtNode("Tracker.Example")).resolves.toBe("tracker.example");
  expect(calls).toHaveBeenCalledWith("guard_allow_at_node", { domain: "Tracker.Example" });
});
