// A decoding worker (image_folder.ts starts one per core): reads one PNG/JPEG, decodes it and resizes it to the cached
// size (transforms.ts fit), so that the main thread only ever holds the small images.
import { decodeRGB } from "./datasets.ts";
import { cachedShortSide, fit } from "./transforms.ts";

/** What a worker answers for the i-th file: the resized image, or why it is skipped. */
export type Decoded = { i: number; w: number; h: number; W: number; H: number; pix: Uint8Array } | {
  i: number;
  why: string;
  detail: string;
};

const scope = self as unknown as {
  onmessage: (e: MessageEvent<{ i: number; file: string; size: number }>) => void;
  postMessage(message: Decoded, transfer?: Transferable[]): void;
};
const message = (e: unknown) => (e instanceof Error ? e.message : String(e)).split("\n")[0];

scope.onmessage = async ({ data: { i, file, size } }) => {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(file);
  } catch (e) {
    return scope.postMessage({ i, why: "unreadable", detail: message(e) });
  }
  try {
    const { img: { w, h, pix }, W, H } = fit(await decodeRGB(bytes, cachedShortSide(size)), size);
    scope.postMessage({ i, w, h, W, H, pix }, [pix.buffer as ArrayBuffer]);
  } catch (e) {
    scope.postMessage({ i, why: "not a valid PNG/JPEG", detail: message(e) });
  }
};
