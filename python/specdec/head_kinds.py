"""The kinds of draft head, in one place: a leaf module (no imports), so that the command's argument
parsing can name them without importing torch."""

KINDS = ("eagle", "fspad", "griffin")
