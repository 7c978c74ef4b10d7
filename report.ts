// What a run shows: sample grids, the loss curve, index.html, and the progress line.
import { join } from "node:path";
import { getSeedState, setSeed } from "./backend.ts";
import { readState } from "./checkpoint.ts";
import type { Config } from "./cli.ts";
import type { Diffusion } from "./diffusion.ts";
import type { UNet } from "./modules.ts";
import { Progress, stepProgress } from "./progress.ts";
import { saveGrid, savePlot } from "./utils.ts";

export { Progress };

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
    const t0 = performance.now(), steps = diffusion.stepCount(config.sampler, config.sampleSteps);
    const progress = stepProgress(steps, `sampling${suffix}`, log);
    const pixels = await diffusion.sample(m, count, {
      labels,
      cfgScale: config.cfgScale,
      sampler: config.sampler,
      sampleSteps: config.sampleSteps,
      eta: config.eta,
      clip: config.clip ?? true,
      onStep: () => {
        if (stopped()) throw new Interrupted();
        progress.step();
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
