// Weights to PyTorch, `deno task export (--run RUN [--ema] | --weights FILE) --to FILE.safetensors` (or .pt).
import { setBackend } from "../kernels/backend.ts";
import { DEFAULTS } from "../run/config.ts";
import { diffusionMetadata, loadFile, loadRun } from "../run/trained.ts";
import { helpText, readFlags, runCli, runFolder, UsageError } from "../run/cli.ts";
import { torchFileMetadata, torchStateDict, writeTorchFile } from "../weights/pytorch.ts";

const HELP = helpText(
  "export",
  `Write a model's weights as the tutorial's state_dict, for PyTorch:
model.load_state_dict(safetensors.torch.load_file(FILE)) or model.load_state_dict(torch.load(FILE)),
with model = UNet() or UNet_conditional(num_classes=K) of the tutorial's modules.py (width 64).

  deno task export --run RUN [--ema] --to FILE.safetensors
  deno task export --weights FILE.pt --to FILE.safetensors      (one format to the other)

A .safetensors file says its image size, prediction, schedule and T in its metadata (sample --weights reads them).`,
);

async function main() {
  const v = readFlags("export", Deno.args);
  if (v.help) return console.log(HELP);
  if (!v.run === !v.weights) throw new UsageError("give --run RUN or --weights FILE (see --help)");
  const out = v.to as string | undefined;
  if (!out || !/\.(safetensors|pt|pth)$/.test(out)) {
    throw new UsageError("--to FILE.safetensors (or .pt, .pth) is needed");
  }
  await setBackend("cpu", () => {});
  const { model, config } = v.run ? await loadRun(runFolder(v.run as string), !!v.ema) : loadFile(v.weights as string);
  const diffusion = diffusionMetadata(config);
  const sized = v.run || torchFileMetadata(v.weights as string).image_size; // (a .pt does not say its size)
  const metadata = { ...diffusion, ...(sized ? { image_size: String(config.imageSize) } : {}) };
  await writeTorchFile(out, await torchStateDict(model.weights), metadata);
  const what = model.numClasses ? `UNet_conditional(num_classes=${model.numClasses})` : "UNet()";
  console.log(
    `${model.weights.size} tensors of the tutorial's ${what}` +
      `${model.width === 64 ? "" : ` at width ${model.width}`}${model.removeDeepConv ? " without bot2" : ""} -> ${out}`,
  );
  if (JSON.stringify(diffusion) !== JSON.stringify(diffusionMetadata(DEFAULTS))) { // not the tutorial's diffusion
    const where = out.endsWith(".safetensors")
      ? "named in the file's metadata"
      : "not recorded in a .pt: use .safetensors";
    console.log(
      `note: the model predicts ${config.prediction} on the ${config.schedule} schedule, T = ${config.noiseSteps} ` +
        `(${where}); the tutorial's sampler assumes ε, linear, T = ${DEFAULTS.noiseSteps}`,
    );
  }
  model.dispose();
}

if (import.meta.main) await runCli(main);
