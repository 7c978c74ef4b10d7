// End-to-end runs on tiny settings: built-in sets, an image folder, the run folder, resume, the CLI.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { Image } from "imagescript";
import { type Config } from "../run/config.ts";
import { train } from "../train.ts";
import { assertOneLine, quiet, runScript, tiny as tinyRun, withTempDir } from "./helpers.ts";

/** The tiny settings of tests/helpers.ts at 16 px and width 8, with a sample grid every epoch. */
const tiny = (out: string, over: Partial<Config> = {}) =>
  tinyRun(out, { imageSize: 16, width: 8, count: 12, sampleEvery: 1, nSamples: 4, ...over });

Deno.test("builtin:landscapes, unconditional: the run folder has every file", async () => {
  await withTempDir(async (dir) => {
    const grids = { sampler: "ddim", sampleSteps: 3, eta: 0.5 } as const;
    const { runDir, step, losses } = await train(tiny(dir, { emaBeta: 0.9, emaStart: 2, ...grids }), { log: quiet });
    assert.equal(step, 6); // 2 epochs of ceil(12 / 4) steps
    assert.equal(losses.length, 6);
    for (
      const f of [
        "loss.jsonl",
        "loss.png",
        "index.html",
        "data.png",
        "samples/epoch_0001.png",
        "samples/epoch_0001_ema.png",
        "samples/epoch_0002.png",
        "checkpoint/model.bin",
        "checkpoint/ema.bin",
        "checkpoint/adam_m.bin",
        "checkpoint/adam_v.bin",
        "checkpoint/state.json",
      ]
    ) assert.ok(existsSync(join(runDir, f)), `missing ${f}`);
    const rows = (await Deno.readTextFile(join(runDir, "loss.jsonl"))).trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(rows.map((r) => r.step), [1, 2, 3, 4, 5, 6]);
    const html = await Deno.readTextFile(join(runDir, "index.html"));
    assert.ok(html.includes("loss.png") && html.includes("samples/epoch_0002.png") && html.includes("<polyline"));
    assert.match(html, /id="steps"[^>]*\svalue="3"/); // the page's sampler starts at the grids' settings
    assert.match(html, /id="eta"[^>]*\svalue="0.5"/);
    const data = await Image.decode(await Deno.readFile(join(runDir, "data.png"))); // 8 training images in a row
    assert.deepEqual([data.width, data.height], [8 * 18 + 2, 20]);
    assert.ok(!existsSync(join(runDir, "checkpoint.tmp")) && !existsSync(join(runDir, "checkpoint.old")));
  });
});

Deno.test("builtin:shapes, conditional: one grid row per class; resume continues the step count", async () => {
  await withTempDir(async (dir) => {
    const config = tiny(dir, { data: "builtin:shapes", conditional: true, count: 20, epochs: 1, nSamples: 10 });
    const first = await train(config, { log: quiet });
    assert.equal(first.step, 5);
    const grid = await Image.decode(await Deno.readFile(join(first.runDir, "samples/epoch_0001.png")));
    assert.equal(Math.round(grid.height / 18), 10); // 10 rows of 16 px tiles with 2 px gaps
    const lines: string[] = [];
    const second = await train({ ...config, epochs: 2 }, {
      resume: true,
      given: ["epochs"],
      log: (l) => lines.push(l),
    });
    assert.equal(second.step, 10);
    assert.ok(lines.some((l) => l.includes("resuming") && l.includes("step 5")));
    const rows = (await Deno.readTextFile(join(first.runDir, "loss.jsonl"))).trim().split("\n").map((l) =>
      JSON.parse(l)
    );
    assert.deepEqual(rows.map((r) => r.step), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  });
});

Deno.test("the loss and optimizer options are saved with the run and kept on resume; a different one is refused", async () => {
  await withTempDir(async (dir) => {
    const options = { prediction: "v", minSnrGamma: 5, warmupSteps: 2, lrDecay: "cosine", maxGradNorm: 1 } as const;
    const config = tiny(dir, { ...options, epochs: 1 });
    await train(config, { log: quiet });
    const saved = JSON.parse(await Deno.readTextFile(join(dir, config.name, "checkpoint", "state.json")));
    assert.deepEqual(Object.keys(options).map((k) => saved.config[k]), Object.values(options));
    const resumed = await train({ ...config, epochs: 2 }, { resume: true, given: ["epochs"], log: quiet });
    assert.equal(resumed.step, 6);
    const again = JSON.parse(await Deno.readTextFile(join(dir, config.name, "checkpoint", "state.json")));
    assert.deepEqual(Object.keys(options).map((k) => again.config[k]), Object.values(options));
    await assert.rejects(
      () => train({ ...config, prediction: "eps", epochs: 3 }, { resume: true, given: ["prediction"], log: quiet }),
      /--prediction eps: the run was trained with v/,
    );
  });
});

Deno.test("an image folder (JPEG + PNG, RGB, grayscale, RGBA) trains; a non-image is skipped with a warning", async () => {
  await withTempDir(async (dir) => {
    const data = join(dir, "images");
    await Deno.mkdir(data);
    for (let i = 0; i < 6; i++) {
      const img = new Image(40, 30).fill(((i * 40) << 24) | (0x80 << 16) | (0x40 << 8) | 0xff);
      await Deno.writeFile(join(data, `rgb${i}.png`), await img.encode());
      await Deno.writeFile(join(data, `photo${i}.jpg`), await img.encodeJPEG(90));
    }
    await Deno.writeFile(join(data, "gray.png"), await new Image(20, 20).fill(0x777777ff).encode());
    await Deno.writeFile(join(data, "broken.png"), new TextEncoder().encode("not a png"));
    const lines: string[] = [];
    const cacheDir = join(dir, "cache");
    const { step } = await train(tiny(dir, { data, epochs: 1, count: 0, cacheDir }), { log: (l) => lines.push(l) });
    assert.equal(step, Math.ceil(13 / 4));
    assert.ok(lines.some((l) => l.includes("broken.png")), "warning names the file");
    assert.ok(lines.some((l) => l.includes("13 images (1 skipped)")), lines.join("\n"));
  });
});

const cli = (...args: string[]) => runScript("train.ts", ...args);

Deno.test("CLI: a training start prints the backend and parameter count; missing folder is one clear line", async () => {
  await withTempDir(async (dir) => {
    const ok = await cli(
      "--data",
      "builtin:shapes",
      "--conditional",
      "--image-size",
      "16",
      "--width",
      "8",
      "--count",
      "8",
      "--batch-size",
      "4",
      "--max-steps",
      "1",
      "--noise-steps",
      "5",
      "--n-samples",
      "10",
      "--out",
      dir,
      "--backend",
      "wasm",
    );
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(
      ok.stdout,
      /backend wasm, \d+ threads?, (native \(OpenBLAS [^)]+\)|wasm kernels[^|]*) \| conditional U-Net width 8: [\d,]+ parameters \| data builtin:shapes: 8 images/,
    );
    assertOneLine(await cli("--data", join(dir, "nope"), "--out", dir, "--name", "nope"), 1, join(dir, "nope"));
  });
});

Deno.test("a short run: its grids are DDIM and the banner prices them; an unconditional run does not speak of classes", async () => {
  await withTempDir(async (dir) => {
    const data = join(dir, "photos"); // sub-folders, as a wallpaper folder has
    for (const [i, sub] of ["a", "b", "c"].entries()) {
      await Deno.mkdir(join(data, sub), { recursive: true });
      const img = new Image(20, 20).fill(((i * 60) << 24 | 0x8040ff) >>> 0);
      await Deno.writeFile(join(data, sub, "p.png"), await img.encode());
    }
    const lines: string[] = [];
    const config = tiny(dir, { data, count: 0, epochs: 1, noCache: true, sampleEvery: 1, nSamples: 2, noiseSteps: 10 });
    await train(config, { log: (l) => lines.push(l) });
    const saved = JSON.parse(await Deno.readTextFile(join(dir, "run", "checkpoint", "state.json"))).config;
    assert.equal(saved.sampler, "ddim"); // a DDPM grid: 2 images × 10 steps > a tenth of 1 step of 3 images
    assert.ok(!lines.some((l) => /class/.test(l)), lines.join("\n"));
    assert.ok(
      lines.some((l) =>
        /^note: the 1 sample grid\(s\) of 2 images × 10 ddim steps take about \d+ % of this run's time/.test(l)
      ),
      lines.join("\n"),
    );
    await train({ ...config, name: "given" }, { given: ["sampler"], log: quiet });
    const kept = JSON.parse(await Deno.readTextFile(join(dir, "given", "checkpoint", "state.json"))).config;
    assert.equal(kept.sampler, "ddpm"); // --sampler ddpm, given
  });
});

Deno.test("a recipe with epochs 0 and crop auto: its steps, and the crops cropRule chose, saved with the run", async () => {
  await withTempDir(async (dir) => {
    const data = join(dir, "scans");
    await Deno.mkdir(data);
    for (let i = 0; i < 2; i++) await Deno.writeFile(join(data, `${i}.png`), await new Image(20, 20).fill(i).encode());
    const recipe = { data, count: 0, epochs: 0, crop: "auto" as const, noCache: true }; // batches of 4: 1 step an epoch
    const saved = async (name: string, maxSteps: number) => {
      await train(tinyRun(dir, { ...recipe, name, maxSteps }), { log: quiet });
      return JSON.parse(await Deno.readTextFile(join(dir, name, "checkpoint", "state.json")));
    };
    const few = await saved("few", 3); // each image seen 6 times: whole
    assert.deepEqual([few.step, few.config.epochs, few.config.crop], [3, 3, "center"]);
    const many = await saved("many", 51); // 102 times (> CROP_VIEWS): random crops
    assert.deepEqual([many.step, many.config.epochs, many.config.crop], [51, 51, "random"]);
  });
});
