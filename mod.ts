// The public API: `import { Diffusion, UNet, train } from "./mod.ts"`.
export { type BackendName, setBackend, setSeed } from "./kernels/backend.ts";
export { Diffusion, type DiffusionOptions, type NoiseModel, type SampleOptions } from "./diffusion.ts";
export { DoubleConv, Down, Module, SelfAttention, UNet, UNetConditional, type UNetOptions, Up } from "./modules.ts";
export { EMA } from "./ema.ts";
export { AdamW } from "./run/adamw.ts";
export { train, trainStep } from "./train.ts";
export { type Config, DEFAULTS, PRESETS } from "./run/config.ts";
export { loadFile, loadRun } from "./run/trained.ts";
export { type Dataset, loadDataset, saveGrid } from "./utils.ts";
export { savePlot } from "./run/plot.ts";
export { loadWeights, saveCheckpoint, saveWeights } from "./weights/checkpoint.ts";
export { type Tensors } from "./weights/weights.ts";
export { loadTorchModel, readTorchFile, torchOptions, torchStateDict, writeTorchFile } from "./weights/pytorch.ts";
