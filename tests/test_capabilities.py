"""The rules across groups, and the declarations they read with and without importing the classes."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from tests.conftest import make_config
from trainer import capabilities, preflight
from trainer.build import check_classes
from trainer.config import ConfigError

CONF = Path(__file__).resolve().parent.parent / "conf"
BUILT_IN_TARGETS = sorted({OmegaConf.load(f).get("_target_") for f in CONF.glob("*/*.yaml")} - {None})
REFUSED = [
    (["model._target_=tests.user_model.TaggerLM", "task=lm"], "task=lm: model._target_=tests.user_model.TaggerLM trains classification only"),
    (["model._target_=tests.user_model.TaggerLM"], "is for lm/mlm, model._target_=tests.user_model.TaggerLM trains classification"),
    (["strategy=fsdp", "clip._target_=tests.user_model.RowClip"], "needs whole rows"),
    (["strategy=fsdp", "amp._target_=tests.user_model.scaled_fp16"], "it uses a GradScaler"),
    (["strategy=fsdp", "clip=agc"], "needs whole rows"),
    (["strategy=fsdp", "amp=fp16"], "it uses a GradScaler"),
    (["model=gpt", "task=mlm"], "trainer.models.GPT trains lm only"),
    (["model=gpt", "data=jsonl", "data.train_file=x.jsonl"], "data._target_=trainer.data.LabelledText is for mlm/classification"),
]


@pytest.mark.unit
@pytest.mark.parametrize("overrides, message", REFUSED)
def test_cross_group_rules_ask_the_imported_classes_so_user_classes_get_them_too(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_classes(make_config(*overrides))


@pytest.mark.unit
@pytest.mark.parametrize("overrides", [[], ["strategy=fsdp", "amp=bf16"], ["strategy=fsdp", "clip=zclip"],
                                       ["model._target_=tests.user_model.BigramLM", "clip._target_=tests.user_model.RowClip"]])
def test_pairs_that_work_pass_the_cross_group_rules(overrides):
    cfg = make_config(*overrides)
    capabilities.check(cfg, imported=False)
    check_classes(cfg)


@pytest.mark.unit
@pytest.mark.parametrize("target", BUILT_IN_TARGETS + ["tests.user_model.TaggerLM", "tests.user_model.RowClip"])
def test_reading_the_source_agrees_with_the_imported_class(target):
    """Without importing, a declaration is the imported class's value or UNKNOWN, never a wrong one."""
    for name in ("TASKS", "needs_whole_rows"):
        static = capabilities.declared(target, name, imported=False)
        assert static is capabilities.UNKNOWN or static == getattr(get_class(target), name, None)
    # What the built-in rules need is there to read: every model's and data source's TASKS, AGC's rows.
    if target.startswith(("trainer.models.", "trainer.data.")):
        assert capabilities.declared(target, "TASKS", imported=False) == get_class(target).TASKS
    assert capabilities.declared("trainer.adaptive_clipping.AGC", "needs_whole_rows", imported=False) is True


@pytest.mark.unit
def test_source_reading_follows_relative_re_exports_and_stops_at_inheritance(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .sub.impl import Model as Exported\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "impl.py").write_text("class Base:\n    TASKS = ('lm',)\n\n"
                                         "class Model(Base):\n    TASKS: tuple = ('classification',)\n\n"
                                         "class Child(Model):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert capabilities.declared("userpkg.Exported", "TASKS", imported=False) == ("classification",)
    assert capabilities.declared("userpkg.sub.impl.Child", "TASKS", imported=False) is capabilities.UNKNOWN
    assert capabilities.declared("userpkg.nothing.Here", "TASKS", imported=False) is capabilities.UNKNOWN
    assert "userpkg" not in sys.modules  # read, never imported


@pytest.mark.unit
def test_every_built_in_refusal_is_made_before_torch_is_imported():
    """In a fresh process: composing and checking a config never imports torch, and refuses every
    built-in pair (a user's own class waits for the import, as it must)."""
    built_in = [(o, m) for o, m in REFUSED if not any("tests.user_model" in x for x in o)]
    script = f"""
import sys
from trainer.config import ConfigError, compose_config
from trainer import preflight
for overrides in {[o for o, _ in built_in]!r}:
    try:
        preflight.check(compose_config(overrides))
        print("accepted")
    except ConfigError as e:
        print(e)
print("torch imported" if "torch" in sys.modules else "torch not imported")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out.stderr
    assert lines[-1] == "torch not imported"
    for (overrides, message), line in zip(built_in, lines):
        assert message in line, (overrides, line)


@pytest.mark.unit
def test_pretrained_seq_len_is_lowered_from_the_default_and_refused_when_typed(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({  # as BertConfig.save_pretrained writes it, trimmed
        "model_type": "bert", "hidden_act": "gelu", "num_hidden_layers": 2, "hidden_size": 32,
        "num_attention_heads": 4, "intermediate_size": 37, "max_position_embeddings": 48, "vocab_size": 47,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1}))
    cfg = make_config("model=bert", f"+model.pretrained={folder}", "data.seq_len=100")
    with pytest.raises(ConfigError, match=re.escape(f"data.seq_len=100 is longer than max_position_embeddings=48 in "
                                                    f"{folder / 'config.json'} (model.pretrained)")):
        preflight.check(cfg, ["data.seq_len=100"])
    notes = preflight.check(cfg)  # the same value as the group's default: lowered, with a note
    assert cfg.data.seq_len == 48 and cfg.model.max_seq_len == 48
    assert notes == [f"data.seq_len=48: max_position_embeddings in {folder / 'config.json'} (the default, 100, is longer)"]


@pytest.mark.unit
def test_classification_takes_the_label_field_by_convention():
    cfg = make_config("model=bert", "data=jsonl", "data.train_file=x.jsonl", "task=classification")
    assert cfg.data.label_field is None
    notes = preflight.check(cfg)
    assert cfg.data.label_field == "label" and "data.label_field=label" in notes[0]
    with pytest.raises(ConfigError, match="task=classification: data._target_=trainer.data.TextData has no labels"):
        preflight.check(make_config("model=bert", "task=classification"))
