// Training: DDPM's Algorithm 1 (trainStep) and the tutorial's train() loop (`deno task train:landscape`, `demo`).
import * as tf from "@tensorflow/tfjs";
import type { Scalar, Tensor1D, Tensor4D } from "./kernels/backend.ts";
import { Diffusion } from "./diffusion.ts";
import { EMA } from "./ema.ts";
import { UNet } from "./modules.ts";
import { AdamW } from "./run/adamw.ts";
import { parseConfig, runCli, trainHelp } from "./run/cli.ts";
import type { Config } from "./run/config.ts";
import { Run, type TrainOptions } from "./run/run.ts";
import { descend, lossGradients, type Threads } from "./run/threads.ts";

/**
 * Algorithm 1: t ~ U{0..T-1}, ε ~ N(0, I), a gradient step on ‖ε - ε_θ(√ᾱ_t·x_0 + √(1-ᾱ_t)·ε, t)‖² (or on the
 * loss the Diffusion's options make of it: Diffusion.target and lossWeightsAt).
 */
export function trainStep(
  model: UNet,
  diffusion: Diffusion,
  opt: AdamW,
  x0: Tensor4D,
  labels: Tensor1D | null = null,
  threads: Threads | null = null, // share the batch among the CPU's threads (run/threads.ts)
): Scalar {
  const t = diffusion.sampleTimesteps(x0.shape[0]);
  const [xt, noise] = diffusion.noiseImages(x0, t);
  const target = diffusion.target(x0, noise, t); // ε (the tutorial's), or v
  const lossWeights = diffusion.lossWeightsAt(t); // min-SNR-γ's w_t; null: plain MSE (the tutorial's)
  const value = threads
    ? threads.step(model, opt, xt, t, target, lossWeights, labels)
    : descend(opt, lossGradients(model, xt, t, target, lossWeights, labels));
  tf.dispose([t, xt, noise, target, ...(lossWeights ? [lossWeights] : [])]);
  return value;
}

/**
 * The tutorial's train(): the model, its optimizer, the diffusion and the EMA copy of the model; then epochs of
 * trainStep over the data (a share of the batches without labels, for classifier-free guidance), the EMA after each
 * step, sample grids every few epochs. The run's folder, resume, checkpoints and Ctrl-C are in run/run.ts.
 */
export async function train(
  config: Config,
  options: TrainOptions = {},
): Promise<{ runDir: string; step: number; losses: number[] }> {
  const run = await Run.start(config, options); // the run's folder and data; on resume, its saved config
  const { imageSize, emaBeta, emaStart, lr, warmupSteps, lrDecay, maxGradNorm } = run.config;
  const numClasses = run.config.conditional ? run.data.classes.length : 0;
  const model = run.pretrained ?? new UNet({ ...run.config, numClasses }); // (--weights: the file's model)
  const emaModel = emaBeta > 0 ? new UNet({ ...run.config, numClasses }) : null;
  const decaySteps = lrDecay === "cosine" ? run.totalSteps : 0; // (the tutorial's lr is constant)
  const opt = new AdamW(model, { lr, warmupSteps, decaySteps, maxGradNorm });
  const diffusion = new Diffusion(run.config);
  const ema = new EMA(emaBeta);
  try {
    if (emaModel) ema.resetParameters(emaModel, model); // ema_model = copy.deepcopy(model)
    await run.restore({ model, emaModel, opt, ema, diffusion }); // resume: all of them from the checkpoint
    while (run.going) {
      for (const batch of run.batches()) { // this epoch's shuffled batches; on resume, the ones left
        const loss = tf.tidy(() => {
          const x0 = tf.tensor4d(batch.x, [batch.n, imageSize, imageSize, 3]);
          const labels = batch.labels ? tf.tensor1d(batch.labels, "int32") : null; // null: a step without labels
          return trainStep(model, diffusion, opt, x0, labels, run.threads);
        });
        if (emaModel) ema.stepEma(emaModel, model, emaStart);
        await run.stepDone(loss);
      }
      await run.epochDone(); // a checkpoint; sample grids every sampleEvery epochs
    }
    await run.finish();
  } finally {
    run.close();
    for (const d of [model, emaModel, opt, diffusion]) d?.dispose();
  }
  return { runDir: run.dir, step: run.step, losses: run.losses };
}

if (import.meta.main) {
  await runCli(async () => {
    const { config, resume, overwrite, help, preset, given } = parseConfig(Deno.args);
    if (help) return console.log(trainHelp(preset));
    if (!resume && config.data === "builtin:landscapes" && !Deno.args.includes("--data")) {
      console.log("no --data given: training on the built-in procedural landscapes (builtin:landscapes)");
    }
    await train(config, { resume, overwrite, given });
  });
}
