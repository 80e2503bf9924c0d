"""Code shared by every Shoal process: settings and logging."""
