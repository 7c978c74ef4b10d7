// Tests of the data utilities: PRNG, batching, image folders, the tutorial's
// crop, CIFAR-10 files, the built-in datasets and PNG output.
import assert from "node:assert/strict";
import { join } from "node:path";
import { crc32, deflateSync, gunzipSync } from "node:zlib";
import { decode, Image } from "imagescript";
import { drawShape, extractCifar } from "../datasets.ts";
import {
  type Batch,
  CIFAR_CLASSES,
  DataError,
  type Dataset,
  decodeRGB,
  loadDataset,
  mulberry32,
  parseCifarBatch,
  randomCropBox,
  readTar,
  resample,
  resizeShortSide,
  saveGrid,
  savePlot,
} from "../utils.ts";

const quiet = () => {};

async function withTempDir(fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "ddpm_utils_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** All batches of one epoch, concatenated. */
function epoch(ds: Dataset, batchSize: number, rand: () => number) {
  const xs: Float32Array[] = [], labels: number[] = [], sizes: number[] = [];
  for (const b of ds.batches(batchSize, rand)) {
    const px = b.x.length / b.n;
    for (let i = 0; i < b.n; i++) xs.push(b.x.slice(i * px, (i + 1) * px));
    labels.push(...b.labels);
    sizes.push(b.n);
  }
  return { xs, labels, sizes };
}

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

/** A minimal PNG encoder, for the kinds imagescript cannot write. */
function png(w: number, h: number, depth: number, colorType: number, rows: number[][], plte?: number[]) {
  const chunk = (type: string, data: Uint8Array) => {
    const out = new Uint8Array(12 + data.length), view = new DataView(out.buffer);
    view.setUint32(0, data.length);
    out.set(new TextEncoder().encode(type), 4);
    out.set(data, 8);
    view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
    return out;
  };
  const ihdr = new Uint8Array(13), view = new DataView(ihdr.buffer);
  view.setUint32(0, w);
  view.setUint32(4, h);
  ihdr.set([depth, colorType], 8);
  const raw = new Uint8Array(rows.flatMap((r) => [0, ...r])); // filter 0 per row
  const parts = [
    new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]),
    chunk("IHDR", ihdr),
    ...(plte ? [chunk("PLTE", new Uint8Array(plte))] : []),
    chunk("IDAT", new Uint8Array(deflateSync(raw))),
    chunk("IEND", new Uint8Array()),
  ];
  return new Uint8Array(parts.flatMap((p) => [...p]));
}

async function solidImage(w: number, h: number, rgba: number, format: "png" | "jpeg") {
  const img = new Image(w, h).fill(rgba);
  return format === "png" ? await img.encode() : await img.encodeJPEG(95);
}

// ------------------------------------------------------------ PRNG, batches

Deno.test("mulberry32 is deterministic and uniform in [0, 1)", () => {
  const a = mulberry32(42), b = mulberry32(42), c = mulberry32(43);
  const xs = Array.from({ length: 1000 }, a), ys = Array.from({ length: 1000 }, b);
  assert.deepEqual(xs, ys);
  assert.notDeepEqual(xs.slice(0, 10), Array.from({ length: 10 }, c));
  assert.ok(xs.every((x) => x >= 0 && x < 1));
  const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
  assert.ok(Math.abs(mean - 0.5) < 0.05, `mean ${mean}`);
});

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

// ------------------------------------------------------------ image folders

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

Deno.test("image folder with class sub-folders: labels, decoding, skipping", async () => {
  await withTempDir(async (dir) => {
    const files: Record<string, Uint8Array> = {
      "cats/a.jpg": await solidImage(40, 30, 0xff0000ff, "jpeg"), // red, landscape format
      "cats/B.PNG": await solidImage(20, 50, 0x00ff0080, "png"), // green RGBA, portrait
      "cats/more/c.png": await solidImage(24, 24, 0x00ff00ff, "png"), // nested
      "dogs/gray.png": png(2, 2, 8, 0, [[200, 200], [200, 200]]),
      "dogs/gray16.png": png(2, 2, 16, 0, [[200, 0, 200, 0], [200, 0, 200, 0]]),
      "dogs/palette.png": png(2, 2, 8, 3, [[0, 0], [0, 0]], [200, 200, 200]),
      "dogs/broken.png": new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10, 1, 2, 3]),
      "dogs/notes.txt": new TextEncoder().encode("not an image"),
    };
    for (const [name, bytes] of Object.entries(files)) {
      await Deno.mkdir(join(dir, name, ".."), { recursive: true });
      await Deno.writeFile(join(dir, name), bytes);
    }
    await Deno.symlink(join(dir, "dogs", "gray.png"), join(dir, "dogs", "link.png")); // links are followed
    const lines: string[] = [];
    const ds = await loadDataset(dir, 16, { cacheDir: join(dir, ".cache"), log: (l) => lines.push(l) });
    assert.deepEqual(ds.classes, ["cats", "dogs"]);
    assert.equal(ds.length, 7);
    assert.equal(ds.skipped, 1);
    assert.equal(ds.size, 16);
    assert.ok(lines.some((l) => l.includes("broken.png")), "a warning names the broken file");
    assert.ok(!lines.some((l) => l.includes("notes.txt")), ".txt files are ignored silently");
    assert.ok(lines.some((l) => l.includes("decoding 8/8")), "progress is logged");

    const { xs, labels } = epoch(ds, 4, mulberry32(0));
    assert.deepEqual([...labels].sort(), [0, 0, 0, 1, 1, 1, 1]);
    xs.forEach((x, i) => {
      assert.equal(x.length, 16 * 16 * 3);
      // Solid images stay solid through resize and crop: check the mean colour.
      const mean = [0, 1, 2].map((k) => x.filter((_, j) => j % 3 === k).reduce((a, b) => a + b) / 256);
      const expected = labels[i] === 1 ? [200, 200, 200] : mean[0] > 0 ? [255, 0, 0] : [0, 255, 0];
      mean.forEach((m, k) => assert.ok(Math.abs((m + 1) * 127.5 - expected[k]) < 4, `${mean} vs ${expected}`));
    });
  });
});

Deno.test("flat image folder: one class named after the folder; upright crops; count", async () => {
  await withTempDir(async (dir) => {
    // Gradients: red grows to the right, green grows downwards.
    const img = new Image(30, 20);
    for (let y = 0; y < 20; y++) {
      for (let x = 0; x < 30; x++) img.bitmap.set([x * 8, y * 12, 0, 255], (y * 30 + x) * 4);
    }
    const flat = join(dir, "faces");
    await Deno.mkdir(flat);
    for (let i = 0; i < 5; i++) await Deno.writeFile(join(flat, `${i}.png`), await img.encode());
    const cacheDir = join(dir, "cache");
    const ds = await loadDataset(flat, 8, { cacheDir, log: quiet });
    assert.deepEqual(ds.classes, ["faces"]);
    assert.equal(ds.length, 5);
    const b = ds.batches(5, mulberry32(0)).next().value as Batch;
    assert.equal(b.x.length, 5 * 8 * 8 * 3);
    assert.deepEqual([...b.labels], [0, 0, 0, 0, 0]);
    for (let i = 0; i < 5; i++) {
      const at = (x: number, y: number, k: number) => b.x[i * 192 + (y * 8 + x) * 3 + k];
      assert.ok(at(7, 0, 0) - at(0, 0, 0) > 0.8, "red increases to the right");
      assert.ok(at(0, 7, 1) - at(0, 0, 1) > 0.8, "green increases downwards");
      assert.ok(Math.abs(at(0, 7, 0) - at(0, 0, 0)) < 0.01 && Math.abs(at(7, 0, 1) - at(0, 0, 1)) < 0.01);
    }
    assert.equal((await loadDataset(flat, 8, { count: 2, cacheDir, log: quiet })).length, 2);
  });
});

Deno.test("bad folders throw DataError naming the path", async () => {
  await withTempDir(async (dir) => {
    const rejects = (path: string, pattern: RegExp) =>
      assert.rejects(loadDataset(path, 16, { log: quiet }), (e: Error) => {
        assert.ok(e instanceof DataError);
        assert.ok(e.message.includes(path), e.message);
        assert.match(e.message, pattern);
        assert.ok(!e.message.includes("\n"));
        return true;
      });
    await rejects(join(dir, "missing"), /not found/);
    await Deno.mkdir(join(dir, "empty"));
    await rejects(join(dir, "empty"), /no .*images/);
    await Deno.mkdir(join(dir, "text"));
    await Deno.writeTextFile(join(dir, "text", "a.txt"), "hello");
    await rejects(join(dir, "text"), /no .*images/);
    await Deno.mkdir(join(dir, "broken"));
    await Deno.writeTextFile(join(dir, "broken", "a.jpg"), "not a jpeg");
    await rejects(join(dir, "broken"), /could be decoded/);
    await rejects("builtin:nothing", /unknown dataset/);
  });
});

// ---------------------------------------------------------- resize and crop

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

// ------------------------------------------------------------------ CIFAR-10

/** CIFAR-10 records: 1 label byte, then 1024 R, 1024 G, 1024 B (row-major 32×32). */
function cifarRecords(labels: number[]) {
  const bytes = new Uint8Array(labels.length * 3073);
  labels.forEach((label, r) => {
    bytes[r * 3073] = label;
    for (let p = 0; p < 1024; p++) {
      bytes[r * 3073 + 1 + p] = r * 10 + 1; // R: constant per record
      bytes[r * 3073 + 1025 + p] = p % 256; // G: position
      bytes[r * 3073 + 2049 + p] = p >> 2; // B: position / 4
    }
  });
  return bytes;
}

Deno.test("parseCifarBatch: labels and HWC pixels in R, G, B order", () => {
  const { images, labels } = parseCifarBatch(cifarRecords([3, 9, 0]));
  assert.deepEqual(labels, [3, 9, 0]);
  assert.equal(images.length, 3);
  const p = 5 * 32 + 7; // row 5, column 7
  assert.equal(images[1].length, 32 * 32 * 3);
  assert.deepEqual([...images[1].subarray(p * 3, p * 3 + 3)], [11, p % 256, p >> 2]);
  assert.deepEqual([...images[2].subarray(0, 6)], [21, 0, 0, 21, 1, 0]);
  assert.throws(() => parseCifarBatch(new Uint8Array(3000)), DataError);
});

Deno.test("loadDataset('cifar10') reads data_batch_1..5.bin from the cache", async () => {
  await withTempDir(async (dir) => {
    for (let k = 1; k <= 5; k++) await Deno.writeFile(join(dir, `data_batch_${k}.bin`), cifarRecords([k, 9 - k]));
    const opts = { cacheDir: dir, log: quiet, url: "http://127.0.0.1:9/none" };
    const ds = await loadDataset("cifar10", 16, opts);
    assert.equal(ds.length, 10);
    assert.deepEqual(ds.classes, CIFAR_CLASSES);
    const { xs, labels } = epoch(ds, 4, mulberry32(0));
    assert.deepEqual([...labels].sort(), [1, 2, 3, 4, 4, 5, 5, 6, 7, 8]);
    assert.ok(xs.every((x) => x.length === 16 * 16 * 3 && x.every((v) => v >= -1 && v <= 1)));
    assert.equal((await loadDataset("cifar10", 16, { ...opts, count: 3 })).length, 3);
    await Deno.writeFile(join(dir, "data_batch_3.bin"), new Uint8Array(100));
    await assert.rejects(loadDataset("cifar10", 16, opts), /data_batch_3\.bin/);
  });
});

Deno.test("cifar10 download: failure and bad checksum give DataError with help", async () => {
  await withTempDir(async (dir) => {
    const url = "http://127.0.0.1:1/cifar-10-binary.tar.gz"; // connection refused
    await assert.rejects(loadDataset("cifar10", 16, { cacheDir: dir, url, log: quiet }), (e: Error) => {
      assert.ok(e instanceof DataError);
      for (const s of [url, dir, "--data"]) assert.ok(e.message.includes(s), e.message);
      return true;
    });
    // A server with the wrong file: downloaded with progress, rejected by MD5.
    const noise = mulberry32(0), body = Uint8Array.from({ length: 300_000 }, () => noise() * 256);
    const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: quiet }, () => new Response(body));
    const lines: string[] = [];
    try {
      const url2 = `http://127.0.0.1:${server.addr.port}/cifar.tar.gz`;
      await assert.rejects(
        loadDataset("cifar10", 16, { cacheDir: dir, url: url2, log: (l) => lines.push(l) }),
        (e: Error) => e instanceof DataError && /MD5/.test(e.message) && e.message.includes(url2),
      );
    } finally {
      await server.shutdown();
    }
    assert.ok(lines.some((l) => l.includes(`[${"#".repeat(20)}] 0.3/0.3 MB`)), lines.join("\n"));
    assert.deepEqual([...Deno.readDirSync(dir)], [], "nothing is written");
    // A hand-placed archive with the wrong checksum is reported by path.
    await Deno.writeFile(join(dir, "cifar-10-binary.tar.gz"), body);
    await assert.rejects(
      loadDataset("cifar10", 16, { cacheDir: dir, url, log: quiet }),
      (e: Error) => /MD5/.test(e.message) && e.message.includes(join(dir, "cifar-10-binary.tar.gz")),
    );
  });
});

Deno.test({
  name: "readTar and extractCifar read a real tar.gz (made with tar)",
  ignore: !(await new Deno.Command("tar", { args: ["--version"] }).output().then((o) => o.success, () => false)),
  fn: () =>
    withTempDir(async (dir) => {
      // The layout of cifar-10-binary.tar.gz, with tiny batches.
      const src = join(dir, "cifar-10-batches-bin"), text = "x".repeat(700);
      await Deno.mkdir(src);
      for (let k = 1; k <= 5; k++) await Deno.writeFile(join(src, `data_batch_${k}.bin`), cifarRecords([k, k - 1]));
      await Deno.writeFile(join(src, "test_batch.bin"), cifarRecords([0]));
      await Deno.writeTextFile(join(src, "readme.html"), text);
      const tar = new Deno.Command("tar", { args: ["-czf", "a.tar.gz", "cifar-10-batches-bin"], cwd: dir });
      assert.ok((await tar.output()).success);
      const tgz = await Deno.readFile(join(dir, "a.tar.gz"));

      const files = Object.fromEntries(readTar(gunzipSync(tgz)).map((f) => [f.name, f.data]));
      assert.deepEqual(Object.keys(files).sort(), [
        ...[1, 2, 3, 4, 5].map((k) => `cifar-10-batches-bin/data_batch_${k}.bin`),
        "cifar-10-batches-bin/readme.html",
        "cifar-10-batches-bin/test_batch.bin",
      ]);
      assert.deepEqual(files["cifar-10-batches-bin/data_batch_2.bin"], cifarRecords([2, 1]));
      assert.equal(new TextDecoder().decode(files["cifar-10-batches-bin/readme.html"]), text);

      const cache = join(dir, "cache");
      await extractCifar(tgz, cache);
      assert.deepEqual([...Deno.readDirSync(cache)].map((e) => e.name).sort(), [
        ...[1, 2, 3, 4, 5].map((k) => `data_batch_${k}.bin`),
        "test_batch.bin",
      ]);
      const ds = await loadDataset("cifar10", 8, { cacheDir: cache, log: quiet });
      assert.equal(ds.length, 10);
    }),
});

// --------------------------------------------------------- built-in datasets

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

// ---------------------------------------------------------------- PNG output

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

Deno.test("savePlot writes a PNG; log scale for values over > 2 decades", async () => {
  await withTempDir(async (dir) => {
    // Exponential decay over 4 decades: a straight line on a log axis, so at
    // mid-x the curve is near mid-height (on a linear axis it would hug the bottom).
    const ys = Array.from({ length: 401 }, (_, i) => 10 ** (-i / 100));
    await savePlot(join(dir, "loss.png"), ys, { title: "loss", xlabel: "step" });
    const img = (await decode(await Deno.readFile(join(dir, "loss.png")))) as Image;
    assert.equal(img.width, 640);
    assert.equal(img.height, 400);
    const blue = (x: number) => {
      for (let y = 0; y < img.height; y++) {
        const [r, g, b] = img.bitmap.subarray((y * img.width + x) * 4);
        if (b > 150 && r < 60 && g < 110) return y;
      }
      return -1;
    };
    const mid = blue(Math.round(img.width / 2 + 28)), plotMid = (34 + 400 - 52) / 2;
    assert.ok(Math.abs(mid - plotMid) < 30, `curve at y=${mid}, plot middle ${plotMid}`);
    await savePlot(join(dir, "flat.png"), [1, NaN, 1], { xs: [0, 1, 2] }); // degenerate data
    await savePlot(join(dir, "empty.png"), []);
    assert.ok((await Deno.stat(join(dir, "empty.png"))).size > 100);
  });
});
