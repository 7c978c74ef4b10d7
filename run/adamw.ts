// The optimizer, PyTorch's optim.AdamW in the tutorial's train().
import * as tf from "@tensorflow/tfjs";
import type { Tensor, Variable } from "../kernels/backend.ts";
import { type AdamWParam, type AdamWStep, fusedAdamW, hasFused } from "../kernels/fused.ts";
import type { Module } from "../modules.ts";

/** AdamW's settings (PyTorch's defaults: lr 3e-4, betas 0.9 and 0.999, eps 1e-8, weight decay 0.01). */
export interface AdamWOptions {
  /** The learning rate. */
  lr?: number;
  /** β_1 and β_2, the decays of the moments. */
  betas?: [number, number];
  /** ε, added to √v. */
  eps?: number;
  /** The decoupled weight decay λ. */
  weightDecay?: number;
  /** Clip the gradients to this global L2 norm first, as lucidrains' Trainer does; 0: no clipping. */
  maxGradNorm?: number;
  /** The lr rises linearly from lr/warmupSteps to lr over these steps (Goyal et al. 2017). */
  warmupSteps?: number;
  /** Then falls to 0 by this step, on a half cosine (Loshchilov & Hutter 2017); 0: constant. */
  decaySteps?: number;
}

/** AdamW (Loshchilov & Hutter 2019), PyTorch's defaults: decoupled weight decay, then the Adam step. */
export class AdamW {
  /** The updates taken. */
  step = 0;
  /** The first moments, by weight name (on CPU threads each worker holds its weights': Threads.momentsInto). */
  m: Map<string, Variable> = new Map();
  /** The second moments, by weight name. */
  v: Map<string, Variable> = new Map();
  /** The learning rate. */
  lr: number;
  /** β_1 and β_2. */
  readonly betas: [number, number];
  /** ε. */
  readonly eps: number;
  /** The weight decay λ. */
  readonly weightDecay: number;
  /** Clip the gradients to this global L2 norm first (0: no clipping). */
  readonly maxGradNorm: number;
  /** Steps of linear lr warm-up (0: none). */
  readonly warmupSteps: number;
  /** The step by which a cosine decay brings the lr to 0 (0: constant). */
  readonly decaySteps: number;
  /** An optimizer of `model`'s weights, with zero moments. */
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
    this.lr = lr;
    this.betas = betas;
    this.eps = eps;
    this.weightDecay = weightDecay;
    this.maxGradNorm = maxGradNorm;
    this.warmupSteps = warmupSteps;
    this.decaySteps = decaySteps;
    const zeros = (w: Tensor) => tf.tidy(() => tf.variable(tf.zerosLike(w), false));
    for (const [name, w] of model.weights) {
      this.m.set(name, zeros(w));
      this.v.set(name, zeros(w));
    }
  }

  /** The learning rate of step `step` (1, 2, …): linear warm-up, then constant or a cosine decay to 0. */
  lrAt(step: number): number {
    const warm = this.warmupSteps ? Math.min(1, step / this.warmupSteps) : 1;
    if (!this.decaySteps) return this.lr * warm;
    const span = Math.max(1, this.decaySteps - this.warmupSteps);
    const progress = Math.min(1, Math.max(0, (step - this.warmupSteps) / span));
    return this.lr * warm * 0.5 * (1 + Math.cos(Math.PI * progress));
  }

  /**
   * One update from gradients keyed by weight name, clipped first to maxGradNorm if it is set (inside the AdamW
   * kernel where the backend has clippedAdamw: the same floats as clipByGlobalNorm's, without its ~600 kernels).
   */
  update(grads: Map<string, Tensor>): void {
    const s = this.nextStep();
    if (!this.maxGradNorm || hasFused("clippedAdamw")) return this.adamStep(grads, s);
    const clipped = clipByGlobalNorm(grads, this.maxGradNorm);
    this.adamStep(clipped, { ...s, maxGradNorm: 0 });
    tf.dispose([...clipped.values()]);
  }

  /** Counts one more update; its settings: the lr at that step, the bias corrections, the clip norm. */
  nextStep(): AdamWStep {
    this.step += 1;
    const [beta1, beta2] = this.betas;
    const c1 = 1 - beta1 ** this.step; // bias corrections of m and v
    const c2 = 1 - beta2 ** this.step;
    const { eps, weightDecay, maxGradNorm } = this;
    return { lr: this.lrAt(this.step), beta1, beta2, eps, weightDecay, c1, c2, maxGradNorm };
  }

  /** Each weight that has a gradient in `grads` with its moments (one without stays, as in PyTorch). */
  private params(grads: Map<string, Tensor>): AdamWParam[] {
    return [...this.model.weights].filter(([name]) => grads.get(name))
      .map(([name, w]) => ({ w, m: this.m.get(name)!, v: this.v.get(name)!, g: grads.get(name)! }));
  }

  /** The AdamW step `s`: one fused kernel for many weights where the backend has it (clipping them first). */
  private adamStep(grads: Map<string, Tensor>, s: AdamWStep): void {
    const params = this.params(grads);
    if (hasFused("adamw")) return fusedAdamW(params, s);
    const { lr, beta1, beta2, eps, weightDecay, c1, c2 } = s;
    for (const { w, m, v, g } of params) {
      tf.tidy(() => {
        m.assign(m.mul(beta1).add(g.mul(1 - beta1)));
        v.assign(v.mul(beta2).add(g.square().mul(1 - beta2)));
        const stepDir = m.div(c1).div(v.div(c2).sqrt().add(eps));
        w.assign(w.mul(1 - lr * weightDecay).sub(stepDir.mul(lr)));
      });
    }
  }

  /** Frees the moments. */
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
