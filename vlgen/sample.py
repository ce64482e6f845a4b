"""`python -m vlgen.sample ARGS`: the earlier spelling of `python -m vlgen sample ARGS`, kept with a warning."""
from vlgen.commands.cli import run_deprecated_module

if __name__ == "__main__":
    run_deprecated_module("sample")
