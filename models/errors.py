"""The one exception type for bad input: its message is a single line naming the field."""


class MixbenchError(ValueError):
    """Bad input to mixbench (spec, data, settings, command line).

    The message is one line, starts with the field or thing at fault, and says what is wrong,
    so the CLI can print it as is and exit non-zero without a traceback.
    """


class MixbenchWarning(UserWarning):
    """Something mixbench repaired, skipped or rebuilt on its own (a damaged results line, a
    cache entry that failed to load). One line, like MixbenchError; the run goes on."""
