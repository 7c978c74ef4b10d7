// Training: AdamW, DDPM's Algorithm 1, and the training run (`deno task train:landscape`, `train:cifar`, `demo`).
import * as tf from "@tensorflow/tfjs";
import { join } from "node:path";
import { getSeedState, mulberry32, setBackend, setSeed } from "./backend.ts";
import { assignWeights, readState, type RunState, saveCheckpoint } from "./checkpoint.ts";
import { type Config, DEFAULTS, flagOf, HELP, parseConfig, runCli, TrainingError, UsageError } from "./cli.ts";
import { Diffusion } from "./diffusion.ts";
import { EMA } from "./ema.ts";
import { fusedAdamW, hasFused } from "./fused.ts";
import { type Module, UNet } from "./modules.ts";
import { loadTorchModel } from "./pytorch.ts";
import { Progress, readLossRows, sampleGrids, saveDataImages, writeReport } from "./report.ts";
import { CheckpointError } from "./weights.ts";
import { loadDataset } from "./utils.ts";

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
    const zeros = (w: tf.Tensor) => tf.tidy(() => tf.variable(tf.zerosLike(w), false));
    for (const [name, w] of model.weights) this.m.set(name, zeros(w)), this.v.set(name, zeros(w));
  }

  /** One update from gradients keyed by weight name: one fused kernel for many weights where the backend has it. */
  update(grads: Map<string, tf.Tensor>) {
    this.step += 1;
    const [beta1, beta2] = this.betas;
    const c1 = 1 - beta1 ** this.step, c2 = 1 - beta2 ** this.step; // bias corrections of m and v
    const params = [...this.model.weights].filter(([name]) => grads.get(name)) // a weight unused this step (the label
      .map(([name, w]) => ({ w, m: this.m.get(name)!, v: this.v.get(name)!, g: grads.get(name)! })); // embedding
    const { lr, eps, weightDecay } = this; //                                 on an unconditional step) stays, as in PyTorch
    if (hasFused("adamw")) return fusedAdamW(params, { lr, beta1, beta2, eps, weightDecay, c1, c2 });
    for (const { w, m, v, g } of params) {
      tf.tidy(() => {
        m.assign(m.mul(beta1).add(g.mul(1 - beta1)));
        v.assign(v.mul(beta2).add(g.square().mul(1 - beta2)));
        const stepDir = m.div(c1).div(v.div(c2).sqrt().add(eps));
        w.assign(w.mul(1 - lr * weightDecay).sub(stepDir.mul(lr)));
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

/** A Ctrl-C asks the loop to stop after the current step; a second one exits at once. */
export const stopSignal = { requested: false };

export interface TrainOptions {
  resume?: boolean; // continue config.out/config.name from its checkpoint
  given?: (keyof Config)[]; // the settings given as flags (on resume, only some may change)
  log?: (line: string) => void;
}

/** Steps between loss read-backs: on a GPU a read-back waits for the queue (≥ 10 ms in Deno's WebGPU). */
export const READ_BACK = { gpu: 20, cpu: 1 };

/** Minutes of training between checkpoints within an epoch (one is also written at each epoch's end). */
const CHECKPOINT_MINUTES = 10;

export async function train(config: Config, { resume = false, given = [], log = console.log }: TrainOptions = {}) {
  const runDir = join(config.out, config.name);
  let state: RunState | null = null;
  if (resume) {
    state = await readState(runDir, ["state.json", "model.bin", "adam_m.bin", "adam_v.bin"]);
    config = { ...DEFAULTS, ...state.config, ...changedOnResume(config, state.config, given) };
  }
  const backend = await setBackend(config.backend, log);
  await Deno.mkdir(join(runDir, "samples"), { recursive: true });
  setSeed(config.seed);
  const data = await loadDataset(config.data, config.imageSize, {
    seed: config.seed,
    count: config.count || undefined,
    cacheDir: config.cacheDir,
    noCache: config.noCache,
    log,
  });
  await saveDataImages(runDir, data, config.seed);
  const numClasses = config.conditional ? data.classes.length : 0;
  const makeModel = () => new UNet({ width: config.width, numClasses, removeDeepConv: config.removeDeepConv });
  const model = config.weights && !resume ? fromWeights(config, numClasses, given) : makeModel();
  if (model.width !== config.width) config = { ...config, width: model.width }; // (from --weights)
  if (model.removeDeepConv) config = { ...config, removeDeepConv: true };
  const emaModel = config.emaBeta > 0 ? makeModel() : null;
  const ema = new EMA(config.emaBeta);
  const opt = new AdamW(model, config.lr);
  const diffusion = new Diffusion({
    noiseSteps: config.noiseSteps,
    imgSize: config.imageSize,
    schedule: config.schedule,
  });
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

  const readEvery = backend === "webgpu" || backend === "tensorflow" ? READ_BACK.gpu : READ_BACK.cpu;
  let pending: { loss: tf.Scalar; step: number; epoch: number }[] = [];
  const lossFile = await Deno.open(join(runDir, "loss.jsonl"), { append: true, create: true });
  const progress = new Progress(totalSteps, config.batchSize, log);
  /** Logs the pending losses; a non-finite one stops the run, naming its step (before anything is saved). */
  const readBack = async () => {
    const rows = pending;
    pending = [];
    const stacked = tf.stack(rows.map((r) => r.loss));
    const values = await stacked.data();
    tf.dispose([stacked, ...rows.map((r) => r.loss)]);
    for (const [j, { step, epoch }] of rows.entries()) {
      const loss = values[j];
      if (!Number.isFinite(loss)) {
        throw new TrainingError(`loss is ${loss} at step ${step}: stopped; the last good checkpoint is kept`);
      }
      losses.push(loss);
      await lossFile.write(new TextEncoder().encode(JSON.stringify({ step, epoch, loss }) + "\n"));
      progress.update(step, epoch, config.epochs, loss);
    }
  };
  const checkpoint = async () => {
    if (pending.length) await readBack();
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
  try {
    while (epoch < config.epochs && step < totalSteps && !stopSignal.requested) {
      const rand = mulberry32(config.seed * 7919 + epoch);
      let i = 0;
      for (const batch of data.batches(config.batchSize, rand)) {
        const dropLabels = rand() < config.labelDrop; // (drawn for skipped batches too: same stream)
        if (i++ < stepInEpoch) continue; // resumed in the middle of this epoch
        const loss = tf.tidy(() => {
          const x0 = tf.tensor4d(batch.x, [batch.n, config.imageSize, config.imageSize, 3]);
          const labels = numClasses && !dropLabels ? tf.tensor1d(batch.labels, "int32") : null;
          return trainStep(model, diffusion, opt, x0, labels);
        });
        if (emaModel) ema.stepEma(emaModel, model, config.emaStart);
        step++, stepInEpoch++;
        pending.push({ loss, step, epoch: epoch + 1 });
        if (pending.length >= readEvery) await readBack();
        if (stopSignal.requested || step >= totalSteps) break;
        if (performance.now() - lastCheckpoint > CHECKPOINT_MINUTES * 60e3) await checkpoint();
      }
      if (stepInEpoch >= stepsPerEpoch) epoch++, stepInEpoch = 0;
      if (stopSignal.requested) break;
      await checkpoint();
      const last = step >= totalSteps || epoch >= config.epochs;
      if ((stepInEpoch === 0 && epoch % config.sampleEvery === 0) || last) {
        const label = stepInEpoch ? `step_${String(step).padStart(7, "0")}` : `epoch_${String(epoch).padStart(4, "0")}`;
        await sampleGrids(
          config,
          diffusion,
          model,
          emaModel,
          data.classes,
          runDir,
          label,
          log,
          () => stopSignal.requested,
        );
        await writeReport(runDir);
      }
    }
    if (pending.length) await readBack();
    progress.done();
    if (stopSignal.requested) await checkpoint();
    await writeReport(runDir);
    log(`${stopSignal.requested ? "stopped" : "done"} at step ${step}: open ${join(runDir, "index.html")}`);
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
    stopSignal.requested = false;
    lossFile.close();
    tf.dispose(pending.map((r) => r.loss));
    for (const d of [model, emaModel, opt, diffusion]) d?.dispose();
  }
  return { runDir, step, losses };
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

/** The losses of steps 1..step from loss.jsonl (later lines, written after the checkpoint, are dropped). */
async function readLosses(runDir: string, step: number): Promise<number[]> {
  const rows = (await readLossRows(runDir)).filter((r) => r.step <= step);
  await Deno.writeTextFile(join(runDir, "loss.jsonl"), rows.map((r) => JSON.stringify(r) + "\n").join(""));
  return rows.map((r) => r.loss);
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
