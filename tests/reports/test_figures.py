"""RL curves on one readable page; the space-group figure's title matches its legend."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from PIL import Image

from xtalforge.reports import figures as F

matplotlib.use("Agg")


def _grpo_curves(n: int = 12) -> pd.DataFrame:
    """Curves with the columns the GRPO trainer stores (timings and diagnostics included)."""
    rows = []
    for i in range(n):
        rows.append({
            "step": i, "reward_total": 0.1 * i, "reward_raw_total": -4e-16,
            "reward/stability": -1 + 0.05 * i, "reward/creativity": 1.0,
            "reward/composition_diversity": 4e-16 * (-1) ** i, "reward_std/stability": 0.1,
            "failed/stability": 3.0, "kl": 1e-4 * i, "frac_metastable": 0.02 * i,
            "frac_msun": 0.01 * i, "mean_e_above_hull": 2.0 - 0.1 * i,
            "eval/frac_msun": np.nan if i % 4 else 0.01 * i,
            "t_rollout_s": 0.04, "wall_time_s": 0.4, "grad_norm": 0.4, "clip_frac": 0.1,
            "num_optimizer_steps": 2.0, "ratio_absdev_max": 0.01, "val_nll": 0.2,
        })
    return pd.DataFrame(rows)


def test_default_rl_figure_has_the_four_quantities_a_user_reads(tmp_path, monkeypatch):
    titles: list[list[str]] = []
    save = F._save

    def spy(fig, path):
        titles.append([ax.get_title() for ax in fig.axes if ax.axison])
        legends = {ax.get_title(): [t.get_text() for t in ax.get_legend().get_texts()]
                   for ax in fig.axes if ax.get_legend() is not None}
        titles.append(legends)
        return save(fig, path)

    monkeypatch.setattr(F, "_save", spy)
    path = F.plot_training_curves(_grpo_curves(), tmp_path / "rl.png")
    assert titles[0] == ["Reward", "KL to the reference policy", "Discovery rate",
                         "Energy above hull"]
    legends = titles[1]
    assert legends["Reward"] == ["total", "stability", "creativity", "composition_diversity"]
    assert legends["Discovery rate"] == ["metastable", "mSUN", "mSUN (eval)"]
    with Image.open(path) as im:  # one page, not a wall of panels
        assert im.size[0] <= 1400 and im.size[1] <= 1100, im.size


def test_noise_is_zero_and_other_curves_fall_back_to_one_panel_each(tmp_path):
    assert (F._clean(pd.Series([4e-16, -1e-17, 0.5])) == [0.0, 0.0, 0.5]).all()
    path = F.plot_training_curves({"reward": [1, 2, 3], "loss": [3, 2, 1]}, tmp_path / "c.png")
    assert path.is_file()


def test_spacegroup_title_names_the_plotted_columns(tmp_path, monkeypatch):
    table = pd.DataFrame({"Group": ["a", "a"], "Space group": [225, 1], "Symbol": ["Fm-3m", "P1"],
                          "N": [10, 30], "Metastable (%)": [40.0, 10.0], "mSUN (%)": [20.0, 0.0]})
    seen = []
    save = F._save
    monkeypatch.setattr(F, "_save", lambda fig, p: (seen.append(fig.axes[0]), save(fig, p))[1])
    F.spacegroup_bar_plot(table, tmp_path / "sg.png")
    ax = seen[0]
    assert ax.get_title() == "Metastable and mSUN fractions per space group"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["a: Metastable", "a: mSUN"]
    heights = sorted(round(p.get_height(), 1) for p in ax.patches)
    assert heights == [0.0, 10.0, 20.0, 40.0]
