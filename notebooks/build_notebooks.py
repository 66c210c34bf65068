"""Write the what-if notebooks from the cell sources below: `python notebooks/build_notebooks.py`.

The notebooks are generated (nbformat) so that their code is reviewable as Python and
they are committed without outputs; tests/test_notebooks.py executes each one top to
bottom (nbclient) and checks that this file and the committed .ipynb agree.
They use the public Python API (`dse.evaluate`) plus the catalogs' read-only data
(`dse.catalog.*`: TDP, facility prices), pandas and plotly.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

PROCUREMENT = [
    ("md", """
# Procurement what-if: H200 vs B200 vs MI355X vs a mix

**Question.** With a power budget and a money budget, which accelerators should we buy to
serve a given mix of workloads, and how robust is that choice to electricity and GPU
prices, to renting instead of owning, and to power caps or power oversubscription?

Everything below comes from `dse.evaluate` (the analytical performance / power / cost
model) plus the read-only hardware catalog (TDP, host power, facility prices). Each
workload is evaluated over a grid of deployments (device, tensor parallelism, batch,
weight format); only configurations that are feasible and meet the workload's SLOs
count. Change the parameters in the next cell and re-run top to bottom.
"""),
    ("code", """
import itertools

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

import dse
from dse.catalog.devices import get_device
from dse.catalog.facility import get_facility
from dse.catalog.systems import get_system

MODEL = "meta-llama/Llama-3.1-70B"
DEVICES = ["h200_sxm", "b200_sxm", "mi355x"]
POWER_BUDGET_W = 1_000_000      # IT power the hall can provision (1 MW)
MONEY_BUDGET_USD = 30_000_000   # capital for accelerators and their share of the hosts
# the workload mix: share of output tokens, prompt / output lengths, SLOs
WORKLOADS = {
    "chat":      dict(share=0.6, isl=1024,  osl=256,  ttft_slo_ms=1000,  tpot_slo_ms=50),
    "rag":       dict(share=0.3, isl=8192,  osl=512,  ttft_slo_ms=3000,  tpot_slo_ms=60),
    "summarise": dict(share=0.1, isl=32768, osl=1024, ttft_slo_ms=15000, tpot_slo_ms=100),
}
AXES = dict(device=DEVICES, tp=[1, 2, 4, 8], batch_size=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
            weight_dtype=["bf16", "fp8"], kv_dtype=["fp8"], own=[True, False])
PRICE_DEVICE = "b200_sxm"       # whose price the flip map sweeps
assert abs(sum(w["share"] for w in WORKLOADS.values()) - 1) < 1e-9
"""),
    ("md", "## 1. Evaluate every workload over the deployment grid"),
    ("code", """
def grid(**axes):
    rows = list(itertools.product(*axes.values()))
    return {k: [r[i] for r in rows] for i, k in enumerate(axes)}

frames = []
for name, w in WORKLOADS.items():
    df = dse.evaluate(model=MODEL, isl=w["isl"], osl=w["osl"], ttft_slo_ms=w["ttft_slo_ms"],
                      tpot_slo_ms=w["tpot_slo_ms"], strict=False, **grid(**AXES))
    frames.append(df.assign(workload=name))
configs = pd.concat(frames, ignore_index=True)
configs["device"] = configs["device"].astype(str)
ok = configs[configs["feasible"] & configs["meets_slo"]].copy()
print(f"{len(configs):,} configurations evaluated, {len(ok):,} feasible and within SLO")
ok.groupby(["workload", "device", "own"]).size().unstack()
"""),
    ("md", """
## 2. The cost arithmetic, so prices can be changed afterwards

For an owned deployment `dse` charges, per hour,

    usd_per_hour = capex_usd / (amortization_years * 8760)                 # accelerators + hosts
                 + power_w / 1000 * pue * usd_per_kwh                       # energy
                 + provisioned_w / 1000 * facility_usd_per_kw_month / 730   # space, per kW provisioned

where `provisioned_w = num_gpus * (TDP + host power per GPU)` (the nameplate) and
`capex_usd`, `power_w` are columns of the evaluation. The energy term is the only one
that depends on the electricity price and the first is the only one that depends on the
hardware price, so a new price needs no new evaluation: scale those terms. The next cell
rebuilds `usd_per_hour` from its terms and checks it against the model's value.
"""),
    ("code", """
fac = get_facility()

def nameplate_w(device, cap=1.0):
    d = get_device(device)
    s = get_system(d.system)
    return cap * d.tdp_w + s.host_power_w / s.gpus_per_node

own = ok[ok["own"]].copy()
own["provisioned_w"] = own["num_gpus"] * own["device"].map({d: nameplate_w(d) for d in DEVICES}).astype(float)
own["capex_h"] = own["capex_usd"] / (fac.amortization_years * 8760)
own["kwh_per_h"] = own["power_w"] / 1000 * fac.pue
own["facility_h"] = own["provisioned_w"] / 1000 * fac.facility_usd_per_kw_month / 730
rebuilt = own["capex_h"] + own["kwh_per_h"] * fac.usd_per_kwh + own["facility_h"]
assert np.allclose(rebuilt, own["usd_per_hour"], rtol=1e-9), "the cost arithmetic no longer matches dse"

def usd_per_mtok(df, *, usd_per_kwh=fac.usd_per_kwh, price_factor=None):
    \"\"\"$/Mtok at another electricity price and hardware price (factor per device).\"\"\"
    f = 1.0 if price_factor is None else df["device"].map(price_factor).fillna(1.0).astype(float)
    usd_h = f * df["capex_h"] + df["kwh_per_h"] * usd_per_kwh + df["facility_h"]
    return usd_h / (df["tokens_per_s"] * 3600) * 1e6

print(f"facility: PUE {fac.pue}, ${fac.usd_per_kwh}/kWh, {fac.amortization_years} years, "
      f"${fac.facility_usd_per_kw_month}/kW-month")
"""),
    ("md", """
## 3. The best configuration per workload and device under the budgets

A fleet of identical replicas of one configuration is limited by whichever budget runs
out first: `replicas = min(money / capex, power / provisioned power)`. The best
configuration of a device for a workload is the one whose fleet serves the most tokens
per second.
"""),
    ("code", """
own["fleet_tokens_per_s"] = np.minimum(MONEY_BUDGET_USD / own["capex_usd"],
                                       POWER_BUDGET_W / own["provisioned_w"]) * own["tokens_per_s"]
own["binding"] = np.where(MONEY_BUDGET_USD / own["capex_usd"] < POWER_BUDGET_W / own["provisioned_w"],
                          "money", "power")
best = own.loc[own.groupby(["workload", "device"])["fleet_tokens_per_s"].idxmax()]
best = best.set_index(["workload", "device"])
cols = ["tp", "batch_size", "weight_dtype", "num_gpus", "tokens_per_s", "tpot_ms", "ttft_ms", "usd_per_mtok",
        "joules_per_token", "fleet_tokens_per_s", "binding"]
best[cols].round(3)
"""),
    ("md", """
## 4. Fleets: one device type, or the best mix

Each workload gets its share of the output tokens. With device `d_w` (and its best
configuration) serving workload `w`, a fleet that serves `T` tokens/s in total needs
`share_w * T / tokens_per_s_w` replicas for `w`, so the largest `T` the budgets allow is

    T = min(money / sum_w share_w * capex_w / tokens_per_s_w,
            power / sum_w share_w * provisioned_w / tokens_per_s_w)

The mix tries every assignment of devices to workloads and keeps the one that serves
the most tokens/s and the one with the lowest $/Mtok (they can differ: the budgets
reward capex- and power-efficiency, $/Mtok also counts energy and the facility).
"""),
    ("code", """
names = list(WORKLOADS)

def fleet(assign):
    rows = [best.loc[(w, d)] for w, d in zip(names, assign)]
    shares = [WORKLOADS[w]["share"] for w in names]
    money = sum(s * r["capex_usd"] / r["tokens_per_s"] for s, r in zip(shares, rows))
    power = sum(s * r["provisioned_w"] / r["tokens_per_s"] for s, r in zip(shares, rows))
    total = min(MONEY_BUDGET_USD / money, POWER_BUDGET_W / power)
    gpus = {}
    for s, r, d in zip(shares, rows, assign):
        gpus[d] = gpus.get(d, 0) + s * total / r["tokens_per_s"] * r["num_gpus"]
    usd_h = sum(s * total / r["tokens_per_s"] * r["usd_per_hour"] for s, r in zip(shares, rows))
    joules = sum(s * r["joules_per_token"] for s, r in zip(shares, rows))
    return dict(option=" / ".join(assign), tokens_per_s=total,
                binding="money" if MONEY_BUDGET_USD / money < POWER_BUDGET_W / power else "power",
                gpus=", ".join(f"{n:,.0f} x {d}" for d, n in gpus.items()),
                usd_per_mtok=usd_h / (total * 3600) * 1e6, joules_per_token=joules)

options = [fleet([d] * len(names)) for d in DEVICES]
mixes = [fleet(a) for a in itertools.product(DEVICES, repeat=len(names))]
most = max(mixes, key=lambda f: f["tokens_per_s"])
cheapest = min(mixes, key=lambda f: f["usd_per_mtok"])
fleets = pd.DataFrame(options + [dict(most, option="most tokens/s: " + most["option"]),
                                 dict(cheapest, option="lowest $/Mtok: " + cheapest["option"])]).set_index("option")
print(f"options listed per workload in the order {names}")
fleets.round(3)
"""),
    ("code", """
fig = px.bar(fleets.reset_index(), x="option", y="tokens_per_s", color="binding",
             title=f"Output tokens/s a ${MONEY_BUDGET_USD / 1e6:.0f}M, {POWER_BUDGET_W / 1e6:.1f} MW fleet serves",
             labels={"tokens_per_s": "tokens/s (whole fleet)", "option": ""})
fig.show()
"""),
    ("md", """
## 5. Where the best choice flips: electricity price x hardware price

For every electricity price and every price of `PRICE_DEVICE` (as a fraction of its
catalog price) the cheapest device per workload is picked on $/Mtok (owned, best
configuration at those prices). The map shows the winning assignment (in workload
order); a colour change is a flip.
"""),
    ("code", """
kwh_prices = np.round(np.linspace(0.03, 0.40, 16), 3)
price_factors = np.round(np.linspace(0.4, 1.6, 13), 2)
cells = []
for p in kwh_prices:
    for f in price_factors:
        cost = own.assign(c=usd_per_mtok(own, usd_per_kwh=p, price_factor={PRICE_DEVICE: f}))
        per_device = cost.groupby(["workload", "device"])["c"].min().unstack()
        winner = per_device.idxmin(axis=1).reindex(names)
        blended = sum(WORKLOADS[w]["share"] * per_device.loc[w].min() for w in names)
        cells.append(dict(usd_per_kwh=p, price_factor=f, choice=" / ".join(winner), usd_per_mtok=blended))
flips = pd.DataFrame(cells)
choices = sorted(flips["choice"].unique())
z = flips.pivot(index="price_factor", columns="usd_per_kwh", values="choice").replace(
    {c: i for i, c in enumerate(choices)}).astype(float)
palette = px.colors.qualitative.Set2
k = len(choices)
scale = [[v, palette[i % len(palette)]] for i in range(k) for v in (i / k, (i + 1) / k)]  # one band per choice
fig = go.Figure(go.Heatmap(z=z.values, x=z.columns, y=z.index, zmin=-0.5, zmax=k - 0.5,
                           colorscale=scale, colorbar=dict(tickvals=list(range(k)), ticktext=choices),
                           hovertemplate="$%{x}/kWh, price x%{y}<br>%{customdata}<extra></extra>",
                           customdata=flips.pivot(index="price_factor", columns="usd_per_kwh", values="choice").values))
fig.update_layout(title=f"Cheapest device per workload ({' / '.join(names)})",
                  xaxis_title="electricity ($/kWh)", yaxis_title=f"{PRICE_DEVICE} price / catalog price")
fig.show()
print(flips.groupby("choice").size().rename("cells"))
"""),
    ("md", """
## 6. Own or rent

Renting bills every GPU-hour at the provider's rate, whatever the load. Owning costs
the capital and facility charge whether or not the GPUs are busy, plus energy roughly in
proportion to the load. At utilisation `u` (the fraction of hours the fleet does useful
work) owning costs `(capex_h + facility_h) / u + energy_h` per useful hour, so it is
cheaper than renting above `u* = (capex_h + facility_h) / (rent_h - energy_h)`.
"""),
    ("code", """
w0 = names[0]
rent = ok[(~ok["own"]) & (ok["workload"] == w0)]
rows = []
for d in DEVICES:
    o = own[(own["workload"] == w0) & (own["device"] == d)].sort_values("usd_per_mtok").iloc[0]
    r = rent[rent["device"] == d].sort_values("usd_per_mtok").iloc[0]
    energy_h = o["kwh_per_h"] * fac.usd_per_kwh
    fixed_h = o["capex_h"] + o["facility_h"]
    rent_h = r["usd_per_hour"] * o["num_gpus"] / r["num_gpus"]  # the same GPU count as the owned config
    u_star = fixed_h / (rent_h - energy_h) if rent_h > energy_h else np.inf
    rows.append(dict(device=d, own_usd_per_mtok=o["usd_per_mtok"], rent_usd_per_mtok=r["usd_per_mtok"],
                     breakeven_utilisation=u_star))
own_rent = pd.DataFrame(rows).set_index("device")
u = np.linspace(0.1, 1.0, 46)
fig = go.Figure()
for d, colour in zip(DEVICES, px.colors.qualitative.Plotly):
    o = own[(own["workload"] == w0) & (own["device"] == d)].sort_values("usd_per_mtok").iloc[0]
    per_mtok_h = o["tokens_per_s"] * 3600 / 1e6
    fig.add_scatter(x=u, y=((o["capex_h"] + o["facility_h"]) / u + o["kwh_per_h"] * fac.usd_per_kwh) / per_mtok_h,
                    name=f"own {d}", line=dict(color=colour))
    fig.add_scatter(x=u, y=np.full_like(u, own_rent.loc[d, "rent_usd_per_mtok"]), name=f"rent {d}",
                    line=dict(dash="dot", color=colour))
fig.update_layout(title=f"{w0}: $/Mtok owned vs rented by utilisation", xaxis_title="utilisation",
                  yaxis_title="$ / Mtok", yaxis_type="log")
fig.show()
own_rent.round(3)
"""),
    ("md", """
## 7. What a power cap or power oversubscription buys

Under a fixed power budget the fleet size is set by the provisioned power per GPU. A
power cap lowers it (the hall is provisioned for `cap x TDP`) at some cost in speed;
oversubscription provisions for the measured average draw (plus headroom) instead of
the nameplate and relies on the rest never peaking together. Both are evaluated on the
best configuration of each device for the first workload.
"""),
    ("code", """
CAPS = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
HEADROOM = 0.10   # oversubscription keeps 10 % above the average draw
w = WORKLOADS[w0]
rows = []
for d in DEVICES:
    b = best.loc[(w0, d)]
    df = dse.evaluate(model=MODEL, device=d, tp=b["tp"], batch_size=b["batch_size"], weight_dtype=b["weight_dtype"],
                      kv_dtype="fp8", isl=w["isl"], osl=w["osl"], ttft_slo_ms=w["ttft_slo_ms"],
                      tpot_slo_ms=w["tpot_slo_ms"], power_cap=CAPS)
    df["provisioned_w"] = [b["num_gpus"] * nameplate_w(d, c) for c in CAPS]
    df["fleet_tokens_per_s"] = POWER_BUDGET_W / df["provisioned_w"] * df["tokens_per_s"]
    # never provision above the nameplate: oversubscription only ever lowers the reservation
    reserved = np.minimum(df["power_w"] * (1 + HEADROOM), df["provisioned_w"])
    df["oversubscribed_fleet_tokens_per_s"] = POWER_BUDGET_W / reserved * df["tokens_per_s"]
    rows.append(df.assign(device=d))
caps = pd.concat(rows, ignore_index=True)
caps["device"] = caps["device"].astype(str)
fig = px.line(caps, x="power_cap", y="fleet_tokens_per_s", color="device", markers=True,
              title=f"{w0}: tokens/s from {POWER_BUDGET_W / 1e6:.1f} MW, provisioned at the cap",
              labels={"power_cap": "power cap (fraction of TDP)", "fleet_tokens_per_s": "fleet tokens/s"})
fig.show()
uncapped = caps[caps["power_cap"] == 1.0].set_index("device")
summary = pd.DataFrame({
    "tpot_ms at cap 0.5": caps[caps["power_cap"] == 0.5].set_index("device")["tpot_ms"],
    "tpot_ms uncapped": uncapped["tpot_ms"],
    "fleet gain, cap 0.5": caps[caps["power_cap"] == 0.5].set_index("device")["fleet_tokens_per_s"]
    / uncapped["fleet_tokens_per_s"],
    "fleet gain, oversubscribed": uncapped["oversubscribed_fleet_tokens_per_s"] / uncapped["fleet_tokens_per_s"],
    "still meets SLO at cap 0.5": caps[caps["power_cap"] == 0.5].set_index("device")["meets_slo"],
})
summary.round(3)
"""),
    ("md", """
## Reading the results

* Section 4 says which single device or mix serves the most tokens within both budgets,
  and which budget binds; Section 5 shows how far prices may move before that choice
  flips.
* Section 6 gives, per device, the utilisation above which owning beats renting.
* Section 7 gives the throughput a power cap or oversubscription adds within the same
  power budget, and the latency it costs.

All numbers are model estimates; prices and some device figures are catalog estimates
(see `hardware/devices/*.yaml` for each figure's source).
"""),
]

OPDISAGG = [
    ("md", """
# Attention/FFN disaggregation: when does it pay off?

**Question.** Attention/FFN disaggregation (AFD) runs the attention layers (and the KV
cache) on one pool of GPUs and the FFN / expert layers on another, ping-ponging
micro-batches between them. Putting attention on a memory-rich device lets a replica
hold more, longer sequences while the FFN pool uses compute-dense devices. When does
that beat ordinary aggregated serving, as a function of context length and batch?

For each (context length, batch) cell the cheapest configuration ($ per million output
tokens, owned) that is feasible and meets the TPOT SLO is found for aggregated serving
and for AFD; the ratio says which wins. Only `dse.evaluate` is used.
"""),
    ("code", """
import itertools

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

import dse

MODEL = "Qwen/Qwen3-235B-A22B"          # MoE: AFD's natural habitat; try "meta-llama/Llama-3.1-70B" too
AGG_DEVICES = ["b200_sxm", "mi355x", "h200_sxm", "h20"]
ATTN_DEVICES = ["mi355x", "mi300x", "h200_sxm", "h20", "b200_sxm"]   # memory-rich options: mi355x 288 GB, mi300x 192 GB
FFN_DEVICES = ["b200_sxm", "h100_sxm", "mi355x"]                     # compute-rich options for the experts
CONTEXTS = [1024, 4096, 16384, 65536]     # prompt length (isl)
BATCHES = [16, 64, 256, 1024]             # concurrent requests per replica
OSL = 512
TPOT_SLO_MS = 60
COMMON = dict(model=MODEL, weight_dtype="fp8", kv_dtype="fp8", osl=OSL, tpot_slo_ms=TPOT_SLO_MS, strict=False)

def grid(**axes):
    rows = list(itertools.product(*axes.values()))
    return {k: [r[i] for r in rows] for i, k in enumerate(axes)}
"""),
    ("md", """
## 1. Aggregated baseline

One pool does everything: attention tensor parallel `tp`, attention data parallel `dp`,
experts spread over all `tp x dp` GPUs (`ep = tp x dp`).
"""),
    ("code", """
a = grid(device=AGG_DEVICES, tp=[1, 2, 4, 8], dp=[1, 2, 4, 8], isl=CONTEXTS, batch_size=BATCHES)
a["ep"] = [t * d for t, d in zip(a["tp"], a["dp"])]
agg = dse.evaluate(mode="agg", **a, **COMMON)
print(f"{len(agg):,} aggregated configurations, {int((agg.feasible & agg.meets_slo).sum()):,} usable")
"""),
    ("md", """
## 2. Attention/FFN disaggregation

`attn_gpus` GPUs of `attn_device` hold attention and the KV cache (attention tensor
parallel `attn_tp`, the rest data parallel); `ffn_gpus` GPUs of `ffn_device` hold the
FFN / experts.
"""),
    ("code", """
f = grid(attn_device=ATTN_DEVICES, ffn_device=FFN_DEVICES, attn_gpus=[2, 4, 8, 16, 32], attn_tp=[1, 2, 4, 8],
         ffn_gpus=[2, 4, 8, 16, 32], isl=CONTEXTS, batch_size=BATCHES)
afd = dse.evaluate(mode="afd", device=f["attn_device"], **f, **COMMON)
print(f"{len(afd):,} AFD configurations, {int((afd.feasible & afd.meets_slo).sum()):,} usable")
"""),
    ("md", "## 3. The cheapest of each per (context, batch), and who wins"),
    ("code", """
def cheapest(df):
    ok = df[df["feasible"] & df["meets_slo"]]
    return ok.loc[ok.groupby(["isl", "batch_size"])["usd_per_mtok"].idxmin()].set_index(["isl", "batch_size"])

A, F = cheapest(agg), cheapest(afd)
cells = pd.MultiIndex.from_product([CONTEXTS, BATCHES], names=["isl", "batch_size"])
cmp_ = pd.DataFrame(index=cells)
cmp_["agg"] = (A["device"].astype(str) + " tp" + A["tp"].astype(int).astype(str)
               + " dp" + A["dp"].astype(int).astype(str))
cmp_["agg_usd_per_mtok"] = A["usd_per_mtok"]
cmp_["afd"] = (F["attn_device"].astype(str) + " x" + F["attn_gpus"].astype(int).astype(str)
               + " (tp" + F["attn_tp"].astype(int).astype(str) + ") + "
               + F["ffn_device"].astype(str) + " x" + F["ffn_gpus"].astype(int).astype(str))
cmp_["afd_usd_per_mtok"] = F["usd_per_mtok"]
cmp_["afd_gain"] = cmp_["agg_usd_per_mtok"] / cmp_["afd_usd_per_mtok"]   # > 1: AFD is cheaper
cmp_["winner"] = np.where(cmp_["afd_gain"] > 1, "afd", np.where(cmp_["afd_gain"].notna(), "agg",
                          np.where(cmp_["agg_usd_per_mtok"].notna(), "agg only", np.where(
                              cmp_["afd_usd_per_mtok"].notna(), "afd only", "neither"))))
cmp_.round(3)
"""),
    ("code", """
gain = cmp_["afd_gain"].unstack("batch_size")
text = cmp_["winner"].unstack("batch_size")
fig = go.Figure(go.Heatmap(
    z=np.log2(gain.values), x=[str(b) for b in gain.columns], y=[str(c) for c in gain.index],
    zmid=0, colorscale="RdBu", text=text.values, texttemplate="%{text}", customdata=gain.values,
    hovertemplate="isl %{y}, batch %{x}<br>agg/afd cost %{customdata:.2f}<extra></extra>",
    colorbar=dict(title="log2(agg $ / afd $)")))
fig.update_layout(title=f"{MODEL}: AFD (attention on {'/'.join(ATTN_DEVICES)}, FFN on {'/'.join(FFN_DEVICES)}) vs aggregated",
                  xaxis_title="batch (concurrent requests)", yaxis_title="context length (isl)")
fig.show()
wins = cmp_[cmp_["winner"].isin(["afd", "afd only"])]
loses = cmp_[cmp_["winner"].isin(["agg", "agg only"])]
print(f"AFD is the cheaper (or the only) way to meet the SLO in {len(wins)} of {len(cmp_)} (context, batch) cells "
      f"for {MODEL}:")
print(wins[["afd", "afd_usd_per_mtok", "agg_usd_per_mtok", "winner"]].round(3).to_string())
print(f"and it does not pay in {len(loses)} cells, where aggregated serving costs "
      f"{(1 / loses['afd_gain']).min():.1f}-{(1 / loses['afd_gain']).max():.1f}x less.")
"""),
    ("md", """
## 4. Which attention device, and why

Per context length, the best AFD configuration for each attention device: what it
costs, and what binds it. A memory-rich attention pool pays off where the KV cache,
not compute, limits how many sequences an aggregated replica can run.
"""),
    ("code", """
ok = afd[afd["feasible"] & afd["meets_slo"]].copy()
ok["attn_device"] = ok["attn_device"].astype(str)
per_dev = ok.loc[ok.groupby(["isl", "attn_device"])["usd_per_mtok"].idxmin()]
per_dev = per_dev[["isl", "attn_device", "attn_gpus", "ffn_gpus", "batch_size", "usd_per_mtok", "tpot_ms",
                   "tokens_per_s_per_gpu", "bottleneck"]]
fig = px.line(per_dev, x="isl", y="usd_per_mtok", color="attn_device", markers=True, log_x=True, log_y=True,
              title="Cheapest AFD configuration per attention device",
              labels={"isl": "context length", "usd_per_mtok": "$ / Mtok"})
best_agg = A.reset_index().groupby("isl")["usd_per_mtok"].min()
fig.add_scatter(x=best_agg.index, y=best_agg.values, name="aggregated (best)", line=dict(dash="dot", color="black"))
fig.show()
per_dev.round(3)
"""),
    ("md", """
## Reading the results

Where it pays: at long contexts and large batches, where an aggregated replica runs out of
KV-cache memory (the "afd only" cells: no aggregated layout meets the SLO at all) or must spread
over many GPUs, a memory-rich attention pool holds the cache while a small FFN pool does the
expert math. Where it does not: at short and medium contexts an aggregated replica on one
memory-rich device is cheaper, by the factor printed above, because AFD pays for two pools and
the activation round trips of every layer. The last table shows what binds the best AFD
deployment of each attention device. Swap `MODEL` for a dense model, or the device lists, and
re-run to see how the frontier moves. All numbers are model estimates (docs/accuracy.md).
"""),
]

KV_TIERS = [
    ("md", """
# KV-cache tiers what-if: where does offloading the prefix cache pay?

**Question.** Multi-turn sessions come back to the same prefix (their history, a shared
system prompt). HBM left after the weights and the running batch holds only so much of
it; a host-DRAM, fabric-attached or NVMe tier holds more, at the price of loading a hit
over a slower link instead of recomputing it. For which context lengths, turns per
session and tier bandwidths is the cheapest deployment meeting the SLOs one that
offloads?

Everything comes from `dse.evaluate`: the hit rate from capacity is an LRU
stack-distance model of the sessions (dse.model.kvcache), the tiers are
hardware/kv_tiers.yaml, and a tier's GB are priced (DRAM, NVMe). Change the parameters
in the next cell and re-run top to bottom.
"""),
    ("code", """
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

import dse
from dse.catalog.kv_tiers import tier_of
from dse.catalog.traces import lru_hit_rate, read_trace, reuse_cdf
from dse.model import kvcache

BASE = dict(model="meta-llama/Llama-3.1-70B", device="h100_sxm", weight_dtype="fp8", kv_dtype="fp8", osl=500,
            system_prompt=2000, think_time_s=30.0, ttft_slo_ms=3000.0, tpot_slo_ms=50.0)
TIERS = {"hbm": 0.0, "host": 200.0, "ssd": 2000.0}        # kv_tier -> GB per GPU given to the cache
CONTEXTS = [4000, 8000, 16000, 32000, 64000]              # mean prompt over a session's turns
TURNS = [1, 2, 4, 8, 16]
LAYOUT = dict(tp=[4, 8], batch_size=[8, 16, 32, 64, 128])


def grid(**axes):
    rows = list(itertools.product(*axes.values()))
    return {k: [r[i] for r in rows] for i, k in enumerate(axes)}


def cheapest(df, by):
    ok = df[df["feasible"] & df["meets_slo"]]
    return ok.loc[ok.groupby(by, observed=True)["usd_per_mtok"].idxmin()]
"""),
    ("md", "## 1. Context length x turns per session"),
    ("code", """
g = grid(isl=CONTEXTS, turns=TURNS, kv_tier=list(TIERS), **LAYOUT)
g["kv_tier_gb"] = [TIERS[t] for t in g["kv_tier"]]
df = dse.evaluate(strict=False, **BASE, **g)
df["kv_tier"] = df["kv_tier"].astype(str)
best = cheapest(df, ["isl", "turns", "kv_tier"])
cost = best.pivot_table(index=["isl", "turns"], columns="kv_tier", values="usd_per_mtok")
hit = best.pivot_table(index=["isl", "turns"], columns="kv_tier", values="cache_hit_rate")
saving = 1.0 - cost[["host", "ssd"]].min(axis=1) / cost["hbm"]
table = pd.DataFrame({"usd_per_mtok hbm": cost["hbm"], "best offload": cost[["host", "ssd"]].idxmin(axis=1),
                      "usd_per_mtok offload": cost[["host", "ssd"]].min(axis=1), "saving": saving,
                      "hit hbm": hit["hbm"], "hit offload": hit[["host", "ssd"]].max(axis=1)})
table.round(3)
"""),
    ("code", """
heat = saving.unstack("turns")
fig = px.imshow(100 * heat, text_auto=".0f", aspect="auto", color_continuous_scale="RdBu", zmin=-30, zmax=30,
                labels=dict(x="turns per session", y="mean prompt (tokens)", color="saving %"),
                title="Cost saving of the best offload tier over HBM only (cheapest config meeting the SLOs)")
fig.show()
"""),
    ("md", """
Single-turn traffic only reuses the system prompt, which HBM holds: a tier adds its price
and no hits (negative saving). With more turns and longer contexts the sessions that are
thinking hold more history than HBM has left, and the tier turns that history into hits.
Compare the hit-rate columns: the cheapest offloading configuration usually runs a larger
batch than the cheapest HBM-only one, whose hit rate would collapse at that batch (the
running batch's KV takes the HBM the cache had).
"""),
    ("md", "## 2. Tier bandwidth"),
    ("code", """
ISL, TURNS_AT = 32000, 8
bw = np.geomspace(0.25, 256, 13)
g = grid(kv_tier_gb_s=list(bw), **LAYOUT)
tiered = dse.evaluate(strict=False, **BASE, isl=ISL, turns=TURNS_AT, kv_tier="ssd", kv_tier_gb=2000.0, **g)
hbm_only = cheapest(dse.evaluate(strict=False, **BASE, isl=ISL, turns=TURNS_AT, **grid(**LAYOUT)).assign(k=0), "k")
by_bw = cheapest(tiered, "kv_tier_gb_s")
fig = go.Figure()
fig.add_scatter(x=by_bw["kv_tier_gb_s"], y=by_bw["usd_per_mtok"], mode="lines+markers", name="2 TB tier per GPU")
fig.add_hline(y=float(hbm_only["usd_per_mtok"].iloc[0]), line_dash="dash", annotation_text="HBM only")
for name, t in (("NVMe (hgx8)", tier_of("h100_sxm", "ssd")), ("PCIe Gen5 host", tier_of("h100_sxm", "host")),
                ("NVLink-C2C host (GB200)", tier_of("gb200", "host"))):
    fig.add_vline(x=t.link_gb_s, line_dash="dot", annotation_text=name)
fig.update_xaxes(type="log", title="tier link, GB/s per GPU")
fig.update_yaxes(title="$/Mtok, cheapest config meeting the SLOs")
fig.update_layout(title=f"Where tier bandwidth starts to matter ({ISL} tokens, {TURNS_AT} turns)")
fig.show()
"""),
    ("md", """
A hit's KV moves layer by layer while the rest of the prompt is computed, so bandwidth
hides until the link saturates (every request's loads share it); below that the load
queue shows in TTFT and the tier stops paying.
"""),
    ("md", "## 3. Is the analytic hit rate right? An exact LRU replay of a real trace"),
    ("code", """
SAMPLE = Path(dse.__file__).resolve().parents[1] / "search_spaces" / "traces" / "mooncake_conversation_400.jsonl"
tr = read_trace(str(SAMPLE))
cdf, prompt, accessed = reuse_cdf(tr, kvcache.GRID)
prof = kvcache.pairs_reuse(cdf=cdf, accessed=accessed, prompt=prompt, replicas=1, p=1.0)
caps = np.geomspace(1e4, 1e7, 10)
check = pd.DataFrame({"capacity_tokens": caps, "lru_replay": [lru_hit_rate(tr, c) for c in caps],
                      "analytic": [float(kvcache.hit_fraction(prof, c)[0]) for c in caps]})
fig = px.line(check, x="capacity_tokens", y=["lru_replay", "analytic"], log_x=True, markers=True,
              title="Mooncake conversation sample (400 requests): hit rate vs cache capacity")
fig.show()
check.round(3)
"""),
]

NOTEBOOKS = {"procurement_whatif.ipynb": PROCUREMENT, "opdisagg_whatif.ipynb": OPDISAGG,
             "kv_tiers_whatif.ipynb": KV_TIERS}


def build(cells) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [new_markdown_cell(src.strip()) if kind == "md" else new_code_cell(src.strip())
                for kind, src in cells]
    for i, c in enumerate(nb.cells):
        c["id"] = f"cell-{i}"  # stable ids: a rebuild changes nothing unless the cells do
    return nb


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(cells), HERE / name)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
