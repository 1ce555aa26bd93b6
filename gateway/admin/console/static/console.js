// Sluice console: draws the charts the server describes in data-chart attributes, with uPlot.
// No inline scripts anywhere (the Content-Security-Policy forbids them): htmx swaps the live panels,
// and this file draws the charts of every panel it swaps in, and keeps a form being edited from being redrawn.
(function () {
  "use strict";

  var PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];

  function fmt(value, unit) {
    if (value === null || value === undefined) return "–";
    if (unit === "ratio" || unit === "share") return (value * 100).toFixed(1) + "%";
    if (Math.abs(value) >= 100) return value.toFixed(0);
    return value.toPrecision(3);
  }

  function draw(el) {
    if (el.dataset.drawn) return;
    el.dataset.drawn = "1";
    var spec;
    try {
      spec = JSON.parse(el.dataset.chart);
    } catch (e) {
      return;
    }
    var hasData = spec.series.some(function (s) {
      return s.values.some(function (v) { return v !== null; });
    });
    if (!hasData) {
      var empty = document.createElement("div");
      empty.className = "chart-empty";
      empty.textContent = spec.small ? "–" : spec.title + ": no data yet";
      el.appendChild(empty);
      return;
    }
    var small = !!spec.small;
    var series = [{}];
    spec.series.forEach(function (s, i) {
      series.push({
        label: s.label,
        stroke: PALETTE[i % PALETTE.length],
        width: small ? 1 : 1.5,
        spanGaps: !!spec.points,
        points: { show: !!spec.points, size: 5 },
        value: function (u, v) { return fmt(v, spec.unit); }
      });
    });
    var opts = {
      width: Math.max(small ? 100 : 260, el.clientWidth || 0),
      height: small ? 36 : 170,
      title: small ? undefined : spec.title,
      // Every figure is >= 0: the y axis starts at zero, and a flat zero line still gets a little room.
      scales: {
        x: { time: true },
        y: {
          range: function (u, min, max) {
            var top = max > 0 ? max * 1.1 : spec.unit === "ratio" || spec.unit === "share" ? 0.05 : 1;
            return [0, top];
          }
        }
      },
      series: series,
      legend: { show: !small },
      cursor: small ? { show: false } : { drag: { x: false, y: false } },
      axes: small
        ? [{ show: false }, { show: false }]
        : [{}, { size: 56, values: function (u, vals) { return vals.map(function (v) { return fmt(v, spec.unit); }); } }]
    };
    var data = [spec.x].concat(spec.series.map(function (s) { return s.values; }));
    new uPlot(opts, data, el);
  }

  function drawAll(root) {
    var charts = (root.querySelectorAll ? root : document).querySelectorAll(".chart[data-chart]");
    Array.prototype.forEach.call(charts, draw);
    if (root.matches && root.matches(".chart[data-chart]")) draw(root);
  }

  // The policy forms are redrawn when the policy changes (the server answers 204 while it has not), but never
  // under the user's hands: not while a field of theirs has the focus, nor once they changed a field and have
  // not yet submitted it successfully.
  function policyForm(el) {
    return el && el.closest ? el.closest("[data-policy-form]") : null;
  }

  function markEdited(event) {
    var panel = policyForm(event.target);
    if (panel) panel.dataset.edited = "1";
  }

  document.addEventListener("input", markEdited, true);
  document.addEventListener("change", markEdited, true);
  document.addEventListener("htmx:beforeRequest", function (event) {
    var elt = event.detail.elt;
    if (!elt.matches || !elt.matches("[data-policy-form]")) return;
    var active = document.activeElement;
    var typing = active && elt.contains(active) && active.matches("input, select, textarea");
    if (elt.dataset.edited || typing) event.preventDefault();
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    var panel = event.detail.elt.matches && event.detail.elt.matches("form") ? policyForm(event.detail.elt) : null;
    if (panel && event.detail.successful) delete panel.dataset.edited;
  });

  document.addEventListener("DOMContentLoaded", function () { drawAll(document); });
  document.addEventListener("htmx:load", function (event) { drawAll(event.detail.elt); });
})();
