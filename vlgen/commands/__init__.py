"""The `vlgen` command and its subcommands (train, sample, export, demo, fid, ...): the app layer,
which alone imports every other layer."""
