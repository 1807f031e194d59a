"""``python -m crnn_core`` runs the ``crnn`` command line (also under torchrun)."""

from .commandline.entry import main

main()
