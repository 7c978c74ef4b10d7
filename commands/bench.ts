// `deno task bench`. Times one training step (forward + backward + AdamW [+ EMA]) or one sampling forward pass of the
// U-Net, and counts what a training step costs the backend: tfjs kernels run, and on WebGPU the compute dispatches, GPU
// buffers created, uniform uploads (writeBuffer), buffer copies and queue submits (counted by wrapping the WebGPU
// classes' methods: tf.profile would submit once per kernel). Same flags and JSON line as torch/torch_ref.py, so the
// two can be run side by side.
import * as tf from "@tensorflow/tfjs";
import process from "node:process";
import { type BackendName, setBackend, setSeed } from "../kernels/backend.ts";
import { defaultNotes, helpText, readFlags, runCli } from "../run/cli.ts";
import { Diffusion } from "../diffusion.ts";
import { EMA } from "../ema.ts";
import { UNet } from "../modules.ts";
import { AdamW } from "../run/adamw.ts";
import { DEFAULTS } from "../run/config.ts";
import { trainStep } from "../train.ts";
import { threadCount, Threads } from "../run/threads.ts";

/** The defaults: the step torch/torch_ref.py times by default. */
const SETTINGS = {
  threads: 0,
  "image-size": 32,
  "batch-size": 4,
  width: 64,
  steps: 5,
  "untimed-steps": 1,
  mode: "train",
  backend: "auto",
  classes: 0,
};
const HELP = helpText(
  "bench",
  `Time one training step (forward, backward, AdamW [+ EMA]) or one sampling forward pass of the U-Net, and count what
it costs the backend. Prints one JSON line, as torch/torch_ref.py does with the same flags:

  deno task bench --image-size 32 --batch-size 4 --width 64 --steps 5 --mode train [--by-kernel]`,
  defaultNotes(SETTINGS),
);
let countOnly = false; // --count-only: the work is recorded, counted and dropped, never run

const counts: Record<string, number> = {}; // GPU calls, by method
interface PerKernel {
  runs: number;
  dispatches: number;
  created: number; // GPU buffers
  gpuMs: number; // with --gpu-time
}
const kernels = new Map<string, PerKernel>();
const running: string[] = []; // the kernels being run (a kernel may run others): counts go to the innermost
const current = () => {
  const name = running.at(-1) ?? "(outside kernels)";
  if (!kernels.has(name)) kernels.set(name, { runs: 0, dispatches: 0, created: 0, gpuMs: 0 });
  return kernels.get(name)!;
};
function count<T extends object>(proto: T | undefined, method: string, label: string) {
  if (!proto) return; // no WebGPU in this Deno
  const f = (proto as Record<string, (...args: unknown[]) => unknown>)[method];
  (proto as Record<string, unknown>)[method] = function (this: unknown, ...args: unknown[]) {
    counts[label] = (counts[label] ?? 0) + 1;
    if (label === "dispatches") current().dispatches++;
    if (label === "buffers_created") current().created++;
    if (label === "submits" && countOnly) return;
    return f.apply(this, args);
  };
}
const g = globalThis as unknown as Record<string, { prototype: object } | undefined>;
count(g.GPUComputePassEncoder?.prototype, "dispatchWorkgroups", "dispatches");
count(g.GPUDevice?.prototype, "createBuffer", "buffers_created");
count(g.GPUQueue?.prototype, "writeBuffer", "uploads");
count(g.GPUCommandEncoder?.prototype, "copyBufferToBuffer", "copies");
count(g.GPUQueue?.prototype, "submit", "submits");
const engine = tf.engine() as unknown as { runKernelFunc: (p: { kernelName?: string }) => unknown };
const runKernelFunc = engine.runKernelFunc;
engine.runKernelFunc = function (p) {
  running.push(p.kernelName ?? "(custom gradient)");
  current().runs++;
  try {
    return runKernelFunc.call(this, p);
  } finally {
    running.pop();
  }
};

// --gpu-time: every dispatch in a compute pass of its own (a submit each: slower) with timestamps at its start and
// end, so that the GPU time of each kernel can be summed.
const timing = { querySet: null as GPUQuerySet | null, passes: [] as PerKernel[] };
function timePasses() {
  if (!g.GPUCommandEncoder) return;
  const proto = g.GPUCommandEncoder.prototype as GPUCommandEncoder;
  const begin = proto.beginComputePass;
  proto.beginComputePass = function (this: GPUCommandEncoder, desc: GPUComputePassDescriptor = {}) {
    const i = timing.passes.length;
    if (!timing.querySet || 2 * i + 2 > timing.querySet.count) return begin.call(this, desc);
    timing.passes.push(current());
    const timestampWrites = {
      querySet: timing.querySet,
      beginningOfPassWriteIndex: 2 * i,
      endOfPassWriteIndex: 2 * i + 1,
    };
    return begin.call(this, { ...desc, timestampWrites });
  };
}
/** Adds the GPU time of the timed passes to their kernels. */
async function readGpuTimes(device: GPUDevice) {
  const n = 2 * timing.passes.length, bytes = 8 * n;
  if (!n) return;
  const resolved = device.createBuffer({ size: bytes, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
  const read = device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const encoder = device.createCommandEncoder();
  encoder.resolveQuerySet(timing.querySet!, 0, n, resolved, 0);
  encoder.copyBufferToBuffer(resolved, 0, read, 0, bytes);
  device.queue.submit([encoder.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const t = new BigUint64Array(read.getMappedRange());
  timing.passes.forEach((k, i) => k.gpuMs += Number(t[2 * i + 1] - t[2 * i]) / 1e6);
  read.unmap();
  [resolved, read].forEach((b) => b.destroy());
}

/** The CPU time of this process (all its threads) in ms. */
function cpuMs(): number {
  const { user, system } = process.cpuUsage(); // µs
  return (user + system) / 1000;
}

/** The median of a list of numbers. */
function median(xs: number[]) {
  const sorted = [...xs].sort((x, y) => x - y);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Peak resident set size in MiB (Linux: VmHWM), else the current RSS. */
function peakRssMb(): number {
  try {
    const kb = Number(/VmHWM:\s+(\d+)/.exec(Deno.readTextFileSync("/proc/self/status"))?.[1]);
    if (kb > 0) return Math.round(kb / 1024);
  } catch { /* not Linux */ }
  return Math.round(Deno.memoryUsage().rss / 2 ** 20);
}

async function main() {
  const a = readFlags("bench", Deno.args, SETTINGS);
  if (a.help) return console.log(HELP);
  const { "image-size": imageSize, "batch-size": batch, width, steps, "untimed-steps": warmup, classes } =
    a as typeof SETTINGS;
  countOnly = !!a["count-only"];
  if (a["gpu-time"]) timePasses();
  const backend = await setBackend(a.backend as BackendName, (s) => console.error(s));
  setSeed(0);
  const config = { ...DEFAULTS, imageSize, width }; // the tutorial's, at this size and width
  const model = new UNet({ ...config, numClasses: classes });
  const emaModel = a.ema ? new UNet({ ...config, numClasses: classes }) : null;
  const ema = new EMA();
  const diffusion = new Diffusion(config);
  const opt = new AdamW(model, { lr: 3e-4 });
  const x0 = tf.randomUniform([batch, imageSize, imageSize, 3], -1, 1) as tf.Tensor4D;
  const labels = classes > 0 ? tf.randomUniformInt([batch], 0, classes) as tf.Tensor1D : null;
  const tSample = tf.fill([batch], 500, "int32") as tf.Tensor1D;
  const threadsUsed = threadCount(backend, a.threads as number);
  const threads = threadsUsed > 1 ? await Threads.start(threadsUsed, model) : null;

  async function step() {
    const out = a.mode === "train"
      ? trainStep(model, diffusion, opt, x0, labels, threads)
      : tf.tidy(() => threads ? threads.forward(model, x0, tSample, labels) : model.forward(x0, tSample, labels));
    if (emaModel) ema.stepEma(emaModel, model, 0);
    if (!countOnly) await out.data(); // sync: the step is done when its result can be read
    out.dispose();
  }

  const device = backend === "webgpu" ? (tf.backend() as unknown as { device: GPUDevice }).device : null;
  if (device && a["gpu-time"]) tf.env().set("WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE", 1);
  const times: number[] = [];
  const cpuTimes: number[] = [];
  for (let i = 0; i < warmup + steps; i++) {
    for (const k in counts) delete counts[k];
    kernels.clear();
    const last = i === warmup + steps - 1;
    if (last && a["gpu-time"] && device?.features.has("timestamp-query")) {
      timing.querySet = device.createQuerySet({ type: "timestamp", count: 4096 });
    }
    const t0 = performance.now();
    const cpu0 = cpuMs();
    await step();
    if (i >= warmup) times.push(performance.now() - t0);
    if (i >= warmup) cpuTimes.push(cpuMs() - cpu0);
  }
  if (timing.querySet) await readGpuTimes(device!);
  const med = median(times);
  const run = (k: string) => !k.startsWith("(") && !["Reshape", "Identity"].includes(k); // not a computation
  console.log(JSON.stringify({
    mode: a.mode,
    backend,
    threads: threadsUsed,
    image_size: imageSize,
    batch,
    width,
    params: model.parameterCount,
    step_ms_median: countOnly ? null : Math.round(med * 10) / 10,
    images_per_s: countOnly ? null : Math.round(batch / med * 1e6) / 1e3,
    cpu_ms_median: countOnly ? null : Math.round(median(cpuTimes)), // all threads: the work, whatever the load
    peak_rss_mb: peakRssMb(),
    num_tensors: tf.memory().numTensors,
    ema: !!emaModel,
    // per step (the last one): kernels that compute (not Reshape or Identity, which only relabel data), and GPU calls
    kernels: [...kernels].filter(([k]) => run(k)).reduce((n, [, k]) => n + k.runs, 0),
    ...(backend === "webgpu" ? counts : {}),
  }));
  if (a["by-kernel"] || a["gpu-time"]) {
    const total = [...kernels.values()].reduce((t, k) => t + k.gpuMs, 0);
    const sorted = [...kernels].sort(([, p], [, q]) =>
      q.gpuMs - p.gpuMs || q.dispatches - p.dispatches || q.runs - p.runs
    );
    for (const [name, k] of sorted) {
      const gpu = timing.passes.length
        ? ` ${k.gpuMs.toFixed(1).padStart(8)} ms GPU (${(100 * k.gpuMs / total).toFixed(1)} %)`
        : "";
      const n = (v: number) => String(v).padStart(5);
      console.log(
        `${name.padEnd(24)} ${n(k.runs)} runs ${n(k.dispatches)} dispatches ${n(k.created)} buffers created${gpu}`,
      );
    }
  }
  tf.dispose([x0, tSample, ...(labels ? [labels] : [])]);
  opt.dispose();
  model.dispose();
  emaModel?.dispose();
  diffusion.dispose();
  threads?.close();
  if (countOnly) Deno.exit(0); // without waiting for the GPU to finish what was issued
}

if (import.meta.main) await runCli(main);
