"""specdec: the reference drafting system (EAGLE, FSPAD, GRIFFIN heads; EAGLE-2 tree drafting).

Subpackages: specdec.target (a Hugging Face model on our KV cache and tree attention), specdec.models
(the draft heads and their checkpoints), specdec.decoding (tree drafting and the generate loops);
specdec.testing holds test tooling (the oracle draft head), not part of the decoding API.
"""

from specdec_kernels import __version__  # one distribution, one version (pyproject.toml)

__all__ = ["__version__"]
