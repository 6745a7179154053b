"""`trainer prepare FILES --out DIR`: tokenize a corpus once into flat token files (data=tokens)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "prepare"
USAGE = """\
  prepare FILES --out DIR [--tokenizer tokenizer.json] [--text-field F] [--val-fraction X]
                          tokenize a corpus once into train.bin/val.bin token files
                          that `trainer train data=tokens data.dir=DIR` reads"""


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="trainer prepare", description=__doc__.splitlines()[0])
    parser.add_argument("files", help="a glob (quote it; `**` recurses) of plain-text or .jsonl files")
    parser.add_argument("--out", type=Path, required=True, help="the dir to write (new, or without meta.json)")
    parser.add_argument("--tokenizer", default=None,
                        help="a tokenizer.json (or a folder with one), e.g. GPT-2's; default: bytes")
    parser.add_argument("--text-field", default="text", help="the text of a .jsonl line (default: text)")
    parser.add_argument("--val-fraction", type=float, default=0.01,
                        help="share of documents held out for eval (default: 0.01)")
    parser.add_argument("--seed", type=int, default=0, help="seeds which documents are held out")
    args = parser.parse_args(argv)
    from trainer.data.prepare import prepare

    meta = prepare(args.files, args.out, args.tokenizer, args.text_field, args.val_fraction, args.seed,
                   quiet=not sys.stderr.isatty())  # the bar is for a terminal
    for line in meta["skipped"]:
        print(f"note: {line}")
    mb = meta["bytes"] / 1e6
    tokens = meta["train"]["tokens"] + meta["val"]["tokens"]
    seconds = max(meta["seconds"], 1e-9)
    print(f"prepared {args.out}: {meta['train']['tokens']:,} train and {meta['val']['tokens']:,} held-out tokens "
          f"({meta['train']['documents']:,} and {meta['val']['documents']:,} documents, {meta['dtype']}) from "
          f"{len(meta['files'])} files, {mb:,.1f} MB in {meta['seconds']:.1f} s: {mb / seconds:,.1f} MB/s, "
          f"{tokens / seconds:,.0f} tokens/s")
    print(f"train on it: trainer train data=tokens data.dir={args.out}")
