"""BERT from a Hugging Face-format folder on disk: same numbers as transformers, fine-tunes, clear errors.

`transformers` is a test-only dependency: it writes the folders and computes the reference.
"""

import json

import pytest
import torch

from tests.conftest import make_config, run_cli
from tests.hf_folder import OLD_CONFIG, OLD_LAYOUTS, labelled_jsonl, old_bert, tiny_bert
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


@pytest.mark.integration
@pytest.mark.parametrize("layout", OLD_LAYOUTS)
def test_folders_written_the_old_ways_load_as_transformers_loads_them(tmp_path, folder, labelled, layout):
    """Hand-written folders in the layouts of older releases and other tools: the encoder (and the
    head the folder has) gives transformers' numbers, loading the same folder."""
    old = old_bert(folder, tmp_path / layout, layout)
    task = "classification" if layout == "classification-sharded" else "mlm"
    run = build(make_config("model=bert", f"model.pretrained={old}", "data=jsonl", f"data.train_file={labelled}",
                            "data.seq_len=32", "trainer.device=cpu", f"task={task}"))
    assert run.cfg.model.layer_norm_eps == 1e-12 and run.cfg.model.hidden_act == "gelu"  # config.json's defaults
    ours = run.model.eval()
    torch.manual_seed(2)
    ids = torch.randint(0, 47, (2, 16))
    with torch.no_grad():
        reference = transformers.BertModel.from_pretrained(old, add_pooling_layer=True).eval()
        theirs = reference(input_ids=ids)
        torch.testing.assert_close(ours.encode(ids), theirs.last_hidden_state, rtol=0, atol=1e-5)
        if layout == "pretraining-safetensors":
            mlm = transformers.BertForPreTraining.from_pretrained(old).eval()(input_ids=ids).prediction_logits
            torch.testing.assert_close(ours.mlm_logits(ours.encode(ids)), mlm, rtol=0, atol=1e-5)
            assert run.notes[-1].endswith("; not used by task=mlm: bert.pooler.dense.bias, bert.pooler.dense.weight, "
                                          "cls.seq_relationship.bias, cls.seq_relationship.weight")
        if layout == "classification-sharded":
            clf = transformers.BertForSequenceClassification.from_pretrained(old).eval()
            _, logits = ours(ids, labels=torch.zeros(2, dtype=torch.long), return_logits=True)
            torch.testing.assert_close(logits, clf(input_ids=ids).logits, rtol=0, atol=1e-5)
            torch.testing.assert_close(ours.pooler.weight, reference.pooler.dense.weight, rtol=0, atol=0)
            assert "new (not in it)" not in run.notes[-1]  # the folder's own pooler and classifier


@pytest.mark.unit
@pytest.mark.parametrize("key,value,task,expected", [
    ("position_embedding_type", "relative_key", "mlm", 'position_embedding_type="relative_key", refused: '
                                                        "the native BERT has learned absolute positions only"),
    ("hidden_act", "gelu_fast", "mlm", 'hidden_act="gelu_fast", refused: the native BERT computes gelu, gelu_new'),
    ("is_decoder", True, "mlm", "is_decoder=true, refused: the native BERT is an encoder"),
    ("tie_word_embeddings", False, "mlm", "tie_word_embeddings=false, refused: the native BERT's masked-LM head is tied"),
    ("problem_type", "multi_label_classification", "classification",
     'problem_type="multi_label_classification", refused: model=bert trains single-label classification'),
    ("hidden_size", None, "mlm", "missing hidden_size"),
])
def test_config_json_keys_that_change_the_math_are_read_or_refused_naming_file_and_key(tmp_path, key, value, task,
                                                                                         expected):
    from trainer.config import ConfigError
    from trainer.pretrained_config import architecture

    config = dict(OLD_CONFIG)
    if value is None:
        del config[key]
    else:
        config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError) as e:
        architecture(tmp_path, task)
    assert str(e.value).startswith(f"{tmp_path / 'config.json'}: {expected}"), str(e.value)
    config["problem_type"] = "multi_label_classification"  # read by a classifier only
    config.pop(key, None)
    config.update({"hidden_size": 32, "hidden_act": "gelu_new", "attention_probs_dropout_prob": 0.25,
                   "classifier_dropout": 0.5, "position_embedding_type": "absolute"})
    (tmp_path / "config.json").write_text(json.dumps(config))
    keys = architecture(tmp_path, "mlm")
    assert (keys["hidden_act"], keys["attention_dropout"], keys["classifier_dropout"], keys["dropout"],
            keys["layer_norm_eps"]) == ("gelu_new", 0.25, 0.5, 0.0, 1e-12)


@pytest.mark.integration
def test_hidden_act_and_dropouts_from_config_json_reach_the_math(tmp_path, folder, labelled):
    """gelu_new (tanh) gives transformers' numbers; attention_probs_dropout_prob and
    classifier_dropout are the model's; a dropout typed on the command line wins over config.json."""
    import shutil

    tanh = tmp_path / "tanh"
    shutil.copytree(folder, tanh)
    config = json.loads((tanh / "config.json").read_text())
    config.update(hidden_act="gelu_new", attention_probs_dropout_prob=0.3, classifier_dropout=0.4)
    (tanh / "config.json").write_text(json.dumps(config))
    common = ["model=bert", f"model.pretrained={tanh}", "data=jsonl", f"data.train_file={labelled}", "data.seq_len=32",
              "trainer.device=cpu"]
    run = build(make_config(*common))
    ours = run.model
    reference = transformers.BertForMaskedLM.from_pretrained(tanh).eval()
    ids = torch.randint(0, 47, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval().mlm_logits(ours.encode(ids)), reference(input_ids=ids).logits,
                                   rtol=0, atol=1e-5)
        # The tiny model's activations are small, where the two GELUs nearly agree: so the functions themselves.
        x = torch.linspace(-4, 4, 101)
        for act in (ours.layers[0].act, ours.mlm.act):
            torch.testing.assert_close(act(x), transformers.activations.ACT2FN["gelu_new"](x), rtol=0, atol=1e-6)
            assert (act(x) - torch.nn.functional.gelu(x)).abs().max() > 1e-4
        # Training mode: only attention dropout is on (hidden_dropout_prob is 0), and it changes the output.
        assert ours.layers[0].attention_dropout == 0.3 and ours.layers[0].drop.p == 0.0
        assert not torch.equal(ours.train().encode(ids), ours.eval().encode(ids))
    typed = ["task=classification", "model.dropout=0.2"]
    clf = build(make_config(*common, *typed), typed)
    assert (clf.cfg.model.dropout, clf.cfg.model.attention_dropout, clf.model.drop.p) == (0.2, 0.3, 0.4)


@pytest.mark.integration
def test_a_pretrained_classifier_is_put_in_the_datas_label_order(tmp_path, folder, labelled):
    """config.json's id2label says row 0 is pos: the data's labels (neg, pos) take its rows swapped."""
    from safetensors.torch import load_file

    old = old_bert(folder, tmp_path / "clf", "classification-sharded")
    config = json.loads((old / "config.json").read_text())
    config.update(id2label={"0": "pos", "1": "neg"}, label2id={"pos": 0, "neg": 1})
    (old / "config.json").write_text(json.dumps(config))
    theirs = {**load_file(str(old / "model-00001-of-00002.safetensors")),
              **load_file(str(old / "model-00002-of-00002.safetensors"))}
    run = build(make_config(*finetune_args(old, labelled, "trainer.device=cpu")))
    assert run.data.label_names == ["neg", "pos"]
    torch.testing.assert_close(run.model.classifier.weight, theirs["classifier.weight"][[1, 0]], rtol=0, atol=0)
    torch.testing.assert_close(run.model.classifier.bias, theirs["classifier.bias"][[1, 0]], rtol=0, atol=0)
    assert run.notes[-1] == ("model.pretrained: classifier rows reordered from config.json's id2label (pos, neg) "
                             "to the data's labels (neg, pos)")
    config.update(id2label={"0": "negative", "1": "positive"})
    (old / "config.json").write_text(json.dumps(config))
    run = build(make_config(*finetune_args(old, labelled, "trainer.device=cpu")))
    torch.testing.assert_close(run.model.classifier.weight, theirs["classifier.weight"], rtol=0, atol=0)
    assert run.notes[-1].endswith("its classifier's labels (negative, positive) are not the data's (neg, pos); "
                                  "its rows are kept by position")
