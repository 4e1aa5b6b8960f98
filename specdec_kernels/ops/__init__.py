"""The public ops, one module per family; importing this package registers every op (see get_op)."""

from . import attention, compact, features, linear, masks, paged, tree, verify  # noqa: F401
