"""specdec: the reference drafting system (EAGLE, FSPAD, GRIFFIN heads; EAGLE-2 tree drafting)."""
__version__ = "0.1.0"
