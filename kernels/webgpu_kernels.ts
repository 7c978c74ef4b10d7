// tfjs's WebGPU backend, set up for our kernels. It is registered on a device with the adapter's own limit of storage
// buffers per shader (tfjs asks for WebGPU's default, 8), our shaders are dispatched into the backend's own command
// encoder with as many outputs as they need (tfjs's programs have one), and the filter gradient of a convolution is
// replaced (tfjs's runs a thread per weight over every pixel of the batch). The fused kernels themselves are in
// fused_webgpu.ts.
import * as tf from "@tensorflow/tfjs";

export type Info = tf.TensorInfo;
export interface Backend { // the parts of tfjs's WebGPUBackend used here
  device: GPUDevice;
  tensorMap: { get(dataId: object): { resource: GPUBuffer | null; values: unknown; refCount: number } };
  uploadToGPU(dataId: object): void;
  makeTensorInfo(shape: number[], dtype: tf.DataType): Info;
  makeUniforms(u: { type: string; data: number[] }[]): GPUBufferBinding;
  disposeData(dataId: object): void;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
  commandEncoder: GPUCommandEncoder;
  computePassEncoder: GPUComputePassEncoder | null;
  commandQueueOwnedIds: WeakSet<object>;
  dispatchCountInPass: number;
}
export type KernelArgs<I> = { inputs: I; backend: unknown; attrs: unknown };

export const size = (t: Info) => t.shape.reduce((a, b) => a * b, 1);
export const output = (be: Backend, shape: number[]) => be.makeTensorInfo(shape, "float32");

/** A shader run: storage buffers by name (outputs read_write, bound first), uniforms by name and type. */
export interface Run {
  key: string; // names the shader: `code` is made once for each key
  code: () => string; // WGSL after the declarations that `run` writes
  groups: number[]; // workgroups in x, y, z
  outputs: Record<string, Info>; // new, or updated in place
  inputs?: Record<string, Info>;
  u32?: Record<string, number>;
  f32?: Record<string, number>;
}

const pipelines = new WeakMap<GPUDevice, Map<string, GPUComputePipeline>>();

/** Records one dispatch of a shader, with its uniforms, into the backend's command encoder. */
export function run(be: Backend, { key, code, groups, outputs, inputs = {}, u32 = {}, f32 = {} }: Run) {
  const cache = pipelines.get(be.device) ?? new Map<string, GPUComputePipeline>();
  pipelines.set(be.device, cache);
  const buffers = [...Object.entries(outputs), ...Object.entries(inputs)], written = Object.keys(outputs).length;
  const uniforms = [
    ...Object.entries(u32).map(([k, v]) => [k, "u32", v]),
    ...Object.entries(f32).map(([k, v]) => [k, "f32", v]),
  ];
  let pipeline = cache.get(key);
  if (!pipeline) {
    if (!cache.size) { // a shader that does not compile would otherwise leave its outputs unwritten, silently
      be.device.addEventListener("uncapturederror", (e) => console.error((e as GPUUncapturedErrorEvent).error.message));
    }
    const declarations = [
      `struct U { ${uniforms.map(([k, type]) => `${k}: ${type}`).join(", ")} }`,
      "@group(0) @binding(0) var<uniform> u: U;",
      ...buffers.map(([name], i) =>
        `@group(0) @binding(${i + 1}) var<storage, ${
          i < Object.keys(outputs).length ? "read_write" : "read"
        }> ${name}: array<f32>;`
      ),
    ];
    const module = be.device.createShaderModule({ code: `${declarations.join("\n")}\n${code()}`, label: key });
    const layout = be.device.createBindGroupLayout({ // (not "auto", which drops the buffers a variant leaves unused)
      entries: [
        { type: "uniform" },
        ...buffers.map((_, i) => ({ type: i < written ? "storage" : "read-only-storage" })),
      ]
        .map((buffer, binding) => ({ binding, visibility: GPUShaderStage.COMPUTE, buffer }) as GPUBindGroupLayoutEntry),
    });
    const pipelineLayout = be.device.createPipelineLayout({ bindGroupLayouts: [layout] });
    pipeline = be.device.createComputePipeline({
      layout: pipelineLayout,
      compute: { module, entryPoint: "main" },
      label: key,
    });
    cache.set(key, pipeline);
  }
  for (const [, t] of buffers) {
    be.uploadToGPU(t.dataId);
    be.commandQueueOwnedIds.add(t.dataId); // not released before the queue is submitted
  }
  for (const t of Object.values(outputs)) be.tensorMap.get(t.dataId).values = null; // a copy read back earlier
  const types = { u32: "uint32", f32: "float32" } as Record<string, string>;
  const entries: GPUBindGroupEntry[] = [
    { binding: 0, resource: be.makeUniforms(uniforms.map(([, type, v]) => ({ type: types[type], data: [+v] }))) },
    ...buffers.map(([, t], i) => ({ binding: i + 1, resource: { buffer: be.tensorMap.get(t.dataId).resource! } })),
  ];
  be.ensureCommandEncoderReady();
  be.computePassEncoder ??= be.commandEncoder.beginComputePass();
  be.computePassEncoder.setPipeline(pipeline);
  be.computePassEncoder.setBindGroup(0, be.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries }));
  be.computePassEncoder.dispatchWorkgroups(groups[0], groups[1] ?? 1, groups[2] ?? 1);
  if (++be.dispatchCountInPass >= tf.env().getNumber("WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE")) {
    be.endComputePassEncoder();
    be.submitQueue();
  }
}

/** Workgroups for `n` items, `per` to a workgroup: [x, y] with x within the per-dimension limit. */
export const grid = (n: number, per = 256) => {
  const groups = Math.ceil(n / per), x = Math.min(groups, 32768);
  return [x, Math.ceil(groups / x)];
};

/** The entry point of a shader with a thread per item: `i` is the item (check it against the count). */
export const MAIN = `@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.y * nwg.x + wid.x) * 256u + lid;`;

// ------------------------------------------------------------------ the filter gradient of a convolution
// dW[(i, j, ci), co] = Σ_p x[p shifted by (i, j), ci]·dy[p, co] over the pixels p of the batch. tfjs's kernel has
// a thread for each weight walk all the pixels: a conv with few weights and many pixels (the first and the last of
// the U-Net: 1,728 and 192 weights, 49,152 pixels at 64 px batch 12) keeps a few threads busy for long. Here the
// pixels are split into shares, a thread for each (share, weight), and a second dispatch sums the shares.

let shippedFilterGrad: tf.KernelFunc;

function conv2dBackpropFilter(args: KernelArgs<{ x: Info; dy: Info }>) {
  const { inputs: { x, dy }, attrs } = args, be = args.backend as Backend;
  const a = attrs as { strides: number; pad: "same" | "valid"; dataFormat: string; filterShape: number[] };
  type Shape = [number, number, number, number];
  const info = tf.backend_util.computeConv2DInfo(x.shape as Shape, a.filterShape as Shape, a.strides, 1, a.pad);
  if (info.strideHeight !== 1 || info.strideWidth !== 1 || a.dataFormat === "NCHW") {
    return shippedFilterGrad(args as unknown as Parameters<tf.KernelFunc>[0]);
  }
  const [kh, kw, ci, co] = a.filterShape, M = kh * kw * ci, K = info.batchSize * info.outHeight * info.outWidth;
  const shares = Math.max(1, Math.min(Math.ceil(2 ** 18 / (M * co)), Math.ceil(K / 64))); // ≥ 256 K threads
  const per = Math.ceil(K / shares);
  const dW = output(be, a.filterShape), part = shares > 1 ? output(be, [shares, M, co]) : dW;
  run(be, {
    key: "filterGrad",
    groups: grid(shares * M * co),
    outputs: { part },
    inputs: { x, dy },
    u32: {
      ...{ size: shares * M * co, M, N: co, K, per, h: info.inHeight, w: info.inWidth, ci, kw },
      ...{ ho: info.outHeight, wo: info.outWidth, top: info.padInfo.top, left: info.padInfo.left },
    },
    code: () =>
      `${MAIN}
  if (i >= u.size) { return; }
  let n = i % u.N; let m = (i / u.N) % u.M; let share = i / (u.N * u.M);
  let c = m % u.ci; let dj = (m / u.ci) % u.kw; let di = m / (u.ci * u.kw); // the weight (di, dj, c, n)
  let start = share * u.per; let end = min(start + u.per, u.K);
  var xo = start % u.wo; var yo = (start / u.wo) % u.ho; var b = start / (u.wo * u.ho); // pixel p = (b, yo, xo)
  var acc = 0.0;
  for (var p = start; p < end; p++) {
    let y = i32(yo + di) - i32(u.top); let xx = i32(xo + dj) - i32(u.left);
    if (y >= 0 && y < i32(u.h) && xx >= 0 && xx < i32(u.w)) {
      acc += x[((b * u.h + u32(y)) * u.w + u32(xx)) * u.ci + c] * dy[p * u.N + n];
    }
    xo++;
    if (xo == u.wo) { xo = 0u; yo++; if (yo == u.ho) { yo = 0u; b++; } }
  }
  part[i] = acc;
}`,
  });
  if (part === dW) return dW;
  run(be, {
    key: "filterGradSum",
    groups: grid(M * co),
    outputs: { dW },
    inputs: { part },
    u32: { size: M * co, shares },
    code: () =>
      `${MAIN}
  if (i >= u.size) { return; }
  var s = 0.0;
  for (var k = 0u; k < u.shares; k++) { s += part[k * u.size + i]; }
  dW[i] = s;
}`,
  });
  be.disposeData(part.dataId);
  return dW;
}

// ------------------------------------------------------------------ registration

let registered = false;

/**
 * Registers tfjs's WebGPU backend anew, on a device with the adapter's limit of storage buffers per shader, with
 * the filter gradient above and the fused kernels `fused` when the limit allows `bindings` of them to a shader.
 */
export async function registerWebgpuBackend(
  fused: tf.KernelConfig[],
  bindings: number,
  log: (line: string) => void,
) {
  const { WebGPUBackend } = await import("@tensorflow/tfjs-backend-webgpu");
  if (registered) return;
  registered = true;
  tf.removeBackend("webgpu");
  tf.registerBackend("webgpu", async () => {
    const adapter = (await navigator.gpu.requestAdapter({ powerPreference: "high-performance" }))!;
    const l = adapter.limits;
    const device = await adapter.requestDevice({
      requiredFeatures: adapter.features.has("timestamp-query") ? ["timestamp-query"] : [],
      requiredLimits: { // tfjs's, and the storage buffers
        maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
        maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
        maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
        maxBufferSize: l.maxBufferSize,
        maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
        maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
        maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
      },
    });
    const allowed = l.maxStorageBuffersPerShaderStage >= bindings;
    if (!allowed) log(`webgpu: ${l.maxStorageBuffersPerShaderStage} storage buffers per shader: no fused kernels`);
    shippedFilterGrad ??= tf.getKernel("Conv2DBackpropFilter", "webgpu")!.kernelFunc;
    const filterGrad = { kernelName: "Conv2DBackpropFilter", backendName: "webgpu", kernelFunc: conv2dBackpropFilter };
    for (const config of [...(allowed ? fused : []), filterGrad as unknown as tf.KernelConfig]) {
      if (tf.getKernel(config.kernelName, "webgpu")) tf.unregisterKernel(config.kernelName, "webgpu");
      tf.registerKernel(config);
    }
    return new WebGPUBackend(device, adapter.info);
  }, 3);
}
