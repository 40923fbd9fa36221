"""What `training/run.py` reports in one line, without a traceback: a bad setting or input, an unreachable asset,
a busy output folder, an incompatible checkpoint, and a run stopped by a signal. Anything else is a bug, whose
traceback is shown."""


class UsageError(Exception):
    """A problem the user fixes by changing the command, the data or the environment (the message says how)."""


class SettingsError(UsageError, ValueError):
    """A setting (flag, preset value, ``--model_config`` key) that cannot be used."""


class DataError(UsageError, ValueError):
    """Training data that cannot be used: unreadable, not UTF-8, or too short for one block."""


class MissingDataError(UsageError, FileNotFoundError):
    """A dataset path, split file or shipped corpus that does not exist."""


class AssetUnavailableError(UsageError, ConnectionError):
    """A dataset, tokenizer or Hub repository that cannot be reached (offline machine, no credentials)."""


class OutputDirBusyError(UsageError, RuntimeError):
    """Another run holds the output folder."""


class OutputDirTakenError(UsageError, FileExistsError):
    """The output folder holds an earlier run, which a new run would overwrite."""


class CheckpointError(UsageError, RuntimeError):
    """A checkpoint that cannot be resumed: incomplete, or written by a run with other settings."""


class TrainingStopped(UsageError):
    """SIGTERM or SIGINT arrived; a checkpoint was written and the run can be resumed.

    `exit_code` follows the shell's convention for a signal, 128 + its number.
    """

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
