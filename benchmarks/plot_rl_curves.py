"""Plot the fixed-seed evaluation curves of GRPO runs saved by ``rl_denovo.py``.

Every ``--eval-every`` steps the trainer samples the same noise and atom counts
(``GRPOConfig.eval_seed``) and scores them with the reward's metrics, so these curves compare
policies from step to step and across runs (the rollout metrics do not: their atom counts
change every step). One PNG with three panels against the RL step: the mSUN fraction, the
number of distinct reduced formulas among the evaluation samples (mode collapse, Park & Walsh
2025 Fig. 2c) and the mean MLIP energy above hull::

    python benchmarks/plot_rl_curves.py --out rl_curves.png \
        "paper weights=out/r_dng/results.json" "no diversity=out/r_nodiv/results.json"
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger("plot_rl_curves")

PANELS = (("eval/frac_msun", "mSUN fraction (fixed evaluation set)"),
          ("eval/n_distinct_formulas", "distinct reduced formulas"),
          ("eval/mean_e_above_hull", "mean E_hull (eV/atom)"))


def load_curves(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``{key: [(step, value), ...]}`` of the evaluation keys of the first run in ``path``."""
    runs = json.loads(path.read_text())["runs"]
    if not runs:
        raise ValueError(f"{path} holds no RL run")
    curves = runs[0]["curves"]
    out: dict[str, list[tuple[int, float]]] = {}
    for key, _ in PANELS:
        out[key] = [(int(row["step"]), float(row[key])) for row in curves if key in row]
    if not any(out.values()):
        raise ValueError(f"{path}: no evaluation curve (was the run made with --eval-every?)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="LABEL=path/to/results.json")
    ap.add_argument("--out", type=Path, default=Path("rl_curves.png"))
    ap.add_argument("--title", default="GRPO from the MP-20 base: fixed-seed evaluation")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4), constrained_layout=True)
    for spec in args.runs:
        label, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"expected LABEL=path, got {spec!r}")
        curves = load_curves(Path(path))
        for ax, (key, _) in zip(axes, PANELS, strict=True):
            pts = curves[key]
            if pts:
                ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", ms=3, label=label)
        logger.info("%s: %d evaluations", label, len(curves[PANELS[0][0]]))
    for ax, (_, ylabel) in zip(axes, PANELS, strict=True):
        ax.set_xlabel("RL step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(args.title)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
