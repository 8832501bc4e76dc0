// The field page: drag on the field to draw the box of a missed white cell. The box is kept
// in the field's own pixels (the SVG's viewBox), whatever size the page shows it at.
(function () {
  "use strict";
  const svg = document.getElementById("field");
  const drawn = document.getElementById("drawn");
  const button = document.getElementById("add-button");
  if (!svg || !drawn || !button) return;
  const width = Number(svg.dataset.width);
  const height = Number(svg.dataset.height);
  const fields = ["x", "y", "w", "h"].map((k) => document.getElementById("box-" + k));
  const size = document.getElementById("box-size");
  let start = null;

  function point(event) {
    const matrix = svg.getScreenCTM().inverse();
    const p = new DOMPoint(event.clientX, event.clientY).matrixTransform(matrix);
    return { x: Math.min(Math.max(p.x, 0), width), y: Math.min(Math.max(p.y, 0), height) };
  }

  function show(a, b) {
    const x = Math.round(Math.min(a.x, b.x));
    const y = Math.round(Math.min(a.y, b.y));
    const w = Math.round(Math.abs(a.x - b.x));
    const h = Math.round(Math.abs(a.y - b.y));
    drawn.setAttribute("x", x);
    drawn.setAttribute("y", y);
    drawn.setAttribute("width", w);
    drawn.setAttribute("height", h);
    drawn.setAttribute("visibility", "visible");
    [x, y, w, h].forEach((v, i) => { fields[i].value = v; });
    button.disabled = w < 8 || h < 8;
    size.textContent = w + "×" + h + " px at (" + x + ", " + y + ")";
  }

  svg.addEventListener("pointerdown", (event) => {
    start = point(event);
    svg.setPointerCapture(event.pointerId);
    event.preventDefault();
  });
  svg.addEventListener("pointermove", (event) => { if (start) show(start, point(event)); });
  svg.addEventListener("pointerup", (event) => {
    if (start) show(start, point(event));
    start = null;
  });
})();
