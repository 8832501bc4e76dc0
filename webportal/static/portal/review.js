// The review gallery: select cells (click toggles, shift-click selects a range, "Select all in
// <class>"), reclassify them with a class button or its number key (0: not classed), and see
// the differential beside the gallery update. One request per action, whatever the number of
// cells. A static file: the Content-Security-Policy allows no inline script.
"use strict";
(function () {
  const root = document.getElementById("review");
  if (!root) { return; }
  const url = root.dataset.reclassifyUrl;
  const csrf = root.dataset.csrf;
  const status = document.getElementById("review-status");
  const counter = document.getElementById("selection-count");
  const side = document.getElementById("live-differential");
  const choices = Array.from(root.querySelectorAll("button.choice"));
  const selected = new Set();
  let anchor = null;
  let busy = false;

  const tiles = () => Array.from(root.querySelectorAll("li.tile"));
  const groupOf = (label) => root.querySelector('section.group[data-label="' + CSS.escape(label) + '"]');

  function setSelected(tile, on) {
    const id = tile.dataset.cell;
    if (on) { selected.add(id); } else { selected.delete(id); }
    tile.classList.toggle("selected", on);
    tile.querySelector("button.pick").setAttribute("aria-pressed", on ? "true" : "false");
  }

  function refreshCounter() {
    const n = selected.size;
    counter.textContent = n ? n + " cell" + (n === 1 ? "" : "s") + " selected" : "No cell selected";
    choices.forEach((button) => { button.disabled = n === 0 || busy; });
  }

  function clearSelection() {
    root.querySelectorAll("li.tile.selected").forEach((tile) => setSelected(tile, false));
    refreshCounter();
  }

  function say(message, isError) {
    status.textContent = message;
    status.classList.toggle("error", Boolean(isError));
  }

  root.addEventListener("click", (event) => {
    const pick = event.target.closest("button.pick");
    if (pick) {
      const tile = pick.closest("li.tile");
      if (event.shiftKey && anchor && anchor !== tile) {
        const all = tiles();
        const [from, to] = [all.indexOf(anchor), all.indexOf(tile)].sort((a, b) => a - b);
        all.slice(from, to + 1).forEach((t) => setSelected(t, true));
      } else {
        setSelected(tile, !tile.classList.contains("selected"));
      }
      anchor = tile;
      refreshCounter();
      return;
    }
    const all = event.target.closest("button.select-all");
    if (all) {
      const group = all.closest("section.group");
      const members = Array.from(group.querySelectorAll("li.tile"));
      const every = members.length > 0 && members.every((t) => t.classList.contains("selected"));
      members.forEach((t) => setSelected(t, !every));
      refreshCounter();
      return;
    }
    const choice = event.target.closest("button.choice");
    if (choice) { reclassify(choice.dataset.label); }
  });

  document.addEventListener("keydown", (event) => {
    if (event.target.closest("input, textarea, select") || event.ctrlKey || event.metaKey || event.altKey) {
      return;
    }
    if (event.key === "Escape") { clearSelection(); return; }
    const choice = choices.find((button) => button.dataset.key === event.key);
    if (choice && selected.size) {
      event.preventDefault();
      reclassify(choice.dataset.label);
    }
  });

  function updateGroups() {
    root.querySelectorAll("section.group").forEach((group) => {
      const n = group.querySelectorAll("li.tile").length;
      group.querySelector(".count").textContent = n;
      group.classList.toggle("empty", n === 0);
    });
  }

  async function reclassify(label) {
    if (busy || !selected.size) { return; }
    busy = true;
    refreshCounter();
    const ids = Array.from(selected, Number);
    say("Saving " + ids.length + " cell" + (ids.length === 1 ? "" : "s") + "…");
    try {
      const response = await fetch(url, {
        method: "POST",
        headers: {"Content-Type": "application/json", "Accept": "application/json", "X-CSRFToken": csrf},
        body: JSON.stringify({cells: ids, label: label}),
        credentials: "same-origin",
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        say(body.error || "Not saved (error " + response.status + ").", true);
        return;
      }
      const target = groupOf(body.label);
      body.cells.forEach((id) => {
        const tile = root.querySelector('li.tile[data-cell="' + id + '"]');
        if (!tile) { return; }
        tile.classList.add("reviewed");
        tile.querySelector(".reviewer").textContent = "✓ " + body.label;
        tile.querySelector("button.pick").setAttribute("aria-label", "Cell " + id + ": " + body.label);
        setSelected(tile, false);
        if (target) { target.querySelector("ul.tiles").appendChild(tile); }
      });
      updateGroups();
      side.innerHTML = body.differential;
      say(body.cells.length + " cell" + (body.cells.length === 1 ? "" : "s") + " → " + body.label +
        (body.hint ? ". " + body.hint : ""));
    } catch (error) {
      say("Not saved: the server could not be reached. Try again.", true);
    } finally {
      busy = false;
      refreshCounter();
    }
  }

  refreshCounter();
})();
