// The progress line of every long wait (training, sampling, decoding): what is done, a rate and the ETA.

/** Seconds as 12s, 3m05s or 1h07m. */
export const duration = (s: number) =>
  s >= 3600
    ? `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`
    : s >= 60
    ? `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, "0")}s`
    : `${Math.round(s)}s`;

/**
 * One progress line, redrawn in place on a terminal (every 200 ms), a new line every 5 s otherwise (or when
 * the lines go to a log function other than console.log). Each `show` is one more unit done, worth `perUnit`
 * items for the rate: a training step is `batch` images, a sampling step is one step.
 */
export class Progress {
  private t0 = performance.now();
  private last = 0;
  private units = 0;
  private smooth = NaN;
  private drawn = false; // a line is drawn in place and not yet ended
  private tty: boolean;
  constructor(
    readonly total: number,
    readonly perUnit: number,
    readonly log: (l: string) => void = console.log,
    readonly rateUnit = "img/s",
  ) {
    this.tty = log === console.log && Deno.stdout.isTerminal();
  }
  /** Training: the step, the epoch and the loss (smoothed). */
  update(step: number, epoch: number, epochs: number, loss: number) {
    this.smooth = Number.isNaN(this.smooth) ? loss : 0.98 * this.smooth + 0.02 * loss;
    this.show(step, `epoch ${epoch}/${epochs} step ${step}/${this.total} loss ${this.smooth.toFixed(4)}`);
  }
  /** `done` of `total` units are finished; the line is `text`, the rate and the ETA. */
  show(done: number, text: string) {
    this.units++;
    const now = performance.now();
    if (now - this.last < (this.tty ? 200 : 5000) && done < this.total) return;
    this.last = now;
    const perUnit = (now - this.t0) / 1000 / this.units;
    const line = `${text} ${(this.perUnit / perUnit).toFixed(1)} ${this.rateUnit} ETA ${
      duration(perUnit * (this.total - done))
    }`;
    if (this.tty) Deno.stdout.writeSync(new TextEncoder().encode(`\r${line}\x1b[K`));
    else this.log(line);
    this.drawn = this.tty;
  }
  /** Ends the line drawn in place (before other output); the rate and ETA go on if more units follow. */
  done() {
    if (this.drawn) Deno.stdout.writeSync(new TextEncoder().encode("\n"));
    this.drawn = false;
  }
}

/** A progress line over `total` sampling steps: "sampling 120/1000 steps 8.1 steps/s ETA 1m48s". */
export function stepProgress(total: number, label: string, log: (l: string) => void = console.log) {
  const p = new Progress(total, 1, log, "steps/s");
  let done = 0;
  return { step: () => p.show(++done, `${label} ${done}/${total} steps`), done: () => p.done() };
}

/**
 * Projects a long wait from its first units and calls `onSlow(seconds left)` once if that is over `limit` seconds.
 * The first unit is warm-up (kernels compile): the rate is measured from it on, over `units` more or `seconds`.
 */
export class SlowCheck {
  private start: { done: number; t: number } | null = null;
  private judged = false;
  constructor(
    readonly total: number,
    readonly limit: number,
    readonly onSlow: (secondsLeft: number) => void,
    readonly units = 5,
    readonly seconds = 20,
    readonly now: () => number = () => performance.now(),
  ) {}
  /** `done` of `total` units are finished. */
  seen(done: number): void {
    const t = this.now();
    if (!this.start) this.start = { done, t };
    const units = done - this.start.done, elapsed = (t - this.start.t) / 1000;
    if (this.judged || units < 1 || (units < this.units && elapsed < this.seconds)) return;
    this.judged = true;
    const left = elapsed / units * (this.total - done);
    if (left > this.limit) this.onSlow(left);
  }
}

/** A day: a training run projected to take longer gets slowRunHint. */
export const SLOW_RUN_SECONDS = 86400;

/** The line for a training run that would take more than a day on `backend`, with the ways to a shorter one. */
export function slowRunHint(secondsLeft: number, backend: string): string {
  const gpu = backend === "webgpu" || backend === "tensorflow";
  const ways = gpu
    ? "a smaller --image-size or --width, or fewer --epochs"
    : "a GPU backend (--backend webgpu, or tensorflow: deno task gpu), deno task demo (minutes on a CPU), " +
      "or a smaller --image-size or --width";
  return `note: at this rate the run takes about ${
    duration(secondsLeft)
  } more on ${backend}; for a shorter one: ${ways}`;
}

/** Two minutes: a sample grid projected to take longer gets slowGridHint. */
export const SLOW_GRID_SECONDS = 120;

/** The line for a sample grid that takes minutes: its estimate, and what DDIM over 50 steps would take. */
export function slowGridHint(secondsLeft: number, steps: number, sampler: string): string {
  const ddim = secondsLeft * Math.min(1, 50 / steps);
  const cheaper = sampler === "ddim" && steps <= 50
    ? "fewer --sample-steps or --n-samples"
    : `--sampler ddim --sample-steps 50 (about ${duration(ddim)})`;
  return `note: this sample grid takes about ${
    duration(secondsLeft)
  } more (${steps} ${sampler} steps); cheaper: ${cheaper}`;
}
