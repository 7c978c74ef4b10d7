// Exponential moving average of the weights (the tutorial's EMA, with its warm-up).
import * as tf from "@tensorflow/tfjs";
import type { Module } from "./modules.ts";

export class EMA {
  step = 0;
  constructor(readonly beta = 0.995) {}

  /** w_ema ← β·w_ema + (1-β)·w, for every weight. */
  updateModelAverage(emaModel: Module, model: Module) {
    for (const [name, w] of model.weights) {
      const e = emaModel.weights.get(name)!;
      tf.tidy(() => e.assign(e.mul(this.beta).add(w.mul(1 - this.beta))));
    }
  }

  /** Until stepStartEma the EMA copy is reset to the model; from then on it averages. */
  stepEma(emaModel: Module, model: Module, stepStartEma = 2000) {
    if (this.step < stepStartEma) this.resetParameters(emaModel, model);
    else this.updateModelAverage(emaModel, model);
    this.step += 1;
  }

  resetParameters(emaModel: Module, model: Module) {
    for (const [name, w] of model.weights) emaModel.weights.get(name)!.assign(w);
  }
}
