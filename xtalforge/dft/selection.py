"""Choosing which screened candidates get DFT (the budget of the DFT stage)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

POLICIES = ("msun_first", "ehull", "rank", "one_per_composition")


def finite(x: Any) -> bool:
    """Return whether ``x`` is a finite real number (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def select_candidates(
    records: Iterable[Mapping[str, Any]],
    policy: str = "msun_first",
    k: int | None = 10,
    one_per_composition: bool = True,
    max_e_above_hull: float | None = None,
    require_valid: bool = False,
) -> list[dict[str, Any]]:
    """Choose the structures to validate with DFT from screening records.

    Parameters
    ----------
    records
        Screening results merged with structure fields: ``structure_id``, ``e_above_hull``,
        ``msun``, ``sun``, ``unique``, ``novel``, ``rank``, ``reduced_formula`` (or
        ``formula``), ``struct_valid``, ``smact_valid``.
    policy
        ``"msun_first"``: mSUN, then SUN, then other unique-and-novel, then the rest, each by
        increasing MLIP energy above hull. ``"ehull"``: by MLIP energy above hull only.
        ``"rank"``: by the screening stage's ``rank`` (records without one are left out).
        ``"one_per_composition"``: ``"ehull"`` with ``one_per_composition=True``.
    k
        Budget: at most ``k`` structures (``None``: no limit).
    one_per_composition
        Keep only the best structure of each reduced formula.
    max_e_above_hull
        Leave out records above this MLIP energy above hull (eV/atom).
    require_valid
        Leave out records that are not structurally and SMACT valid.

    Returns
    -------
    list of dict
        Copies of the chosen records, best first, with ``dft_rank`` (0 = best). Records
        without a finite energy above hull are never chosen by the energy policies.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
    if policy == "one_per_composition":
        policy, one_per_composition = "ehull", True
    pool = []
    for r in records:
        e = r.get("e_above_hull")
        if policy == "rank":
            if not isinstance(r.get("rank"), int) or isinstance(r.get("rank"), bool):
                continue
        elif not finite(e):
            continue
        if max_e_above_hull is not None and not (finite(e) and e <= max_e_above_hull):
            continue
        if require_valid and not (r.get("struct_valid", True) and r.get("smact_valid", True)):
            continue
        pool.append(r)

    def ehull(r: Mapping[str, Any]) -> float:
        e = r.get("e_above_hull")
        return float(e) if finite(e) else math.inf

    def key(r: Mapping[str, Any]) -> tuple:
        tie = str(r.get("structure_id", ""))
        if policy == "rank":
            return (r["rank"], tie)
        if policy == "msun_first":
            un = bool(r.get("unique")) and bool(r.get("novel"))
            return (not bool(r.get("msun")), not bool(r.get("sun")), not un, ehull(r), tie)
        return (ehull(r), tie)

    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for r in sorted(pool, key=key):
        comp = r.get("reduced_formula") or r.get("formula")
        if one_per_composition and comp is not None:
            if comp in seen:
                continue
            seen.add(comp)
        out.append({**r, "dft_rank": len(out)})
        if k is not None and len(out) >= k:
            break
    return out


