// Training (DDPM Algorithm 1) and the command line.
import * as tf from "@tensorflow/tfjs";
import type { Diffusion } from "./diffusion.ts";
import type { Module, UNet } from "./modules.ts";

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
      const g = grads.get(name)!, m = this.m.get(name)!, v = this.v.get(name)!;
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
