"""The `lordkit` command line (installed as lordkit.cli)."""
