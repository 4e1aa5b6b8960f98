"""The dtype names the commands, the trainer and the benchmarks take, in one place: a leaf module (it imports
nothing from the package), so that the command modules, the trainer and the data builder share it without
cycles. A --dtype option's choices are the keys of DTYPE_NAMES (or of TRAIN_DTYPE_NAMES for training);
torch_dtype maps a name to its torch dtype; resolve_dtype picks the dtype of a --dtype value and says what
`auto` picked (the commands and the demo).

Example:
    >>> from specdec.dtypes import DTYPE_NAMES, torch_dtype
    >>> DTYPE_NAMES["bf16"], str(torch_dtype("fp32"))
    ('bfloat16', 'torch.float32')
"""

from __future__ import annotations

# Every accepted name -> the canonical torch name. In the order `specdec eval --dtype` lists them (its
# choices are these keys as they stand); the other commands list them sorted.
DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
# The --dtype word that picks the machine's faster dtype (model_dtype); every command's default.
AUTO = "auto"
# Training runs fp32 or bf16 autocast (fp16 would need loss scaling, which the trainer does not do).
TRAIN_DTYPE_NAMES = {k: v for k, v in DTYPE_NAMES.items() if v != "float16"}


def torch_dtype(name: str):
    """The torch dtype of an accepted name (a DTYPE_NAMES key); KeyError for any other."""
    import torch

    return getattr(torch, DTYPE_NAMES[name])


def dtype_choices(names=DTYPE_NAMES) -> list:
    """The values a --dtype option takes: the sorted names, then AUTO."""
    return sorted(names) + [AUTO]


def model_dtype(name, device, training: bool = False) -> str:
    """The torch dtype name to load a model in: that of `name` (a DTYPE_NAMES key) when given, else (None or
    AUTO) the faster one of `device` (a torch.device): bfloat16 on CUDA; on a CPU whichever of bfloat16 and
    float32 it computes faster (specdec.machine_dtype: bf16 is slow without native bf16 instructions),
    measured once and cached; for `training`, the faster one timed on torch's linear, which autograd runs (the
    C++ kernel that makes bf16 faster on AVX2-only CPUs does not train)."""
    if name and name != AUTO:
        return DTYPE_NAMES[name]
    if device.type == "cuda":
        return "bfloat16"
    from .machine_dtype import fastest_cpu_dtype

    return fastest_cpu_dtype(training=training)


def resolve_dtype(name, device, say=None, training: bool = False) -> str:
    """model_dtype(name, device, training), the dtype a --dtype value means; when the default (None or AUTO) picks
    it, one line says what was picked and why (specdec.machine_dtype.auto_note), given to `say` (default:
    printed on stderr, beside a command's result on stdout)."""
    dtype = model_dtype(name, device, training)
    if name in (None, AUTO):
        import sys

        from .machine_dtype import auto_note

        note = auto_note(device, training)
        if say is None:
            print(note, file=sys.stderr)
        else:
            say(note)
    return dtype
