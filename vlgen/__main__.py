"""`python -m vlgen ...` and `accelerate launch -m vlgen ...`: the `vlgen` command."""
import sys

from vlgen.cli import main

sys.exit(main())
