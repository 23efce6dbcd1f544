"""Multi-stage pipelines run as ``lit-efficiency <name>`` subcommands."""
