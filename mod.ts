/**
 * DDPM (Ho et al. 2020) from scratch on tfjs: the tutorial's U-Net, the diffusion process, its training loop, and
 * PyTorch's files.
 *
 * @example Train a small model; sample a grid
 * ```ts
 * import { DEFAULTS, Diffusion, saveGrid, setBackend, train, UNet } from "@ddpm/ddpm";
 *
 * await setBackend("wasm");
 * await train({ ...DEFAULTS, imageSize: 16, width: 16, epochs: 1, count: 64, name: "first" }); // runs/first
 * const model = new UNet({ width: 16 }); // (untrained: noise; loadRun gives a trained one)
 * const diffusion = new Diffusion({ noiseSteps: 1000, imageSize: 16 });
 * const pixels = await diffusion.sample(model, 4, { sampler: "ddim", sampleSteps: 50 }); // NHWC bytes
 * await saveGrid("grid.png", pixels, 4, 16);
 * ```
 *
 * @module
 */
export {
  type BackendName,
  type Rand,
  type Scalar,
  setBackend,
  setSeed,
  type Tensor,
  type Tensor1D,
  type Tensor2D,
  type Tensor4D,
  type Variable,
} from "./kernels/backend.ts";
export {
  type ClipOption,
  Diffusion,
  type DiffusionOptions,
  type NoiseModel,
  type Prediction,
  type SampleOptions,
  type Sampler,
  type Schedule,
  simpleLoss,
  type Step,
  toUint8,
  weightedMse,
} from "./diffusion.ts";
export {
  DoubleConv,
  Down,
  EmbLayer,
  Linear,
  Module,
  Norm,
  SelfAttention,
  UNet,
  UNetConditional,
  type UNetOptions,
  Up,
} from "./modules.ts";
export { EMA } from "./ema.ts";
export { AdamW, type AdamWOptions } from "./run/adamw.ts";
export type { AdamWStep } from "./kernels/fused.ts";
export { train, trainStep } from "./train.ts";
export { type LossGradients, Threads } from "./run/threads.ts";
export type { TrainOptions } from "./run/run.ts";
export { type Config, DEFAULTS, PRESETS } from "./run/config.ts";
export { loadFile, loadRun, type Trained } from "./run/trained.ts";
export { type Batch, type Dataset, loadDataset, type LoadOptions, saveGrid } from "./utils.ts";
export { savePlot } from "./run/plot.ts";
export { loadWeights, saveCheckpoint, saveWeights } from "./weights/checkpoint.ts";
export { type Tensors } from "./weights/weights.ts";
export { loadTorchModel, readTorchFile, torchOptions, torchStateDict, writeTorchFile } from "./weights/pytorch.ts";
