"""Draw a results directory as one self-contained, offline HTML file.

`write_report(run_dir)` writes `run_dir/report.html`: plotly.js inlined once (no CDN),
then one div per figure — a scatter per objective pair with the Pareto set on top of a
faint sample of the dominated configurations, a 3-D view of three objectives, parallel
coordinates of the Pareto set, a sortable table, the scenario, the run facts and the
validation figures. Point data travel as float32 typed arrays (base64, as plotly >= 6
writes numpy arrays), large traces are WebGL (Scattergl), and the number of drawn
points is bounded (see `dse.report.figdata`), so the file stays a few MB whatever the
size of the sweep. Figures are plain dicts encoded by `dse.report.figjson` (plotly's
figure classes are never imported); only plotly.js and the palettes come from plotly.
"""
from __future__ import annotations

import base64
import html as _html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from dse.io import write_text
from dse.report import figdata as fd
from dse.report.figjson import fig_json, figure, script_json, trace
from dse.report import rundata
from dse.schema import metric_label
from dse.schema import METRIC_INFO

__all__ = ["write_report", "scatter_figure", "parcoords_figure", "store_script", "render"]

REPORT_HTML = "report.html"
GL_THRESHOLD = 1000   # a trace with more points than this is drawn with WebGL
FIG_CONFIG = {"displaylogo": False, "responsive": True}


def write_report(run_dir: str | Path, *, out: str | Path | None = None, configs: Any = None, **load_kw: Any) -> Path:
    """Build the report of a results directory; returns the path written (atomically).
    configs: configs.parquet's table when the caller holds it (a sweep that just wrote it)."""
    rd = rundata.load_run(run_dir, configs=configs, **load_kw)
    page = render(rd)
    return write_text(Path(out) if out is not None else Path(run_dir) / REPORT_HTML, page)


# ----------------------------------------------------------------------------- figures

def _palette(n: int) -> list[str]:
    from plotly import colors    # the palettes only (plotly.graph_objects is not needed: figures are dicts)

    q = colors.qualitative
    base = q.Plotly if n <= 10 else q.Dark24 if n <= 24 else q.Alphabet
    return [base[i % len(base)] for i in range(max(n, 1))]


def _hovertemplate(metrics: list[str]) -> str:
    lines = ["%{text}"]
    for i, m in enumerate(metrics):
        info = METRIC_INFO.get(m)
        short, unit = (info.label, info.unit) if info else (m, "")
        lines.append(f"{short}: %{{customdata[{i}]:,.4~r}}{(' ' + unit) if unit else ''}")
    return "<br>".join(lines)


def _axis_title(o: fd.Objective) -> str:
    return f"{o.label} {o.arrow}"


def scatter_figure(sd: fd.ScatterData, groups: list[str], hover_metrics: list[str]) -> dict[str, Any]:
    """A 2-D (two axes) or 3-D (three) scatter of one ScatterData. Hover text and
    metrics are not in the figure: traces name their point set in meta.key and the page
    attaches the shared arrays (see `store_script`)."""
    colours = dict(zip(groups, _palette(len(groups))))
    three = len(sd.axes) == 3
    n_bg = sum(len(s.x) for s in sd.series if s.role in ("dominated", "infeasible"))
    n_par = sum(len(s.x) for s in sd.series if s.role == "pareto")
    tmpl = _hovertemplate(hover_metrics)
    traces: list[dict[str, Any]] = []
    with_pareto = {s.group for s in sd.series if s.role == "pareto"}
    rank = {g: 10 * (i + 1) for i, g in enumerate(groups)}  # legend in group order
    for s in sd.series:
        meta = {"role": s.role, "group": s.group, "key": s.key}
        common: dict[str, Any] = dict(x=s.x, y=s.y, meta=meta, legendrank=rank.get(s.group, 10_000))
        if three:
            common["z"] = s.z
        if s.role == "front":
            traces.append(trace("scatter", **common, mode="lines", name="front of this pair", hoverinfo="skip",
                                     line=dict(color="rgba(40,40,40,0.55)", width=1.5, dash="dot",
                                               shape="hv" if sd.axes[0].direction == "min" else "vh")))
            continue
        colour = colours.get(s.group, "#999")
        common.update(hovertemplate=tmpl)
        if s.role == "pareto":
            common.update(name=s.group, legendgroup=s.group, hoverlabel=dict(bgcolor=colour))
            if three:
                traces.append(trace("scatter3d", **common, mode="markers", marker=dict(size=4, color=colour)))
            else:
                cls = "scattergl" if n_par > GL_THRESHOLD else "scatter"
                traces.append(trace(cls, **common, mode="markers", **_error_bars(s, colour),
                                  marker=dict(size=8, color=colour, line=dict(color="white", width=1))))
        elif s.role == "dominated":
            lone = s.group not in with_pareto  # no Pareto point: the legend entry goes here
            common.update(name=s.group if lone else f"{s.group} (dominated)", legendgroup=s.group,
                          showlegend=lone, hoverlabel=dict(bgcolor=colour))
            if three:
                traces.append(trace("scatter3d", **common, mode="markers", opacity=0.15, marker=dict(size=2, color=colour)))
            else:
                cls = "scattergl" if n_bg > GL_THRESHOLD else "scatter"
                traces.append(trace(cls, **common, mode="markers", opacity=0.22, marker=dict(size=4, color=colour)))
        else:  # infeasible sample: hidden until clicked in the legend
            common.update(name="infeasible (sample)", visible="legendonly", hoverlabel=dict(bgcolor="#ddd"))
            if three:
                traces.append(trace("scatter3d", **common, mode="markers", opacity=0.3,
                                           marker=dict(size=2, color="#999", symbol="x")))
            else:
                cls = "scattergl" if n_bg > GL_THRESHOLD else "scatter"
                traces.append(trace(cls, **common, mode="markers", opacity=0.35,
                                  marker=dict(size=4, color="#999", symbol="x")))
    layout: dict[str, Any] = dict(hovermode="closest", margin=dict(l=60, r=10, t=40, b=50),
                                  title=dict(text=sd.title, x=0.02, font=dict(size=14)),
                                  legend=dict(itemsizing="constant", font=dict(size=11)),
                                  hoverlabel=dict(align="left", font=dict(size=11)))
    axes = [dict(title=dict(text=_axis_title(o)), **_axis_type(sd, i)) for i, o in enumerate(sd.axes)]
    if three:
        layout["scene"] = {f"{a}axis": ax for a, ax in zip("xyz", axes)}
        layout["margin"] = dict(l=0, r=0, t=40, b=0)
    else:
        layout["xaxis"], layout["yaxis"] = axes
    return figure(traces, layout)


def _error_bars(s: fd.Series, colour: str) -> dict[str, Any]:
    """The p10-p90 interval of a Pareto point as asymmetric error bars (where the run has one)."""
    out: dict[str, Any] = {}
    for axis, band, v in (("error_x", s.x_band, s.x), ("error_y", s.y_band, s.y)):
        if band is not None:
            lo, hi = band
            out[axis] = dict(type="data", symmetric=False, array=np.maximum(hi - v, 0),
                             arrayminus=np.maximum(v - lo, 0), color=colour, thickness=1, width=0)
    return out


def _axis_type(sd: fd.ScatterData, i: int) -> dict[str, Any]:
    """Log or linear, with the range and the 1-2-5 labelled ticks figdata computed."""
    t = sd.ticks[i] if i < len(sd.ticks) else {}
    out: dict[str, Any] = {"type": "log" if sd.log[i] else "linear"}
    if "range" in t:
        out["range"] = t["range"]
    if t.get("tickvals"):
        out.update(tickmode="array", tickvals=t["tickvals"], ticktext=t["ticktext"])
    return out


def parcoords_figure(pc: fd.ParcoordsData) -> dict[str, Any]:
    k = max(len(pc.groups), 1)
    pal = _palette(k)
    scale = []  # one flat band per group, so the line colour is the group's colour
    for i, c in enumerate(pal):
        scale += [[i / k, c], [(i + 1) / k, c]]
    dims = []
    for d in pc.dims:
        dim: dict[str, Any] = dict(label=d.label, values=d.values.astype(np.float32))
        if d.tickvals is not None:
            dim.update(tickvals=d.tickvals, ticktext=d.ticktext)
        dims.append(dim)
    line = dict(color=pc.color.astype(np.float32), colorscale=scale, cmin=-0.5, cmax=k - 0.5)
    return figure([trace("parcoords", dimensions=dims, line=line)], dict(margin=dict(l=70, r=70, t=80, b=30)))


def store_script(sets: list[fd.PointSet]) -> str:
    """The hover text and metrics of every point set, once for the whole page: text as
    string arrays, metrics as base64 little-endian float32 matrices."""
    text = {ps.key: [str(t) for t in ps.text] for ps in sets}
    custom = {ps.key: {"n": int(ps.custom.shape[0]), "k": int(ps.custom.shape[1]),
                       "b": base64.b64encode(np.ascontiguousarray(ps.custom, dtype="<f4").tobytes()).decode()}
              for ps in sets}
    return f"<script>var DSE_STORE={{text:{script_json(text)},custom:{script_json(custom)}}};</script>"


def _fig_html(fig: dict[str, Any], div_id: str, height: str) -> str:
    return (f'<div id="{div_id}" class="plotly-graph-div" style="height:{height};width:100%;"></div>'
            f'<script>dsePlot("{div_id}",{fig_json(fig)});</script>')


_PLOT_JS = """
var DSE_CONFIG = %s, DSE_ROWS = {};
function dseRows(k) {  // float32 matrix -> one Float32Array view per point
  if (!DSE_ROWS[k]) {
    var s = DSE_STORE.custom[k], bin = atob(s.b), u8 = new Uint8Array(bin.length), rows = [];
    for (var i = 0; i < bin.length; i++) u8[i] = bin.charCodeAt(i);
    var f = new Float32Array(u8.buffer);
    for (var j = 0; j < s.n; j++) rows.push(f.subarray(j * s.k, (j + 1) * s.k));
    DSE_ROWS[k] = rows;
  }
  return DSE_ROWS[k];
}
// Figures are drawn when they scroll near the viewport, so the page opens at once; the
// WebGL views (3-D, parallel coordinates) cost the most. dseDrawAll() draws the rest.
var DSE_PENDING = {}, DSE_DRAWN = {};
function dseDraw(id) {
  var fig = DSE_PENDING[id];
  if (!fig) return DSE_DRAWN[id];
  delete DSE_PENDING[id];
  (fig.data || []).forEach(function (t) {
    var k = t.meta && t.meta.key;
    if (k && DSE_STORE.text[k]) { t.text = DSE_STORE.text[k]; t.customdata = dseRows(k); }
  });
  DSE_DRAWN[id] = Plotly.newPlot(id, fig.data, fig.layout || {}, DSE_CONFIG);
  return DSE_DRAWN[id];
}
var DSE_OBSERVER = ('IntersectionObserver' in window) ? new IntersectionObserver(function (entries) {
  entries.forEach(function (e) {
    if (e.isIntersecting) { DSE_OBSERVER.unobserve(e.target); dseDraw(e.target.id); }
  });
}, {rootMargin: '100px'}) : null;
function dsePlot(id, fig) {
  DSE_PENDING[id] = fig;
  if (DSE_OBSERVER) DSE_OBSERVER.observe(document.getElementById(id)); else dseDraw(id);
}
function dseDrawAll() {
  Object.keys(DSE_PENDING).forEach(dseDraw);
  return Promise.all(Object.keys(DSE_DRAWN).map(function (k) { return DSE_DRAWN[k]; }));
}
""" % json.dumps(FIG_CONFIG)


# ----------------------------------------------------------------------------- page

def _esc(v: Any) -> str:
    return _html.escape(str(v), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, float) and not math.isnan(v) and not math.isinf(v) and abs(v) >= 1000:
        return f"{v:,.6g}"
    return fd.fmt_value(v)


def _render_value(v: Any, depth: int = 0) -> str:
    if isinstance(v, dict):
        if not v:
            return "<i>none</i>"
        rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_render_value(x, depth + 1)}</td></tr>" for k, x in v.items())
        return f'<table class="kv">{rows}</table>'
    if isinstance(v, (list, tuple)):
        if all(not isinstance(x, (dict, list, tuple)) for x in v):
            return _esc(", ".join(_fmt(x) for x in v)) if v else "<i>none</i>"
        if depth > 3:
            return f"<pre>{_esc(json.dumps(v, indent=1, default=str))}</pre>"
        return "<ol>" + "".join(f"<li>{_render_value(x, depth + 1)}</li>" for x in v) + "</ol>"
    if v is None:
        return "<i>none</i>"
    return _esc(_fmt(v))


def _table_html(td: fd.TableData) -> str:
    head = "".join(f'<th data-num="{int(n)}" title="click to sort">{_esc(c)}</th>'
                   for c, n in zip(td.columns, td.numeric))
    body = []
    for row in td.rows:
        cells = []
        for v, num in zip(row, td.numeric):
            if num and isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                cells.append(f'<td data-v="{float(v)!r}">{_esc(_fmt(v))}</td>')
            else:
                cells.append(f"<td>{_esc(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = (f"<p class='note'>Showing the first {len(td.rows):,} of {td.n_total:,} Pareto-optimal configurations "
            f"(sorted by the first objective); all of them are in pareto.csv.</p>" if td.n_total > len(td.rows) else "")
    return (f'{note}<div class="tablewrap"><table id="pareto-table" class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f2a44;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px;font-weight:600} header p{margin:4px 0 0;opacity:.85;font-size:13px}
main{padding:12px 24px;max-width:1600px;margin:auto}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;margin:12px 0;padding:10px 14px}
h2{font-size:16px;margin:4px 0 8px}
.facts{display:flex;flex-wrap:wrap;gap:8px}
.fact{background:#f1f4f9;border-radius:5px;padding:6px 10px;font-size:13px}
.fact b{display:block;font-size:16px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:10px}
.note{font-size:12px;color:#666;margin:4px 0}
table.kv{border-collapse:collapse;font-size:13px} table.kv th{text-align:left;vertical-align:top;padding:2px 10px 2px 0;
color:#555;font-weight:500;white-space:nowrap} table.kv td{padding:2px 0}
.tablewrap{max-height:520px;overflow:auto;border:1px solid #e3e3e3}
table.sortable{border-collapse:collapse;font-size:12px;width:100%}
table.sortable th{position:sticky;top:0;background:#eef1f6;cursor:pointer;padding:4px 6px;text-align:left;
white-space:nowrap}
table.sortable th.asc:after{content:' \\25B2'} table.sortable th.desc:after{content:' \\25BC'}
table.sortable td{padding:3px 6px;border-top:1px solid #f0f0f0;white-space:nowrap}
table.sortable td[data-v]{text-align:right;font-variant-numeric:tabular-nums}
table.sortable tr:hover td{background:#fff8e0}
#reason-codes td,#reason-codes th,#reason-texts td,#accuracy td,#accuracy th,table.rec td,table.rec th{padding:2px 10px}
"""

_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (t) {
  t.querySelectorAll('th').forEach(function (th, i) {
    th.addEventListener('click', function () {
      var asc = !th.classList.contains('asc');
      t.querySelectorAll('th').forEach(function (h) { h.classList.remove('asc', 'desc'); });
      th.classList.add(asc ? 'asc' : 'desc');
      var num = th.dataset.num === '1', body = t.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[i], y = b.cells[i], r;
        if (num) { r = parseFloat(x.dataset.v || 'NaN') - parseFloat(y.dataset.v || 'NaN'); if (isNaN(r)) r = 0; }
        else r = x.textContent.localeCompare(y.textContent, undefined, {numeric: true});
        return asc ? r : -r;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


REC_METRICS = ("ttft_ms", "tpot_ms", "tokens_per_s_per_gpu", "tokens_per_s_per_user", "usd_per_mtok",
               "joules_per_token", "num_gpus", "quality_loss", "meets_slo_prob", "cache_hit_rate", "load_imbalance")


def _recommended_html(rd: fd.RunData) -> str:
    rec = rd.recommendation
    head = '<section id="recommended"><h2>Recommended</h2>'
    if not rec:
        return head + "<p class='note'>This run has no recommendation.json.</p></section>"
    if not rec.get("best"):
        return (head + "<p>Nothing meets the SLOs and limits: see <a href='#why-infeasible'>Why infeasible</a>."
                "</p></section>")
    picks = list(rec["best"].values()) + ([rec["balanced"]] if rec.get("balanced") else [])
    rows = []
    for p in picks:
        c = p["configuration"]
        pools = "<br>".join(_esc(_pool_line(x)) for x in c.get("pools", []))
        knobs = ", ".join(f"{k} {_fmt(c[k])}" for k in ("weight_dtype", "kv_dtype", "batch_size", "power_cap",
                                                         "kv_tier", "kv_tier_gb", "routing")
                          if k in c and (not k.startswith(("kv_tier", "routing")) or c[k] not in ("hbm", 0, "")))
        m = p.get("metrics", {})
        figs = "<br>".join(f"{_esc(metric_label(k))}: {_esc(_fmt(v))}{_esc(_band(m, k))}" for k, v in m.items()
                           if v is not None and k in REC_METRICS
                           and not (k in ("cache_hit_rate", "load_imbalance") and v == (k == "load_imbalance")))
        eq = f" ({p['n_equivalent']} equivalent)" if p.get("n_equivalent", 1) > 1 else ""
        binds = "<br>".join(_esc(b) for b in p.get("binds", []))
        rows.append(f"<tr><th>{_esc(p['why'])}{_esc(eq)}</th><td><b>{_esc(c.get('mode', ''))}</b><br>{pools}"
                    f"<br>{_esc(knobs)}</td><td>{figs}</td><td>{binds}</td></tr>")
    return (head + f"<p class='note'>{rec.get('n_choices', 0):,} distinct choices on the front; per objective the best "
            "of them, and the balanced one: nearest the ideal point once every objective is on a log scale and "
            "normalised over the front. Configurations tying on every objective count as one (the simplest "
            "shown).</p><table class='kv rec'><thead><tr><th>choice</th><th>configuration</th><th>metrics</th>"
            "<th>what binds it</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></section>")


def _band(m: dict, k: str) -> str:
    lo, hi = m.get(f"{k}_p10"), m.get(f"{k}_p90")
    return f" (80 %: {_fmt(lo)} to {_fmt(hi)})" if lo is not None and hi is not None else ""


def _pool_line(p: dict) -> str:
    lay = " ".join(f"{k} {p[k]}" for k in ("tp", "pp", "dp", "ep") if k in p and p[k] != 1)
    who = (f"{p['workers']} workers × {p['gpus_per_worker']} × {p['device']}" if p.get("workers", 1) != 1
           else f"{p['gpus']} × {p['device']}")
    return f"{p['role']}: {who}" + (f" ({lay})" if lay else "")


def _infeasible_html(rd: fd.RunData) -> str:
    why = fd.why_infeasible(rd)
    head = '<section id="why-infeasible"><h2>Why infeasible</h2>'
    if not why["by_code"]:
        return head + f"<p class='note'>{rd.n_infeasible:,} infeasible configurations.</p></section>"
    total = sum(n for _, n in why["by_code"]) or 1
    codes = "".join(f"<tr><th>{_esc(k)}</th><td>{n:,}</td><td>{100 * n / total:.1f} %</td></tr>"
                    for k, n in why["by_code"])
    texts = "".join(f"<tr><td>{_esc(t)}</td><td>{n:,}</td></tr>" for t, n in why["by_text"])
    return (head + f"<p class='note'>{rd.n_infeasible:,} of {rd.n_configs:,} configurations are infeasible; per "
            "reason (memory: the weights and activations do not fit; kv_capacity: the batch's KV cache does not; structure: the "
            "layout cannot shard the model; constraint: an SLO or a scenario limit is missed).</p>"
            f"<table class='kv' id='reason-codes'>{codes}</table><h3>Most frequent reasons</h3>"
            f"<table class='kv' id='reason-texts'>{texts}</table></section>")


def _accuracy_html(rd: fd.RunData, f: dict) -> str:
    acc = rundata.shipped_accuracy()
    modes = set(rd.pareto["mode"].astype(str)) if "mode" in rd.pareto.columns and len(rd.pareto) else {"agg"}
    rows = "".join(f"<tr><th>{_esc(g)}</th><td>{e.get('n', '')}</td><td>{_fmt(e.get('ttft_median_ape'))} %</td>"
                   f"<td>{_fmt(e.get('tpot_median_ape'))} %</td></tr>"
                   for g, e in sorted(acc.items()) if g.split("/", 1)[1] in modes)
    body = ("<p class='note'>How far the engine's TTFT and TPOT have been from measured deployments it was not fitted "
            "on: the serving constants fitted on one system's measurements, scored on the other's (median absolute "
            "percentage error; shared/calibration/silicon_h100_b200.csv.gz, measured by NVIDIA AIConfigurator). "
            "Read a predicted figure as this far off, typically; modes without a row here are unvalidated. "
            "The error bars and the p10 / p90 figures are the 80 % interval of each prediction: the range that "
            "held about 80 % of measured values of deployments the interval was not fitted on, on a system the "
            "serving constants were not fitted on (conformalized quantile regression, hardware/intervals.yaml, docs/intervals.md); "
            "meets_slo_prob is the chance both SLOs hold, and a scenario's slo_confidence the chance they "
            "must. On hardware with no measurements the intervals are likely too narrow.</p>"
            "<table class='kv' id='accuracy'><thead><tr><th>system / mode</th><th>rows</th><th>TTFT</th>"
            f"<th>TPOT</th></tr></thead><tbody>{rows}</tbody></table>") if rows else (
            "<p class='note'>No validated error figures ship for the modes shown.</p>")
    if "validation" in f:
        body += "<h3>This run's validation file</h3>" + _render_value(f["validation"])
    return '<section id="model-accuracy"><h2>Model accuracy</h2>' + body + "</section>"


def render(rd: fd.RunData) -> str:
    """The whole page as a string."""
    from plotly.offline import get_plotlyjs

    f = fd.facts(rd)
    scen = f["scenario"]
    title = scen.get("name") or (scen.get("model") if isinstance(scen.get("model"), str) else None) or rd.run_dir.name
    sub = " · ".join(_esc(x) for x in (
        scen.get("model") if isinstance(scen.get("model"), str) else None,
        f"strategy {rd.run['strategy']}" if "strategy" in rd.run else None,
        f"{rd.n_configs:,} configurations" if rd.n_configs else None,
        f"{len(rd.pareto):,} Pareto-optimal") if x)

    parts: list[str] = []
    cards = [("configurations", f"{rd.n_configs:,}"), ("feasible", f"{rd.n_feasible:,}"),
             ("Pareto-optimal", f"{len(rd.pareto):,}")]
    for k, label in (("hypervolume", "hypervolume"), ("eval_seconds", "eval s"), ("wall_seconds", "wall s")):
        if k in rd.run and rd.run[k] is not None:
            cards.append((label, _fmt(rd.run[k])))
    cards.append(("objectives", f["run"]["objectives"]))
    parts.append('<section><div class="facts">' + "".join(
        f'<div class="fact">{_esc(k)}<b>{_esc(v)}</b></div>' for k, v in cards) + "</div>"
        + "".join(f'<p class="note">{_esc(n)}</p>' for n in rd.notes) + "</section>")

    sets = fd.point_sets(rd)
    hm = fd.hover_metrics(rd)
    parts.append(_recommended_html(rd))
    if fd.standard_view_available(rd):
        sd = fd.scatter_data(rd, fd.STANDARD_VIEW, sets)
        parts.append('<section id="standard-view"><h2>Throughput per GPU against speed per user</h2><p class="note">'
                     "The industry's standard view: output tokens per second per GPU against tokens per second each "
                     "user sees; up and to the right is better. Large markers: this run's Pareto set; faint: a sample "
                     "of the other feasible configurations; dotted: the most throughput at each speed per user. "
                     "Colours: the serving device (per role where a mode splits the work).</p>"
                     + _fig_html(scatter_figure(sd, rd.groups, hm), "standard-0", "520px") + "</section>")
    figs = []
    for i, pair in enumerate(fd.objective_pairs(rd.objectives, rd.pareto.columns)):
        sd = fd.scatter_data(rd, pair, sets)
        figs.append(_fig_html(scatter_figure(sd, rd.groups, hm), f"pair-{i}", "470px"))
    parts.append('<section id="objective-pairs"><h2>Pareto fronts</h2><p class="note">Large markers: the '
                 'Pareto-optimal configurations (all of them); faint: a sample of the dominated ones; dotted: the '
                 'front of each pair. Hover a point for its configuration; click a legend entry to hide a group.'
                 '</p><div class="grid">' + "".join(f"<div>{h}</div>" for h in figs) + "</div></section>")
    parts.append(_infeasible_html(rd))
    parts.append(_accuracy_html(rd, f))
    parts.append('<section id="question"><h2>The question</h2>' + _render_value(dict(fd.question(rd))) + "</section>")
    if len(rd.pareto):
        parts.append("<section><h2>Parallel coordinates</h2><p class='note'>The Pareto set over the axes that "
                     "vary in it and the objectives, coloured as above: drag along an axis to keep a range, "
                     "drag an axis title to reorder.</p>"
                     + _fig_html(parcoords_figure(fd.parcoords_data(rd)), "parcoords", "480px") + "</section>")
    parts.append('<section id="pareto-set"><h2>Pareto set</h2>' + _table_html(fd.table_data(rd)) + "</section>")
    parts.append('<section id="run"><h2>Run</h2>' + _render_value(f["run"]) + "</section>")
    if "more" in f:
        parts.append("<section><details><summary>More from run.json</summary>" + _render_value(f["more"])
                     + "</details></section>")

    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>dse report: {_esc(title)}</title><style>{_CSS}</style>"
            f'<script type="text/javascript">{get_plotlyjs()}</script>'
            f"<script>{_PLOT_JS}</script>{store_script(sets)}</head>"
            f"<body><header><h1>dse report: {_esc(title)}</h1><p>{sub}</p></header><main>"
            + "\n".join(parts) + f"</main><script>{_SORT_JS}</script></body></html>\n")


def _frame_html(df, cols: list[str], rows: int = 200) -> str:
    if not len(df):
        return "<p class='note'>none</p>"
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_esc(_fmt(r[c]))}</td>" for c in cols) + "</tr>"
                   for _, r in df.head(rows).iterrows())
    return (f'<div class="tablewrap"><table class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{body}</tbody></table></div>')


def write_comparison(cmp: dict, out: str | Path) -> Path:
    """An HTML page of `dse compare`: the moved recommendations, the fronts of both runs on
    their first objective pair, and what entered and left the front."""
    from plotly.offline import get_plotlyjs

    names = [o["name"] for o in cmp["objectives"]]
    traces, layout = [], {}
    for label, df, colour in (("A: " + Path(cmp["run_a"]).name, cmp["left"], "#c0392b"),
                              ("B: " + Path(cmp["run_b"]).name, cmp["entered"], "#2471a3")):
        if len(df) and len(names) >= 2:
            traces.append(trace("scatter", x=df[names[0]].to_numpy(), y=df[names[1]].to_numpy(), mode="markers",
                                 name=label, marker=dict(size=8, color=colour)))
    if len(names) >= 2:
        layout = dict(title=dict(text="left the front (A) and entered it (B)"),
                      xaxis=dict(title=dict(text=metric_label(names[0])), type="log"),
                      yaxis=dict(title=dict(text=metric_label(names[1])), type="log"))
    fig = figure(traces, layout)
    rec_rows = []
    for r in cmp["recommendations"]:
        figs = "<br>".join(f"{_esc(metric_label(m))}: {_esc(_fmt(va))} → {_esc(_fmt(vb))} ({rel:+.1%})"
                           for m, (va, vb, rel) in sorted(r["deltas"].items()))
        rec_rows.append(f"<tr><th>{_esc(r['pick'])}</th><td>{'moved' if r['changed'] else 'same'}</td>"
                        f"<td>{_esc(_cmp_pick(r['before']))}</td><td>{_esc(_cmp_pick(r['after']))}</td>"
                        f"<td>{figs}</td></tr>")
    show = [c for c in cmp["key_columns"] if any(len(d) and d[c].astype(str).nunique() > 1
                                                 for d in (cmp["entered"], cmp["left"]))][:10] + names
    hv_a, hv_b = cmp["hypervolume_common"]
    body = (f"<section id='summary'><h2>Summary</h2><p>front {cmp['n_front'][0]} → {cmp['n_front'][1]} configurations: "
            f"{len(cmp['entered'])} entered, {len(cmp['left'])} left, {cmp['n_stayed']} stayed. Hypervolume in one "
            f"common box (both fronts' nadir + 10 %, log objectives): A {hv_a:.4f}, B {hv_b:.4f}.</p></section>"
            "<section id='recommendations'><h2>Recommendations</h2><table class='kv'><thead><tr><th>pick</th>"
            "<th></th><th>A</th><th>B</th><th>metrics A → B</th></tr></thead><tbody>" + "".join(rec_rows)
            + "</tbody></table></section>"
            + f"<section><h2>Fronts</h2>{_fig_html(fig, 'compare-0', '480px')}</section>"
            + f"<section id='entered'><h2>Entered the front</h2>{_frame_html(cmp['entered'], show)}</section>"
            + f"<section id='left'><h2>Left the front</h2>{_frame_html(cmp['left'], show)}</section>")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>dse compare</title>'
            f"<style>{_CSS}</style><script type=\"text/javascript\">{get_plotlyjs()}</script>"
            f"<script>{_PLOT_JS}</script></head><body><header><h1>dse compare</h1><p>B = {_esc(cmp['run_b'])} "
            f"against A = {_esc(cmp['run_a'])}</p></header><main>{body}</main><script>{_SORT_JS}</script>"
            "</body></html>\n")
    return write_text(Path(out), page)


def _cmp_pick(p: dict | None) -> str:
    if not p:
        return "(none)"
    c = p["configuration"]
    cap = f", power cap {c['power_cap']:g}" if c.get("power_cap") not in (None, 1, 1.0) else ""
    return f"{c.get('mode')}: " + "; ".join(_pool_line(x) for x in c.get("pools", [])) + \
        f"; {c.get('weight_dtype')}/{c.get('kv_dtype')}, batch {c.get('batch_size')}{cap}"
