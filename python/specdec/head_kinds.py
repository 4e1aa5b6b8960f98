"""The kinds of draft head, in one place: a leaf module (no imports), so that the command modules, the
configs, the shipped heads and the trainer share it without cycles."""

KINDS = ("eagle", "fspad", "griffin")
