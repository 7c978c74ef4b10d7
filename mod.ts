/**
 * DDPM (Ho et al. 2020) from scratch on tfjs: the tutorial's U-Net, the diffusion process, its training loop, and
 * PyTorch's files.
 *
 * @example Train a short run of the CPU demo's recipe; sample a grid as its grids sample
 * ```ts
 * import { DEFAULTS, Diffusion, loadRun, PRESETS, saveGrid, setBackend, train } from "@ddpm/ddpm";
 *
 * await setBackend("wasm");
 * const { runDir } = await train({ ...DEFAULTS, ...PRESETS.demo, name: "short", maxSteps: 200 }); // runs/short
 * const { model, config } = await loadRun(runDir, true); // its EMA weights, and its settings
 * const diffusion = new Diffusion(config); // its T, schedule, prediction and image size
 * const pixels = await diffusion.sample(model, 16, config); // NHWC bytes: its sampler, steps, η and clipping
 * await saveGrid("grid.png", pixels, 16, config.imageSize);
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
export { type Config, type Crop, DEFAULTS, PRESETS } from "./run/config.ts";
export { loadFile, loadRun, type Trained } from "./run/trained.ts";
export { type Batch, type Dataset, loadDataset, type LoadOptions, saveGrid } from "./utils.ts";
export { savePlot } from "./run/plot.ts";
export { loadWeights, saveCheckpoint, saveWeights } from "./weights/checkpoint.ts";
export { type Tensors } from "./weights/weights.ts";
export { loadTorchModel, readTorchFile, torchOptions, torchStateDict, writeTorchFile } from "./weights/pytorch.ts";
