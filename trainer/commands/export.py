"""`trainer export RUN_DIR`: the newest checkpoint as a folder other tools load (a BERT or model=hf: transformers)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "export"
USAGE = """\
  export RUN_DIR [--out DIR]
                          newest checkpoint's weights as safetensors with config.json; a BERT
                          or model=hf run as a folder transformers loads (names, labels, tokenizer)"""


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="trainer export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="output directory (default RUN_DIR/export)")
    args = parser.parse_args(argv)
    from trainer.checkpointing.export import export

    out, notes = export(args.run_dir, args.out)
    print(f"exported: {out}")
    for note in notes:
        print(f"note: {note}")
