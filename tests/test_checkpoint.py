"""Nothing lost: atomic checkpoints, exact resume after kill -9 and SIGTERM, safe loading."""

import errno
import hashlib
import json
import math
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT, TINY, make_config, read_scalars, run_cli, sigterm_during_step
from trainer import loop
from trainer.checkpointing import checkpoint, export
from trainer.build import build
from trainer.config import ConfigError
from trainer.monitoring.display import Display
from trainer.loop import train
from trainer.preemption import Preempted

LONG = [*TINY, "trainer.max_steps=400", "trainer.log_every=1", "trainer.eval_every=100", "checkpoint.every=7",
        "checkpoint.keep_last=2"]


def start(*args: str) -> subprocess.Popen:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.Popen([sys.executable, "-m", "trainer", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def wait_for_checkpoint(ckpt_dir, proc, timeout=60):
    deadline = time.time() + timeout
    while not checkpoint.checkpoints(ckpt_dir):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def per_step(run_dir, tag):
    return dict(read_scalars(run_dir)[tag])


@pytest.mark.slow
@pytest.mark.parametrize("amp", ["fp32", "fp16"])
def test_kill_9_then_resume_reproduces_the_uninterrupted_run(tmp_path, amp):
    args = [*LONG, f"amp={amp}", "amp.growth_interval=5"] if amp == "fp16" else [*LONG, f"amp={amp}"]
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = start(*args, f"hydra.run.dir={ref_dir}")  # the uninterrupted run, alongside (2 cores)

    proc = start(*args, f"hydra.run.dir={run_dir}")
    wait_for_checkpoint(run_dir / "checkpoints", proc)
    time.sleep(random.uniform(0.0, 0.5))  # a random moment, checkpoint writes included
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    _, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err
    killed_at = max(int(p.stem.split("_")[1]) for p in checkpoint.checkpoints(run_dir / "checkpoints"))
    assert killed_at < 400, "the run finished before it was killed; the test proved nothing"

    resumed = run_cli("train", *args, "checkpoint.resume=auto", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert list((run_dir / "checkpoints").glob(".*")) == []  # a write the kill cut short was cleaned up

    expected, got = per_step(ref_dir, "train/loss"), per_step(run_dir, "train/loss")
    assert sorted(got) == list(range(1, 401))  # TensorBoard sees one value per step: no gap, no duplicate
    for step in range(killed_at + 1, 401):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7, nan_ok=True), step
    assert per_step(run_dir, "train/loss_scale") == per_step(ref_dir, "train/loss_scale")
    if amp == "fp16":
        assert len(set(per_step(ref_dir, "train/loss_scale").values())) > 1  # the scale moved: its state mattered


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_of_the_current_step_and_exits_non_zero(tmp_path):
    proc = start(*LONG, f"hydra.run.dir={tmp_path}")
    wait_for_checkpoint(tmp_path / "checkpoints", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM after step" in err and "checkpoint.resume=auto" in err
    stopped_at = int(err.split("after step ")[1].split(";")[0])
    assert (tmp_path / "checkpoints" / f"step_{stopped_at:08d}.pt").exists()
    assert f"[ERROR] stopped by SIGTERM after step {stopped_at}; checkpoint: " in (tmp_path / "train.log").read_text()

    resumed = run_cli("train", *LONG, "checkpoint.resume=auto", f"hydra.run.dir={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {stopped_at}" in resumed.stdout
    assert f"[INFO] resumed from {tmp_path / 'checkpoints' / f'step_{stopped_at:08d}.pt'} at step {stopped_at}" in (
        tmp_path / "train.log").read_text()
    assert max(per_step(tmp_path, "train/loss")) == 400


@pytest.mark.unit
def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "step_00000001.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": print}, f, protocol=2)  # unpickling would resolve a callable
    torch.save({"hook": subprocess.Popen}, tmp_path / "step_00000002.pt")
    for p in (path, tmp_path / "step_00000002.pt"):
        with pytest.raises(ConfigError, match="refused|not a checkpoint"):
            checkpoint.load(p)
    with pytest.raises(ConfigError, match="refused"):
        checkpoint.load(tmp_path / "step_00000002.pt")
    assert checkpoint.latest(tmp_path) is None


@pytest.mark.unit
def test_auto_never_picks_a_truncated_or_half_written_file(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, 1, {"w": torch.ones(1000)}, keep_last=5)
    checkpoint.save(tmp_path, 2, {"w": torch.full((1000,), 2.0)}, keep_last=5)
    newest = tmp_path / "step_00000002.pt"
    newest.write_bytes(newest.read_bytes()[:500])  # truncated behind our back
    path, state = checkpoint.latest(tmp_path)
    assert path.name == "step_00000001.pt" and state["w"][0] == 1.0

    # A crash in the middle of a write leaves only a hidden temporary file, which auto ignores.
    def dies_mid_write(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, 3, {"w": torch.zeros(1)}, keep_last=5)
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == ["step_00000001.pt", "step_00000002.pt"]
    assert checkpoint.latest(tmp_path)[0].name == "step_00000001.pt"
    monkeypatch.undo()
    (tmp_path / ".step_00000003.pt.tmp-99999").write_bytes(b"left by a killed run")
    checkpoint.save(tmp_path, 4, {"w": torch.zeros(1)}, keep_last=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001.pt", "step_00000001.pt.sha256", "step_00000002.pt",
                                                          "step_00000002.pt.sha256", "step_00000004.pt",
                                                          "step_00000004.pt.sha256"]


@pytest.mark.integration
def test_keep_last_and_no_temporary_files_after_a_normal_exit(tmp_path):
    cfg = make_config(*TINY, "trainer.max_steps=10", "checkpoint.every=2", "checkpoint.keep_last=2",
                      f"checkpoint.dir={tmp_path / 'ck'}")
    train(build(cfg), tmp_path, Display(10, quiet=True))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step_00000008.pt", "step_00000008.pt.sha256",
                                                                   "step_00000010.pt", "step_00000010.pt.sha256"]


@pytest.mark.integration
def test_resume_into_a_different_model_shape_names_the_key(tmp_path):
    ck = f"checkpoint.dir={tmp_path / 'ck'}"
    train(build(make_config(*TINY, "trainer.max_steps=2", ck)), tmp_path, Display(2, quiet=True))
    cfg = make_config(*TINY, "trainer.max_steps=4", ck, "checkpoint.resume=auto", "model.hidden_size=64")
    with pytest.raises(ConfigError, match=r"model.hidden_size=32, but the config says 64"):
        train(build(cfg), tmp_path, Display(4, quiet=True))


STATEFUL_CLIPS = {
    "norm": [],
    "zclip": ["clip=zclip", "clip.warmup_steps=5"],
    "autoclip": ["clip=autoclip", "clip.history=4"],
    "agc": ["clip=agc"],
    "adagc": ["clip=adagc", "clip.warmup_steps=3", "clip.ratio=1.0"],
    # max_norm so low that the controller lowers the lr every 2 steps: its state must carry over.
    "controller": ["clip.controller=true", "clip.max_norm=0.01", "clip.patience=2", "clip.relax_after=3",
                   "clip.warmup_steps=0"],
    # Not clip policies, but what the meter carries across the stop: the model's extras (train/z_loss),
    # and the spike score's window (4 steps, so that steps on both sides of the stop are judged).
    "z-loss": ["model.z_loss=0.01", "trainer.log_every=4"],
    "spike-score": ["log.spike_window=4", "log.spike_sigma=0.5"],
    # Not a clip policy but stateful the same way: so tight that it skips steps on both sides of the stop.
    "skip-step": ["guard.skip=true", "guard.skip_window=4", "guard.skip_sigma=0.5"],
}


@pytest.mark.integration
@pytest.mark.parametrize("clip", list(STATEFUL_CLIPS))
def test_preempted_and_resumed_in_process_matches_uninterrupted(tmp_path, monkeypatch, clip):
    """The kill test's check without processes: SIGTERM during step 6, resume, compare steps 7..12."""
    common = [*TINY, "trainer.max_steps=12", "trainer.log_every=1", "data.num_samples=40", "model.dropout=0.1",
              *STATEFUL_CLIPS[clip]]
    ref = tmp_path / "ref"
    train(build(make_config(*common)), ref, Display(12, quiet=True))

    run = tmp_path / "run"
    sigterm_during_step(monkeypatch, 6)
    with pytest.raises(Preempted, match="after step 6"):
        train(build(make_config(*common)), run, Display(12, quiet=True))
    monkeypatch.undo()
    train(build(make_config(*common, "checkpoint.resume=auto")), run, Display(12, quiet=True))

    expected, got = per_step(ref, "train/loss"), per_step(run, "train/loss")
    every = 4 if clip == "z-loss" else 1  # the log steps
    assert sorted(got) == sorted(expected) == list(range(every, 13, every))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-6), step
    assert per_step(run, "train/loss_max") == pytest.approx(per_step(ref, "train/loss_max"), rel=1e-6)
    if clip == "controller":
        assert per_step(run, "clip/lr_scale") == per_step(ref, "clip/lr_scale")
        assert per_step(ref, "clip/lr_scale")[12] < 0.1
    if clip == "z-loss":  # stopped after step 6, two steps into the interval 5..8
        z_loss = per_step(ref, "train/z_loss")
        assert per_step(run, "train/z_loss") == pytest.approx(z_loss, rel=1e-6)
    if clip == "spike-score":
        scores = per_step(ref, "train/spike_score")
        assert per_step(run, "train/spike_score") == scores and scores[6] + scores[7] > 0 and sum(scores.values()) < 12
    if clip == "skip-step":
        spikes = per_step(ref, "train/skipped_spikes")
        assert per_step(run, "train/skipped_spikes") == spikes and spikes[6] > 0 and spikes[12] > spikes[6]


class _Marker:
    """Unpickling this creates a file: proof that loading ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.integration
@pytest.mark.parametrize("where", ["absolute", "beside"])
def test_a_checkpoint_pointing_at_crafted_shards_never_runs_code(tmp_path, where):
    """A plain-data step_N.pt whose shards entry leads to a .metadata that would create a marker
    when unpickled: resume=auto, resume=PATH and export all refuse it in one line; no marker."""
    marker = tmp_path / "ran-code"
    run_dir, ck = tmp_path / "run", tmp_path / "run" / "checkpoints"
    train(build(make_config(*TINY, "trainer.max_steps=2")), run_dir, Display(2, quiet=True))
    state = checkpoint.load(ck / "step_00000002.pt")
    crafted = tmp_path / "elsewhere" / "step_00000002.shards" if where == "absolute" else ck / "step_00000002.shards"
    crafted.mkdir(parents=True)
    (crafted / ".metadata").write_bytes(pickle.dumps(_Marker(marker)))
    state.update(model=None, optimizer=None, shards=str(crafted) if where == "absolute" else crafted.name)
    state["config"]["strategy"]["kind"] = "fsdp"  # as an FSDP run would have written it
    torch.save(state, ck / "step_00000002.pt")  # plain data: weights_only loading accepts it
    digest = hashlib.sha256((ck / "step_00000002.pt").read_bytes()).hexdigest()
    (ck / "step_00000002.pt.sha256").write_text(f"{digest}  step_00000002.pt\n")  # as its crafter would

    for resume in ("auto", str(ck / "step_00000002.pt")):
        cfg = make_config(*TINY, "trainer.max_steps=4", f"checkpoint.resume={resume}")
        with pytest.raises(ConfigError, match="shards") as e:
            train(build(cfg), run_dir, Display(4, quiet=True))
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="refused") as e:
        export.export(run_dir)
    assert "\n" not in str(e.value)
    assert not marker.exists()


@pytest.mark.unit
def test_shards_are_read_as_data_only(tmp_path):
    """DCP's own reader would unpickle a non-tensor item with weights_only=False; ours refuses it,
    and reads a real checkpoint's weights back equal to what was saved."""
    import torch.distributed.checkpoint as dcp

    from trainer.checkpointing import shards

    weights = {"w": torch.randn(3, 4), "b": torch.randn(4)}
    dcp.save({"model": weights, "optimizer": {"param_groups": [{"lr": 0.1, "betas": (0.9, 0.95)}]}},
             checkpoint_id=str(tmp_path / "good"), no_dist=True)
    joined = shards.join_weights(tmp_path / "good")
    assert joined.keys() == weights.keys() and all(torch.equal(joined[k], weights[k]) for k in weights)

    marker = tmp_path / "ran-code"
    dcp.save({"model": weights, "extra": _Marker(marker)}, checkpoint_id=str(tmp_path / "bad"), no_dist=True)
    with pytest.raises(ConfigError, match="refused"):
        shards.join_weights(tmp_path / "bad")
    assert not marker.exists()


@pytest.mark.integration
def test_a_checkpoint_written_by_release_0_1_0_resumes_exactly(tmp_path):
    """tests/fixtures/checkpoint-0.1.0: written by 0.1.0 (fp16 scaler, clip controller, spike guard,
    dropout RNG); resuming it gives the per-step values 0.1.0 itself gave (make.py there)."""
    fixture = ROOT / "tests" / "fixtures" / "checkpoint-0.1.0"
    expected = json.loads((fixture / "expected.json").read_text())
    cfg = make_config(*expected["overrides"], "trainer.max_steps=6", f"checkpoint.dir={tmp_path / 'ck'}",
                      f"checkpoint.resume={fixture / 'step_00000003.pt'}")
    train(build(cfg), tmp_path, Display(6, quiet=True))
    got = read_scalars(tmp_path)
    for tag, values in expected["after_resume"].items():
        assert {str(s): v for s, v in got[tag]} == pytest.approx(values, rel=1e-6), tag


@pytest.mark.integration
def test_a_fresh_start_in_a_dir_with_events_logs_each_step_once(tmp_path):
    """Killed before its first checkpoint, then `checkpoint.resume=auto`: nothing to resume, so it
    starts at step 1 again, and TensorBoard must drop the first attempt's steps."""
    first = make_config(*TINY, "trainer.max_steps=4", "trainer.log_every=1", f"checkpoint.dir={tmp_path / 'lost'}")
    train(build(first), tmp_path, Display(4, quiet=True))  # its checkpoint is elsewhere: as good as never written
    again = make_config(*TINY, "trainer.max_steps=6", "trainer.log_every=1", "checkpoint.resume=auto",
                        f"checkpoint.dir={tmp_path / 'ck'}")
    train(build(again), tmp_path, Display(6, quiet=True))
    steps = [s for s, _ in read_scalars(tmp_path)["train/loss"]]
    assert steps == [1, 2, 3, 4, 5, 6]


def _real_state() -> dict:
    """What a checkpoint holds, in miniature: weights, AdamW state after a step, plain data."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    return {"step": 7, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "config": {"optim": {"lr": 3e-4}}, "eval_losses": [2.5, 2.25]}


@pytest.mark.unit
def test_a_flipped_byte_anywhere_is_caught_by_the_checksum(tmp_path):
    """torch's zip reader checks no CRCs: most one-byte flips load as changed tensors. With the
    checksum written beside each checkpoint, none of them loads."""
    good = checkpoint.save(tmp_path / "ck", 7, _real_state(), keep_last=1)
    data = good.read_bytes()
    rng = random.Random(0)
    loaded_by_torch = loaded_by_us = 0
    for i in range(40):
        corrupt = bytearray(data)
        corrupt[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        bad = tmp_path / f"flip{i}" / good.name
        bad.parent.mkdir()
        bad.write_bytes(bytes(corrupt))
        shutil.copy(checkpoint.checksum_path(good), checkpoint.checksum_path(bad))
        try:
            torch.load(bad, weights_only=True)
            loaded_by_torch += 1
        except Exception:
            pass
        with pytest.raises(ConfigError, match="corrupt|not a checkpoint|unreadable") as e:
            checkpoint.load(bad)
            loaded_by_us += 1
        assert "\n" not in str(e.value)
    assert loaded_by_us == 0
    assert loaded_by_torch > 20  # without the checksum, the flips go unnoticed (the reason for it)


@pytest.mark.unit
def test_files_that_are_not_checkpoints_are_named_for_what_they_are(tmp_path):
    older = checkpoint.save(tmp_path, 10, _real_state(), keep_last=5)
    cases = {
        "step_00000020.pt": (b"", "empty file"),
        "step_00000021.pt": (b"just some notes\n", "not a checkpoint"),
        "step_00000022.pt": (b"model:\n  num_layers: 2\n", "not a checkpoint"),
        "step_00000023.pt": (b'{"text": "a record"}\n', "not a checkpoint"),
    }
    for name, (content, why) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ConfigError, match=why) as e:
            checkpoint.load(tmp_path / name)
        assert "pickled code" not in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "step_00000030.pt").mkdir()  # a directory with a checkpoint's name
    with pytest.raises(ConfigError, match="a directory, not a checkpoint file"):
        checkpoint.load(tmp_path / "step_00000030.pt")

    said = []
    path, state = checkpoint.latest(tmp_path, skipped=said.append)  # resume=auto falls back past them all
    assert path == older and state["step"] == 7
    assert [line.split(":")[0] for line in said] == [f"skipping checkpoint {tmp_path / n}" for n in sorted(cases, reverse=True)]

    checkpoint.save(tmp_path, 40, _real_state(), keep_last=1)  # rotation passes the directory by
    assert (tmp_path / "step_00000030.pt").is_dir() and (tmp_path / "step_00000040.pt").is_file()
    assert not older.exists() and not checkpoint.checksum_path(older).exists()


@pytest.mark.integration
def test_resume_and_export_with_a_corrupt_newest_checkpoint(tmp_path, capsys):
    """resume=auto says on the terminal that it skips it and takes the one before; resume=PATH and
    export refuse it, in one line."""
    common = [*TINY, "trainer.log_every=1", "checkpoint.every=2", "checkpoint.keep_last=2"]
    train(build(make_config(*common, "trainer.max_steps=4")), tmp_path, Display(4, quiet=True))
    newest = tmp_path / "checkpoints" / "step_00000004.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x40
    newest.write_bytes(bytes(data))

    with pytest.raises(ConfigError, match="corrupt"):
        export.export(tmp_path)
    with pytest.raises(ConfigError, match="corrupt"):
        train(build(make_config(*common, "trainer.max_steps=6", f"checkpoint.resume={newest}")), tmp_path,
              Display(6, quiet=True))
    capsys.readouterr()
    train(build(make_config(*common, "trainer.max_steps=6", "checkpoint.resume=auto")), tmp_path,
          Display(6, interactive=False))
    out = capsys.readouterr().out
    assert f"skipping checkpoint {newest}: corrupt" in out
    assert "resumed from" in out and "at step 2" in out


@pytest.mark.integration
def test_a_full_disk_stops_the_run_in_one_line_with_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    common = [*TINY, "trainer.max_steps=6", "checkpoint.every=2", f"checkpoint.dir={tmp_path / 'ck'}"]
    saves = []
    real_save = torch.save

    def disk_fills_up(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_up)
    with pytest.raises(checkpoint.CheckpointWriteError) as e:
        train(build(make_config(*common)), tmp_path, Display(6, quiet=True))
    monkeypatch.undo()
    message = str(e.value)
    assert "\n" not in message and f"checkpoint.dir={tmp_path / 'ck'}" in message
    assert "writing step_00000004.pt failed: No space left on device (ENOSPC)" in message
    assert "step_00000002.pt, is intact" in message
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step_00000002.pt", "step_00000002.pt.sha256"]
    assert checkpoint.load(tmp_path / "ck" / "step_00000002.pt")["step"] == 2


@pytest.mark.integration
@pytest.mark.parametrize("key", ["checkpoint.dir", "hydra.run.dir"])
def test_a_dir_that_cannot_be_written_is_refused_before_the_first_step(tmp_path, monkeypatch, key):
    blocked = tmp_path / "a-file" / "dir"  # under a regular file: mkdir fails (as root, too)
    (tmp_path / "a-file").write_text("")
    steps = []
    monkeypatch.setattr(loop, "train_step", lambda *a, **k: steps.append(1))
    ck = blocked if key == "checkpoint.dir" else tmp_path / "ck"
    run_dir = blocked if key == "hydra.run.dir" else tmp_path / "run"
    with pytest.raises(ConfigError, match=rf"^{key}={blocked}: cannot write there \(Not a directory\)$"):
        train(build(make_config(*TINY, f"checkpoint.dir={ck}")), run_dir, Display(4, quiet=True))
    assert steps == []


@pytest.mark.slow
def test_one_writer_per_run_dir_and_a_dead_writers_lock_is_taken_over(tmp_path):
    live = start(*TINY, "trainer.max_steps=100000", "trainer.log_every=100", f"hydra.run.dir={tmp_path}")
    try:
        deadline = time.time() + 60
        while not list(tmp_path.glob("events.out.tfevents.*")):
            assert live.poll() is None and time.time() < deadline, live.communicate()
            time.sleep(0.05)
        hydra_files = {p.name: p.read_bytes() for p in (tmp_path / ".hydra").iterdir()}
        second = run_cli("train", *TINY, "trainer.max_steps=5", f"hydra.run.dir={tmp_path}")
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"error: hydra.run.dir={tmp_path}: another trainer run (pid {live.pid}) is writing there; wait for it "
            "to end, or choose another dir"]
        assert {p.name: p.read_bytes() for p in (tmp_path / ".hydra").iterdir()} == hydra_files
        assert live.poll() is None  # the live run goes on
    finally:
        live.kill()
        live.communicate()
    taken_over = run_cli("train", *TINY, "trainer.max_steps=5", f"hydra.run.dir={tmp_path}")
    assert taken_over.returncode == 0, taken_over.stderr[-2000:]


@pytest.mark.slow
def test_a_refused_command_leaves_the_run_and_the_outputs_dir_as_they_were(tmp_path):
    run_dir = tmp_path / "run"
    done = run_cli("train", *TINY, "trainer.max_steps=2", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-2000:]
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    refused = run_cli("train", *TINY, "trainer.max_steps=4", "model.hidden_size=64", "checkpoint.resume=auto",
                      f"hydra.run.dir={run_dir}")
    assert refused.returncode == 2 and "model.hidden_size=32, but the config says 64" in refused.stderr
    last = (run_dir / "train.log").read_text().splitlines()[-1]  # the refusal is kept with the run
    assert "[ERROR] " in last and "model.hidden_size=32, but the config says 64" in last
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    # .hydra/, config.yaml, events, checkpoints as they were (train.log gains the refusal's time;
    # .lock holds whoever last held the lock, the refused command too, for a moment)
    kept = lambda files: {k: v for k, v in files.items() if k.name not in ("train.log", ".lock")}  # noqa: E731
    assert kept(after) == kept(before) and (run_dir / ".hydra" / "overrides.yaml") in [run_dir / k for k in after]
    # A config error in a new run: Hydra's timestamped dir is not left behind, empty.
    bad = run_cli("train", "clip.max_norm=0", cwd=tmp_path)
    assert bad.returncode == 2
    assert not (tmp_path / "outputs").exists()


def _first_run(tmp_path, *extra):
    train(build(make_config(*TINY, "trainer.max_steps=4", "trainer.log_every=1", *extra)), tmp_path, Display(4, quiet=True))


@pytest.mark.integration
def test_resume_with_new_optimizer_settings_follows_the_config(tmp_path, capsys):
    """optim.lr, weight_decay and betas changed on resume apply from the resumed step on; the cosine
    schedule goes on at step 4 from the new base lr (reference: the cosine formula by hand)."""
    _first_run(tmp_path, "sched.warmup_steps=2")
    run = build(make_config(*TINY, "trainer.max_steps=6", "trainer.log_every=1", "sched.warmup_steps=2",
                            "checkpoint.resume=auto", "optim.lr=1e-3", "optim.weight_decay=0.0", "optim.betas=[0.8,0.9]"))
    train(run, tmp_path, Display(6, interactive=False))
    factor = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (4 - 2) / (6 - 2)))  # min_lr_ratio 0.1, step 4 of 6
    assert dict(read_scalars(tmp_path)["train/lr"])[5] == pytest.approx(1e-3 * factor, rel=1e-6)
    decayed, not_decayed = run.optimizer.param_groups
    assert decayed["weight_decay"] == 0.0 and not_decayed["weight_decay"] == 0.0
    assert decayed["betas"] == (0.8, 0.9) and not_decayed["betas"] == (0.8, 0.9)
    out = capsys.readouterr().out
    assert "resume: optim.lr 0.0003 -> 0.001" in out and "resume: optim.weight_decay 0.1 -> 0.0" in out


@pytest.mark.integration
@pytest.mark.parametrize("before, after, said", [
    (["clip=norm"], ["clip=zclip", "clip.warmup_steps=2"], "clip._target_ trainer.clipping.NormClip -> trainer.adaptive_clipping.ZClip"),
    (["clip=none"], ["clip=norm"], "clip._target_ trainer.clipping.NoClip -> trainer.clipping.NormClip"),
    (["clip=norm"], ["clip.max_norm=0.05"], "clip.max_norm 1.0 -> 0.05"),
])
def test_resume_with_another_clip_policy_or_threshold_starts_it_from_the_config(tmp_path, capsys, before, after, said):
    _first_run(tmp_path, *before)
    train(build(make_config(*TINY, "trainer.max_steps=6", "trainer.log_every=1", "checkpoint.resume=auto", *after)),
          tmp_path, Display(6, interactive=False))
    assert said in capsys.readouterr().out
    if "clip.max_norm=0.05" in after:  # the new threshold holds from the first resumed step
        clipped = dict(read_scalars(tmp_path)["train/grad_norm_clipped"])
        assert clipped[5] <= 0.05 + 1e-6 and clipped[6] <= 0.05 + 1e-6


@pytest.mark.integration
@pytest.mark.parametrize("change, message", [
    ("data.batch_size=4", "data.batch_size=8, but the config says 4: that moves the data position"),
    ("trainer.seed=1", "trainer.seed=0, but the config says 1"),
    ("sched=plateau", "a per-step schedule and one stepped by the eval loss cannot continue each other"),
])
def test_resume_refuses_changes_it_cannot_follow(tmp_path, change, message):
    _first_run(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(build(make_config(*TINY, "trainer.max_steps=6", "checkpoint.resume=auto", change)), tmp_path,
              Display(6, quiet=True))


TINY_BERT = ["model=bert", "model.num_layers=1", "model.hidden_size=32", "model.num_heads=4", "model.intermediate_size=37",
             "model.max_seq_len=64", "task=classification", "data=jsonl", "data.seq_len=32", "data.batch_size=8",
             "trainer.device=cpu"]


@pytest.mark.integration
def test_a_classifier_resumes_only_onto_its_own_labels_and_from_before_the_new_model_keys(tmp_path):
    """Label names are in the checkpoint: data whose labels differ is refused (row i would stand for
    another label). A checkpoint of the release before hidden_act/attention_dropout/classifier_dropout
    and before label names (its config and parts as it wrote them) resumes exactly as it computed."""
    from tests.hf_folder import labelled_jsonl

    first = labelled_jsonl(tmp_path / "a.jsonl")  # labels neg, pos
    renamed = tmp_path / "b.jsonl"
    renamed.write_text(first.read_text().replace('"neg"', '"bad"').replace('"pos"', '"good"'))
    common = [*TINY_BERT, f"checkpoint.dir={tmp_path / 'ck'}"]
    train(build(make_config(*common, f"data.train_file={first}", "trainer.max_steps=2")), tmp_path, Display(2, quiet=True))
    newest = checkpoint.checkpoints(tmp_path / "ck")[-1]
    assert checkpoint.load(newest)["labels"] == ["neg", "pos"]
    with pytest.raises(ConfigError) as e:
        train(build(make_config(*common, f"data.train_file={renamed}", "trainer.max_steps=4", "checkpoint.resume=auto")),
              tmp_path, Display(4, quiet=True))
    assert str(e.value) == (f"checkpoint {newest}: its labels state does not fit this run: trained on the labels "
                            "neg, pos; the data has bad, good")

    old = checkpoint.load(newest)  # as the release before wrote it: none of the keys it did not have
    del old["labels"]
    for key in ("hidden_act", "attention_dropout", "classifier_dropout"):
        del old["config"]["model"][key]
    shutil.rmtree(tmp_path / "ck")
    checkpoint.save(tmp_path / "ck", 2, old, keep_last=3)
    with pytest.raises(ConfigError, match=r"model.hidden_act=gelu, but the config says relu"):
        train(build(make_config(*common, f"data.train_file={first}", "trainer.max_steps=4", "checkpoint.resume=auto",
                                "model.hidden_act=relu")), tmp_path, Display(4, quiet=True))
    with pytest.raises(ConfigError, match=r"model.attention_dropout=0.1, but the config says 0.2"):
        train(build(make_config(*common, f"data.train_file={first}", "trainer.max_steps=4", "checkpoint.resume=auto",
                                "model.attention_dropout=0.2")), tmp_path, Display(4, quiet=True))
    every = "trainer.log_every=1"
    train(build(make_config(*common, f"data.train_file={first}", "trainer.max_steps=4", "checkpoint.resume=auto", every)),
          tmp_path / "resumed", Display(4, quiet=True))
    train(build(make_config(*TINY_BERT, f"data.train_file={first}", "trainer.max_steps=4", every,
                            f"checkpoint.dir={tmp_path / 'ref'}")), tmp_path / "ref", Display(4, quiet=True))
    resumed, reference = read_scalars(tmp_path / "resumed")["train/loss"], read_scalars(tmp_path / "ref")["train/loss"]
    assert [s for s, _ in resumed] == [3, 4] and resumed == reference[2:]
