"""Plumbing every layer may use; knows nothing of studies, data or models.

One module per concern: ``_atomic`` (the one atomic write: a private name, then rename),
``_schema`` (the one configuration schema's shared pieces: strict pydantic config, YAML-number
validators, ``Problem`` and the one error-line format), ``_yaml_file`` (YAML as users write it,
one-line errors naming file, line and column), ``_processes`` (process groups: start, signal,
stop with a grace period), ``_interrupts`` (SIGINT, SIGTERM and a closed stdout as one stop
request) and ``_disk`` (a full disk told apart from other failures). Imports no other layer.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "_atomic": ["atomic_path", "write_text"],
        "_disk": ["DiskFull", "disk_full", "disk_is_full", "quiet_heartbeats_on_full_disk"],
        "_interrupts": [
            "CAUSES",
            "Interrupted",
            "SIGINT",
            "SIGTERM",
            "StopRequests",
            "exit_code",
            "interrupt_reason",
            "stop_requests",
        ],
        "_processes": [
            "KILL_WAIT_S",
            "describe_exit",
            "kill_group",
            "process_start_time",
            "signal_group",
            "start_group",
            "stop_group",
        ],
        "_schema": [
            "Problem",
            "STRICT",
            "UNKNOWN_KEY",
            "as_integer",
            "expected",
            "format_problems",
            "integer_field",
            "line_errors",
            "number",
            "number_field",
            "one_of",
            "problem",
            "problems_from",
            "raise_errors",
            "unknown_key",
            "unknown_key_hint",
            "validate",
            "validate_python",
        ],
        "_yaml_file": ["load_mapping", "load_value", "read_yaml_text"],
    },
)
