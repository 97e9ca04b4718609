"""``python -m neurocodec``: the same CLI as the ``neurocodec`` command."""

from .cli import main

main()
