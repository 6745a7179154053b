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
    out, _ = export(tmp_path)
    mode = (tmp_path / "checkpoints" / "step_00000002.pt").stat().st_mode & 0o777
    assert [(out / name).stat().st_mode & 0o777 for name in ("model.safetensors", "config.json")] == [mode, mode]
    with pytest.raises(ConfigError, match=r"/no/such/run: no such directory$"):
        export(Path("/no/such/run"))


@pytest.mark.integration
@pytest.mark.parametrize("task", ["classification", "mlm"])
def test_a_bert_export_is_a_folder_transformers_loads_with_the_same_logits(tmp_path, task):
    """Fine-tuned from a pretrained folder (classification: its tokenizer, label names from the
    data) or trained from scratch (mlm: the byte tokenizer): transformers' Auto class loads every
    weight (none missing, none unexpected) and computes trainer's logits; the export fine-tunes further."""
    transformers = pytest.importorskip("transformers")
    from tests.hf_folder import labelled_jsonl, tiny_bert

    labelled = labelled_jsonl(tmp_path / "train.jsonl")
    data = ["data=jsonl", f"data.train_file={labelled}", "data.seq_len=32", "trainer.device=cpu", "trainer.max_steps=3"]
    if task == "classification":
        folder = tiny_bert(tmp_path / "tiny-bert")
        overrides = ["model=bert", f"model.pretrained={folder}", "task=classification", *data]
    else:
        overrides = ["model=bert", "model.num_layers=2", "model.hidden_size=32", "model.num_heads=4",
                     "model.intermediate_size=37", "model.max_seq_len=64", "task=mlm", "model.hidden_act=gelu_new", *data]
    run = build(make_config(*overrides))
    train(run, tmp_path / "run", Display(3, quiet=True))
    out = run_cli("export", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    export_dir = tmp_path / "run" / "export"
    auto = transformers.AutoModelForSequenceClassification if task == "classification" else transformers.AutoModelForMaskedLM
    theirs, info = auto.from_pretrained(export_dir, output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), info
    theirs.eval()
    ours = run.model.eval()
    ids = torch.randint(5, 47, (3, 20), generator=torch.Generator().manual_seed(4))
    attention = torch.ones_like(ids)
    attention[2, 11:] = 0
    with torch.no_grad():
        if task == "classification":
            _, logits = ours(ids, attention, labels=torch.zeros(3, dtype=torch.long), return_logits=True)
            torch.testing.assert_close(logits, theirs(input_ids=ids, attention_mask=attention).logits, rtol=0, atol=1e-5)
        else:
            logits = ours.mlm_logits(ours.encode(ids, attention))
            real = attention.bool()
            torch.testing.assert_close(logits[real], theirs(input_ids=ids, attention_mask=attention).logits[real],
                                       rtol=0, atol=1e-5)
    config = json.loads((export_dir / "config.json").read_text())
    assert config["trainer"]["step"] == 3
    if task == "classification":
        assert theirs.config.id2label == {0: "neg", 1: "pos"} and theirs.config.label2id == {"neg": 0, "pos": 1}
        tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir)
        assert tokenizer("GOOD w1")["input_ids"] == run.data.tokenizer.encode("GOOD w1").ids
        again = build(make_config("model=bert", f"model.pretrained={export_dir}", *overrides[2:]))
        assert "new (not in it)" not in again.notes[-1]  # the export's classifier and pooler come back
        for name, w in run.model.state_dict().items():
            assert torch.equal(again.model.state_dict()[name], w), name
    else:
        assert theirs.config.hidden_act == "gelu_new"
        assert "no tokenizer files: the run used trainer's byte tokenizer" in out.stdout
