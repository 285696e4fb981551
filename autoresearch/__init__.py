"""autoresearch: an overnight research loop for one GPU (propose, train, keep or reset, report)."""

__version__ = "0.1.0"
