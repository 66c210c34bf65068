"""Faults: a sweep killed (SIGKILL, in a subprocess) at a random point resumes to exactly
the uninterrupted result; a full disk, a second writer, concurrent Optuna workers, a
corrupt part file or checkpoint, a tampered run directory and ordinary mistakes give one
line, never a traceback or a half-written result.

Kill points are random; the seed is printed and DSE_FAULT_SEED=N replays one.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dse.errors import DSEError
from dse.search import nsga2
from dse.search.run import default_out, sweep
from dse.search.space import load_space
from dse.search.store import MANIFEST, verify_run_dir
from test_search_sweep import MEDIUM, SMALL, stop_after

SEED = int(os.environ.get("DSE_FAULT_SEED", time.time_ns() % 100_000))
RNG = random.Random(SEED)
print(f"test_faults: DSE_FAULT_SEED={SEED}")
# the CLI in a fresh interpreter; nsga2 checkpoints every generation so a kill lands between checkpoints
CLI = ("import sys, dse.search.nsga2 as n; n.CHECKPOINT_SECONDS = 0.0; from dse.cli import main; "
       "sys.exit(main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def spaces(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("spaces")
    out = {}
    for name, data in (("small", SMALL), ("medium", MEDIUM)):
        out[name] = d / f"{name}.yaml"
        out[name].write_text(yaml.safe_dump(data))
    return out


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLI, *args, "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def kill_when(proc: subprocess.Popen, ready, delay: float, timeout: float = 60.0) -> int:
    """SIGKILL the process `delay` seconds after ready() first holds; its return code."""
    end = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.003)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode


def same_results(a: Path, b: Path) -> None:
    """Identical configurations (every column, in order) and Pareto sets."""
    pd.testing.assert_frame_equal(pd.read_parquet(a / "configs.parquet"), pd.read_parquet(b / "configs.parquet"))
    pd.testing.assert_frame_equal(pd.read_csv(a / "pareto.csv"), pd.read_csv(b / "pareto.csv"))
    ra, rb = (json.loads((d / "run.json").read_text()) for d in (a, b))
    for key in ("n_evaluated", "n_configs", "n_feasible", "n_pareto", "hypervolume"):
        assert ra[key] == rb[key], key
    verify_run_dir(a)
    verify_run_dir(b)


def no_temporaries(d: Path) -> None:
    assert not [p for p in d.rglob("*.tmp")], sorted(map(str, d.rglob("*.tmp")))


# ----------------------------------------------------------------------------- SIGKILL, resume

def test_grid_killed_at_a_random_chunk_resumes_exactly(spaces, tmp_path):
    ref = sweep(spaces["small"], strategy="grid", chunk_size=8, out=tmp_path / "ref")
    out = tmp_path / "cut"
    k = RNG.randint(1, 20)
    rc = kill_when(cli("sweep", str(spaces["small"]), "--out", str(out), "--chunk-size", "8"),
                   lambda: len(list((out / "state" / "parts").glob("*.parquet"))) >= k, RNG.uniform(0, 0.02))
    assert rc == -signal.SIGKILL, f"the run was not interrupted (seed {SEED})"
    assert not (out / MANIFEST).exists()
    with pytest.raises(DSEError, match="unfinished run"):
        verify_run_dir(out)                                      # `dse report` refuses it
    res = sweep(spaces["small"], strategy="grid", chunk_size=8, out=out)
    assert res.run["resumed"] and res.run["settings"]["chunks_resumed"] >= 1
    same_results(out, ref.run_dir)
    no_temporaries(out)


def test_nsga2_killed_at_a_random_generation_resumes_exactly(spaces, tmp_path, monkeypatch):
    monkeypatch.setattr(nsga2, "CHECKPOINT_SECONDS", 0.0)
    opts = dict(strategy="nsga2", budget=2000, pop_size=20, seed=5)
    ref = sweep(spaces["medium"], out=tmp_path / "ref", **opts)
    assert ref.run["settings"]["stopped"] == "converged"         # the convergence state must survive too
    out = tmp_path / "cut"
    proc = cli("sweep", str(spaces["medium"]), "--out", str(out), "--strategy", "nsga2", "--budget", "2000",
               "--pop-size", "20", "--seed", "5")
    ckpt = out / "state" / "checkpoint.pkl"
    end = time.monotonic() + 60
    while not ckpt.is_file() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.003)
    # a second writer on the same --out is refused while the first holds the lock
    with pytest.raises(DSEError, match=r"another dse process \(pid \d+\) is writing this run directory"):
        sweep(spaces["medium"], out=out, **opts)
    rc = kill_when(proc, lambda: True, RNG.uniform(0, 1.0))
    assert rc == -signal.SIGKILL, f"the run was not interrupted (seed {SEED})"
    res = sweep(spaces["medium"], out=out, **opts)
    assert res.run["resumed"] and res.run["settings"]["stopped"] == "converged"
    same_results(out, ref.run_dir)
    no_temporaries(out)


def test_optuna_killed_mid_batch_resumes_to_a_valid_study(spaces, tmp_path):
    import optuna

    out = tmp_path / "cut"
    journal = out / "study.journal"
    rc = kill_when(cli("sweep", str(spaces["small"]), "--out", str(out), "--strategy", "optuna", "--budget", "100",
                       "--pop-size", "20", "--seed", "0"),
                   lambda: journal.is_file() and journal.stat().st_size > 20_000, RNG.uniform(0, 0.3))
    assert rc == -signal.SIGKILL, f"the run was not interrupted (seed {SEED})"
    res = sweep(spaces["small"], strategy="optuna", budget=100, pop_size=20, seed=0, out=out)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=res.run["settings"]["study_name"], storage=storage)
    states = [t.state for t in study.trials]
    S = optuna.trial.TrialState
    assert states.count(S.COMPLETE) == res.run["n_evaluated"] == 100
    assert states.count(S.RUNNING) == 0 and states.count(S.WAITING) == 0
    retried = [t for t in study.trials if "failed_trial" in t.system_attrs]
    assert len(retried) == states.count(S.FAIL) == res.run["settings"]["stale_trials_retried"]
    assert all(t.state == S.COMPLETE for t in retried)           # re-asked with the same parameters
    failed = {t.number: t.params for t in study.trials if t.state == S.FAIL}
    for t in retried:   # what the killed trial had suggested is kept (a trial killed inside ask has less)
        assert failed[t.system_attrs["failed_trial"]].items() <= t.params.items()
    df = res.configs()
    assert len(df) == res.run["settings"]["distinct_configurations"] and df["config_id"].is_unique
    verify_run_dir(out)


def test_two_optuna_workers_on_one_fresh_sqlite_file(spaces, tmp_path):
    import optuna

    shm = Path("/dev/shm")        # SQLite commits every write: on a disk that is seconds of fsync
    db = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path)) / "study.db"
    url = f"sqlite:///{db}"
    procs = [cli("sweep", str(spaces["small"]), "--out", str(tmp_path / f"w{i}"), "--strategy", "optuna",
                 "--budget", "20", "--pop-size", "10", "--storage", url) for i in range(2)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    name = json.loads((tmp_path / "w0" / "run.json").read_text())["settings"]["study_name"]
    study = optuna.load_study(study_name=name, storage=url)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 20
    assert optuna.trial.TrialState.RUNNING not in states
    shutil.rmtree(db.parent, ignore_errors=True)


# ----------------------------------------------------------------------------- disk and files

def test_full_disk_is_one_line_and_resumable(spaces, tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = mnt / "run"
        with pytest.raises(DSEError, match="No space left on device while writing the run") as info:
            sweep(spaces["small"], strategy="grid", chunk_size=50, out=out)
        assert "\n" not in str(info.value)
        no_temporaries(out)
        assert not (out / MANIFEST).exists() and not (out / "configs.parquet").exists()
        subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)
        res = sweep(spaces["small"], strategy="grid", chunk_size=50, out=out)
        assert res.run["resumed"] and res.run["settings"]["chunks_resumed"] >= 1
        ref = sweep(spaces["small"], strategy="grid", chunk_size=50, out=tmp_path / "ref")
        same_results(out, ref.run_dir)
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_corrupt_part_file_is_discarded_and_recomputed(spaces, tmp_path, capsys):
    ref = sweep(spaces["small"], strategy="grid", chunk_size=50, out=tmp_path / "ref")
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        sweep(spaces["small"], strategy="grid", chunk_size=50, out=out, progress=stop_after(3))
    part = sorted((out / "state" / "parts").glob("*.parquet"))[1]
    part.write_bytes(b"PAR1 not really parquet")
    (out / ".configs.parquet.x1y2.tmp").write_bytes(b"left by a SIGKILL in finalize")
    res = sweep(spaces["small"], strategy="grid", chunk_size=50, out=out)
    err = capsys.readouterr().err
    assert f"{part}: unreadable part file" in err and "it will be recomputed" in err
    assert res.run["settings"]["chunks_resumed"] == 2
    same_results(out, ref.run_dir)
    no_temporaries(out)


def test_corrupt_checkpoint_restarts_to_the_same_result(spaces, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(nsga2, "CHECKPOINT_SECONDS", 0.0)
    opts = dict(strategy="nsga2", budget=120, pop_size=20, seed=2, tol=0)
    ref = sweep(spaces["small"], out=tmp_path / "ref", **opts)
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        sweep(spaces["small"], out=out, progress=stop_after(3), **opts)
    (out / "state" / "checkpoint.pkl").write_bytes(b"\x80\x05garbage")
    sweep(spaces["small"], out=out, **opts)
    assert "unreadable checkpoint" in capsys.readouterr().err
    same_results(out, ref.run_dir)


def test_manifest_mismatch_is_refused_by_report_and_verify(spaces, tmp_path):
    a = sweep(spaces["small"], strategy="nsga2", budget=60, pop_size=20, seed=1, out=tmp_path / "a")
    b = sweep(spaces["small"], strategy="nsga2", budget=60, pop_size=20, seed=2, out=tmp_path / "b")
    manifest = verify_run_dir(a.run_dir)
    assert manifest["fingerprint"] == a.run["fingerprint"] and set(manifest["files"]) == {
        "configs.parquet", "pareto.csv", "recommendation.json", "run.json"}
    # what a kill between file writes would leave: a new configs.parquet beside an old run.json
    shutil.copy(b.run_dir / "configs.parquet", a.run_dir / "configs.parquet")
    with pytest.raises(DSEError, match=r"configs\.parquet: does not match run_manifest\.json"):
        verify_run_dir(a.run_dir)
    proc = subprocess.run([sys.executable, "-c", CLI, "report", str(a.run_dir)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("dse: error: ") and proc.stderr.count("\n") == 1
    assert "configs.parquet: does not match run_manifest.json" in proc.stderr
    (b.run_dir / "run.json").unlink()
    with pytest.raises(DSEError, match=r"run\.json: listed in run_manifest\.json but missing"):
        verify_run_dir(b.run_dir)


# ----------------------------------------------------------------------------- ordinary mistakes

def test_another_scenarios_run_is_kept_without_force(spaces, tmp_path):
    out = tmp_path / "run"
    sweep(spaces["small"], strategy="grid", out=out)
    with pytest.raises(DSEError, match="holds a finished run of another scenario .* use --force"):
        sweep(spaces["medium"], strategy="nsga2", budget=50, pop_size=25, out=out)
    assert verify_run_dir(out)["fingerprint"] == json.loads((out / "run.json").read_text())["fingerprint"]
    res = sweep(spaces["medium"], strategy="nsga2", budget=50, pop_size=25, out=out, force=True)
    assert verify_run_dir(out)["fingerprint"] == res.run["fingerprint"] != "" and res.run["space_size"] == 8192


def test_scenario_names_stay_inside_results(tmp_path):
    for name in ("../../x", "/etc/passwd", "a/b", "..", ""):
        path = default_out(name, root=tmp_path / "results")
        assert path.parent == tmp_path / "results" and path.resolve().is_relative_to(tmp_path / "results")
    first = default_out("same", root=tmp_path / "r")
    first.mkdir(parents=True)
    assert default_out("same", root=tmp_path / "r") != first    # two runs in the same second never share


@pytest.mark.parametrize("args, message", [
    ({"seed": -1}, r"--seed: expected an integer in \[0, 4,294,967,295\], got -1"),
    ({"seed": 2 ** 40}, "--seed: expected an integer in"),
    ({"budget": 0, "strategy": "nsga2"}, "--budget: expected an integer >= 1, got 0"),
    ({"max_evaluations": 100}, "a grid over 216 deployable configurations is more than --max-evaluations 100"),
    ({"chunk_size": 0}, "--chunk-size: expected an integer >= 1, got 0"),      # 0 is no "use the default"
    ({"pop_size": 0, "strategy": "nsga2"}, "--pop-size: expected an integer >= 1, got 0"),
    ({"tol": float("nan"), "strategy": "nsga2"}, "--tol: expected a finite number >= 0, got nan"),
    ({"tol": -1.0, "strategy": "nsga2"}, "--tol: expected a finite number >= 0, got -1.0"),
])
def test_bad_options_are_one_line(spaces, tmp_path, args, message):
    with pytest.raises(DSEError, match=message):
        sweep(spaces["small"], out=tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()                        # refused before anything is written


def test_an_explicit_budget_lifts_the_grid_size_guard(spaces, tmp_path):
    # the guard counts what a grid evaluates: the 216 deployable of the 288 configurations
    assert sweep(spaces["small"], out=tmp_path / "y", max_evaluations=100, budget=216).run["n_configs"] == 216


def test_out_naming_a_file_or_a_read_only_directory(spaces, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DSEError, match="is a file, not a directory"):
        sweep(spaces["small"], out=f)
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)]).returncode:
            pytest.skip("cannot mount a read-only tmpfs here")
    else:
        ro.chmod(0o555)
    try:
        with pytest.raises(DSEError, match=r"--out .*ro/run: cannot write there \((Read-only file system|"
                                           r"Permission denied)\)"):
            sweep(spaces["small"], out=ro / "run")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(ro)])


@pytest.mark.parametrize("body, message", [
    ("axes: {device: [h100_sxm], tp: [3]}\n",
     "nothing.yaml: axes: no configuration of the space can be deployed: every layout breaks a sharding rule "
     "(the first: tp must divide the 64 attention heads)"),
    ("axes: {device: [h100_sxm]}\nmodes: {agg: {tp: [3]}, disagg: {prefill_tp: [3], decode_tp: [3]}}\n",
     "nothing.yaml: modes: no configuration of the space can be deployed"),
    ("axes: {device: [h100_sxm], tp: [1, 2, 4, 8], replicas: [1, 2]}\nconstraints: {gpus: 3}\n",
     "nothing.yaml: constraints.gpus: no configuration of the space uses exactly 3 GPUs (replicas included); "
     "its layouts use 1, 2, 4, 8, 16 GPUs"),
    ("axes: {device: [h100_sxm], tp: [8]}\nconstraints: {max_gpus: 4}\n",
     "nothing.yaml: constraints.max_gpus: no configuration of the space uses at most 4 GPUs (replicas included); "
     "its layouts use 8 GPUs"),
])
def test_a_space_with_nothing_deployable_says_why_before_writing(tmp_path, body, message):
    """A scenario whose every configuration breaks a sharding rule or the GPU budget is refused
    at load time in one line naming the key (before, the sweep ran, wrote an empty run and
    failed on its report with "configs.parquet: no column for objective 'e2e_ms'")."""
    path = tmp_path / "nothing.yaml"
    path.write_text("model: meta-llama/Llama-3.1-70B\n" + body)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "dse.cli", "sweep", str(path), "--out", str(out), "--quiet"],
                          capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert not out.exists()


def test_spaces_beyond_64_bit_ids_are_refused(tmp_path):
    data = {**SMALL, "name": "huge", "workload": {}}
    data["axes"] = {**SMALL["axes"], "batch_size": {"range": [1, 2000, 1]}, "isl": {"range": [100, 2100, 1]},
                    "osl": {"range": [100, 2100, 1]}, "power_cap": {"linspace": [0.5, 1.0, 1000]},
                    "prefix_hit": {"linspace": [0.0, 0.9, 1000]}, "routing_skew": {"linspace": [0.0, 1.0, 100]}}
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(data))
    # refused at the door, whatever the strategy: the size is counted exactly, in Python integers
    with pytest.raises(DSEError, match=r"the space has 12,812,803,200,000,000,000 configurations, more than the "
                                       r"64-bit configuration index holds"):
        load_space(path)
    for strategy in ("grid", "nsga2", "optuna"):
        with pytest.raises(DSEError, match=r"12,812,803,200,000,000,000 configurations"):
            sweep(path, strategy=strategy, budget=100, out=tmp_path / strategy)


# ----------------------------------------------------------------------------- calibrate output
KERNELS = Path(__file__).resolve().parents[2] / "shared" / "calibration" / "kernels" / "h100_sxm"
MEASURED = KERNELS.parents[1] / "silicon_h100_b200.csv.gz"


def test_calibrate_refuses_an_empty_directory_and_keeps_shipped_data(tmp_path, monkeypatch, capsys):
    from dse import cli
    from dse.deploy.kernel_params import calibration_dir

    shipped = calibration_dir() / "h100_sxm.yaml"
    before = shipped.read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["calibrate", "--kernels", str(empty), "--device", "h100_sxm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dse: error: --kernels {empty}: no kernel tables; expected one or more of gemm.csv")
    assert shipped.read_bytes() == before
    if not (KERNELS / "custom_allreduce.csv.gz").is_file():
        pytest.skip("calibration tables not present")
    tables = tmp_path / "k"
    tables.mkdir()
    shutil.copy(KERNELS / "custom_allreduce.csv.gz", tables)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert cli.main(["calibrate", "--kernels", str(tables), "--device", "h100_sxm"]) == 0
    out = capsys.readouterr().out
    assert "custom_allreduce" in out and "median APE %" in out                  # the fit summary
    written = tmp_path / "xdg" / "dse" / "calibration" / "h100_sxm.yaml"
    assert f"wrote {written}" in out
    assert set(yaml.safe_load(written.read_text())["params"]) == {"custom_allreduce"}
    assert cli.main(["calibrate", "--kernels", str(tables), "--device", "h100_sxm",
                     "--out", str(calibration_dir())]) == 2
    err = capsys.readouterr().err
    assert "holds the shipped calibration" in err and "pass --in-place to replace it" in err
    assert shipped.read_bytes() == before


def test_outputs_the_disk_or_path_refuses_and_tampered_runs_for_deploy(spaces, tmp_path, capsys):
    from dse import cli

    run = sweep(spaces["small"], strategy="grid", out=tmp_path / "run").run_dir
    a_dir, a_file = tmp_path / "a_dir", tmp_path / "a_file"
    a_dir.mkdir()
    a_file.write_text("x")
    for argv, flag, path, why in (
            (["report", str(run), "--out", str(a_dir)], "--out", a_dir, "Is a directory"),
            (["compare", str(run), str(run), "--html", str(a_dir)], "--html", a_dir, "Is a directory"),
            (["deploy", str(run), "--out", str(a_file)], "--out", a_file, "Not a directory"),
            (["validate", "--measurements", str(MEASURED), "--json", str(a_dir)], "--json", a_dir, "Is a directory")):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err == f"dse: error: {flag} {path}: cannot write there ({why})\n", err   # was an OSError traceback
    no_temporaries(tmp_path)
    assert cli.main(["report", str(a_dir)]) == 2              # no results at all: the error alone, no notice
    assert capsys.readouterr().err == f"dse: error: {a_dir}/run.json: not found (is this a dse results directory?)\n"
    (run / "run.json").write_text("{not json")      # deploy read it as it was (a JSONDecodeError traceback)
    assert cli.main(["deploy", str(run)]) == 2
    assert "run.json: does not match run_manifest.json" in capsys.readouterr().err
    assert not (run / "deploy").exists()
