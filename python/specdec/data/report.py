"""What a finished (or partial) `specdec data` build reports: counts, bytes per token, throughput."""

from __future__ import annotations


def build_summary(manifest: dict, out: str, seconds: float) -> str:
    """The lines printed at the end of a build: counts, bytes per token and the throughput of this run."""
    feats = "bf16" if manifest["settings"]["features"] else "none"
    lines = [f"data in {out} (target {manifest['target']['path']}, features {feats})"]
    t = {
        "responses_seconds": 0.0,
        "responses_turns": 0,
        "responses_tokens": 0,
        "prefill_seconds": 0.0,
        "prefill_tokens": 0,
        "features_captured": 0,
    }
    total_bytes = total_tokens = 0
    for s, info in manifest["splits"].items():
        lines.append(
            f"  {s}: {info['conversations']} conversations -> {info.get('sequences', 0)} sequences, "
            f"{info.get('tokens', 0)} tokens ({info.get('masked_tokens', 0)} response tokens), "
            f"{len(info['shards'])} of {info['num_shards']} shard(s)"
        )
        for e in info["shards"]:
            total_bytes += e["bytes"]
            total_tokens += e["tokens"]
            for k in t:
                t[k] += e.get("timing", {}).get(k, 0)
    if total_tokens:
        lines.append(f"  stored: {total_bytes / 2**20:.1f} MiB, {total_bytes / total_tokens:.0f} bytes per token")
    if t["responses_seconds"] > 0:
        lines.append(
            f"  responses: {t['responses_turns']} turns, {t['responses_tokens']} tokens in "
            f"{t['responses_seconds']:.1f} s ({t['responses_turns'] / t['responses_seconds']:.2f} turns/s, "
            f"{t['responses_tokens'] / t['responses_seconds']:.0f} tokens/s)"
        )
    if t["features_captured"]:
        lines.append(f"  features: computed while answering for {t['features_captured']} sequences")
    if t["prefill_seconds"] > 0 and t["prefill_tokens"]:
        lines.append(
            f"  features: {t['prefill_tokens']} tokens in {t['prefill_seconds']:.1f} s by a pass over the sequences "
            f"({t['prefill_tokens'] / t['prefill_seconds']:.0f} tokens/s)"
        )
    lines.append(f"  this run: {seconds:.1f} s")
    return "\n".join(lines)
