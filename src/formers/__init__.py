"""formers: transformer systems from recent papers as faithful, tested, measured, composable parts."""

__version__ = "0.1.0"
