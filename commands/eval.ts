// Quality scores of a trained run, offline, `deno task eval --run RUN [--n N] [--sampler ddpm] [--full] [--ema]`. A
// small classifier trained on the run's own data (classifier.ts) scores generated images: the share of conditional
// samples it puts in the requested class, and a Fréchet distance and k-NN precision/recall on its penultimate
// features, each beside its real-vs-real floor.
import * as tf from "@tensorflow/tfjs";
import { join } from "node:path";
import { type BackendName, mulberry32, setBackend, setSeed } from "../kernels/backend.ts";
import { assignWeights, saveWeights } from "../weights/checkpoint.ts";
import { loadFile, loadRun, readState, type RunState } from "../run/trained.ts";
import { type Config, DEFAULTS, gridSampling, loadRunData } from "../run/config.ts";
import {
  Classifier,
  classify,
  collect,
  featureStats,
  frechetDistance,
  type ImageSet,
  meanTerm,
  precisionRecall,
  slice,
  type Task,
  trainClassifier,
} from "./classifier.ts";
import { Diffusion, type NoiseModel, type Sampler, type Schedule } from "../diffusion.ts";
import { helpText, readFlags, runCli, runFolder, UsageError } from "../run/cli.ts";
import { duration, stepProgress } from "../run/progress.ts";
import { writeReport } from "../run/report.ts";
import { CheckpointError } from "../weights/weights.ts";
import { saveGrid, shuffle } from "../utils.ts";
import type { UNet } from "../modules.ts";
import { describeThreads, threadCount, Threads } from "../run/threads.ts";

export const METRIC = "Fréchet distance (classifier features)";
const METRIC_NOTE = `${METRIC}: ‖μ1-μ2‖² + Tr(Σ1 + Σ2 - 2(Σ1Σ2)^½) between the penultimate features of a small ` +
  "CNN trained on this run's data and those of the real images; lower is better. Not an FID (no Inception network): " +
  "comparable only between evaluations of runs on the same data.";
const MAX_REAL = 5000; // real images for the classifier and the reference statistics
const HELD_OUT = 0.1; // share of them kept out of the classifier's training
const SECONDS = 90; // default sampling time: the sample count is sized to it on this machine
const K = 3; // the k of k-NN precision and recall, as Kynkäänniemi et al.
const DRAWS = 20; // random pairs of disjoint real sets; each score is the median over them (one pair's FD is a lottery)
const FULL_N = { conditional: 20, unconditional: 200 }; // --full: the tutorial's DDPM with these sample counts
const JUDGE_TEST = 0.25; // share of the held-out half kept out of the judge's training: its ceiling's images
const JUDGE_NOTE = "half of each class folder never trained on, a classifier of another architecture and seed " +
  "trained on it";

type Log = (line: string) => void;
const NO_JUDGE = { none: "the independent judge needs a run trained with --holdout" };

/** A run's config; runs saved before the DDIM / cosine options lack those fields. */
type RunConfig =
  & Omit<Config, "schedule" | "sampler" | "sampleSteps" | "eta" | "clip">
  & Partial<{ schedule: Schedule; sampler: Sampler; sampleSteps: number; eta: number; clip: boolean }>;

export interface EvalOptions {
  run: string; // run folder
  n?: number; // samples per class (conditional) or in all (unconditional); default: sized to `seconds`
  seconds?: number; // sampling time the default n is sized to (default SECONDS)
  full?: boolean; // the tutorial's full DDPM: all T steps, FULL_N samples
  sampler?: Sampler; // default ddim (--full: ddpm)
  sampleSteps?: number;
  eta?: number;
  clip?: boolean; // clip x̂_0 to [-1, 1] while sampling (default: the run's)
  ema?: boolean;
  weights?: string; // score this PyTorch file's weights instead of the run's (on the run's data)
  seed?: number;
  threads?: number; // CPU threads on the wasm backend (0: every core)
  log?: (line: string) => void;
}

/** A trained classifier and what eval.json says of it: its training and held-out images, its held-out accuracy. */
type Trained = {
  clf: Classifier;
  info: { key: unknown; task: string; heldOutAccuracy: number; trainImages: number; heldOutImages: number };
};

/**
 * A classifier from dir when it was trained on the same data (key), else `clf` trained on `train`, scored on `test`
 * (real images it did not train on: its ceiling), and saved there.
 */
async function cachedClassifier(
  { dir, key, clf, train, test, task, seed, name, log }: {
    dir: string;
    key: Record<string, unknown>;
    clf: Classifier;
    train: ImageSet;
    test: ImageSet;
    task: Task;
    seed: number;
    name: string; // in the log: "classifier" or "judge"
    log: (line: string) => void;
  },
): Promise<Trained> {
  const cached = await Deno.readTextFile(join(dir, "classifier.json")).then(JSON.parse).catch(() => null);
  if (cached && JSON.stringify(cached.key) === JSON.stringify(key)) {
    assignWeights(join(dir, "weights.bin"), clf.weights);
    log(`${name}: ${dir} (held-out accuracy ${(100 * cached.heldOutAccuracy).toFixed(1)} %)`);
    return { clf, info: cached };
  }
  log(`training the ${name} (${task}) on ${train.n} real images`);
  const t0 = performance.now();
  await trainClassifier(clf, train, task, { seed, log });
  const { accuracy } = await classify(clf, test, task);
  const info = {
    key,
    task: task === "labels" ? "the data set's classes" : "rotation by 0/90/180/270° (one-class data)",
    heldOutAccuracy: accuracy,
    trainImages: train.n,
    heldOutImages: test.n,
    featureDim: clf.featureDim,
    seconds: Math.round((performance.now() - t0) / 100) / 10,
  };
  await Deno.mkdir(dir, { recursive: true });
  await saveWeights(join(dir, "weights.bin"), clf.weights);
  await Deno.writeTextFile(join(dir, "classifier.json"), JSON.stringify(info, null, 1));
  log(`${name}: held-out accuracy ${(100 * accuracy).toFixed(1)} % -> ${dir}`);
  return { clf, info };
}

/** The data's key of a run's classifiers: a cached one is used only for the same. */
const dataKey = (config: RunConfig) => ({
  data: config.data,
  imageSize: config.imageSize,
  count: config.count,
  seed: config.seed,
  ...(config.holdout ? { holdout: true } : {}),
});

/** The run's classifier, trained on its own data (all but HELD_OUT of it) and cached in RUN/classifier/. */
function runClassifier(runDir: string, config: RunConfig, task: Task, classes: number, real: ImageSet, log: Log) {
  const heldOut = Math.max(1, Math.round(real.n * HELD_OUT)), key = { ...dataKey(config), task, classes };
  const clf = new Classifier(config.imageSize, classes);
  const [train, test] = [slice(real, heldOut, real.n), slice(real, 0, heldOut)];
  return cachedClassifier({
    dir: join(runDir, "classifier"),
    key,
    clf,
    train,
    test,
    task,
    seed: config.seed,
    name: "classifier",
    log,
  });
}

/**
 * The independent judge's real images: the half of the folder the run held out (--holdout), in a shuffled pass; the
 * first JUDGE_TEST of them are its ceiling's, the others it trains on.
 */
export async function judgeData(config: RunConfig, log: Log) {
  const held = collect(await loadRunData({ ...config, count: 0 }, log, "held-out"), MAX_REAL, config.seed + 2);
  const m = Math.max(1, Math.round(held.n * JUDGE_TEST));
  return { train: slice(held, m, held.n), test: slice(held, 0, m) };
}

/**
 * The independent judge (a conditional run trained with --holdout): another architecture (two convs a stage, width
 * 24) and seed, trained only on images the run never saw; cached in RUN/judge/. Null (and a line) without --holdout.
 */
async function runJudge(runDir: string, config: RunConfig, classes: number, log: Log): Promise<Trained | null> {
  if (!config.holdout) {
    log(NO_JUDGE.none);
    return null;
  }
  const seed = config.seed + 1, { train, test } = await judgeData(config, log);
  setSeed(seed);
  const clf = new Classifier(config.imageSize, classes, 24, 2);
  const key = { ...dataKey(config), classes, judge: "width 24, depth 2" };
  return await cachedClassifier({
    dir: join(runDir, "judge"),
    key,
    clf,
    train,
    test,
    task: "labels",
    seed,
    name: "judge",
    log,
  });
}

type SampleSettings = {
  cfgScale: number;
  sampler: Sampler;
  sampleSteps: number;
  eta: number;
  clip: boolean;
  onStep?: () => void;
};

/** n images from the model, in chunks of at most 256; NHWC uint8. */
async function sampleChunks(
  diffusion: Diffusion,
  model: NoiseModel,
  n: number,
  labels: number[] | null,
  opts: SampleSettings,
) {
  const out = new Uint8Array(n * diffusion.imageSize ** 2 * 3);
  for (let s = 0; s < n; s += 256) {
    const m = Math.min(256, n - s);
    const px = await diffusion.sample(model, m, { ...opts, labels: labels?.slice(s, s + m) ?? null });
    out.set(px, s * diffusion.imageSize ** 2 * 3);
  }
  return out;
}

/** Seconds per image and sampling step at a cfg scale: two DDIM steps of a batch of 32, after a warm-up step. */
async function stepCost(diffusion: Diffusion, model: NoiseModel, labels: number[] | null, cfgScale: number) {
  const b = 32, y = labels ? Array.from({ length: b }, (_, i) => labels[i % labels.length]) : null;
  const opts = { labels: y, cfgScale, sampler: "ddim" as const, eta: 0 };
  await diffusion.sample(model, b, { ...opts, sampleSteps: 1 });
  const t0 = performance.now();
  await diffusion.sample(model, b, { ...opts, sampleSteps: 2 });
  return (performance.now() - t0) / 1000 / (2 * b);
}

const round = (x: number, digits = 4) => Number(x.toPrecision(digits));

/** A sample count from the affordable one: at least 8 (per class: 2), at most 1000 in all, 2 significant digits. */
const sizedN = (affordable: number, classes: number) =>
  Math.max(classes > 1 ? 2 : 8, Math.min(Math.floor(1000 / classes), Number(Math.floor(affordable).toPrecision(2))));

/** The share of samples classified as the class they were asked for: in all, and per class (n each, in order). */
function classAccuracy(predicted: Int32Array, labels: number[], classes: string[], n: number) {
  const share = (from: number, to: number) => {
    let hits = 0;
    for (let i = from; i < to; i++) hits += predicted[i] === labels[i] ? 1 : 0;
    return round(hits / (to - from));
  };
  return {
    total: share(0, labels.length),
    perClass: Object.fromEntries(classes.map((c, k) => [c, share(k * n, (k + 1) * n)])),
  };
}

interface Result {
  weights: string; // model, ema, or a file
  cfgScale: number | null; // null: an unconditional model
  n: number;
  seconds: number; // sampling time
  frechetDistance: number;
  meanTerm: number; // of it, ‖μ1-μ2‖²
  precision: number; // k-NN precision and recall (Kynkäänniemi et al. 2019), k = K
  recall: number;
  classAccuracy?: ReturnType<typeof classAccuracy>;
  judgeAccuracy?: ReturnType<typeof classAccuracy>; // the independent judge's (--holdout)
}

/** A PyTorch file's model, scored on a run's data and settings: its class count must be the run's. */
function fileOnRun(path: string, state: RunState) {
  const { model } = loadFile(path, state.config.imageSize), k = state.config.conditional ? state.classes.length : 0;
  if (model.numClasses !== k) {
    model.dispose();
    throw new CheckpointError(`${path} has ${model.numClasses} classes, the run ${k}`);
  }
  return { model, config: state.config, classes: state.classes };
}

/** A strided subset of m of a set's n feature vectors (all classes alike where the set is ordered by class). */
function strided(f: Float32Array, n: number, m: number, d: number) {
  return m >= n ? f : rows(f, Array.from({ length: m }, (_, i) => Math.floor(i * n / m)), d);
}

/** Fréchet distance (and its ‖μ1-μ2‖²) and k-NN precision/recall of m feature vectors against the m reference ones. */
function scores(features: Float32Array, reference: Float32Array, m: number, d: number) {
  const a = featureStats(features, m, d), b = featureStats(reference, m, d);
  return {
    frechetDistance: frechetDistance(a, b),
    meanTerm: meanTerm(a, b),
    ...precisionRecall(reference, m, features, m, d, K),
  };
}

type Scores = ReturnType<typeof scores>;

/** `draws` random pairs of disjoint sets of m of n real images: [the floor's set, the reference set], as indices. */
export function realPairs(n: number, m: number, draws: number, seed: number): [number[], number[]][] {
  const rand = mulberry32(seed);
  return Array.from({ length: draws }, () => {
    const order = shuffle(Array.from({ length: n }, (_, i) => i), rand);
    return [order.slice(0, m), order.slice(m, 2 * m)];
  });
}

/** The rows of f (d floats each) at the indices, in their order. */
function rows(f: Float32Array, indices: number[], d: number) {
  const out = new Float32Array(indices.length * d);
  indices.forEach((i, j) => out.set(f.subarray(i * d, (i + 1) * d), j * d));
  return out;
}

/** The median of each score over the draws (4 significant digits; precision and recall 3 decimals). */
export function medianScores(draws: Scores[]) {
  const median = (key: keyof Scores) => {
    const v = draws.map((s) => s[key]).sort((a, b) => a - b), h = v.length >> 1;
    return v.length % 2 ? v[h] : (v[h - 1] + v[h]) / 2;
  };
  return {
    frechetDistance: round(median("frechetDistance")),
    meanTerm: round(median("meanTerm")),
    precision: round(median("precision"), 3),
    recall: round(median("recall"), 3),
  };
}

/** The tutorial's last figure: a panel per setting, plain | EMA across, without | with CFG down; a row per class. */
async function save2x2(path: string, grids: Uint8Array[], k: number, n: number, size: number) {
  const c = Math.min(n, 8), cols = 2 * c + 1, rows = 2 * k + 1, px = size * size * 3;
  const tiles = new Uint8Array(rows * cols * px).fill(255); // the middle row and column stay white
  for (let r = 0; r < rows; r++) {
    for (let col = 0; col < cols; col++) {
      if (r === k || col === c) continue;
      const grid = grids[(col > c ? 2 : 0) + (r > k ? 1 : 0)], cls = r % (k + 1), j = col % (c + 1);
      tiles.set(grid.subarray((cls * n + j) * px, (cls * n + j + 1) * px), (r * cols + col) * px);
    }
  }
  await saveGrid(path, tiles, rows * cols, size, cols);
}

/** Scores a run; writes RUN/eval.json, the sample grids, and the run's index.html. Returns the report. */
export async function evaluate(o: EvalOptions) {
  const log = o.log ?? console.log, runDir = o.run, seed = o.seed ?? 0;
  const started = performance.now();
  const state = await readState(runDir);
  // A conditional run with an EMA model: the tutorial's 2×2 (plain and EMA model, without and with CFG).
  const both = !o.weights && !o.ema && state.config.conditional && state.config.emaBeta > 0;
  const which = both ? [false, true] : [o.ema ?? false];
  const loaded = [];
  for (const ema of which) loaded.push(o.weights ? fileOnRun(o.weights, state) : await loadRun(runDir, ema));
  const { config: c, classes } = loaded[0], models = loaded.map((l) => l.model);
  const config = c as RunConfig, size = config.imageSize, model = models[0];
  const sampler = o.sampler ?? (o.full ? "ddpm" : "ddim"), grid = gridSampling(config); // as the run's grids
  const sampleSteps = o.sampleSteps ?? grid.sampleSteps, eta = o.eta ?? grid.eta, clip = o.clip ?? grid.clip;
  const schedule = config.schedule ?? "linear";
  const conditional = model.numClasses > 0, task: Task = conditional ? "labels" : "rotation";
  const data = await loadRunData(config, log);
  setSeed(config.seed); // the classifier: the run's, whatever --seed draws the samples (its cache key says so)
  const real = collect(data, MAX_REAL, config.seed);
  const outputs = conditional ? classes.length : 4;
  const { clf, info } = await runClassifier(runDir, config, task, outputs, real, log);
  const judge = conditional ? await runJudge(runDir, config, outputs, log) : null;
  const d = clf.featureDim;
  const realFeatures = (await classify(clf, real, task)).features;

  const diffusion = new Diffusion(config);
  const threadsUsed = threadCount(tf.getBackend(), o.threads ?? DEFAULTS.threads);
  const threads = threadsUsed > 1 ? await Threads.start(threadsUsed, model) : null; // the samples' rows shared
  const on = (net: UNet): NoiseModel => threads?.noiseModel(net) ?? net;
  const scales = conditional ? [...new Set([0, config.cfgScale])] : [0], k = conditional ? classes.length : 1;
  const stepCount = diffusion.stepCount(sampler, sampleSteps), results: Result[] = [];
  const everyClass = conditional ? Array.from({ length: k }, (_, i) => i) : null;
  const costs: number[] = []; // seconds per image and step, per cfg scale
  for (const cfgScale of scales) costs.push(await stepCost(diffusion, on(model), everyClass, cfgScale));
  const perImage = stepCount * costs.reduce((a, b) => a + b, 0) * k * models.length; // seconds per n (all settings)
  const budget = o.seconds ?? SECONDS;
  const n = o.n ?? (o.full ? FULL_N[conditional ? "conditional" : "unconditional"] : sizedN(budget / perImage, k));
  const chosenBy = o.n ? "--n" : o.full ? "--full" : `sized to ${budget} s of sampling on this machine`;
  const labels = conditional ? Array.from({ length: n * k }, (_, i) => Math.floor(i / n)) : null;
  const count = labels?.length ?? n;
  // Real vs real: pairs of disjoint sets of m real images, m the sample count (or half the real images if fewer); the
  // samples are scored against the second set of each pair. Every score is the median over the pairs.
  const m = Math.min(count, Math.floor(real.n / 2));
  if (m <= K) throw new UsageError(`${real.n} real images and ${count} samples: k-NN scores need more than ${K} each`);
  const pairs = realPairs(real.n, m, DRAWS, config.seed + 1); // (+ 1: not the stream collect shuffled with)
  const references = pairs.map(([, r]) => rows(realFeatures, r, d));
  const floorDraws = pairs.map(([f], i) => scores(rows(realFeatures, f, d), references[i], m, d));
  const floor = medianScores(floorDraws);
  const floorFds = floorDraws.map((s) => round(s.frechetDistance));
  const floorRange = [Math.min(...floorFds), Math.max(...floorFds)];
  const steps = (sampler === "ddim" ? `${stepCount} DDIM steps (η ${eta})` : `${config.noiseSteps} DDPM steps`) +
    (clip ? "" : ", x̂_0 not clipped");
  log(
    `sampling ${models.length * scales.length} × ${count} images${conditional ? ` (${n} per class)` : ""}, ${steps}: ` +
      `about ${duration(n * perImage)} (n ${chosenBy}${
        sampler === "ddim" ? "; the tutorial's full DDPM: --full" : ""
      })`,
  );
  log(
    `real vs real (2 × ${m} images, the median of ${DRAWS} draws; FD from ${floorRange[0]} to ${floorRange[1]}): ${
      describe(floor)
    }${conditional ? `; class accuracy ${pct(info.heldOutAccuracy)} (held out)` : ""}${
      judge ? `; the judge's ${pct(judge.info.heldOutAccuracy)} (held out)` : ""
    }`,
  );
  const progress = stepProgress(models.length * scales.length * Math.ceil(count / 256) * stepCount, "sampling", log);
  const grids: Uint8Array[] = [];
  try {
    for (const [w, net] of models.entries()) {
      const weights = o.weights ?? (which[w] ? "ema" : "model");
      for (const cfgScale of scales) {
        setSeed(seed); // the same x_T for every setting
        const t0 = performance.now();
        const opts = { cfgScale, sampler, sampleSteps, eta, clip, onStep: progress.step };
        const pixels = await sampleChunks(diffusion, on(net), count, labels, opts);
        progress.done();
        grids.push(pixels);
        const seconds = round((performance.now() - t0) / 1000, 3);
        const gen: ImageSet = {
          x: Float32Array.from(pixels, (v) => v / 127.5 - 1),
          y: Int32Array.from(labels ?? []),
          n: count,
          size,
        };
        const scored = await classify(clf, gen, task), features = strided(scored.features, count, m, d);
        const result: Result = {
          weights,
          cfgScale: conditional ? cfgScale : null,
          n: count,
          seconds,
          ...medianScores(references.map((r) => scores(features, r, m, d))),
        };
        const name = `eval_${sampler === "ddim" ? `ddim${stepCount}` : "ddpm"}${which[w] ? "_ema" : ""}${
          conditional ? `_cfg${cfgScale}` : ""
        }.png`;
        await saveGrid(join(runDir, "samples", name), pixels, count, size, conditional ? n : undefined);
        let line = describe(result);
        if (labels) {
          result.classAccuracy = classAccuracy(scored.predicted, labels, classes, n);
          line = `class accuracy ${pct(result.classAccuracy.total)} | ${line}`;
        }
        if (labels && judge) {
          result.judgeAccuracy = classAccuracy((await classify(judge.clf, gen, task)).predicted, labels, classes, n);
          line = `the judge's ${pct(result.judgeAccuracy.total)} | ${line}`;
        }
        const setting = `${models.length > 1 ? `${weights}, ` : ""}${conditional ? `cfg scale ${cfgScale}: ` : ""}`;
        log(`${setting}${line} | ${seconds} s -> samples/${name}`);
        results.push(result);
      }
    }
    if (models.length === 2 && scales.length === 2) {
      await save2x2(join(runDir, "samples", "eval_2x2.png"), grids, k, n, size);
      log(`the 2×2 figure (plain | EMA across, without | with CFG down) -> samples/eval_2x2.png`);
    }
  } finally {
    threads?.close();
    for (const m of [...models, clf, diffusion]) m.dispose();
    judge?.clf.dispose();
  }
  const report = {
    metric: METRIC_NOTE,
    run: runDir,
    step: state.step,
    weights: o.weights ?? (both ? "model and ema" : o.ema ? "ema" : "model"),
    sampler,
    ...(sampler === "ddim" ? { sampleSteps: stepCount, eta } : {}),
    clip,
    n: { value: n, per: conditional ? "class" : "all", chosenBy, estimatedSeconds: Math.round(n * perImage) },
    noiseSteps: config.noiseSteps,
    schedule,
    seed,
    backend: tf.getBackend(),
    classifier: { ...info, key: undefined },
    ...(conditional ? { judge: judge ? { ...judge.info, key: undefined, what: JUDGE_NOTE } : NO_JUDGE } : {}),
    reference: {
      what: `${DRAWS} random pairs of disjoint sets of ${m} real images; each score the median over the pairs (the ` +
        `samples' against the second set of each pair)`,
      n: m,
      k: K,
      draws: DRAWS,
      ...floor,
      frechetDistanceRange: floorRange,
      ...(conditional ? { classAccuracy: info.heldOutAccuracy } : {}),
      ...(judge ? { judgeAccuracy: judge.info.heldOutAccuracy } : {}),
    },
    results,
  };
  await Deno.writeTextFile(join(runDir, "eval.json"), JSON.stringify(report, null, 1));
  await writeReport(runDir);
  const took = duration((performance.now() - started) / 1000);
  log(`-> ${join(runDir, "eval.json")}, ${join(runDir, "index.html")} (${took})`);
  return report;
}

const pct = (x: number) => `${(100 * x).toFixed(1)} %`;
const describe = (r: { frechetDistance: number; meanTerm: number; precision: number; recall: number }) =>
  `${METRIC} ${r.frechetDistance} (‖μ1-μ2‖² ${r.meanTerm}) | precision ${r.precision} | recall ${r.recall}`;

const HELP = helpText(
  "eval",
  `Score a trained run with a classifier trained on its own data (offline, no Inception network).

  deno task eval --run RUN [--n N] [--seconds ${SECONDS}] [--sampler ddpm|ddim] [--full] [--ema] [--seed 0]`,
  {
    weights: "scored instead of the run's, on its data and settings",
    n: "default: sized to --seconds",
    seconds: `default ${SECONDS}`,
    full: `${FULL_N.conditional} per class / ${FULL_N.unconditional} samples`,
    sampler: "default ddim; --full: ddpm",
    "sample-steps": "default: the run's if it samples with DDIM, else 50",
    eta: "default: the run's if it samples with DDIM, else 0",
    "no-clip": "default: as the run's samples",
  },
  `Prints the sample count and an estimate of the time before sampling, then a progress line.
Writes RUN/eval.json (the settings; the ${METRIC} and k-NN precision and recall, k = ${K}, beside
their real-vs-real floor from two disjoint sets of real images of the sample count, each the median over ${DRAWS}
random draws of the real sets; class accuracy at cfg scale 0 and the run's), RUN/samples/eval_*.png, and
RUN/index.html; the classifier is cached in RUN/classifier/. A conditional run trained with --holdout is also scored
by an independent judge (${JUDGE_NOTE}; cached in RUN/judge/), each accuracy beside its classifier's on real images
it did not train on. A conditional run with EMA is scored 2×2: the plain and
the EMA model, each without and with CFG (and samples/eval_2x2.png).`,
);

/** Flags to EvalOptions plus the backend; any bad value is a UsageError naming the flag. */
export function parseEvalArgs(args: string[]) {
  const v = readFlags("eval", args);
  if (!v.help && !v.run) throw new UsageError("--run RUN is required (a run folder, e.g. runs/shapes)");
  const opts: EvalOptions = {
    run: v.run ? runFolder(v.run as string) : "",
    n: v.n as number | undefined,
    seconds: v.seconds as number | undefined,
    full: !!v.full,
    sampler: v.sampler as Sampler | undefined,
    sampleSteps: v["sample-steps"] as number | undefined,
    eta: v.eta as number | undefined,
    clip: v["no-clip"] ? false : undefined,
    ema: !!v.ema,
    weights: v.weights as string | undefined,
    seed: v.seed as number | undefined,
    threads: v.threads as number | undefined,
  };
  return { opts, backend: (v.backend ?? DEFAULTS.backend) as BackendName, help: !!v.help };
}

if (import.meta.main) {
  await runCli(async () => {
    const { opts, backend, help } = parseEvalArgs(Deno.args);
    if (help) return console.log(HELP);
    const name = await setBackend(backend);
    console.log(describeThreads(name, threadCount(name, opts.threads ?? DEFAULTS.threads)));
    await evaluate(opts);
  });
}
