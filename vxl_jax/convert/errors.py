"""The one exception the converter raises for bad input."""


class ConversionError(Exception):
    """A checkpoint cannot be converted; the message names every offending file or tensor."""
