"""Any Hugging Face transformers model in a local folder, trained by trainer's loop (model=hf).

transformers (the `hf` extra) builds it from the folder (local files only, nothing downloaded):
AutoModelForCausalLM for task=lm, AutoModelForMaskedLM for mlm, AutoModelForSequenceClassification
for classification. This wrapper gives it trainer's model contract: called as ``model(**batch)``
it returns the mean loss (transformers' own loss for the head), and with ``return_logits`` also
the logits. Masked-LM masking happens here, as in the native BERT, so any token stream trains it.
"""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from trainer.config import ConfigError
from trainer.models.masking import check_mask_id, mask_tokens
from trainer.models.pretrained import some

AUTO_CLASSES = {"lm": "AutoModelForCausalLM", "mlm": "AutoModelForMaskedLM",
                "classification": "AutoModelForSequenceClassification"}


def transformers_module():
    try:
        import transformers
    except ImportError:
        raise ConfigError("model=hf needs transformers: pip install 'trainer[hf]'") from None
    return transformers


@contextlib.contextmanager
def quiet(transformers) -> Iterator[None]:
    """transformers' loading warnings and progress bars off: the terminal belongs to trainer's display,
    and what the warnings say comes back as one note (HFModel.notes)."""
    logging = transformers.utils.logging
    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def hf_config(path: str, task: str, num_labels: int | None = None, pad_token_id: int | None = None):
    """The folder's config.json, with the data's label count (classification) and pad token."""
    transformers = transformers_module()
    try:
        with quiet(transformers):
            config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"model.path={path}: {' '.join(str(e).split())[:300]}") from None
    if task == "classification" and num_labels and config.num_labels != num_labels:
        config.num_labels = num_labels  # names LABEL_0..; export writes the data's names
    if config.pad_token_id is None and pad_token_id is not None:
        config.pad_token_id = pad_token_id  # GPT-2 has none: a classifier finds the last real token by it
    return config


class HFModel(nn.Module):
    TASKS = ("lm", "mlm", "classification")

    def __init__(self, *, path: str, task: str, from_scratch: bool = False, vocab_size: int | None = None,
                 mask_prob: float = 0.15, mask_token_id: int | None = None, num_labels: int | None = None,
                 pad_token_id: int | None = None, **_unused):
        super().__init__()
        if task not in AUTO_CLASSES:  # `auto` is resolved from config.json before the build (trainer/preflight.py)
            raise ConfigError(f"task={task}: model=hf trains {', '.join(AUTO_CLASSES)}")
        if task == "classification" and not num_labels:
            raise ConfigError("task=classification: the data has no labels (set data.label_field)")
        transformers = transformers_module()
        config = hf_config(path, task, num_labels, pad_token_id)
        if vocab_size and vocab_size > config.vocab_size:
            raise ConfigError(f"{Path(path) / 'config.json'}: vocab_size={config.vocab_size} is smaller than the "
                              f"data's vocabulary ({vocab_size}); use the folder's tokenizer (data.tokenizer)")
        auto = getattr(transformers, AUTO_CLASSES[task])
        self.notes: list[str] = []
        with quiet(transformers):
            try:
                if from_scratch:  # the architecture only, freshly initialised (seeded: the same on every rank)
                    self.model = auto.from_config(config, dtype=torch.float32)
                else:
                    self.model, info = auto.from_pretrained(path, config=config, local_files_only=True,
                                                            dtype=torch.float32, ignore_mismatched_sizes=True,
                                                            output_loading_info=True)
                    self.notes.append(_loading_note(path, info))
            except (OSError, ValueError) as e:
                if "Unrecognized configuration class" in str(e):
                    raise ConfigError(f"task={task}: transformers has no {AUTO_CLASSES[task]} for model_type="
                                      f"{config.model_type} ({path})") from None
                raise ConfigError(f"model.path={path}: {' '.join(str(e).split())[:300]}" + (
                    "; model.from_scratch=true trains its config.json's architecture from a random init"
                    if "no file named" in str(e) else "")) from None
        self.task, self.mask_prob, self.vocab_size = task, mask_prob, vocab_size or config.vocab_size
        self.mask_token_id = check_mask_id(mask_token_id) if task == "mlm" else mask_token_id
        with quiet(transformers):
            getattr(self.model, "loss_function", None)  # says once, here, that GPT-2's head uses the causal-LM loss
        # token_type_ids reach the model only where it has more than one type (BERT), not RoBERTa's
        # one type or DistilBERT's none.
        self.token_types = ("token_type_ids" in inspect.signature(self.model.forward).parameters
                            and getattr(config, "type_vocab_size", 0) > 1)
        self.train()  # from_pretrained returns the model in eval mode (dropout off)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                special_tokens_mask: torch.Tensor | None = None, return_logits: bool = False):
        """The mean loss of the task's head, as transformers computes it; with return_logits, (loss, logits)."""
        extra = {"token_type_ids": token_type_ids} if self.token_types and token_type_ids is not None else {}
        if self.task == "lm":
            # transformers shifts the labels itself; padding (where a mask says so) is not predicted
            targets = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, -100)
        elif self.task == "mlm":
            input_ids, targets = mask_tokens(input_ids, attention_mask, special_tokens_mask, prob=self.mask_prob,
                                             mask_token_id=self.mask_token_id, vocab_size=self.vocab_size,
                                             training=self.training)
        else:
            targets = labels
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=targets, **extra)
        return (out.loss, out.logits) if return_logits else out.loss


def _loading_note(path: str, info: dict) -> str:
    new = sorted(info.get("missing_keys") or []) + sorted(k for k, *_ in info.get("mismatched_keys") or [])
    unused = sorted(info.get("unexpected_keys") or [])
    return (f"model.path: weights from {path}" + (f"; new (not in it): {some(new)}" if new else "")
            + (f"; not used by this head: {some(unused)}" if unused else ""))


def save_pretrained(model_cfg: dict[str, Any], weights: dict[str, torch.Tensor], labels: list[str] | None,
                    out: Path, origin: dict[str, Any]) -> None:
    """A model=hf checkpoint's weights as the folder transformers' save_pretrained writes (config.json
    with the data's label names and where the weights came from in `trainer`, model.safetensors)."""
    keys = {k: v for k, v in model_cfg.items() if k not in ("_target_", "from_scratch")}
    model = HFModel(**keys, from_scratch=True)  # the architecture; the checkpoint's weights go in next
    model.load_state_dict(weights)
    config = model.model.config
    if labels:
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
    config.trainer = origin
    with quiet(transformers_module()):
        model.model.save_pretrained(out)
