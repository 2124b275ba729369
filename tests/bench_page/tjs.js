// The baseline of scripts/bench_page.sh: transformers.js (onnxruntime-web, wasm backend) running the
// ONNX export of the same CLIP image tower (tests/reference/export_onnx.py), all files served by
// tests/e2e/bench_page.mjs from 127.0.0.1 (no CDN, no Hub). window.tjsBench(opts) loads the model
// with `threads` wasm threads and times `batches` forward passes of the served pixel batches
// (/inputs/<k>.bin, f32 [n, 3, size, size], already preprocessed), batch 0 being the warm-up.
import { env, CLIPVisionModelWithProjection, Tensor } from '/tjs/transformers.js';

env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = '/models/';
env.useBrowserCache = false;
env.useWasmCache = false;
env.backends.onnx.wasm.wasmPaths = { mjs: '/ort/ort-wasm-simd-threaded.mjs', wasm: '/ort/ort-wasm-simd-threaded.wasm' };

window.tjsBench = async ({ threads, batches, n, size, keep }) => {
  env.backends.onnx.wasm.numThreads = threads;
  const t0 = performance.now();
  const model = await CLIPVisionModelWithProjection.from_pretrained('clip', { dtype: 'fp32', device: 'wasm' });
  const load_ms = performance.now() - t0;
  const run_ms = [];
  let embeds = null;
  for (let k = 0; k < batches; k++) {
    const pixels = new Float32Array(await (await fetch(`/inputs/${k}.bin`)).arrayBuffer());
    const x = new Tensor('float32', pixels, [n, 3, size, size]);
    const s = performance.now();
    const { image_embeds } = await model({ pixel_values: x });
    run_ms.push(performance.now() - s);
    if (k === keep) embeds = Array.from(image_embeds.data);
  }
  await model.dispose();
  return { load_ms, run_ms, embeds, threads: env.backends.onnx.wasm.numThreads, isolated: self.crossOriginIsolated, hardwareConcurrency: navigator.hardwareConcurrency };
};
document.body.dataset.ready = '1';
