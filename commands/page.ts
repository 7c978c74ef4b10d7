/// <reference lib="dom" />
// The run's page, live, the forward process q(x_t | x_0) and the reverse process (DDPM, DDIM) with the run's own
// weights, in the browser on tfjs's stock backends. Bundled by `deno task bundle`; the same diffusion.ts and
// modules.ts.
import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-webgpu";
import { setWasmPaths } from "@tensorflow/tfjs-backend-wasm";
import { getSeedState, nextSeed, setSeed } from "../kernels/backend.ts";
import { type RunState } from "../run/trained.ts";
import { assignTensors, parseWeights } from "../weights/weights.ts";
import { Diffusion, toUint8 } from "../diffusion.ts";
import { UNet } from "../modules.ts";

const $ = <E extends HTMLElement = HTMLInputElement>(id: string) => document.getElementById(id) as E;
const GAP = 2; // pixels between images, as in the PNG grids

/** A stored step of the reverse process: x_t and the x̂_0 of the step that made it, as pixels. */
type Frame = { t: number; x: Uint8Array | null; x0: Uint8Array | null };

/** What the page holds, also read by tests/view_test.ts. */
const view = {
  ready: false,
  busy: false,
  error: "",
  backend: "",
  drawing: Promise.resolve(), // the forward view's last redraw
  sample: null as Float32Array | null, // the last x_0, NHWC floats
  seconds: 0, // how long the last sample took
  frames: [] as Frame[], // the stored steps of the last sample
};
(globalThis as unknown as { ddpmView: typeof view }).ddpmView = view;

/** Why not to take WebGPU or WebGL here: no GPU, or a software one (SwiftShader, llvmpipe: slower than wasm). */
async function skipGpu(name: string): Promise<string | null> {
  const soft = (s: unknown) => /swiftshader|llvmpipe|software|basic render/i.test(String(s));
  if (name === "webgpu") {
    const adapter = await (navigator as { gpu?: GPU }).gpu?.requestAdapter();
    const info = adapter?.info as (GPUAdapterInfo & { isFallbackAdapter?: boolean }) | undefined;
    if (!info) return "no WebGPU adapter";
    return info.isFallbackAdapter || soft(`${info.device} ${info.description}`) ? "software WebGPU" : null;
  }
  if (name !== "webgl") return null;
  const gl = document.createElement("canvas").getContext("webgl2");
  const debug = gl?.getExtension("WEBGL_debug_renderer_info");
  if (!gl) return "no WebGL 2";
  return soft(gl.getParameter(debug ? debug.UNMASKED_RENDERER_WEBGL : gl.RENDERER)) ? "software WebGL" : null;
}

/** ?backend=NAME, or the first of webgpu, webgl (on a real GPU: a software one is skipped), wasm and cpu. */
async function startBackend(): Promise<string> {
  setWasmPaths(new URL("page/", location.href).href); // the .wasm files lie beside page.js: nothing from the internet
  const wanted = new URLSearchParams(location.search).get("backend");
  const skipped: string[] = [];
  for (const name of wanted ? [wanted] : ["webgpu", "webgl", "wasm", "cpu"]) {
    try {
      const why = wanted ? null : await skipGpu(name);
      if (why) skipped.push(why);
      else if (await tf.setBackend(name)) return name + (skipped.length ? ` (skipped: ${skipped.join(", ")})` : "");
    } catch { /* not in this browser: the next one */ }
  }
  throw new Error(`no tfjs backend started${wanted ? ` (asked for ${wanted})` : ""}`);
}

async function fetchOk(path: string): Promise<Response> {
  const r = await fetch(path);
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r;
}

/** The newest checkpoint's state, and its EMA weights when the run has them (else the model's). */
async function loadModel(): Promise<{ state: RunState; model: UNet; weights: string }> {
  let dir = "checkpoint", state: RunState;
  try {
    state = await (await fetchOk(`${dir}/state.json`)).json();
  } catch { // a run stopped while writing: the previous checkpoint
    dir = "checkpoint.old";
    state = await (await fetchOk(`${dir}/state.json`)).json();
  }
  const c = state.config, weights = c.emaBeta > 0 ? "ema.bin" : "model.bin", path = `${dir}/${weights}`;
  const model = new UNet({ ...c, numClasses: c.conditional ? state.classes.length : 0 });
  assignTensors(path, model.weights, parseWeights(new Uint8Array(await (await fetchOk(path)).arrayBuffer()), path));
  return { state, model, weights: weights === "ema.bin" ? "EMA" : "model" };
}

/** The training images of data.png (a row of size-px tiles with 2 px gaps), as [n, size, size, 3] in [-1, 1]. */
async function loadData(size: number): Promise<tf.Tensor4D> {
  const img = new Image();
  img.src = "data.png";
  await img.decode();
  const n = Math.floor((img.width - GAP) / (size + GAP)), cv = document.createElement("canvas");
  [cv.width, cv.height] = [img.width, img.height];
  const ctx = cv.getContext("2d")!;
  ctx.drawImage(img, 0, 0);
  const x = new Float32Array(n * size * size * 3);
  for (let i = 0; i < n; i++) {
    const rgba = ctx.getImageData(GAP + i * (size + GAP), GAP, size, size).data;
    for (let p = 0; p < size * size; p++) {
      for (let c = 0; c < 3; c++) x[(i * size * size + p) * 3 + c] = rgba[4 * p + c] / 127.5 - 1;
    }
  }
  return tf.tensor4d(x, [n, size, size, 3]);
}

/** Draws n RGB images (NHWC uint8) in a row, each `scale` screen pixels a pixel (nearest neighbour). */
function draw(canvas: HTMLCanvasElement, pixels: Uint8Array | null, n: number, size: number, scale: number) {
  [canvas.width, canvas.height] = [n * (size + GAP) - GAP, size];
  canvas.style.width = `${canvas.width * scale}px`;
  const ctx = canvas.getContext("2d")!;
  if (!pixels) return ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < n; i++) {
    const img = ctx.createImageData(size, size);
    for (let p = 0; p < size * size; p++) {
      img.data.set(pixels.subarray((i * size * size + p) * 3, (i * size * size + p + 1) * 3), 4 * p);
      img.data[4 * p + 3] = 255;
    }
    ctx.putImageData(img, i * (size + GAP), 0);
  }
}

/** A tensor's pixels (toUint8 of a copy: the tensor stays). */
const pixelsOf = (x: tf.Tensor4D) => toUint8(x.clone());
const fmt = (v: number) =>
  v === Infinity ? "∞" : v === 0 ? "0" : v >= 1e4 || v < 1e-3 ? v.toExponential(2) : v.toPrecision(4);

/** Part 1: a training image, a fixed ε and the slider over t (t = 0 is x_0 itself; index t - 1 of the code). */
function forwardView(diffusion: Diffusion, data: tf.Tensor4D) {
  const s = diffusion.imageSize, big = Math.max(1, Math.floor(192 / s));
  let chosen = 0, epsSeed = 1;
  const thumbs = Array.from({ length: data.shape[0] }, (_, i) => {
    const cv = document.createElement("canvas");
    cv.onclick = () => (chosen = i, view.drawing = update());
    $("data").append(cv);
    return cv;
  });
  let latest = 0;
  const update = async () => {
    const t = Number($("t").value), i = t - 1, id = ++latest;
    const x0 = tf.tidy(() => data.slice([chosen, 0, 0, 0], [1, s, s, 3]));
    const tIndex = tf.tensor1d([Math.max(0, i)], "int32"), sampling = getSeedState();
    setSeed(epsSeed); // the same ε at every t: the image dissolves rather than flickers
    const [xt, eps] = diffusion.noiseImages(x0, tIndex);
    setSeed(sampling); // (a sample running meanwhile draws what it would have drawn)
    const pixels = await Promise.all([x0, eps, t === 0 ? x0 : xt].map(pixelsOf));
    tf.dispose([x0, tIndex, xt, eps]);
    if (id !== latest) return; // the slider moved on meanwhile
    pixels.forEach((p, k) => draw($(["f-x0", "f-eps", "f-xt"][k]), p, 1, s, big));
    thumbs.forEach((cv, k) => cv.classList.toggle("on", k === chosen));
    const a = t === 0 ? 1 : diffusion.alphaHat[i];
    $("f-cap").textContent = `x_t at t = ${t}`;
    $("f-stats").textContent =
      `t = ${t} of ${diffusion.noiseSteps} · ᾱ_t = ${fmt(a)} · √ᾱ_t = ${fmt(Math.sqrt(a))} · ` +
      `√(1-ᾱ_t) = ${fmt(Math.sqrt(1 - a))} · signal-to-noise ratio ᾱ_t/(1-ᾱ_t) = ${fmt(a / (1 - a))}` +
      (a < 1 ? ` (${(10 * Math.log10(a / (1 - a))).toFixed(1)} dB)` : "");
  };
  $("t").oninput = () => view.drawing = update();
  $("new-eps").onclick = () => (epsSeed++, view.drawing = update());
  return (async () => {
    const all = await pixelsOf(data);
    thumbs.forEach((cv, i) => draw(cv, all.subarray(i * s * s * 3, (i + 1) * s * s * 3), 1, s, 3));
    await update();
  })();
}

/** Part 2: "Sample" runs Diffusion.sampleX0 step by step, drawing x_t and x̂_0; the scrubber replays the steps. */
function reverseView(diffusion: Diffusion, model: UNet, state: RunState) {
  const s = diffusion.imageSize, T = diffusion.noiseSteps, k = model.numClasses;
  if (k) {
    $("cond").hidden = false;
    $("label").innerHTML = state.classes.map((c, i) => `<option value="${i}">${c}</option>`).join("");
  }
  const show = (f: Frame, n: number) => {
    const scale = Math.max(1, Math.floor(Math.min(192 / s, 520 / (n * (s + GAP))))); // the two rows side by side
    draw($("r-xt"), f.x, n, s, scale);
    draw($("r-x0"), f.x0, n, s, scale);
    $("r-cap").textContent = f.t === T ? `x_T, t = ${T}: pure noise` : `x_t at t = ${f.t}`;
  };
  const blank = () => show({ t: T, x: null, x0: null }, Number($("n").value));
  $("n").onchange = blank;
  blank();
  const run = async () => {
    const num = (id: string) => Number($(id).value);
    const sampler = $<HTMLSelectElement>("sampler").value as "ddim" | "ddpm", n = num("n");
    const tau = sampler === "ddim" ? diffusion.ddimTimesteps(num("steps")) : Array.from({ length: T }, (_, i) => i);
    const stride = Math.ceil(tau.length / 250); // stored frames for the replay: at most ~250
    const labels = k ? Array(n).fill(num("label")) : null;
    view.busy = true;
    view.frames = [];
    $("sample").toggleAttribute("disabled", true);
    $("scrub").toggleAttribute("disabled", true);
    const t0 = performance.now();
    setSeed(num("seed")); // as `deno task sample --seed`: x_T first, then each step's z
    const xT = tf.randomNormal([n, s, s, 3], 0, 1, "float32", nextSeed()) as tf.Tensor4D;
    view.frames.push({ t: T, x: await pixelsOf(xT), x0: null });
    show(view.frames[0], n);
    const x = await diffusion.sampleX0(model, n, {
      xT,
      labels,
      cfgScale: num("cfg"),
      sampler,
      sampleSteps: num("steps"),
      eta: num("eta"),
      clip: $("clip").checked,
      onStep: async (left, x, x0) => {
        const frame = { t: left ? tau[left - 1] + 1 : 0, x: await pixelsOf(x), x0: await pixelsOf(x0) };
        if (left % stride === 0) view.frames.push(frame);
        show(frame, n);
        $<HTMLProgressElement>("progress").value = (tau.length - left) / tau.length;
        $("r-status").textContent = `step ${tau.length - left} of ${tau.length} · t = ${frame.t}`;
        await new Promise((r) => setTimeout(r)); // let the page draw
      },
    });
    xT.dispose();
    view.sample = await x.data() as Float32Array;
    x.dispose();
    view.seconds = (performance.now() - t0) / 1000;
    $("r-status").textContent = `${n} images, ${tau.length} ${sampler.toUpperCase()} steps: ` +
      `${view.seconds.toFixed(1)} s on ${view.backend}`;
    Object.assign($("scrub"), { max: view.frames.length - 1, value: view.frames.length - 1 });
    $("scrub").oninput = () => show(view.frames[Number($("scrub").value)], n);
    $("scrub").toggleAttribute("disabled", false);
    $("sample").toggleAttribute("disabled", false);
    view.busy = false;
  };
  $("sample").onclick = () =>
    run().catch((e) => {
      view.error = $("r-status").textContent = `sampling failed: ${e instanceof Error ? e.message : e}`;
      view.busy = false;
    });
}

async function main() {
  $("note").textContent = "loading the model…";
  document.body.classList.add("loading");
  view.backend = await startBackend();
  const { state, model, weights } = await loadModel();
  const c = state.config;
  const diffusion = new Diffusion(c);
  $("backend").textContent = `live parts: tfjs ${tf.version.tfjs} on ${view.backend}, ${weights} weights ` +
    `(${model.parameterCount.toLocaleString("en")} parameters)`;
  document.body.classList.add("ready");
  await forwardView(diffusion, await loadData(c.imageSize));
  reverseView(diffusion, model, state);
  view.ready = true;
}

main().catch((e) => {
  view.error = `the live parts could not start: ${e instanceof Error ? e.message : e}`;
  Object.assign($("note"), { textContent: view.error, className: "note error" });
});
