"""More than one process (gloo on CPU, through torch's elastic launcher): the same numbers as one.

The reference is always one process with the whole global batch: N ranks with batch b must
take, step for step, the same loss, pre-clip norm and update as one process with batch N*b.
"""

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.conftest import ROOT, TINY, read_scalars, run_cli
from trainer.checkpointing import checkpoint
from trainer.checkpointing.export import checkpoint_weights

pytestmark = pytest.mark.slow

# Synthetic data, fp32, clipping active on every step (max_norm below the norms seen).
# One GPU per process: with two GPUs the ranks run on them (NCCL); with fewer, on the CPU (gloo).
DEVICE = "auto" if torch.cuda.device_count() >= 2 else "cpu"
BASE = [*TINY, f"trainer.device={DEVICE}", "trainer.log_every=1", "trainer.eval_every=1000", "clip.max_norm=0.5", "optim.fused=false",
        "sched=constant", "guard.spike=false"]


def train(run_dir, *args):
    done = run_cli("train", *BASE, *args, f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def train_together(*runs):
    """train(run_dir, *args) for each (run_dir, *args), side by side: the runs are independent, and
    one process and two share the 2 cores better than they take turns."""
    with ThreadPoolExecutor(len(runs)) as pool:
        return list(pool.map(lambda run: train(*run), runs))


def weights(run_dir):
    path, state = checkpoint.latest(run_dir / "checkpoints")
    return checkpoint_weights(path, state)  # FSDP's shards joined, as trainer export does


def assert_same_run(one, two, steps, tokens_per_step):
    a, b = read_scalars(one), read_scalars(two)
    for tag in ("train/loss", "train/grad_norm", "train/grad_norm_clipped"):
        assert [s for s, _ in b[tag]] == list(range(1, steps + 1)), tag
        for (step, x), (_, y) in zip(a[tag], b[tag]):
            assert abs(x - y) <= 1e-5 * max(1.0, abs(x)), (tag, step, x, y)
    assert max(v for _, v in a["train/grad_norm"]) > 0.5  # clipping really acted
    # Throughput is the job's, all ranks: tokens/s x s/step is one step's tokens, batch x seq_len
    # x micro-batches, whether one process takes the batch or two take half each.
    for run in (a, b):
        per_step = [tok * ms / 1000 for (_, tok), (_, ms) in zip(run["perf/tokens_per_sec"], run["perf/step_ms"])]
        assert per_step == pytest.approx([tokens_per_step] * len(per_step), rel=1e-6)
    wa, wb = weights(one), weights(two)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)


def test_adagc_clips_alike_under_ddp_and_fsdp(tmp_path):
    """clip=adagc, clipping each tensor on most steps (ratio 1.0 after 3 warm-up steps): two DDP
    ranks and two FSDP2 ranks (each squares its shards' norms, one all-reduce sums them) log the
    norms and end with the weights of one process with the whole batch."""
    common = ["trainer.max_steps=8", "trainer.eval_every=8", "clip=adagc", "clip.warmup_steps=3", "clip.ratio=1.0",
              "clip.max_norm=0.5"]
    two = [*common, "data.batch_size=4", "trainer.nproc_per_node=2"]
    train_together((tmp_path / "one", *common, "data.batch_size=8"), (tmp_path / "ddp", *two),
                   (tmp_path / "fsdp", *two, "strategy=fsdp"))
    for run in ("ddp", "fsdp"):
        assert_same_run(tmp_path / "one", tmp_path / run, 8, tokens_per_step=8 * 16)
    clipped = read_scalars(tmp_path / "one")["train/clip_fraction"]
    assert sum(v for _, v in clipped[3:]) >= 3  # the per-tensor phase clipped


def test_skip_step_decides_alike_on_every_rank(tmp_path):
    """guard.skip tight enough to weigh every step: two ranks judge the mean of their losses (one
    collective) and the same norm, so they skip exactly the steps one process with the whole batch
    skips (none here), and end with its weights. Judging each rank's own loss, one rank skipped a
    step the other applied (skipped_spikes averaged to 0.5) and the losses parted by 5e-3."""
    common = ["trainer.max_steps=16", "trainer.eval_every=16", "guard.skip=true", "guard.skip_window=4",
              "guard.skip_sigma=1.0"]
    train_together((tmp_path / "one", *common, "data.batch_size=8"),
                   (tmp_path / "two", *common, "data.batch_size=4", "trainer.nproc_per_node=2"))
    assert_same_run(tmp_path / "one", tmp_path / "two", 16, tokens_per_step=8 * 16)
    spikes = read_scalars(tmp_path / "one")["train/skipped_spikes"]
    assert read_scalars(tmp_path / "two")["train/skipped_spikes"] == spikes


def test_check_ranks_names_the_rank_whose_gradients_were_not_synchronised(tmp_path):
    """log.check_ranks: with the output layer left out of DDP's all-reduce (a user's model), rank 1's
    norm differs from rank 0's from the first step, and the line names it; with every gradient
    synchronised, no line."""
    common = ["trainer.max_steps=2", "trainer.eval_every=2", "log.check_ranks=true", "data.batch_size=4",
              "trainer.nproc_per_node=2"]
    bad, good = train_together((tmp_path / "bad", *common, "model._target_=tests.user_model.UnsyncedLM"),
                               (tmp_path / "good", *common, "model._target_=tests.user_model.BigramLM"))
    lines = [line for line in bad.stdout.splitlines() if line.startswith("log.check_ranks:")]
    assert len(lines) == 2, bad.stdout[-2000:]  # one per log step (log_every=1), naming rank 1
    assert lines[0].startswith("log.check_ranks: rank 1's gradient norm at step 1 is ")
    assert "rank 0's" in lines[0] and "log.check_ranks" in (tmp_path / "bad" / "train.log").read_text()
    assert "log.check_ranks" not in good.stdout


@pytest.mark.parametrize("accum", [1, 2])
def test_ddp_two_processes_equal_one_process_with_twice_the_batch(tmp_path, accum):
    steps = 6
    common = ["trainer.max_steps=6", "trainer.eval_every=6", f"trainer.grad_accum={accum}"]
    train_together((tmp_path / "one", *common, "data.batch_size=8"),
                   (tmp_path / "two", *common, "data.batch_size=4", "trainer.nproc_per_node=2"))
    assert_same_run(tmp_path / "one", tmp_path / "two", steps, tokens_per_step=8 * 16 * accum)  # tiny: seq_len 16
    # train/loss_max is the largest loss of any rank (log_every=1: of each step): above the ranks'
    # mean, which is train/loss, on every step where their losses differ
    two = read_scalars(tmp_path / "two")
    pairs = list(zip((v for _, v in two["train/loss_max"]), (v for _, v in two["train/loss"])))
    assert all(top >= mean for top, mean in pairs) and sum(top > mean + 1e-6 for top, mean in pairs) >= steps - 1
    # One run, one dir: a single events file, a single checkpoints dir, nothing per rank.
    events = sorted(p.name for p in (tmp_path / "two").rglob("events.out.tfevents.*"))
    assert len(events) == 1, events
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        ".hydra", ".lock", "checkpoints", "config.yaml", events[0], "summary.json", "train.log"]


def test_ddp_on_prepared_tokens_splits_one_process_batches_between_the_ranks(tmp_path):
    """data=tokens' computed order (LazyEpochSampler): rank r of 2 takes every 2nd window of the
    order one process takes, so 2 x 4 windows per step are one process's 8, step for step."""
    from tests.test_prepare import corpus
    from trainer.data.prepare import prepare

    corpus(tmp_path / "c", n_jsonl=200)
    prepare(str(tmp_path / "c" / "*"), tmp_path / "tok", val_fraction=0.2, quiet=True)
    common = ["data=tokens", f"data.dir={tmp_path / 'tok'}", "data.seq_len=16", "model.num_layers=1",
              "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64", "model.max_seq_len=16",
              *[a for a in BASE if a not in TINY], "trainer.max_steps=6", "trainer.eval_every=6"]

    def run(run_dir, *args):
        done = run_cli("train", *common, *args, f"hydra.run.dir={run_dir}")
        assert done.returncode == 0, done.stderr[-3000:]

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda a: run(*a), [(tmp_path / "one", "data.batch_size=8"),
                                          (tmp_path / "two", "data.batch_size=4", "trainer.nproc_per_node=2")]))
    assert_same_run(tmp_path / "one", tmp_path / "two", 6, tokens_per_step=8 * 16)


def test_torchrun_ranks_agree_on_one_timestamped_run_dir(tmp_path):
    """Plain torchrun, no hydra.run.dir: every rank must still pick the same outputs/<date>/<time>."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "trainer", "train",
         *BASE, "data.batch_size=4", "trainer.max_steps=3"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dirs = [p.parent for p in (tmp_path / "outputs").rglob("config.yaml") if p.parent.name != ".hydra"]
    assert len(run_dirs) == 1 and len(list((tmp_path / "outputs").glob("*/*"))) == 1, run_dirs
    assert len(list(run_dirs[0].glob("events.out.tfevents.*"))) == 1


def _children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _hung(proc: subprocess.Popen, run_dir: Path) -> str:
    """What a job that did not end shows: which of its processes live, and their stacks
    (`kill -USR2` makes each print them: trainer.cli registers faulthandler for it)."""
    alive = [int(p) for p in subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True).stdout.split()]
    for pid in alive:
        os.kill(pid, signal.SIGUSR2)
    time.sleep(2)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired as e:
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    return (f"the job did not end within 60 s of SIGTERM; launcher exit code {proc.poll()}; processes of the run "
            f"still alive: {alive}; their stacks and stderr:\n{err[-12000:]}")


def test_killing_one_worker_ends_the_job_promptly(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer", "train", *BASE, "data.batch_size=4", "trainer.nproc_per_node=2",
         "trainer.max_steps=100000", f"hydra.run.dir={run_dir}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.time() + 90
        while not list(run_dir.glob("events.out.tfevents.*")) or len(_children(proc.pid)) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "training did not start"
            time.sleep(0.1)
        time.sleep(1.0)  # well into training
        workers = _children(proc.pid)
        os.kill(workers[-1], signal.SIGKILL)
        killed = time.time()
        _, err = proc.communicate(timeout=60)
        took = time.time() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    print(f"job ended {took:.1f} s after kill -9 of one worker")
    assert took < 30, took
    assert "was killed by signal 9" in err, err[-2000:]


def test_sigterm_to_the_launcher_checkpoints_every_rank_and_resumes_exactly(tmp_path):
    """The launcher passes SIGTERM on; the ranks agree on a step, write one checkpoint, say so once;
    resuming continues exactly (dropout on, so each rank's own RNG state must come back), and only
    with as many processes."""
    run_dir = tmp_path / "run"
    args = [*BASE, "data.batch_size=4", "trainer.nproc_per_node=2", "trainer.log_every=5", "model.dropout=0.1",
            f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "train", *args, "trainer.max_steps=100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.time() + 90
        log = run_dir / "train.log"
        while not (log.exists() and "step 5/" in log.read_text()):  # training, signal handlers set
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "training did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(_hung(proc, run_dir))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    said = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(said) == 1 and "stopped by SIGTERM after step" in said[0], said
    stopped_at = int(said[0].split("after step ")[1].split(";")[0])
    assert stopped_at % 5 == 0  # the ranks agree at a log step
    assert (run_dir / "checkpoints" / f"step_{stopped_at:08d}.pt").exists()

    # the printed resume command, as a shell would split it
    resume = shlex.split(said[0].split("run the same command with ")[1])
    assert resume == ["checkpoint.resume=auto", f'hydra.run.dir="{run_dir}"'], resume
    end = stopped_at + 10
    one = run_cli("train", *[a for a in args[:-1] if "nproc" not in a], f"trainer.max_steps={end}", *resume)
    assert one.returncode == 2
    assert one.stderr.strip().splitlines() == [
        f"error: checkpoint {run_dir / 'checkpoints' / f'step_{stopped_at:08d}.pt'} was written by 2 processes, "
        "this run has 1: resume with the same number (each rank's data position and RNG are in it)"]
    resumed = run_cli("train", *args[:-1], f"trainer.max_steps={end}", *resume)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {stopped_at}" in resumed.stdout

    train(tmp_path / "ref", *args[len(BASE):-1], f"trainer.max_steps={end}")  # uninterrupted (train adds BASE)
    ref, run = read_scalars(tmp_path / "ref")["train/loss"], read_scalars(run_dir)["train/loss"]
    after = [(s, v) for s, v in run if s > stopped_at]
    assert [s for s, _ in after] == [s for s, _ in ref if s > stopped_at] == [stopped_at + 5, end]
    for (step, got), (_, want) in zip(after, [(s, v) for s, v in ref if s > stopped_at]):
        assert abs(got - want) < 1e-6, (step, got, want)


def test_an_optuna_search_of_two_process_jobs(tmp_path):
    """Each job's dir is named by its override (0_clip.max_norm=...): the workers must parse it
    back; and the launcher must hand the sweeper rank 0's final eval loss."""
    base = [a for a in BASE if not a.startswith("clip.max_norm=")]
    done = run_cli("train", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "clip.max_norm=interval(0.1,5)",
                   *base, "data.batch_size=4", "trainer.nproc_per_node=2", "trainer.max_steps=3",
                   f"hydra.sweep.dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [j.name.split("_", 1)[1].startswith("clip.max_norm=") for j in jobs] == [True, True], jobs
    finals = []
    for job in jobs:
        assert len(list(job.glob("events.out.tfevents.*"))) == 1, job
        assert [s for s, _ in read_scalars(job)["train/loss"]] == [1, 2, 3]
        finals.append(read_scalars(job)["eval/loss"][-1][1])  # from the events, not summary.json
    best = (tmp_path / "optimization_results.yaml").read_text()
    assert float(best.split("best_value:")[1].split()[0]) == pytest.approx(min(finals), rel=1e-6)


def test_bad_input_found_by_the_workers_is_their_line_and_exit_2(tmp_path):
    """Found only when the workers build the data: each rank names the file, no traceback, exit 2."""
    done = run_cli("train", "trainer.nproc_per_node=2", "model=bert", "task=classification", "data=jsonl",
                   "data.train_file=/no/such.jsonl", "data.label_field=label", f"hydra.run.dir={tmp_path}")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if line.startswith("error")]
    # Each rank that got there first says it once; the launcher may stop the other before it does.
    lines = [f"error (rank {r}): data.train_file=/no/such.jsonl: no such file" for r in (0, 1)]
    assert said and len(set(said)) == len(said) and set(said) <= set(lines), said
    # and nothing else: not the launcher's "Sending process N closing signal", "failed (exitcode: 2)"
    assert done.stderr.strip().splitlines() == said, done.stderr[-3000:]


def test_fsdp_equals_one_process_and_checkpoints_shards_that_resume_exactly(tmp_path):
    """FSDP2 logs the unsharded norm and clips alike (against one process with the whole batch);
    it writes torch.distributed.checkpoint shards beside a small .pt file; stop at 5, resume to 10."""
    fsdp = ["data.batch_size=4", "trainer.nproc_per_node=2", "strategy=fsdp", "trainer.eval_every=10",
            "checkpoint.keep_last=1"]
    train_together((tmp_path / "ref", *fsdp, "trainer.max_steps=10"),
                   (tmp_path / "one", "data.batch_size=8", "trainer.eval_every=10", "trainer.max_steps=10"))
    assert_same_run(tmp_path / "one", tmp_path / "ref", 10, tokens_per_step=8 * 16)
    train(tmp_path / "run", *fsdp, "trainer.max_steps=5")
    ckpt = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == ["step_00000005.pt", "step_00000005.pt.sha256", "step_00000005.shards"]
    assert len(list((ckpt / "step_00000005.shards").glob("*.distcp"))) == 2  # one file per rank
    train(tmp_path / "run", *fsdp, "trainer.max_steps=10", "checkpoint.resume=auto")
    assert sorted(p.name for p in ckpt.iterdir()) == ["step_00000010.pt", "step_00000010.pt.sha256",
                                                       "step_00000010.shards"]  # keep_last
    ref, run = read_scalars(tmp_path / "ref")["train/loss"], read_scalars(tmp_path / "run")["train/loss"]
    resumed = {s: v for s, v in run if s > 5}
    for step, value in ref[5:]:
        assert abs(resumed[step] - value) < 1e-6, (step, resumed[step], value)
    # trainer export joins the shards into one safetensors file: the resumed run's weights, equal
    # to the uninterrupted run's
    done = run_cli("export", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    from safetensors.torch import load_file
    exported, ref_weights = load_file(str(tmp_path / "run" / "export" / "model.safetensors")), weights(tmp_path / "ref")
    assert exported.keys() == ref_weights.keys() and exported["net.tok.weight"].shape == (16, 32)
    for name, w in ref_weights.items():
        torch.testing.assert_close(exported[name], w, rtol=0, atol=1e-6, msg=name)


def test_host_reads_do_not_grow_with_the_steps_between_log_steps(tmp_path):
    """The in-process host-read count (tests/test_loop.py) for the paths only more than one process
    takes: log.check_ranks (its all-gather of each rank's norms), guard.skip's agreed loss, the
    cross-rank mean and max. Every worker counts its reads (tests/hostreads/sitecustomize.py); a run
    of 4 steps and one of 20, both with two log steps and one eval, read the same number of times
    on each rank, so no read happens per step, but for the non-finite flag's on these CPU ranks
    (precision.step_if_finite: the device is the host), one a step. (Fused AdamW, the default.)"""
    common = ["log.check_ranks=true", "guard.skip=true", "data.batch_size=4", "trainer.nproc_per_node=2"]
    runs = {"short": ["trainer.max_steps=4", "trainer.log_every=2", "trainer.eval_every=4"],
            "long": ["trainer.max_steps=20", "trainer.log_every=10", "trainer.eval_every=20"]}
    pythonpath = os.pathsep.join([str(ROOT / "tests" / "hostreads"), str(ROOT)])

    def counted(name):
        (tmp_path / name / "reads").mkdir(parents=True)
        base = [arg for arg in BASE if not arg.startswith(("trainer.log_every", "trainer.eval_every", "optim.fused"))]
        done = run_cli("train", *base, *common, *runs[name], f"hydra.run.dir={tmp_path / name}",
                       env={"COUNT_HOST_READS": str(tmp_path / name / "reads"), "PYTHONPATH": pythonpath})
        assert done.returncode == 0, done.stderr[-3000:]
        return {rank: json.loads((tmp_path / name / "reads" / f"{rank}.json").read_text()) for rank in (0, 1)}

    with ThreadPoolExecutor(2) as pool:
        short, long = pool.map(counted, runs)
    for rank in (0, 1):
        flags = {name: [c for c in reads[rank] if c.startswith("item precision.py:")]
                 for name, reads in (("short", short), ("long", long))}
        assert (len(flags["short"]), len(flags["long"])) == ((4, 20) if DEVICE == "cpu" else (0, 0)), flags
        rest = {name: sorted(c for c in reads[rank] if c not in flags[name])
                for name, reads in (("short", short), ("long", long))}
        assert rest["short"] and rest["short"] == rest["long"], (rank, rest)


def test_a_checkpoint_mid_interval_resumes_the_cross_rank_values(tmp_path):
    """Two ranks, a checkpoint at step 5 of a 10-step log interval: resumed from it, the log at step
    10 gives the uninterrupted run's train/loss and train/loss_max. The interval's first five steps
    come from the checkpoint, which must hold the ranks' mean loss and their max, not rank 0's own
    (the ranks see different batches, so their losses differ)."""
    common = ["data.batch_size=4", "trainer.nproc_per_node=2", "trainer.max_steps=10", "trainer.eval_every=10",
              "checkpoint.every=5", "checkpoint.keep_last=5", "model.dropout=0.1"]
    base = [arg for arg in BASE if not arg.startswith(("trainer.log_every", "trainer.eval_every"))]
    ref = tmp_path / "ref"
    done = run_cli("train", *base, *common, "trainer.log_every=10", f"hydra.run.dir={ref}")
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = tmp_path / "resumed"
    done = run_cli("train", *base, *common, "trainer.log_every=10", f"hydra.run.dir={resumed}",
                   f"checkpoint.resume={ref / 'checkpoints' / 'step_00000005.pt'}")
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = read_scalars(ref), read_scalars(resumed)
    for tag in ("train/loss", "train/loss_max", "train/grad_norm"):
        (step, x), = a[tag]
        assert b[tag] == [(10, pytest.approx(x, rel=1e-6))], tag
