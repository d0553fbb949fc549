"""`python -m conceptclip ...`, the same as the `conceptclip` command."""

from conceptclip.cli import main

main()
