"""Tests of xtalforge.rewards: components on hand-made cases, normalisation, registry (CPU)."""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from importlib.metadata import EntryPoint

import numpy as np
import pytest
import torch
from ase.calculators.calculator import Calculator, all_changes
from pymatgen.core import Lattice, Structure

from xtalforge.models.generator import GeneratorConfig, LatentDiffusionGenerator
from xtalforge.models.training import train_vae
from xtalforge.rewards import (
    CompositeReward,
    RewardComponent,
    RewardContext,
    RewardResources,
    amd_vector,
    amd_vectors,
    available_rewards,
    build_reward,
    get_reward_class,
    mmd_loo_utilities,
    normalize_values,
    register_metric,
    register_reward,
    unbiased_mmd2,
)
from xtalforge.rewards import registry as rbase
from xtalforge.rewards.components import (
    CompositionDiversityReward,
    CreativityReward,
    DielectricFoMReward,
    PropertyTargetReward,
    StabilityReward,
)
from xtalforge.rewards.surrogate import PropertySurrogate, train_surrogate
from xtalforge.screening.hull import ReferenceHull
from xtalforge.screening.metrics import ReferenceSet
from xtalforge.screening.mlip import ASEEnergyModel

warnings.filterwarnings("ignore", category=UserWarning)


# ----------------------------------------------------------------------------- structures
def rocksalt(a: str = "Na", b: str = "Cl", lat: float = 5.64) -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(lat), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()


def cscl(a: str = "Na", b: str = "Cl", lat: float = 3.3) -> Structure:
    return Structure(Lattice.cubic(lat), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def diamond(el: str = "Si", a: float = 5.43) -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(a), [el], [[0, 0, 0]]
                                     ).get_primitive_structure()


def strained_rocksalt(shear: float = 0.03) -> Structure:
    """Rock salt with a small shear: matches rock salt (not novel) but has a distinct AMD."""
    s = rocksalt()
    m = s.lattice.matrix.copy()
    m[0] = m[0] + shear * m[1]
    return Structure(Lattice(m), s.species, s.frac_coords)


# ----------------------------------------------------------------------------- fake energy
_E_PER_ATOM = {"Na": -1.0, "Cl": -1.5, "NaCl": -1.75}
_V0 = {"NaCl": rocksalt().volume / 2}


class FormulaCalculator(Calculator):
    """Energy per atom from a formula table plus a volume penalty (cheap MLIP stand-in)."""

    implemented_properties = ["energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        from pymatgen.core import Composition

        n = len(self.atoms)
        f = Composition(self.atoms.get_chemical_formula()).reduced_formula
        e = _E_PER_ATOM.get(f, -1.0)
        v = self.atoms.get_volume() / n
        if f in _V0:
            e += 0.01 * (v - _V0[f]) ** 2
        self.results = {"energy": e * n, "forces": np.zeros((n, 3)), "stress": np.zeros(6)}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run faster on one thread (and do not fight other tests for cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fake_energy():
    return ASEEnergyModel(name="ase", spec="ase:test.FormulaCalculator", fingerprint="test",
                          factory=FormulaCalculator)


@pytest.fixture(scope="module")
def hull():
    # hand-made total-energy hull: Na, Cl elements and NaCl on the hull (-0.5 eV/atom formation)
    return ReferenceHull.from_total_energies(["Na", "Cl", "NaCl"], [-1.0, -1.5, -1.75])


@pytest.fixture(scope="module")
def tiny_generator():
    torch.manual_seed(0)
    gen = LatentDiffusionGenerator(GeneratorConfig.tiny())
    gen.fit_num_atoms_distribution([2, 2, 4, 6])
    return gen.eval()


# ----------------------------------------------------------------------------- AMD / MMD
def test_amd_vector_is_cell_invariant_and_matches_definition():
    s = rocksalt()
    sup = s.copy()
    sup.make_supercell([2, 2, 1])
    a, b = amd_vector(s, 30), amd_vector(sup, 30)
    np.testing.assert_allclose(a, b, atol=1e-10)
    # rock salt: 6 nearest neighbours at a/2 then 12 at a/sqrt(2)
    np.testing.assert_allclose(a[:6], 5.64 / 2, atol=1e-9)
    np.testing.assert_allclose(a[6:18], 5.64 / math.sqrt(2), atol=1e-9)
    out = amd_vectors([s, None], k=30)
    assert np.isnan(out[1]).all() and np.allclose(out[0], a)


def test_mmd_loo_closed_form_matches_brute_force():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(9, 5)), rng.normal(size=(40, 5)) + 0.3
    full = unbiased_mmd2(x, y)
    brute = np.array([unbiased_mmd2(np.delete(x, i, 0), y) - full for i in range(len(x))])
    np.testing.assert_allclose(mmd_loo_utilities(x, y), brute, atol=1e-10)


# ----------------------------------------------------------------------------- components
def test_creativity_duplicate_novel_and_known():
    reference = ReferenceSet([rocksalt(), diamond()])
    novel = cscl()  # NaCl in the CsCl structure: not in the reference
    structs = [strained_rocksalt(), novel, novel.copy(), rocksalt(), None]
    res = RewardResources(reference=reference, amd_k=50)
    ctx = RewardContext(structs, res)
    comp = CreativityReward(normalize=None)
    raw, n_failed = comp.values(ctx)
    u, v = ctx["unique"], ctx["novel"]
    assert u.tolist() == [True, True, False, False, False]
    assert v.tolist() == [False, True, True, False, False]
    # strained rock salt: unique, not novel -> min AMD distance to the same-formula structures
    d = ctx["min_amd_distance"][0]
    assert 0 < d < 1 and raw[0] == pytest.approx(d)
    assert raw[1] == 1.0  # unique and novel
    assert raw[2] == pytest.approx(0.0, abs=1e-9)  # duplicate of a novel one: AMD distance 0
    assert raw[3] == 0.0  # duplicate of [0] and of the reference: neither unique nor novel
    assert raw[4] == 0.0 and n_failed == 1  # no structure: documented failure value 0
    # the metric providers ran once for the batch
    assert ctx.provider_calls["_screening_provider"] == 1
    assert ctx.provider_calls["_amd_provider"] == 1


def test_stability_hand_made_hull(fake_energy, hull):
    squeezed = rocksalt(lat=5.2)
    crushed = rocksalt(lat=3.5)  # 5.4 A^3/atom, distances 1.75 A: evaluated, far above the hull
    overlap = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])
    dense = rocksalt(lat=3.0)  # 3.4 A^3/atom < 5, distances 1.5 A: refused before the MLIP
    structs = [rocksalt(), squeezed, crushed, cscl("K", "F"), overlap, None, dense]
    res = RewardResources(energy_model=fake_energy, hull=hull, reference=ReferenceSet([]))
    ctx = RewardContext(structs, res)
    raw, n_failed = StabilityReward(normalize=None).values(ctx)
    e = ctx["e_above_hull"]
    assert e[0] == pytest.approx(0.0, abs=1e-9) and raw[0] == 0.0  # known stable: no penalty
    v = squeezed.volume / 2
    assert e[1] == pytest.approx(0.01 * (v - _V0["NaCl"]) ** 2, rel=1e-6) and e[1] < 1
    assert raw[1] == pytest.approx(-e[1])
    assert e[2] > 1 and raw[2] == -1.0  # clipped at 1 eV/atom
    # K-F not covered by the hull, overlapping atoms / implausibly dense cell not evaluated,
    # None: failure value -1
    assert np.isnan(e[3:]).all() and raw[3:].tolist() == [-1.0] * 4
    assert n_failed == 4


def test_msun_preset_adds_raw_stability_and_creativity(fake_energy, hull):
    reference = ReferenceSet([rocksalt(), diamond()])
    squeezed = rocksalt(lat=5.2)  # known prototype, above the hull
    structs = [rocksalt(), squeezed, cscl(), None]  # cscl: NaCl in a new structure
    res = RewardResources(energy_model=fake_energy, hull=hull, reference=reference, amd_k=50)
    out = build_reward("msun")(RewardContext(structs, res))
    np.testing.assert_allclose(out.total, out.raw["stability"] + out.raw["creativity"])
    np.testing.assert_allclose(out.raw_total, out.total)  # nothing normalised
    assert out.raw["stability"][0] == 0.0 and out.raw["creativity"][1] < 1.0
    assert out.raw["creativity"][2] == 1.0  # unique and novel
    assert out.raw["stability"][3] == -1.0 and out.raw["creativity"][3] == 0.0  # failure values
    assert -1.0 < out.raw["stability"][1] < 0.0  # above the hull, below the clip


def test_diversity_rewards_redundancy_and_coverage():
    ref = np.concatenate([np.tile([1.0, 0.0], (20, 1)), np.tile([-1.0, 0.0], (20, 1))])
    ref += np.random.default_rng(0).normal(scale=0.05, size=ref.shape)
    gen = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0],
                    [np.nan, np.nan]])
    res = RewardResources(reference_composition_embeddings=ref)
    ctx = RewardContext([rocksalt()] * 5 + [None], res)
    ctx.metrics["composition_embedding"] = gen  # hand-made embeddings
    comp = CompositionDiversityReward(normalize=None)
    raw, n_failed = comp.values(ctx)
    # the lone sample in the under-covered mode is worth most; the redundant ones less
    assert raw[4] > raw[0] and np.allclose(raw[:4], raw[0])
    # no embedding: documented failure value "min" = the batch minimum
    assert n_failed == 1 and raw[5] == pytest.approx(raw[:5].min())
    # embeddings are standardised by the reference RMS entry before the kernel
    sc = np.sqrt(np.mean(ref**2))
    full = unbiased_mmd2(gen[:5] / sc, ref / sc)
    assert raw[4] == pytest.approx(unbiased_mmd2(gen[:4] / sc, ref / sc) - full)
    # ... so the reward does not depend on the scale of the embeddings
    res_small = RewardResources(reference_composition_embeddings=0.01 * ref)
    ctx_small = RewardContext([rocksalt()] * 5 + [None], res_small)
    ctx_small.metrics["composition_embedding"] = 0.01 * gen
    small, _ = CompositionDiversityReward(normalize=None).values(ctx_small)
    np.testing.assert_allclose(small, raw, rtol=1e-9)
    # standardize=False: the raw kernel
    raw_off, _ = CompositionDiversityReward(normalize=None, standardize=False).values(ctx)
    assert raw_off[4] == pytest.approx(unbiased_mmd2(gen[:4], ref) - unbiased_mmd2(gen[:5], ref))


def test_diversity_with_generator_embeddings(tiny_generator):
    structs = [rocksalt(), rocksalt(), cscl(), diamond(), None]
    ref = [rocksalt("K", "Br", 6.6), diamond("Ge", 5.66), cscl("Cs", "Cl", 4.1)]
    res = RewardResources(
        generator=tiny_generator,
        reference_composition_embeddings=tiny_generator.composition_embeddings(ref),
        reference_structure_embeddings=tiny_generator.embed_structures(ref))
    reward = build_reward([{"name": "composition_diversity"}, {"name": "structure_diversity"}])
    out = reward(RewardContext(structs, res))
    assert out.n_failed == {"composition_diversity": 1, "structure_diversity": 1}
    assert np.all(np.isfinite(out.total)) and out.weights["structure_diversity"] == 0.1
    # the two identical rock salts get the same utility
    assert out.raw["composition_diversity"][0] == pytest.approx(
        out.raw["composition_diversity"][1])
    # a sample larger than the VAE encodes fails alone (a Wyckoff policy's big cells)
    n = tiny_generator.max_atoms + 4
    big = Structure(Lattice.cubic(12.0), ["Na", "Cl"] * (n // 2),
                    np.random.default_rng(1).random((n, 3)))
    out = reward(RewardContext([rocksalt(), big, cscl(), diamond()], res))
    assert out.n_failed == {"composition_diversity": 1, "structure_diversity": 1}
    assert np.all(np.isfinite(out.total))


def test_embed_reference_fills_what_the_reward_needs(tiny_generator):
    ref = [rocksalt("K", "Br", 6.6), diamond("Ge", 5.66), cscl("Cs", "Cl", 4.1)]
    big = Structure(Lattice.cubic(20.0), ["Na"] * (tiny_generator.max_atoms + 1),
                    np.random.default_rng(0).random((tiny_generator.max_atoms + 1, 3)))
    reward = build_reward("dng")
    # no embedder: a clear error, not a silent reward without diversity
    with pytest.raises(ValueError, match="generator"):
        RewardResources().embed_reference(ref, reward.required_metrics)
    res = RewardResources(generator=tiny_generator)
    # a cell larger than the VAE encodes is left out of the reference
    assert res.embed_reference(ref + [big], reward.required_metrics) == 3
    np.testing.assert_allclose(res.reference_composition_embeddings,
                               tiny_generator.composition_embeddings(ref))
    np.testing.assert_allclose(res.reference_structure_embeddings,
                               tiny_generator.embed_structures(ref))
    # a seeded subset, and nothing at all for a reward without diversity terms
    sub = RewardResources(generator=tiny_generator)
    assert sub.embed_reference(ref, reward.required_metrics, max_structures=2,
                               rng=np.random.default_rng(0)) == 2
    assert len(sub.reference_structure_embeddings) == 2
    none = RewardResources(generator=tiny_generator)
    assert none.embed_reference(ref, build_reward("msun").required_metrics) == 0
    assert none.reference_structure_embeddings is None


class _NoCompositions:
    max_atoms = 20

    def embed_structures(self, structures, device=None):
        return np.zeros((len(structures), 2))


def test_embed_reference_needs_composition_embeddings():
    with pytest.raises(ValueError, match="composition embeddings"):
        RewardResources(generator=_NoCompositions()).embed_reference(
            [rocksalt()], ["composition_embedding"])


class _FakeSurrogate:
    def __init__(self, values):
        self.values = np.asarray(values, dtype=float)

    def predict_structures(self, generator, structures, device=None):
        return np.where([s is None for s in structures], np.nan, self.values)


def test_property_target_and_dielectric(tiny_generator):
    structs = [rocksalt(), cscl(), diamond(), None]
    res = RewardResources(generator=tiny_generator, surrogates={
        "band_gap": _FakeSurrogate([3.0, 1.0, 4.5, 2.0]),
        "dielectric_electronic": _FakeSurrogate([2.0, 10.0, -1.0, 3.0])})
    ctx = RewardContext(structs, res)
    raw, nf = PropertyTargetReward(target=3.0, normalize=None).values(ctx)
    np.testing.assert_allclose(raw[:3], [0.0, -4.0, -2.25])
    assert nf == 1 and raw[3] == -4.0  # "min" failure value
    fom, _ = DielectricFoMReward(normalize=None).values(ctx)
    np.testing.assert_allclose(fom[:3], [6.0, 10.0, 0.0])
    with pytest.raises(KeyError, match="no surrogate 'eps'"):
        DielectricFoMReward(dielectric_property="eps").values(RewardContext(structs, res))


def test_surrogate_trains_and_round_trips(tiny_generator, tmp_path):
    from pymatgen.core import Element

    pairs = list(itertools.product(["Li", "Na", "K", "Rb", "Cs", "Mg", "Ca", "Sr", "Ba", "Zn"],
                                   ["F", "Cl", "Br", "I", "O", "S"]))
    structs = [rocksalt(a, b, 5.5) for a, b in pairs]
    y = [0.05 * Element(a).Z + 0.02 * Element(b).Z for a, b in pairs]  # species-determined
    # a surrogate sits on a trained VAE's latents: train the tiny one briefly on these crystals
    tiny_generator = copy.deepcopy(tiny_generator)
    torch.manual_seed(0)
    train_vae(tiny_generator, structs, steps=300, batch_size=16, lr=3e-3, log_every=50,
              progress=False)
    model, hist = train_surrogate(tiny_generator, structs, y, epochs=40, batch_size=8,
                                  lr=3e-3, val_fraction=0.2, seed=0)
    assert hist["n_train"] == 48 and hist["n_val"] == 12
    assert hist["best_val_mae"] < 0.5 * hist["baseline_val_mae"]
    pred = model.predict_structures(tiny_generator, structs[:5] + [None])
    assert np.isnan(pred[5]) and np.all(pred[:5] >= 0)
    model.save(tmp_path / "s.pt")
    again = PropertySurrogate.load(tmp_path / "s.pt")
    np.testing.assert_allclose(again.predict_structures(tiny_generator, structs[:5]), pred[:5],
                               atol=1e-6)
    assert again.metadata["n_train"] == 48


# ----------------------------------------------------------------------------- composite
def test_normalize_values_per_group():
    v = np.array([1.0, 3.0, 2.0, 5.0, 5.0, 7.0])
    g = np.array([0, 0, 0, 1, 1, 2])
    np.testing.assert_allclose(normalize_values(v, "minmax", g), [0, 1, 0.5, 0, 0, 0])
    np.testing.assert_allclose(normalize_values(v, "minmax"), (v - 1) / 6)
    np.testing.assert_allclose(normalize_values(v, None), v)
    assert normalize_values(v, "std", g)[5] == 0.0


_CALLS = {"n": 0}


@register_metric("test_volume_per_atom")
def _volume_provider(ctx, wanted):
    _CALLS["n"] += 1
    return {"test_volume_per_atom": np.array(
        [s.volume / len(s) if s is not None else np.nan for s in ctx.structures])}


@register_reward("test_density")
class _Density(RewardComponent):
    required_metrics = ("test_volume_per_atom",)
    default_failure_value = -100.0

    def compute(self, ctx):
        return -ctx["test_volume_per_atom"]


@register_reward("test_big_cells")
class _Big(RewardComponent):
    required_metrics = ("test_volume_per_atom",)

    def compute(self, ctx):
        return ctx["test_volume_per_atom"]


def test_composite_weights_once_per_batch_and_custom_registration():
    assert {"test_density", "creativity", "stability"} <= set(available_rewards())
    structs = [rocksalt(lat=5.0), rocksalt(lat=6.0), rocksalt(lat=7.0), None]
    reward = build_reward([{"name": "test_density", "weight": 2.0},
                           {"name": "test_big_cells", "weight": 0.5, "normalize": None}],
                          normalize_scope="batch")
    _CALLS["n"] = 0
    out = reward(RewardContext(structs, RewardResources()))
    assert _CALLS["n"] == 1  # one metric computation shared by both components
    dens = out.normalized["test_density"]
    raw = np.array([-s.volume / len(s) for s in structs[:3]] + [-100.0])  # failure: -100
    np.testing.assert_allclose(out.raw["test_density"], raw)
    np.testing.assert_allclose(dens, (raw - raw.min()) / (raw.max() - raw.min()))
    assert dens[0] == 1.0 and dens[3] == 0.0
    np.testing.assert_allclose(out.total, 2.0 * dens + 0.5 * out.raw["test_big_cells"])
    assert out.raw["test_big_cells"][3] == 0.0  # default failure value
    cfg = reward.config()
    again = build_reward(cfg)
    assert [c.weight for c in again.components] == [2.0, 0.5]
    assert again.normalize_scope == "batch"


def test_registry_paths_and_entry_points(monkeypatch):
    assert get_reward_class("xtalforge.rewards.components:StabilityReward") is StabilityReward
    ep = EntryPoint(name="plugin_stability", value="xtalforge.rewards.components:StabilityReward",
                    group="xtalforge.rewards")
    monkeypatch.setattr(rbase, "entry_points", lambda: {"plugin_stability": ep})
    assert "plugin_stability" in available_rewards()
    assert get_reward_class("plugin_stability") is StabilityReward
    with pytest.raises(KeyError, match="unknown reward component 'nope'"):
        get_reward_class("nope")
    with pytest.raises(TypeError):
        get_reward_class("xtalforge.rewards.metrics:RewardContext")
    with pytest.raises(ValueError, match="already registered"):
        register_reward("creativity")(type("Other", (RewardComponent,), {
            "compute": lambda self, ctx: np.zeros(len(ctx))}))
    with pytest.raises(ValueError, match="duplicate component labels"):
        CompositeReward([StabilityReward(), StabilityReward()])
    dng = build_reward("dng")
    assert {c.label: c.weight for c in dng.components} == {
        "creativity": 1.0, "stability": 1.0, "composition_diversity": 1.0,
        "structure_diversity": 0.1}
    assert set(dng.required_metrics) == {"unique", "novel", "min_amd_distance", "e_above_hull",
                                         "composition_embedding", "structure_embedding"}
    # Chemeleon2's released code: components scaled over the whole batch, creativity left raw
    assert dng.normalize_scope == "batch"
    assert {c.label: c.normalize for c in dng.components}["creativity"] is None


def test_normalize_scope_batch_vs_group():
    structs = [rocksalt(lat=a) for a in (5.0, 6.0, 7.0, 8.0)]
    groups = np.array([0, 0, 1, 1])
    vols = np.array([-s.volume / len(s) for s in structs])
    out_b = build_reward([{"name": "test_density"}])(RewardContext(structs, RewardResources()),
                                                     groups=groups)
    np.testing.assert_allclose(out_b.total, (vols - vols.min()) / (vols.max() - vols.min()))
    out_g = build_reward([{"name": "test_density"}], normalize_scope="group")(
        RewardContext(structs, RewardResources()), groups=groups)
    np.testing.assert_allclose(out_g.total, [1.0, 0.0, 1.0, 0.0])  # each group to [0, 1]


@pytest.mark.slow
def test_stability_with_chgnet_and_mlip_hull():
    from xtalforge.screening.mlip import get_energy_model

    chg = get_energy_model("chgnet", device="cpu")
    na = Structure(Lattice.cubic(4.23), ["Na", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cl = Structure(Lattice.cubic(4.0), ["Cl"], [[0, 0, 0]])
    refs = [na, cl, rocksalt()]
    mlip_hull = ReferenceHull.from_structures(refs, chg)
    res = RewardResources(energy_model=chg, hull=mlip_hull, reference=ReferenceSet(refs))
    ctx = RewardContext([rocksalt(), rocksalt(lat=4.9)], res)
    raw, _ = StabilityReward(normalize=None).values(ctx)
    assert raw[0] == pytest.approx(0.0, abs=1e-6)  # a reference phase lies on its own hull
    assert raw[1] < -0.05  # compressed rock salt is above the hull
