// Times one training step (forward + backward + AdamW) or one sampling forward pass of the U-Net.
// Same flags and JSON line as ../shared/bench/torch_ref.py, so the two can be run side by side:
//   deno task bench --image-size 32 --batch 4 --width 64 --steps 5 --mode train
import * as tf from "@tensorflow/tfjs";
import { parseArgs } from "node:util";
import { type BackendName, BACKENDS, setBackend, setSeed } from "./backend.ts";
import { Diffusion } from "./diffusion.ts";
import { UNet } from "./modules.ts";
import { AdamW, trainStep } from "./train.ts";

const { values: a } = parseArgs({
  args: Deno.args,
  options: {
    "image-size": { type: "string", default: "32" },
    batch: { type: "string", default: "4" },
    width: { type: "string", default: "64" },
    steps: { type: "string", default: "5" },
    warmup: { type: "string", default: "1" },
    mode: { type: "string", default: "train" },
    backend: { type: "string", default: "auto" },
    classes: { type: "string", default: "0" },
  },
});
const [imageSize, batch, width, steps, warmup, classes] = [
  a["image-size"],
  a.batch,
  a.width,
  a.steps,
  a.warmup,
  a.classes,
]
  .map(Number);
if (a.mode !== "train" && a.mode !== "sample") throw new Error(`--mode must be train or sample, not ${a.mode}`);
if (!BACKENDS.includes(a.backend as BackendName)) throw new Error(`--backend must be one of ${BACKENDS.join(", ")}`);

/** Peak resident set size in MiB (Linux: VmHWM), else the current RSS. */
function peakRssMb(): number {
  try {
    const kb = Number(/VmHWM:\s+(\d+)/.exec(Deno.readTextFileSync("/proc/self/status"))?.[1]);
    if (kb > 0) return Math.round(kb / 1024);
  } catch { /* not Linux */ }
  return Math.round(Deno.memoryUsage().rss / 2 ** 20);
}

const backend = await setBackend(a.backend as BackendName, (s) => console.error(s));
setSeed(0);
const model = new UNet({ width, numClasses: classes });
const diffusion = new Diffusion({ imgSize: imageSize });
const opt = new AdamW(model, 3e-4);
const x0 = tf.randomUniform([batch, imageSize, imageSize, 3], -1, 1) as tf.Tensor4D;
const labels = classes > 0 ? tf.randomUniformInt([batch], 0, classes) as tf.Tensor1D : null;
const tSample = tf.fill([batch], 500, "int32") as tf.Tensor1D;

async function step() {
  const out = a.mode === "train"
    ? trainStep(model, diffusion, opt, x0, labels)
    : tf.tidy(() => model.forward(x0, tSample, labels));
  await out.data(); // sync: the step is done when its result can be read
  out.dispose();
}

const times: number[] = [];
for (let i = 0; i < warmup + steps; i++) {
  const t0 = performance.now();
  await step();
  if (i >= warmup) times.push(performance.now() - t0);
}
times.sort((x, y) => x - y);
const mid = times.length >> 1;
const med = times.length % 2 ? times[mid] : (times[mid - 1] + times[mid]) / 2;
console.log(JSON.stringify({
  mode: a.mode,
  backend,
  image_size: imageSize,
  batch,
  width,
  params: model.parameterCount,
  step_ms_median: Math.round(med * 10) / 10,
  images_per_s: Math.round(batch / med * 1e6) / 1e3,
  peak_rss_mb: peakRssMb(),
  num_tensors: tf.memory().numTensors,
}));
tf.dispose([x0, tSample, ...(labels ? [labels] : [])]);
opt.dispose();
model.dispose();
diffusion.dispose();
