"""`python -m lordkit ...` runs the command line (also what `torchrun -m lordkit` starts)."""

from lordkit.cli.app import main

main()
