// --holdout: half of each class folder is never trained on (checked on the run's batches), and the run says which.
import assert from "node:assert/strict";
import { join } from "node:path";
import { Run } from "../run/run.ts";
import { loadRunData } from "../run/config.ts";
import { parseConfig } from "../run/cli.ts";
import { evaluate, judgeData } from "../commands/eval.ts";
import { train } from "../train.ts";
import { quiet, solidImage, tiny, withTempDir } from "./helpers.ts";

/** A folder of 2 classes × 7 flat 8×8 PNGs, each of its own grey level (10 apart): a file's level names it. */
async function greyFolder(dir: string) {
  const level = new Map<string, number>();
  for (const [c, cls] of ["a", "b"].entries()) {
    await Deno.mkdir(join(dir, cls), { recursive: true });
    for (let i = 0; i < 7; i++) {
      const v = 20 + 10 * (7 * c + i), file = join(cls, `${i}.png`);
      await Deno.writeFile(join(dir, file), await solidImage(8, 8, ((v * 0x10101) << 8 | 0xff) >>> 0, "png"));
      level.set(file, v);
    }
  }
  return level;
}

/** The grey levels (0…255) of a batch's images: each image is flat, so its first pixel says. */
const levels = (x: Float32Array, n: number) =>
  Array.from({ length: n }, (_, i) => Math.round((x[i * 8 * 8 * 3] + 1) * 127.5));

Deno.test("--holdout: the held-out half of each class never reaches a training batch; holdout.json names it", async () => {
  await withTempDir(async (dir) => {
    const data = join(dir, "data"), level = await greyFolder(data), cacheDir = join(dir, "cache");
    const config = tiny(join(dir, "runs"), { data, holdout: true, count: 0, epochs: 3, conditional: true, cacheDir });
    const run = await Run.start(config, { log: quiet });
    const seen = new Set<number>();
    try {
      for (run.epoch = 0; run.epoch < 3; run.epoch++) {
        for (const b of run.batches()) for (const v of levels(b.x, b.n)) seen.add(v);
      }
    } finally {
      run.close();
    }
    const saved = JSON.parse(await Deno.readTextFile(join(run.dir, "holdout.json")));
    assert.equal(saved.files.length, 6); // ⌊7/2⌋ of each class
    assert.deepEqual(saved.files.map((f: string) => f[0]).sort().join(""), "aaabbb");
    const held = new Set<number>(saved.files.map((f: string) => level.get(f)));
    const trained = [...level.values()].filter((v) => !held.has(v));
    assert.deepEqual([...seen].sort((p, q) => p - q), trained.sort((p, q) => p - q)); // every other image was trained on, and none held out
    // eval's judge loads exactly the held-out half
    const judged = await loadRunData(config, quiet, "held-out");
    const judgedLevels = [...judged.batches(16, Math.random)].flatMap((b) => levels(b.x, b.n));
    assert.deepEqual(judgedLevels.sort((p, q) => p - q), [...held].sort((p, q) => p - q));
    // each half keeps its own cache file: loading the trained half again decodes nothing
    const lines: string[] = [];
    await loadRunData(config, (l) => lines.push(l));
    assert.ok(lines.some((l) => l.includes(": 8 from the cache") && l.endsWith(", 0 decoded")), lines.join("\n"));
  });
});

Deno.test("--holdout is a train flag; on built-in data it is one clear error", async () => {
  assert.equal(parseConfig(["--holdout"]).config.holdout, true);
  assert.equal(parseConfig([]).config.holdout, undefined);
  await withTempDir(async (dir) => {
    const config = tiny(dir, { data: "builtin:shapes", holdout: true });
    await assert.rejects(() => loadRunData(config, quiet), /--holdout needs an image folder/);
  });
});

Deno.test("eval's independent judge: trained and scored on the held-out half only, its ceiling on images it did not train on", async () => {
  await withTempDir(async (dir) => {
    const data = join(dir, "data"), level = await greyFolder(data), cacheDir = join(dir, "cache");
    const config = tiny(join(dir, "runs"), { data, holdout: true, count: 0, maxSteps: 2, conditional: true, cacheDir });
    const { runDir } = await train(config, { log: quiet });
    const held = new Set<number>(
      JSON.parse(await Deno.readTextFile(join(runDir, "holdout.json"))).files
        .map((f: string) => level.get(f)),
    );
    const { train: judgeTrain, test: ceiling } = await judgeData(config, quiet);
    const [trainLevels, ceilingLevels] = [levels(judgeTrain.x, judgeTrain.n), levels(ceiling.x, ceiling.n)];
    assert.ok(ceilingLevels.length > 0 && ceilingLevels.every((v) => !trainLevels.includes(v))); // not trained on
    assert.deepEqual([...trainLevels, ...ceilingLevels].sort((p, q) => p - q), [...held].sort((p, q) => p - q));
    const lines: string[] = [];
    const report = await evaluate({ run: runDir, n: 2, sampler: "ddim", sampleSteps: 5, log: (l) => lines.push(l) });
    const judge = report.judge as { trainImages: number; heldOutImages: number; heldOutAccuracy: number };
    assert.deepEqual([judge.trainImages, judge.heldOutImages], [trainLevels.length, ceilingLevels.length]);
    assert.equal(report.reference.judgeAccuracy, judge.heldOutAccuracy);
    for (const r of report.results) assert.ok(r.judgeAccuracy!.total >= 0 && r.judgeAccuracy!.total <= 1);
    assert.ok(lines.some((l) => l.startsWith("judge: held-out accuracy")), lines.join("\n"));
    const html = await Deno.readTextFile(join(runDir, "index.html"));
    assert.ok(html.includes("<th>independent judge</th>"));
  });
});
