"""Errors that reach the user as one clear line (no traceback)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or environment: says what is wrong and how to fix it."""

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(self.line())

    def line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def die(message: str, hint: str | None = None) -> UserError:
    """Raise a UserError; `raise die(...)` reads well at call sites and keeps type checkers happy."""
    raise UserError(message, hint)


class CommandError(UserError):
    """A command failed. Carries everything needed to debug it."""

    def __init__(self, cmd: list[str], returncode: int, stderr: str, host: str, elapsed: float):
        self.cmd = cmd
        self.returncode = returncode
        self.stderr = stderr
        self.host = host
        self.elapsed = elapsed
        tail = "\n".join(stderr.strip().splitlines()[-20:])
        super().__init__(
            f"command failed on {host} after {elapsed:.1f}s with exit code {returncode}: "
            f"{' '.join(map(str, cmd))}" + (f"\n--- output (tail) ---\n{tail}" if tail else "")
        )
