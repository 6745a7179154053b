"""Built-in data sources: text files and jsonl to byte tokens, the held-out split, the synthetic task."""

import json
import re

import pytest
import torch

from trainer.config import ConfigError
from trainer.data import SyntheticData, TextData
from trainer.data.tokens import EOS_ID, decode, encode

pytestmark = pytest.mark.unit


def test_text_and_jsonl_become_one_stream_with_a_held_out_tail(tmp_path):
    (tmp_path / "a.txt").write_text("héllo world " * 50)
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": f"doc {i} " * 10}) for i in range(5)))
    data = TextData(files=str(tmp_path / "*"), seq_len=16, text_field="text", val_fraction=0.25)
    stream = torch.cat([data.train.stream, data.eval.stream])
    # Files in sorted order, each document followed by EOS: a.txt, then the five jsonl lines.
    expected = [encode("héllo world " * 50)] + [encode(f"doc {i} " * 10) for i in range(5)]
    assert stream.tolist() == [t for doc in expected for t in doc.tolist() + [EOS_ID]]
    assert len(data.eval.stream) == int(len(stream) * 0.25)
    assert decode(data.train[0]["input_ids"]) == ("héllo world " * 50).encode()[:16].decode()
    assert len(data.train) == len(data.train.stream) // 16


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    with pytest.raises(ConfigError, match=r"x.jsonl:2: .*'text'"):
        TextData(files=str(tmp_path / "*.jsonl"), seq_len=4, text_field="text", val_fraction=0.1)


def test_too_little_text_is_a_config_error(tmp_path):
    (tmp_path / "tiny.txt").write_text("abc")
    with pytest.raises(ConfigError, match="too few"):
        TextData(files=str(tmp_path / "*.txt"), seq_len=16, text_field="text", val_fraction=0.1)


def test_synthetic_task_follows_its_successor_table():
    data = SyntheticData(vocab_size=20, num_samples=64, eval_samples=8, noise=0.0, seq_len=10, seed=3)
    seqs = data.train.tensors[0]
    succ = {}
    for a, b in zip(seqs[:, :-1].flatten().tolist(), seqs[:, 1:].flatten().tolist()):
        assert succ.setdefault(a, b) == b  # noise=0: each token always has the same successor
    again = SyntheticData(vocab_size=20, num_samples=64, eval_samples=8, noise=0.0, seq_len=10, seed=3)
    assert torch.equal(again.train.tensors[0], seqs)


def test_files_that_are_not_text_are_skipped_with_a_line_and_a_folder_asks_for_a_glob(tmp_path):
    (tmp_path / "a.txt").write_text("plain text, the only file to train on. " * 40)
    (tmp_path / "b.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20)
    (tmp_path / "c.dat").write_bytes(bytes(range(128, 256)) * 8)  # no NUL, but no UTF-8 either
    data = TextData(files=str(tmp_path / "*"), seq_len=16, text_field="text", val_fraction=0.1)
    assert data.num_files == 1
    assert data.notes == [f"data.files: skipped {tmp_path / 'b.bin'}: binary (it has NUL bytes)",
                          f"data.files: skipped {tmp_path / 'c.dat'}: not UTF-8 text (1024 undecodable bytes)"]
    assert data.num_tokens == len("plain text, the only file to train on. " * 40) + 1  # its bytes and EOS
    with pytest.raises(ConfigError, match=re.escape(f"data.files={tmp_path}: a directory; give a glob of its "
                                                    f"files, e.g. data.files='{tmp_path}/**/*.txt'")):
        TextData(files=str(tmp_path), seq_len=16, text_field="text", val_fraction=0.1)
    with pytest.raises(ConfigError, match="matches no text file"):
        TextData(files=str(tmp_path / "*.[bd]*"), seq_len=16, text_field="text", val_fraction=0.1)


# Records as other tools write them: json.dumps(ensure_ascii=False) keeps U+2028/U+2029/U+0085 raw
# inside strings (valid JSON), Windows tools write a UTF-8 BOM and CRLF, and a CSV field may be
# quoted over several lines.
ODD_TEXTS = ["line\u2028separator", "para\u2029graph", "next\u0085line", "plain"]


def test_jsonl_is_split_on_newlines_only_with_bom_and_crlf_accepted(tmp_path):
    from trainer.data.labelled import read_records

    path = tmp_path / "train.jsonl"
    body = "\r\n".join(json.dumps({"text": t, "label": "a"}, ensure_ascii=False) for t in ODD_TEXTS)
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert [r["text"] for r in read_records(path, ["text", "label"], "data.train_file")] == ODD_TEXTS
    (tmp_path / "lm.jsonl").write_bytes(path.read_bytes())  # the same file as language-model text
    data = TextData(files=str(tmp_path / "lm.jsonl"), seq_len=4, text_field="text", val_fraction=0.25)
    stream = torch.cat([data.train.stream, data.eval.stream])
    assert stream.tolist() == [t for doc in ODD_TEXTS for t in encode(doc).tolist() + [EOS_ID]]


def test_csv_rows_are_the_csv_modules_with_a_bom_and_quoted_newlines(tmp_path):
    from trainer.data.labelled import read_records

    path = tmp_path / "train.csv"
    path.write_bytes(b'\xef\xbb\xbftext,label\r\n"two\r\nlines",a\r\n"line\xe2\x80\xa8sep",b\r\n')
    assert read_records(path, ["text", "label"], "data.train_file") == [
        {"text": "two\nlines", "label": "a"}, {"text": "line\u2028sep", "label": "b"}]


@pytest.mark.parametrize("record, said", [({"label": "a"}, "no 'text' field"), ({"text": "", "label": "a"}, "'text' is empty"),
                                          ({"text": None, "label": "a"}, "'text' is null"), (["text"], "not a JSON object")])
def test_a_record_without_usable_text_says_which_way(tmp_path, record, said):
    from trainer.data.labelled import read_records

    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "fine", "label": "a"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:2: {said}")):
        read_records(path, ["text", "label"], "data.train_file")


class _Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


@pytest.mark.unit
@pytest.mark.parametrize("n, world", [(1, 1), (2, 2), (7, 3), (100, 1), (1001, 3), (4096, 4), (4097, 2)])
def test_the_lazy_order_is_a_permutation_shared_by_rank_like_distributed_samplers(n, world):
    """data=tokens' order: each rank's every-N-th share of one permutation of the windows per epoch,
    drop_last as DistributedSampler, resumable mid-epoch, never materialized."""
    from trainer.data.stream import LazyEpochSampler

    def share(rank, epoch, start=0):
        s = LazyEpochSampler(_Sized(n), seed=3, rank=rank, world_size=world)
        s.set_epoch(epoch)
        s.start = start
        return list(s)

    shares = [share(r, 0) for r in range(world)]
    flat = [i for s in shares for i in s]
    assert len(flat) == len(set(flat)) == (n // world) * world and all(0 <= i < n for i in flat)
    assert [len(s) for s in shares] == [n // world] * world
    assert share(world - 1, 0, start=n // world // 2) == shares[-1][n // world // 2:]  # resume mid-epoch
    if n >= 100:
        assert share(0, 1) != shares[0] and shares[0] != sorted(shares[0])  # shuffled, anew each epoch


@pytest.mark.unit
def test_the_lazy_order_of_a_billion_windows_starts_at_once():
    from trainer.data.stream import LazyEpochSampler

    s = LazyEpochSampler(_Sized(10**9), seed=0)
    s.set_epoch(0)
    first = [i for i, _ in zip(s, range(1000))]  # a materialized permutation would take minutes and 8 GB
    assert len(set(first)) == 1000 and max(first) > 10**8
