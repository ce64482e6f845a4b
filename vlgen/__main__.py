"""`python -m vlgen ...` and `accelerate launch -m vlgen ...`: the `vlgen` command."""
import sys

from vlgen.commands.cli import main

sys.exit(main())
