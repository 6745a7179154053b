"""A real-corpus run at growing sizes: `trainer prepare` throughput, and the peak memory of training.

For each size it writes a generated plain-text corpus (documents of --doc-kb of word-like text),
runs `trainer prepare` on it (bytes tokenizer, or --tokenizer), then `trainer train data=tokens`
for --steps steps, each a whole process; the table gives prepare's MB/s and tokens/s and the
training process's peak resident memory (ru_maxrss). Flat memory across sizes is the point: the
windows are read where they lie and the epoch order is computed, not stored.

    .venv/bin/python benchmarks/corpus.py --sizes-mb 50 2000
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_corpus(folder: Path, size_mb: int, doc_kb: int, seed: int = 0) -> int:
    """size_mb of documents, each doc_kb of lines of pseudo-words (64 distinct bodies, numbered)."""
    rng = random.Random(seed)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(5000)]
    bodies = []
    for _ in range(64):
        lines, size = [], 0
        while size < doc_kb * 1024:
            line = " ".join(rng.choices(words, k=rng.randint(5, 14))) + ".\n"
            lines.append(line)
            size += len(line)
        bodies.append("".join(lines))
    folder.mkdir(parents=True)
    written, n = 0, 0
    while written < size_mb * 2**20:
        text = f"document {n}\n" + bodies[n % 64]
        (folder / f"doc{n:06d}.txt").write_text(text)
        written += len(text)
        n += 1
    return n


def run(args: list[str]) -> str:
    """A trainer command as a whole process; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir())
    if done.returncode != 0:
        sys.exit(f"trainer {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[50, 2000])
    parser.add_argument("--doc-kb", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--tokenizer", default=None, help="a tokenizer.json for prepare (default: bytes)")
    parser.add_argument("--work", type=Path, default=None, help="where corpora go (default: a temp dir, removed)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="trainer-corpus-"))
    rows = []
    try:
        for size in args.sizes_mb:
            corpus, out = work / f"corpus-{size}", work / f"tokens-{size}"
            shutil.rmtree(corpus, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            docs = write_corpus(corpus, size, args.doc_kb)
            held_out = min(0.5, max(1.0 / size, 3 / docs))  # about 1 MB held out at every size
            said = run(["prepare", str(corpus / "*.txt"), "--out", str(out), "--val-fraction", f"{held_out:.6f}",
                              *(["--tokenizer", args.tokenizer] if args.tokenizer else [])])
            mbs, toks = re.search(r"([\d,.]+) MB/s, ([\d,]+) tokens/s", said).groups()
            shutil.rmtree(corpus)  # the tokens are what training reads
            peak = _train_peak_rss(out, args.steps, work / f"run-{size}")
            rows.append((size, docs, mbs, toks, peak))
            print(f"{size} MB: {docs} documents, prepare {mbs} MB/s ({toks} tokens/s), training peak RSS {peak} MB",
                  flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| corpus | documents | prepare MB/s | prepare tokens/s | training peak RSS |")
    print("|---|---|---|---|---|")
    for size, docs, mbs, toks, peak in rows:
        print(f"| {size} MB | {docs} | {mbs} | {toks} | {peak} MB |")


def _train_peak_rss(tokens_dir: Path, steps: int, run_dir: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "train", "data=tokens", f"data.dir={tokens_dir}",
                             f"trainer.max_steps={steps}", "trainer.eval_every=1000000", "checkpoint.every=0",
                             f"hydra.run.dir={run_dir}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=tempfile.gettempdir())
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"training on {tokens_dir} failed:\n{proc.stderr.read().decode()[-2000:]}")
    return round(usage.ru_maxrss / 1024)  # KB on Linux


if __name__ == "__main__":
    main()
