"""Train the small generator that ships with the package for ``xtalforge demo``.

The demo campaign starts from this checkpoint (``xtalforge/data/weights/demo_generator.pt``)
instead of pretraining for minutes on a CPU; ``xtalforge demo --train`` pretrains from scratch
instead. The checkpoint is trained by the project's own pretraining stage (``PretrainMaker``:
``tiny`` preset, VAE then LDM) on exactly the demo campaign's dataset (``demo_config()``'s
``dataset`` section), in a throw-away embedded store. Next to it,
``demo_generator.json`` records the command, the settings, the dataset fingerprint (the ingest
job's sha256 over the structures), the checkpoint's sha256, the final losses and the package
versions.

Usage (CPU, a few minutes)::

    python scripts/train_demo_generator.py [--vae-steps 6000] [--ldm-steps 6000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from xtalforge.data.demo import DEMO_GENERATOR, DEMO_GENERATOR_INFO
from xtalforge.flows.campaign import demo_config, maker_from_config
from xtalforge.flows.runner import run_campaign
from xtalforge.stores.artifacts import resolve_checkpoint
from xtalforge.stores.config import build_job_store
from xtalforge.stores.provenance import package_versions, sha256_file


def main(argv: list[str] | None = None) -> int:
    """Train, copy the checkpoint into the package and write its record."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vae-steps", type=int, default=6000)
    ap.add_argument("--ldm-steps", type=int, default=6000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEMO_GENERATOR)
    args = ap.parse_args(argv)
    base = demo_config("demo-generator", args.seed, train=True)
    pretrain = {**base["pretrain"], "vae_steps": args.vae_steps, "ldm_steps": args.ldm_steps,
                "batch_size": args.batch_size, "lr": args.lr}
    config = {"campaign_id": "demo-generator", "seed": args.seed,
              "dataset": base["dataset"], "pretrain": pretrain}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = build_job_store("embedded", tmp)
        maker = maker_from_config(config)
        out = run_campaign(maker.make, config["campaign_id"], store, config=config,
                           root_dir=Path(tmp) / "runs")
        if out["status"] != "completed":
            print(f"training failed: {out.get('errors')}", file=sys.stderr)
            return 1
        ingest = store.query_one({"name": "ingest dataset"}, properties=["output"])["output"]
        # load=True: the histories live in the 'data' store
        ldm = store.query_one({"name": "train ldm"}, properties=["output"], load=True)["output"]
        vae = store.query_one({"name": "train vae"}, properties=["output"], load=True)["output"]
        path, ref = resolve_checkpoint(ldm["checkpoint"], store.additional_stores["blobs"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, args.out)
    record = {
        "what": "tiny latent-diffusion generator (VAE + DiT) for xtalforge demo",
        "command": "python scripts/train_demo_generator.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in
            (("vae_steps", args.vae_steps), ("ldm_steps", args.ldm_steps),
             ("batch_size", args.batch_size), ("lr", args.lr), ("seed", args.seed))),
        "pretrain": pretrain,
        "dataset": {**base["dataset"], "fingerprint": ingest.get("fingerprint"),
                    "n_accepted": ingest.get("n_accepted")},
        "sha256": sha256_file(args.out),
        "size_bytes": args.out.stat().st_size,
        "final_loss": {"vae": (vae.get("history") or {}).get("loss", [None])[-1],
                       "ldm": (ldm.get("history") or {}).get("loss", [None])[-1]},
        "train_wall_time_s": round(time.perf_counter() - t0, 1),
        "versions": package_versions(),
    }
    info = args.out.with_name(DEMO_GENERATOR_INFO.name) if args.out != DEMO_GENERATOR \
        else DEMO_GENERATOR_INFO
    info.write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"wrote {args.out} ({record['size_bytes'] / 1e6:.1f} MB, sha256 "
          f"{record['sha256'][:12]}) and {info}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
