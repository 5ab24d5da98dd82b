"""`python -m engine ...`: one module per command group (argparse only)."""
