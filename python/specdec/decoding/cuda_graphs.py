"""CUDA graphs of a decode pass: the argument check, the warm-up before a capture and the capture itself.

Shared by the decode loop (passes.py graph_passes: every pass after the first replays one captured pass) and the tree
budget (budget.py: it times replays of a captured verify or draft level the same way). Callers use these
through the module (`cuda_graphs.capture_pass(...)`), so that the CPU emulation of the tests
(tests/conftest.py `recorded_passes`) replaces them in one place.
"""

from __future__ import annotations

import torch

from .drafting import get_profiler


def check_cuda_graph(cuda_graph: bool, device) -> None:
    """cuda_graph must be a bool, and True only for a target on a CUDA device without the phase profiler."""
    if not isinstance(cuda_graph, bool):
        raise TypeError(f"cuda_graph: expected True or False, got {cuda_graph!r}")
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs the target on a CUDA device; it is on {device}")
    if cuda_graph and get_profiler() is not None:
        # its marks synchronise with the device, which a graph capture forbids; it times eager phases
        raise ValueError("cuda_graph=True with the phase profiler installed: profile with cuda_graph=False")


def warmup_pass(one_pass, dev) -> None:
    """Run one real pass on a side stream of `dev` (torch's recipe before a capture)."""
    with torch.cuda.device(dev):
        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            one_pass()
        torch.cuda.current_stream(dev).wait_stream(side)


def capture_pass(one_pass, dev, generator):
    """Record one_pass as a CUDA graph on `dev` (nothing runs) and return its replay function.

    The capture runs under `dev` as the current device with a capture stream of `dev` (torch.cuda.graph's
    default stream belongs to whichever device was current when it was first made). `generator`: the
    sampling uniforms' generator, registered so that every replay advances it (None: greedy, no draws)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.device(dev):
        if generator is not None:
            graph.register_generator_state(generator)
        with torch.cuda.graph(graph, stream=torch.cuda.Stream(device=dev)):
            one_pass()

    def replay() -> None:
        with torch.cuda.device(dev):
            graph.replay()

    return replay
