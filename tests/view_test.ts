// The run's page in headless Chromium: served by `deno task view`, the forward process and the model run in the page,
// and its sample equal to `deno task sample`'s. On a tiny run trained here from the tutorial's later U-Net (no bot2),
// or VIEW_RUN=runs/NAME (unconditional). SCREENSHOT=docs/page.png VIEW_RUN=runs/demo retakes the docs' screenshot and
// writes the recipe it shows beside it (docs/page.json), which the last test holds against PRESETS.demo.
import assert from "node:assert/strict";
import { join } from "node:path";
import * as tf from "@tensorflow/tfjs";
import { Image } from "imagescript";
import { nextSeed, setBackend, setSeed } from "../kernels/backend.ts";
import { loadWeights } from "../weights/checkpoint.ts";
import { readState } from "../run/trained.ts";
import { DEFAULTS, fitToData, PRESETS } from "../run/config.ts";
import { Diffusion, toUint8 } from "../diffusion.ts";
import { train } from "../train.ts";
import { Chromium } from "./chromium.ts";
import { assertOneLine, readUntil, ROOT, runScript } from "./helpers.ts";

await setBackend("cpu"); // (training the tiny run switches to wasm)
const GAP = 2;
let S = 16, T = 1000; // the run's image size and step count

/** Runs a CLI of the project; its stdout, or an error with its stderr. */
async function run(script: string, ...args: string[]) {
  const out = await runScript(script, ...args);
  assert.equal(out.code, 0, out.stderr);
  return out.stdout;
}

/** `deno task view` in the background: the URL it prints, and a way to stop it. */
async function startView(runDir: string) {
  const proc = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "commands/view.ts", "--run", runDir, "--port", "0"],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = proc.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const url = await readUntil(lines, /at (http:\S+)/, "commands/view.ts");
  const stop = async () => {
    await lines.cancel();
    proc.kill();
    await proc.status;
  };
  return { url, stop };
}

/** Image i of a row of tiles (the page's canvases) or of a grid with `cols` columns (the PNGs), as RGB bytes. */
function tile(rgba: ArrayLike<number>, width: number, i: number, cols = Infinity, border = 0): number[] {
  const x0 = border + (i % cols) * (S + GAP), y0 = border + Math.floor(i / cols) * (S + GAP), out = [];
  for (let y = 0; y < S; y++) {
    for (let x = 0; x < S; x++) for (let c = 0; c < 3; c++) out.push(rgba[((y0 + y) * width + x0 + x) * 4 + c]);
  }
  return out;
}

const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  assert.equal(a.length, b.length);
  return Array.from(a).reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
};

/** A canvas's RGBA pixels and width. */
const canvas = (page: Chromium, id: string) =>
  page.evaluate<{ data: number[]; width: number }>(`(() => {
    const cv = document.getElementById("${id}");
    return { data: Array.from(cv.getContext("2d").getImageData(0, 0, cv.width, cv.height).data), width: cv.width };
  })()`);

/** Moves the t slider as a user's drag does, and waits for the redraw. */
const slide = (page: Chromium, t: number) =>
  page.evaluate(`(() => {
    const s = document.getElementById("t");
    s.value = "${t}";
    s.dispatchEvent(new Event("input"));
    return ddpmView.drawing.then(() => true);
  })()`);

async function decodePng(path: string) {
  const img = await Image.decode(await Deno.readFile(path));
  return { data: img.bitmap, width: img.width };
}

Deno.test("the run's page in headless Chromium: forward process, and the page's sample is deno task sample's", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ddpm_view_" });
  const steps: Array<() => Promise<void>> = [];
  try {
    const config = {
      ...DEFAULTS,
      out: dir,
      name: "tiny",
      backend: "wasm" as const,
      imageSize: S,
      width: 8,
      batchSize: 4,
      count: 8,
      epochs: 1,
      noiseSteps: T,
      sampleEvery: 1,
      nSamples: 4,
      sampler: "ddim" as const,
      sampleSteps: 2,
      emaBeta: 0.9, // the page must take the EMA weights
      prediction: "v" as const, // and the run's prediction (the demo's)
      emaStart: 0,
      weights: join(ROOT, "tests/fixtures/unet_w8_nodeep.pt"), // the page must build the U-Net without bot2
    };
    const runDir = Deno.env.get("VIEW_RUN") ?? (await train(config, { log: () => {} })).runDir;
    const runConfig = (await readState(runDir)).config;
    ({ imageSize: S, noiseSteps: T } = runConfig);
    if (!Deno.env.get("VIEW_RUN")) assert.equal(runConfig.removeDeepConv, true);
    const view = await startView(runDir);
    steps.push(view.stop);
    const page = await Chromium.launch();
    steps.push(() => page.close());
    await page.open(`${view.url}?backend=cpu`); // cpu, as `deno task sample --backend cpu` below
    await page.waitFor("window.ddpmView && (ddpmView.ready || ddpmView.error)");
    assert.equal(await page.evaluate("ddpmView.error"), "");
    assert.match(await page.evaluate<string>(`document.getElementById("backend").textContent`), /on cpu, EMA weights/);

    // Forward process. t = 0: x_0 itself, the first training image of data.png.
    const data = await decodePng(join(runDir, "data.png"));
    await slide(page, 0);
    const x0 = tile(data.data, data.width, 0, Infinity, GAP);
    const at0 = await canvas(page, "f-xt");
    assert.deepEqual(tile(at0.data, at0.width, 0), x0);
    // t = 300: √ᾱ·x_0 + √(1-ᾱ)·ε with the page's ε (seed 1), computed here with diffusion.ts.
    await slide(page, 300);
    setSeed(1);
    const diffusion = new Diffusion(runConfig); // (its schedule: the demo's is cosine)
    const x0t = tf.tensor4d(x0.map((v) => v / 127.5 - 1), [1, S, S, 3]), t300 = tf.tensor1d([299], "int32");
    const [xt, eps] = diffusion.noiseImages(x0t, t300);
    const at300 = await canvas(page, "f-xt");
    assert.ok(maxDiff(tile(at300.data, at300.width, 0), await toUint8(xt)) <= 1);
    tf.dispose([x0t, t300, eps]);
    // t = T-1 and T: noise. Values in [-1, 1] (clipped N(0, 1): mean 0, sd 0.72, 32 % at ±1), uncorrelated with x_0.
    for (const t of [T - 1, T]) {
      await slide(page, t);
      const c = await canvas(page, "f-xt"), v = tile(c.data, c.width, 0).map((p) => p / 127.5 - 1), n = v.length;
      const mean = v.reduce((a, b) => a + b) / n, sd = Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / n);
      const saturated = v.filter((x) => Math.abs(x) === 1).length / n;
      const d = x0.map((p) => p / 127.5 - 1), dm = d.reduce((a, b) => a + b) / n;
      const sdD = Math.sqrt(d.reduce((a, b) => a + (b - dm) ** 2, 0) / n);
      const corr = v.reduce((a, x, i) => a + (x - mean) * (d[i] - dm), 0) / n / (sd * sdD);
      assert.ok(Math.abs(mean) < 0.1 && sd > 0.62 && sd < 0.8, `t=${t}: mean ${mean}, sd ${sd}`);
      assert.ok(saturated > 0.22 && saturated < 0.42, `t=${t}: ${saturated} at ±1`);
      assert.ok(Math.abs(corr) < 0.2, `t=${t}: correlation with x_0 ${corr}`);
    }

    // Reverse process: stochastic DDIM (η = 0.5: every step draws seeded noise) in the page, then the same CLI run.
    const [n, seed, sampleSteps] = [3, 7, 4];
    await page.evaluate(`(() => {
      const set = (id, v) => document.getElementById(id).value = v;
      set("sampler", "ddim"), set("steps", "${sampleSteps}"), set("eta", "0.5"), set("seed", "${seed}"), set("n", "${n}");
      document.getElementById("sample").click();
    })()`);
    for (const t of [500, 20]) await slide(page, t); // the forward view, used meanwhile, leaves the sample's noise alone
    await page.waitFor("ddpmView.sample || ddpmView.error", 120);
    assert.equal(await page.evaluate("ddpmView.error"), "");
    const raw = join(dir, "x0.bin"), png = join(dir, "x0.png");
    await run(
      "commands/sample.ts",
      ...["--run", runDir, "--ema", "--sampler", "ddim", "--sample-steps", `${sampleSteps}`, "--eta", "0.5"],
      ...["--seed", `${seed}`, "--n", `${n}`, "--backend", "cpu", "--raw", raw, "--to", png],
    );
    const cli = loadWeights(raw).get("samples")!, inPage = await page.evaluate<number[]>("Array.from(ddpmView.sample)");
    assert.deepEqual(cli.shape, [n, S, S, 3]);
    const diff = maxDiff(inPage, cli.values);
    assert.ok(diff <= 1e-3, `page vs deno task sample: max |diff| ${diff}`);
    // What the page drew: the final x (= the last x̂_0) is the CLI's PNG, within a rounding.
    const [grid, finalX, finalX0] = [await decodePng(png), await canvas(page, "r-xt"), await canvas(page, "r-x0")];
    for (let i = 0; i < n; i++) {
      const want = tile(grid.data, grid.width, i, Math.ceil(Math.sqrt(n)), GAP);
      assert.ok(maxDiff(tile(finalX.data, finalX.width, i), want) <= 1);
      assert.ok(maxDiff(tile(finalX0.data, finalX0.width, i), want) <= 1);
    }
    // The replay: x_T and each step are stored; back at the start, the page shows x_T ~ N(0, I) of that seed.
    assert.equal(await page.evaluate("ddpmView.frames.length"), sampleSteps + 1);
    await page.evaluate(`(() => { const s = document.getElementById("scrub"); s.value = "0"; s.oninput(); })()`);
    setSeed(seed);
    const xT = await toUint8(tf.randomNormal([n, S, S, 3], 0, 1, "float32", nextSeed()) as tf.Tensor4D);
    const shown = await canvas(page, "r-xt");
    for (let i = 0; i < n; i++) {
      assert.ok(maxDiff(tile(shown.data, shown.width, i), xT.subarray(i * S * S * 3, (i + 1) * S * S * 3)) <= 1);
    }
    diffusion.dispose();

    // The screenshot: the page as it opens (the run's own sampler, on wasm), a partly noised x_t, and a sample replayed
    // at 80 % of its steps: x_t being denoised beside the x̂_0 it predicts.
    await page.open(`${view.url}?backend=wasm`);
    await page.waitFor("window.ddpmView && (ddpmView.ready || ddpmView.error)");
    await page.evaluate(`document.getElementById("sample").click()`);
    await page.waitFor("ddpmView.sample || ddpmView.error", 600);
    assert.equal(await page.evaluate("ddpmView.error"), "");
    const frames = await page.evaluate<number>("ddpmView.frames.length");
    await page.evaluate(`(() => {
      const s = document.getElementById("scrub");
      s.value = "${Math.round(0.8 * (frames - 1))}";
      s.oninput();
    })()`);
    await slide(page, 150);
    const top = await page.evaluate<number>(`document.getElementById("grids").getBoundingClientRect().top`);
    const shot = await page.screenshot(top);
    assert.deepEqual([...shot.subarray(1, 4)], [80, 78, 71]); // "PNG"
    const keep = Deno.env.get("SCREENSHOT");
    if (keep) {
      await Deno.writeFile(keep, shot);
      const recipe = Object.fromEntries(
        Object.keys(PRESETS.demo).map((k) => [k, runConfig[k as keyof typeof runConfig]]),
      );
      await Deno.writeTextFile(keep.replace(/\.png$/, ".json"), JSON.stringify(recipe, null, 2) + "\n");
    }
  } finally {
    for (const stop of steps.reverse()) await stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno task view: a folder that is not a run is one line of error", async () => {
  assertOneLine(
    await runScript("commands/view.ts", "--run", "/nonexistent/run"),
    1,
    "error: no run at /nonexistent/run",
  );
});

Deno.test("docs/page.png shows the demo's recipe as it is (else: retake it, SCREENSHOT=docs/page.png VIEW_RUN=runs/demo)", () => {
  const shown = JSON.parse(Deno.readTextFileSync(join(ROOT, "docs/page.json")));
  const run = fitToData({ ...DEFAULTS, ...PRESETS.demo }, 2000); // (the recipe's rule on the 2000 built-in images)
  const recipe = Object.fromEntries(Object.keys(PRESETS.demo).map((k) => [k, run[k as keyof typeof run]]));
  assert.deepEqual(shown, recipe, "docs/page.png was taken of another recipe than PRESETS.demo");
});
