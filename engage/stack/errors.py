"""The one error type the stack raises: its message says what failed and what to do."""


class StackError(RuntimeError):
    """A stack step failed; the message says what to do and includes any log tail."""
