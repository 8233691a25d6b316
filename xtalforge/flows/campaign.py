"""The discovery campaign: a chain of stage makers, each optional and usable on its own.

``DiscoveryCampaignMaker`` wires ingest -> pretrain -> RL fine-tune -> sample -> screen -> DFT
validation -> report; a stage left as ``None`` is skipped. Stages pass references (dataset
summary, checkpoint reference, sample summary ...) so the flow graph stored in the campaign
record shows the whole chain, and every stage can also run alone from stored checkpoints
(``checkpoint:`` a path or a reference instead of ``pretrain:``).

Campaign YAML (``xtalforge run campaign.yaml``): ``campaign_id`` is required; a stage runs only
when its section is present (``hull`` is used with ``screen``)::

    campaign_id: my-campaign
    seed: 0
    store: mongodb://...                  # or omit for the embedded store
    dataset: {source: ../shared/data/mp20/val.csv.gz, limit: 2000}
    reference: {source: ../shared/data/mp20/test.csv.gz}
    pretrain: {model: tiny, vae_steps: 300, ldm_steps: 300, device: auto}
                                          # + TrainConfig fields for both stages (batch_size,
                                          # lr, dtype, max_minutes: a run's budget ...)
    checkpoint: /path/to/generator.pt     # instead of pretrain: start from a stored model
    rl: {max_steps: 3, group_size: 8, eval_every: 10, select_by: eval/frac_msun, device: auto}
                                          # GRPOConfig fields (-> RLFineTuneMaker.grpo) and
                                          # RLFineTuneMaker fields (reward, device ...)
    sample: {n: 200, batch_size: 200, sample_base: true}
    hull: {kind: mlip, mlip: chgnet}
    screen: {mlip: chgnet, k: 5}
    dft: {k: 3}                           # DFTValidationMaker fields
    report: {}                            # ReportMaker fields
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field, fields
from typing import Any

from jobflow import Flow, Maker

from xtalforge.makers.generator import LDMTrainMaker, PretrainMaker, SampleMaker, VAETrainMaker
from xtalforge.makers.ingest import IngestDatasetMaker
from xtalforge.makers.screening import HullMaker, ScreenMaker

logger = logging.getLogger(__name__)

GPU_STAGES = (
    "train vae",
    "train ldm",
    "rl fine-tune",
    "sample",
    "sample base",
    "screen",
    "screen base",
    "reference hull",
)


@dataclass
class DiscoveryCampaignMaker(Maker):
    """Chain the stages of a discovery campaign.

    Parameters
    ----------
    name
        Flow name.
    ingest
        Loads the training dataset into the ``structures`` store.
    reference_ingest
        Optional second dataset (novelty/hull reference), ingested with ``split="reference"``.
    pretrain
        Generator pretraining (VAE then LDM); ``None`` with ``checkpoint`` set starts from a
        stored model.
    checkpoint
        Local path or checkpoint reference used when ``pretrain`` is ``None``.
    rl
        RL fine-tuning maker (``RLFineTuneMaker``); ``None`` samples the pretrained model.
    sample
        Sampling maker for the final model.
    sample_base
        With ``rl`` set, also sample (and screen) the pretrained model, for before/after tables.
    hull, screen
        Reference hull and screening makers.
    dft
        DFT validation maker (``DFTValidationMaker``).
    report
        Report maker (``ReportMaker``).
    """

    name: str = "discovery campaign"
    ingest: IngestDatasetMaker = field(default_factory=IngestDatasetMaker)
    reference_ingest: IngestDatasetMaker | None = None
    pretrain: PretrainMaker | None = None
    checkpoint: str | dict | None = None
    rl: Maker | None = None
    sample: SampleMaker | None = None
    sample_base: bool = True
    hull: HullMaker | None = None
    screen: ScreenMaker | None = None
    dft: Maker | None = None
    report: Maker | None = None

    def make(self) -> Flow:
        """Return the campaign flow (output: a dict of the stages' outputs)."""
        jobs: list = []
        outputs: dict[str, Any] = {}
        ingest = self.ingest.make()
        jobs.append(ingest)
        outputs["dataset"] = ingest.output
        if self.reference_ingest is not None:
            ref = self.reference_ingest.make()
            jobs.append(ref)
            outputs["reference"] = ref.output
        if self.pretrain is not None:
            pre = self.pretrain.make(ingest.output)
            jobs.append(pre)
            base_ckpt = pre.output["checkpoint"]
        elif self.checkpoint is not None:
            base_ckpt = self.checkpoint
        else:
            base_ckpt = None
        final_ckpt = base_ckpt
        hull = None
        if self.hull is not None and (self.screen is not None or self.rl is not None):
            hull = self.hull.make(ingest.output)
            jobs.append(hull)
        if self.rl is not None:
            if base_ckpt is None:
                raise ValueError("rl needs a pretrain stage or a checkpoint")
            rl = self.rl.make(base_ckpt, hull=hull.output if hull is not None else None)
            jobs.append(rl)
            outputs["rl"] = rl.output
            final_ckpt = rl.output["checkpoint"]
        samples = []
        if self.sample is not None and final_ckpt is not None:
            smp = self.sample.make(final_ckpt)
            jobs.append(smp)
            samples.append(("", smp))
            if self.rl is not None and self.sample_base:
                base_maker = copy.deepcopy(self.sample)
                base_maker.name = f"{self.sample.name} base"
                base_maker.label = "base"
                sb = base_maker.make(base_ckpt)
                jobs.append(sb)
                samples.append((" base", sb))
        screens = []
        if hull is not None and self.screen is not None:
            for suffix, smp in samples:
                maker = copy.deepcopy(self.screen)
                maker.name = f"{self.screen.name}{suffix}"
                scr = maker.make(smp.output, hull.output)
                jobs.append(scr)
                screens.append(scr)
                outputs[f"screen{suffix.replace(' ', '_')}"] = scr.output
        if self.dft is not None and screens:
            dft = self.dft.make(screens[0].output)
            jobs.append(dft)
            outputs["dft"] = dft.output
        if self.report is not None:
            rep = self.report.make(dict(outputs))
            jobs.append(rep)
            outputs["report"] = rep.output
        for j in jobs:
            if hasattr(j, "name") and j.name in GPU_STAGES:
                j.metadata.setdefault("xtalforge_resource", "gpu")
        return Flow(jobs, output=outputs, name=self.name)


def _pretrain_from_config(pretrain: dict[str, Any], seed: int) -> PretrainMaker:
    """Build the :class:`PretrainMaker` of a campaign's ``pretrain`` section.

    ``vae_steps`` / ``ldm_steps`` set each stage's ``train.steps``; the campaign ``seed`` and
    every other :class:`~xtalforge.models.training.TrainConfig` field given (``batch_size``,
    ``lr``, ``dtype``, ``max_minutes``, ``save_every_minutes``, ``max_run_steps`` ...) apply to
    both stages; ``device`` and ``split`` to both makers; ``model`` and ``max_atoms`` to the VAE.
    """
    from xtalforge.models.training import TrainConfig

    p = dict(pretrain)
    train_keys = {f.name for f in fields(TrainConfig)} - {"steps", "seed"}
    train = {k: p.pop(k) for k in sorted(train_keys) if k in p}
    common = {k: p.pop(k) for k in ("device", "split") if k in p}
    vae_train = TrainConfig(steps=p.pop("vae_steps", 300), seed=seed, **train)
    ldm_train = TrainConfig(steps=p.pop("ldm_steps", 300), seed=seed, **train)
    vae = VAETrainMaker(
        model=p.pop("model", "tiny"), max_atoms=p.pop("max_atoms", 20), train=vae_train, **common
    )
    if p:
        raise ValueError(f"unknown pretrain settings: {sorted(p)}")
    return PretrainMaker(vae_maker=vae, ldm_maker=LDMTrainMaker(train=ldm_train, **common))


#: Old names of the ``rl`` section, kept for existing configurations: ``{old: GRPOConfig field}``.
RL_ALIASES = {"steps": "max_steps"}


def _rl_from_config(rl: dict[str, Any], seed: int) -> Maker:
    """Build the :class:`~xtalforge.makers.rl.RLFineTuneMaker` of a campaign's ``rl`` section.

    Each key is either a :class:`~xtalforge.rl.grpo.GRPOConfig` field (``group_size``, ``lr``,
    ``max_kl``, ``select_by``, ``eval_every`` ...), which goes to the maker's ``grpo``, or a
    field of the maker itself (``reward``, ``device``, ``checkpoint_every``, ``val_size`` ...).
    ``steps`` is the old name of ``max_steps``. The campaign ``seed`` is the default ``seed``.

    Raises
    ------
    ValueError
        On a key that is neither (the message names it and lists the allowed keys), or when a
        field is given under both its name and its alias.
    """
    from xtalforge.makers.rl import RLFineTuneMaker
    from xtalforge.rl.grpo import GRPOConfig

    grpo_keys = {f.name for f in fields(GRPOConfig)}
    maker_keys = {f.name for f in fields(RLFineTuneMaker) if f.name != "grpo"}
    r = dict(rl)
    for old, new in RL_ALIASES.items():
        if old in r:
            if new in r:
                raise ValueError(f"rl settings give both {old!r} and {new!r} (the same field)")
            r[new] = r.pop(old)
    unknown = sorted(set(r) - grpo_keys - maker_keys)
    if unknown:
        allowed = sorted(grpo_keys | maker_keys | set(RL_ALIASES))
        raise ValueError(f"unknown rl setting(s) {unknown}; allowed: {allowed}")
    grpo = GRPOConfig(**{"seed": seed, **{k: v for k, v in r.items() if k in grpo_keys}})
    return RLFineTuneMaker(grpo=grpo, **{k: v for k, v in r.items() if k in maker_keys})


def maker_from_config(config: dict[str, Any]) -> DiscoveryCampaignMaker:
    """Build a :class:`DiscoveryCampaignMaker` from a campaign configuration dict."""
    config = copy.deepcopy(config)
    seed = int(config.get("seed", 0))
    ds = config.get("dataset") or {"source": "demo"}
    ingest = IngestDatasetMaker(name="ingest dataset", split=ds.pop("split", "train"), **ds)
    ref_cfg = config.get("reference")
    ref = None
    if ref_cfg:
        ref = IngestDatasetMaker(
            name="ingest reference", split=ref_cfg.pop("split", "reference"), **ref_cfg
        )
    pretrain = None
    if config.get("pretrain") is not None:
        pretrain = _pretrain_from_config(config["pretrain"], seed)
    rl = _rl_from_config(config["rl"], seed) if config.get("rl") is not None else None
    sample = None
    sample_base = True
    if config.get("sample") is not None:
        s = dict(config["sample"])
        sample_base = s.pop("sample_base", True)
        sample = SampleMaker(**{"seed": seed, **s})
    screen = ScreenMaker(**config["screen"]) if config.get("screen") is not None else None
    needs_hull = screen is not None or config.get("rl") is not None
    hull = HullMaker(**(config.get("hull") or {})) if needs_hull else None
    dft = None
    if config.get("dft") is not None:
        from xtalforge.makers.dft import dft_maker_from_config

        dft = dft_maker_from_config(config["dft"])
    report = None
    if config.get("report") is not None:
        from xtalforge.makers.report import ReportMaker

        report = ReportMaker(**config["report"])
    return DiscoveryCampaignMaker(
        name=config.get("name", "discovery campaign"),
        ingest=ingest,
        reference_ingest=ref,
        pretrain=pretrain,
        checkpoint=config.get("checkpoint"),
        rl=rl,
        sample=sample,
        sample_base=sample_base,
        hull=hull,
        screen=screen,
        dft=dft,
        report=report,
    )


def demo_config(campaign_id: str = "demo", seed: int = 0) -> dict[str, Any]:
    """Return the configuration of the demo campaign (whole chain on 2 CPU cores, minutes).

    Tiny generator trained briefly on the demo dataset, a few GRPO steps, CHGNet screening
    against an MLIP-consistent hull of the demo structures, DFT flows built for the top
    candidates (stored ready to submit when no VASP is installed) and a report.
    """
    return {
        "campaign_id": campaign_id,
        "name": "demo campaign",
        "seed": seed,
        "dataset": {"source": "demo", "split": "train", "limit": 400},
        "pretrain": {
            "model": "tiny",
            "vae_steps": 300,
            "ldm_steps": 300,
            "batch_size": 64,
            "lr": 1e-3,
            "device": "cpu",
        },
        "rl": {
            "max_steps": 3,
            "group_size": 8,
            "num_conditions": 2,
            "lr": 1e-4,
            "device": "cpu",
            "val_size": 32,
            "sampling_steps": 20,
            "checkpoint_every": 2,
        },
        "sample": {
            "n": 200,
            "batch_size": 200,
            "chunk_size": 200,
            "device": "cpu",
            "sample_base": True,
        },
        "hull": {"kind": "mlip", "mlip": "chgnet", "device": "cpu"},
        "screen": {"mlip": "chgnet", "device": "cpu", "k": 5},
        "dft": {"k": 3},
        "report": {},
    }
