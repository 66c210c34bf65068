"""The report in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`,
installed by .ci/run) driven by selenium. No JavaScript errors, the Pareto plot holds
as many points as pareto.csv has rows, a real mouse move over a Pareto point shows its
configuration, the table sorts; screenshots land in test-artifacts/.
"""
from __future__ import annotations

import base64
import math
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from dse.report.html import write_report
from test_report_data import quickstart_grid, write_results_dir

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="headless Chromium not installed (apt-get install chromium chromium-driver)")

ERROR_HOOK = """
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message || e)); });
window.addEventListener('unhandledrejection', function (e) { window.__errors.push('rejection: ' + String(e.reason)); });
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--enable-unsafe-swiftshader", "--window-size=1400,1000",
                 f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)  # no driver download: Debian's
    driver.set_script_timeout(60)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": ERROR_HOOK})
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    import json

    from dse.io import write_json
    from dse.search.recommend import recommend

    d = write_results_dir(tmp_path_factory.mktemp("report") / "run", quickstart_grid(),
                          validation={"summary": {"ttft_mape": 11.0, "tpot_mape": 7.5}})
    run = json.loads((d / "run.json").read_text())
    write_json(d / "recommendation.json", recommend(pd.read_csv(d / "pareto.csv"), run["objectives"]))
    return write_report(d), pd.read_csv(d / "pareto.csv")


def _wait(driver, js: str, timeout: float = 30.0):
    end = time.time() + timeout
    while time.time() < end:
        v = driver.execute_script(js)
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {js}")


def _js_errors(driver) -> list[str]:
    errors = list(driver.execute_script("return window.__errors || []"))
    errors += [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return errors


COUNT_PARETO = """
var gd = document.getElementById(arguments[0]);
return gd._fullData.filter(function (t) { return t.meta && t.meta.role === 'pareto'; })
                   .reduce(function (n, t) { return n + t._length; }, 0);
"""

# The Pareto point farthest (in pixels) from every other drawn point, so the mouse
# lands on it alone; returns its page coordinates and its configuration text.
PICK_POINT = """
var gd = document.getElementById('pair-0'), fl = gd._fullLayout, xa = fl.xaxis, ya = fl.yaxis;
var r = gd.getBoundingClientRect(), pts = [], best = null;
gd._fullData.forEach(function (t, i) {
  if (!t.visible || t.visible === 'legendonly' || !t.meta || !t.meta.key) return;
  for (var j = 0; j < t._length; j++) {
    pts.push({i: i, j: j, px: xa._offset + xa.l2p(xa.d2l(t.x[j])), py: ya._offset + ya.l2p(ya.d2l(t.y[j])),
              pareto: t.meta.role === 'pareto'});
  }
});
pts.forEach(function (p) {
  if (!p.pareto || p.px < xa._offset + 5 || p.py < ya._offset + 5) return;
  var d = Infinity;
  pts.forEach(function (q) { if (q !== p) d = Math.min(d, Math.hypot(q.px - p.px, q.py - p.py)); });
  if (!best || d > best.d) best = {d: d, p: p};
});
var t = gd._fullData[best.p.i];
return {x: r.left + best.p.px, y: r.top + best.p.py, text: t.text[best.p.j], group: t.meta.group, gap: best.d};
"""


def test_report_in_headless_chromium(browser, report):
    path, pareto = report
    ARTIFACTS.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    browser.get(path.as_uri())
    # a plot draws as soon as it scrolls into view (plots below the fold wait for it)
    browser.execute_script("document.getElementById('standard-0').scrollIntoView()")
    _wait(browser, "var g = document.getElementById('standard-0'); return !!(g && g._fullLayout && g._fullData);")
    browser.execute_script("document.getElementById('pair-0').scrollIntoView()")
    _wait(browser, "var g = document.getElementById('pair-0'); return !!(g && g._fullLayout && g._fullData);")
    opened = time.perf_counter() - t0
    assert _js_errors(browser) == []

    # the Pareto plot holds every row of pareto.csv
    assert browser.execute_script(COUNT_PARETO, "pair-0") == len(pareto)

    # the sections a planner reads, in order: the decision first
    ids = browser.execute_script("return Array.prototype.map.call(document.querySelectorAll('main > section[id]'),"
                                 " function (s) { return s.id; });")
    for want in ("recommended", "standard-view", "objective-pairs", "why-infeasible", "model-accuracy", "question",
                 "pareto-set", "run"):
        assert want in ids, (want, ids)
    assert ids.index("recommended") < ids.index("objective-pairs") < ids.index("why-infeasible") < ids.index("run")
    assert not browser.execute_script("return !!document.getElementById('view-3d')")   # no 3-D scatter

    # log axes carry full labels at 1-2-5 with their unit, never a bare mantissa between decades
    ticks = browser.execute_script("""
        var out = [];
        document.querySelectorAll('#pair-0 .xtick text, #pair-0 .ytick text').forEach(function (t) {
          out.push(t.textContent); });
        return out;""")
    assert len(ticks) >= 4, ticks
    for t in ticks:
        num = t.split(" ")[0].replace("\u2212", "-")
        mult = {"k": 1e3, "M": 1e6, "G": 1e9}.get(num[-1:], 1.0)
        value = float(num.rstrip("kMG")) * mult
        mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
        assert round(mantissa, 6) in (1.0, 2.0, 5.0), t
        assert " " in t, f"tick {t!r} has no unit"
    picks = browser.execute_script("return document.querySelectorAll('#recommended tbody tr').length")
    assert picks >= 3          # one per objective (3) and the balanced one
    browser.execute_script("document.getElementById('recommended').scrollIntoView()")
    browser.save_screenshot(str(ARTIFACTS / "report-recommended.png"))
    browser.execute_script("document.getElementById('why-infeasible').scrollIntoView()")
    browser.save_screenshot(str(ARTIFACTS / "report-infeasible.png"))

    # a real mouse move over an isolated Pareto point shows its configuration
    browser.execute_script("document.getElementById('pair-0').scrollIntoView()")
    pick = browser.execute_script(PICK_POINT)
    assert pick["gap"] > 3
    browser.execute_cdp_cmd("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": pick["x"], "y": pick["y"]})
    label = _wait(browser, "var h = document.querySelector('#pair-0 .hoverlayer .hovertext');"
                           "return h ? h.textContent : '';", timeout=10)
    for line in re.split(r"<br>", re.sub(r"</?b>", "", pick["text"])):
        assert line in label, f"hover label lacks {line!r}: {label!r}"
    assert re.search(r"\d+ (× |GPUs)", label) and "tp " in label and "batch " in label and "bound by" in label
    assert "TPOT:" in label and "cost:" in label and "energy:" in label
    browser.save_screenshot(str(ARTIFACTS / "report.png"))

    # every other view draws without errors and also carries the whole Pareto set
    browser.execute_async_script("""
        var done = arguments[arguments.length - 1];
        dseDrawAll().then(function () { done(); }, function (e) { window.__errors.push(String(e)); done(); });""")
    for fig in ("pair-1", "pair-2", "standard-0"):
        assert browser.execute_script(COUNT_PARETO, fig) == len(pareto), fig
    n_dims = browser.execute_script("return document.getElementById('parcoords')._fullData[0].dimensions.length")
    assert n_dims >= 5
    assert _js_errors(browser) == []

    # the table sorts on a click
    rows = browser.execute_script("return document.querySelectorAll('#pareto-table tbody tr').length")
    assert rows == len(pareto)
    col = browser.execute_script("""
        var ths = document.querySelectorAll('#pareto-table th'), i = -1;
        ths.forEach(function (th, k) { if (th.textContent.indexOf('TPOT') === 0) i = k; });
        ths[i].click(); ths[i].click();  // second click: descending
        return Array.prototype.map.call(document.querySelectorAll('#pareto-table tbody tr'),
                                        function (r) { return parseFloat(r.cells[i].dataset.v); });""")
    assert col == sorted(col, reverse=True)

    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    (ARTIFACTS / "report-full.png").write_bytes(base64.b64decode(shot["data"]))
    print(f"report opened (first plot drawn) in {opened:.1f} s; {len(pareto)} Pareto points; hover: {label[:120]!r}")
