// What a run shows, sample grids, the loss curve, index.html, and the progress line.
import { join } from "node:path";
import { getSeedState, mulberry32, setSeed } from "../kernels/backend.ts";
import { readState } from "./trained.ts";
import { type Config, gridSampling } from "./config.ts";
import type { Diffusion } from "../diffusion.ts";
import type { UNet } from "../modules.ts";
import type { Threads } from "./threads.ts";
import { Progress, SLOW_GRID_SECONDS, SlowCheck, slowGridHint, stepProgress } from "./progress.ts";
import { lossSvg, savePlot } from "./plot.ts";
import { type Dataset, saveGrid } from "../utils.ts";

export { Progress };

export async function readLossRows(runDir: string): Promise<{ step: number; epoch: number; loss: number }[]> {
  const text = await Deno.readTextFile(join(runDir, "loss.jsonl")).catch(() => "");
  return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
}

class Interrupted extends Error {}

/** RUN/data.png: a row of `n` training images as the model sees them, for the page's forward-process view. */
export async function saveDataImages(runDir: string, data: Dataset, seed: number, n = 8) {
  const batch = data.batches(n, mulberry32(seed)).next().value;
  if (!batch) return;
  const pixels = Uint8Array.from(
    batch.x as ArrayLike<number>,
    (v) => Math.round((Math.min(1, Math.max(-1, v)) + 1) * 127.5),
  );
  await saveGrid(join(runDir, "data.png"), pixels, batch.n, data.size, batch.n);
}

export interface GridOptions {
  config: Config; // nSamples, the sampler's settings, seed (the grids draw from seed + 1), imageSize
  diffusion: Diffusion;
  model: UNet;
  emaModel: UNet | null;
  classes: string[];
  runDir: string; // grids go to runDir/samples/<label>.png and <label>_ema.png
  label: string;
  log: (l: string) => void;
  stopped: () => boolean; // a Ctrl-C: give up sampling
  threads?: Threads | null; // the CPU threads that share each forward pass
}

/** Sample grids of the model (and of the EMA model): one row per class for a conditional model. */
export async function sampleGrids(
  { config, diffusion, model, emaModel, classes, runDir, label, log, stopped, threads }: GridOptions,
) {
  const k = model.numClasses, n = config.nSamples;
  const cols = k ? Math.max(1, Math.round(n / k)) : Math.ceil(Math.sqrt(n));
  const labels = k ? Array.from({ length: cols * k }, (_, i) => Math.floor(i / cols)) : null;
  const count = labels?.length ?? n;
  const trainingSeeds = getSeedState(); // sample grids draw from their own seed: comparable across epochs
  for (const [m, suffix] of [[model, ""], [emaModel, "_ema"]] as const) {
    if (!m) continue;
    setSeed(config.seed + 1);
    const t0 = performance.now(), steps = diffusion.stepCount(config.sampler, config.sampleSteps);
    const progress = stepProgress(steps, `sampling${suffix}`, log);
    const slow = new SlowCheck(steps, SLOW_GRID_SECONDS, (left) => {
      progress.done();
      log(slowGridHint(left, steps, config.sampler));
    });
    let done = 0;
    const pixels = await diffusion.sample(threads?.noiseModel(m) ?? m, count, {
      labels,
      cfgScale: config.cfgScale,
      sampler: config.sampler,
      sampleSteps: config.sampleSteps,
      eta: config.eta,
      clip: config.clip ?? true,
      onStep: () => {
        if (stopped()) throw new Interrupted();
        progress.step();
        slow.seen(++done);
      },
    }).catch((e) => {
      if (e instanceof Interrupted) return null;
      throw e;
    }).finally(() => progress.done());
    setSeed(trainingSeeds);
    if (!pixels) return;
    const path = join(runDir, "samples", `${label}${suffix}.png`);
    await saveGrid(path, pixels, count, config.imageSize, cols);
    log(
      `samples${k ? ` (rows: ${classes.join(", ")})` : ""} -> ${path} (${
        ((performance.now() - t0) / 1000).toFixed(0)
      } s)`,
    );
  }
}

const esc = (s: unknown) => String(s).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);

/** eval.json as a table, with the real-vs-real row first (its raw text if it is not the expected shape). */
function scoresHtml(text: string): string {
  try {
    const r = JSON.parse(text), pct = (x: number) => `${(100 * x).toFixed(1)} %`, f = r.reference ?? {};
    const cells = (x: Record<string, never>) =>
      `<td>${x.n}</td><td>${x.frechetDistance}${x.meanTerm === undefined ? "" : ` (‖μ1-μ2‖² ${x.meanTerm})`}</td><td>${
        x.precision ?? "-"
      }</td><td>${x.recall ?? "-"}</td>`;
    const accuracy = (x?: { total: number } | number) =>
      x === undefined ? "-" : pct(typeof x === "number" ? x : x.total);
    const judged = f.judgeAccuracy !== undefined; // the independent judge's column (a run trained with --holdout)
    const judge = (x?: { total: number } | number, note = "") => judged ? `<td>${accuracy(x)}${note}</td>` : "";
    const floor = `<tr><td>real vs real</td><td>-</td>${cells({ ...f, n: f.n ?? "-" })}<td>${
      accuracy(f.classAccuracy)
    } (held out)</td>${judge(f.judgeAccuracy, " (held out)")}<td>-</td></tr>`;
    const rows = r.results.map((x: Record<string, never>) =>
      `<tr><td>${esc(x.weights ?? r.weights)}</td><td>${x.cfgScale ?? "-"}</td>${cells(x)}
<td>${accuracy(x.classAccuracy)}</td>${judge(x.judgeAccuracy)}<td>${x.seconds}</td></tr>`
    ).join("");
    const how = `step ${r.step}, ${r.sampler}${r.sampleSteps ? ` ${r.sampleSteps} steps η ${r.eta}` : ""}`;
    return `<p>${esc(how)}. ${esc(r.metric)} Precision and recall: k-NN (k = ${
      esc(f.k ?? 3)
    }, Kynkäänniemi et al. 2019) in the same features; higher is better.${
      f.draws ? ` Each score is the median over ${esc(f.draws)} random draws of the real sets.` : ""
    }</p>
<table><tr><th>weights</th><th>cfg scale</th><th>n</th><th>Fréchet distance</th><th>precision</th><th>recall</th>
<th>class accuracy</th>${judged ? "<th>independent judge</th>" : ""}<th>seconds</th></tr>${floor}${rows}</table>${
      r.judge?.what ? `<p>Independent judge: ${esc(r.judge.what)}.</p>` : ""
    }`;
  } catch {
    return `<pre>${esc(text)}</pre>`;
  }
}

/** The width and height of a PNG (its IHDR), to scale a grid by a whole number. */
const pngSize = (path: string) => {
  const header = new DataView(Deno.readFileSync(path).buffer);
  return [header.getUint32(16), header.getUint32(20)];
};

/**
 * loss.png and index.html, the run's page: the live forward and reverse processes (page.ts, once `deno task view`
 * has put page/page.js beside it), then the config, the loss curve, every sample grid and the scores (eval.json).
 */
export async function writeReport(runDir: string) {
  const rows = await readLossRows(runDir), losses = rows.map((r) => r.loss);
  const { config, step } = await readState(runDir);
  const grid = gridSampling(config); // the page's DDIM starts at the grids' settings
  if (losses.length) await savePlot(join(runDir, "loss.png"), losses, { title: "training loss (MSE)", xlabel: "step" });
  const grids = [...Deno.readDirSync(join(runDir, "samples"))].map((e) => e.name).filter((f) => f.endsWith(".png"))
    .sort().reverse();
  const scores = await Deno.readTextFile(join(runDir, "eval.json")).catch(() => null);
  const pairs = Object.entries(config).map(([k, v]) => `<th>${esc(k)}</th><td>${esc(v)}</td>`);
  const configRows = Array.from({ length: Math.ceil(pairs.length / 3) }, (_, i) => pairs.slice(3 * i, 3 * i + 3));
  const figures = grids.map((g) => {
    const [w, h] = pngSize(join(runDir, "samples", g)), scale = Math.max(1, Math.floor(Math.min(480 / w, 480 / h, 8)));
    return `<figure><img src="samples/${esc(g)}" width="${w * scale}"><figcaption>${esc(g)}</figcaption></figure>`;
  });
  const html = `<!doctype html><meta charset="utf-8"><title>${esc(config.name)} · DDPM</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;color:#222}
h2{border-bottom:1px solid #ddd;margin-top:1.6em}figure{display:inline-block;margin:6px 10px 6px 0;vertical-align:top}
figcaption{font-size:13px;color:#555;text-align:center}img,canvas{image-rendering:pixelated}
canvas{background:#fff;border:1px solid #ccc;display:block}table{border-collapse:collapse;font-size:13px}
th,td{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}th{color:#666;font-weight:normal}
.live{display:none}body.ready .live{display:block}body.ready .note{display:none}.note{background:#fff7e0;padding:.6em}
.plot text{font-size:11px;fill:#444}.plot .grid{stroke:#e4e4e4;shape-rendering:crispEdges}
.plot .axis{stroke:#222;fill:none;shape-rendering:crispEdges}.plot polyline{fill:none;stroke-linejoin:round}
.plot .raw{stroke:#aac3eb;stroke-width:1}.plot .smooth{stroke:#194bbe;stroke-width:2}
.controls label{margin-right:1em;white-space:nowrap}input[type=number]{width:5em}input[type=range]{width:28em}
#data canvas{display:inline-block;margin-right:4px;cursor:pointer}#data canvas.on{outline:3px solid #194bbe}
progress{width:28em}.error{color:#b00}
</style>
<h1>${esc(config.name)}</h1>
<p>step ${step} · data ${
    esc(config.data)
  } · ${config.imageSize} px · U-Net width ${config.width} · T = ${config.noiseSteps}
(${esc(config.schedule ?? "linear")}) · <span id="backend">the live parts run on tfjs in this page</span></p>
<p class="note" id="note">The forward and reverse processes below run the model in the browser: serve this folder with
<code>deno task view --run ${
    esc(runDir)
  }</code> (it puts the page's script, <code>page/page.js</code>, beside this file).</p>
<section class="live" id="forward"><h2>1 · Forward process: x_t = √ᾱ_t·x_0 + √(1-ᾱ_t)·ε</h2>
<p>Training images (click one):</p><div id="data"></div>
<div><figure><canvas id="f-x0"></canvas><figcaption>x_0</figcaption></figure><figure><canvas id="f-eps"></canvas>
<figcaption>ε ~ N(0, I)</figcaption></figure><figure><canvas id="f-xt"></canvas><figcaption id="f-cap">x_t</figcaption></figure></div>
<p class="controls"><label>t <input type="range" id="t" min="0" max="${config.noiseSteps}" value="0"></label>
<button id="new-eps">new ε</button></p><p id="f-stats"></p></section>
<section class="live" id="reverse"><h2>2 · Reverse process: from x_T ~ N(0, I) to x_0</h2>
<p class="controls"><label>sampler <select id="sampler"><option value="ddim">DDIM</option>
<option value="ddpm">DDPM (all T steps)</option></select></label><label>steps <input id="steps" type="number" min="1"
max="${config.noiseSteps}" value="${grid.sampleSteps}"></label><label>η <input id="eta" type="number" min="0" max="1" step="0.1"
value="${grid.eta}"></label><label>seed <input id="seed" type="number" min="0" value="0"></label><label>images <input id="n"
type="number" min="1" max="32" value="8"></label><span id="cond" hidden><label>class <select id="label"></select></label>
<label>cfg scale <input id="cfg" type="number" min="0" step="0.5" value="${config.cfgScale}"></label></span>
<label><input id="clip" type="checkbox"${grid.clip ? " checked" : ""}> clip x̂_0</label>
<button id="sample">Sample</button></p>
<p><progress id="progress" value="0" max="1"></progress> <span id="r-status"></span></p>
<figure><canvas id="r-xt"></canvas><figcaption id="r-cap">x_t</figcaption></figure>
<figure><canvas id="r-x0"></canvas><figcaption>x̂_0, the x_0 that step predicts (Eq. 15)</figcaption></figure>
<p class="controls"><label>replay <input type="range" id="scrub" min="0" max="0" value="0" disabled></label></p></section>
<h2>3 · The run</h2>
<table>${configRows.map((r) => `<tr>${r.join("")}</tr>`).join("\n")}</table>
<h3>Training loss (${losses.length} steps, last ${losses.at(-1)?.toFixed(4) ?? "-"})</h3>
${lossSvg(rows)}<p><a href="loss.png">loss.png</a> · <a href="loss.jsonl">loss.jsonl</a></p>
${scores ? `<h3>Scores (deno task eval)</h3>${scoresHtml(scores)}` : ""}
<h3 id="grids">Sample grids (newest first)</h3>${figures.join("\n")}
<script type="module" src="page/page.js"></script>
`;
  await Deno.writeTextFile(join(runDir, "index.html"), html);
}
