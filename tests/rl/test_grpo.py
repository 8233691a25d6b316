"""Tests of GRPO fine-tuning (loss pieces, trainer, makers) on a tiny CPU generator."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from xtalforge.makers.base import JobContext
from xtalforge.makers.rl import (
    RLFineTuneMaker,
    SurrogateTrainMaker,
    load_surrogate,
    run_rl_finetune,
    run_surrogate_training,
)
from xtalforge.models.generator import GeneratorConfig, LatentDiffusionGenerator
from xtalforge.rewards import (
    RewardComponent,
    RewardResources,
    build_reward,
    register_reward,
)
from xtalforge.rl.grpo import (
    GRPOConfig,
    GRPOTrainer,
    group_advantages,
    k3_kl,
    policy_loss,
    sequence_log_prob,
)
from xtalforge.stores.config import build_job_store
from xtalforge.stores.documents import bulk_upsert, make_structure_doc, make_structure_id

warnings.filterwarnings("ignore", category=UserWarning)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run faster on one thread (and do not fight other tests for cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@register_reward("test_volume")
class VolumeReward(RewardComponent):
    """Cheap test reward: volume per atom of the decoded cell (larger is better)."""

    def compute(self, ctx):
        return np.array([s.volume / len(s) if s is not None else np.nan
                         for s in ctx.structures])


def _tiny_generator(seed: int = 0) -> LatentDiffusionGenerator:
    torch.manual_seed(seed)
    gen = LatentDiffusionGenerator(GeneratorConfig.tiny())
    gen.fit_num_atoms_distribution([2, 3, 4, 4, 6])
    # non-trivial final layers (they are zero-initialised), so the policy depends on theta
    with torch.no_grad():
        for mod in (gen.ldm.denoiser.final_linear, gen.ldm.denoiser.final_adaLN[-1]):
            mod.weight.normal_(0, 0.05)
    gen.ldm.update_ema(decay=0.0)
    return gen.eval()


def _config(**kw) -> GRPOConfig:
    base = dict(group_size=4, num_conditions=2, sampling_steps=6, lr=1e-3, clip_eps=0.2,
                val_every=1, seed=0)
    base.update(kw)
    return GRPOConfig(**base)


# ----------------------------------------------------------------------------- loss pieces
def test_k3_kl_zero_when_equal_positive_otherwise_and_unbiased():
    lp = torch.tensor([-1.0, -2.0, 0.5])
    assert torch.equal(k3_kl(lp, lp), torch.zeros(3))
    assert (k3_kl(lp, lp + torch.tensor([0.1, -0.3, 1.0])) > 0).all()
    # unbiased: E_{x~p}[k3] = KL(p || q) for p = N(0, 1), q = N(mu, 1): mu^2 / 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400_000, generator=g, dtype=torch.float64)
    mu = 0.7
    logp, logq = -0.5 * x**2, -0.5 * (x - mu) ** 2
    assert float(k3_kl(logp, logq).mean()) == pytest.approx(mu**2 / 2, rel=0.02)


def test_gaussian_kl_closed_form_and_expectation_of_reduced_log_ratio():
    from xtalforge.models.diffusion import gaussian_kl, gaussian_log_prob

    g = torch.Generator().manual_seed(0)
    mu, mu_ref = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    std = torch.tensor([0.3, 0.0])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    kl = gaussian_kl(mu, mu_ref, std, mask)
    assert kl.shape == (2, 3) and torch.all(kl[1] == 0)  # a deterministic step carries none
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu[0], 0.3),
                                            torch.distributions.Normal(mu_ref[0], 0.3))
    m = mask[..., None].float()
    torch.testing.assert_close(kl[0], (ref * m).sum((1, 2)) / (m.sum((1, 2)) * 5))
    torch.testing.assert_close(gaussian_kl(mu, mu_ref, std, mask, "sum")[0], (ref * m).sum((1, 2)))
    # it is the expectation, under the first Gaussian, of the reduced log-probability ratio
    z = mu[0] + 0.3 * torch.randn(20000, 3, 4, 5, generator=g)
    ratio = (gaussian_log_prob(z.reshape(-1, 4, 5), mu[0].repeat(20000, 1, 1), 0.3,
                               mask.repeat(20000, 1))
             - gaussian_log_prob(z.reshape(-1, 4, 5), mu_ref[0].repeat(20000, 1, 1), 0.3,
                                 mask.repeat(20000, 1))).reshape(20000, 3).mean(0)
    torch.testing.assert_close(ratio, kl[0], atol=0.05 * float(kl[0].max()), rtol=0.02)
    assert torch.all(gaussian_kl(mu, mu, std, mask) == 0)


def test_analytic_kl_training_both_references():
    for reference in ("pretrained", "rollout"):
        gen = _tiny_generator(5)
        tr = GRPOTrainer(gen, build_reward([{"name": "test_volume"}]), RewardResources(),
                         _config(reference=reference, kl_estimator="analytic", lr=1e-3))
        curves = tr.train(3, progress=False)
        assert all(math.isfinite(r["kl"]) and r["kl"] >= 0 for r in curves)
        if reference == "pretrained":  # > 0 once the policy has moved from the reference
            assert curves[-1]["kl"] > 0
        assert tr.describe()["config"]["kl_estimator"] == "analytic"
    ro_tr = GRPOTrainer(_tiny_generator(6), build_reward([{"name": "test_volume"}]),
                        RewardResources(), _config(reference="pretrained",
                                                   kl_estimator="analytic"))
    ro = ro_tr.rollout()
    units = ro_tr._units(ro, np.zeros(len(ro.groups)))
    u = units[0][0]
    lp, mu = ro_tr.generator.ldm.step_log_probs(u.traj, return_means=True)
    # policy == reference at the start: the penalised KL is zero (to float32 rounding of the
    # reference's stacked pass against this step-by-step one)
    assert float(gaussian_kl_of(mu, u).max()) < 1e-10
    with pytest.raises(ValueError, match="kl_estimator"):
        GRPOConfig(kl_estimator="k2")


def gaussian_kl_of(mu, unit):
    from xtalforge.models.diffusion import gaussian_kl

    return gaussian_kl(mu, unit.ref_means, unit.traj.stds, unit.traj.mask, unit.traj.reduce)


def test_policy_loss_ratio_one_clipping_and_kl():
    logp_old = torch.tensor([-1.0, -1.0, -1.0, -1.0])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    # equal policies: ratio 1, nothing clipped, KL 0, loss = -mean(A) - gamma * entropy
    new = logp_old.clone().requires_grad_(True)
    loss, st = policy_loss(new, logp_old, adv, logp_old, clip_eps=0.1, kl_weight=1.0,
                           entropy_weight=0.01)
    assert float(st["clipped"]) == 0 and float(st["kl"]) == 0 and float(st["ratio"]) == 4.0
    assert float(loss) == pytest.approx(-adv.mean() - 0.01 * 1.0)
    # ratios 1.5 (A > 0 and A < 0) and 0.5 (A > 0 and A < 0)
    new = (logp_old + torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))).requires_grad_(True)
    loss, st = policy_loss(new, logp_old, adv, None, clip_eps=0.1, kl_weight=0.0,
                           entropy_weight=0.0)
    assert float(st["clipped"]) == 4 and float(st["ratio_absdev_max"]) == pytest.approx(0.5)
    # min(rho A, clip(rho) A): 1.1*1, 1.5*-1, 0.5*1, 0.9*-1
    assert float(loss) == pytest.approx(-(1.1 - 1.5 + 0.5 - 0.9) / 4)
    loss.backward()
    # the clipped branch has no gradient (elements 0 and 3); the pessimistic one keeps it
    assert new.grad[0] == 0 and new.grad[3] == 0
    assert new.grad[1] == pytest.approx(1.5 / 4) and new.grad[2] == pytest.approx(-0.5 / 4)
    # KL term: gradient pushes logp_new toward logp_ref
    new = logp_old.clone().requires_grad_(True)
    ref = logp_old + 0.5
    loss, st = policy_loss(new, logp_old, torch.zeros(4), ref, clip_eps=0.1, kl_weight=1.0,
                           entropy_weight=0.0)
    assert float(st["kl"]) > 0
    loss.backward()
    assert (new.grad < 0).all()  # minimising the loss raises logp toward the reference


def test_group_advantages():
    r = np.array([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    g = np.array([0, 0, 0, 1, 1, 1])
    a = group_advantages(r, g)
    np.testing.assert_allclose(a[:3], (r[:3] - 2) / np.std(r[:3]), rtol=1e-6)
    assert np.all(a[3:] == 0)  # constant group: no signal
    b = group_advantages(r, None)  # REINFORCE: whole batch
    assert b.mean() == pytest.approx(0, abs=1e-12) and b.std() == pytest.approx(1, rel=1e-6)
    assert b[3] > 0  # a group-less baseline credits the high-reward group


# ----------------------------------------------------------------------------- trainer
def test_ratio_is_exactly_one_before_the_first_update():
    gen = _tiny_generator()
    tr = GRPOTrainer(gen, build_reward([{"name": "test_volume"}]), RewardResources(),
                     _config(num_inner_batches=1))
    ro = tr.rollout()
    assert len(ro) == 8 and ro.trajectories[0].stochastic.sum() == 5  # last DDIM step: std 0
    for traj in ro.trajectories:
        with torch.no_grad():
            again = gen.ldm.step_log_probs(traj)
        assert torch.equal(again, traj.log_probs)
    adv = np.linspace(-1, 1, 8)
    stats = tr.update(ro, adv)
    # the update recomputes all steps of a group in one stacked denoiser pass: the same values
    # up to float32 rounding (the step-by-step recomputation above is bit-identical)
    assert stats["ratio_absdev_max_first_batch"] < 1e-6
    assert stats["clip_frac"] == 0.0 and stats["ratio_mean"] == pytest.approx(1.0, abs=1e-6)


def test_update_raises_log_prob_of_best_trajectory():
    gen = _tiny_generator(1)
    cfg = _config(num_conditions=1, group_size=6, kl_weight=0.0, entropy_weight=0.0,
                  num_inner_batches=1, lr=1e-4, clip_eps=10.0, reference="rollout")
    tr = GRPOTrainer(gen, build_reward([{"name": "test_volume"}]), RewardResources(), cfg)
    ro = tr.rollout()
    traj = ro.trajectories[0]
    adv = np.array([2.0, -0.4, -0.4, -0.4, -0.4, -0.4])
    before = sequence_log_prob(gen.ldm, traj)
    tr.update(ro, adv)
    after = sequence_log_prob(gen.ldm, traj)
    delta = (after - before).numpy()
    assert delta[0] > 0 and delta[0] > delta[1:].max()
    assert delta[1:].mean() < 0


def test_grpo_steps_curves_kl_and_reference():
    gen = _tiny_generator(2)
    start = {k: v.clone() for k, v in gen.ldm.ema_denoiser.state_dict().items()}
    val = (torch.randn(5, gen.max_atoms, 8), torch.arange(gen.max_atoms)[None].repeat(5, 1) < 3)
    tr = GRPOTrainer(gen, build_reward([{"name": "test_volume"}]), RewardResources(),
                     _config(reference="pretrained"), val_latents=val)
    curves = tr.train(3, progress=False)
    assert [r["step"] for r in curves] == [1, 2, 3]
    for key in ("reward/test_volume", "reward_total", "kl", "adv_var", "clip_frac",
                "ratio_mean", "val_nll", "wall_time_s", "entropy", "frac_decoded"):
        assert all(math.isfinite(r[key]) for r in curves), key
    assert curves[0]["ratio_absdev_max_first_batch"] < 1e-6  # float32 rounding of the stacked pass
    assert curves[0]["num_optimizer_steps"] == 2.0  # 2 inner batches
    assert all(r["kl"] >= 0 for r in curves) and curves[-1]["kl"] > 0
    assert curves[0]["adv_var"] == pytest.approx(1.0, rel=1e-6)
    # the frozen reference is the starting policy; the policy moved
    for k, v in tr.ref_ldm.denoiser.state_dict().items():
        assert torch.equal(v, start[k])
    moved = any(not torch.equal(v, start[k]) for k, v in gen.ldm.denoiser.state_dict().items())
    assert moved
    assert tr.describe()["reference"] == "pretrained"
    # the saved policy is what generate() samples with
    ck = tr.checkpoint_dict()
    for k, v in gen.ldm.denoiser.state_dict().items():
        assert torch.equal(ck["ldm"][f"ema_denoiser.{k}"], v.cpu())


def test_inner_batches_split_a_single_group():
    gen = _tiny_generator(4)
    tr = GRPOTrainer(gen, build_reward([{"name": "test_volume"}]), RewardResources(),
                     _config(num_conditions=1, group_size=4, num_inner_batches=2))
    ro = tr.rollout()
    stats = tr.update(ro, np.array([1.0, -1.0, 0.5, -0.5]))
    assert stats["num_optimizer_steps"] == 2.0
    # a sub-batch of a sampled group: equal up to float rounding of a different batch size
    assert stats["ratio_absdev_max_first_batch"] < 1e-4


def test_reinforce_and_rollout_reference():
    gen = _tiny_generator(3)
    tr = GRPOTrainer(gen, build_reward([{"name": "test_volume"}]), RewardResources(),
                     _config(algorithm="reinforce", reference="rollout"))
    assert tr.ref_ldm is None
    row = tr.train_step()
    assert row["kl"] >= 0 and tr.describe()["algorithm"] == "reinforce"
    r = np.array([0.0, 1.0, 2.0, 10.0])
    np.testing.assert_allclose(tr.advantages(r, np.array([0, 0, 1, 1])),
                               group_advantages(r, None))
    with pytest.raises(ValueError):
        GRPOConfig(eta=0.0)
    with pytest.raises(ValueError):
        GRPOConfig(reference="ema")


def test_early_stopping_on_plateau():
    gen = _tiny_generator()
    tr = GRPOTrainer(gen, build_reward([{"name": "test_volume"}]), RewardResources(),
                     _config(patience=3, plateau_window=1))
    for v in [1.0, 2.0, 1.5, 1.9, 2.1, 2.0, 2.1]:  # 2.1 improves; the tie 2.1 does not
        tr._early_stopping(v)
    assert not tr.stopped
    tr._early_stopping(1.0)  # third step without improvement of the best (2.1)
    assert tr.stopped


def test_non_finite_update_is_not_applied_and_stops():
    gen = _tiny_generator(5)
    tr = GRPOTrainer(gen, build_reward([{"name": "test_volume"}]), RewardResources(),
                     _config(num_inner_batches=1))
    ro = tr.rollout()
    before = {k: v.clone() for k, v in gen.ldm.denoiser.state_dict().items()}
    stats = tr.update(ro, np.full(8, np.nan))  # NaN advantages -> NaN loss and gradient
    assert stats["num_skipped_updates"] == 1.0 and stats["num_optimizer_steps"] == 0.0
    for k, v in gen.ldm.denoiser.state_dict().items():
        assert torch.equal(v, before[k]), k
    tr._guards({"num_skipped_updates": 1.0, "loss": float("nan")})
    assert tr.stopped and "non-finite" in tr.stop_reason


def test_max_kl_stops_training():
    gen = _tiny_generator(6)
    tr = GRPOTrainer(gen, build_reward([{"name": "test_volume"}]), RewardResources(),
                     _config(max_kl=1e-12, lr=1e-3))
    curves = tr.train(5, progress=False)
    assert len(curves) == 1 and curves[0]["kl"] > 1e-12
    assert tr.stopped and "max_kl" in tr.stop_reason
    assert curves[0]["stop_reason"] == tr.stop_reason


def test_select_by_restores_the_policy_that_made_the_best_rollouts():
    gen = _tiny_generator(7)
    tr = GRPOTrainer(gen, build_reward([{"name": "test_volume"}]), RewardResources(),
                     _config(select_by="reward_raw_total", lr=1e-2))
    states = []
    for _ in range(4):
        states.append({k: v.clone() for k, v in gen.ldm.denoiser.state_dict().items()})
        tr.train_step()
    best_i = int(np.argmax([r["reward_raw_total"] for r in tr.curves]))
    info = tr.restore_best()
    # step i's rollouts came from the policy before update i, i.e. after i updates
    assert info["policy_after_updates"] == best_i
    assert info["value"] == tr.curves[best_i]["reward_raw_total"]
    for k, v in gen.ldm.denoiser.state_dict().items():
        assert torch.equal(v, states[best_i][k]), k
    with pytest.raises(KeyError):
        GRPOTrainer(gen, build_reward([{"name": "test_volume"}]), RewardResources(),
                    _config(select_by="no_such_metric")).train_step()
    assert GRPOTrainer(gen, build_reward([{"name": "test_volume"}]), RewardResources(),
                       _config()).restore_best() is None


def test_fixed_seed_evaluation_curve_and_selection():
    gen = _tiny_generator(8)
    tr = GRPOTrainer(gen, build_reward([{"name": "test_volume"}]), RewardResources(),
                     _config(eval_every=2, eval_samples=6, select_by="eval/reward_raw_total"))
    first = tr.evaluate_policy()
    assert tr.evaluate_policy() == first  # same atom counts and noise: same numbers
    assert first["eval/n"] == 6.0 and "eval/reward/test_volume" in first
    curves = tr.train(4, progress=False)
    has_eval = ["eval/reward_raw_total" in r for r in curves]
    assert has_eval == [True, False, True, False]  # before updates 0 and 2
    assert curves[0]["eval/reward_raw_total"] == first["eval/reward_raw_total"]
    assert curves[2]["eval/reward_raw_total"] != first["eval/reward_raw_total"]  # policy moved
    best = max((0, 2), key=lambda i: curves[i]["eval/reward_raw_total"])
    assert tr.restore_best()["policy_after_updates"] == best
    assert tr.evaluate_policy()["eval/reward_raw_total"] == curves[best]["eval/reward_raw_total"]
    with pytest.raises(ValueError):
        GRPOConfig(eval_every=-1)


# ----------------------------------------------------------------------------- makers
def _structures() -> list[Structure]:
    out = []
    for a, b, lat in [("Na", "Cl", 5.64), ("K", "Br", 6.6), ("Mg", "O", 4.2), ("Li", "F", 4.0),
                      ("Ca", "S", 5.7), ("Ba", "O", 5.5)]:
        out.append(Structure.from_spacegroup("Fm-3m", Lattice.cubic(lat), [a, b],
                                             [[0, 0, 0], [0.5, 0.5, 0.5]]
                                             ).get_primitive_structure())
        out.append(Structure(Lattice.cubic(lat * 0.6), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    return out


@pytest.fixture
def campaign(tmp_path):
    """A memory JobStore with a few dataset documents (train / val) and a tiny checkpoint."""
    store = build_job_store("memory")
    store.connect()
    docs = []
    for i, s in enumerate(_structures()):
        docs.append(make_structure_doc(
            s, structure_id=make_structure_id("c1", "test", i), campaign_id="c1",
            stage="dataset", split="val" if i % 4 == 0 else "train",
            properties={"volume_per_atom": s.volume / len(s)}))
    bulk_upsert(store.additional_stores["structures"], docs)
    path = tmp_path / "gen.pt"
    _tiny_generator().save(path)
    return store, str(path)


def _ctx(store, uuid: str = "job-1") -> JobContext:
    return JobContext(store=store, job_uuid=uuid, job_name="rl", campaign_id="c1", metadata={})


def _maker(max_steps: int = 2, **kw) -> RLFineTuneMaker:
    grpo = GRPOConfig(group_size=4, num_conditions=2, sampling_steps=5, lr=1e-3,
                      max_steps=max_steps)
    base = dict(reward=[{"name": "test_volume"}, {"name": "composition_diversity",
                                                  "weight": 0.5}],
                grpo=grpo, checkpoint_every=1, val_size=8, device="cpu")
    base.update(kw)
    return RLFineTuneMaker(**base)


def test_rl_maker_outputs_and_resume(campaign):
    store, path = campaign
    out = run_rl_finetune(_maker(), _ctx(store), path)
    assert out["checkpoint"]["kind"] == "generator/rl" and out["steps_done"] == 2
    assert out["reference_policy"] == "pretrained" and out["resumed_from_step"] == 0
    assert [c["step"] for c in out["curves"]] == [1, 2]
    assert {"reward/test_volume", "reward/composition_diversity", "kl", "adv_var",
            "clip_frac", "val_nll"} <= set(out["curves"][0])
    assert "'val' dataset documents" in out["notes"]["val_set"]
    assert out["reward_config"]["components"][1]["weight"] == 0.5
    prog = store.additional_stores["data"].query_one({"progress_id": "rl-progress:job-1"})
    assert prog["step"] == 2
    from xtalforge.stores.artifacts import resolve_checkpoint

    p, _ = resolve_checkpoint(out["checkpoint"], store.additional_stores["blobs"])
    LatentDiffusionGenerator.load(p).generate(3, steps=5)
    # the same job runs again with a larger budget: it continues from step 2
    out2 = run_rl_finetune(_maker(max_steps=3), _ctx(store), path)
    assert out2["resumed_from_step"] == 2 and [c["step"] for c in out2["curves"]] == [1, 2, 3]
    assert out2["curves"][:2] == out["curves"]
    # a different job starts from scratch
    out3 = run_rl_finetune(_maker(max_steps=1), _ctx(store, "job-2"), path)
    assert out3["resumed_from_step"] == 0 and len(out3["curves"]) == 1


def test_rl_maker_through_jobflow(campaign):
    from jobflow import run_locally

    store, path = campaign
    job = _maker(max_steps=1, checkpoint_every=0).make(path)
    job.update_metadata({"campaign_id": "c1"})
    resp = run_locally(job, store=store, log=False, ensure_success=True)
    out = resp[job.uuid][1].output
    assert out["steps_done"] == 1 and out["checkpoint"]["kind"] == "generator/rl"
    assert store.additional_stores["data"].query_one({"progress_id": f"rl-progress:{job.uuid}"})


def test_surrogate_maker_property_and_missing(campaign):
    store, path = campaign
    with pytest.raises(ValueError, match="properties present: \\['volume_per_atom'\\]"):
        run_surrogate_training(SurrogateTrainMaker(property="dft_band_gap", split=None,
                                                   device="cpu"), _ctx(store), path)
    out = run_surrogate_training(SurrogateTrainMaker(property="volume_per_atom", split=None,
                                                     epochs=3, device="cpu"), _ctx(store), path)
    assert out["surrogate"]["kind"] == "surrogate/volume_per_atom" and out["n_used"] == 12
    sur = load_surrogate(out["surrogate"], _ctx(store))
    assert sur.property_name == "volume_per_atom"
    # the surrogate plugs into a property reward of an RL run
    rl = run_rl_finetune(_maker(reward=[{"name": "property_target", "property": "vpa",
                                         "target": 20.0}], max_steps=1,
                                  checkpoint_every=0),
                         _ctx(store, "job-3"), path, surrogates={"vpa": out["surrogate"]})
    assert math.isfinite(rl["curves"][0]["reward/property_target"])
