// Kernels that the tfjs wasm backend lacks as shipped, so that convolutions can train there.
import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-wasm";

interface Conv2DAttrs {
  strides: number | [number, number];
  pad: "same" | "valid" | number;
  dataFormat: string;
  filterShape: [number, number, number, number];
}

/** dL/dW of a stride-1 NHWC conv: a "valid" conv of the padded input with dy as its filter. */
function conv2dBackpropFilter(x: tf.Tensor4D, dy: tf.Tensor4D, attrs: Conv2DAttrs): tf.Tensor4D {
  const [kh, kw] = attrs.filterShape;
  const [ph, pw] = attrs.pad === "same" ? [(kh - 1) >> 1, (kw - 1) >> 1] : [0, 0];
  return tf.tidy(() => {
    const xp = x.pad([[0, 0], [ph, kh - 1 - ph], [pw, kw - 1 - pw], [0, 0]]);
    const dW = tf.conv2d(xp.transpose([3, 1, 2, 0]), dy.transpose([1, 2, 0, 3]), 1, "valid");
    return dW.transpose([1, 2, 0, 3]) as tf.Tensor4D; // [Ci, kh, kw, Co] -> [kh, kw, Ci, Co]
  });
}

export async function registerWasmKernels() {
  await tf.setBackend("wasm");
  if (tf.getKernel("Conv2DBackpropFilter", "wasm")) return;
  tf.registerKernel({
    kernelName: "Conv2DBackpropFilter",
    backendName: "wasm",
    kernelFunc: ({ inputs, backend, attrs }) => {
      const a = attrs as unknown as Conv2DAttrs;
      const strides = typeof a.strides === "number" ? [a.strides, a.strides] : a.strides;
      if (strides[0] !== 1 || strides[1] !== 1 || typeof a.pad === "number" || a.dataFormat !== "NHWC") {
        throw new Error("wasm Conv2DBackpropFilter supports stride-1 NHWC convolutions only");
      }
      const dW = conv2dBackpropFilter(inputs.x as tf.Tensor4D, inputs.dy as tf.Tensor4D, a); // inputs are tensors
      const values = dW.dataSync();
      dW.dispose();
      type Wasm = { makeOutput: (s: number[], d: string, m: null, v: tf.TypedArray) => tf.TensorInfo };
      return (backend as unknown as Wasm).makeOutput(a.filterShape, "float32", null, values);
    },
  });
}
