"""`python -m shoalctl ...` is `shoalctl ...`."""
from .cli import main

if __name__ == "__main__":
    main()
