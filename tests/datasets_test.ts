// Tests of where the images come from: PNG/JPEG decoding and the built-in procedural sets.
import assert from "node:assert/strict";
import { Image } from "imagescript";
import { mulberry32 } from "../kernels/backend.ts";
import { decodeRGB } from "../data/datasets.ts";
import { type Batch, type Dataset, loadDataset } from "../utils.ts";
import { epoch, png, quiet, solidImage } from "./helpers.ts";

Deno.test("decodeRGB: RGB/RGBA/grayscale/16-bit/palette PNG and JPEG", async () => {
  const rgb = async (bytes: Uint8Array) => [...(await decodeRGB(bytes)).pix];
  assert.deepEqual(await rgb(png(2, 1, 8, 2, [[255, 0, 10, 1, 2, 3]])), [255, 0, 10, 1, 2, 3]);
  // Alpha is dropped, not composited: a transparent pixel keeps its colour.
  assert.deepEqual(await rgb(png(2, 1, 8, 6, [[10, 20, 30, 0, 40, 50, 60, 128]])), [10, 20, 30, 40, 50, 60]);
  assert.deepEqual(await rgb(png(2, 1, 8, 0, [[7, 200]])), [7, 7, 7, 200, 200, 200]);
  assert.deepEqual(await rgb(png(2, 1, 8, 4, [[7, 0, 200, 255]])), [7, 7, 7, 200, 200, 200]);
  assert.deepEqual(await rgb(png(2, 1, 16, 0, [[0x12, 0x34, 0xff, 0xff]])), [0x12, 0x12, 0x12, 255, 255, 255]);
  assert.deepEqual(await rgb(png(2, 1, 16, 2, [[255, 0, 0, 0, 128, 0, 1, 0, 2, 0, 3, 0]])), [255, 0, 128, 1, 2, 3]);
  assert.deepEqual(await rgb(png(3, 1, 4, 3, [[0x01, 0x20]], [255, 0, 0, 0, 0, 255, 0, 255, 0])), [
    ...[255, 0, 0],
    ...[0, 0, 255],
    ...[0, 255, 0],
  ]);
  const jpeg = await decodeRGB(await solidImage(8, 4, 0x3080c0ff, "jpeg"));
  assert.equal(jpeg.w, 8);
  assert.equal(jpeg.h, 4);
  for (let i = 0; i < jpeg.pix.length; i += 3) {
    [0x30, 0x80, 0xc0].forEach((c, k) => assert.ok(Math.abs(jpeg.pix[i + k] - c) <= 3));
  }
  await assert.rejects(decodeRGB(new TextEncoder().encode("not an image")));
});

Deno.test("decodeRGB of a JPEG at reduced scale: the short side stays ≥ the one asked for; the 8×8 block means", async () => {
  const img = new Image(400, 300); // gradients: red to the right, green downwards
  for (let y = 0; y < 300; y++) {
    for (let x = 0; x < 400; x++) img.bitmap.set([x * 255 / 400, y * 255 / 300, 100, 255], (y * 400 + x) * 4);
  }
  const jpeg = await img.encodeJPEG(95);
  const sizes = [];
  for (const short of [0, 38, 40, 150, 151, 300]) {
    const { w, h } = await decodeRGB(jpeg, short);
    sizes.push([w, h]);
  }
  assert.deepEqual(sizes, [[400, 300], [50, 38], [100, 75], [200, 150], [400, 300], [400, 300]]);
  const full = await decodeRGB(jpeg), eighth = await decodeRGB(jpeg, 38);
  for (let y = 0; y < 37; y++) { // (the last row of blocks is half outside the image)
    for (let x = 0; x < 50; x++) {
      for (let k = 0; k < 3; k++) {
        let mean = 0;
        for (let dy = 0; dy < 8; dy++) {
          for (let dx = 0; dx < 8; dx++) mean += full.pix[((y * 8 + dy) * 400 + x * 8 + dx) * 3 + k];
        }
        const got = eighth.pix[(y * 50 + x) * 3 + k];
        assert.ok(Math.abs(got - mean / 64) <= 4, `(${x}, ${y})[${k}]: ${got} vs ${mean / 64}`);
      }
    }
  }
});

Deno.test("builtin datasets: deterministic, sized, in range", async () => {
  for (const name of ["builtin:landscapes", "builtin:shapes"]) {
    const load = (seed: number) => loadDataset(name, 16, { seed, count: 20, log: quiet });
    const [a, b, c] = [await load(1), await load(1), await load(2)];
    assert.equal(a.name, name);
    const first = (ds: Dataset) => (ds.batches(20, mulberry32(0)).next().value as Batch).x;
    assert.deepEqual(first(a), first(b));
    assert.notDeepEqual(first(a), first(c));
    assert.equal(first(a).length, 20 * 16 * 16 * 3);
    assert.ok(first(a).every((v) => v >= -1 && v <= 1));
  }
  const big = await loadDataset("builtin:landscapes", 8, { log: quiet });
  assert.equal(big.length, 2000, "default count");
});

Deno.test("builtin:shapes: 10 balanced classes", async () => {
  const ds = await loadDataset("builtin:shapes", 16, { count: 50, log: quiet });
  assert.equal(ds.classes.length, 10);
  assert.equal(new Set(ds.classes).size, 10);
  const counts = new Array(10).fill(0);
  for (const l of epoch(ds, 16, mulberry32(0)).labels) counts[l]++;
  assert.deepEqual(counts, new Array(10).fill(5));
});

Deno.test("builtin:landscapes: sky on top differs from land below", async () => {
  const size = 32, ds = await loadDataset("builtin:landscapes", size, { count: 60, log: quiet });
  assert.deepEqual(ds.classes, ["landscape"]);
  const band = (x: Float32Array, y0: number, y1: number) =>
    [0, 1, 2].map((k) => {
      let s = 0;
      for (let i = y0 * size * 3 + k; i < y1 * size * 3; i += 3) s += x[i];
      return s / ((y1 - y0) * size);
    });
  let distance = 0, brighterSky = 0;
  const { xs } = epoch(ds, 60, mulberry32(0));
  for (const x of xs) {
    const top = band(x, 0, 6), bottom = band(x, size - 6, size);
    distance += Math.hypot(...top.map((t, k) => t - bottom[k])) / xs.length;
    if (top[0] + top[1] + top[2] > bottom[0] + bottom[1] + bottom[2]) brighterSky++;
  }
  assert.ok(distance > 0.3, `mean colour distance ${distance}`);
  assert.ok(brighterSky > 0.6 * xs.length, `sky brighter in ${brighterSky}/${xs.length}`);
});
