// meshd warm-on-open: include it and the model is warm before anyone asks.
//   <script src="http://127.0.0.1:7071/meshd-warm.js" data-model="gemma3-270m"></script>
// It warms the model when the page opens, and again when the page comes back into view
// after most of the lease has passed. data-lease sets the lease in seconds (default 300).
// data-system="..." also warms that system prompt into a slot, so the first question
// prefills only itself. window.meshdWarm(model, {system: "..."} or {prefix: "..."}) warms
// another model (and prefix) on demand.
(function () {
  "use strict";
  var script = document.currentScript;
  var base = script ? new URL(script.src, location.href).origin : location.origin;
  var lease = Number((script && script.dataset.lease) || 300);
  var warmed = {};
  var options = {};

  function warm(model, opts) {
    if (!model) return;
    opts = opts || options[model] || {};
    options[model] = opts;
    var fields = { model: model, lease_seconds: lease };
    if (opts.system) fields.messages = [{ role: "system", content: opts.system }];
    else if (opts.prefix) fields.prefix = opts.prefix;
    var body = JSON.stringify(fields);
    var url = base + "/v1/warm";
    // sendBeacon: sent even while the page is busy loading, and it needs no CORS preflight.
    var sent = navigator.sendBeacon && navigator.sendBeacon(url, body);
    if (!sent) {
      fetch(url, { method: "POST", body: body, keepalive: true, mode: "no-cors" }).catch(
        function () {}
      );
    }
    warmed[model] = Date.now();
  }

  function again() {
    var now = Date.now();
    Object.keys(warmed).forEach(function (model) {
      if (now - warmed[model] > lease * 800) warm(model); // 80% of the lease is gone
    });
  }

  window.meshdWarm = warm;
  window.addEventListener("focus", again);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") again();
  });
  if (script && script.dataset.model) {
    warm(script.dataset.model, { system: script.dataset.system });
  }
})();
