// What a run shows: sample grids, the loss curve, index.html, and the progress line.
import { join } from "node:path";
import { getSeedState, setSeed } from "./backend.ts";
import { readState } from "./checkpoint.ts";
import type { Config } from "./cli.ts";
import type { Diffusion } from "./diffusion.ts";
import type { UNet } from "./modules.ts";
import { saveGrid, savePlot } from "./utils.ts";

export async function readLossRows(runDir: string): Promise<{ step: number; epoch: number; loss: number }[]> {
  const text = await Deno.readTextFile(join(runDir, "loss.jsonl")).catch(() => "");
  return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
}

class Interrupted extends Error {}

/** Sample grids of the model (and of the EMA model): one row per class for a conditional model. */
export async function sampleGrids(
  config: Config,
  diffusion: Diffusion,
  model: UNet,
  emaModel: UNet | null,
  classes: string[],
  runDir: string,
  label: string,
  log: (l: string) => void,
  stopped: () => boolean, // a Ctrl-C: give up sampling
) {
  const k = model.numClasses, n = config.nSamples;
  const cols = k ? Math.max(1, Math.round(n / k)) : Math.ceil(Math.sqrt(n));
  const labels = k ? Array.from({ length: cols * k }, (_, i) => Math.floor(i / cols)) : null;
  const count = labels?.length ?? n;
  const trainingSeeds = getSeedState(); // sample grids draw from their own seed: comparable across epochs
  for (const [m, suffix] of [[model, ""], [emaModel, "_ema"]] as const) {
    if (!m) continue;
    setSeed(config.seed + 1);
    const t0 = performance.now();
    const pixels = await diffusion.sample(m, count, {
      labels,
      cfgScale: config.cfgScale,
      sampler: config.sampler,
      sampleSteps: config.sampleSteps,
      eta: config.eta,
      clip: config.clip ?? true,
      onStep: (i) => {
        if (stopped()) throw new Interrupted();
        if (Deno.stdout.isTerminal() && i % 10 === 0) {
          Deno.stdout.writeSync(new TextEncoder().encode(`\rsampling${suffix}: ${i} steps left\x1b[K`));
        }
      },
    }).catch((e) => {
      if (e instanceof Interrupted) return null;
      throw e;
    });
    setSeed(trainingSeeds);
    if (!pixels) return;
    if (Deno.stdout.isTerminal()) Deno.stdout.writeSync(new TextEncoder().encode("\r\x1b[K"));
    const path = join(runDir, "samples", `${label}${suffix}.png`);
    await saveGrid(path, pixels, count, config.imageSize, cols);
    log(
      `samples${k ? ` (rows: ${classes.join(", ")})` : ""} -> ${path} (${
        ((performance.now() - t0) / 1000).toFixed(0)
      } s)`,
    );
  }
}

/** loss.png and index.html: the samples, the loss curve and the scores (eval.json) on one page. */
export async function writeReport(runDir: string) {
  const losses = (await readLossRows(runDir)).map((r) => r.loss);
  const { config } = await readState(runDir);
  if (losses.length) await savePlot(join(runDir, "loss.png"), losses, { title: "training loss (MSE)", xlabel: "step" });
  const grids = [...Deno.readDirSync(join(runDir, "samples"))].map((e) => e.name).filter((f) => f.endsWith(".png"))
    .sort().reverse();
  const scores = await Deno.readTextFile(join(runDir, "eval.json")).catch(() => null);
  const esc = (s: string) => s.replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
  const html = `<!doctype html><meta charset="utf-8"><title>${esc(config.name)}</title>
<style>body{font:14px system-ui;margin:2em}img{image-rendering:pixelated;margin:4px;border:1px solid #ccc}
figure{display:inline-block;margin:8px}</style>
<h1>${esc(config.name)}</h1><p>${esc(JSON.stringify(config))}</p>
<h2>Loss (${losses.length} steps, last ${losses.at(-1)?.toFixed(4) ?? "-"})</h2><img src="loss.png">
${scores ? `<h2>Scores (deno task eval)</h2><pre>${esc(scores)}</pre>` : ""}
<h2>Samples</h2>${
    grids.map((g) =>
      `<figure><img src="samples/${g}" width="${Math.min(512, 8 * config.imageSize)}">
<figcaption>${esc(g)}</figcaption></figure>`
    ).join("\n")
  }`;
  await Deno.writeTextFile(join(runDir, "index.html"), html);
}

/** One progress line: step, loss (smoothed), images/s and ETA; redrawn on a terminal, every 5 s otherwise. */
export class Progress {
  private t0 = performance.now();
  private last = 0;
  private steps = 0;
  private smooth = NaN;
  private tty = Deno.stdout.isTerminal();
  constructor(readonly total: number, readonly batch: number, readonly log: (l: string) => void) {}
  update(step: number, epoch: number, epochs: number, loss: number) {
    this.steps++;
    this.smooth = Number.isNaN(this.smooth) ? loss : 0.98 * this.smooth + 0.02 * loss;
    const now = performance.now();
    if (now - this.last < (this.tty ? 200 : 5000) && step < this.total) return;
    this.last = now;
    const perStep = (now - this.t0) / 1000 / this.steps;
    const line = `epoch ${epoch}/${epochs} step ${step}/${this.total} loss ${this.smooth.toFixed(4)} ` +
      `${(this.batch / perStep).toFixed(1)} img/s ETA ${duration(perStep * (this.total - step))}`;
    if (this.tty) Deno.stdout.writeSync(new TextEncoder().encode(`\r${line}\x1b[K`));
    else this.log(line);
  }
  done() {
    if (this.tty && this.steps) Deno.stdout.writeSync(new TextEncoder().encode("\n"));
  }
}

const duration = (s: number) =>
  s >= 3600
    ? `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`
    : s >= 60
    ? `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, "0")}s`
    : `${Math.round(s)}s`;
