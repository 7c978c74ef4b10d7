// The flags of every command: one table (run/cli.ts) for parsing, ranges, choices and --help.
import assert from "node:assert/strict";
import { join } from "node:path";
import { flagsMarkdown, parseConfig, readFlags, UsageError, VERSION } from "../run/cli.ts";
import { CROP_VIEWS, DEFAULTS, fitToData, gridSampler, PRESETS, stepsOf } from "../run/config.ts";
import { parseEvalArgs } from "../commands/eval.ts";
import { parseSampleArgs } from "../commands/sample.ts";
import { assertOneLine, ROOT, runScript, withTempDir } from "./helpers.ts";
import { train } from "../train.ts";
import { loadWeights } from "../weights/checkpoint.ts";
import { readTorchFile, torchFileMetadata } from "../weights/pytorch.ts";

const ACCEPTS = { // what each script's README and users rely on
  train:
    "preset data out name resume overwrite weights epochs max-steps batch-size image-size width lr warmup-steps lr-decay " +
    "max-grad-norm noise-steps schedule prediction min-snr-gamma " +
    "conditional label-drop ema-beta ema-start count holdout crop cache-dir no-cache sample-every n-samples cfg-scale " +
    "sampler sample-steps eta no-clip seed backend threads help version",
  sample:
    "run weights ema image-size n labels cfg-scale sampler sample-steps eta no-clip seed backend threads to raw " +
    "help version",
  eval: "run weights ema n seconds full sampler sample-steps eta no-clip seed backend threads help version",
};
const PARSE = { // each script's parser, on flags that are otherwise complete
  train: (args: string[]) => parseConfig(args),
  sample: (args: string[]) => parseSampleArgs(["--run", "r", ...args]),
  eval: (args: string[]) => parseEvalArgs(["--run", "r", ...args]),
};
const TASKS = { train: "demo", sample: "sample", eval: "eval" }; // deno.json's task of each script

/** `deno task NAME --help`: its exit code and output. */
async function taskHelp(task: string) {
  const out = await new Deno.Command(Deno.execPath(), { args: ["task", task, "--help"], cwd: ROOT, stdin: "null" })
    .output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout), stderr: new TextDecoder().decode(out.stderr) };
}

/** A UsageError with this message (a string: all of it). */
const usage = (message: string | RegExp) => (e: unknown) =>
  e instanceof UsageError && (typeof message === "string" ? e.message === message : message.test(e.message));

/** Whether parsing rejects a flag as unknown (a known flag alone may lack its value: another error). */
function isUnknown(parse: () => unknown) {
  try {
    parse();
    return false;
  } catch (e) {
    return usage(/^unknown flag/)(e);
  }
}

Deno.test("--help of train, sample and eval lists every flag each accepts, and only those", async () => {
  const everyFlag = new Set(Object.values(ACCEPTS).flatMap((s) => s.split(" ")));
  for (const script of ["train", "sample", "eval"] as const) {
    const help = await taskHelp(TASKS[script]);
    assert.equal(help.code, 0, help.stderr);
    const listed = [...help.stdout.matchAll(/^ {2}--([a-z-]+)/gm)].map((m) => m[1]);
    const accepts = ACCEPTS[script].split(" ");
    assert.deepEqual([...listed].sort(), [...accepts].sort(), `${script} --help`);
    for (const flag of everyFlag) {
      const old = script === "sample" && flag === "out"; // sample's old spelling of --to
      assert.equal(
        isUnknown(() => PARSE[script]([`--${flag}`])),
        !accepts.includes(flag) && !old,
        `${script} --${flag}`,
      );
    }
  }
});

Deno.test("--help shows the static defaults, and the run-dependent ones in words", async () => {
  const [train, sample, evalHelp] = await Promise.all(["demo", "sample", "eval"].map(taskHelp));
  const line = (text: string, flag: string) => text.split("\n").find((l) => l.startsWith(`  --${flag} `)) ?? "";
  assert.match(line(train.stdout, "noise-steps"), /\(default 1000\)/);
  assert.match(line(train.stdout, "lr"), /\(default 0\.002\)/); // the demo preset's
  assert.match(line(train.stdout, "backend"), /auto \| tensorflow \| webgpu \| wasm \| cpu \(default auto\)/);
  assert.match(line(sample.stdout, "sampler"), /ddpm \| ddim.*\(default: the run's; a file: ddpm, the tutorial's\)/);
  assert.match(line(sample.stdout, "sample-steps"), /\(default: the run's if it samples with DDIM, else 50; at most/);
  assert.match(line(evalHelp.stdout, "sampler"), /\(default ddim; --full: ddpm\)/);
  assert.match(line(evalHelp.stdout, "eta"), /the run's if it samples with DDIM/);
  assert.match(line(evalHelp.stdout, "seconds"), /\(default 90\)/);
});

Deno.test("a shared flag has the same range, choices and message in train, sample and eval", () => {
  for (
    const [args, message] of [
      [["--eta", "2"], "--eta 2: expected a number in [0, 1]"],
      [["--sampler", "x"], "--sampler x: use one of ddpm, ddim"],
      [["--sample-steps", "2.5"], "--sample-steps 2.5: expected an integer in [1, 100000]"],
      [["--seed=-1"], `--seed -1: expected an integer in [0, ${2 ** 31 - 1}]`],
      [["--backend", "tpu"], "--backend tpu: use one of auto, tensorflow, webgpu, wasm, cpu"],
    ] as [string[], string][]
  ) {
    for (const parse of Object.values(PARSE)) assert.throws(() => parse(args), usage(message), args.join(" "));
  }
  for (const parse of [PARSE.train, PARSE.sample]) {
    assert.throws(() => parse(["--cfg-scale", "101"]), usage("--cfg-scale 101: expected a number in [0, 100]"));
    assert.throws(() => parse(["--image-size", "4"]), usage("--image-size 4: expected an integer in [8, 4096]"));
  }
});

Deno.test("train flags: bad values are a usage error naming the flag; given settings and --resume", () => {
  for (
    const [args, re] of [
      [["--epochs", "abc"], /--epochs abc/],
      [["--image-size", "30"], /--image-size 30: must be divisible by 8/],
      [["--width", "30"], /--width 30: must be divisible by 4/],
      [["--lr=-1"], /--lr -1/],
      [["--schedule", "cos"], /^--schedule cos: use one of linear, cosine$/],
      [["--preset", "big"], /^--preset big: use one of landscape, cifar, demo, demo-cfg$/],
      [["--bogus"], /bogus/],
      [["--resume", "a", "--weights", "w.pt"], /--weights starts a new run/],
    ] as [string[], RegExp][]
  ) assert.throws(() => parseConfig(args), usage(re), String(re));
  const { config } = parseConfig(["--preset", "cifar", "--batch-size", "7"]);
  assert.equal(config.batchSize, 7);
  assert.equal(config.conditional, true);
  assert.equal(config.emaBeta, 0.995);
  const set = parseConfig(["--no-clip", "--out", "x", "--eta", "1", "--schedule", "cosine", "--no-cache"]);
  assert.deepEqual([set.config.clip, set.config.out, set.config.eta, set.config.schedule], [false, "x", 1, "cosine"]);
  assert.deepEqual(set.given.sort(), ["clip", "eta", "noCache", "schedule"]); // not the run's folder
  assert.equal(parseConfig([]).config.clip, DEFAULTS.clip);
  const resumed = parseConfig(["--resume", join("elsewhere", "demo"), "--epochs", "9"]);
  assert.deepEqual([resumed.resume, resumed.config.out, resumed.config.name], [true, "elsewhere", "demo"]);
  assert.deepEqual(resumed.given, ["epochs"]);
  assert.equal(parseConfig(["-h"]).help, true);
});

Deno.test("sample flags: a run or a file, typed values with the defaults", () => {
  for (
    const [args, re] of [
      [[], /give --run RUN/],
      [["--run", "r", "--weights", "w.pt"], /give --run RUN/],
      [["--weights", "w.pt", "--ema"], /^--ema: a PyTorch file/],
      [["--weights", "w.pt", "--image-size", "60"], /^--image-size 60: must be divisible by 8$/],
      [["--run", "r", "--n", "x"], /^--n x: expected an integer in \[1, 1024\]$/],
    ] as [string[], RegExp][]
  ) assert.throws(() => parseSampleArgs(args), usage(re), String(re));
  const o = parseSampleArgs(["--run", "demo", "--n", "4", "--sampler", "ddim", "--no-clip", "--seed", "7"]);
  assert.deepEqual(
    [o.run, o.n, o.sampler, o.sampleSteps, o.eta, o.clip, o.seed, o.backend, o.ema, o.help],
    [join("runs", "demo"), 4, "ddim", undefined, undefined, false, 7, "auto", false, false], // (undefined: the run's)
  );
  assert.equal(parseSampleArgs(["--run", "demo"]).seed, DEFAULTS.seed); // train's default, not the clock
  const file = parseSampleArgs(["--weights", "w.pt", "--image-size", "32", "--sample-steps", "20"]);
  assert.deepEqual([file.run, file.weights, file.imageSize, file.sampleSteps], [undefined, "w.pt", 32, 20]);
  assert.equal(parseSampleArgs(["--help"]).help, true); // --help needs no --run
});

Deno.test("sample --run draws as the run's grids do: its sampler, steps, η and clipping, unless a flag says otherwise", async () => {
  const out = await Deno.makeTempDir(), run = join(out, "run");
  const tiny = { imageSize: 8, width: 4, maxSteps: 1, count: 8, nSamples: 1, noiseSteps: 10, backend: "wasm" } as const;
  const grids = { sampler: "ddim", sampleSteps: 2, eta: 1, clip: false } as const;
  await train({ ...DEFAULTS, ...tiny, ...grids, data: "builtin:landscapes", out, name: "run" }, { log: () => {} });
  const draw = async (name: string, ...flags: string[]) => {
    const raw = join(out, `${name}.bin`), args = ["--run", run, "--n", "2", "--seed", "5", "--threads", "1"];
    const r = await runScript("commands/sample.ts", ...args, "--backend", "wasm", "--raw", raw, ...flags);
    assert.equal(r.code, 0, r.stderr);
    return loadWeights(raw).get("samples")!.values;
  };
  const byDefault = await draw("default");
  assert.deepEqual(
    byDefault,
    await draw("flags", "--sampler", "ddim", "--sample-steps", "2", "--eta", "1", "--no-clip"),
  );
  assert.notDeepEqual(byDefault, await draw("ddpm", "--sampler", "ddpm", "--no-clip"));
  await Deno.remove(out, { recursive: true });
});

Deno.test("eval flags: bad values are one-line usage errors; the CLI exits with 2", async () => {
  for (
    const args of [
      [],
      ["--run", "r", "--n", "0"],
      ["--run", "r", "--sampler", "plms"],
      ["--run", "r", "--eta", "2"],
      ["--run", "r", "--sample-steps", "2.5"],
      ["--run", "r", "--backend", "tpu"],
      ["--run", "r", "--seconds", "0"],
      ["--run", "r", "--bogus"],
    ]
  ) {
    assert.throws(() => parseEvalArgs(args), UsageError, args.join(" "));
  }
  const { opts } = parseEvalArgs(["--run", "shapes", "--sampler", "ddim", "--sample-steps", "25", "--ema"]);
  assert.deepEqual([opts.run, opts.sampler, opts.sampleSteps, opts.ema], [join("runs", "shapes"), "ddim", 25, true]);
  const full = parseEvalArgs(["--run", "shapes", "--full", "--seconds", "30"]).opts;
  assert.deepEqual([full.full, full.seconds, full.sampler, full.n], [true, 30, undefined, undefined]);
  assertOneLine(await runScript("commands/eval.ts", "--run", "x", "--n", "abc"), 2, "--n abc");
});

Deno.test("export, view, bench and bench:decode: --help from the same table; a bad flag is one line, exit 2", async () => {
  const accepts: Record<string, string> = {
    export: "run weights ema to help version",
    view: "run port help version",
    bench: "batch-size image-size width backend threads mode steps untimed-steps classes ema by-kernel gpu-time " +
      "count-only help version",
    "bench:decode": "files photo-width photo-height image-size dir help version",
  };
  const scripts: Record<string, string> = {
    export: "commands/export.ts",
    view: "commands/view.ts",
    bench: "commands/bench.ts",
    "bench:decode": "commands/bench_decode.ts",
  };
  for (const [task, flags] of Object.entries(accepts)) {
    const help = await taskHelp(task);
    assert.equal(help.code, 0, help.stderr);
    const listed = [...help.stdout.matchAll(/^ {2}--([a-z-]+)/gm)].map((m) => m[1]);
    assert.deepEqual(listed.sort(), flags.split(" ").sort(), `${task} --help`);
    assertOneLine(await runScript(scripts[task], "--bogus"), 2, "--bogus");
  }
  assertOneLine(await runScript("commands/bench.ts", "--mode", "x"), 2, "--mode x: use one of train, sample");
  assertOneLine(await runScript("commands/view.ts", "--port", "70000"), 2, "--port 70000");
  assertOneLine(await runScript("commands/bench_decode.ts", "--files", "0"), 2, "--files 0");
});

Deno.test("the tutorial's presets keep ε-prediction, plain MSE, a constant lr and no clipping", () => {
  for (const preset of ["landscape", "cifar"]) {
    const { config } = parseConfig(["--preset", preset]);
    assert.deepEqual(
      [config.prediction, config.minSnrGamma, config.lrDecay, config.warmupSteps, config.maxGradNorm],
      ["eps", 0, "constant", 0, 0],
    );
  }
});

Deno.test("one vocabulary: --version, the nearest flag, negative numbers, --lr > 0, old spellings with a note", async () => {
  for (const script of ["train.ts", "commands/sample.ts", "commands/bench_decode.ts"]) {
    const r = await runScript(script, "--version");
    assert.deepEqual([r.code, r.stdout.trim()], [
      0,
      JSON.parse(Deno.readTextFileSync(join(ROOT, "deno.json"))).version,
    ]);
  }
  assert.equal(VERSION, "0.1.0");
  for (
    const [args, message] of [
      [["--epoch", "3"], "unknown flag --epoch: did you mean --epochs? (see --help)"],
      [["--sample-step", "3"], "unknown flag --sample-step: did you mean --sample-steps? (see --help)"],
      [["--bogus"], "unknown flag --bogus (see --help)"],
      [["--lr", "-1e-3"], "--lr -1e-3: must be > 0"],
      [["--lr", "0"], "--lr 0: must be > 0"],
      [["--threads", "-1"], "--threads -1: expected an integer in [0, 1024]"],
      [["--seed", "-1"], `--seed -1: expected an integer in [0, ${2 ** 31 - 1}]`],
    ] as [string[], string][]
  ) assert.throws(() => parseConfig(args), usage(message), args.join(" "));
  assert.equal(parseConfig(["--lr", "1e-3"]).config.lr, 1e-3);
  const notes: string[] = [], error = console.error;
  console.error = (line: string) => notes.push(line);
  try {
    const bench = readFlags("bench", ["--batch", "3", "--warmup=0"]);
    assert.deepEqual([bench["batch-size"], bench["untimed-steps"]], [3, 0]);
    assert.equal(readFlags("sample", ["--out", "x.png"]).to, "x.png");
    assert.equal(readFlags("bench:decode", ["--size", "16"])["image-size"], 16);
  } finally {
    console.error = error;
  }
  assert.deepEqual(notes, [
    "note: --batch is now --batch-size (the old name is accepted until the next version)",
    "note: --warmup is now --untimed-steps (the old name is accepted until the next version)",
    "note: --out is now --to (the old name is accepted until the next version)",
    "note: --size is now --image-size (the old name is accepted until the next version)",
  ]);
  assert.ok(isUnknown(() => readFlags("train", ["--batch", "3"]))); // train never had it
});

Deno.test("train:cifar --help shows the cifar preset's defaults, not the landscape's", async () => {
  const help = await taskHelp("train:cifar");
  assert.equal(help.code, 0, help.stderr);
  const line = (flag: string) => help.stdout.split("\n").find((l) => l.startsWith(`  --${flag} `)) ?? "";
  const cifar = PRESETS.cifar;
  assert.match(line("batch-size"), new RegExp(`\\(default ${cifar.batchSize}\\)`));
  assert.match(line("epochs"), new RegExp(`\\(default ${cifar.epochs}\\)`));
  assert.match(line("ema-beta"), new RegExp(`\\(default ${cifar.emaBeta}\\)`));
  assert.match(line("data"), /\(default cifar10\)/);
});

Deno.test("docs/flags.md is the flag table of run/cli.ts, current", () => {
  const words = (md: string) => md.replace(/-{3,}/g, "---").replace(/\s+/g, " ").replace(/ ?\| ?/g, "|");
  const file = Deno.readTextFileSync(join(ROOT, "docs", "flags.md"));
  assert.equal(words(file), words(flagsMarkdown()), "run `deno run -A run/cli.ts && deno fmt docs/flags.md`");
  assert.ok(file.includes("args.batch_size") && file.includes("args.run_name") && file.includes("args.dataset_path"));
});

Deno.test("a short run's grids are DDIM unless --sampler says; the tutorial's runs keep DDPM", () => {
  const tiny = { ...DEFAULTS, imageSize: 8, batchSize: 12, nSamples: 16 };
  assert.equal(gridSampler(tiny, 20), "ddim"); // a DDPM grid: 16 images × 1000 steps; 20 steps: 720 passes
  assert.equal(gridSampler({ ...DEFAULTS, ...PRESETS.landscape }, 500 * Math.ceil(2000 / 12)), "ddpm");
  assert.equal(gridSampler({ ...DEFAULTS, ...PRESETS.cifar }, 300 * Math.ceil(50000 / 14)), "ddpm");
  assert.equal(gridSampler({ ...tiny, sampler: "ddim" }, 1e9), "ddim"); // never DDIM to DDPM
});

Deno.test("the CPU recipes' rule: their steps whatever the folder's size, random crops only of a small folder", () => {
  for (const preset of ["demo", "demo-cfg"]) {
    const recipe = { ...DEFAULTS, ...PRESETS[preset] };
    for (const images of [55, 898, 2000, 4000, 60000]) {
      assert.equal(stepsOf(fitToData(recipe, images), images), recipe.maxSteps, `${images}`);
    }
    const views = (images: number) => recipe.maxSteps * recipe.batchSize / images; // each image seen this often
    for (const images of [55, 400, 898, 2000, 4000, 60000]) {
      assert.equal(fitToData(recipe, images).crop, views(images) > CROP_VIEWS ? "random" : "center", `${images}`);
    }
    assert.equal(fitToData(recipe, 55).crop, "random"); // 55 photos: each seen > 1000 times
    assert.equal(fitToData(recipe, 4000).crop, "center"); // 4000 scans: 18 times
    assert.equal(fitToData({ ...recipe, crop: "random" }, 60000).crop, "random"); // --crop given: kept
    assert.equal(fitToData({ ...recipe, epochs: 3 }, 4000).epochs, 3); // --epochs given: kept
  }
  assert.throws(() => parseConfig(["--preset", "demo", "--max-steps", "0"]), /--epochs 0 .* needs --max-steps/);
  const tutorial = { ...DEFAULTS, ...PRESETS.cifar }; // the tutorial's runs: their epochs and random crops
  assert.deepEqual(fitToData(tutorial, 50000), tutorial);
});

Deno.test("a weights file says its image size; sample prints its seed and --seed repeats it", async () => {
  await withTempDir(async (out) => {
    const tiny = {
      imageSize: 16,
      width: 4,
      maxSteps: 1,
      count: 8,
      nSamples: 1,
      noiseSteps: 10,
      backend: "wasm",
    } as const;
    await train({ ...DEFAULTS, ...tiny, data: "builtin:landscapes", out, name: "run" }, { log: () => {} });
    const [st, pt] = [join(out, "w.safetensors"), join(out, "w.pt")];
    for (const file of [st, pt]) {
      const r = await runScript("commands/export.ts", "--run", join(out, "run"), "--to", file);
      assert.equal(r.code, 0, r.stderr);
    }
    assert.equal(torchFileMetadata(st).image_size, "16");
    assert.deepEqual(readTorchFile(st), readTorchFile(pt));
    const draw = async (name: string, ...flags: string[]) => {
      const raw = join(out, `${name}.bin`), args = ["--n", "1", "--threads", "1", "--backend", "wasm"];
      args.push("--sampler", "ddim", "--sample-steps", "2"); // (a .pt gets the tutorial's 1000 DDPM steps: minutes)
      const r = await runScript("commands/sample.ts", ...args, "--raw", raw, "--to", out, ...flags);
      assert.equal(r.code, 0, r.stderr);
      return { stdout: r.stdout, samples: loadWeights(raw).get("samples")! };
    };
    const fromSt = await draw("st", "--weights", st);
    assert.deepEqual(fromSt.samples.shape, [1, 16, 16, 3]); // the file's size, not the tutorial's 64
    assert.ok(!fromSt.stdout.includes("image size"), fromSt.stdout);
    const fromPt = await draw("pt", "--weights", pt);
    assert.deepEqual(fromPt.samples.shape, [1, 64, 64, 3]);
    assert.match(fromPt.stdout, /note: .*w\.pt does not say its image size: 64 px, the tutorial's \(--image-size N\)/);
    const first = await draw("first", "--run", join(out, "run"), "--seed", "12345");
    assert.match(first.stdout, /seed 12345 \(--seed 12345 draws them again\)/);
    assert.deepEqual((await draw("again", "--run", join(out, "run"), "--seed", "12345")).samples, first.samples);
    assert.match((await draw("default", "--run", join(out, "run"))).stdout, /seed 0 /);
  });
});
