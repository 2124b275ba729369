// The browser's WebGPU adapter, as the page (device.js: which engine to start) and the worker
// (init: which backend "Auto" picks) both see it.

// Adapters that run WebGPU on the CPU: Chromium's SwiftShader, Mesa's llvmpipe and lavapipe,
// Windows' WARP ("Microsoft Basic Render Driver").
const SOFTWARE = /swiftshader|llvmpipe|lavapipe|softpipe|basic render/i;

/**
 * The adapter's facts, or null when the browser offers none: vendor, architecture, description,
 * isFallbackAdapter, shaderF16, and `software` (a fallback adapter, or one whose names say it
 * runs on the CPU: slower there than the page's CPU engine).
 */
export async function adapterFacts() {
  try {
    if (!self.navigator || !self.navigator.gpu) return null;
    const adapter = await self.navigator.gpu.requestAdapter();
    if (!adapter) return null;
    const info = adapter.info || {};
    const facts = {
      vendor: info.vendor || '',
      architecture: info.architecture || '',
      description: info.description || '',
      isFallbackAdapter: Boolean(info.isFallbackAdapter ?? adapter.isFallbackAdapter),
      shaderF16: adapter.features.has('shader-f16'),
    };
    facts.software = facts.isFallbackAdapter || SOFTWARE.test(`${facts.vendor} ${facts.architecture} ${facts.description} ${info.device || ''}`);
    return facts;
  } catch {
    return null;
  }
}

/** The adapter's name as the page shows it ("SwiftShader", or its vendor and architecture). */
export function adapterName(facts) {
  const names = `${facts.vendor} ${facts.architecture} ${facts.description}`;
  const known = names.match(SOFTWARE);
  if (/swiftshader/i.test(names)) return 'SwiftShader';
  return known ? known[0] : [facts.vendor, facts.architecture].filter(Boolean).join(' ') || 'a fallback adapter';
}

/** Why "Auto" runs the CPU engine on a machine whose only WebGPU adapter is a software one. */
export function softwareReason(facts) {
  return `the only WebGPU adapter is a software one (${adapterName(facts)}), slower than the CPU engine; choose WebGPU under “Compute on” to use it anyway`;
}
