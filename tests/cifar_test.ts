// Tests of CIFAR-10's files: parsing, the cache, the download and its checksum, the tar.gz.
import assert from "node:assert/strict";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { mulberry32 } from "../kernels/backend.ts";
import { CIFAR_CLASSES, extractCifar, parseCifarBatch, readTar } from "../data/cifar.ts";
import { DataError } from "../data/datasets.ts";
import { loadDataset } from "../utils.ts";
import { epoch, quiet, withTempDir } from "./helpers.ts";

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
