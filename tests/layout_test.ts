// The checks a reader makes of the layout: the four paper files stand out, imports go one way, files stay short.
import assert from "node:assert/strict";
import { join } from "node:path";
import { ROOT } from "./helpers.ts";

const PAPER = ["diffusion.ts", "modules.ts", "ema.ts", "train.ts"];
const files = [...Deno.readDirSync(ROOT)].map((e) => e.name).filter((f) => f.endsWith(".ts")).sort();
const text = new Map(files.map((f) => [f, Deno.readTextFileSync(join(ROOT, f))]));

/** The project files a file imports, statically or with import(). */
const importsOf = (f: string) => {
  const code = text.get(f)!.split("\n").filter((l) => !/^\s*(\/\/|\*|\/\*)/.test(l)).join("\n"); // (not comments)
  return [...code.matchAll(/(?:from|import\(?)\s*"\.\/([\w.]+\.ts)"/g)].map((m) => m[1]);
};

/** The header: the comment lines at the top (after a `///` directive). */
const header = (f: string) =>
  text.get(f)!.split("\n").filter((l) => !l.startsWith("///")).join("\n").split(/\n(?!\/\/)/)[0];

Deno.test("the import graph of the top-level files has no cycle", () => {
  const state = new Map<string, "open" | "done">();
  const visit = (f: string, path: string[]) => {
    if (state.get(f) === "done") return;
    assert.notEqual(state.get(f), "open", `import cycle: ${[...path, f].join(" -> ")}`);
    state.set(f, "open");
    for (const g of importsOf(f)) visit(g, [...path, f]);
    state.set(f, "done");
  };
  for (const f of files) visit(f, []);
  assert.ok(importsOf("train.ts").includes("run.ts")); // the parser does see imports
});

Deno.test("no command is imported as a library; the data and kernel files import nothing else of the project", () => {
  const commands = files.filter((f) => header(f).startsWith("// Command"));
  assert.ok(commands.includes("sample.ts") && commands.includes("eval.ts"), commands.join());
  for (const f of files) {
    const used = importsOf(f).filter((g) => commands.includes(g));
    assert.deepEqual(used, [], `${f} imports the command(s) ${used}`);
  }
  assert.deepEqual(importsOf("datasets.ts"), []);
  assert.deepEqual(importsOf("wasm_kernels.ts"), []);
  assert.deepEqual(importsOf("backend.ts").sort(), ["fused_wasm.ts", "fused_webgpu.ts", "wasm_kernels.ts"]);
});

Deno.test("every file but the paper's four says in its first line that it is not needed to follow the paper", () => {
  for (const f of files.filter((f) => !PAPER.includes(f) && f !== "mod.ts")) {
    assert.match(header(f), /^\/\/ (Support file|Command) \(not needed to follow the paper\)/, f);
  }
  for (const f of PAPER) assert.doesNotMatch(header(f), /not needed to follow the paper/, f);
});

Deno.test("no file is much over 300 lines unless its header says why", () => {
  for (const f of files) {
    const lines = text.get(f)!.split("\n").length;
    if (lines > 310) assert.match(header(f), /Over 300 lines: \S/, `${f}: ${lines} lines, no reason in its header`);
  }
});
