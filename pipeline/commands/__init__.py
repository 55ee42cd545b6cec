"""The command groups of the `newsletter` CLI, one module each; pipeline/cli.py assembles them."""
