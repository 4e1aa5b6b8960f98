"""Benchmark of the tree-construction ops: build_tree and select_tree on every backend usable here.

Providers: every backend of specdec_kernels that accepts the inputs (cuda, triton, cpu, torch = the
PyTorch reference) through the public functions with preallocated outputs, and "eagle2-port", a
straightforward port of EAGLE-2's own host-side code for the same job:
  * build_tree: per request, the ancestor mask by row additions in a Python loop, depth = row sums - 1,
    and retrieve_indices (root-to-leaf paths) by walking every leaf up over .tolist()'d parents
    (EAGLE-2 builds these in cnets.py after reranking; it handles one request at a time);
  * select_tree: topk of the cumulative scores, sort of the chosen indices, parents by searchsorted
    (EAGLE-2's reranking, batched here).
"<backend>:raw-op" times the compiled kernel called through torch.ops directly, without the public
function's argument checks and backend choice (the difference is Python overhead per call).
Trees are EAGLE-2-shaped: N-node trees selected from candidates drafted with top-k 10, depth 5.

    python bench/bench_tree.py              # B in {1, 8, 64} x N in {16, 60, 256}
    python bench/bench_tree.py --quick      # smoke run
    python bench/bench_tree.py --results    # CSV into bench/results/ instead of bench/out/
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import specdec_kernels as sk

from common import add_common_args, print_table, time_stats, usable_backends, write_csv

TOP_K, DEPTH = 10, 5  # EAGLE-2's drafting parameters: M = 10 + 4 * 100 = 410 candidates


def eagle_candidates(B: int, seed: int = 0):
    """Candidates drafted level by level (each level expands the TOP_K best of the previous one)."""
    gen = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(B, TOP_K, generator=gen) * 2, dim=-1)
    scores, parents = [logp], [torch.full((B, TOP_K), -1, dtype=torch.int64)]
    level_scores, level_idx, offset = logp, torch.arange(TOP_K).expand(B, TOP_K), TOP_K
    for _ in range(DEPTH - 1):
        best, pos = level_scores.topk(TOP_K, dim=1)
        front = torch.gather(level_idx, 1, pos)
        logp = torch.log_softmax(torch.randn(B, TOP_K, TOP_K, generator=gen) * 2, dim=-1)
        child = (best[:, :, None] + logp).reshape(B, -1)
        scores.append(child)
        parents.append(front[:, :, None].expand(B, TOP_K, TOP_K).reshape(B, -1))
        n = child.shape[1]
        level_scores, level_idx, offset = child, torch.arange(offset, offset + n).expand(B, n), offset + n
    cand_scores = torch.cat(scores, 1).float()
    cand_parents = torch.cat(parents, 1).to(torch.int32)
    cand_tokens = torch.randint(0, 32000, cand_scores.shape, generator=gen)
    root = torch.randint(0, 32000, (B,), generator=gen)
    return cand_scores, cand_parents, cand_tokens, root


# ---------------------------------------------------------------------------------------------------
# The EAGLE-2 port (host-side Python, as in the EAGLE repository; one request at a time)


def eagle2_build_port(parents: torch.Tensor):
    """EAGLE-2's tree mask / position ids / retrieve_indices construction, per request."""
    parents = parents.cpu()
    out = []
    for b in range(parents.shape[0]):
        mask_index_list = parents[b].tolist()  # parent node of each node (EAGLE: mask_index)
        n = len(mask_index_list)
        tree_mask = torch.eye(n, dtype=torch.bool)
        tree_mask[:, 0] = True
        for i in range(1, n):
            tree_mask[i].add_(tree_mask[mask_index_list[i]])
        tree_position_ids = torch.sum(tree_mask, dim=1) - 1
        max_depth = int(torch.max(tree_position_ids)) + 1
        noleaf_index = torch.unique(torch.tensor(mask_index_list[1:], dtype=torch.long)).tolist()
        leaf_num = n - len(noleaf_index)
        retrieve_indices = (torch.zeros(leaf_num, max_depth, dtype=torch.long) - 1).tolist()
        rid = 0
        position_ids_list = tree_position_ids.tolist()
        for i in range(n):
            if i not in noleaf_index:
                cid = i
                depth = position_ids_list[i]
                for j in reversed(range(depth + 1)):
                    retrieve_indices[rid][j] = cid
                    cid = mask_index_list[cid]
                rid += 1
        out.append((tree_mask, tree_position_ids, torch.tensor(retrieve_indices, dtype=torch.long)))
    return out


def eagle2_select_port(cand_scores, cand_parents, cand_tokens, root, N: int):
    """EAGLE-2's reranking: top-(N-1) by score, chosen indices sorted, parents found by searchsorted."""
    B = cand_scores.shape[0]
    top = torch.topk(cand_scores, N - 1, dim=-1).indices
    idx = torch.sort(top, dim=-1).values
    tokens = torch.cat([root[:, None], torch.gather(cand_tokens, 1, idx)], dim=1)
    par_c = torch.gather(cand_parents, 1, idx).long()
    node = torch.searchsorted(idx, par_c.clamp(min=0)) + 1
    node = torch.where(par_c < 0, torch.zeros_like(node), node)
    parents = torch.cat([torch.full((B, 1), -1, dtype=torch.long, device=idx.device), node], dim=1)
    return parents, tokens, idx


def check_ports(parents: torch.Tensor, tree: sk.Tree) -> None:
    """The EAGLE-2 port computes what build_tree does (first request): same mask, depths and paths."""
    mask, pos, retrieve = eagle2_build_port(parents[:1])[0]
    assert torch.equal(mask, sk.unpack_mask(tree.mask[:1].cpu())[0]), "eagle2-port mask differs from build_tree"
    assert torch.equal(pos.to(torch.int32), tree.depth[0].cpu()), "eagle2-port depths differ from build_tree"
    paths, num = sk.tree_paths(parents[:1].cpu())
    assert torch.equal(retrieve, paths[0, : int(num[0])]), "eagle2-port retrieve_indices differ from tree_paths"


# ---------------------------------------------------------------------------------------------------


def bench_shape(B: int, N: int, device: str, min_time: float) -> list:
    cand = [t.to(device) for t in eagle_candidates(B, seed=B * 1000 + N)]
    sel_out = sk.SelectedTree.empty(B, N, device)
    sk.select_tree(*cand, N, backend="torch", out=sel_out)
    parents = sel_out.parents.clone()
    num_nodes = torch.full((B,), N, dtype=torch.int32, device=device)
    tree_out = sk.Tree.empty(B, N, device)
    M = cand[0].shape[1]
    rows = []

    def add(op, provider, fn):
        med, best = time_stats(fn, device, min_time=min_time, warmup=2)
        rows.append(
            {
                "op": op,
                "provider": provider,
                "B": B,
                "N": N,
                "M": M if op == "select_tree" else "",
                "time_us": med,
                "min_us": best,
            }
        )

    for b in usable_backends("build_tree", parents, num_nodes, *tree_out):
        add("build_tree", b, lambda b=b: sk.build_tree(parents, num_nodes, backend=b, out=tree_out))
        if b in ("cuda", "cpu"):  # the compiled kernel alone, without the public function's checks and dispatch
            add("build_tree", f"{b}:raw-op", lambda: torch.ops.specdec.build_tree(parents, num_nodes, *tree_out))
    add("build_tree", "eagle2-port", lambda: eagle2_build_port(parents))
    for b in usable_backends("select_tree", *cand, *sel_out):
        add("select_tree", b, lambda b=b: sk.select_tree(*cand, N, backend=b, out=sel_out))
        if b in ("cuda", "cpu"):
            add("select_tree", f"{b}:raw-op", lambda: torch.ops.specdec.select_tree(*cand, *sel_out))
    add("select_tree", "eagle2-port", lambda: eagle2_select_port(*cand, N))

    sk.build_tree(parents, num_nodes, backend="torch", out=tree_out)
    check_ports(parents, tree_out)
    for op in ("build_tree", "select_tree"):
        base = {r["provider"]: r["time_us"] for r in rows if r["op"] == op}
        for r in rows:
            if r["op"] == op:
                r["x_vs_torch"] = base["torch"] / r["time_us"] if "torch" in base else float("nan")
                r["x_vs_eagle2"] = base["eagle2-port"] / r["time_us"]
    return rows


def main(argv=None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--batch", type=int, nargs="*", default=None, help="batch sizes (default 1 8 64)")
    parser.add_argument("--nodes", type=int, nargs="*", default=None, help="tree sizes N (default 16 60 256)")
    args = parser.parse_args(argv)
    batches = args.batch or ([1, 64] if args.quick else [1, 8, 64])
    nodes = args.nodes or ([60] if args.quick else [16, 60, 256])
    min_time = args.min_time / (10 if args.quick else 1)
    rows = []
    for B in batches:
        for N in nodes:
            rows += bench_shape(B, N, args.device, min_time)
    print(
        f"tree construction on {args.device}: microseconds per call (median and min over batches of calls); "
        f"speedups (from the medians) over the torch reference and the EAGLE-2 port"
    )
    print_table(rows, ["op", "provider", "B", "N", "M", "time_us", "min_us", "x_vs_torch", "x_vs_eagle2"])
    path = write_csv(rows, "tree", args.device, results=args.results, out_dir=args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
