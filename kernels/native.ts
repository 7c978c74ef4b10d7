// Native matrix products for the wasm backend: OpenBLAS's `cblas_sgemm` called through Deno's FFI on views of the wasm
// heap, in place (no copy). wasm_kernels.ts builds its convolutions and products on it when it loads; else they stay
// XNNPACK's. One thread a call: the CPU's threads are run/threads.ts's, each calling it at once. That takes the
// threaded build set to one thread (Debian's libopenblas0-pthread): the single-threaded build has no locks, and two
// workers calling it at once got wrong products (tests/threads_test.ts failed 3 runs in 3).

/** Where OpenBLAS is looked for, in order (the tasks' --allow-ffi names these folders). */
export const BLAS_PATHS = [
  "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
  "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
  "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
];

/** How to get one, for the line that says why the wasm kernels run instead. */
const INSTALL = "apt-get install libopenblas0-pthread";

const SYMBOLS = {
  // Order, TransA, TransB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc
  cblas_sgemm: {
    parameters: [
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "buffer",
      "i32",
      "buffer",
      "i32",
      "f32",
      "buffer",
      "i32",
    ],
    result: "void",
  },
} as const;
const OPENBLAS = {
  openblas_get_config: { parameters: [], result: "pointer" },
  openblas_set_num_threads: { parameters: ["i32"], result: "void" },
  strncpy: { parameters: ["buffer", "pointer", "usize"], result: "pointer" }, // (libc's, through OpenBLAS's handle)
} as const;

/** C[m, n] = op(A)·op(B) + beta·C, row-major; lda, ldb, ldc the row strides of A, B, C as stored. */
export type Sgemm = (
  transA: boolean,
  transB: boolean,
  m: number,
  n: number,
  k: number,
  a: Float32Array,
  lda: number,
  b: Float32Array,
  ldb: number,
  beta: number,
  c: Float32Array,
  ldc: number,
) => void;

/** The loaded library's sgemm, or null (the wasm kernels run). */
export let sgemm: Sgemm | null = null;

/** What the products run on: `native (OpenBLAS 0.3.21 …)`, or the wasm kernels and why. */
export let blasNote = "wasm kernels";

/** Loads the first OpenBLAS of BLAS_PATHS that exists (once); `use` false keeps the wasm kernels. Returns blasNote. */
export function loadBlas(use = wanted()): string {
  if (sgemm || !use) {
    if (!use) [sgemm, blasNote] = [null, "wasm kernels (DDPM_NATIVE=0)"];
    return blasNote;
  }
  const found = BLAS_PATHS.find(exists);
  if (!found) return blasNote = `wasm kernels: OpenBLAS not found (${INSTALL} for native products)`;
  if (Deno.permissions.querySync({ name: "ffi", path: found }).state !== "granted") {
    return blasNote = `wasm kernels: native products need --allow-ffi=${found}`;
  }
  const lib = Deno.dlopen(found, SYMBOLS);
  blasNote = `native (${describe(found)})`; // (which also sets it to one thread a call)
  sgemm = (tA, tB, m, n, k, a, lda, b, ldb, beta, c, ldc) =>
    lib.symbols.cblas_sgemm(101, tA ? 112 : 111, tB ? 112 : 111, m, n, k, 1, a, lda, b, ldb, beta, c, ldc);
  return blasNote;
}

/** DDPM_NATIVE=0 (where the environment may be read) asks for the wasm kernels. */
function wanted(): boolean {
  const env = { name: "env", variable: "DDPM_NATIVE" } as const;
  return Deno.permissions.querySync(env).state !== "granted" || Deno.env.get(env.variable) !== "0";
}

function exists(path: string): boolean {
  try {
    return Deno.permissions.querySync({ name: "read", path }).state === "granted" && Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** OpenBLAS's own words (version, kernels), one thread a call. */
function describe(path: string): string {
  const lib = Deno.dlopen(path, OPENBLAS);
  lib.symbols.openblas_set_num_threads(1);
  const text = new Uint8Array(256); // (reading a C string with Deno.UnsafePointerView would need every FFI permission)
  lib.symbols.strncpy(text, lib.symbols.openblas_get_config(), BigInt(text.length - 1));
  const config = new TextDecoder().decode(text.subarray(0, text.indexOf(0))).split(" ");
  return [config[0], config[1], ...config.filter((w) => /^[A-Z][a-z]/.test(w) && w !== "OpenBLAS")].join(" ");
}
