/* Qamqor reading worklist: reload when the worklist changed (a study newly prioritised by the
 * AI, a report signed, a study claimed or released), so nobody has to press refresh.
 * Polls /reading/api/worklist/changes every 15 s while the page is visible; waits while the
 * radiologist is typing in the filters or choosing an urgency. No dependencies. */
(function () {
  "use strict";
  var heading = document.getElementById("worklist");
  if (!heading || !window.fetch) return;
  var url = heading.dataset.changesUrl;
  var seen = heading.dataset.changes;
  var INTERVAL_MS = 15000;
  var pending = false;

  function busy() {
    var el = document.activeElement;
    return !!el && /^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName);
  }

  function poll() {
    if (document.hidden || pending) return;
    pending = true;
    fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (answer) {
        if (!answer || typeof answer.changes !== "string") return;
        if (answer.changes !== seen && !busy()) window.location.reload();
      })
      .catch(function () { /* offline for a moment: the next poll tries again */ })
      .then(function () { pending = false; });
  }

  window.setInterval(poll, INTERVAL_MS);
  document.addEventListener("visibilitychange", function () { if (!document.hidden) poll(); });
})();
