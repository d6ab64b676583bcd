// Wires the screens to the daemon: a refresh every two seconds and the buttons.
import * as api from "./api";
import { connectView, contributeView } from "./view";

type Screen = "connect" | "contribute";
let screen: Screen = "connect";

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
  for (const s of ["connect", "contribute"] as Screen[]) {
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
});

show("connect");
setInterval(() => void refresh(), 2000);
