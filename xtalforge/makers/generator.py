"""Old module path of the generator makers, kept for stored campaigns.

The makers now live in :mod:`xtalforge.makers.pretrain` and :mod:`xtalforge.makers.sample`.
This alias stays because stored data names this path: a campaign record holds its flow graph
(``flow.to_json()``), whose jobs serialise their maker as ``{"@module":
"xtalforge.makers.generator", "@class": "SampleMaker", ...}`` (jobflow-remote job documents do
the same), and a rerun rebuilds the flow from that graph
(:func:`xtalforge.flows.runner.run_campaign`). New code imports from the new modules.
"""

from xtalforge.makers.pretrain import LDMTrainMaker, PretrainMaker, VAETrainMaker
from xtalforge.makers.sample import SampleMaker, load_generator

__all__ = ["LDMTrainMaker", "PretrainMaker", "SampleMaker", "VAETrainMaker", "load_generator"]
