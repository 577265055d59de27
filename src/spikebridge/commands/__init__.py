"""CLI subcommands beyond the core ones in cli.py (each module: register(subparsers, add, common))."""
