"""model=hf: transformers models from local folders (a GPT-2, a RoBERTa, a DistilBERT, written here
by transformers with each family's tokenizer), trained by trainer's loop."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import make_config, read_scalars, run_cli, sigterm_during_step
from tests.hf_folder import labelled_jsonl, labelled_texts, tiny_hf
from trainer import preflight
from trainer.build import build
from trainer.config import ConfigError
from trainer.loop import train
from trainer.monitoring.display import Display
from trainer.preemption import Preempted

COMMON = ["model=hf", "trainer.device=cpu", "trainer.log_every=1", "sched.warmup_steps=2", "optim.lr=2e-3",
          "data.batch_size=8", "data.seq_len=32", "guard.spike=false"]


def setup(tmp_path, kind, dropout=0.0, head="base"):
    """The folder and the overrides for kind's task: GPT-2 a causal LM on a corpus `trainer prepare`
    tokenized with its own tokenizer; RoBERTa a masked LM and DistilBERT a classifier on .jsonl records."""
    folder = tiny_hf(tmp_path / kind, kind, dropout=dropout, head=head)
    if kind == "gpt2":
        from trainer.data.prepare import prepare

        (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in labelled_texts(2000)))
        prepare(str(tmp_path / "corpus.jsonl"), tmp_path / "tokens", tokenizer=str(folder), val_fraction=0.05, quiet=True)
        return folder, [f"model.path={folder}", "data=tokens", f"data.dir={tmp_path / 'tokens'}"]
    task = "mlm" if kind == "roberta" else "classification"
    return folder, [f"model.path={folder}", f"task={task}", "data=jsonl",
                    f"data.train_file={labelled_jsonl(tmp_path / 'train.jsonl')}"]


def reference_loss(run, batch):
    """The batch's loss in eval mode from the transformers model's logits, by hand: next-token
    cross-entropy, cross-entropy at the masked positions (the same eval mask), or over the labels."""
    from trainer.models.masking import mask_tokens

    wrapper = run.model
    theirs = wrapper.model
    mask = batch.get("attention_mask")
    if wrapper.task == "lm":
        logits = theirs(input_ids=batch["input_ids"]).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["input_ids"][:, 1:].flatten())
    if wrapper.task == "mlm":
        inputs, targets = mask_tokens(batch["input_ids"], mask, batch.get("special_tokens_mask"), prob=wrapper.mask_prob,
                                      mask_token_id=wrapper.mask_token_id, vocab_size=wrapper.vocab_size, training=False)
        logits = theirs(input_ids=inputs, attention_mask=mask).logits
        return F.cross_entropy(logits[targets != -100], targets[targets != -100])
    return F.cross_entropy(theirs(input_ids=batch["input_ids"], attention_mask=mask).logits, batch["labels"])


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["gpt2", "roberta", "distilbert"])
def test_each_family_trains_and_exports_a_folder_transformers_loads_with_the_same_logits(tmp_path, kind):
    """task=auto reads the head config.json names (GPT-2: lm); the loss is transformers' own and
    equals a hand computation from its logits; it falls; `trainer export` writes what save_pretrained
    writes, which the Auto class loads (nothing missing or unexpected) with trainer's logits to 1e-5,
    the data's label names and a tokenizer giving the ids trainer trained on."""
    import transformers
    from tokenizers import Tokenizer

    folder, overrides = setup(tmp_path, kind)
    steps = 100 if kind == "distilbert" else 40  # a new classifier head: the labels are found by ~step 60
    cfg = make_config(*COMMON, *overrides, f"trainer.max_steps={steps}", f"trainer.eval_every={steps}")
    run = build(cfg)
    assert cfg.task == {"gpt2": "lm", "roberta": "mlm", "distilbert": "classification"}[kind]
    assert type(run.model.model).__name__ == {"gpt2": "GPT2LMHeadModel", "roberta": "RobertaForMaskedLM",
                                               "distilbert": "DistilBertForSequenceClassification"}[kind]
    new = next(n for n in run.notes if n.startswith("model.path: weights from"))
    assert ("new (not in it): classifier.bias, classifier.weight, pre_classifier.bias" in new) == (kind == "distilbert")

    batch = next(iter(run.eval_loader))
    run.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(run.model(**batch), reference_loss(run, batch), rtol=1e-5, atol=1e-6)
    run.model.train()

    train(run, tmp_path / "run", Display(steps, quiet=True))
    losses = [v for _, v in read_scalars(tmp_path / "run")["train/loss"]]
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5, losses

    out = tmp_path / "run" / "export"
    out.mkdir()
    (out / "mine.txt").write_text("a file of the user's, already there")
    (out / "mine.txt").chmod(0o600)
    done = run_cli("export", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    assert (out / "mine.txt").stat().st_mode & 0o777 == 0o600  # only what export wrote takes the checkpoint's mode
    checkpoint_mode = sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))[-1].stat().st_mode & 0o777
    assert (out / "model.safetensors").stat().st_mode & 0o777 == checkpoint_mode  # safetensors alone writes 0600
    auto = getattr(transformers, {"gpt2": "AutoModelForCausalLM", "roberta": "AutoModelForMaskedLM",
                                  "distilbert": "AutoModelForSequenceClassification"}[kind])
    theirs, info = auto.from_pretrained(out, output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), info
    theirs.eval()
    ids = batch["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=ids, attention_mask=batch.get("attention_mask")).logits,
                                   run.model.model.eval()(input_ids=ids, attention_mask=batch.get("attention_mask")).logits,
                                   rtol=0, atol=1e-5)
    assert json.loads((out / "config.json").read_text())["trainer"]["step"] == steps
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    text = "GOOD w1 w2"
    # the ids trainer trained on: the tokenizer.json `trainer prepare` read (GPT-2), or the data's
    ours = Tokenizer.from_file(str(folder / "tokenizer.json")) if kind == "gpt2" else run.data.tokenizer
    assert tokenizer(text)["input_ids"] == ours.encode(text).ids
    if kind == "distilbert":
        assert theirs.config.id2label == {0: "neg", 1: "pos"} and theirs.config.label2id == {"neg": 0, "pos": 1}


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["gpt2", "roberta", "distilbert"])
def test_preempted_and_resumed_matches_uninterrupted(tmp_path, monkeypatch, kind):
    """With dropout on (and masking, for RoBERTa): SIGTERM during step 5, resume, steps 6..10 as the
    uninterrupted run's."""
    _, overrides = setup(tmp_path, kind, dropout=0.1)
    common = [*COMMON, *overrides, "trainer.max_steps=10", "trainer.eval_every=100"]
    ref_run = build(make_config(*common))
    assert all(m.training for m in ref_run.model.modules())  # from_pretrained hands it over in eval mode
    train(ref_run, tmp_path / "ref", Display(10, quiet=True))
    sigterm_during_step(monkeypatch, 5)
    with pytest.raises(Preempted, match="after step 5"):
        train(build(make_config(*common)), tmp_path / "run", Display(10, quiet=True))
    monkeypatch.undo()
    train(build(make_config(*common, "checkpoint.resume=auto")), tmp_path / "run", Display(10, quiet=True))
    ref, got = dict(read_scalars(tmp_path / "ref")["train/loss"]), dict(read_scalars(tmp_path / "run")["train/loss"])
    assert sorted(got) == list(range(1, 11))
    assert len({round(v, 6) for v in ref.values()}) == 10  # dropout and data really vary the losses
    for step in range(1, 11):
        assert got[step] == pytest.approx(ref[step], rel=1e-6), step


@pytest.mark.integration
def test_a_classifier_folder_keeps_its_head_and_a_gpt2_classifier_pads_with_end_of_text(tmp_path):
    """A folder saved with a classification head fine-tunes from it (nothing new); GPT-2's tokenizer
    names no pad token, so records are padded with <|endoftext|>, which the model's config is given
    as pad_token_id (its classifier reads each record's last real token)."""
    folder = tiny_hf(tmp_path / "gpt2", "gpt2", head="classification")
    data = labelled_jsonl(tmp_path / "train.jsonl")
    run = build(make_config(*COMMON, f"model.path={folder}", "data=jsonl", f"data.train_file={data}",
                            "trainer.max_steps=2"))
    assert run.cfg.task == "classification"  # GPT2ForSequenceClassification
    assert next(n for n in run.notes if n.startswith("model.path:")) == f"model.path: weights from {folder}"
    eos = run.data.tokenizer.token_to_id("<|endoftext|>")
    assert run.cfg.model.pad_token_id == eos == run.model.model.config.pad_token_id
    batch = next(iter(run.eval_loader))
    padded = batch["attention_mask"] == 0
    assert padded.any() and (batch["input_ids"][padded] == eos).all()
    # the classifier's logits are those of each record alone, without its padding
    run.model.eval()
    with torch.no_grad():
        _, logits = run.model(**batch, return_logits=True)
        for i in range(3):
            n = int(batch["attention_mask"][i].sum())
            alone = run.model.model(input_ids=batch["input_ids"][i:i + 1, :n]).logits
            torch.testing.assert_close(logits[i:i + 1], alone, rtol=0, atol=1e-5)


def _config_json(folder, **keys):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(keys))
    return folder


@pytest.mark.unit
@pytest.mark.parametrize("keys, task, said", [
    ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "lm", None),
    ({"architectures": ["BertForPreTraining"], "model_type": "bert"}, "mlm", None),
    ({"architectures": ["XLMRobertaForSequenceClassification"], "model_type": "xlm-roberta"}, "classification", None),
    ({"architectures": ["DistilBertModel"], "model_type": "distilbert"}, None, "names DistilBertModel, which says no one task"),
    ({"model_type": "gpt2"}, None, "names no architectures, which says no one task"),
])
def test_task_auto_is_the_head_config_json_names(tmp_path, keys, task, said):
    folder = _config_json(tmp_path / "m", **keys)
    labelled = ["data=jsonl", "data.train_file=x.jsonl"] if task == "classification" else []
    cfg = make_config("model=hf", f"model.path={folder}", *labelled)
    if said:
        with pytest.raises(ConfigError, match=f"task=auto: {folder / 'config.json'} {said}; set task=lm"):
            preflight.check(cfg)
        return
    notes = preflight.check(cfg)
    assert cfg.task == task and cfg.model.task == task
    assert f"task={task}: the head {folder / 'config.json'} names (set task for another)" in notes


@pytest.mark.unit
def test_seq_len_fits_the_positions_config_json_has(tmp_path, monkeypatch):
    """RoBERTa's positions start after its pad id: 514 position embeddings take 512 tokens. A
    default seq_len is lowered (with a note), a typed one refused naming the file."""
    folder = _config_json(tmp_path / "r", architectures=["RobertaForMaskedLM"], model_type="roberta",
                          max_position_embeddings=66, pad_token_id=1)
    cfg = make_config("model=hf", f"model.path={folder}", "data=jsonl", "data.train_file=x.jsonl")
    notes = preflight.check(cfg)
    assert cfg.data.seq_len == 64
    assert f"data.seq_len=64: max_position_embeddings in {folder / 'config.json'} (the default, 128, is longer)" in notes
    typed = ["data.seq_len=65"]
    with pytest.raises(ConfigError, match="data.seq_len=65 is longer than max_position_embeddings=64 in .*model.path"):
        preflight.check(make_config("model=hf", f"model.path={folder}", "data=jsonl", "data.train_file=x.jsonl", *typed),
                        typed)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^model=hf needs transformers: pip install 'trainer\[hf\]'$"):
        preflight.check(make_config("model=hf", f"model.path={folder}"))


@pytest.mark.integration
def test_a_head_transformers_lacks_and_a_folder_without_weights_are_one_line(tmp_path):
    folder = tiny_hf(tmp_path / "gpt2", "gpt2")
    data = labelled_jsonl(tmp_path / "train.jsonl")
    with pytest.raises(ConfigError, match="task=mlm: transformers has no AutoModelForMaskedLM for model_type=gpt2"):
        build(make_config(*COMMON, f"model.path={folder}", "task=mlm", "data=jsonl", f"data.train_file={data}"))
    (folder / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="model.from_scratch=true trains its config.json's architecture"):
        build(make_config(*COMMON, f"model.path={folder}", "task=classification", "data=jsonl", f"data.train_file={data}"))
    run = build(make_config(*COMMON, f"model.path={folder}", "model.from_scratch=true", "task=classification",
                            "data=jsonl", f"data.train_file={data}"))
    assert not any(n.startswith("model.path:") for n in run.notes)
    roberta = tiny_hf(tmp_path / "roberta", "roberta")
    with pytest.raises(ConfigError, match="^task=mlm: the data's tokenizer has no mask token"):  # GPT-2's has none
        build(make_config(*COMMON, f"model.path={roberta}", "task=mlm", "data=jsonl", f"data.train_file={data}",
                          f"data.tokenizer={folder}"))


@pytest.mark.slow
def test_ddp_and_fsdp_equal_one_process_and_fsdp_resumes_exactly(tmp_path):
    """GPT-2 on prepared tokens: 2 ranks x 4 sequences (DDP, and FSDP2 with each GPT2Block sharded)
    equal 1 process x 8 (losses, norms before and after clipping, weights); FSDP stopped at step 3
    resumes to 6 as if never stopped, and its export joins the shards into transformers' folder."""
    from tests.test_distributed import assert_same_run, weights

    _, overrides = setup(tmp_path, "gpt2")
    # the default lr: at 2e-3 Adam turns a last-bit difference in a near-zero gradient (another
    # summation order across ranks) into 1e-6 of weight
    common = [*(o for o in COMMON if not o.startswith("optim.lr")), *overrides, "clip.max_norm=0.5",
              "optim.fused=false", "sched=constant", "trainer.eval_every=100", "trainer.max_steps=6"]
    two = ["data.batch_size=4", "trainer.nproc_per_node=2"]

    def train_cli(run_dir, *args):
        done = run_cli("train", *common, *args, f"hydra.run.dir={run_dir}")
        assert done.returncode == 0, done.stderr[-3000:]

    train_cli(tmp_path / "one", "data.batch_size=8")
    train_cli(tmp_path / "ddp", *two)
    assert_same_run(tmp_path / "one", tmp_path / "ddp", 6, tokens_per_step=8 * 32)
    train_cli(tmp_path / "fsdp", *two, "strategy=fsdp", "trainer.max_steps=3")
    train_cli(tmp_path / "fsdp", *two, "strategy=fsdp", "checkpoint.resume=auto")
    assert_same_run(tmp_path / "one", tmp_path / "fsdp", 6, tokens_per_step=8 * 32)
    assert any(p.suffix == ".shards" for p in (tmp_path / "fsdp" / "checkpoints").iterdir())
    done = run_cli("export", str(tmp_path / "fsdp"))
    assert done.returncode == 0, done.stderr
    import transformers

    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "export").state_dict()
    for name, w in weights(tmp_path / "one").items():
        torch.testing.assert_close(exported[name.removeprefix("model.")], w, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.integration
@pytest.mark.parametrize("policy", [["amp=fp16"], ["amp=bf16"], ["clip=agc"], ["clip=zclip", "clip.warmup_steps=2"],
                                    ["clip=autoclip"], ["clip=value"], ["clip=none"], ["clip.controller=true"]])
def test_precisions_and_clipping_policies_train_a_transformers_model(tmp_path, policy):
    """Each precision and clipping policy on a transformers GPT-2 (the same loop as the native
    models): step 1's gradient norm, logged in unscaled units before clipping, is fp32's (fp16
    within 1%: the GradScaler's 65536 is taken out before it is measured; bf16 within 5%), and
    three steps train."""
    _, overrides = setup(tmp_path, "gpt2")
    common = [*COMMON, *overrides, "trainer.max_steps=3", "trainer.eval_every=100"]
    train(build(make_config(*common)), tmp_path / "fp32", Display(3, quiet=True))
    train(build(make_config(*common, *policy)), tmp_path / "run", Display(3, quiet=True))
    ref, got = read_scalars(tmp_path / "fp32"), read_scalars(tmp_path / "run")
    assert got["train/grad_norm"][0][1] == pytest.approx(ref["train/grad_norm"][0][1],
                                                         rel=0.05 if policy == ["amp=bf16"] else 0.01)
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3]
    assert all(0 < v < 10 for _, v in got["train/loss"])
    if policy == ["amp=fp16"]:
        assert got["train/loss_scale"][0][1] == 65536.0
