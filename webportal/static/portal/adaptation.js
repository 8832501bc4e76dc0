// An adaptation's page reloads itself while the job runs (data-reload-seconds on #state).
"use strict";
(function () {
  const state = document.getElementById("state");
  const seconds = state ? Number(state.dataset.reloadSeconds) : 0;
  if (seconds > 0) {
    window.setTimeout(function () { window.location.reload(); }, seconds * 1000);
  }
})();
