// torch/train_ddp.py, the tutorial's loop under PyTorch's DistributedDataParallel: a run trained here goes out by
// `deno task export`, trains on under torchrun (2 processes, gloo) and comes back to `deno task sample --weights`; and
// 2 processes with batch b each train as 1 process with batch 2b does. Needs Debian's python3-torch and
// python3-torchvision (tests/bring.sh brings them).
import assert from "node:assert/strict";
import { join } from "node:path";
import { Image } from "imagescript";
import { mulberry32 } from "../kernels/backend.ts";
import { loadWeights } from "../weights/checkpoint.ts";
import { readTorchFile } from "../weights/pytorch.ts";
import type { Tensors } from "../weights/weights.ts";
import { zip } from "../weights/torchsave.ts";
import { assertOneLine, ROOT, runScript, withTempDir } from "./helpers.ts";

const PYTHON = "/usr/bin/python3";
// Debian 12's torchrun (PyTorch 1.13 under Python 3.11) fails on its own defaults --redirects 0 --tee 0 (fixed in
// PyTorch 2.0); 1 (stdout) works. --monitor_interval 0.5: it notices sooner that the processes have ended.
const TORCHRUN = "/usr/bin/torchrun", TORCHRUN_FLAGS = ["--redirects", "1", "--tee", "1", "--monitor_interval", "0.5"];

/** Runs a command in the repository's root: its exit code and output. */
async function command(cmd: string, ...args: string[]) {
  const out = await new Deno.Command(cmd, { args, cwd: ROOT, stdin: "null" }).output().catch((e) => {
    throw new Error(`${cmd}: ${e.message} (the test needs Debian's python3-torch: bash tests/bring.sh)`);
  });
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout), stderr: new TextDecoder().decode(out.stderr) };
}

/** A folder of two classes, 8 PNGs each, of sizes from 16 to 31 px: noise over a colour of the class. */
async function imageFolder(dir: string) {
  const rand = mulberry32(7);
  for (const [c, base] of [["a", [200, 60, 60]], ["b", [40, 90, 220]]] as const) {
    await Deno.mkdir(join(dir, c), { recursive: true });
    for (let i = 0; i < 8; i++) {
      const img = new Image(16 + Math.floor(rand() * 16), 16 + Math.floor(rand() * 16));
      for (let p = 0; p < img.width * img.height; p++) {
        img.bitmap.set([...base.map((v) => v + (rand() - 0.5) * 100), 255], p * 4);
      }
      await Deno.writeFile(join(dir, c, `${i}.png`), await img.encode());
    }
  }
}

/** ‖a - b‖ over all weights, relative to ‖b - from‖: how far apart two trainings from `from` ended, per step taken. */
function relDiff(a: Tensors, b: Tensors, from: Tensors) {
  let diff = 0, moved = 0;
  for (const [k, w] of b) {
    const x = a.get(k)!.values, w0 = from.get(k)!.values;
    for (let i = 0; i < w.values.length; i++) {
      diff += (x[i] - w.values[i]) ** 2;
      moved += (w.values[i] - w0[i]) ** 2;
    }
  }
  return Math.sqrt(diff / moved);
}

Deno.test("a run trained here trains on under torchrun (2 processes, gloo) and comes back to sample", async () => {
  await withTempDir(async (dir) => {
    const data = join(dir, "data");
    await imageFolder(data);
    const train = await runScript(
      "train.ts",
      ...["--data", data, "--conditional", "--image-size", "16", "--width", "8", "--batch-size", "4"],
      ...["--max-steps", "2", "--backend", "wasm", "--out", dir, "--name", "tiny", "--no-cache", "--n-samples", "2"],
      ...["--sampler", "ddim", "--sample-steps", "2"],
    );
    assert.equal(train.code, 0, train.stderr);
    const init = join(dir, "init.pt");
    const exported = await runScript("commands/export.ts", "--run", join(dir, "tiny"), "--to", init);
    assert.equal(exported.code, 0, exported.stderr);

    // 3 steps, 4 images a step; labels dropped on 2 of them (--seed 0), the EMA averaging from its first step
    const flags = ["--data", data, "--conditional", "--init", init, "--image-size", "16", "--max-steps", "3"];
    flags.push("--workers", "0", "--backend", "gloo", "--label-drop", "0.5", "--ema-start", "1");
    const script = "torch/train_ddp.py", two = join(dir, "two"), one = join(dir, "one"), half = join(dir, "half");
    const launch = [...TORCHRUN_FLAGS, "--standalone", "--nproc_per_node=2", script];
    const ddp = await command(TORCHRUN, ...launch, ...flags, "--batch-size", "2", "--out", two);
    assert.equal(ddp.code, 0, ddp.stdout + ddp.stderr);
    assert.match(ddp.stdout, /2 processes, gloo on cpu: 16 images in 2 classes, 2 a process, 4 a step/);
    assert.match(ddp.stdout, /epoch 1\/\d+ step 3\/3 loss \d\.\d{4} \d+\.\d img\/s ETA 0s/);
    assert.match(ddp.stdout, /step 3: ckpt\.pt and ema_ckpt\.pt in .*two \(labels dropped on 2 of 3 steps\)/);
    const [single, control] = await Promise.all([
      command(PYTHON, script, ...flags, "--batch-size", "4", "--out", one), // the same 4 images a step: the same run
      command(PYTHON, script, ...flags, "--batch-size", "2", "--out", half), // 2 a step: another run
    ]);
    assert.equal(single.code, 0, single.stderr);
    assert.equal(control.code, 0, control.stderr);
    const from = readTorchFile(init);
    for (const file of ["ckpt.pt", "ema_ckpt.pt"]) {
      const [a, b, c] = [two, one, half].map((d) => readTorchFile(join(d, file)));
      assert.deepEqual([...a.keys()], [...from.keys()]);
      const same = relDiff(a, b, from), other = relDiff(c, b, from);
      console.log(`  ${file}: 2 × 2 vs 1 × 4 images ${same.toExponential(1)}, 1 × 2 vs 1 × 4 ${other.toFixed(2)}`);
      // not 0: AdamW divides each gradient by its own size, so where a gradient is ~0 (the attention's key bias has
      // none), float rounding becomes a step of up to lr: measured 6e-5 and 8e-5 of the distance moved
      assert.ok(same < 1e-3, `${file}: 2 processes × 2 images differ from 1 × 4 by ${same}`);
      assert.ok(other > 0.1, `${file}: a different batch should train differently (${other})`);
    }

    const png = join(dir, "s.png"), raw = join(dir, "s.raw");
    const sample = await runScript(
      "commands/sample.ts",
      ...["--weights", join(two, "ema_ckpt.pt"), "--image-size", "16", "--sampler", "ddim", "--sample-steps", "5"],
      ...["--seed", "1", "--backend", "wasm", "--to", png, "--raw", raw],
    );
    assert.equal(sample.code, 0, sample.stderr);
    assert.match(sample.stdout, /2 samples of 0, 1 in/); // UNet_conditional(num_classes=2): a row per class
    const x0 = loadWeights(raw).get("samples")!;
    assert.deepEqual(x0.shape, [2, 16, 16, 3]);
    assert.ok(x0.values.every((v) => Math.abs(v) <= 1), "samples in [-1, 1]");
    const grid = await Image.decode(await Deno.readFile(png));
    assert.deepEqual([grid.width, grid.height], [2 + 18, 2 + 2 * 18]); // a row per class, 2 px gaps
  });
});

Deno.test("torch/train_ddp.py: a bad --init is one line and exit code 2", async () => {
  await withTempDir(async (dir) => {
    const data = join(dir, "data");
    await imageFolder(data);
    const fixtures = join(ROOT, "tests", "fixtures");
    await Deno.writeTextFile(join(dir, "text.pt"), "not a checkpoint at all");
    const list = zip([["a/data.pkl", new Uint8Array([0x80, 2, 0x5d, 0x71, 0, 0x2e])], [
      "a/version",
      new TextEncoder().encode("3\n"),
    ]]); // torch.save([])
    await Deno.writeFile(join(dir, "list.pt"), list);
    const cases: [string[], RegExp][] = [
      [["--init", join(fixtures, "unet_w8.pt"), "--width", "16"], /unet_w8\.pt is a UNet of width 8, not --width 16/],
      [["--init", join(fixtures, "unet_w8_cond.pt"), "--conditional"], /num_classes=3\); the run has 2 classes/],
      [["--init", join(dir, "text.pt")], /text\.pt is not a PyTorch file/],
      [["--init", join(dir, "list.pt")], /list\.pt holds a list, not a state_dict/],
    ];
    const results = await Promise.all(
      cases.map(([args]) => command(PYTHON, "torch/train_ddp.py", "--data", data, "--workers", "0", ...args)),
    );
    results.forEach((r, i) => assertOneLine(r, 2, cases[i][1]));
  });
});
