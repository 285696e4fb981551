"""The one domain exception: bad input or configuration met at the boundary."""


class AutoresearchError(Exception):
    """A problem the user can fix; the CLI prints it as one line and exits 1."""
