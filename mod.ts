// The public API: `import { Diffusion, UNet, train } from "./mod.ts"`.
export { type BackendName, setBackend, setSeed } from "./backend.ts";
export { Diffusion, type DiffusionOptions, type NoiseModel, type SampleOptions } from "./diffusion.ts";
export { DoubleConv, Down, Module, SelfAttention, UNet, UNetConditional, type UNetOptions, Up } from "./modules.ts";
export { EMA } from "./ema.ts";
export { AdamW, train, trainStep } from "./train.ts";
export { type Config, DEFAULTS, PRESETS } from "./cli.ts";
export { loadFile, loadRun } from "./sample.ts";
export { type Dataset, loadDataset, saveGrid } from "./utils.ts";
export { savePlot } from "./plot.ts";
export { loadWeights, saveCheckpoint, saveWeights, type Tensors } from "./checkpoint.ts";
export { loadTorchModel, readTorchFile, torchOptions, torchStateDict, writeTorchFile } from "./pytorch.ts";
