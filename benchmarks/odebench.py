"""ODEBench with the symbolic-regression baselines (and, with a trained run, ODEFormer): accuracy
at R² > 0.9 for reconstruction and generalisation, by dimension and overall, and the fit time per
system, under the paper's noise and subsampling settings (d'Ascoli et al., ODEFormer, arXiv
2310.05573, section 4).

    # the CPU baseline run recorded in BENCHMARKS.md (SINDy; one setting per call keeps each
    # call short, the result file collects them):
    .venv/bin/python benchmarks/odebench.py --models sindy --noise 0,0.05 --subsample 0.5
    .venv/bin/python benchmarks/odebench.py --models gplearn --noise 0
    # a trained ODEFormer beside them (the model side is pluggable: --opt odeformer.model=RUN):
    .venv/bin/python benchmarks/odebench.py --models odeformer,sindy,gplearn --noise 0,0.05 \
        --subsample 0.5 --opt odeformer.model=runs/odeformer-gpu --opt odeformer.device=cuda
    # seconds on CPU: 3 systems, SINDy
    .venv/bin/python benchmarks/odebench.py --smoke

Writes benchmarks/results/odebench-NAME.json / .md atomically after every (model, setting);
re-running the same command skips what is done (formers.sciml.ode.compare).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="sindy,gplearn", help="comma-separated: odeformer, sindy, gplearn")
    p.add_argument("--noise", default="0", help="noise levels (multiplicative), every point kept")
    p.add_argument("--subsample", default="", help="fractions of points dropped, without noise")
    p.add_argument("--ids", type=int, nargs="*", default=[], help="ODEBench ids (default: all 63)")
    p.add_argument("--opt", action="append", default=[], help="model.option=value, e.g. gplearn.generations=20")
    p.add_argument("--name", default=None, help="result file name (default: the model names)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="3 systems, SINDy, a few seconds")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    from formers.sciml.ode.compare import (compare_odebench, one_at_a_time, parse_floats,
                                           parse_model_options, table_markdown)

    options = parse_model_options(args.opt)
    if args.smoke:
        args.models, args.ids, args.name = "sindy", args.ids or [2, 24, 57], args.name or "smoke"
    settings = one_at_a_time(parse_floats(args.noise, "--noise"), parse_floats(args.subsample, "--subsample"))
    result = compare_odebench(args.models.split(","), settings, args.out, args.name, args.seed, args.ids,
                              options, progress=None if args.quiet else lambda m: print(m, file=sys.stderr))
    print(table_markdown(result))
    print(f"written: {result['files']['json']}, {result['files']['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
