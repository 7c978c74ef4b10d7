// The optimizer, PyTorch's optim.AdamW in the tutorial's train().
import * as tf from "@tensorflow/tfjs";
import { fusedAdamW, hasFused } from "../kernels/fused.ts";
import type { Module } from "../modules.ts";

export interface AdamWOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
  maxGradNorm?: number; // clip the gradients to this global L2 norm first, as lucidrains' Trainer; 0 = no clipping
  warmupSteps?: number; // the lr rises linearly from lr/warmupSteps to lr over these steps (Goyal et al. 2017)
  decaySteps?: number; // then falls to 0 by this step, on a half cosine (Loshchilov & Hutter 2017); 0 = constant
}

/** AdamW (Loshchilov & Hutter 2019), PyTorch's defaults: decoupled weight decay, then the Adam step. */
export class AdamW {
  step = 0;
  m = new Map<string, tf.Variable>();
  v = new Map<string, tf.Variable>();
  lr: number;
  readonly betas: [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  readonly maxGradNorm: number;
  readonly warmupSteps: number;
  readonly decaySteps: number;
  constructor(
    readonly model: Module,
    {
      lr = 3e-4,
      betas = [0.9, 0.999],
      eps = 1e-8,
      weightDecay = 0.01,
      maxGradNorm = 0,
      warmupSteps = 0,
      decaySteps = 0,
    }: AdamWOptions = {},
  ) {
    [this.lr, this.betas, this.eps, this.weightDecay] = [lr, betas, eps, weightDecay];
    [this.maxGradNorm, this.warmupSteps, this.decaySteps] = [maxGradNorm, warmupSteps, decaySteps];
    const zeros = (w: tf.Tensor) => tf.tidy(() => tf.variable(tf.zerosLike(w), false));
    for (const [name, w] of model.weights) this.m.set(name, zeros(w)), this.v.set(name, zeros(w));
  }

  /** The learning rate of step `step` (1, 2, …): linear warm-up, then constant or a cosine decay to 0. */
  lrAt(step: number): number {
    const warm = this.warmupSteps ? Math.min(1, step / this.warmupSteps) : 1;
    if (!this.decaySteps) return this.lr * warm;
    const progress = Math.min(
      1,
      Math.max(0, (step - this.warmupSteps) / Math.max(1, this.decaySteps - this.warmupSteps)),
    );
    return this.lr * warm * 0.5 * (1 + Math.cos(Math.PI * progress));
  }

  /** One update from gradients keyed by weight name, clipped first to maxGradNorm if it is set. */
  update(grads: Map<string, tf.Tensor>) {
    this.step += 1;
    if (!this.maxGradNorm) return this.adamStep(grads);
    const clipped = clipByGlobalNorm(grads, this.maxGradNorm);
    this.adamStep(clipped);
    tf.dispose([...clipped.values()]);
  }

  /** The AdamW step at this.step: one fused kernel for many weights where the backend has it. */
  private adamStep(grads: Map<string, tf.Tensor>) {
    const [beta1, beta2] = this.betas;
    const c1 = 1 - beta1 ** this.step, c2 = 1 - beta2 ** this.step; // bias corrections of m and v
    const params = [...this.model.weights].filter(([name]) => grads.get(name)) // a weight unused this step (the label
      .map(([name, w]) => ({ w, m: this.m.get(name)!, v: this.v.get(name)!, g: grads.get(name)! })); // embedding
    const { eps, weightDecay } = this, lr = this.lrAt(this.step); //          on an unconditional step) stays, as in PyTorch
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

/** The gradients scaled by min(1, maxNorm/‖g‖), ‖g‖ the L2 norm of all of them together (torch's clip_grad_norm_). */
export function clipByGlobalNorm(grads: Map<string, tf.Tensor>, maxNorm: number): Map<string, tf.Tensor> {
  const given = [...grads].filter(([, g]) => g);
  const scale = tf.tidy(() => {
    const norm = tf.addN(given.map(([, g]) => g.square().sum())).sqrt();
    return tf.minimum(1, tf.div(maxNorm, norm.add(1e-6)));
  });
  const clipped = new Map(given.map(([name, g]) => [name, g.mul(scale)]));
  scale.dispose();
  return clipped;
}
