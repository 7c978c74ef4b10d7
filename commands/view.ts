// The run's page, served, `deno task view --run RUN [--port 8000]` bundles page.ts (`deno task bundle`) into RUN/page/
// with tfjs's .wasm files, rewrites RUN/index.html, and serves the folder on localhost.
import { extname, join, normalize } from "node:path";
import { readState } from "../run/trained.ts";
import { defaultNotes, helpText, readFlags, runCli, runFolder, UsageError } from "../run/cli.ts";
import { writeReport } from "../run/report.ts";

const ROOT = join(import.meta.dirname!, "..");
const WASM = ["tfjs-backend-wasm.wasm", "tfjs-backend-wasm-simd.wasm", "tfjs-backend-wasm-threaded-simd.wasm"];

/** Puts the page's script (page.ts and the model code, bundled) and the wasm backend's files into RUN/page/. */
export async function buildPage(runDir: string) {
  await readState(runDir); // a clear error for a folder that is not a run
  const out = await new Deno.Command("deno", { args: ["task", "-q", "bundle"], cwd: ROOT, stdin: "null" })
    .output();
  if (out.code !== 0) throw new Error(`deno task bundle failed:\n${new TextDecoder().decode(out.stderr)}`);
  const dir = join(runDir, "page");
  await Deno.mkdir(dir, { recursive: true });
  await Deno.copyFile(join(ROOT, "dist", "page.js"), join(dir, "page.js"));
  const wasmDir = join(ROOT, "node_modules", "@tensorflow", "tfjs-backend-wasm", "dist");
  for (const f of WASM) await Deno.copyFile(join(wasmDir, f), join(dir, f));
  await writeReport(runDir);
}

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".wasm": "application/wasm",
  ".png": "image/png",
  ".json": "application/json",
  ".jsonl": "text/plain; charset=utf-8",
};

/** A static file server of the run folder on 127.0.0.1 (port 0: any free one). */
export function serveRun(runDir: string, port: number, onListen: (url: string) => void): Deno.HttpServer {
  const handler = async (req: Request) => {
    const path = normalize(decodeURIComponent(new URL(req.url).pathname)); // absolute: no ".." is left
    const file = join(runDir, path.endsWith("/") ? `${path}index.html` : path);
    try {
      const type = TYPES[extname(file)] ?? "application/octet-stream";
      return new Response(await Deno.readFile(file), {
        headers: { "content-type": type, "cache-control": "no-cache" },
      });
    } catch {
      return new Response("not found", { status: 404 });
    }
  };
  try {
    return Deno.serve(
      { hostname: "127.0.0.1", port, onListen: ({ port }) => onListen(`http://127.0.0.1:${port}/`) },
      handler,
    );
  } catch (e) {
    if (e instanceof Deno.errors.AddrInUse) throw new UsageError(`--port ${port} is in use: pick another`);
    throw e;
  }
}

const PORT = { port: 8000 }; // the default

const HELP = helpText(
  "view",
  `Serve a run's page: the forward and reverse processes live in the browser, the config, loss and samples.

  deno task view --run RUN [--port 8000]`,
  defaultNotes(PORT),
  `The folder then works from any static server too (e.g. python3 -m http.server -d RUN).
In the page, ?backend=webgpu|webgl|wasm|cpu picks the tfjs backend (default: the first that starts, in that order).`,
);

async function main() {
  const v = readFlags("view", Deno.args, PORT);
  if (v.help) return console.log(HELP);
  if (!v.run) throw new UsageError("--run RUN is required (a run folder, e.g. runs/demo)");
  const runDir = runFolder(v.run as string);
  await buildPage(runDir);
  const server = serveRun(runDir, v.port as number, (url) => {
    console.log(`serving ${runDir} at ${url} (Ctrl-C to stop)`);
  });
  await server.finished;
}

if (import.meta.main) await runCli(main);
