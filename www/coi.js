// Cross-origin isolation on any host (a classic script, run before app.js). A page served with
// COOP + COEP (www/serve.py) is isolated already. Elsewhere this registers coi-sw.js, which adds
// those headers, and reloads the page once so that it is served through it. Where that cannot
// work (no service workers: a private window in some browsers, a file:// URL) the page runs its
// one-thread CPU engine and says why. app.js waits on `window.clipitIsolation` before starting
// the engine: it resolves to the reason isolation is off (null when the page is isolated), and
// never resolves while the page is about to reload.
window.clipitIsolation = (async () => {
  const key = 'clipit-isolation-reload';
  if (self.crossOriginIsolated) {
    try {
      sessionStorage.removeItem(key);
    } catch {}
    return null;
  }
  if (!window.isSecureContext || !('serviceWorker' in navigator)) return 'this browser offers no service workers here (they need https:// or localhost)';
  try {
    const registration = await navigator.serviceWorker.register('coi-sw.js');
    await navigator.serviceWorker.ready;
    if (!sessionStorage.getItem(key)) {
      sessionStorage.setItem(key, '1');
      location.reload();
      return new Promise(() => {});
    }
    sessionStorage.removeItem(key);
    return registration.active ? 'the page stayed without cross-origin isolation behind its service worker' : 'the service worker did not start';
  } catch (err) {
    return `the service worker that isolates the page could not start (${(err && err.message) || err})`;
  }
})();
