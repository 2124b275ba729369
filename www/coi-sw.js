// A service worker that makes the page cross-origin isolated where its host cannot send the
// headers (a static host: GitHub Pages, an S3 bucket, a course server): it adds COOP
// `same-origin` and COEP `require-corp` to every same-origin response, as www/serve.py sends them,
// so the multithreaded CPU engine (wasm threads need SharedArrayBuffer) can start. Requests to
// other origins pass through untouched. Registered by coi.js; a no-op where the host already
// isolates the page.
// The page's Content-Security-Policy, which scripts/make_dist.py writes in (a static host sends
// none): the page has it as a <meta> tag, but a worker only obeys its own response's header.
const POLICY = '';

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('fetch', (event) => {
  const request = event.request;
  if (new URL(request.url).origin !== self.location.origin) return;
  if (request.cache === 'only-if-cached' && request.mode !== 'same-origin') return;
  event.respondWith(
    fetch(request).then((response) => {
      if (response.status === 0 || response.type === 'opaque') return response;
      const headers = new Headers(response.headers);
      headers.set('Cross-Origin-Opener-Policy', 'same-origin');
      headers.set('Cross-Origin-Embedder-Policy', 'require-corp');
      if (POLICY && ['document', 'worker', 'sharedworker'].includes(request.destination)) headers.set('Content-Security-Policy', POLICY);
      return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
    }),
  );
});
