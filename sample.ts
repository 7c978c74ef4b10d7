// Command (not needed to follow the paper): sampling from a trained run or a PyTorch file, `deno task sample (--run RUN
// [--ema] | --weights FILE) [--n 16]`.
import { dirname, join } from "node:path";
import { BACKENDS, setBackend, setSeed } from "./backend.ts";
import { loadFile, loadRun, saveWeights } from "./checkpoint.ts";
import { Diffusion, toUint8 } from "./diffusion.ts";
import { choiceFlag, numberFlag, parseFlags, runCli, runFolder, UsageError } from "./cli.ts";
import { stepProgress } from "./progress.ts";
import { saveGrid } from "./utils.ts";

const HELP = `Sample images from a trained run and save them as a PNG grid.

  deno task sample --run RUN [--n 16] [--labels 3,3,5] [--cfg-scale 3] [--ema] [--sampler ddim] [--out FILE]
  deno task sample --weights FILE [--image-size 64] ...

  --run RUN        run folder (or its name under runs/)
  --weights FILE   a PyTorch file of the tutorial's UNet / UNet_conditional (.pt, .pth, .safetensors)
  --image-size N   (--weights: default 64, the tutorial's; a run: its own)
  --n N            number of images (default 16; conditional: a row per class, n/classes per row)
  --labels L       comma-separated class indices (conditional runs)
  --cfg-scale X    classifier-free guidance scale (default: the run's)
  --ema            use the EMA weights
  --sampler NAME   ddpm (Algorithm 2, all T steps; default) | ddim
  --sample-steps N DDIM steps (default 50)       --eta X   DDIM's η (default 0: deterministic)
  --no-clip        do not clip the predicted x̂_0 to [-1, 1] at each step
  --seed N         the seed of x_T and of every step's noise (default: the clock)
  --backend NAME   auto | tensorflow | webgpu | wasm | cpu
  --out PATH       output PNG, or a folder for it (default RUN/samples/, or samples/ beside FILE)
  --raw FILE       also save x_0 as floats (NHWC, tensor "samples" in the checkpoint format)`;

async function main() {
  const v = parseFlags(Deno.args, {
    run: { type: "string" },
    weights: { type: "string" },
    "image-size": { type: "string" },
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
    raw: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (v.help) return console.log(HELP);
  if (!v.run === !v.weights) throw new UsageError("give --run RUN (a run folder, e.g. runs/demo) or --weights FILE");
  if (v.weights && v.ema) {
    throw new UsageError("--ema: a PyTorch file holds one set of weights (the EMA ones, if saved so)");
  }
  const imageSize = numberFlag("image-size", v["image-size"], 8, 4096);
  if (imageSize && imageSize % 8) throw new UsageError(`--image-size ${imageSize}: must be divisible by 8`);
  const source = (v.run ? runFolder(v.run as string) : v.weights) as string;
  const backend = choiceFlag("backend", v.backend, BACKENDS) ?? "auto";
  const cfgScale = numberFlag("cfg-scale", v["cfg-scale"], 0, 100, false);
  const sampler = choiceFlag("sampler", v.sampler, ["ddpm", "ddim"] as const) ?? "ddpm";
  const eta = numberFlag("eta", v.eta, 0, 1, false) ?? 0;
  const nFlag = numberFlag("n", v.n, 1, 1024);
  const seed = numberFlag("seed", v.seed, 0, 2 ** 31 - 1) ?? Date.now() % 2 ** 31;
  console.log(`backend ${await setBackend(backend)}`);
  const { model, config: c, classes } = v.run ? await loadRun(source, !!v.ema) : loadFile(source, imageSize);
  const config = { ...c, imageSize: imageSize ?? c.imageSize };
  const k = model.numClasses;
  let labels: number[] | null = null;
  if (v.labels !== undefined) {
    if (!k) throw new UsageError(`--labels: ${source} is an unconditional model`);
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
  setSeed(seed); // after the model is made: the seed alone fixes the noise (as in the run's page)
  const x0 = await diffusion.sampleX0(model, n, {
    labels,
    cfgScale: cfgScale ?? config.cfgScale,
    sampler,
    sampleSteps,
    eta,
    clip: !v["no-clip"],
    onStep: progress.step,
  });
  progress.done();
  if (v.raw) await saveWeights(v.raw as string, new Map([["samples", x0]]));
  const pixels = await toUint8(x0);
  const name = `sample_${new Date().toISOString().replace(/[:.]/g, "-")}.png`;
  const outFlag = v.out as string | undefined;
  const out = outFlag?.endsWith(".png")
    ? outFlag
    : join(outFlag ?? join(v.run ? source : dirname(source), "samples"), name);
  await saveGrid(out, pixels, n, config.imageSize, k && !v.labels ? n / k : undefined);
  const what = labels ? ` of ${labels.map((l) => classes[l]).join(", ")}` : "";
  console.log(`${n} samples${what} in ${((performance.now() - t0) / 1000).toFixed(1)} s -> ${out}`);
}

if (import.meta.main) await runCli(main);
