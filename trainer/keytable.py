"""The README's table of config keys, rendered from the schema: each group's options (conf/), each key's
default per option (the composed YAML) and its doc (the field's, in trainer/config.py).

`make docs` writes it into README.md between the markers; tests/test_keytable.py fails when they differ,
so the table cannot drift from the schema.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from trainer.config import CONF_DIR, GROUP_DOCS, SCHEMAS, TOP_LEVEL_DOCS, register

BEGIN = "<!-- keys: rendered from trainer/config.py by `make docs`; tests/test_keytable.py checks it -->"
END = "<!-- /keys -->"
_TARGET_DOC = "what is built for this group: a class or function by import path (see \"Your own model, data, optimizer\")"


def _default_options() -> dict[str, str]:
    defaults = OmegaConf.load(Path(CONF_DIR) / "config.yaml").defaults
    return {k: v for d in defaults if isinstance(d, dict) or OmegaConf.is_dict(d) for k, v in d.items()}


def _options(group: str, default: str) -> list[str]:
    names = sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))
    return [default, *(n for n in names if n != default)]


def _show(value: object) -> str:
    if value is None:
        return "`null`"
    if value == "???":
        return "required"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, enum.Enum):
        return f"`{value.name}`"
    if isinstance(value, float) and value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:g}"
    return f"`{value}`" if isinstance(value, (str, list)) else str(value)


def _by_option(values: dict[str, str]) -> str:
    """One text if every option has the same, else each with the options that have it."""
    texts = list(dict.fromkeys(values.values()))
    if len(texts) == 1:
        return texts[0]
    return "; ".join(f"{t} ({', '.join(f'`{o}`' for o, v in values.items() if v == t)})" for t in texts)


def _group_rows(group: str, default: str) -> list[str]:
    options = _options(group, default)
    listed = ", ".join(f"**`{o}`**" if o == default else f"`{o}`" for o in options)
    rows = [f"| **`{group}=`** | {listed} | {GROUP_DOCS[group]} |"] if len(options) > 1 else []
    keys: dict[str, dict[str, tuple[object, str]]] = {}  # key -> option -> (default, doc)
    for option in options:
        node = compose(config_name="config", overrides=[f"{group}={option}"])[group]
        values = OmegaConf.to_container(node, resolve=False)
        schema = OmegaConf.get_type(node)
        for f in dataclasses.fields(schema):
            doc = _TARGET_DOC if f.name == "_target_" else f.metadata.get("doc")
            keys.setdefault(f.name, {})[option] = (values.get(f.name), doc)
    for key, per_option in keys.items():
        if key == "_target_" and group in ("trainer", "strategy", "checkpoint", "guard", "log"):
            continue
        defaults = _by_option({o: _show(v) for o, (v, _) in per_option.items()})
        docs = {o: d for o, (_, d) in per_option.items()}
        doc = _by_option(docs) if len(docs) == len(options) or len(set(docs.values())) > 1 else \
            f"{next(iter(docs.values()))} ({', '.join(f'`{o}`' for o in docs)})"
        rows.append(f"| `{group}.{key}` | {defaults} | {doc} |")
    return rows


def render() -> str:
    """The whole table, in the order of conf/config.yaml's defaults list."""
    register()
    rows = ["| key | default | meaning |", "|---|---|---|"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):  # once: composing is then cheap
        for group, default in _default_options().items():
            if group in SCHEMAS:
                rows += _group_rows(group, default)
            if group == "model":  # the top-level keys sit after the model they pick the objective of
                cfg = compose(config_name="config")
                rows += [f"| **`{k}`** | {_show(cfg[k])} | {doc} |" for k, doc in TOP_LEVEL_DOCS.items()]
    return "\n".join(rows) + "\n"


def replace_in(text: str) -> str:
    """text (the README) with the table between BEGIN and END rendered anew."""
    head, _, rest = text.partition(BEGIN + "\n")
    _, _, tail = rest.partition(END)
    if not rest or not tail and END not in rest:
        raise ValueError(f"README.md: the markers {BEGIN!r} and {END!r} are missing")
    return f"{head}{BEGIN}\n{render()}{END}{tail}"


if __name__ == "__main__":
    readme = Path(__file__).resolve().parent.parent / "README.md"
    readme.write_text(replace_in(readme.read_text()))
