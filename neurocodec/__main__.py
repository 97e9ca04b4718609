"""``python -m neurocodec``: the same CLI as the ``neurocodec`` command."""

from .cli import main

if __name__ == "__main__":  # entropy workers are spawned and import the main module
    main()
