// A training run's folder around train()'s loop: the backend, seed and data, resume, the loss log (read back every few
// steps), checkpoints, sample grids at epoch ends, and the stop signals (Ctrl-C, SIGTERM, SIGHUP).
import * as tf from "@tensorflow/tfjs";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { getSeedState, mulberry32, setBackend, setSeed } from "../kernels/backend.ts";
import { assignWeights, saveCheckpoint } from "../weights/checkpoint.ts";
import {
  type Config,
  DEFAULTS,
  fitToData,
  gridPasses,
  gridSampler,
  loadRunData,
  runPasses,
  stepsOf,
} from "./config.ts";
import { readState, type RunState } from "./trained.ts";
import { flagOf, TrainingError, UsageError } from "./cli.ts";
import type { Diffusion } from "../diffusion.ts";
import type { EMA } from "../ema.ts";
import type { UNet } from "../modules.ts";
import { loadTorchModel } from "../weights/pytorch.ts";
import { Progress, SLOW_RUN_SECONDS, SlowCheck, slowRunHint } from "./progress.ts";
import { readLossRows, sampleGrids, saveDataImages, writeReport } from "./report.ts";
import { type Dataset } from "../utils.ts";
import { CheckpointError } from "../weights/weights.ts";
import type { AdamW } from "./adamw.ts";
import { describeThreads, threadCount, Threads } from "./threads.ts";

/** How train() runs: resume, the flags given, and where its lines go. */
export interface TrainOptions {
  /** continue config.out/config.name from its checkpoint */
  resume?: boolean;
  /** a new run whose folder exists clears it (else that is an error: a run is never overwritten) */
  overwrite?: boolean;
  /** the settings given as flags (on resume, only some may change; without "sampler", a short run's grids are DDIM) */
  given?: (keyof Config)[];
  /** steps between loss read-backs (default: 20 on a GPU, where one waits ≥ 10 ms; else 1) */
  readEvery?: number;
  /** where the progress lines go (default console.log) */
  log?: (line: string) => void;
}

/** Minutes of training between checkpoints within an epoch (one is also written at each epoch's end). */
const CHECKPOINT_MINUTES = 10;
/** The share of a run's time that its epoch-end checkpoints may take at most (a few images: epochs of a step or two). */
const CHECKPOINT_SHARE = 0.05;

/** The signals that stop a run after its step, with a checkpoint (Ctrl-C, kill, timeout, a scheduler, a hang-up). */
const STOP_SIGNALS: Deno.Signal[] = Deno.build.os === "windows"
  ? ["SIGINT", "SIGBREAK"]
  : ["SIGINT", "SIGTERM", "SIGHUP"];
const SIGNAL_EXIT: Partial<Record<Deno.Signal, number>> = { SIGINT: 130, SIGBREAK: 130, SIGTERM: 143, SIGHUP: 129 };

type Pending = { loss: tf.Scalar; step: number; epoch: number };

/** What train() builds and the run keeps: checkpointed, restored on resume, sampled at epoch ends. */
export interface RunParts {
  model: UNet;
  emaModel: UNet | null;
  opt: AdamW;
  ema: EMA;
  diffusion: Diffusion;
}

/** A batch of train()'s loop: images NHWC in [-1, 1], and their labels (null: unconditional, or dropped for CFG). */
export interface TrainBatch {
  x: Float32Array;
  n: number;
  labels: Int32Array | null;
}

/** A training run: its folder, data and position; the parts train() gives it are checkpointed and restored. */
export class Run {
  step = 0;
  epoch = 0;
  stepInEpoch = 0;
  losses: number[] = [];
  stopRequested = false; // a Ctrl-C, SIGTERM or SIGHUP: stop after this step
  readonly totalSteps: number;
  private parts: RunParts | null = null;
  threads: Threads | null = null; // the CPU threads that share each batch (wasm, more than one)
  private pending: Pending[] = [];
  private lastCheckpoint = performance.now();
  private checkpointMs = 0; // the last checkpoint's time
  private readonly lossFile: Deno.FsFile;
  private readonly progress: Progress;
  private readonly slow: SlowCheck; // a run of more than a day: one line with the ways to a shorter one
  private readonly log: (line: string) => void;

  private constructor(
    readonly config: Config,
    readonly dir: string,
    readonly data: Dataset,
    readonly pretrained: UNet | null, // the model of --weights, for a new run
    private readonly state: RunState | null, // the checkpoint to resume from
    private readonly backend: string,
    private readonly readEvery: number,
    log: (line: string) => void,
  ) {
    this.totalSteps = stepsOf(config, data.length);
    this.lossFile = Deno.openSync(join(dir, "loss.jsonl"), { append: true, create: true });
    this.progress = new Progress(this.totalSteps, config.batchSize, log);
    this.slow = new SlowCheck(this.totalSteps, SLOW_RUN_SECONDS, (left) => {
      this.progress.done();
      log(slowRunHint(left, tf.getBackend()));
    });
    this.log = log;
  }

  /** A new run in config.out/config.name, or (resume) that run's saved config; the backend, the seed and the data. */
  static async start(config: Config, options: TrainOptions) {
    const { resume = false, overwrite = false, given = [], log = console.log } = options;
    const dir = join(config.out, config.name);
    const state = resume ? await readState(dir, ["state.json", "model.bin", "adam_m.bin", "adam_v.bin"]) : null;
    if (state) config = { ...DEFAULTS, ...state.config, ...changedOnResume(config, state.config, given) };
    else await clearFolder(dir, overwrite);
    const backend = await setBackend(config.backend, log);
    await Deno.mkdir(join(dir, "samples"), { recursive: true });
    try {
      setSeed(config.seed);
      const data = await loadRunData(config, log);
      if (!state) config = fitToData(config, data.length); // the CPU recipes' epochs and crops for this data
      data.crop = config.crop === "random";
      if (data.heldOut) await writeHoldout(dir, data.heldOut, config.seed);
      await saveDataImages(dir, data, config.seed);
      const numClasses = config.conditional ? data.classes.length : 0;
      const pretrained = config.weights && !state ? fromWeights(config, numClasses, given) : null;
      if (pretrained) config = { ...config, width: pretrained.width, removeDeepConv: pretrained.removeDeepConv };
      if (!state && !given.includes("sampler")) {
        config = { ...config, sampler: gridSampler(config, stepsOf(config, data.length)) };
      }
      const gpu = backend === "webgpu" || backend === "tensorflow"; // a read-back waits for the GPU's queue
      const readEvery = options.readEvery ?? (gpu ? 20 : 1);
      const run = new Run(config, dir, data, pretrained, state, backend, readEvery, log);
      for (const [signal, stop] of run.stops) Deno.addSignalListener(signal, stop);
      return run;
    } catch (e) { // a failed start leaves no folder behind
      if (!state) await Deno.remove(dir, { recursive: true }).catch(() => {});
      throw e;
    }
  }

  /**
   * Takes train()'s parts and starts the CPU threads that share each batch; on resume, the parts' weights, moments and
   * steps and the run's position from the checkpoint.
   */
  async restore(parts: RunParts) {
    this.parts = parts;
    const threads = threadCount(this.backend, this.config.threads);
    if (threads > 1) this.threads = await Threads.start(threads, parts.model);
    const state = this.state;
    if (state) {
      const ckpt = state.dir!;
      assignWeights(join(ckpt, "model.bin"), parts.model.weights);
      if (parts.emaModel) assignWeights(join(ckpt, "ema.bin"), parts.emaModel.weights);
      assignWeights(join(ckpt, "adam_m.bin"), parts.opt.m);
      assignWeights(join(ckpt, "adam_v.bin"), parts.opt.v);
      this.step = state.step;
      this.epoch = state.epoch;
      this.stepInEpoch = state.stepInEpoch;
      parts.opt.step = state.adamStep;
      parts.ema.step = state.emaStep;
      setSeed(state.seedState);
      this.losses = await readLosses(this.dir, state.step);
      this.log(`resuming ${this.dir} at step ${this.step} (epoch ${this.epoch + 1})`);
    }
    this.log(`${describeThreads(this.backend, threads)} | ${this.describe()}`);
    const gridNote = this.gridCost();
    if (gridNote) this.log(gridNote);
  }

  /**
   * This epoch's shuffled batches, with the labels dropped on a share of them (for CFG); after a resume in the middle
   * of an epoch, the ones left. Stops early when the run is to stop.
   */
  *batches(): Generator<TrainBatch> {
    const { seed, batchSize, labelDrop, conditional } = this.config;
    const rand = mulberry32(seed * 7919 + this.epoch); // the epoch's shuffle and label drops, the same on resume
    let i = 0;
    for (const { x, n, labels } of this.data.batches(batchSize, rand)) {
      const dropLabels = rand() < labelDrop; // (drawn for skipped batches too: the same stream)
      if (i++ < this.stepInEpoch) continue;
      yield { x, n, labels: conditional && !dropLabels ? labels : null };
      if (!this.going) return;
    }
  }

  private describe() {
    const { config: c, data, parts } = this;
    const skipped = data.skipped ? ` (${data.skipped} skipped)` : "";
    const classes = c.conditional ? `, ${data.classes.length} classes` : ""; // (an unconditional run has none)
    return `${c.conditional ? "conditional " : ""}U-Net width ${c.width}: ` +
      `${parts!.model.parameterCount.toLocaleString("en")} parameters | data ${data.name}: ${data.length} images` +
      `${skipped}${classes}, ${c.imageSize} px | ${this.totalSteps} steps of batch ${c.batchSize} | ` +
      `run folder ${this.dir}`;
  }

  /** What the sample grids cost, when they take more than a tenth of the run's time (else ""). */
  private gridCost() {
    const { config: c, totalSteps } = this, steps = this.parts!.diffusion.stepCount(c.sampler, c.sampleSteps);
    const epochs = Math.ceil(totalSteps / Math.ceil(this.data.length / c.batchSize));
    const grids = (c.sampleEvery ? Math.ceil(epochs / c.sampleEvery) : 1) * (this.parts!.emaModel ? 2 : 1);
    const share = grids * gridPasses(c, steps) / (grids * gridPasses(c, steps) + runPasses(c, totalSteps));
    if (share <= 0.1) return "";
    return `note: the ${grids} sample grid(s) of ${c.nSamples} images × ${steps} ${c.sampler} steps take about ` +
      `${Math.round(100 * share)} % of this run's time; cheaper: fewer --n-samples, a larger --sample-every` +
      `${c.sampler === "ddpm" ? ", --sampler ddim" : ", fewer --sample-steps"}`;
  }

  /** A stop signal (Ctrl-C, SIGTERM, SIGHUP) asks the loop to stop after the current step; a second one exits at once. */
  readonly stops = STOP_SIGNALS.map((signal) =>
    [signal, () => {
      if (this.stopRequested) Deno.exit(SIGNAL_EXIT[signal] ?? 1);
      this.stopRequested = true;
      const what = signal === "SIGINT" ? "Ctrl-C" : signal;
      this.log(`\n${what}: stopping after this step, with a checkpoint (again: quit without saving)`);
    }] as const
  );

  /** Training goes on: epochs and steps are left, and no Ctrl-C came. */
  get going() {
    return this.epoch < this.config.epochs && this.step < this.totalSteps && !this.stopRequested;
  }

  /** After a step: its loss is logged (every readEvery steps), and a checkpoint written every few minutes. */
  async stepDone(loss: tf.Scalar) {
    this.step++;
    this.stepInEpoch++;
    this.pending.push({ loss, step: this.step, epoch: this.epoch + 1 });
    if (this.pending.length >= this.readEvery) await this.readBack();
    if (!this.going) return;
    if (performance.now() - this.lastCheckpoint > CHECKPOINT_MINUTES * 60e3) await this.checkpoint();
  }

  /**
   * At an epoch's end (or the run's): a checkpoint (unless the last one is too recent: CHECKPOINT_SHARE), then the
   * sample grids and the report when due.
   */
  async epochDone() {
    const { config } = this;
    if (this.stepInEpoch >= Math.ceil(this.data.length / config.batchSize)) { // (not when stopped mid-epoch)
      this.epoch++;
      this.stepInEpoch = 0;
    }
    if (this.stopRequested) return;
    const last = this.step >= this.totalSteps || this.epoch >= config.epochs;
    const due = config.sampleEvery > 0 && this.stepInEpoch === 0 && this.epoch % config.sampleEvery === 0;
    const since = performance.now() - this.lastCheckpoint;
    if (due || last || since * CHECKPOINT_SHARE >= this.checkpointMs) await this.checkpoint();
    if (due || last) {
      const label = this.stepInEpoch
        ? `step_${String(this.step).padStart(7, "0")}`
        : `epoch_${String(this.epoch).padStart(4, "0")}`;
      const { model, emaModel, diffusion } = this.parts!;
      const { dir: runDir, log, threads } = this, classes = this.data.classes;
      const stopped = () => this.stopRequested;
      await sampleGrids({ config, diffusion, model, emaModel, classes, runDir, label, log, stopped, threads });
      await writeReport(this.dir);
    }
  }

  /** The run's end: the last losses, a checkpoint if stopped, the report. */
  async finish() {
    if (this.pending.length) await this.readBack();
    this.progress.done();
    if (this.stopRequested) await this.checkpoint();
    await writeReport(this.dir);
    const how = this.stopRequested ? "stopped" : "done";
    this.log(`${how} at step ${this.step}: open ${join(this.dir, "index.html")}`);
  }

  /** Logs the pending losses; a non-finite one stops the run, naming its step (before anything is saved). */
  private async readBack() {
    const rows = this.pending;
    this.pending = [];
    const stacked = tf.stack(rows.map((r) => r.loss));
    const values = await stacked.data();
    tf.dispose([stacked, ...rows.map((r) => r.loss)]);
    for (const [j, { step, epoch }] of rows.entries()) {
      const loss = values[j];
      if (!Number.isFinite(loss)) {
        throw new TrainingError(`loss is ${loss} at step ${step}: stopped; the last good checkpoint is kept`);
      }
      this.losses.push(loss);
      await this.lossFile.write(new TextEncoder().encode(JSON.stringify({ step, epoch, loss }) + "\n"));
      this.progress.update(step, epoch, this.config.epochs, loss);
    }
    this.slow.seen(rows.at(-1)!.step); // once a read-back: its steps arrive together
  }

  /** RUN/checkpoint/: the weights, the optimizer's moments and the position, all or nothing (checkpoint.ts). */
  private async checkpoint() {
    const started = performance.now();
    if (this.pending.length) await this.readBack();
    const { model, emaModel, opt, ema } = this.parts!;
    this.threads?.momentsInto(opt); // (the workers hold the moments of their share of the weights)
    const files = new Map<string, Map<string, tf.Tensor>>([
      ["model.bin", model.weights],
      ["adam_m.bin", opt.m],
      ["adam_v.bin", opt.v],
    ]);
    if (emaModel) files.set("ema.bin", emaModel.weights);
    const { config, step, epoch, stepInEpoch } = this;
    const state: RunState = {
      config,
      step,
      epoch,
      stepInEpoch,
      seedState: getSeedState(),
      emaStep: ema.step,
      adamStep: opt.step,
      classes: this.data.classes,
    };
    await saveCheckpoint(join(this.dir, "checkpoint"), files, state);
    this.checkpointMs = performance.now() - started;
    this.lastCheckpoint = performance.now();
  }

  /** Frees what the run holds (also after an error); train() frees the parts. */
  close() {
    for (const [signal, stop] of this.stops) Deno.removeSignalListener(signal, stop);
    this.lossFile.close();
    tf.dispose(this.pending.map((r) => r.loss));
    this.threads?.close();
  }
}

/** RUN/holdout.json: the files --holdout keeps out of training (relative to the data folder), and the rule. */
async function writeHoldout(dir: string, files: string[], seed: number) {
  const rule = `in each class, the files ordered by sha256("${seed}:" + path), the first half (rounded down)`;
  const log = { rule, seed, heldOut: files.length, files };
  await Deno.writeTextFile(join(dir, "holdout.json"), JSON.stringify(log, null, 1));
}

/** A new run's model from a PyTorch file (--weights): its width and variant are taken, its labels must fit the data. */
function fromWeights(config: Config, numClasses: number, given: (keyof Config)[]): UNet {
  const file = config.weights!, model = loadTorchModel(file), k = model.numClasses;
  const fail = (e: Error): never => {
    model.dispose();
    throw e;
  };
  if (model.timeDim !== 256) fail(new CheckpointError(`${file}: time_dim ${model.timeDim}; the tutorial's is 256`));
  if (given.includes("width") && config.width !== model.width) {
    fail(new UsageError(`--width ${config.width}: ${file} has width ${model.width}`));
  }
  if (k && !numClasses) fail(new UsageError(`${file} is a conditional UNet: add --conditional`));
  if (!k && numClasses) fail(new UsageError(`${file} is an unconditional UNet: train it without --conditional`));
  if (k !== numClasses) fail(new CheckpointError(`${file} has ${k} classes, the data ${numClasses}`));
  return model;
}

const CHANGEABLE: (keyof Config)[] = [
  "epochs",
  "maxSteps",
  "backend",
  "threads",
  "sampleEvery",
  "nSamples",
  "cfgScale",
  "sampler",
  "sampleSteps",
  "eta",
  "clip",
  "cacheDir",
  "noCache",
];
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

/** A new run's folder: one that exists stops the run (a run is never overwritten), or with `overwrite` is cleared. */
async function clearFolder(dir: string, overwrite: boolean) {
  const entries = await Array.fromAsync(Deno.readDir(dir)).catch(() => []);
  if (!entries.length) return;
  if (!overwrite) throw new UsageError(`${dir} exists: --resume ${dir} to continue, or --name OTHER (or --overwrite)`);
  const isRun = ["checkpoint", "checkpoint.old", "loss.jsonl"].some((f) => existsSync(join(dir, f)));
  if (!isRun) {
    throw new UsageError(`--overwrite: ${dir} is not a run folder (no checkpoint, no loss.jsonl): not cleared`);
  }
  await Deno.remove(dir, { recursive: true });
}

/** The losses of steps 1..step from loss.jsonl (later lines, written after the checkpoint, are dropped). */
async function readLosses(runDir: string, step: number): Promise<number[]> {
  const rows = (await readLossRows(runDir)).filter((r) => r.step <= step);
  await Deno.writeTextFile(join(runDir, "loss.jsonl"), rows.map((r) => JSON.stringify(r) + "\n").join(""));
  return rows.map((r) => r.loss);
}
