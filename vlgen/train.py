"""`python -m vlgen.train ARGS`: the earlier spelling of `python -m vlgen train ARGS`, kept with a warning."""
from vlgen.commands.cli import run_deprecated_module

if __name__ == "__main__":
    run_deprecated_module("train")
