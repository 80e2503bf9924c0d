"""shoalctl: the admin command of a Shoal node (see cli.py)."""
