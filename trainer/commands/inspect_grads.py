"""`trainer inspect-grads`: the gradient-norm distribution of a short probe (or a run), and a clip.max_norm."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "inspect-grads"
USAGE = """\
  inspect-grads [--steps N | --from RUN_DIR] [overrides]
                          gradient-norm distribution, top layers, and a suggested clip.max_norm"""


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="trainer inspect-grads", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="probe length in optimizer steps (default 200)")
    parser.add_argument("--from", dest="run_dir", type=Path, help="read an existing run's events instead of probing")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for trainer train")
    args = parser.parse_args(argv)
    from trainer.monitoring.inspect_grads import SKIP_FRACTION, SUGGEST_PERCENTILE, analyse, from_run, histogram, probe

    norms, per_layer = from_run(args.run_dir) if args.run_dir else probe(args.overrides, args.steps)
    a = analyse(norms)
    source = f"{args.run_dir} (interval means)" if args.run_dir else f"a {args.steps}-step probe"
    print(f"gradient norm (pre-clip, unscaled) over {a['n']} steps of {source}; {a['non-finite']} non-finite")
    print("  " + "  ".join(f"p{q} {v:.4g}" for q, v in a["percentiles"].items()) + f"  max {a['max']:.4g}")
    first, second = a["trend"]
    print(f"  trend: median {first:.4g} in the first half, {second:.4g} in the second "
          f"({'falling' if second < 0.9 * first else 'rising' if second > 1.1 * first else 'flat'})")
    print("histogram (log scale):")
    for line in histogram(norms):
        print("  " + line)
    if per_layer:
        print("largest per-module gradient norms (last step):")
        for name, value in sorted(per_layer.items(), key=lambda kv: -kv[1])[:5]:
            print(f"  {value:>10.4g}  {name}")
    print(f"suggested clip.max_norm={a['suggested']:.3g}: the p{SUGGEST_PERCENTILE:g} of the {a['settled']} norms after "
          f"the first {SKIP_FRACTION:.0%} of steps, so about {100 - SUGGEST_PERCENTILE:g}% of steps would clip")
    print("  trainer train " + " ".join([*args.overrides, "clip=norm", f"clip.max_norm={a['suggested']:.3g}"]))
