"""Offline demo (`python -m specdec.demo`): builds a small EAGLE-2-shaped draft tree with the kernels."""
from __future__ import annotations

import torch

import specdec_kernels as sk


def tree_demo() -> None:
    parents = torch.tensor([[-1, 0, 0, 0, 1, 1, 2, 4]], dtype=torch.int32)
    tree = sk.build_tree(parents)
    print("parents      ", parents[0].tolist())
    print("depth        ", tree.depth[0].tolist())
    print("first_child  ", tree.first_child[0].tolist())
    print("next_sibling ", tree.next_sibling[0].tolist())
    print("valid        ", tree.valid.tolist())
    print("ancestor mask (row i: nodes visible to node i)")
    for i, row in enumerate(sk.unpack_mask(tree.mask)[0].int().tolist()):
        print(f"  {i}: {''.join('x' if v else '.' for v in row)}")
    paths, n = sk.tree_paths(parents)
    print("root-to-leaf paths:", paths[0, : int(n[0])].tolist())


def main() -> None:
    tree_demo()


if __name__ == "__main__":
    main()
