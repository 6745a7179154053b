"""FSDP checkpoints: each rank's shards through torch.distributed.checkpoint (DCP), read without running code.

A sharded checkpoint is ``step_N.shards/`` (DCP's files) beside ``step_N.pt`` (everything else,
with ``"shards": "step_N.shards"``). DCP's own reader unpickles ``.metadata`` with plain pickle
and its planner loads non-tensor items with ``torch.load(weights_only=False)``: a crafted shards
dir would run code. Here the metadata is unpickled with only DCP's metadata classes allowed, and
items with ``weights_only=True``, the guarantee ``step_N.pt`` itself is loaded with. A shards entry
is followed only by a sharded run (or export), and only to ``step_N.shards`` beside the file
(checkpoint.shards_dir). Imported only where shards are written or read: DCP takes a second to import.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from trainer import distributed
from trainer.checkpointing import checkpoint
from trainer.config import ConfigError

# Every global a DCP .metadata pickle refers to (listed from real checkpoints): DCP's own
# dataclasses, torch.Size, dtypes and layouts, and the checkpoint id's path. Nothing callable beyond these.
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
     ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
     ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_GLOBALS or (
                module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not DCP metadata")


class _Refusals:
    """What the reader or planner refused; DCP wraps their exceptions in its own."""

    refused: str | None = None

    def refuse(self, e: Exception) -> None:
        self.refused = str(e).splitlines()[0]
        raise e


class _SafeReader(_Refusals, FileSystemReader):
    """FileSystemReader whose metadata is unpickled with DCP's metadata classes only."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        try:
            with open(self._get_metadata_path(kwargs.get("rank")), "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if not isinstance(metadata, Metadata):
                raise pickle.UnpicklingError(f"{type(metadata).__name__} is not DCP metadata")
        except pickle.UnpicklingError as e:
            self.refuse(e)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _WeightsOnly(_Refusals):
    """A DCP load planner that reads non-tensor items (param groups, counters) with weights_only=True."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        # DefaultLoadPlanner.load_bytes, with weights_only=True in place of False.
        try:
            item = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            self.refuse(e)
        if self.flatten_state_dict:  # type: ignore[attr-defined]
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], item)  # type: ignore[attr-defined]
        else:
            self.state_dict[read_item.dest_index.fqn] = item  # type: ignore[attr-defined]


class _SafeLoadPlanner(_WeightsOnly, DefaultLoadPlanner):
    pass


class _SafeEmptyLoadPlanner(_WeightsOnly, _EmptyStateDictLoadPlanner):  # what dcp_to_torch_save uses
    pass


def _load(directory: Path, state: dict[str, Any], planner: _WeightsOnly, whole: bool = False) -> None:
    """Read directory's shards into state with the safe reader and planner; a refusal is one ConfigError."""
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict, load

    reader = _SafeReader(directory)
    try:
        if whole:  # into an empty dict, in this process alone, as dcp_to_torch_save does
            _load_state_dict(state, storage_reader=reader, planner=planner, no_dist=True)
        else:
            load(state, storage_reader=reader, planner=planner)
    except CheckpointException:  # a BaseException: DCP's wrapper around each rank's failure
        refused = reader.refused or planner.refused
        if refused is None:
            raise
        raise ConfigError(f"checkpoint shards {directory}: refused, they hold pickled code or objects "
                          f"({refused})") from None


def save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt_dir: Path, step: int) -> str:
    """Every rank writes its own shards of the weights and optimizer state into a temporary dir,
    which rank 0 renames once all are done.

    Returns the dir's name, recorded in the step's .pt file; that file is written after it, so a
    checkpoint file always points at complete shards.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    final = checkpoint.shards_path(ckpt_dir, step)
    tmp = final.with_name(f".{final.name}.tmp")
    main = distributed.world().main
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier()
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp))  # files fsynced by DCP
    distributed.barrier()
    if main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    distributed.barrier()
    return final.name


def load(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Each rank reads its own shards of the weights and optimizer state, in place."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    _load(directory, state, _SafeLoadPlanner())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def join_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The whole model's weights from all ranks' shards, in one process (as DCP's dcp_to_torch_save joins them)."""
    state: dict[str, Any] = {}
    _load(directory, state, _SafeEmptyLoadPlanner(), whole=True)
    return state["model"]
