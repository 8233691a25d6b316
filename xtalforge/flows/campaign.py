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
    generator: {family: latent_diffusion}  # or wyckoff_transformer (xtalforge.flows.families)
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

:func:`maker_from_config` validates the configuration before building anything: an unknown key
(top level or inside a section) or a value of the wrong type raises :class:`CampaignConfigError`,
whose message names the key and lists the allowed ones (``TOP_LEVEL_KEYS`` at the top level, the
fields of the section's maker otherwise). A numeric string given for a float setting (YAML reads
``1e-4`` as a string) is converted.
"""

from __future__ import annotations

import copy
import logging
import sys
import types
import typing
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from jobflow import Flow, Maker

from xtalforge.flows.families import generator_section, wyckoff_stages_from_config
from xtalforge.makers.ingest import IngestDatasetMaker
from xtalforge.makers.pretrain import LDMTrainMaker, PretrainMaker, VAETrainMaker
from xtalforge.makers.sample import SampleMaker
from xtalforge.makers.screening import HullMaker, ScreenMaker

logger = logging.getLogger(__name__)

#: Keys allowed at the top level of a campaign configuration (``remote`` is read by
#: ``xtalforge submit``, ``store`` by ``xtalforge run``).
TOP_LEVEL_KEYS = (
    "campaign_id",
    "name",
    "seed",
    "store",
    "remote",
    "dataset",
    "reference",
    "generator",
    "pretrain",
    "checkpoint",
    "rl",
    "sample",
    "hull",
    "screen",
    "dft",
    "report",
)

#: Sections whose value is a mapping of settings (or null).
SECTION_KEYS = ("remote", "dataset", "reference", "generator", "pretrain", "rl", "sample", "hull",
                "screen", "dft", "report")


class CampaignConfigError(ValueError):
    """An invalid campaign configuration: an unknown key, a wrong type or a missing file."""


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
        return Flow(jobs, output=outputs, name=self.name)


def _field_types(cls: type) -> dict[str, Any]:
    """Return the resolved type annotations of a dataclass's fields (unresolvable ones left out)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - names imported only for type checking: field by field
        ns = dict(vars(sys.modules[cls.__module__]))
        out = {}
        for f in fields(cls):
            ann = f.type
            if isinstance(ann, str):
                try:
                    ann = eval(ann, ns)  # the class's own annotation, as get_type_hints does
                except Exception:  # noqa: BLE001
                    continue
            out[f.name] = ann
        return out


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and not typing.get_args(tp):
        return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true/false",
                "dict": "a mapping", "list": "a list", "tuple": "a list"}.get(
            tp.__name__, tp.__name__)
    return str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any) -> tuple[bool, Any]:
    """Return ``(ok, value)``: whether ``value`` fits the annotation ``tp`` (value converted)."""
    if tp is None or tp is Any:
        return True, value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _coerce(arg, value)
            if ok:
                return True, v
        return False, value
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, value
        if isinstance(value, str):
            try:
                return True, float(value)  # YAML 1.1 reads 1e-4 as a string
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        return isinstance(value, str), value
    base = origin or tp
    if base in (list, tuple):
        return isinstance(value, (list, tuple)), value
    if base is dict:
        return isinstance(value, Mapping), value
    return True, value  # anything richer (a maker, a config object ...) is checked by its class


def check_settings(
    section: str,
    settings: Any,
    classes: tuple[type, ...],
    extra: Mapping[str, Any] | None = None,
    exclude: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Validate one section's settings against the fields of ``classes``; return a checked copy.

    Parameters
    ----------
    section
        The section's name, for messages (``dataset``, ``rl`` ...).
    settings
        The section's value (a mapping, or ``None`` for no settings).
    classes
        Dataclasses whose fields are the allowed keys (and give their types).
    extra
        Further allowed keys, ``{key: type}``.
    exclude
        Fields of ``classes`` that the section may not set (set by the campaign itself).

    Raises
    ------
    CampaignConfigError
        When the section is not a mapping, has an unknown key (the message lists the allowed
        ones) or a value of the wrong type.
    """
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        raise CampaignConfigError(
            f"{section}: expected a mapping of settings (key: value), got {settings!r}"
        )
    allowed: dict[str, Any] = {}
    for cls in classes:
        hints = _field_types(cls)
        for f in fields(cls):
            if f.init and f.name not in exclude:
                allowed.setdefault(f.name, hints.get(f.name))
    allowed.update(extra or {})
    unknown = sorted(set(settings) - set(allowed), key=str)
    if unknown:
        raise CampaignConfigError(
            f"unknown {section} settings {unknown}; allowed: {sorted(allowed)}"
        )
    out = {}
    for key, value in settings.items():
        ok, out[key] = _coerce(allowed[key], value)
        if not ok:
            raise CampaignConfigError(
                f"{section}.{key}: expected {_type_name(allowed[key])}, got {value!r}"
            )
    return out


def check_config(config: Any) -> None:
    """Validate the top level of a campaign configuration (keys, section and scalar types).

    Raises
    ------
    CampaignConfigError
        On an unknown top-level key (the message lists :data:`TOP_LEVEL_KEYS`), a section that
        is not a mapping, or a ``campaign_id``/``name``/``seed``/``store`` of the wrong type.
    """
    if not isinstance(config, Mapping):
        raise CampaignConfigError(
            f"a campaign configuration is a mapping of keys ({', '.join(TOP_LEVEL_KEYS)}), "
            f"got {type(config).__name__}"
        )
    unknown = sorted(set(config) - set(TOP_LEVEL_KEYS), key=str)
    if unknown:
        raise CampaignConfigError(
            f"unknown top-level key(s) {unknown} in the campaign configuration; allowed: "
            f"{list(TOP_LEVEL_KEYS)}"
        )
    for key in SECTION_KEYS:
        if config.get(key) is not None and not isinstance(config[key], Mapping):
            raise CampaignConfigError(
                f"{key}: expected a mapping of settings (key: value), got {config[key]!r}"
            )
    scalars = {"campaign_id": str, "name": str, "seed": int, "store": str | None,
               "checkpoint": str | dict | None}
    for key, tp in scalars.items():
        if key in config and not _coerce(tp, config[key])[0]:
            raise CampaignConfigError(f"{key}: expected {_type_name(tp)}, got {config[key]!r}")


@contextmanager
def _section(name: str):
    """Turn a maker's own validation error (``TypeError``/``ValueError``) into a config error."""
    try:
        yield
    except CampaignConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise CampaignConfigError(f"{name}: {exc}") from exc


def _local_path(source: str) -> tuple[str, Path] | None:
    """Return ``(prefix, path)`` of a dataset source naming a local file or folder."""
    if source == "demo":
        return None
    if source.startswith("mp20:"):
        return "mp20:", Path(source.removeprefix("mp20:")).expanduser()
    return "", Path(source).expanduser()


def resolve_local_paths(config: dict[str, Any], base: str | Path | None = None) -> dict[str, Any]:
    """Return a copy of ``config`` whose dataset sources and checkpoint path are absolute.

    Jobs run in their own folders, so a relative ``dataset``/``reference`` ``source`` is made
    absolute against ``base`` (default: the current directory) before the flow is built. Used
    by ``xtalforge run`` (local execution); a configuration for a cluster keeps its paths.

    Raises
    ------
    CampaignConfigError
        When a source file (or ``mp20:`` folder) or the checkpoint file does not exist.
    """
    config = copy.deepcopy(config)
    base = Path(base) if base is not None else Path.cwd()
    for section in ("dataset", "reference"):
        sec = config.get(section)
        if not isinstance(sec, dict) or not isinstance(sec.get("source"), str):
            continue
        found = _local_path(sec["source"])
        if found is None:
            continue
        prefix, path = found
        path = path if path.is_absolute() else (base / path)
        if not path.exists():
            raise CampaignConfigError(f"{section}.source: not found: {path}")
        sec["source"] = prefix + str(path.resolve())
    ckpt = config.get("checkpoint")
    if isinstance(ckpt, str) and ckpt:
        path = Path(ckpt).expanduser()
        path = path if path.is_absolute() else (base / path)
        if not path.is_file():
            raise CampaignConfigError(f"checkpoint: not found: {path}")
        config["checkpoint"] = str(path.resolve())
    return config


def _pretrain_from_config(pretrain: dict[str, Any], seed: int) -> PretrainMaker:
    """Build the :class:`PretrainMaker` of a campaign's ``pretrain`` section.

    ``vae_steps`` / ``ldm_steps`` set each stage's ``train.steps``; the campaign ``seed`` and
    every other :class:`~xtalforge.models.training.TrainConfig` field given (``batch_size``,
    ``lr``, ``dtype``, ``max_minutes``, ``save_every_minutes``, ``max_run_steps`` ...) apply to
    both stages; ``device`` and ``split`` to both makers; ``model`` and ``max_atoms`` to the VAE.
    """
    from xtalforge.models.training import TrainConfig

    p = check_settings(
        "pretrain",
        pretrain,
        (TrainConfig, VAETrainMaker),
        extra={"vae_steps": int, "ldm_steps": int},
        exclude=("name", "steps", "seed", "train"),
    )
    train_keys = {f.name for f in fields(TrainConfig)} - {"steps", "seed"}
    train = {k: p.pop(k) for k in sorted(train_keys) if k in p}
    common = {k: p.pop(k) for k in ("device", "split") if k in p}
    vae_train = TrainConfig(steps=p.pop("vae_steps", 300), seed=seed, **train)
    ldm_train = TrainConfig(steps=p.pop("ldm_steps", 300), seed=seed, **train)
    vae = VAETrainMaker(
        model=p.pop("model", "tiny"), max_atoms=p.pop("max_atoms", 20), train=vae_train, **common
    )
    if p:
        raise CampaignConfigError(f"unknown pretrain settings: {sorted(p)}")
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
    CampaignConfigError
        On a key that is neither (the message names it and lists the allowed keys), a value of
        the wrong type, or when a field is given under both its name and its alias.
    """
    from xtalforge.makers.rl import RLFineTuneMaker
    from xtalforge.rl.grpo import GRPOConfig

    grpo_keys = {f.name for f in fields(GRPOConfig)}
    maker_keys = {f.name for f in fields(RLFineTuneMaker) if f.name not in ("grpo", "name")}
    if not isinstance(rl, Mapping):
        raise CampaignConfigError(f"rl: expected a mapping of settings (key: value), got {rl!r}")
    r = dict(rl)
    for old, new in RL_ALIASES.items():
        if old in r:
            if new in r:
                raise CampaignConfigError(
                    f"rl settings give both {old!r} and {new!r} (the same field)"
                )
            r[new] = r.pop(old)
    unknown = sorted(set(r) - grpo_keys - maker_keys, key=str)
    if unknown:
        allowed = sorted(grpo_keys | maker_keys | set(RL_ALIASES))
        raise CampaignConfigError(f"unknown rl settings {unknown}; allowed: {allowed}")
    r = check_settings("rl", r, (GRPOConfig, RLFineTuneMaker), exclude=("name", "grpo"))
    grpo = GRPOConfig(**{"seed": seed, **{k: v for k, v in r.items() if k in grpo_keys}})
    return RLFineTuneMaker(grpo=grpo, **{k: v for k, v in r.items() if k in maker_keys})


def maker_from_config(config: dict[str, Any]) -> DiscoveryCampaignMaker:
    """Build a :class:`DiscoveryCampaignMaker` from a campaign configuration dict.

    Raises
    ------
    CampaignConfigError
        On an unknown key (top level or in a section; the message lists the allowed ones) or a
        value of the wrong type; nothing is built then.
    """
    check_config(config)
    config = copy.deepcopy(config)
    seed = int(config.get("seed", 0))
    ds = check_settings(
        "dataset", config.get("dataset") or {"source": "demo"}, (IngestDatasetMaker,),
        exclude=("name",),
    )
    with _section("dataset"):
        ingest = IngestDatasetMaker(name="ingest dataset", split=ds.pop("split", "train"), **ds)
    ref_cfg = check_settings(
        "reference", config.get("reference"), (IngestDatasetMaker,), exclude=("name",)
    )
    ref = None
    if ref_cfg:
        ref = IngestDatasetMaker(
            name="ingest reference", split=ref_cfg.pop("split", "reference"), **ref_cfg
        )
    pretrain = None
    rl = None
    with _section("generator"):
        family, gen_cfg = generator_section(config.get("generator"))
    if family == "wyckoff_transformer":  # xtalforge.flows.families
        with _section("wyckoff_transformer"):
            pretrain, rl = wyckoff_stages_from_config(
                gen_cfg, config.get("pretrain"), config.get("rl"), seed, check_settings)
    if family == "latent_diffusion" and config.get("pretrain") is not None:
        with _section("pretrain"):
            clash = sorted(set(gen_cfg) & set(config["pretrain"]))
            if clash:
                raise CampaignConfigError(f"{clash} given in both generator and pretrain")
            pretrain = _pretrain_from_config({**config["pretrain"], **gen_cfg}, seed)
    if family == "latent_diffusion" and config.get("rl") is not None:
        with _section("rl"):
            rl = _rl_from_config(config["rl"], seed)
    sample = None
    sample_base = True
    if config.get("sample") is not None:
        s = check_settings(
            "sample", config["sample"], (SampleMaker,), extra={"sample_base": bool}
        )
        sample_base = s.pop("sample_base", True)
        with _section("sample"):
            sample = SampleMaker(**{"seed": seed, **s})
    screen = None
    if config.get("screen") is not None:
        with _section("screen"):
            screen = ScreenMaker(**check_settings("screen", config["screen"], (ScreenMaker,)))
    needs_hull = screen is not None or config.get("rl") is not None
    hull = None
    if needs_hull:
        with _section("hull"):
            hull = HullMaker(**check_settings("hull", config.get("hull"), (HullMaker,)))
    dft = None
    if config.get("dft") is not None:
        from xtalforge.makers.dft import dft_maker_from_config

        with _section("dft"):
            dft = dft_maker_from_config(config["dft"])
    report = None
    if config.get("report") is not None:
        from xtalforge.makers.report import ReportMaker

        with _section("report"):
            report = ReportMaker(**check_settings("report", config["report"], (ReportMaker,)))
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


#: What each top-level key of a campaign YAML is (``xtalforge run --help``).
_TOP_LEVEL_HELP = {
    "campaign_id": "required (or --campaign-id): the campaign's id; running the same id again "
                   "resumes it",
    "name": "free text",
    "seed": "integer (default 0): default seed of pretraining, RL and sampling",
    "store": "store setting, as --store: embedded (default), mongodb://..., a store.yaml",
    "remote": "jobflow-remote settings, read by `xtalforge submit` only",
    "checkpoint": "a generator checkpoint (path or stored reference) to start from instead of "
                  "pretrain",
}


def campaign_sections() -> list[tuple[str, str, list[str]]]:
    """Return ``(section, where its keys come from, allowed keys)`` for the campaign YAML.

    The keys are those :func:`maker_from_config` accepts for the default generator family
    (``latent_diffusion``); the ``wyckoff_transformer`` family's ``pretrain`` and ``rl`` are
    described in :mod:`xtalforge.flows.families`.
    """
    from xtalforge.flows.families import GENERATOR_KEYS
    from xtalforge.makers.dft import DFTValidationMaker
    from xtalforge.makers.report import ReportMaker
    from xtalforge.makers.rl import RLFineTuneMaker
    from xtalforge.models.training import TrainConfig
    from xtalforge.rl.grpo import GRPOConfig

    def keys(*classes: type, exclude: tuple[str, ...] = (), extra: tuple[str, ...] = ()
             ) -> list[str]:
        names = {f.name for c in classes for f in fields(c) if f.init and f.name not in exclude}
        return sorted(names | set(extra))

    dft_nested = ("relax", "band_structure", "dielectric", "hull_entries", "correction",
                  "check_potcar", "static_incar")
    dft_makers = ("static_maker", "relax_maker", "band_structure_maker", "dielectric_maker",
                  "collect_maker")
    return [
        ("dataset", "IngestDatasetMaker fields (the campaign's dataset; default: the demo set)",
         keys(IngestDatasetMaker, exclude=("name",))),
        ("reference", "IngestDatasetMaker fields (a further novelty reference set)",
         keys(IngestDatasetMaker, exclude=("name",))),
        ("generator", "family: latent_diffusion (default) or wyckoff_transformer; model and "
         "max_atoms of the generator (xtalforge.flows.families)", list(GENERATOR_KEYS)),
        ("pretrain", "TrainConfig fields (both training stages), VAETrainMaker fields, "
         "vae_steps and ldm_steps", keys(TrainConfig, VAETrainMaker,
                                         exclude=("name", "steps", "seed", "train"),
                                         extra=("vae_steps", "ldm_steps"))),
        ("rl", "GRPOConfig fields (-> RLFineTuneMaker.grpo) and RLFineTuneMaker fields; "
         "steps = max_steps", keys(GRPOConfig, RLFineTuneMaker, exclude=("name", "grpo"),
                                   extra=tuple(RL_ALIASES))),
        ("sample", "SampleMaker fields, and sample_base (also sample the model before RL)",
         keys(SampleMaker, extra=("sample_base",))),
        ("hull", "HullMaker fields (the reference hull; used with screen or rl)",
         keys(HullMaker)),
        ("screen", "ScreenMaker fields", keys(ScreenMaker)),
        ("dft", "DFTValidationMaker fields and options of its atomate2 makers "
         "(xtalforge.makers.dft.dft_maker_from_config)",
         keys(DFTValidationMaker, exclude=dft_makers, extra=dft_nested)),
        ("report", "ReportMaker fields", keys(ReportMaker)),
    ]


def campaign_grammar(width: int = 92) -> str:
    """Describe the campaign YAML: its top-level keys, and per section where its keys come from.

    Computed from the makers' fields (the same ones :func:`maker_from_config` checks), so the
    text (``xtalforge run --help``) lists exactly the keys a configuration may use. Lines are
    wrapped at ``width`` with hanging indents.
    """
    import textwrap

    lines = [
        "Campaign YAML: a mapping with these top-level keys (any other is an error). A stage "
        "runs only when its section is present; `{}` runs it with defaults. Examples: "
        "campaigns/demo.yaml (the demo, CPU), campaigns/mp20_gpu.yaml and "
        "campaigns/mp20_wyckoff_gpu.yaml (one GPU node).",
        "",
    ]
    lines += [f"  {k}: {v}" for k, v in _TOP_LEVEL_HELP.items()]
    lines.append("")
    lines.append("Sections (mappings of settings) and where their keys come from:")
    for section, source, allowed in campaign_sections():
        lines.append(f"  {section}: {source}.")
        lines.append(f"    keys: {', '.join(allowed)}")
    lines += ["", "Pipeline: dataset -> pretrain (or checkpoint) -> rl -> sample -> hull + "
              "screen -> dft -> report. With generator.family wyckoff_transformer, pretrain "
              "takes TrainConfig fields + device, split and rl PPOConfig + PPOFineTuneMaker "
              "fields."]
    out = []
    for line in lines:
        indent = " " * (len(line) - len(line.lstrip()))
        out.append(textwrap.fill(line, width, subsequent_indent=indent + "    " * bool(indent),
                                 break_on_hyphens=False) if line else "")
    return "\n".join(out)


def demo_config(campaign_id: str = "demo", seed: int = 0, train: bool = False
                ) -> dict[str, Any]:
    """Return the configuration of the demo campaign (whole chain on 2 CPU cores, minutes).

    The tiny generator shipped with the package (``xtalforge/data/weights/demo_generator.pt``,
    trained on this dataset by ``scripts/train_demo_generator.py``), or with ``train=True`` one
    pretrained from scratch (4,000 VAE and 3,000 LDM steps: minutes more), a few GRPO steps,
    CHGNet single-point screening against an MLIP-consistent hull of the demo structures, DFT
    flows built for the top candidates (stored ready to submit when no VASP is installed) and a
    report. CHGNet batches of 4 structures keep the peak memory low.
    """
    from xtalforge.data.demo import DEMO_GENERATOR

    config: dict[str, Any] = {
        "campaign_id": campaign_id,
        "name": "demo campaign",
        "seed": seed,
        "dataset": {"source": "demo", "split": "train", "limit": 400},
    }
    if train or not DEMO_GENERATOR.is_file():
        config["pretrain"] = {
            "model": "tiny",
            "vae_steps": 4000,
            "ldm_steps": 3000,
            "batch_size": 64,
            "lr": 1e-3,
            "device": "cpu",
        }
    else:
        config["checkpoint"] = str(DEMO_GENERATOR)
    return {
        **config,
        "rl": {
            "max_steps": 8,
            "group_size": 8,
            "num_conditions": 2,
            "lr": 1e-4,
            "device": "cpu",
            "val_size": 32,
            "sampling_steps": 20,
            "checkpoint_every": 4,
            "energy_batch_size": 4,
        },
        "sample": {
            "n": 200,
            "batch_size": 200,
            "chunk_size": 200,
            "device": "cpu",
            "sample_base": True,
        },
        "hull": {"kind": "mlip", "mlip": "chgnet", "device": "cpu", "batch_size": 4},
        "screen": {"mlip": "chgnet", "device": "cpu", "k": 5, "batch_size": 4},
        "dft": {"k": 3},
        "report": {},
    }
