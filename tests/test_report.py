"""Sweeps end to end: HParams in each run's own dir, and `trainer report` against the raw event records."""

import json
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2

from tests.conftest import TINY, run_cli
from trainer.config import ConfigError
from trainer.monitoring.report import NO_SCALARS, find_runs, plot, report



def raw_scalars(run_dir):
    """Scalars straight from the event records (no accumulator), each tag's values in step order."""
    out = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "scalars" or v.HasField("simple_value"):
                    value = v.simple_value if v.HasField("simple_value") else float(v.tensor.float_val[0])
                    out.setdefault(v.tag, []).append((event.step, value))
    return {tag: [x for _, x in sorted(vals)] for tag, vals in out.items()}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    out = run_cli("train", "-m", "clip.max_norm=0.5,1,5", "amp=fp16,bf16", *TINY, "trainer.max_steps=6",
                  "trainer.log_every=3", "trainer.eval_every=3", f"hydra.sweep.dir={root}")
    assert out.returncode == 0, out.stderr
    return root


@pytest.mark.slow
def test_report_rows_match_the_event_files(sweep):
    out = run_cli("report", str(sweep), "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == 6
    assert sum(r["best"] for r in rows) == 1
    for row in rows:
        raw = raw_scalars(sweep / row["run"])
        norms = raw["train/grad_norm"]
        assert row["final eval loss"] == pytest.approx(raw["eval/loss"][-1])
        assert row["best eval loss"] == pytest.approx(min(raw["eval/loss"]))
        assert row["final train loss"] == pytest.approx(raw["train/loss"][-1])
        assert row["grad norm mean"] == pytest.approx(sum(norms) / len(norms))
        assert min(norms) <= row["grad norm p95"] <= max(norms)
        assert row["skipped steps"] == raw["train/skipped_steps"][-1]
        assert row["final loss scale"] == raw["train/loss_scale"][-1]
        assert row["tokens/s"] == pytest.approx(sum(raw["perf/tokens_per_sec"]) / 2)
        assert "amp=" in row["overrides"] and "clip.max_norm=" in row["overrides"]
    best = min(rows, key=lambda r: r["best eval loss"])
    assert best["best"]
    table = run_cli("report", str(sweep))
    assert table.returncode == 0 and table.stdout.count("clip.max_norm=") == 6


@pytest.mark.slow
def test_hparams_are_in_each_runs_own_directory(sweep):
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 6
    for job in jobs:
        assert [p for p in job.iterdir() if p.is_dir() and p.name not in (".hydra", "checkpoints")] == []
        acc = EventAccumulator(str(job))
        acc.Reload()
        content = acc.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hp = start.session_start_info.hparams
        assert hp["amp"].string_value in ("fp16", "bf16")
        assert hp["clip.max_norm"].number_value in (0.5, 1.0, 5.0)
        experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
        metrics = {m.name.tag for m in experiment.experiment.metric_infos}
        assert {"hparams/final_eval_loss", "hparams/clip_fraction", "hparams/skipped_steps"} <= metrics
        final = acc.Scalars("hparams/final_eval_loss")[-1].value
        assert math.isclose(final, acc.Scalars("eval/loss")[-1].value, rel_tol=1e-6)


@pytest.mark.slow
def test_report_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "events.out.tfevents.1.host").write_bytes(b"\x00garbage" * 40)
    for path, words in [(tmp_path / "empty", "no TensorBoard events"), (tmp_path / "corrupt", "no training scalars"),
                        (tmp_path / "missing", "no such file")]:
        out = run_cli("report", str(path))
        assert out.returncode == 2
        assert len(out.stderr.strip().splitlines()) == 1 and words in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_plot_is_a_png_of_the_expected_size_with_a_line_per_run(sweep, tmp_path):
    out_png = tmp_path / "sweep.png"
    out = run_cli("report", str(sweep), "--plot", str(out_png))
    assert out.returncode == 0, out.stderr
    data = out_png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1200, 900)
    import matplotlib.image

    pixels = matplotlib.image.imread(out_png)
    assert pixels.shape[:2] == (900, 1200) and pixels.std() > 0.05  # not a blank canvas
    lines = plot([sweep], report([sweep]), tmp_path / "again.png")
    assert lines == {"eval loss": 6, "grad norm before clipping": 6, "grad norm after clipping": 6, "loss scale": 6}


@pytest.mark.slow
def test_optuna_search_minimises_the_final_eval_loss(tmp_path):
    out = run_cli("train", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "clip.max_norm=interval(0.1,5)",
                  *TINY, "trainer.max_steps=6", "trainer.log_every=3", f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    rows = json.loads(run_cli("report", str(tmp_path), "--json").stdout)
    assert len(rows) == 3 and all(r["run"].split("_", 1)[1].startswith("clip.max_norm=") for r in rows)
    best = (tmp_path / "optimization_results.yaml").read_text()
    best_value = float(best.split("best_value:")[1].split()[0])
    assert best_value == pytest.approx(min(r["final eval loss"] for r in rows), rel=1e-6)


@pytest.mark.unit
def test_a_run_without_scalars_is_noted_and_json_has_no_nan(tmp_path, capsys):
    """One run logged (with a non-finite loss scale), one only opened its events file: both listed,
    the empty one noted; --json is valid JSON (NaN and inf are null)."""
    from torch.utils.tensorboard import SummaryWriter

    from trainer.commands import report as report_command

    with SummaryWriter(str(tmp_path / "done")) as w:
        for step, loss in [(1, 3.0), (2, 2.5)]:
            w.add_scalar("train/loss", loss, step)
        w.add_scalar("eval/loss", 2.4, 2)
        w.add_scalar("train/loss_scale", float("inf"), 2)
    SummaryWriter(str(tmp_path / "starting")).close()  # an events file, no scalar yet

    rows = report([tmp_path])
    assert [(r["run"], r["note"]) for r in rows] == [("done", ""), ("starting", NO_SCALARS)]
    assert rows[0]["best"] and rows[0]["final eval loss"] == pytest.approx(2.4)
    report_command.main([str(tmp_path), "--json"])
    parsed = json.loads(capsys.readouterr().out)  # json.loads accepts NaN: check the text has none
    assert parsed[0]["final loss scale"] is None and parsed[1]["final eval loss"] is None
    report_command.main([str(tmp_path)])
    assert f"note: starting: {NO_SCALARS}" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="no training scalars"):  # a tree with no scalars at all
        report([tmp_path / "starting"])


@pytest.mark.unit
def test_plot_without_matplotlib_names_the_install_that_cannot_pull_another_project(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(ConfigError) as e:
        plot([tmp_path], [], tmp_path / "out.png")
    # `trainer[plot]` would install PyPI's unrelated project named trainer
    assert str(e.value) == "--plot needs matplotlib: pip install matplotlib"


@pytest.mark.unit
def test_runs_are_listed_in_the_order_the_sweep_ran_them(tmp_path):
    """Hydra names a sweep's jobs 0_..., 1_..., 10_...: job 10 comes after job 9, not after job 1."""
    names = ["0_lr=0.1", "1_lr=0.3", "2_lr=1", "9_lr=3", "10_lr=10", "11_lr=30"]
    for name in reversed(names):
        (tmp_path / name).mkdir()
        (tmp_path / name / "events.out.tfevents.1.host.1.0").touch()
    assert [run.name for run in find_runs([tmp_path])] == names
