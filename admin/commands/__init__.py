"""One module per ``dorado-admin`` command group."""
