"""One module per ``python -m nbsrc`` subcommand (see `nbsrc.cli`)."""
