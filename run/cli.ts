// The command line: one table of flags for train, sample and eval (parsing, ranges, choices, --help), and errors as
// one line with an exit code.
import { basename, dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { BackendError, BACKENDS } from "../kernels/backend.ts";
import { DataError } from "../data/datasets.ts";
import { CheckpointError } from "../weights/weights.ts";
import { type Config, DEFAULTS, PRESETS, SHORT_RUN } from "./config.ts";
import deno from "../deno.json" with { type: "json" };

/** The version of deno.json, which --version prints. */
export const VERSION: string = deno.version;

export const flagOf = (key: string) => "--" + key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());

/** A bad flag or value: exit code 2. */
export class UsageError extends Error {}

/** The run cannot go on (a non-finite loss): exit code 1. */
export class TrainingError extends Error {}

// ------------------------------------------------------------------ the flags of every command

export type Script = "train" | "sample" | "eval" | "export" | "view" | "bench" | "bench:decode";
type Kind = "int" | "number" | "choice" | "string" | "boolean";
type Range = [min: number, max: number, aboveMin?: boolean]; // aboveMin: min itself is refused (--lr 0)
type Takes = Range | readonly string[] | string | null; // a range, the choices, or the arg's name
/** A flag: its name, the scripts that take it, its kind, what it takes, train's Config key, and its line in --help. */
type Flag = [name: string, scripts: string, kind: Kind, takes: Takes, key: keyof Config | null, help: string];

const ALL = "train sample eval", RUN = "sample eval export";

/** Every flag, in the order of --help; where scripts share a flag, its range and choices are the same in each. */
const FLAGS: Flag[] = [
  ["preset", "train", "choice", Object.keys(PRESETS), null, "the tutorial's runs, or a demo"],
  ["data", "train", "string", "SPEC", "data", "builtin:landscapes | builtin:shapes | cifar10 | a folder of images"],
  ["out", "train", "string", "DIR", "out", "runs folder; the run is OUT/NAME"],
  ["name", "train", "string", "NAME", "name", "run name"],
  ["resume", "train", "string", "RUN", null, "continue a run folder from its last checkpoint"],
  ["overwrite", "train", "boolean", null, null, "a run folder that exists is cleared first (else: an error)"],
  ["run", `${RUN} view`, "string", "RUN", null, "run folder, or its name under runs/"],
  [
    "weights",
    `${ALL} export`,
    "string",
    "FILE",
    "weights",
    "a PyTorch file of the tutorial's UNet: .pt, .pth or .safetensors",
  ],
  ["ema", RUN, "boolean", null, null, "the run's EMA weights"],
  ["epochs", "train", "int", [0, 1e9], "epochs", "passes over the data; 0: as many as --max-steps takes"],
  ["max-steps", "train", "int", [0, 1e12], "maxSteps", "stop after N steps in all; 0: no limit"],
  ["batch-size", "train bench", "int", [1, 4096], "batchSize", "images a step"],
  ["image-size", "train sample bench bench:decode", "int", [8, 4096], "imageSize", "image side in px, divisible by 8"],
  ["width", "train bench", "int", [4, 4096], "width", "U-Net base width, divisible by 4"],
  ["lr", "train", "number", [0, 10, true], "lr", "AdamW learning rate"],
  ["warmup-steps", "train", "int", [0, 1e12], "warmupSteps", "steps of linear lr warm-up"],
  ["lr-decay", "train", "choice", ["constant", "cosine"], "lrDecay", "after the warm-up: constant, or cosine to 0"],
  ["max-grad-norm", "train", "number", [0, 1e9], "maxGradNorm", "clip the gradients' global norm; 0: no clipping"],
  ["noise-steps", "train", "int", [1, 100000], "noiseSteps", "T, the diffusion steps"],
  ["schedule", "train", "choice", ["linear", "cosine"], "schedule", "the tutorial's β_t, or Nichol & Dhariwal's"],
  ["prediction", "train", "choice", ["eps", "v"], "prediction", "the U-Net predicts ε (the tutorial's) or v"],
  ["min-snr-gamma", "train", "number", [0, 1e6], "minSnrGamma", "min-SNR-γ loss weighting; 0: plain MSE"],
  ["conditional", "train", "boolean", null, "conditional", "train with labels: class sub-folders"],
  ["label-drop", "train", "number", [0, 1], "labelDrop", "share of steps trained without labels, for CFG"],
  ["ema-beta", "train", "number", [0, 0.999999], "emaBeta", "EMA decay β; 0: no EMA model"],
  ["ema-start", "train", "int", [0, 1e12], "emaStart", "steps of EMA warm-up"],
  ["count", "train", "int", [0, 1e9], "count", "load at most N images; 0: all"],
  ["holdout", "train", "boolean", null, "holdout", "never train on half of each class folder: eval's judge's"],
  [
    "crop",
    "train",
    "choice",
    ["random", "center", "auto"],
    "crop",
    "a folder's images: random crops, centred, or auto",
  ],
  ["cache-dir", "train", "string", "DIR", "cacheDir", "CIFAR-10 files and decoded image folders"],
  ["no-cache", "train", "boolean", null, "noCache", "decode an image folder afresh, not from its cache"],
  ["sample-every", "train", "int", [0, 1e9], "sampleEvery", "epochs between sample grids; 0: at the end only"],
  ["n-samples", "train", "int", [1, 1024], "nSamples", "images in a sample grid"],
  ["n", "sample", "int", [1, 1024], null, "number of images"],
  ["labels", "sample", "string", "L", null, "comma-separated class indices, for a conditional model"],
  ["n", "eval", "int", [1, 100000], null, "samples per class (conditional) or in all"],
  ["seconds", "eval", "number", [1, 1e7], null, "the sampling time the default n is sized to on this machine"],
  ["full", "eval", "boolean", null, null, "the tutorial's full DDPM: all T steps"],
  ["cfg-scale", "train sample", "number", [0, 100], "cfgScale", "classifier-free guidance scale, for labels"],
  ["sampler", ALL, "choice", ["ddpm", "ddim"], "sampler", "Algorithm 2 over all T steps, or DDIM"],
  ["sample-steps", ALL, "int", [1, 100000], "sampleSteps", "DDIM steps"],
  ["eta", ALL, "number", [0, 1], "eta", "DDIM's η; 0: deterministic"],
  ["no-clip", "train sample eval", "boolean", null, "clip", "do not clip x̂_0 to [-1, 1] while sampling (the tutorial)"],
  ["seed", ALL, "int", [0, 2 ** 31 - 1], "seed", "makes the run or the samples repeatable on the same backend"],
  ["backend", `${ALL} bench`, "choice", BACKENDS, "backend", ""],
  ["threads", "train sample eval bench", "int", [0, 1024], "threads", "CPU threads of the wasm backend; 0: every core"],
  ["to", "sample", "string", "PATH", null, "output PNG, or a folder for it"],
  ["raw", "sample", "string", "FILE", null, 'also save x_0 as floats: NHWC, tensor "samples" in the checkpoint format'],
  ["to", "export", "string", "FILE", null, ".safetensors, or .pt / .pth (torch.save's format)"],
  ["port", "view", "int", [0, 65535], null, "port on 127.0.0.1; 0: any free port"],
  ["mode", "bench", "choice", ["train", "sample"], null, "a training step, or one sampling forward pass"],
  ["steps", "bench", "int", [1, 1e6], null, "timed steps (the median is printed)"],
  ["untimed-steps", "bench", "int", [0, 1e6], null, "untimed steps before them"],
  ["classes", "bench", "int", [0, 1e6], null, "label classes of a conditional U-Net; 0: unconditional"],
  ["ema", "bench", "boolean", null, null, "time the EMA update too, as in training"],
  ["by-kernel", "bench", "boolean", null, null, "the counts of each kernel (and its dispatches)"],
  ["gpu-time", "bench", "boolean", null, null, "WebGPU: the GPU time of each kernel (timestamp queries)"],
  ["count-only", "bench", "boolean", null, null, "WebGPU: record the steps but never run them: counts, no times"],
  ["files", "bench:decode", "int", [1, 1e6], null, "images to generate, half JPEG, half PNG"],
  ["photo-width", "bench:decode", "int", [1, 20000], null, "their width in px"],
  ["photo-height", "bench:decode", "int", [1, 20000], null, "their height in px"],
  ["dir", "bench:decode", "string", "DIR", null, "where to write them (default: a temporary folder, removed after)"],
];

/** Old spellings, accepted for one version with a note: [old, new, scripts]. */
const RENAMED: [old: string, name: string, scripts: string][] = [
  ["batch", "batch-size", "bench"],
  ["warmup", "untimed-steps", "bench"],
  ["out", "to", "sample export"],
  ["n", "files", "bench:decode"],
  ["width", "photo-width", "bench:decode"],
  ["height", "photo-height", "bench:decode"],
  ["size", "image-size", "bench:decode"],
];

const flagsOf = (script: Script) => FLAGS.filter(([, scripts]) => scripts.split(" ").includes(script));
const ARG = { int: "N", number: "X", choice: "NAME" } as Record<Kind, string>;

/** A script's --help: its intro, a line per flag with a note (default: `config`'s value of its key), its outro. */
export function helpText(
  script: Script,
  intro: string,
  notes: Record<string, string> = {},
  outro = "",
  config: Config = DEFAULTS,
) {
  const lines = flagsOf(script).map(([name, , kind, takes, key, help]) => {
    const arg = kind === "boolean" ? "" : " " + (kind === "string" ? takes : ARG[kind]);
    const value = key && kind !== "boolean" ? config[key] : undefined;
    const note = notes[name] ?? (value === undefined ? "" : `default ${value}`);
    const text = [kind === "choice" && (takes as string[]).join(" | "), help].filter(Boolean).join(": ");
    return `  ${`--${name}${arg}`.padEnd(19)} ${text}${note && ` (${note})`}`;
  });
  const own = [`  ${"--help, -h".padEnd(19)} this text`, `  ${"--version".padEnd(19)} the version (${VERSION})`];
  return [intro, "", ...lines, ...own, ...(outro ? ["", outro] : [])].join("\n");
}

/** The --help notes of a script's own defaults (those of readFlags' `defaults`). */
export const defaultNotes = (defaults: Record<string, Value>) =>
  Object.fromEntries(Object.entries(defaults).map(([name, value]) => [name, `default ${value}`]));

/**
 * A script's flags: numbers in range (as numbers), choices checked; a bad one is a UsageError naming it. A flag not
 * given takes its value from `defaults`, if there.
 */
export function readFlags(script: Script, args: string[], defaults: Record<string, Value> = {}): Record<string, Value> {
  const flags = flagsOf(script);
  const types = flags.map(([name, , kind]) => [name, { type: kind === "boolean" ? "boolean" : "string" } as const]);
  const options: Options = { ...Object.fromEntries(types), help: HELP_FLAG, version: { type: "boolean" } };
  const values: Record<string, Value> = parseFlags(renamed(script, args), options);
  for (const [name, , kind, takes] of flags) {
    const range = takes as Range;
    if (kind === "int" || kind === "number") values[name] = numberFlag(name, values[name], range, kind === "int");
    if (kind === "choice") choiceFlag(name, values[name], takes as string[]);
    values[name] ??= defaults[name];
  }
  return values;
}

// ------------------------------------------------------------------ flag helpers (train, sample, eval and the others)

type Value = string | number | boolean | undefined;
type Options = Record<string, { type: "string" | "boolean"; short?: string }>;
const HELP_FLAG = { type: "boolean", short: "h" } as const;

/** The args with the old spellings of a script's flags in their new names, each with a one-line note. */
function renamed(script: Script, args: string[]) {
  return args.map((arg) => {
    const [, old, value = ""] = arg.match(/^--([a-z-]+)(=.*)?$/) ?? [];
    const to = RENAMED.find(([o, , scripts]) => o === old && scripts.split(" ").includes(script))?.[1];
    if (!to) return arg;
    console.error(`note: --${old} is now --${to} (the old name is accepted until the next version)`);
    return `--${to}${value}`;
  });
}

/** node:util parseArgs, with an unknown flag (and the nearest known one) or a missing value as a UsageError. */
export function parseFlags(args: string[], options: Options): Record<string, string | boolean | undefined> {
  try {
    return parseArgs({ args: negativesJoined(args, options), options, strict: true, allowPositionals: false }).values;
  } catch (e) {
    const unknown = (e as { code?: string }).code === "ERR_PARSE_ARGS_UNKNOWN_OPTION";
    const flag = (e as Error).message.match(/'(-[^']*)'/)?.[1];
    if (!unknown || !flag) throw new UsageError((e as Error).message.split("\n")[0] + " (see --help)");
    const near = nearest(flag.replace(/^-+/, ""), Object.keys(options));
    throw new UsageError(`unknown flag ${flag}${near ? `: did you mean --${near}?` : ""} (see --help)`);
  }
}

/** `--lr -1e-3` as `--lr=-1e-3`, which parseArgs reads as a value (it takes "-1e-3" for a flag). */
function negativesJoined(args: string[], options: Options) {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const name = args[i].startsWith("--") ? args[i].slice(2) : "";
    const takesValue = options[name]?.type === "string";
    if (takesValue && /^-\.?\d/.test(args[i + 1] ?? "")) out.push(`${args[i]}=${args[++i]}`);
    else out.push(args[i]);
  }
  return out;
}

/** The known name nearest to `name` (edit distance at most 2, or a prefix either way), or undefined. */
function nearest(name: string, known: string[]) {
  const distance = (a: string, b: string) => { // Levenshtein, one row at a time
    let row = Array.from({ length: b.length + 1 }, (_, j) => j);
    for (let i = 1; i <= a.length; i++) {
      const next = [i];
      for (let j = 1; j <= b.length; j++) {
        next[j] = Math.min(row[j] + 1, next[j - 1] + 1, row[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
      }
      row = next;
    }
    return row[b.length];
  };
  const scored = known.map((k) => ({ k, d: k.startsWith(name) || name.startsWith(k) ? 1 : distance(name, k) }));
  const best = scored.sort((x, y) => x.d - y.d)[0];
  return best && best.d <= 2 ? best.k : undefined;
}

/** A numeric flag's value (undefined when not given), or a UsageError naming the flag and the range. */
export function numberFlag(flag: string, s: Value, [min, max, aboveMin = false]: Range, integer = true) {
  if (s === undefined) return undefined;
  const x = Number(s);
  if (aboveMin && x <= min) throw new UsageError(`--${flag} ${s}: must be > ${min}`);
  if (!Number.isFinite(x) || (integer && !Number.isInteger(x)) || x < min || x > max) {
    const range = `${aboveMin ? "(" : "["}${min}, ${max}]`;
    throw new UsageError(`--${flag} ${s}: expected ${integer ? "an integer" : "a number"} in ${range}`);
  }
  return x;
}

/** A flag that takes one of `choices` (undefined when not given). */
export function choiceFlag<C extends string>(flag: string, s: Value, choices: readonly C[]) {
  if (s === undefined) return undefined;
  if (!choices.includes(s as C)) throw new UsageError(`--${flag} ${s}: use one of ${choices.join(", ")}`);
  return s as C;
}

/** A run given by folder, or by name under `out`. */
export const runFolder = (run: string, out = "runs") => run.includes("/") ? run : join(out, run);

/** train's --help, with the defaults of the preset given (`deno task train:cifar --help`: CIFAR-10's). */
export const trainHelp = (preset?: string) =>
  helpText(
    "train",
    `Train a DDPM (the "DDPM from scratch" tutorial) on Deno.

  deno task train:landscape [--data DIR]   unconditional, 64 px (tutorial defaults)
  deno task train:cifar [--data DIR]       conditional CIFAR-10, 64 px, CFG + EMA
  deno task demo                           a few minutes on a CPU, built-in landscapes

Options (defaults from --preset, then these):`,
    {
      name: "default: the preset's, else run",
      weights: "start from it; width from it",
      "cache-dir": "default ~/.cache/ddpm-deno, or $DDPM_CACHE",
      sampler: `default ${(preset && PRESETS[preset].sampler) || DEFAULTS.sampler}, ddim for ${SHORT_RUN}`,
    },
    "",
    { ...DEFAULTS, ...(preset ? PRESETS[preset] : {}) },
  );

/** The tutorial's arguments (ddpm.py, ddpm_conditional.py) that a flag of train stands for. */
const TUTORIAL: Record<string, string> = {
  name: "args.run_name",
  epochs: "args.epochs",
  "batch-size": "args.batch_size",
  "image-size": "args.image_size",
  data: "args.dataset_path",
  backend: "args.device",
  lr: "args.lr",
  conditional: "args.num_classes (ddpm_conditional.py)",
};

/** docs/flags.md: the flag table as Markdown (`deno run -A run/cli.ts` writes it; a test checks that it is current). */
export function flagsMarkdown() {
  const cell = (s: unknown) => String(s).replace(/\|/g, "\\|");
  const rows = FLAGS.map(([name, scripts, kind, takes, key, help]) => {
    const range = takes as Range;
    const what = kind === "int" || kind === "number"
      ? `${kind === "int" ? "an integer" : "a number"} in ${range[2] ? "(" : "["}${range[0]}, ${range[1]}]`
      : kind === "choice"
      ? (takes as string[]).join(" | ")
      : kind === "string"
      ? takes
      : "";
    const value = key && kind !== "boolean" ? DEFAULTS[key] : undefined;
    return `| \`--${name}\` | ${scripts} | ${cell(what)} | ${value ?? ""} | ${cell(help)} | ${TUTORIAL[name] ?? ""} |`;
  });
  const old = RENAMED.map(([o, name, scripts]) => `| \`--${o}\` | \`--${name}\` | ${scripts} |`);
  return [
    "# Flags",
    "",
    "Every flag of every command, from the one table in run/cli.ts (this file is written by",
    "`deno run -A run/cli.ts && deno fmt docs/flags.md`; a test checks that it is current). A name means one thing",
    "wherever it appears (near enough: eval's --n counts per class of a conditional run, bench's --ema times the EMA",
    "update);",
    "the default is train's (DEFAULTS in run/config.ts; a preset sets its own, shown by `deno task train:cifar --help`),",
    "other commands' defaults are in their `--help`. Every command also takes `--help` and `--version`.",
    "The last column is the argument of the tutorial's scripts (ddpm.py, ddpm_conditional.py) that the flag stands for.",
    "",
    "| flag | commands | takes | default | what | the tutorial's |",
    "|---|---|---|---|---|---|",
    ...rows,
    "",
    "## Old spellings",
    "",
    "Accepted until the next version, with a one-line note.",
    "",
    "| old | now | commands |",
    "|---|---|---|",
    ...old,
    "",
  ].join("\n");
}

if (import.meta.main) Deno.writeTextFileSync(join(import.meta.dirname!, "..", "docs", "flags.md"), flagsMarkdown());

/** Flags to a Config; any bad value is a UsageError naming the flag. */
export function parseConfig(
  args: string[],
): { config: Config; resume: boolean; overwrite: boolean; help: boolean; preset?: string; given: (keyof Config)[] } {
  const values = readFlags("train", args), preset = values.preset as string | undefined;
  const config: Config = { ...DEFAULTS, ...(preset ? PRESETS[preset] : {}) };
  const given: (keyof Config)[] = []; // the settings given as flags
  for (const [name, , , , key] of flagsOf("train")) {
    if (!key || values[name] === undefined) continue;
    (config as unknown as Record<string, Value>)[key] = name === "no-clip" ? false : values[name];
    if (!["out", "name", "weights"].includes(key)) given.push(key); // the folder: --resume's; weights: a new run's
  }
  if (config.imageSize % 8) {
    throw new UsageError(`--image-size ${config.imageSize}: must be divisible by 8 (the U-Net halves it 3 times)`);
  }
  if (config.width % 4) throw new UsageError(`--width ${config.width}: must be divisible by 4 (4 attention heads)`);
  if (config.epochs === 0 && !config.maxSteps) {
    throw new UsageError("--epochs 0 (as many as --max-steps takes) needs --max-steps N > 0");
  }
  const resume = values.resume as string | undefined;
  if (resume && config.weights) throw new UsageError("--weights starts a new run; --resume continues one: give one");
  if (resume && values.overwrite) {
    throw new UsageError("--overwrite starts a run afresh; --resume continues it: give one");
  }
  if (resume) {
    const dir = runFolder(resume, config.out);
    [config.out, config.name] = [dirname(dir), basename(dir)];
  }
  return { config, resume: !!resume, overwrite: !!values.overwrite, help: !!values.help, preset, given };
}

/** Runs `main` and turns the errors a user can fix into one line and an exit code (2: usage, 1: input). */
export async function runCli(main: () => Promise<void>) {
  if (Deno.args.includes("--version")) return console.log(VERSION);
  try {
    await main();
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`error: ${e.message}`);
      Deno.exit(2);
    }
    if (
      e instanceof DataError || e instanceof CheckpointError || e instanceof TrainingError || e instanceof BackendError
    ) {
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
