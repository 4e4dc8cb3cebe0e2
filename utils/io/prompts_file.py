"""Prompt files: one prompt a line, for generating (and scoring) a whole prompt set at once."""

from __future__ import annotations

from pathlib import Path

from utils.errors import UserError


def read_prompts_file(path: str | Path, flag: str = "--prompts_file") -> list[str]:
    """The prompts of a text file, in order; blank lines and lines starting with # are skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag}: file {path} not found (give a text file with one prompt a line)")
    try:
        lines = path.read_text(encoding="utf8").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{flag}: {path} is not UTF-8 text ({err.reason})") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"{flag}: {path} holds no prompt (one prompt a line; blank and # lines are skipped)")
    return prompts
