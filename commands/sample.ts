// Sampling from a trained run or a PyTorch file, `deno task sample (--run RUN [--ema] | --weights FILE) [--n 16]`.
import { dirname, join } from "node:path";
import { type BackendName, setBackend, setSeed } from "../kernels/backend.ts";
import { saveWeights } from "../weights/checkpoint.ts";
import { loadFile, loadRun } from "../run/trained.ts";
import { torchFileMetadata } from "../weights/pytorch.ts";
import { DEFAULTS, gridSampling } from "../run/config.ts";
import { Diffusion, type Sampler, toUint8 } from "../diffusion.ts";
import { helpText, numberFlag, readFlags, runCli, runFolder, UsageError } from "../run/cli.ts";
import { stepProgress } from "../run/progress.ts";
import { saveGrid } from "../utils.ts";
import { describeThreads, threadCount, Threads } from "../run/threads.ts";

const HELP = helpText(
  "sample",
  `Sample images from a trained run and save them as a PNG grid.

  deno task sample --run RUN [--n 16] [--labels 3,3,5] [--cfg-scale 3] [--ema] [--sampler ddim] [--to FILE]
  deno task sample --weights FILE [--image-size 64] ...`,
  {
    weights: "instead of --run",
    "image-size": "default: the run's, or the file's (our .safetensors say it; a .pt: 64, the tutorial's)",
    n: `default ${DEFAULTS.nSamples}; conditional: a row per class, n/classes per row`,
    "cfg-scale": "default: the run's",
    sampler: "default: the run's; a file: ddpm, the tutorial's",
    "sample-steps": `default: the run's if it samples with DDIM, else ${DEFAULTS.sampleSteps}; at most its T`,
    eta: "default: the run's if it samples with DDIM, else 0",
    "no-clip": "default: as the run's grids",
    to: "default RUN/samples/, or samples/ beside FILE",
  },
);

/** The flags of sample.ts; a bad value is a UsageError naming the flag. */
export function parseSampleArgs(args: string[]) {
  const v = readFlags("sample", args);
  if (!v.help && !v.run === !v.weights) {
    throw new UsageError("give --run RUN (a run folder, e.g. runs/demo) or --weights FILE");
  }
  if (v.weights && v.ema) {
    throw new UsageError("--ema: a PyTorch file holds one set of weights (the EMA ones, if saved so)");
  }
  const imageSize = v["image-size"] as number | undefined;
  if (imageSize && imageSize % 8) throw new UsageError(`--image-size ${imageSize}: must be divisible by 8`);
  return {
    help: !!v.help,
    run: v.run ? runFolder(v.run as string) : undefined,
    weights: v.weights as string | undefined,
    ema: !!v.ema,
    imageSize,
    n: v.n as number | undefined,
    labels: v.labels as string | undefined,
    cfgScale: v["cfg-scale"] as number | undefined,
    // the sampler's settings: default the run's (its grids'), checked against the model's T once it is loaded
    sampler: v.sampler as Sampler | undefined,
    sampleSteps: v["sample-steps"] as number | undefined,
    eta: v.eta as number | undefined,
    clip: v["no-clip"] ? false : undefined,
    seed: (v.seed ?? DEFAULTS.seed) as number,
    backend: (v.backend ?? DEFAULTS.backend) as BackendName,
    threads: (v.threads ?? DEFAULTS.threads) as number,
    to: v.to as string | undefined,
    raw: v.raw as string | undefined,
  };
}

async function main() {
  const o = parseSampleArgs(Deno.args);
  if (o.help) return console.log(HELP);
  const source = o.run ?? o.weights!;
  const backend = await setBackend(o.backend), count = threadCount(backend, o.threads);
  console.log(describeThreads(backend, count));
  const { model, config: c, classes } = o.run ? await loadRun(source, o.ema) : loadFile(source, o.imageSize);
  const config = { ...c, imageSize: o.imageSize ?? c.imageSize };
  if (o.weights && !o.imageSize && !torchFileMetadata(source).image_size) {
    console.log(`note: ${source} does not say its image size: ${config.imageSize} px, the tutorial's (--image-size N)`);
  }
  const k = model.numClasses;
  let labels: number[] | null = null;
  if (o.labels !== undefined) {
    if (!k) throw new UsageError(`--labels: ${source} is an unconditional model`);
    labels = o.labels.split(",").map((s) => numberFlag("labels", s.trim(), [0, k - 1])!);
  } else if (k) { // one row per class
    const perClass = Math.ceil((o.n ?? k) / k);
    labels = Array.from({ length: k * perClass }, (_, i) => Math.floor(i / perClass));
  }
  const n = labels?.length ?? o.n ?? DEFAULTS.nSamples;
  const diffusion = new Diffusion(config);
  const sampler = o.sampler ?? config.sampler ?? DEFAULTS.sampler, grid = gridSampling(config); // as the run's grids
  const sampleSteps = numberFlag("sample-steps", o.sampleSteps, [1, config.noiseSteps]) ?? grid.sampleSteps;
  const t0 = performance.now(), progress = stepProgress(diffusion.stepCount(sampler, sampleSteps), "sampling");
  const threads = count > 1 ? await Threads.start(count, model) : null;
  setSeed(o.seed); // after the model is made: the seed alone fixes the noise (as in the run's page)
  const x0 = await diffusion.sampleX0(threads?.noiseModel(model) ?? model, n, {
    labels,
    cfgScale: o.cfgScale ?? config.cfgScale,
    sampler,
    sampleSteps,
    eta: o.eta ?? grid.eta,
    clip: o.clip ?? grid.clip,
    onStep: progress.step,
  }).finally(() => threads?.close());
  progress.done();
  if (o.raw) await saveWeights(o.raw, new Map([["samples", x0]]));
  const pixels = await toUint8(x0);
  const name = `sample_${new Date().toISOString().replace(/[:.]/g, "-")}.png`;
  const out = o.to?.endsWith(".png") ? o.to : join(o.to ?? join(o.run ?? dirname(source), "samples"), name);
  await saveGrid(out, pixels, n, config.imageSize, k && !o.labels ? n / k : undefined);
  const what = labels ? ` of ${labels.map((l) => classes[l]).join(", ")}` : "";
  const seconds = ((performance.now() - t0) / 1000).toFixed(1);
  console.log(`${n} samples${what} in ${seconds} s, seed ${o.seed} (--seed ${o.seed} draws them again) -> ${out}`);
}

if (import.meta.main) await runCli(main);
