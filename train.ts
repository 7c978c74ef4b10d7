// Training: DDPM's Algorithm 1 (trainStep) and the tutorial's train() loop (`deno task train:landscape`, `demo`).
import * as tf from "@tensorflow/tfjs";
import { mulberry32 } from "./kernels/backend.ts";
import { HELP, parseConfig, runCli } from "./run/cli.ts";
import { type Config } from "./run/config.ts";
import type { AdamW } from "./run/adamw.ts";
import type { Diffusion } from "./diffusion.ts";
import type { UNet } from "./modules.ts";
import { Run, type TrainOptions } from "./run/run.ts";

/**
 * Algorithm 1: t ~ U{0..T-1}, ε ~ N(0, I), a gradient step on ‖ε - ε_θ(√ᾱ_t·x_0 + √(1-ᾱ_t)·ε, t)‖² (or on the
 * loss the Diffusion's options make of it: Diffusion.loss).
 */
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
    () => diffusion.loss(model.forward(xt, t, labels), x0, noise, t),
    weights,
  );
  const byName = new Map([...model.weights].map(([name, w]) => [name, grads[w.name]]));
  opt.update(byName);
  tf.dispose([t, xt, noise, ...Object.values(grads)]);
  return value;
}

/**
 * The tutorial's train(): epochs of trainStep over the data (a share of the batches without labels, for
 * classifier-free guidance), the EMA after each step, sample grids every few epochs. The run's folder, resume,
 * checkpoints and Ctrl-C are in run.ts.
 */
export async function train(config: Config, options: TrainOptions = {}) {
  const run = await Run.start(config, options);
  const { model, emaModel, ema, opt, diffusion, data } = run, { imageSize, batchSize } = run.config;
  const numClasses = run.config.conditional ? data.classes.length : 0;
  try {
    while (run.going) {
      const rand = mulberry32(run.config.seed * 7919 + run.epoch); // the epoch's shuffle and label drops
      let i = 0;
      for (const batch of data.batches(batchSize, rand)) {
        const dropLabels = rand() < run.config.labelDrop; // (drawn for skipped batches too: the same stream)
        if (i++ < run.stepInEpoch) continue; // resumed in the middle of this epoch
        const loss = tf.tidy(() => {
          const x0 = tf.tensor4d(batch.x, [batch.n, imageSize, imageSize, 3]);
          const labels = numClasses && !dropLabels ? tf.tensor1d(batch.labels, "int32") : null;
          return trainStep(model, diffusion, opt, x0, labels);
        });
        if (emaModel) ema.stepEma(emaModel, model, run.config.emaStart);
        await run.stepDone(loss);
        if (!run.going) break;
      }
      await run.epochDone();
    }
    await run.finish();
  } finally {
    run.close();
  }
  return { runDir: run.dir, step: run.step, losses: run.losses };
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
