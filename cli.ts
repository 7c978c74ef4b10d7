// Support file (not needed to follow the paper): the command line, the run's settings (Config), the tutorial's presets,
// flag parsing and error reporting.
import { basename, dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { type BackendName, BACKENDS } from "./backend.ts";
import type { Sampler, Schedule } from "./diffusion.ts";
import { DataError } from "./datasets.ts";
import { CheckpointError } from "./weights.ts";

export interface Config {
  data: string; // "builtin:landscapes", "builtin:shapes", "cifar10" or a folder
  out: string; // runs folder; the run is out/name
  name: string;
  epochs: number;
  maxSteps: number; // stop after this many steps in all (0 = no limit)
  batchSize: number;
  imageSize: number;
  width: number;
  lr: number;
  noiseSteps: number;
  schedule: Schedule; // linear (the tutorial's) or cosine
  backend: BackendName;
  seed: number;
  sampleEvery: number; // epochs between sample grids
  nSamples: number;
  cfgScale: number;
  sampler: Sampler; // for the sample grids: ddpm (all T steps) or ddim
  sampleSteps: number; // ddim's steps
  eta: number; // ddim's η (0 = deterministic)
  clip: boolean; // clip the predicted x̂_0 to [-1, 1] while sampling
  conditional: boolean;
  labelDrop: number; // share of steps trained without labels (for CFG)
  emaBeta: number; // 0 = no EMA model
  emaStart: number;
  count: number; // images to load (0 = all)
  cacheDir?: string; // CIFAR-10 files and the decoded image folders (default ~/.cache/ddpm-deno)
  noCache?: boolean; // decode an image folder without its disk cache
  weights?: string; // the initial weights: a PyTorch file of the tutorial's U-Net (.pt, .pth, .safetensors)
  removeDeepConv?: boolean; // the tutorial's later U-Net variant without bot2 (set from --weights)
}

export const PRESETS: Record<string, Partial<Config>> = {
  // the tutorial's unconditional run (ddpm.py), on landscapes at 64 px
  landscape: { data: "builtin:landscapes", name: "landscape", imageSize: 64, batchSize: 12, epochs: 500, width: 64 },
  // the tutorial's conditional run (ddpm_conditional.py): CIFAR-10 at 64 px with CFG and EMA
  cifar: {
    data: "cifar10",
    name: "cifar",
    imageSize: 64,
    batchSize: 14,
    epochs: 300,
    width: 64,
    conditional: true,
    emaBeta: 0.995,
  },
  // minutes on a laptop CPU: small images and width, a higher lr, EMA, stochastic DDIM (η = 1) sample grids
  demo: {
    data: "builtin:landscapes",
    name: "demo",
    imageSize: 16,
    width: 16,
    batchSize: 16,
    epochs: 8,
    count: 2000,
    lr: 1e-3,
    emaBeta: 0.995,
    emaStart: 100,
    sampleEvery: 4,
    nSamples: 36,
    sampler: "ddim",
    sampleSteps: 100,
    eta: 1,
  },
};

export const DEFAULTS: Config = {
  data: "builtin:landscapes",
  out: "runs",
  name: "run",
  epochs: 500,
  maxSteps: 0,
  batchSize: 12,
  imageSize: 64,
  width: 64,
  lr: 3e-4,
  noiseSteps: 1000,
  schedule: "linear",
  backend: "auto",
  seed: 0,
  sampleEvery: 10,
  nSamples: 16,
  cfgScale: 3,
  sampler: "ddpm",
  sampleSteps: 50,
  eta: 0,
  clip: true,
  conditional: false,
  labelDrop: 0.1,
  emaBeta: 0,
  emaStart: 2000,
  count: 0,
};

export const flagOf = (key: string) => "--" + key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());

export const HELP = `Train a DDPM (the "DDPM from scratch" tutorial) on Deno.

  deno task train:landscape [--data DIR]   unconditional, 64 px (tutorial defaults)
  deno task train:cifar [--data DIR]       conditional CIFAR-10, 64 px, CFG + EMA
  deno task demo                           a few minutes on a CPU, built-in landscapes

Options (defaults from --preset, then these):
  --preset NAME        landscape | cifar | demo
  --data SPEC          builtin:landscapes | builtin:shapes | cifar10 | a folder of images
  --out DIR            runs folder (default runs)      --name NAME   run name (default: the preset's)
  --epochs N           --max-steps N (0 = no limit)    --batch-size N
  --image-size N       (divisible by 8)                --width N     U-Net base width (64)
  --lr X               AdamW learning rate (3e-4)      --noise-steps N (1000)
  --schedule NAME      linear (the tutorial's) | cosine (Nichol & Dhariwal)
  --backend NAME       auto | tensorflow | webgpu | wasm | cpu
  --seed N             makes a run repeatable on the same backend
  --sample-every N     epochs between sample grids     --n-samples N   --cfg-scale X
  --sampler NAME       ddpm (all T steps) | ddim       --sample-steps N (ddim, 50)  --eta X (ddim, 0)
  --no-clip            do not clip the predicted x̂_0 to [-1, 1] while sampling (the tutorial does not)
  --conditional        train with labels (class sub-folders)  --label-drop X (0.1)
  --ema-beta X         0 = no EMA model                --ema-start N  (steps of EMA warm-up)
  --count N            load at most N images
  --cache-dir DIR      CIFAR-10 files and decoded image folders (default ~/.cache/ddpm-deno, or $DDPM_CACHE)
  --no-cache           decode an image folder afresh (default: from its cache where files are unchanged)
  --weights FILE       start from a PyTorch file of the tutorial's UNet (.pt, .pth, .safetensors; width from it)
  --resume RUN         continue a run folder from its last checkpoint
  --help`;

/** A bad flag or value: exit code 2. */
export class UsageError extends Error {}

/** The run cannot go on (a non-finite loss): exit code 1. */
export class TrainingError extends Error {}

const CHOICES: [keyof Config, readonly string[]][] = [
  ["backend", BACKENDS],
  ["sampler", ["ddpm", "ddim"]],
  ["schedule", ["linear", "cosine"]],
];

const NUMBERS: [keyof Config, string, number, number, boolean][] = [
  // key, flag, min, max, integer
  ["epochs", "epochs", 1, 1e9, true],
  ["maxSteps", "max-steps", 0, 1e12, true],
  ["batchSize", "batch-size", 1, 4096, true],
  ["imageSize", "image-size", 8, 4096, true],
  ["width", "width", 4, 4096, true],
  ["lr", "lr", 0, 10, false],
  ["noiseSteps", "noise-steps", 1, 100000, true],
  ["seed", "seed", 0, 2 ** 31 - 1, true],
  ["sampleEvery", "sample-every", 1, 1e9, true],
  ["nSamples", "n-samples", 1, 1024, true],
  ["cfgScale", "cfg-scale", 0, 100, false],
  ["sampleSteps", "sample-steps", 1, 100000, true],
  ["eta", "eta", 0, 1, false],
  ["emaBeta", "ema-beta", 0, 0.999999, false],
  ["emaStart", "ema-start", 0, 1e12, true],
  ["labelDrop", "label-drop", 0, 1, false],
  ["count", "count", 0, 1e9, true],
];

// ------------------------------------------------------------------ flag helpers (train, sample, eval)

type Options = Record<string, { type: "string" | "boolean"; short?: string }>;

/** node:util parseArgs, with an unknown flag or a missing value as a UsageError. */
export function parseFlags(args: string[], options: Options): Record<string, string | boolean | undefined> {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values;
  } catch (e) {
    throw new UsageError((e as Error).message.split("\n")[0] + " (see --help)");
  }
}

/** A numeric flag's value (undefined when not given), or a UsageError naming the flag and the range. */
export function numberFlag(flag: string, s: string | boolean | undefined, min: number, max: number, integer = true) {
  if (s === undefined) return undefined;
  const x = Number(s);
  if (!Number.isFinite(x) || (integer && !Number.isInteger(x)) || x < min || x > max) {
    throw new UsageError(`--${flag} ${s}: expected ${integer ? "an integer" : "a number"} in [${min}, ${max}]`);
  }
  return x;
}

/** A flag that takes one of `choices` (undefined when not given). */
export function choiceFlag<C extends string>(flag: string, s: string | boolean | undefined, choices: readonly C[]) {
  if (s === undefined) return undefined;
  if (!choices.includes(s as C)) throw new UsageError(`--${flag} ${s}: use one of ${choices.join(", ")}`);
  return s as C;
}

/** A run given by folder, or by name under `out`. */
export const runFolder = (run: string, out = "runs") => run.includes("/") ? run : join(out, run);

/** Flags to a Config; any bad value is a UsageError naming the flag. */
export function parseConfig(
  args: string[],
): { config: Config; resume: boolean; help: boolean; given: (keyof Config)[] } {
  const values = parseFlags(
    args,
    Object.fromEntries([
      ...NUMBERS.map(([, flag]) => [flag, { type: "string" }]),
      ...["preset", "data", "out", "name", "resume", "cache-dir", "weights", ...CHOICES.map(([k]) => k)].map((f) => [
        f,
        { type: "string" },
      ]),
      ["conditional", { type: "boolean" }],
      ["no-clip", { type: "boolean" }],
      ["no-cache", { type: "boolean" }],
      ["help", { type: "boolean", short: "h" }],
    ]),
  );
  const preset = values.preset as string | undefined;
  if (preset && !PRESETS[preset]) {
    throw new UsageError(`--preset ${preset}: use one of ${Object.keys(PRESETS).join(", ")}`);
  }
  const config: Config = { ...DEFAULTS, ...(preset ? PRESETS[preset] : {}) };
  for (const [key, flag, min, max, integer] of NUMBERS) {
    const v = numberFlag(flag, values[flag], min, max, integer);
    if (v !== undefined) (config as unknown as Record<string, number>)[key] = v;
  }
  for (const [key, flag] of [["data", "data"], ["out", "out"], ["name", "name"], ["cacheDir", "cache-dir"]] as const) {
    if (values[flag] !== undefined) config[key] = values[flag] as string;
  }
  if (values.weights !== undefined) config.weights = values.weights as string;
  if (values.conditional) config.conditional = true;
  if (values["no-clip"]) config.clip = false;
  if (values["no-cache"]) config.noCache = true;
  for (const [key, choices] of CHOICES) {
    const v = choiceFlag(key, values[key], choices);
    if (v !== undefined) (config as unknown as Record<string, string>)[key] = v;
  }
  if (config.imageSize % 8) {
    throw new UsageError(`--image-size ${config.imageSize}: must be divisible by 8 (the U-Net halves it 3 times)`);
  }
  if (config.width % 4) throw new UsageError(`--width ${config.width}: must be divisible by 4 (4 attention heads)`);
  const resume = values.resume as string | undefined;
  if (resume && config.weights) throw new UsageError("--weights starts a new run; --resume continues one: give one");
  if (resume) {
    const dir = runFolder(resume, config.out);
    [config.out, config.name] = [dirname(dir), basename(dir)];
  }
  const keys: (keyof Config)[] = [
    ...NUMBERS.map(([k]) => k),
    ...CHOICES.map(([k]) => k),
    "data",
    "cacheDir",
    "conditional",
  ];
  const given = keys.filter((k) => values[flagOf(k).slice(2)] !== undefined);
  if (values["no-clip"]) given.push("clip");
  if (values["no-cache"]) given.push("noCache");
  return { config, resume: !!resume, help: !!values.help, given };
}

/** Runs `main` and turns the errors a user can fix into one line and an exit code (2: usage, 1: input). */
export async function runCli(main: () => Promise<void>) {
  try {
    await main();
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`error: ${e.message}`);
      Deno.exit(2);
    }
    if (e instanceof DataError || e instanceof CheckpointError || e instanceof TrainingError) {
      console.error(`error: ${e.message}`);
      Deno.exit(1);
    }
    if (Object.values(Deno.errors).some((E) => e instanceof E)) { // file system: the message names the path
      console.error(`error: ${(e as Error).message}`);
      Deno.exit(1);
    }
    throw e;
  }
}
