// Tests of the tutorial's transforms: torchvision's Resize and RandomResizedCrop.
import assert from "node:assert/strict";
import { mulberry32 } from "../kernels/backend.ts";
import { augment, centerBox, fit, randomCropBox, resample, resizeShortSide } from "../data/transforms.ts";

Deno.test("Resize: the short side becomes 1.25 × size (torchvision rounding)", () => {
  const short = Math.round(1.25 * 64);
  assert.equal(short, 80);
  assert.deepEqual(resizeShortSide(64, 64, short), [80, 80]);
  assert.deepEqual(resizeShortSide(200, 100, short), [160, 80]);
  assert.deepEqual(resizeShortSide(100, 300, short), [80, 240]);
  assert.deepEqual(resizeShortSide(7, 3, 20), [46, 20]); // int(20 * 7 / 3) = 46
});

Deno.test("RandomResizedCrop: boxes inside the image, area 80-100 %, aspect 3/4-4/3", () => {
  const rand = mulberry32(5);
  for (let t = 0; t < 500; t++) {
    const W = 40 + Math.floor(rand() * 80), H = 40 + Math.floor(rand() * 80);
    const b = randomCropBox(W, H, rand);
    assert.ok(b.x >= 0 && b.y >= 0 && b.x + b.w <= W && b.y + b.h <= H, JSON.stringify(b));
    const area = (b.w * b.h) / (W * H), aspect = b.w / b.h;
    if (W / H >= 0.75 && W / H <= 4 / 3) { // otherwise the fallback may apply
      assert.ok(area > 0.75 && area <= 1, `area ${area}`);
      assert.ok(aspect > 0.7 && aspect < 1.4, `aspect ${aspect}`);
    }
  }
  // Too wide for any random box: central crop with aspect ratio 4/3.
  assert.deepEqual(randomCropBox(100, 10, rand), { x: 43, y: 0, w: 13, h: 10 });
});

Deno.test("resample: identity, area average, bilinear, crop output size", () => {
  const img = { w: 4, h: 2, pix: new Uint8Array(24).map((_, i) => i * 10) };
  assert.deepEqual([...resample(img, { x: 0, y: 0, w: 4, h: 2 }, 4, 2)], [...img.pix]);
  // 2× smaller: each output pixel is the mean of a 2×2 block.
  const half = resample(img, { x: 0, y: 0, w: 4, h: 2 }, 2, 1);
  assert.deepEqual([...half], [75, 85, 95, 135, 145, 155]);
  // 2× larger in x: bilinear between neighbouring pixels.
  const line = { w: 2, h: 1, pix: new Uint8Array([0, 0, 0, 100, 100, 100]) };
  assert.deepEqual([...resample(line, { x: 0, y: 0, w: 2, h: 1 }, 4, 1)].filter((_, i) => i % 3 === 0), [
    0,
    25,
    75,
    100,
  ]);
  const crop = resample(img, { x: 0.5, y: 0.2, w: 3, h: 1.5 }, 7, 5);
  assert.equal(crop.length, 7 * 5 * 3);
});

Deno.test("without crop, each image is its centred square resized whole: the same at every epoch", () => {
  const rand = mulberry32(3), w = 28, h = 20, pix = Uint8Array.from({ length: w * h * 3 }, () => rand() * 255);
  const cached = fit({ w, h, pix }, 16), [a, b] = [new Float32Array(16 * 16 * 3), new Float32Array(16 * 16 * 3)];
  augment(cached, 16, mulberry32(1), a, 0, false);
  augment(cached, 16, mulberry32(2), b, 0, false);
  assert.deepEqual(a, b);
  const square = resample(cached.img, centerBox(cached.img.w, cached.img.h), 16, 16).map((v) => v / 127.5 - 1);
  assert.deepEqual(a, square);
  assert.deepEqual(centerBox(28, 20), { x: 4, y: 0, w: 20, h: 20 });
  augment(cached, 16, mulberry32(2), b, 0); // (random crops differ from it)
  assert.notDeepEqual(a, b);
});
