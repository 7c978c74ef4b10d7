/**
 * Reliability: no leaks, nothing lost, every bad input named. The cases covered here:
 *
 *  memory      numTensors and bytes flat over 200 training steps plus sampling; 1000 sampling steps leak nothing
 *  crash       SIGKILL while a checkpoint is written (files half written, between the renames, at random):
 *              --resume always starts from a readable checkpoint
 *  resume      N steps straight = N/2 + --resume + N/2, bit for bit (cpu; wasm on 2 threads; same seed)
 *  signals     Ctrl-C, SIGTERM, SIGHUP: the current step finishes, a checkpoint is saved, exit 0
 *  overwrite   a second start of a run stops with one line; --overwrite clears it; killed and resumed, the loss log
 *              holds each step once; a failed start leaves no folder
 *  NaN         a non-finite loss stops the run naming the step; the last good checkpoint stays
 *  disk full   a failed checkpoint write (ENOSPC) stops with one line; the previous one stays
 *  damaged     a checkpoint file changed after it was written (NaNs in model.bin, a bit flip): its SHA-256 in
 *              state.json differs, and --resume, sample and export name the file
 *  PyTorch     --weights: a run starts from the file (its width), export gives the weights back bit for bit; a
 *              truncated or foreign file, a conditional file without --conditional, another --width, --weights with
 *              --resume, an export to an unknown extension: one line each
 *  bad input   one line naming the file or flag, no stack trace: missing folder, empty folder, no images,
 *              corrupt JPEG/PNG and zero-byte files (skipped with a warning, counted), an image smaller than
 *              the crop, a huge image, an unsupported format, a checkpoint from another width / image size /
 *              class count, a checkpoint folder missing files, an unknown flag, non-numeric and out-of-range
 *              values, an image size not divisible by 8, --labels outside the classes, an unwritable output
 *              folder, --resume of a run that does not exist
 */
import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { Image } from "imagescript";
import { setBackend, setSeed } from "../kernels/backend.ts";
import { loadWeights } from "../weights/checkpoint.ts";
import { readState } from "../run/trained.ts";
import { Diffusion } from "../diffusion.ts";
import { UNet } from "../modules.ts";
import { readTorchFile } from "../weights/pytorch.ts";
import { AdamW } from "../run/adamw.ts";
import { train, trainStep } from "../train.ts";
import { assertOneLine, quiet, runScript, tiny } from "./helpers.ts";

const tmp = () => Deno.makeTempDir({ prefix: "ddpm_rel_" });

Deno.test("memory: numTensors and bytes are flat over 200 steps and sampling; 1000 sampling steps leak nothing", async () => {
  await setBackend("wasm");
  setSeed(0);
  const model = new UNet({ width: 4 });
  const opt = new AdamW(model);
  const diffusion = new Diffusion({ imageSize: 8 });
  const x0 = tf.randomUniform([2, 8, 8, 3], -1, 1) as tf.Tensor4D;
  const counts: [number, number][] = [];
  for (let step = 1; step <= 200; step++) {
    trainStep(model, diffusion, opt, x0).dispose();
    if (step % 50 === 0) counts.push([tf.memory().numTensors, tf.memory().numBytes]);
  }
  assert.ok(counts.every(([n, b]) => n === counts[0][0] && b === counts[0][1]), JSON.stringify(counts));
  const pixels = await diffusion.sample(model, 2, { cfgScale: 0 }); // T = 1000 steps
  assert.equal(pixels.length, 2 * 8 * 8 * 3);
  assert.deepEqual([tf.memory().numTensors, tf.memory().numBytes], counts[0]);
  for (const d of [model, opt, diffusion, x0]) d.dispose();
});

for (const [backend, threads] of [["cpu", 1], ["wasm", 2]] as const) {
  Deno.test(`exact resume: N steps straight equal N/2 + resume + N/2, bit for bit (${backend}, ${threads} thread${threads > 1 ? "s: the workers' moments saved and given back" : ""})`, async () => {
    const dir = await tmp();
    const config = tiny(dir, {
      backend,
      threads,
      maxGradNorm: 0.5,
      data: "builtin:shapes",
      conditional: true,
      labelDrop: 0.4,
      emaBeta: 0.9,
      emaStart: 2,
      epochs: 3,
    }); // 6 steps, some of them without labels
    await train({ ...config, name: "straight" }, { log: quiet });
    await train({ ...config, name: "split", maxSteps: 3 }, { log: quiet }); // stops in the middle of epoch 2
    const lines: string[] = [];
    await train({ ...config, name: "split" }, { resume: true, given: ["maxSteps"], log: (l) => lines.push(l) });
    assert.ok(lines.some((l) => l.includes("resuming") && l.includes("step 3")));
    for (const f of ["model.bin", "ema.bin", "adam_m.bin", "adam_v.bin"]) {
      const [a, b] = ["straight", "split"].map((n) => Deno.readFileSync(join(dir, n, "checkpoint", f)));
      assert.ok(a.length === b.length && a.every((x, i) => x === b[i]), `${f} differs`); // (deepEqual: a diff of MBs)
    }
    assert.equal((await readState(join(dir, "split"))).step, 6);
    await Deno.remove(dir, { recursive: true });
  });
}

Deno.test("crash: SIGKILL during checkpoint writes never leaves a run that cannot resume", async () => {
  const dir = await tmp(), run = join(dir, "k");
  // one step per epoch, so a checkpoint is written after every step
  const args = ["--image-size", "8", "--width", "4", "--count", "4", "--batch-size", "4", "--epochs", "100000"];
  const start = (resume: boolean) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "train.ts", ...(resume ? ["--resume", run] : [...args, "--out", dir, "--name", "k"])]
        .concat(["--backend", "wasm", "--sample-every", "100000"]),
      stdout: "null",
      stderr: "null",
    }).spawn();
  const moments: [string, () => boolean][] = [
    ["model.bin half written", () => existsSync(join(run, "checkpoint.tmp", "model.bin"))],
    ["state.json being written", () => existsSync(join(run, "checkpoint.tmp", "state.json"))],
    ["between the renames", () => existsSync(join(run, "checkpoint.old"))],
    ["after the renames", () => existsSync(join(run, "checkpoint")) && !existsSync(join(run, "checkpoint.tmp"))],
  ];
  let lastStep = 0;
  for (const [i, [moment, when]] of moments.entries()) {
    const child = start(i > 0);
    const deadline = Date.now() + 60_000;
    // one whole checkpoint first (between the renames, it is checkpoint.old)
    const ready = () => ["checkpoint", "checkpoint.old"].some((d) => existsSync(join(run, d, "state.json")));
    let seen = false;
    while (!(seen = ready() && when()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 0));
    child.kill("SIGKILL"); // at once: the moment is short
    assert.ok(seen, `never saw: ${moment}`);
    await child.status;
    const state = await readState(run, ["state.json", "model.bin", "adam_m.bin", "adam_v.bin"]);
    for (const f of ["model.bin", "adam_m.bin", "adam_v.bin"]) assert.ok(loadWeights(join(state.dir!, f)).size > 0);
    assert.ok(state.step >= lastStep, `${moment}: step went back from ${lastStep} to ${state.step}`);
    lastStep = state.step;
  }
  const resumed = await runScript(
    "train.ts",
    "--resume",
    run,
    "--max-steps",
    String(lastStep + 1),
    "--backend",
    "wasm",
  );
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.match(resumed.stdout, new RegExp(`resuming .* at step ${lastStep}`));
  await Deno.remove(dir, { recursive: true });
});

for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  Deno.test(`${signal}: the step finishes, a checkpoint is saved, exit 0`, async () => {
    const dir = await tmp();
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "train.ts", "--image-size", "8", "--width", "4", "--count", "8", "--batch-size", "4"]
        .concat(["--epochs", "100000", "--sample-every", "100000", "--out", dir, "--name", "c", "--backend", "wasm"]),
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    while (!existsSync(join(dir, "c", "loss.jsonl")) || !Deno.readTextFileSync(join(dir, "c", "loss.jsonl"))) {
      await new Promise((r) => setTimeout(r, 50));
    }
    child.kill(signal);
    const out = await child.output();
    const stdout = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.match(stdout, new RegExp(`${signal === "SIGINT" ? "Ctrl-C" : signal}: stopping after this step`));
    const stopped = Number(stdout.match(/stopped at step (\d+)/)?.[1]);
    assert.ok(stopped >= 1, stdout);
    assert.equal((await readState(join(dir, "c"))).step, stopped);
    await Deno.remove(dir, { recursive: true });
  });
}

Deno.test("a run is never overwritten: a second start stops; --overwrite starts afresh; killed and resumed, no step twice", async () => {
  const dir = await tmp(), run = join(dir, "x");
  const args = ["--image-size", "8", "--width", "4", "--count", "4", "--batch-size", "4", "--backend", "wasm"]
    .concat(["--sample-every", "100000", "--n-samples", "1", "--noise-steps", "10", "--out", dir, "--name", "x"]);
  const first = await runScript("train.ts", ...args, "--max-steps", "3");
  assert.equal(first.code, 0, first.stderr);
  const grid = join(run, "samples", "epoch_0003.png"); // the last grid of the first run
  assert.ok(existsSync(grid));
  const before = Deno.readTextFileSync(join(run, "loss.jsonl"));
  assertOneLine(
    await runScript("train.ts", ...args, "--max-steps", "5"),
    2,
    `${run} exists: --resume ${run} to continue`,
  );
  assert.equal(Deno.readTextFileSync(join(run, "loss.jsonl")), before); // untouched
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "train.ts", ...args, "--epochs", "100000", "--overwrite"],
    stdout: "null",
    stderr: "null",
  }).spawn();
  const rows = () => (Deno.readTextFileSync(join(run, "loss.jsonl")).match(/\n/g) ?? []).length;
  while (!existsSync(join(run, "checkpoint", "state.json")) || rows() < 4) await new Promise((r) => setTimeout(r, 20));
  child.kill("SIGKILL"); // no checkpoint at the end: loss.jsonl holds steps the checkpoint has not
  await child.status;
  assert.ok(!existsSync(grid), "--overwrite cleared the first run's files");
  const resumed = await runScript("train.ts", "--resume", run, "--max-steps", "12", "--backend", "wasm");
  assert.equal(resumed.code, 0, resumed.stderr);
  const steps = Deno.readTextFileSync(join(run, "loss.jsonl")).trim().split("\n").map((l) => JSON.parse(l).step);
  assert.deepEqual(steps, Array.from({ length: 12 }, (_, i) => i + 1));
  assertOneLine(await runScript("train.ts", "--resume", run, "--overwrite"), 2, "--overwrite");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a failed start leaves no folder; --overwrite clears only a run folder", async () => {
  const dir = await tmp();
  const base = ["--image-size", "8", "--width", "4", "--backend", "wasm", "--out", dir];
  assertOneLine(await runScript("train.ts", ...base, "--name", "f", "--data", join(dir, "missing")), 1, "missing");
  assert.ok(!existsSync(join(dir, "f")));
  await Deno.mkdir(join(dir, "notes"));
  await Deno.writeTextFile(join(dir, "notes", "todo.txt"), "not a run");
  assertOneLine(await runScript("train.ts", ...base, "--name", "notes", "--overwrite"), 2, "not a run folder");
  assert.ok(existsSync(join(dir, "notes", "todo.txt")));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("NaN: a non-finite loss stops the run naming the step; the last good checkpoint stays", async () => {
  const dir = await tmp();
  // one step per epoch (a checkpoint each); lr 1e30 blows the weights up after the first step
  const config = tiny(dir, { count: 4, epochs: 100, lr: 1e30 });
  await assert.rejects(() => train(config, { log: quiet }), (e: Error) => {
    const step = Number(e.message.match(/at step (\d+)/)?.[1]);
    assert.ok(step >= 2, e.message);
    assert.match(e.message, /loss is (NaN|Infinity|-Infinity) at step/);
    return true;
  });
  const state = await readState(join(dir, "run"));
  const lossRows = Deno.readTextFileSync(join(dir, "run", "loss.jsonl")).trim().split("\n");
  assert.equal(state.step, lossRows.length); // the checkpoint is that of the last finite step
  await Deno.remove(dir, { recursive: true });
});

Deno.test("NaN with losses read back every 3 steps: the same step is named, no later loss is logged", async () => {
  const run = async (every: number) => {
    const dir = await tmp();
    try {
      const config = tiny(dir, { count: 16, epochs: 100, lr: 1e30 });
      const error = await train(config, { readEvery: every, log: quiet }).catch((e) => e);
      const rows = Deno.readTextFileSync(join(dir, "run", "loss.jsonl")).trim().split("\n").map((l) => JSON.parse(l));
      return { message: (error as Error).message, steps: rows.map((r) => r.step) };
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  };
  const [every1, every3] = [await run(1), await run(3)];
  assert.match(every1.message, /loss is (NaN|Infinity|-Infinity) at step \d+/);
  assert.equal(every3.message, every1.message);
  assert.deepEqual(every3.steps, every1.steps);
});

Deno.test("disk full: a failed checkpoint write stops with one message; the previous checkpoint stays", async () => {
  const dir = await tmp();
  const config = tiny(dir, { count: 4, epochs: 2 });
  await train({ ...config, epochs: 1 }, { log: quiet });
  const before = Deno.readFileSync(join(dir, "run", "checkpoint", "model.bin"));
  const open = Deno.open;
  // every write into the new checkpoint fails as on a full disk: Deno's error for ENOSPC
  const full = () => Promise.reject(new Error("No space left on device (os error 28)"));
  Object.assign(Deno, {
    open: async (path: string | URL, opts?: Deno.OpenOptions) => {
      const file = await open(path, opts);
      return String(path).includes("checkpoint.tmp") ? Object.assign(file, { write: full }) : file;
    },
  });
  try {
    await assert.rejects(
      () => train(config, { resume: true, given: ["epochs"], log: quiet }),
      /No space left|os error 28/,
    );
  } finally {
    Object.assign(Deno, { open });
  }
  assert.deepEqual(Deno.readFileSync(join(dir, "run", "checkpoint", "model.bin")), before);
  assert.ok(!existsSync(join(dir, "run", "checkpoint.tmp")));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("bad image files: corrupt, zero-byte, tiny, huge and unsupported ones", async () => {
  const dir = await tmp(), data = join(dir, "img");
  await Deno.mkdir(data);
  const noise = new Image(32, 32); // (a flat image survives truncation: its data fits in the first bytes)
  noise.bitmap.forEach((_, i) => noise.bitmap[i] = (i * 7919) % 251);
  const png = await noise.encode(), jpeg = await noise.encodeJPEG(90);
  for (let i = 0; i < 3; i++) { // three images (three copies of one would be one)
    noise.bitmap[0] = i;
    await Deno.writeFile(join(data, `ok${i}.png`), await noise.encode());
  }
  await Deno.writeFile(join(data, "truncated.jpg"), jpeg.subarray(0, jpeg.length >> 1));
  await Deno.writeFile(join(data, "truncated.png"), png.subarray(0, png.length >> 1));
  await Deno.writeFile(join(data, "empty.png"), new Uint8Array());
  await Deno.writeFile(join(data, "tiny.png"), await new Image(3, 2).fill(0xffffffff).encode()); // smaller than the crop
  await Deno.writeFile(join(data, "huge.png"), await new Image(4000, 3000).fill(0x102030ff).encode());
  await Deno.writeFile(join(data, "anim.gif"), new Uint8Array([0x47, 0x49, 0x46]));
  const lines: string[] = [];
  const config = tiny(dir, { data, count: 0, epochs: 1, cacheDir: join(dir, "cache") });
  const { step } = await train(config, { log: (l) => lines.push(l) });
  assert.equal(step, 2); // 5 readable images, batch 4
  for (const f of ["truncated.jpg", "truncated.png", "empty.png", "anim.gif"]) {
    assert.ok(lines.some((l) => l.includes(f) && !l.includes("\n")), `no warning names ${f}`);
  }
  assert.ok(lines.some((l) => l.includes("5 images (4 skipped)")), lines.join("\n")); // anim.gif too
  await Deno.remove(dir, { recursive: true });
});

Deno.test("bad input: folders, flags, checkpoints and outputs each get one line and an exit code", async () => {
  const dir = await tmp();
  const base = ["--image-size", "8", "--width", "4", "--count", "8", "--batch-size", "4", "--backend", "wasm"];
  // a conditional run to break things against
  await train(tiny(dir, { name: "shapes", data: "builtin:shapes", conditional: true, count: 20, epochs: 1 }), {
    log: quiet,
  });
  const shapes = join(dir, "shapes");
  await Deno.mkdir(join(dir, "empty"));
  await Deno.mkdir(join(dir, "notes"));
  await Deno.writeTextFile(join(dir, "notes", "readme.txt"), "no images here");
  await Deno.writeTextFile(join(dir, "file"), "a file, not a folder");
  const cases: [string[], number, string | RegExp][] = [
    [["--data", join(dir, "missing")], 1, join(dir, "missing")],
    [["--data", join(dir, "empty")], 1, join(dir, "empty")],
    [["--data", join(dir, "notes")], 1, join(dir, "notes")],
    [["--bogus"], 2, "--bogus"],
    [["--epochs", "many"], 2, "--epochs many"],
    [["--batch-size", "0"], 2, "--batch-size 0"],
    [["--image-size", "36"], 2, "--image-size 36"],
    [["--out", join(dir, "file", "runs")], 1, join(dir, "file")],
    [["--resume", join(dir, "nothing")], 1, join(dir, "nothing")],
    [["--resume", shapes, "--width", "8"], 2, "--width 8"], // another width
    [["--resume", shapes, "--image-size", "16"], 2, "--image-size 16"], // another image size
  ];
  for (const [args, code, what] of cases) assertOneLine(await runScript("train.ts", ...base, ...args), code, what);

  // sampling: labels outside the classes, and checkpoints of another width or class count
  assertOneLine(await runScript("commands/sample.ts", "--run", shapes, "--labels", "3,12"), 2, "--labels 12");
  assertOneLine(await runScript("commands/sample.ts", "--run", shapes, "--n", "x"), 2, "--n x");
  await train(tiny(dir, { name: "wide", width: 8, data: "builtin:shapes", conditional: true, epochs: 1 }), {
    log: quiet,
  });
  const two = join(dir, "two"); // a folder of 2 classes
  for (const c of ["a", "b"]) {
    await Deno.mkdir(join(two, c), { recursive: true });
    for (let i = 0; i < 2; i++) {
      await Deno.writeFile(join(two, c, `${i}.png`), await new Image(8, 8).fill(0xff).encode());
    }
  }
  const tworun = { name: "tworun", data: two, conditional: true, epochs: 1, count: 0, cacheDir: join(dir, "cache") };
  await train(tiny(dir, tworun), { log: quiet });
  const ckpt = join(shapes, "checkpoint", "model.bin"), state = join(shapes, "checkpoint", "state.json");
  // a file copied in is caught by its SHA-256 (see "damaged checkpoint"); without the digests (a checkpoint written
  // before them), by its names and shapes
  Deno.writeTextFileSync(state, JSON.stringify({ ...JSON.parse(Deno.readTextFileSync(state)), sha256: undefined }));
  Deno.copyFileSync(join(dir, "wide", "checkpoint", "model.bin"), ckpt); // another width
  assertOneLine(await runScript("commands/sample.ts", "--run", shapes), 1, /model\.bin: .* has shape/);
  Deno.copyFileSync(join(dir, "tworun", "checkpoint", "model.bin"), ckpt); // another class count
  assertOneLine(await runScript("commands/sample.ts", "--run", shapes), 1, /label_emb\.weight has shape \[2,256\]/);
  Deno.removeSync(join(shapes, "checkpoint", "model.bin"));
  assertOneLine(await runScript("commands/sample.ts", "--run", shapes), 1, /no complete checkpoint.*model\.bin/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("damaged checkpoint: a file changed after it was written is named on --resume, sample and export", async () => {
  const dir = await tmp(), run = join(dir, "run"), ckpt = join(run, "checkpoint");
  await train(tiny(dir, { count: 4, epochs: 1 }), { log: quiet });
  const pristine = Deno.readFileSync(join(ckpt, "model.bin"));
  const nan = pristine.slice(); // four float32 NaNs in the tail of model.bin
  nan.set(new Uint8Array(new Float32Array(4).fill(NaN).buffer), nan.length - 16);
  Deno.writeFileSync(join(ckpt, "model.bin"), nan);
  const changed = /model\.bin has changed since it was written \(its SHA-256 is not the one in state\.json\)/;
  assertOneLine(await runScript("train.ts", "--resume", run, "--epochs", "2", "--backend", "wasm"), 1, changed);
  assertOneLine(await runScript("commands/sample.ts", "--run", run, "--n", "1", "--backend", "wasm"), 1, changed);
  assertOneLine(await runScript("commands/export.ts", "--run", run, "--to", join(dir, "x.safetensors")), 1, changed);
  Deno.writeFileSync(join(ckpt, "model.bin"), pristine);
  const flipped = Deno.readFileSync(join(ckpt, "adam_v.bin")); // one finite bit flip
  flipped[flipped.length - 3] ^= 4;
  Deno.writeFileSync(join(ckpt, "adam_v.bin"), flipped);
  await assert.rejects(() => train(tiny(dir, { epochs: 2 }), { resume: true, log: quiet }), /adam_v\.bin has changed/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("PyTorch files: a run starts from one, is exported as one; a bad one gets one line", async () => {
  const dir = await tmp(), fixtures = new URL("./fixtures/", import.meta.url).pathname;
  const file = join(fixtures, "unet_w8.pt"), out = join(dir, "run.safetensors");
  // lr 0: the trained weights stay the file's, and the export gives them back bit for bit
  await train(tiny(dir, { weights: file, lr: 0, count: 4, epochs: 1 }), { log: quiet });
  assert.equal((await readState(join(dir, "run"))).config.width, 8); // the file's width, not tiny's 4
  const r = await runScript("commands/export.ts", "--run", join(dir, "run"), "--to", out);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(readTorchFile(out), readTorchFile(file));
  const base = ["--image-size", "8", "--count", "4", "--batch-size", "4", "--backend", "wasm", "--out", dir]
    .concat(["--name", "new"]); // (not the run above: a run is never overwritten)
  Deno.writeFileSync(join(dir, "half.pt"), Deno.readFileSync(file).subarray(0, 5000));
  const cases: [string, string[], number, string | RegExp][] = [
    ["commands/sample.ts", ["--weights", join(dir, "half.pt")], 1, /half\.pt is not a readable PyTorch file/],
    ["commands/sample.ts", ["--weights", join(fixtures, "old_names_w4.json")], 1, /neither a PyTorch/],
    ["commands/sample.ts", ["--weights", file, "--run", "x"], 2, "--weights FILE"],
    ["train.ts", [...base, "--weights", join(fixtures, "unet_w8_cond.pt")], 2, /conditional UNet: add --conditional/],
    ["train.ts", [...base, "--weights", file, "--width", "16"], 2, "--width 16"],
    ["train.ts", [...base, "--weights", file, "--resume", join(dir, "run")], 2, "--weights"],
    ["commands/export.ts", ["--weights", file, "--to", join(dir, "x.bin")], 2, "--to"],
  ];
  for (const [script, args, code, what] of cases) assertOneLine(await runScript(script, ...args), code, what);
  await Deno.remove(dir, { recursive: true });
});
