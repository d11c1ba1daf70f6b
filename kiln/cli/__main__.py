"""`python -m kiln.cli`: the same as the `kiln` command."""

from . import main

main()
