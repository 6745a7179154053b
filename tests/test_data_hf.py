"""data=hf: datasets on disk as users have them (a save_to_disk DatasetDict with a ClassLabel, as a
Hub dataset is saved; parquet shards; CSV), read with Hugging Face `datasets`."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import make_config, read_scalars, sigterm_during_step
from tests.hf_folder import labelled_jsonl, tiny_bert
from trainer.build import build
from trainer.config import ConfigError
from trainer.data import tokens
from trainer.loop import train
from trainer.monitoring.display import Display
from trainer.preemption import Preempted

datasets = pytest.importorskip("datasets")  # the test extra has it

TINY_BERT = ["model=bert", "model.num_layers=1", "model.hidden_size=32", "model.num_heads=4", "model.intermediate_size=37",
             "model.max_seq_len=64", "trainer.device=cpu", "data.seq_len=32", "data.batch_size=8"]


# +debug=tiny's model (its data keys are data=synthetic's)
TINY_GPT = ["model.num_layers=1", "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64",
            "data.batch_size=8", "trainer.device=cpu"]


def sst2_like(folder, jsonl):
    """The rows of a labelled .jsonl as a Hub classification dataset is saved: a DatasetDict with
    train and validation splits, `sentence`, a ClassLabel `label` whose names are not in sorted
    order, and an `idx` column."""
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    names = ["pos", "neg"]
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=names), "idx": datasets.Value("int32")})
    table = {"sentence": [r["text"] for r in rows], "label": [names.index(r["label"]) for r in rows],
             "idx": list(range(len(rows)))}
    full = datasets.Dataset.from_dict(table, features=features)
    datasets.DatasetDict({"train": full.select(range(320)), "validation": full.select(range(320, len(rows)))}
                         ).save_to_disk(str(folder))
    return rows


@pytest.mark.integration
def test_a_saved_dataset_dict_with_a_class_label_trains_a_classifier_as_jsonl_records_would(tmp_path):
    """Labels are the ClassLabel's names in its order; the validation split is the held-out set;
    each record is what data=jsonl makes of the same row (same tokenizer); rows stay in Arrow files
    datasets memory-maps; the classifier learns the task."""
    bert = tiny_bert(tmp_path / "bert")
    jsonl = labelled_jsonl(tmp_path / "all.jsonl")
    rows = sst2_like(tmp_path / "sst2", jsonl)
    cfg = make_config(*TINY_BERT, f"model.pretrained={bert}", "task=classification", "data=hf",
                      f"data.path={tmp_path / 'sst2'}", "data.text_field=sentence", "trainer.max_steps=60",
                      "trainer.eval_every=60", "optim.lr=2e-3", "sched.warmup_steps=5")
    run = build(cfg)
    assert run.data.label_names == ["pos", "neg"] and run.cfg.model.num_labels == 2
    assert len(run.data.train) == 320 and len(run.data.eval) == len(rows) - 320
    assert run.data.train.ds.cache_files  # Arrow on disk, not a table in memory
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:320]))
    reference = build(make_config(*TINY_BERT, f"model.pretrained={bert}", "task=classification", "data=jsonl",
                                  f"data.train_file={tmp_path / 'train.jsonl'}", f"data.eval_file={jsonl}"))
    for i in (0, 7, 319):  # both in file order: the split's row i is the file's line i
        ours, theirs = run.data.train[i], reference.data.train[i]
        for key in ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask"):
            assert torch.equal(ours[key], theirs[key]), key
        assert run.data.label_names[int(ours["labels"])] == rows[i]["label"]  # ClassLabel order, not sorted
    train(run, tmp_path / "run", Display(60, quiet=True))
    assert dict(read_scalars(tmp_path / "run")["eval/accuracy"])[60] > 0.9


def _parquet_shards(folder, docs):
    folder.mkdir()
    half = len(docs) // 2
    for i, part in enumerate((docs[:half], docs[half:])):
        datasets.Dataset.from_dict({"text": part, "meta": [len(d) for d in part]}).to_parquet(
            str(folder / f"train-0000{i}-of-00002.parquet"))


@pytest.mark.integration
def test_parquet_shards_become_the_token_stream_data_text_would_make_and_resume_exactly(tmp_path, monkeypatch):
    """The text column of every row, as bytes, each document ended by [EOS], cut into seq_len windows
    (the reference is built by hand); val_fraction of the rows are held out; SIGTERM at step 5,
    resume, and the losses are the uninterrupted run's."""
    docs = [f"document {i}: " + "abc def " * (i % 7) for i in range(300)]
    _parquet_shards(tmp_path / "wiki", docs)
    common = [*TINY_GPT, "data=hf", f"data.path={tmp_path / 'wiki'}/*.parquet", "data.seq_len=16",
              "trainer.max_steps=10", "trainer.log_every=1", "model.dropout=0.1"]
    run = build(make_config(*common))
    assert run.data.vocab_size == tokens.BYTE_VOCAB_SIZE and run.cfg.model.vocab_size == tokens.BYTE_VOCAB_SIZE
    held = 300 - 270  # val_fraction 0.1 of 300 rows
    train_rows = run.data.train.ds  # windows of the training rows, in datasets' split order
    assert run.data.notes[0].startswith(f"data.path: 270 training and {held} held-out rows read with datasets")
    parts = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in (tmp_path / "wiki").glob("*.parquet")),
                                  split="train").train_test_split(test_size=0.1, seed=0)
    stream = torch.cat([torch.cat([tokens.encode(t), torch.tensor([tokens.EOS_ID])]) for t in parts["train"]["text"]])
    expected = stream[:len(stream) // 16 * 16].view(-1, 16)
    assert len(train_rows) == len(expected)
    assert torch.equal(torch.stack([run.data.train[i]["input_ids"] for i in range(len(expected))]), expected)

    train(run, tmp_path / "ref", Display(10, quiet=True))
    sigterm_during_step(monkeypatch, 5)
    with pytest.raises(Preempted):
        train(build(make_config(*common)), tmp_path / "run", Display(10, quiet=True))
    monkeypatch.undo()
    train(build(make_config(*common, "checkpoint.resume=auto")), tmp_path / "run", Display(10, quiet=True))
    ref, got = dict(read_scalars(tmp_path / "ref")["train/loss"]), dict(read_scalars(tmp_path / "run")["train/loss"])
    for step in range(1, 11):
        assert got[step] == pytest.approx(ref[step], rel=1e-6), step


@pytest.mark.integration
def test_csv_labels_are_sorted_values_and_bad_input_is_one_line_naming_the_key(tmp_path):
    jsonl = labelled_jsonl(tmp_path / "all.jsonl")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "train.csv"))
    base = [*TINY_BERT, "task=classification", "data=hf"]
    run = build(make_config(*base, f"data.path={tmp_path / 'train.csv'}"))
    assert run.data.label_names == ["neg", "pos"] and run.data.tokenizer is None  # bytes, as data=jsonl
    (tmp_path / "lines").mkdir()
    for i in range(2):  # JSON Lines shards, by glob
        (tmp_path / "lines" / f"part-{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[i::2]))
    shards = build(make_config(*base, f"data.path={tmp_path / 'lines'}/*.jsonl"))
    assert len(shards.data.train) + len(shards.data.eval) == len(rows) and shards.data.label_names == ["neg", "pos"]
    # a BERT masked LM on the same rows as a stream: documents end with [SEP], BERT's separator
    bert = tiny_bert(tmp_path / "bert")
    mlm = build(make_config(*TINY_BERT, f"model.pretrained={bert}", "task=mlm", "data=hf",
                            f"data.path={tmp_path / 'train.csv'}"))
    sep, window = mlm.data.tokenizer.token_to_id("[SEP]"), mlm.data.train[0]["input_ids"]
    assert len(window) == 32 and (window == sep).sum() >= 2
    segment = window[:int((window == sep).nonzero()[0])].tolist()  # the first document, whole
    assert any(mlm.data.tokenizer.encode(r["text"], add_special_tokens=False).ids == segment for r in rows)
    sst2_like(tmp_path / "sst2", jsonl)
    cases = [
        ([f"data.path={tmp_path / 'nothing'}/*.parquet"], "data.path=.*: no such file or save_to_disk folder"),
        ([f"data.path={tmp_path / 'train.csv'}", "data.text_field=sentence"], r"data.path: no 'sentence' column "
         r"\(it has text, label\)"),
        ([f"data.path={tmp_path / 'sst2'}", "data.split=training"], r"data.path=.*: no split 'training' "
         r"\(it has train, validation\)"),
        ([f"data.path={tmp_path}/*"], "data.path=.*: files of one kind"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=f"^{message}"):
            build(make_config(*base, *overrides))


@pytest.mark.slow
def test_two_ranks_split_one_process_batches_and_tokenize_once(tmp_path):
    """2 ranks x 4 windows per step equal 1 process x 8 (loss, norms, weights): each rank reads its
    own share of the same windows; rank 0 tokenizes first and the other reads its cache."""
    from tests.conftest import run_cli
    from tests.test_distributed import assert_same_run

    _parquet_shards(tmp_path / "wiki", [f"document {i}: " + "abc def " * (i % 7) for i in range(300)])
    common = [*TINY_GPT, "data=hf", f"data.path={tmp_path / 'wiki'}/*.parquet", "data.seq_len=16",
              "trainer.max_steps=6", "trainer.log_every=1", "trainer.eval_every=100", "clip.max_norm=0.5",
              "optim.fused=false", "sched=constant", "guard.spike=false"]
    for run_dir, extra in ((tmp_path / "one", ["data.batch_size=8"]),
                           (tmp_path / "two", ["data.batch_size=4", "trainer.nproc_per_node=2"])):
        done = run_cli("train", *common, *extra, f"hydra.run.dir={run_dir}")
        assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two", 6, tokens_per_step=8 * 16)
