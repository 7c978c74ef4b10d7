// Tests of the Dataset's batches and of the PNG grids.
import assert from "node:assert/strict";
import { join } from "node:path";
import { decode, Image } from "imagescript";
import { mulberry32 } from "../kernels/backend.ts";
import { drawShape } from "../data/datasets.ts";
import { loadDataset, saveGrid } from "../utils.ts";
import { epoch, quiet, withTempDir } from "./helpers.ts";

/** A signature of an image that survives horizontal flips: its row sums. */
function rowSums(x: ArrayLike<number>, size: number, toUnit = (v: number) => v) {
  const sums = [];
  for (let y = 0; y < size; y++) {
    let s = 0;
    for (let i = y * size * 3; i < (y + 1) * size * 3; i++) s += toUnit(x[i]);
    sums.push(s.toFixed(2));
  }
  return sums.join(",");
}

Deno.test("batches: shapes, range, each image once per epoch, reshuffled, seeded", async () => {
  const size = 8, n = 25;
  const ds = await loadDataset("builtin:shapes", size, { seed: 7, count: n, log: quiet });
  assert.equal(ds.length, n);

  // Reference images drawn directly with the same generator and seed.
  const rand = mulberry32(7), px = size * size * 3, ref = new Uint8Array(n * px);
  for (let i = 0; i < n; i++) drawShape(i % 10, size, rand, ref, i * px);
  const refKeys = Array.from({ length: n }, (_, i) => rowSums(ref.subarray(i * px), size, (v) => v / 127.5 - 1));
  assert.equal(new Set(refKeys).size, n, "reference images should be distinct");

  const r = mulberry32(1);
  const e1 = epoch(ds, 8, r), e2 = epoch(ds, 8, r);
  assert.deepEqual(e1.sizes, [8, 8, 8, 1]);
  for (const x of e1.xs) {
    assert.equal(x.length, px);
    assert.ok(x.every((v) => v >= -1 && v <= 1));
  }
  const keys1 = e1.xs.map((x) => rowSums(x, size)), keys2 = e2.xs.map((x) => rowSums(x, size));
  assert.deepEqual([...keys1].sort(), [...refKeys].sort(), "every image exactly once");
  assert.deepEqual([...keys2].sort(), [...refKeys].sort());
  assert.notDeepEqual(keys1, keys2, "a new order each epoch");
  keys1.forEach((k, i) => assert.equal(e1.labels[i], refKeys.indexOf(k) % 10, "label follows image"));

  // Same seeds -> identical batches.
  const again = await loadDataset("builtin:shapes", size, { seed: 7, count: n, log: quiet });
  const a = epoch(ds, 10, mulberry32(3)), b = epoch(again, 10, mulberry32(3));
  assert.deepEqual(a.xs, b.xs);
  assert.deepEqual(a.labels, b.labels);
  assert.throws(() => ds.batches(0, r).next(), RangeError);
});

Deno.test("saveGrid writes a PNG grid with gaps", async () => {
  await withTempDir(async (dir) => {
    const n = 5, size = 8, pixels = new Uint8Array(n * size * size * 3).map((_, i) => (i * 7) % 256);
    await saveGrid(join(dir, "sub", "grid.png"), pixels, n, size);
    const img = (await decode(await Deno.readFile(join(dir, "sub", "grid.png")))) as Image;
    assert.equal(img.width, 3 * (size + 2) + 2); // default: ceil(sqrt(5)) = 3 columns
    assert.equal(img.height, 2 * (size + 2) + 2);
    // Image 4 is in row 1, column 1; check its pixel (y=3, x=5).
    const [x, y] = [2 + 10 + 5, 2 + 10 + 3], s = ((4 * size + 3) * size + 5) * 3;
    assert.deepEqual([...img.bitmap.subarray((y * img.width + x) * 4, (y * img.width + x) * 4 + 3)], [
      ...pixels.subarray(s, s + 3),
    ]);
    await saveGrid(join(dir, "row.png"), pixels, n, size, 5);
    assert.equal(((await decode(await Deno.readFile(join(dir, "row.png")))) as Image).width, 5 * 10 + 2);
    await assert.rejects(saveGrid(join(dir, "bad.png"), pixels, 6, size), RangeError);
  });
});
