"""``python -m neurounlearn``: the command line (also ``torchrun -m neurounlearn fit ...``)."""

from neurounlearn.cli import main

main()
