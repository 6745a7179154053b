"""Config schema: one dataclass per config group option, registered with Hydra's ConfigStore.

The dataclasses hold types and allowed ranges; the YAML files in conf/ hold the default
values and extend these schemas, so a typo in a key or a value of the wrong type fails at
composition, before anything is built. Ranges that a type cannot express (``max_norm > 0``)
are declared in field metadata and checked by ``validate`` right after composition, with
the full key in the message.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import enum
import math
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

# The config groups, inside the package (trainer/conf: a link to the checkout's conf/, a real
# directory in a wheel), so that an installed trainer finds them from any directory.
CONF_DIR = str(Path(__file__).resolve().parent / "conf")


class ConfigError(ValueError):
    """A user-facing error: bad config or input. Reported as one line, no traceback."""


def _checked(ok: Callable[[Any], bool], why: str, doc: str) -> Any:
    """A required field whose value must satisfy ok(); its default lives in the YAML, its doc in the README."""
    return field(default=MISSING, metadata={"check": (ok, why), "doc": doc})


def _doc(doc: str) -> Any:
    """A required field without a range; its default lives in the YAML."""
    return field(default=MISSING, metadata={"doc": doc})


def _positive(doc: str) -> Any:
    return _checked(lambda v: v > 0, "must be > 0", doc)


def _non_negative(doc: str) -> Any:
    return _checked(lambda v: v >= 0, "must be >= 0", doc)


def _fraction(doc: str) -> Any:
    return _checked(lambda v: 0 <= v < 1, "must be in [0, 1)", doc)


def _open_unit(doc: str) -> Any:
    return _checked(lambda v: 0 < v < 1, "must be in (0, 1)", doc)


def _percentile(doc: str) -> Any:
    return _checked(lambda v: 0 < v <= 100, "must be in (0, 100]", doc)


# ---------------------------------------------------------------- model
@dataclass
class ModelConfig:
    """Keys every model gets as keyword arguments (a `_target_` model too)."""

    _target_: str = MISSING
    num_layers: int = _positive("transformer blocks")
    hidden_size: int = _positive("width; must be divisible by `num_heads`")
    num_heads: int = _positive("attention heads")
    intermediate_size: int = _positive("MLP width")
    dropout: float = _fraction("dropout on embeddings, attention and residual branches, in [0, 1)")
    max_seq_len: int = _positive("position embeddings; `data.seq_len` must not exceed it")
    vocab_size: Optional[int] = _positive("`null`: the data's vocabulary size (its tokenizer's); else at least that")


@dataclass
class GPTConfig(ModelConfig):
    z_loss: float = _non_negative("z-loss weight: adds z_loss × mean log(Z)² to the training loss, Z the softmax's "
                                  "normaliser (PaLM; OLMo 2 uses 1e-5), logged as `train/z_loss`; 0: off. A "
                                  "`_target_` model that takes no `z_loss` argument is built without it while it is 0")


# transformers' names (ACT2FN) for the activations the native BERT computes (trainer/models/bert.py)
BERT_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu")


@dataclass
class BertConfig(ModelConfig):
    _target_: str = MISSING
    mask_prob: float = _open_unit("share of real positions (not padding or special tokens) masked; of those "
                                  "80% → [MASK], 10% random, 10% kept")
    task: str = _doc("the top-level `task`, resolved (`auto` is `mlm`): set `task`, not this")
    pretrained: Optional[str] = _doc("a Hugging Face-format folder on disk (see \"Fine-tuning a pretrained BERT\"): "
                                     "its `config.json` sets the architecture keys, its `model.safetensors` (or `pytorch_model.bin`) the weights")
    type_vocab_size: int = _positive("token types (segments), as BERT's `config.json`")
    layer_norm_eps: float = _positive("LayerNorm epsilon, as BERT's `config.json`")
    mask_token_id: Optional[int] = _non_negative("`null`: the data tokenizer's [MASK]")
    num_labels: Optional[int] = _checked(lambda v: v >= 2, "must be >= 2", "`null`: the number of labels in the data")
    hidden_act: str = _checked(lambda v: v in BERT_ACTIVATIONS, f"must be one of {', '.join(BERT_ACTIVATIONS)}",
                               "the MLP's activation, as BERT's `config.json` (`gelu` is exact, `gelu_new` tanh)")
    attention_dropout: Optional[float] = _fraction("dropout on the attention probabilities; `null`: `dropout` "
                                                   "(`config.json`: attention_probs_dropout_prob)")
    classifier_dropout: Optional[float] = _fraction("dropout before the classifier; `null`: `dropout` "
                                                    "(`config.json`: classifier_dropout)")


@dataclass
class HFModelConfig:
    """model=hf: a transformers model from a local folder; its config.json holds the architecture."""

    _target_: str = MISSING
    path: str = _doc("a local Hugging Face folder (`config.json`, weights, tokenizer), e.g. one `save_pretrained` "
                     "wrote; nothing is downloaded")
    task: str = _doc("the top-level `task`, resolved (`auto`: the head `config.json`'s `architectures` names): "
                     "set `task`, not this")
    from_scratch: bool = _doc("`true`: the folder's architecture with fresh weights (its weights are not read)")
    mask_prob: float = _open_unit("`task=mlm`: share of real positions masked, as `model=bert`")
    mask_token_id: Optional[int] = _non_negative("`null`: the data tokenizer's mask token")
    num_labels: Optional[int] = _checked(lambda v: v >= 2, "must be >= 2", "`null`: the number of labels in the data")
    pad_token_id: Optional[int] = _non_negative("`null`: the data tokenizer's pad token (set in the model's config "
                                                "where it has none, as GPT-2)")


# ---------------------------------------------------------------- data
@dataclass
class DataConfig:
    _target_: str = MISSING
    batch_size: int = _positive("sequences per micro-batch (per process)")
    seq_len: int = _positive("tokens per sequence (`jsonl`/`csv`: the truncation length; batches are padded to "
                             "their longest record)")
    num_workers: int = _non_negative("DataLoader worker processes")
    pin_memory: Optional[bool] = _doc("`null`: pin host memory when training on CUDA")


@dataclass
class SyntheticDataConfig(DataConfig):
    _target_: str = MISSING
    vocab_size: int = _checked(lambda v: v > 3, "must be > 3", "tokens in the generated task")
    num_samples: int = _positive("training sequences")
    eval_samples: int = _positive("held-out sequences")
    noise: float = _fraction("chance a token is random instead of its fixed successor")


@dataclass
class TextDataConfig(DataConfig):
    _target_: str = MISSING
    files: str = _doc("a glob (`**` recurses) of plain-text or `.jsonl` files; the default is the Python "
                      "standard library's own source. A file that is not text (NUL bytes, or over 1% not "
                      "UTF-8) is skipped with a line at start-up")
    text_field: str = _doc("the field holding the text (in `.jsonl` lines or records)")
    val_fraction: float = _open_unit("the share held out for eval: the tail of the token stream (`text`); "
                                     "a seeded sample of `train_file`'s records when there is no `eval_file`")


@dataclass
class TokensDataConfig(DataConfig):
    _target_: str = MISSING
    dir: str = _doc("a dir `trainer prepare` wrote (`train.bin`, `val.bin`, `meta.json`): windows read where "
                    "they lie, never loaded; the vocabulary is its tokenizer's")


@dataclass
class LabelledDataConfig(DataConfig):
    _target_: str = MISSING
    train_file: str = _doc("the training records (`.jsonl`: one JSON object per line, split on newlines only; "
                           "`.csv`: a header row, quoted fields may span lines; a UTF-8 byte-order mark is fine)")
    eval_file: Optional[str] = _doc("held-out records; `null`: hold out `val_fraction` of `train_file`")
    text_field: str = _doc("the field holding the text (in `.jsonl` lines or records)")
    text_pair_field: Optional[str] = _doc("a second text field: the pair is encoded as `[CLS] a [SEP] b [SEP]` "
                                          "with token types")
    label_field: Optional[str] = _doc("the label field; `null`: `label` with `task=classification` (the Hugging Face "
                                     "datasets convention), else unlabelled text (masked LM)")
    tokenizer: Optional[str] = _doc("a folder with `tokenizer.json` or `vocab.txt` (default: `model.pretrained`); "
                                    "`null`: bytes")
    val_fraction: float = _open_unit("the share held out for eval: the tail of the token stream (`text`); "
                                     "a seeded sample of `train_file`'s records when there is no `eval_file`")


@dataclass
class HFDataConfig(DataConfig):
    _target_: str = MISSING
    path: str = _doc("a folder `save_to_disk` wrote (a Dataset, or a DatasetDict with splits), or data files: "
                     "`.parquet`, `.jsonl`/`.json`, `.csv`, `.arrow` (a glob); read with `datasets`, never downloaded")
    split: str = _doc("the training split of a DatasetDict folder")
    eval_path: Optional[str] = _doc("held-out data files or folder; `null`: `eval_split` of `path`")
    eval_split: Optional[str] = _doc("the held-out split; `null`: `validation` or `test` if `path` has one, else "
                                     "`val_fraction` of the training rows (seeded)")
    text_field: str = _doc("the column holding the text")
    text_pair_field: Optional[str] = _doc("a second text column, encoded as a pair (classification)")
    label_field: Optional[str] = _doc("the label column: one record per row (classification); `null`: the text "
                                     "column as one token stream cut into `seq_len` windows (lm, mlm)")
    tokenizer: Optional[str] = _doc("a folder with `tokenizer.json` or `vocab.txt` (default: `model.pretrained` "
                                    "or `model.path`); `null`: bytes")
    val_fraction: float = _open_unit("the share of training rows held out when there is no held-out split")


# ---------------------------------------------------------------- optim / sched
_LR = "peak learning rate"
_DECAY = "weight decay (decoupled for AdamW, L2 for SGD), on matrices only: not biases or norm gains"
_FUSED = "torch's fused kernels; they also skip a non-finite step on the device without a host sync"


@dataclass
class AdamWConfig:
    _target_: str = MISSING
    lr: float = _positive(_LR)
    weight_decay: float = _non_negative(_DECAY)
    betas: List[float] = _doc("Adam's β1, β2")
    eps: float = _positive("Adam's ε")
    fused: bool = _doc(_FUSED)


@dataclass
class SGDConfig:
    _target_: str = MISSING
    lr: float = _positive(_LR)
    momentum: float = _fraction("momentum")
    weight_decay: float = _non_negative(_DECAY)
    nesterov: bool = _doc("Nesterov momentum")
    fused: bool = _doc(_FUSED)


_WARMUP = "linear warm-up steps"


@dataclass
class CosineConfig:
    _target_: str = MISSING
    warmup_steps: int = _non_negative(_WARMUP)
    min_lr_ratio: float = _checked(lambda v: 0 <= v <= 1, "must be in [0, 1]",
                                   "final lr = ratio × `optim.lr`, reached at `trainer.max_steps`")


@dataclass
class ConstantConfig:
    _target_: str = MISSING
    warmup_steps: int = _non_negative(_WARMUP)


@dataclass
class PlateauConfig:
    _target_: str = MISSING
    factor: float = _open_unit("lr × this when `eval/loss` has stalled (ReduceLROnPlateau)")
    patience: int = _non_negative("evals without improvement before the lr drops")
    threshold: float = _non_negative("relative improvement that counts")
    min_lr: float = _non_negative("the lr never drops below this")


# ---------------------------------------------------------------- amp / clip
@dataclass
class AmpConfig:
    _target_: str = MISSING


@dataclass
class FP16Config(AmpConfig):
    _target_: str = MISSING
    init_scale: float = _positive("initial loss scale")
    growth_factor: float = _checked(lambda v: v > 1, "must be > 1", "scale × this after `growth_interval` finite steps")
    backoff_factor: float = _open_unit("scale × this after a non-finite step")
    growth_interval: int = _positive("finite steps before the scale grows")
    min_scale: float = _positive("below this loss scale the run stops: training has diverged")


def _valid_norm_type(v: float) -> bool:
    return v > 0 and not math.isnan(v)


_CONTROLLER = "(with `controller`) "


@dataclass
class NormClipConfig:
    _target_: str = MISSING
    max_norm: float = _positive("the total norm of all gradients together is scaled down to at most this")
    norm_type: float = _checked(_valid_norm_type, "must be > 0 or inf (2, 1, inf)", "2, 1 or `inf` (any p > 0)")
    controller: bool = _doc("the threshold/LR controller (see \"Choosing a clipping policy\")")
    patience: int = _positive(_CONTROLLER + "steps in a row with norm > 0.9 × max_norm before the LR is lowered")
    lr_factor: float = _open_unit(_CONTROLLER + "the LR is multiplied by this")
    relax_after: int = _positive(_CONTROLLER + "steps without clipping before max_norm moves; also the window of "
                                 "recent norms")
    percentile: float = _percentile(_CONTROLLER + "max_norm moves to this percentile of the recent norms")
    warmup_steps: int = _non_negative(_CONTROLLER + "steps before either rule of the controller counts (early "
                                                    "norms are large at any LR)")


@dataclass
class ZClipConfig:
    _target_: str = MISSING
    alpha: float = _open_unit("EMA factor of the norm's mean and variance")
    z_thresh: float = _positive("z-score above which a norm is clipped")
    warmup_steps: int = _positive("steps whose norms seed the statistics")
    eps: float = _positive("added to the std")
    max_norm: Optional[float] = _positive("an optional fixed cap on top; `null` for none")


@dataclass
class AutoClipConfig:
    _target_: str = MISSING
    percentile: float = _percentile("the total norm is clipped to this percentile of all norms seen")
    history: int = _positive("norms remembered (a ring buffer on the device)")


@dataclass
class AGCConfig:
    _target_: str = MISSING
    clipping: float = _positive("a unit's gradient norm is kept ≤ this × its weight norm")
    eps: float = _positive("floor of a unit's weight norm")
    exclude: List[str] = _doc("parameter-name patterns left unclipped, e.g. `'[head.*]'` (the paper leaves the "
                              "classifier out)")


@dataclass
class AdaGCConfig:
    _target_: str = MISSING
    max_norm: float = _positive("during warm-up the total norm is clipped to this")
    ratio: float = _positive("after warm-up a tensor's norm is kept ≤ ratio × the EMA of its clipped norms")
    beta: float = _open_unit("EMA factor of each tensor's clipped norm")
    warmup_steps: int = _non_negative("steps of clipping the total norm, while each tensor's reference is its "
                                      "smallest clipped norm")
    eps: float = _positive("added to a norm it divides by")


@dataclass
class ValueClipConfig:
    _target_: str = MISSING
    clip_value: float = _positive("each gradient element is clamped to ±this")


@dataclass
class NoClipConfig:
    _target_: str = MISSING


# ---------------------------------------------------------------- trainer
class Device(enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class TrainerConfig:
    max_steps: int = _positive("optimizer steps")
    grad_accum: int = _positive("micro-batches per optimizer step")
    device: Device = _doc("`auto` (CUDA if present), `cpu`, `cuda`")
    seed: int = _doc("seeds python, torch, the data shuffle and the synthetic data")
    log_every: int = _positive("steps per TensorBoard/terminal log interval")
    eval_every: int = _positive("steps between evals; eval also runs after the last step")
    eval_batches: int = _positive("held-out batches per eval (fewer if the set is smaller)")
    compile: bool = _doc("`torch.compile` the model, and with `clip=norm` the clip; refused with half-precision "
                          "autocast on a CPU that emulates it")
    nproc_per_node: int = _positive("> 1: `trainer train` starts this many workers on this node through torch's "
                                    "elastic launcher (see \"Many GPUs and nodes\")")


# ---------------------------------------------------------------- strategy
class StrategyKind(enum.Enum):
    auto = "auto"  # DDP with more than one process, else none
    none = "none"
    ddp = "ddp"
    fsdp = "fsdp"


@dataclass
class StrategyConfig:
    kind: StrategyKind = _doc("set by the option")


@dataclass
class FSDPConfig(StrategyConfig):
    reshard_after_forward: bool = _doc("free each block's gathered parameters after its forward (ZeRO-3); "
                                       "`false` keeps them for the backward (ZeRO-2)")


# ---------------------------------------------------------------- checkpoint
@dataclass
class CheckpointConfig:
    every: int = _non_negative("steps between checkpoints; 0: only at the end and on preemption")
    keep_last: int = _positive("newest checkpoints kept; older ones are deleted")
    dir: Optional[str] = _doc("`null`: `<run dir>/checkpoints`")
    resume: str = _doc("`none`, `auto` (newest loadable checkpoint in `checkpoint.dir`; fresh start if none), "
                       "or a checkpoint file")


@dataclass
class GuardConfig:
    spike: bool = _doc("the loss-spike guard (see \"The loss-spike guard\"); needs `checkpoint.every` to be a "
                       "multiple of `trainer.log_every`")
    window: int = _checked(lambda v: v >= 5, "must be >= 5", "good per-step losses the mean and standard "
                           "deviation are taken over")
    threshold: float = _positive("a loss above mean + threshold × std is a spike")
    nonfinite_steps: int = _positive("this many non-finite losses in a row also trigger a rollback")
    max_rollbacks: int = _non_negative("after this many rollbacks the run stops instead")
    skip: bool = _doc("skip-step (see \"Skip-step\"): an update whose loss or gradient norm spikes is not applied, "
                      "decided on the device; counted in `train/skipped_spikes`")
    skip_sigma: float = _positive("with guard.skip: a loss or norm above mean + skip_sigma × std of the window spikes")
    skip_window: int = _checked(lambda v: v >= 4, "must be >= 4", "with guard.skip: the finite steps (skipped "
                                "spikes too) the mean and std are taken over (judged once half of it has been seen)")


@dataclass
class LogConfig:
    per_layer: bool = _doc("log each module's gradient norm (`layers/grad_norm/<module>`, pre-clip) and "
                           "update/weight ratio (`layers/update_ratio/<module>`) at log steps; no cost on other "
                           "steps or when off")
    mlflow: bool = _doc("also log to MLflow (the `mlflow` extra): the same scalars, the config as params, the final "
                        "metrics (see \"What is logged\")")
    mlflow_uri: Optional[str] = _doc("the MLflow store; `null`: `$MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` in "
                                     "the working directory (MLflow's own default; no server)")
    mlflow_experiment: str = _doc("the MLflow experiment the run is filed under")
    spike_window: int = _checked(lambda v: v >= 4, "must be >= 4", "`train/spike_score`: each step is compared "
                                 "with the mean and std of this many finite steps before it")
    spike_sigma: float = _positive("`train/spike_score`: a loss or norm above mean + spike_sigma × std is a spike")
    check_ranks: bool = _doc("with more than one process: at log steps, every rank's per-step gradient norms are "
                             "compared with rank 0's (one all-gather per log step); a rank whose norm differs by more "
                             "than 1e-5 (relative) is named in one line, on the terminal and in train.log")


# What each group's options are, for the README's key table (trainer/keys.py renders it).
GROUP_DOCS = {
    "model": "`gpt`: decoder-only LM (causal, next-token loss), 4 layers × 128, pre-norm. `bert`: BERT-base "
             "(12 × 768, 12 heads, 3072), layer for layer as Hugging Face's BertModel (post-norm, token-type "
             "embeddings), masked LM or classifier (see `task`). `hf`: any transformers model in a local folder "
             "(`model.path`; the `hf` extra; see \"Any Hugging Face model\")",
    "data": "`text`: files on disk as one byte-token stream; `synthetic`: a generated learnable task; "
            "`jsonl`/`csv`: one record per line or row, for `bert` (classification or masked LM); `tokens`: a "
            "corpus `trainer prepare` tokenized (any `tokenizer.json`), read where it lies; `hf`: a dataset on disk "
            "(parquet, JSON Lines, CSV, Arrow, `save_to_disk`) read with Hugging Face `datasets` (the `hf` extra)",
    "optim": "torch's AdamW and SGD",
    "sched": "LR schedule: `cosine` (warm-up, cosine decay), `constant` (warm-up, then flat), `plateau` "
             "(ReduceLROnPlateau on `eval/loss`; patience counts evals)",
    "amp": "`bf16`/`fp16`: autocast to that dtype; only `fp16` uses a GradScaler",
    "clip": "gradient clipping policy (see \"Choosing a clipping policy\")",
    "trainer": "the loop",
    "strategy": "with more than one process: `auto` and `ddp` wrap the model in DDP, `fsdp` shards it with "
                "FSDP2 (see \"Many GPUs and nodes\"); with one process, none of them changes anything",
    "checkpoint": "checkpoints and resume (see \"Checkpoints, resume and preemption\")",
    "guard": "the loss-spike guard",
    "log": "extra logging, and MLflow as a second logger",
}
TOP_LEVEL_DOCS = {"task": "`auto`: `lm` for `gpt`, `mlm` for `bert`, for `hf` the head its `config.json` names; "
                          "`classification` (`bert` or `hf` with labelled data)"}


SCHEMAS = {
    "model": {"gpt": GPTConfig, "bert": BertConfig, "hf": HFModelConfig},
    # data=csv is data=jsonl's config (conf/data/csv.yaml includes it): the reader goes by suffix.
    "data": {"synthetic": SyntheticDataConfig, "text": TextDataConfig, "jsonl": LabelledDataConfig,
             "tokens": TokensDataConfig, "hf": HFDataConfig},
    "optim": {"adamw": AdamWConfig, "sgd": SGDConfig},
    "sched": {"cosine": CosineConfig, "constant": ConstantConfig, "plateau": PlateauConfig},
    "amp": {"fp32": AmpConfig, "bf16": AmpConfig, "fp16": FP16Config},
    "clip": {"norm": NormClipConfig, "value": ValueClipConfig, "none": NoClipConfig, "zclip": ZClipConfig,
             "adagc": AdaGCConfig,
             "autoclip": AutoClipConfig, "agc": AGCConfig},
    "trainer": {"default": TrainerConfig},
    "strategy": {"auto": StrategyConfig, "ddp": StrategyConfig, "fsdp": FSDPConfig},
    "checkpoint": {"default": CheckpointConfig},
    "guard": {"default": GuardConfig},
    "log": {"default": LogConfig},
}


def register() -> None:
    """Store every schema as schema_<group>_<option>; conf/<group>/<option>.yaml extends it.

    They are stored at the root, not in a group, so that they are not listed as config groups.
    """
    cs = ConfigStore.instance()
    for group, options in SCHEMAS.items():
        for name, schema in options.items():
            cs.store(name=f"schema_{group}_{name}", node=schema)
    if not OmegaConf.has_resolver("stdlib"):
        OmegaConf.register_new_resolver("stdlib", lambda: sysconfig.get_paths()["stdlib"])
    if not OmegaConf.has_resolver("started"):
        OmegaConf.register_new_resolver("started", lambda pattern: started().strftime(pattern))


_started: list[datetime.datetime] = []


def started(at: datetime.datetime | None = None) -> datetime.datetime:
    """When this run started, for its timestamped dir (${started:...} in conf/config.yaml).

    Fixed at the first call; under torchrun, every rank passes rank 0's time so that all ranks
    name the same dir (Hydra's own ${now:} would read each process's clock).
    """
    if at is not None:
        _started[:] = [at]
    if not _started:
        _started.append(datetime.datetime.now())
    return _started[0]


def run_dir_override(run_dir: Path | str) -> str:
    """hydra.run.dir=PATH as an override that parses back to PATH: quoted, because a sweep job's
    dir is named by its overrides (0_clip.max_norm=0.5), and '=' or ',' would not parse bare."""
    return 'hydra.run.dir="' + str(run_dir).replace('"', '\\"') + '"'


def compose_config(overrides: list[str]) -> DictConfig:
    """The config `trainer train OVERRIDES` would run with (Hydra's compose API; no run dir, no job)."""
    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def check_keys(cfg: DictConfig) -> None:
    """Refuse keys no schema has: `+foo=1` at the top, or `+trainer.max_stepz=5` in a group with a
    schema (Hydra's `+` adds keys a schema would otherwise refuse). A user's own option file without
    a schema may hold any keys."""
    known = [*SCHEMAS, *TOP_LEVEL_DOCS]
    for key in cfg:
        if key == "recipes":  # a recipe file without its package line: its keys went under recipes.
            raise ConfigError("+recipes=...: the recipe's keys landed under 'recipes.', not at the top; begin the "
                              "file with the line `# @package _global_`, as recipes/*.yaml do")
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            raise ConfigError(f"{key}: unknown top-level key" + (f" (did you mean {hint[0]}?)" if hint else
                                                                  f" (known: {', '.join(known)})"))
    for group in SCHEMAS:
        node = cfg.get(group)
        schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        if not dataclasses.is_dataclass(schema):
            continue
        fields = [f.name for f in dataclasses.fields(schema)]
        for key in node:
            if key not in fields:
                hint = difflib.get_close_matches(str(key), fields, n=1)
                raise ConfigError(f"{group}.{key}: unknown key in '{group}'" + (
                    f" (did you mean {group}.{hint[0]}?)" if hint else f" (known: {', '.join(fields)})"))


def validate(cfg: DictConfig) -> None:
    """Check every range declared in the schemas' field metadata; raise ConfigError naming the key."""
    for group in SCHEMAS:
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            continue
        schema = OmegaConf.get_type(node)
        if not dataclasses.is_dataclass(schema):
            continue
        for f in dataclasses.fields(schema):
            check = f.metadata.get("check")
            value = node.get(f.name)
            if check is None or value is None:
                continue
            ok, why = check
            if not ok(value):
                raise ConfigError(f"{group}.{f.name}={value}: {why}")
    tasks = ("auto", "lm", "mlm", "classification")
    if cfg.task not in tasks:
        raise ConfigError(f"task={cfg.task}: choose from {', '.join(tasks)}")
    if cfg.task == "classification" and "label_field" not in cfg.data:
        raise ConfigError(f"task=classification: data._target_={cfg.data.get('_target_')} has no labels; use data=jsonl "
                          "or data=csv (their data.label_field, `label` unless set)")
    # A user's own model config need not have these keys.
    model = cfg.model
    if "hidden_size" in model and "num_heads" in model and model.hidden_size % model.num_heads:
        raise ConfigError(
            f"model.hidden_size={model.hidden_size} is not divisible by model.num_heads={model.num_heads}"
        )
    if "max_seq_len" in model and "seq_len" in cfg.data and cfg.data.seq_len > model.max_seq_len:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} is longer than model.max_seq_len={model.max_seq_len}")
    # The guard checks losses at log steps; a checkpoint must only ever follow a checked interval.
    if cfg.guard.spike and cfg.checkpoint.every % cfg.trainer.log_every:
        raise ConfigError(f"checkpoint.every={cfg.checkpoint.every} must be a multiple of "
                          f"trainer.log_every={cfg.trainer.log_every} when guard.spike=true")

