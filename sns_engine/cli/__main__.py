"""`python -m sns_engine.cli ...` (e.g. under torchrun): the `sns-engine` command."""

from sns_engine.cli import main

main()
