// Training (DDPM Algorithm 1) and the command line.
import * as tf from "@tensorflow/tfjs";
import { basename, dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { type BackendName, BACKENDS, getSeedState, setBackend, setSeed } from "./backend.ts";
import { assignWeights, CheckpointError, findCheckpoint, saveCheckpoint } from "./checkpoint.ts";
import { Diffusion } from "./diffusion.ts";
import { EMA } from "./ema.ts";
import { type Module, UNet } from "./modules.ts";
import { DataError, loadDataset, mulberry32, saveGrid, savePlot } from "./utils.ts";

/** AdamW (Loshchilov & Hutter 2019), PyTorch's defaults: decoupled weight decay, then the Adam step. */
export class AdamW {
  step = 0;
  m = new Map<string, tf.Variable>();
  v = new Map<string, tf.Variable>();
  constructor(
    readonly model: Module,
    public lr = 3e-4,
    readonly betas: [number, number] = [0.9, 0.999],
    readonly eps = 1e-8,
    readonly weightDecay = 0.01,
  ) {
    for (const [name, w] of model.weights) {
      this.m.set(name, tf.variable(tf.zerosLike(w), false));
      this.v.set(name, tf.variable(tf.zerosLike(w), false));
    }
  }

  /** One update from gradients keyed by weight name. */
  update(grads: Map<string, tf.Tensor>) {
    this.step += 1;
    const [b1, b2] = this.betas;
    const c1 = 1 - b1 ** this.step, c2 = 1 - b2 ** this.step;
    for (const [name, w] of this.model.weights) {
      const g = grads.get(name), m = this.m.get(name)!, v = this.v.get(name)!;
      if (!g) continue; // not used this step (the label embedding on an unconditional step): as PyTorch
      tf.tidy(() => {
        m.assign(m.mul(b1).add(g.mul(1 - b1)));
        v.assign(v.mul(b2).add(g.square().mul(1 - b2)));
        const stepDir = m.div(c1).div(v.div(c2).sqrt().add(this.eps));
        w.assign(w.mul(1 - this.lr * this.weightDecay).sub(stepDir.mul(this.lr)));
      });
    }
  }

  dispose() {
    tf.dispose([...this.m.values(), ...this.v.values()]);
  }
}

/** Algorithm 1: t ~ U{0..T-1}, ε ~ N(0, I), a gradient step on ‖ε - ε_θ(√ᾱ_t·x_0 + √(1-ᾱ_t)·ε, t)‖². */
export function trainStep(
  model: UNet,
  diffusion: Diffusion,
  opt: AdamW,
  x0: tf.Tensor4D,
  labels: tf.Tensor1D | null = null,
): tf.Scalar {
  const t = diffusion.sampleTimesteps(x0.shape[0]);
  const [xt, noise] = diffusion.noiseImages(x0, t);
  const weights = [...model.weights.values()];
  const { value, grads } = tf.variableGrads(
    () => tf.losses.meanSquaredError(noise, model.forward(xt, t, labels)) as tf.Scalar,
    weights,
  );
  const byName = new Map([...model.weights].map(([name, w]) => [name, grads[w.name]]));
  opt.update(byName);
  tf.dispose([t, xt, noise, ...Object.values(grads)]);
  return value;
}

// ------------------------------------------------------------------ a training run

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
  backend: BackendName;
  seed: number;
  sampleEvery: number; // epochs between sample grids
  nSamples: number;
  cfgScale: number;
  conditional: boolean;
  labelDrop: number; // share of steps trained without labels (for CFG)
  emaBeta: number; // 0 = no EMA model
  emaStart: number;
  count: number; // images to load (0 = all)
  cacheDir?: string;
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
  // a few minutes on a laptop CPU
  demo: { data: "builtin:landscapes", name: "demo", imageSize: 16, batchSize: 32, epochs: 12, width: 16, count: 2000 },
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
  backend: "auto",
  seed: 0,
  sampleEvery: 10,
  nSamples: 16,
  cfgScale: 3,
  conditional: false,
  labelDrop: 0.1,
  emaBeta: 0,
  emaStart: 2000,
  count: 0,
};

/** What a run keeps between sessions, beside the weights. */
export interface RunState {
  config: Config;
  step: number;
  epoch: number;
  stepInEpoch: number;
  seedState: number;
  emaStep: number;
  adamStep: number;
  classes: string[];
  dir?: string; // where it was read from
}

/** A Ctrl-C asks the loop to stop after the current step; a second one exits at once. */
export const stopSignal = { requested: false };

export interface TrainOptions {
  resume?: boolean; // continue config.out/config.name from its checkpoint
  given?: (keyof Config)[]; // the settings given as flags (on resume, only some may change)
  log?: (line: string) => void;
}

/** Minutes of training between checkpoints within an epoch (one is also written at each epoch's end). */
const CHECKPOINT_MINUTES = 10;

export async function train(config: Config, { resume = false, given = [], log = console.log }: TrainOptions = {}) {
  const runDir = join(config.out, config.name);
  let state: RunState | null = null;
  if (resume) {
    state = await readState(runDir, ["state.json", "model.bin", "adam_m.bin", "adam_v.bin"]);
    config = { ...state.config, ...changedOnResume(config, state.config, given) };
  }
  const backend = await setBackend(config.backend, log);
  await Deno.mkdir(join(runDir, "samples"), { recursive: true });
  setSeed(config.seed);
  const data = await loadDataset(config.data, config.imageSize, {
    seed: config.seed,
    count: config.count || undefined,
    cacheDir: config.cacheDir,
    log,
  });
  const numClasses = config.conditional ? data.classes.length : 0;
  const makeModel = () => new UNet({ width: config.width, numClasses });
  const model = makeModel();
  const emaModel = config.emaBeta > 0 ? makeModel() : null;
  const ema = new EMA(config.emaBeta);
  const opt = new AdamW(model, config.lr);
  const diffusion = new Diffusion({ noiseSteps: config.noiseSteps, imgSize: config.imageSize });
  const stepsPerEpoch = Math.ceil(data.length / config.batchSize);
  const totalSteps = Math.min(config.epochs * stepsPerEpoch, config.maxSteps || Infinity);
  const losses = resume ? await readLosses(runDir, state!.step) : [];
  let [step, epoch, stepInEpoch] = [0, 0, 0];
  if (state) {
    const ckpt = state.dir!;
    assignWeights(join(ckpt, "model.bin"), model.weights);
    if (emaModel) assignWeights(join(ckpt, "ema.bin"), emaModel.weights);
    assignWeights(join(ckpt, "adam_m.bin"), opt.m);
    assignWeights(join(ckpt, "adam_v.bin"), opt.v);
    ({ step, epoch, stepInEpoch } = state);
    [opt.step, ema.step] = [state.adamStep, state.emaStep];
    setSeed(state.seedState);
    log(`resuming ${runDir} at step ${step} (epoch ${epoch + 1})`);
  } else if (emaModel) ema.resetParameters(emaModel, model);
  log(
    `backend ${backend} | ${config.conditional ? "conditional " : ""}U-Net width ${config.width}: ` +
      `${model.parameterCount.toLocaleString("en")} parameters | data ${data.name}: ${data.length} images` +
      `${
        data.skipped ? ` (${data.skipped} skipped)` : ""
      }, ${data.classes.length} class(es), ${config.imageSize} px | ` +
      `${totalSteps} steps of batch ${config.batchSize} | run folder ${runDir}`,
  );

  const checkpoint = async () => {
    const files = new Map<string, Map<string, tf.Tensor>>([
      ["model.bin", model.weights],
      ["adam_m.bin", opt.m],
      ["adam_v.bin", opt.v],
    ]);
    if (emaModel) files.set("ema.bin", emaModel.weights);
    const s: RunState = {
      config,
      step,
      epoch,
      stepInEpoch,
      seedState: getSeedState(),
      emaStep: ema.step,
      adamStep: opt.step,
      classes: data.classes,
    };
    await saveCheckpoint(join(runDir, "checkpoint"), files, s);
    lastCheckpoint = performance.now();
  };
  let lastCheckpoint = performance.now();
  const onSigint = () => {
    if (stopSignal.requested) Deno.exit(130);
    stopSignal.requested = true;
    log("\nstopping after this step (Ctrl-C again to quit without saving)");
  };
  Deno.addSignalListener("SIGINT", onSigint);
  const progress = new Progress(totalSteps, config.batchSize, log);
  const lossFile = await Deno.open(join(runDir, "loss.jsonl"), { append: true, create: true });
  try {
    while (epoch < config.epochs && step < totalSteps && !stopSignal.requested) {
      const rand = mulberry32(config.seed * 7919 + epoch);
      let i = 0;
      for (const batch of data.batches(config.batchSize, rand)) {
        if (i++ < stepInEpoch) continue; // resumed in the middle of this epoch
        const dropLabels = rand() < config.labelDrop;
        const loss = tf.tidy(() => {
          const x0 = tf.tensor4d(batch.x, [batch.n, config.imageSize, config.imageSize, 3]);
          const labels = numClasses && !dropLabels ? tf.tensor1d(batch.labels, "int32") : null;
          return trainStep(model, diffusion, opt, x0, labels);
        });
        const value = (await loss.data())[0];
        loss.dispose();
        if (!Number.isFinite(value)) {
          throw new TrainingError(`loss is ${value} at step ${step + 1}: stopped; the last good checkpoint is kept`);
        }
        if (emaModel) ema.stepEma(emaModel, model, config.emaStart);
        step++, stepInEpoch++;
        losses.push(value);
        await lossFile.write(new TextEncoder().encode(JSON.stringify({ step, epoch: epoch + 1, loss: value }) + "\n"));
        progress.update(step, epoch + 1, config.epochs, value);
        if (stopSignal.requested || step >= totalSteps) break;
        if (performance.now() - lastCheckpoint > CHECKPOINT_MINUTES * 60e3) await checkpoint();
      }
      if (stepInEpoch >= stepsPerEpoch) epoch++, stepInEpoch = 0;
      if (stopSignal.requested) break;
      await checkpoint();
      const last = step >= totalSteps || epoch >= config.epochs;
      if ((stepInEpoch === 0 && epoch % config.sampleEvery === 0) || last) {
        const label = stepInEpoch ? `step_${String(step).padStart(7, "0")}` : `epoch_${String(epoch).padStart(4, "0")}`;
        await sampleGrids(config, diffusion, model, emaModel, data.classes, runDir, label, log);
        await writeReport(runDir);
      }
    }
    progress.done();
    if (stopSignal.requested) await checkpoint();
    await writeReport(runDir);
    log(`${stopSignal.requested ? "stopped" : "done"} at step ${step}: open ${join(runDir, "index.html")}`);
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
    stopSignal.requested = false;
    lossFile.close();
    for (const d of [model, emaModel, opt, diffusion]) d?.dispose();
  }
  return { runDir, step, losses };
}

export class TrainingError extends Error {}

const CHANGEABLE: (keyof Config)[] = [
  "epochs",
  "maxSteps",
  "backend",
  "sampleEvery",
  "nSamples",
  "cfgScale",
  "cacheDir",
];
export const flagOf = (key: string) => "--" + key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());

/** On resume the saved config holds: a few settings may change, the others must not be given otherwise. */
function changedOnResume(config: Config, saved: Config, given: (keyof Config)[]): Partial<Config> {
  for (const k of given) {
    if (!CHANGEABLE.includes(k) && config[k] !== saved[k]) {
      throw new UsageError(`${flagOf(k)} ${config[k]}: the run was trained with ${saved[k]}; a resumed run keeps it`);
    }
  }
  const changed = given.filter((k) => CHANGEABLE.includes(k)).map((k) => [k, config[k]]);
  return { ...Object.fromEntries(changed), out: config.out, name: config.name };
}

async function readLossRows(runDir: string): Promise<{ step: number; epoch: number; loss: number }[]> {
  const text = await Deno.readTextFile(join(runDir, "loss.jsonl")).catch(() => "");
  return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
}

/** The losses of steps 1..step from loss.jsonl (later lines, written after the checkpoint, are dropped). */
async function readLosses(runDir: string, step: number): Promise<number[]> {
  const rows = (await readLossRows(runDir)).filter((r) => r.step <= step);
  await Deno.writeTextFile(join(runDir, "loss.jsonl"), rows.map((r) => JSON.stringify(r) + "\n").join(""));
  return rows.map((r) => r.loss);
}

/** Sample grids of the model (and of the EMA model): one row per class for a conditional model. */
async function sampleGrids(
  config: Config,
  diffusion: Diffusion,
  model: UNet,
  emaModel: UNet | null,
  classes: string[],
  runDir: string,
  label: string,
  log: (l: string) => void,
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
      onStep: (i) => {
        if (stopSignal.requested) throw new TrainingError("sampling interrupted");
        if (Deno.stdout.isTerminal() && i % 10 === 0) {
          Deno.stdout.writeSync(new TextEncoder().encode(`\rsampling${suffix}: ${i} steps left\x1b[K`));
        }
      },
    }).catch((e) => {
      if (e instanceof TrainingError) return null;
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

/** The saved state of a run's newest checkpoint that has the `required` files, and that folder (`dir`). */
export async function readState(runDir: string, required = ["state.json", "model.bin"]): Promise<RunState> {
  const dir = findCheckpoint(runDir, required), path = join(dir, "state.json");
  try {
    return { ...JSON.parse(await Deno.readTextFile(path)), dir };
  } catch (e) {
    throw new CheckpointError(`${path} is not readable (${(e as Error).message})`);
  }
}

/** One progress line: step, loss (smoothed), images/s and ETA; redrawn on a terminal, every 5 s otherwise. */
class Progress {
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

// ------------------------------------------------------------------ the command line

const HELP = `Train a DDPM (the "DDPM from scratch" tutorial) on Deno.

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
  --backend NAME       auto | tensorflow | webgpu | wasm | cpu
  --seed N             makes a run repeatable on the same backend
  --sample-every N     epochs between sample grids     --n-samples N   --cfg-scale X
  --conditional        train with labels (class sub-folders)  --label-drop X (0.1)
  --ema-beta X         0 = no EMA model                --ema-start N  (steps of EMA warm-up)
  --count N            load at most N images           --cache-dir DIR (CIFAR-10 files)
  --resume RUN         continue a run folder from its last checkpoint
  --help`;

export class UsageError extends Error {}

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
  ["emaBeta", "ema-beta", 0, 0.999999, false],
  ["emaStart", "ema-start", 0, 1e12, true],
  ["labelDrop", "label-drop", 0, 1, false],
  ["count", "count", 0, 1e9, true],
];

/** Flags to a Config; any bad value is a UsageError naming the flag. */
export function parseConfig(
  args: string[],
): { config: Config; resume: boolean; help: boolean; given: (keyof Config)[] } {
  const options = Object.fromEntries([
    ...NUMBERS.map(([, flag]) => [flag, { type: "string" }]),
    ...["preset", "data", "out", "name", "backend", "resume", "cache-dir"].map((f) => [f, { type: "string" }]),
    ["conditional", { type: "boolean" }],
    ["help", { type: "boolean", short: "h" }],
  ]) as Record<string, { type: "string" | "boolean" }>;
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args, options, strict: true, allowPositionals: false }).values;
  } catch (e) {
    throw new UsageError((e as Error).message.split("\n")[0] + " (see --help)");
  }
  const preset = values.preset as string | undefined;
  if (preset && !PRESETS[preset]) {
    throw new UsageError(`--preset ${preset}: use one of ${Object.keys(PRESETS).join(", ")}`);
  }
  const config: Config = { ...DEFAULTS, ...(preset ? PRESETS[preset] : {}) };
  for (const [key, flag, min, max, integer] of NUMBERS) {
    if (values[flag] === undefined) continue;
    const v = Number(values[flag]);
    if (!Number.isFinite(v) || (integer && !Number.isInteger(v)) || v < min || v > max) {
      throw new UsageError(
        `--${flag} ${values[flag]}: expected ${integer ? "an integer" : "a number"} in [${min}, ${max}]`,
      );
    }
    (config as unknown as Record<string, number>)[key] = v;
  }
  for (const [key, flag] of [["data", "data"], ["out", "out"], ["name", "name"], ["cacheDir", "cache-dir"]] as const) {
    if (values[flag] !== undefined) config[key] = values[flag] as string;
  }
  if (values.conditional) config.conditional = true;
  if (values.backend !== undefined) {
    if (!BACKENDS.includes(values.backend as BackendName)) {
      throw new UsageError(`--backend ${values.backend}: use one of ${BACKENDS.join(", ")}`);
    }
    config.backend = values.backend as BackendName;
  }
  if (config.imageSize % 8) {
    throw new UsageError(`--image-size ${config.imageSize}: must be divisible by 8 (the U-Net halves it 3 times)`);
  }
  if (config.width % 4) throw new UsageError(`--width ${config.width}: must be divisible by 4 (4 attention heads)`);
  const resume = values.resume as string | undefined;
  if (resume) {
    const dir = resume.includes("/") ? resume : join(config.out, resume);
    [config.out, config.name] = [dirname(dir), basename(dir)];
  }
  const keys: (keyof Config)[] = [...NUMBERS.map(([key]) => key), "data", "cacheDir", "conditional", "backend"];
  const given = keys.filter((k) => values[flagOf(k).slice(2)] !== undefined);
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

if (import.meta.main) {
  await runCli(async () => {
    const { config, resume, help, given } = parseConfig(Deno.args);
    if (help) return console.log(HELP);
    if (!resume && config.data === "builtin:landscapes" && !Deno.args.includes("--data")) {
      console.log("no --data given: training on the built-in procedural landscapes (builtin:landscapes)");
    }
    await train(config, { resume, given });
  });
}
