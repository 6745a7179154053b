"""`trainer report --stability`: runs grouped by policy, judged against numbers worked out by hand."""

import json
import math

import pytest
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from torch.utils.tensorboard import SummaryWriter

from trainer.commands import report
from trainer.config import ConfigError
from trainer.monitoring import stability

LN100 = math.log(100)  # the initial loss of a 100-token model: what a diverged run counts as


def write_run(path, overrides, lr, seed, losses, evals, max_steps=20, spike_scores=(), extra=None):
    """A run dir as `trainer train -m` leaves it: events (TensorBoard's writer), config.yaml (the
    resolved config) and .hydra/overrides.yaml. Logs at steps 10, 20, ..."""
    path.mkdir(parents=True)
    (path / ".hydra").mkdir()
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (path / "config.yaml").write_text(
        f"model:\n  _target_: trainer.models.GPT\n  vocab_size: 100\noptim:\n  _target_: torch.optim.AdamW\n"
        f"  lr: {lr}\ntrainer:\n  max_steps: {max_steps}\n  seed: {seed}\n  log_every: 10\n")
    writer = SummaryWriter(str(path))
    series = {"train/loss": losses, "eval/loss": evals, "train/spike_score": spike_scores, **(extra or {})}
    for tag, values in series.items():
        for i, v in enumerate(values):
            writer.add_scalar(tag, v, 10 * (i + 1))
    writer.close()


@pytest.fixture
def sweep(tmp_path):
    """Two policies x two LRs x two seeds. clip=none: the LR-1 runs diverge (a NaN loss; a final
    eval loss above log 100); zclip with skip-step: one LR-1 run stopped at step 10 of 20."""
    none, zclip = ["clip=none", "+recipes=stability"], ["clip=zclip", "guard.skip=true", "+recipes=stability"]
    runs = [
        (none, 0.001, 0, [4.0, 3.0], [3.5, 3.2], {"clip/lr_scale": [1.0, 0.5], "clip/max_norm": [1.0, 2.0]}),
        (none, 0.001, 1, [4.0, 3.1], [3.4, 3.3], {}),
        (none, 1.0, 0, [9.0, math.nan], [6.0, 5.0], {}),
        (none, 1.0, 1, [5.0, 4.8], [4.9, 4.7], {}),
        (zclip, 0.001, 0, [4.0, 3.0], [3.4, 3.1], {"train/skipped_spikes": [1, 2]}),
        (zclip, 0.001, 1, [4.0, 3.0], [3.4, 3.0], {"train/skipped_spikes": [0, 1]}),
        (zclip, 1.0, 0, [4.5, 3.9], [3.9, 3.6], {"train/skipped_steps": [0, 3]}),
        (zclip, 1.0, 1, [4.2], [3.9], {}),
    ]
    for i, (overrides, lr, seed, losses, evals, extra) in enumerate(runs):
        swept = [f"optim.lr={lr}", f"trainer.seed={seed}"]
        # jobs 0, 3, ..., 21: job 12 sorts after job 9, as the sweep ran them
        write_run(tmp_path / f"{3 * i}_run", overrides[:1] + swept + overrides[1:], lr, seed, losses, evals,
                  spike_scores=[0.1, 0.2][:len(losses)], extra=extra)
    return tmp_path


@pytest.mark.unit
def test_each_policy_row_matches_the_hand_computed_numbers(sweep):
    outcomes, empty = stability.outcomes([sweep])
    assert empty == []
    assert [o.diverged for o in outcomes] == [False, False, True, True, False, False, False, True]
    assert stability.shared(outcomes) == ["+recipes=stability"]
    none, zclip = stability.policies(outcomes)
    assert none["policy"] == "clip=none" and zclip["policy"] == "clip=zclip guard.skip=true"
    assert (none["runs"], none["diverged"], zclip["runs"], zclip["diverged"]) == (4, 2, 4, 1)
    # spike score 0.1 over steps 1-10 is 1 step, 0.2 over 11-20 is 2: 3 per whole run, 1 for the stopped one
    assert (none["spikes"], zclip["spikes"]) == (12, 10)
    assert none["spike score"] == pytest.approx(12 / 80) and zclip["spike score"] == pytest.approx(10 / 70)
    # a diverged run's final loss is log(100)
    assert none["final eval loss"] == pytest.approx((3.2 + 3.3 + LN100 + LN100) / 4)
    assert zclip["final eval loss"] == pytest.approx((3.1 + 3.0 + 3.6 + LN100) / 4)
    assert (none["best eval loss"], zclip["best eval loss"]) == (pytest.approx(3.2), pytest.approx(3.0))
    # per seed, the LR-1 final minus the LR-0.001 final; then the mean over the two seeds
    assert none["LR sensitivity"] == pytest.approx(((LN100 - 3.2) + (LN100 - 3.3)) / 2)
    assert zclip["LR sensitivity"] == pytest.approx(((3.6 - 3.1) + (LN100 - 3.0)) / 2)
    assert (none["LR cuts"], none["threshold moves"], zclip["LR cuts"], zclip["threshold moves"]) == (1, 1, 0, 0)
    assert (zclip["skipped spikes"], zclip["skipped"], none["skipped spikes"]) == (3, 3, 0)
    assert none["learning rates"] == [0.001, 1.0] and none["seeds"] == [0, 1]


@pytest.mark.unit
def test_json_and_the_table_from_the_command(sweep, capsys):
    report.main(["--stability", str(sweep), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [(r["policy"], r["diverged"]) for r in rows] == [("clip=none", 2), ("clip=zclip guard.skip=true", 1)]
    report.main(["--stability", str(sweep)])
    table = capsys.readouterr().out
    assert "8 runs, LR 0.001, 1 x seeds 0, 1, all with +recipes=stability" in table
    assert "clip=zclip guard.skip=true" in table


@pytest.mark.unit
def test_a_run_without_scalars_yet_is_left_out_with_a_note(sweep, capsys):
    """A sweep still running: its newest job has an events file but no scalars yet."""
    (sweep / "24_run").mkdir()
    SummaryWriter(str(sweep / "24_run")).close()
    report.main(["--stability", str(sweep), "--json"])
    out = capsys.readouterr()
    assert sum(r["runs"] for r in json.loads(out.out)) == 8
    assert "note: 24_run: no training scalars yet" in out.err


@pytest.mark.unit
def test_a_rolled_back_run_reads_its_redone_steps_without_a_warning(sweep, caplog):
    """A rollback (guard.spike) logs steps 10 and 20 again, from the checkpoint: the report takes the
    redone values, and TensorBoard's reader does not warn about "a TensorFlow restart"."""
    writer = SummaryWriter(str(sweep / "0_run"))
    # what Logger.restarted_at(0) writes: TensorBoard's own mark that the steps after 0 are redone
    writer.file_writer.add_event(Event(step=1, session_log=SessionLog(status=SessionLog.START)))
    for step, loss in [(10, 3.9), (20, 2.9)]:
        writer.add_scalar("train/loss", loss, step)
    writer.add_scalar("eval/loss", 3.1, 20)
    writer.close()
    outcomes, _ = stability.outcomes([sweep])
    assert outcomes[0].final_eval == pytest.approx(3.1)
    assert not [r for r in caplog.records if "restart" in r.getMessage()]  # the CLI prints them on stderr


@pytest.mark.unit
def test_a_run_without_its_config_is_one_error_naming_the_file(sweep):
    (sweep / "9_run" / "config.yaml").unlink()
    with pytest.raises(ConfigError, match=r"9_run/config.yaml: missing; --stability reads"):
        stability.outcomes([sweep])
    with pytest.raises(ConfigError, match="--plot draws per-run curves"):
        report.main(["--stability", str(sweep), "--plot", str(sweep / "x.png")])
