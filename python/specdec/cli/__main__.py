"""`python -m specdec.cli ...`: the `specdec` command (also what torchrun runs: `torchrun -m specdec.cli`)."""

import sys

from specdec.cli import main

sys.exit(main())
