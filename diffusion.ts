// The diffusion process of DDPM (Ho et al. 2020): schedule, forward noising, training timesteps, sampling.
import * as tf from "@tensorflow/tfjs";
import { nextSeed } from "./backend.ts";

/** Anything that predicts the noise ε_θ(x_t, t, y) (the U-Net). */
export interface NoiseModel {
  forward(x: tf.Tensor4D, t: tf.Tensor1D, labels?: tf.Tensor1D | null): tf.Tensor4D;
}

export interface DiffusionOptions {
  noiseSteps?: number;
  betaStart?: number;
  betaEnd?: number;
  imgSize?: number;
}

export interface SampleOptions {
  labels?: number[] | null; // one class per image (conditional models)
  cfgScale?: number; // classifier-free guidance; 0 = conditional prediction only
  onStep?: (i: number) => void; // progress: called with the remaining step count
}

export class Diffusion {
  readonly noiseSteps: number;
  readonly imgSize: number;
  readonly beta: Float64Array; // β_t, linear from betaStart to betaEnd
  readonly alpha: Float64Array; // α_t = 1 - β_t
  readonly alphaHat: Float64Array; // ᾱ_t = Π_{s≤t} α_s
  private sqrtAlphaHat: tf.Tensor1D;
  private sqrtOneMinusAlphaHat: tf.Tensor1D;

  constructor({ noiseSteps = 1000, betaStart = 1e-4, betaEnd = 0.02, imgSize = 64 }: DiffusionOptions = {}) {
    this.noiseSteps = noiseSteps;
    this.imgSize = imgSize;
    this.beta = Float64Array.from(
      { length: noiseSteps },
      (_, t) => betaStart + (betaEnd - betaStart) * t / Math.max(1, noiseSteps - 1),
    );
    this.alpha = this.beta.map((b) => 1 - b);
    let prod = 1;
    this.alphaHat = this.alpha.map((a) => (prod *= a));
    this.sqrtAlphaHat = tf.tensor1d(Float32Array.from(this.alphaHat, Math.sqrt));
    this.sqrtOneMinusAlphaHat = tf.tensor1d(Float32Array.from(this.alphaHat, (a) => Math.sqrt(1 - a)));
  }

  /** Eq. 4: x_t = √ᾱ_t·x_0 + √(1-ᾱ_t)·ε, ε ~ N(0, I). Returns [x_t, ε]. */
  noiseImages(x: tf.Tensor4D, t: tf.Tensor1D): [tf.Tensor4D, tf.Tensor4D] {
    return tf.tidy(() => {
      const sqrtAlphaHat = tf.gather(this.sqrtAlphaHat, t).reshape([-1, 1, 1, 1]);
      const sqrtOneMinusAlphaHat = tf.gather(this.sqrtOneMinusAlphaHat, t).reshape([-1, 1, 1, 1]);
      const eps = tf.randomNormal(x.shape, 0, 1, "float32", nextSeed()) as tf.Tensor4D;
      return [sqrtAlphaHat.mul(x).add(sqrtOneMinusAlphaHat.mul(eps)), eps];
    });
  }

  /** Algorithm 1, line 3: t ~ Uniform({0, …, T-1}) (every step, t = 0 included). */
  sampleTimesteps(n: number): tf.Tensor1D {
    return tf.randomUniformInt([n], 0, this.noiseSteps, nextSeed()) as tf.Tensor1D;
  }

  /** The noise prediction, with classifier-free guidance: lerp(ε(x, t), ε(x, t, y), cfgScale). */
  predictNoise(model: NoiseModel, x: tf.Tensor4D, t: tf.Tensor1D, labels: tf.Tensor1D | null, cfgScale: number) {
    return tf.tidy(() => {
      const eps = model.forward(x, t, labels);
      if (!labels || cfgScale <= 0) return eps;
      const uncond = model.forward(x, t, null);
      return uncond.add(eps.sub(uncond).mul(cfgScale)) as tf.Tensor4D; // ε_u + s·(ε_c - ε_u)
    });
  }

  /** Algorithm 2 with σ_t² = β_t: from x_T ~ N(0, I) down to x_0. Returns n RGB images, NHWC uint8. */
  async sample(model: NoiseModel, n: number, { labels = null, cfgScale = 3, onStep }: SampleOptions = {}) {
    const s = this.imgSize;
    const y = labels ? tf.tensor1d(labels, "int32") : null;
    let x = tf.randomNormal([n, s, s, 3], 0, 1, "float32", nextSeed()) as tf.Tensor4D;
    for (let i = this.noiseSteps - 1; i >= 0; i--) {
      const next = tf.tidy(() => {
        const t = tf.fill([n], i, "int32") as tf.Tensor1D;
        const eps = this.predictNoise(model, x, t, y, cfgScale);
        const [alpha, alphaHat, beta] = [this.alpha[i], this.alphaHat[i], this.beta[i]];
        // x_{t-1} = 1/√α_t·(x_t - (1-α_t)/√(1-ᾱ_t)·ε_θ) + σ_t·z, with z = 0 at the last step
        const mean = x.sub(eps.mul((1 - alpha) / Math.sqrt(1 - alphaHat))).div(Math.sqrt(alpha));
        if (i === 0) return mean as tf.Tensor4D;
        return mean.add(tf.randomNormal(x.shape, 0, Math.sqrt(beta), "float32", nextSeed())) as tf.Tensor4D;
      });
      x.dispose();
      x = next;
      onStep?.(i);
      if (i % 50 === 0) await x.data(); // let the backend drain its queue (WebGPU)
    }
    y?.dispose();
    return await toUint8(x);
  }

  dispose() {
    tf.dispose([this.sqrtAlphaHat, this.sqrtOneMinusAlphaHat]);
  }
}

/** [-1, 1] floats to [0, 255] bytes; disposes x. */
export async function toUint8(x: tf.Tensor4D): Promise<Uint8Array> {
  const bytes = tf.tidy(() => x.clipByValue(-1, 1).add(1).mul(127.5).round());
  x.dispose();
  const data = Uint8Array.from(await bytes.data());
  bytes.dispose();
  return data;
}
