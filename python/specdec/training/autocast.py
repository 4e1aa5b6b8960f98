"""The autocast policy of a training run: torch.autocast for bf16, nothing for fp32."""

from __future__ import annotations

import torch


class AutocastPolicy:
    """torch.autocast for bf16 runs, a no-op for fp32 (re-enterable: one object serves nested blocks)."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device_type, self.dtype = device.type, dtype
        self._ctx = []

    def __enter__(self):
        if self.dtype == torch.float32:
            self._ctx.append(None)
            return None
        c = torch.autocast(self.device_type, dtype=self.dtype)
        self._ctx.append(c)
        return c.__enter__()

    def __exit__(self, *exc):
        c = self._ctx.pop()
        return c.__exit__(*exc) if c is not None else False
