// The cell page: a worker computes the Grad-CAM heatmap on first request; ask until it is
// there (202 means "computing"), then show it. A static file: the CSP allows no inline script.
"use strict";
(function () {
  const img = document.getElementById("heatmap");
  const status = document.getElementById("heatmap-status");
  if (!img || !status) { return; }
  const url = img.dataset.src;
  let tries = 0;
  async function ask() {
    tries += 1;
    try {
      const response = await fetch(url, {credentials: "same-origin"});
      if (response.status === 200) {
        img.addEventListener("load", () => { img.hidden = false; status.hidden = true; });
        img.src = url;  // now stored: the browser's second request is a quick one
        return;
      }
      if (response.status !== 202) {
        status.textContent = "No heatmap for this cell (error " + response.status + ").";
        return;
      }
    } catch (error) { /* asked again below */ }
    if (tries < 90) {
      setTimeout(ask, 1000);
    } else {
      status.textContent = "The heatmap is taking long: is a worker running? Reload to ask again.";
    }
  }
  ask();
})();
