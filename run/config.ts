// A run's settings: the Config, its DEFAULTS (the tutorial's), the PRESETS (the tutorial's two runs and a CPU demo),
// and the data a config describes. Its U-Net is `new UNet({ ...config, numClasses })`, its `new Diffusion(config)`.
import type { Prediction, Sampler, Schedule } from "../diffusion.ts";
import { loadDataset } from "../utils.ts";
import type { BackendName } from "../kernels/backend.ts";
import type { Part } from "../data/image_folder.ts";

/** A training run's settings: the data, the model, the diffusion, the optimizer, the samples, the backend. */
export interface Config {
  /** "builtin:landscapes", "builtin:shapes", "cifar10" or a folder */
  data: string;
  /** runs folder; the run is out/name */
  out: string;
  /** the run's name; its folder is out/name */
  name: string;
  /** passes over the data (0 = as many as maxSteps takes: fitToData) */
  epochs: number;
  /** stop after this many steps in all (0 = no limit) */
  maxSteps: number;
  /** images a step */
  batchSize: number;
  /** the side of the (square) images, in pixels, divisible by 8 */
  imageSize: number;
  /** the U-Net's base width c, divisible by 4 */
  width: number;
  /** AdamW's learning rate */
  lr: number;
  /** linear lr warm-up over these steps (0 = none) */
  warmupSteps: number;
  /** after the warm-up: the tutorial's constant lr, or a cosine decay to 0 at the end */
  lrDecay: "constant" | "cosine";
  /** clip the gradients' global norm to this (0 = no clipping, the tutorial's) */
  maxGradNorm: number;
  /** T, the diffusion steps */
  noiseSteps: number;
  /** linear (the tutorial's) or cosine */
  schedule: Schedule;
  /** what the U-Net predicts: eps (the tutorial's) or v */
  prediction: Prediction;
  /** min-SNR-γ loss weighting (0 = plain MSE, the tutorial's) */
  minSnrGamma: number;
  /** where the tensors run */
  backend: BackendName;
  /** CPU threads on the wasm backend (0 = every core) */
  threads: number;
  /** makes the run repeatable on the same backend */
  seed: number;
  /** epochs between sample grids (0 = at the end only) */
  sampleEvery: number;
  /** images in a sample grid */
  nSamples: number;
  /** classifier-free guidance scale of the sample grids */
  cfgScale: number;
  /** for the sample grids: ddpm (all T steps) or ddim */
  sampler: Sampler;
  /** ddim's steps */
  sampleSteps: number;
  /** ddim's η (0 = deterministic) */
  eta: number;
  /** clip the predicted x̂_0 to [-1, 1] while sampling */
  clip: boolean;
  /** train with class labels (the folders' sub-folders, CIFAR-10's classes) */
  conditional: boolean;
  /** share of steps trained without labels (for CFG) */
  labelDrop: number;
  /** 0 = no EMA model */
  emaBeta: number;
  /** EMA warm-up steps: until then the EMA model is a copy */
  emaStart: number;
  /** images to load (0 = all) */
  count: number;
  /** a folder's images: random crops at each epoch (the tutorial's), centred ones, or auto (cropRule) */
  crop: Crop;
  /** hold out half of each class folder (data/image_folder.ts holdoutSplit): never trained on; eval's judge's */
  holdout?: boolean;
  /** CIFAR-10 files and the decoded image folders (default ~/.cache/ddpm-deno) */
  cacheDir?: string;
  /** decode an image folder without its disk cache */
  noCache?: boolean;
  /** the initial weights: a PyTorch file of the tutorial's U-Net (.pt, .pth, .safetensors) */
  weights?: string;
  /** the tutorial's later U-Net variant without bot2 (set from --weights) */
  removeDeepConv?: boolean;
}

/**
 * The CPU demos' training (docs/experiments.md; on real folders: docs/quality.md): small images and width; 2000 steps
 * of batch 32 (1.4× the images a second of batch 16 here) whatever the data's size (fitToData), on all of a folder,
 * cropped at random only when it is small (cropRule); the cosine schedule (the linear one has SNR < 0.09 from t = 500
 * on), v-prediction with min-SNR-5 weighting, a higher lr with warm-up, cosine decay and clipping; an EMA; grids of
 * DDIM, 100 steps, η 1, at the end; x̂_0 not clipped, as in the tutorial (clipping brightened the landscapes' dark
 * scenes, and scored MNIST's unconditional samples worse: docs/experiments.md).
 */
const CPU_RECIPE: Partial<Config> = {
  imageSize: 16,
  width: 16,
  batchSize: 32,
  epochs: 0,
  maxSteps: 2000,
  count: 0,
  crop: "auto",
  lr: 2e-3,
  warmupSteps: 100,
  lrDecay: "cosine",
  maxGradNorm: 1,
  prediction: "v",
  schedule: "cosine",
  minSnrGamma: 5,
  emaBeta: 0.995,
  emaStart: 100,
  sampleEvery: 0,
  sampler: "ddim",
  sampleSteps: 100,
  eta: 1,
  clip: false,
};

/** The tutorial's two runs (landscape, cifar) and a CPU demo: settings over DEFAULTS. */
export const PRESETS: Record<string, Partial<Config>> = {
  // the tutorial's unconditional run (ddpm.py), on landscapes at 64 px
  landscape: { data: "builtin:landscapes", name: "landscape", imageSize: 64, batchSize: 12, epochs: 500, width: 64 },
  // the tutorial's conditional run (ddpm_conditional.py): CIFAR-10 at 64 px with CFG and EMA
  cifar: {
    data: "cifar10",
    name: "cifar",
    imageSize: 64,
    batchSize: 14,
    epochs: 300,
    width: 64,
    conditional: true,
    emaBeta: 0.995,
  },
  // minutes on a laptop CPU (CPU_RECIPE), the built-in landscapes
  demo: { ...CPU_RECIPE, data: "builtin:landscapes", name: "demo", nSamples: 36 },
  // the tutorial's second half in minutes on a CPU: class labels with label drop, CFG and EMA, on built-in shapes;
  // a constant lr after the warm-up, as the tutorial's, so that the EMA has something to average
  "demo-cfg": {
    ...CPU_RECIPE,
    data: "builtin:shapes",
    name: "demo_cfg",
    conditional: true,
    nSamples: 40,
    lrDecay: "constant",
  },
};

/**
 * How a run's grids sample, for what samples it again (eval, sample, the run's page): its DDIM steps and η where it
 * samples with DDIM, else DEFAULTS' (50, η 0); x̂_0 clipped unless it says not (runs saved before the option: clipped).
 */
export function gridSampling(config: Partial<Config>): { sampleSteps: number; eta: number; clip: boolean } {
  const ddim = config.sampler === "ddim" && config.sampleSteps !== undefined && config.eta !== undefined;
  const { sampleSteps, eta } = ddim ? config as Config : DEFAULTS;
  return { sampleSteps, eta, clip: config.clip ?? true };
}

/** U-Net passes over one image: a grid's (its images × its steps, twice with CFG) and a run's (3 a trained image). */
export const gridPasses = (c: Config, steps: number) => c.nSamples * steps * (c.conditional && c.cfgScale ? 2 : 1);
export const runPasses = (c: Config, totalSteps: number) => 3 * totalSteps * c.batchSize; // forward + backward

/** When a run is short (gridSampler); in words for --help. */
export const SHORT_RUN = "a short run: a ddpm grid > 1/10 of its training";

/** The grids' sampler when --sampler is not given: the config's, but DDIM for a short run (SHORT_RUN). */
export const gridSampler = (c: Config, totalSteps: number): Sampler =>
  c.sampler === "ddpm" && 10 * gridPasses(c, c.noiseSteps) > runPasses(c, totalSteps) ? "ddim" : c.sampler;

/** How a folder's images are cropped: see cropRule. */
export type Crop = "random" | "center" | "auto";

/** A run that sees each image more often than this crops them at random (cropRule). */
export const CROP_VIEWS = 100;

/**
 * crop "auto": random crops (the tutorial's RandomResizedCrop) when the run sees each image more than CROP_VIEWS times,
 * i.e. a small folder that the model would otherwise learn by heart; else each image as it is, so that the samples
 * are framed as the folder's images are (a digit whole and centred, not shifted and cut).
 */
export const cropRule = (c: Pick<Config, "crop" | "batchSize">, images: number, steps: number): Crop =>
  c.crop !== "auto" ? c.crop : steps * c.batchSize > CROP_VIEWS * images ? "random" : "center";

/**
 * The CPU recipes' rule for the data they get: epochs 0 means as many as maxSteps takes, whatever the folder's size
 * (16 epochs were 64 steps of a folder of 55 photos), and crop "auto" is decided by cropRule.
 */
export function fitToData(c: Config, images: number): Config {
  const fitted = { ...c, epochs: c.epochs || Math.ceil(c.maxSteps / Math.ceil(images / c.batchSize)) };
  return { ...fitted, crop: cropRule(c, images, stepsOf(fitted, images)) };
}

/** A run's steps: its epochs of batches, or fewer (maxSteps). */
export const stepsOf = (c: Pick<Config, "epochs" | "batchSize" | "maxSteps">, images: number) =>
  Math.min(c.epochs * Math.ceil(images / c.batchSize), c.maxSteps || Infinity);

/** The tutorial's settings. */
export const DEFAULTS: Config = {
  data: "builtin:landscapes",
  out: "runs",
  name: "run",
  epochs: 500,
  maxSteps: 0,
  batchSize: 12,
  imageSize: 64,
  width: 64,
  lr: 3e-4,
  warmupSteps: 0,
  lrDecay: "constant",
  maxGradNorm: 0,
  noiseSteps: 1000,
  schedule: "linear",
  prediction: "eps",
  minSnrGamma: 0,
  backend: "auto",
  threads: 0,
  seed: 0,
  sampleEvery: 10,
  nSamples: 16,
  cfgScale: 3,
  sampler: "ddpm",
  sampleSteps: 50,
  eta: 0,
  clip: true,
  conditional: false,
  labelDrop: 0.1,
  emaBeta: 0,
  emaStart: 2000,
  count: 0,
  crop: "random",
};

/** The data set of a run's config, as its training loads it; with --holdout, the held-out half on request. */
export const loadRunData = (
  c: Pick<Config, "data" | "imageSize" | "seed" | "count" | "cacheDir" | "noCache" | "holdout"> & { crop?: Crop },
  log?: (line: string) => void,
  part: Part = "train",
) =>
  loadDataset(c.data, c.imageSize, {
    seed: c.seed,
    count: c.count || undefined,
    cacheDir: c.cacheDir,
    noCache: c.noCache,
    holdout: c.holdout ? part : undefined,
    crop: c.crop !== "center", // (runs saved before the option cropped at random)
    log,
  });
