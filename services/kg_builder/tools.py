"""``faultline kg export --store FILE --out DIR [--graphml]``: the graph as Neo4j import CSVs (and GraphML)."""

from __future__ import annotations

import argparse
from pathlib import Path

from services.kg_builder.export import export_csv, export_graphml
from services.kg_builder.store import KgStore


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faultline kg")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write neo4j-admin import CSVs (and GraphML)")
    export.add_argument("--store", type=Path, default=Path(".run/kg-builder/kg.sqlite"))
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--graphml", action="store_true")
    args = parser.parse_args(argv)
    if not args.store.is_file():
        parser.error(f"no graph store at {args.store}")
    store = KgStore(args.store)
    files = export_csv(store, args.out)
    if args.graphml:
        files.append(export_graphml(store, args.out / "graph.graphml"))
    for path in files:
        print(path)
    return 0
