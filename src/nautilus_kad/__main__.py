"""``python -m nautilus_kad``: the same command line as ``nautilus-kad``."""

from .cli import main

if __name__ == "__main__":
    main()
