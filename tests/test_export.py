import pytest
"""`trainer export`: the checkpoint's weights as safetensors, equal to the trained model's."""

import json

import torch
from safetensors.torch import load_file

from tests.conftest import TINY, make_config, run_cli
from trainer.build import build
from trainer.monitoring.display import Display
from trainer.loop import train

pytestmark = pytest.mark.slow


def test_export_writes_the_final_weights_and_model_config(tmp_path):
    run = build(make_config(*TINY, "trainer.max_steps=3"))
    train(run, tmp_path, Display(3, quiet=True))
    out = run_cli("export", str(tmp_path))
    assert out.returncode == 0, out.stderr
    weights = load_file(tmp_path / "export" / "model.safetensors")
    expected = run.model.state_dict()
    assert weights.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(weights[k], v), k
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["hidden_size"] == 32 and config["vocab_size"] == 16 and config["step"] == 3


def test_export_of_a_dir_without_a_run_is_one_line(tmp_path):
    out = run_cli("export", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: {tmp_path}: not a run directory (no config.yaml)"]
