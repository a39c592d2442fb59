"""``repscope`` subcommands, one module per noun (see analysis/cli.py)."""
