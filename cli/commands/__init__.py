"""The ``dorado`` user commands (files, jobs, adapters, chat): clients of the REST API only."""
