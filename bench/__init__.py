"""The gateway's benchmark: ``make bench`` or ``python -m bench --help`` (see README.md)."""
