// The diffusion process of DDPM (Ho et al. 2020): schedule, forward noising, training timesteps, sampling;
// beyond the tutorial: DDIM sampling (Song et al. 2021) and the cosine schedule (Nichol & Dhariwal 2021).
import * as tf from "@tensorflow/tfjs";
import { nextSeed, paceQueue, type Scalar, type Tensor1D, type Tensor4D } from "./kernels/backend.ts";

/** Anything that predicts the noise ε_θ(x_t, t, y) (the U-Net). */
export interface NoiseModel {
  /** ε_θ(x_t, t[, y]): the predicted noise, the shape of x. */
  forward(x: Tensor4D, t: Tensor1D, labels?: Tensor1D | null): Tensor4D;
}

/** The noise schedule β_t: the tutorial's linear one, or Nichol & Dhariwal's cosine one. */
export type Schedule = "linear" | "cosine";
/** The reverse process: DDPM's Algorithm 2 over all T steps, or DDIM (Song et al. 2021) over fewer. */
export type Sampler = "ddpm" | "ddim";
/** What the network predicts: the noise ε (the tutorial's), or v = √ᾱ_t·ε - √(1-ᾱ_t)·x_0 (Salimans & Ho 2022). */
export type Prediction = "eps" | "v";

/** The settings of a Diffusion, named as a run's Config names them (`new Diffusion(config)`); the tutorial's defaults. */
export interface DiffusionOptions {
  /** T, the number of diffusion steps. @default 1000 */
  noiseSteps?: number;
  /** β_1 of the linear schedule. @default 1e-4 */
  betaStart?: number;
  /** β_T of the linear schedule. @default 0.02 */
  betaEnd?: number;
  /** The side of the (square) images, in pixels. @default 64 */
  imageSize?: number;
  /** linear (the tutorial's) or cosine. @default "linear" */
  schedule?: Schedule;
  /** What the U-Net predicts: eps (the tutorial's) or v. @default "eps" */
  prediction?: Prediction;
  /** min-SNR-γ loss weighting (Hang et al. 2023); 0 = plain MSE (the tutorial's). @default 0 */
  minSnrGamma?: number;
}

/** How Diffusion.sample draws images: the sampler, its steps, labels and guidance. */
export interface SampleOptions {
  /** one class per image (conditional models) */
  labels?: number[] | null;
  /** Classifier-free guidance scale (the tutorial's 3); 0 = conditional prediction only. @default 3 */
  cfgScale?: number;
  /** ddpm: Algorithm 2 over all T steps; ddim: Song et al. over `sampleSteps` of them. @default "ddpm" */
  sampler?: Sampler;
  /** DDIM only: the length of the sub-sequence τ of {0, …, T-1}. @default 50 */
  sampleSteps?: number;
  /** DDIM only: η of Eq. 16; 0 = deterministic, 1 = DDPM's posterior variance. @default 0 */
  eta?: number;
  /** The starting noise x_T (default: drawn); not disposed. */
  xT?: Tensor4D;
  /** Clip the predicted x̂_0 to [-1, 1] at every step, as the DDPM authors' code does. @default true */
  clip?: boolean;
  /** Progress: the remaining step count, x after the step and the x̂_0 it came from (both freed after the call). */
  onStep?: (k: number, x: Tensor4D, x0: Tensor4D) => void | Promise<void>;
}

/** Clip the predicted x̂_0 to the data range [-1, 1] (default true, as in SampleOptions). */
export type ClipOption = { clip?: boolean };

/** One reverse step x_t → x_prev = mean + σ·z, z ~ N(0, I), and the x̂_0 it implies. */
export interface Step {
  /** The mean of x_prev. */
  mean: Tensor4D;
  /** σ_t, the standard deviation of the noise added to the mean. */
  sigma: number;
  /** x̂_0, the x_0 the step predicts. */
  x0: Tensor4D;
}

/** Nichol & Dhariwal Eq. 17: f(t) = cos²((t/T + s)/(1 + s)·π/2), s = 0.008; ᾱ_t = f(t)/f(0). */
export const cosineF = (t: number, T: number, s = 0.008) => Math.cos((t / T + s) / (1 + s) * Math.PI / 2) ** 2;

/**
 * DDPM's diffusion process: the β schedule, q(x_t | x_0) for training, and sampling (Algorithm 2, or DDIM).
 * @example Noise a batch, as Algorithm 1 does
 * ```ts
 * import * as tf from "npm:@tensorflow/tfjs@4.22.0";
 * import { Diffusion } from "@ddpm/ddpm";
 *
 * const diffusion = new Diffusion({ noiseSteps: 1000, imageSize: 16 });
 * const x0 = tf.zeros([4, 16, 16, 3]) as tf.Tensor4D;
 * const t = diffusion.sampleTimesteps(4);
 * const [xt, noise] = diffusion.noiseImages(x0, t); // x_t and ε
 * ```
 */
export class Diffusion {
  /** T, the number of diffusion steps. */
  readonly noiseSteps: number;
  /** The side of the images, in pixels. */
  readonly imageSize: number;
  /** The β schedule: linear or cosine. */
  readonly schedule: Schedule;
  /** what the U-Net predicts: ε or v */
  readonly prediction: Prediction;
  /** γ of min-SNR-γ; 0: plain MSE */
  readonly minSnrGamma: number;
  /** β_t: linear from betaStart to betaEnd, or from the cosine ᾱ */
  readonly beta: Float64Array;
  /** α_t = 1 - β_t */
  readonly alpha: Float64Array;
  /** ᾱ_t = Π_{s≤t} α_s */
  readonly alphaHat: Float64Array;
  private sqrtAlphaHat: Tensor1D;
  private sqrtOneMinusAlphaHat: Tensor1D;
  private minSnrWeights: Tensor1D | null; // lossWeights() as a tensor, with min-SNR-γ only

  /** The schedule's β_t, α_t and ᾱ_t for T steps. */
  constructor(
    {
      noiseSteps = 1000,
      betaStart = 1e-4,
      betaEnd = 0.02,
      imageSize = 64,
      schedule = "linear",
      prediction = "eps",
      minSnrGamma = 0,
    }: DiffusionOptions = {},
  ) {
    if (schedule !== "linear" && schedule !== "cosine") throw new RangeError(`unknown schedule ${schedule}`);
    if (prediction !== "eps" && prediction !== "v") throw new RangeError(`unknown prediction ${prediction}`);
    this.prediction = prediction;
    this.minSnrGamma = minSnrGamma;
    this.noiseSteps = noiseSteps;
    this.imageSize = imageSize;
    this.schedule = schedule;
    const T = noiseSteps;
    // Index i holds step t = i + 1 of the papers. Cosine: β_t = min(1 - ᾱ_t/ᾱ_{t-1}, 0.999), below Eq. 17.
    this.beta = Float64Array.from(
      { length: T },
      (_, i) =>
        schedule === "cosine"
          ? Math.min(1 - cosineF(i + 1, T) / cosineF(i, T), 0.999)
          : betaStart + (betaEnd - betaStart) * i / Math.max(1, T - 1),
    );
    this.alpha = this.beta.map((b) => 1 - b);
    let prod = 1;
    this.alphaHat = this.alpha.map((a) => (prod *= a));
    this.sqrtAlphaHat = tf.tensor1d(Float32Array.from(this.alphaHat, Math.sqrt));
    this.sqrtOneMinusAlphaHat = tf.tensor1d(Float32Array.from(this.alphaHat, (a) => Math.sqrt(1 - a)));
    this.minSnrWeights = minSnrGamma ? tf.tensor1d(this.lossWeights()) : null;
  }

  /** Eq. 4: x_t = √ᾱ_t·x_0 + √(1-ᾱ_t)·ε, ε ~ N(0, I). Returns [x_t, ε]. */
  noiseImages(x: Tensor4D, t: Tensor1D): [Tensor4D, Tensor4D] {
    return tf.tidy(() => {
      const sqrtAlphaHat = extract(this.sqrtAlphaHat, t);
      const sqrtOneMinusAlphaHat = extract(this.sqrtOneMinusAlphaHat, t);
      const eps = tf.randomNormal(x.shape, 0, 1, "float32", nextSeed()) as tf.Tensor4D;
      return [sqrtAlphaHat.mul(x).add(sqrtOneMinusAlphaHat.mul(eps)), eps];
    });
  }

  /** Algorithm 1, line 3: t ~ Uniform({0, …, T-1}) (every step, t = 0 included). */
  sampleTimesteps(n: number): Tensor1D {
    return tf.randomUniformInt([n], 0, this.noiseSteps, nextSeed()) as tf.Tensor1D;
  }

  /** Algorithm 1, line 5: the target the U-Net learns, ε (the tutorial's) or v (Salimans & Ho 2022). */
  target(x0: Tensor4D, noise: Tensor4D, t: Tensor1D): Tensor4D {
    return this.prediction === "v" ? this.velocity(x0, noise, t) : noise.clone();
  }

  /** Salimans & Ho 2022, section 4: v = √ᾱ_t·ε - √(1-ᾱ_t)·x_0 (their α_t·ε - σ_t·x). */
  velocity(x0: Tensor4D, noise: Tensor4D, t: Tensor1D): Tensor4D {
    return tf.tidy(() => {
      const sqrtAlphaHat = extract(this.sqrtAlphaHat, t);
      const sqrtOneMinusAlphaHat = extract(this.sqrtOneMinusAlphaHat, t);
      return sqrtAlphaHat.mul(noise).sub(sqrtOneMinusAlphaHat.mul(x0)) as Tensor4D;
    });
  }

  /**
   * Min-SNR-γ (Hang et al. 2023): the x_0 loss weighted by min(SNR_t, γ), SNR_t = ᾱ_t/(1-ᾱ_t), is w_t = min(SNR_t, γ)/SNR_t
   * on the ε loss and min(SNR_t, γ)/(SNR_t + 1) on the v loss; all 1 without γ (plain MSE). One per index 0 … T-1.
   */
  lossWeights(): Float32Array {
    const snr = Array.from(this.alphaHat, (a) => a / (1 - a));
    const gamma = this.minSnrGamma;
    if (!gamma) return new Float32Array(this.noiseSteps).fill(1);
    return Float32Array.from(snr, (s) => Math.min(s, gamma) / (this.prediction === "v" ? s + 1 : s));
  }

  /** The loss weight w_t of each image's step t; null without min-SNR (plain MSE). */
  lossWeightsAt(t: Tensor1D): Tensor1D | null {
    return this.minSnrWeights ? tf.gather(this.minSnrWeights, t) : null;
  }

  /**
   * The noise prediction, with classifier-free guidance: lerp(ε(x, t), ε(x, t, y), cfgScale). A v-model's output is
   * turned into ε = √ᾱ_t·v + √(1-ᾱ_t)·x_t (from v's definition and Eq. 4), so the samplers take ε alone.
   */
  predictNoise(model: NoiseModel, x: Tensor4D, t: Tensor1D, labels: Tensor1D | null, cfgScale: number): Tensor4D {
    return tf.tidy(() => {
      const cond = model.forward(x, t, labels);
      const out = !labels || cfgScale <= 0 ? cond : lerp(model.forward(x, t, null), cond, cfgScale); // ε_u + s·(ε_c - ε_u)
      if (this.prediction === "eps") return out;
      const sqrtAlphaHat = extract(this.sqrtAlphaHat, t);
      const sqrtOneMinusAlphaHat = extract(this.sqrtOneMinusAlphaHat, t);
      return sqrtAlphaHat.mul(out).add(sqrtOneMinusAlphaHat.mul(x)) as tf.Tensor4D;
    });
  }

  /** ᾱ at index i, with ᾱ = 1 before the first step (i = -1: x_0 itself). */
  private alphaHatAt(i: number): number {
    return i < 0 ? 1 : this.alphaHat[i];
  }

  /** Eq. 15: the x_0 that ε_θ implies, x̂_0 = (x_t - √(1-ᾱ_t)·ε_θ)/√ᾱ_t, optionally clipped to the data range. */
  predictX0(x: Tensor4D, eps: Tensor4D, i: number, { clip = true }: ClipOption = {}): Tensor4D {
    const x0 = x.sub(eps.mul(Math.sqrt(1 - this.alphaHat[i]))).div(Math.sqrt(this.alphaHat[i])) as tf.Tensor4D;
    return clip ? x0.clipByValue(-1, 1) as tf.Tensor4D : x0;
  }

  /**
   * Algorithm 2, line 4 (σ_t² = β_t, the tutorial's choice): the step from index i to i - 1. With `clip`, the mean is
   * the posterior mean μ̃_t(x_t, x̂_0) of Eq. 7 with x̂_0 clipped, which without clipping is the same number.
   */
  ddpmStep(x: Tensor4D, eps: Tensor4D, i: number, { clip = true }: ClipOption = {}): Step {
    const alpha = this.alpha[i];
    const alphaHat = this.alphaHat[i];
    const beta = this.beta[i];
    const alphaHatPrev = this.alphaHatAt(i - 1);
    const sigma = i === 0 ? 0 : Math.sqrt(beta);
    const x0 = this.predictX0(x, eps, i, { clip });
    if (clip) { // Eq. 7: μ̃_t = √ᾱ_{t-1}·β_t/(1-ᾱ_t)·x̂_0 + √α_t·(1-ᾱ_{t-1})/(1-ᾱ_t)·x_t
      const mean = x0.mul(Math.sqrt(alphaHatPrev) * beta / (1 - alphaHat))
        .add(x.mul(Math.sqrt(alpha) * (1 - alphaHatPrev) / (1 - alphaHat)));
      return { mean: mean as tf.Tensor4D, sigma, x0 };
    }
    // x_{t-1} = 1/√α_t·(x_t - (1-α_t)/√(1-ᾱ_t)·ε_θ) + σ_t·z, with z = 0 at the last step
    const mean = x.sub(eps.mul((1 - alpha) / Math.sqrt(1 - alphaHat))).div(Math.sqrt(alpha)) as tf.Tensor4D;
    return { mean, sigma, x0 };
  }

  /** DDIM (Song et al. Eq. 12) from index i to index prev < i (-1: to x_0), with σ_t(η) of Eq. 16. */
  ddimStep(x: Tensor4D, eps: Tensor4D, i: number, prev: number, { eta = 0, clip = true } = {}): Step {
    const aT = this.alphaHatAt(i);
    const aPrev = this.alphaHatAt(prev);
    // Eq. 16: σ_t(η) = η·√((1-ᾱ_{t-1})/(1-ᾱ_t))·√(1-ᾱ_t/ᾱ_{t-1})
    const sigma = eta * Math.sqrt((1 - aPrev) / (1 - aT)) * Math.sqrt(1 - aT / aPrev);
    // Eq. 12: x̂_0 = (x_t - √(1-ᾱ_t)·ε_θ)/√ᾱ_t; x_{t-1} = √ᾱ_{t-1}·x̂_0 + √(1-ᾱ_{t-1}-σ_t²)·ε_θ + σ_t·z
    const x0 = this.predictX0(x, eps, i, { clip });
    // with x̂_0 clipped, the ε that x_t and it imply (Eq. 4 solved for ε), as ddpmStep's μ̃_t: the step agrees with itself
    const epsUsed = clip ? x.sub(x0.mul(Math.sqrt(aT))).div(Math.sqrt(1 - aT)) : eps;
    const mean = x0.mul(Math.sqrt(aPrev)).add(epsUsed.mul(Math.sqrt(Math.max(0, 1 - aPrev - sigma ** 2))));
    return { mean: mean as tf.Tensor4D, sigma, x0 };
  }

  /** The model evaluations of one sample() call: all T steps (ddpm), or DDIM's sub-sequence τ. */
  stepCount(sampler: Sampler, sampleSteps = 50): number {
    return sampler === "ddim" ? this.ddimTimesteps(sampleSteps).length : this.noiseSteps;
  }

  /** DDIM's sub-sequence τ of the indices 0 … T-1: `steps` of them, evenly spaced, T-1 and 0 included. */
  ddimTimesteps(steps: number): number[] {
    if (!(Number.isInteger(steps) && steps >= 1)) {
      throw new RangeError(`sampleSteps must be an integer ≥ 1, got ${steps}`);
    }
    const T = this.noiseSteps, S = Math.min(steps, T);
    if (S === 1) return [T - 1];
    return [...new Set(Array.from({ length: S }, (_, k) => Math.round(k * (T - 1) / (S - 1))))];
  }

  /** `sampleX0` as n RGB images, NHWC uint8. */
  async sample(model: NoiseModel, n: number, opts: SampleOptions = {}): Promise<Uint8Array> {
    return await toUint8(await this.sampleX0(model, n, opts));
  }

  /**
   * From x_T ~ N(0, I) down to x_0: Algorithm 2 over all T steps (ddpm), or DDIM over `sampleSteps` of them.
   * Returns x_0, NHWC floats (the caller disposes it).
   */
  async sampleX0(model: NoiseModel, n: number, opts: SampleOptions = {}): Promise<Tensor4D> {
    const { labels = null, cfgScale = 3, sampler = "ddpm", sampleSteps = 50, eta = 0, clip = true } = opts;
    if (sampler !== "ddpm" && sampler !== "ddim") throw new RangeError(`unknown sampler ${sampler}`);
    if (!(eta >= 0)) throw new RangeError(`eta must be ≥ 0, got ${eta}`);
    const tau = sampler === "ddim" ? this.ddimTimesteps(sampleSteps) : [...this.alpha.keys()]; // the indices i
    const y = labels ? tf.tensor1d(labels, "int32") : null;
    const s = this.imageSize;
    const how = { cfgScale, sampler, eta, clip }; // each step's settings
    let x = opts.xT?.clone() ?? tf.randomNormal([n, s, s, 3], 0, 1, "float32", nextSeed()) as tf.Tensor4D; // x_T
    try {
      for (let k = tau.length - 1; k >= 0; k--) { // t = T, …, 1 (DDIM: the sub-sequence τ, backwards)
        const [next, x0] = tf.tidy(() => this.reverseStep(model, x, tau[k], tau[k - 1] ?? -1, y, how));
        x.dispose();
        x = next;
        await afterStep(k, x, x0, opts.onStep);
      }
      return x;
    } catch (e) { // given up (a stopped run): free what the loop holds
      x.dispose();
      throw e;
    } finally {
      y?.dispose();
    }
  }

  /** Algorithm 2, lines 3-4 (or DDIM) from index i to prev: x_prev = mean + σ·z, z ~ N(0, I); and its x̂_0. */
  private reverseStep(
    model: NoiseModel,
    x: Tensor4D,
    i: number,
    prev: number,
    y: Tensor1D | null,
    { cfgScale, sampler, eta, clip }: Required<Pick<SampleOptions, "cfgScale" | "sampler" | "eta" | "clip">>,
  ): [Tensor4D, Tensor4D] {
    const t = tf.fill([x.shape[0]], i, "int32") as tf.Tensor1D;
    const eps = this.predictNoise(model, x, t, y, cfgScale);
    const { mean, sigma, x0 } = sampler === "ddim"
      ? this.ddimStep(x, eps, i, prev, { eta, clip })
      : this.ddpmStep(x, eps, i, { clip });
    if (sigma === 0) return [mean, x0]; // z = 0 at the last step
    return [mean.add(tf.randomNormal(x.shape, 0, sigma, "float32", nextSeed())) as tf.Tensor4D, x0];
  }

  /** Frees the schedule's tensors. */
  dispose() {
    tf.dispose([this.sqrtAlphaHat, this.sqrtOneMinusAlphaHat, ...(this.minSnrWeights ? [this.minSnrWeights] : [])]);
  }
}

/** After a reverse step: the caller's onStep (x̂_0 freed after it), then the backend's turn (kernels/backend.ts). */
async function afterStep(k: number, x: Tensor4D, x0: Tensor4D, onStep: SampleOptions["onStep"]) {
  try {
    await onStep?.(k, x, x0);
  } finally {
    x0.dispose();
  }
  await paceQueue(k, x);
}

/** lucidrains' `extract`: the values of a per-step table at each image's step t, as [batch, 1, 1, 1]. */
const extract = (table: Tensor1D, t: Tensor1D) => tf.gather(table, t).reshape([-1, 1, 1, 1]) as Tensor4D;

/** a + s·(b - a). */
const lerp = (a: Tensor4D, b: Tensor4D, s: number) => a.add(b.sub(a).mul(s)) as Tensor4D;

/**
 * Algorithm 1, line 5 (Eq. 14, L_simple): ‖target - ε_θ(x_t, t, y)‖², each image's mean weighted by w_t (min-SNR-γ;
 * null: the plain MSE, the tutorial's). The target is Diffusion.target's: ε, or v.
 */
export function simpleLoss(
  model: NoiseModel,
  xt: Tensor4D,
  t: Tensor1D,
  target: Tensor4D,
  lossWeights: Tensor1D | null,
  labels: Tensor1D | null,
): Scalar {
  return weightedMse(target, model.forward(xt, t, labels), lossWeights);
}

/** ‖target - prediction‖²: the mean over each image weighted by `weights` (null: the plain mean, MSE). */
export function weightedMse(target: Tensor4D, prediction: Tensor4D, weights: Tensor1D | null): Scalar {
  return tf.tidy(() => {
    if (!weights) return tf.losses.meanSquaredError(target, prediction) as Scalar;
    const perImage = target.sub(prediction).square().mean([1, 2, 3]);
    return perImage.mul(weights).mean() as Scalar;
  });
}

/** [-1, 1] floats to [0, 255] bytes; disposes x. */
export async function toUint8(x: Tensor4D): Promise<Uint8Array> {
  const bytes = tf.tidy(() => x.clipByValue(-1, 1).add(1).mul(127.5).round());
  x.dispose();
  const data = Uint8Array.from(await bytes.data());
  bytes.dispose();
  return data;
}
