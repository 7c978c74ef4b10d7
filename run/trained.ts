// A trained model read back: from a run's checkpoint (with the run's state) or from a PyTorch file of the tutorial's U-Net.
import { join } from "node:path";
import { assignWeights, findCheckpoint } from "../weights/checkpoint.ts";
import { loadTorchModel, torchFileMetadata } from "../weights/pytorch.ts";
import { CheckpointError } from "../weights/weights.ts";
import { type Config, DEFAULTS } from "./config.ts";
import { UNet } from "../modules.ts";

/** What a run keeps between sessions, beside the weights. */
export interface RunState {
  config: Config;
  step: number;
  epoch: number;
  stepInEpoch: number;
  seedState: number;
  emaStep: number;
  adamStep: number;
  classes: string[];
  sha256?: Record<string, string>; // of each weights file, as written
  dir?: string; // where it was read from
}

/** The saved state of a run's newest checkpoint that has the `required` files, and that folder (`dir`). */
export async function readState(runDir: string, required = ["state.json", "model.bin"]): Promise<RunState> {
  const dir = findCheckpoint(runDir, required), path = join(dir, "state.json");
  try {
    return { ...JSON.parse(await Deno.readTextFile(path)), dir };
  } catch (e) {
    throw new CheckpointError(`${path} is not readable (${(e as Error).message})`);
  }
}

/** A trained U-Net, the config it was trained with, and its class names (one per label). */
export interface Trained {
  /** The U-Net (the caller disposes it). */
  model: UNet;
  /** The run's settings (a PyTorch file: the tutorial's, but for the diffusion its metadata names). */
  config: Config;
  /** Class names, by label; [] or one for an unconditional model. */
  classes: string[];
}

/** The model of a run's newest checkpoint (its EMA copy with `ema`), with the run's config and classes. */
export async function loadRun(runDir: string, ema = false): Promise<Trained> {
  const file = ema ? "ema.bin" : "model.bin";
  if (ema && !(await readState(runDir)).config.emaBeta) {
    throw new CheckpointError(`${runDir} was trained without EMA (--ema-beta 0)`);
  }
  const state = await readState(runDir, ["state.json", file]);
  const model = new UNet({ ...state.config, numClasses: state.config.conditional ? state.classes.length : 0 });
  try {
    assignWeights(join(state.dir!, file), model.weights);
  } catch (e) {
    model.dispose();
    throw e;
  }
  return { model, config: state.config, classes: state.classes };
}

/**
 * The model of a PyTorch file of the tutorial's U-Net, with the tutorial's settings (64 px, T = 1000, linear, ε) but
 * for the image size and diffusion a `.safetensors` file of ours names (diffusionMetadata, image_size), or `imageSize`.
 */
export function loadFile(path: string, imageSize?: number): Trained {
  const model = loadTorchModel(path);
  const classes = Array.from({ length: model.numClasses }, (_, i) => String(i));
  const config = { ...DEFAULTS, conditional: model.numClasses > 0, ...diffusionIn(path) };
  if (imageSize) config.imageSize = imageSize;
  return { model, config, classes };
}

/** A run's diffusion settings as string metadata of a `.safetensors` file: the tutorial's sampler assumes its own. */
export const diffusionMetadata = ({ prediction, schedule, noiseSteps }: Config): Record<string, string> => ({
  prediction,
  schedule,
  noise_steps: String(noiseSteps),
});

/** The image size and diffusion settings a file's metadata gives (export's; none: the tutorial's). */
function diffusionIn(path: string): Partial<Config> {
  const { prediction, schedule, noise_steps, image_size } = torchFileMetadata(path);
  return {
    ...(Number(image_size) >= 8 && Number(image_size) % 8 === 0 ? { imageSize: Number(image_size) } : {}),
    ...(prediction === "v" || prediction === "eps" ? { prediction } : {}),
    ...(schedule === "cosine" || schedule === "linear" ? { schedule } : {}),
    ...(Number(noise_steps) >= 1 ? { noiseSteps: Number(noise_steps) } : {}),
  };
}
