"""`trainer export`: the checkpoint's weights as safetensors, equal to the trained model's."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY, make_config, run_cli
from trainer.build import build
from trainer.checkpointing.export import export
from trainer.config import ConfigError
from trainer.monitoring.display import Display
from trainer.loop import train



@pytest.mark.slow
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


@pytest.mark.slow
def test_export_of_a_dir_without_a_run_is_one_line(tmp_path):
    out = run_cli("export", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: {tmp_path}: not a run directory (no config.yaml)"]


@pytest.mark.integration
def test_export_files_have_the_checkpoints_permissions_and_a_missing_dir_is_named(tmp_path):
    train(build(make_config(*TINY, "trainer.max_steps=2")), tmp_path, Display(2, quiet=True))
    out = export(tmp_path)
    mode = (tmp_path / "checkpoints" / "step_00000002.pt").stat().st_mode & 0o777
    assert [(out / name).stat().st_mode & 0o777 for name in ("model.safetensors", "config.json")] == [mode, mode]
    with pytest.raises(ConfigError, match=r"/no/such/run: no such directory$"):
        export(Path("/no/such/run"))
