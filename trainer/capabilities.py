"""What a model, data source, precision or clip policy declares it can do, and the rules across
config groups that use those declarations.

A model or data class may declare ``TASKS`` (the tasks it trains or feeds), a clip policy
``needs_whole_rows`` (it cannot see FSDP's shards). The rules are asked twice:

- before torch is imported (``imported=False``): each declaration is read from the class's
  source with ``ast``, without importing it (as setuptools reads a package's ``attr:`` version),
  so that a wrong pair of groups costs a fraction of a second. A declaration that is not a
  literal in the class body (inherited, computed) is unknown here, and its rule waits;
- when the run is built (``imported=True``): from the imported classes and the built precision
  policy, so a user's own class is held to the same rules.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from trainer.config import ConfigError

UNKNOWN = object()  # not declared where it can be read without importing the class


def _source(module: str) -> Path | None:
    """The .py file of a module, found without importing it or its parent packages."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: found, not imported
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin.endswith(".py") else None
    for folder in spec.submodule_search_locations or []:
        base = Path(folder, *rest)
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                return path
    return None


def _static(target: str, name: str, hops: int = 3) -> Any:
    """The literal value of `name` in the body of the class `target`, following `from X import C`
    re-exports; UNKNOWN where the source does not say."""
    module, _, cls = target.rpartition(".")
    path = _source(module) if module else None
    if path is None or hops == 0:
        return UNKNOWN
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return UNKNOWN
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for stmt in node.body:
                if isinstance(stmt, ast.Assign):
                    names, value = stmt.targets, stmt.value
                elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                    names, value = [stmt.target], stmt.value
                else:
                    continue
                if any(isinstance(t, ast.Name) and t.id == name for t in names):
                    try:
                        return ast.literal_eval(value)
                    except ValueError:
                        return UNKNOWN
            return UNKNOWN  # perhaps inherited: the imported class will say
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == cls for a in node.names):
            original = next(a.name for a in node.names if (a.asname or a.name) == cls)
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            source = (f"{package}.{node.module}" if node.module else package) if node.level else node.module
            return _static(f"{source}.{original}", name, hops - 1)
    return UNKNOWN


def declared(target: str, name: str, imported: bool) -> Any:
    """What the class `target` declares as `name`: None if it declares nothing, UNKNOWN if that
    cannot be told without importing it (imported=False)."""
    if not imported:
        return _static(target, name)
    from hydra.utils import get_class

    try:
        return getattr(get_class(target), name, None)
    except Exception:  # a _target_ that does not import: building it reports that, naming the key
        return None


def check(cfg: DictConfig, imported: bool, scaler: bool | None = None) -> None:
    """Refuse pairs of groups that cannot train together, in one line naming the `_target_`s.

    scaler: whether the built precision policy uses a GradScaler (None: not built yet, then the
    amp config's GradScaler keys say it)."""
    def tasks(node: DictConfig) -> tuple[str, ...] | None:
        found = declared(node.get("_target_", ""), "TASKS", imported)
        return None if found is UNKNOWN else found

    model_tasks, data_tasks = tasks(cfg.model), tasks(cfg.data)
    if model_tasks and cfg.task != "auto" and cfg.task not in model_tasks:
        raise ConfigError(f"task={cfg.task}: model._target_={cfg.model._target_} trains {'/'.join(model_tasks)} only "
                          "(model=bert does mlm and classification)")
    if data_tasks and cfg.task != "auto" and cfg.task not in data_tasks:
        raise ConfigError(f"task={cfg.task}: data._target_={cfg.data._target_} feeds {'/'.join(data_tasks)} only")
    if model_tasks and data_tasks and not set(model_tasks) & set(data_tasks):
        raise ConfigError(f"data._target_={cfg.data._target_} is for {'/'.join(data_tasks)}, model._target_="
                          f"{cfg.model._target_} trains {'/'.join(model_tasks)}: model=gpt takes data=text, tokens or "
                          "synthetic; data=jsonl/csv feeds model=bert")
    if cfg.strategy.kind.name != "fsdp":
        return
    if scaler if scaler is not None else "init_scale" in cfg.amp:
        raise ConfigError(f"strategy=fsdp with amp._target_={cfg.amp._target_}: not supported (it uses a "
                          "GradScaler, and each rank's would see only its shard's infs); use amp=bf16")
    if declared(cfg.clip.get("_target_", ""), "needs_whole_rows", imported) is True:
        raise ConfigError(f"strategy=fsdp with clip._target_={cfg.clip._target_}: not supported (it needs "
                          "whole rows of each weight, which FSDP shards)")
