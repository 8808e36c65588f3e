/* A small line chart on <canvas>: axes with "nice" ticks, labels, grid, legend.
 * An ES module: draw(canvas, {series, xLabel, yLabel, empty}); COLORS, the series palette.
 * Each series: {label, color, dash (bool), points: [[x, y], ...]}.
 * The canvas gets data-points (total plotted points) and data-series (series drawn), which
 * tests and assistive summaries read. */

/** Series colours, in the order the views hand them out (blue first: the training loss). */
export const COLORS = ["#1f6feb", "#d1242f", "#1a7f37", "#8250df", "#bc4c00", "#0a7ea4",
  "#bf3989", "#57606a"];

function niceNumber(range, round) {
  const exponent = Math.floor(Math.log10(range));
  const fraction = range / Math.pow(10, exponent);
  let nice;
  if (round) {
    nice = fraction < 1.5 ? 1 : fraction < 3 ? 2 : fraction < 7 ? 5 : 10;
  } else {
    nice = fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10;
  }
  return nice * Math.pow(10, exponent);
}

export function ticks(min, max, count, integer) {
  if (!(max > min)) {
    const pad = Math.abs(min) > 0 ? Math.abs(min) * 0.1 : 1;
    min -= pad;
    max += pad;
  }
  let step = niceNumber(niceNumber(max - min, false) / Math.max(1, count - 1), true);
  if (integer) step = Math.max(1, Math.round(step));
  const start = Math.floor(min / step) * step;
  const end = Math.ceil(max / step) * step;
  const out = [];
  for (let v = start; v <= end + step / 2; v += step) out.push(Number(v.toPrecision(12)));
  return {values: out, min: start, max: end, step: step};
}

function formatTick(value, step) {
  if (step >= 1) return String(Math.round(value));
  const digits = Math.min(6, Math.max(0, -Math.floor(Math.log10(step))));
  return value.toFixed(digits);
}

export function draw(canvas, options) {
  const series = (options.series || []).filter(function (s) { return s.points.length; });
  const total = series.reduce(function (n, s) { return n + s.points.length; }, 0);
  canvas.dataset.points = String(total);
  canvas.dataset.series = String(series.length);

  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(280, canvas.parentElement ? canvas.parentElement.clientWidth : 600);
  const height = options.height || (width < 500 ? 240 : 300);
  canvas.style.width = width + "px";
  canvas.style.height = height + "px";
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const styles = getComputedStyle(canvas);
  const ink = styles.getPropertyValue("--chart-ink").trim() || "#1d2330";
  const grid = styles.getPropertyValue("--chart-grid").trim() || "#e3e7ee";
  ctx.font = "12px system-ui, sans-serif";

  if (!total) {
    ctx.fillStyle = ink;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(options.empty || "No data yet", width / 2, height / 2);
    return;
  }

  let xMin = Infinity, xMax = -Infinity, yMin = Infinity, yMax = -Infinity;
  series.forEach(function (s) {
    s.points.forEach(function (p) {
      xMin = Math.min(xMin, p[0]); xMax = Math.max(xMax, p[0]);
      yMin = Math.min(yMin, p[1]); yMax = Math.max(yMax, p[1]);
    });
  });
  if (options.yMinZero) yMin = Math.min(0, yMin);
  const xt = ticks(xMin, xMax, width < 500 ? 5 : 8, true);
  if (xMax > xMin) {
    // Steps end where training ends: no empty stretch up to the next round tick.
    xt.max = xMax;
    xt.values = xt.values.filter(function (v) { return v <= xMax; });
  }
  const yt = ticks(yMin, yMax, 6, false);

  // Legend rows first: they decide where the plot starts.
  const legendItems = series.map(function (s) { return s; });
  let lx = 56, ly = 16;
  const legendPos = [];
  legendItems.forEach(function (s) {
    const w = 30 + ctx.measureText(s.label).width + 16;
    if (lx + w > width - 8 && lx > 56) { lx = 56; ly += 18; }
    legendPos.push([lx, ly]);
    lx += w;
  });
  const pad = {left: 64, right: 16, top: ly + 18, bottom: 46};
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const sx = function (x) { return pad.left + (x - xt.min) / (xt.max - xt.min || 1) * plotW; };
  const sy = function (y) {
    return pad.top + plotH - (y - yt.min) / (yt.max - yt.min || 1) * plotH;
  };

  // Grid and tick labels.
  ctx.strokeStyle = grid;
  ctx.lineWidth = 1;
  ctx.fillStyle = ink;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  yt.values.forEach(function (v) {
    const y = Math.round(sy(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(pad.left, y); ctx.lineTo(pad.left + plotW, y); ctx.stroke();
    ctx.fillText(formatTick(v, yt.step), pad.left - 6, y);
  });
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  xt.values.forEach(function (v) {
    const x = Math.round(sx(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(x, pad.top); ctx.lineTo(x, pad.top + plotH); ctx.stroke();
    ctx.fillText(formatTick(v, xt.step), x, pad.top + plotH + 6);
  });
  // Axes.
  ctx.strokeStyle = ink;
  ctx.beginPath();
  ctx.moveTo(pad.left + 0.5, pad.top); ctx.lineTo(pad.left + 0.5, pad.top + plotH + 0.5);
  ctx.lineTo(pad.left + plotW, pad.top + plotH + 0.5);
  ctx.stroke();
  // Axis labels.
  ctx.fillText(options.xLabel || "", pad.left + plotW / 2, height - 18);
  ctx.save();
  ctx.translate(14, pad.top + plotH / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.textBaseline = "middle";
  ctx.fillText(options.yLabel || "", 0, 0);
  ctx.restore();

  // Series.
  series.forEach(function (s) {
    ctx.strokeStyle = s.color;
    ctx.fillStyle = s.color;
    ctx.lineWidth = 2;
    ctx.setLineDash(s.dash ? [6, 4] : []);
    ctx.beginPath();
    s.points.forEach(function (p, i) {
      if (i === 0) ctx.moveTo(sx(p[0]), sy(p[1])); else ctx.lineTo(sx(p[0]), sy(p[1]));
    });
    ctx.stroke();
    ctx.setLineDash([]);
    if (s.points.length <= 60) {
      s.points.forEach(function (p) {
        ctx.beginPath(); ctx.arc(sx(p[0]), sy(p[1]), 2.5, 0, Math.PI * 2); ctx.fill();
      });
    }
  });

  // Legend.
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  legendItems.forEach(function (s, i) {
    const p = legendPos[i];
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 2;
    ctx.setLineDash(s.dash ? [6, 4] : []);
    ctx.beginPath(); ctx.moveTo(p[0], p[1]); ctx.lineTo(p[0] + 22, p[1]); ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = ink;
    ctx.fillText(s.label, p[0] + 28, p[1]);
  });
}
