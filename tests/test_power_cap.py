"""The power cap's energy balance (dse.model.power.apply_cap): exact where it has a closed
form, a no-op where it should be, and never longer for a cheaper step."""
import numpy as np

from dse.model import power

KW = dict(peak_tflops=1000.0, mem_tb_s=3.0, tdp_w=700.0, idle_w=100.0, c_compute=1.5, c_memory=0.7)


def _cap(t, t_c, flops, nbytes, cap_w, **over):
    kw = {**KW, **over}
    p = power.gpu_power_w(flops=flops, nbytes=nbytes, time_ms=t, **kw)
    return p, power.apply_cap(p, t, t_c, flops=flops, nbytes=nbytes, cap_w=cap_w, **kw)


def test_pure_compute_step_stretches_by_the_cube_root():
    """No bytes, all time clock-bound: a t / s = e_c s^2, so T = t (activity / a)^(1/3)."""
    t, flops = np.array([2.0, 5.0]), np.array([1.5e12, 2.0e12])      # 1 PFLOPS peak: 1.5 and 2 ms of math
    p, (capped, stretched) = _cap(t, t, flops, 0.0, 400.0)
    activity = KW["c_compute"] * flops / 1e15 / (t * 1e-3)
    a = (400.0 - 100.0) / 600.0
    np.testing.assert_allclose(stretched, t * np.cbrt(np.minimum(activity, 1e9) / a), rtol=1e-12)
    assert (capped == 400.0).all() and (p > 400.0).all()


def test_below_the_cap_or_memory_bound_nothing_stretches():
    t = np.array([1.0, 1.0])
    p, (capped, stretched) = _cap(t, np.array([0.2, 0.0]), np.array([1e10, 1e12]), np.array([1e8, 3e9]),
                                  np.array([700.0, 300.0]))
    assert p[0] < 700.0 and capped[0] == p[0] and stretched[0] == 1.0      # under the cap
    assert p[1] > 300.0 and capped[1] == 300.0 and stretched[1] == 1.0     # nothing clock-bound


def test_a_cheaper_step_is_never_longer_capped():
    """Less time, less clock-bound time, fewer FLOPs or bytes: never a longer capped step."""
    rng = np.random.default_rng(0)
    n = 200_000
    t = rng.uniform(0.05, 50.0, n)
    t_c = t * rng.uniform(0.0, 1.0, n)
    flops = rng.uniform(0.0, 1.0, n) * t * 1e12
    nbytes = rng.uniform(0.0, 1.0, n) * t * 3e9
    cap = rng.uniform(120.0, 700.0, n)
    _, (_, base) = _cap(t, t_c, flops, nbytes, cap)
    f = rng.uniform(0.0, 1.0, (4, n))
    cheaper_c = t_c * f[1]
    cheaper_t = t_c + (t - t_c) * f[0]              # less of the rest, the clock-bound part kept
    for args in ((cheaper_t, t_c, flops, nbytes), (t - (t_c - cheaper_c), cheaper_c, flops, nbytes),
                 (t, t_c, flops * f[2], nbytes), (t, t_c, flops, nbytes * f[3])):
        _, (_, other) = _cap(*args, cap)
        assert (other <= base * (1 + 1e-9)).all(), float(np.max(other / base))
    assert np.isfinite(base).all() and (base >= t * (1 - 1e-12)).all()


def test_a_cap_at_or_below_idle_power_is_refused():
    """75 W idle of 700 W (h100_sxm): a 0.1 cap (70 W) holds no clock; 0.2 (140 W) does."""
    import pytest

    import dse
    from dse.errors import DSEError

    kw = dict(model="meta-llama/Llama-3.1-8B", device="h100_sxm", batch_size=8)
    with pytest.raises(DSEError, match="idle power"):
        dse.evaluate(power_cap=0.1, **kw)
    df = dse.evaluate(power_cap=np.array([0.1, 0.2]), strict=False, **kw)
    assert list(df.feasible) == [False, True] and df.infeasible_code[0] == "structure"
    assert np.isfinite(df.ttft_ms[1]) and df.ttft_ms[1] > dse.evaluate(power_cap=1.0, **kw).ttft_ms[0]
