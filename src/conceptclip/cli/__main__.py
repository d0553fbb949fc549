"""`python -m conceptclip.cli ...`, the same as the `conceptclip` command."""

from conceptclip.cli import main

main()
