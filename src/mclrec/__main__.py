"""`python -m mclrec` runs the CLI."""

from mclrec.cli import main

main()
