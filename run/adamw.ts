// The optimizer, PyTorch's optim.AdamW in the tutorial's train().
import * as tf from "@tensorflow/tfjs";
import type { Tensor, Variable } from "../kernels/backend.ts";
import { fusedAdamW, hasFused } from "../kernels/fused.ts";
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
}

/** AdamW (Loshchilov & Hutter 2019), PyTorch's defaults: decoupled weight decay, then the Adam step. */
export class AdamW {
  /** The updates taken. */
  step = 0;
  /** The first moments, by weight name. */
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
  /** An optimizer of `model`'s weights, with zero moments. */
  constructor(
    readonly model: Module,
    { lr = 3e-4, betas = [0.9, 0.999], eps = 1e-8, weightDecay = 0.01 }: AdamWOptions = {},
  ) {
    this.lr = lr;
    this.betas = betas;
    this.eps = eps;
    this.weightDecay = weightDecay;
    const zeros = (w: Tensor) => tf.tidy(() => tf.variable(tf.zerosLike(w), false));
    for (const [name, w] of model.weights) {
      this.m.set(name, zeros(w));
      this.v.set(name, zeros(w));
    }
  }

  /** One update from gradients keyed by weight name: one fused kernel for many weights where the backend has it. */
  update(grads: Map<string, Tensor>): void {
    this.step += 1;
    const [beta1, beta2] = this.betas;
    const c1 = 1 - beta1 ** this.step; // bias corrections of m and v
    const c2 = 1 - beta2 ** this.step;
    // A weight without a gradient this step (the label embedding on an unconditional step) stays, as in PyTorch.
    const params = [...this.model.weights].filter(([name]) => grads.get(name))
      .map(([name, w]) => ({ w, m: this.m.get(name)!, v: this.v.get(name)!, g: grads.get(name)! }));
    const { lr, eps, weightDecay } = this;
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

  /** Frees the moments. */
  dispose() {
    tf.dispose([...this.m.values(), ...this.v.values()]);
  }
}
