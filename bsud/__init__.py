"""bsud: one auto-scaling drive made of several cloud block volumes."""

__version__ = "0.1.0"
