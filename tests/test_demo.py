"""The main job: ``graft-array demo`` (smoke run on digits) and the training harness behind it."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from graft_array import demo, training  # noqa: E402


def _expected_budget(n, batch, fraction):
    """Samples per epoch when each selection batch keeps round(fraction * n_b) rows."""
    sizes = [min(batch, n - lo) for lo in range(0, n, batch)]
    return sum(min(nb, max(1, int(round(fraction * nb)))) for nb in sizes)


def test_demo_smoke_run(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png, js = tmp_path / "demo.png", tmp_path / "demo.json"
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    rows = demo.run(demo.build_parser().parse_args(
        ["--seeds", "1", "--epochs", "2", "--fractions", "0.3", "--plot", str(png), "--json", str(js), "--quiet",
         "--no-energy", "--methods", *training.METHODS]))
    out = capsys.readouterr().out
    for method in training.METHODS:
        assert any(line.startswith(method + " ") for line in out.splitlines()), (method, out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = json.loads(js.read_text())["runs"]
    assert {r["method"] for r in runs} == set(training.METHODS)
    n = 1347  # digits' training split
    for r in runs:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["wall_s"] > 0
        if r["method"] == "full":
            assert r["samples_trained"] == 2 * n and r["selection_s"] == 0.0
        elif r["method"] == "graft-batch":  # training batches of 64, each keeps round(0.3 * n_b)
            assert r["samples_trained"] == 2 * _expected_budget(n, 64, 0.3)
        elif r["method"] in ("graft", "graft-emb", "crest"):  # the budget: round(0.3 n) per epoch
            assert r["samples_trained"] == 2 * round(0.3 * n), r["method"]
            assert r["selection_s"] > 0
        else:  # the baselines' epoch mode: selection batches of 128, each keeps round(fraction * n_b)
            assert r["samples_trained"] == 2 * _expected_budget(n, 128, 0.3), r["method"]
            assert r["selection_s"] > 0
    assert {row["method"] for row in rows} == set(training.METHODS)
    # nothing global was touched
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state)


def test_runs_are_deterministic_for_a_seed():
    data = training.load_data("digits")
    a = training.run_method("graft", data, epochs=2, seed=3, refresh_every=1)
    b = training.run_method("graft", data, epochs=2, seed=3, refresh_every=1)
    assert a.accuracy == b.accuracy and a.samples_trained == b.samples_trained
    full_a = training.run_method("full", data, epochs=1, seed=3)
    full_b = training.run_method("full", data, epochs=1, seed=3)
    assert full_a.accuracy == full_b.accuracy


def test_energy_columns_from_codecarbon():
    pytest.importorskip("codecarbon")
    data = training.load_data("digits")
    tracker = training.energy_tracker(True, "USA")
    assert tracker.available
    try:
        r = training.run_method("full", data, epochs=1, seed=0, tracker=tracker)
    finally:
        tracker.stop()
    assert r.energy_kwh > 0 and r.co2_kg > 0 and math.isfinite(r.energy_kwh)
    rows = training.summarise([r])
    table = training.format_table(rows, energy=True)
    assert "energy (Wh, est.)" in table and "CO2 (g, est.)" in table


def test_summary_and_table_from_known_numbers():
    R = training.RunResult
    res = [R("full", 1.0, 0, 0.90, 10.0, 0.0, 100), R("full", 1.0, 1, 0.92, 12.0, 0.0, 100),
           R("graft", 0.3, 0, 0.88, 4.0, 1.0, 30), R("graft", 0.3, 1, 0.86, 4.0, 1.0, 30)]
    rows = training.summarise(res)
    g = next(r for r in rows if r["method"] == "graft")
    assert g["acc_mean"] == pytest.approx(0.87) and g["acc_std"] == pytest.approx(np.std([0.88, 0.86], ddof=1))
    assert g["acc_vs_full"] == pytest.approx(-0.04) and g["wall_vs_full"] == pytest.approx(4.0 / 11.0)
    assert g["selection_share"] == pytest.approx(0.25)
    md = training.format_table(rows, markdown=True, energy=False)
    assert "| graft | 0.3 | 87.00 +- 1.41 | -4.00 | 4.00 s | 0.36x | 25.0% |" in md


def test_wall_time_is_the_median_over_seeds():
    """One cold or loaded run (60 s among 10 s runs) moves the mean, not the median the table reports."""
    R = training.RunResult
    res = [R("full", 1.0, s, 0.9, w, 0.0, 100) for s, w in enumerate((10.0, 60.0, 11.0))]
    res += [R("random", 0.3, s, 0.8, w, sel, 30) for s, (w, sel) in enumerate(((3.0, 0.3), (4.0, 2.0), (30.0, 0.3)))]
    rows = {r["method"]: r for r in training.summarise(res)}
    assert rows["full"]["wall_median"] == 11.0 and rows["full"]["wall_mean"] == pytest.approx(27.0)
    assert rows["random"]["wall_vs_full"] == pytest.approx(4.0 / 11.0)
    assert rows["random"]["selection_share"] == pytest.approx(0.1)  # median of 0.1, 0.5, 0.01
    table = training.format_table(list(rows.values()), energy=False)
    assert "wall time (median)" in table and "11.00 s" in table and "0.36x" in table


@pytest.mark.parametrize(
    "argv,match",
    [(["--fractions", "1.5"], r"--fractions must lie in \(0, 1\]"), (["--seeds", "0"], r"--seeds must be >= 1")],
)
def test_demo_bad_arguments(argv, match):
    with pytest.raises(SystemExit, match=match):
        demo.run(demo.build_parser().parse_args(argv + ["--no-energy", "--quiet"]))


def test_bad_method_and_dataset_names():
    with pytest.raises(ValueError, match=r"run_method expects method in .*got 'kmeans'"):
        training.run_method("kmeans", training.load_data("digits"))
    with pytest.raises(ValueError, match=r"load_data expects name 'digits' or 'fashion-mnist'; got 'mnist'"):
        training.load_data("mnist")


def test_command_line_entry_points(tmp_path):
    out = subprocess.run([sys.executable, "-m", "graft_array", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "demo" in out.stdout and "example" in out.stdout
    out = subprocess.run([sys.executable, "-m", "graft_array", "nonsense"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "unknown command 'nonsense'" in out.stderr
    out = subprocess.run([sys.executable, "-m", "graft_array", "example", "--rows", "2000", "--rank", "16"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "log-volume" in out.stdout and "gradient residual" in out.stdout


def test_cli_version_and_messages_name_what_the_user_typed(tmp_path):
    from graft_array import __version__

    def cli(*argv):
        return subprocess.run([sys.executable, "-m", "graft_array", *argv], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)

    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"graft-array {__version__}", out
    out = cli("--no-such-option")  # the demo is the default command, but nobody typed 'demo'
    assert out.returncode == 2 and "graft-array: error: unrecognized arguments: --no-such-option" in out.stderr
    assert "graft-array demo" not in out.stderr
    out = cli("demo", "--no-such-option")
    assert out.returncode == 2 and "graft-array demo: error:" in out.stderr
    out = cli("--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--no-energy", "--quiet")
    assert out.returncode == 1, out
    assert "--data-dir" in out.stderr and "data_dir=" not in out.stderr and "train-images-idx3-ubyte" in out.stderr
    assert out.stderr.startswith("graft-array: "), out.stderr
