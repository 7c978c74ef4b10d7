// Headless Chromium driven over the DevTools protocol (a WebSocket; no puppeteer, no browser download).
import { readUntil } from "./helpers.ts";

const CHROMIUM = Deno.env.get("CHROMIUM") ?? "/usr/bin/chromium";
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--remote-debugging-port=0",
];

type Pending = { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void };

/** One browser with one tab: `send` a protocol command, `evaluate` an expression, take a screenshot. */
export class Chromium {
  private id = 0;
  private pending = new Map<number, Pending>();
  private session = "";
  readonly console: string[] = []; // the page's console lines and exceptions, for failure messages

  private constructor(private proc: Deno.ChildProcess, private ws: WebSocket, private userDir: string) {
    ws.onmessage = (m) => {
      const msg = JSON.parse(m.data);
      const p = this.pending.get(msg.id);
      if (p) {
        this.pending.delete(msg.id);
        if (msg.error) p.reject(new Error(`${msg.error.message} ${msg.error.data ?? ""}`));
        else p.resolve(msg.result);
      } else if (msg.method === "Runtime.consoleAPICalled") {
        this.console.push(msg.params.args.map((a: { value?: unknown }) => String(a.value)).join(" "));
      } else if (msg.method === "Runtime.exceptionThrown") {
        this.console.push(msg.params.exceptionDetails?.exception?.description ?? "exception");
      }
    };
  }

  static async launch(width = 1100, height = 900): Promise<Chromium> {
    try {
      Deno.statSync(CHROMIUM);
    } catch {
      throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM)`);
    }
    const userDir = await Deno.makeTempDir({ prefix: "ddpm_chromium_" });
    const proc = new Deno.Command(CHROMIUM, {
      args: [...FLAGS, `--user-data-dir=${userDir}`, "about:blank"],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const lines = proc.stderr.pipeThrough(new TextDecoderStream()).getReader();
    const url = await readUntil(lines, /ws:\/\/\S+/, "Chromium");
    (async () => { // drain the rest, so that Chromium never blocks on a full pipe
      while (!(await lines.read()).done);
    })();
    const ws = new WebSocket(url);
    await new Promise((resolve, reject) => (ws.onopen = resolve, ws.onerror = reject));
    const browser = new Chromium(proc, ws, userDir);
    const { targetId } = await browser.send("Target.createTarget", { url: "about:blank" });
    const { sessionId } = await browser.send("Target.attachToTarget", { targetId, flatten: true });
    browser.session = sessionId as string;
    await browser.send("Runtime.enable");
    await browser.send("Page.enable");
    await browser.send("Emulation.setDeviceMetricsOverride", { width, height, deviceScaleFactor: 1, mobile: false });
    return browser;
  }

  /** A protocol command in the tab's session (or the browser's, for Target.*). */
  send(method: string, params: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    const id = ++this.id;
    const msg = { id, method, params, ...(this.session ? { sessionId: this.session } : {}) };
    this.ws.send(JSON.stringify(msg));
    return new Promise((resolve, reject) => this.pending.set(id, { resolve, reject }));
  }

  /** The value of a JavaScript expression in the page (promises awaited); a thrown error rejects. */
  async evaluate<T = unknown>(expression: string): Promise<T> {
    const r = await this.send("Runtime.evaluate", { expression, awaitPromise: true, returnByValue: true });
    const ex = r.exceptionDetails as { exception?: { description?: string }; text?: string } | undefined;
    if (ex) throw new Error(`in the page: ${ex.exception?.description ?? ex.text}`);
    return (r.result as { value: T }).value;
  }

  /** Navigates and waits for the load event. */
  async open(url: string) {
    const loaded = new Promise<void>((resolve) => {
      const prev = this.ws.onmessage!;
      this.ws.onmessage = (m) => {
        prev.call(this.ws, m);
        if (JSON.parse(m.data).method === "Page.loadEventFired") (this.ws.onmessage = prev, resolve());
      };
    });
    await this.send("Page.navigate", { url });
    await loaded;
  }

  /** Polls `expression` until it is truthy (or throws after `seconds`, with the page's console). */
  async waitFor(expression: string, seconds = 60) {
    const end = Date.now() + seconds * 1000;
    while (!(await this.evaluate(expression))) {
      if (Date.now() > end) {
        throw new Error(`timed out waiting for ${expression}; console:\n${this.console.join("\n")}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** A PNG of the page, its top `maxHeight` CSS pixels. */
  async screenshot(maxHeight = Infinity): Promise<Uint8Array> {
    const { cssContentSize } = await this.send("Page.getLayoutMetrics") as {
      cssContentSize: { width: number; height: number };
    };
    const clip = {
      x: 0,
      y: 0,
      width: cssContentSize.width,
      height: Math.min(maxHeight, cssContentSize.height),
      scale: 1,
    };
    const { data } = await this.send("Page.captureScreenshot", { format: "png", clip, captureBeyondViewport: true });
    return Uint8Array.from(atob(data as string), (c) => c.charCodeAt(0));
  }

  async close() {
    const closed = new Promise((resolve) => (this.ws.onclose = resolve));
    this.ws.close();
    await closed;
    this.proc.kill();
    await this.proc.status;
    await Deno.remove(this.userDir, { recursive: true }).catch(() => {});
  }
}
