// Exponential moving average of the weights (the tutorial's EMA, with its warm-up).
import * as tf from "@tensorflow/tfjs";
import { fusedEma, hasFused } from "./kernels/fused.ts";
import type { Module } from "./modules.ts";

/** The tutorial's EMA: a moving average of the weights, a copy of them until `stepStartEma`. */
export class EMA {
  /** The EMA steps taken (stepEma calls). */
  step = 0;
  /** The decay β of the average. */
  constructor(readonly beta = 0.995) {}

  /** w_ema ← β·w_ema + (1-β)·w, for every weight. */
  updateModelAverage(emaModel: Module, model: Module) {
    average(emaModel, model, this.beta);
  }

  /** Until stepStartEma the EMA copy is reset to the model; from then on it averages. */
  stepEma(emaModel: Module, model: Module, stepStartEma = 2000) {
    if (this.step < stepStartEma) this.resetParameters(emaModel, model);
    else this.updateModelAverage(emaModel, model);
    this.step += 1;
  }

  /** w_ema ← w (a copy: the fused kernels update the EMA weights in place). */
  resetParameters(emaModel: Module, model: Module) {
    average(emaModel, model, 0);
  }
}

/** w_ema ← β·w_ema + (1-β)·w: one fused kernel for many weights where the backend has it. */
function average(emaModel: Module, model: Module, beta: number) {
  const pairs = [...model.weights].map(([name, w]) => ({ e: emaModel.weights.get(name)!, w }));
  if (hasFused("ema")) return fusedEma(pairs, beta);
  for (const { e, w } of pairs) tf.tidy(() => e.assign(beta ? e.mul(beta).add(w.mul(1 - beta)) : w));
}
