"""`trainer prepare` and `data=tokens`: a corpus tokenized once into flat token files, read where they lie.

References are computed another way: documents are split back out of the .bin files at the
end-of-document id and decoded, and a BPE's ids come from encoding each whole document at once.
"""

import json
import pickle

import numpy as np
import pytest
import torch

from tests.conftest import make_config, run_cli
from tests.hf_folder import byte_bpe
from trainer.config import ConfigError
from trainer.data import prepare as prep
from trainer.data import tokens

PYTHON_LIKE = "def f(x):\n    return x + 1\n\n\nclass A:\n    pass\n"


def corpus(folder, n_jsonl=60, n_txt=6):
    """JSON Lines records (one with U+2028 and a tab inside its string, CRLF line ends) and plain files."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = [f"record {i}: the quick brown fox\u2028jumps {i * 7}\tover" for i in range(n_jsonl)]
    (folder / "a.jsonl").write_bytes("".join(json.dumps({"text": d}, ensure_ascii=False) + "\r\n" for d in docs)
                                     .encode("utf-8"))
    for i in range(n_txt):
        text = f"# file {i}\n" + PYTHON_LIKE * (3 + i) + "  x = 'é'\n"
        (folder / f"b{i}.py").write_text(text)
        docs.append(text)
    return docs


def split_documents(path, dtype, eos):
    ids = np.fromfile(path, dtype=dtype).astype(np.int64)
    ends = np.flatnonzero(ids == eos)
    assert len(ids) == 0 or ends[-1] == len(ids) - 1  # every document ends with the id
    return [ids[a + 1 if i else 0:b] for i, (a, b) in enumerate(zip(np.r_[-1, ends[:-1]], ends))]


@pytest.mark.integration
def test_bytes_documents_come_back_whole_and_split_by_document(tmp_path):
    docs = corpus(tmp_path / "c")
    meta = prep.prepare(str(tmp_path / "c" / "*"), tmp_path / "out", val_fraction=0.2, quiet=True)
    assert (meta["dtype"], meta["vocab_size"], meta["eos_id"]) == ("uint16", 259, tokens.EOS_ID)
    back = {}
    for name in ("train", "val"):
        pieces = split_documents(tmp_path / "out" / f"{name}.bin", np.uint16, tokens.EOS_ID)
        back[name] = [tokens.decode(torch.tensor(p)) for p in pieces]
        assert len(back[name]) == meta[name]["documents"] > 0
        assert sum(len(p) + 1 for p in pieces) == meta[name]["tokens"]
    assert sorted(back["train"] + back["val"]) == sorted(docs)  # every document whole, once
    assert not set(back["train"]) & set(back["val"])
    assert len(back["val"]) < len(back["train"])


@pytest.mark.integration
def test_a_byte_level_bpe_gives_the_ids_of_each_whole_document_even_read_in_small_chunks(tmp_path, monkeypatch):
    from tokenizers import Tokenizer

    docs = corpus(tmp_path / "c")
    bpe = byte_bpe(tmp_path / "tokenizer.json", docs)
    monkeypatch.setattr(prep, "CHUNK_CHARS", 16)  # a plain file in many chunks; cuts must not change ids
    meta = prep.prepare(str(tmp_path / "c" / "*"), tmp_path / "out", tokenizer=str(bpe), val_fraction=0.2, quiet=True)
    reference = Tokenizer.from_file(str(bpe))
    eos = reference.token_to_id("<|endoftext|>")
    assert meta["eos_id"] == eos and meta["vocab_size"] == reference.get_vocab_size()
    expected = {tuple(reference.encode(d, add_special_tokens=False).ids) for d in docs}
    got = [tuple(p.tolist()) for name in ("train", "val")
           for p in split_documents(tmp_path / "out" / f"{name}.bin", np.uint16, eos)]
    assert len(got) == len(docs) and set(got) == expected
    assert max(len(d) for d in docs if d.startswith("# file")) > 16 * 10  # really chunked


@pytest.mark.integration
def test_tokenizer_calls_take_batches_across_files(tmp_path, monkeypatch):
    """Many small files: a few tokenizer calls of many texts (what its threads spread over the
    cores), not a call per file; the ids are those of one call per document."""
    docs = corpus(tmp_path / "c", n_jsonl=0, n_txt=40)
    bpe = byte_bpe(tmp_path / "tokenizer.json", docs)
    real = prep.load_tokenizer
    calls = []

    def counted(path):
        tok = real(path)
        encode = tok.encode_batch
        tok.encode_batch = lambda texts: calls.append(len(texts)) or encode(texts)
        return tok

    monkeypatch.setattr(prep, "load_tokenizer", counted)
    prep.prepare(str(tmp_path / "c" / "*"), tmp_path / "out", tokenizer=str(bpe), val_fraction=0.2, quiet=True)
    # each file: its text in two pieces (cut at its last safe line end) and its end marker; one call
    assert calls == [120]
    monkeypatch.setattr(prep, "BATCH_DOCS", 32)
    calls.clear()
    prep.prepare(str(tmp_path / "c" / "*"), tmp_path / "out2", tokenizer=str(bpe), val_fraction=0.2, quiet=True)
    assert calls == [32, 32, 32, 24]
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "out2" / name).read_bytes()


@pytest.mark.integration
def test_data_tokens_reads_windows_where_they_lie_and_trains(tmp_path):
    corpus(tmp_path / "c", n_jsonl=200)
    prep.prepare(str(tmp_path / "c" / "*"), tmp_path / "out", val_fraction=0.2, quiet=True)
    from trainer.build import build
    from trainer.loop import train
    from trainer.monitoring.display import Display

    run = build(make_config("data=tokens", f"data.dir={tmp_path / 'out'}", "data.seq_len=32", "data.batch_size=4",
                            "model.num_layers=1", "model.hidden_size=32", "model.num_heads=2",
                            "model.intermediate_size=64", "model.max_seq_len=32", "trainer.device=cpu",
                            "trainer.max_steps=3", "trainer.eval_every=3"))
    flat = np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16)
    assert len(run.data.train) == len(flat) // 32 and run.cfg.model.vocab_size == 259
    for i in (0, 5, len(run.data.train) - 1):
        assert torch.equal(run.data.train[i]["input_ids"], torch.from_numpy(flat[i * 32:(i + 1) * 32].astype(np.int64)))
    assert len(pickle.dumps(run.data.train)) < 2000  # a DataLoader worker gets the path, not the tokens
    assert "read where they lie" in run.notes[-1]
    summary = train(run, tmp_path / "run", Display(3, quiet=True))
    assert np.isfinite(summary["final eval loss"])


@pytest.mark.unit
def test_bad_input_is_one_line_naming_what(tmp_path):
    from trainer.data.shards import TokenShards

    with pytest.raises(ConfigError, match=r"no meta.json in it; make it with `trainer prepare"):
        TokenShards(dir=str(tmp_path), seq_len=8)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "one.txt").write_text("only one document\n" * 50)
    with pytest.raises(ConfigError, match=r"held out none of the 1 documents|held out all of the 1 documents"):
        prep.prepare(str(tmp_path / "c" / "*.txt"), tmp_path / "out", quiet=True)
    assert not list((tmp_path / "out").glob("*.bin*"))  # nothing half-made left
    corpus(tmp_path / "d")
    prep.prepare(str(tmp_path / "d" / "*"), tmp_path / "ok", val_fraction=0.2, quiet=True)
    with pytest.raises(ConfigError, match=r"already prepared"):
        prep.prepare(str(tmp_path / "d" / "*"), tmp_path / "ok", quiet=True)
    train_bin = tmp_path / "ok" / "train.bin"
    train_bin.write_bytes(train_bin.read_bytes()[:-2])  # one token short: a copy cut off
    with pytest.raises(ConfigError, match=r"train.bin: \d+ bytes, meta.json says \d+ uint16 tokens"):
        TokenShards(dir=str(tmp_path / "ok"), seq_len=8)
    bpe = byte_bpe(tmp_path / "no-eos.json", ["some text"], vocab_size=270)
    data = json.loads(bpe.read_text())
    data["added_tokens"] = []
    del data["model"]["vocab"]["<|endoftext|>"]
    bpe.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"no end-of-document token"):
        prep.prepare(str(tmp_path / "d" / "*"), tmp_path / "x", tokenizer=str(bpe), quiet=True)


@pytest.mark.slow
def test_the_prepare_command_prints_throughput_and_what_to_train(tmp_path):
    corpus(tmp_path / "c")
    out = run_cli("prepare", str(tmp_path / "c" / "*"), "--out", str(tmp_path / "out"), "--val-fraction", "0.2")
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    assert first.startswith(f"prepared {tmp_path / 'out'}: ") and " MB/s, " in first and first.endswith(" tokens/s")
    assert second == f"train on it: trainer train data=tokens data.dir={tmp_path / 'out'}"
    again = run_cli("prepare", str(tmp_path / "c" / "*"), "--out", str(tmp_path / "out"))
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"error: --out {tmp_path / 'out'}: already prepared (it has meta.json); remove it or choose another dir"]


@pytest.mark.integration
def test_data_tokens_resumes_at_the_exact_window(tmp_path):
    """4 steps, against 2 steps, a checkpoint, and 2 more in a new run: the same per-step losses
    (the lazy order's position is in the checkpoint, as every source's)."""
    from tests.conftest import read_scalars
    from trainer.build import build
    from trainer.loop import train
    from trainer.monitoring.display import Display

    corpus(tmp_path / "c", n_jsonl=200)
    prep.prepare(str(tmp_path / "c" / "*"), tmp_path / "out", val_fraction=0.2, quiet=True)
    common = ["data=tokens", f"data.dir={tmp_path / 'out'}", "data.seq_len=32", "data.batch_size=4",
              "model.num_layers=1", "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64",
              "model.max_seq_len=32", "model.dropout=0.1", "trainer.device=cpu", "trainer.log_every=1",
              "trainer.eval_every=100"]
    train(build(make_config(*common, "trainer.max_steps=4", f"checkpoint.dir={tmp_path / 'ref-ck'}")),
          tmp_path / "ref", Display(4, quiet=True))
    ck = f"checkpoint.dir={tmp_path / 'ck'}"
    train(build(make_config(*common, "trainer.max_steps=2", ck)), tmp_path / "first", Display(2, quiet=True))
    train(build(make_config(*common, "trainer.max_steps=4", ck, "checkpoint.resume=auto")), tmp_path / "second",
          Display(4, quiet=True))
    ref = read_scalars(tmp_path / "ref")["train/loss"]
    assert read_scalars(tmp_path / "first")["train/loss"] == ref[:2]
    assert read_scalars(tmp_path / "second")["train/loss"] == ref[2:] and len(ref) == 4
