"""`python -m ecoq` runs the CLI."""

from ecoq.cli import main

main()
