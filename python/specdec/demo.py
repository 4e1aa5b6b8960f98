"""Offline demo (`python -m specdec.demo`): no downloads, CPU is enough.

1. The tree kernels on a small EAGLE-2-shaped draft tree (depth, ancestor mask, links, paths).
2. Speculative decoding end to end on a tiny random Llama target: with a random EAGLE head (drafts are
   mostly rejected: tau near 1) and with an oracle head that drafts with the target itself (whole paths
   accepted: tau near depth + 1). Both must reproduce plain greedy decoding token for token; the demo
   prints the statistics of each run and exits with status 1 if an output differs.
"""

from __future__ import annotations

import argparse
import sys

import torch

import specdec_kernels as sk


def tree_demo() -> None:
    """Print the tree kernels' outputs for a small EAGLE-2-shaped draft tree."""
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


def tiny_target(vocab: int = 512, hidden: int = 128, layers: int = 2, sharpen: float = 8.0, seed: int = 0):
    """A random Llama whose lm_head is scaled so next-token distributions are peaked, like a trained model's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    return model


def speculative_demo(
    max_new_tokens: int = 32,
    batch: int = 3,
    tree_top_k: int = 4,
    depth: int = 5,
    total_tokens: int = 24,
    device: str = "cpu",
) -> bool:
    """Run the comparison described in the module docstring; returns True when every output agrees."""
    from .decoding import generate, generate_baseline
    from .models import DraftConfig, build_draft_head
    from .target import TargetModel
    from .testing import TargetOracleHead

    model = tiny_target().to(device)
    target = TargetModel(model)
    torch.manual_seed(1)
    eagle = build_draft_head(DraftConfig.from_target(model.config, "eagle")).to(device).eval()
    g = torch.Generator().manual_seed(2)
    prompts = [
        torch.randint(0, model.config.vocab_size, (int(n),), generator=g).tolist()
        for n in torch.randint(4, 16, (batch,), generator=g)
    ]
    tree = dict(tree_top_k=tree_top_k, depth=depth, total_tokens=total_tokens)
    print(f"\ntarget: {target}")
    print(f"prompts of lengths {[len(p) for p in prompts]}, {max_new_tokens} new tokens, tree {tree}")
    generate_baseline(target, prompts, max_new_tokens=4)  # warm-up (first-call costs)
    base = generate_baseline(target, prompts, max_new_tokens=max_new_tokens)
    print(f"  plain decoding      : {base.summary()}")
    ok = True
    for name, head in (("random EAGLE head", eagle), ("oracle head", TargetOracleHead(model))):
        generate(target, head, prompts, max_new_tokens=4, **tree)  # warm-up
        res = generate(target, head, prompts, max_new_tokens=max_new_tokens, **tree)
        same = res.sequences == base.sequences
        ok &= same
        print(f"  {name:20s}: {res.summary()}")
        print(
            f"  {'':20s}  identical to plain greedy decoding: {'yes' if same else 'NO'}; "
            f"accept lengths of request 0: {res.accept_lengths[:, 0].tolist()}"
        )
    print(f"\nrequest 0: prompt {prompts[0]}\n  output {base.sequences[0]}")
    return ok


def main(argv=None) -> int:
    """Entry point of `python -m specdec.demo`; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m specdec.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tree-only", action="store_true", help="only the tree kernels part")
    args = parser.parse_args(argv)
    tree_demo()
    if args.tree_only:
        return 0
    return 0 if speculative_demo(args.max_new_tokens, args.batch, device=args.device) else 1


if __name__ == "__main__":
    sys.exit(main())
