// Checkpoints: weights files with their SHA-256, and checkpoint folders written so that a crash never loses one.
import type { Tensor, Variable } from "../kernels/backend.ts";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { assignTensors, CheckpointError, parseWeights, serializeWeights, type Tensors } from "./weights.ts";

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

/** Writes a weights file (weights.ts); returns its SHA-256. */
export async function saveWeights(path: string, weights: Map<string, Tensor>): Promise<string> {
  const bytes = await serializeWeights(weights);
  const file = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    let written = 0;
    while (written < bytes.length) written += await file.write(bytes.subarray(written));
    await file.sync();
  } finally {
    file.close();
  }
  return sha256(bytes);
}

/** A weights file's tensors; a file listed in its folder's state.json must have the SHA-256 recorded there. */
export function loadWeights(path: string): Tensors {
  const bytes = Deno.readFileSync(path);
  const expected = recordedSha256(path);
  if (expected && sha256(bytes) !== expected) {
    throw new CheckpointError(`${path} has changed since it was written (its SHA-256 is not the one in state.json)`);
  }
  return parseWeights(bytes, path);
}

/** The SHA-256 that the state.json beside `path` recorded for it (none for older checkpoints and other files). */
function recordedSha256(path: string): string | undefined {
  const state = join(dirname(path), "state.json");
  if (!existsSync(state)) return undefined;
  try {
    return JSON.parse(readFileSync(state, "utf8")).sha256?.[basename(path)];
  } catch {
    return undefined; // an unreadable state.json is reported by readState
  }
}

/** Assigns the weights of a file to variables, refusing any mismatch of names or shapes. */
export const assignWeights = (path: string, variables: Map<string, Variable>) =>
  assignTensors(path, variables, loadWeights(path));

/**
 * Writes a checkpoint folder atomically: everything goes to `dir.tmp`, then `dir` becomes `dir.old`,
 * `dir.tmp` becomes `dir`, and `dir.old` is removed. A crash at any moment leaves `dir` or `dir.old` whole.
 */
export async function saveCheckpoint(dir: string, files: Map<string, Map<string, Tensor>>, state: object) {
  const tmp = `${dir}.tmp`, old = `${dir}.old`;
  try {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    await Deno.mkdir(tmp, { recursive: true });
    const sha256: Record<string, string> = {}; // checked when a file is read (loadWeights)
    for (const [name, weights] of files) sha256[name] = await saveWeights(join(tmp, name), weights);
    await Deno.writeTextFile(join(tmp, "state.json"), JSON.stringify({ ...state, sha256 }, null, 1));
  } catch (e) { // disk full, no permission…: the previous checkpoint stays as it was
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw new CheckpointError(`could not write a checkpoint to ${tmp} (${(e as Error).message}); ${dir} is kept`);
  }
  if (existsSync(dir)) {
    await Deno.remove(old, { recursive: true }).catch(() => {});
    await Deno.rename(dir, old);
  }
  await Deno.rename(tmp, dir);
  await Deno.remove(old, { recursive: true }).catch(() => {});
}

/** The newest complete checkpoint folder of a run (`checkpoint`, or `checkpoint.old` after a crash). */
export function findCheckpoint(runDir: string, required: string[]): string {
  if (!existsSync(runDir)) throw new CheckpointError(`no run at ${runDir}`);
  for (const dir of ["checkpoint", "checkpoint.old"].map((d) => join(runDir, d))) {
    if (required.every((f) => existsSync(join(dir, f)))) return dir;
  }
  throw new CheckpointError(
    `${runDir} has no complete checkpoint (needs ${required.join(", ")} in ${runDir}/checkpoint)`,
  );
}
