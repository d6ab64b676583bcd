// The daemon, through the app's native commands (each one request on the control socket).
import { invoke } from "@tauri-apps/api/core";

export interface MeshMember {
  id: string;
  state: string;
  region: string;
  roles: string[];
  endpoints: string[];
  load?: { peers: number; active_peers: number };
  capacity?: { peers: number; bandwidth_mbps: number };
}

export interface ClientStatus {
  interface: string;
  /** The relay the tunnel goes through (private two-hop), when it does. */
  via?: string | null;
  /** Leak protection in the daemon (nftables), when on. */
  protection?: { table: string; kill_switch: boolean; dns_blocked: number; other_blocked: number } | null;
  endpoints: string[];
  addresses: string[];
  latest_handshake: number | null;
  rx_bytes: number;
  tx_bytes: number;
  server: string | null;
  standby_servers: number;
  moves: number;
  node_answer: {
    refused: string | null;
    cut_off: boolean;
    out_of_credits?: string;
    /** What the exit's Guard blocked for this device lately, oldest first. */
    guard?: DeviceFinding[];
  } | null;
}

export interface Status {
  version: string;
  node_id: string;
  uptime_secs: number;
  client: ClientStatus | null;
  mesh: { members: MeshMember[] } | null;
  relay: unknown | null;
  vpn: { interface: string; peers: number } | null;
  guard: { lists: string[]; blocked_names: number; dns_listen: string[] } | null;
}

export interface Contribution {
  relay_configured: boolean;
  relay_on: boolean;
  paused: string | null;
  exit: boolean;
  bandwidth_mbit: number;
  relayed_bytes: number;
  exited_bytes: number;
  over_cap_drops: number;
}

export interface Balance {
  balance: number;
  earned: number;
  granted: number;
  spent: number;
  by_service: Record<string, number>;
  overdrawn: boolean;
}

export interface Credits {
  owner: string;
  balance: Balance | null;
  balance_error?: string;
  pricing: {
    exit_per_mib: number;
    relay_per_mib: number;
    storage_per_mib_day: number;
    vault_free_kib: number;
    vault_sync_per_mib: number;
    vpn_free_mib: number;
    vpn_per_mib: number;
  } | null;
}

export const status = () => invoke<Status>("status");
export const contribute = (relay?: boolean, bandwidthMbit?: number) =>
  invoke<Contribution>("contribute", { relay: relay ?? null, bandwidthMbit: bandwidthMbit ?? null });
export const credits = () => invoke<Credits>("credits");
/** Round-trip time to each live node, in milliseconds by node id (null: no answer). */
export const latency = () =>
  invoke<{ nodes: Record<string, number | null> }>("latency").then((r) => r.nodes);

export interface HistoryEntry {
  id: string;
  kind: string;
  service: string;
  amount: number;
  at: number;
  pending: boolean;
}

export const creditsHistory = () =>
  invoke<{ history: HistoryEntry[] }>("credits_history").then((r) => r.history);
export const connect = (
  config: string,
  iface: string,
  dnsProtection = true,
  killSwitch = true,
  twoHop: string | null = null,
) => invoke<unknown>("connect", { config, interface: iface, dnsProtection, killSwitch, twoHop });
export const disconnect = () => invoke<unknown>("disconnect");
export const socketPath = () => invoke<string>("socket_path");

/** A finding of the exit's Guard for this device. */
export interface DeviceFinding {
  at: number;
  client: string;
  name: string;
  query_type: string;
  list: string;
  rule: string;
}

export interface GuardFinding {
  at: number;
  peer: string | null;
  client: string;
  name: string;
  query_type: string;
  list: string;
  rule: string;
}

export interface GuardVerdict {
  domain: string;
  verdict: string;
  list: string | null;
  rule: string | null;
  scores: { model: string; score: number; flagged: boolean }[];
}

export const guardFindings = () =>
  invoke<{ findings: GuardFinding[] }>("guard_findings").then((r) => r.findings);
export const guardCheck = (domain: string) => invoke<GuardVerdict>("guard_check", { domain });
/** Asks the exit this device's tunnel goes to that it allow a domain for this device. */
export const guardAllowAtNode = (domain: string) =>
  invoke<{ domain: string }>("guard_allow_at_node", { domain }).then((r) => r.domain);
export const guardRule = (domain: string, action: "allow" | "deny" | "clear") =>
  invoke<GuardVerdict>("guard_rule", { domain, action });
