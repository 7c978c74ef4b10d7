// Training: AdamW, DDPM's Algorithm 1, and the training run (`deno task train:landscape`, `train:cifar`, `demo`).
import * as tf from "@tensorflow/tfjs";
import { join } from "node:path";
import { getSeedState, setBackend, setSeed } from "./backend.ts";
import { assignWeights, readState, type RunState, saveCheckpoint } from "./checkpoint.ts";
import { type Config, DEFAULTS, flagOf, HELP, parseConfig, runCli, TrainingError, UsageError } from "./cli.ts";
import { Diffusion } from "./diffusion.ts";
import { EMA } from "./ema.ts";
import { type Module, UNet } from "./modules.ts";
import { Progress, readLossRows, sampleGrids, writeReport } from "./report.ts";
import { loadDataset, mulberry32 } from "./utils.ts";

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
  const numClasses = config.conditional ? data.classes.length : 0;
  const makeModel = () => new UNet({ width: config.width, numClasses });
  const model = makeModel();
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
        const dropLabels = rand() < config.labelDrop; // (drawn for skipped batches too: same stream)
        if (i++ < stepInEpoch) continue; // resumed in the middle of this epoch
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
