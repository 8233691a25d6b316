"""DFT validation as a library: candidate selection, DFT hulls, task documents, CP2K settings.

* :mod:`xtalforge.dft.selection` chooses which screened candidates get DFT;
* :mod:`xtalforge.dft.hull` computes energies above the hull in two conventions: MP2020-corrected
  VASP energies on MP's scale, and the self-consistent hull of one engine and one set of settings;
* :mod:`xtalforge.dft.tasks` reads atomate2 task documents (and checks for VASP);
* :mod:`xtalforge.dft.cp2k` checks for CP2K, configures its data paths and holds the settings
  shared by every calculation of a CP2K hull.

The Makers that run these calculations live in :mod:`xtalforge.makers.dft`.
"""
