"""The `mixprec` command line."""
