/* Tollbooth charts: every <canvas data-chart="ID"> is drawn from the JSON block with that id.
 *
 * Block shape: {"labels": ["2026-11-01", ...], "unit": "usd" | "tokens" | "requests",
 *               "series": [{"label": "gpt-4o", "values": ["0.0123", ...]}, ...]}
 * Values are exact strings (money as stored); they become numbers only to be drawn, and the
 * tooltip shows the exact string. Stacked bars, one stack per day, one colour per series.
 * No inline code anywhere: this file is loaded from /static/ under the page's CSP.
 */
(function () {
  "use strict";
  var PALETTE = ["#2f6fdb", "#e07b39", "#2a9d8f", "#c0392b", "#8e5bd1", "#d4a017",
                 "#4a5568", "#e56b9f", "#3aa655", "#1f9bcf", "#a0522d", "#7f8c8d"];

  function format(unit, text) {
    if (unit === "usd") { return "$" + text; }
    var n = Number(text);
    return isFinite(n) ? n.toLocaleString("en-US") : text;
  }

  function draw(canvas) {
    var block = document.getElementById(canvas.getAttribute("data-chart"));
    if (!block || typeof window.Chart === "undefined") { return; }
    var data = JSON.parse(block.textContent);
    var unit = data.unit || "tokens";
    var datasets = data.series.map(function (s, i) {
      return {
        label: s.label,
        data: s.values.map(Number),
        exact: s.values,
        backgroundColor: PALETTE[i % PALETTE.length],
        borderWidth: 0,
        stack: "total"
      };
    });
    new window.Chart(canvas, {
      type: "bar",
      data: {labels: data.labels, datasets: datasets},
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: {mode: "index", intersect: false},
        plugins: {
          legend: {position: "bottom", labels: {boxWidth: 12, font: {size: 11}}},
          tooltip: {
            callbacks: {
              label: function (ctx) {
                return ctx.dataset.label + ": " + format(unit, ctx.dataset.exact[ctx.dataIndex]);
              }
            }
          }
        },
        scales: {
          x: {stacked: true, grid: {display: false}, ticks: {font: {size: 10}, maxRotation: 0,
              autoSkip: true}},
          y: {stacked: true, beginAtZero: true, ticks: {font: {size: 10},
              callback: function (v) { return unit === "usd" ? "$" + v : v.toLocaleString("en-US"); }}}
        }
      }
    });
  }

  function drawAll() {
    var canvases = document.querySelectorAll("canvas[data-chart]");
    for (var i = 0; i < canvases.length; i++) { draw(canvases[i]); }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawAll);
  } else {
    drawAll();
  }
}());
