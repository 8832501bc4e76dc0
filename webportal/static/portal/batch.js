// The batch page while a batch is in progress: polls status.json, updates the bar and the
// status, and reloads the page when the batch is finished (the page then shows the results).
// A static file, not an inline script: the Content-Security-Policy allows scripts from this
// origin only.
"use strict";
(function () {
  const box = document.getElementById("progress");
  if (!box) { return; }
  async function poll() {
    try {
      const response = await fetch(box.dataset.statusUrl, {headers: {"Accept": "application/json"}});
      if (response.ok) {
        const state = await response.json();
        document.getElementById("progress-bar").value = state.progress_percent;
        document.getElementById("progress-text").textContent =
          state.processed_images + " of " + state.total_images + " classified";
        const status = document.getElementById("batch-status");
        status.textContent = state.status_display;
        status.className = "status " + state.status;
        if (state.finished) { window.location.reload(); return; }
      }
    } catch (error) { /* a missed poll is retried below */ }
    setTimeout(poll, 1500);
  }
  setTimeout(poll, 1000);
})();
