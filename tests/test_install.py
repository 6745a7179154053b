"""The install itself: a CPU machine gets no CUDA wheels; a wheel install works from any directory."""

import os
import subprocess
import sys
from importlib.metadata import distributions, version

import pytest
import torch

from tests.conftest import ROOT


@pytest.mark.unit
def test_torch_is_the_pinned_release():
    assert version("torch").split("+")[0] == "2.13.0"


@pytest.mark.unit
@pytest.mark.skipif(torch.version.cuda is not None, reason="a CUDA build of torch brings nvidia-* wheels by design")
def test_no_nvidia_wheels_on_a_cpu_install():
    nvidia = sorted(d.metadata["Name"] for d in distributions() if d.metadata["Name"].lower().startswith("nvidia"))
    assert nvidia == []


@pytest.mark.slow
def test_the_wheel_carries_its_configs_and_trains_from_any_directory(tmp_path):
    """`pip install .` (not editable): the wheel alone, installed into an empty directory, runs a
    tiny training and composes a recipe from an unrelated working directory."""
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT), "-w", str(tmp_path / "dist")],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("trainer-*.whl")
    subprocess.run([*pip, "install", "-q", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}  # the wheel's trainer, not the checkout's

    def trainer(*args):
        return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import trainer; print(trainer.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True)
    assert where.stdout.startswith(str(tmp_path / "site")), where
    done = trainer("train", "+debug=tiny", "trainer.max_steps=3", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))
    recipe = trainer("train", "+recipes=gpt-text", "--cfg", "job")
    assert recipe.returncode == 0 and "num_layers: 6" in recipe.stdout, recipe.stderr[-2000:]
