"""One way to say what was wrong with a record, a message or a setting."""

from __future__ import annotations

from pydantic import ValidationError

_MAX_ITEMS = 5


def describe_validation_error(error: ValidationError, whole: str = "record") -> str:
    """`field.path: message; ...` for the first few problems (`whole` names a problem with no field)."""
    parts = []
    for item in error.errors()[:_MAX_ITEMS]:
        where = ".".join(str(p) for p in item["loc"]) or whole
        message = item["msg"]
        parts.append(message if message.startswith(where.split(".")[0]) else f"{where}: {message}")
    return "; ".join(parts)


def describe(error: Exception, whole: str = "record") -> str:
    return describe_validation_error(error, whole) if isinstance(error, ValidationError) else str(error)
