// Sampling from a trained run: `deno task sample --run RUN [--n 16] [--labels 3,3,5] [--cfg-scale 3] [--ema]`.
import { join } from "node:path";
import { BACKENDS, setBackend, setSeed } from "./backend.ts";
import { assignWeights, CheckpointError, readState } from "./checkpoint.ts";
import { Diffusion } from "./diffusion.ts";
import { UNet } from "./modules.ts";
import { choiceFlag, numberFlag, parseFlags, runCli, runFolder, UsageError } from "./cli.ts";
import { stepProgress } from "./progress.ts";
import { saveGrid } from "./utils.ts";

/** The model of a run's newest checkpoint (its EMA copy with `ema`), with the run's config and classes. */
export async function loadRun(runDir: string, ema = false) {
  const file = ema ? "ema.bin" : "model.bin";
  if (ema && !(await readState(runDir)).config.emaBeta) {
    throw new CheckpointError(`${runDir} was trained without EMA (--ema-beta 0)`);
  }
  const state = await readState(runDir, ["state.json", file]);
  const model = new UNet({
    width: state.config.width,
    numClasses: state.config.conditional ? state.classes.length : 0,
  });
  assignWeights(join(state.dir!, file), model.weights);
  return { model, config: state.config, classes: state.classes };
}

const HELP = `Sample images from a trained run and save them as a PNG grid.

  deno task sample --run RUN [--n 16] [--labels 3,3,5] [--cfg-scale 3] [--ema] [--sampler ddim] [--out FILE]

  --run RUN        run folder (or its name under runs/)
  --n N            number of images (default 16; conditional: a row per class, n/classes per row)
  --labels L       comma-separated class indices (conditional runs)
  --cfg-scale X    classifier-free guidance scale (default: the run's)
  --ema            use the EMA weights
  --sampler NAME   ddpm (Algorithm 2, all T steps; default) | ddim
  --sample-steps N DDIM steps (default 50)       --eta X   DDIM's η (default 0: deterministic)
  --no-clip        do not clip the predicted x̂_0 to [-1, 1] at each step
  --backend NAME   auto | tensorflow | webgpu | wasm | cpu
  --out FILE       output PNG (default RUN/samples/sample_<time>.png)`;

async function main() {
  const v = parseFlags(Deno.args, {
    run: { type: "string" },
    n: { type: "string" },
    labels: { type: "string" },
    "cfg-scale": { type: "string" },
    ema: { type: "boolean" },
    sampler: { type: "string" },
    "sample-steps": { type: "string" },
    eta: { type: "string" },
    "no-clip": { type: "boolean" },
    seed: { type: "string" },
    backend: { type: "string" },
    out: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (v.help) return console.log(HELP);
  if (!v.run) throw new UsageError("--run RUN is required (a run folder, e.g. runs/demo)");
  const runDir = runFolder(v.run as string);
  const backend = choiceFlag("backend", v.backend, BACKENDS) ?? "auto";
  const cfgScale = numberFlag("cfg-scale", v["cfg-scale"], 0, 100, false);
  const sampler = choiceFlag("sampler", v.sampler, ["ddpm", "ddim"] as const) ?? "ddpm";
  const eta = numberFlag("eta", v.eta, 0, 1, false) ?? 0;
  const nFlag = numberFlag("n", v.n, 1, 1024);
  console.log(`backend ${await setBackend(backend)}`);
  setSeed(numberFlag("seed", v.seed, 0, 2 ** 31 - 1) ?? Date.now() % 2 ** 31);
  const { model, config, classes } = await loadRun(runDir, !!v.ema);
  const k = model.numClasses;
  let labels: number[] | null = null;
  if (v.labels !== undefined) {
    if (!k) throw new UsageError(`--labels: ${runDir} is an unconditional model`);
    labels = (v.labels as string).split(",").map((s) => numberFlag("labels", s.trim(), 0, k - 1)!);
  } else if (k) { // one row per class
    const perClass = Math.ceil((nFlag ?? k) / k);
    labels = Array.from({ length: k * perClass }, (_, i) => Math.floor(i / perClass));
  }
  const n = labels?.length ?? nFlag ?? 16;
  const diffusion = new Diffusion({
    noiseSteps: config.noiseSteps,
    imgSize: config.imageSize,
    schedule: config.schedule,
  });
  const sampleSteps = numberFlag("sample-steps", v["sample-steps"], 1, config.noiseSteps) ?? 50;
  const t0 = performance.now(), progress = stepProgress(diffusion.stepCount(sampler, sampleSteps), "sampling");
  const pixels = await diffusion.sample(model, n, {
    labels,
    cfgScale: cfgScale ?? config.cfgScale,
    sampler,
    sampleSteps,
    eta,
    clip: !v["no-clip"],
    onStep: progress.step,
  });
  progress.done();
  const out = (v.out as string | undefined) ??
    join(runDir, "samples", `sample_${new Date().toISOString().replace(/[:.]/g, "-")}.png`);
  await saveGrid(out, pixels, n, config.imageSize, k && !v.labels ? n / k : undefined);
  const what = labels ? ` of ${labels.map((l) => classes[l]).join(", ")}` : "";
  console.log(`${n} samples${what} in ${((performance.now() - t0) / 1000).toFixed(1)} s -> ${out}`);
}

if (import.meta.main) await runCli(main);
