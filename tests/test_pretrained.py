"""BERT from a Hugging Face-format folder on disk: same numbers as transformers, fine-tunes, clear errors.

`transformers` is a test-only dependency: it writes the folders and computes the reference.
"""

import json

import pytest
import torch

from tests.conftest import make_config, run_cli
from tests.hf_folder import labelled_jsonl, tiny_bert
from trainer.build import build
from trainer.monitoring.display import Display
from trainer.evaluate import classification_metrics
from trainer.loop import train

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("hf") / "tiny-bert")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return labelled_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl")


def finetune_args(folder, labelled, *more):
    return ["model=bert", f"model.pretrained={folder}", "task=classification", "data=jsonl",
            f"data.train_file={labelled}", "data.seq_len=32", *more]  # data.label_field: `label` by convention


@pytest.mark.integration
def test_hidden_states_and_mlm_logits_equal_transformers(folder, labelled):
    run = build(make_config("model=bert", f"model.pretrained={folder}", "data=jsonl", f"data.train_file={labelled}",
                            "data.seq_len=32", "trainer.device=cpu"))
    assert (run.cfg.model.num_layers, run.cfg.model.hidden_size, run.cfg.model.vocab_size) == (2, 32, 47)
    reference = transformers.BertForMaskedLM.from_pretrained(folder).eval()
    ours = run.model.eval()
    torch.manual_seed(1)
    ids = torch.randint(0, 47, (3, 20))
    attention = torch.ones_like(ids)
    attention[1, 12:] = 0  # padding
    types = torch.zeros_like(ids)
    types[:, 8:] = 1  # a text pair
    with torch.no_grad():
        theirs = reference(input_ids=ids, attention_mask=attention, token_type_ids=types, output_hidden_states=True)
        hidden = ours.encode(ids, attention, types)
        logits = ours.mlm_logits(hidden)
    real = attention.bool()  # padded positions' outputs are never used
    torch.testing.assert_close(hidden[real], theirs.hidden_states[-1][real], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[real], theirs.logits[real], rtol=0, atol=1e-5)


@pytest.mark.integration
def test_tokenizer_matches_transformers_including_lower_casing(folder, labelled):
    run = build(make_config(*finetune_args(folder, labelled, "trainer.device=cpu")))
    reference = transformers.AutoTokenizer.from_pretrained(folder)
    first = json.loads(labelled.read_text().splitlines()[0])
    assert first["text"] != first["text"].lower()  # upper case in the file; the vocabulary is lower case
    item = next(i for i in run.data.train.items + run.data.eval.items)
    ours = run.data.tokenizer.encode(first["text"]).ids
    assert ours == reference(first["text"])["input_ids"]
    assert run.data.tokenizer.token_to_id("[UNK]") not in ours
    assert {"input_ids", "attention_mask", "token_type_ids", "labels"} <= set(item)


@pytest.mark.integration
def test_finetuning_the_tiny_checkpoint_reaches_90_percent_accuracy(folder, labelled, tmp_path):
    run = build(make_config(*finetune_args(folder, labelled, "trainer.max_steps=150", "optim.lr=1e-3",
                                           "trainer.eval_every=150", "trainer.device=cpu")))
    assert run.notes[0].startswith("data.label_field=label (task=classification; the Hugging Face datasets convention)")
    assert "new (not in it): pooler.weight, pooler.bias, classifier.weight, classifier.bias" in run.notes[1]
    summary = train(run, tmp_path, Display(150, quiet=True))
    assert summary["final eval accuracy"] >= 0.9, summary
    assert summary["final eval f1"] >= 0.9, summary


@pytest.mark.integration
def test_vocab_txt_only_folder_lower_cases_as_its_config_says(tmp_path, labelled):
    folder = tiny_bert(tmp_path / "vocab-only", vocab_txt_only=True)
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    run = build(make_config(*finetune_args(folder, labelled, "trainer.device=cpu")))
    assert run.data.tokenizer.encode("GOOD").ids[1] == run.data.tokenizer.token_to_id("[UNK]")  # no lower-casing
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    run = build(make_config(*finetune_args(folder, labelled, "trainer.device=cpu")))
    assert run.data.tokenizer.encode("GOOD").ids[1] == run.data.tokenizer.token_to_id("good")


@pytest.mark.unit
def test_classification_metrics_against_hand_counts():
    # rows: true class, columns: predicted. Class 1: tp 30, fp 10, fn 5.
    confusion = torch.tensor([[50.0, 10.0], [5.0, 30.0]])
    m = classification_metrics(confusion)
    assert m["eval/accuracy"] == pytest.approx(80 / 95)
    p, r = 30 / 40, 30 / 35
    assert m["eval/f1"] == pytest.approx(2 * p * r / (p + r))
    three = classification_metrics(torch.eye(3) * 4)
    assert three == {"eval/accuracy": 1.0, "eval/f1": 1.0}


def _broken(tmp_path, folder, how):
    import shutil

    broken = tmp_path / how
    shutil.copytree(folder, broken)
    if how == "no-weights":
        (broken / "model.safetensors").unlink()
    elif how == "wrong-shape":
        config = json.loads((broken / "config.json").read_text())
        config["intermediate_size"] = 40
        (broken / "config.json").write_text(json.dumps(config))
    elif how == "no-tokenizer":
        (broken / "tokenizer.json").unlink()
        (broken / "vocab.txt").unlink()
    return broken


@pytest.mark.slow
@pytest.mark.parametrize("how,expected", [
    ("no-weights", "no model.safetensors in it"),
    ("wrong-shape", "parameter layers.0.up.bias has shape [37], the model (from config.json) expects [40]"),
    ("no-tokenizer", "no tokenizer.json or vocab.txt in it"),
])
def test_a_broken_folder_is_one_line_naming_the_file_or_parameter(tmp_path, folder, labelled, how, expected):
    broken = _broken(tmp_path, folder, how)
    out = run_cli("train", *finetune_args(broken, labelled), f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0] and str(broken) in lines[0], out.stderr
    assert "Traceback" not in out.stderr
