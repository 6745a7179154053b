"""`trainer` end to end, in a fresh process as a user runs it."""

from pathlib import Path

import pytest

from tests.conftest import TINY, read_scalars, run_cli
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

    assert [readable(v) for v in (32768.0, 2.47612345, 123456.7, 300, float("nan"), "dir")] == \
        ["32768", "2.4761", "123457", "300", "nan", "dir"]
