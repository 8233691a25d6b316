"""SFT baseline: selection by E_hull and supervised fine-tuning on the selection."""

from __future__ import annotations

import copy

import torch
from pymatgen.core import Lattice, Structure

from xtalforge.models.wyckoff.generator import WyckoffTransformerGenerator
from xtalforge.models.wyckoff.model import SequenceBatch, WyckoffTransformerConfig
from xtalforge.models.wyckoff.tokenizer import structure_to_sequence
from xtalforge.rl.sft import select_stable, supervised_finetune


def test_select_and_finetune_raise_likelihood_of_the_selection():
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    cscl = Structure.from_spacegroup("Pm-3m", Lattice.cubic(4.1), ["Cs", "Cl"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]])
    relaxed = cscl.copy()
    relaxed.scale_lattice(cscl.volume * 1.05)
    records = [{"e_above_hull": 0.3}, {"e_above_hull": 0.02,
                                       "relaxed_structure": relaxed.as_dict()},
               {"e_above_hull": None}]
    kept, idx = select_stable([nacl, cscl, nacl], records, threshold=0.1)
    assert idx == [1] and abs(kept[0].volume - relaxed.volume) < 1e-6  # the relaxed structure
    torch.manual_seed(0)
    gen = WyckoffTransformerGenerator(WyckoffTransformerConfig.tiny())
    gen.fit_space_group_distribution([225, 221])
    before = copy.deepcopy(gen.model.space_group_counts)
    b = SequenceBatch.from_sequences([structure_to_sequence(kept[0])], 20)
    lp0 = float(gen.model.log_prob(b))
    hist = supervised_finetune(gen, kept, steps=20, lr=3e-3)
    assert hist["steps"] == 20
    assert float(gen.model.log_prob(b)) > lp0 + 1.0
    assert torch.equal(gen.model.space_group_counts, before)  # base distribution kept
