"""mclrec: reproducible MCLRec (SIGIR'23) and its baselines."""

__version__ = "0.1.0"
