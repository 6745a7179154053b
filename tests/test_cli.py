"""`trainer` end to end, in a fresh process as a user runs it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY, read_scalars, run_cli
from trainer.commands.train import name_jobs_by_sweep

TAGS = {
    "train/loss", "train/lr", "train/grad_norm", "train/grad_norm_clipped", "train/clip_fraction",
    "train/loss_scale", "train/skipped_steps", "perf/step_ms", "perf/samples_per_sec", "perf/tokens_per_sec",
    "eval/loss",
}
MISSION_SHAPE = ["model.num_layers=2", "model.hidden_size=64", "model.num_heads=2", "model.intermediate_size=128",
                 "trainer.max_steps=50"]


def events(run_dir: Path) -> list[Path]:
    return list(run_dir.rglob("events.out.tfevents.*"))


MISSIONS = [("bert", "fp16"), ("gpt", "fp16"), ("bert", "bf16"), ("bert", "fp32"), ("gpt", "bf16")]


@pytest.fixture(scope="module")
def mission_runs(tmp_path_factory):
    """Every MISSIONS run, two at a time with one thread each: on 2 cores that takes about 60% of
    the time of one after another with two threads each (measured 27.8 s against 44.3 s for two)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(case):
        run_dir = tmp_path_factory.mktemp("mission")
        model, amp = case
        return run_dir, run_cli("train", f"model={model}", f"amp={amp}", "clip.max_norm=1.0", *MISSION_SHAPE,
                                f"hydra.run.dir={run_dir}", env={"OMP_NUM_THREADS": "1"})

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(MISSIONS, pool.map(one, MISSIONS)))


@pytest.mark.slow
@pytest.mark.parametrize("model,amp", MISSIONS)
def test_mission_command_logs_every_tag_clips_and_learns(mission_runs, model, amp):
    tmp_path, out = mission_runs[model, amp]
    assert out.returncode == 0, out.stderr
    scalars = read_scalars(tmp_path)
    assert TAGS <= set(scalars)
    assert all(v <= 1.0 + 1e-5 for _, v in scalars["train/grad_norm_clipped"])
    assert max(v for _, v in scalars["train/grad_norm"]) > 1.0  # clipping was exercised
    losses = [v for _, v in scalars["train/loss"]]
    assert losses[-1] < losses[0] - 0.3
    scale = [v for _, v in scalars["train/loss_scale"]]
    skipped = scalars["train/skipped_steps"][-1][1]
    # fp16: each skipped (overflowing) step halves the scale; 50 steps never reach growth_interval.
    assert scale[-1] == (65536.0 / 2 ** skipped if amp == "fp16" else 1.0)
    assert skipped <= 3
    assert (tmp_path / "config.yaml").exists()
    assert f"tensorboard --logdir {tmp_path}" in out.stdout


BAD_INPUTS = [
    (["amp=fp8"], "amp=fp8"),
    (["optim=adam9"], "optim=adam9"),
    (["trainer.max_step=5"], "trainer.max_step"),
    (["clip.max_norm=abc"], "clip.max_norm"),
    (["clip.max_norm=0"], "clip.max_norm"),
    (["clip.max_norm=-1"], "clip.max_norm"),
    (["trainer.max_steps=0"], "trainer.max_steps"),
    (["trainer.grad_accum=0"], "trainer.grad_accum"),
    (["data.batch_size=-4"], "data.batch_size"),
    (["optim.lr=-0.1"], "optim.lr"),
    (["model.hidden_size=100", "model.num_heads=3"], "model.hidden_size"),
    (["data.files=/no/such/dir/*.txt"], "data.files"),
    (["trainer.device=cuda"], "trainer.device"),
    (["trainer.device=gpu"], "trainer.device"),
    (["model._target_=no.such.Model"], "model._target_"),
    (["clip=value", "clip.max_norm=1"], "clip.max_norm"),
    (["strategy=zero3"], "strategy=zero3"),
    (["strategy=fsdp", "amp=fp16"], "strategy=fsdp"),
    (["trainer.nproc_per_node=0"], "trainer.nproc_per_node"),
    # probed before the first step: refused at once, not at the first checkpoint
    (["checkpoint.dir=/dev/null/ck"], "checkpoint.dir=/dev/null/ck: cannot write there (Not a directory)"),
    (["model=bert", "task=classification", "data=jsonl", "data.train_file=/no/such.jsonl", "data.label_field=label"],
     "data.train_file=/no/such.jsonl: no such file"),
    # checked by the launcher before it starts any worker: one line, not one per rank
    (["trainer.nproc_per_node=2", "clip.max_norm=0"], "clip.max_norm"),
]


@pytest.mark.slow
def test_compile_with_emulated_half_precision_is_refused_in_one_line(tmp_path):
    """oneDNN held to AVX2, as on a CPU without native bf16 (many laptops): amp=bf16 with
    trainer.compile=true stops before the first step with one line and the factor it measured
    (compiling calls the same emulated matmuls: 262 ms/step against 256 eager, fp32 compiled 24 ms,
    on the default GPT); amp=bf16 alone trains, with the note."""
    env = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = run_cli("train", *TINY, "amp=bf16", "trainer.compile=true", f"hydra.run.dir={tmp_path / 'compiled'}", env=env)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith("error: trainer.compile=true with amp=bf16: this CPU has no native bf16")
    assert "x slower than fp32 here" in lines[0] and "amp=fp32" in lines[0]
    assert events(tmp_path / "compiled") == []
    out = run_cli("train", *TINY, "amp=bf16", "trainer.max_steps=2", "trainer.eval_every=2",
                  f"hydra.run.dir={tmp_path / 'eager'}", env=env)
    assert out.returncode == 0, out.stderr
    assert "amp=bf16 on this CPU: no native bf16, so autocast is emulated" in out.stdout + out.stderr


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory):
    """Every BAD_INPUTS case as its own `trainer train` process, three at a time: each is mostly
    Python start-up, and one after another they would cost the suite a minute more."""
    from concurrent.futures import ThreadPoolExecutor

    def one(case, run_dir):
        return run_dir, run_cli("train", *case[0], f"hydra.run.dir={run_dir}")

    # mktemp is not thread-safe (pytest's numbered dirs): make them all before the threads start
    run_dirs = [tmp_path_factory.mktemp("bad") for _ in BAD_INPUTS]
    with ThreadPoolExecutor(3) as pool:
        return dict(zip((" ".join(o) for o, _ in BAD_INPUTS), pool.map(one, BAD_INPUTS, run_dirs)))


@pytest.mark.slow
@pytest.mark.parametrize("overrides,key", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_one_line_naming_the_key(bad_input_runs, overrides, key):
    if overrides == ["trainer.device=cuda"]:
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU, so trainer.device=cuda is valid here")
    tmp_path, out = bad_input_runs[" ".join(overrides)]
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ") and key in lines[0]
    assert "Traceback" not in out.stderr + out.stdout
    assert events(tmp_path) == []


@pytest.mark.slow
def test_full_error_env_shows_the_traceback(tmp_path):
    out = run_cli("train", "clip.max_norm=0", f"hydra.run.dir={tmp_path}", env={"HYDRA_FULL_ERROR": "1"})
    assert out.returncode != 0
    assert "Traceback" in out.stderr and "clip.max_norm" in out.stderr


@pytest.mark.slow
def test_multirun_sweep_writes_one_events_file_per_job(tmp_path):
    out = run_cli("train", "-m", "clip.max_norm=0.5,1,5", *TINY, "trainer.max_steps=6", "trainer.log_every=3",
                  f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    # Job dirs are named by their swept overrides, so TensorBoard's run list says which threshold each ran.
    assert [p.name for p in jobs] == ["0_clip.max_norm=0.5", "1_clip.max_norm=1", "2_clip.max_norm=5"]
    for job, max_norm in zip(jobs, [0.5, 1.0, 5.0]):
        assert len(events(job)) == 1
        clipped = read_scalars(job)["train/grad_norm_clipped"]
        assert all(v <= max_norm + 1e-5 for _, v in clipped)


@pytest.mark.slow
def test_help_and_cfg_job():
    out = run_cli("--help")
    assert out.returncode == 0 and "trainer train" in out.stdout
    assert "[--plot OUT.png]" in out.stdout and "[--variant OVERRIDES]" in out.stdout  # every command's flags
    out = run_cli("train", "--cfg", "job", "amp=fp16", "clip.max_norm=0.5")
    assert out.returncode == 0, out.stderr
    assert "max_norm: 0.5" in out.stdout and "init_scale: 65536.0" in out.stdout
    out = run_cli("fly")
    assert out.returncode == 2 and "unknown command" in out.stderr


@pytest.mark.unit
def test_slurm_launcher_config_composes_with_hydras_submitit_plugin():
    """conf/hydra/launcher/slurm.yaml extends the plugin's own submitit_slurm schema; a job asks for
    one node with one task and one GPU per worker."""
    from hydra import compose, initialize_config_dir

    from trainer.config import CONF_DIR, register

    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "trainer.nproc_per_node=4"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (1, 1, 4)
    assert launcher.signal_delay_s > 0  # SIGUSR1 before the time limit: trainer checkpoints on it


@pytest.mark.unit
def test_sweep_job_names_leave_out_what_hydras_parser_says_is_not_swept():
    args = ["-m", "clip.max_norm=0.5,1,5", "+debug=tiny", "optim.lr=tag(log,interval(1e-4,3e-3))",
            "model.hidden_size=64", "data.text_field='a,b'", "hydra.run.dir=x", "--cfg", "job"]
    named = name_jobs_by_sweep(args)
    exclude = next(a for a in named if a.startswith("hydra.job.config.override_dirname.exclude_keys="))
    keys = exclude.split("=", 1)[1].strip("[]").split(",")
    # a quoted value with a comma is one value, not a sweep (string guessing took it for one)
    assert keys == ["data.files", "hydra.run.dir", "hydra.sweep.dir", "debug", "model.hidden_size", "data.text_field"]
    assert named[-2:] == ["--cfg", "job"]  # trailing flags stay last
    assert name_jobs_by_sweep(args[1:]) == args[1:]  # not a multirun: untouched


@pytest.mark.slow
def test_an_invalid_job_does_not_stop_the_sweep(tmp_path):
    out = run_cli("train", "-m", "clip.max_norm=0,1", *TINY, "trainer.max_steps=3", "trainer.log_every=1",
                  f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    said = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert said == ["error: job 0_clip.max_norm=0: clip.max_norm=0.0: must be > 0",
                    "error: 1 of 2 jobs failed: 0_clip.max_norm=0"]
    assert [s for s, _ in read_scalars(tmp_path / "1_clip.max_norm=1")["train/loss"]] == [1, 2, 3]  # it ran
    assert not (tmp_path / "0_clip.max_norm=0").exists()  # the refused job leaves no empty dir


@pytest.mark.unit
def test_summary_numbers_read_as_numbers():
    from trainer.monitoring.display import readable

    values = (32768.0, 2.47612345, 123456.7, 300, 9559.9368, 65.4425, 0.6, 0.000123456, float("nan"), "dir")
    assert [readable(v) for v in values] == \
        ["32768", "2.4761", "123457", "300", "9559.9", "65.442", "0.6", "0.00012346", "nan", "dir"]


def users_config_dir(root: Path) -> Path:
    """A user's own config dir, as Hydra expects one: a group option that extends ours, a recipe."""
    (root / "model").mkdir(parents=True)
    (root / "model" / "small.yaml").write_text("defaults:\n  - gpt\n  - _self_\n\nnum_layers: 1\nhidden_size: 32\n")
    (root / "recipes").mkdir()
    (root / "recipes" / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - override /model: small\n\n"
                                                "trainer:\n  max_steps: 3\n  log_every: 1\n")
    (root / "recipes" / "unpackaged.yaml").write_text("trainer:\n  max_steps: 3\n")
    return root


@pytest.mark.integration
@pytest.mark.parametrize("form", ["--config-dir", "hydra.searchpath"])
def test_own_config_dir_with_recipes_ours_and_yours(tmp_path, form):
    own = users_config_dir(tmp_path / "conf")
    where = ["--config-dir", str(own)] if form == "--config-dir" else [f"hydra.searchpath=[file://{own}]"]
    out = run_cli("train", *where, "+recipes=mine", "--cfg", "job")
    assert out.returncode == 0, out.stderr
    assert "num_layers: 1" in out.stdout and "hidden_size: 32" in out.stdout and "max_steps: 3" in out.stdout
    out = run_cli("train", *where, "+recipes=gpt-text", "--cfg", "job")  # a shipped recipe still applies
    assert out.returncode == 0 and "max_steps: 2000" in out.stdout and "num_layers: 6" in out.stdout
    out = run_cli("train", *where, "+recipes=mien")
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: recipes=mien: no such option in group 'recipes' "
        "(choose from bert-finetune, clip-sweep, fp16-vs-bf16, gpt-text, mine, stability, unpackaged)"]
    out = run_cli("train", *where, "+recipes=unpackaged", f"hydra.run.dir={tmp_path / 'refused'}")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "the recipe's keys landed under 'recipes.'" in out.stderr and "# @package _global_" in out.stderr
    out = run_cli("train", *where, "--help")
    assert "model: bert, gpt, hf, small" in out.stdout and "recipes: bert-finetune, clip-sweep, fp16-vs-bf16, gpt-text, " \
        "mine, stability, unpackaged" in out.stdout


@pytest.mark.integration
def test_a_recipe_from_your_own_dir_trains(tmp_path):
    own = users_config_dir(tmp_path / "conf")
    out = run_cli("train", "--config-dir", str(own), "+recipes=mine", "data=synthetic", "data.vocab_size=16",
                  "data.seq_len=16", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 0, out.stderr
    assert [step for step, _ in read_scalars(tmp_path / "run")["train/loss"]] == [1, 2, 3]
    assert "num_layers: 1" in (tmp_path / "run" / ".hydra" / "config.yaml").read_text()


@pytest.mark.integration
@pytest.mark.parametrize("signum, existing", [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGTERM, True)],
                         ids=["SIGTERM", "Ctrl-C", "SIGTERM-resuming"])
def test_a_stop_signal_during_start_up_is_one_line_and_leaves_nothing_half_done(tmp_path, signum, existing):
    run_dir, ready = tmp_path / "run", tmp_path / "loading"
    if existing:  # a run to resume: its dir must stay exactly as it was
        assert run_cli("train", *TINY, "trainer.max_steps=2", f"hydra.run.dir={run_dir}").returncode == 0
        before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "train", *TINY, "data._target_=tests.user_model.SlowData",
                             f"hydra.run.dir={run_dir}"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(env, PYTHONPATH=str(ROOT), SLOW_DATA_READY=str(ready)))
    deadline = time.monotonic() + 60
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:  # loading the data
        time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    name = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else "SIGTERM"
    left = f"{run_dir} is as it was but for this line in train.log" if existing else "nothing was kept"
    said = f"stopped by {name} during start-up, before the first step; {left}"
    assert err.strip().splitlines() == [f"error: {said}"]
    if existing:
        # .lock names the newest holder's pid (checkpointing/lock.py); train.log gains the line
        log = run_dir / "train.log"
        added = log.read_bytes()[len(before.pop(log)):].decode().splitlines()
        assert len(added) == 1 and added[0].endswith(f"[ERROR] {said}")
        assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name not in (".lock", "train.log")} \
            == before
    else:
        assert not run_dir.exists()


@pytest.mark.unit
def test_a_start_up_signal_that_was_swallowed_still_stops_the_loop_before_it_starts(monkeypatch):
    from trainer import preemption

    monkeypatch.setattr(preemption, "_received", [])
    monkeypatch.setattr(preemption.StopRequest, "entered", False)  # other in-process tests ran loops
    try:  # code on the way that catches everything, as some imports do
        preemption._interrupt(signal.SIGTERM, None)
    except BaseException:
        pass
    with pytest.raises(preemption.Interrupted) as stopped:
        with preemption.StopRequest():
            pytest.fail("the loop started")
    assert stopped.value.signum == signal.SIGTERM and not preemption.StopRequest.entered
