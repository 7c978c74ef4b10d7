// Tests of image folders: class sub-folders or flat, bad folders, the cache key, the cache file and its invalidation, decoding in workers, the warnings.
import assert from "node:assert/strict";
import { join } from "node:path";
import { Image } from "imagescript";
import { cacheFile, cacheKey, decodeFolder, type ImageFile, listImageFolder } from "../data/image_folder.ts";
import { mulberry32 } from "../kernels/backend.ts";
import { DataError } from "../data/datasets.ts";
import { type Batch, type Dataset, loadDataset } from "../utils.ts";
import { epoch, png, quiet, ROOT, solidImage, withTempDir } from "./helpers.ts";

/** A solid 40×30 image of colour [r, g, b] (PNG, or JPEG when the name says so). */
async function writeSolid(path: string, [r, g, b]: number[]) {
  const img = new Image(40, 30).fill(((r << 24) | (g << 16) | (b << 8) | 0xff) >>> 0);
  await Deno.writeFile(path, path.endsWith(".jpg") ? await img.encodeJPEG(95) : await img.encode());
}

/** The mean colour (0..255, rounded) of every image of one epoch, sorted: a signature of the decoded set. */
function colours(ds: Dataset) {
  const out: string[] = [], px = ds.size * ds.size;
  for (const b of ds.batches(ds.length, mulberry32(0))) {
    for (let i = 0; i < b.n; i++) {
      const mean = [0, 1, 2].map((k) => {
        let s = 0;
        for (let p = 0; p < px; p++) s += b.x[(i * px + p) * 3 + k];
        return Math.round((s / px + 1) * 127.5);
      });
      out.push(mean.join(","));
    }
  }
  return out.sort();
}

/** [from the cache, decoded] of the summary line of a folder load. */
function counts(lines: string[]) {
  const m = lines.map((l) => l.match(/: (\d+) from the cache.*, (\d+) decoded/)).find((x) => x);
  assert.ok(m, lines.join("\n"));
  return [Number(m[1]), Number(m[2])];
}

Deno.test("cache key: the file list, sizes and mtimes, and the image size; one cache file per folder and size", () => {
  const files: ImageFile[] = ["a/1.png", "a/2.jpg", "b/3.png"].map((f, i) => ({
    file: join("/data", f),
    label: f.startsWith("a") ? 0 : 1,
    bytes: 1000 + i,
    mtime: 1.7e12 + i,
  }));
  const key = cacheKey("/data", files, 64);
  assert.match(key, /^[0-9a-f]{64}$/);
  assert.equal(cacheKey("/data", files.map((f) => ({ ...f })), 64), key, "the same listing: the same key");
  const changed = (i: number, change: Partial<ImageFile>) => files.map((f, k) => k === i ? { ...f, ...change } : f);
  const others = [
    cacheKey("/data", files, 32), // another image size
    cacheKey("/data", changed(1, { mtime: files[1].mtime + 1 }), 64), // touched
    cacheKey("/data", changed(2, { bytes: 999 }), 64), // rewritten
    cacheKey("/data", changed(0, { file: "/data/a/1b.png" }), 64), // renamed
    cacheKey("/data", files.slice(1), 64), // deleted
    cacheKey("/data", [...files, { ...files[0], file: "/data/b/4.png" }], 64), // added
  ];
  assert.equal(new Set([key, ...others]).size, 7, "each change gives a new key");
  // Relative paths: the same files in a moved folder have the same key, but the cache file is the folder's own.
  const moved = files.map((f) => ({ ...f, file: f.file.replace("/data", "/moved") }));
  assert.equal(cacheKey("/moved", moved, 64), key);
  const names = [cacheFile("/c", "/data", 64), cacheFile("/c", "/data", 32), cacheFile("/c", "/moved", 64)];
  assert.equal(new Set(names).size, 3);
  for (const n of names) assert.ok(n.startsWith("/c/") && n.endsWith(".bin"), n);
});

Deno.test("cache: a second start reads it; touching one file re-decodes only that file; --no-cache writes none", async () => {
  await withTempDir(async (dir) => {
    const data = join(dir, "photos"), cache = join(dir, "cache");
    await Deno.mkdir(data);
    const palette = [[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40], [40, 200, 200]];
    for (const [i, c] of palette.entries()) await writeSolid(join(data, `${i}.${i % 2 ? "jpg" : "png"}`), c);
    const load = async (opts = {}) => {
      const lines: string[] = [];
      const ds = await loadDataset(data, 16, { cacheDir: cache, workers: 2, log: (l) => lines.push(l), ...opts });
      return { ds, lines, counts: counts(lines) };
    };
    const first = await load();
    assert.deepEqual(first.counts, [0, 5]);
    assert.equal([...Deno.readDirSync(cache)].length, 1, "one cache file");
    const expected = colours(first.ds);
    palette.forEach((c, i) => assert.ok(expected.some((e) => dist(e, c) <= 3), `image ${i}: ${expected}`));

    const second = await load();
    assert.deepEqual(second.counts, [5, 0]);
    assert.ok(!second.lines.some((l) => l.startsWith("decoding")), "no decoding on a cached start");
    assert.deepEqual(colours(second.ds), expected, "the same images from the cache");

    // Rewrite one file with another colour, and touch another without changing it: only these two are decoded.
    await writeSolid(join(data, "2.png"), [250, 250, 250]);
    await Deno.utime(join(data, "2.png"), new Date(), new Date(Date.now() + 9000));
    await Deno.utime(join(data, "3.jpg"), new Date(), new Date(Date.now() + 5000));
    const third = await load();
    assert.deepEqual(third.counts, [3, 2]);
    const now = colours(third.ds);
    assert.ok(now.some((e) => dist(e, [250, 250, 250]) <= 3) && !now.some((e) => dist(e, palette[2]) <= 3), `${now}`);
    assert.deepEqual((await load()).counts, [5, 0]);

    await Deno.remove(join(data, "0.png")); // a deleted file: nothing to decode, 4 images
    const fewer = await load();
    assert.deepEqual([fewer.counts, fewer.ds.length], [[4, 0], 4]);
    await writeSolid(join(data, "5.png"), [90, 90, 90]); // an added file: only it is decoded
    assert.deepEqual((await load()).counts, [4, 1]);
    assert.equal((await loadDataset(data, 8, { cacheDir: cache, log: () => {} })).size, 8);
    assert.equal([...Deno.readDirSync(cache)].length, 2, "a second image size: a second cache file");

    const off = join(dir, "off");
    assert.deepEqual((await load({ cacheDir: off, noCache: true })).counts, [0, 5]);
    assert.ok(!(await Deno.stat(off).then(() => true, () => false)), "--no-cache writes no cache");
  });
});

/** Largest channel difference between a colour signature "r,g,b" and a colour. */
const dist = (sig: string, c: number[]) => Math.max(...sig.split(",").map((v, k) => Math.abs(Number(v) - c[k])));

Deno.test("1 worker and 2 workers decode the same pixels; a damaged cache is rewritten, an unwritable one warned of", async () => {
  await withTempDir(async (dir) => {
    const data = join(dir, "d"), cache = join(dir, "cache");
    await Deno.mkdir(data);
    for (let i = 0; i < 6; i++) {
      await writeSolid(join(data, `${i}.${i % 2 ? "jpg" : "png"}`), [i * 40, 100, 255 - i * 40]);
    }
    const { files } = await listImageFolder(data, () => {});
    const noLog = { log: quiet };
    const one = await decodeFolder(data, files, 16, { cacheDir: null, workers: 1, ...noLog });
    const two = await decodeFolder(data, files, 16, { cacheDir: null, workers: 2, ...noLog });
    assert.deepEqual([one.decoded, two.decoded], [6, 6]);
    assert.deepEqual(two.images, one.images, "same images, in file order");

    await decodeFolder(data, files, 16, { cacheDir: cache, ...noLog });
    const file = cacheFile(cache, data, 16), bytes = await Deno.readFile(file);
    await Deno.writeFile(file, bytes.subarray(0, bytes.length - 100)); // truncated
    const lines: string[] = [];
    const again = await decodeFolder(data, files, 16, { cacheDir: cache, log: (l) => lines.push(l) });
    assert.ok(lines.some((l) => l.includes("ignoring the damaged cache") && l.includes(file)), lines.join("\n"));
    assert.equal(again.decoded, 6);
    assert.deepEqual(again.images, one.images);
    assert.deepEqual((await Deno.readFile(file)).length, bytes.length, "rewritten whole");
    assert.equal((await decodeFolder(data, files, 16, { cacheDir: cache, ...noLog })).fromCache, 6);

    const notAFolder = join(dir, "file"), warned: string[] = []; // a cache that cannot be written: a warning
    await Deno.writeTextFile(notAFolder, "");
    const unwritable = await decodeFolder(data, files, 16, { cacheDir: notAFolder, log: (l) => warned.push(l) });
    assert.ok(warned.some((l) => l.startsWith(`warning: could not write the cache ${notAFolder}`)), warned.join("\n"));
    assert.deepEqual(unwritable.images, one.images);
  });
});

Deno.test("warnings name dangling links, unreadable, undecodable and unsupported files; the summary counts why", async () => {
  await withTempDir(async (dir) => {
    const data = join(dir, "img"), cache = join(dir, "cache");
    await Deno.mkdir(data);
    for (let i = 0; i < 3; i++) await writeSolid(join(data, `ok${i}.png`), [10 + i, 20, 30]); // (a copy: left out)
    await Deno.writeTextFile(join(data, "broken.jpg"), "not a jpeg");
    await Deno.writeFile(join(data, "empty.png"), new Uint8Array());
    await Deno.writeFile(join(data, "anim.gif"), new Uint8Array([0x47, 0x49, 0x46]));
    await Deno.symlink(join(dir, "gone.png"), join(data, "gone.png")); // dangling
    await Deno.writeTextFile(join(data, "notes.txt"), "ignored silently");
    for (const start of ["first", "cached"]) {
      const lines: string[] = [];
      const ds = await loadDataset(data, 8, { cacheDir: cache, log: (l) => lines.push(l) });
      const warning = (file: string, why: string) =>
        assert.ok(lines.some((l) => l.startsWith(`warning: skipping ${join(data, file)}: ${why}`)), lines.join("\n"));
      warning("gone.png", `dangling symbolic link (to ${join(dir, "gone.png")})`);
      warning("broken.jpg", "not a valid PNG/JPEG");
      warning("empty.png", "not a valid PNG/JPEG");
      warning("anim.gif", "unsupported format");
      assert.ok(!lines.some((l) => l.includes("notes.txt")));
      const summary = lines.find((l) => l.startsWith("skipped "));
      assert.ok(summary, lines.join("\n"));
      for (const part of ["skipped 4 file(s)", "1 dangling symbolic link", "2 not a valid PNG/JPEG", "1 unsupported"]) {
        assert.ok(summary.includes(part), `${start}: ${summary}`);
      }
      assert.deepEqual([ds.length, ds.skipped], [3, 4]);
      assert.deepEqual(counts(lines), start === "first" ? [0, 5] : [5, 0], "undecodable files are cached too");
    }

    // A file that cannot be read when it is decoded: named, and not cached (it is read again next time).
    const { files } = await listImageFolder(data, () => {});
    await Deno.rename(join(data, "ok1.png"), join(dir, "ok1.png"));
    const lines: string[] = [];
    const fresh = join(dir, "fresh-cache");
    const r = await decodeFolder(data, files, 8, { cacheDir: fresh, log: (l) => lines.push(l) });
    assert.ok(lines.some((l) => l.startsWith(`warning: skipping ${join(data, "ok1.png")}: unreadable (`)));
    assert.deepEqual([r.images.length, r.skips.map((s) => s.why)], [2, [
      "not a valid PNG/JPEG",
      "not a valid PNG/JPEG",
      "unreadable",
    ]]);
    await Deno.rename(join(dir, "ok1.png"), join(data, "ok1.png"));
    assert.deepEqual((await decodeFolder(data, files, 8, { cacheDir: fresh, log: () => {} })).decoded, 1);
  });
});

Deno.test("warnings: a file or a class folder without read permission is named; the others load", async () => {
  await withTempDir(async (dir) => {
    for (const f of ["a/ok.png", "a/secret.png", "b/x.png", "c/y.jpg"]) {
      await Deno.mkdir(join(dir, f, ".."), { recursive: true });
      await writeSolid(join(dir, f), [50, 60, 70]);
    }
    // Root reads any file whatever its mode, so the permission is taken away by Deno's sandbox instead.
    const script = `import { loadDataset } from "./utils.ts";
      const ds = await loadDataset(${JSON.stringify(dir)}, 8, { noCache: true });
      console.log("loaded", ds.length, "skipped", ds.skipped);`;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `--deny-read=${join(dir, "a", "secret.png")},${join(dir, "b")}`, "-"],
      cwd: ROOT,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(script));
    await writer.close();
    const out = await child.output(), text = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.ok(text.includes(`warning: skipping ${join(dir, "a", "secret.png")}: unreadable (`), text);
    assert.ok(text.includes(`warning: skipping ${join(dir, "b")}: unreadable folder (`), text);
    assert.match(text, /skipped 2 file\(s\): 1 unreadable, 1 unreadable folder/);
    assert.match(text, /loaded 2 skipped 2/);
  });
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
    await Deno.mkdir(join(dir, ".elsewhere")); // (hidden: not listed)
    await Deno.writeFile(join(dir, ".elsewhere", "gray.png"), png(2, 2, 8, 0, [[100, 100], [100, 100]]));
    await Deno.symlink(join(dir, ".elsewhere", "gray.png"), join(dir, "dogs", "link.png")); // links are followed
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
      const grey = mean[0] < 0 ? 100 : 200; // (the link's, or the others')
      const expected = labels[i] === 1 ? [grey, grey, grey] : mean[0] > 0 ? [255, 0, 0] : [0, 255, 0];
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
    for (let i = 0; i < 5; i++) {
      img.bitmap[(19 * 30 + 29) * 4 + 2] = i; // (blue, unchecked: five files, not five copies of one)
      await Deno.writeFile(join(flat, `${i}.png`), await img.encode());
    }
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

Deno.test("the same image once: links to one file and copies of its bytes are left out, and counted", async () => {
  await withTempDir(async (dir) => {
    const data = join(dir, "wallpapers");
    await Deno.mkdir(data);
    await writeSolid(join(data, "a.png"), [200, 10, 10]);
    await writeSolid(join(data, "b.png"), [10, 200, 10]);
    await Deno.symlink(join(data, "a.png"), join(data, "a_link.png")); // as Debian's wallpaper packages do
    await Deno.symlink(join(data, "a.png"), join(data, "z_link.png"));
    await Deno.copyFile(join(data, "b.png"), join(data, "b_copy.png"));
    const lines: string[] = [];
    const { files } = await listImageFolder(data, (l) => lines.push(l));
    assert.deepEqual(files.map((f) => f.file.slice(data.length + 1)), ["a.png", "b.png"]);
    assert.ok(
      lines.includes("left out 3 duplicate(s): 2 path(s) to a file listed already, 1 copie(s) of one"),
      lines.join("\n"),
    );
    const ds = await loadDataset(data, 8, { noCache: true, log: quiet });
    assert.equal(ds.length, 2);
  });
});
