"""Run the peers' `run_recbole.py` for RecBole models that need DGL (KGAT), under the peer Python.

RecBole 1.2.1 builds KGAT's collaborative knowledge graph with DGL. The DGL wheel on the package
index (2.1.0) ships its `graphbolt` C++ library only for torch up to 2.2, and `import dgl` fails
without it, though RecBole never uses graphbolt (only DGL's graph and message passing, which load
and run on torch 2.13). RecBole's KGAT also calls two DGL functions by their pre-1.0 names when it
splits the graph by relation once at start-up: `dgl.edge_subgraph(..., preserve_nodes=True)` (now
`relabel_nodes=False`) and `graph.adjacency_matrix(transpose=..., scipy_fmt=...)` (now
`adj_external`, same arguments and meaning). This wrapper registers an empty `dgl.graphbolt` module
before anything imports DGL, maps the two old calls to their new names (nothing numeric changes),
then hands its arguments to the shared driver unchanged.

RecBole's knowledge-graph dataset keeps only the interactions of items linked to the graph (on
ml-100k 97,554 of the 100,000 ratings: 1,598 of 1,682 movies are linked), so the driver's `--export`
check that the three parts cover every row of the raw file cannot hold; the wrapper accepts an
export whose parts cover exactly the dataset RecBole trained on and records the dropped rows in
`counts.json` (`dropped_unlinked_rows`). Set-up and arguments: the
peers README; additionally `pip install --no-deps dgl==2.1.0 torchdata==0.7.1 networkx` in the peer
environment.

    $RECSTACK_PEER_PYTHON benchmarks/run_recbole_dgl.py --peers-dir DIR -- --protocol A --model KGAT ...
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path


def _old_dgl_names() -> None:
    """Accept the pre-1.0 DGL calls RecBole 1.2.1's KGAT makes (see the module docstring)."""
    import dgl

    edge_subgraph = dgl.edge_subgraph

    def edge_subgraph_with_preserve_nodes(graph, edges, *args, preserve_nodes=None, **kwargs):
        if preserve_nodes is not None:
            kwargs["relabel_nodes"] = not preserve_nodes
        return edge_subgraph(graph, edges, *args, **kwargs)

    adjacency_matrix = dgl.DGLGraph.adjacency_matrix

    def adjacency_matrix_with_scipy_fmt(self, *args, **kwargs):
        if "scipy_fmt" in kwargs or "transpose" in kwargs:
            return self.adj_external(*args, **kwargs)
        return adjacency_matrix(self, *args, **kwargs)

    dgl.edge_subgraph = edge_subgraph_with_preserve_nodes
    dgl.DGLGraph.adjacency_matrix = adjacency_matrix_with_scipy_fmt


def _export_of_linked_items(driver) -> None:
    """Let `--export` write a KG dataset's split: the parts must sum to the dataset RecBole built."""
    write_parts = driver._write_parts

    def write_parts_of_linked_items(parts, dataset, outdir, n_total=None):
        try:
            return write_parts(parts, dataset, outdir, n_total)
        except AssertionError as error:
            info = error.args[0] if error.args and isinstance(error.args[0], dict) else None
            if info is None or info["sum"] != info["dataset_inter_num"] or info["sum"] > info["raw_file_rows"]:
                raise
            info["dropped_unlinked_rows"] = info["raw_file_rows"] - info["sum"]
            Path(outdir, "counts.json").write_text(json.dumps(info, indent=1))
            return info

    driver._write_parts = write_parts_of_linked_items


def main() -> None:
    args = sys.argv[1:]
    peers_dir = os.environ.get("RECSTACK_PEERS_DIR")
    if args[:1] == ["--peers-dir"] and len(args) > 1:
        peers_dir, args = args[1], args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    driver = os.path.join(peers_dir or "", "run_recbole.py")
    if not peers_dir or not os.path.isfile(driver):
        sys.exit("--peers-dir / RECSTACK_PEERS_DIR: the folder that holds run_recbole.py is needed "
                 f"(got {peers_dir!r})")
    sys.modules["dgl.graphbolt"] = types.ModuleType("dgl.graphbolt")  # never used by RecBole; see above
    _old_dgl_names()
    sys.argv = [driver, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(driver)))
    import run_recbole

    _export_of_linked_items(run_recbole)
    run_recbole.main()


if __name__ == "__main__":
    main()
