// Backend choice and seeding, where the tensors run and how a run is made repeatable. Loads the kernel files of the
// backend it sets (wasm_kernels.ts, fused_*.ts), nothing else here.
import * as tf from "@tensorflow/tfjs";

/** The tfjs tensors of the public API (as named types, for its documentation): images are NHWC Tensor4D. */
export type Tensor = tf.Tensor;
/** A tfjs number. */
export type Scalar = tf.Scalar;
/** A tfjs vector: timesteps t, class labels y. */
export type Tensor1D = tf.Tensor1D;
/** A tfjs matrix: the time embedding [batch, timeDim]. */
export type Tensor2D = tf.Tensor2D;
/** A batch of images [batch, height, width, channels] (NHWC), in [-1, 1] for the model. */
export type Tensor4D = tf.Tensor4D;
/** A trainable tfjs tensor: a weight. */
export type Variable = tf.Variable;

/** Where the tensors run: `auto` picks the fastest that starts. */
export type BackendName = "auto" | "tensorflow" | "webgpu" | "wasm" | "cpu";
/** Every BackendName, in the order of --help. */
export const BACKENDS: BackendName[] = ["auto", "tensorflow", "webgpu", "wasm", "cpu"];

/** Why the native binding is not tried: the tasks grant --allow-ffi only to imagescript's codecs, not to it. */
export const GPU_FFI = "tfjs-node-gpu needs --allow-ffi: deno task gpu train.ts ... (or commands/sample.ts, eval.ts)";

/** Loads the native TensorFlow binding (CUDA when tfjs-node-gpu was installed with its scripts). */
async function loadTensorflow(): Promise<string | null> {
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return GPU_FFI;
  try {
    await import("@tensorflow/tfjs-node-gpu");
    return null;
  } catch (e) {
    const why = (e instanceof Error ? e.message : String(e)).split("\n")[0];
    const cause = why.includes("tfjs_binding.node") ? "its native binding is not built" : why.slice(0, 120);
    return `tfjs-node-gpu did not load (${cause}); on a CUDA 11.2 + cuDNN 8 machine: ` +
      "deno install --allow-scripts=npm:@tensorflow/tfjs-node-gpu";
  }
}

/**
 * Mesa's Vulkan drivers look for a Wayland display under XDG_RUNTIME_DIR and print "error: XDG_RUNTIME_DIR is invalid
 * or not set" twice where it is unset (a container, a CI job); compute needs no display, so where we may, point it at
 * none.
 */
function quietWayland() {
  const env = { name: "env", variable: "XDG_RUNTIME_DIR" } as const;
  if (Deno.permissions.querySync(env).state !== "granted" || Deno.env.get(env.variable)) return;
  Deno.env.set(env.variable, "/nonexistent-xdg-runtime-dir");
}

/** WebGPU through Deno; `realOnly` refuses software adapters such as llvmpipe. */
async function loadWebgpu(realOnly: boolean, log: (line: string) => void): Promise<string | null> {
  const gpu = (navigator as { gpu?: GPU }).gpu;
  quietWayland();
  const adapter = await gpu?.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) return "no WebGPU adapter";
  const info = adapter.info;
  const software = (info as { isFallbackAdapter?: boolean })?.isFallbackAdapter ||
    /llvmpipe|swiftshader|software/i.test(`${info?.device} ${info?.description}`);
  if (realOnly && software) return `WebGPU adapter is software (${info?.description || "fallback"})`;
  await (await import("./fused_webgpu.ts")).registerWebgpu(log);
  return null;
}

async function loadWasm(): Promise<string | null> {
  const { registerWasmKernels } = await import("./wasm_kernels.ts");
  await registerWasmKernels();
  (await import("./fused_wasm.ts")).registerWasmFused();
  return null;
}

/** A backend that was asked for and cannot be set (the message says why): exit code 1 on the command line. */
export class BackendError extends Error {}

/** Sets the tfjs backend; `auto` tries the native GPU build, then a real WebGPU adapter, then wasm. */
export async function setBackend(name: BackendName, log = console.log): Promise<string> {
  const loaders: Record<Exclude<BackendName, "auto">, () => Promise<string | null>> = {
    tensorflow: loadTensorflow,
    webgpu: () => loadWebgpu(name === "auto", log),
    wasm: loadWasm,
    cpu: () => Promise.resolve(null),
  };
  const order: Exclude<BackendName, "auto">[] = name === "auto" ? ["tensorflow", "webgpu", "wasm", "cpu"] : [name];
  for (const b of order) {
    const why = await loaders[b]();
    if (why === null && await tf.setBackend(b)) {
      if (b === "cpu") (tf.backend() as unknown as { firstUse: boolean }).firstUse = false; // no tfjs-node banner
      return b;
    }
    if (name !== "auto") throw new BackendError(`backend ${b} is not available: ${why ?? "setBackend failed"}`);
    log(`backend ${b} skipped: ${why}`);
  }
  throw new Error("no tfjs backend could be set");
}

/**
 * A sampler's pause after step k: every 50 steps a wait for x, so that a GPU backend (WebGPU, WebGL) runs the steps
 * queued so far instead of queueing every step of a sample before it runs one.
 */
export async function paceQueue(k: number, x: Tensor): Promise<void> {
  if (k % 50 === 0) await x.data();
}

// ------------------------------------------------------------------ seeding

/** Uniform random numbers in [0, 1). */
export type Rand = () => number;

/** mulberry32's output for the state `a` (which steps by 0x6d2b79f5 before each draw): 32 random bits. */
function mulberryBits(a: number): number {
  let t = Math.imul(a ^ (a >>> 15), a | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return (t ^ (t >>> 14)) >>> 0;
}

/** A small seeded PRNG (mulberry32) for what is drawn outside tfjs: shuffles, crops, label drops. */
export function mulberry32(seed: number): Rand {
  let a = seed | 0;
  return () => mulberryBits(a = (a + 0x6d2b79f5) | 0) / 4294967296;
}

// A seeded stream of seeds for tf.random* ops: setSeed(s) makes every draw after it repeatable.
let seedState = (Math.random() * 2 ** 31) | 0;

/** Makes every tfjs random draw after it repeatable: the stream of seeds starts at `seed`. */
export function setSeed(seed: number): void {
  seedState = seed | 0;
}

/** The next seed of the stream (a mulberry32 step). */
export function nextSeed(): number {
  return mulberryBits(seedState = (seedState + 0x6d2b79f5) | 0) % 2 ** 31;
}

/** The stream's position, saved in checkpoints so that a resumed run draws what a straight run would. */
export const getSeedState = () => seedState;
