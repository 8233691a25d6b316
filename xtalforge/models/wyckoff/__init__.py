"""Space-group-aware autoregressive Wyckoff transformer (Cao & Wang 2025), the second family.

``symmetry``  Wyckoff tables of the 230 groups (from pyxtal);
``tokenizer`` crystal <-> Wyckoff sequence;
``model``     the network and its exact masked sequence distribution;
``generator`` the family's :class:`~xtalforge.models.interface.CrystalGenerator`;
``training``  resumable maximum-likelihood pretraining.
"""
