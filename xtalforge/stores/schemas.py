"""Typed documents of every stage: pydantic models of what the ``structures`` store holds.

Each stage writes one document per structure (:mod:`xtalforge.stores.documents`). These models
describe them, field by field, as atomate2's task documents do: :class:`DatasetDoc` and
:class:`SampleDoc` (structure stages), :class:`ScreenDoc` (MLIP screening against a hull, whose
convention is a :class:`HullConvention`) and :class:`DFTDoc` (DFT validation, against a
:class:`DFTHullConvention`). The models read documents with the keys they are stored under, so
stores written before the models existed validate unchanged; keys a model does not name are
kept (``extra="allow"``): stages may add fields (custom metrics, properties).

Use :func:`validate_document` to read a stored document into its model, and
:func:`query_columns` for the default columns of ``xtalforge query`` (fields marked ``query`` in
their schema, lineage fields flattened as ``lineage.<key>``).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DFTDoc",
    "DFTHullConvention",
    "DatasetDoc",
    "FineTuneOutput",
    "GRPOOutput",
    "HullConvention",
    "HullOutput",
    "IngestOutput",
    "JobOutput",
    "Lineage",
    "PPOOutput",
    "ReportOutput",
    "SFTOutput",
    "SampleOutput",
    "ScreenOutput",
    "SurrogateOutput",
    "TrainOutput",
    "VAETrainOutput",
    "WyckoffTrainOutput",
    "SampleDoc",
    "ScreenDoc",
    "StageDoc",
    "StructureDoc",
    "STAGE_MODELS",
    "query_columns",
    "validate_document",
]


def _q(order: int) -> dict[str, Any]:
    """Mark a field as a default ``xtalforge query`` column, at position ``order``."""
    return {"query": order}


class StageDoc(BaseModel):
    """Fields every stage document has (the bookkeeping of :func:`make_result_doc`)."""

    model_config = ConfigDict(extra="allow")

    doc_id: str = Field(description="Unique key '<structure_id>/<stage>'; upserts replace on it.")
    structure_id: str = Field(
        description="Deterministic id of the structure (shared by all its stages).",
        json_schema_extra=_q(0),
    )
    campaign_id: str = Field(description="Campaign the document belongs to.")
    stage: str = Field(description="Stage that wrote the document.", json_schema_extra=_q(1))
    job_uuid: str | None = Field(
        None, description="uuid of the jobflow job that wrote it.", json_schema_extra=_q(6)
    )
    job_name: str | None = Field(
        None, description="Name of the job that wrote it.", json_schema_extra=_q(5)
    )
    created_at: str = Field(description="UTC time of writing (ISO 8601).")
    errors: list[str] = Field(
        default_factory=list,
        description="Why a value is missing or a structure failed (empty when all went well).",
        json_schema_extra=_q(15),
    )
    last_updated: _dt.datetime | None = Field(
        None, description="Time of the last upsert (set by the store)."
    )


# ----------------------------------------------------------------------------- structures
class Lineage(BaseModel):
    """Where a structure comes from (flattened to ``lineage.<key>`` columns by queries)."""

    model_config = ConfigDict(extra="allow")

    source: str | None = Field(
        None,
        description="What produced it: the dataset source, or 'generator' for samples.",
        json_schema_extra=_q(7),
    )
    source_id: str | None = Field(
        None, description="Id in the source dataset (e.g. an MP id).", json_schema_extra=_q(8)
    )
    parent_job_uuid: str | None = Field(None, description="The job that wrote the structure.")
    dataset: str | None = Field(None, description="Dataset name (dataset stage).")
    dataset_fingerprint: str | None = Field(
        None, description="SHA-256 of the parsed dataset (dataset stage; resume key)."
    )
    split: str | None = Field(None, description="Dataset split of the structure.")
    checkpoint_id: str | None = Field(
        None, description="Stored checkpoint that sampled it.", json_schema_extra=_q(9)
    )
    checkpoint_sha256: str | None = Field(None, description="SHA-256 of that checkpoint file.")
    checkpoint_kind: str | None = Field(None, description="Kind of checkpoint (generator/ldm).")
    model_label: str | None = Field(None, description="Label of the sampled model (base, rl).")
    sampler: dict[str, Any] | None = Field(None, description="Sampler settings and seed.")
    chunk: int | None = Field(None, description="Sampling chunk (resume unit).")
    index: int | None = Field(None, description="Position of the sample in its job.")


class StructureDoc(StageDoc):
    """A structure of a structure stage (``dataset``, ``sample``, ``relaxed``)."""

    stage: Literal["dataset", "sample", "relaxed"] = Field(
        description="Structure stage.", json_schema_extra=_q(1)
    )
    structure: dict[str, Any] | None = Field(
        description="pymatgen Structure.as_dict(); None when the structure is invalid."
    )
    formula: str | None = Field(
        description="Full formula in IUPAC order (Na4Cl4).", json_schema_extra=_q(2)
    )
    reduced_formula: str | None = Field(description="Reduced formula (NaCl).")
    chemsys: str | None = Field(description="Chemical system (Cl-Na).")
    elements: list[str] = Field(description="Sorted element symbols.")
    nsites: int = Field(description="Number of sites (0 when invalid).", json_schema_extra=_q(3))
    valid: bool = Field(
        description="A structure was parsed or decoded without errors.", json_schema_extra=_q(4)
    )
    lineage: Lineage = Field(default_factory=Lineage, description="Provenance of the structure.")
    properties: dict[str, Any] = Field(
        default_factory=dict, description="Source properties (formation energy, band gap ...)."
    )


class DatasetDoc(StructureDoc):
    """A structure of the training/reference dataset (stage ``dataset``)."""

    stage: Literal["dataset"] = Field(description="'dataset'.", json_schema_extra=_q(1))
    split: str | None = Field(None, description="Dataset split (train, heldout ...).")


class SampleDoc(StructureDoc):
    """A structure sampled from a generator checkpoint (stage ``sample`` or ``relaxed``)."""

    stage: Literal["sample", "relaxed"] = Field(
        description="'sample', or 'relaxed' for an MLIP-relaxed structure.",
        json_schema_extra=_q(1),
    )


# ----------------------------------------------------------------------------- hulls
class HullConvention(BaseModel):
    """How a reference hull was built: recorded on every screening result.

    Energies above hull are only comparable between results with the same convention (the
    ``fingerprint`` identifies the entries, energy kind and chemical potentials).
    """

    model_config = ConfigDict(extra="allow")

    energy_kind: Literal["total", "formation"] = Field(
        description="Energies of the entries: total (eV/atom) or formation (eV/atom)."
    )
    energy_source: str | None = Field(
        description="'mlip', 'formation-energy table' or 'entries file'."
    )
    mlip: dict[str, Any] | str | None = Field(
        None, description="Energy model of the reference energies (name, fingerprint ...)."
    )
    relaxed: bool | None = Field(None, description="Reference structures relaxed with the MLIP.")
    relax_kwargs: dict[str, Any] | None = Field(None, description="Relaxation settings.")
    reference_set: str | None = Field(None, description="What the reference entries are.")
    correction: str | None = Field(None, description="Energy correction scheme ('none', MP2020).")
    chemical_potentials_source: str | None = Field(
        None, description="Where elemental chemical potentials come from (formation hulls)."
    )
    max_elements: int | None = Field(None, description="Largest chemical system analysed.")
    n_entries: int = Field(description="Entries in the hull.")
    n_failed: int | None = Field(None, description="Reference structures the MLIP failed on.")
    fingerprint: str = Field(description="SHA-256 of entries, energy kind, chemical potentials.")


class DFTHullConvention(BaseModel):
    """The DFT hull a ``dft_e_above_hull`` is computed against."""

    model_config = ConfigDict(extra="allow")

    energy: str = Field(description="Which DFT energy is compared (the static's task entry).")
    correction: str = Field(description="MaterialsProject2020Compatibility or 'none'.")
    check_potcar: bool = Field(description="The correction scheme's POTCAR check.")
    reference_files: list[str] = Field(description="Files of the reference entries.")
    reference_fingerprint: str | None = Field(description="SHA-256 of the reference entries.")
    n_reference_entries: int | None = Field(description="Reference entries used.")
    reference_processed: bool = Field(description="References passed through the correction.")
    signed: bool = Field(description="Energies below the hull are negative (not clipped to 0).")


# ----------------------------------------------------------------------------- results
class ScreenDoc(StageDoc):
    """MLIP screening result of one structure (stage ``screen``)."""

    stage: Literal["screen"] = Field(description="'screen'.", json_schema_extra=_q(1))
    energy: float | None = Field(None, description="MLIP total energy (eV).")
    energy_per_atom: float | None = Field(None, description="MLIP energy (eV/atom).")
    max_force: float | None = Field(None, description="Largest force norm (eV/Å).")
    e_above_hull: float | None = Field(
        None,
        description="Energy above the reference hull (eV/atom); None when not evaluated.",
        json_schema_extra=_q(10),
    )
    n_sites: int | None = Field(None, description="Number of sites.")
    structure_valid: bool | None = Field(None, description="Passes the 0.5 Å distance check.")
    struct_valid: bool | None = Field(None, description="Same as structure_valid (kept key).")
    smact_valid: bool | None = Field(None, description="Charge-balanced by SMACT.")
    valid: bool | None = Field(None, description="structure_valid and smact_valid.")
    unique: bool | None = Field(
        None, description="Not a duplicate of an earlier sample.", json_schema_extra=_q(11)
    )
    representative: int | None = Field(None, description="Index of its duplicate group's first.")
    novel: bool | None = Field(
        None, description="Matches no reference structure.", json_schema_extra=_q(12)
    )
    stable: bool | None = Field(None, description="e_above_hull <= 0.")
    metastable: bool | None = Field(None, description="e_above_hull < 0.1 eV/atom.")
    sun: bool | None = Field(None, description="Stable, unique and novel.")
    msun: bool | None = Field(
        None, description="Metastable, unique and novel.", json_schema_extra=_q(13)
    )
    rejected: str | None = Field(
        None,
        description="Why the sample was not given to the MLIP (atoms closer than 0.5 Å, or "
        "denser than the screen's min_volume_per_atom); None when it was evaluated. A rejected "
        "sample has no energy and is not (meta)stable; unlike errors, a rejection is a verdict "
        "on the sample, not a failure of the pipeline.",
        json_schema_extra=_q(14),
    )
    min_amd_distance: float | None = Field(None, description="Min same-formula AMD distance.")
    creativity: float | None = Field(None, description="Creativity (Park & Walsh 2025).")
    relaxed: bool | None = Field(None, description="Energies of MLIP-relaxed structures.")
    relax_steps: int | None = Field(None, description="Relaxation steps taken.")
    relax_converged: bool | None = Field(None, description="Relaxation converged.")
    energy_model: str | None = Field(None, description="Energy model name.")
    mlip: dict[str, Any] | str | None = Field(None, description="Energy model description.")
    hull_convention: HullConvention | None = Field(
        None, description="The hull e_above_hull is measured against."
    )
    hull_fingerprint: str | None = Field(None, description="That hull's fingerprint.")
    rank: int | None = Field(None, description="Candidate rank for DFT (None: not ranked).")
    sample_job_uuid: str | None = Field(None, description="The job that sampled the structure.")
    model_label: str | None = Field(None, description="Label of the sampled model.")


class DFTDoc(StageDoc):
    """DFT validation result of one structure (stage ``dft``), linked to atomate2 tasks."""

    stage: Literal["dft"] = Field(description="'dft'.", json_schema_extra=_q(1))
    dft_status: str = Field(
        description="completed, failed, pending (flows stored, not run) or skipped."
    )
    dft_rank: int | None = Field(None, description="Rank among the DFT candidates.")
    dft_selection: dict[str, Any] | None = Field(None, description="Why it was selected.")
    mlip_e_above_hull: float | None = Field(
        None, description="The screening's MLIP energy above hull, for comparison (eV/atom)."
    )
    dft_structure_source: str | None = Field(None, description="'relaxed' or 'generated'.")
    dft_pending_reason: str | None = Field(None, description="Why the flow was not run.")
    dft_flow: str | None = Field(None, description="JSON of the stored, not yet run DFT flow.")
    dft_energy_per_atom: float | None = Field(None, description="Static energy (eV/atom).")
    dft_corrected_energy_per_atom: float | None = Field(
        None, description="Energy after the correction scheme (eV/atom)."
    )
    dft_formation_energy_per_atom: float | None = Field(
        None, description="Formation energy against the reference elements (eV/atom)."
    )
    dft_e_above_hull: float | None = Field(
        None, description="Energy above the DFT hull (eV/atom).", json_schema_extra=_q(14)
    )
    dft_decomposition: Any = Field(None, description="Decomposition products on the DFT hull.")
    dft_band_gap: float | None = Field(None, description="Smallest gap of the calculations (eV).")
    dft_band_gaps: dict[str, float | None] = Field(
        default_factory=dict, description="Gap of each calculation (static, uniform, line)."
    )
    dft_band_gap_source: str | None = Field(None, description="Calculation giving dft_band_gap.")
    dft_is_gap_direct: bool | None = Field(None, description="The gap is direct.")
    dft_eps_elec: float | None = Field(None, description="Electronic dielectric constant.")
    dft_eps_ionic: float | None = Field(None, description="Ionic dielectric constant.")
    dft_dielectric_tensor: Any = Field(None, description="Electronic dielectric tensor (3x3).")
    dft_fom: float | None = Field(None, description="Figure of merit eps_elec * band gap.")
    dft_hull_convention: DFTHullConvention | None = Field(
        None, description="The DFT hull of dft_e_above_hull."
    )
    dft_task_uuids: dict[str, Any] | None = Field(None, description="atomate2 task job uuids.")
    dft_task_dirs: dict[str, Any] | None = Field(None, description="Run directories.")
    dft_inputs: dict[str, Any] | None = Field(None, description="Key INCAR settings as run.")
    dft_calculations: Any = Field(None, description="Calculations enabled for the structure.")
    dft_warnings: list[str] | None = Field(None, description="Non-fatal problems.")
    dft_engine: str | None = Field(None, description="DFT engine: 'vasp' or 'cp2k'.")
    dft_engine_settings: dict[str, Any] | None = Field(
        None,
        description=("The engine's settings as run (functional, basis, pseudopotentials, cutoff, "
                     "k-points; with their fingerprint for CP2K)."),
    )
    dft_references: Any = Field(
        None,
        description=("Competing phases of the self-consistent DFT hull (CP2K): their cache keys, "
                     "formulas and status."),
    )
    dft_wall_time_s: float | None = Field(None, description="Engine wall time (s) of the static.")


#: Model of each stage's documents.
STAGE_MODELS: dict[str, type[StageDoc]] = {
    "dataset": DatasetDoc,
    "sample": SampleDoc,
    "relaxed": SampleDoc,
    "screen": ScreenDoc,
    "dft": DFTDoc,
}


def validate_document(doc: dict[str, Any]) -> StageDoc:
    """Read a stored document into the model of its stage (:class:`StageDoc` for others).

    Raises
    ------
    pydantic.ValidationError
        When the document does not fit its stage's schema.
    """
    clean = {k: v for k, v in doc.items() if k != "_id"}
    return STAGE_MODELS.get(str(doc.get("stage")), StageDoc).model_validate(clean)


def query_columns() -> list[str]:
    """Default ``xtalforge query`` columns: the fields marked ``query`` in the stage schemas."""
    marked: dict[str, int] = {}
    for prefix, model in (
        ("", StructureDoc),
        ("lineage.", Lineage),
        ("", ScreenDoc),
        ("", DFTDoc),
    ):
        for name, field in model.model_fields.items():
            extra = field.json_schema_extra
            if isinstance(extra, dict) and "query" in extra:
                marked.setdefault(prefix + name, int(extra["query"]))
    return sorted(marked, key=lambda n: marked[n])


# ----------------------------------------------------------------------------- job outputs
class JobOutput(BaseModel, Mapping):
    """Output of a stage's job (its jobflow ``output_schema``), readable as a mapping.

    jobflow validates a job's returned dict into its ``output_schema`` and stores the model
    (its fields plus ``@module``/``@class``); an ``OutputReference`` to the job resolves to the
    model again. The outputs are also read as mappings (``output["checkpoint"]`` references,
    ``output.get(...)``, ``dict(output)``), as they were read when they were plain dicts, so a
    store holding dict outputs of earlier runs and one holding typed outputs read the same
    way. Keys a model does not name are kept (``extra="allow"``).
    """

    model_config = ConfigDict(extra="allow")

    def __getitem__(self, key: str) -> Any:
        if key in type(self).model_fields or key in (self.model_extra or {}):
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:  # type: ignore[override] - keys, as a Mapping
        yield from type(self).model_fields
        yield from self.model_extra or {}

    def __len__(self) -> int:
        return len(type(self).model_fields) + len(self.model_extra or {})


def _ckpt(what: str) -> Any:
    return Field(
        description=f"Reference of {what} in the ``blobs`` store: checkpoint_id, sha256, kind, "
        "path, size_bytes, metadata (:func:`xtalforge.stores.artifacts.checkpoint_ref`)."
    )


class IngestOutput(JobOutput):
    """Output of the ingest job (:class:`~xtalforge.makers.ingest.IngestDatasetMaker`)."""

    name: str = Field(description="Dataset name.")
    path: str | None = Field(description="File the dataset was read from.")
    n_total: int = Field(description="Entries read.")
    n_accepted: int = Field(description="Entries with a usable structure.")
    n_rejected: int = Field(description="Entries rejected (stored with their reason).")
    rejected_by_reason: dict[str, int] = Field(description="Rejections counted by kind.")
    fingerprint: str = Field(description="SHA-256 of the parsed dataset (resume key).")
    split: str = Field(description="Split label stored on the documents.")
    n_heldout: int = Field(description="Entries labelled 'heldout' (committed test ids).")
    dataset_description: dict[str, Any] | None = Field(
        description="For the MP-20 split: file and held-out-id hashes."
    )
    campaign_id: str = Field(description="Campaign the documents belong to.")
    written: int = Field(description="Documents written by this run.")
    already_stored: int = Field(description="Documents an earlier run had written.")
    rejections: list[dict[str, Any]] = Field(
        description="Rejected entries: source_id, reason, doc_id."
    )


class TrainOutput(JobOutput):
    """Output of a generator training job (LDM; base of the VAE and Wyckoff outputs)."""

    checkpoint: dict[str, Any] = _ckpt("the trained generator")
    history: dict[str, Any] = Field(
        description="Training history (losses per logged step); in the ``data`` store."
    )
    n_train: int = Field(description="Structures trained on.")
    wall_time_s: float = Field(description="Wall time of this run (s).")
    steps_done: int = Field(description="Optimisation steps done.")
    runs: int = Field(
        description="Runs of this job that trained (continuations and reruns included)."
    )
    resumed_from_step: int = Field(description="Step this last run started from.")
    train_state_id: str | None = Field(description="Stored training state (resume key).")


class VAETrainOutput(TrainOutput):
    """Output of the VAE training job (:class:`~xtalforge.makers.pretrain.VAETrainMaker`)."""

    n_skipped_too_large: int = Field(
        description="Dataset structures left out for having more sites than max_atoms."
    )


class WyckoffTrainOutput(TrainOutput):
    """Output of the Wyckoff transformer's pretraining job."""

    tokenization: dict[str, Any] = Field(description="Structures tokenised, used and dropped.")
    family: str = Field(description="Generator family.")


class SFTOutput(JobOutput):
    """Output of the supervised fine-tuning baseline (rejection sampling, then fine-tuning)."""

    checkpoint: dict[str, Any] = _ckpt("the fine-tuned generator")
    parent_checkpoint: dict[str, Any] = _ckpt("the starting checkpoint")
    device: str = Field(description="Device used.")
    history: dict[str, Any] = Field(description="Fine-tuning history; in the ``data`` store.")
    n_samples: int = Field(description="Structures sampled.")
    n_selected: int = Field(description="Samples kept (E_hull below the threshold).")
    frac_selected: float = Field(description="n_selected / n_samples.")
    screen_summary: dict[str, Any] = Field(description="Scalar metrics of the screening.")
    relaxed: bool = Field(description="Samples relaxed with the MLIP before the hull.")
    threshold: float = Field(description="E_hull threshold (eV/atom).")
    hull_convention: dict[str, Any] | None = Field(
        description="The hull E_hull is measured against (:class:`HullConvention`)."
    )


class SampleOutput(JobOutput):
    """Output of a sampling job (:class:`~xtalforge.makers.sample.SampleMaker`)."""

    job_uuid: str | None = Field(description="The sampling job (key of its sample documents).")
    n: int = Field(description="Samples asked for.")
    n_written_now: int = Field(description="Sample documents written by this run.")
    n_valid_now: int = Field(description="Valid decodes among them.")
    already_stored: int = Field(description="Sample documents an earlier run had written.")
    checkpoint: dict[str, Any] = _ckpt("the sampled generator")
    label: str | None = Field(description="Model label (base, rl) of the lineage.")
    device: str = Field(description="Device used.")
    dtype: str = Field(description="fp32 or bf16.")
    generate_time_s: float = Field(description="Time spent generating (s).")
    structures_per_s: float | None = Field(description="Throughput of this run.")
    timings: dict[str, float] = Field(description="Time per generation phase (s).")


class HullOutput(JobOutput):
    """Output of the reference-hull job (:class:`~xtalforge.makers.screening.HullMaker`)."""

    artifact: dict[str, Any] = _ckpt("the saved hull")
    convention: dict[str, Any] | None = Field(
        description="How the hull was built (:class:`HullConvention`)."
    )
    reused: bool = Field(description="An identical hull was found in the store and reused.")


class ScreenOutput(JobOutput):
    """Output of a screening job (:class:`~xtalforge.makers.screening.ScreenMaker`)."""

    n: int = Field(description="Structures screened.")
    summary: dict[str, Any] = Field(
        description="Campaign-level metrics (validity, S.U.N., mSUN, coverage, hull convention)."
    )
    top_candidates: list[str] = Field(description="structure_ids of the ranked DFT candidates.")
    sample_job_uuids: list[str] = Field(description="Sampling jobs whose structures it screened.")
    policy: str = Field(description="Candidate ranking policy.")
    k: int = Field(description="Candidates ranked.")


class FineTuneOutput(JobOutput):
    """Output of an RL fine-tuning job (GRPO family or PPO)."""

    checkpoint: dict[str, Any] = _ckpt("the fine-tuned policy")
    curves: list[dict[str, Any]] = Field(
        description="Per-step training curves (reward, KL ...); in the ``data`` store."
    )
    algorithm: str = Field(description="grpo, dr-grpo, ppo ...")
    reward_config: dict[str, Any] = Field(description="The reward (components and weights).")
    resources: dict[str, Any] = Field(description="What the reward was computed with.")
    notes: dict[str, Any] = Field(description="Hull and validation set used, and how.")
    parent_checkpoint: dict[str, Any] = _ckpt("the starting checkpoint")
    steps_done: int = Field(description="Steps done.")
    resumed_from_step: int = Field(description="Step this run started from.")
    stop_reason: str | None = Field(description="Why training stopped early, if it did.")
    device: str = Field(description="Device used.")
    wall_time_s: float = Field(description="Wall time of this run (s).")


class GRPOOutput(FineTuneOutput):
    """Output of :class:`~xtalforge.makers.rl.RLFineTuneMaker`."""

    reference_policy: str | None = Field(description="KL reference policy.")
    grpo_config: dict[str, Any] = Field(description="The GRPOConfig as run.")
    early_stopped: bool = Field(description="Training stopped before max_steps.")
    selected_policy: dict[str, Any] | None = Field(
        description="Policy kept by select_by (None: the last)."
    )


class PPOOutput(FineTuneOutput):
    """Output of :class:`~xtalforge.makers.wyckoff.PPOFineTuneMaker`."""

    family: str = Field(description="Generator family.")
    ppo_config: dict[str, Any] = Field(description="The PPOConfig as run.")


class SurrogateOutput(JobOutput):
    """Output of :class:`~xtalforge.makers.rl.SurrogateTrainMaker`."""

    surrogate: dict[str, Any] = _ckpt("the trained property surrogate")
    property: str = Field(description="Property predicted.")
    history: dict[str, Any] = Field(description="Training history; in the ``data`` store.")
    n_used: int = Field(description="Dataset structures with the property.")
    n_without_property: int = Field(description="Dataset structures without it.")
    parent_checkpoint: dict[str, Any] = _ckpt("the generator whose embeddings it reads")
    device: str = Field(description="Device used.")


class DFTResultOutput(JobOutput):
    """Output of a DFT collector or reference-cache job: the document it wrote.

    The collector's output is the structure's ``dft`` document (:class:`DFTDoc`), the
    reference job's the ``dft_reference`` document of one competing phase; besides the fields
    below they hold that document's keys.
    """

    structure_id: str = Field(description="Structure (or cached reference phase) it is about.")
    stage: str = Field(description="'dft' or 'dft_reference'.")
    dft_status: str = Field(description="completed or failed (with the errors).")


class DFTStageOutput(JobOutput):
    """Output of the DFT validation job and of its summary job.

    Besides the fields below: the selection (``selected``, ``policy``, ``k``), the counts by
    status, the stored or pending flows and the best figures of merit, as the stage produced
    them.
    """

    stage: str = Field(description="'dft'.")
    status: str = Field(
        description="finished, nothing to run, or the status of stored not-yet-run flows."
    )


class ReportOutput(JobOutput):
    """Output of the report job: the report's path and its table values.

    Besides the fields below it holds the values of the tables of the stages that ran
    (``denovo``, ``mlip_vs_dft``, ``property_targeting``, ``fom_top``, ``figures`` ...).
    """

    campaign_id: str = Field(description="Campaign reported.")
    generated_at: str = Field(description="UTC time the report was built (ISO 8601).")
    report: str = Field(description="Path of report.md.")
