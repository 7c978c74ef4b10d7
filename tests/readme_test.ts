// The README's library example, run as written (its `./mod.ts` is this repository's) in a folder whose runs/demo is a
// short run of the demo's recipe: it must draw images, not noise.
import assert from "node:assert/strict";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { Image } from "imagescript";
import { DEFAULTS, PRESETS } from "../run/config.ts";
import { train } from "../train.ts";
import { quiet, ROOT, withTempDir } from "./helpers.ts";

/** The README's ```ts block that imports the library (./mod.ts). */
function libraryExample(): string {
  const readme = Deno.readTextFileSync(join(ROOT, "README.md"));
  const code = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]).find((c) => c.includes('"./mod.ts"'));
  assert.ok(code, "the README has a ts block that imports ./mod.ts");
  return code;
}

/** Each pixel's variance across the tiles of a grid (RGB in [-1, 1]), averaged over the pixels. */
function varianceAcrossSamples(grid: Image, n: number, size: number): number {
  const cols = Math.ceil(Math.sqrt(n)), gap = 2;
  let sum = 0;
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      for (let c = 0; c < 3; c++) {
        const v = Array.from({ length: n }, (_, i) => {
          const [px, py] = [gap + (i % cols) * (size + gap) + x, gap + Math.floor(i / cols) * (size + gap) + y];
          return grid.bitmap[(py * grid.width + px) * 4 + c] / 127.5 - 1;
        });
        const mean = v.reduce((a, b) => a + b) / n;
        sum += v.reduce((a, b) => a + (b - mean) ** 2, 0) / n;
      }
    }
  }
  return sum / (size * size * 3);
}

Deno.test("the README's library example, run as written on a short demo run, draws images, not noise", async () => {
  const code = libraryExample().replaceAll('"./mod.ts"', JSON.stringify(pathToFileURL(join(ROOT, "mod.ts")).href));
  await withTempDir(async (dir) => {
    const size = 8; // the demo's recipe at 8 px and width 8, 400 steps: seconds
    const config = { ...DEFAULTS, ...PRESETS.demo, out: join(dir, "runs"), imageSize: size, width: 8 };
    await train({ ...config, count: 400, maxSteps: 400, sampleEvery: 1000, backend: "wasm" }, { log: quiet });
    const script = join(dir, "example.ts");
    await Deno.writeTextFile(script, code);
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--config", join(ROOT, "deno.json"), script],
      cwd: dir,
      stdin: "null",
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    const grid = await Image.decode(await Deno.readFile(join(dir, "grid.png")));
    const n = 16;
    const variance = varianceAcrossSamples(grid as Image, n, size);
    // Noise clipped to [-1, 1] has a variance of 0.52 at every pixel; the landscapes vary far less at a pixel.
    assert.ok(variance < 0.2, `variance across samples ${variance.toFixed(3)}: noise, not images`);
  });
});
