// Wires the screens to the daemon: a refresh every two seconds and the buttons.
import * as api from "./api";
import { connectView, contributeView, guardView, verdictText } from "./view";

type Screen = "connect" | "guard" | "contribute";
const screens: Screen[] = ["connect", "guard", "contribute"];
let screen: Screen = "connect";
/** The last domain check's answer, in words. */
let checked: string | null = null;

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
      // Keep what the user is typing: redraw only when no input has focus.
      if (!(document.activeElement instanceof HTMLInputElement)) {
        $("#screen-connect")!.innerHTML = connectView(s);
      }
    } else if (screen === "guard") {
      const s = await api.status();
      const findings = s.guard ? await api.guardFindings() : [];
      if (!(document.activeElement instanceof HTMLInputElement)) {
        $("#screen-guard")!.innerHTML = guardView(s, findings, checked);
      }
    } else {
      const [c, k] = await Promise.all([api.contribute(), api.credits()]);
      if (!(document.activeElement instanceof HTMLInputElement)) {
        $("#screen-contribute")!.innerHTML = contributeView(c, k);
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
  void refresh();
}

async function act(f: () => Promise<unknown>) {
  try {
    await f();
    showError(null);
  } catch (e) {
    showError(e);
  }
  (document.activeElement as HTMLElement | null)?.blur();
  await refresh();
}

document.addEventListener("click", (ev) => {
  const t = ev.target as HTMLElement;
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
      api.connect($<HTMLInputElement>("#config-path")!.value, $<HTMLInputElement>("#interface")!.value),
    );
  else if (t.id === "disconnect") void act(() => api.disconnect());
  else if (t.classList.contains("allow") && t.dataset.domain) {
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
