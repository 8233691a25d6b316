"""Documents per second: bulk versus per-document writes of structure documents.

Writes ``--n`` structure documents (real pymatgen structure dicts, ~10 atoms) to an embedded
MontyStore (sqlite) and to a MemoryStore (mongomock) in three ways, in the same run:

* ``bulk``: :func:`xtalforge.stores.documents.bulk_upsert` (``insert_many`` / ``bulk_write``);
* ``maggma update``: ``Store.update(docs, key="doc_id")`` in one call (maggma's own path);
* ``per-document``: one ``Store.update([doc])`` per document (measured on ``--n-slow`` documents
  and reported as a rate, because it is too slow for 10,000 here).

Usage: ``python benchmarks/store_write.py [--n 10000] [--n-slow 500]``
"""

from __future__ import annotations

import argparse
import tempfile
import time

from maggma.stores import MemoryStore, MontyStore
from pymatgen.core import Lattice, Structure

from xtalforge.stores.documents import bulk_upsert, make_structure_doc


def make_docs(n: int, tag: str) -> list[dict]:
    base = Structure(
        Lattice.cubic(5.0),
        ["Na", "Cl"] * 5,
        [[i / 10, (i * 3 % 10) / 10, (i * 7 % 10) / 10] for i in range(10)],
    )
    return [
        make_structure_doc(
            base,
            structure_id=f"{tag}-{i}",
            campaign_id="bench",
            stage="sample",
            lineage={"checkpoint_id": "ck"},
            properties={"i": i},
        )
        for i in range(n)
    ]


def stores(tmp: str, name: str):
    yield "MontyStore(sqlite)", MontyStore(name, database_path=tmp, database_name="bench")
    yield "MemoryStore(mongomock)", MemoryStore(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--n-slow", type=int, default=500)
    args = ap.parse_args()
    print(f"{args.n} structure documents (10-atom structures); per-document on {args.n_slow}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, _ in stores(tmp, "probe"):
            rates = {}
            for method in ("bulk", "maggma update", "per-document"):
                store = dict(stores(tmp, f"c_{method.replace(' ', '_')}"))[label]
                store.connect()
                n = args.n if method != "per-document" else args.n_slow
                if method == "maggma update":
                    n = min(args.n, 2 * args.n_slow)
                docs = make_docs(n, method)
                t = time.perf_counter()
                if method == "bulk":
                    bulk_upsert(store, docs)
                elif method == "maggma update":
                    store.update(docs, key="doc_id")
                else:
                    for d in docs:
                        store.update([d], key="doc_id")
                dt = time.perf_counter() - t
                count = store._collection.count_documents({})
                assert count == n, (label, method, count, n)
                rates[method] = n / dt
                print(f"  {label:24s} {method:14s} n={n:6d}  {dt:8.2f} s  {n / dt:10.0f} docs/s")
                store.close()
            base = rates["per-document"]
            print(
                f"  {label:24s} bulk / per-document = {rates['bulk'] / base:.0f}x, "
                f"maggma update / per-document = {rates['maggma update'] / base:.1f}x"
            )


if __name__ == "__main__":
    main()
