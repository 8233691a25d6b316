"""The discovery campaign: a chain of stage makers, each optional and usable on its own.

``DiscoveryCampaignMaker`` wires ingest -> pretrain -> RL fine-tune -> sample -> screen -> DFT
validation -> report; a stage left as ``None`` is skipped. Stages pass references (dataset
summary, checkpoint record, sample summary ...) so that the flow graph stored in the campaign
record shows the whole chain.

Campaign YAML (``xtalforge run campaign.yaml``)::

    campaign_id: my-campaign
    seed: 0
    dataset: {source: ../shared/data/mp20/val.csv.gz, limit: 2000}
    reference: {source: ../shared/data/mp20/test.csv.gz}   # optional: novelty reference
    stages: {...}                                          # per-stage maker settings
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

from jobflow import Flow, Maker

from xtalforge.makers.ingest import IngestDatasetMaker

logger = logging.getLogger(__name__)


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
        Optional second dataset (novelty / hull reference), ingested with ``split="reference"``.
    stage_makers
        Further stage makers (``pretrain``, ``rl``, ``sample``, ``screen``, ``dft``, ``report``)
        keyed by stage; each receives the outputs of the earlier stages it needs.
    """

    name: str = "discovery campaign"
    ingest: IngestDatasetMaker = field(default_factory=IngestDatasetMaker)
    reference_ingest: IngestDatasetMaker | None = None
    stage_makers: dict[str, Maker] = field(default_factory=dict)

    def make(self) -> Flow:
        """Return the campaign flow."""
        jobs = []
        ingest = self.ingest.make()
        jobs.append(ingest)
        ref = None
        if self.reference_ingest is not None:
            ref = self.reference_ingest.make()
            jobs.append(ref)
        outputs: dict[str, Any] = {"dataset": ingest.output}
        if ref is not None:
            outputs["reference"] = ref.output
        return Flow(jobs, output=outputs, name=self.name)


def maker_from_config(config: dict[str, Any]) -> DiscoveryCampaignMaker:
    """Build a :class:`DiscoveryCampaignMaker` from a campaign configuration dict."""
    config = copy.deepcopy(config)
    ds = config.get("dataset") or {"source": "demo"}
    ingest = IngestDatasetMaker(name="ingest dataset", split=ds.pop("split", "train"), **ds)
    ref_cfg = config.get("reference")
    ref = None
    if ref_cfg:
        ref = IngestDatasetMaker(
            name="ingest reference", split=ref_cfg.pop("split", "reference"), **ref_cfg
        )
    return DiscoveryCampaignMaker(
        name=config.get("name", "discovery campaign"), ingest=ingest, reference_ingest=ref
    )


def demo_config(campaign_id: str = "demo", seed: int = 0) -> dict[str, Any]:
    """Return the configuration of the demo campaign (CPU, minutes)."""
    return {
        "campaign_id": campaign_id,
        "name": "demo campaign",
        "seed": seed,
        "dataset": {"source": "demo", "split": "train"},
    }
