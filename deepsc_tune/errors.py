"""The one exception type deepsc-tune raises for problems a user can fix.

Library code raises :class:`DeepscTuneError` with a message that names the file, the key, the value
and what was expected. Only :mod:`deepsc_tune.cli` turns it into a red line and a non-zero exit.
"""

from __future__ import annotations


class DeepscTuneError(Exception):
    """A problem with the user's input (files, settings, data) that a user can fix.

    The message is one line (or a short list of lines for validation reports) and is shown
    as is, without a traceback.
    """


class ConfigError(DeepscTuneError):
    """A search-space file or a command-line override is invalid."""


class DataError(DeepscTuneError):
    """An input data file cannot be used (missing, malformed, wrong labels, NaNs...)."""


class FinetuneError(DeepscTuneError):
    """A fine-tuning run failed in a way that is the user's to fix (bad setting, crashed child)."""
