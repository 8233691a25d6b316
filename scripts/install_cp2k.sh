#!/usr/bin/env bash
# Install CP2K (Debian package `cp2k`, 2023.1 on Debian 12) for the CP2K path of the DFT stage.
#
# Usage: bash scripts/install_cp2k.sh        (as root, or with cp2k already installed)
#
# Idempotent: exits 0 at once when `cp2k.psmp` (or `cp2k`) is on PATH and its data directory
# (/usr/share/cp2k, basis sets and pseudopotentials) exists.
# Fails quickly (exit 2) with a message when CP2K is absent and it cannot install it
# (not root, or no apt-get).
#
# Nothing else needs configuring by hand: `xtalforge.dft.cp2k.configure_cp2k()` writes the
# pymatgen CP2K data directory (the equivalent of `pmg config --cp2k /usr/share/cp2k <dir>`)
# under ~/.cache/xtalforge/cp2k_data and sets PMG_CP2K_DATA_DIR, CP2K_DATA_DIR, the default
# functional/basis/potential and ATOMATE2_CP2K_CMD for the process that runs the DFT jobs.
set -euo pipefail

log() { echo "[install_cp2k] $*" >&2; }

have_cp2k() {
  { command -v cp2k.psmp >/dev/null 2>&1 || command -v cp2k >/dev/null 2>&1; } \
    && [ -f /usr/share/cp2k/BASIS_MOLOPT ] && [ -f /usr/share/cp2k/GTH_POTENTIALS ]
}

if have_cp2k; then
  log "CP2K already installed: $(command -v cp2k.psmp || command -v cp2k)"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  log "not root: cannot install CP2K (run as root, or install the Debian package cp2k yourself)"
  exit 2
fi
if ! command -v apt-get >/dev/null 2>&1; then
  log "apt-get is absent: install CP2K (with its data files) yourself"
  exit 2
fi

log "installing cp2k and cp2k-data (apt-get)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends cp2k cp2k-data >/dev/null

if ! have_cp2k; then
  log "cp2k installed but cp2k.psmp or /usr/share/cp2k/{BASIS_MOLOPT,GTH_POTENTIALS} missing"
  exit 2
fi
log "CP2K installed: $(command -v cp2k.psmp || command -v cp2k)"
